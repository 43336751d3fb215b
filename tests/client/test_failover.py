"""strata_client through failovers, against scripted servers (tests/client/fake.py):
redirect loops are bounded by the deadline, not by a count; a NotMaster naming a node
that does not answer moves the call on to the next node; a call whose outcome is unknown
raises OutcomeUnknown carrying its request id, only at its deadline for writes and at
once for publish and compare-and-set; per-node circuit breakers never end a call that
has time left. The same through the coalescer and from many threads; each test runs on
Client and on AsyncClient (the `clients` fixture)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from strata_client import RetryPolicy, errors
from strata_client._proto import strata_pb2 as pb
from strata_client.attempts import MIN_ATTEMPT_S

from .fake import C, Err, slow
from .test_batching import ONE, Gate, _behind_a_held_call

UNKNOWN = Err(C.UNAVAILABLE, "lease lost: the write may survive or not",
              (("strata-outcome", "unknown"),))
NO_MASTER = Err(C.UNAVAILABLE, "no master is known to this node yet")
SLOW = dict(base_s=0.02, cap_s=0.1)  # back-off visible against local round trips


def _dead() -> str:
    """An address nobody listens on (a SIGKILLed master)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _names(addr: str) -> Err:
    """A replica's answer naming `addr` as the master."""
    return Err(C.FAILED_PRECONDITION, "replica", (("strata-master", "m=" + addr),))


def _from(t: float, before, after):
    """An action answering `before` until monotonic time t, then `after`."""
    def act(req, ctx):
        return before if time.monotonic() < t else after
    return act


# --------------------------------------------------------------------------- redirects

@pytest.mark.parametrize("listed", [False, True], ids=["one-node", "node-list"])
def test_a_redirect_loop_is_bounded_by_the_deadline_not_a_count(servers, clients, listed):
    # Two nodes naming each other (stale views during a failover): the call goes round
    # until its deadline, backing off each round, then says no master answered.
    a, b = servers(), servers()
    a.always("Put", _names(b.address))
    b.always("Put", _names(a.address))
    target = f"{a.address},{b.address}" if listed else a.address
    c = clients(target, retry=RetryPolicy(attempts=2, **SLOW), timeout=0.6)
    t0 = time.monotonic()
    with pytest.raises(errors.Unavailable) as ei:
        c.put(b"k", b"v")
    took = time.monotonic() - t0
    assert not isinstance(ei.value, errors.NotMaster)
    assert type(ei.value) is errors.Unavailable, "a refused write was not done"
    assert "no master answered" in str(ei.value)
    assert 0.55 < took < 2.0, took
    hops = a.hits() + b.hits()
    # more than the former budget of 2 + nodes redirects, far fewer than a busy loop
    assert 8 < hops < 80, hops


@pytest.mark.parametrize("listed", [False, True], ids=["one-node", "node-list"])
def test_a_redirect_loop_that_ends_before_the_deadline_is_answered(servers, clients, listed):
    a, b = servers(), servers()
    t = time.monotonic() + 0.4  # b is elected then
    a.always("Put", _names(b.address))
    b.always("Put", _from(t, _names(a.address), pb.PutResponse(lsn=42)))
    target = f"{a.address},{b.address}" if listed else a.address
    c = clients(target, retry=RetryPolicy(attempts=2, **SLOW), timeout=5)
    assert c.put(b"k", b"v", request_id="r-1") == 42
    assert time.monotonic() >= t
    assert a.hits() + b.hits() > 2 + 2
    assert {r.request_id for s in (a, b) for r in s.requests("Put")} == {"r-1"}
    assert c.target == b.address


def test_not_master_naming_a_dead_node_moves_on_to_the_next_node(servers, clients):
    # Replicas keep naming the SIGKILLed master until they elect another: a redirect to
    # it gets no answer, and the call tries the next listed node instead of giving up.
    a, b, m = servers(), servers(), servers()
    dead = _dead()
    a.always("Put", _names(dead))
    b.always("Put", _names(dead))
    m.always("Put", pb.PutResponse(lsn=7))
    c = clients(f"{a.address},{b.address},{m.address}", timeout=5)
    t0 = time.monotonic()
    assert c.put(b"k", b"v", request_id="r-2") == 7
    assert time.monotonic() - t0 < 1.0
    assert m.requests("Put")[0].request_id == "r-2"
    assert c.target == m.address
    # later calls go straight to the master
    assert c.put(b"k", b"v") == 7 and a.hits() + b.hits() <= 2


def test_a_dead_master_listed_first_is_left_for_the_new_one(servers, clients):
    dead = _dead()
    a, b = servers(), servers()
    t = time.monotonic() + 0.3
    a.always("Put", _from(t, _names(dead), _names(b.address)))
    b.always("Put", _from(t, _names(dead), pb.PutResponse(lsn=9)))
    c = clients(f"{dead},{a.address},{b.address}", timeout=5)
    assert c.put(b"k", b"v") == 9
    assert time.monotonic() >= t
    assert c.target == b.address


# --------------------------------------------------------------------------- unknown outcomes

WRITES = {
    "put": ("Put", lambda c: c.put(b"k", b"v")),
    "delete": ("Delete", lambda c: c.delete(b"k")),
    "batch": ("Batch", lambda c: c.batch([("put", b"a", b"1")])),
}


@pytest.mark.parametrize("name", list(WRITES))
def test_a_write_whose_outcome_stays_unknown_raises_outcome_unknown_at_the_deadline(
        servers, clients, name):
    # The master answered "outcome unknown" (it lost its lease with the write in its
    # log), then the nodes only refuse: the client retries the same id until its
    # deadline, and then cannot say the write was not done.
    method, call = WRITES[name]
    a, b = servers(), servers()
    a.then(method, UNKNOWN)
    a.always(method, NO_MASTER)
    b.always(method, NO_MASTER)
    c = clients(f"{a.address},{b.address}", timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(errors.OutcomeUnknown) as ei:
        call(c)
    # Until the deadline: the last back-off ends at it, and no attempt is started with
    # less than MIN_ATTEMPT_S left.
    assert time.monotonic() - t0 >= 0.5 - MIN_ATTEMPT_S
    ids = {r.request_id for s in (a, b) for r in s.requests(method)}
    assert len(ids) == 1 and ei.value.request_id == ids.pop() != ""
    assert isinstance(ei.value, errors.Unavailable) and ei.value.retryable
    assert a.hits() + b.hits() > 2


def test_an_unknown_outcome_answered_by_a_retry_returns_its_lsn(servers, clients):
    a, b = servers(), servers()
    a.always("Put", UNKNOWN)
    b.then("Put", NO_MASTER)
    b.always("Put", pb.PutResponse(lsn=5))  # the new master knows the id: its first LSN
    c = clients(f"{a.address},{b.address}", timeout=5)
    assert c.put(b"k", b"v", request_id="mine") == 5
    assert {r.request_id for s in (a, b) for r in s.requests("Put")} == {"mine"}


def test_refusals_until_the_deadline_do_not_claim_an_unknown_outcome(servers, clients):
    a, b = servers(), servers()
    a.always("Put", NO_MASTER)
    b.always("Put", NO_MASTER)
    c = clients(f"{a.address},{b.address}", timeout=0.3)
    with pytest.raises(errors.Unavailable) as ei:
        c.put(b"k", b"v")
    assert type(ei.value) is errors.Unavailable


def test_a_deadline_passing_on_a_write_is_an_unknown_outcome_on_a_read_not(servers, clients):
    a, b = servers(), servers()
    a.always("Put", slow(pb.PutResponse(lsn=1), 1.0))
    a.always("Get", slow(pb.GetResponse(found=True, value=b"late"), 1.0))
    c = clients(f"{a.address},{b.address}", timeout=0.3)
    with pytest.raises(errors.OutcomeUnknown) as ei:
        c.put(b"k", b"v", request_id="slow-1")
    assert ei.value.request_id == "slow-1" and ei.value.code == "DEADLINE_EXCEEDED"
    c.target = a.address
    with pytest.raises(errors.DeadlineExceeded):
        c.get(b"k")


def test_one_node_unknown_outcome_after_the_attempts_or_an_open_circuit(fake, clients):
    fake.always("Put", UNKNOWN)
    c = clients(fake.address, attempts=3)
    with pytest.raises(errors.OutcomeUnknown) as ei:
        c.put(b"k", b"v", request_id="one-1")
    assert ei.value.request_id == "one-1" and fake.hits("Put") == 3
    # The breaker opens after the second failure: the write is still of unknown outcome,
    # not "circuit open" (which says the call was not sent).
    c2 = clients(fake.address, attempts=5, threshold=2)
    with pytest.raises(errors.OutcomeUnknown) as ei:
        c2.put(b"k", b"v", request_id="one-2")
    assert ei.value.request_id == "one-2" and "circuit open" in str(ei.value)
    assert fake.hits("Put") == 5


def _goes_away(fake):
    """A handler whose server stops while it runs (the call may have been done)."""
    def act(req, ctx):
        threading.Timer(0.1, fake.server.stop, (0,)).start()
        time.sleep(1.0)
    return act


AMBIGUOUS = {
    "trailer": lambda fake: UNKNOWN,
    "server-deadline": lambda fake: Err(C.DEADLINE_EXCEEDED, "ran past its deadline"),
    "server-gone": _goes_away,
}


@pytest.mark.parametrize("how", list(AMBIGUOUS))
@pytest.mark.parametrize("listed", [False, True], ids=["one-node", "node-list"])
@pytest.mark.parametrize("method", ["Publish", "CompareAndSet"])
def test_publish_and_cas_failing_ambiguously_raise_outcome_unknown_once(
        servers, clients, method, listed, how):
    fake, other = servers(), servers()
    fake.always(method, AMBIGUOUS[how](fake))
    c = clients(f"{fake.address},{other.address}" if listed else fake.address, timeout=5)
    with pytest.raises(errors.OutcomeUnknown) as ei:
        if method == "Publish":
            c.publish("t", b"k", b"p")
        else:
            c.compare_and_set(b"k", b"v", expect_absent=True)
    assert ei.value.request_id == ""
    assert fake.hits(method) == 1 and other.hits() == 0, "sent again: it could be done twice"


def test_publish_refused_on_a_node_list_goes_on_to_the_master(servers, clients):
    a, b, m = servers(), servers(), servers()
    a.always("Publish", NO_MASTER)
    b.always("Publish", _names(_dead()))
    c = clients(f"{a.address},{b.address},{m.address}", timeout=5)
    assert c.publish("t", b"k", b"p") == 15
    assert m.hits("Publish") == 1


# --------------------------------------------------------------------------- circuit breakers

def test_open_circuits_steer_a_node_list_but_never_end_a_call(servers, clients):
    a, b = servers(), servers()
    a.always("Put", NO_MASTER)
    b.then("Put", NO_MASTER, NO_MASTER, NO_MASTER)
    c = clients(f"{a.address},{b.address}", threshold=1, cooldown=5.0,  # open for the test
                timeout=3)
    assert c.put(b"k", b"v") == 11  # both circuits opened on the way: the call went on
    assert c.breaker_of(a.address).state == "open" and c.breaker.state == "closed"
    hits = a.hits()
    c.target = a.address  # calls would start at a: its open circuit sends them to b
    assert c.put(b"k", b"v") == 11 and c.get(b"k") == b"v"
    assert a.hits() == hits, "a call went to the node whose circuit is open"


# --------------------------------------------------------------------------- coalesced calls

def test_coalesced_calls_of_unknown_outcome_each_carry_their_own_request_id(servers, clients):
    a, b = servers(), servers()
    gate = Gate()
    a.then("Put", gate)
    for s in (a, b):
        s.always("Batch", UNKNOWN)
    c = clients(f"{a.address},{b.address}", timeout=0.6, batching=ONE)
    out = _behind_a_held_call(c, gate, lambda i: c.put(b"k%d" % i, b"v", request_id=f"co-{i}"),
                              6)
    assert all(isinstance(e, errors.OutcomeUnknown) for e in out), out
    assert [e.request_id for e in out] == [f"co-{i}" for i in range(6)]
    sent = {op.request_id for s in (a, b) for r in s.requests("Batch") for op in r.ops}
    assert sent == {f"co-{i}" for i in range(6)}


def test_a_coalesced_message_redirected_to_a_dead_master_reaches_the_new_one(servers, clients):
    a, m = servers(), servers()
    gate = Gate()
    a.then("Put", gate)
    a.always("Batch", _names(_dead()))
    m.always("Batch", lambda req, ctx: pb.BatchResponse(
        lsn=100 + len(req.ops) - 1, lsns=[100 + i for i in range(len(req.ops))]))
    c = clients(f"{a.address},{m.address}", timeout=5, batching=ONE)
    out = _behind_a_held_call(c, gate, lambda i: c.put(b"k%d" % i, b"v"), 5)
    assert sorted(out) == [100, 101, 102, 103, 104], out
    assert m.hits("Batch") >= 1


# --------------------------------------------------------------------------- threads, coroutines

def _failover(servers):
    """a is master, then goes away at t0 + 0.2; b and c name the dead a until t0 + 0.6,
    then c is master (and b names it). Returns (nodes, when c took over)."""
    a, b, c = servers(), servers(), servers()
    t0 = time.monotonic()
    t_elect = t0 + 0.6
    threading.Timer(0.2, a.server.stop, (0,)).start()
    for method in ("Put", "Batch"):
        b.always(method, _from(t_elect, _names(a.address), _names(c.address)))
    c.always("Put", _from(t_elect, _names(a.address), pb.PutResponse(lsn=11)))
    c.always("Batch", _from(t_elect, _names(a.address), pb.BatchResponse(lsn=13)))
    return (a, b, c), t_elect


def test_threads_through_a_failover_see_no_error(servers, clients):
    nodes, t_elect = _failover(servers)
    cl = clients(",".join(n.address for n in nodes), timeout=5)
    raised: list = []
    done = [0] * 8

    def run(w: int) -> None:
        while time.monotonic() < t_elect + 0.3:
            try:
                cl.put(b"w%d" % w, b"v")
                done[w] += 1
            except Exception as e:  # collected: none allowed
                raised.append(e)
                return

    ts = [threading.Thread(target=run, args=(w,)) for w in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert not raised, raised[:3]
    assert all(done) and nodes[2].hits() > 0


def test_a_redirect_to_the_new_master_is_followed_while_its_circuit_is_open(servers, clients):
    """Before an election a node answers "no master", which counts against its circuit;
    after a hand-over the old master and the replica name it, and the call must go there
    at once. The open circuit used to steer each redirect to the replica (whose circuit
    was closed), which named the master again, round after round of back-off until the
    cooldown ended: a 1.6-2.4 s gap in writes after a hand-over."""
    old, m, r = servers(), servers(), servers()
    t = time.monotonic() + 0.5  # the hand-over from old to m
    old.always("Put", _from(t, pb.PutResponse(lsn=1), _names(m.address)))
    m.always("Put", _from(t, NO_MASTER, pb.PutResponse(lsn=5)))
    r.always("Put", _from(t, _names(old.address), _names(m.address)))
    c = clients(f"{m.address},{old.address},{r.address}", timeout=10, threshold=1,
                cooldown=30.0, retry=RetryPolicy(**SLOW))
    assert c.put(b"k", b"v") == 1  # m says "no master" (its circuit opens), old answers
    assert c.breaker_of(m.address).state == "open" and c.target == old.address
    time.sleep(max(0.0, t - time.monotonic()))
    t1 = time.monotonic()
    assert c.put(b"k", b"v") == 5
    assert time.monotonic() - t1 < 1.0, "the redirect waited for the master's circuit"
    assert c.breaker_of(m.address).state == "closed"
