"""Write-ahead log, recovery: listing the segments at open, settling sealed ones,
replaying the tail after the flush point, cutting a tail a new master never had.

A mixin of `Wal` (storage/wal.py), which owns the fields it reads; the contract and
the invariant are stated there.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from . import record
from .errors import Corruption, StorageError
from .filenames import NEXT_SEGMENT, parse_segment_name, segment_name

log = logging.getLogger("strata.wal")


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



class WalRecovery:
    """Recovery of `Wal` (see storage/wal.py)."""

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
                end_of_frames = fr.offset + len(fr.raw)
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

