"""One node of a replicated cluster: election, roles, commit point, and both ends of
replication, on the daemon's event loop.

    election.Node      terms, votes, heartbeats, leases (sans-I/O; driven from here)
    link.PeerLink      master -> one replica: frames and heartbeats out, acks in
    Cluster.follow     replica side of a Follow stream: apply frames, acknowledge
    checkpoints        seeding a replica that cannot continue from the master's log

Roles. Every node starts as a replica (read-only engine). The election's winner
writes a term marker, then streams its log to every peer. A write is answered
(`committed`) in mode
  async   after the master's own durability (and while it holds its lease),
  quorum  once a majority, the master included, has it durable,
  sync    once every live replica and at least a majority have it durable.
The commit point is the highest LSN a majority holds durable at or after the
master's term marker (Raft's rule for committing only entries of the current
term); reads on the master are held there in quorum and sync mode, and replicas
read up to the commit point the master last sent.

The daemon supplies `engine()` (the engine may be replaced when a replica cuts its
log or installs a checkpoint) and `reopen(truncate_after=, install=)`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from strata.distribution.feed import ALL
from strata.storage import InvalidArgument, LogMismatch, StorageError, record
from strata_client._proto import strata_pb2 as pb
from strata_client._proto import strata_pb2_grpc as pbg
from strata_client.auth import AUTH_METADATA, token_matches

from . import checkpoints
from .election import MASTER, Heartbeat, HeartbeatAck, Node, RequestVote, TimeoutNow, Vote
from .errors import NoMaster, NotMaster
from .follow import Append, AppendQueue, answers
from .link import GroupAppend, PeerLink
from .progress import Follower, Progress
from .state import FilePersistence

log = logging.getLogger("strata.replication")

MODES = ("async", "quorum", "sync")
COMMIT_TIMES = 100_000


@dataclass
class ClusterConfig:
    node_id: str
    address: str  # this node's gRPC address as peers and clients reach it
    peers: dict[str, str]  # the other nodes: id -> address
    mode: str = "quorum"
    heartbeat_interval: float = 0.1
    election_timeout: float = 1.0
    token: str = ""  # sent to peers as `authorization: Bearer <token>`
    credentials: grpc.ChannelCredentials | None = None
    channel_options: list = field(default_factory=list)


def parse_peers(text: str) -> dict[str, str]:
    """`b=host:port,c=host:port` -> {"b": "host:port", "c": "host:port"}."""
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, addr = item.partition("=")
        host, colon, port = addr.rpartition(":")
        if not sep or not name or not colon or not host or not port.isdigit():
            raise ValueError(f"peer {item!r} is not id=host:port")
        if name in out:
            raise ValueError(f"peer {name!r} is listed twice")
        out[name] = addr
    return out


class Cluster:
    def __init__(self, conf: ClusterConfig, data_dir: str, engine: Callable,
                 reopen: Callable[..., Awaitable[None]]) -> None:
        if conf.mode not in MODES:
            raise ValueError(f"replication must be one of {', '.join(MODES)}, not {conf.mode!r}")
        if conf.node_id in conf.peers:
            raise ValueError(f"node {conf.node_id!r} is listed among its own peers")
        self.conf = conf
        self.node_id = conf.node_id
        self.address = conf.address
        self.mode = conf.mode
        self.heartbeat_interval = conf.heartbeat_interval
        self.election_timeout = conf.election_timeout
        self.data_dir = data_dir
        self.engine = engine
        self._reopen = reopen
        self.metadata = (("authorization", f"Bearer {conf.token}"),) if conf.token else ()
        self._last_entry = (0, 0)
        self.node = Node(conf.node_id, [conf.node_id, *conf.peers], FilePersistence(data_dir),
                         self._log_end, election_timeout=conf.election_timeout,
                         heartbeat_interval=conf.heartbeat_interval, now=time.monotonic(),
                         on_master=self._on_master, on_role=self._on_role)
        self.links: dict[str, PeerLink] = {}
        # The commit point, this master's waiters, and what a replica knows of the
        # master's progress: sans-I/O (replication/progress.py), driven from here.
        self.progress = Progress(self.node.quorum, conf.mode)
        self.follower = Follower(self.progress)
        self.master_address: dict[str, str] = dict(conf.peers)
        self.master_address[conf.node_id] = conf.address
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, pbg.ReplicationStub] = {}
        self._tasks: set[asyncio.Task] = set()
        self._ticker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._follow_gen = 0
        self._follow_tasks: set[asyncio.Task] = set()  # replica side: open Follow handlers
        self._apply_lock = asyncio.Lock()
        self._resetting = False  # the engine is being reopened (a cut or an install)
        self._resyncing = False  # a checkpoint is being fetched (one at a time)
        self._handing_to: str | None = None  # master: the replica a hand-over goes to
        self.served = checkpoints.Served(data_dir)
        # Told the highest LSN subscribers may see (distribution/feed.py): the commit
        # point, or ALL on a master in async mode, which acknowledges at local durability.
        self.on_publish_limit: Callable[[int], None] | None = None
        # Master: when its frames became durable here, (last LSN of a commit group, time),
        # so a peer's lag is the age of the oldest frame it has not acknowledged. At most
        # one entry per millisecond and COMMIT_TIMES entries (a peer further behind shows
        # at least the age of the oldest entry kept).
        self._commit_times: deque[tuple[int, float]] = deque(maxlen=COMMIT_TIMES)
        self.stats = {"elections_won": 0, "step_downs": 0, "resyncs": 0, "truncations": 0,
                      "appends_applied": 0, "append_groups": 0}

    @property
    def commit_lsn(self) -> int:
        return self.progress.commit_lsn

    @property
    def term_start(self) -> int:
        return self.progress.term_start

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.attach(self.engine())
        self._ticker = asyncio.ensure_future(self._tick_loop())
        log.info("node %s (%s) in a cluster of %d, replication %s: starting as a replica, "
                 "term %d", self.node_id, self.address, len(self.conf.peers) + 1, self.mode,
                 self.node.term)

    def attach(self, engine) -> None:
        """Hook a (re)opened engine in: commit listener, role, read gate."""
        engine.add_commit_listener(self._on_commit)
        self._last_entry = engine.last_entry()
        master = self.node.role == MASTER
        engine.set_read_only(not master)
        if master and self.mode == "async":
            engine.set_commit_lsn(None)
        else:
            engine.set_commit_lsn(self.commit_lsn)
        self._publish_limit()

    def _publish_limit(self) -> None:
        if self.on_publish_limit is not None:
            async_master = self.node.role == MASTER and self.mode == "async"
            self.on_publish_limit(ALL if async_master else self.commit_lsn)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        self._stop_links()
        self._fail_waiters(NoMaster("the server is shutting down", outcome_unknown=True))
        for t in list(self._tasks) + list(self._follow_tasks):
            t.cancel()
        for ch in self._channels.values():
            await ch.close()

    def _spawn(self, coro) -> asyncio.Task:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    def stub(self, peer: str) -> pbg.ReplicationStub:
        if peer not in self._stubs:
            addr = self.conf.peers[peer]
            opts = self.conf.channel_options + [
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
                # reconnect within a heartbeat or so of a peer coming back
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000)]
            ch = (grpc.aio.secure_channel(addr, self.conf.credentials, options=opts)
                  if self.conf.credentials else grpc.aio.insecure_channel(addr, options=opts))
            self._channels[peer] = ch
            self._stubs[peer] = pbg.ReplicationStub(ch)
        return self._stubs[peer]

    def follow_call(self, peer: str):
        """A Follow stream to `peer` that takes serialized ToReplica messages, so that
        one commit group's Append is encoded once for all peers (link.GroupAppend)."""
        self.stub(peer)
        return self._channels[peer].stream_stream(
            "/strata.v1.Replication/Follow", request_serializer=None,
            response_deserializer=pb.FromReplica.FromString)(metadata=self.metadata)

    # -- election plumbing ----------------------------------------------------------

    def _log_end(self) -> tuple[int, int]:
        eng = self.engine()
        if eng is not None:
            self._last_entry = eng.last_entry()
        return self._last_entry

    def role_term(self) -> int | None:
        """This node's term if it is master, else None."""
        return self.node.term if self.node.role == MASTER else None

    def receive(self, msg) -> None:
        self._dispatch(self.node.receive(msg, time.monotonic()))

    def _dispatch(self, out) -> None:
        for peer, msg in out:
            if isinstance(msg, RequestVote):
                self._spawn(self._ask_vote(peer, msg))
            elif isinstance(msg, Heartbeat):
                link = self.links.get(peer)
                if link is not None:
                    link.heartbeat()
            elif isinstance(msg, TimeoutNow):
                self._spawn(self._send_timeout_now(peer, msg))
            # Vote and HeartbeatAck are answers: they travel in RPC replies (below).

    async def _ask_vote(self, peer: str, msg: RequestVote) -> None:
        try:
            reply = await self.stub(peer).RequestVote(
                pb.VoteRequest(term=msg.term, candidate=msg.candidate, last_term=msg.last_term,
                               last_lsn=msg.last_lsn, pre_vote=msg.pre, transfer=msg.transfer),
                metadata=self.metadata, timeout=self.election_timeout / 2)
        except grpc.RpcError:
            return
        self.receive(Vote(reply.term, reply.voter, reply.granted, reply.pre_vote))

    async def _send_timeout_now(self, peer: str, msg: TimeoutNow) -> None:
        try:
            await self.stub(peer).TimeoutNow(
                pb.TimeoutNowRequest(term=msg.term, master=msg.master),
                metadata=self.metadata, timeout=self.election_timeout / 2)
        except grpc.RpcError as e:
            # Nobody serves now; the replicas elect a master the usual way.
            log.warning("telling %s to start an election failed: %s", peer, e.code().name)

    async def transfer_leadership(self, to: str = "", timeout: float | None = None) -> str:
        """Hand the master's role over (Raft thesis, section 3.10) and return the node
        that won. This master stops serving (writes and reads are redirected to the
        chosen replica), waits until that replica has every write durable and every
        waiting write is committed, then steps down and tells it to start an election
        at once. Raises NotMaster/NoMaster on a node that is not master, InvalidArgument
        for an unknown node, and NoMaster when the replica did not catch up within
        `timeout` (this master then serves again) or no master was seen in time."""
        node = self.node
        if node.role != MASTER:
            raise self._not_serving()
        if not self.term_start:
            raise NoMaster(f"node {self.node_id} is starting its term; retry")
        if to and to not in self.links:
            raise InvalidArgument(f"{to!r} is not a peer of {self.node_id} "
                                  f"(peers: {', '.join(self.links)})")
        timeout = timeout if timeout is not None else 4 * self.election_timeout
        now = time.monotonic()
        eng = self.engine()
        last = eng.last_lsn if eng is not None else 0
        live = [ln for ln in self.links.values() if ln.state(now, last) in ("healthy", "degraded")]
        if not to and not live:
            raise NoMaster(f"no replica of {self.node_id} answers: none to hand over to")
        target = to or max(live, key=lambda ln: ln.match).peer
        link = self.links[target]
        term = node.term
        t0 = now
        deadline = now + timeout
        log.warning("handing the master's role of term %d over to %s (acknowledged LSN %d "
                    "of %d)", term, target, link.match, last)
        self._handing_to = target
        node.pause_for_transfer(now, deadline)
        try:
            # The log stops growing (writes are refused); what is queued drains.
            while True:
                now = time.monotonic()
                if node.role != MASTER or node.term != term or not node.transferring(now):
                    raise NoMaster(f"the hand-over to {target} was overtaken (term "
                                   f"{node.term}, role {node.role})")
                eng = self.engine()
                last = eng.last_lsn if eng is not None else 0
                if link.match >= last and self.commit_lsn >= last and not self.progress.waiting:
                    break
                if now >= deadline:
                    node.resume()
                    raise NoMaster(f"{target} did not catch up within {timeout:.1f}s "
                                   f"(acknowledged LSN {link.match} of {last}): "
                                   f"{self.node_id} stays master")
                await asyncio.sleep(0.002)
            self._dispatch(node.timeout_now(target, time.monotonic()))
            while time.monotonic() < deadline:
                m = node.master
                if m and m != self.node_id and node.term > term:
                    log.warning("%s is master of term %d after %.3fs", m, node.term,
                                time.monotonic() - t0)
                    return m
                await asyncio.sleep(0.002)
            raise NoMaster(f"no master was elected within {timeout:.1f}s after handing over "
                           f"to {target}; the replicas elect one the usual way")
        finally:
            self._handing_to = None

    def timeout_now(self, req) -> pb.TimeoutNowReply:
        """The replica's side: the master asks it to start an election at once."""
        before = self.node.term
        self.receive(TimeoutNow(req.term, req.master))
        started = self.node.term > before and self.node.voted_for == self.node_id
        if started:
            log.warning("master %s handed over: election for term %d", req.master,
                        self.node.term)
        return pb.TimeoutNowReply(term=self.node.term, started=started)

    async def _tick_loop(self) -> None:
        period = self.heartbeat_interval / 4
        while True:
            try:
                self._dispatch(self.node.tick(time.monotonic()))
                if self.node.role == MASTER:
                    self._release_waiters()
            except Exception:
                log.exception("election tick failed")
            await asyncio.sleep(period)

    def _on_master(self, term: int) -> None:
        self.stats["elections_won"] += 1
        log.warning("node %s is master of term %d", self.node_id, term)
        self.progress.begin_term()
        self._stop_links()
        # Frames this node had before it won are as old as its term, for lag purposes.
        eng = self.engine()
        self._commit_times.clear()
        self._commit_times.append((eng.last_lsn if eng is not None else 0, time.monotonic()))
        self.links = {p: PeerLink(self, p, addr, term) for p, addr in self.conf.peers.items()}
        for link in self.links.values():
            link.task = self._spawn(link.run())
        self._spawn(self._begin_term(term))

    async def _begin_term(self, term: int) -> None:
        eng = self.engine()
        if eng is None or self.node.term != term or self.node.role != MASTER:
            return
        eng.set_read_only(False)
        if self.mode == "async":
            eng.set_commit_lsn(None)
            self._publish_limit()
        try:
            lsn = await eng.begin_term_async(term, self.node_id)
        except Exception as e:
            log.error("could not write the term marker of term %d: %s", term, e)
            return
        if self.node.term == term and self.node.role == MASTER:
            self.progress.term_started(lsn)
            log.info("term %d begins at LSN %d", term, lsn)
            self.advance_commit()

    def _on_role(self, role: str, term: int, master: str | None) -> None:
        if role != MASTER:
            if self.links:
                self.stats["step_downs"] += 1
                log.warning("node %s steps down in term %d (master: %s)", self.node_id, term,
                            master or "unknown")
            self._stop_links()
            self.progress.begin_term()
            eng = self.engine()
            if eng is not None:
                eng.set_read_only(True)
                eng.set_commit_lsn(self.commit_lsn)
            self._publish_limit()
            self._fail_waiters(NoMaster(f"node {self.node_id} is no longer master (term {term}): "
                                        f"the write's replication is unknown", outcome_unknown=True))

    def _stop_links(self) -> None:
        for link in self.links.values():
            if link.task is not None:
                link.task.cancel()
        self.links = {}

    # -- commit point and waiters (master) ------------------------------------------

    def _on_commit(self, frames: list[bytes]) -> None:
        """Commit listener: on the committing thread, under the engine's mutex."""
        loop = self._loop
        if loop is not None and self.links:  # a master's: replicas have no links
            loop.call_soon_threadsafe(self._deliver, frames)

    def _deliver(self, frames: list[bytes]) -> None:
        """A commit group, on the loop: its frames are joined and its Append encoded
        once (link.GroupAppend) for every peer, whose senders take it as it is."""
        if not self.links:
            return
        first = record.frame_span(frames[0])[0]
        last = record.frame_span(frames[-1])[1]
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        now = time.monotonic()
        times = self._commit_times
        if times and now - times[-1][1] < 0.001:
            times[-1] = (last, times[-1][1])  # the same millisecond: widen the last entry
        else:
            times.append((last, now))
        self.advance_commit()
        links = self.links.values()
        term = next(iter(links)).term
        group = GroupAppend(first, last, data, now,
                            (term, self.node_id, self.address, self.commit_lsn))
        for link in links:
            link.offer(group)

    def advance_commit(self) -> None:
        if self.node.role != MASTER:
            return
        eng = self.engine()
        if eng is None:
            return
        if self.progress.advance(eng.last_lsn, (ln.match for ln in self.links.values())):
            if self.mode != "async":
                eng.set_commit_lsn(self.commit_lsn)
            self._publish_limit()
        self._release_waiters()

    def frame_age(self, acked: int, now: float) -> float:
        """Seconds since the oldest frame past `acked` became durable on this master
        (0.0 when there is none)."""
        times = self._commit_times
        if not times or times[-1][0] <= acked:
            return 0.0
        i = bisect.bisect_right(times, acked, key=lambda e: e[0])
        return now - times[i][1]

    def _live_matches(self) -> list[int]:
        """The acknowledged LSNs of the peers that are not failed (sync mode waits for
        them)."""
        now = time.monotonic()
        return [ln.match for ln in self.links.values() if ln.state(now) != "failed"]

    def _release_waiters(self) -> None:
        live = self._live_matches() if self.mode == "sync" else ()
        for fut in self.progress.release(live):
            if not fut.done():
                fut.set_result(None)

    def _fail_waiters(self, err: Exception) -> None:
        for fut in self.progress.fail():
            if not fut.done():
                fut.set_exception(err)

    async def committed(self, lsn: int) -> None:
        """Return once write `lsn` may be acknowledged in this mode; NoMaster if this node
        stops being master first (the write's fate is then unknown)."""
        if self.node.role != MASTER:
            raise NoMaster("this node stopped being master: the write's replication is unknown",
                           outcome_unknown=True)
        if self.mode == "async":
            if not self.node.has_lease(time.monotonic()):
                raise NoMaster("the master lost its lease: the write is on this node only and "
                               "may be lost", outcome_unknown=True)
            return
        live = self._live_matches() if self.mode == "sync" else ()
        if self.progress.releasable(lsn, live):
            return
        fut = asyncio.get_running_loop().create_future()
        self.progress.wait(lsn, fut)
        await fut

    # -- admission ------------------------------------------------------------------

    def _not_serving(self) -> Exception:
        node = self.node
        target = self._handing_to
        if target and (node.role == MASTER or not node.master) \
                and target in self.master_address:
            # Sent on to the replica taking over: it is master within a few round trips.
            return NotMaster(target, self.master_address[target])
        if node.role == MASTER:
            if not self.term_start:
                return NoMaster(f"node {self.node_id} was just elected (term {node.term}) and is "
                                f"writing its term marker; retry")
            return NoMaster(f"master {self.node_id} has not heard from a majority within its "
                            f"lease: it serves nothing until it does (or another is elected)")
        m = node.master
        if m and m != self.node_id and m in self.master_address:
            return NotMaster(m, self.master_address[m])
        return NoMaster("no master is known to this node yet (an election may be running); retry")

    def check_write(self) -> None:
        node = self.node
        if node.role == MASTER and self.term_start and node.has_lease(time.monotonic()):
            return
        raise self._not_serving()

    def check_read(self, stale_ok: bool) -> None:
        if stale_ok:
            return
        node = self.node
        if node.role == MASTER and self.term_start and self.commit_lsn >= self.term_start \
                and node.has_lease(time.monotonic()):
            return
        raise self._not_serving()

    # -- replica side ---------------------------------------------------------------

    def _hear(self, term: int, master: str, address: str, sent: float) -> bool:
        out = self.node.receive(Heartbeat(term, master, sent), time.monotonic())
        ok = bool(out) and isinstance(out[0][1], HeartbeatAck) and out[0][1].ok
        if ok and address:
            self.master_address[master] = address
        return ok

    async def follow(self, requests) -> object:
        """The replica's half of a Follow stream (an async generator of FromReplica)."""
        eng = self.engine()
        if eng is None or self._resetting or self._resyncing:
            raise NoMaster("this replica is resetting its log or fetching a checkpoint; retry")
        self._follow_gen += 1
        gen = self._follow_gen
        task = asyncio.current_task()
        self._follow_tasks.add(task)
        try:
            # aclosing: a cancelled stream ends _follow (and its reader task) now, not
            # whenever the async generator is finalized.
            async with contextlib.aclosing(self._follow(eng, gen, requests)) as out:
                async for msg in out:
                    yield msg
        finally:
            self._follow_tasks.discard(task)

    async def _follow(self, eng, gen: int, requests) -> object:
        yield pb.FromReplica(hello=pb.Hello(
            node=self.node_id, term=self.node.term, last_lsn=eng.last_lsn,
            flushed_lsn=eng.flushed_lsn, wal_version=record.VERSION,
            terms=[pb.TermRun(term=t, first_lsn=lsn) for t, lsn in eng.term_history]))
        it = aiter(requests)
        group_acks = False  # until a Start says the master retires Appends by `sent`
        async for msg in it:
            if gen != self._follow_gen:
                return  # a newer stream took over
            if msg.WhichOneof("msg") != "start":
                break  # the first Append: from here on they are read by _read_appends
            s = msg.start
            group_acks = s.group_acks
            if not self._hear(s.term, s.master, s.address, 0.0):
                yield pb.FromReplica(ack=pb.Ack(term=self.node.term, ok=False))
                return
            # Claimed here, before the stream ends and the master reconnects, so
            # that its next stream is refused until the reset is done.
            if s.resync and not (self._resyncing or self._resetting):
                log.warning("master %s: %s; fetching a checkpoint", s.master, s.reason)
                self._resyncing = True
                self._spawn(self._resync(s.master))
            elif s.truncate and not (self._resyncing or self._resetting):
                log.warning("master %s: %s", s.master, s.reason)
                self._resetting = True
                self._spawn(self._reset(truncate_after=s.truncate_after))
            if s.resync or s.truncate:
                return
        else:
            return
        # Appends: a reader task takes them off the stream while the group before them
        # is written (follow.AppendQueue), so each fsync and executor hop serves every
        # Append received meanwhile, answered with one acknowledgement.
        q = AppendQueue(eng.last_lsn)
        wake = asyncio.Event()  # the reader queued an Append or ended
        room = asyncio.Event()  # the applier took a group
        refused = [False]
        reader = asyncio.ensure_future(self._read_appends(msg, it, q, wake, room, refused))
        loop = asyncio.get_running_loop()
        try:
            while True:
                if gen != self._follow_gen:
                    return  # a newer stream took over
                if refused[0]:
                    yield pb.FromReplica(ack=pb.Ack(term=self.node.term, ok=False))
                    return
                g = q.take()
                if g is None:
                    if reader.done():
                        if not reader.cancelled() and reader.exception() is not None:
                            raise reader.exception()
                        return
                    wake.clear()
                    await wake.wait()
                    continue
                room.set()
                if g.size:
                    async with self._apply_lock:
                        if gen != self._follow_gen or g.term != self.node.term:
                            return
                        try:
                            await loop.run_in_executor(None, eng.apply_frames, g.frames)
                        except (LogMismatch, InvalidArgument, StorageError) as e:
                            log.warning("frames from %s not applied: %s", g.last.master, e)
                            ack = q.failed(g, eng.last_lsn, str(e))
                            yield pb.FromReplica(ack=pb.Ack(
                                term=self.node.term, ok=True, error=ack.error,
                                durable_lsn=ack.durable_lsn, sent=ack.sent))
                            return
                        self.stats["appends_applied"] += sum(1 for a in g.appends if a.frames)
                        self.stats["append_groups"] += 1
                elif g.term != self.node.term:
                    return
                ack = q.applied(g, eng.last_lsn)
                if self.follower.append(g.commit_lsn, ack.durable_lsn, time.monotonic()):
                    self._publish_limit()
                eng.set_commit_lsn(self.commit_lsn)
                for a in answers(g, ack, group_acks):
                    yield pb.FromReplica(ack=pb.Ack(term=self.node.term, ok=True,
                                                    durable_lsn=a.durable_lsn, sent=a.sent))
        finally:
            reader.cancel()

    async def _read_appends(self, msg, it, q: AppendQueue, wake: asyncio.Event,
                            room: asyncio.Event, refused: list[bool]) -> None:
        """The reader of a Follow stream's Appends, from `msg` on: each is heard by the
        election on arrival (an fsync in progress does not hold heartbeats back) and
        queued for the applier in `_follow`. Stops at the first Append of an older term
        (`refused`), at the end of the stream, or when the queue closes."""
        try:
            while msg is not None:
                if msg.WhichOneof("msg") != "append":
                    log.warning("a Follow stream sent %s after its Appends began; ending it",
                                msg.WhichOneof("msg"))
                    return
                a = msg.append
                if not self._hear(a.term, a.master, a.address, a.sent):
                    refused[0] = True
                    return
                while q.full:
                    room.clear()
                    await room.wait()
                if not q.put(Append(a.term, a.sent, a.commit_lsn, a.frames, a.master,
                                    a.address)):
                    return
                wake.set()
                msg = await anext(it, None)
        finally:
            wake.set()

    async def _reset(self, truncate_after: int | None = None, install: bool = False) -> None:
        """REQUIRES: self._resetting set by the caller (which claimed the reset)."""
        try:
            self._follow_gen += 1
            async with self._apply_lock:
                await self._reopen(truncate_after=truncate_after, install=install)
            if truncate_after is not None:
                self.stats["truncations"] += 1
        except Exception:
            log.exception("resetting the log failed")
        finally:
            self._resetting = False

    async def _resync(self, master: str) -> None:
        """REQUIRES: self._resyncing set by the caller. Follow streams are refused
        meanwhile, so the master backs off instead of ordering another fetch."""
        self._follow_gen += 1
        self.stats["resyncs"] += 1
        try:
            await checkpoints.fetch(self.stub(master), self.node_id, self.data_dir, self.metadata)
        except Exception as e:
            log.error("fetching a checkpoint from %s failed: %s", master, e)
            return
        finally:
            self._resyncing = False
        self._resetting = True
        await self._reset(install=True)

    def vote(self, req) -> pb.VoteReply:
        out = self.node.receive(RequestVote(req.term, req.candidate, req.last_term, req.last_lsn,
                                            req.pre_vote, req.transfer), time.monotonic())
        v = out[0][1]
        return pb.VoteReply(term=v.term, voter=v.voter, granted=v.granted, pre_vote=v.pre)

    # -- status ---------------------------------------------------------------------

    def replica_health(self, max_lag_s: float) -> str:
        """Why this node should not be read from as a replica ("" if it may): the named
        health service `strata.v1.Replica` answers NOT_SERVING while this is not empty.
        A master is fine while it holds its lease; a replica must follow a master (an
        Append within an election timeout) and not be behind the commit point that
        master sent for longer than `max_lag_s`."""
        now = time.monotonic()
        if self.node.role == MASTER:
            return "" if self.node.has_lease(now) else "master without its lease"
        return self.follower.unfit(now, self.election_timeout, max_lag_s)

    def status(self) -> dict:
        now = time.monotonic()
        node = self.node
        m = node.master
        eng = self.engine()
        last = eng.last_lsn if eng is not None else 0
        peers = []
        for pid, addr in self.conf.peers.items():
            ln = self.links.get(pid)
            if ln is None:
                # A replica knows its master by the Appends it takes, and nothing of
                # the other replicas.
                heard = self.follower.heard_at if pid == m else None
                age = now - heard if heard is not None else -1.0
                state = ("unknown" if heard is None else "failed"
                         if age >= self.election_timeout else
                         "healthy" if age < 3 * self.heartbeat_interval else "degraded")
                peers.append(dict(node=pid, address=addr, state=state, acked_lsn=0,
                                  lag_lsns=0, lag_ms=0.0, last_heartbeat_ago_s=age))
                continue
            peers.append(dict(node=pid, address=addr, state=ln.state(now, last),
                              acked_lsn=ln.match, lag_lsns=max(0, last - ln.match),
                              lag_ms=ln.lag_s(now) * 1000,
                              last_heartbeat_ago_s=(now - ln.last_answer
                                                    if ln.last_answer is not None else -1.0)))
        return dict(role=node.role, term=node.term,
                    master=f"{m}={self.master_address.get(m, '')}" if m else "",
                    commit_lsn=self.commit_lsn, lease=node.has_lease(now), peers=peers,
                    replication=self.mode)


class ReplicationService(pbg.ReplicationServicer):
    """The internal gRPC service; admits only callers with the cluster's token."""

    def __init__(self, cluster: Cluster, token: str = "") -> None:
        self.cluster = cluster
        self._token = token

    async def _auth(self, context) -> None:
        if self._token:
            got = dict(context.invocation_metadata() or ()).get(AUTH_METADATA, "")
            if not token_matches(got, (self._token,)):  # constant-time
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "cluster token required")

    async def Follow(self, request_iterator, context):
        await self._auth(context)
        try:
            async for msg in self.cluster.follow(request_iterator):
                yield msg
        except NoMaster as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))

    async def RequestVote(self, request, context):
        await self._auth(context)
        return self.cluster.vote(request)

    async def TimeoutNow(self, request, context):
        await self._auth(context)
        return self.cluster.timeout_now(request)

    async def FetchCheckpoint(self, request, context):
        await self._auth(context)
        eng = self.cluster.engine()
        if eng is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the database is not open")
        async for chunk in self.cluster.served.chunks(eng, request):
            yield chunk

