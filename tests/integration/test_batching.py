"""The client's put/delete coalescing against a real daemon: concurrent callers
share messages yet each keeps its own LSN and error, an id is written once
whichever message carries it, and what the coalescer answered survives SIGKILL."""

from __future__ import annotations

import asyncio
import threading

from strata_client import AsyncClient, Batching, Client, errors

CALLERS = 48
EACH = 25


async def _callers(c: AsyncClient, callers: int, each: int, prefix: bytes) -> dict:
    """Each caller puts (and every fifth time deletes) its own keys in order;
    returns {(caller, i): (key, value or None, lsn)}."""
    done: dict = {}

    async def caller(w: int) -> None:
        for i in range(each):
            key = prefix + b"%d-%d" % (w, i)
            if i % 5 == 4:
                done[w, i] = (prefix + b"%d-%d" % (w, i - 1), None,
                              await c.delete(prefix + b"%d-%d" % (w, i - 1)))
            else:
                value = b"v%d.%d" % (w, i) * 8
                done[w, i] = (key, value, await c.put(key, value))

    await asyncio.gather(*(caller(w) for w in range(callers)))
    return done


def _check_history(done: dict, callers: int, each: int) -> None:
    lsns = [lsn for _, _, lsn in done.values()]
    assert len(set(lsns)) == len(lsns), "every call has an LSN of its own"
    for w in range(callers):  # a caller's calls are ordered as it made them
        mine = [done[w, i][2] for i in range(each)]
        assert mine == sorted(mine)


def test_concurrent_async_callers_share_messages_and_keep_their_own_lsns(daemon):
    async def main():
        async with AsyncClient(daemon.grpc) as c:
            done = await _callers(c, CALLERS, EACH, b"a")
            final = {}
            for key, value, lsn in done.values():
                final[key] = (value, lsn)
            for key, (value, lsn) in final.items():
                got = await c.get_entry(key)
                assert got == ((value, lsn) if value is not None else (None, 0)), key
            return done, c.batching_stats()

    done, st = asyncio.run(main())
    _check_history(done, CALLERS, EACH)
    assert st["calls"] == CALLERS * EACH
    assert st["messages"] < st["calls"] / 4, f"calls were not coalesced: {st}"


def test_threads_share_messages_too(daemon):
    results: dict = {}
    with Client(daemon.grpc) as c:
        def run(w: int) -> None:
            for i in range(EACH):
                results[w, i] = c.put(b"t%d-%d" % (w, i), b"x%d" % i)

        ts = [threading.Thread(target=run, args=(w,)) for w in range(16)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        lsns = list(results.values())
        assert len(lsns) == 16 * EACH and len(set(lsns)) == len(lsns)
        for (w, i), lsn in results.items():
            assert c.get_entry(b"t%d-%d" % (w, i)) == (b"x%d" % i, lsn)
        st = c.batching_stats()
    assert st["messages"] < st["calls"], st


def test_a_request_id_is_written_once_whichever_message_carries_it(daemon):
    async def main():
        async with AsyncClient(daemon.grpc) as c:
            first = await asyncio.gather(*(c.put(b"id%d" % i, b"first", request_id=f"req-{i}")
                                           for i in range(40)))
            last = (await c.status()).last_lsn
            # The same ids again (a caller's own retries, with other values to tell them
            # apart), coalesced into other messages in another order, among new writes.
            again = await asyncio.gather(*[
                c.put(b"id%d" % i, b"second", request_id=f"req-{i}") for i in reversed(range(40))
            ] + [c.put(b"new%d" % i, b"n") for i in range(10)])
            status = await c.status()
            values = [await c.get(b"id%d" % i) for i in range(40)]
            return first, last, again, status.last_lsn, values, c.batching_stats()

    first, last, again, last_after, values, st = asyncio.run(main())
    assert list(reversed(again[:40])) == first, "a repeated id is answered with its LSN"
    assert values == [b"first"] * 40, "and not written again"
    assert last_after == last + 10, "only the ten new puts took LSNs"
    assert st["messages"] < st["calls"]


def test_a_bad_call_among_concurrent_ones_fails_alone(daemon_factory):
    d = daemon_factory(extra_env={"STRATA_MAX_KEY_SIZE": "16", "STRATA_MAX_VALUE_SIZE": "64"})

    async def main():
        async with AsyncClient(d.grpc, batching=Batching(max_inflight=1)) as c:
            calls = []
            for i in range(30):
                if i == 7:
                    calls.append(c.put(b"k" * 17, b"v"))
                elif i == 19:
                    calls.append(c.put(b"k19", b"v" * 65))
                else:
                    calls.append(c.put(b"k%d" % i, b"v%d" % i))
            out = await asyncio.gather(*calls, return_exceptions=True)
            values = {i: await c.get(b"k%d" % i) for i in range(30) if i not in (7, 19)}
            return out, values, c.batching_stats()

    out, values, st = asyncio.run(main())
    assert isinstance(out[7], errors.InvalidArgument) and "16" in str(out[7])
    assert isinstance(out[19], errors.InvalidArgument) and "64" in str(out[19])
    good = [lsn for i, lsn in enumerate(out) if i not in (7, 19)]
    assert all(isinstance(lsn, int) for lsn in good) and len(set(good)) == 28
    assert values == {i: b"v%d" % i for i in values}
    assert st["splits"] >= 1, st


def test_coalesced_writes_acknowledged_before_sigkill_survive_it(daemon_factory):
    d = daemon_factory(args=["--durability", "always"])
    acked: dict = {}

    async def main():
        halt = asyncio.Event()
        async with AsyncClient(d.grpc, timeout=5.0) as c:
            async def caller(w: int) -> None:
                i = 0
                while not halt.is_set() and i < 2000:
                    key = b"s%d-%d" % (w, i)
                    try:
                        acked[key] = await c.put(key, b"v%d" % i)
                    except errors.StrataError:
                        return
                    i += 1

            tasks = [asyncio.ensure_future(caller(w)) for w in range(32)]
            while len(acked) < 1500:
                await asyncio.sleep(0.01)
            d.kill()
            halt.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    d2 = daemon_factory(data_dir=d.data_dir)
    with Client(d2.grpc) as c:
        missing = [k for k, lsn in acked.items() if c.get_entry(k)[1] != lsn]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged puts lost"
