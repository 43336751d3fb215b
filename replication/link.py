"""The master's side of one replica: a Follow stream that ships WAL frames and
heartbeats, and the replica's acknowledgements coming back.

Frames come from the commit listener while the replica keeps up (a bounded queue,
shared bytes), else from the WAL on disk (`Engine.read_log`), so a replica that
falls behind costs the master a bounded amount of memory and catches up from the
log, never from an unbounded backlog. At most `WINDOW` appends are unacknowledged.
A broken stream is retried with exponential back-off and full jitter: a dead
replica costs the master one timer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque

import grpc

from strata.storage import Compacted, record
from strata_client._proto import strata_pb2 as pb

from . import log as replog
from .election import HeartbeatAck

log = logging.getLogger("strata.replication")

MAX_APPEND = 1 << 20  # bytes of frames in one Append
WINDOW = 16  # Appends in flight per replica
MAX_QUEUE = 16 << 20  # bytes of live frames queued per replica before it reads the WAL


def read_wal(engine, start: int, upto: int, max_bytes: int) -> tuple[bytes, int]:
    """Frames from `start` to at most `upto` (whole frames), about max_bytes of them:
    (bytes, next LSN)."""
    out: list[bytes] = []
    size = 0
    nxt = start
    it = engine.read_log(start)
    try:
        for fr in it:
            if fr.lsn > upto:
                break
            raw = bytes(fr.raw)
            out.append(raw)
            size += len(raw)
            nxt = record.frame_span(raw)[1] + 1
            if size >= max_bytes:
                break
    finally:
        it.close()
    return b"".join(out), nxt


class PeerLink:
    """Replication to one peer while this node is master of `term`."""

    def __init__(self, cluster, peer: str, address: str, term: int) -> None:
        self.cluster = cluster
        self.peer = peer
        self.address = address
        self.term = term
        self.match = 0  # the replica's durable LSN, acknowledged in this term
        self.next_lsn = 0  # the next LSN to send (0: not streaming)
        self.last_answer: float | None = None  # monotonic time of the last ack
        self.connected = False
        self.resyncs = 0
        self.truncations = 0
        self._queue: deque = deque()  # (first LSN, last LSN, frame bytes) from the listener
        self._queued = 0
        # The frames at next_lsn must come from the WAL: catching up at the start of a
        # session, after the queue overflowed, or when it starts past next_lsn. Otherwise
        # they are on their way from the commit listener: wait for them, no file reads.
        self._from_wal = True
        self._inflight = 0
        self._wake = asyncio.Event()
        self._acked = asyncio.Event()
        self._heartbeat_due = False
        self._sent: deque = deque()  # (last LSN, send time) of unacknowledged appends
        self.task: asyncio.Task | None = None

    # -- fed by the cluster ---------------------------------------------------------

    def offer(self, frames: list[tuple[int, int, bytes]], size: int) -> None:
        if not self.next_lsn:
            return
        if self._queued + size > MAX_QUEUE:
            self._queue.clear()  # too far behind: the sender reads the WAL instead
            self._queued = 0
            self._from_wal = True
        else:
            self._queue.extend(frames)
            self._queued += size
        self._wake.set()

    def heartbeat(self) -> None:
        self._heartbeat_due = True
        self._wake.set()

    def state(self, now: float) -> str:
        c = self.cluster
        if not self.connected or self.last_answer is None:
            return "failed"
        age = now - self.last_answer
        if age < 3 * c.heartbeat_interval:
            return "healthy"
        return "degraded" if age < c.election_timeout else "failed"

    def lag_ms(self, now: float) -> float:
        while self._sent and self._sent[0][0] <= self.match:
            self._sent.popleft()
        return (now - self._sent[0][1]) * 1000 if self._sent else 0.0

    # -- the stream -----------------------------------------------------------------

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                again = await self._session()
                attempt = 0 if again else attempt + 1
            except asyncio.CancelledError:
                raise
            except grpc.RpcError as e:
                attempt += 1
                if attempt in (1, 10) or attempt % 100 == 0:
                    log.info("replica %s at %s: %s (%s)", self.peer, self.address,
                             e.code().name if hasattr(e, "code") else "error",
                             e.details() if hasattr(e, "details") else e)
            except Exception:
                attempt += 1
                log.exception("replication to %s failed", self.peer)
            finally:
                self.connected = False
                self.next_lsn = 0
                self._queue.clear()
                self._queued = 0
                self._from_wal = True
            if attempt:
                await asyncio.sleep(random.uniform(0, min(2.0, 0.05 * 2 ** min(attempt, 10))))

    async def _session(self) -> bool:
        """One Follow stream; returns True when it ended for a reason that warrants an
        immediate reconnect (the replica cut its log or fetched a checkpoint)."""
        c = self.cluster
        call = c.stub(self.peer).Follow(metadata=c.metadata)
        try:
            # asyncio.timeout rather than wait_for throughout: on Python 3.11 wait_for
            # swallows a cancellation that arrives as the read completes, and a link
            # cancelled at a step-down would go on.
            async with asyncio.timeout(c.election_timeout):
                msg = await call.read()
            if msg is grpc.aio.EOF or msg.WhichOneof("msg") != "hello":
                raise ConnectionError(f"replica {self.peer} did not say hello")
            hello = msg.hello
            if hello.term > self.term:
                c.receive(HeartbeatAck(hello.term, self.peer, False, 0.0))
                return False
            engine = c.engine()
            if engine is None or c.role_term() != self.term:
                return False
            plan = replog.plan(engine.term_history, engine.last_lsn, engine.earliest_lsn,
                               tuple((t.term, t.first_lsn) for t in hello.terms),
                               hello.last_lsn, hello.flushed_lsn)
            start = pb.Start(term=self.term, master=c.node_id, address=c.address,
                             from_lsn=plan.from_lsn, resync=plan.resync, reason=plan.reason,
                             truncate=plan.truncate_after is not None,
                             truncate_after=plan.truncate_after or 0)
            await call.write(pb.ToReplica(start=start))
            if plan.resync or plan.truncate_after is not None:
                if plan.resync:
                    self.resyncs += 1
                else:
                    self.truncations += 1
                log.warning("replica %s (last LSN %d): %s", self.peer, hello.last_lsn,
                            plan.reason or "resync")
                try:  # the replica closes the stream once it has taken the order
                    async with asyncio.timeout(c.election_timeout):
                        await call.read()
                except TimeoutError:
                    pass
                return True
            self.connected = True
            self.match = hello.last_lsn
            self.next_lsn = plan.from_lsn
            self.last_answer = time.monotonic()
            log.info("replica %s follows from LSN %d (term %d)", self.peer, plan.from_lsn,
                     self.term)
            c.advance_commit()
            sender = asyncio.ensure_future(self._send(call, engine))
            receiver = asyncio.ensure_future(self._receive(call))
            try:
                done, _ = await asyncio.wait({sender, receiver},
                                             return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    t.result()  # surface an error
            finally:
                sender.cancel()
                receiver.cancel()
            return False
        finally:
            call.cancel()

    def _take_queued(self) -> tuple[bytes, int]:
        q = self._queue
        while q and q[0][1] < self.next_lsn:
            self._queued -= len(q.popleft()[2])
        if not q or q[0][0] != self.next_lsn:
            return b"", self.next_lsn
        out: list[bytes] = []
        size = 0
        nxt = self.next_lsn
        while q and q[0][0] == nxt and size < MAX_APPEND:
            first, last, raw = q.popleft()
            self._queued -= len(raw)
            out.append(raw)
            size += len(raw)
            nxt = last + 1
        return b"".join(out), nxt

    async def _send(self, call, engine) -> None:
        c = self.cluster
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            data, nxt = self._take_queued()
            q = self._queue
            if q and q[0][0] > self.next_lsn:
                self._from_wal = True  # a gap before what the listener queued
            if not data and self._from_wal and engine.last_lsn >= self.next_lsn:
                try:
                    data, nxt = await loop.run_in_executor(
                        None, read_wal, engine, self.next_lsn, engine.last_lsn, MAX_APPEND)
                except Compacted:
                    log.warning("replica %s needs LSN %d, no longer retained: it resyncs",
                                self.peer, self.next_lsn)
                    return  # the next handshake finds it behind the log
                if (q and q[0][0] <= nxt) or nxt > engine.last_lsn:
                    self._from_wal = False  # caught up with the listener's queue
            if not data and not self._heartbeat_due:
                await self._wake.wait()
                continue
            while self._inflight >= WINDOW:
                self._acked.clear()
                await self._acked.wait()
            sent = time.monotonic()
            self._heartbeat_due = False
            self._inflight += 1
            if data:
                self._sent.append((nxt - 1, sent))
                self.next_lsn = nxt
            await call.write(pb.ToReplica(append=pb.Append(
                term=self.term, master=c.node_id, address=c.address, sent=sent,
                commit_lsn=c.commit_lsn, frames=data)))

    async def _receive(self, call) -> None:
        c = self.cluster
        # Heartbeats are answered every interval: silence for this long means a stream
        # stuck on a connection that drops packets (a partition), which TCP alone would
        # take minutes to give up on. Reconnect instead.
        silence = max(1.0, 2 * c.election_timeout)
        while True:
            try:
                async with asyncio.timeout(silence):
                    msg = await call.read()
            except TimeoutError:
                log.warning("replica %s: no answer for %.1fs; reconnecting", self.peer, silence)
                return
            if msg is grpc.aio.EOF:
                return
            ack = msg.ack
            self._inflight = max(0, self._inflight - 1)
            self._acked.set()
            if ack.error:
                log.warning("replica %s could not apply frames: %s", self.peer, ack.error)
                return
            c.receive(HeartbeatAck(ack.term, self.peer, ack.ok, ack.sent))
            if not ack.ok:
                return
            self.last_answer = time.monotonic()
            if ack.durable_lsn > self.match:
                self.match = ack.durable_lsn
                c.advance_commit()
