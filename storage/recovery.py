"""Opening a database (Engine.open): the LOCK file, the manifest, orphans, WAL replay,
and the threads started once it is readable (Pebble's open.go beside db.go).

A part of `Engine` (engine.py), which owns every field used here; `_open` runs
before any other thread of the engine exists.
"""

from __future__ import annotations

import logging
import os
import time

from . import record, sstable
from .errors import (
    Corruption,
    NoSpace,
    StorageError,
    is_no_space,
)
from .filenames import (
    CURRENT,
    LOCK,
    is_temporary,
    manifest_name,
    parse_manifest_name,
    parse_segment_name,
    parse_table_name,
    table_name,
)
from .wal import Wal

log = logging.getLogger("strata.engine")


class Recovery:
    """Opening and recovery. Mixed into Engine; runs on the opening thread only."""

    def _open(self, truncate_after: int | None = None) -> None:
        fs, path, opts = self.fs, self.path, self.opts
        t0 = time.monotonic()
        exists = fs.exists(os.path.join(path, CURRENT))
        if not exists and fs.exists(path):
            # A MANIFEST without CURRENT and without any log or table is a
            # creation interrupted before CURRENT was written: start over.
            leftovers = [n for n in fs.listdir(path)
                         if parse_segment_name(n) is not None or parse_table_name(n) is not None]
            if leftovers:
                # Never initialise over a database whose CURRENT went missing:
                # that would delete its tables as orphans.
                raise Corruption(os.path.join(path, CURRENT), 0,
                                 f"CURRENT is missing but the directory holds database files "
                                 f"({', '.join(sorted(leftovers)[:3])}...); restore CURRENT "
                                 f"(it names the newest MANIFEST-*) or open a checkpoint")
        if not exists:
            if not opts.create_if_missing:
                raise StorageError(f"{path}: no database here (create_if_missing=False)")
            fs.mkdir(path)
            fs.sync_dir(os.path.dirname(os.path.abspath(path)))
        self._acquire_lock_file()
        if exists:
            self.versions.recover()
        else:
            self.versions.create()
        self._remove_orphans()
        version = self.versions.current
        for _, f in version.files():
            self._readers[f.number] = self._open_table(f.number)
        self._wal = Wal(fs, path, segment_size=opts.wal_segment_size,
                        retention_bytes=opts.wal_retention_bytes,
                        retention_age_s=opts.wal_retention_age_s,
                        hold_bytes=opts.wal_hold_bytes,
                        holds_pending=opts.wal_holds_from_open,
                        preallocate=wal_preallocation(opts))
        flushed = self.versions.flushed_lsn
        self._wal.min_term = self.versions.term
        tail = self._wal.recover(flushed, repair=opts.repair)
        self._stats.wal_truncated_bytes = tail.truncated_bytes
        frames, tail_last = tail.frames, tail.last_lsn
        if truncate_after is not None and tail_last > truncate_after:
            if truncate_after < flushed:
                raise StorageError(f"{path}: cannot cut the log after LSN {truncate_after}: "
                                   f"the tables hold writes up to LSN {flushed}")
            self._stats.wal_truncated_bytes += self._wal.cut_after(truncate_after)
            frames = [fr for fr in frames if fr.lsn <= truncate_after]
            tail_last = truncate_after
        mem = self._mem
        terms = [t for t in self.versions.terms if t[1] <= flushed]
        for fr in frames:
            ops = record.decode_ops(fr.type, fr.lsn, fr.payload)
            if ops:
                mem.add_many([op for op in ops if op[0] > flushed])
            if fr.lsn > flushed and (not terms or fr.term != terms[-1][0]):
                terms.append((fr.term, fr.lsn))
        self._terms = self.versions.terms = tuple(terms)
        self._stats.recovered_frames = len(frames)
        self.term = max(tail.last_term if truncate_after is None else 0,
                        terms[-1][0] if terms else 0, self.versions.term)
        self.versions.term = self.term
        max_table_lsn = max((f.max_lsn for _, f in version.files()), default=0)
        last = max(tail_last, flushed, max_table_lsn)
        self._next_lsn = last + 1
        self._publish(last, [])  # no listener yet: nothing to hand over
        no_room: OSError | None = self.versions.manifest_error
        try:
            self._wal.start(self._next_lsn)
        except OSError as e:
            if not is_no_space(e):
                raise
            no_room = e  # open for reads; writes wait for space (_resume_loop)
        self._wal_append = self._wal.append
        self._install_sv()
        self._closed = False
        self._start_thread(self._flush_loop, "strata-flush")
        self._start_thread(self._commit.run_committer, "strata-committer")
        self._start_thread(self._compaction_loop, "strata-compaction")
        if opts.durability == "interval":
            self._start_thread(self._interval_sync_loop, "strata-wal-sync")
        if no_room is not None:
            with self._mutex:
                self._fail(no_room, "opening for writes", resumable=True)
        elif len(mem) and opts.flush_after_recovery:
            # The replayed tail was fsynced by recovery, but after an fsync error
            # the page cache it was read from may hold pages the disk never got
            # (fsyncgate). Writing them into a table makes the recovered state
            # durable from memory before any new write builds on it.
            try:
                self.flush()
            except NoSpace as e:
                log.warning("%s: the replayed WAL tail stays in the log for now: %s", path, e)
        log.info("opened %s in %.3fs: %d tables, %d WAL frames replayed, last LSN %d",
                 path, time.monotonic() - t0, len(self._readers), len(frames), last)
        with self._mutex:
            self._maybe_schedule_locked()

    def _acquire_lock_file(self) -> None:
        try:
            self._lock = self.fs.lock(os.path.join(self.path, LOCK))
        except BlockingIOError:
            raise StorageError(f"{self.path} is locked by another process or engine "
                               f"(its LOCK file is held)") from None

    def _release_lock_file(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _remove_orphans(self) -> None:
        """Delete files an interrupted flush or compaction left behind."""
        live = {f.number for _, f in self.versions.current.files()}
        current_manifest = manifest_name(self.versions.manifest_number)
        for name in self.fs.listdir(self.path):
            p = os.path.join(self.path, name)
            number = parse_table_name(name)
            if is_temporary(name) or (number is not None and number not in live) or \
                    (parse_manifest_name(name) is not None and name != current_manifest):
                log.info("removing orphan file %s", p)
                self.fs.remove(p)

    def _open_table(self, number: int) -> sstable.TableReader:
        return sstable.TableReader(self.fs, os.path.join(self.path, table_name(number)),
                                   number, self._cache)


def wal_preallocation(opts) -> int:
    """Bytes to fallocate per WAL segment: one memtable's worth and a margin, or none.

    Preallocation only makes fdatasync cheaper (no file size to journal per commit).
    With durability="none" nothing fsyncs the log on the commit path, so the space
    (~9 MiB for the open segment and as much for the spare) would buy nothing: it was
    half of what the 250k-key harness took on disk (bench/engine: disk).
    """
    if not opts.wal_preallocate or opts.durability == "none":
        return 0
    return min(opts.wal_segment_size, opts.memtable_size + (1 << 20))
