"""Event hub: fans committed WAL frames out to subscribers, in LSN order.

Every durable frame becomes events `(lsn, topic, key, value, deleted)`: KV
writes on the topic "kv" (one event per operation of a batch), published
events on their own topic. The engine hands frames over from its committing
thread (`on_commit`, which only appends to a bounded deque); the hub decodes
and distributes them on the event loop. The commit path never waits for a
subscriber. On a cluster node the frames come through the committed feed
(feed.py) instead, once the commit point passes them.

Bounds and overflow policy (docs/operations.md, "Subscriptions"):
- each subscriber holds at most `maxlen` undelivered events; one more and it
  is cut off: it gets what its queue holds, then `Lapped(resume_lsn)` with
  the first LSN it has not received, to resume from through history replay,
  instead of buffering without bound;
- the hand-over deque holds at most `max_pending` frames; if the loop falls
  that far behind, every subscriber is cut off the same way at the first
  frame that did not fit, and no later frame is offered before that cut-off
  (one that fits again once the loop has taken frames out would be a gap, and
  a consumer's resume point would pass the dropped frame).
History (`stream(..., from_lsn=N)`) is replayed from the WAL segments on
disk, then handed over to the live feed with no gap and no duplicate
(events are deduplicated by LSN at the seam).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import AsyncIterator
from typing import NamedTuple

from strata.storage import record
from strata.storage.errors import Compacted

from .consumer import Group, Shared
from .cursors import is_reserved


class Event(NamedTuple):
    lsn: int
    topic: str
    key: bytes
    value: bytes
    deleted: bool
    # Unix ms the write was committed (the master's wall clock, from its WAL frame,
    # so the same live, replayed or on a replica); None for a frame without one.
    ts: int | None = None


class Lapped(Exception):
    """The subscriber was cut off; resume from `resume_lsn`, the first event it has not
    received (never past one: a resume may repeat events, it never skips any)."""

    def __init__(self, resume_lsn: int, reason: str) -> None:
        super().__init__(f"{reason}; resume from LSN {resume_lsn}")
        self.resume_lsn = resume_lsn
        self.reason = reason


KV_TOPIC = "kv"


def frame_events(lsn: int, ftype: int, payload: bytes, ts_ns: int | None = None) -> list[Event]:
    """The events of one committed WAL frame (record.decode_ops for the key space);
    `ts_ns` is the frame's commit time (record.Frame.ts), the events' `ts` in ms."""
    ts = None if ts_ns is None else ts_ns // 1_000_000
    if ftype == record.TYPE_EVENT:
        topic, k, v = record.decode_event(payload)
        return [Event(lsn, topic.decode(errors="replace"), k, v, False, ts)]
    return [Event(op_lsn, KV_TOPIC, k, b"" if v is None else v, v is None, ts)
            for op_lsn, k, v in record.decode_ops(ftype, lsn, payload)]


class Subscription:
    """One subscriber's filter and bounded queue. Loop-thread only."""

    def __init__(self, topics: frozenset[str] | None, key_prefix: bytes, maxlen: int) -> None:
        self.topics = topics
        self.key_prefix = key_prefix
        self.maxlen = maxlen
        self.queue: collections.deque[Event] = collections.deque()
        self.lapped: Lapped | None = None
        self._ready = asyncio.Event()
        self.delivered = 0
        self.on_end = None  # a Consumer's detach hook; stream() unsubscribes this one itself

    def wants(self, ev: Event) -> bool:
        return (self.topics is None or ev.topic in self.topics) and ev.key.startswith(self.key_prefix)

    def offer(self, ev: Event, shared=None) -> None:
        if self.lapped is not None:
            return
        if len(self.queue) >= self.maxlen:
            self.cut_off(ev.lsn, f"subscriber fell {self.maxlen} events behind")
            return
        self.queue.append(ev)
        self._ready.set()

    def cut_off(self, next_lsn: int, reason: str) -> None:
        """Cut the subscriber off from the live feed; `next_lsn` is the first LSN not
        offered to it.

        What its queue already holds is still delivered; then `get` raises
        Lapped(next_lsn): the resume point is always the first event the
        subscriber has not received. Cut off once, it keeps that first point.
        """
        if self.lapped is not None:
            return
        self.lapped = Lapped(next_lsn, reason)
        self._ready.set()

    def flush(self) -> None:
        pass

    async def get(self) -> Event:
        while not self.queue:
            if self.lapped is not None:
                raise self.lapped
            self._ready.clear()
            await self._ready.wait()
        return self.queue.popleft()


class Hub:
    def __init__(self, loop: asyncio.AbstractEventLoop, max_pending: int = 100_000) -> None:
        self.loop = loop
        self.max_pending = max_pending
        self.subs: set[Subscription] = set()
        self._pending: collections.deque[bytes] = collections.deque()
        self._scheduled = False
        self._overflow_lsn = 0
        self.published = 0
        self.groups: dict[tuple, Group] = {}  # identical live streams, served once
        self.grouped: dict = {}  # Consumer -> its Group
        # The LSN after the last frame drained: the next one any subscriber is offered.
        self.next_lsn = 0
        # A cluster node's frames come through a CommittedFeed (distribution/feed.py),
        # which hands them on only once committed; None on a single node.
        self.feed = None

    def visible(self, engine) -> int:
        """The last LSN subscribers may see: history replays up to it, and everything
        after it reaches the live feed. On a single node, every durable write; in a
        cluster, what the committed feed released."""
        return engine.last_lsn if self.feed is None else self.feed.released

    # -- engine side (any thread) -------------------------------------------------

    def on_commit(self, frames: list[bytes]) -> None:
        """Engine commit listener: hand frames to the loop. Never blocks."""
        if not self.subs and not self.groups:
            return
        if self._overflow_lsn:
            # A frame was dropped and the loop has not cut everyone off yet: nothing
            # after it may reach a subscriber (a gap, and a resume point past it).
            pass
        elif len(self._pending) >= self.max_pending:
            self._overflow_lsn = record.parse_frame(frames[0])[0]
        else:
            self._pending.extend(frames)
        if not self._scheduled:
            self._scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:
                pass  # loop closed: shutting down

    # -- loop side -----------------------------------------------------------------

    def _drain(self) -> None:
        self._scheduled = False
        pending = self._pending
        subs = list(self.subs)
        groups = list(self.groups.values())
        while True:
            self._offer(pending, subs, groups)
            overflow = self._overflow_lsn
            if not overflow or not pending:
                break
            # Frames committed before the dropped one came in while the deque was being
            # emptied: they go out first. Once the overflow is set the committing thread
            # appends nothing, so the deque stays empty from here until it is cleared.
        for g in groups:
            g.flush()
            if g.batch and g.timer is None:  # delayed tier: seal when the window ends
                wait = g.batch_since + g.batcher.window - time.monotonic()
                g.timer = self.loop.call_later(max(0.0, wait), self._seal, g)
        for s in subs:
            s.flush()
            if s.on_end is not None and not s.queue and s.live:
                # Served alone only because the feed had not reached it when it came
                # (a hub that has drained nothing yet, say): into its group now that
                # it has been offered every event so far.
                self.promote(s)
        if overflow:
            # Invariant: every subscriber was offered each frame below `overflow` and
            # none at or above it, so its first unsent event is at most `overflow`.
            for s in subs + [m for g in groups for m in g.members]:
                s.cut_off(overflow, "the server fell behind fanning out events")
            self._overflow_lsn = 0  # later frames start afresh (for new subscribers)

    def _offer(self, pending: collections.deque[bytes], subs: list, groups: list[Group]) -> None:
        """Offer every frame in `pending` (taking them out) to the groups and subscribers."""
        while pending:
            lsn, _, ftype, payload, ts = record.parse_frame_ts(pending.popleft())
            events = frame_events(lsn, ftype, payload, ts)
            for ev in events:
                if ev.topic == KV_TOPIC and is_reserved(ev.key):
                    continue  # consumer cursors: internal
                self.published += 1
                shared = Shared(ev)  # each encoding made once, for every subscriber
                for g in groups:
                    if g.wants(ev):
                        g.offer(ev, shared)
                for s in subs:
                    if s.wants(ev):
                        s.offer(ev, shared)
            self.next_lsn = (events[-1].lsn if events else lsn) + 1

    def _seal(self, g: Group) -> None:
        g.timer = None
        g.seal()
        g.flush()

    def _drop_if_empty(self, m, g: Group | None) -> None:
        for key, grp in list(self.groups.items()):
            if not grp.members:
                if grp.timer is not None:
                    grp.timer.cancel()
                del self.groups[key]

    def add(self, sub) -> None:
        """Attach a subscriber of another kind (distribution/consumer.Consumer): into
        the group of its identical stream when it can be served as one of many."""
        sub.on_end = lambda: self.unsubscribe(sub)  # an ended consumer is offered nothing
        key = Group.key_of(sub)
        g = self.groups.get(key) if key is not None else None
        if key is None or (g is not None and (g.batch or g.out)) or sub.next_lsn > self.next_lsn:
            # Not groupable; or its group holds bytes with events from before this
            # subscriber's start; or the feed has yet to reach where it is (a node that
            # reads its log back once committed offers events it replayed from history):
            # served alone, each event checked against its position, until `promote`
            # finds the group between batches and the feed past it.
            self.subs.add(sub)
            return
        if g is None:
            g = self.groups[key] = Group(key, sub)
        g.members.append(sub)
        self.grouped[sub] = g

    def promote(self, sub) -> None:
        """A subscriber that caught up (history replayed, or its queue drained after its
        transport filled) joins the group of its stream again. Only between drains
        and only when the group holds no unsent batch: the member has been offered
        every event so far, and the group's next bytes are all new to it."""
        key = Group.key_of(sub)
        if key is None or sub not in self.subs:
            return
        g = self.groups.get(key)
        if g is not None and (g.batch or g.out):
            return
        self.subs.discard(sub)
        self.add(sub)

    def subscribe(self, topics: frozenset[str] | None, key_prefix: bytes, maxlen: int) -> Subscription:
        s = Subscription(topics, key_prefix, maxlen)
        self.subs.add(s)
        return s

    def leave_group(self, c) -> None:
        """Take a consumer out of its group before it unsubscribes, handing it the
        events of the group's open batch (delayed tier) as its own: its last batch
        then goes out with it instead of staying behind with the group."""
        g = self._ungroup(c)
        if g is not None and g.batch:
            for shared in g.events[len(g.events) - len(g.batch):]:
                if shared.ev.lsn >= c.next_lsn:
                    c.emit(shared)

    def unsubscribe(self, s) -> None:
        self.subs.discard(s)
        self._ungroup(s)

    def _ungroup(self, c):
        """Take c out of its group (dropping the group if it empties); the group, if any."""
        g = self.grouped.pop(c, None)
        if g is not None:
            if c in g.members:
                g.members.remove(c)
            self._drop_if_empty(c, g)
        return g

    def cut_off_all(self, reason: str, engine=None) -> None:
        """Cut every subscriber off (shutdown), each at the first event it has not received.
        A consumer is first handed its group's open batch (leave_group); end() seals it.

        Frames still waiting in the hand-over deque were offered to nobody:
        a subscriber with an empty queue resumes at the first of them.
        """
        nxt = self.next_lsn
        if self._pending:
            nxt = record.parse_frame(self._pending[0])[0]
        elif not nxt and engine is not None:
            nxt = self.visible(engine) + 1  # nothing drained yet: nothing offered
        for s in list(self.grouped):
            # Its group's open batch (delayed tier) becomes its own, so that end()
            # seals it and it goes out before the end message rather than never.
            self.leave_group(s)
            self.subs.add(s)
        for s in list(self.subs):
            s.cut_off(nxt, reason)


async def history(engine, from_lsn: int, upto: int, batch: int = 2000) -> AsyncIterator[Event]:
    """Events with from_lsn <= lsn <= upto read from the retained WAL (off the loop)."""
    loop = asyncio.get_running_loop()
    frames = engine.read_log(from_lsn)

    def chunk() -> list:
        try:
            return list(itertools.islice(frames, batch))
        except FileNotFoundError:
            raise Compacted(from_lsn, engine.earliest_lsn) from None

    while True:
        part = await loop.run_in_executor(None, chunk)
        if not part:
            return
        for fr in part:
            for ev in frame_events(fr.lsn, fr.type, fr.payload, fr.ts):
                if ev.lsn > upto:
                    return
                if ev.lsn >= from_lsn and not (ev.topic == KV_TOPIC and is_reserved(ev.key)):
                    yield ev


async def stream(hub: Hub, engine, topics: frozenset[str] | None, key_prefix: bytes,
                 from_lsn: int, maxlen: int) -> AsyncIterator[Event]:
    """History from `from_lsn` (0: none), then live events, each once, in LSN order.

    Raises Compacted if from_lsn is no longer retained, Lapped if the
    subscriber falls `maxlen` events behind.
    """
    pos = from_lsn
    if from_lsn:
        if from_lsn < engine.earliest_lsn:
            raise Compacted(from_lsn, engine.earliest_lsn)
        # Catch up from disk until close to live, so that the live queue
        # does not overflow while history is read.
        while hub.visible(engine) - pos > maxlen // 2:
            upto = hub.visible(engine)
            async for ev in history(engine, pos, upto):
                if (topics is None or ev.topic in topics) and ev.key.startswith(key_prefix):
                    yield ev
            pos = upto + 1
    sub = hub.subscribe(topics, key_prefix, maxlen)
    try:
        boundary = hub.visible(engine)
        if from_lsn and pos <= boundary:
            async for ev in history(engine, pos, boundary):
                if sub.wants(ev):
                    yield ev
                if sub.lapped is not None:  # cut off (shutdown) while replaying history
                    raise Lapped(ev.lsn + 1, sub.lapped.reason)
        # Everything below next_lsn was replayed or is below from_lsn: a
        # from_lsn beyond the last LSN waits for that LSN. Live (no from_lsn): after
        # the log's end, as session.go_live.
        next_lsn = max(boundary + 1, from_lsn) if from_lsn else engine.last_lsn + 1
        while True:
            try:
                ev = await sub.get()
            except Lapped as e:
                if e.resume_lsn < next_lsn:  # its queue held events history had replayed
                    raise Lapped(next_lsn, e.reason) from None
                raise
            if ev.lsn < next_lsn:
                continue  # already replayed from history
            next_lsn = ev.lsn + 1
            yield ev
    finally:
        hub.unsubscribe(sub)
