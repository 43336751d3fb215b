"""gRPC Events.Consume: the reliable subscription through the Python client."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from strata_client import AsyncClient, Client
from strata_client.errors import InvalidArgument, Superseded


def take(it, n):
    return list(itertools.islice(it, n))


def test_consume_credits_acks_and_resume(daemon):
    with Client(daemon.grpc) as c:
        lsns = [c.put(b"k%d" % i, b"v") for i in range(12)]
        sub = c.consume("grpc-billing", from_lsn=lsns[0], manual_ack=True, credits=4)
        it = iter(sub)
        got = take(it, 4)
        assert [e.lsn for e in got] == lsns[:4] and sub.from_lsn == lsns[0]
        sub.ack(lsns[1])  # two acknowledged: two more
        assert [e.lsn for e in take(it, 2)] == lsns[4:6]
        sub.close()
        # Resumes after the last acknowledgement: lsns[2:] come (again).
        sub2 = c.consume("grpc-billing", manual_ack=True)
        assert [e.lsn for e in take(iter(sub2), 10)] == lsns[2:]
        assert sub2.from_lsn == lsns[2]
        sub2.close()


def test_consume_delayed_tier_and_errors(daemon):
    async def main():
        async with AsyncClient(daemon.grpc) as c:
            # From an LSN, not live: the stream opens when it is first read, which may be
            # after the batch below is written.
            base = await c.put(b"warm", b"v")
            sub = c.consume(tier="delayed", window_ms=50, from_lsn=base + 1)
            it = sub.__aiter__()
            first = await c.batch([("put", b"a%d" % i, b"v") for i in range(100)])
            assert first == base + 100
            got = []
            while len(got) < 100:
                got.append(await asyncio.wait_for(it.__anext__(), 10))
            assert [e.lsn for e in got] == list(range(first - 99, first + 1))
            sub.close()
            bad = c.consume(tier="sideways")
            with pytest.raises(InvalidArgument):
                async for _ in bad:
                    pass

    asyncio.run(main())


def test_a_consumer_taken_over_ends_with_superseded(daemon):
    with Client(daemon.grpc) as c:
        lsns = [c.put(b"t%d" % i, b"v") for i in range(3)]
        old = c.consume("grpc-takeover", from_lsn=lsns[0], manual_ack=True)
        it = iter(old)
        assert [e.lsn for e in take(it, 3)] == lsns
        assert old.from_lsn == lsns[0] and old.last_lsn >= lsns[-1]
        old.ack(lsns[0])
        time.sleep(0.3)  # acks travel on the stream unanswered: let this one arrive
        new = c.consume("grpc-takeover", manual_ack=True)
        with pytest.raises(Superseded):
            next(it)
        # The newer one continues after what the older one acknowledged.
        assert [e.lsn for e in take(iter(new), 2)] == lsns[1:]
        new.close()
