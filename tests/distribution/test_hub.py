"""The event hub without a server: frames in, events out, bounds enforced."""

from __future__ import annotations

import asyncio
import threading

import msgpack
import pytest

from distribution.hub import Event, Hub, Lapped, frame_events, stream
from storage import Compacted, Engine, record


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
        # Four more order events for a queue of three: cut off at the oldest undelivered.
        hub.on_commit([frame(n, record.TYPE_EVENT, [b"orders", b"o", b"x"]) for n in range(4, 8)])
        await asyncio.sleep(0.05)
        with pytest.raises(Lapped) as e:
            while True:
                await asyncio.wait_for(orders.get(), 5)
        assert e.value.resume_lsn == 4
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
        await asyncio.sleep(0.05)
        with pytest.raises(Lapped) as e:
            while True:
                await asyncio.wait_for(sub.get(), 5)
        assert e.value.resume_lsn == 3

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
