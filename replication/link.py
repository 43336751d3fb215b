"""The master's side of one replica: a Follow stream that ships WAL frames and
heartbeats, and the replica's acknowledgements coming back.

Frames come from the commit listener while the replica keeps up (a bounded queue,
shared bytes), else from the WAL on disk (`Engine.read_log`), so a replica that
falls behind costs the master a bounded amount of memory and catches up from the
log, never from an unbounded backlog. At most `WINDOW` appends are unacknowledged. A
commit group is sent as it is published, encoded once for every peer that is caught
up (`GroupAppend`); the replica writes the Appends that reach it during one fsync as
one group and answers them with one acknowledgement (follow.py).
A broken stream is retried with exponential back-off and full jitter: a dead
replica costs the master one timer.
"""

from __future__ import annotations

import asyncio
import logging
import math
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


class ReplicaTooOld(Exception):
    """The replica's release cannot read this log's WAL frames (Hello.wal_version)."""


class GroupAppend:
    """One commit group's frames, and the Append carrying them encoded once for every
    peer that sends it as it is (a caught-up peer: nothing else to send before or with
    it). Made on the loop by the cluster where the group is published; shared, never
    changed after."""

    __slots__ = ("first", "last", "data", "sent", "_link_fields", "_encoded")

    def __init__(self, first: int, last: int, data: bytes, sent: float,
                 fields: tuple[int, str, str, int]) -> None:
        self.first = first  # the group's first LSN
        self.last = last  # its last LSN
        self.data = data  # its frames
        self.sent = sent  # the `sent` of the shared encoding
        self._link_fields = fields  # (term, master, address, commit LSN) when published
        self._encoded: bytes | None = None

    def encoded(self) -> bytes:
        """The serialized ToReplica: built by the first peer that sends it."""
        if self._encoded is None:
            term, master, address, commit = self._link_fields
            self._encoded = pb.ToReplica(append=pb.Append(
                term=term, master=master, address=address, sent=self.sent, commit_lsn=commit,
                frames=self.data)).SerializeToString()
        return self._encoded


class Window:
    """The Appends of one stream sent and not yet acknowledged, oldest first: sans-I/O.

    A replica answers a group of Appends with one acknowledgement echoing the last
    one's `sent` (follow.py), which answers every Append sent up to it; `sent` values
    therefore strictly increase within a stream, even when the clock does not move.
    At most WINDOW Appends are in flight (the caller checks `full`)."""

    def __init__(self) -> None:
        self._sent: deque[float] = deque()

    def __len__(self) -> int:
        return len(self._sent)

    @property
    def full(self) -> bool:
        return len(self._sent) >= WINDOW

    def stamp(self, now: float) -> float:
        """Record an Append sent at `now` (or just after the last one); its `sent`."""
        if self._sent and now <= self._sent[-1]:
            now = math.nextafter(self._sent[-1], math.inf)
        self._sent.append(now)
        return now

    def stamp_exactly(self, sent: float) -> bool:
        """Record an Append whose `sent` is fixed (a shared encoding) if it is later
        than the last one sent; False (nothing recorded) otherwise."""
        if self._sent and sent <= self._sent[-1]:
            return False
        self._sent.append(sent)
        return True

    def ack(self, sent: float) -> int:
        """An acknowledgement echoing `sent`: every Append up to it is answered.
        Returns how many."""
        q = self._sent
        n = 0
        while q and q[0] <= sent:
            q.popleft()
            n += 1
        return n


class _Session:
    """What one Follow stream owns. Made afresh for every stream, so nothing a broken
    stream left behind (appends never acknowledged, a full window, queued frames, a
    heartbeat flag) can hold the next one back."""

    def __init__(self, next_lsn: int) -> None:
        self.next_lsn = next_lsn  # the next LSN to send
        self.queue: deque[GroupAppend] = deque()  # commit groups from the listener
        self.queued = 0  # bytes in `queue`
        # The frames at next_lsn must come from the WAL: catching up at the start of a
        # session, after the queue overflowed, or when it starts past next_lsn. Otherwise
        # they are on their way from the commit listener: wait for them, no file reads.
        self.from_wal = True
        self.inflight = Window()  # Appends sent and not acknowledged
        self.heartbeat_due = False
        self.wake = asyncio.Event()  # frames queued or a heartbeat due
        self.acked = asyncio.Event()  # an acknowledgement made room in the window


class PeerLink:
    """Replication to one peer while this node is master of `term`.

    Per stream (`_Session`): the send position, the listener's queue, the window.
    Across streams, for status: `match` (the peer's durable LSN acknowledged in this
    term; a new stream restarts it from the peer's hello), `last_answer` and
    `progress_at`, which only acknowledgements move, so a peer that reconnects over
    and over without acknowledging anything shows as failed or stalled, not healthy.
    """

    def __init__(self, cluster, peer: str, address: str, term: int) -> None:
        self.cluster = cluster
        self.peer = peer
        self.address = address
        self.term = term
        self.match = 0  # the replica's durable LSN, acknowledged in this term
        self.last_answer: float | None = None  # monotonic time of the last acknowledgement
        self.progress_at: float | None = None  # monotonic time `match` last moved
        self.sessions = 0  # Follow streams begun in this term
        self.resyncs = 0
        self.truncations = 0
        self._session: _Session | None = None
        self.task: asyncio.Task | None = None

    @property
    def connected(self) -> bool:
        return self._session is not None

    @property
    def next_lsn(self) -> int:
        """The next LSN to send (0: no stream)."""
        return self._session.next_lsn if self._session is not None else 0

    # -- fed by the cluster ---------------------------------------------------------

    def offer(self, group: GroupAppend) -> None:
        s = self._session
        if s is None:
            return
        size = len(group.data)
        if s.queued + size > MAX_QUEUE:
            s.queue.clear()  # too far behind: the sender reads the WAL instead
            s.queued = 0
            s.from_wal = True
        else:
            s.queue.append(group)
            s.queued += size
        s.wake.set()

    def heartbeat(self) -> None:
        s = self._session
        if s is not None:
            s.heartbeat_due = True
            s.wake.set()

    def state(self, now: float, last_lsn: int | None = None) -> str:
        """failed: no acknowledgement for an election timeout (or none yet in this
        term); stalled: it answers, but its acknowledged LSN has not moved for an
        election timeout while this master has newer frames; else healthy, or
        degraded when its last answer is older than three heartbeats."""
        c = self.cluster
        if self.last_answer is None or now - self.last_answer >= c.election_timeout:
            return "failed"
        if last_lsn is not None and self.match < last_lsn and \
                now - (self.progress_at or 0.0) >= c.election_timeout and \
                self.lag_s(now) >= c.election_timeout:
            return "stalled"
        return "healthy" if now - self.last_answer < 3 * c.heartbeat_interval else "degraded"

    def lag_s(self, now: float) -> float:
        """Age of the oldest frame this master has and the peer has not acknowledged."""
        return self.cluster.frame_age(self.match, now)

    # -- the stream -----------------------------------------------------------------

    async def run(self) -> None:
        attempt = 0
        # Reconnects back off with full jitter up to `cap`: a dead peer costs a timer a
        # fraction of a second, and one that comes back is found within that.
        cap = max(0.2, min(1.0, self.cluster.election_timeout / 2))
        while True:
            try:
                again = await self._session_run()
                attempt = 0 if again else attempt + 1
            except asyncio.CancelledError:
                raise
            except (grpc.RpcError, TimeoutError, asyncio.InvalidStateError) as e:
                # The peer is unreachable or went away (a partition, a restart: no hello in
                # time, or the stream finished under a write): normal in a cluster, said
                # now and then, not logged as an error with a traceback at every retry.
                attempt += 1
                if attempt in (1, 10) or attempt % 100 == 0:
                    log.info("replica %s at %s: %s (%s)", self.peer, self.address,
                             e.code().name if hasattr(e, "code") else type(e).__name__,
                             e.details() if hasattr(e, "details") else
                             str(e) or "no answer in time")
            except ReplicaTooOld as e:
                attempt += 1
                if attempt in (1, 10) or attempt % 100 == 0:
                    log.error("%s", e)
            except Exception:
                attempt += 1
                log.exception("replication to %s failed", self.peer)
            finally:
                self._session = None
            if attempt:
                await asyncio.sleep(random.uniform(0, min(cap, 0.05 * 2 ** min(attempt, 10))))

    async def _session_run(self) -> bool:
        """One Follow stream; returns True when it ended for a reason that warrants an
        immediate reconnect (the replica cut its log or fetched a checkpoint)."""
        c = self.cluster
        call = c.follow_call(self.peer)
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
            if hello.wal_version < record.VERSION:
                raise ReplicaTooOld(
                    f"replica {self.peer} reads WAL frames up to version "
                    f"{hello.wal_version or 3}, this log is version {record.VERSION}: it would "
                    f"skip the writes it cannot read, so it is not sent any; upgrade it")
            engine = c.engine()
            if engine is None or c.role_term() != self.term:
                return False
            plan = replog.plan(engine.term_history, engine.last_lsn, engine.earliest_lsn,
                               tuple((t.term, t.first_lsn) for t in hello.terms),
                               hello.last_lsn, hello.flushed_lsn)
            start = pb.Start(term=self.term, master=c.node_id, address=c.address,
                             from_lsn=plan.from_lsn, resync=plan.resync, reason=plan.reason,
                             truncate=plan.truncate_after is not None,
                             truncate_after=plan.truncate_after or 0, group_acks=True)
            await call.write(pb.ToReplica(start=start).SerializeToString())
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
            s = self._session = _Session(plan.from_lsn)
            self.sessions += 1
            # The replica's durable LSN as it says now: what a power cut or a cut tail
            # left of what it acknowledged before, never more.
            if hello.last_lsn != self.match:
                self.match = hello.last_lsn
                self.progress_at = time.monotonic()
            log.info("replica %s follows from LSN %d (term %d)", self.peer, plan.from_lsn,
                     self.term)
            c.advance_commit()
            sender = asyncio.ensure_future(self._send(call, engine, s))
            receiver = asyncio.ensure_future(self._receive(call, s))
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

    def _take_queued(self, s: _Session) -> tuple[bytes, int, GroupAppend | None]:
        """The queued groups that continue from next_lsn, up to about MAX_APPEND bytes:
        (frames, next LSN, the group when exactly one was taken)."""
        q = s.queue
        while q and q[0].last < s.next_lsn:
            s.queued -= len(q.popleft().data)
        if q and q[0].first < s.next_lsn:
            # Partly sent from the WAL (read_wal stops after about MAX_APPEND bytes,
            # inside a group): its rest is read from the WAL as well.
            s.from_wal = True
            return b"", s.next_lsn, None
        if not q or q[0].first != s.next_lsn:
            return b"", s.next_lsn, None
        out: list[bytes] = []
        size = 0
        nxt = s.next_lsn
        while q and q[0].first == nxt and size < MAX_APPEND:
            g = q.popleft()
            s.queued -= len(g.data)
            out.append(g.data)
            size += len(g.data)
            nxt = g.last + 1
        if len(out) == 1:
            return out[0], nxt, g
        return b"".join(out), nxt, None

    async def _send(self, call, engine, s: _Session) -> None:
        c = self.cluster
        loop = asyncio.get_running_loop()
        while True:
            s.wake.clear()
            data, nxt, group = self._take_queued(s)
            q = s.queue
            if q and q[0].first > s.next_lsn:
                s.from_wal = True  # a gap before what the listener queued
            if not data and s.from_wal and engine.last_lsn >= s.next_lsn:
                try:
                    data, nxt = await loop.run_in_executor(
                        None, read_wal, engine, s.next_lsn, engine.last_lsn, MAX_APPEND)
                except Compacted:
                    log.warning("replica %s needs LSN %d, no longer retained: it resyncs",
                                self.peer, s.next_lsn)
                    return  # the next handshake finds it behind the log
                if (q and q[0].first == nxt) or nxt > engine.last_lsn:
                    s.from_wal = False  # caught up with the listener's queue
            if not data and not s.heartbeat_due:
                await s.wake.wait()
                continue
            while s.inflight.full:
                s.acked.clear()
                await s.acked.wait()
            s.heartbeat_due = False
            if data:
                s.next_lsn = nxt
            if group is not None and s.inflight.stamp_exactly(group.sent):
                # One commit group, as published: the encoding every caught-up peer shares.
                await call.write(group.encoded())
                continue
            sent = s.inflight.stamp(time.monotonic())
            await call.write(pb.ToReplica(append=pb.Append(
                term=self.term, master=c.node_id, address=c.address, sent=sent,
                commit_lsn=c.commit_lsn, frames=data)).SerializeToString())

    async def _receive(self, call, s: _Session) -> None:
        c = self.cluster
        # Heartbeats are answered every interval: silence for this long means a stream
        # stuck on a connection that drops packets (a partition) or a peer that is
        # paused, which TCP alone would take minutes to give up on. Reconnect instead.
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
            s.inflight.ack(ack.sent)
            s.acked.set()
            if ack.error:
                log.warning("replica %s could not apply frames: %s", self.peer, ack.error)
                return
            c.receive(HeartbeatAck(ack.term, self.peer, ack.ok, ack.sent))
            if not ack.ok:
                return
            now = time.monotonic()
            self.last_answer = now
            if ack.durable_lsn > self.match:
                self.match = ack.durable_lsn
                self.progress_at = now
                c.advance_commit()
