"""The committed feed of a cluster node: durable frames held until they are committed.

On a single node every durable frame is acknowledged and goes straight from the
engine's commit listener to the hub and the rings. In a cluster a frame can be
durable on this node and still be cut: a master that loses its quorum writes a
tail no other node has, and a replica holds frames the master had not
committed. Subscribers must never see such a frame, so a cluster node puts
this feed between the engine and its sinks (the hub, the rings):

- `on_commit` (the committing thread) appends the group's frames to a bounded
  queue and never waits;
- `set_limit(lsn)` (the loop; replication/cluster.py calls it as the commit
  point moves: quorum-durable on a master, what the master said on a replica)
  hands every frame whose last LSN is at or below the limit to the sinks, in
  LSN order, on the loop. A master in async mode acknowledges at local
  durability and sets no limit (`ALL`): its frames go on as they come;
- `reset()`, before a replica's log is cut (or replaced by a checkpoint), drops
  what is held; `attach(engine)` of the reopened engine reads what its log
  holds past `released` back when the limit passes it;
- `released` is the last LSN handed on: history replay stops there, so that
  history and the live feed meet with nothing uncommitted in between.

Overflow policy: the queue holds at most `max_frames` frames and `max_bytes`
bytes. Past that, frames are not kept but remembered as a gap (first and last
LSN), which is read back from the WAL (off the loop) when the limit passes
it: nothing is dropped, and the commit path stays O(1).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable

from strata.storage import Compacted, StorageError, record

log = logging.getLogger("strata.distribution")

ALL = 1 << 62  # limit of a node whose durable frames are all acknowledged
READ_BACK_BYTES = 4 << 20  # a gap is read back this much at a time


class CommittedFeed:
    def __init__(self, loop: asyncio.AbstractEventLoop, engine: Callable,
                 sinks: list[Callable[[list[bytes]], None]],
                 wanted: Callable[[], bool] = lambda: True,
                 lost: Callable[[int, int, str], None] | None = None,
                 max_frames: int = 100_000, max_bytes: int = 64 << 20) -> None:
        self._loop = loop
        self._engine = engine  # the engine now in service (a replica's may be reopened)
        self.sinks = sinks
        self._wanted = wanted  # does any sink listen? If not, a gap is skipped, not read
        self._lost = lost  # (first, last, why): a gap the WAL no longer holds
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.limit = 0
        self.released = 0
        # Entries [first LSN, last LSN, frame] in LSN order; frame None marks a gap
        # (frames not kept for lack of room), read back from the WAL when released.
        self._held: collections.deque[list] = collections.deque()
        self._frames = 0
        self._bytes = 0
        self._lock = threading.Lock()  # the committing thread against the loop
        self._scheduled = False
        self._pump: asyncio.Task | None = None
        self._epoch = 0  # moves at every reset and attach: a read begun before is stale
        self.stats = {"gaps": 0, "read_back": 0, "lost": 0}

    @property
    def held(self) -> int:
        """Frames waiting for the commit point (gaps not counted)."""
        return self._frames

    # -- engine side (the committing thread) ---------------------------------------

    def on_commit(self, frames: list[bytes]) -> None:
        """Engine commit listener: hold the frames until the limit passes them."""
        with self._lock:
            held = self._held
            for f in frames:
                first, last = record.frame_span(f)
                if held and held[-1][2] is None:
                    held[-1][1] = last  # after a gap, frames join it until it is read
                elif self._frames < self.max_frames and self._bytes + len(f) <= self.max_bytes:
                    held.append([first, last, f])
                    self._frames += 1
                    self._bytes += len(f)
                else:
                    held.append([first, last, None])
                    self.stats["gaps"] += 1
            if self._scheduled or not held or held[0][0] > self.limit:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._kick)
        except RuntimeError:
            pass  # the loop is closed: shutting down

    # -- loop side -------------------------------------------------------------------

    def attach(self, engine) -> None:
        """An engine (re)opened with its log up to engine.last_lsn is in service: what
        that log holds past `released` is read from it when the limit passes it."""
        base = engine.last_lsn  # read before the lock: the engine's own locks come first
        earliest = engine.earliest_lsn
        with self._lock:
            self._epoch += 1
            while self._held and self._held[0][1] <= base:
                self._pop()
            # What the log no longer retains cannot be read by anyone (history neither).
            start = max(self.released + 1, earliest or base + 1)
            if base >= start:
                self._held.appendleft([start, base, None])
            self.released = max(self.released, start - 1)
        self._kick()

    def set_limit(self, lsn: int) -> None:
        """Frames up to `lsn` may go on (ALL: every durable frame). It moves back only
        from ALL, when a master in async mode steps down."""
        if lsn == self.limit:
            return
        self.limit = lsn
        self._kick()

    def reset(self) -> None:
        """The log is about to be cut or replaced by a checkpoint (a replica): forget
        every held frame. Nothing past the limit was released, and `attach` of the
        reopened engine puts back, as a gap to read, what its log still holds."""
        with self._lock:
            self._epoch += 1
            self._held.clear()
            self._frames = self._bytes = 0

    def _pop(self) -> list:
        e = self._held.popleft()
        if e[2] is not None:
            self._frames -= 1
            self._bytes -= len(e[2])
        return e

    def _kick(self) -> None:
        self._scheduled = False
        if self._pump is not None and not self._pump.done():
            return  # reading a gap back: it hands on what follows when done
        if self._release() is not None:
            self._pump = self._loop.create_task(self._run())

    def _release(self) -> tuple[int, int] | None:
        """Hand on the frames the limit passed, up to the first gap; that gap's range
        to read back (up to the limit), if the limit reaches into it."""
        out: list[bytes] = []
        gap = None
        last = 0
        with self._lock:
            held, limit = self._held, self.limit
            while held and held[0][0] <= limit:
                if held[0][2] is None:
                    gap = (held[0][0], min(held[0][1], limit))
                    break
                if held[0][1] > limit:
                    break
                _, last, frame = self._pop()
                out.append(frame)
        if out:
            self._deliver(out, last)
        return gap

    async def _run(self) -> None:
        """Read gaps back, in order, with what follows them, until the limit is reached.
        The gap is looked up again each time: the limit may move during a read."""
        while (gap := self._release()) is not None:
            limit = self.limit
            if not await self._read_back(*gap) and self.limit == limit:
                return  # the limit is inside a frame: the next set_limit starts again

    async def _read_back(self, first: int, last: int) -> bool:
        """Hand on the whole frames within first..last, read from the WAL off the loop;
        False if nothing could be."""
        epoch = self._epoch
        if not self._wanted():
            frames, reached = [], last  # nobody listens: history covers it
        else:
            frames, reached = await self._read_frames(first, last)
        with self._lock:
            held = self._held
            if self._epoch != epoch:
                return True  # reset or attached meanwhile: look again
            if not held or held[0][2] is not None or held[0][0] != first:
                return True
            if reached >= held[0][1]:
                self._pop()
            elif reached >= first:
                held[0][0] = reached + 1
            else:
                return False  # the limit is inside its first frame: wait for it to move
        if frames:
            self._deliver(frames, reached)
        else:
            self.released = max(self.released, reached)
        return True

    async def _read_frames(self, first: int, last: int) -> tuple[list[bytes], int]:
        eng = self._engine()

        def read() -> tuple[list[bytes], bool]:
            """The frames, and whether the log goes on past them (False: it ended)."""
            out = []
            size = 0
            it = eng.read_log(first)
            try:
                for fr in it:
                    f_first, f_last = record.frame_span(fr.raw)
                    if f_last > last or size >= READ_BACK_BYTES:
                        return out, True
                    if f_first >= first:
                        out.append(bytes(fr.raw))
                        size += len(fr.raw)
            finally:
                it.close()
            return out, False

        if eng is None:
            return [], first - 1  # being reopened: attach() starts the pump again
        epoch = self._epoch
        try:
            frames, more = await self._loop.run_in_executor(None, read)
        except (StorageError, OSError) as e:  # Compacted, Corruption, a closed engine
            if self._epoch != epoch:
                return [], first - 1  # closed for a reset: the caller looks again
            why = str(e)
            if isinstance(e, Compacted) and first < e.earliest_lsn <= last:
                last = e.earliest_lsn - 1  # the rest is still there: read next
        else:
            if frames:
                self.stats["read_back"] += len(frames)
                return frames, record.frame_span(frames[-1])[1]
            if more or eng.last_lsn < last:
                # The limit is inside the gap's first frame (commit points fall on frame
                # ends, so only for a moment), or that frame is not written yet.
                return [], first - 1
            why = f"the log holds nothing from LSN {first} (earliest {eng.earliest_lsn})"
        self.stats["lost"] += 1
        log.error("events %d..%d could not be read back from the log: %s", first, last, why)
        if self._lost is not None:
            self._lost(first, last, why)
        return [], last

    def _deliver(self, frames: list[bytes], last: int) -> None:
        """Hand frames on to every sink; `last` is the last LSN they carry."""
        for sink in self.sinks:
            try:
                sink(frames)
            except Exception:
                log.exception("a committed-feed sink failed")
        self.released = max(self.released, last)
