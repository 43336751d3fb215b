"""The WebSocket tiers end to end: a daemon subprocess on loopback, the real
`websockets` client, the real gRPC client for writes (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import os
import signal
import socket
import threading
import time
import urllib.request

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from strata_client import Client


def url(d) -> str:
    return f"ws://{d.ws}/v1/events"


async def subscribe(ws, **req) -> dict:
    await ws.send(json.dumps({"op": "subscribe", **req}))
    msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert msg["op"] == "subscribed", msg
    return msg


async def recv(ws, timeout: float = 10) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def events(ws, n: int, timeout: float = 20) -> list[dict]:
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        m = await recv(ws, max(0.1, deadline - time.monotonic()))
        if m["op"] == "batch":
            out.extend(m["events"])
        else:
            assert m["op"] == "event", m
            out.append(m)
    return out


async def closed_with(ws, timeout: float = 15, decode=json.loads) -> tuple[int, list[dict]]:
    """Read until the server closes; return the close code and the messages before."""
    msgs = []
    with pytest.raises(ConnectionClosed) as e:
        while True:
            msgs.append(decode(await asyncio.wait_for(ws.recv(), timeout)))
    return e.value.rcvd.code, msgs


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def test_realtime_json_and_msgpack_carry_puts_deletes_and_events(daemon):
    async def main():
        async with connect(url(daemon), subprotocols=["strata.v1.json"]) as js, \
                connect(url(daemon), subprotocols=["strata.v1.msgpack"]) as mp:
            assert js.subprotocol == "strata.v1.json" and mp.subprotocol == "strata.v1.msgpack"
            await subscribe(js, topics=["kv", "news"], prefix=b64(b"a"))
            await mp.send(msgpack.packb({"op": "subscribe", "prefix": b"a"}))
            assert msgpack.unpackb(await mp.recv())["op"] == "subscribed"
            with Client(daemon.grpc) as c:
                l1 = c.put(b"a1", b"v1")
                c.put(b"b1", b"skipped by the prefix")
                l2 = c.delete(b"a1")
                l3 = c.publish("news", b"a-news", b"hello")
            got = await events(js, 3)
            assert [(m["lsn"], m["topic"], m["key"], m["value"]) for m in got] == [
                (l1, "kv", b64(b"a1"), b64(b"v1")), (l2, "kv", b64(b"a1"), None),
                (l3, "news", b64(b"a-news"), b64(b"hello"))]
            assert all(isinstance(m["ts"], int) for m in got)
            bin_got = [msgpack.unpackb(await asyncio.wait_for(mp.recv(), 10)) for _ in range(3)]
            assert [(m["lsn"], m["key"], m["value"]) for m in bin_got] == [
                (l1, b"a1", b"v1"), (l2, b"a1", None), (l3, b"a-news", b"hello")]

    asyncio.run(main())


def test_historical_hand_over_has_no_gap_and_no_duplicate_under_writes(daemon):
    stop = threading.Event()
    written = []

    def writer():
        with Client(daemon.grpc) as c:
            for i in range(300):  # bounded: 300 batches of 10
                if stop.is_set():
                    break
                written.append(c.batch([("put", b"k%d" % (i * 10 + j), b"v") for j in range(10)]))

    with Client(daemon.grpc) as c:
        for i in range(50):
            c.put(b"pre%d" % i, b"v")

    async def main():
        t = threading.Thread(target=writer)
        t.start()
        try:
            await asyncio.sleep(0.2)  # writes are flowing while history is replayed
            async with connect(url(daemon)) as ws:
                sub = await subscribe(ws, tier="historical")  # from the oldest retained
                assert sub["from_lsn"] == 1
                await asyncio.to_thread(t.join, 60)
                last = max(written)  # a batch answers with its last LSN
                got = []
                while not got or got[-1]["lsn"] < last:
                    got.extend(await events(ws, 1))
                return [m["lsn"] for m in got], last
        finally:
            stop.set()
            t.join(60)

    lsns, last = asyncio.run(main())
    assert lsns == list(range(1, last + 1))


def test_credits_manual_acks_and_redelivery_after_disconnect(daemon):
    async def main():
        with Client(daemon.grpc) as c:
            async with connect(url(daemon)) as ws:
                await subscribe(ws, consumer="billing", ack="manual", credits=5)
                first = c.put(b"k0", b"v")
                for i in range(1, 20):
                    c.put(b"k%d" % i, b"v")
                got = await events(ws, 5)
                assert [m["lsn"] for m in got] == list(range(first, first + 5))
                with pytest.raises(TimeoutError):
                    await recv(ws, 0.5)  # no credit left: nothing more
                await ws.send(json.dumps({"op": "ack", "lsn": first + 2}))
                more = await events(ws, 3)  # three acknowledged: three more
                assert [m["lsn"] for m in more] == [first + 5, first + 6, first + 7]
                with pytest.raises(TimeoutError):
                    await recv(ws, 0.3)
            # Disconnected with first+3 .. first+7 unacknowledged: they come again.
            async with connect(url(daemon)) as ws:
                sub = await subscribe(ws, consumer="billing", ack="manual", credits=100)
                assert sub["from_lsn"] == first + 3
                again = await events(ws, 17)
                assert [m["lsn"] for m in again] == list(range(first + 3, first + 20))

    asyncio.run(main())


def test_a_named_consumer_resumes_after_sigkill_of_the_daemon(daemon_factory):
    d = daemon_factory()

    async def phase1():
        with Client(d.grpc) as c:
            lsns = [c.put(b"k%d" % i, b"v") for i in range(10)]
        async with connect(url(d)) as ws:
            await subscribe(ws, consumer="audit", ack="manual", from_lsn=lsns[0])
            got = await events(ws, 10)
            await ws.send(json.dumps({"op": "ack", "lsn": got[5]["lsn"]}))
            await asyncio.sleep(0.6)  # cursors are written every 100 ms
            return lsns

    lsns = asyncio.run(phase1())
    d.kill()
    d.start()

    async def phase2():
        with Client(d.grpc) as c:
            c.put(b"after", b"restart")
        async with connect(url(d)) as ws:
            sub = await subscribe(ws, consumer="audit", ack="manual")
            assert sub["from_lsn"] == lsns[6]
            got = await events(ws, 5)
            assert [m["lsn"] for m in got] == lsns[6:] + [lsns[-1] + 2]  # +1: the cursor write

    asyncio.run(phase2())


def test_takeover_of_a_consumer_name_ends_the_older_subscription(daemon):
    async def main():
        async with connect(url(daemon)) as a:
            await subscribe(a, consumer="dup")
            async with connect(url(daemon)) as b:
                await subscribe(b, consumer="dup")
                code, msgs = await closed_with(a)
                assert code == 4004 and msgs[-1]["code"] == "superseded"

    asyncio.run(main())


def test_delayed_tier_sends_batches_per_window_and_grows_them_under_load(daemon):
    async def main():
        async with connect(url(daemon)) as ws:
            await subscribe(ws, tier="delayed", window_ms=200)
            with Client(daemon.grpc) as c:
                t0 = time.monotonic()
                for i in range(10):
                    c.put(b"slow%d" % i, b"v")
                    await asyncio.sleep(0.02)
                batches = []
                n = 0
                while n < 10:
                    m = await recv(ws)
                    assert m["op"] == "batch"
                    batches.append(len(m["events"]))
                    n += len(m["events"])
                assert n == 10 and len(batches) < 10  # aggregated, not one message each
                assert time.monotonic() - t0 < 2
                for i in range(20):  # a burst: 20 batches of 500
                    c.batch([("put", b"fast%d-%d" % (i, j), b"v") for j in range(500)])
                sizes, got = [], 0
                while got < 10_000:
                    m = await recv(ws)
                    sizes.append(len(m["events"]))
                    got += sizes[-1]
                assert got == 10_000 and max(sizes) >= 100 and len(sizes) < 1000

    asyncio.run(main())


def test_unsubscribe_sends_the_open_batch_and_a_named_consumer_resumes_after_it(daemon):
    """What the delayed tier holds in an open batch is sent before `unsubscribed`, and
    an auto-ack consumer's cursor counts only batches sent: nothing is skipped."""
    async def main():
        with Client(daemon.grpc) as c:
            async with connect(url(daemon)) as ws:
                await subscribe(ws, tier="delayed", window_ms=60_000, consumer="late",
                                prefix=b64(b"u/"))
                lsns = [c.put(b"u/%d" % i, b"v") for i in range(3)]
                await asyncio.sleep(0.2)  # in the open batch, whose window is a minute
                await ws.send(json.dumps({"op": "unsubscribe"}))
                batch = await recv(ws)
                assert batch["op"] == "batch"
                assert [e["lsn"] for e in batch["events"]] == lsns
                assert await recv(ws) == {"op": "unsubscribed", "lsn": lsns[-1]}
                more = c.put(b"u/3", b"v")
                sub = await subscribe(ws, tier="delayed", window_ms=10, consumer="late",
                                      prefix=b64(b"u/"))
                assert sub["from_lsn"] == lsns[-1] + 1
                assert [e["lsn"] for e in await events(ws, 1)] == [more]

    asyncio.run(main())


def test_a_stalled_consumer_is_cut_off_and_memory_stays_bounded(daemon_factory):
    d = daemon_factory(extra_env={"STRATA_SUBSCRIBER_QUEUE": "2000",
                                  "STRATA_SUBSCRIBER_BUFFER": str(256 << 10),
                                  "STRATA_SUBSCRIBER_MEMORY": str(8 << 20),
                                  "STRATA_DURABILITY": "none", "STRATA_MEMTABLE_SIZE": str(1 << 20),
                                  "STRATA_WAL_RETENTION_BYTES": str(256 << 20)})

    def rss_mib() -> float:
        with open(f"/proc/{d.proc.pid}/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("VmRSS")) / 1024

    async def read_all(first: int, last: int) -> tuple[list[int], int]:
        """A client that keeps up as it can: when cut off, it resumes where told."""
        lsns, resumes, pos = [], 0, first
        while pos <= last:
            async with connect(url(d)) as ws:
                await subscribe(ws, tier="delayed", window_ms=50, from_lsn=pos)
                try:
                    while pos <= last:
                        m = await recv(ws)
                        if m["op"] == "error":
                            assert m["code"] == "lapped"
                            assert m["resume_lsn"] == pos
                            resumes += 1
                            break
                        lsns.extend(e["lsn"] for e in m["events"])
                        pos = lsns[-1] + 1
                except ConnectionClosed:
                    pass
        return lsns, resumes

    async def main():
        # max_queue=1: the client library stops reading the socket once one message
        # waits, so the server's writes back up as with a hung client.
        value = b"x" * 1000
        with Client(d.grpc) as c:  # the engine reaches its working size first
            for i in range(60):
                c.batch([("put", b"warm%05d" % (i * 1000 + j), value) for j in range(1000)])
        async with connect(url(d), max_queue=1) as stalled:
            await subscribe(stalled)
            before = rss_mib()
            t0 = time.monotonic()
            with Client(d.grpc) as c:
                first = c.put(b"start", b"")
                for i in range(60):  # 60 MB of events
                    last = c.batch([("put", b"k%05d" % (i * 1000 + j), value)
                                    for j in range(1000)])
            took = time.monotonic() - t0
            peak = rss_mib()
            # Every event reaches a client that resumes when cut off.
            lsns, resumes = await read_all(first, last)
            assert lsns == list(range(first, last + 1)), resumes
            # The stalled one was cut off: after what it had been sent, an error
            # with its resume LSN and close code 4002.
            msgs = []
            with pytest.raises(ConnectionClosed) as e:
                while True:
                    msgs.append(json.loads(await asyncio.wait_for(stalled.recv(), 20)))
            return before, peak, took, e.value, msgs

    before, peak, took, closed, msgs = asyncio.run(main())
    assert closed.rcvd is None or closed.rcvd.code == 4002  # or aborted after close_timeout
    if closed.rcvd is not None:
        err = msgs[-1]
        assert err["op"] == "error" and err["code"] == "lapped"
        assert err["resume_lsn"] == msgs[-2]["lsn"] + 1  # nothing skipped
    # The 8 MiB ceiling, plus what the engine itself moves while it takes 60 MB
    # more (memtables, compaction, block cache: ~15 MiB measured without subscribers).
    assert peak - before < 8 + 24, (before, peak)
    assert took < 30


def test_from_lsn_older_than_retention_names_the_oldest(daemon_factory):
    d = daemon_factory(extra_env={"STRATA_MEMTABLE_SIZE": "65536",
                                  "STRATA_WAL_RETENTION_BYTES": "0"})
    with Client(d.grpc) as c:
        for i in range(40):
            c.batch([("put", b"k%d-%d" % (i, j), b"x" * 100) for j in range(100)])

    async def main():
        async with connect(url(d)) as ws:
            await subscribe(ws, from_lsn=1)
            code, msgs = await closed_with(ws)
            assert code == 4001 and msgs[-1]["code"] == "compacted"
            assert msgs[-1]["resume_lsn"] > 1

    asyncio.run(main())


def test_malformed_and_oversized_messages_close_only_that_connection(daemon):
    async def main():
        async with connect(url(daemon)) as good:
            await subscribe(good)
            cases = [("garbage", 1002), (json.dumps({"op": "fly"}), 1002),
                     (json.dumps([1, 2]), 1002), (json.dumps({"op": "subscribe", "tier": "x"}), 4003),
                     (json.dumps({"op": "subscribe", "credits": -1}), 4003),
                     (json.dumps({"op": "subscribe", "prefix": "%%%"}), 4003),
                     ("x" * (70 << 10), 1009)]
            for msg, want in cases:
                async with connect(url(daemon), max_size=None) as ws:
                    await ws.send(msg)
                    code, msgs = await closed_with(ws)
                    assert code == want, (msg[:40], code, msgs)
            async with connect(url(daemon), subprotocols=["strata.v1.msgpack"]) as ws:
                await ws.send("text in a binary protocol")
                code, msgs = await closed_with(ws, decode=msgpack.unpackb)
                assert code == 1002 and msgs[-1]["code"] == "protocol_error"
            with pytest.raises(InvalidStatus) as e:
                async with connect(f"ws://{daemon.ws}/v1/subscribe"):
                    pass
            assert e.value.response.status_code == 404
            with Client(daemon.grpc) as c:  # the good subscriber never noticed
                lsn = c.put(b"still", b"fine")
            assert (await recv(good))["lsn"] == lsn

    asyncio.run(main())


def test_token_on_the_handshake(daemon_factory):
    d = daemon_factory(extra_env={"STRATA_AUTH_TOKEN": "s3cret"})

    async def main():
        with pytest.raises(InvalidStatus) as e:
            async with connect(url(d)):
                pass
        assert e.value.response.status_code == 401
        async with connect(url(d), additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            await subscribe(ws)
        async with connect(url(d) + "?token=s3cret") as ws:
            await subscribe(ws)

    asyncio.run(main())


def test_reserved_keys_are_refused_and_never_shown(daemon):
    from strata_client.errors import InvalidArgument

    with Client(daemon.grpc) as c:
        with pytest.raises(InvalidArgument):
            c.put(b"\xff\xffstrata/cursor/x", b"1")

    async def main():
        async with connect(url(daemon)) as ws:
            await subscribe(ws, consumer="seen", ack="manual")
            with Client(daemon.grpc) as c:
                lsn = c.put(b"a", b"1")
                await ws.send(json.dumps({"op": "ack", "lsn": lsn}))
                await asyncio.sleep(0.5)  # the cursor is written
                assert [k for k, _ in c.scan()] == [b"a"]
                lsn2 = c.put(b"b", b"2")
            got = await events(ws, 2)
            assert [m["lsn"] for m in got] == [lsn, lsn2]  # the cursor write between: not shown

    asyncio.run(main())


def test_credits_hold_during_history_replay_too(daemon):
    with Client(daemon.grpc) as c:
        lsns = [c.put(b"h%d" % i, b"v") for i in range(6)]

    async def main():
        async with connect(url(daemon)) as ws:
            await subscribe(ws, tier="historical", from_lsn=lsns[0], credits=2)
            assert [m["lsn"] for m in await events(ws, 2)] == lsns[:2]
            with pytest.raises(TimeoutError):
                await recv(ws, 0.3)
            await ws.send(json.dumps({"op": "credit", "n": 3}))
            assert [m["lsn"] for m in await events(ws, 3)] == lsns[2:5]
            with pytest.raises(TimeoutError):
                await recv(ws, 0.3)

    asyncio.run(main())


def test_sigterm_with_an_open_delayed_batch_skips_nothing(daemon_factory):
    """SIGTERM while a 5 s batch holds the last 10 events: the subscriber is sent them
    before `shutting_down`, or told to resume at the first one it did not get."""
    d = daemon_factory()

    async def main():
        async with connect(url(d)) as ws:
            await subscribe(ws, tier="delayed", window_ms=5000, prefix=b64(b"s/"))
            with Client(d.grpc) as c:
                lsns = [c.put(b"s/%d" % i, b"v") for i in range(10)]
            await asyncio.sleep(0.3)  # offered: in the open batch, whose window is 5 s
            d.proc.send_signal(signal.SIGTERM)
            return lsns, await closed_with(ws)

    lsns, (code, msgs) = asyncio.run(main())
    assert d.proc.wait(15) == 0
    err = msgs[-1]
    assert (code, err["op"], err["code"]) == (1001, "error", "shutting_down"), msgs
    got = [e["lsn"] for m in msgs[:-1] for e in m["events"]]
    missing = [n for n in lsns if n not in got]
    # resume_lsn promises: nothing below it that the client did not get.
    assert not missing or err["resume_lsn"] <= missing[0], (got, err)
    assert got == lsns and err["resume_lsn"] == lsns[-1] + 1, (got, err)


def test_an_ack_inside_the_unsent_batch_moves_the_cursor_only_up_to_what_was_sent(daemon):
    """A named consumer that acks an LSN of its open (unsent) delayed batch, then
    disconnects: the next holder of the name gets those events."""
    async def main():
        with Client(daemon.grpc) as c:
            async with connect(url(daemon)) as ws:
                await subscribe(ws, tier="delayed", window_ms=10, consumer="acker",
                                ack="manual", prefix=b64(b"a/"))
                first = c.put(b"a/first", b"v")
                assert [e["lsn"] for e in await events(ws, 1)] == [first]
                await ws.send(json.dumps({"op": "ack", "lsn": first}))
                await ws.send(json.dumps({"op": "unsubscribe"}))
                assert await recv(ws) == {"op": "unsubscribed", "lsn": first}
                await subscribe(ws, tier="delayed", window_ms=5000, consumer="acker",
                                ack="manual", prefix=b64(b"a/"))
                lsns = [c.put(b"a/%d" % i, b"v") for i in range(10)]
                await asyncio.sleep(0.3)  # offered: in the open batch, not sent
                # Acks the 5th, which it never got, and goes away without unsubscribing.
                await ws.send(json.dumps({"op": "ack", "lsn": lsns[4]}))
                await asyncio.sleep(0.2)
                ws.transport.abort()
            await asyncio.sleep(0.3)  # the server notices and saves the cursor
            async with connect(url(daemon)) as ws:
                sub = await subscribe(ws, tier="delayed", window_ms=10, consumer="acker",
                                      ack="manual", prefix=b64(b"a/"))
                assert first < sub["from_lsn"] <= lsns[0], sub  # (the cursor's own write between)
                assert [e["lsn"] for e in await events(ws, 10)] == lsns

    asyncio.run(main())


def test_a_cut_off_delayed_subscriber_is_told_to_resume_at_the_first_event_it_did_not_get(
        daemon_factory):
    """A slow anonymous delayed subscriber cut off with a batch open: everything below
    its resume_lsn reached it (the open batch is sent first, or not counted)."""
    d = daemon_factory(extra_env={"STRATA_SUBSCRIBER_QUEUE": "2000",
                                  "STRATA_SUBSCRIBER_BUFFER": str(64 << 10),
                                  "STRATA_DURABILITY": "none"})
    value = b"x" * 8000  # 64 events fill a 512 KiB batch: one commit of 100 leaves it open

    async def main():
        # max_queue=1: the client stops reading the socket once one message waits.
        async with connect(url(d), max_queue=1, max_size=None) as slow:
            await subscribe(slow, tier="delayed", window_ms=1000, prefix=b64(b"c/"))
            with Client(d.grpc) as c:
                first = c.put(b"c/start", b"")
                for i in range(60):  # 48 MB: more than the socket buffers and the queue
                    last = c.batch([("put", b"c/%05d" % (i * 100 + j), value)
                                    for j in range(100)])
            await asyncio.sleep(0.5)
            code, msgs = await closed_with(slow, 20)
            return first, last, code, msgs

    first, last, code, msgs = asyncio.run(main())
    err = msgs[-1]
    assert (code, err["op"], err["code"]) == (4002, "error", "lapped"), (code, err)
    got = [e["lsn"] for m in msgs[:-1] for e in m["events"]]
    assert got == list(range(first, got[-1] + 1))  # in order, no gap
    assert first < err["resume_lsn"] <= last
    assert err["resume_lsn"] == got[-1] + 1, (got[-1], err)  # skips nothing it did not get


def _stalled_client(ws_addr: str) -> socket.socket:
    """A WebSocket subscriber (realtime, JSON) that never reads after `subscribed`: a raw
    socket with a 4 KiB receive buffer, so the server's writes back up at once."""
    host, port = ws_addr.rsplit(":", 1)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, int(port)))
    sub = b'{"op":"subscribe"}'
    s.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade"
              b"\r\nSec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) +
              b"\r\nSec-WebSocket-Version: 13\r\n\r\n" + bytes((0x81, 0x80 | len(sub))) +
              b"\0\0\0\0" + sub)
    got = b""
    while b'"subscribed"' not in got:
        part = s.recv(4096)
        assert part, got
        got += part
    assert got.endswith(b"}"), got  # nothing after subscribed yet: the stream starts next
    return s


def _read_frames(s: socket.socket) -> tuple[list[dict], int | None]:
    """Everything the server sent, up to its close: the JSON messages in order, and the
    close code (None: no close frame came)."""
    s.settimeout(20)
    data = b""
    while True:
        part = s.recv(1 << 16)
        if not part:
            break
        data += part
    out, code, i = [], None, 0
    while i + 2 <= len(data):
        op, n = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n, i = int.from_bytes(data[i:i + 2], "big"), i + 2
        elif n == 127:
            n, i = int.from_bytes(data[i:i + 8], "big"), i + 8
        if i + n > len(data):
            break
        if op == 0x1:
            out.append(json.loads(data[i:i + n]))
        elif op == 0x8 and n >= 2:
            code = int.from_bytes(data[i:i + 2], "big")
        i += n
    return out, code


def _subscribers_cut(d) -> float:
    """strata_subscribers_cut_total from the daemon's metrics."""
    text = urllib.request.urlopen(f"http://{d.metrics}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith("strata_subscribers_cut_total "):
            return float(line.split()[1])
    return 0.0


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_stalled_subscribers_are_cut_off_at_their_first_unsent_event(daemon_factory):
    """400 subscribers that never read are each cut off with the documented ending: an
    `error` message `lapped` with the first event they were not sent, then close code
    4002; what was buffered for them runs contiguously up to it. The daemon's memory
    stays bounded and three subscribers that read get every event."""
    d = daemon_factory(extra_env={"STRATA_SUBSCRIBER_QUEUE": "2000",
                                  "STRATA_SUBSCRIBER_BUFFER": str(16 << 10)})
    stalled = [_stalled_client(d.ws) for _ in range(400)]
    rss0 = _rss_kib(d.proc.pid)
    n = 20_000

    async def main():
        readers = [await connect(url(d), max_queue=None) for _ in range(3)]
        for ws in readers:
            await subscribe(ws)

        async def read(ws) -> list[int]:
            got: list[int] = []
            while len(got) < n:
                got.extend(e["lsn"] for e in await events(ws, 1, 60))
            return got

        reading = asyncio.gather(*(read(ws) for ws in readers))
        with Client(d.grpc) as c:
            for i in range(0, n, 100):
                await asyncio.to_thread(c.batch, [("put", b"k%d" % j, b"v" * 100)
                                                  for j in range(i, i + 100)])
                if not cut.is_set() and _subscribers_cut(d) >= len(stalled):
                    # Every stalled one is cut off: read what the server queued for it,
                    # its error and its close now, before the server gives up on the
                    # close handshake (2 s) and aborts the connection.
                    cut.set()
        got = await asyncio.wait_for(reading, 60)
        for ws in readers:
            await ws.close()
        return got

    def read_when_cut(s: socket.socket):
        # Each thread waits here from the start, so that all read at once when told.
        return _read_frames(s) if cut.wait(120) else ([], None)

    cut = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(len(stalled)) as pool:
        waiting = [pool.submit(read_when_cut, s) for s in stalled]
        try:
            got = asyncio.run(main())
            assert cut.is_set(), f"only {_subscribers_cut(d)} of 400 were cut off"
        finally:
            cut.set()
        drained = [f.result() for f in waiting]
    for lsns in got:  # each reader: every event, in order
        assert lsns == list(range(lsns[0], lsns[0] + n))
    rss = _rss_kib(d.proc.pid)
    for s, (msgs, code) in zip(stalled, drained):
        s.close()
        lsns = [m["lsn"] for m in msgs if m["op"] == "event"]
        err = msgs[-1]
        assert err["op"] == "error" and err["code"] == "lapped", msgs[-2:]
        assert code == 4002, code
        assert lsns, "a stalled subscriber gets what its buffers held first"
        assert lsns == list(range(lsns[0], err["resume_lsn"])), (lsns[-3:], err)
    # 400 connections, each bounded by subscriber_buffer plus its queue (2000 events):
    # far below what 20,000 events for each of them would take (~800 MiB).
    assert rss - rss0 < 150 << 10, (rss0, rss)
