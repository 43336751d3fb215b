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
import concurrent.futures
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import msgpack
from sortedcontainers import SortedList

from . import checkpoint, compaction, errors, record, sstable
from .background import BackgroundWork, worker_for
from .commit import CommitCallbacks, CommitPipeline, Writer
from .manifest import NUM_LEVELS, Version, VersionSet
from .memtable import MemTable
from .options import Options
from .reads import ReadPath, read_plan
from .recovery import Recovery
from .replication_api import ReplicationApi
from .stats import EngineStats
from .vfs import FileLock, FileSystem, OsFS
from .wal import Wal
from .writes import WriteEncoding, check_bytes

_packb = msgpack.Packer(use_bin_type=True).pack  # one Packer: packb() builds one per call
_encode_frame = record.encode_frame_now  # stamps the commit time (record.TS_FLAG)

log = logging.getLogger("strata.engine")


class Engine(Recovery, ReadPath, WriteEncoding, ReplicationApi, BackgroundWork):
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
        """The fields, grouped by what guards them (LevelDB's db_impl.h does the same).
        Part of Engine's methods live in recovery.py, reads.py, writes.py,
        replication_api.py and background.py; the fields are all set here."""
        # -- Constant after construction.
        self.path = path
        self.fs = fs
        self.opts = opts
        self._always = opts.durability == "always"
        self._memtable_size = opts.memtable_size
        # Event frames fill the log but not the memtable: past this many bytes in
        # the open segment the memtable rotates anyway (empty, if need be), so the
        # flush point moves and retention can purge event-only log too.
        self._log_limit = 2 * opts.memtable_size
        self._max_key = opts.max_key_size
        self._max_value = opts.max_value_size
        self._pause_s = 1.0  # how often paused background work retries
        # Where worker processes find this database, if flushes and merges run in
        # them (not on a file system only this process can see).
        self._worker_dir = fs.local_path(path) if opts.compaction_executor == "process" else None
        self._cache = sstable.BlockCache(opts.block_cache_size)  # thread-safe itself
        self._picker = compaction.LevelPicker(opts.l0_compaction_trigger, opts.base_level_size,
                                              opts.level_multiplier, opts.target_file_size,
                                              opts.max_compaction_bytes or None)
        self._mutex = threading.Lock()
        # Serialises version edits (flush, compaction) and checkpoint captures;
        # taken before _mutex, never while holding it.
        self._edit_lock = threading.Lock()
        self._bg_cv = threading.Condition(self._mutex)
        self._commit = CommitPipeline(
            CommitCallbacks(write_group=self._write_group, apply_group=self._apply_group,
                            publish_locked=self._publish_group_locked,
                            fail_locked=self._fail_group_locked), self._mutex)
        self.versions = VersionSet(fs, path)  # edits under _edit_lock (see _log_and_apply)

        # -- Set by the opening thread before any other thread starts, then constant.
        self._lock: FileLock | None = None  # the LOCK file, held while open
        self._wal: Wal
        self._threads: list[threading.Thread] = []

        # -- Protected by _mutex: the log's position and what reads see. Read
        # without it where a stale value is harmless (a read takes _sv and _read_lsn
        # together as a seqlock: reads.py, _read_point).
        self._next_lsn = 1
        self._visible_lsn = 0  # the last LSN applied (durable per the mode)
        # What reads see: _visible_lsn, or less while replication holds reads at the
        # commit point (`set_commit_lsn`); never moves back. Only _publish sets both.
        self._read_lsn = 0
        self._commit_lsn: int | None = None
        self._read_only = False  # a replica: only apply_frames extends the log
        # The log's term history: (term, first LSN) of each run of frames of one term.
        self._terms: tuple[tuple[int, int], ...] = ()
        self.term = 0
        self._closed = True
        self._bg_error: errors.WritesStopped | None = None
        self._listeners: list = []  # replaced, never mutated: _publish iterates it
        self._snapshots: SortedList = SortedList()

        # -- Protected by _mutex: the memtables and the read view. The active
        # memtable is written by the one thread holding _mutex or leading the
        # commit group (only a leader rotates, under _mutex).
        self._mem = MemTable()
        self._imms: tuple[MemTable, ...] = ()
        self._readers: dict[int, sstable.TableReader] = {}
        # (memtable, immutables, version, readers, read plan: see reads.read_plan),
        # swapped whole by _install_sv
        self._sv: tuple[MemTable, tuple[MemTable, ...], Version, dict[int, sstable.TableReader],
                        tuple]
        self._throttled = False  # L0 or immutable memtables over a limit: see _install_sv
        self._rotate_requested = False  # flush() asked the current commit leader to rotate
        self._rotated_at = 0  # the log's bytes_written at the last rotation
        self._roll_failing = False  # WAL rolls are failing for space (logged once)

        # -- Protected by _mutex (waited on through _bg_cv): background work.
        self._compacting = False
        self._compaction_requested = False
        # Table numbers being written and not yet installed: never obsolete.
        self._pending: set[int] = set()
        # compact_all() in progress: the last LSN it must push down (0: none running)
        self._manual_compaction = 0
        self._paused: dict[str, str] = {}  # background work waiting for disk space
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None  # made once

        # -- Protected by _mutex: counters (storage/stats.py).
        self._stats = EngineStats()
        # Fast-path puts, apart from _stats.puts: one int add on the hottest path.
        self._puts = 0
        # group commit sizes: bucket i counts groups whose size has bit length i
        # (at most 2**i - 1 frames); the last bucket takes everything larger
        self._group_sizes = [0] * 12

    def _install_sv(self) -> None:
        """Publish a new read view. REQUIRES: _mutex held, or no other thread running."""
        version, readers = self.versions.current, dict(self._readers)
        self._sv = (self._mem, self._imms, version, readers, read_plan(version, readers))
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
            raise errors.InvalidArgument(
                "compare_and_set needs exactly one of expected_lsn, expected_value, expect_absent")
        if expected_value is not None:
            check_bytes("expected value", expected_value, self.opts.max_value_size)

        def check() -> None:  # runs under _mutex, before the write takes its LSN
            value, lsn = self._current_locked(key)
            if expected_lsn is not None:
                ok = lsn == expected_lsn and (lsn != 0 or value is None)
            elif expect_absent:
                ok = value is None
            else:
                ok = value == expected_value
            if not ok:
                raise errors.Conflict(key, lsn)

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

    def _needs_room(self) -> bool:
        return len(self._imms) >= self.opts.max_immutable or \
            len(self._sv[2].levels[0]) >= self.opts.l0_slowdown_trigger

    def _write(self, ftype: int, payload: bytes, kvs, check=None) -> int:
        if len(payload) > record.MAX_PAYLOAD:
            raise errors.TooLarge("encoded record", len(payload), record.MAX_PAYLOAD)
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
            raise errors.TooLarge("encoded record", len(payload), record.MAX_PAYLOAD)
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
            raise errors.ReadOnly(
                f"{self.path} follows another node's log: writes go to the master")
        raise errors.Closed("engine is closed")

    def _stopped(self, outcome_unknown: bool = False) -> errors.WritesStopped:
        """A fresh copy of the error that stopped writes, for one caller to raise."""
        e = self._bg_error
        assert e is not None
        msg = str(e)
        if outcome_unknown:
            msg = ("this write's outcome is unknown: it may be present after a restart. " + msg)
        return type(e)(msg, e.cause, e.path, e.resumable, outcome_unknown)

    def _fail(self, error: BaseException, what: str, resumable: bool = False,
              outcome_unknown: bool = False) -> errors.WritesStopped:
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
            nospace = errors.is_no_space(error)
            resumable = resumable and nospace
            path = getattr(error, "filename", None) or self.path
            msg = (f"{what} failed in {path}: {error}; writes stopped"
                   + ("; they resume once space is freed" if resumable else
                      "; restart the server to resume them"))
            kind = errors.NoSpace if nospace else errors.WritesStopped
            self._bg_error = kind(msg, error, path, resumable)
            log.error("%s", msg)
            self._bg_cv.notify_all()
            if resumable:
                self._start_thread(self._resume_loop, "strata-resume")
        return self._stopped(outcome_unknown)

    @property
    def write_error(self) -> errors.WritesStopped | None:
        """Why writes are stopped (None while they are taken): for health and status.

        Also a full disk that holds up a flush or compaction which writes are
        waiting for: they are refused with NoSpace until space is freed.
        """
        return self._bg_error or self._stalled_for_space()

    def _stalled_for_space(self) -> errors.NoSpace | None:
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
        return errors.NoSpace(
            f"{self.path}: writes refused: {why}; they resume once space is freed",
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
                    raise errors.WriteStalled(len(self.versions.current.levels[0]),
                                              time.monotonic() - t0)
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
            if not errors.is_no_space(e):
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

    async def checkpoint_async(self, dest: str) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool(), self.checkpoint, dest)

    # ------------------------------------------------------------------ background

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
                self._raise_if_paused("flush")
                self._bg_cv.wait(0.1)
            if self._bg_error is not None:
                self._raise_closed()

    def _raise_if_paused(self, work: str) -> None:
        """NoSpace if background `work` ("flush", "compaction") waits for disk space."""
        if work in self._paused:
            raise errors.NoSpace(f"{work} of {self.path} is waiting for disk space: "
                                 f"{self._paused[work]}", None, self.path, True)

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
                    self._raise_if_paused("compaction")
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
            raise errors.InvalidArgument(f"checkpoint destination {dest} already exists")
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
                except errors.StorageError:
                    pass
            if self._compacting and self._worker_dir is not None:
                # Do not make close (and so a restart) wait seconds for a merge
                # whose result would only be installed to be compacted again.
                worker_for("merge").cancel(self._worker_dir)
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
                raise errors.WritesStopped(
                    msg, failure, getattr(failure, "filename", None) or self.path)
        finally:
            self._closed = True
            self._release_lock_file()


