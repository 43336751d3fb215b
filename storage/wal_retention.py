"""Write-ahead log, retention: which sealed segments are kept past the flush point
(bytes written, age, pins of readers, named holds within their own limit) and what
the retained log takes on disk.

A mixin of `Wal` (storage/wal.py), which owns the fields it reads; the contract and
the invariant are stated there.
"""

from __future__ import annotations

import logging
import time

from .errors import Compacted

log = logging.getLogger("strata.wal")


class WalRetention:
    """Retention of `Wal` (see storage/wal.py)."""


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

