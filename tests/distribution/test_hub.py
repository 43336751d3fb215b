"""The event hub without a server: frames in, events out, bounds enforced."""

from __future__ import annotations

import asyncio
import collections
import json
import threading

import msgpack
import pytest

from strata.distribution.consumer import Consumer
from strata.distribution.hub import Event, Hub, Lapped, frame_events, stream
from strata.storage import Compacted, Engine, record


def frame(lsn: int, ftype: int, payload) -> bytes:
    return record.encode_frame(lsn, 0, ftype, msgpack.packb(payload))


def test_frame_events_per_type():
    assert frame_events(5, record.TYPE_PUT, msgpack.packb([b"k", b"v"])) == [
        Event(5, "kv", b"k", b"v", False)]
    assert frame_events(6, record.TYPE_DELETE, msgpack.packb(b"k")) == [
        Event(6, "kv", b"k", b"", True)]
    batch = msgpack.packb([[1, b"a", b"1"], [2, b"b", None], [1, b"c", b"3"]])
    assert frame_events(7, record.TYPE_BATCH, batch) == [
        Event(7, "kv", b"a", b"1", False), Event(8, "kv", b"b", b"", True),
        Event(9, "kv", b"c", b"3", False)]
    assert frame_events(10, record.TYPE_EVENT, msgpack.packb([b"orders", b"o1", b"{}"])) == [
        Event(10, "orders", b"o1", b"{}", False)]
    assert frame_events(11, record.TYPE_TERM, msgpack.packb([2, "n1"])) == []


def test_filters_and_overflow_cut_off_with_resume_lsn():
    async def main():
        hub = Hub(asyncio.get_running_loop())
        orders = hub.subscribe(frozenset({"orders"}), b"", maxlen=3)
        accts = hub.subscribe(None, b"acct:", maxlen=100)
        frames = [frame(1, record.TYPE_EVENT, [b"orders", b"o1", b"x"]),
                  frame(2, record.TYPE_PUT, [b"acct:1", b"a"]),
                  frame(3, record.TYPE_PUT, [b"other", b"b"])]
        threading.Thread(target=hub.on_commit, args=(frames,)).start()
        assert (await asyncio.wait_for(orders.get(), 5)).lsn == 1
        assert (await asyncio.wait_for(accts.get(), 5)).key == b"acct:1"
        assert not accts.queue  # b"other" filtered out
        # Four more order events for a queue of three: the three queued are delivered,
        # then the cut-off names the first one it never got.
        hub.on_commit([frame(n, record.TYPE_EVENT, [b"orders", b"o", b"x"]) for n in range(4, 8)])
        await asyncio.sleep(0.05)
        got = []
        with pytest.raises(Lapped) as e:
            while True:
                got.append((await asyncio.wait_for(orders.get(), 5)).lsn)
        assert got == [4, 5, 6]
        assert e.value.resume_lsn == 7
        hub.unsubscribe(orders)
        hub.unsubscribe(accts)
        hub.on_commit([frame(8, record.TYPE_PUT, [b"x", b"y"])])  # nobody listening: dropped
        assert not hub._pending

    asyncio.run(main())


def test_hub_overflow_cuts_every_subscriber():
    async def main():
        hub = Hub(asyncio.get_running_loop(), max_pending=2)
        sub = hub.subscribe(None, b"", maxlen=100)
        hub.on_commit([frame(1, record.TYPE_PUT, [b"a", b"1"]), frame(2, record.TYPE_PUT, [b"b", b"2"])])
        hub.on_commit([frame(3, record.TYPE_PUT, [b"c", b"3"])])  # pending is full: overflow
        hub.on_commit([frame(4, record.TYPE_PUT, [b"d", b"4"])])  # still full: a later drop
        await asyncio.sleep(0.05)
        got = []
        with pytest.raises(Lapped) as e:
            while True:
                got.append((await asyncio.wait_for(sub.get(), 5)).lsn)
        # 1 and 2 were queued before the overflow: delivered, never skipped (they were
        # once cleared and the subscriber told to resume at 3).
        assert got == [1, 2]
        assert e.value.resume_lsn == 3

    asyncio.run(main())


def test_a_cut_off_keeps_its_first_resume_point():
    async def main():
        hub = Hub(asyncio.get_running_loop())
        sub = hub.subscribe(None, b"", maxlen=2)
        hub.on_commit([frame(n, record.TYPE_PUT, [b"k", b"v"]) for n in (1, 2, 3)])
        await asyncio.sleep(0.05)  # 3 did not fit: cut off at 3
        hub.cut_off_all("server shutting down")  # would say 4: must not overwrite
        got = []
        with pytest.raises(Lapped) as e:
            while True:
                got.append((await asyncio.wait_for(sub.get(), 5)).lsn)
        assert got == [1, 2] and e.value.resume_lsn == 3

    asyncio.run(main())


def test_shutdown_cut_off_resumes_at_the_first_event_not_received(tmp_path):
    """A subscriber thousands of events behind at SIGTERM was told to resume after all of
    them: it must resume at the first one it never got."""
    async def main():
        with Engine.open(str(tmp_path / "db"), durability="none") as db:
            hub = Hub(asyncio.get_running_loop())
            db.add_commit_listener(hub.on_commit)
            received = []

            async def consume():
                async for ev in stream(hub, db, None, b"", 0, maxlen=100_000):
                    received.append(ev.lsn)
                    if len(received) <= 10:
                        await asyncio.sleep(0.01)  # a slow reader

            task = asyncio.ensure_future(consume())
            await asyncio.sleep(0.05)
            for i in range(3000):
                db.put(b"k%05d" % i, b"v")
            await asyncio.sleep(0.01)
            hub.cut_off_all("server shutting down", db)
            with pytest.raises(Lapped) as e:
                await asyncio.wait_for(task, 10)
            assert received == list(range(1, len(received) + 1))
            assert e.value.resume_lsn == received[-1] + 1
            assert e.value.resume_lsn <= 3001

    asyncio.run(main())


def test_stream_from_beyond_the_last_lsn_delivers_nothing_below_it(tmp_path):
    async def main():
        with Engine.open(str(tmp_path / "db"), durability="none") as db:
            hub = Hub(asyncio.get_running_loop())
            db.add_commit_listener(hub.on_commit)
            db.put(b"a", b"1")
            got = []

            async def consume():
                async for ev in stream(hub, db, None, b"", 10, maxlen=1000):
                    got.append(ev.lsn)
                    if ev.lsn >= 12:
                        return

            task = asyncio.ensure_future(consume())
            await asyncio.sleep(0.1)
            for i in range(15):
                db.put(b"k%02d" % i, b"v")
            await asyncio.wait_for(task, 10)
            assert got == [10, 11, 12]

    asyncio.run(main())


def test_stream_replays_history_then_hands_over_to_live(tmp_path):
    async def main():
        with Engine.open(str(tmp_path / "db"), durability="none") as db:
            hub = Hub(asyncio.get_running_loop())
            db.add_commit_listener(hub.on_commit)
            for i in range(50):
                db.put(b"k%02d" % i, b"v")
            got = []

            async def consume():
                async for ev in stream(hub, db, None, b"", 10, maxlen=1000):
                    got.append(ev.lsn)
                    if ev.lsn == 60:
                        return

            task = asyncio.ensure_future(consume())
            await asyncio.sleep(0.2)
            for i in range(50, 60):
                db.put(b"k%02d" % i, b"v")
            await asyncio.wait_for(task, 10)
            assert got == list(range(10, 61)), got

    asyncio.run(main())


def test_stream_from_purged_history_is_compacted(tmp_path):
    async def main():
        opts = dict(durability="none", memtable_size=32 << 10, wal_retention_bytes=0)
        with Engine.open(str(tmp_path / "db"), **opts) as db:
            hub = Hub(asyncio.get_running_loop())
            for i in range(2000):
                db.put(b"k%05d" % i, b"v" * 50)
            db.flush()
            assert db.wal().earliest_lsn() > 1
            with pytest.raises(Compacted) as e:
                async for _ in stream(hub, db, None, b"", 1, maxlen=10):
                    pass
            assert e.value.earliest_lsn == db.wal().earliest_lsn()

    asyncio.run(main())


class _CommitDuringDrain(collections.deque):
    """The hand-over deque, with the committing thread's next call played at a chosen
    point of the loop's drain: after the loop has taken `after` frames out, `commit`
    runs (as the WAL writer's thread would, between two of the loop's steps)."""

    def __init__(self, after: int, commit) -> None:
        super().__init__()
        self.after = after
        self.commit = commit
        self.taken = 0

    def popleft(self):
        fr = super().popleft()
        self.taken += 1
        if self.taken == self.after:
            self.commit()
        return fr


class _ManualLoop:
    """Records call_soon_threadsafe instead of running it: the test plays the drain."""

    def __init__(self) -> None:
        self.calls: list = []

    def call_soon_threadsafe(self, fn, *args) -> None:
        self.calls.append((fn, args))

    def call_later(self, delay, fn, *args):  # pragma: no cover - realtime tier only
        raise AssertionError("no timers on the realtime tier")


def test_hub_overflow_never_offers_frames_past_the_dropped_one():
    """The committing thread overflows the hand-over deque (LSN 3 is dropped), then the
    loop takes a frame out and the thread commits LSN 4, which now fits. Delivering 4
    would be a gap, and the cut-off's resume point is the consumer's first unsent LSN:
    before, the consumer was sent 1, 2, 4 and told to resume at 5, skipping 3."""
    loop = _ManualLoop()
    hub = Hub(loop, max_pending=2)  # type: ignore[arg-type]
    c = Consumer()
    c.live = True
    c.next_lsn = 1
    hub.subs.add(c)  # served alone: its cut-off uses its own position (first_unsent)
    put = lambda n: frame(n, record.TYPE_PUT, [b"k%d" % n, b"v"])  # noqa: E731
    hub._pending = _CommitDuringDrain(1, lambda: hub.on_commit([put(4)]))
    hub.on_commit([put(1), put(2)])
    hub.on_commit([put(3)])  # the deque holds two frames: 3 is dropped
    assert hub._overflow_lsn == 3
    for fn, args in loop.calls:
        fn(*args)
    lsns = [json.loads(f[2:])["lsn"] for f in c.out]  # realtime frames under 126 bytes
    assert lsns == [1, 2]
    assert c.ended is not None and c.ended[0] == "lapped"
    assert c.ended[2] == 3  # the first event it was not sent
    # A frame committed once the cut-off is done is a new start, offered as usual
    # (to nobody here: the consumer ended).
    assert hub._overflow_lsn == 0
