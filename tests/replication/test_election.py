"""Election rules (replication/election.py) on whole clusters driven by a deterministic
in-process network and clock: one master per term, votes only for up-to-date logs,
durable votes, step-down on a higher term, leases that end before a new master can
exist, failover within the timeouts."""

from __future__ import annotations

import random

import pytest

from strata.replication.election import (
    CANDIDATE,
    MASTER,
    REPLICA,
    Heartbeat,
    MemoryPersistence,
    Node,
    RequestVote,
    Vote,
)

ET = 1.0  # election timeout
DT = 0.01  # simulation step


class Cluster:
    def __init__(self, ids=("a", "b", "c"), seed=1, logs=None) -> None:
        self.ids = list(ids)
        self.now = 0.0
        self.rng = random.Random(seed)
        self.logs = dict(logs or {i: (0, 0) for i in self.ids})
        self.store = {i: MemoryPersistence() for i in self.ids}
        self.masters: dict[int, set[str]] = {}  # term -> who won it
        self.nodes = {i: self._node(i) for i in self.ids}
        self.down: set[str] = set()
        self.cut: set[frozenset] = set()  # pairs that cannot talk
        self.inbox: list[tuple[float, str, str, object]] = []

    def _node(self, i: str) -> Node:
        return Node(i, self.ids, self.store[i], lambda i=i: self.logs[i], election_timeout=ET,
                    heartbeat_interval=0.1, rng=random.Random(self.rng.random()), now=self.now,
                    on_master=lambda term, i=i: self.masters.setdefault(term, set()).add(i))

    def restart(self, i: str) -> None:
        self.nodes[i] = self._node(i)  # state from persistence only
        self.down.discard(i)

    def send(self, src: str, out) -> None:
        for dst, msg in out:
            if src in self.down or dst in self.down or frozenset((src, dst)) in self.cut:
                continue
            self.inbox.append((self.now + 0.002, src, dst, msg))

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += DT
            due = [m for m in self.inbox if m[0] <= self.now]
            self.inbox = [m for m in self.inbox if m[0] > self.now]
            for _, src, dst, msg in due:
                if dst not in self.down and frozenset((src, dst)) not in self.cut:
                    self.send(dst, self.nodes[dst].receive(msg, self.now))
            for i, n in self.nodes.items():
                if i not in self.down:
                    self.send(i, n.tick(self.now))
            self.check_safety()

    def check_safety(self) -> None:
        for term, won in self.masters.items():
            assert len(won) <= 1, f"two masters in term {term}: {won}"
        leased = [i for i, n in self.nodes.items() if i not in self.down and n.has_lease(self.now)]
        assert len(leased) <= 1, f"two nodes hold a lease at {self.now:.2f}: {leased}"

    def master(self) -> str | None:
        live = [i for i, n in self.nodes.items() if i not in self.down and n.role == MASTER]
        return live[0] if len(live) == 1 else None


def test_a_cluster_elects_one_master_and_it_holds_the_lease():
    c = Cluster()
    c.run(3 * ET)
    m = c.master()
    assert m is not None
    assert c.nodes[m].has_lease(c.now)
    assert all(n.master == m for n in c.nodes.values())
    assert {n.term for n in c.nodes.values()} == {c.nodes[m].term}


def test_failover_after_the_master_dies_within_the_timeouts():
    c = Cluster(seed=3)
    c.run(3 * ET)
    old = c.master()
    c.down.add(old)
    c.run(3 * ET)  # an election timeout is at most 2 * ET, plus one round
    new = c.master()
    assert new is not None and new != old
    assert c.nodes[new].term > c.nodes[old].term


@pytest.mark.parametrize("seed", range(40))  # 200 seeds checked by hand: no failure
def test_no_two_masters_through_partitions_and_restarts(seed):
    """Safety under churn: random cuts, deaths and restarts; check_safety runs every step."""
    c = Cluster(seed=seed)
    rng = random.Random(seed)
    for _ in range(30):
        action = rng.random()
        a, b = rng.sample(c.ids, 2)
        if action < 0.3:
            c.cut.add(frozenset((a, b)))
        elif action < 0.5:
            c.cut.discard(frozenset((a, b)))
        elif action < 0.65:
            c.down.add(a)
        elif action < 0.85 and c.down:
            c.restart(rng.choice(sorted(c.down)))
        c.run(rng.random() * ET)
    c.cut.clear()
    for i in sorted(c.down):
        c.restart(i)
    c.run(4 * ET)
    assert c.master() is not None, "the healed cluster elects a master"


def test_an_isolated_master_loses_its_lease_before_anyone_else_can_win():
    c = Cluster(seed=5)
    c.run(3 * ET)
    old = c.master()
    others = [i for i in c.ids if i != old]
    for o in others:
        c.cut.add(frozenset((old, o)))
    t_cut = c.now
    lost_lease_at = None
    while c.now < t_cut + 4 * ET:
        c.run(DT)
        if lost_lease_at is None and not c.nodes[old].has_lease(c.now):
            lost_lease_at = c.now
        new = [i for i in others if c.nodes[i].role == MASTER]
        if new:
            assert lost_lease_at is not None and lost_lease_at <= c.now
            break
    else:
        pytest.fail("the majority side did not elect a new master")
    assert c.nodes[old].role == MASTER, "the old master does not know yet..."
    assert not c.nodes[old].has_lease(c.now), "...but it no longer acknowledges anything"
    c.cut.clear()
    c.run(ET)
    assert c.nodes[old].role == REPLICA, "it steps down when it hears the higher term"


def test_a_stale_log_cannot_win():
    """c missed the last writes: a and b refuse it their votes; with a down, b wins."""
    c = Cluster(logs={"a": (2, 100), "b": (2, 100), "c": (2, 90)})
    for n in c.nodes.values():
        n.term = 2
    c.down.add("a")
    for _ in range(20):  # whatever the timeouts, c never becomes master
        c.run(ET)
        assert c.nodes["c"].role != MASTER
        if c.master() == "b":
            break
    assert c.master() == "b"


@pytest.mark.parametrize("theirs,mine,granted", [
    ((3, 10), (3, 10), True),   # equal logs
    ((3, 11), (3, 10), True),   # longer, same last term
    ((4, 1), (3, 10), True),    # a later last term wins over length
    ((3, 9), (3, 10), False),   # shorter
    ((2, 50), (3, 10), False),  # older last term, however long
])
def test_vote_only_for_an_up_to_date_log(theirs, mine, granted):
    n = Node("b", ["a", "b", "c"], MemoryPersistence(), lambda: mine, election_timeout=ET)
    out = n.receive(RequestVote(5, "a", *theirs), now=2 * ET)  # no master heard of lately
    assert out == [("a", Vote(5, "b", granted))]
    assert n.term == 5


def test_one_vote_per_term_and_it_survives_a_restart():
    store = MemoryPersistence()
    n = Node("c", ["a", "b", "c"], store, lambda: (1, 1), election_timeout=ET)
    t = 2 * ET
    assert n.receive(RequestVote(4, "a", 1, 1), t) == [("a", Vote(4, "c", True))]
    assert store.load() == (4, "a"), "the vote is saved before the reply is sent"
    n = Node("c", ["a", "b", "c"], store, lambda: (1, 1), election_timeout=ET, now=t)  # restart
    t += 2 * ET
    assert n.receive(RequestVote(4, "b", 1, 1), t) == [("b", Vote(4, "c", False))]
    assert n.receive(RequestVote(4, "a", 1, 1), t) == [("a", Vote(4, "c", True))]


def test_no_vote_within_an_election_timeout_of_hearing_a_master_or_of_starting():
    """Leader stickiness: what keeps an old master's lease from overlapping a new one."""
    n = Node("c", ["a", "b", "c"], MemoryPersistence(), lambda: (1, 1), election_timeout=ET,
             now=0.0)
    assert n.receive(RequestVote(2, "a", 1, 1), 0.5 * ET) == [("a", Vote(0, "c", False))]
    assert n.term == 0, "a refused request does not bump the term either"
    n.receive(Heartbeat(1, "b", 1.0 * ET), 1.0 * ET)
    assert n.receive(RequestVote(2, "a", 1, 1), 1.5 * ET) == [("a", Vote(1, "c", False))]
    assert n.receive(RequestVote(2, "a", 1, 1), 2.1 * ET) == [("a", Vote(2, "c", True))]


def test_a_higher_term_makes_anyone_step_down():
    store = MemoryPersistence()
    n = Node("a", ["a", "b", "c"], store, lambda: (0, 0), election_timeout=ET,
             rng=random.Random(1))
    out = n.tick(10.0)  # timeout: a pre-vote round first, nothing persisted
    assert n.role == REPLICA and store.load() == (0, None)
    assert all(isinstance(m, RequestVote) and m.pre and m.term == 1 for _, m in out)
    n.receive(Vote(1, "b", True, pre=True), 10.01)  # a majority would vote: candidate
    assert n.role == CANDIDATE and store.load() == (1, "a")
    n.receive(Heartbeat(7, "b", 10.1), 10.1)
    assert (n.role, n.term, n.master) == (REPLICA, 7, "b")
    assert store.load() == (7, None)


def test_a_restarted_master_comes_back_as_a_replica():
    store = MemoryPersistence()
    store.save(9, "a")
    n = Node("a", ["a", "b", "c"], store, lambda: (9, 5), election_timeout=ET)
    assert n.role == REPLICA and n.term == 9 and not n.has_lease(0.0)


def test_the_lease_must_end_before_an_election_can_start():
    with pytest.raises(ValueError):
        Node("a", ["a"], MemoryPersistence(), lambda: (0, 0), election_timeout=1.0, lease=1.0)


def test_a_node_cut_off_and_back_does_not_unseat_a_healthy_master():
    # Pre-vote: alone, the cut-off node keeps asking whether it could win and never
    # raises its term; back with the others, its term is the master's.
    c = Cluster()
    c.run(3.0)
    (m,) = {i for i, n in c.nodes.items() if n.role == MASTER}
    term = c.nodes[m].term
    lone = next(i for i in c.ids if i != m)
    for o in c.ids:
        if o != lone:
            c.cut.add(frozenset((lone, o)))
    c.run(10.0)
    assert c.nodes[lone].term == term and c.nodes[lone].role == REPLICA
    c.cut.clear()
    c.run(3.0)
    assert c.nodes[m].role == MASTER and c.nodes[m].term == term
    assert all(n.term == term for n in c.nodes.values())


def test_a_pre_vote_changes_nothing_on_the_voter():
    store = MemoryPersistence()
    n = Node("b", ["a", "b", "c"], store, lambda: (0, 0), election_timeout=ET)
    out = n.receive(RequestVote(5, "a", 0, 0, pre=True), 10.0)
    assert out == [("a", Vote(5, "b", True, pre=True))]
    assert (n.term, n.role, store.saves) == (0, REPLICA, 0)
    # within an election timeout of hearing a master: refused
    n.receive(Heartbeat(0, "c", 10.0), 10.0)
    out = n.receive(RequestVote(5, "a", 0, 0, pre=True), 10.1)
    assert out == [("a", Vote(0, "b", False, pre=True))]


# -- leadership transfer (Raft thesis, section 3.10) ---------------------------------------


def test_a_transfer_elects_the_target_at_once_and_no_lease_overlaps():
    c = Cluster(seed=5)
    c.run(3 * ET)
    old = c.master()
    target = next(i for i in c.ids if i != old)
    term = c.nodes[old].term
    c.nodes[old].pause_for_transfer(c.now, c.now + ET)
    assert not c.nodes[old].has_lease(c.now), "a master handing over still serves"
    c.run(0.05)
    c.send(old, c.nodes[old].timeout_now(target, c.now))
    assert c.nodes[old].role == REPLICA
    c.run(0.1)  # a few message delays: no election timeout, no pre-vote round
    assert c.master() == target
    assert c.nodes[target].term == term + 1
    assert c.nodes[target].has_lease(c.now)
    c.run(2 * ET)
    assert c.master() == target  # check_safety ran at every step


def test_a_transfer_is_refused_while_other_replicas_would_not_vote_for_its_log():
    c = Cluster(seed=6)
    c.run(3 * ET)
    old = c.master()
    target, other = (i for i in c.ids if i != old)
    c.logs[old] = c.logs[other] = (1, 10)  # the target lacks writes: it must not win
    c.nodes[old].pause_for_transfer(c.now, c.now + ET)
    c.send(old, c.nodes[old].timeout_now(target, c.now))
    for _ in range(20):
        c.run(ET)
        if c.master() is not None:
            break
    assert c.master() in (old, other), c.now


def test_a_pause_that_runs_out_serves_again_and_a_stale_timeout_now_is_ignored():
    c = Cluster(seed=7)
    c.run(3 * ET)
    m = c.master()
    target = next(i for i in c.ids if i != m)
    n = c.nodes[m]
    n.pause_for_transfer(c.now, c.now + 0.3)
    c.run(0.1)
    assert not n.has_lease(c.now) and n.role == MASTER
    c.run(0.3)
    assert n.has_lease(c.now), "the pause ran out: the master serves again"
    with pytest.raises(ValueError):
        n.timeout_now(target, c.now)  # only while paused
    # A TimeoutNow of an older term (delayed in the network) starts nothing.
    from strata.replication.election import TimeoutNow
    assert c.nodes[target].receive(TimeoutNow(n.term - 1, m), c.now) == []
    c.run(ET)
    assert c.master() == m
