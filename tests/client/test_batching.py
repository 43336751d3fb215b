"""The put/delete coalescer (strata_client.batching) against scripted servers:
lone calls go alone, calls made while a message is in flight go as one Batch
whose ops carry each call's own request id, each call gets its own LSN or its
own error, and retries and redirects resend the same ids. Tests taking `clients` run on
Client (threads) and AsyncClient (its coalescer, driven from the same threads through
its event loop); the asyncio-only ones (gather, cancellation) follow."""

from __future__ import annotations

import asyncio
import threading

import pytest

from strata_client import Batching, errors, rpcs
from strata_client._proto import strata_pb2 as pb
from strata_client.batching import CallQueue, Coalescer

from .fake import C, Err, async_client

ONE = Batching(max_inflight=1)


def _batch_answer(first_lsn: int = 100):
    """A Batch handler answering each op its own LSN (first_lsn, first_lsn+1, ...)."""
    def answer(req, ctx):
        n = len(req.ops)
        return pb.BatchResponse(lsn=first_lsn + n - 1, lsns=[first_lsn + i for i in range(n)])
    return answer


class Gate:
    """A Put handler that holds the first call until released: while it is in flight,
    the other callers queue behind it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, req, ctx):
        self.entered.set()
        assert self.release.wait(5)
        return pb.PutResponse(lsn=1)


def _threads(fn, n: int) -> list:
    out: list = [None] * n

    def run(i):
        try:
            out[i] = fn(i)
        except Exception as e:  # collected for the test to check
            out[i] = e

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    return ts, out


def _behind_a_held_call(c, gate: Gate, fn, n: int) -> list:
    """One put that the server holds (so every slot is busy), then n calls fn(i) that
    queue behind it; release it; return the n calls' results (or exceptions)."""
    first, _ = _threads(lambda i: c.put(b"first", b"v"), 1)
    assert gate.entered.wait(5)
    ts, out = _threads(fn, n)
    _wait_queued(c, n)
    gate.release.set()
    for t in first + ts:
        t.join(5)
    return out


def _refusing(fake, bad, message: str) -> Gate:
    """Script a server that holds the first Put, refuses every Batch as INVALID_ARGUMENT
    (`message`), and answers a lone Put its key's number, or refuses it if `bad(req)`."""
    gate = Gate()
    fake.then("Put", gate)
    fake.always("Batch", Err(C.INVALID_ARGUMENT, message))

    def put(req, ctx):
        if bad(req):
            ctx.abort(C.INVALID_ARGUMENT, message)
        return pb.PutResponse(lsn=int(req.key[1:]))

    fake.always("Put", put)
    return gate


def _wait_queued(c, n: int) -> None:
    for _ in range(500):
        if c.batching_stats()["queued"] >= n:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{c.batching_stats()['queued']} calls queued, wanted {n}")


# --------------------------------------------------------------------------- both clients

def test_a_lone_call_goes_alone_as_its_unary_call(fake, clients):
    c = clients(fake.address)
    assert c.put(b"k", b"v") == 11
    assert c.delete(b"k") == 12
    assert fake.hits("Put") == 1 and fake.hits("Delete") == 1 and fake.hits("Batch") == 0
    st = c.batching_stats()
    assert st["calls"] == 2 and st["messages"] == 2 and st["singles"] == 2


def test_calls_made_while_a_message_is_in_flight_go_as_one_batch(fake, clients):
    gate = Gate()
    fake.then("Put", gate)
    fake.always("Batch", _batch_answer(100))
    c = clients(fake.address, batching=ONE)

    def call(i):
        if i % 3 == 0:
            return c.delete(b"d%d" % i, request_id=f"id-{i}")
        return c.put(b"k%d" % i, b"v%d" % i, request_id=f"id-{i}")

    out = _behind_a_held_call(c, gate, call, 10)
    assert fake.requests("Put")[0].key == b"first"
    reqs = fake.requests("Batch")
    assert len(reqs) == 1, "the ten queued calls go as one message"
    ops = reqs[0].ops
    assert sorted(op.request_id for op in ops) == sorted(f"id-{i}" for i in range(10))
    assert not reqs[0].request_id, "the ids are the calls' own, not one for the message"
    for pos, op in enumerate(ops):
        i = int(op.request_id[3:])
        assert out[i] == 100 + pos, "each call gets its own op's LSN"
        if i % 3 == 0:
            assert op.kind == pb.Op.DELETE and op.key == b"d%d" % i
        else:
            assert op.kind == pb.Op.PUT and (op.key, op.value) == (b"k%d" % i, b"v%d" % i)
    st = c.batching_stats()
    assert st["messages"] == 2 and st["calls"] == 11 and st["inflight"] == 0


def test_a_bad_call_fails_alone(fake, clients):
    gate = _refusing(fake, lambda req: req.key == b"too-long!", "key is 9 bytes; the limit is 8")
    c = clients(fake.address, batching=ONE)
    out = _behind_a_held_call(
        c, gate, lambda i: c.put(b"too-long!" if i == 3 else b"k%d" % i, b"v"), 6)
    assert isinstance(out[3], errors.InvalidArgument) and "limit is 8" in str(out[3])
    assert [out[i] for i in (0, 1, 2, 4, 5)] == [0, 1, 2, 4, 5]
    assert fake.hits("Batch") == 1 and c.batching_stats()["splits"] == 1
    # the resent calls kept their ids
    batch_ids = {op.request_id for op in fake.requests("Batch")[0].ops}
    assert batch_ids == {r.request_id for r in fake.requests("Put")[1:]}


@pytest.mark.parametrize("call", [
    lambda c: c.put(b"", b"v"),
    lambda c: c.put(b"\xff\xffstrata/cursor/x", b"v"),
    lambda c: c.put(b"k", "text"),
    lambda c: c.put("k", b"v"),
    lambda c: c.delete(b"k", request_id="x" * 65),
], ids=["empty-key", "reserved-key", "str-value", "str-key", "long-id"])
def test_what_is_known_bad_fails_before_it_is_sent(fake, clients, call):
    c = clients(fake.address)
    with pytest.raises(errors.InvalidArgument):
        call(c)
    assert fake.hits() == 0


def test_a_retried_message_resends_each_calls_id(fake, clients):
    gate = Gate()
    fake.then("Put", gate)
    fake.then("Batch", Err(C.UNAVAILABLE), _batch_answer(7))
    c = clients(fake.address, batching=ONE)
    out = _behind_a_held_call(c, gate, lambda i: c.put(b"k%d" % i, b"v"), 4)
    a, b = fake.requests("Batch")
    assert [op.request_id for op in a.ops] == [op.request_id for op in b.ops]
    assert len({op.request_id for op in a.ops}) == 4
    assert sorted(out) == [7, 8, 9, 10]


def test_a_redirected_message_resends_each_calls_id(servers, clients):
    replica, master = servers(), servers()
    gate = Gate()
    replica.then("Put", gate)
    replica.always("Batch", Err(C.FAILED_PRECONDITION, "not the master",
                                (("strata-master", f"m={master.address}"),)))
    master.always("Batch", _batch_answer(40))
    c = clients(replica.address, batching=ONE)
    out = _behind_a_held_call(c, gate, lambda i: c.put(b"k%d" % i, b"v"), 3)
    (sent,), (got,) = replica.requests("Batch"), master.requests("Batch")
    assert [op.request_id for op in sent.ops] == [op.request_id for op in got.ops]
    assert sorted(out) == [40, 41, 42]


def test_an_error_of_the_whole_message_reaches_each_of_its_calls(fake, clients):
    gate = Gate()
    fake.then("Put", gate)
    fake.always("Batch", Err(C.INTERNAL, "fsync failed"))
    c = clients(fake.address, batching=ONE)
    out = _behind_a_held_call(c, gate, lambda i: c.put(b"k%d" % i, b"v"), 3)
    assert all(isinstance(e, errors.StrataError) and "fsync failed" in str(e) for e in out)


def test_with_batching_off_every_call_goes_alone(fake, clients):
    c = clients(fake.address, batching=Batching(enabled=False))
    ts, out = _threads(lambda i: c.put(b"k%d" % i, b"v"), 16)
    for t in ts:
        t.join(5)
    assert out == [11] * 16 and fake.hits("Put") == 16 and fake.hits("Batch") == 0
    assert c.batching_stats() == {}


def test_a_server_without_per_op_lsns_is_answered_consecutively(fake):
    """Older servers answer a Batch with its last LSN only: op i has last-n+1+i."""
    coalescer = Coalescer(ONE, None)
    assert coalescer.stats.limit >= ONE.min_batch
    assert rpcs.lsns(pb.BatchResponse(lsn=20), 3) == [18, 19, 20]
    assert rpcs.lsns(pb.BatchResponse(lsn=20, lsns=[5, 19, 20]), 3) == [5, 19, 20]


def test_the_size_limit_adapts_between_its_bounds():
    q = CallQueue(Batching(min_batch=4, max_batch=64, latency_target_ms=10, smoothing=1.0))
    for _ in range(20):  # full messages well within the target: the limit grows
        q.answered(q.stats.limit, 0.001)
    assert q.stats.limit == 64
    for _ in range(40):  # slow messages: it shrinks, not below min_batch
        q.answered(q.stats.limit, 0.050)
    assert q.stats.limit == 4
    q.answered(2, 0.001)  # a message that was not full says nothing about a larger one
    assert q.stats.limit == 4
    with pytest.raises(ValueError):
        CallQueue(Batching(min_batch=8, max_batch=4))


# --------------------------------------------------------------------------- asyncio only

def test_async_calls_awaited_together_are_coalesced_with_their_own_results(fake):
    fake.always("Batch", _batch_answer(500))

    async def main():
        c = async_client(fake.address, batching=ONE)
        try:
            lone = await c.put(b"lone", b"v")
            got = await asyncio.gather(*(c.put(b"k%d" % i, b"v", request_id=f"r{i}")
                                         for i in range(50)))
            return lone, got, c.batching_stats()
        finally:
            await c.close()

    lone, got, st = asyncio.run(main())
    assert lone == 11
    # the first of the 50 finds the client idle and goes alone; the 49 others queue
    # behind it and go as one message when it returns
    assert fake.hits("Put") == 2 and fake.hits("Batch") == 1
    (req,) = fake.requests("Batch")
    assert [op.request_id for op in req.ops] == [f"r{i}" for i in range(1, 50)]
    assert got == [11] + [500 + i for i in range(49)]
    assert st["messages"] == 3 and st["calls"] == 51 and st["singles"] == 2


def test_async_bad_call_fails_alone_and_cancelled_caller_is_not_sent(fake):
    gate = _refusing(fake, lambda req: req.value == b"huge", "value too large")

    async def main():
        c = async_client(fake.address, batching=ONE)
        try:
            first = asyncio.ensure_future(c.put(b"first", b"v"))
            while not gate.entered.is_set():
                await asyncio.sleep(0.005)
            calls = [asyncio.ensure_future(c.put(b"k%d" % i, b"huge" if i == 2 else b"v"))
                     for i in range(5)]
            await asyncio.sleep(0.01)
            calls[4].cancel()  # gives up while queued: never sent
            gate.release.set()
            await first
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await c.close()

    out = asyncio.run(main())
    assert out[:2] == [0, 1] and out[3] == 3
    assert isinstance(out[2], errors.InvalidArgument)
    assert isinstance(out[4], asyncio.CancelledError)
    sent = {r.key for r in fake.requests("Put")} | {
        op.key for r in fake.requests("Batch") for op in r.ops}
    assert b"k4" not in sent


def test_async_idle_call_that_fails_or_is_cancelled_gives_its_slot_back(fake):
    gate = Gate()
    fake.then("Put", Err(C.INTERNAL, "boom"), gate)

    async def main():
        c = async_client(fake.address, batching=ONE)
        try:
            with pytest.raises(errors.StrataError, match="boom"):
                await c.put(b"a", b"v")
            assert c.batching_stats()["inflight"] == 0
            held = asyncio.ensure_future(c.put(b"b", b"v"))
            while not gate.entered.is_set():
                await asyncio.sleep(0.005)
            queued = asyncio.ensure_future(c.put(b"c", b"v"))
            await asyncio.sleep(0.01)
            held.cancel()  # the caller that holds the slot goes away
            gate.release.set()
            with pytest.raises(asyncio.CancelledError):
                await held
            lsn = await queued  # the queued call is still sent
            await asyncio.sleep(0.01)
            return lsn, c.batching_stats()
        finally:
            await c.close()

    lsn, st = asyncio.run(main())
    assert lsn == 11 and st["inflight"] == 0 and st["queued"] == 0
