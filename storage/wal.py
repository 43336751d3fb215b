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
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass

from . import record
from .errors import Compacted, Corruption, StorageError
from .filenames import NEXT_SEGMENT, parse_segment_name, segment_name
from .vfs import FileSystem, WritableFile

log = logging.getLogger("strata.wal")

# Upper bounds (seconds) of the fdatasync latency histogram (exported by the daemon).
SYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

def _holds_sync_point(buf) -> bool:
    try:
        return any(record.is_sync_point(fr) for fr in record.iter_frames(buf, record.HEADER_SIZE))
    except record.BadFrame:
        return False


@dataclass
class RecoveredTail:
    frames: list[record.Frame]
    last_lsn: int  # highest LSN found in the log (0 if none)
    last_term: int
    truncated_bytes: int  # dropped from a torn tail


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


class Wal:
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

    # ------------------------------------------------------------------ recovery

    def list_segments(self) -> list[tuple[int, str]]:
        out = []
        for name in self.fs.listdir(self.dir):
            lsn = parse_segment_name(name)
            if lsn is not None:
                out.append((lsn, os.path.join(self.dir, name)))
        out.sort()
        return out

    def _settle(self, path: str) -> int:
        """The written bytes of a sealed segment (header and frames), after giving back
        any space preallocated past its last frame. Called at open only.

        Once settled a segment ends with its last frame, so usually only its last
        byte is read; one still preallocated (sealed since the last open) or whose
        last frame ends in zeros is walked by its frames' length fields.
        """
        f = self.fs.open_read(path)
        try:
            buf = f.buf
            n = len(buf)
            if n > record.HEADER_SIZE and buf[n - 1] != 0:
                return n
            end = max(min(n, record.HEADER_SIZE), record.frames_end(buf, record.HEADER_SIZE))
            trim = record.HEADER_SIZE < end < n and record.is_zero(buf, end)
        finally:
            f.close()
        if trim:
            self.fs.truncate(path, end)  # syncs
        return end

    def recover(self, after_lsn: int, repair: bool = False) -> RecoveredTail:
        """Read every frame with LSN > after_lsn, checking the whole LSN chain.

        Rules (docs/format.md, "Recovery"):
        - In the newest segment, a damaged frame that no whole synced group
          follows (see `_synced_group_follows`) is a torn write that was never
          acknowledged under durability=always: the segment is truncated
          there and the loss is logged with its size.
        - Any other damage, a segment whose header disagrees with its name,
          or a gap in the LSN chain between segments raises Corruption
          naming the file and offset, unless `repair` is set, in which case
          the log is cut at the damage and everything after it is dropped,
          loudly.
        """
        self._adopt_next()
        segs = self.list_segments()
        # Segments are purged only when wholly flushed, so the oldest one left
        # starts at or before after_lsn + 1. One that starts later means frames
        # were lost (a deleted segment): refuse rather than open with a hole.
        if segs and segs[0][0] > after_lsn + 1 and not repair:
            raise Corruption(segs[0][1], 0,
                             f"the oldest WAL segment starts at LSN {segs[0][0]} but the tables "
                             f"hold only up to LSN {after_lsn}: frames {after_lsn + 1}.."
                             f"{segs[0][0] - 1} are missing")
        frames: list[record.Frame] = []
        written: dict[int, int] = {}  # first LSN -> bytes written (header and frames)
        replayed = 0  # len(frames) once the segments read so far were made durable
        last_lsn = 0
        last_term = 0
        truncated = 0
        keep: list[tuple[int, str]] = []
        removed_empty = False
        for i, (first, path) in enumerate(segs):
            newest = i == len(segs) - 1
            nxt = segs[i + 1][0] if not newest else None
            if nxt is not None and nxt - 1 <= after_lsn:
                # Entirely flushed: only its name and its written size matter (retention,
                # history), so its frames are not checked here.
                size = self._settle(path)
                last_lsn = max(last_lsn, nxt - 1)
                if size <= record.HEADER_SIZE:
                    # No frame, and a later segment already starts past its name's LSN:
                    # it holds nothing of the log (no chain runs through an empty
                    # segment that is not the newest). Removing it loses no LSN.
                    log.info("removing WAL segment %s: it holds no frame", path)
                    self.fs.remove(path)
                    removed_empty = True
                    continue
                keep.append((first, path))
                written[first] = size
                continue
            f = self.fs.open_read(path)
            trim = False
            try:
                damage = self._recover_segment(f.buf, path, first, nxt, newest, after_lsn,
                                               frames, last_term)
                end = self._seg_end
                trim = (damage is None and end > record.HEADER_SIZE and len(f.buf) > end
                        and record.is_zero(f.buf, end))
            finally:
                f.close()
            if damage is None:
                if trim:
                    self.fs.truncate(path, self._seg_end)  # syncs
                keep.append((first, path))
                written[first] = self._seg_end
                if len(frames) > replayed:
                    self._make_durable(path)
                    replayed = len(frames)
                last_lsn = max(last_lsn, self._seg_last)
                last_term = max(last_term, self._seg_term)
                continue
            offset, reason, torn, dropped = damage
            last_lsn = max(last_lsn, self._seg_last)
            last_term = max(last_term, self._seg_term)
            if offset == 0:  # unusable header
                if torn:
                    log.warning("removing WAL segment %s with no frames (%s)", path, reason)
                    self.fs.remove(path)
                    continue
                if not repair:
                    raise Corruption(path, 0, reason)
                log.error("repair: dropping WAL segment %s and all after it: %s", path, reason)
                for _, p in segs[i:]:
                    self.fs.remove(p)
                break
            if torn:
                log.warning("WAL %s: torn tail at offset %d (%s); truncating %d bytes",
                            path, offset, reason, dropped)
                truncated += dropped
            elif not repair:
                raise Corruption(path, offset, reason)
            else:
                log.error("repair: WAL %s damaged at offset %d (%s); dropping %d bytes and %d "
                          "later segments", path, offset, reason, dropped, len(segs) - i - 1)
                for _, p in segs[i + 1 :]:
                    self.fs.remove(p)
            self.fs.truncate(path, offset)  # truncate syncs what is left
            keep.append((first, path))
            written[first] = offset
            if not torn:
                break
        if removed_empty:
            self.fs.sync_dir(self.dir)
        with self._lock:
            self._sealed = keep
            self._written = written
        return RecoveredTail(frames, last_lsn, last_term, truncated)

    def cut_after(self, lsn: int) -> int:
        """Drop every frame after `lsn` from the recovered log (before `start`): later
        segments are removed, the one holding `lsn + 1` is truncated where that frame
        begins. `lsn` must end a frame. Returns the bytes dropped. Replication cuts a
        tail the new master never had this way."""
        dropped = 0
        keep: list[tuple[int, str]] = []
        for first, path in self._sealed:
            if first > lsn:
                size = self._written.get(first)
                dropped += size if size is not None else self.fs.size(path)
                log.warning("cutting the log after LSN %d: removing %s", lsn, path)
                self.fs.remove(path)
                continue
            keep.append((first, path))
        if keep:
            first, path = keep[-1]
            f = self.fs.open_read(path)
            try:
                buf = f.buf
                cut = None
                for fr in record.iter_frames(buf, record.HEADER_SIZE):
                    if fr.lsn > lsn:
                        if fr.lsn != lsn + 1:
                            raise StorageError(f"cannot cut the log after LSN {lsn}: a frame "
                                               f"in {path} spans it")
                        cut = fr.offset
                        break
                end = record.written_end(buf, cut) if cut is not None else 0
            finally:
                f.close()
            if cut is not None:
                dropped += end - cut
                log.warning("cutting the log after LSN %d: truncating %s at offset %d (%d bytes)",
                            lsn, path, cut, end - cut)
                self.fs.truncate(path, cut)
                self._written[first] = cut
        self.fs.sync_dir(self.dir)
        with self._lock:
            self._sealed = keep
            self._written = {f: n for f, n in self._written.items() if f <= lsn}
        return dropped

    def _adopt_next(self) -> None:
        """Give NEXT_SEGMENT its segment name if it was in use.

        A process killed between a roll and the background rename leaves the
        open segment under NEXT_SEGMENT; its header names its first LSN. It is
        adopted (and the usual chain checks then apply) when it follows the
        newest segment's last whole frame, when there is no other segment, or
        when it holds a synced group (durable acknowledged writes: a hole
        before it is corruption, never silently dropped). Otherwise it is an
        unused spare, or the log before it lost unsynced frames in a power cut
        (the background syncs the older segment before anything later): it
        holds no durable acknowledged write and is removed, leaving the log a
        consistent prefix.
        """
        path = os.path.join(self.dir, NEXT_SEGMENT)
        if not self.fs.exists(path):
            return
        data = self.fs.read_bytes(path)
        try:
            first = record.decode_header(data, path)
        except ValueError:
            first = None
        segs = self.list_segments()
        adopt = first is not None and (not segs or self._ends_at(segs[-1]) + 1 == first
                                       or _holds_sync_point(data))
        if adopt and not any(lsn == first for lsn, _ in segs):
            final = os.path.join(self.dir, segment_name(first))
            log.info("adopting %s as %s (the process stopped before renaming it)", path, final)
            self.fs.rename(path, final)
        else:
            if first is not None:
                log.warning("removing %s: its frames from LSN %d follow a log that lost "
                            "unsynced frames (a power cut); none of them was synced", path, first)
            self.fs.remove(path)
        self.fs.sync_dir(self.dir)

    def _ends_at(self, seg: tuple[int, str]) -> int:
        """The last LSN of the unbroken run of whole frames at the start of `seg`."""
        first, path = seg
        buf = self.fs.read_bytes(path)
        expected = first
        try:
            record.decode_header(buf, path)
            for fr in record.iter_frames(buf, record.HEADER_SIZE):
                if fr.lsn != expected:
                    break
                expected = fr.lsn + record.lsn_count(fr.type, fr.payload)
        except (ValueError, record.BadFrame):
            pass
        return expected - 1

    def _make_durable(self, path: str) -> None:
        """fsync a segment whose frames recovery replays.

        After a SIGKILL they may exist only in the page cache: new writes
        must not be acknowledged on top of frames a power cut can still take
        (the log would then have a hole between this segment and the next).
        """
        self.fs.sync_file(path)

    @staticmethod
    def _synced_group_follows(buf, start: int, marker: bytes) -> bool:
        """Whether a whole synced group, and something after it, lies at or after `start`.

        With durability=always the leader writes a group, fsyncs, and only then
        does the next group get written; the last frame of each synced group
        carries the sync flag. Damage followed by a sync point *and more
        frames* is therefore in synced (acknowledged) data: corruption. Damage
        in the last group is indistinguishable from a torn write. Further
        damaged frames are skipped over, so a second bad frame cannot hide the
        synced data behind it.
        """
        seen_sync = False
        pos: int | None = start
        while pos is not None:
            try:
                for fr in record.iter_frames(buf, pos):
                    if seen_sync:
                        return True
                    seen_sync = record.is_sync_point(fr)
                return False
            except record.BadFrame as e:
                pos = record.next_valid_frame(buf, e.offset + 1, marker)
        return False

    def _recover_segment(self, buf, path: str, first: int, nxt: int | None, newest: bool,
                         after_lsn: int, frames: list, term: int):
        """Append one segment's frames past after_lsn to `frames`.

        Returns None if the segment is sound, else (offset, reason, torn, dropped_bytes).
        Sets self._seg_last / self._seg_term to the last good LSN and term, and
        self._seg_end to the offset just past the last good frame.
        """
        self._seg_last = first - 1
        self._seg_term = term
        self._seg_end = record.HEADER_SIZE
        try:
            hdr_lsn = record.decode_header(buf, path)
        except ValueError as e:
            # A header is synced before any frame is written: a newest segment
            # with nothing past the header's bytes died being created.
            torn = newest and record.written_end(buf, 0) <= record.HEADER_SIZE
            return 0, str(e), torn, len(buf)
        if hdr_lsn != first:
            return 0, f"header says first LSN {hdr_lsn}, file name says {first}", False, len(buf)
        expected = first
        end_of_frames = record.HEADER_SIZE
        try:
            for fr in record.iter_frames(buf, record.HEADER_SIZE):
                if fr.lsn != expected:
                    raise record.BadFrame(fr.offset, f"LSN {fr.lsn} where {expected} was expected")
                expected = fr.lsn + record.lsn_count(fr.type, fr.payload)
                if expected - 1 > after_lsn:
                    frames.append(fr)
                self._seg_last = expected - 1
                self._seg_term = max(self._seg_term, fr.term)
                end_of_frames = fr.offset + record.FRAME_HEADER_SIZE + len(fr.payload)
                self._seg_end = end_of_frames
        except record.BadFrame as bad:
            end = record.written_end(buf, bad.offset)
            dropped = end - bad.offset
            torn = False
            if newest:
                mark = record.marker(max(self._seg_term, self.min_term))
                later = record.next_valid_frame(buf, bad.offset + 1, mark)
                torn = later is None or not self._synced_group_follows(buf, later, mark)
            return bad.offset, bad.reason, torn, dropped
        if nxt is not None and expected != nxt:
            return end_of_frames, (f"segment ends at LSN {expected - 1} but the next segment starts at "
                         f"LSN {nxt}: frames are missing"), False, 0
        return None

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

    def segments(self) -> list[tuple[int, str]]:
        """(first LSN, path) of every segment, oldest first, the open one last."""
        with self._lock:
            return self._segments_locked()

    def _segments_locked(self) -> list[tuple[int, str]]:
        segs = list(self._sealed)
        if self._cur is not None:
            segs.append((self._cur.first_lsn, self._cur.path))
        return segs

    def pin(self, lsn: int) -> list[tuple[int, str]]:
        """Keep the segment holding `lsn` and all later ones until `unpin(lsn)`.

        Returns the segments from the one holding `lsn` on, listed at the
        moment of pinning. Raises Compacted if `lsn` is no longer retained.
        """
        with self._lock:
            segs = self._segments_locked()
            if not segs or lsn < segs[0][0]:
                raise Compacted(lsn, segs[0][0] if segs else 0)
            self._pins.append(lsn)
        start = max(i for i, (first, _) in enumerate(segs) if first <= lsn)
        return segs[start:]

    def unpin(self, lsn: int) -> None:
        with self._lock:
            self._pins.remove(lsn)

    def set_holds(self, holds: dict[str, int]) -> None:
        """Replace every named hold: keep LSN `holds[name]` and all later ones, within
        `hold_bytes` beyond the retention policy (see purge). Ends holds_pending."""
        with self._lock:
            self._holds = {n: int(lsn) for n, lsn in holds.items()}
            self.holds_pending = False

    def hold(self, name: str, lsn: int) -> None:
        """Keep `lsn` and all later LSNs for `name` (replacing its previous hold)."""
        with self._lock:
            self._holds[name] = int(lsn)

    def release(self, name: str) -> None:
        """Drop `name`'s hold; its segments go at the next purge if nothing else keeps
        them. Releasing a name that holds nothing does nothing."""
        with self._lock:
            self._holds.pop(name, None)

    def holds(self) -> dict[str, int]:
        with self._lock:
            return dict(self._holds)

    def _plan(self, flushed_lsn: int) -> tuple[list[tuple[int, str, int, int]], int,
                                               dict[str, int]]:
        """What retention alone would delete: (removable, cut, holds).

        removable: (first LSN, path, written bytes, last LSN) of the sealed segments
        wholly at or below `flushed_lsn` (and below every pin), oldest first; one
        already gone counts 0 bytes. Retention deletes removable[: cut + 1]. holds: a
        copy of the holds, taken with the segment list.
        """
        with self._lock:
            segs = self._segments_locked()
            written = dict(self._written)
            holds = dict(self._holds)
            if self._pins:
                flushed_lsn = min(flushed_lsn, min(self._pins) - 1)
        removable: list[tuple[int, str, int, int]] = []
        for i in range(len(segs) - 1):
            (first, path), last = segs[i], segs[i + 1][0] - 1
            if last > flushed_lsn:
                break
            try:
                size = written[first] if first in written else self.fs.size(path)
            except FileNotFoundError:
                size = -1
            removable.append((first, path, size, last))
        kept_bytes = 0
        now = time.time()
        cut = -1  # index into removable: this one and all older go
        for i in range(len(removable) - 1, -1, -1):
            _, path, size, _ = removable[i]
            if size < 0:
                continue
            try:
                young = self.retention_age_s > 0 and now - self.fs.mtime(path) < self.retention_age_s
            except FileNotFoundError:
                continue
            if kept_bytes + size <= self.retention_bytes or young:
                kept_bytes += size
                continue
            cut = i
            break
        removable = [(f, p, max(0, n), last) for f, p, n, last in removable]
        return removable, cut, holds

    @staticmethod
    def _held(removable: list[tuple[int, str, int, int]], cut: int, lsn: int) -> int:
        """Bytes of the segments retention would delete (removable[: cut + 1]) that
        hold an LSN >= `lsn`: what a hold of `lsn` keeps beyond retention."""
        return sum(size for _, _, size, last in removable[: cut + 1] if last >= lsn)

    def purge(self, flushed_lsn: int) -> list[str]:
        """Delete sealed segments wholly at or below `flushed_lsn` past retention.

        Retention keeps an unbroken run of the newest flushed segments while
        their written bytes (header and frames: never the space preallocated
        past them) total at most `retention_bytes` or they are younger than
        `retention_age_s`; the first segment that fits neither ends the run and
        it and everything older is deleted, so retained history never has holes.
        Segments a pin still needs are kept whatever the policy says. Holds extend
        the run further back, to the segment holding the lowest held LSN, while
        what they add totals at most `hold_bytes`: past that, the newest of the
        held segments that fit are kept and older ones go (the holder finds its
        LSN compacted). While holds_pending, nothing is deleted.
        """
        with self._purge_lock:
            if self.holds_pending:
                return []
            removable, cut, holds = self._plan(flushed_lsn)
            if holds and cut >= 0:
                low = min(holds.values())
                held = 0
                while cut >= 0:
                    _, _, size, last = removable[cut]
                    if last < low or held + size > self.hold_bytes:
                        break
                    held += size
                    cut -= 1
            doomed = [path for _, path, _, _ in removable[: cut + 1]]
            if not doomed:
                return []
            # Unlist first, then unlink: a reader that lists after this never sees
            # a segment that is about to vanish. Only the oldest go, so the list
            # stays one unbroken chain.
            with self._lock:
                gone = set(doomed)
                self._sealed = [s for s in self._sealed if s[1] not in gone]
                for first, _, _, _ in removable[: cut + 1]:
                    self._written.pop(first, None)
            for path in doomed:
                try:
                    self.fs.remove(path)
                except FileNotFoundError:
                    pass
            return doomed

    def hold_stats(self, flushed_lsn: int) -> dict[str, int]:
        """Per hold, the bytes of retained log it keeps beyond the retention policy
        (what purge at `flushed_lsn` would otherwise delete). A hold whose LSN is
        older than the oldest retained one shows the held log that is left."""
        with self._purge_lock:
            removable, cut, holds = self._plan(flushed_lsn)
            return {name: self._held(removable, cut, lsn) for name, lsn in holds.items()}

    def bytes_from(self, lsn: int) -> int:
        """Written bytes of the retained segments holding LSNs >= `lsn`: the log a
        reader from `lsn` still has to read, to within one segment (the one holding
        `lsn` counts whole)."""
        with self._lock:
            segs = self._segments_locked()
            written = dict(self._written)
            cur = self._cur
        total = 0
        for i, (first, _) in enumerate(segs):
            last = segs[i + 1][0] - 1 if i + 1 < len(segs) else None
            if last is not None and last < lsn:
                continue
            if cur is not None and first == cur.first_lsn:
                total += cur.size
            else:
                total += written.get(first, 0)
        return total

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
                                                   fr.payload, memoryview(bytes(fr.raw)))
                    except record.BadFrame as e:
                        raise Corruption(path, e.offset, e.reason) from None
                finally:
                    f.close()
        finally:
            self.unpin(lsn)
