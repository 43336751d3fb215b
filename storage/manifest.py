"""Manifest: which SSTables make up the database, as a log of version edits.

    MANIFEST-<n> := frame*              frames as in record.py, type TYPE_EDIT
    edit         := msgpack map {
                      "add": [[level, number, size, smallest, largest, entries, min_lsn, max_lsn], ...],
                      "del": [[level, number], ...],
                      "next_file": int, "flushed_lsn": int, "term": int, "snapshot": bool,
                      "terms": [[term, first_lsn], ...] }   the log's term history
    CURRENT      := "MANIFEST-<n>\\n"   replaced by atomic rename

The first edit of every manifest is a snapshot of the whole version, so a
manifest can be read on its own. An edit is installed only after it is
fsynced; a torn last edit was never installed and is dropped on recovery. A new
manifest is started at open and when the current one passes `MAX_MANIFEST`.

Version lifetime: a Version is immutable; readers pin it (`ref`/`unref`) and a
file is deleted only when no live version lists it.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

import msgpack

from . import record
from .errors import Corruption
from .filenames import CURRENT, manifest_name, parse_manifest_name, table_name
from .vfs import FileSystem, WritableFile, write_file_atomic

log = logging.getLogger("strata.manifest")

NUM_LEVELS = 7
MAX_MANIFEST = 4 << 20


@dataclass(frozen=True, slots=True)
class FileMeta:
    number: int
    size: int
    smallest: bytes
    largest: bytes
    entries: int
    min_lsn: int
    max_lsn: int

    def to_wire(self, level: int) -> list:
        return [level, self.number, self.size, self.smallest, self.largest,
                self.entries, self.min_lsn, self.max_lsn]

    @staticmethod
    def from_wire(w: list) -> tuple[int, FileMeta]:
        return w[0], FileMeta(w[1], w[2], w[3], w[4], w[5], w[6], w[7])


@dataclass(slots=True)
class Version:
    """An immutable list of files per level.

    L0 is ordered newest first (files may overlap); L1+ are sorted by key and
    do not overlap.
    """

    levels: list[list[FileMeta]]
    refs: int = 0
    _l1_smallest: list[list[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._l1_smallest = [[f.smallest for f in lvl] for lvl in self.levels]

    def files(self) -> list[tuple[int, FileMeta]]:
        return [(lvl, f) for lvl, files in enumerate(self.levels) for f in files]

    def level_size(self, level: int) -> int:
        return sum(f.size for f in self.levels[level])

    def find(self, level: int, key: bytes) -> FileMeta | None:
        """The one file of a level >= 1 whose range may contain key."""
        files = self.levels[level]
        i = bisect_right(self._l1_smallest[level], key) - 1
        if i >= 0 and key <= files[i].largest:
            return files[i]
        return None

    def overlapping(self, level: int, lo: bytes, hi: bytes) -> list[FileMeta]:
        files = self.levels[level]
        if level == 0:
            return [f for f in files if not (f.largest < lo or f.smallest > hi)]
        i = max(0, bisect_left(self._l1_smallest[level], lo) - 1)
        out = []
        for f in files[i:]:
            if f.smallest > hi:
                break
            if f.largest >= lo:
                out.append(f)
        return out


def apply_edit(levels: list[list[FileMeta]], edit: dict) -> list[list[FileMeta]]:
    """Return new level lists with `edit` applied (inputs are not modified)."""
    new = [list(lvl) for lvl in levels]
    dels = {(d[0], d[1]) for d in edit.get("del", ())}
    if dels:
        new = [[f for f in files if (lvl, f.number) not in dels] for lvl, files in enumerate(new)]
    for w in edit.get("add", ()):
        lvl, meta = FileMeta.from_wire(w)
        new[lvl].append(meta)
    new[0].sort(key=lambda f: (f.max_lsn, f.number), reverse=True)
    for lvl in range(1, NUM_LEVELS):
        new[lvl].sort(key=lambda f: f.smallest)
    return new


class VersionSet:
    """The current version, the manifest that records it, and the pinned versions.

    REQUIRES: `log_and_apply` is called with the engine's version lock held
    (one edit at a time).
    """

    def __init__(self, fs: FileSystem, dirpath: str) -> None:
        self.fs = fs
        self.dir = dirpath
        self.current = Version([[] for _ in range(NUM_LEVELS)])
        self.next_file = 1
        self.flushed_lsn = 0
        self.term = 0  # the highest term seen; persisted so a clean restart keeps it
        # The log's term history, [(term, first LSN)] oldest first (set by the engine):
        # where each term's frames begin, for replication's divergence check.
        self.terms: tuple[tuple[int, int], ...] = ()
        self.manifest_number = 0
        self._manifest: WritableFile | None = None
        self._manifest_size = 0
        self.manifest_error: OSError | None = None  # recovery found no space for a new one
        self._pinned: dict[int, Version] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ files

    def new_file_number(self) -> int:
        with self._lock:
            n = self.next_file
            self.next_file += 1
            return n

    def ref(self, v: Version) -> Version:
        with self._lock:
            v.refs += 1
            self._pinned[id(v)] = v
        return v

    def unref(self, v: Version) -> None:
        with self._lock:
            v.refs -= 1
            if v.refs <= 0:
                self._pinned.pop(id(v), None)

    def live_files(self) -> set[int]:
        with self._lock:
            versions = [self.current, *self._pinned.values()]
        return {f.number for v in versions for _, f in v.files()}

    # ------------------------------------------------------------------ manifest

    def _snapshot_edit(self, version: Version, flushed_lsn: int) -> dict:
        return {
            "add": [f.to_wire(lvl) for lvl, f in version.files()],
            "next_file": self.next_file,
            "flushed_lsn": flushed_lsn,
            "term": self.term,
            "terms": [list(t) for t in self.terms],
            "snapshot": True,
        }

    def _start_manifest(self, version: Version | None = None, flushed_lsn: int | None = None) -> None:
        """Write a new manifest holding a snapshot of `version` and point CURRENT at it.

        Nothing is installed here: on error the old manifest stays current.
        """
        version = self.current if version is None else version
        flushed_lsn = self.flushed_lsn if flushed_lsn is None else flushed_lsn
        number = self.new_file_number()
        path = os.path.join(self.dir, manifest_name(number))
        f = self.fs.create(path)
        try:
            data = record.encode_frame(0, 0, record.TYPE_EDIT,
                                       msgpack.packb(self._snapshot_edit(version, flushed_lsn),
                                                     use_bin_type=True))
            f.write(data)
            f.sync()
        except BaseException:
            f.close()
            raise
        write_file_atomic(self.fs, os.path.join(self.dir, CURRENT),
                          (manifest_name(number) + "\n").encode())
        old, old_number = self._manifest, self.manifest_number
        self._manifest, self.manifest_number, self._manifest_size = f, number, len(data)
        if old is not None:
            old.close()
        if old_number:
            try:
                self.fs.remove(os.path.join(self.dir, manifest_name(old_number)))
            except FileNotFoundError:
                pass

    def create(self) -> None:
        """Initialise an empty database directory."""
        self._start_manifest()

    def recover(self) -> None:
        """Load the version named by CURRENT, then start a fresh manifest."""
        current = os.path.join(self.dir, CURRENT)
        name = self.fs.read_bytes(current).decode(errors="replace").strip()
        number = parse_manifest_name(name)
        if number is None:
            raise Corruption(current, 0, f"CURRENT names {name!r}, not a manifest")
        path = os.path.join(self.dir, name)
        if not self.fs.exists(path):
            raise Corruption(current, 0, f"CURRENT names {name}, which does not exist")
        f = self.fs.open_read(path)
        try:
            buf = f.buf
            levels: list[list[FileMeta]] = [[] for _ in range(NUM_LEVELS)]
            edits = 0
            try:
                for fr in record.iter_frames(buf, 0):
                    if fr.type != record.TYPE_EDIT:
                        raise record.BadFrame(fr.offset, f"frame type {fr.type} in a manifest")
                    try:
                        edit = msgpack.unpackb(fr.payload)
                        if not isinstance(edit, dict):
                            raise ValueError("edit is not a map")
                    except ValueError as e:
                        raise Corruption(path, fr.offset, f"undecodable edit: {e}") from None
                    levels = apply_edit([[] for _ in range(NUM_LEVELS)] if edit.get("snapshot") else levels, edit)
                    if "next_file" in edit:
                        self.next_file = max(self.next_file, edit["next_file"])
                    if "flushed_lsn" in edit:
                        self.flushed_lsn = max(self.flushed_lsn, edit["flushed_lsn"])
                    if "term" in edit:
                        self.term = max(self.term, edit["term"])
                    if "terms" in edit:
                        self.terms = tuple((int(t), int(lsn)) for t, lsn in edit["terms"])
                    edits += 1
            except record.BadFrame as e:
                # Each edit is synced before the next is written, so only the
                # last can be torn: any valid edit after the damage means the
                # damage is in the middle.
                later = record.next_valid_frame(buf, e.offset + 1,
                                                record.marker(0, bytes([record.TYPE_EDIT])))
                if later is not None or edits == 0:
                    raise Corruption(path, e.offset, e.reason) from None
                log.warning("manifest %s: torn last edit at offset %d (%s); ignored",
                            path, e.offset, e.reason)
            if edits == 0:
                raise Corruption(path, 0, "manifest holds no edit")
        finally:
            f.close()
        # Every table the manifest lists must be there before anything is
        # rewritten or deleted: a damaged edit that was taken for a torn tail
        # must stop the open, not lead to the removal of "orphans".
        for lvl, files in enumerate(levels):
            for fm in files:
                table = os.path.join(self.dir, table_name(fm.number))
                if not self.fs.exists(table):
                    raise Corruption(path, 0, f"table {os.path.basename(table)} (L{lvl}) listed in "
                                              f"the manifest is missing")
        self.manifest_number = number
        self.next_file = max(self.next_file, self.manifest_number + 1)
        self.current = Version(levels)
        try:
            self._start_manifest()
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # A full disk: the database opens for reads on the manifest it has;
            # the next edit (or ensure_manifest) starts the fresh one.
            self.manifest_error = e
            log.warning("%s: no space for a new manifest (%s); opening on %s", self.dir, e, name)

    def ensure_manifest(self) -> None:
        """Start the fresh manifest that recovery could not write (a full disk)."""
        if self._manifest is None:
            self._start_manifest()
            self.manifest_error = None

    def log_and_apply(self, edit: dict) -> Version:
        """Make `edit` durable in the manifest, then install the new version."""
        with self._lock:
            edit["next_file"] = self.next_file
        edit["term"] = self.term
        edit["terms"] = [list(t) for t in self.terms]
        if "flushed_lsn" in edit:
            edit["flushed_lsn"] = max(edit["flushed_lsn"], self.flushed_lsn)
        if self._manifest is None or self._manifest_size > MAX_MANIFEST:
            new = Version(apply_edit(self.current.levels, edit))
            flushed = edit.get("flushed_lsn", self.flushed_lsn)
            self._start_manifest(new, flushed)  # durable first, then installed
            self.current = new
            self.flushed_lsn = flushed
            return self.current
        data = record.encode_frame(0, 0, record.TYPE_EDIT, msgpack.packb(edit, use_bin_type=True))
        assert self._manifest is not None
        self._manifest.write(data)
        self._manifest.sync()
        self._manifest_size += len(data)
        self.current = Version(apply_edit(self.current.levels, edit))
        self.flushed_lsn = edit.get("flushed_lsn", self.flushed_lsn)
        return self.current

    def close(self) -> None:
        if self._manifest is not None:
            self._manifest.close()
            self._manifest = None
