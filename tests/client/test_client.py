"""strata_client against scripted fake strata.v1 servers running in-process
(tests/client/fake.py): retries, back-off, the circuit breaker, redirects,
typed errors, node lists, streams, admin calls. Each test runs on Client and on
AsyncClient (the `clients` fixture). Put/delete calls here go one at a time, so
the coalescer sends each alone as the unary call it stands for
(tests/client/test_batching.py covers coalescing)."""

from __future__ import annotations

import socket
import statistics
import threading
import time

import grpc
import pytest

from strata_client import Client, RetryPolicy, errors
from strata_client._proto import strata_pb2 as pb
from strata_client._proto import strata_pb2_grpc as pbg

from .fake import COOLDOWN, FAST, C, Err, Fake, Stream, slow

WRITE_CALLS = {
    "put": ("Put", lambda c: c.put(b"k", b"v"), 11),
    "delete": ("Delete", lambda c: c.delete(b"k"), 12),
    "batch": ("Batch", lambda c: c.batch([("put", b"a", b"1"), ("delete", b"b")]), 13),
}
RETRIED_CALLS = {**WRITE_CALLS, "get": ("Get", lambda c: c.get(b"k"), b"v")}
TRANSIENT = [C.UNAVAILABLE, C.RESOURCE_EXHAUSTED, C.DEADLINE_EXCEEDED]


# --------------------------------------------------------------------------- retries

@pytest.mark.parametrize("code", TRANSIENT, ids=lambda c: c.name)
@pytest.mark.parametrize("name", list(RETRIED_CALLS))
def test_transient_errors_are_retried(fake, clients, name, code):
    method, call, expected = RETRIED_CALLS[name]
    fake.then(method, Err(code), Err(code))
    c = clients(fake.address)
    assert call(c) == expected
    assert fake.hits(method) == 3
    reqs = fake.requests(method)
    assert all(r == reqs[0] for r in reqs), "each retry must resend the identical request"
    if name != "get":
        ids = {r.request_id for r in reqs}
        assert len(ids) == 1 and "" not in ids, f"request_id changed between retries: {ids}"


@pytest.mark.parametrize("name", list(WRITE_CALLS))
def test_request_id_differs_between_calls(fake, clients, name):
    method, call, _ = WRITE_CALLS[name]
    c = clients(fake.address)
    for _ in range(3):
        call(c)
    ids = [r.request_id for r in fake.requests(method)]
    assert len(ids) == 3 and all(ids) and len(set(ids)) == 3


def test_explicit_request_id_is_sent_on_every_retry(fake, clients):
    fake.then("Put", Err(C.UNAVAILABLE), Err(C.UNAVAILABLE))
    c = clients(fake.address)
    assert c.put(b"k", b"v", request_id="my-id") == 11
    assert [r.request_id for r in fake.requests("Put")] == ["my-id"] * 3
    fake.then("Delete", Err(C.UNAVAILABLE))
    assert c.delete(b"k", request_id="del-id") == 12
    assert [r.request_id for r in fake.requests("Delete")] == ["del-id"] * 2
    fake.then("Batch", Err(C.RESOURCE_EXHAUSTED))
    assert c.batch([("put", b"a", b"1")], request_id="b-id") == 13
    assert [r.request_id for r in fake.requests("Batch")] == ["b-id"] * 2


def test_client_side_deadline_is_retried(fake, clients):
    def slow(request, context):
        time.sleep(0.5)
        return pb.GetResponse(found=True, value=b"late", lsn=1)

    fake.then("Get", slow)
    c = clients(fake.address, timeout=0.15)
    assert c.get_entry(b"k") == (b"v", 10)
    assert fake.hits("Get") == 2


def test_retries_stop_after_attempts(fake, clients):
    fake.always("Put", Err(C.UNAVAILABLE, "draining"))
    c = clients(fake.address, attempts=3)
    with pytest.raises(errors.Unavailable) as ei:
        c.put(b"k", b"v")
    assert ei.value.code == "UNAVAILABLE" and ei.value.retryable
    assert "draining" in str(ei.value)
    assert fake.hits("Put") == 3
    assert len({r.request_id for r in fake.requests("Put")}) == 1


def test_backoff_uses_policy_delay_between_attempts_only(fake, clients):
    class Recording(RetryPolicy):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.seen: list[int] = []

        def delay(self, attempt: int) -> float:
            self.seen.append(attempt)
            return super().delay(attempt)

    policy = Recording(attempts=4, **FAST)
    fake.always("Get", Err(C.UNAVAILABLE))
    c = clients(fake.address, retry=policy)
    with pytest.raises(errors.Unavailable):
        c.get(b"k")
    assert fake.hits("Get") == 4
    assert policy.seen == [0, 1, 2]  # exponent grows; no sleep after the last try
    policy.seen.clear()
    fake.always("Get", pb.GetResponse(found=False))
    assert c.get(b"k") is None
    assert policy.seen == []


@pytest.mark.parametrize("code,exc", [
    (C.INVALID_ARGUMENT, errors.InvalidArgument),
    (C.ABORTED, errors.Conflict),
    (C.NOT_FOUND, errors.NotFound),
    (C.UNAUTHENTICATED, errors.Unauthenticated),
    (C.INTERNAL, errors.Internal),
    (C.FAILED_PRECONDITION, errors.NotMaster),
], ids=lambda x: getattr(x, "name", getattr(x, "__name__", "")))
@pytest.mark.parametrize("name", list(RETRIED_CALLS))
def test_non_transient_errors_are_not_retried(fake, clients, name, code, exc):
    method, call, _ = RETRIED_CALLS[name]
    fake.always(method, Err(code, "nope"))
    c = clients(fake.address)
    with pytest.raises(exc) as ei:
        call(c)
    assert ei.value.code == code.name and not ei.value.retryable
    assert fake.hits(method) == 1


@pytest.mark.parametrize("code", TRANSIENT, ids=lambda c: c.name)
def test_publish_and_compare_and_set_are_never_retried(fake, clients, code):
    fake.always("Publish", Err(code)).always("CompareAndSet", Err(code))
    c = clients(fake.address)
    with pytest.raises(errors.StrataError) as ei:
        c.publish("t", b"k", b"p")
    assert ei.value.retryable and ei.value.code == code.name
    with pytest.raises(errors.StrataError) as ei:
        c.compare_and_set(b"k", b"v", expected_lsn=3)
    assert ei.value.retryable and ei.value.code == code.name
    assert fake.hits("Publish") == 1
    assert fake.hits("CompareAndSet") == 1


def test_status_is_retried_admin_writes_are_not(fake, clients):
    fake.then("Status", Err(C.UNAVAILABLE))
    fake.always("Checkpoint", Err(C.UNAVAILABLE)).always("Compact", Err(C.UNAVAILABLE))
    c = clients(fake.address)
    assert c.status().last_lsn == 99
    assert fake.hits("Status") == 2
    with pytest.raises(errors.Unavailable):
        c.checkpoint("/x")
    with pytest.raises(errors.Unavailable):
        c.compact()
    assert fake.hits("Checkpoint") == 1 and fake.hits("Compact") == 1


def test_unreachable_server_is_unavailable_after_retries(clients):
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{s.getsockname()[1]}"
    c = clients(addr, attempts=3, timeout=2.0)
    t0 = time.monotonic()
    with pytest.raises(errors.Unavailable):
        c.get(b"k")
    assert time.monotonic() - t0 < 5


# --------------------------------------------------------------------------- RetryPolicy.delay

def test_delay_is_full_jitter_bounded_by_cap():
    p = RetryPolicy(attempts=10, base_s=0.001, cap_s=0.01)
    n = 4000
    for attempt, bound in [(0, 0.001), (1, 0.002), (2, 0.004), (3, 0.008), (4, 0.01),
                           (5, 0.01), (9, 0.01), (30, 0.01)]:
        xs = [p.delay(attempt) for _ in range(n)]
        assert all(0.0 <= x <= bound for x in xs), (attempt, max(xs))
        assert len(set(xs)) > 0.99 * n, "delays are not jittered"
        # uniform on [0, bound]: mean bound/2, half the mass below bound/2, spread to both ends
        assert abs(statistics.fmean(xs) - bound / 2) < 0.05 * bound, (attempt, statistics.fmean(xs))
        below = sum(x < bound / 2 for x in xs) / n
        assert 0.45 < below < 0.55, (attempt, below)
        assert max(xs) > 0.98 * bound and min(xs) < 0.02 * bound
        assert abs(statistics.pstdev(xs) - bound / 12 ** 0.5) < 0.05 * bound


def test_delay_defaults_grow_exponentially_until_cap():
    p = RetryPolicy()  # base 0.05, cap 2.0
    maxima = [max(p.delay(a) for _ in range(2000)) for a in range(8)]
    for a, m in enumerate(maxima):
        bound = min(2.0, 0.05 * 2 ** a)
        assert 0.95 * bound < m <= bound, (a, m, bound)


def test_delay_stays_bounded_for_very_large_attempt_numbers():
    # base_s * 2**attempt would overflow a float for attempt >= ~1024: a policy
    # configured for many attempts must still sleep at most cap_s.
    p = RetryPolicy(attempts=5000, base_s=0.001, cap_s=0.01)
    assert 0.0 <= p.delay(1100) <= 0.01


# --------------------------------------------------------------------------- circuit breaker

def _trip(c: Client, fake: Fake, threshold: int) -> None:
    fake.always("Get", Err(C.UNAVAILABLE))
    for _ in range(threshold):
        with pytest.raises(errors.Unavailable):
            c.get(b"k")
    assert fake.hits("Get") == threshold
    assert c.breaker.state == "open"


def test_breaker_opens_after_threshold_and_fails_fast(fake, clients):
    c = clients(fake.address, attempts=1, threshold=3)
    fake.always("Get", Err(C.UNAVAILABLE))
    for _ in range(2):
        with pytest.raises(errors.Unavailable):
            c.get(b"k")
        assert c.breaker.state == "closed"
    with pytest.raises(errors.Unavailable):
        c.get(b"k")
    assert c.breaker.state == "open"
    assert fake.hits() == 3
    fake.always("Get", pb.GetResponse(found=True, value=b"x"))  # server would answer now
    t0 = time.monotonic()
    for call in (lambda: c.get(b"k"), lambda: c.put(b"k", b"v"), lambda: c.publish("t", b"k", b"p"),
                 lambda: c.compare_and_set(b"k", b"v", expect_absent=True), lambda: list(c.scan())):
        with pytest.raises(errors.Unavailable) as ei:
            call()
        assert "circuit open" in str(ei.value)
    assert time.monotonic() - t0 < 0.1
    assert fake.hits() == 3, "calls reached the server while the circuit was open"


def test_breaker_opens_within_one_retried_call(fake, clients):
    c = clients(fake.address, attempts=5, threshold=3)
    fake.always("Put", Err(C.RESOURCE_EXHAUSTED))
    with pytest.raises(errors.Unavailable) as ei:
        c.put(b"k", b"v")
    assert "circuit open" in str(ei.value)
    assert fake.hits("Put") == 3


def test_breaker_counts_only_consecutive_transient_failures(fake, clients):
    c = clients(fake.address, attempts=1, threshold=3)
    fake.then("Get", Err(C.UNAVAILABLE), Err(C.UNAVAILABLE), pb.GetResponse(found=False),
              Err(C.UNAVAILABLE), Err(C.UNAVAILABLE))
    for expect in (errors.Unavailable, errors.Unavailable, None, errors.Unavailable, errors.Unavailable):
        if expect is None:
            assert c.get(b"k") is None
        else:
            with pytest.raises(expect):
                c.get(b"k")
    assert c.breaker.state == "closed"
    # non-transient answers never trip it
    fake.always("Get", Err(C.INVALID_ARGUMENT))
    for _ in range(6):
        with pytest.raises(errors.InvalidArgument):
            c.get(b"k")
    assert c.breaker.state == "closed" and fake.hits("Get") == 11


def test_breaker_half_open_lets_one_probe_then_closes(fake, clients):
    c = clients(fake.address, attempts=1, threshold=2)
    _trip(c, fake, 2)
    time.sleep(COOLDOWN + 0.05)
    assert c.breaker.state == "half-open"

    release = threading.Event()

    def gated(request, context):
        release.wait(5)
        return pb.GetResponse(found=True, value=b"probe", lsn=5)

    fake.then("Get", gated)
    fake.always("Get", pb.GetResponse(found=True, value=b"after", lsn=6))
    out: list = []
    probe = threading.Thread(target=lambda: out.append(c.get(b"k")))
    probe.start()
    fake.wait_hits(3)
    # the probe is in flight: every other call fails fast
    for _ in range(3):
        with pytest.raises(errors.Unavailable) as ei:
            c.get(b"k")
        assert "circuit open" in str(ei.value)
    assert fake.hits() == 3
    release.set()
    probe.join(5)
    assert out == [b"probe"]
    assert c.breaker.state == "closed"
    assert c.get(b"k") == b"after" and c.put(b"k", b"v") == 11
    assert fake.hits() == 5


def test_breaker_probe_failure_reopens(fake, clients):
    c = clients(fake.address, attempts=1, threshold=2)
    _trip(c, fake, 2)
    time.sleep(COOLDOWN + 0.05)
    with pytest.raises(errors.Unavailable) as ei:
        c.get(b"k")  # the probe reaches the server and fails
    assert "circuit open" not in str(ei.value)
    assert fake.hits() == 3
    assert c.breaker.state == "open"
    with pytest.raises(errors.Unavailable) as ei:
        c.get(b"k")
    assert "circuit open" in str(ei.value) and fake.hits() == 3
    time.sleep(COOLDOWN + 0.05)
    fake.always("Get", pb.GetResponse(found=True, value=b"ok"))
    assert c.get(b"k") == b"ok"
    assert c.breaker.state == "closed" and fake.hits() == 4


def test_breaker_recovers_when_half_open_probe_gets_non_transient_error(fake, clients):
    # A probe answered with a non-transient error (INVALID_ARGUMENT, NOT_FOUND,
    # ABORTED, ...) shows the endpoint is up: the breaker must close, not stay
    # half-open and fail every later call fast.
    c = clients(fake.address, attempts=1, threshold=2)
    _trip(c, fake, 2)
    time.sleep(COOLDOWN + 0.05)
    fake.then("Get", Err(C.INVALID_ARGUMENT, "bad key"))
    fake.always("Get", pb.GetResponse(found=True, value=b"ok"))
    with pytest.raises(errors.InvalidArgument):
        c.get(b"k")  # the server answered: it is reachable
    time.sleep(COOLDOWN + 0.05)
    assert c.get(b"k") == b"ok"


def test_breaker_recovers_when_half_open_scan_probe_is_abandoned(fake, clients):
    # scan() takes the half-open probe slot; a caller that stops iterating early
    # (break / generator closed) must still release it.
    c = clients(fake.address, attempts=1, threshold=2)
    _trip(c, fake, 2)
    time.sleep(COOLDOWN + 0.05)
    fake.then("Scan", Stream([pb.ScanResponse(items=[pb.KeyValue(key=b"a", value=b"1")]),
                              pb.ScanResponse(items=[pb.KeyValue(key=b"b", value=b"2")])]))
    fake.always("Get", pb.GetResponse(found=True, value=b"ok"))
    it = c.scan()
    assert next(it) == (b"a", b"1")
    it.close()
    time.sleep(COOLDOWN + 0.05)
    assert c.get(b"k") == b"ok"


# --------------------------------------------------------------------------- typed errors

def test_conflict_carries_current_lsn(fake, clients):
    fake.then("CompareAndSet", Err(C.ABORTED, "lsn mismatch", (("strata-current-lsn", "42"),)),
              Err(C.ABORTED, "absent"))
    c = clients(fake.address)
    with pytest.raises(errors.Conflict) as ei:
        c.compare_and_set(b"k", b"v", expected_lsn=7)
    assert ei.value.current_lsn == 42 and ei.value.code == "ABORTED"
    assert "lsn mismatch" in str(ei.value)
    req = fake.requests("CompareAndSet")[0]
    assert req.expected_lsn == 7 and req.value == b"v"
    with pytest.raises(errors.Conflict) as ei:
        c.compare_and_set(b"k", delete=True, expect_absent=True)
    assert ei.value.current_lsn == 0
    assert fake.hits("CompareAndSet") == 2
    assert fake.requests("CompareAndSet")[1].delete


def test_not_master_without_address_is_raised(fake, clients):
    fake.always("Put", Err(C.FAILED_PRECONDITION, "replica"))
    c = clients(fake.address)
    with pytest.raises(errors.NotMaster) as ei:
        c.put(b"k", b"v")
    assert ei.value.master == "" and fake.hits("Put") == 1


def test_not_master_error_carries_master(fake):
    # Through a raw stub: the Client itself would follow the address (tested below).
    fake.always("Put", Err(C.FAILED_PRECONDITION, "replica", (("strata-master", "10.0.0.9:7400"),)))
    with grpc.insecure_channel(fake.address) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            pbg.KVStub(ch).Put(pb.PutRequest(key=b"k"), timeout=2)
    err = errors.from_rpc_error(ei.value)
    assert isinstance(err, errors.NotMaster) and err.master == "10.0.0.9:7400"
    assert err.code == "FAILED_PRECONDITION" and not err.retryable


def test_subscribe_lapped_carries_resume_lsn(fake, clients):
    evs = [pb.Event(lsn=5, topic="t", key=b"a", value=b"1"),
           pb.Event(lsn=6, topic="t", key=b"b", deleted=True)]
    fake.then("Subscribe", Stream(evs, Err(C.RESOURCE_EXHAUSTED, "lapped",
                                           (("strata-resume-lsn", "17"),))))
    c = clients(fake.address)
    got = []
    with pytest.raises(errors.Lapped) as ei:
        for ev in c.subscribe(["t"], key_prefix=b"a", from_lsn=5):
            got.append(ev)
    assert [(e.lsn, e.key, e.deleted) for e in got] == [(5, b"a", False), (6, b"b", True)]
    assert ei.value.resume_lsn == 17 and isinstance(ei.value, errors.Overloaded)
    assert ei.value.code == "RESOURCE_EXHAUSTED"
    req = fake.requests("Subscribe")[0]
    assert list(req.topics) == ["t"] and req.key_prefix == b"a" and req.from_lsn == 5
    assert fake.hits("Subscribe") == 1


def test_resource_exhausted_without_resume_is_plain_overloaded(fake, clients):
    fake.always("Put", Err(C.RESOURCE_EXHAUSTED, "stall"))
    c = clients(fake.address, attempts=2)
    with pytest.raises(errors.Overloaded) as ei:
        c.put(b"k", b"v")
    assert type(ei.value) is errors.Overloaded and ei.value.retryable
    assert fake.hits("Put") == 2


def test_subscribe_compacted_carries_earliest_lsn(fake, clients):
    fake.then("Subscribe", Stream([], Err(C.OUT_OF_RANGE, "gone",
                                          (("strata-earliest-lsn", "100"),))))
    c = clients(fake.address)
    with pytest.raises(errors.Compacted) as ei:
        list(c.subscribe(from_lsn=3))
    assert ei.value.earliest_lsn == 100 and ei.value.code == "OUT_OF_RANGE"
    assert not ei.value.retryable


def test_from_rpc_error_without_metadata():
    class Bare(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.ABORTED

        def details(self):
            return "d"

        def trailing_metadata(self):
            raise RuntimeError("channel-level error has no metadata")

    e = errors.from_rpc_error(Bare())
    assert isinstance(e, errors.Conflict) and e.current_lsn == 0 and str(e) == "d"
    e = errors.from_rpc_error(grpc.RpcError("weird"))
    assert isinstance(e, errors.Internal) and e.code == "UNKNOWN"


# --------------------------------------------------------------------------- NotMaster redirect

def test_not_master_is_followed_to_the_master(servers, clients):
    replica, master = servers(), servers()
    replica.always("Put", Err(C.FAILED_PRECONDITION, "replica",
                              (("strata-master", master.address),)))
    master.always("Put", pb.PutResponse(lsn=77))
    c = clients(replica.address, token="tok")
    assert c.put(b"k", b"v") == 77
    assert replica.hits() == 1 and master.hits() == 1
    assert c.target == master.address
    rid = replica.requests("Put")[0].request_id
    assert rid and master.requests("Put")[0].request_id == rid
    assert master.calls[0].metadata["authorization"] == "Bearer tok"
    # later calls go straight to the master
    assert c.get(b"k") == b"v"
    assert replica.hits() == 1 and master.hits("Get") == 1


@pytest.mark.parametrize("name", ["publish", "compare_and_set"])
def test_not_master_is_followed_for_unretried_writes(servers, clients, name):
    # A redirect costs no attempt: a call made without retries (retry=False)
    # still reaches the master.
    replica, master = servers(), servers()
    for m in ("Publish", "CompareAndSet"):
        replica.always(m, Err(C.FAILED_PRECONDITION, "replica", (("strata-master", master.address),)))
    c = clients(replica.address)
    if name == "publish":
        assert c.publish("t", b"k", b"p") == 15
    else:
        assert c.compare_and_set(b"k", b"v", expect_absent=True) == 14
    assert replica.hits() == 1 and master.hits() == 1


@pytest.mark.parametrize("attempts", [1, 2])
def test_not_master_on_last_retry_attempt_is_followed(servers, clients, attempts):
    # A NotMaster redirect that arrives on the last attempt (or on the only one,
    # with RetryPolicy(attempts=1)) is still followed.
    replica, master = servers(), servers()
    replica.then("Put", *[Err(C.UNAVAILABLE)] * (attempts - 1))
    replica.always("Put", Err(C.FAILED_PRECONDITION, "replica", (("strata-master", master.address),)))
    c = clients(replica.address, attempts=attempts)
    assert c.put(b"k", b"v") == 11
    assert replica.hits() == attempts and master.hits() == 1


def test_later_master_change_is_followed_too(servers, clients):
    # One redirect per call, not per client: a long-lived client follows every
    # later master change too.
    a, b, m = servers(), servers(), servers()
    a.always("Put", Err(C.FAILED_PRECONDITION, "replica", (("strata-master", b.address),)))
    c = clients(a.address)
    assert c.put(b"k", b"v") == 11 and c.target == b.address
    b.always("Put", Err(C.FAILED_PRECONDITION, "replica", (("strata-master", m.address),)))
    assert c.put(b"k", b"v") == 11
    assert c.target == m.address and m.hits() == 1


# --------------------------------------------------------------------------- auth, reads, streams

def test_token_is_sent_as_bearer(fake, clients):
    c = clients(fake.address, token="s3cret")
    c.get(b"k")
    c.put(b"k", b"v")
    list(c.scan())
    list(c.subscribe())
    c.publish("t", b"k", b"p")
    c.status()
    assert len(fake.calls) == 6
    assert all(call.metadata.get("authorization") == "Bearer s3cret" for call in fake.calls)
    plain = clients(fake.address)
    plain.get(b"k")
    assert "authorization" not in fake.calls[-1].metadata


def test_get_entry_found_and_absent(fake, clients):
    fake.then("Get", pb.GetResponse(found=True, value=b"", lsn=3), pb.GetResponse(found=False))
    c = clients(fake.address)
    assert c.get_entry(b"k") == (b"", 3)  # an empty value is still present
    assert c.get_entry(b"k") == (None, 0)
    assert [r.key for r in fake.requests("Get")] == [b"k", b"k"]


def test_batch_ops_are_encoded_and_bad_ops_rejected_locally(fake, clients):
    c = clients(fake.address)
    assert c.batch([("put", b"a", b"1"), ("delete", b"b")]) == 13
    ops = fake.requests("Batch")[0].ops
    assert [(o.kind, o.key, o.value) for o in ops] == [(pb.Op.PUT, b"a", b"1"), (pb.Op.DELETE, b"b", b"")]
    with pytest.raises(errors.InvalidArgument):
        c.batch([("merge", b"a", b"1")])
    assert fake.hits("Batch") == 1


def test_scan_yields_pairs_across_chunks(fake, clients):
    chunks = [pb.ScanResponse(items=[pb.KeyValue(key=b"a", value=b"1"),
                                     pb.KeyValue(key=b"b", value=b"2")], snapshot_lsn=9),
              pb.ScanResponse(items=[], snapshot_lsn=9),
              pb.ScanResponse(items=[pb.KeyValue(key=b"c", value=b"3")], snapshot_lsn=9)]
    fake.then("Scan", Stream(chunks))
    c = clients(fake.address)
    assert list(c.scan(b"a", b"z", limit=10, keys_only=True)) == [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]
    req = fake.requests("Scan")[0]
    assert (req.start, req.end, req.limit, req.keys_only) == (b"a", b"z", 10, True)


def test_scan_error_mid_stream_is_typed_and_not_retried(fake, clients):
    fake.then("Scan", Stream([pb.ScanResponse(items=[pb.KeyValue(key=b"a", value=b"1")])],
                             Err(C.UNAVAILABLE, "draining")))
    c = clients(fake.address)
    got = []
    with pytest.raises(errors.Unavailable):
        for kv in c.scan():
            got.append(kv)
    assert got == [(b"a", b"1")] and fake.hits("Scan") == 1


def test_write_stream_yields_lsns_in_order(fake, clients):
    c = clients(fake.address)
    lsns = list(c.write_stream([[("put", b"a", b"1")], [("delete", b"a")], [("put", b"b", b"2")]]))
    assert lsns == [100, 101, 102]
    reqs = fake.requests("Write")
    assert [r.id for r in reqs] == [0, 1, 2] and len({r.request_id for r in reqs}) == 3


def test_idle_or_lapped_subscriptions_do_not_open_the_breaker(fake, clients):
    """Five subscriptions ending on their own deadline, or cut off as slow readers with a
    resume LSN, used to open the breaker against a healthy server."""
    c = clients(fake.address, threshold=3)
    for _ in range(3):
        fake.then("Subscribe", Stream([], Err(C.DEADLINE_EXCEEDED, "deadline")))
        with pytest.raises(errors.DeadlineExceeded):
            list(c.subscribe(timeout=5))
    for _ in range(3):
        fake.then("Subscribe", Stream([], Err(C.RESOURCE_EXHAUSTED, "behind",
                                              (("strata-resume-lsn", "42"),))))
        with pytest.raises(errors.Lapped) as ei:
            list(c.subscribe())
        assert ei.value.resume_lsn == 42
    assert c.breaker.state == "closed"
    fake.always("Get", pb.GetResponse(found=True, value=b"x"))
    assert c.get(b"k") == b"x"


def test_a_node_list_moves_to_the_next_node_on_a_transient_error(servers, clients):
    # A cluster client (several targets): the dead or leaderless node's UNAVAILABLE
    # sends the next attempt to the next node, and the request id is the same there.
    a, b = servers(), servers()
    a.always("Put", Err(C.UNAVAILABLE, "no master"))
    c = clients(f"{a.address},{b.address}", attempts=2)
    assert c.put(b"k", b"v") == 11
    assert a.hits() == 1 and b.hits() == 1


def test_a_node_list_keeps_retrying_until_the_deadline_not_the_attempt_count(servers, clients):
    # During a failover neither node may answer for a while: with a node list the
    # call retries (with back-off) until its deadline, then fails.
    a, b = servers(), servers()
    a.then("Put", *[Err(C.UNAVAILABLE)] * 6)
    b.then("Put", *[Err(C.UNAVAILABLE)] * 6)
    c = clients(f"{a.address},{b.address}", attempts=2, timeout=5)
    assert c.put(b"k", b"v") == 11
    assert a.hits() + b.hits() == 13
    a.always("Put", Err(C.UNAVAILABLE))
    b.always("Put", Err(C.UNAVAILABLE))
    c2 = clients(f"{a.address},{b.address}", attempts=2, timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(errors.Unavailable):
        c2.put(b"k", b"v")
    assert 0.3 < time.monotonic() - t0 < 3


def test_subscribe_timeout_ends_the_stream_with_deadline_exceeded(fake, clients):
    def idle(request, context):  # a subscription with nothing to say
        time.sleep(2)
        return Stream([])

    fake.then("Subscribe", idle)
    c = clients(fake.address)
    t0 = time.monotonic()
    with pytest.raises(errors.DeadlineExceeded):
        list(c.subscribe(["t"], timeout=0.3))
    assert time.monotonic() - t0 < 1.5
    assert c.breaker.state == "closed" and c.breaker.failures == 0


# --------------------------------------------------------------------------- consume

def _consumed() -> Stream:
    return Stream([pb.ConsumeResponse(from_lsn=5, last_lsn=9),
                   pb.ConsumeResponse(events=[pb.Event(lsn=5, topic="t", key=b"a"),
                                              pb.Event(lsn=6, topic="t", key=b"b")])])


def test_consume_subscribes_acks_and_ends_quietly_when_closed(fake, clients):
    fake.then("Consume", _consumed())
    c = clients(fake.address, token="tok")
    sub = c.consume("billing", topics=["t"], from_lsn=5, manual_ack=True, credits=10)
    got = []
    for ev in sub:
        got.append(ev.lsn)
        if ev.lsn == 6:
            sub.ack(6)
            sub.credit(3)
            fake.wait_hits(3)
            sub.close()  # the server is still waiting: the iteration ends, quietly
    assert got == [5, 6] and (sub.from_lsn, sub.last_lsn) == (5, 9)
    first, ack, credit = fake.requests("Consume")
    s = first.subscribe
    assert (s.consumer, list(s.topics), s.from_lsn, s.manual_ack, s.credits) == (
        "billing", ["t"], 5, True, 10)
    assert ack.ack == 6 and credit.credit == 3
    assert fake.calls[0].metadata["authorization"] == "Bearer tok"


def test_consume_superseded_is_typed_and_leaves_the_breaker_closed(fake, clients):
    fake.then("Consume", Stream([pb.ConsumeResponse(from_lsn=0, last_lsn=3)],
                                Err(C.ABORTED, "subscribed elsewhere",
                                    (("strata-superseded", "1"),))))
    c = clients(fake.address, threshold=1)
    sub = c.consume("billing")
    with pytest.raises(errors.Superseded):
        list(sub)
    assert sub.last_lsn == 3 and c.breaker.state == "closed"


# --------------------------------------------------------------------------- admin

def test_admin_calls_send_their_requests_and_read_their_answers(fake, clients):
    c = clients(fake.address)
    assert c.status().last_lsn == 99
    assert c.checkpoint("/backups/1") == 16
    assert c.compact() == 0.5
    assert c.transfer_leader("n2").term == 3
    assert c.consumers().last_lsn == 99
    assert c.delete_consumer("billing").cursor_lsn == 17
    assert fake.requests("Checkpoint")[0].path == "/backups/1"
    assert fake.requests("TransferLeader")[0].to == "n2"
    assert fake.requests("DeleteConsumer")[0].name == "billing"


def test_checkpoint_and_compact_get_at_least_their_own_timeouts(fake, clients):
    fake.then("Checkpoint", slow(pb.CheckpointResponse(lsn=21), 0.4))
    fake.then("Compact", slow(pb.CompactResponse(seconds=0.4), 0.4))
    fake.then("Status", slow(pb.StatusResponse(last_lsn=1), 0.4))
    c = clients(fake.address, timeout=0.2, attempts=1)
    assert c.checkpoint("/x") == 21 and c.compact() == 0.4
    with pytest.raises(errors.DeadlineExceeded):
        c.status()  # an ordinary call keeps the client's timeout


def test_transfer_leader_and_delete_consumer_are_not_retried(fake, clients):
    fake.always("TransferLeader", Err(C.UNAVAILABLE)).always("DeleteConsumer", Err(C.UNAVAILABLE))
    fake.then("Consumers", Err(C.UNAVAILABLE))
    c = clients(fake.address)
    with pytest.raises(errors.Unavailable):
        c.transfer_leader()
    with pytest.raises(errors.Unavailable):
        c.delete_consumer("x")
    assert c.consumers().last_lsn == 99  # a read: retried
    assert fake.hits("TransferLeader") == 1 and fake.hits("DeleteConsumer") == 1
    assert fake.hits("Consumers") == 2
