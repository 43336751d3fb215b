"""Drives one Consumer over one transport: history, hand-over to live, credits,
the delayed tier's timer, the write buffer. Shared by the WebSocket tiers
(server/ws.py) and gRPC Events.Consume (server/service.py).

The transport is any object with `write(data)`, `paused()` (its write buffer
is over the high-water mark) and `async drain()`. Realtime events are written
by the hub's drain itself (no task switch per event); this task writes what
waited (credit, history, a full buffer) and the delayed tier's batches.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time

from strata.storage.errors import Compacted

from .consumer import TIERS, Consumer, Shared
from .cursors import MAX_NAME
from .hub import Hub, history


class BadRequest(ValueError):
    """A well-formed message asking for something invalid: closed with 4003."""


MAX_TOPICS = 64
MAX_CREDITS = 1 << 20


def int_field(msg: dict, name: str, low: int, high: int, default=None):
    v = msg.get(name, default)
    if v is None:
        return default
    if type(v) is not int or not low <= v <= high:
        raise BadRequest(f"{name} must be an integer {low} .. {high}")
    return v


def parse_request(msg: dict) -> dict:
    """A subscribe request (docs/protocol.md) checked and with its defaults."""
    tier = msg.get("tier", "realtime")
    if tier not in TIERS:
        raise BadRequest(f"tier must be one of {', '.join(TIERS)}")
    topics = msg.get("topics")
    if topics is not None:
        if not isinstance(topics, list) or len(topics) > MAX_TOPICS or \
                not all(isinstance(t, str) and t for t in topics):
            raise BadRequest(f"topics must be a list of at most {MAX_TOPICS} non-empty strings")
        topics = frozenset(topics) or None
    prefix = msg.get("prefix") or b""
    if isinstance(prefix, str):
        try:
            prefix = base64.b64decode(prefix, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("prefix must be base64") from None
    elif not isinstance(prefix, bytes):
        raise BadRequest("prefix must be base64 text (or bytes in msgpack)")
    name = msg.get("consumer") or ""
    if not isinstance(name, str) or len(name.encode()) > MAX_NAME:
        raise BadRequest(f"consumer must be a name of 1 .. {MAX_NAME} bytes")
    ack = msg.get("ack", "auto")
    if ack not in ("auto", "manual"):
        raise BadRequest('ack must be "auto" or "manual"')
    return {"tier": tier, "topics": topics, "prefix": prefix, "consumer": name, "ack": ack,
            "from_lsn": int_field(msg, "from_lsn", 0, 1 << 63, 0),
            "credits": int_field(msg, "credits", 0, MAX_CREDITS),
            "window_ms": int_field(msg, "window_ms", 1, 60_000, 100)}


async def position(c: Consumer, engine, cursors, from_lsn: int) -> int:
    """Where delivery starts: `from_lsn` if given; else after a named consumer's
    cursor; else the oldest retained LSN (historical tier) or live (0).
    A named consumer takes its name over from a subscription that holds it."""
    start = from_lsn
    if c.name:
        prev = cursors.claim(c.name, c)
        stored = await cursors.load(c.name)
        if prev is not None:
            stored = max(stored, prev.acked)
            prev.end("superseded", f"consumer {c.name!r} subscribed again elsewhere",
                     prev.first_unsent(prev.acked + 1))
        c.acked = stored
        if not start and stored:
            start = stored + 1
        elif not start and prev is not None and prev.start_lsn:
            # Taken over before any acknowledgement was saved: from where the previous
            # holder started, so nothing it was sent and never acknowledged is skipped.
            start = prev.start_lsn
    if not start and c.tier == "historical":
        start = max(1, engine.earliest_lsn)
    c.start_lsn = start
    return start


def go_live(c: Consumer, hub: Hub, engine) -> int:
    """Start a live subscription (no start LSN) now: every event after the log's
    current end, and only those (a cluster node's feed may still offer older ones it
    reads back). Registered at once, before the caller answers `subscribed`, so that
    nothing committed after the answer's LSN is missed. Returns that LSN."""
    last = engine.last_lsn
    c.next_lsn = max(c.next_lsn, last + 1)
    c.start_lsn = c.next_lsn
    c.live = True
    hub.add(c)
    return last


async def run(c: Consumer, hub: Hub, engine, start_lsn: int, io) -> tuple[str, str, int]:
    """Serve `c` until it ends (cut off, superseded, shutting down); returns c.ended."""
    wake = asyncio.Event()

    def ready() -> None:
        if c.ended is None and not c.blocked and c.out:
            io.write(c.take())
            if io.paused():
                c.blocked = True
            if c.blocked or c.batch:  # the loop below drains, or times the open batch
                wake.set()
        else:
            wake.set()

    c.on_ready = ready
    c.wake = wake
    try:
        if start_lsn:
            await _replay(c, hub, engine, start_lsn, io, wake)
        elif not c.live:
            go_live(c, hub, engine)
        while c.ended is None:
            wake.clear()
            c.pump()
            timeout = None
            if c.batcher is not None and c.batch:
                now = time.monotonic()
                if c.batch_due(now):
                    c.seal_batch(now)
                    continue
                timeout = c.batch_since + c.batcher.window - now
            data = c.take()
            if data:
                io.write(data)
            if io.paused():
                c.blocked = True
                await _drained_or_ended(c, io, wake)
                if c.ended is None:
                    c.blocked = False
                continue
            if c.blocked:
                # ready() found the buffer over its mark and woke this task, and the
                # buffer drained before the task ran: nothing else clears the flag (the
                # hub only holds a blocked member's output), so clear it here and send
                # what was held. Left set, the subscriber waited for good (bench
                # distribution, 10 realtime readers with SO_SNDBUF fixed: 3 runs in 3).
                c.blocked = False
                continue
            if not c.queue and c.live:
                hub.promote(c)  # caught up: served with its group again
            if timeout is None:
                await wake.wait()
            else:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
                # cancellation that comes as the wake-up does, and the driver then
                # outlives its unsubscribe (which waited for it for ever).
                try:
                    async with asyncio.timeout(timeout):
                        await wake.wait()
                except TimeoutError:
                    pass
        # Ended: what it counts as sent (end() sealed the open batch into `out`, and
        # what a full buffer held back) goes out before the caller's end message, so
        # the resume LSN skips nothing. Past the buffer's mark if need be: at most one
        # batch more, and the connection closes next.
        data = c.take()
        if data:
            io.write(data)
        return c.ended
    finally:
        hub.unsubscribe(c)
        c.on_ready = None
        c.drop_queue()


async def _drained_or_ended(c: Consumer, io, wake: asyncio.Event) -> None:
    """Wait until the transport's write buffer drains, or `c` ends (cut off, superseded,
    shutting down): a client that does not read must not keep its subscription, and
    the hub's work for it, alive. Raises what io.drain raises."""
    drain = asyncio.ensure_future(io.drain())
    try:
        while not drain.done() and c.ended is None:
            wake.clear()
            woken = asyncio.ensure_future(wake.wait())
            try:
                await asyncio.wait((drain, woken), return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
        if drain.done():
            drain.result()
    finally:
        if not drain.done():
            drain.cancel()


async def _replay(c: Consumer, hub: Hub, engine, from_lsn: int, io, wake: asyncio.Event) -> None:
    """History from `from_lsn`, then live with no gap and no duplicate (see hub.stream)."""
    if from_lsn < engine.earliest_lsn:
        c.end("compacted", f"LSN {from_lsn} is no longer retained; the oldest is "
                           f"{engine.earliest_lsn}", engine.earliest_lsn)
        return
    c.next_lsn = from_lsn
    pos = from_lsn

    def flush() -> None:
        if c.batcher is not None and c.batch:
            c.seal_batch()
        data = c.take()
        if data:
            io.write(data)
            if io.paused():
                c.blocked = True

    async def send(ev) -> bool:
        while c.credit == 0 or c.blocked:
            if c.ended is not None:
                return False
            flush()  # what waits for the credit must have been sent first
            wake.clear()
            if c.blocked:
                await io.drain()
                c.blocked = False
            else:
                await wake.wait()
        if c.ended is not None:
            return False
        if ev.lsn < c.next_lsn:
            return True
        c.emit(Shared(ev))
        if c.batcher is not None and c.batch_due(time.monotonic()):
            c.seal_batch()
        if len(c.out) >= 64:
            flush()
        return True

    try:
        # Catch up from disk until close to live, so that the live queue does
        # not overflow while history is read.
        while hub.visible(engine) - pos > c.max_queue // 2:
            upto = hub.visible(engine)
            async for ev in history(engine, pos, upto):
                if c.wants(ev) and not await send(ev):
                    return
            pos = upto + 1
        hub.add(c)  # live events queue up behind the rest of history
        boundary = hub.visible(engine)
        if pos <= boundary:
            async for ev in history(engine, pos, boundary):
                if c.wants(ev) and not await send(ev):
                    return
        c.next_lsn = max(c.next_lsn, boundary + 1)
    except Compacted as e:
        c.end("compacted", str(e), e.earliest_lsn)
        return
    c.live = True
    c.pump()
    hub.promote(c)
