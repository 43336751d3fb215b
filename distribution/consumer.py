"""One subscriber of the WebSocket tiers (and of gRPC Events.Consume): its filter,
position, credit window, acknowledgements and output, as a plain object.

No sockets and no event loop here: the hub offers events (`offer`), the
transport hands in what the client said (`ack`, `credit`) and takes what is
ready to send (`take`). The drivers are server/ws.py and server/service.py.

Positions. `next_lsn` is the first LSN not taken yet: an event below it is a
duplicate (history and live overlap at the hand-over) and is dropped. On the
delayed tier the events taken last may still wait in the open batch: `sent_lsn`
is the last LSN handed to the output (`out`), the open batch excluded. `acked`
is the last LSN the client acknowledged (ack "manual", never past `sent_lsn`:
a client cannot have processed what it was not sent) or was sent (ack "auto");
a named consumer's cursor stores it.

Ending. `end` seals the open batch into `out` first, so every event below
`next_lsn` is in the output, and the resume LSN it is given (the first event not
taken) skips nothing, provided the driver writes `out` before the end message
(session.run does).

Credits. `credit` is how many more events may be sent (None: no limit, the
realtime default). Each event sent takes one; `{"op":"credit","n":N}` gives N
more; with ack "manual", acknowledging events also gives their credit back, so
at most `credits` events are ever unacknowledged.

Bounds and overflow policy. Events that cannot be sent yet (no credit, the
connection's write buffer is full, history is still being replayed) wait in
`queue`, at most `max_queue` events, and count against the shared `Budget`
(one ceiling for all subscribers together). One more, or a budget overrun,
cuts the consumer off: the queue is dropped and the client is told the LSN to
resume from, the first one it was not sent. Events are durable: nothing is
lost, the client resumes through history.

A member of a group whose write buffer is full holds the group's output instead
(`held`: the bytes of each hub drain, shared with every member, and how many
events they carry), at most `max_queue` events and against the same budget:
one append per drain, not one per event, so a stalled client costs O(1) per
commit until it is cut off. An ended consumer is detached from the hub at once
(`on_end`): nothing is offered to it any more, whether or not its driver has
finished telling the client.
"""

from __future__ import annotations

import base64
import collections
import json
import math
import struct
import time

import msgpack

JSON, MSGPACK, GRPC = "json", "msgpack", "grpc"  # GRPC: the driver builds messages itself
TIERS = ("realtime", "delayed", "historical")
EVENT_OVERHEAD = 96  # bytes a queued event costs beyond its key and value (measured)
MAX_BATCH_BYTES = 512 << 10  # a batch message stays under clients' usual 1 MiB message limit


def ws_header(opcode: int, n: int) -> bytes:
    """An unmasked, final WebSocket frame header (server to client, RFC 6455 5.2)."""
    if n < 126:
        return bytes((0x80 | opcode, n))
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n)
    return struct.pack("!BBQ", 0x80 | opcode, 127, n)


_topic_json: dict[str, bytes] = {}


def _json_topic(topic: str) -> bytes:
    t = _topic_json.get(topic)
    if t is None:
        t = json.dumps(topic).encode()
        if len(_topic_json) < 10_000:
            _topic_json[topic] = t
    return t


class Shared:
    """One event's encodings, made once and shared by every subscriber that gets it."""

    __slots__ = ("ev", "ts", "size", "_j", "_m", "_jf", "_mf")

    def __init__(self, ev) -> None:
        self.ev = ev
        self.ts = ev.ts  # Unix ms the write was committed (its WAL frame's); None: unknown
        self.size = len(ev.key) + len(ev.value) + EVENT_OVERHEAD
        self._j = self._m = self._jf = self._mf = None

    def body(self, fmt: str) -> bytes:
        if fmt == JSON:
            b = self._j
            if b is None:
                ev = self.ev
                b = self._j = b'{"op":"event","lsn":%d,"ts":%s,"topic":%s,"key":"%s","value":%s}' % (
                    ev.lsn, b"null" if self.ts is None else b"%d" % self.ts, _json_topic(ev.topic),
                    base64.b64encode(ev.key),
                    b"null" if ev.deleted else b'"' + base64.b64encode(ev.value) + b'"')
            return b
        b = self._m
        if b is None:
            ev = self.ev
            b = self._m = msgpack.packb({"op": "event", "lsn": ev.lsn, "ts": self.ts,
                                         "topic": ev.topic, "key": ev.key,
                                         "value": None if ev.deleted else ev.value})
        return b

    def frame(self, fmt: str) -> bytes:
        if fmt == JSON:
            f = self._jf
            if f is None:
                b = self.body(JSON)
                f = self._jf = ws_header(0x1, len(b)) + b
            return f
        f = self._mf
        if f is None:
            b = self.body(MSGPACK)
            f = self._mf = ws_header(0x2, len(b)) + b
        return f


def encode_message(fmt: str, msg: dict) -> bytes:
    """A control message (error, subscribed) as a message body."""
    if fmt == JSON:
        return json.dumps(msg, separators=(",", ":")).encode()
    return msgpack.packb(msg)


def batch_body(fmt: str, bodies: list[bytes]) -> bytes:
    """{"op":"batch","events":[...]} around event bodies encoded once (no re-encoding)."""
    if fmt == JSON:
        return b'{"op":"batch","events":[' + b",".join(bodies) + b"]}"
    n = len(bodies)
    head = bytes((0x90 | n,)) if n < 16 else struct.pack(">BH", 0xDC, n) if n < 65536 \
        else struct.pack(">BI", 0xDD, n)
    return b"\x82\xa2op\xa5batch\xa6events" + head + b"".join(bodies)


def frame_message(fmt: str, body: bytes) -> bytes:
    return ws_header(0x1 if fmt == JSON else 0x2, len(body)) + body


class Budget:
    """One memory ceiling for every subscriber's queued events together."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self.used = 0
        self.cut_offs = 0


class Batcher:
    """The delayed tier's adaptive window (the seeds' adaptive batcher).

    A batch goes out when it holds `size` events or its oldest event has
    waited `window` seconds. After each batch the throughput is measured
    (smoothed, alpha 0.2) and both adapt between their bounds: the size to
    what arrives in one latency target at that rate, the window to the time
    that size takes to fill (never past the latency target) — a slow stream
    gets full windows of few events, a fast one large batches sent well
    before the window ends.
    """

    def __init__(self, window_s: float, min_window_s: float = 0.001, min_size: int = 1,
                 max_size: int = 1000, alpha: float = 0.2) -> None:
        self.max_window = max(window_s, min_window_s)
        self.min_window = min_window_s
        self.min_size = min_size
        self.max_size = max_size
        self.alpha = alpha
        self.window = self.max_window
        self.size = max_size
        self.rate = 0.0  # events/s, smoothed
        self._last: float | None = None
        self.batches = 0

    def sent(self, n: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        dt = self.max_window if self._last is None else max(now - self._last, 1e-6)
        self._last = now
        self.batches += 1
        rate = n / dt
        self.rate = rate if self.batches == 1 else self.rate + self.alpha * (rate - self.rate)
        size = min(self.max_size, max(self.min_size, math.ceil(self.rate * self.max_window - 1e-9)))
        self.size = size
        want = size / self.rate if self.rate > 0 else self.max_window
        want = min(self.max_window, max(self.min_window, want))
        self.window += self.alpha * (want - self.window)


class Consumer:
    def __init__(self, *, fmt: str = JSON, tier: str = "realtime",
                 topics: frozenset[str] | None = None, prefix: bytes = b"",
                 ack: str = "auto", credits: int | None = None, window_ms: int = 100,
                 name: str = "", max_queue: int = 10_000, budget: Budget | None = None,
                 max_batch: int = 1000) -> None:
        self.fmt = fmt
        self.tier = tier
        self.topics = topics
        self.prefix = prefix
        self.manual = ack == "manual"
        self.credit = credits  # None: unlimited
        self.name = name
        self.max_queue = max_queue
        self.budget = budget or Budget(1 << 62)
        self.next_lsn = 0
        self.start_lsn = 0  # the first LSN it was to get (session.position / go_live)
        self.acked = 0
        self.sent = 0  # events sent
        self.live = False  # False while history is replayed: live offers wait in the queue
        self.blocked = False  # the transport's write buffer is full
        self.queue: collections.deque[Shared] = collections.deque()
        self.queued_bytes = 0
        # A blocked group member's share of the group's output: (bytes, events, last LSN)
        # per drain, in order, all after next_lsn; counted in held_events/queued_bytes.
        self.held: collections.deque[tuple[bytes, int, int]] = collections.deque()
        self.held_events = 0
        self._window: collections.deque[int] | None = \
            collections.deque() if self.manual and self.credit is not None else None
        self.out: list[bytes] = []
        self.batch: list[bytes] = []
        self.batch_bytes = 0
        self.batch_since = 0.0
        self.batch_lsn = 0  # the first LSN in the open batch (meaningful while batch is set)
        self.batcher = Batcher(window_ms / 1000, max_size=max_batch) if tier == "delayed" else None
        self.ended: tuple[str, str, int] | None = None  # (code, message, resume_lsn)
        self.on_ready = None  # callable: there is output, or the consumer ended (set by driver)
        self.wake = None  # the driver's asyncio.Event, if any
        self.on_end = None  # callable: detach from the hub (set by Hub.add)

    # -- hub side -----------------------------------------------------------------

    def wants(self, ev) -> bool:
        return (self.topics is None or ev.topic in self.topics) and ev.key.startswith(self.prefix)

    def offer(self, ev, shared: Shared) -> None:
        if self.ended is not None or ev.lsn < self.next_lsn:
            return
        if self.live and not self.queue and not self.blocked and self.credit != 0:
            self.emit(shared)
            return
        if len(self.queue) >= self.max_queue:
            self.cut_off(ev.lsn, f"fell {self.max_queue} events behind")
            return
        b = self.budget
        if b.used + shared.size > b.ceiling:
            b.cut_offs += 1
            self.cut_off(ev.lsn, "the server's subscriber memory is full")
            return
        self.queue.append(shared)
        self.queued_bytes += shared.size
        b.used += shared.size

    def flush(self) -> None:
        """End of a hub drain: tell the driver there is output."""
        if (self.out or self.batch or self.ended) and self.on_ready is not None:
            self.on_ready()

    def cut_off(self, next_lsn: int, reason: str) -> None:
        """Stop: the client resumes from the first event it was not sent (`next_lsn`,
        the first LSN not offered, when it was sent and offered nothing)."""
        self.end("lapped", reason, self.first_unsent(next_lsn))

    def end(self, code: str, message: str, resume_lsn: int) -> None:
        """Stop with (code, message, resume_lsn). The open delayed batch is sealed into
        `out` first: the driver writes `out`, then the end message, so a resume LSN
        of `first_unsent()` skips no event of that batch. Once only: later calls are
        ignored."""
        if self.ended is not None:
            return
        if self.batch:
            self.seal_batch()
        self.ended = (code, message, resume_lsn)
        self.drop_queue()
        if self.on_end is not None:
            self.on_end()  # offered nothing more from now on: O(0) per commit
        if self.on_ready is not None:
            self.on_ready()

    def drop_queue(self) -> None:
        self.budget.used -= self.queued_bytes
        self.queued_bytes = 0
        self.queue.clear()
        self.held.clear()
        self.held_events = 0

    def hold(self, data: bytes, n: int, first: int, last: int) -> bool:
        """A group member whose transport is full keeps a drain's output (`n` events,
        LSNs `first`..`last`, bytes shared with the other members) for later. Over
        `max_queue` events or the budget it is cut off at the first event it was not
        sent instead; returns False then."""
        if self.held_events + n > self.max_queue:
            self.cut_off(first, f"fell {self.max_queue} events behind")
            return False
        b = self.budget
        if b.used + len(data) > b.ceiling:
            b.cut_offs += 1
            self.cut_off(first, "the server's subscriber memory is full")
            return False
        self.held.append((data, n, last))
        self.held_events += n
        self.queued_bytes += len(data)
        b.used += len(data)
        return True

    def first_unsent(self, offered: int = 0) -> int:
        if self.next_lsn:
            return self.next_lsn
        return self.queue[0].ev.lsn if self.queue else offered

    # -- sending --------------------------------------------------------------------

    def emit(self, shared: Shared) -> None:
        """Send one event now (the caller checked credit and order)."""
        lsn = shared.ev.lsn
        grpc = self.fmt == GRPC
        if self.batcher is None:
            self.out.append(shared if grpc else shared.frame(self.fmt))
        else:
            if not self.batch:
                self.batch_since = time.monotonic()
                self.batch_lsn = lsn
            body = shared if grpc else shared.body(self.fmt)
            self.batch.append(body)
            self.batch_bytes += shared.size if grpc else len(body)
            if len(self.batch) >= self.batcher.size or self.batch_bytes >= MAX_BATCH_BYTES:
                self.seal_batch()  # full: it goes now, the window only bounds the wait
        self.next_lsn = lsn + 1
        self.sent += 1
        if self.credit is not None:
            self.credit -= 1
        if self.manual:
            if self._window is not None:
                self._window.append(lsn)
        elif self.batcher is None:
            self.acked = lsn
        # ack "auto" on the delayed tier: acknowledged when its batch is sealed for sending

    def pump(self) -> None:
        """Move held and queued events out while credit and the transport allow."""
        q = self.queue
        b = self.budget
        held = self.held
        while held and not self.blocked and self.ended is None:
            # Held output of a group (no credit limit: groups have none), in order.
            data, n, last = held.popleft()
            self.held_events -= n
            self.queued_bytes -= len(data)
            b.used -= len(data)
            self.out.append(data)
            self.next_lsn = last + 1
            self.sent += n
            if not self.manual:
                self.acked = last
        while q and self.live and not self.blocked and self.credit != 0 and self.ended is None:
            s = q.popleft()
            self.queued_bytes -= s.size
            b.used -= s.size
            if s.ev.lsn >= self.next_lsn:
                self.emit(s)

    def batch_due(self, now: float) -> bool:
        bt = self.batcher
        return bool(self.batch) and (len(self.batch) >= bt.size or self.batch_bytes >= MAX_BATCH_BYTES
                                     or now - self.batch_since >= bt.window)

    def seal_batch(self, now: float | None = None) -> None:
        """Close the delayed tier's current batch into one message."""
        if not self.batch:
            return
        n = len(self.batch)
        if self.fmt == GRPC:
            self.out.extend(self.batch)
        else:
            self.out.append(frame_message(self.fmt, batch_body(self.fmt, self.batch)))
        self.batch = []
        self.batch_bytes = 0
        self.batcher.sent(n, now)
        if not self.manual:
            self.acked = self.next_lsn - 1

    def take(self):
        """What to write now: framed WebSocket messages as bytes (b"" if none), or for
        GRPC the list of Shared events."""
        out = self.out
        if not out:
            return b""
        self.out = []
        if self.fmt == GRPC:
            return out
        return out[0] if len(out) == 1 else b"".join(out)

    # -- client side ----------------------------------------------------------------

    @property
    def sent_lsn(self) -> int:
        """The last LSN handed to the output: `next_lsn - 1`, less the open delayed
        batch (its events are taken but not sent until it is sealed)."""
        return self.batch_lsn - 1 if self.batch else self.next_lsn - 1

    def ack(self, lsn: int) -> None:
        """Acknowledge everything up to `lsn` (beyond what was sent: up to what was sent,
        `sent_lsn`; an event of the open batch was not sent, whatever the client says)."""
        lsn = min(lsn, self.sent_lsn)
        if lsn <= self.acked:
            return
        self.acked = lsn
        w = self._window
        if w is not None:
            n = 0
            while w and w[0] <= lsn:
                w.popleft()
                n += 1
            self.credit += n
        self.pump()
        if self.on_ready is not None:
            self.on_ready()

    def grant(self, n: int) -> None:
        if self.credit is not None:
            self.credit += n
        self.pump()
        if self.on_ready is not None:
            self.on_ready()

    @property
    def unacked(self) -> int:
        return len(self._window) if self._window is not None else 0


class Group:
    """Subscribers that get exactly the same stream, served as one.

    Live subscribers with the same filter, tier, format and window and no
    credit limit receive identical bytes: the hub offers each event to the
    group once, the group frames (or batches) it once, and each member's
    transport gets the same bytes once per hub drain. Fan-out then costs one
    filter check and one append per event, plus one write per member per
    drain, instead of that work per event and member.

    A member whose transport is full stays in the group and holds each flush's
    bytes (Consumer.hold: one append per drain, the bytes shared) until its
    driver can write again or it holds `max_queue` events; then it is cut off
    at the first event it holds, and leaves the group at once.
    """

    def __init__(self, key: tuple, proto: Consumer) -> None:
        self.key = key
        self.topics, self.prefix, self.fmt = proto.topics, proto.prefix, proto.fmt
        self.members: list[Consumer] = []
        self.out: list[bytes] = []
        self.events: list[Shared] = []  # this drain's (realtime) or this batch's (delayed)
        self.batcher = Batcher(proto.batcher.max_window) if proto.batcher is not None else None
        self.batch: list[bytes] = []
        self.batch_bytes = 0
        self.batch_since = 0.0
        self.timer = None  # delayed tier: the loop's handle that seals the batch

    @staticmethod
    def key_of(c: Consumer) -> tuple | None:
        if c.credit is not None or c.fmt == GRPC or not c.live or c.queue or c.blocked \
                or c.held or c.batch or c.ended is not None:
            return None
        w = c.batcher.max_window if c.batcher is not None else 0
        return (c.topics, c.prefix, c.fmt, c.tier, w)

    def wants(self, ev) -> bool:
        return (self.topics is None or ev.topic in self.topics) and ev.key.startswith(self.prefix)

    def offer(self, ev, shared: Shared) -> None:
        self.events.append(shared)
        if self.batcher is None:
            self.out.append(shared.frame(self.fmt))
            return
        if not self.batch:
            self.batch_since = time.monotonic()
        body = shared.body(self.fmt)
        self.batch.append(body)
        self.batch_bytes += len(body)
        if len(self.batch) >= self.batcher.size or self.batch_bytes >= MAX_BATCH_BYTES:
            self.seal()

    def seal(self, now: float | None = None) -> None:
        if self.batch:
            n = len(self.batch)
            self.out.append(frame_message(self.fmt, batch_body(self.fmt, self.batch)))
            self.batch, self.batch_bytes = [], 0
            self.batcher.sent(n, now)

    def flush(self) -> None:
        """Hand what is ready to every member (end of a hub drain, or a sealed batch)."""
        if not self.out:
            if self.batcher is None:
                self.events = []
            return
        data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
        self.out = []
        events = self.events
        pending = len(self.batch)
        sent = events[:len(events) - pending] if pending else events
        self.events = events[len(events) - pending:] if pending else []
        if not sent:
            return
        first, last = sent[0].ev.lsn, sent[-1].ev.lsn
        n = len(sent)
        for m in list(self.members):
            if m.ended is not None:
                if m in self.members:
                    self.members.remove(m)
                continue
            if m.blocked or m.held:
                # Behind its own earlier output: wait in order. A cut-off detaches it
                # (on_end) from the group.
                m.hold(data, n, first, last)
                continue
            m.out.append(data)
            m.next_lsn = last + 1
            m.sent += n
            if not m.manual:
                m.acked = last
            if m.on_ready is not None:
                m.on_ready()
