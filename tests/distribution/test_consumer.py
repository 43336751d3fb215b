"""The subscriber state machine without sockets: credits, acks, queue bounds, the
memory ceiling, the delayed tier's batches and their adaptation, encodings."""

from __future__ import annotations

import base64
import json

import msgpack

from strata.distribution.consumer import JSON, MSGPACK, Batcher, Budget, Consumer, Shared
from strata.distribution.hub import Event


def ev(lsn: int, key: bytes = b"k", value: bytes = b"v" * 10, topic: str = "kv",
       deleted: bool = False) -> Shared:
    return Shared(Event(lsn, topic, key, value, deleted, 1234))


def frames(c: Consumer) -> list[dict]:
    """Decode what take() returns (unmasked server frames)."""
    data, out = c.take(), []
    while data:
        n = data[1] & 0x7F
        head = 2
        if n == 126:
            n, head = int.from_bytes(data[2:4], "big"), 4
        elif n == 127:
            n, head = int.from_bytes(data[2:10], "big"), 10
        body = data[head:head + n]
        out.append(json.loads(body) if data[0] == 0x81 else msgpack.unpackb(body))
        data = data[head + n:]
    return out


def live(**kw) -> Consumer:
    c = Consumer(**kw)
    c.live = True
    return c


def test_encodings_once_per_event_and_format():
    s = ev(7, b"\x00k", None or b"val")
    j = json.loads(s.body(JSON))
    assert j == {"op": "event", "lsn": 7, "ts": 1234, "topic": "kv",
                 "key": base64.b64encode(b"\x00k").decode(), "value": base64.b64encode(b"val").decode()}
    assert s.body(JSON) is s.body(JSON)  # cached: shared by every subscriber
    m = msgpack.unpackb(s.body(MSGPACK))
    assert m["key"] == b"\x00k" and m["value"] == b"val"
    d = Shared(Event(8, "kv", b"k", b"", True))
    assert json.loads(d.body(JSON))["value"] is None and json.loads(d.body(JSON))["ts"] is None
    assert msgpack.unpackb(d.body(MSGPACK))["value"] is None


def test_realtime_sends_in_order_and_drops_duplicates():
    c = live()
    for lsn in (1, 2, 2, 3, 1):
        c.offer(ev(lsn).ev, ev(lsn))
    assert [f["lsn"] for f in frames(c)] == [1, 2, 3]
    assert c.acked == 3  # ack "auto": acknowledged when sent


def test_credits_bound_unacknowledged_events_in_manual_mode():
    c = live(ack="manual", credits=3)
    for lsn in range(1, 11):
        c.offer(ev(lsn).ev, ev(lsn))
    assert [f["lsn"] for f in frames(c)] == [1, 2, 3]
    assert c.unacked == 3 and len(c.queue) == 7
    c.ack(2)  # two acknowledged: two more may go
    assert [f["lsn"] for f in frames(c)] == [4, 5]
    c.ack(100)  # beyond what was sent: up to what was sent
    assert c.acked == 5
    assert [f["lsn"] for f in frames(c)] == [6, 7, 8]
    c.grant(5)  # explicit credit on top
    assert [f["lsn"] for f in frames(c)] == [9, 10]


def test_credits_in_auto_mode_are_granted_explicitly():
    c = live(credits=0)
    c.offer(ev(1).ev, ev(1))
    assert frames(c) == []
    c.grant(1)
    assert [f["lsn"] for f in frames(c)] == [1]


def test_queue_overflow_cuts_off_at_the_first_unsent_lsn():
    c = live(credits=2, max_queue=5)
    for lsn in range(1, 20):
        c.offer(ev(lsn).ev, ev(lsn))
    assert c.ended == ("lapped", "fell 5 events behind", 3)
    assert not c.queue and c.queued_bytes == 0


def test_the_memory_ceiling_is_shared_by_all_subscribers():
    budget = Budget(10 * ev(1).size)
    a, b = live(credits=0, budget=budget), live(credits=0, budget=budget)
    for lsn in range(1, 6):
        a.offer(ev(lsn).ev, ev(lsn))
        b.offer(ev(lsn).ev, ev(lsn))
    assert budget.used == 10 * ev(1).size and a.ended is None and b.ended is None
    a.offer(ev(6).ev, ev(6))
    assert a.ended[0] == "lapped" and a.ended[2] == 1 and budget.cut_offs == 1
    assert budget.used == 5 * ev(1).size  # a's queue was released
    b.grant(5)
    assert budget.used == 0


def test_history_mode_queues_live_events_until_hand_over():
    c = Consumer()
    c.next_lsn = 1
    for lsn in (5, 6):
        c.offer(ev(lsn).ev, ev(lsn))  # live, during history
    for lsn in (1, 2, 3, 4, 5):
        c.emit(ev(lsn))  # history, through to the boundary
    c.live = True
    c.pump()
    assert [f["lsn"] for f in frames(c)] == [1, 2, 3, 4, 5, 6]


def test_filters():
    c = live(topics=frozenset({"orders"}), prefix=b"eu/")
    assert c.wants(Event(1, "orders", b"eu/1", b"", False))
    assert not c.wants(Event(1, "orders", b"us/1", b"", False))
    assert not c.wants(Event(1, "kv", b"eu/1", b"", False))


def test_delayed_tier_batches_encode_each_event_once():
    for fmt in (JSON, MSGPACK):
        c = live(tier="delayed", fmt=fmt, window_ms=100)
        for lsn in range(1, 40):
            c.offer(ev(lsn).ev, ev(lsn))
        assert c.take() == b"" and len(c.batch) == 39
        assert not c.batch_due(c.batch_since + 0.05)
        assert c.batch_due(c.batch_since + 0.11)
        c.seal_batch(c.batch_since + 0.11)
        (msg,) = frames(c)
        assert msg["op"] == "batch" and [e["lsn"] for e in msg["events"]] == list(range(1, 40))


def test_batcher_adapts_size_and_window_to_the_rate():
    b = Batcher(0.1, max_size=1000)
    t = 0.0
    for _ in range(30):  # slow: 20 events/s -> small batches, the whole window
        t += 0.1
        b.sent(2, t)
    assert b.size <= 3 and b.window > 0.09
    for _ in range(60):  # fast: 100k events/s -> the largest batches, a short window
        t += 0.01
        b.sent(1000, t)
    assert b.size == 1000 and b.window < 0.02
    for _ in range(60):  # back to slow: the window opens up again
        t += 0.1
        b.sent(2, t)
    assert b.size <= 3 and b.window > 0.09


def _put_frame(lsn: int) -> bytes:
    from strata.storage import record

    return record.encode_frame(lsn, 0, record.TYPE_PUT, msgpack.packb([b"k%d" % lsn, b"v"]))


def test_identical_live_streams_are_served_as_one_group_and_a_full_one_holds_its_share():
    import asyncio

    from strata.distribution.hub import Hub

    async def main():
        hub = Hub(asyncio.get_running_loop())
        a, b, solo = live(), live(), live(credits=100)
        for c in (a, b, solo):
            hub.add(c)
        assert len(hub.groups) == 1 and hub.grouped.keys() == {a, b} and hub.subs == {solo}
        hub.on_commit([_put_frame(lsn) for lsn in (1, 2, 3)])
        await asyncio.sleep(0.01)
        assert [[f["lsn"] for f in frames(c)] for c in (a, b, solo)] == [[1, 2, 3]] * 3
        assert a.next_lsn == b.next_lsn == 4 and a.acked == 3
        b.blocked = True  # its transport filled up
        hub.on_commit([_put_frame(lsn) for lsn in (4, 5)])
        await asyncio.sleep(0.01)
        # Still a member: it holds the drain's bytes (shared with a), one entry a drain.
        assert b in hub.grouped and not b.queue and not b.out
        assert [(n, last) for _, n, last in b.held] == [(2, 5)] and b.next_lsn == 4
        hub.on_commit([_put_frame(6)])
        await asyncio.sleep(0.01)
        assert b.held_events == 3
        b.blocked = False
        b.pump()
        assert b.held_events == 0 and b.queued_bytes == 0 and b.budget.used == 0
        assert [f["lsn"] for f in frames(b)] == [4, 5, 6]
        assert [f["lsn"] for f in frames(a)] == [4, 5, 6]
        hub.unsubscribe(a)
        hub.unsubscribe(b)
        assert not hub.groups

    asyncio.run(main())


def test_a_stalled_member_is_cut_off_at_its_first_unsent_event_and_detached():
    import asyncio

    from strata.distribution.hub import Hub

    async def main():
        hub = Hub(asyncio.get_running_loop())
        a, b = live(), live(max_queue=3)
        for c in (a, b):
            hub.add(c)
        hub.on_commit([_put_frame(lsn) for lsn in (1, 2)])
        await asyncio.sleep(0.01)
        b.blocked = True  # it stopped reading
        hub.on_commit([_put_frame(lsn) for lsn in (3, 4)])
        await asyncio.sleep(0.01)
        hub.on_commit([_put_frame(lsn) for lsn in (5, 6)])  # 4 held events: over 3
        await asyncio.sleep(0.01)
        assert b.ended is not None and b.ended[0] == "lapped"
        assert b.ended[2] == 3  # the first event it was not sent: 1, 2 went out
        assert [f["lsn"] for f in frames(b)] == [1, 2]
        # Detached at once: nothing more is offered to it, its memory is given back.
        assert b not in hub.grouped and b not in hub.subs and b not in hub.groups[
            next(iter(hub.groups))].members
        assert not b.held and b.budget.used == 0
        hub.on_commit([_put_frame(7)])
        await asyncio.sleep(0.01)
        assert [f["lsn"] for f in frames(a)] == list(range(1, 8))

    asyncio.run(main())


def test_a_delayed_group_seals_its_batch_when_the_window_ends():
    import asyncio

    from strata.distribution.hub import Hub

    async def main():
        hub = Hub(asyncio.get_running_loop())
        a, b = live(tier="delayed", window_ms=30), live(tier="delayed", window_ms=30)
        hub.add(a)
        hub.add(b)
        assert len(hub.groups) == 1
        hub.on_commit([_put_frame(lsn) for lsn in range(1, 6)])
        await asyncio.sleep(0.005)
        assert a.take() == b""  # the window is still open
        await asyncio.sleep(0.06)
        for c in (a, b):
            (msg,) = frames(c)
            assert msg["op"] == "batch" and [e["lsn"] for e in msg["events"]] == [1, 2, 3, 4, 5]

    asyncio.run(main())


def test_a_member_whose_transport_filled_gets_its_held_output_without_gap_or_duplicate():
    import asyncio

    from strata.distribution.hub import Hub

    async def main():
        hub = Hub(asyncio.get_running_loop())
        a, b = live(), live()
        hub.add(a)
        hub.add(b)
        b.blocked = True
        hub.on_commit([_put_frame(lsn) for lsn in (1, 2)])
        await asyncio.sleep(0.01)
        assert b in hub.grouped and b not in hub.subs and b.held_events == 2
        b.blocked = False
        b.pump()  # the driver, once the transport drained
        assert b in hub.grouped and not b.held
        hub.on_commit([_put_frame(lsn) for lsn in (3, 4)])
        await asyncio.sleep(0.01)
        assert [f["lsn"] for f in frames(b)] == [1, 2, 3, 4]
        assert [f["lsn"] for f in frames(a)] == [1, 2, 3, 4]

    asyncio.run(main())


def test_an_ack_counts_only_what_was_sent_not_the_open_batch():
    c = live(tier="delayed", window_ms=60_000, ack="manual")
    c.next_lsn = 1
    for lsn in (1, 2, 3):
        c.offer(ev(lsn).ev, ev(lsn))  # in the open batch: not sent
    assert (c.sent_lsn, c.next_lsn) == (0, 4)
    c.ack(2)
    assert c.acked == 0  # clamped to what was sent, not to the next LSN (2 before)
    c.seal_batch()
    assert c.sent_lsn == 3
    c.ack(2)
    assert c.acked == 2
    c.ack(99)
    assert c.acked == 3


def test_the_end_of_a_delayed_consumer_seals_its_open_batch_before_the_end():
    c = live(tier="delayed", window_ms=60_000)
    c.next_lsn = 1
    for lsn in (1, 2, 3):
        c.offer(ev(lsn).ev, ev(lsn))
    c.cut_off(4, "fell behind")
    assert c.ended == ("lapped", "fell behind", 4)
    (msg,) = frames(c)  # everything below the resume LSN is in the output
    assert [e["lsn"] for e in msg["events"]] == [1, 2, 3]


def test_shutdown_hands_a_delayed_group_member_its_groups_open_batch():
    import asyncio

    from strata.distribution.hub import Hub

    async def main():
        hub = Hub(asyncio.get_running_loop())
        a, b = live(tier="delayed", window_ms=60_000), live(tier="delayed", window_ms=60_000)
        hub.add(a)
        hub.add(b)
        assert len(hub.groups) == 1
        hub.on_commit([_put_frame(lsn) for lsn in range(1, 4)])
        await asyncio.sleep(0.01)
        assert a.take() == b""  # in the group's open batch
        hub.cut_off_all("server shutting down")
        for c in (a, b):
            assert c.ended[2] == 4
            (msg,) = frames(c)
            assert [e["lsn"] for e in msg["events"]] == [1, 2, 3]

    asyncio.run(main())
