"""Write-ahead log: preallocated segment files of checksummed frames.

Segments are named by their first LSN (`wal-<lsn:020>.log`) so that the files
alone say which holds a given LSN. One segment is open for append at a time;
it rolls at `segment_size`. Sealed segments are kept past the flush point by
the retention policy (size and age), because historical subscribers and
lagging replicas read from them.

Thread contract: `append` and `sync` are called by one commit leader at a time
(the engine's write path serialises them); `sync_if_dirty` may run concurrently
from the interval-sync thread. The segment list (`_sealed`, `_cur`) is guarded
by `_lock`: the commit path rolls, the flush thread purges, and readers
(history, checkpoints) list it concurrently.

Invariant: the segments listed form one unbroken LSN chain, oldest first; the
open segment is always last and is never deleted; a pinned LSN's segment and
every later one are never deleted.

Opening (list, settle, replay, cut) is in wal_recovery.py, which segments are kept
(retention, pins, named holds) in wal_retention.py: both are mixins of `Wal`.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator

from . import record
from .errors import Corruption
from .filenames import NEXT_SEGMENT, segment_name
from .vfs import FileSystem, WritableFile
from .wal_recovery import WalRecovery
from .wal_retention import WalRetention

log = logging.getLogger("strata.wal")

# Upper bounds (seconds) of the fdatasync latency histogram (exported by the daemon).
SYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class _Segment:
    __slots__ = ("first_lsn", "path", "file", "size", "sync_lock", "closed", "dirty", "created")
    # `path` changes once, under Wal._lock, when a segment made from the spare
    # is renamed from NEXT_SEGMENT to its segment name.

    def __init__(self, first_lsn: int, path: str, file: WritableFile, size: int) -> None:
        self.first_lsn = first_lsn
        self.path = path
        self.file = file
        self.size = size
        self.sync_lock = threading.Lock()
        self.closed = False
        self.dirty = False
        self.created = time.time()


class Wal(WalRecovery, WalRetention):
    """The log of one engine. Create with `Wal(...)`, then `recover()`, then `start()`."""

    def __init__(
        self,
        fs: FileSystem,
        dirpath: str,
        *,
        segment_size: int = 64 << 20,
        retention_bytes: int = 256 << 20,
        retention_age_s: float = 0.0,
        preallocate: int = 8 << 20,
        hold_bytes: int = 0,
        holds_pending: bool = False,
    ) -> None:
        self.fs = fs
        self.dir = dirpath
        self.segment_size = segment_size
        self.retention_bytes = retention_bytes
        self.retention_age_s = retention_age_s
        self.preallocate = preallocate  # bytes to fallocate per new segment (0: none)
        self._cur: _Segment | None = None
        self.min_term = 0  # the manifest's term: frames after damage are at least this new
        # (first LSN, path) of every sealed segment on disk, oldest first. Guarded by _lock.
        self._sealed: list[tuple[int, str]] = []
        # Bytes written (header and whole frames) of each sealed segment, by first LSN:
        # what retention counts, never the file's size, which includes the space
        # preallocated for frames that never came. The open segment's is `_cur.size`.
        # Guarded by _lock.
        self._written: dict[int, int] = {}
        self._lock = threading.Lock()
        # LSNs readers still need (checkpoints, history replay): purge keeps their segments.
        self._pins: list[int] = []
        # Named holds (name -> first LSN to keep): unlike pins, bounded. Purge keeps
        # their segments only while those beyond the retention above total at most
        # `hold_bytes`; past that the oldest go and a holder finds its LSN compacted.
        # Guarded by _lock.
        self._holds: dict[str, int] = {}
        self.hold_bytes = hold_bytes
        # True until the holder sets its holds (set_holds): purge deletes nothing
        # meanwhile, since the holds live in the database being opened.
        self.holds_pending = holds_pending
        self._purge_lock = threading.Lock()  # one purge at a time: plans never overlap
        self.failed: OSError | None = None  # the fsync error that ended this log's life
        # Roll work left to the background thread: (sealed segment to sync and
        # close, open segment to rename from NEXT_SEGMENT). At most one at a time.
        self._pending: tuple[_Segment, _Segment] | None = None
        self._spare: WritableFile | None = None  # NEXT_SEGMENT, ready, header not written
        self._bg_lock = threading.Lock()  # serialises the roll work and spare making
        self._bg_cv = threading.Condition()
        self._bg_thread: threading.Thread | None = None
        self._bg_stop = False
        self.background_errors = 0
        self._bg_failing = False
        self.bytes_written = 0
        self.syncs = 0
        self.sync_counts = [0] * (len(SYNC_BUCKETS) + 1)  # per bucket, last is +Inf
        self.sync_seconds = 0.0

    # ------------------------------------------------------------------ writing

    def start(self, next_lsn: int) -> None:
        """Open the segment whose first frame will carry `next_lsn`; start the
        background thread that finishes rolls and keeps a spare segment ready.

        A newest segment that holds only its header (a clean close leaves one:
        the flush at close rolls the log) is taken up again as the open segment
        if it is named `next_lsn`, keeping its preallocated space; otherwise it
        is removed (it holds no frame, and the chain goes on from `next_lsn`).
        Either way no restart leaves a segment behind that holds nothing.
        Crash safety: reuse changes nothing on disk; a removal is synced before
        the new segment is made, and a cut between the two leaves a log whose
        newest segment is older and non-empty, or no segment at all: both open.
        """
        if self._take_up_empty(next_lsn):
            self._start_background()
            return
        path = os.path.join(self.dir, segment_name(next_lsn))
        if self.fs.exists(path):
            # An empty segment from an earlier run (recovery found no frame in
            # it, or the LSN it names would be the last one's successor).
            with self._lock:
                self._sealed = [s for s in self._sealed if s[1] != path]
            self.fs.remove(path)
        try:
            seg = self._create_segment(next_lsn)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT) or not self.preallocate:
                raise
            # Too little space to preallocate: a plain segment still takes writes.
            log.warning("%s: no space to preallocate a WAL segment (%s); writing without",
                        self.dir, e)
            seg = self._create_segment(next_lsn, preallocate=False)
        with self._lock:
            self._cur = seg
        self._start_background()

    def _take_up_empty(self, next_lsn: int) -> bool:
        """Reuse the newest segment as the open one if it holds only its header and is
        named `next_lsn` (True); remove it if it holds nothing but cannot be reused."""
        with self._lock:
            if not self._sealed:
                return False
            first, path = self._sealed[-1]
        try:
            f = self.fs.open_read(path)
        except FileNotFoundError:
            return False
        try:
            buf = f.buf
            try:
                header_ok = record.decode_header(buf, path) == first
            except ValueError:
                header_ok = False
            if not header_ok or record.frames_end(buf, record.HEADER_SIZE) > record.HEADER_SIZE:
                return False  # frames (or damage recovery kept): not ours to touch
            # Only zeros after the header: frames written from there read back as the
            # only ones (a reader stops at the first zero frame header, so bytes left
            # after one would surface behind the new frames as damage).
            reusable = first == next_lsn and record.is_zero(buf, record.HEADER_SIZE)
        finally:
            f.close()
        if not reusable:
            log.info("removing WAL segment %s: it holds no frame and the log goes on "
                     "from LSN %d", path, next_lsn)
            with self._lock:
                self._sealed.pop()
                self._written.pop(first, None)
            self.fs.remove(path)
            self.fs.sync_dir(self.dir)
            return False
        wf = self.fs.reopen(path, record.HEADER_SIZE)
        try:
            # The header may be in the page cache only (a process killed after the roll
            # that made it): frames must not become durable in a file that might not.
            wf.sync()
            self.fs.sync_dir(self.dir)
        except BaseException:
            wf.close()
            raise
        log.info("taking up the empty WAL segment %s again for LSN %d on", path, next_lsn)
        with self._lock:
            self._sealed.pop()
            self._written.pop(first, None)
            self._cur = _Segment(first, path, wf, record.HEADER_SIZE)
        return True

    def _start_background(self) -> None:
        self._bg_stop = False
        self._bg_thread = threading.Thread(target=self._background, name="strata-wal-roll",
                                           daemon=True)
        self._bg_thread.start()

    # -- background: finish rolls, keep a spare ---------------------------------------

    def _background(self) -> None:
        while True:
            with self._bg_cv:
                while not self._bg_stop and self._pending is None and self._spare is not None:
                    self._bg_cv.wait()
                if self._bg_stop:
                    return
            try:
                self._finish_roll()
                self._make_spare()
            except OSError as e:
                # Left for the commit path, which does the same work inline and
                # reports the error to its caller (the engine then stops writes).
                self.background_errors += 1
                if not self._bg_failing:  # once per episode: a full disk repeats it
                    log.warning("WAL background work failed (retried every second, and by the "
                                "next roll): %s", e)
                self._bg_failing = True
                with self._bg_cv:
                    self._bg_cv.wait(1.0)
                continue
            self._bg_failing = False

    def _finish_roll(self) -> None:
        """Sync and close the sealed segment, then rename the open one into place.

        Order matters for a power cut: the new segment gets its name (and so
        counts as part of the log) only after everything before it is durable.
        """
        with self._bg_lock:
            pending = self._pending
            if pending is None:
                return
            old, new = pending
            with old.sync_lock:
                if not old.closed:
                    if old.dirty:
                        self._sync_file(old)
                    old.file.close()
                    old.closed = True
            final = os.path.join(self.dir, segment_name(new.first_lsn))
            self.fs.rename(new.path, final)
            self.fs.sync_dir(self.dir)
            with self._lock:
                new.path = final
                self._pending = None

    def _make_spare(self) -> None:
        with self._bg_lock:
            if self._spare is not None or self._bg_stop:
                return
            self._spare = self._new_file(os.path.join(self.dir, NEXT_SEGMENT), self.preallocate,
                                         b"")

    def _stop_background(self, finish: bool) -> None:
        with self._bg_cv:
            self._bg_stop = True
            self._bg_cv.notify_all()
        t = self._bg_thread
        if t is not None and t is not threading.current_thread():
            t.join(30)
        self._bg_thread = None
        if finish:
            self._finish_roll()
        elif self._pending is not None:  # crash test or failed log: leave it as it is
            old = self._pending[0]
            with old.sync_lock:
                if not old.closed:
                    old.file.close()
                    old.closed = True
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()
            if finish:
                try:
                    self.fs.remove(os.path.join(self.dir, NEXT_SEGMENT))
                except OSError:
                    pass

    def recover_after_failed_write(self, next_lsn: int) -> None:
        """Make the log sound to take writes again after a full disk stopped them.

        A write(2) that ran out of space may have left part of a frame behind
        the last whole one: the open segment is cut back to the bytes counted
        as written, and synced. If no segment could be opened at all, one is
        started at `next_lsn`. Raises OSError while that is still impossible,
        and for a log whose fsync failed (it is never trusted again).
        """
        if self.failed is not None:
            raise OSError(self.failed.errno, f"an earlier WAL fsync failed: {self.failed}")
        cur = self._cur
        if cur is None:
            self.start(next_lsn)
            return
        self._finish_roll()
        with cur.sync_lock:
            cur.file.truncate(cur.size)
            self._sync_file(cur)

    def halt(self) -> None:
        """Stop the background thread without finishing anything (crash tests)."""
        self._stop_background(finish=False)

    def _create_segment(self, first_lsn: int, preallocate: bool = True) -> _Segment:
        """Create, preallocate and sync a segment holding only its header.

        On failure (ENOSPC while preallocating, say) the half-made file is
        removed, so that nothing ever lists it; the caller's state is unchanged.
        """
        path = os.path.join(self.dir, segment_name(first_lsn))
        f = self._new_file(path, self.preallocate if preallocate else 0,
                           record.encode_header(first_lsn))
        return _Segment(first_lsn, path, f, record.HEADER_SIZE)

    def _new_file(self, path: str, preallocate: int, header: bytes) -> WritableFile:
        """Create `path` holding `header`, synced, its directory entry synced. On
        failure the half-made file is removed (or left for recovery, which drops a
        segment with no frames) and the error raised."""
        f = None
        try:
            f = self.fs.create(path, preallocate)
            if header:
                f.write(header)
            f.sync()
            self.fs.sync_dir(self.dir)
        except BaseException:
            try:
                if f is not None:
                    f.close()
                self.fs.remove(path)
            except OSError:
                pass
            raise
        return f

    def append(self, data: bytes, first_lsn: int) -> None:
        """Write one group of encoded frames; `first_lsn` is the first frame's LSN."""
        cur = self._cur
        n = len(data)
        if cur.size + n > self.segment_size and cur.size > record.HEADER_SIZE:
            self._roll(first_lsn)
            cur = self._cur
        cur.file.write(data)
        cur.size += n
        cur.dirty = True
        self.bytes_written += n

    def sync(self) -> None:
        """fsync the open segment (and first a sealed one a roll left unsynced, so that
        no later frame is durable while an earlier one is not)."""
        pending = self._pending
        if pending is not None and pending[0].dirty:
            old = pending[0]
            with old.sync_lock:
                if not old.closed and old.dirty:
                    self._sync_file(old)
        cur = self._cur
        if cur is None:
            return
        with cur.sync_lock:
            if not cur.closed:
                self._sync_file(cur)

    def _sync_file(self, seg: _Segment) -> None:
        """REQUIRES: seg.sync_lock held."""
        if self.failed is not None:
            raise OSError(self.failed.errno, f"an earlier WAL fsync failed: {self.failed}")
        seg.dirty = False
        t0 = time.perf_counter()
        try:
            seg.file.sync()
        except OSError as e:
            # fsyncgate: once the kernel has reported a writeback error it
            # may have dropped the dirty pages, and a second fsync "succeeds"
            # without writing them. Never sync this log again.
            self.failed = e
            raise
        dt = time.perf_counter() - t0
        self.syncs += 1
        self.sync_seconds += dt
        self.sync_counts[bisect_left(SYNC_BUCKETS, dt)] += 1

    def sync_if_dirty(self) -> None:
        cur = self._cur
        if cur is not None and cur.dirty:
            self.sync()

    def roll(self, next_lsn: int) -> None:
        """Seal the open segment (if it holds frames) and start one at `next_lsn`.

        The engine rolls at every memtable rotation, so recovery reads only
        the segments of unflushed memtables: its time is bounded by the
        unflushed tail, not by the database size.
        """
        cur = self._cur
        if cur is not None and cur.size > record.HEADER_SIZE:
            self._roll(next_lsn)

    def _roll(self, next_lsn: int) -> None:
        """Seal the open segment and make a new one current.

        Fast path (no fsync, no file creation: the commit path calls this):
        the spare becomes the open segment with its header written, and the
        background thread syncs and closes the old one and renames the new
        one. Otherwise, or when a roll is still unfinished, the same work is
        done here. The new segment exists before the old one is sealed: if
        making it fails, the old one stays the open segment and the list is
        unchanged (listing a segment as both sealed and open once let purge
        delete it).
        """
        old = self._cur
        assert old is not None
        # The spare is taken under _bg_lock, so the background thread cannot make
        # a new spare over it meanwhile; if that thread holds the lock (it is
        # syncing), take the slow path rather than wait for it.
        if self._bg_lock.acquire(blocking=False):
            try:
                spare = self._spare if self._pending is None else None
                if spare is not None:
                    self._spare = None
                    try:
                        spare.write(record.encode_header(next_lsn))
                    except BaseException:
                        spare.close()
                        raise
                    new = _Segment(next_lsn, os.path.join(self.dir, NEXT_SEGMENT), spare,
                                   record.HEADER_SIZE)
                    new.dirty = True
                    with self._lock:
                        self._sealed.append((old.first_lsn, old.path))
                        self._written[old.first_lsn] = old.size
                        self._cur = new
                        self._pending = (old, new)
            finally:
                self._bg_lock.release()
            if spare is not None:
                with self._bg_cv:
                    self._bg_cv.notify_all()
                return
        self._finish_roll()  # the previous roll's work first: one at a time, in order
        new = self._create_segment(next_lsn)
        try:
            with old.sync_lock:
                if not old.closed:
                    self._sync_file(old)
                    old.file.close()
                    old.closed = True
        except BaseException:
            new.file.close()
            raise
        with self._lock:
            self._sealed.append((old.first_lsn, old.path))
            self._written[old.first_lsn] = old.size
            self._cur = new
        with self._bg_cv:
            self._bg_cv.notify_all()

    def close(self) -> None:
        """Finish a pending roll, sync and close the open segment. After a failed fsync
        it is closed unsynced: what it holds past the last successful sync is of
        unknown durability."""
        if self.failed is None:
            self._stop_background(finish=True)
        else:
            self._stop_background(finish=False)
        cur = self._cur
        if cur is not None:
            with cur.sync_lock:
                if not cur.closed:
                    if self.failed is None:
                        cur.file.sync()
                    cur.file.close()
                    cur.closed = True
            with self._lock:
                self._sealed.append((cur.first_lsn, cur.path))
                self._written[cur.first_lsn] = cur.size
                self._cur = None
        if self.failed is not None:
            raise OSError(self.failed.errno, f"the WAL was closed unsynced after a failed fsync: "
                                             f"{self.failed}", self.dir)

    # ------------------------------------------------------------------ retention
    # ------------------------------------------------------------------ reading

    def open_segment(self, first_lsn: int, path: str):
        """Open a listed segment for reading, following it if a roll renamed it from
        NEXT_SEGMENT since it was listed.

        Under NEXT_SEGMENT the file is taken only if its header names `first_lsn`:
        once renamed, NEXT_SEGMENT may already be the next, empty spare.
        """
        if os.path.basename(path) != NEXT_SEGMENT:
            return self.fs.open_read(path)
        final = os.path.join(self.dir, segment_name(first_lsn))
        for _ in range(3):
            try:
                return self.fs.open_read(final)
            except FileNotFoundError:
                pass
            try:
                f = self.fs.open_read(path)
            except FileNotFoundError:
                continue
            try:
                if record.decode_header(f.buf, path) == first_lsn:
                    return f
            except ValueError:
                pass
            f.close()
        raise FileNotFoundError(errno.ENOENT, "WAL segment vanished while being opened", final)

    def usage(self) -> tuple[int, int]:
        """(written, preallocated) bytes of the log on disk.

        written: the headers and frames of every listed segment, the bytes
        retention counts. preallocated: the rest of what the files take, space
        allocated ahead for frames (the open segment's tail, the spare, and the
        tails of segments sealed since this open, which the next open gives
        back). Sizes are read as the files are now; a segment purged or renamed
        meanwhile is left out.
        """
        with self._lock:
            segs = list(self._sealed)
            written = sum(self._written.get(first, 0) for first, _ in segs)
            cur = self._cur
            if cur is not None:
                segs.append((cur.first_lsn, cur.path))
                written += cur.size
            spare = self._spare is not None
        paths = [p for _, p in segs]
        next_path = os.path.join(self.dir, NEXT_SEGMENT)
        if spare and next_path not in paths:
            paths.append(next_path)
        allocated = 0
        for p in paths:
            try:
                allocated += self.fs.size(p)
            except FileNotFoundError:
                pass
        return written, max(0, allocated - written)

    def earliest_lsn(self) -> int:
        with self._lock:
            segs = self._segments_locked()
        return segs[0][0] if segs else 0

    def read_from(self, lsn: int) -> Iterator[record.Frame]:
        """Yield retained frames with LSN >= lsn (frames of a batch that spans it too).

        Raises Compacted if `lsn` is older than the oldest retained segment.
        The segments read are pinned until the iterator is exhausted or closed.
        Only fully written frames are returned: the open segment is read up to
        the size written so far. The LSN chain is checked across segments: a
        gap raises Corruption rather than skipping frames.
        """
        with self._lock:
            if not self._segments_locked():
                return
        segs = self.pin(lsn)
        try:
            expected: int | None = None
            for first, path in segs:
                if expected is not None and first != expected:
                    raise Corruption(path, 0, f"segment starts at LSN {first} but the previous "
                                              f"one ended at LSN {expected - 1}: frames are missing")
                cur = self._cur
                limit = cur.size if cur is not None and first == cur.first_lsn else None
                f = self.open_segment(first, path)
                try:
                    buf = f.buf if limit is None else f.buf[:limit]
                    expected = first
                    try:
                        for fr in record.iter_frames(buf, record.HEADER_SIZE):
                            if fr.lsn != expected:
                                raise record.BadFrame(
                                    fr.offset, f"LSN {fr.lsn} where {expected} was expected")
                            expected = fr.lsn + record.lsn_count(fr.type, fr.payload)
                            if expected - 1 >= lsn:
                                yield record.Frame(fr.offset, fr.lsn, fr.term, fr.type,
                                                   fr.payload, memoryview(bytes(fr.raw)), fr.ts)
                    except record.BadFrame as e:
                        raise Corruption(path, e.offset, e.reason) from None
                finally:
                    f.close()
        finally:
            self.unpin(lsn)
