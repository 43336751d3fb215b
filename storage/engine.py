"""The engine: WAL + memtables + versioned SSTables, tied together.

Write path (LevelDB's DBImpl::Write, adapted to the GIL):
  1. validate, wait if L0 or the immutable memtables are over their limits;
  2. under `_mutex`: assign LSNs, encode the frame, join the writer queue;
  3. the queue's head is the commit leader: it writes every queued frame with
     one write() and, in `always` mode, one fdatasync (GIL released), applies
     them to the memtable in LSN order, publishes the visible LSN and wakes
     the group; the next head becomes leader. In `none` and `interval` modes
     there is nothing to wait for, so the writer does all of it under the mutex.
Read path: memtable -> immutable memtables -> L0 newest first -> L1..Ln, at a
snapshot LSN; the (mem, imms, version, readers, read plan) tuple is swapped atomically.
Threads and processes of one open engine (all daemon threads, joined at close):
  strata-committer   leads commit groups whose head is an asyncio writer (commit.py)
  strata-flush       flushes immutable memtables to L0 tables
  strata-compaction  picks compactions and installs their output
  strata-wal-sync    durability=interval only: fdatasync every sync_interval_ms
  strata-wal-roll    the WAL's: syncs and renames a sealed segment, keeps a spare (wal.py)
  strata-resume      only after a full disk stopped writes: waits for space, resumes
  strata-io          a thread pool, made on first use, for asyncio callers that must wait
                     (a write stall, a checkpoint)
Shared by every engine in the process, with compaction_executor="process": two worker
processes (compaction.MergeWorker), one for flushes and one for merges, so that a
flush never queues behind a long merge.

Durability: `always` acknowledges after fdatasync of the WAL; `interval`
after write(2), with an fdatasync every `sync_interval_ms` (a SIGKILL loses
nothing, a power cut up to the interval); `none` after write(2) (a power cut
loses whatever the OS had not written back). docs/durability.md has the detail.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import errno
import logging
import math
import os
import threading
import time
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import replace
from itertools import islice
from typing import Any

import msgpack
from sortedcontainers import SortedList

from . import checkpoint, compaction, record, sstable
from .commit import CommitCallbacks, CommitPipeline, Writer
from .errors import (
    Closed,
    Conflict,
    Corruption,
    InvalidArgument,
    LogMismatch,
    NoSpace,
    ReadOnly,
    StorageError,
    TooLarge,
    WritesStopped,
    WriteStalled,
)
from .filenames import (
    CURRENT,
    LOCK,
    compaction_prefix,
    is_compaction_output,
    is_temporary,
    manifest_name,
    parse_manifest_name,
    parse_segment_name,
    parse_table_name,
    table_name,
)
from .manifest import NUM_LEVELS, FileMeta, Version, VersionSet
from .memtable import MemTable
from .options import Options
from .stats import EngineStats
from .vfs import FileLock, FileSystem, OsFS
from .wal import SYNC_BUCKETS, Wal

_packb = msgpack.Packer(use_bin_type=True).pack  # one Packer: packb() builds one per call
_encode_frame = record.encode_frame

log = logging.getLogger("strata.engine")

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


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

_WORKERS: dict[str, compaction.MergeWorker] = {}
_WORKER_LOCK = threading.Lock()


def _worker(kind: str) -> compaction.MergeWorker:
    """The worker process for `kind` ("merge" or "flush"), shared by this process's engines.

    Two of them, so that a flush never queues behind a long merge.
    """
    with _WORKER_LOCK:
        w = _WORKERS.get(kind)
        if w is None:
            w = _WORKERS[kind] = compaction.MergeWorker()
        return w


def _read_plan(version: Version, readers: dict[int, sstable.TableReader]) -> tuple:
    """What a point read walks, resolved once per read view: L0's files newest first as
    (smallest, largest, may_contain, get), then per non-empty deeper level the files'
    smallest and largest keys and their (may_contain, get)."""
    levels = version.levels
    l0 = tuple((f.smallest, f.largest, readers[f.number].filter.may_contain,
                readers[f.number].get) for f in levels[0])
    deeper = tuple(([f.smallest for f in files], [f.largest for f in files],
                    [(readers[f.number].filter.may_contain, readers[f.number].get)
                     for f in files])
                   for files in levels[1:] if files)
    return l0, deeper


def _check_bytes(what: str, b: Any, limit: int) -> None:
    if type(b) is not bytes:
        if isinstance(b, (bytearray, memoryview)):
            raise InvalidArgument(f"{what} must be bytes, not {type(b).__name__}; pass bytes(...)")
        raise InvalidArgument(f"{what} must be bytes, not {type(b).__name__}")
    if len(b) > limit:
        raise TooLarge(what, len(b), limit)


class Engine:
    """An open database. Thread-safe; see the module docstring for the paths."""

    # ------------------------------------------------------------------ open

    @classmethod
    def open(cls, path: str, *, fs: FileSystem | None = None, truncate_after: int | None = None,
             **options: Any) -> Engine:
        """Open (or create) the database at `path`.

        `truncate_after`: cut the log after this LSN before replaying it (replication:
        a rejoining node drops the tail the new master never had). It must not be
        below the flush point: what tables hold cannot be cut (StorageError).
        """
        eng = cls(path, fs or OsFS(), Options.make(**options))
        try:
            eng._open(truncate_after)
        except BaseException:
            eng._release_lock_file()
            raise
        return eng

    def __init__(self, path: str, fs: FileSystem, opts: Options) -> None:
        self.path = path
        self.fs = fs
        self.opts = opts
        self._mutex = threading.Lock()
        # Serialises version edits (flush, compaction) and checkpoint captures;
        # taken before _mutex, never while holding it.
        self._edit_lock = threading.Lock()
        self._bg_cv = threading.Condition(self._mutex)
        self._commit = CommitPipeline(
            CommitCallbacks(write_group=self._write_group, apply_group=self._apply_group,
                            publish_locked=self._publish_group_locked,
                            fail_locked=self._fail_group_locked), self._mutex)
        self._next_lsn = 1
        self._visible_lsn = 0  # the last LSN applied (durable per the mode)
        # What reads see: _visible_lsn, or less while replication holds reads at the
        # commit point (`set_commit_lsn`); never moves back.
        self._read_lsn = 0
        self._commit_lsn: int | None = None
        self._read_only = False  # a replica: only apply_frames extends the log
        # The log's term history: (term, first LSN) of each run of frames of one term.
        self._terms: tuple[tuple[int, int], ...] = ()
        self.term = 0
        self._closed = True
        self._bg_error: WritesStopped | None = None
        self._snapshots: SortedList = SortedList()
        self._lock: FileLock | None = None  # the LOCK file, held while open
        self._cache = sstable.BlockCache(opts.block_cache_size)
        self.versions = VersionSet(fs, path)
        self._picker = compaction.LevelPicker(opts.l0_compaction_trigger, opts.base_level_size,
                                              opts.level_multiplier, opts.target_file_size,
                                              opts.max_compaction_bytes or None)
        self._mem = MemTable()
        self._imms: tuple[MemTable, ...] = ()
        self._readers: dict[int, sstable.TableReader] = {}
        # (memtable, immutables, version, readers, read plan: see _read_plan)
        self._sv: tuple[MemTable, tuple[MemTable, ...], Version, dict[int, sstable.TableReader],
                        tuple]
        self._threads: list[threading.Thread] = []
        self._compacting = False
        self._compaction_requested = False
        # Table numbers being written and not yet installed: never obsolete.
        self._pending: set[int] = set()
        # compact_all() in progress: the last LSN it must push down (0: none running)
        self._manual_compaction = 0
        self._paused: dict[str, str] = {}  # background work waiting for disk space
        self._roll_failing = False  # WAL rolls are failing for space (logged once)
        self._pause_s = 1.0
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # Where worker processes find this database, if flushes and merges run in
        # them (not on a file system only this process can see).
        self._worker_dir = fs.local_path(path) if opts.compaction_executor == "process" else None
        self._rotate_requested = False  # flush() asked the current commit leader to rotate
        self._listeners: list = []
        self._always = opts.durability == "always"
        self._memtable_size = opts.memtable_size
        # Event frames fill the log but not the memtable: past this many bytes in
        # the open segment the memtable rotates anyway (empty, if need be), so the
        # flush point moves and retention can purge event-only log too.
        self._log_limit = 2 * opts.memtable_size
        self._rotated_at = 0  # the log's bytes_written at the last rotation
        self._max_key = opts.max_key_size
        self._max_value = opts.max_value_size
        self._throttled = False  # L0 or immutable memtables over a limit: see _install_sv
        self._puts = 0
        # group commit sizes: bucket i counts groups whose size has bit length i
        # (at most 2**i - 1 frames); the last bucket takes everything larger
        self._group_sizes = [0] * 12
        self._stats = EngineStats()

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
                        preallocate=(min(opts.wal_segment_size, opts.memtable_size + (1 << 20))
                                     if opts.wal_preallocate else 0))
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
            if not _no_space(e):
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

    def _install_sv(self) -> None:
        """Publish a new read view. REQUIRES: _mutex held, or no other thread running."""
        version, readers = self.versions.current, dict(self._readers)
        self._sv = (self._mem, self._imms, version, readers, _read_plan(version, readers))
        self._throttled = self._needs_room()

    def _start_thread(self, fn, name: str) -> None:
        t = threading.Thread(target=fn, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes

    def put(self, key: bytes, value: bytes, *, request_id: str | None = None) -> int:
        """Store value under key; return the write's LSN once it is durable per the mode.

        `request_id` (a str of at most record.MAX_REQUEST_ID characters; None or ""
        for none) is written in the same frame: see `recent_request_ids`.
        """
        if type(key) is not bytes or type(value) is not bytes or len(key) > self._max_key \
                or len(value) > self._max_value or not key:
            self._validate(key, value)
        if request_id:
            return self._write(*self._prepare_put(key, value, request_id))
        if self._always or self._throttled:
            return self._write(record.TYPE_PUT, _packb((key, value)), ((key, value),))
        # The unsynced put, inlined: on the reference machine each Python call
        # costs ~0.3 us against a ~5 us budget (bench/engine: fillrandom).
        payload = _packb((key, value))
        with self._mutex:
            if self._closed or self._bg_error is not None or self._read_only:
                self._raise_closed()
            lsn = self._next_lsn
            self._next_lsn = lsn + 1
            frame = _encode_frame(lsn, self.term, 1, payload)
            try:
                self._wal_append(frame, lsn)
            except OSError as e:
                raise self._fail(e, "WAL write", resumable=True, outcome_unknown=True) from e
            self._mem.add(lsn, key, value)
            self._puts += 1
            self._publish(lsn, [frame])
            self._rotate_if_full_locked()
        return lsn

    def delete(self, key: bytes, *, request_id: str | None = None) -> int:
        """Delete key (a tombstone); return the LSN. `request_id` as for put."""
        return self._write(*self._prepare_delete(key, request_id))

    def write_batch(self, ops: Iterable[tuple], *, request_id: str | None = None,
                    request_ids: list[str | None] | None = None) -> int:
        """Apply ("put", key, value) and ("delete", key) ops atomically; return the last LSN.

        All or nothing, also across a crash: the batch is one WAL frame.
        Request ids go in the same frame: `request_id` names the whole batch (its
        answer is the last LSN, so it is written on the last op), or `request_ids`
        one per op (None or "" for an op without one); not both (InvalidArgument).
        """
        return self._write(*self._prepare_batch(ops, request_id, request_ids))

    def append_event(self, topic: bytes, key: bytes, payload: bytes) -> int:
        """Write an event frame (not applied to the key space); return its LSN."""
        return self._write(*self._prepare_event(topic, key, payload))

    def compare_and_set(self, key: bytes, value: bytes | None = None, *,
                        expected_lsn: int | None = None, expected_value: bytes | None = None,
                        expect_absent: bool = False, delete: bool = False) -> int:
        """Write value (or delete, with delete=True) only if key's current version matches.

        Exactly one expectation: `expected_lsn` (the LSN get_entry returned),
        `expected_value`, or `expect_absent`. Raises Conflict(current_lsn)
        otherwise. The check and the write are one step: no other write can
        come between them.
        """
        prepared = self._prepare_delete(key) if delete else self._prepare_put(key, value)
        return self._write(*prepared, self._cas_check(key, expected_lsn, expected_value, expect_absent))

    async def compare_and_set_async(self, key: bytes, value: bytes | None = None, *,
                                    expected_lsn: int | None = None,
                                    expected_value: bytes | None = None,
                                    expect_absent: bool = False, delete: bool = False) -> int:
        prepared = self._prepare_delete(key) if delete else self._prepare_put(key, value)
        return await self._write_async(
            *prepared, self._cas_check(key, expected_lsn, expected_value, expect_absent))

    def _cas_check(self, key: bytes, expected_lsn, expected_value, expect_absent: bool):
        if sum((expected_lsn is not None, expected_value is not None, bool(expect_absent))) != 1:
            raise InvalidArgument(
                "compare_and_set needs exactly one of expected_lsn, expected_value, expect_absent")
        if expected_value is not None:
            _check_bytes("expected value", expected_value, self.opts.max_value_size)

        def check() -> None:  # runs under _mutex, before the write takes its LSN
            value, lsn = self._current_locked(key)
            if expected_lsn is not None:
                ok = lsn == expected_lsn and (lsn != 0 or value is None)
            elif expect_absent:
                ok = value is None
            else:
                ok = value == expected_value
            if not ok:
                raise Conflict(key, lsn)

        return check

    def _current_locked(self, key: bytes) -> tuple[bytes | None, int]:
        """Key's newest version counting writes still queued for commit. REQUIRES: _mutex."""
        for w in reversed(self._commit.queue):
            for lsn, k, v in reversed(w.ops):
                if k == key:
                    return (v, lsn) if v is not None else (None, 0)
        neg, value = self._lookup(key, self._next_lsn)
        return (value, -neg) if value is not None else (None, 0)

    def add_commit_listener(self, fn) -> None:
        """Call fn(frames) after every commit, frames being the encoded WAL frames in LSN order.

        fn runs on the committing thread with the engine's mutex held, so it
        sees commits in order and must only hand the frames over (append to a
        bounded queue, call_soon_threadsafe): it must never block or raise.
        """
        with self._mutex:
            self._listeners = self._listeners + [fn]

    def remove_commit_listener(self, fn) -> None:
        with self._mutex:
            self._listeners = [f for f in self._listeners if f is not fn]

    def _notify(self, frames: list[bytes]) -> None:
        for fn in self._listeners:
            try:
                fn(frames)
            except Exception:  # a listener's bug must not fail a committed write
                log.exception("commit listener failed")

    def _prepare_put(self, key: Any, value: Any,
                     request_id: Any = None) -> tuple[int, bytes, tuple]:
        self._validate(key, value)
        rid = _request_id(request_id)
        return (record.TYPE_PUT, _packb((key, value) if rid is None else (key, value, rid)),
                ((key, value),))

    def _prepare_delete(self, key: Any, request_id: Any = None) -> tuple[int, bytes, tuple]:
        self._validate(key, b"")
        rid = _request_id(request_id)
        return record.TYPE_DELETE, _packb(key if rid is None else (key, rid)), ((key, None),)

    def _prepare_batch(self, ops: Iterable[tuple], request_id: Any = None,
                       request_ids: list | None = None) -> tuple[int, bytes, list]:
        kvs: list[tuple[bytes, bytes | None]] = []
        wire: list[tuple[int, bytes, bytes | None]] = []
        size = 0
        mk, mv = self._max_key, self._max_value
        for op in ops:
            # Fast path for well-formed puts: a batch of 1000 spends most of its
            # time here (bench/engine: fillrandom-batch).
            if type(op) is tuple and len(op) == 3 and op[0] == "put":
                k, v = op[1], op[2]
                if type(k) is bytes and type(v) is bytes and 0 < len(k) <= mk and len(v) <= mv:
                    kvs.append((k, v))
                    wire.append((1, k, v))
                    size += len(k) + len(v)
                    continue
            if not isinstance(op, (tuple, list)) or not op:
                raise InvalidArgument(f"batch op must be a tuple, not {op!r}")
            kind = op[0]
            if kind == "put" and len(op) == 3:
                self._validate(op[1], op[2])
                kvs.append((op[1], op[2]))
                wire.append((1, op[1], op[2]))
                size += len(op[1]) + len(op[2])
            elif kind == "delete" and len(op) == 2:
                self._validate(op[1], b"")
                kvs.append((op[1], None))
                wire.append((2, op[1], None))
                size += len(op[1])
            else:
                raise InvalidArgument(
                    f"batch op must be ('put', key, value) or ('delete', key), not {op!r}")
        if not kvs:
            raise InvalidArgument("empty batch")
        if len(kvs) > self.opts.max_batch_ops:
            raise TooLarge("batch (operations)", len(kvs), self.opts.max_batch_ops)
        if size > self.opts.max_batch_bytes:
            raise TooLarge("batch", size, self.opts.max_batch_bytes)
        if request_ids is not None:
            if request_id:
                raise InvalidArgument("give a batch request_id or request_ids, not both")
            if len(request_ids) != len(wire):
                raise InvalidArgument(f"{len(request_ids)} request ids for {len(wire)} ops")
            for i, r in enumerate(request_ids):
                if (rid := _request_id(r)) is not None:
                    wire[i] = (*wire[i], rid)
        elif (rid := _request_id(request_id)) is not None:
            wire[-1] = (*wire[-1], rid)  # the batch's answer is its last op's LSN
        return record.TYPE_BATCH, _packb(wire), kvs

    def _prepare_event(self, topic: Any, key: Any, payload: Any) -> tuple[int, bytes, tuple]:
        _check_bytes("topic", topic, 1024)
        _check_bytes("event key", key, self.opts.max_key_size)
        _check_bytes("event payload", payload, self.opts.max_value_size)
        return record.TYPE_EVENT, _packb((topic, key, payload)), ()

    def _validate(self, key: Any, value: Any) -> None:
        _check_bytes("key", key, self.opts.max_key_size)
        if not key:
            raise InvalidArgument("key must not be empty")
        _check_bytes("value", value, self.opts.max_value_size)

    def _needs_room(self) -> bool:
        return len(self._imms) >= self.opts.max_immutable or \
            len(self._sv[2].levels[0]) >= self.opts.l0_slowdown_trigger

    def _write(self, ftype: int, payload: bytes, kvs, check=None) -> int:
        if len(payload) > record.MAX_PAYLOAD:
            raise TooLarge("encoded record", len(payload), record.MAX_PAYLOAD)
        if self._throttled:
            self._make_room()
        if not self._always:
            return self._write_unsynced(ftype, payload, kvs, check)
        with self._mutex:
            w = self._enqueue_locked(ftype, payload, kvs, check)
        return self._commit.commit(w)

    def _write_unsynced(self, ftype: int, payload: bytes, kvs, check=None) -> int:
        """durability none/interval: nothing to wait for, so write and apply under the mutex."""
        n = len(kvs) or 1
        with self._mutex:
            if self._closed or self._bg_error is not None or self._read_only:
                self._raise_closed()
            if check is not None:
                check()
            lsn = self._next_lsn
            last = lsn + n - 1
            self._next_lsn = last + 1
            self._count_locked(ftype)
            frame = _encode_frame(lsn, self.term, ftype, payload)
            try:
                self._wal_append(frame, lsn)
            except OSError as e:
                raise self._fail(e, "WAL write", resumable=True, outcome_unknown=True) from e
            mem = self._mem
            for i, (k, v) in enumerate(kvs):
                mem.add(lsn + i, k, v)
            self._publish(last, [frame])
            self._rotate_if_full_locked()
        return last

    def _enqueue_locked(self, ftype: int, payload: bytes, kvs, check=None,
                        fut: tuple | None = None) -> Writer:
        """Assign LSNs and join the commit queue. REQUIRES: _mutex held."""
        if self._closed or self._bg_error is not None or self._read_only:
            self._raise_closed()
        if check is not None:
            check()
        lsn = self._next_lsn
        last = lsn + (len(kvs) or 1) - 1
        self._next_lsn = last + 1
        self._count_locked(ftype)
        w = Writer(_encode_frame(lsn, self.term, ftype, payload), lsn,
                   [(lsn + i, k, v) for i, (k, v) in enumerate(kvs)], last)
        w.fut = fut
        self._commit.enqueue_locked(w)
        return w

    def _count_locked(self, ftype: int) -> None:
        """Count a write by kind. REQUIRES: _mutex held (writers on many threads)."""
        st = self._stats
        if ftype == record.TYPE_PUT:
            st.puts += 1
        elif ftype == record.TYPE_DELETE:
            st.deletes += 1
        elif ftype == record.TYPE_BATCH:
            st.batches += 1
        elif ftype == record.TYPE_EVENT:
            st.events += 1

    async def _write_async(self, ftype: int, payload: bytes, kvs, check=None) -> int:
        """The commit path for asyncio callers: no thread per writer.

        The writer joins the same queue as threads do. When it lands at the
        head of an idle queue, the committer thread leads its group; its
        future is resolved from there with one loop wake-up per group and
        loop. Thousands of coroutines thus share fsyncs without a thread
        switch each.
        """
        if len(payload) > record.MAX_PAYLOAD:
            raise TooLarge("encoded record", len(payload), record.MAX_PAYLOAD)
        loop = asyncio.get_running_loop()
        if self._throttled:
            await loop.run_in_executor(self._pool(), self._make_room)
        if not self._always:
            return self._write_unsynced(ftype, payload, kvs, check)
        fut = loop.create_future()
        with self._mutex:
            self._enqueue_locked(ftype, payload, kvs, check, (loop, fut))
        return await fut

    # -- the commit environment (commit.CommitEnv) handed to the pipeline in __init__

    def _write_group(self, group: list[Writer]) -> None:
        # The group's last frame carries the sync-point flag: recovery can
        # then tell damage in synced data from a torn last group.
        last = group[-1].frame = record.mark_sync(group[-1].frame)  # listeners get these bytes
        data = last if len(group) == 1 else b"".join([w.frame for w in group[:-1]] + [last])
        self._wal.append(data, group[0].lsn)
        self._wal.sync()

    def _apply_group(self, group: list[Writer]) -> None:
        mem = self._mem  # only the leader rotates, so this stays ours
        for w in group:
            for op in w.ops:
                mem.add(*op)

    def _publish_group_locked(self, group: list[Writer]) -> None:
        self._count_group_locked(len(group))
        self._publish(group[-1].last_lsn, [w.frame for w in group])
        self._rotate_if_full_locked()

    def _count_group_locked(self, frames: int) -> None:
        """Count one group commit of `frames` frames. REQUIRES: _mutex held."""
        st = self._stats
        st.groups += 1
        st.group_frames += frames
        self._group_sizes[min(frames.bit_length(), len(self._group_sizes) - 1)] += 1

    def _publish(self, last: int, frames: list[bytes]) -> None:
        """Make every LSN up to `last` visible and hand `frames` (the encoded frames of
        those LSNs not yet published, in LSN order) to the commit listeners. The one
        place an LSN becomes visible: writes, group commits, replicated frames, a moved
        commit point and recovery all come here (writes then `_rotate_if_full_locked`).

        Reads see `last`, or no more than the replication commit point while one is
        set (`set_commit_lsn`); the read point never moves back.
        REQUIRES: _mutex held, `last` durable per the mode and applied to the memtable.
        """
        self._visible_lsn = last
        c = self._commit_lsn
        self._read_lsn = last if c is None else max(self._read_lsn, min(last, c))
        if frames and self._listeners:
            self._notify(frames)

    def _rotate_if_full_locked(self) -> None:
        """After a write: rotate the memtable if it, or the log since the last rotation,
        is full, or flush() asked the commit leader to. REQUIRES: _mutex held."""
        if self._mem.size >= self._memtable_size or self._rotate_requested \
                or self._wal.bytes_written - self._rotated_at >= self._log_limit:
            self._rotate_requested = False
            self._rotate_locked()

    def _fail_group_locked(self, error: BaseException) -> tuple[BaseException, BaseException]:
        # A write(2) that failed may have written part of the group; an fsync
        # that failed leaves it unknown what reached the disk: the group's
        # writes may be present after a restart. Writers queued behind it were
        # never written.
        err = self._fail(error, "WAL write" if self._wal.failed is None else "WAL fsync",
                         resumable=self._wal.failed is None, outcome_unknown=True)
        return err, self._stopped()

    def _raise_closed(self) -> None:
        if self._bg_error is not None:
            raise self._stopped()
        if self._read_only and not self._closed:
            raise ReadOnly(f"{self.path} follows another node's log: writes go to the master")
        raise Closed("engine is closed")

    def _stopped(self, outcome_unknown: bool = False) -> WritesStopped:
        """A fresh copy of the error that stopped writes, for one caller to raise."""
        e = self._bg_error
        assert e is not None
        msg = str(e)
        if outcome_unknown:
            msg = ("this write's outcome is unknown: it may be present after a restart. " + msg)
        return type(e)(msg, e.cause, e.path, e.resumable, outcome_unknown)

    def _fail(self, error: BaseException, what: str, resumable: bool = False,
              outcome_unknown: bool = False) -> WritesStopped:
        """Stop accepting writes after an I/O error; return the error for the caller that
        hit it. REQUIRES: _mutex held.

        After a failed fsync the state of the file is unknown (the kernel may
        have dropped the dirty pages), so retrying could acknowledge data that
        is not on disk: a restart is needed. A full disk where nothing was
        left half-done, or where the half-written tail can be cut off
        (`resumable`), resumes by itself once space is freed (`_resume_loop`).
        Reads keep working either way.
        """
        if self._bg_error is None:
            nospace = isinstance(error, OSError) and error.errno in _NO_SPACE
            resumable = resumable and nospace
            path = getattr(error, "filename", None) or self.path
            msg = (f"{what} failed in {path}: {error}; writes stopped"
                   + ("; they resume once space is freed" if resumable else
                      "; restart the server to resume them"))
            self._bg_error = (NoSpace if nospace else WritesStopped)(msg, error, path, resumable)
            log.error("%s", msg)
            self._bg_cv.notify_all()
            if resumable:
                self._start_thread(self._resume_loop, "strata-resume")
        return self._stopped(outcome_unknown)

    @property
    def write_error(self) -> WritesStopped | None:
        """Why writes are stopped (None while they are taken): for health and status.

        Also a full disk that holds up a flush or compaction which writes are
        waiting for: they are refused with NoSpace until space is freed.
        """
        return self._bg_error or self._stalled_for_space()

    def _stalled_for_space(self) -> NoSpace | None:
        """NoSpace if writes are held by a stall threshold that only paused background
        work could lift (a flush or compaction waiting for disk space)."""
        paused = self._paused
        if not paused:
            return None
        opts = self.opts
        if "flush" in paused and len(self._imms) >= opts.max_immutable:
            why = f"flushes are waiting for disk space ({paused['flush']})"
        elif "compaction" in paused and \
                len(self.versions.current.levels[0]) >= opts.l0_stop_trigger:
            why = f"compactions are waiting for disk space ({paused['compaction']})"
        else:
            return None
        return NoSpace(f"{self.path}: writes refused: {why}; they resume once space is freed",
                       None, self.path, resumable=True)

    def _resume_loop(self) -> None:
        """After a full disk: retry every half second until space is back, then make the
        log sound again (cut a half-written frame, open a segment) and take writes."""
        need = 2 << 20  # a margin, so that writes do not flap on the last bytes
        while True:
            with self._bg_cv:
                self._bg_cv.wait(0.5)
                err = self._bg_error
                if self._closed or err is None or not err.resumable:
                    return
            try:
                if self.fs.free_bytes(self.path) < need:
                    continue
                with self._edit_lock:
                    self.versions.ensure_manifest()
                with self._mutex:
                    self._wal.recover_after_failed_write(self._visible_lsn + 1)
                    self._next_lsn = self._visible_lsn + 1
                    self._bg_error = None
                    self._install_sv()
                    self._bg_cv.notify_all()
                log.warning("%s: writes resumed (%s)", self.path, err)
                return
            except OSError as e:
                log.debug("resume of %s not possible yet: %s", self.path, e)

    def _make_room(self) -> None:
        """Apply the write slowdown / stop thresholds before a write."""
        opts = self.opts
        l0 = len(self._sv[2].levels[0])
        if opts.l0_slowdown_trigger <= l0 < opts.l0_stop_trigger and len(self._imms) < opts.max_immutable:
            # Gentle: give the compaction thread a millisecond, once per write.
            t0 = time.monotonic()
            time.sleep(0.001)
            with self._mutex:  # writers on many threads stall at once
                self._stats.slowdowns += 1
                self._stats.stall_seconds += time.monotonic() - t0
            return
        t0 = time.monotonic()
        deadline = t0 + opts.stall_timeout_s
        with self._bg_cv:
            counted = False
            while (len(self._imms) >= opts.max_immutable
                   or len(self.versions.current.levels[0]) >= opts.l0_stop_trigger):
                if self._closed or self._bg_error is not None:
                    self._raise_closed()
                stalled = self._stalled_for_space()
                if stalled is not None:  # no progress before space is freed: say so now
                    raise stalled
                if not counted:
                    self._stats.stops += 1
                    counted = True
                    self._maybe_schedule_locked()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WriteStalled(len(self.versions.current.levels[0]), time.monotonic() - t0)
                self._bg_cv.wait(min(left, 0.1))
            self._stats.stall_seconds += time.monotonic() - t0

    def _rotate_locked(self) -> None:
        """Make the memtable immutable and start a new one. REQUIRES: _mutex held."""
        if self._bg_error is not None:
            return  # after a failed write the WAL's state is unknown: do not roll it
        if not len(self._mem) and self._wal.bytes_written == self._rotated_at:
            return  # nothing written since the last rotation
        self._rotated_at = self._wal.bytes_written
        try:
            self._wal.roll(self._visible_lsn + 1)
        except OSError as e:
            if not _no_space(e):
                # Writes already applied stay acknowledged; later ones are refused.
                self._fail(e, "WAL roll")
                return
            # No room for a new segment: the memtable still rotates (its flush may
            # free space) and the log goes on in the open segment, which then
            # holds more than one memtable's writes. Nothing was left half-done.
            if not self._roll_failing:
                log.warning("%s: no space to start a WAL segment (%s); continuing in %s",
                            self.path, e, self._wal.segments()[-1][1])
            self._roll_failing = True
        else:
            self._roll_failing = False
        # The flush point this memtable's flush sets: every frame up to here is in
        # a sealed segment, and every key-space write among them in this memtable
        # or an older one (events need no table).
        self._mem.last_lsn = max(self._mem.last_lsn, self._visible_lsn)
        self._imms = self._imms + (self._mem,)
        self._mem = MemTable()
        self._install_sv()
        self._bg_cv.notify_all()

    # ------------------------------------------------------------------ reads

    def get(self, key: bytes, snapshot: Snapshot | None = None) -> bytes | None:
        """The value of key at the snapshot (default: every write acknowledged so far)."""
        if type(key) is not bytes:
            _check_bytes("key", key, self.opts.max_key_size)
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
            _check_bytes("key", key, self.opts.max_key_size)
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
                if may_contain(key):
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
            yield from _visible(sources, snap)
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

    @property
    def stats(self) -> EngineStats:
        """Counters since open (storage/stats.py): writes, groups, flushes, compactions,
        stalls, recovery. A copy: the caller may keep it."""
        with self._mutex:
            st = self._stats
            return replace(st, puts=st.puts + self._puts, memtable_bytes=self._mem.size,
                           block_cache_hits=self._cache.hits,
                           block_cache_misses=self._cache.misses)

    def group_size_histogram(self) -> list[tuple[int, int]]:
        """[(upper bound on frames per group, groups)] of the WAL group commits so far."""
        return [((1 << i) - 1 if i < len(self._group_sizes) - 1 else -1, n)
                for i, n in enumerate(self._group_sizes)]

    @property
    def last_lsn(self) -> int:
        return self._visible_lsn

    @property
    def flushed_lsn(self) -> int:
        return self.versions.flushed_lsn

    @property
    def read_lsn(self) -> int:
        """The LSN reads see: last_lsn, or the replication commit point if lower."""
        return self._read_lsn

    # ------------------------------------------------------------------ replication
    # What replication (strata.replication) builds on; the engine knows nothing of peers.

    @property
    def term_history(self) -> tuple[tuple[int, int], ...]:
        """(term, first LSN) of each run of frames of one term, oldest first, as far back
        as this database remembers (kept in the manifest across flushes)."""
        return self._terms

    def term_at(self, lsn: int) -> int:
        """The term of the frame holding `lsn` (0 before the first known term)."""
        terms = self._terms
        i = bisect_right(terms, lsn, key=lambda t: t[1]) - 1
        return terms[i][0] if i >= 0 else 0

    def last_entry(self) -> tuple[int, int]:
        """(term, LSN) of the last frame in the log: what an election compares."""
        last = self._visible_lsn
        return self.term_at(last), last

    def set_read_only(self, read_only: bool) -> None:
        """Refuse (True) or take (False) writes other than `apply_frames`: ReadOnly."""
        with self._mutex:
            self._read_only = read_only

    def set_commit_lsn(self, lsn: int | None) -> None:
        """Hold reads at `lsn` (they see min(last_lsn, lsn)); None: reads see every
        applied write. The read point never moves back."""
        with self._mutex:
            self._commit_lsn = lsn
            self._publish(self._visible_lsn, [])

    def begin_term(self, term: int, node: str) -> int:
        """Write a new master's term marker (the first frame of `term`); later frames
        carry `term`. Returns its LSN once durable per the mode."""
        return self._write(*self._prepare_term(term, node))

    async def begin_term_async(self, term: int, node: str) -> int:
        return await self._write_async(*self._prepare_term(term, node))

    def _prepare_term(self, term: int, node: str):
        if term <= self.term:
            raise InvalidArgument(f"term {term} is not above the log's term {self.term}")

        def take() -> None:  # under _mutex, just before the marker takes its LSN
            if term <= self.term:
                raise InvalidArgument(f"term {term} is not above the log's term {self.term}")
            self.term = self.versions.term = term
            self._terms = self.versions.terms = self._terms + ((term, self._next_lsn),)

        return record.TYPE_TERM, _packb((term, node.encode())), (), take

    def apply_frames(self, data: bytes) -> int:
        """Append frames another node's log holds (replication), exactly as they are
        except the sync-point flag, which marks the end of this call's write; fsync;
        apply; publish to the commit listeners. Returns the last LSN applied.

        The frames must continue this log (LogMismatch otherwise) and check out
        (InvalidArgument). Works while read-only; stall thresholds apply as to writes.
        """
        try:
            frames = list(record.iter_frames(data, 0))
        except record.BadFrame as e:
            raise InvalidArgument(f"replicated frames: {e.reason} at offset {e.offset}") from None
        if not frames:
            return self._visible_lsn
        if self._throttled:
            self._make_room()
        with self._mutex:
            if self._closed or self._bg_error is not None:
                self._raise_closed()
            nxt = self._next_lsn
            terms = list(self._terms)
            term = self.term
            ops: list = []
            out: list[bytes] = []
            final = len(frames) - 1
            for i, fr in enumerate(frames):
                if fr.lsn != nxt:
                    raise LogMismatch(nxt, fr.lsn)
                if fr.term < (terms[-1][0] if terms else 0):
                    raise InvalidArgument(f"replicated frame at LSN {fr.lsn} has term {fr.term}, "
                                          f"older than this log's {terms[-1][0]}")
                if not terms or fr.term != terms[-1][0]:
                    terms.append((fr.term, fr.lsn))
                term = max(term, fr.term)
                fops = record.decode_ops(fr.type, fr.lsn, fr.payload)
                ops.extend(fops)
                nxt = fr.lsn + (len(fops) or 1)
                raw = bytes(fr.raw)
                if bool(raw[24] & record.SYNC_FLAG) != (i == final):
                    flags = fr.type | (record.SYNC_FLAG if i == final else 0)
                    raw = _encode_frame(fr.lsn, fr.term, flags, fr.payload)
                out.append(raw)
                self._count_locked(fr.type)
            try:
                self._wal_append(b"".join(out), frames[0].lsn)
                self._wal.sync()
            except OSError as e:
                failed_sync = self._wal.failed is not None
                raise self._fail(e, "WAL fsync" if failed_sync else "WAL write",
                                 resumable=not failed_sync, outcome_unknown=True) from e
            self._next_lsn = nxt
            self.term = self.versions.term = term
            self._terms = self.versions.terms = tuple(terms)
            mem = self._mem
            for op in ops:
                mem.add(*op)
            last = nxt - 1
            self._count_group_locked(len(out))
            self._publish(last, out)
            self._rotate_if_full_locked()
        return last

    def wal(self) -> Wal:
        """The log itself: for tests and tools. Other layers use read_log, earliest_lsn
        and wal_stats."""
        return self._wal

    def read_log(self, from_lsn: int) -> Iterator[record.Frame]:
        """The retained WAL frames from `from_lsn` on (a batch spanning it included), in
        LSN order, as the committed frames were written. The segments read are pinned
        until the iterator is exhausted or closed. Raises Compacted(earliest_lsn) when
        `from_lsn` is no longer retained, Corruption on a damaged frame or a gap.
        Replication ships and history subscribers replay exactly these frames."""
        return self._wal.read_from(from_lsn)

    @property
    def earliest_lsn(self) -> int:
        """The oldest LSN read_log can still return (0: nothing retained)."""
        return self._wal.earliest_lsn()

    def hold_log(self, name: str, lsn: int) -> None:
        """Keep the log from `lsn` on for `name` (a history reader that comes back
        later, such as a named consumer), replacing its previous hold. Bounded: the
        segments holds keep beyond wal_retention_bytes total at most wal_hold_bytes;
        past that the oldest are purged anyway and read_log(lsn) raises Compacted.
        Takes effect at the next purge (a flush, or purge_log)."""
        self._wal.hold(name, lsn)

    def release_log(self, name: str) -> None:
        """Drop `name`'s hold (see hold_log); its log goes at the next purge."""
        self._wal.release(name)

    def set_log_holds(self, holds: dict[str, int]) -> None:
        """Replace every hold at once ({name: first LSN to keep}); the first call ends
        the wait of wal_holds_from_open."""
        self._wal.set_holds(holds)

    def log_holds(self) -> dict[str, dict]:
        """Each hold: {"lsn": first LSN kept, "held_bytes": retained log it keeps beyond
        wal_retention_bytes, "retained": whether its LSN is still in the log}. A hold
        with held_bytes near wal_hold_bytes is about to lose its oldest segment."""
        held = self._wal.hold_stats(self.versions.flushed_lsn)
        earliest = self._wal.earliest_lsn()
        return {name: {"lsn": lsn, "held_bytes": held.get(name, 0),
                       "retained": lsn >= earliest}
                for name, lsn in self._wal.holds().items()}

    def log_bytes_from(self, lsn: int) -> int:
        """Written WAL bytes from `lsn` to the end, to within one segment: a reader's
        lag in bytes."""
        return self._wal.bytes_from(lsn)

    def purge_log(self) -> list[str]:
        """Delete the flushed log that retention and holds no longer keep, now rather
        than at the next flush; returns the paths removed. File I/O on the caller's
        thread: call it off an event loop."""
        return self._wal.purge(self.versions.flushed_lsn)

    def recent_request_ids(self, limit: int,
                           max_age_s: float = math.inf) -> list[tuple[str, int, float]]:
        """The request ids written in the retained log, oldest first, as (request id, LSN
        of the op it names, written): `written` is when the frame's segment was last
        written (wall clock, time.time(); now for the open segment), so never before
        the frame was. At most the newest `limit` ids, and none from a segment last
        written over `max_age_s` ago (every frame in it is older). An id written twice
        appears twice. Reads the log on the caller's thread (call it off an event loop);
        raises Corruption as read_log does."""
        if limit <= 0:
            return []
        now = time.time()
        segs = self._wal.segments()
        young: list[tuple[int, float]] = []  # (first LSN, written) of the segments to read
        for i in range(len(segs) - 1, -1, -1):
            first, path = segs[i]
            try:
                written = now if i == len(segs) - 1 else self.fs.mtime(path)
            except FileNotFoundError:  # purged meanwhile: it and all older are gone
                break
            if now - written > max_age_s:
                break
            young.append((first, written))
        if not young:
            return []
        young.reverse()
        out: collections.deque = collections.deque(maxlen=limit)
        seg = 0
        for fr in self._wal.read_from(young[0][0]):
            while seg + 1 < len(young) and fr.lsn >= young[seg + 1][0]:
                seg += 1
            for rid, lsn in record.decode_ids(fr.type, fr.lsn, fr.payload):
                out.append((rid, lsn, young[seg][1]))
        return list(out)

    def wal_stats(self) -> dict:
        """WAL figures: {"syncs", "sync_seconds", "sync_buckets": [(upper bound in
        seconds or inf, count)], "bytes_written" (frames appended since open),
        "retained_bytes" (headers and frames of the segments on disk: what retention
        counts), "preallocated_bytes" (space the files hold beyond those),
        "segments"}."""
        w = self._wal
        bounds = (*SYNC_BUCKETS, float("inf"))
        retained, preallocated = w.usage()
        return {"syncs": w.syncs, "sync_seconds": w.sync_seconds,
                "sync_buckets": list(zip(bounds, w.sync_counts)),
                "bytes_written": w.bytes_written, "retained_bytes": retained,
                "preallocated_bytes": preallocated, "segments": len(w.segments())}

    # ------------------------------------------------------------------ async

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            with self._mutex:
                if self._executor is None:
                    # Enough threads for writers to meet in one group commit.
                    self._executor = concurrent.futures.ThreadPoolExecutor(64, "strata-io")
        return self._executor

    async def put_async(self, key: bytes, value: bytes, *,
                        request_id: str | None = None) -> int:
        """put() for asyncio callers: awaits the group's fsync without blocking the loop."""
        return await self._write_async(*self._prepare_put(key, value, request_id))

    async def delete_async(self, key: bytes, *, request_id: str | None = None) -> int:
        return await self._write_async(*self._prepare_delete(key, request_id))

    async def write_batch_async(self, ops: list[tuple], *, request_id: str | None = None,
                                request_ids: list[str | None] | None = None) -> int:
        return await self._write_async(*self._prepare_batch(ops, request_id, request_ids))

    async def append_event_async(self, topic: bytes, key: bytes, payload: bytes) -> int:
        return await self._write_async(*self._prepare_event(topic, key, payload))

    async def get_async(self, key: bytes, snapshot: Snapshot | None = None) -> bytes | None:
        """get() never waits for I/O other than a page-cache read, so it runs inline."""
        return self.get(key, snapshot)

    async def checkpoint_async(self, dest: str) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool(), self.checkpoint, dest)

    # ------------------------------------------------------------------ background

    def _interval_sync_loop(self) -> None:
        period = self.opts.sync_interval_ms / 1000.0
        while not self._closed:
            deadline = time.monotonic() + period
            with self._bg_cv:  # a condition rather than sleep: close wakes it
                while not self._closed and (left := deadline - time.monotonic()) > 0:
                    self._bg_cv.wait(left)
            if self._closed:
                return
            try:
                self._wal.sync_if_dirty()
            except OSError as e:
                with self._mutex:
                    self._fail(e, "WAL fsync")
                return

    def _flush_loop(self) -> None:
        while True:
            with self._bg_cv:
                while not self._imms and not self._closed:
                    self._bg_cv.wait()
                if not self._imms:
                    return
                imm = self._imms[0]
            try:
                self._flush(imm)
            except BaseException as e:
                if _no_space(e) and self._pause("flush", e):
                    continue  # retried once space is back; writes stall at max_immutable
                if not isinstance(e, WritesStopped):
                    log.exception("flush failed")
                    with self._mutex:
                        self._fail(e, "flush")
                return
            self._resumed("flush")

    def _flush(self, imm: MemTable) -> None:
        t0 = time.monotonic()
        number = self.versions.new_file_number()
        with self._mutex:
            self._pending.add(number)
        path = os.path.join(self.path, table_name(number))
        try:
            if not len(imm):
                outs = []  # rotated for the log's sake (events only): no table, a new flush point
            elif self._worker_dir is not None:
                # Packing the dict is C; sorting and encoding happen in the worker.
                job = compaction.FlushJob(self.fs.local_path(path), imm.raw_items(),
                                          self._smallest_snapshot(), self.opts.codec(0))
                outs = _worker("flush").run(job).outputs
            else:
                entries = compaction.drop_obsolete(imm.sorted_entries(), self._smallest_snapshot(),
                                                   False)
                outs = sstable.build_tables(self.fs, entries, lambda i: path, 1 << 62,
                                            compression=self.opts.codec(0))
        except BaseException:
            # The half-written table goes now (its space is what the retry needs).
            try:
                self.fs.remove(path)
            except OSError:
                pass
            with self._mutex:
                self._pending.discard(number)
            raise
        edit: dict = {"flushed_lsn": imm.last_lsn}
        new_readers = {}
        if outs:
            _, props = outs[0]
            meta = FileMeta(number, props["file_size"], props["smallest"], props["largest"],
                            props["entries"], props["min_lsn"], props["max_lsn"])
            edit["add"] = [meta.to_wire(0)]
            new_readers[number] = self._open_table(number)
        self.fs.sync_dir(self.path)

        def installed() -> None:
            self._pending.discard(number)
            self._imms = self._imms[1:]
            self._maybe_schedule_locked()

        self._log_and_apply(edit, new_readers, (), installed)
        size = sum(p["file_size"] for _, p in outs)
        dt = time.monotonic() - t0
        with self._mutex:
            st = self._stats
            st.flushes += 1
            st.flush_bytes += size
            st.flush_seconds += dt
        log.info("flushed memtable to %s: %d entries, %d bytes in %.3fs (%.1f MB/s)",
                 table_name(number), len(imm), size, dt, size / max(dt, 1e-9) / 1e6)
        self._wal.purge(self.versions.flushed_lsn)
        self._delete_obsolete()

    def _log_and_apply(self, edit: dict, new_readers: dict | None = None, gone=(),
                       installed=None) -> None:
        """Make a version edit durable, then install it and publish a new read view.

        The manifest write and its fsync run outside `_mutex` (LevelDB's
        LogAndApply unlocks around them), so commit groups never wait for
        them; `_edit_lock` keeps edits in order and lets a checkpoint capture
        the version and the flush point as one. Readers of new tables are
        registered before any view can list them. `installed` runs under
        `_mutex` with the new version in place.
        """
        with self._edit_lock:
            if new_readers:
                with self._mutex:
                    self._readers.update(new_readers)
            try:
                self.versions.log_and_apply(edit)
            except BaseException as e:
                # A manifest edit half-written cannot be appended after: a
                # restart recovers it (a torn last edit is dropped).
                with self._mutex:
                    raise self._fail(e, "manifest write") from e
            with self._mutex:
                for n in gone:
                    self._readers.pop(n, None)
                if installed is not None:
                    installed()
                self._install_sv()
                self._bg_cv.notify_all()

    def _smallest_snapshot(self) -> int:
        with self._mutex:
            if self._snapshots:
                return min(self._snapshots[0], self._read_lsn)
            return self._read_lsn

    def _maybe_schedule_locked(self) -> None:
        self._compaction_requested = True
        self._bg_cv.notify_all()

    def _compaction_loop(self) -> None:
        while True:
            with self._bg_cv:
                while not self._compaction_requested and not self._closed:
                    self._bg_cv.wait()
                if self._closed:
                    return
                self._compaction_requested = False
                if self._bg_error is not None:
                    continue
                c = self._picker.pick(self.versions.current)
                if c is None and self._manual_compaction:
                    c = self._picker.pick_manual(self.versions.current, self._manual_compaction)
                if c is None:
                    self._manual_compaction = 0
                    self._bg_cv.notify_all()
                    continue
                self._compacting = True
            try:
                self._run_compaction(c)
            except compaction.Cancelled:
                log.info("compaction L%d->L%d cancelled: closing", c.level, c.output_level)
                with self._bg_cv:
                    self._compacting = False
                    self._bg_cv.notify_all()
                return
            except BaseException as e:
                with self._bg_cv:
                    self._compacting = False
                    self._bg_cv.notify_all()
                if _no_space(e):
                    self._remove_partial_outputs()
                    if self._pause("compaction", e):
                        with self._bg_cv:
                            self._compaction_requested = True
                        continue  # writes go on; L0 grows into the slowdown thresholds
                if not isinstance(e, WritesStopped):
                    log.exception("compaction failed")
                    with self._mutex:
                        self._fail(e, "compaction")
                return
            self._resumed("compaction")
            with self._bg_cv:
                self._compacting = False
                self._compaction_requested = True
                self._bg_cv.notify_all()

    def _pause(self, what: str, error: BaseException) -> bool:
        """A flush or compaction ran out of space: wait, then let the caller retry.

        Returns False if the engine is closing. WAL writes may still fit:
        writes go on until the usual stall thresholds (immutable memtables,
        L0 files) hold them, and fail only if the log itself runs out.
        """
        with self._bg_cv:
            if what not in self._paused:
                log.warning("%s: %s paused, no space left (%s); retrying every %.0f s",
                            self.path, what, error, self._pause_s)
                if what == "flush":
                    self._stats.paused_flush += 1
                else:
                    self._stats.paused_compaction += 1
            self._paused[what] = str(error)
            self._bg_cv.wait(self._pause_s)
            return not self._closed

    def _resumed(self, what: str) -> None:
        if what in self._paused:
            with self._bg_cv:
                if self._paused.pop(what, None) is not None:
                    log.warning("%s: %s resumed", self.path, what)

    @property
    def paused(self) -> dict[str, str]:
        """Background work waiting for disk space: {"flush"|"compaction": error}."""
        return dict(self._paused)

    def _remove_partial_outputs(self) -> None:
        """Delete the temporary outputs of a compaction cut short (orphans at next open
        otherwise: removing them now gives the space back at once)."""
        for name in self.fs.listdir(self.path):
            if is_compaction_output(name):
                try:
                    self.fs.remove(os.path.join(self.path, name))
                except OSError:
                    pass

    def _run_compaction(self, c: compaction.Compaction) -> None:
        t0 = time.monotonic()
        if c.trivial_move:
            f = c.inputs[0]
            edit = {"del": [[c.level, f.number]], "add": [f.to_wire(c.output_level)]}
            self._log_and_apply(edit)
            with self._mutex:
                self._stats.trivial_moves += 1
            return
        inputs = [(c.level, f) for f in c.inputs] + [(c.output_level, f) for f in c.next_inputs]
        local = self._worker_dir
        job = compaction.MergeJob(
            dir=local or self.path,
            inputs=[os.path.join(local or self.path, table_name(f.number)) for _, f in inputs],
            smallest_snapshot=self._smallest_snapshot(),
            drop_tombstones=c.bottommost,
            target_file_size=self.opts.target_file_size,
            prefix=compaction_prefix(self.versions.new_file_number()),
            compression=self.opts.codec(c.output_level))
        if local is not None:
            result = _worker("merge").run(job)
        else:
            result = compaction.run_merge(job, self.fs)
        edit: dict = {"del": [[lvl, f.number] for lvl, f in inputs], "add": []}
        new_readers = {}
        for tmp, props in result.outputs:
            number = self.versions.new_file_number()
            with self._mutex:
                self._pending.add(number)
            final = os.path.join(self.path, table_name(number))
            self.fs.rename(tmp, final)
            meta = FileMeta(number, props["file_size"], props["smallest"], props["largest"],
                            props["entries"], props["min_lsn"], props["max_lsn"])
            edit["add"].append(meta.to_wire(c.output_level))
            new_readers[number] = self._open_table(number)
        self.fs.sync_dir(self.path)
        self._log_and_apply(edit, new_readers, [f.number for _, f in inputs],
                            lambda: self._pending.difference_update(new_readers))
        dt = time.monotonic() - t0
        with self._mutex:
            st = self._stats
            st.compactions += 1
            st.compaction_read_bytes += result.read_bytes
            st.compaction_write_bytes += result.written_bytes
            st.compaction_seconds += dt
        log.info("compacted L%d->L%d: %d files, %d -> %d bytes in %.3fs (%.1f MB/s read)",
                 c.level, c.output_level, len(inputs), result.read_bytes,
                 result.written_bytes, dt, result.read_bytes / max(dt, 1e-9) / 1e6)
        self._delete_obsolete()

    def _delete_obsolete(self) -> None:
        """Unlink tables no live version lists (pinned ones stay until unpinned).

        Readers of the deleted tables stay usable for in-flight gets: their
        mmap outlives the directory entry, and they are dropped with the last
        read view that holds them.
        """
        # List first, then read the live set: a table created after the
        # listing is not in it, and one pending at listing time is pending or
        # live by the time the set is read.
        names = self.fs.listdir(self.path)
        with self._mutex:
            live = self.versions.live_files() | self._pending
            for n in [n for n in self._readers if n not in live]:
                del self._readers[n]
        for name in names:
            number = parse_table_name(name)
            if number is not None and number not in live:
                try:
                    self.fs.remove(os.path.join(self.path, name))
                except FileNotFoundError:
                    pass

    # ------------------------------------------------------------------ maintenance

    def flush(self) -> None:
        """Write the memtable to an L0 table and wait until it is installed."""
        with self._bg_cv:
            if self._closed or self._bg_error is not None:
                self._raise_closed()
            if self._commit.queue:
                # A commit leader is writing a group outside the mutex: rolling
                # the WAL now would start the new segment at an LSN already
                # written to the old one. The leader rotates when it finishes.
                self._rotate_requested = True
            else:
                self._rotate_locked()
            while (self._imms or self._rotate_requested) and self._bg_error is None:
                if "flush" in self._paused:
                    raise NoSpace(f"flush of {self.path} is waiting for disk space: "
                                  f"{self._paused['flush']}", None, self.path, True)
                self._bg_cv.wait(0.1)
            if self._bg_error is not None:
                self._raise_closed()

    def compact_all(self, timeout: float = 600.0) -> None:
        """Flush, then compact until the tree is settled into one level. Blocks."""
        self.flush()
        deadline = time.monotonic() + timeout
        with self._bg_cv:
            # The data present now is pushed down; what writes add meanwhile is
            # left to the automatic compactions, so a manual compaction ends
            # under a steady write load too.
            self._manual_compaction = max(1, self._visible_lsn)
            self._maybe_schedule_locked()
            while (self._manual_compaction or self._compacting or self._compaction_requested) \
                    and self._bg_error is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("compaction did not finish in time")
                if "compaction" in self._paused:
                    self._manual_compaction = 0
                    raise NoSpace(f"compaction of {self.path} is waiting for disk space: "
                                  f"{self._paused['compaction']}", None, self.path, True)
                self._bg_cv.wait(0.1)
            if self._bg_error is not None:
                self._raise_closed()

    def wait_for_compactions(self, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        with self._bg_cv:
            while (self._compacting or self._compaction_requested or self._imms) \
                    and self._bg_error is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("compaction did not finish in time")
                self._bg_cv.wait(0.1)

    def levels(self) -> list[dict]:
        v = self.versions.current
        return [{"level": i, "files": len(v.levels[i]), "bytes": v.level_size(i)}
                for i in range(NUM_LEVELS)]

    def disk_usage(self) -> dict:
        """{"sst_bytes": live tables, "wal_bytes": the log's written bytes (segment
        headers and frames: what WAL retention counts), "wal_preallocated_bytes": space
        the log's files take beyond that, allocated ahead for frames}. The two WAL
        figures add up to the files' sizes."""
        sst = sum(f.size for _, f in self.versions.current.files())
        written, preallocated = self._wal.usage()
        return {"sst_bytes": sst, "wal_bytes": written, "wal_preallocated_bytes": preallocated}

    def verify(self) -> None:
        """Check every block of every live table; raise Corruption at the first bad one."""
        for r in list(self._sv[3].values()):
            r.verify()

    def checkpoint(self, dest: str) -> None:
        """Write a consistent, openable copy of the database into `dest` (must not exist).

        The version, the flush point and the WAL segments are captured under
        one lock, and the segments are pinned until copied: a flush that
        purges the log meanwhile cannot take frames the copy needs. The copy
        (storage/checkpoint.py) holds every write acknowledged before the call.
        """
        if self.fs.exists(dest):
            raise InvalidArgument(f"checkpoint destination {dest} already exists")
        with self._edit_lock, self._mutex:
            if self._closed:
                self._raise_closed()
            version = self.versions.current
            self.versions.ref(version)
            flushed = self.versions.flushed_lsn
            next_file = self.versions.next_file
            terms, term = self._terms, self.term
            try:
                segs = self._wal.pin(flushed + 1)
            except BaseException:
                self.versions.unref(version)
                raise
        try:
            checkpoint.write(self.fs, self.path, dest, version, flushed, next_file,
                             self._wal, segs, terms, term)
        finally:
            self._wal.unpin(flushed + 1)
            self.versions.unref(version)

    # ------------------------------------------------------------------ close

    def _halt(self) -> None:
        """Stop the background threads and drop the engine without flushing or closing files.

        For crash tests: what is on disk is what a crash at this instant
        would leave (the files' page cache included).
        """
        with self._bg_cv:
            self._closed = True
            self._commit.closed = True
            self._bg_cv.notify_all()
        self._commit.wake_committer()
        for t in self._threads:
            t.join(10)
        self._wal.halt()
        self._release_lock_file()

    def close(self, flush: bool = True) -> None:
        """Flush the memtable, stop background work, close files. Idempotent.

        A clean close leaves nothing to replay: the next open reads no WAL frame.
        `flush=False` leaves the memtable's writes in the log only (a replicated
        node: the next open may still cut them, see `open(truncate_after=)`).
        """
        if self._closed:
            return
        try:
            if flush and self._bg_error is None and len(self._mem):
                try:
                    self.flush()
                except StorageError:
                    pass
            if self._compacting and self._worker_dir is not None:
                # Do not make close (and so a restart) wait seconds for a merge
                # whose result would only be installed to be compacted again.
                _worker("merge").cancel(self._worker_dir)
            with self._bg_cv:
                while self._compacting:
                    self._bg_cv.wait(0.1)
                self._closed = True  # no write joins the queue from here on
                self._commit.closed = True
                self._bg_cv.notify_all()
                # Groups already queued are still being written: let them finish
                # before the log is closed under them.
                while self._commit.queue:
                    self._bg_cv.wait(0.01)
            self._commit.wake_committer()
            for t in self._threads:
                t.join(timeout=30)
            failure: OSError | None = None
            try:
                self._wal.close()
            except OSError as e:  # a file system remounted read-only, a dying disk
                failure = e
            if self._bg_error is None and failure is None:
                try:
                    self._wal.purge(self.versions.flushed_lsn)
                except OSError as e:
                    log.warning("%s: WAL segments not purged at close: %s", self.path, e)
            self.versions.close()
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            if failure is not None:
                lost = ("no acknowledged write is lost (each was synced before it was "
                        "acknowledged), but unacknowledged ones may be present after a restart"
                        if self._always else
                        f"writes acknowledged since its last sync may be lost "
                        f"(durability={self.opts.durability})")
                msg = f"closing {self.path}: the WAL could not be synced ({failure}); {lost}"
                log.error("%s", msg)
                raise WritesStopped(msg, failure, getattr(failure, "filename", None) or self.path)
        finally:
            self._closed = True
            self._release_lock_file()


def _request_id(request_id: Any) -> str | None:
    """The id to write: None for None or "" (no id), else a str of at most
    record.MAX_REQUEST_ID characters (InvalidArgument otherwise)."""
    if request_id is None or request_id == "":
        return None
    if type(request_id) is not str:
        raise InvalidArgument(f"request id must be a str, not {type(request_id).__name__}")
    if len(request_id) > record.MAX_REQUEST_ID:
        raise InvalidArgument(f"request id is {len(request_id)} characters; the limit is "
                              f"{record.MAX_REQUEST_ID}")
    return request_id


def _no_space(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in _NO_SPACE


def _chain(readers: list[sstable.TableReader], start, end) -> Iterator:
    for i, r in enumerate(readers):
        yield from r.entries_from(start if i == 0 else None, end)


SCAN_CHUNK = 256  # entries taken from each source at a time by a scan's merge


def _merged_chunks(sources: list[Iterable]) -> Iterator[list[tuple]]:
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


def _visible(sources: list[Iterable], snap: int) -> Iterator[tuple[bytes, bytes]]:
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
    for chunk in _merged_chunks(sources):
        for k, neg, v in chunk:
            if neg < neg_snap or k == last:
                continue
            last = k
            if v is not None:
                yield k, v
