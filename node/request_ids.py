"""Request ids: a retried write is answered with its first LSN, never written twice.

A write's request id travels in the same WAL frame as the write (storage/record.py),
so it is durable and replicated with it. Every node keeps a table of id -> LSN of the
op that carries it, and fills it from its own log only: at start and after its log is
cut or replaced (`follow`, from `Engine.recent_request_ids`), and from every frame it
commits or applies after that (the engine's commit listener, `on_commit`). A node that
becomes master therefore knows the ids of every write its log holds, whoever took the
write; a retry of one of them is answered with its LSN once that LSN is committed
(`settle`), like the write itself would have been.

Invariant: an id in the table names a write in this node's log (or one that was
committed before the log was replaced); `follow` forgets every id when the log is
cut or replaced.

Entries expire by count (the newest `capacity` are kept) and by age (`ttl_s` after
their write); docs/operations.md, "Request ids", states the resulting window.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable

from strata.storage import Engine, record
from strata_client.limits import MAX_REQUEST_ID_CHARS

from .errors import InvalidInput


class RequestIds:
    """The table of request ids and the writes in flight under them.

    Runs on the event loop, except `on_commit`, which any thread may call.
    `settle(lsn)` returns once a write at `lsn` may be acknowledged (the cluster's
    commit point; None: at once) and raises if that is unknown (no longer master).
    """

    def __init__(self, capacity: int = 100_000, ttl_s: float = 900.0,
                 settle: Callable[[int], Awaitable[None]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s  # 0: no expiry by age
        self._settle = settle
        self._clock = clock
        # id -> (LSN, clock time of the write), oldest first
        self._done: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future] = {}  # tasks, or futures of ops
        # Frames committed on the engine's thread, waiting for the loop (`_drain`).
        self._frames: collections.deque[list[bytes]] = collections.deque()
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # ----------------------------------------------------------------- the table

    def configure(self, capacity: int, ttl_s: float) -> None:
        """New bounds (SIGHUP); applied to what is remembered at once."""
        self.capacity, self.ttl_s = capacity, ttl_s
        self._expire()

    def follow(self, engine: Engine, seen: Iterable[tuple[str, int, float]]) -> None:
        """Make the table `engine`'s log's: forget every id, take `seen` (what
        `engine.recent_request_ids` read, oldest first), and record the ids of every
        frame the engine commits or applies from now on.

        REQUIRES: on the loop, and no frame committed to `engine` between reading
        `seen` and this call (the daemon calls it before the engine is in service).
        """
        self._loop = asyncio.get_running_loop()
        self._frames.clear()  # frames of the engine this one replaces
        self._done.clear()
        now, wall = self._clock(), time.time()
        for rid, lsn, written in seen:
            self._record(rid, lsn, now - max(0.0, wall - written), now)
        self._expire()
        engine.add_commit_listener(self.on_commit)

    def on_commit(self, frames: list[bytes]) -> None:
        """Engine commit listener: on the committing thread under the engine's mutex,
        so it only queues the frames for the loop. The loop decodes them before it
        runs anything the same commit woke (callbacks run in order): a write's id is
        in the table before the write's own task can finish."""
        self._frames.append(frames)
        if not self._scheduled:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: the daemon is gone
                pass

    def _drain(self) -> None:
        # Cleared before reading: frames queued from here on schedule another drain.
        self._scheduled = False
        now = self._clock()
        frames = self._frames
        while frames:
            for f in frames.popleft():
                lsn, _, ftype, payload = record.parse_frame(f)
                for rid, op_lsn in record.decode_ids(ftype, lsn, payload):
                    self._record(rid, op_lsn, now, now)
        self._expire()

    def _record(self, rid: str, lsn: int, at: float, now: float) -> None:
        """Remember rid -> lsn unless rid is remembered already: the first LSN wins."""
        old = self._done.get(rid)
        if old is not None:
            if not self._expired(old[1], now):
                return
            del self._done[rid]
        self._done[rid] = (lsn, at)

    def _expired(self, at: float, now: float) -> bool:
        return self.ttl_s > 0 and now - at > self.ttl_s

    def _expire(self) -> None:
        done = self._done
        while len(done) > self.capacity:
            done.popitem(last=False)
        if self.ttl_s > 0:
            limit = self._clock() - self.ttl_s
            # Oldest first: entries are recorded in log order, with times that grow.
            while done and next(iter(done.values()))[1] < limit:
                done.popitem(last=False)

    def lsn(self, request_id: str) -> int | None:
        """The LSN of the write with this id, if it is remembered (committed or not)."""
        e = self._done.get(request_id)
        if e is None or self._expired(e[1], self._clock()):
            return None
        return e[0]

    def __len__(self) -> int:
        return len(self._done)

    async def _settled(self, lsn: int) -> int:
        if self._settle is not None:
            await self._settle(lsn)
        return lsn

    # ----------------------------------------------------------------- writes

    async def run(self, request_id: str, write: Callable[[], Awaitable[int]]) -> int:
        """`write()` once per request id: a known id is answered with its LSN once
        that is settled, a retry while the write is in flight waits for it.

        The write runs as its own task: when the caller goes away (deadline,
        cancelled stream) the write still commits, and the retry with the same
        id gets its LSN instead of writing again. Raises InvalidInput for an id
        over MAX_REQUEST_ID_CHARS characters, else what the write or `settle` raise.
        """
        if not request_id:
            return await write()
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            raise InvalidInput(f"request_id is longer than {MAX_REQUEST_ID_CHARS} characters")
        lsn = self.lsn(request_id)
        if lsn is not None:
            return await self._settled(lsn)
        task = self._inflight.get(request_id)
        if task is None:
            task = asyncio.ensure_future(write())
            self._inflight[request_id] = task
            task.add_done_callback(lambda t, rid=request_id: self._finished(rid, t))
        # shield: a caller's cancellation must not cancel the write it started.
        return await asyncio.shield(task)

    async def run_ops(self, ids: list[str],
                      write: Callable[[list[int]], Awaitable[int]]) -> list[int]:
        """A batch whose ops carry their own ids (a client's coalesced calls): each op is
        written once. Ops whose id is known are answered with their LSN (once settled),
        ops whose id is in flight wait for it, and the rest go as one batch through
        `write(indices)`, which returns that batch's last LSN (op k of n has last-n+1+k).
        Ops without an id are always written. Returns each op's LSN in order."""
        loop = asyncio.get_running_loop()
        lsns = [0] * len(ids)
        waits: list[tuple[int, asyncio.Future]] = []
        fresh: list[int] = []
        mine: list[tuple[str, asyncio.Future]] = []
        known = 0  # the highest LSN answered from the table
        for i, rid in enumerate(ids):  # checked first: nothing is registered for a bad request
            if len(rid) > MAX_REQUEST_ID_CHARS:
                raise InvalidInput(f"request_id of op {i} is longer than "
                                   f"{MAX_REQUEST_ID_CHARS} characters")
        for i, rid in enumerate(ids):
            if rid:
                lsn = self.lsn(rid)
                if lsn is not None:
                    lsns[i] = lsn
                    known = max(known, lsn)
                    continue
                fut = self._inflight.get(rid)
                if fut is not None:  # in flight, in another request or earlier in this one
                    waits.append((i, fut))
                    continue
                fut = loop.create_future()
                self._inflight[rid] = fut
                mine.append((rid, fut))
            fresh.append(i)
        if fresh:
            task = asyncio.ensure_future(write(fresh))
            base = len(fresh) - 1
            offsets = {rid: k for k, i in enumerate(fresh) if (rid := ids[i])}
            task.add_done_callback(lambda t: self._ops_finished(t, mine, offsets, base))
            last = await asyncio.shield(task)
            for k, i in enumerate(fresh):
                lsns[i] = last - base + k
        for i, fut in waits:
            lsns[i] = await asyncio.shield(fut)
        if known:
            await self._settled(known)  # commit points only grow: one wait settles all
        return lsns

    def _ops_finished(self, task: asyncio.Task, mine: list, offsets: dict, base: int) -> None:
        now = self._clock()
        for rid, fut in mine:
            if self._inflight.get(rid) is fut:
                del self._inflight[rid]
            if task.cancelled():
                fut.cancel()
            elif (exc := task.exception()) is not None:
                fut.set_exception(exc)
                fut.exception()  # retrieved: waiters get it, nobody else must log it
            else:
                lsn = task.result() - base + offsets[rid]
                fut.set_result(lsn)
                # Normally recorded already from the log (`on_commit`); this covers
                # a table that follows no engine.
                self._record(rid, lsn, now, now)
        self._expire()

    def _finished(self, request_id: str, task: asyncio.Task) -> None:
        self._inflight.pop(request_id, None)
        if task.cancelled() or task.exception() is not None:
            # Not acknowledged. If it was written, its frame put the id in the table.
            return
        now = self._clock()
        self._record(request_id, task.result(), now, now)
        self._expire()
