"""The commit point, the writes waiting for it, and what a replica knows of it: sans-I/O.

`Progress` is the master's side. It is told what is durable where (this node's log
end, each peer's acknowledged LSN) and when this master's term marker became durable,
and answers which writes may be acknowledged:

- The commit point is the highest LSN a majority (this node included) holds durably,
  at or after this master's term marker (Raft's rule of committing only entries of the
  current term, Ongaro & Ousterhout section 5.4.2). It never moves back, across terms.
- A waiter for LSN n is released once n <= the commit point; in sync mode also once
  every peer that is not failed holds n.

`Follower` is a replica's side: it moves the same commit point to what the master last
sent (a node keeps one commit point across roles: a replica that wins carries it on),
and remembers when an Append last came and since when this node's log has been behind.

Neither touches a clock, a socket or an engine: replication/cluster.py drives them,
and tests/replication/test_progress.py runs them from scripts in
tests/replication/testdata/progress (deliver an ack, drop a peer, crash, status).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable
from typing import Any


class Progress:
    """The master's commit point and waiters. Not thread-safe: one owner drives it."""

    def __init__(self, quorum: int, mode: str) -> None:
        self.quorum = quorum
        self.mode = mode  # "async", "quorum" or "sync"
        self.commit_lsn = 0
        self.term_start = 0  # LSN of this master's term marker once durable (0: not yet)
        self._waiters: list[tuple[int, int, Any]] = []  # heap of (lsn, seq, waiter)
        self._seq = 0

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def begin_term(self) -> None:
        """A new term (won or lost): nothing of it is committed until its marker is."""
        self.term_start = 0

    def term_started(self, lsn: int) -> None:
        """This master's term marker is durable here at `lsn`."""
        self.term_start = lsn

    def advance(self, local: int, matches: Iterable[int]) -> bool:
        """Take this node's durable log end and the peers' acknowledged LSNs; return
        whether the commit point moved."""
        if not self.term_start:
            return False
        durable = sorted([local, *matches], reverse=True)
        if len(durable) < self.quorum:
            return False
        c = durable[self.quorum - 1]
        if c >= self.term_start and c > self.commit_lsn:
            self.commit_lsn = c
            return True
        return False

    def releasable(self, lsn: int, live_matches: Iterable[int] = ()) -> bool:
        """Whether a write at `lsn` may be acknowledged now. `live_matches`: the
        acknowledged LSNs of the peers that are not failed (sync mode waits for them)."""
        if lsn > self.commit_lsn:
            return False
        return self.mode != "sync" or all(m >= lsn for m in live_matches)

    def wait(self, lsn: int, waiter: Hashable) -> None:
        """Hold `waiter` until `release` hands it back (or `fail` does)."""
        self._seq += 1
        heapq.heappush(self._waiters, (lsn, self._seq, waiter))

    def release(self, live_matches: Iterable[int] = ()) -> list:
        """The waiters that may be answered now, lowest LSN first."""
        live = list(live_matches)
        out = []
        w = self._waiters
        while w and self.releasable(w[0][0], live):
            out.append(heapq.heappop(w)[2])
        return out

    def fail(self) -> list:
        """Every waiter, to be told that its outcome is unknown (this node stopped
        being master, or stops)."""
        out = [waiter for _, _, waiter in sorted(self._waiters)]
        self._waiters = []
        return out


class Follower:
    """A replica's view of the master's progress. Not thread-safe."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress  # whose commit point this node knows
        self.heard_at: float | None = None  # when an Append last came
        self.behind_since: float | None = None  # since when the log is behind commit_lsn

    @property
    def commit_lsn(self) -> int:
        return self.progress.commit_lsn

    def append(self, commit_lsn: int, log_end: int, now: float) -> bool:
        """An Append was taken (its frames, if any, applied: the log now ends at
        `log_end`); return whether the known commit point moved."""
        moved = commit_lsn > self.progress.commit_lsn
        if moved:
            self.progress.commit_lsn = commit_lsn
        self.heard_at = now
        if log_end >= self.commit_lsn:
            self.behind_since = None
        elif self.behind_since is None:
            self.behind_since = now
        return moved

    def unfit(self, now: float, election_timeout: float, max_lag_s: float) -> str:
        """Why this replica should not be read from ("" if it may)."""
        if self.heard_at is None or now - self.heard_at >= election_timeout:
            return "follows no master"
        if self.behind_since is not None and now - self.behind_since > max_lag_s:
            return f"behind the commit point for {now - self.behind_since:.1f}s"
        return ""
