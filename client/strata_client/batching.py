"""Client-side coalescing of concurrent put/delete calls (Kafka's producer,
Pebble's commit pipeline).

A call on an idle client is sent at once, alone, as a unary Put/Delete: it
adds no latency. Calls that arrive while a message is on the wire queue, and
the next free slot (at most `max_inflight` messages on the wire) takes the
queue, up to the current size limit and `max_batch_bytes`, as one Batch
request. With threads, the caller whose message returned hands the next one to
the first queued caller's thread; with asyncio, a task per busy slot sends
until the queue is empty, and starts one loop round after the slot frees, so
the callers a returning message woke join the next message. Nothing runs
while the client is idle. A queued call waits for the messages ahead of it
(each bounded by the client's timeout) before its own goes out.

Each call keeps its own result. Its op carries its own request id
(`Op.request_id`), so a retried or redirected message is answered, not
written twice, op by op; the server answers each op's LSN (`lsns`). A
message refused as INVALID_ARGUMENT wrote nothing: its calls are resent one
by one, so a bad key or value fails only its own call. A message whose
outcome stays unknown at its deadline fails each of its calls with its own
errors.OutcomeUnknown, carrying that call's request id. Ops in one message
are applied atomically, but callers must not rely on that: atomicity is what
`batch()` promises, ordering is per caller (a call that returned is ordered
before any call made after it).

The size limit adapts between `min_batch` and `max_batch`: a message whose
round trip runs over `latency_target_ms` (smoothed) shrinks it, a full
message answered within half the target grows it, so one message never
holds more work than the latency target allows while a busy client still
sends large ones.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass

from . import errors
from .limits import MAX_REQUEST_ID_CHARS, RESERVED_PREFIX


@dataclass
class Batching:
    """Knobs of the coalescer; `Batching(enabled=False)` sends every call on its own."""

    enabled: bool = True
    max_inflight: int = 2          # messages on the wire at once
    min_batch: int = 16            # the size limit never goes below this ...
    max_batch: int = 1000          # ... nor above this (ops per message)
    max_batch_bytes: int = 4 << 20  # keys and values of one message
    latency_target_ms: float = 20.0  # a message's round trip the limit aims under
    smoothing: float = 0.2         # weight of the newest round trip in the average


class Stats:
    """What the coalescer did (read it from `client.batching_stats()`)."""

    __slots__ = ("calls", "messages", "singles", "splits", "limit", "inflight", "queued",
                 "ops_per_message", "wait_ms", "rtt_ms")

    def __init__(self, limit: int) -> None:
        self.calls = 0            # put/delete calls taken
        self.messages = 0         # requests sent (Put/Delete/Batch)
        self.singles = 0          # of which a lone call sent as Put/Delete
        self.splits = 0           # messages refused as INVALID_ARGUMENT and resent call by call
        self.limit = limit        # current size limit (ops per message)
        self.inflight = 0         # messages on the wire now
        self.queued = 0           # calls waiting for a slot now
        self.ops_per_message = 0.0  # smoothed
        self.wait_ms = 0.0        # smoothed time a call waited before its message went (linger)
        self.rtt_ms = 0.0         # smoothed round trip of a message

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}


class Call:
    """One put/delete call: its op, its request id, and (when done) its result."""

    __slots__ = ("op", "request_id", "size", "queued_at", "lsn", "error", "done", "lead")

    def __init__(self, op: tuple, request_id: str) -> None:
        self.op = op
        self.request_id = request_id
        self.size = len(op[1]) + (len(op[2]) if len(op) == 3 else 0)
        self.queued_at = time.perf_counter()
        self.lsn = 0
        self.error: BaseException | None = None
        self.done = None  # threading.Event (sync) or asyncio.Future (asyncio)
        self.lead: list[Call] | None = None  # sync only: a batch this caller must send


def check(op: tuple, request_id: str) -> None:
    """What can be known wrong without asking the server: fails this call alone."""
    key = op[1]
    if not isinstance(key, bytes) or not key:
        raise errors.InvalidArgument("key must be non-empty bytes", "INVALID_ARGUMENT")
    if key.startswith(RESERVED_PREFIX):
        raise errors.InvalidArgument(f"keys starting with {RESERVED_PREFIX!r} are reserved "
                                     f"(consumer cursors)", "INVALID_ARGUMENT")
    if len(op) == 3 and not isinstance(op[2], bytes):
        raise errors.InvalidArgument("value must be bytes", "INVALID_ARGUMENT")
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise errors.InvalidArgument(f"request_id is longer than {MAX_REQUEST_ID_CHARS} "
                                     f"characters", "INVALID_ARGUMENT")


class CallQueue:
    """The state both coalescers share: the queue, the slots, the adaptive limit."""

    def __init__(self, cfg: Batching) -> None:
        if not 1 <= cfg.min_batch <= cfg.max_batch:
            raise ValueError("need 1 <= min_batch <= max_batch")
        if cfg.max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self.cfg = cfg
        self.queue: deque[Call] = deque()
        self.stats = Stats(min(cfg.max_batch, max(cfg.min_batch, 64)))

    def take(self) -> list[Call]:
        """The next message's calls from the head of the queue (at least one)."""
        q, st = self.queue, self.stats
        out: list[Call] = []
        size = 0
        now = time.perf_counter()
        wait = 0.0
        while q and len(out) < st.limit:
            c = q[0]
            if out and size + c.size > self.cfg.max_batch_bytes:
                break
            q.popleft()
            out.append(c)
            size += c.size
            wait += now - c.queued_at
        st.queued = len(q)
        if out:
            st.wait_ms += self.cfg.smoothing * (wait * 1000 / len(out) - st.wait_ms)
        return out

    def answered(self, n: int, rtt: float) -> None:
        """A message of n calls came back after rtt seconds: adapt the limit."""
        cfg, st = self.cfg, self.stats
        a = cfg.smoothing
        st.messages += 1
        st.singles += n == 1
        st.ops_per_message += a * (n - st.ops_per_message)
        st.rtt_ms += a * (rtt * 1000 - st.rtt_ms)
        if st.rtt_ms > cfg.latency_target_ms and st.limit > cfg.min_batch:
            st.limit = max(cfg.min_batch, int(st.limit * 0.8))
        elif n >= st.limit and st.rtt_ms < cfg.latency_target_ms / 2 and st.limit < cfg.max_batch:
            st.limit = min(cfg.max_batch, int(st.limit * 1.25) + 1)


def _settle(calls: list[Call], results: list | None, error: BaseException | None) -> None:
    """results: each call's LSN or its own exception; error: one for all."""
    for i, c in enumerate(calls):
        r = error if error is not None else results[i]
        if isinstance(r, BaseException):
            c.error = r
        else:
            c.lsn = r


class Coalescer(CallQueue):
    """For the blocking Client: callers are threads; the one whose message returned
    hands the next message to the first queued caller's thread."""

    def __init__(self, cfg: Batching, send) -> None:
        super().__init__(cfg)
        self._send = send  # send(list[Call]) -> each call's LSN or exception; raises for all
        self._lock = threading.Lock()

    def submit(self, op: tuple, request_id: str) -> int:
        check(op, request_id)
        call = Call(op, request_id)
        call.done = threading.Event()
        st = self.stats
        with self._lock:
            st.calls += 1
            self.queue.append(call)
            st.queued = len(self.queue)
            lead = st.inflight < self.cfg.max_inflight
            if lead:
                st.inflight += 1
                busy = st.inflight > 1
        if lead:
            if busy:  # let callers that a returning message woke join this one
                time.sleep(0)
            with self._lock:
                batch = self.take() if self.queue else None
                if batch is None:  # others took our call along: give the slot back
                    st.inflight -= 1
            if batch is not None:
                self._run(batch)
        call.done.wait()
        if call.lead is not None:  # the slot was passed to this thread with a batch
            self._run(call.lead)
        if call.error is not None:
            raise call.error
        return call.lsn

    def _run(self, batch: list[Call]) -> None:
        """Send one message, wake its callers, then pass the slot to the first queued
        caller with the next message (or free it)."""
        t0 = time.perf_counter()
        try:
            _settle(batch, self._send(batch), None)
        except BaseException as e:  # each caller re-raises it
            _settle(batch, None, e)
        with self._lock:
            self.answered(len(batch), time.perf_counter() - t0)
            if self.queue:
                nxt = self.take()
                nxt[0].lead = nxt
            else:
                nxt = None
                self.stats.inflight -= 1
        for c in batch:
            c.done.set()
        if nxt is not None:
            nxt[0].done.set()


class AsyncCoalescer(CallQueue):
    """For the AsyncClient: each message is sent by a task of its own (a caller's
    cancellation cannot cancel the message that carries other callers' ops)."""

    def __init__(self, cfg: Batching, send) -> None:
        super().__init__(cfg)
        self._send = send  # async send(list[Call]) -> each call's LSN or exception
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, op: tuple, request_id: str) -> int:
        check(op, request_id)
        call = Call(op, request_id)
        call.done = asyncio.get_running_loop().create_future()
        st = self.stats
        st.calls += 1
        if st.inflight == 0 and not self.queue:
            return await self._alone(call)
        self.queue.append(call)
        st.queued = len(self.queue)
        if st.inflight < self.cfg.max_inflight:
            # The task takes the queue at its first step, in the loop's next round: the
            # callers that a returning message woke in this round go with this one.
            st.inflight += 1
            self._spawn()
        return await call.done

    async def _alone(self, call: Call) -> int:
        """An idle client: the caller sends its call itself (no task, no loop round);
        calls that queue meanwhile are taken on by a task when it returns."""
        st = self.stats
        st.inflight += 1
        t0 = time.perf_counter()
        try:
            (result,) = await self._send([call])
        finally:
            if self.queue:
                self._spawn()
            else:
                st.inflight -= 1
        self.answered(1, time.perf_counter() - t0)
        if isinstance(result, BaseException):
            raise result
        return result

    def _spawn(self) -> None:
        t = asyncio.ensure_future(self._run())
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        try:
            while self.queue:
                batch = [c for c in self.take() if not c.done.done()]  # skip cancelled callers
                if not batch:
                    continue
                t0 = time.perf_counter()
                try:
                    results = await self._send(batch)
                except asyncio.CancelledError:  # the client is closing
                    for c in batch:
                        c.done.cancel()
                    raise
                except Exception as e:
                    results = [e] * len(batch)
                for c, r in zip(batch, results):
                    if c.done.done():
                        continue
                    if isinstance(r, BaseException):
                        c.done.set_exception(r)
                    else:
                        c.done.set_result(r)
                self.answered(len(batch), time.perf_counter() - t0)
        finally:
            self.stats.inflight -= 1
