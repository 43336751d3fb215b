"""Leader election with terms, votes and leases: a sans-I/O state machine (Raft's rules,
Ongaro & Ousterhout, sections 5.2 and 5.4.1).

A `Node` takes events (`tick(now)`, `receive(message, now)`) and returns the messages
to send; it never touches a socket or a clock itself, so tests drive whole clusters
deterministically (tests/replication/test_election.py). The gRPC stream and the
daemon only move its messages and call its hooks.

Rules kept here:
- The term and the vote are made durable (`Persistence.save`, which fsyncs) before
  any message that depends on them is sent: one vote per term, across restarts.
- A vote goes only to a candidate whose log is at least as up to date as the
  voter's: a higher last term, or the same last term and a last LSN at least as high.
- Whoever sees a higher term takes it and becomes (or stays) a replica at once.
- Election timeouts are randomized in [election_timeout, 2 * election_timeout).
- A master holds a lease while a majority (itself included) answered a heartbeat
  sent less than `lease` ago; `lease < election_timeout`, so by the time any other
  node can start an election, an isolated master has stopped acknowledging writes and
  serving reads. This assumes clocks advance at about the same rate (not that they agree).
- Leader stickiness: within an election timeout of hearing from a master (or of
  starting), a node refuses votes without taking the candidate's term; a master
  holding its lease does too. Every node that acked a heartbeat thus refuses to help
  elect anyone until the lease that heartbeat extended has run out.
- A node starts as a replica, whatever it was before a restart.
- Leadership transfer (Raft thesis, section 3.10): a master that hands over first stops
  serving (`pause_for_transfer`: no lease, so no writes or reads) until the chosen replica
  has every write; then `timeout_now` steps it down and tells that replica to start an
  election at once (`TimeoutNow`, no pre-vote). Its vote requests carry `transfer`, and
  voters grant them within an election timeout of hearing from the master: that master
  gave up its lease before asking, and never serves again in its term, so no two
  leases overlap. A pause that ends before `timeout_now` (the replica did not catch up)
  resumes the master: nobody was told to run, so its lease was never at risk.
- Pre-vote (Raft thesis, section 9.6): a node whose election timeout passes first asks
  whether a majority would vote for it, without raising its term; only then does it
  start an election. A node that was cut off and comes back therefore cannot force a
  healthy master to step down with a term it inflated while alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

REPLICA, CANDIDATE, MASTER = "replica", "candidate", "master"


@dataclass(frozen=True)
class RequestVote:
    term: int
    candidate: str
    last_term: int  # term of the candidate's last log entry
    last_lsn: int
    pre: bool = False  # a pre-vote: "would you vote for me in `term`?" (nothing changes)
    transfer: bool = False  # an election the master of term - 1 asked for (TimeoutNow)


@dataclass(frozen=True)
class Vote:
    term: int
    voter: str
    granted: bool
    pre: bool = False


@dataclass(frozen=True)
class Heartbeat:
    term: int
    master: str
    sent: float  # the master's clock when sent: echoed back, for the lease


@dataclass(frozen=True)
class HeartbeatAck:
    term: int
    node: str
    ok: bool
    sent: float  # the heartbeat's `sent`


@dataclass(frozen=True)
class TimeoutNow:
    term: int  # the master's term
    master: str


Message = RequestVote | Vote | Heartbeat | HeartbeatAck | TimeoutNow


class Persistence(Protocol):
    def load(self) -> tuple[int, str | None]:
        """(term, voted_for) as last saved; (0, None) for a new node."""
        ...

    def save(self, term: int, voted_for: str | None) -> None:
        """Make (term, voted_for) durable (fsync) before returning."""
        ...


class MemoryPersistence:
    """For tests: what a real one keeps on disk, kept in memory (survives a Node)."""

    def __init__(self) -> None:
        self.term, self.voted_for = 0, None
        self.saves = 0

    def load(self) -> tuple[int, str | None]:
        return self.term, self.voted_for

    def save(self, term: int, voted_for: str | None) -> None:
        self.term, self.voted_for = term, voted_for
        self.saves += 1


class Node:
    """One member's election state. Not thread-safe: one owner drives it.

    `last_entry()` returns the (term, LSN) of the node's last durable log entry;
    `on_master(term)` is called when this node wins (the daemon writes the term marker
    frame there, before acknowledging anything); `on_role(role, term, master)` on every
    change of role or known master.
    """

    def __init__(self, node_id: str, peers: list[str], persistence: Persistence,
                 last_entry: Callable[[], tuple[int, int]], *, election_timeout: float = 1.0,
                 heartbeat_interval: float = 0.1, lease: float | None = None,
                 rng: random.Random | None = None, now: float = 0.0,
                 on_master: Callable[[int], None] | None = None,
                 on_role: Callable[[str, int, str | None], None] | None = None) -> None:
        self.id = node_id
        self.peers = [p for p in peers if p != node_id]
        self.persistence = persistence
        self.last_entry = last_entry
        self.election_timeout = election_timeout
        self.heartbeat_interval = heartbeat_interval
        self.lease = lease if lease is not None else 0.8 * election_timeout
        if self.lease >= election_timeout:
            raise ValueError("the lease must be shorter than the election timeout")
        self.rng = rng or random.Random()
        self.on_master = on_master or (lambda term: None)
        self.on_role = on_role or (lambda role, term, master: None)
        self.term, self.voted_for = persistence.load()
        self.role = REPLICA
        self.master: str | None = None
        self._votes: set[str] = set()
        self._pre_votes: set[str] | None = None  # a pre-vote round in progress
        self._deadline = now + self._timeout()
        self._next_heartbeat = 0.0
        self._acked: dict[str, float] = {}  # peer -> `sent` of the newest acked heartbeat
        self._paused_until: float | None = None  # a master handing over serves nothing
        # When a master was last heard from; a start counts as hearing one (a restarted
        # node cannot know whose lease it may have acked before it went down).
        self._heard_at = now

    # -- queries ---------------------------------------------------------------------

    @property
    def quorum(self) -> int:
        return (len(self.peers) + 1) // 2 + 1

    def has_lease(self, now: float) -> bool:
        """Whether this node may acknowledge writes and serve reads as master now."""
        if self.role != MASTER or self.transferring(now):
            return False
        fresh = 1 + sum(1 for sent in self._acked.values() if now - sent < self.lease)
        return fresh >= self.quorum

    def transferring(self, now: float) -> bool:
        """Whether this master is handing over (paused for a transfer) at `now`."""
        return self._paused_until is not None and now < self._paused_until

    # -- events ----------------------------------------------------------------------

    def pause_for_transfer(self, now: float, until: float) -> None:
        """A master about to hand over stops serving (no lease) until `until` or
        `resume`, so that its log stops growing and the replica can catch up."""
        if self.role != MASTER:
            raise ValueError("only a master hands over")
        self._paused_until = until

    def resume(self) -> None:
        """The hand-over was given up before `timeout_now`: serve again."""
        self._paused_until = None

    def timeout_now(self, target: str, now: float) -> list[tuple[str, Message]]:
        """Step down and tell `target` (which has every write) to start an election.
        REQUIRES: paused for the transfer (so the lease was given up first)."""
        if self.role != MASTER or not self.transferring(now):
            raise ValueError("timeout_now needs a master paused for a transfer")
        if target not in self.peers:
            raise ValueError(f"{target!r} is not a peer")
        term = self.term
        self._paused_until = None
        self._step_down(term, None, now)
        return [(target, TimeoutNow(term, self.id))]

    def tick(self, now: float) -> list[tuple[str, Message]]:
        """Advance time: start an election past the deadline, send due heartbeats."""
        if self._paused_until is not None and now >= self._paused_until:
            self._paused_until = None  # the hand-over ran out of time: serve again
        if self.role == MASTER:
            if now >= self._next_heartbeat:
                self._next_heartbeat = now + self.heartbeat_interval
                return [(p, Heartbeat(self.term, self.id, now)) for p in self.peers]
            return []
        if now < self._deadline:
            return []
        if self.role == CANDIDATE:
            return self._start_election(now)  # a split vote: the next round at once
        return self._start_pre_vote(now)

    def receive(self, msg: Message, now: float) -> list[tuple[str, Message]]:
        if isinstance(msg, RequestVote) and msg.pre:
            return self._on_pre_vote_request(msg, now)
        if isinstance(msg, Vote) and msg.pre:
            return self._on_pre_vote(msg, now)
        if isinstance(msg, TimeoutNow):
            return self._on_timeout_now(msg, now)
        if isinstance(msg, RequestVote) and not msg.transfer and self._master_recent(now):
            # Leader stickiness (Raft thesis, section 6.4): within an election timeout of
            # hearing from a master (or of starting), a vote request is refused without
            # taking its term. This is what makes the master's lease safe: every node
            # that acked a heartbeat refuses to help elect anyone until the lease that
            # heartbeat extended has run out.
            return [(msg.candidate, Vote(self.term, self.id, False))]
        if msg.term > self.term:
            self._step_down(msg.term, None, now)
        if isinstance(msg, RequestVote):
            return self._on_request_vote(msg, now)
        if isinstance(msg, Vote):
            return self._on_vote(msg, now)
        if isinstance(msg, Heartbeat):
            return self._on_heartbeat(msg, now)
        if isinstance(msg, HeartbeatAck):
            if self.role == MASTER and msg.term == self.term and msg.ok:
                self._acked[msg.node] = max(self._acked.get(msg.node, -1e300), msg.sent)
            return []
        raise TypeError(f"not an election message: {msg!r}")

    # -- rules -----------------------------------------------------------------------

    def _master_recent(self, now: float) -> bool:
        if self.role == MASTER:
            return self.has_lease(now)
        return now - self._heard_at < self.election_timeout

    def _timeout(self) -> float:
        return self.election_timeout * (1 + self.rng.random())

    def _persist(self, term: int, voted_for: str | None) -> None:
        self.persistence.save(term, voted_for)  # durable before anything depends on it
        self.term, self.voted_for = term, voted_for

    def _set_role(self, role: str, master: str | None) -> None:
        if (role, master) != (self.role, self.master):
            self.role, self.master = role, master
            self.on_role(role, self.term, master)

    def _step_down(self, term: int, master: str | None, now: float) -> None:
        if term > self.term:
            self._persist(term, None)
        self._paused_until = None
        self._votes.clear()
        self._pre_votes = None
        self._acked.clear()
        self._set_role(REPLICA, master)
        self._deadline = now + self._timeout()

    def _start_pre_vote(self, now: float) -> list[tuple[str, Message]]:
        self._pre_votes = {self.id}
        self._deadline = now + self._timeout()
        if len(self._pre_votes) >= self.quorum:
            return self._start_election(now)
        last_term, last_lsn = self.last_entry()
        req = RequestVote(self.term + 1, self.id, last_term, last_lsn, pre=True)
        return [(p, req) for p in self.peers]

    def _on_pre_vote_request(self, msg: RequestVote, now: float) -> list[tuple[str, Message]]:
        # Granted as a real vote would be, but nothing is persisted or changed here.
        grant = (msg.term > self.term and not self._master_recent(now)
                 and (msg.last_term, msg.last_lsn) >= self.last_entry())
        return [(msg.candidate, Vote(msg.term if grant else self.term, self.id, grant, pre=True))]

    def _on_pre_vote(self, msg: Vote, now: float) -> list[tuple[str, Message]]:
        if not msg.granted:
            if msg.term > self.term:
                self._step_down(msg.term, None, now)
            return []
        if self._pre_votes is None or self.role == MASTER or msg.term != self.term + 1:
            return []
        self._pre_votes.add(msg.voter)
        if len(self._pre_votes) >= self.quorum:
            return self._start_election(now)
        return []

    def _on_timeout_now(self, msg: TimeoutNow, now: float) -> list[tuple[str, Message]]:
        if msg.term < self.term or self.role == MASTER:
            return []  # stale: a newer term began meanwhile
        if msg.term > self.term:
            self._step_down(msg.term, None, now)
        return self._start_election(now, transfer=True)

    def _start_election(self, now: float, transfer: bool = False) -> list[tuple[str, Message]]:
        self._pre_votes = None
        self._persist(self.term + 1, self.id)
        self._votes = {self.id}
        self._set_role(CANDIDATE, None)
        self._deadline = now + self._timeout()
        if len(self._votes) >= self.quorum:  # a cluster of one
            return self._win(now)
        last_term, last_lsn = self.last_entry()
        req = RequestVote(self.term, self.id, last_term, last_lsn, transfer=transfer)
        return [(p, req) for p in self.peers]

    def _on_request_vote(self, msg: RequestVote, now: float) -> list[tuple[str, Message]]:
        grant = False
        if msg.term == self.term and self.voted_for in (None, msg.candidate) \
                and self.role != MASTER:
            if (msg.last_term, msg.last_lsn) >= self.last_entry():
                grant = True
                if self.voted_for != msg.candidate:
                    self._persist(self.term, msg.candidate)  # one vote per term, durable
                self._deadline = now + self._timeout()
        return [(msg.candidate, Vote(self.term, self.id, grant))]

    def _on_vote(self, msg: Vote, now: float) -> list[tuple[str, Message]]:
        if self.role != CANDIDATE or msg.term != self.term or not msg.granted:
            return []
        self._votes.add(msg.voter)
        if len(self._votes) >= self.quorum:
            return self._win(now)
        return []

    def _win(self, now: float) -> list[tuple[str, Message]]:
        self._set_role(MASTER, self.id)
        self._acked.clear()
        self.on_master(self.term)
        self._next_heartbeat = now + self.heartbeat_interval
        return [(p, Heartbeat(self.term, self.id, now)) for p in self.peers]

    def _on_heartbeat(self, msg: Heartbeat, now: float) -> list[tuple[str, Message]]:
        if msg.term < self.term:
            return [(msg.master, HeartbeatAck(self.term, self.id, False, msg.sent))]
        # Same term: a candidate that hears the winner gives up; a replica follows.
        self._votes.clear()
        self._pre_votes = None
        self._set_role(REPLICA, msg.master)
        self._heard_at = now
        self._deadline = now + self._timeout()
        return [(msg.master, HeartbeatAck(self.term, self.id, True, msg.sent))]
