"""session.run, the driver of one consumer, over an in-memory transport, and the hub's
fan-out groups: the delayed tier's batches go out when credit arrives, however the
output is split, and a subscriber never gets a group's bytes from before its start."""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from strata.distribution import session
from strata.distribution.consumer import MSGPACK, Consumer
from strata.distribution.hub import Hub
from strata.storage import Engine, record


class Wire:
    """A transport that keeps what is written (never paused)."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def paused(self) -> bool:
        return False

    async def drain(self) -> None:
        pass

    def lsns(self) -> list[int]:
        return lsns_in(self.data)


def lsns_in(buf: bytes) -> list[int]:
    """The event LSNs in unmasked msgpack WebSocket frames (events and batches)."""
    out = []
    while buf:
        n, head = buf[1] & 0x7F, 2
        if n == 126:
            n, head = int.from_bytes(buf[2:4], "big"), 4
        msg = msgpack.unpackb(buf[head:head + n])
        out += [e["lsn"] for e in (msg["events"] if msg["op"] == "batch" else [msg])]
        buf = buf[head + n:]
    return out


def test_credit_releasing_more_than_a_batch_sends_the_open_remainder_too():
    async def main():
        hub = Hub(asyncio.get_running_loop())
        c = Consumer(fmt=MSGPACK, tier="delayed", credits=0, window_ms=20)
        wire = Wire()
        c.live = True  # live from here, as session.go_live makes it before the driver runs
        hub.add(c)
        task = asyncio.ensure_future(session.run(c, hub, None, 0, wire))
        await asyncio.sleep(0.01)
        hub.on_commit([record.encode_frame(lsn, 0, record.TYPE_PUT, msgpack.packb([b"k", b"v"]))
                       for lsn in range(1, 6)])
        await asyncio.sleep(0.05)
        assert wire.data == b"" and len(c.queue) == 5  # no credit yet
        c.batcher.size = 2  # as after a slow stretch: two batches sealed at once, one open
        c.grant(10)
        await asyncio.sleep(0.2)  # ten windows
        assert wire.lsns() == [1, 2, 3, 4, 5]
        c.end("done", "", 6)
        await asyncio.wait_for(task, 5)

    asyncio.run(main())


def put_frames(lsns) -> list[bytes]:
    return [record.encode_frame(lsn, 0, record.TYPE_PUT, msgpack.packb([b"k", b"v"]))
            for lsn in lsns]


def test_a_live_subscriber_does_not_join_a_group_holding_an_open_batch():
    """Its bytes would carry events from before the subscriber's start."""
    async def main():
        hub = Hub(asyncio.get_running_loop())
        a = Consumer(fmt=MSGPACK, tier="delayed", window_ms=10_000)
        a.live = True
        hub.add(a)
        hub.on_commit(put_frames([1, 2, 3]))
        await asyncio.sleep(0.02)
        g = hub.grouped[a]
        assert len(g.batch) == 3  # open: its window is ten seconds
        b = Consumer(fmt=MSGPACK, tier="delayed", window_ms=10_000)
        b.live = True
        hub.add(b)  # subscribed now: live from LSN 4
        assert b not in hub.grouped and b in hub.subs
        hub.on_commit(put_frames([4]))
        await asyncio.sleep(0.02)
        hub._seal(g)
        b.seal_batch()
        assert lsns_in(b.take()) == [4]
        assert lsns_in(b"".join(a.out)) == [1, 2, 3, 4]
        hub.promote(b)  # the group is between batches now: b joins it
        assert hub.grouped[b] is g

    asyncio.run(main())


def test_a_driver_cancelled_as_it_is_woken_ends():
    """An unsubscribe cancels the driver; an ack just before it wakes the driver in the
    same loop turn. On Python 3.11, asyncio.wait_for swallowed such a cancellation and
    the driver (and the unsubscribe waiting for it) went on for ever."""
    async def main():
        hub = Hub(asyncio.get_running_loop())
        c = Consumer(fmt=MSGPACK, tier="delayed", ack="manual", credits=5, window_ms=10_000)
        c.live = True
        hub.add(c)
        task = asyncio.ensure_future(session.run(c, hub, None, 0, Wire()))
        await asyncio.sleep(0.01)
        hub.on_commit(put_frames([1]))
        await asyncio.sleep(0.02)
        assert c.batch  # open for ten seconds: the driver waits with a timeout
        c.ack(1)  # wakes the driver...
        task.cancel()  # ...and is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 2)

    asyncio.run(main())


def test_a_subscriber_ahead_of_the_feed_is_served_alone_until_the_feed_passes_it():
    """A restarted cluster node reads its log back to the hub once committed, so the
    live feed can offer LSNs a subscriber already got from history: in a group it
    would get them again."""
    async def main():
        hub = Hub(asyncio.get_running_loop())
        behind = Consumer(fmt=MSGPACK)
        behind.live = True
        hub.add(behind)  # a live subscriber from the start: grouped
        ahead = Consumer(fmt=MSGPACK)
        ahead.live = True
        ahead.next_lsn = 10  # history was replayed up to 9
        hub.add(ahead)
        assert ahead not in hub.grouped
        hub.on_commit(put_frames(range(5, 13)))
        await asyncio.sleep(0.02)
        assert lsns_in(b"".join(ahead.out)) == [10, 11, 12]
        assert lsns_in(b"".join(behind.out)) == list(range(5, 13))
        hub.promote(ahead)  # the feed is past it now
        assert hub.grouped[ahead] is hub.grouped[behind]

    asyncio.run(main())


def test_a_live_subscription_starts_after_the_log_it_was_answered_with(tmp_path):
    """Registered before `subscribed` is sent: an event committed before the driver
    runs is not missed; one at or below the answered LSN (read back by a restarted
    cluster node) is not sent."""
    async def main():
        engine = Engine.open(str(tmp_path / "db"))
        try:
            engine.put(b"k", b"v")
            hub = Hub(asyncio.get_running_loop())
            c = Consumer(fmt=MSGPACK)
            assert session.go_live(c, hub, engine) == 1
            hub.on_commit(put_frames([1, 2]))
            await asyncio.sleep(0.02)
            wire = Wire()
            task = asyncio.ensure_future(session.run(c, hub, engine, 0, wire))
            await asyncio.sleep(0.02)
            assert wire.lsns() == [2]
            c.end("done", "", 3)
            await asyncio.wait_for(task, 5)
        finally:
            engine.close()

    asyncio.run(main())


class Cursors:
    """A CursorStore with nothing stored: claims only."""

    def __init__(self) -> None:
        self.owners: dict = {}

    def claim(self, name, owner):
        prev, self.owners[name] = self.owners.get(name), owner
        return prev

    async def load(self, name) -> int:
        return 0


def test_a_take_over_before_any_acknowledgement_starts_where_the_holder_started(tmp_path):
    """A named consumer sent events it never acknowledged, taken over before a cursor
    was saved: the new holder starts where the old one did, not live (which would skip
    what the old one was sent)."""
    async def main():
        engine = Engine.open(str(tmp_path / "db"))
        try:
            for i in range(5):
                engine.put(b"k%d" % i, b"v")
            hub, cursors = Hub(asyncio.get_running_loop()), Cursors()
            old = Consumer(fmt=MSGPACK, name="billing", ack="manual")
            assert await session.position(old, engine, cursors, 0) == 0
            session.go_live(old, hub, engine)
            assert old.start_lsn == 6
            for i in range(3):
                engine.put(b"n%d" % i, b"v")  # sent to `old`, never acknowledged
            new = Consumer(fmt=MSGPACK, name="billing", ack="manual")
            assert await session.position(new, engine, cursors, 0) == 6
            assert old.ended is not None and old.ended[0] == "superseded"
            # Once something was acknowledged, after it.
            new.acked = 7
            again = Consumer(fmt=MSGPACK, name="billing", ack="manual")
            assert await session.position(again, engine, cursors, 0) == 8
        finally:
            engine.close()

    asyncio.run(main())


class FlickeringWire(Wire):
    """A transport whose buffer is over its mark at one write and has drained by the next
    look, as a socket that the client empties between two loop turns."""

    def __init__(self) -> None:
        super().__init__()
        self.full_once = False

    def paused(self) -> bool:
        full, self.full_once = self.full_once, False
        return full


def test_a_buffer_that_drains_before_the_driver_runs_does_not_leave_it_blocked():
    """The hub's write finds the buffer full and wakes the driver; by the time the driver
    runs, the buffer has drained. The driver must send what the group held meanwhile:
    with the flag left set, every later drain was held and nothing was sent again."""
    async def main():
        hub = Hub(asyncio.get_running_loop())
        c = Consumer(fmt=MSGPACK)
        c.live = True
        hub.add(c)
        assert c in hub.grouped
        wire = FlickeringWire()
        task = asyncio.ensure_future(session.run(c, hub, None, 0, wire))
        await asyncio.sleep(0.01)
        wire.full_once = True
        hub.on_commit(put_frames([1, 2, 3]))
        await asyncio.sleep(0.02)
        hub.on_commit(put_frames([4, 5, 6]))
        await asyncio.sleep(0.02)
        assert wire.lsns() == [1, 2, 3, 4, 5, 6]
        assert not c.blocked and not c.held
        c.end("done", "", 7)
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
