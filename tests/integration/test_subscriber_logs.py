"""What a daemon logs while consumers come and go: ordinary disconnects and a SIGTERM
with subscribers still attached are not errors (issue 22: "Task was destroyed but it
is pending!" was logged at ERROR for every gRPC consumer that went away)."""

from __future__ import annotations

import asyncio
import json

from websockets.asyncio.client import connect

from strata_client import Client

from .test_ws_tiers import _stalled_client, url


def test_consumers_coming_and_going_and_a_sigterm_log_no_error(daemon):
    d = daemon
    with Client(d.grpc) as c:
        for i in range(20):
            c.put(b"k%d" % i, b"v" * 100)
        # gRPC consumers, live and from history, named and not, closed by the client.
        for i in range(6):
            sub = c.consume(f"grpc-{i}" if i % 2 else "", from_lsn=1 if i % 3 else 0)
            it = iter(sub)
            if i % 3:
                assert next(it).lsn == 1
            sub.close()

    async def websockets_part():
        for i in range(6):  # closed politely, some after an event
            async with connect(url(d), max_queue=None) as ws:
                await ws.send(json.dumps({"op": "subscribe", "from_lsn": 1 if i % 2 else 0,
                                          "consumer": f"ws-{i}" if i % 3 else "",
                                          "tier": ("realtime", "delayed", "historical")[i % 3]}))
                assert json.loads(await ws.recv())["op"] == "subscribed"
                if i % 2:
                    await ws.recv()
        aborted = await connect(url(d))  # dropped without a close handshake
        await aborted.send(json.dumps({"op": "subscribe"}))
        await aborted.recv()
        aborted.transport.abort()
        # Attached when the daemon stops: a reader, a delayed subscriber, a gRPC consumer.
        reader = await connect(url(d))
        await reader.send(json.dumps({"op": "subscribe"}))
        await reader.recv()
        delayed = await connect(url(d))
        await delayed.send(json.dumps({"op": "subscribe", "tier": "delayed",
                                       "window_ms": 10_000}))
        await delayed.recv()
        return reader, delayed

    stalled = [_stalled_client(d.ws) for _ in range(20)]  # blocked: buffers full
    held = Client(d.grpc)
    consumption = held.consume("held-at-stop")
    iterator = iter(consumption)
    try:
        reader, delayed = asyncio.run(websockets_part())
        with Client(d.grpc) as c:
            for i in range(0, 20_000, 500):  # enough to fill the stalled ones' buffers
                c.batch([("put", b"s%d" % j, b"v" * 100) for j in range(i, i + 500)])
        assert next(iterator).lsn > 0
        assert d.terminate() == 0
    finally:
        for s in stalled:
            s.close()
        held.close()
    records = d.log_records()
    assert records, d.logs()
    bad = [r for r in records if r.get("level") in ("error", "critical")
           or "destroyed but it is pending" in r.get("msg", "")]
    assert not bad, bad
