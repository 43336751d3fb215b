"""The read path: point reads, scans and snapshots over a read view.

A read view is the tuple (memtable, immutable memtables, version, readers, read
plan) that the engine swaps atomically (`Engine._install_sv`); a read takes it
and the read LSN together (`_read_point`) and then needs no lock. A part of
`Engine` (engine.py), which owns the fields used here.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TYPE_CHECKING

from . import sstable
from .errors import (
    InvalidArgument,
)
from .manifest import NUM_LEVELS, Version
from .writes import check_bytes

if TYPE_CHECKING:
    from .engine import Engine

class Snapshot:
    """A consistent read point. Release it (or use `with`) so compaction can drop old versions."""

    __slots__ = ("lsn", "_engine", "_released")

    def __init__(self, engine: Engine, lsn: int) -> None:
        self.lsn = lsn
        self._engine = engine
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._engine._release_snapshot(self.lsn)

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Snapshot(lsn={self.lsn})"


def read_plan(version: Version, readers: dict[int, sstable.TableReader]) -> tuple:
    """What a point read walks, resolved once per read view: L0's files newest first as
    (smallest, largest, may_contain, get), then per non-empty deeper level the files'
    smallest and largest keys and their (may_contain, get). The deepest level's files
    have no may_contain: their get_cached_first asks the filter itself, only when the
    key's block is not cached (most hits are found there; TableReader.get_cached_first)."""
    levels = version.levels
    l0 = tuple((f.smallest, f.largest, readers[f.number].filter.may_contain,
                readers[f.number].get) for f in levels[0])
    deep = [files for files in levels[1:] if files]
    deeper = tuple(([f.smallest for f in files], [f.largest for f in files],
                    [(readers[f.number].filter.may_contain, readers[f.number].get)
                     if n < len(deep) - 1 else (None, readers[f.number].get_cached_first)
                     for f in files])
                   for n, files in enumerate(deep))
    return l0, deeper



class ReadPath:
    """Gets, scans and snapshots. Mixed into Engine; thread-safe, lock-free but for
    snapshot bookkeeping."""

    def get(self, key: bytes, snapshot: Snapshot | None = None) -> bytes | None:
        """The value of key at the snapshot (default: every write acknowledged so far)."""
        if type(key) is not bytes:
            check_bytes("key", key, self.opts.max_key_size)
        if snapshot is not None:
            return self._lookup(key, snapshot.lsn)[1]
        sv = self._sv
        lsn = self._read_lsn
        while self._sv is not sv:  # see _read_point
            sv = self._sv
            lsn = self._read_lsn
        return self._lookup(key, lsn, sv)[1]

    def get_entry(self, key: bytes, snapshot: Snapshot | None = None) -> tuple[bytes | None, int]:
        """(value, lsn of the write that produced it); (None, 0) if absent or deleted."""
        if type(key) is not bytes:
            check_bytes("key", key, self.opts.max_key_size)
        if snapshot is not None:
            neg, value = self._lookup(key, snapshot.lsn)
        else:
            sv, lsn = self._read_point()
            neg, value = self._lookup(key, lsn, sv)
        return (value, -neg) if value is not None else (None, 0)

    def _read_point(self) -> tuple[tuple, int]:
        """(read view, LSN) taken together, as a seqlock: the LSN is read between two
        reads of the view that agree.

        Read apart, a flush or compaction installed in between could have dropped
        a version the LSN needs (it keeps only what the oldest reader it knew of
        sees). With both from one moment, the view holds no table written after
        the LSN was published, and its memtables hold every write up to it.
        """
        while True:
            sv = self._sv
            lsn = self._read_lsn
            if self._sv is sv:
                return sv, lsn

    def _lookup(self, key: bytes, snap: int, sv: tuple | None = None) -> tuple[int, bytes | None]:
        """(-lsn, value) of key's newest version <= snap, tombstones included; (0, None) if none."""
        mem, imms, _, _, (l0, deeper) = self._sv if sv is None else sv
        hit = mem.get(key, snap)
        if hit[0]:
            return hit
        for imm in reversed(imms):
            hit = imm.get(key, snap)
            if hit[0]:
                return hit
        for smallest, largest, may_contain, get in l0:
            if smallest <= key <= largest and may_contain(key):
                hit = get(key, snap)
                if hit[0]:
                    return hit
        for smallests, largests, tables in deeper:
            i = bisect_right(smallests, key) - 1
            if i >= 0 and key <= largests[i]:
                may_contain, get = tables[i]
                if may_contain is None or may_contain(key):
                    hit = get(key, snap)
                    if hit[0]:
                        return hit
        return 0, None

    def scan(self, start: bytes | None = None, end: bytes | None = None,
             snapshot: Snapshot | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Yield (key, value) for start <= key < end in key order, at one snapshot.

        The iterator pins the files it reads; close it (or exhaust it) to let
        compaction delete them.
        """
        for b, what in ((start, "start"), (end, "end")):
            if b is not None and type(b) is not bytes:
                raise InvalidArgument(f"scan {what} must be bytes or None")
        if snapshot is not None:
            return self._scan(snapshot.lsn, start, end, self._sv)
        sv, snap = self._read_point()
        return self._scan(snap, start, end, sv)

    def _scan(self, snap, start, end, sv) -> Iterator[tuple[bytes, bytes]]:
        mem, imms, version, readers, _ = sv
        self.versions.ref(version)
        try:
            sources: list[Iterable] = [mem.entries(start, end)]
            sources += [imm.entries(start, end) for imm in reversed(imms)]
            lo, hi = start or b"", end
            for f in version.levels[0]:
                if (hi is None or f.smallest < hi) and f.largest >= lo:
                    sources.append(readers[f.number].entries_from(start, end))
            for lvl in range(1, NUM_LEVELS):
                chosen = [f for f in version.levels[lvl]
                          if f.largest >= lo and (hi is None or f.smallest < hi)]
                if chosen:
                    sources.append(_chain([readers[f.number] for f in chosen], start, end))
            yield from visible(sources, snap)
        finally:
            self.versions.unref(version)

    def snapshot(self) -> Snapshot:
        """A read point at the last acknowledged write; release it when done."""
        with self._mutex:
            lsn = self._read_lsn
            self._snapshots.add(lsn)
        return Snapshot(self, lsn)

    def _release_snapshot(self, lsn: int) -> None:
        with self._mutex:
            self._snapshots.discard(lsn)

    async def get_async(self, key: bytes, snapshot: Snapshot | None = None) -> bytes | None:
        """get() never waits for I/O other than a page-cache read, so it runs inline."""
        return self.get(key, snapshot)



def _chain(readers: list[sstable.TableReader], start, end) -> Iterator:
    for i, r in enumerate(readers):
        yield from r.entries_from(start if i == 0 else None, end)


SCAN_CHUNK = 256  # entries taken from each source at a time by a scan's merge


def merged_chunks(sources: list[Iterable]) -> Iterator[list[tuple]]:
    """Lists of (key, -lsn, value) in internal order, merged from sorted sources a chunk at
    a time: each round takes what every source holds up to the smallest of their chunks'
    last entries and sorts it in C (timsort merges the runs). heapq.merge's Python loop
    per entry made a scan over a few sources half as fast (bench/engine: scan).
    REQUIRES: no entry (key, lsn) in two sources (a read view never holds one twice)."""
    its = [iter(src) for src in sources]
    bufs = [list(islice(it, SCAN_CHUNK)) for it in its]
    live = [i for i, b in enumerate(bufs) if b]
    while live:
        bound = min(bufs[i][-1] for i in live)
        out: list[tuple] = []
        still = []
        for i in live:
            b = bufs[i]
            if b[-1] <= bound:
                out += b
                b = bufs[i] = list(islice(its[i], SCAN_CHUNK))
            else:
                j = bisect_right(b, bound)
                out += b[:j]
                del b[:j]
            if b:
                still.append(i)
        live = still
        out.sort()
        yield out


def visible(sources: list[Iterable], snap: int) -> Iterator[tuple[bytes, bytes]]:
    """Merge sources of (key, -lsn, value) and yield each key's value at `snap`."""
    last = None
    neg_snap = -snap
    if len(sources) == 1:
        for k, neg, v in sources[0]:
            if neg < neg_snap or k == last:
                continue
            last = k
            if v is not None:
                yield k, v
        return
    for chunk in merged_chunks(sources):
        for k, neg, v in chunk:
            if neg < neg_snap or k == last:
                continue
            last = k
            if v is not None:
                yield k, v
