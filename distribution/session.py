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
import time

from strata.storage.errors import Compacted

from .consumer import Consumer, Shared
from .hub import Hub, history


async def run(c: Consumer, hub: Hub, engine, start_lsn: int, io) -> tuple[str, str, int]:
    """Serve `c` until it ends (cut off, superseded, shutting down); returns c.ended."""
    wake = asyncio.Event()

    def ready() -> None:
        if c.ended is None and not c.blocked and c.out:
            io.write(c.take())
            if io.paused():
                c.blocked = True
                wake.set()
        else:
            wake.set()

    c.on_ready = ready
    c.wake = wake
    try:
        if start_lsn:
            await _replay(c, hub, engine, start_lsn, io, wake)
        else:
            hub.add(c)
            c.live = True
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
                await io.drain()
                c.blocked = False
                continue
            if timeout is None:
                await wake.wait()
            else:
                try:
                    await asyncio.wait_for(wake.wait(), timeout)
                except TimeoutError:
                    pass
        return c.ended
    finally:
        hub.unsubscribe(c)
        c.on_ready = None
        c.drop_queue()


async def _replay(c: Consumer, hub: Hub, engine, from_lsn: int, io, wake: asyncio.Event) -> None:
    """History from `from_lsn`, then live with no gap and no duplicate (see hub.stream)."""
    if from_lsn < engine.earliest_lsn:
        c.end("compacted", f"LSN {from_lsn} is no longer retained; the oldest is "
                           f"{engine.earliest_lsn}", engine.earliest_lsn)
        return
    c.next_lsn = from_lsn
    pos = from_lsn

    async def send(ev) -> bool:
        while c.credit == 0 or c.blocked:
            if c.ended is not None:
                return False
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
        c.emit(Shared(ev, None))
        if c.batcher is not None and c.batch_due(time.monotonic()):
            c.seal_batch()
        if len(c.out) >= 64:
            io.write(c.take())
            if io.paused():
                c.blocked = True
        return True

    try:
        # Catch up from disk until close to live, so that the live queue does
        # not overflow while history is read.
        while engine.last_lsn - pos > c.max_queue // 2:
            upto = engine.last_lsn
            async for ev in history(engine, pos, upto):
                if c.wants(ev) and not await send(ev):
                    return
            pos = upto + 1
        hub.add(c)  # live events queue up behind the rest of history
        boundary = engine.last_lsn
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
