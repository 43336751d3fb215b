"""What replication and history readers build on: terms, the commit point, replicated
frames, the retained log and its holds. The engine knows nothing of peers.

A part of `Engine` (engine.py), which owns the fields used here.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from bisect import bisect_right
from collections.abc import Iterator

import msgpack

from . import record
from .errors import (
    InvalidArgument,
    LogMismatch,
)
from .wal import SYNC_BUCKETS, Wal

PACKB = msgpack.Packer(use_bin_type=True).pack  # one Packer: packb() builds one per call

log = logging.getLogger("strata.engine")


class ReplicationApi:
    """The log as replication sees it. Mixed into Engine; thread-safe."""

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

        return record.TYPE_TERM, PACKB((term, node.encode())), (), take

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
                raw = record.set_sync(raw, i == final)  # commit time kept as the master wrote it
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
