"""A replica's Appends, grouped for one WAL write and fsync each: sans-I/O.

The Follow stream delivers Appends one by one; writing, fsyncing and acknowledging
each on its own costs one fsync and one executor hop per Append, however many are
already waiting behind it. `AppendQueue` holds the Appends received and not yet
applied, and hands them out as groups, as group commit does for local writes:

- A group is every Append waiting at the head of the queue, up to MAX_GROUP_BYTES of
  frames (at least one Append), all of one term: an Append of another term starts
  the next group (the frames of a new master are never written in one call with its
  predecessor's).
- A group is applied with one call (one WAL write, one fsync) and answered with one
  acknowledgement: the highest LSN durable after it, and the `sent` time of its last
  Append, which the master uses to retire every Append it sent up to that one and to
  extend its lease.
- Invariant: an acknowledgement never names an LSN beyond what the engine said was
  durable. When a group fails, its acknowledgement carries the error and the LSN
  durable before it; the queue is closed and what waited behind the group is
  dropped (the master reconnects and resends from the replica's log end).

Invariant: at most MAX_PENDING Appends wait; the driver stops reading the stream
while `full` (the master's window, link.WINDOW, keeps it far below that).

replication/cluster.py drives it (a reader task puts, one applier takes groups);
tests/replication/test_follow.py runs it from scripts in testdata/follow.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

MAX_PENDING = 64  # Appends received and not yet applied (link.WINDOW is 16)
MAX_GROUP_BYTES = 4 << 20  # frames applied in one call (an Append holds at most 1 MiB)


@dataclass(frozen=True, slots=True)
class Append:
    """What the applier needs of one Append message."""

    term: int
    sent: float  # the master's send time, echoed in the acknowledgement
    commit_lsn: int  # the master's commit point when it sent this Append
    frames: bytes  # raw WAL frames (empty for a heartbeat)
    master: str = ""
    address: str = ""


@dataclass(slots=True)
class Group:
    """Consecutive Appends of one term, applied with one call."""

    term: int
    appends: list[Append] = field(default_factory=list)
    size: int = 0  # bytes of frames

    @property
    def last(self) -> Append:
        return self.appends[-1]

    @property
    def frames(self) -> bytes:
        """The group's frames in stream order (one buffer; no copy for one Append)."""
        parts = [a.frames for a in self.appends if a.frames]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    @property
    def commit_lsn(self) -> int:
        return max(a.commit_lsn for a in self.appends)


@dataclass(frozen=True, slots=True)
class Ack:
    """The one acknowledgement a group gets."""

    term: int
    durable_lsn: int
    sent: float
    error: str = ""


def answers(g: Group, ack: Ack, group_acks: bool) -> list[Ack]:
    """What the stream carries for an applied group: its one acknowledgement, or, for a
    master that counts one acknowledgement per Append (Start.group_acks unset: an
    older release), one per Append, each echoing that Append's `sent`, all naming the
    group's durable LSN."""
    if group_acks or len(g.appends) == 1:
        return [ack]
    return [Ack(ack.term, ack.durable_lsn, a.sent, ack.error) for a in g.appends]


class AppendQueue:
    """Appends waiting for the applier. Not thread-safe: one loop drives it."""

    def __init__(self, durable_lsn: int = 0, max_pending: int = MAX_PENDING,
                 max_group_bytes: int = MAX_GROUP_BYTES) -> None:
        self.max_pending = max_pending
        self.max_group_bytes = max_group_bytes
        self.durable_lsn = durable_lsn  # the highest LSN the engine said is durable
        self.closed = False  # a group failed: nothing more is taken or acknowledged
        self._pending: deque[Append] = deque()
        self.groups = 0  # groups handed out (for status and tests)
        self.appends = 0  # Appends taken

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def full(self) -> bool:
        return len(self._pending) >= self.max_pending

    def put(self, a: Append) -> bool:
        """Take an Append from the stream; False (and nothing taken) once closed.
        REQUIRES: not `full` (the driver waits for room before reading more)."""
        if self.closed:
            return False
        if self.full:
            raise OverflowError(f"{len(self._pending)} Appends already wait")
        self._pending.append(a)
        self.appends += 1
        return True

    def take(self) -> Group | None:
        """The next group to apply (None when nothing waits or the queue is closed)."""
        q = self._pending
        if self.closed or not q:
            return None
        g = Group(q[0].term)
        while q and q[0].term == g.term:
            n = len(q[0].frames)
            if g.appends and n and g.size + n > self.max_group_bytes:
                break
            g.appends.append(q.popleft())
            g.size += n
        self.groups += 1
        return g

    def applied(self, g: Group, durable_lsn: int) -> Ack:
        """The group's frames (if any) are durable: the engine's log now ends at
        `durable_lsn`. Returns the group's one acknowledgement."""
        self.durable_lsn = max(self.durable_lsn, durable_lsn)
        return Ack(g.term, self.durable_lsn, g.last.sent)

    def failed(self, g: Group, durable_lsn: int, error: str) -> Ack:
        """Applying the group failed; the engine's log ends at `durable_lsn` (what was
        durable before it, as far as the engine knows). Closes the queue: the Appends
        behind the group are dropped, none of them acknowledged."""
        self.closed = True
        self._pending.clear()
        self.durable_lsn = min(self.durable_lsn, durable_lsn)
        return Ack(g.term, self.durable_lsn, g.last.sent, error)
