"""gRPC services KV, Events and Admin on grpc.aio.

Every call passes the same gate (`Gate`): engine ready, auth token, per-client
rate limit, concurrency cap, deadline, then the handler; errors are mapped to
status codes by server.errors.classify. Handlers never block the loop: writes
await the engine's async commit path (fsync runs on the committer thread),
scans and admin work run in the default executor.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.metadata
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import grpc

from strata.distribution.consumer import GRPC
from strata.distribution.cursors import cursor_key
from strata.distribution.hub import Lapped
from strata.distribution.hub import stream as hub_stream
from strata.distribution.session import BadRequest, parse_request
from strata.node import kv
from strata.node.node import Node
from strata.node.status import node_status
from strata.storage import Engine
from strata.storage.filenames import CURRENT
from strata_client._proto import strata_pb2 as pb
from strata_client._proto import strata_pb2_grpc as pbg
from strata_client.auth import AUTH_METADATA, token_matches

from .config import Config, backup_dir
from .errors import InvalidInput, NotFound, Overloaded, Unauthenticated, Unavailable, classify
from .limits import Bulkhead, RateLimiter
from .metrics import Metrics

log = logging.getLogger("strata.rpc")

try:
    VERSION = importlib.metadata.version("strata")
except importlib.metadata.PackageNotFoundError:  # run from a tree that was never installed
    VERSION = "unknown"
SCAN_CHUNK_ITEMS = 512
SCAN_CHUNK_BYTES = 1 << 20
WRITE_STREAM_INFLIGHT = 1024  # requests of one Write stream awaiting their fsync
DEADLINE_SWEEP_S = 0.01  # unary calls past their deadline are cancelled within this


class Malformed:
    """Stands in for a request whose bytes did not decode (see `tolerant_handlers`)."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(deserialize):
    def load(data: bytes):
        try:
            return deserialize(data)
        except Exception as e:  # protobuf's DecodeError and friends
            return Malformed(f"request is not a valid protobuf message: {e}")
    return load


class tolerant_handlers:
    """Passed to the generated add_*_to_server in place of the server: installs the
    handlers with deserializers that turn undecodable bytes into `Malformed`,
    so the gate answers INVALID_ARGUMENT instead of gRPC's UNKNOWN."""

    def __init__(self, server) -> None:
        self.server = server

    @staticmethod
    def _patch(handlers: dict) -> None:
        for name, h in list(handlers.items()):
            if h.request_deserializer is not None:
                handlers[name] = h._replace(request_deserializer=_tolerant(h.request_deserializer))

    def add_generic_rpc_handlers(self, generic_handlers) -> None:
        for g in generic_handlers:
            self._patch(g._method_handlers)
        self.server.add_generic_rpc_handlers(generic_handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self._patch(handlers)
        self.server.add_registered_method_handlers(service, handlers)


def _check(request) -> None:
    if isinstance(request, Malformed):
        raise InvalidInput(request.error)


# Calls that write files or rewrite the database: with admin_token set, only it admits them.
ADMIN_METHODS = frozenset({"Admin.Checkpoint", "Admin.Checkpoints", "Admin.Compact",
                           "Admin.TransferLeader", "Admin.DeleteConsumer"})


class Gate:
    """Admission and accounting shared by every RPC."""

    def __init__(self, cfg: Config, metrics: Metrics, node: Node) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.node = node  # calls use node.serving, the engine in service (None: starting)
        self.draining = False
        # reader tasks of open Write streams: told to stop reading when draining
        self.write_readers: set[asyncio.Task] = set()
        self.rate = RateLimiter(cfg.rate_limit, cfg.rate_burst)
        self.calls = Bulkhead(cfg.max_concurrent_calls)
        self.streams = Bulkhead(cfg.max_streams)
        self._unary = _Kind(self.calls, metrics.inflight, "concurrency", "calls in progress", True)
        self._streaming = _Kind(self.streams, metrics.open_streams, "streams", "streams open",
                                False)
        # Deadlines of unary calls in progress (task -> loop time), enforced by one timer
        # that runs while any call is in progress: asyncio.timeout per call cost ~5 us of
        # a Get's ~200 us (a timer armed and cancelled, task bookkeeping).
        self._deadlines: dict[asyncio.Task, float] = {}
        self._expired: set[asyncio.Task] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    def reload(self, cfg: Config) -> None:
        self.cfg = cfg
        self.rate.configure(cfg.rate_limit, cfg.rate_burst)
        self.calls.limit = cfg.max_concurrent_calls
        self.streams.limit = cfg.max_streams

    def _client(self, context) -> str:
        peer = context.peer() or ""
        # "ipv4:127.0.0.1:5000" / "ipv6:[::1]:5000": the address without the port
        return peer.rsplit(":", 1)[0]

    def drain(self) -> None:
        """Refuse new calls; Write streams stop reading new messages, answer the ones
        they took and end with UNAVAILABLE (their client resends the rest elsewhere)."""
        self.draining = True
        for t in list(self.write_readers):
            t.cancel()

    def _authorize(self, context, method: str) -> None:
        """The data token admits data calls; with `admin_token` set, ADMIN_METHODS take
        only it (it admits every other call too)."""
        cfg = self.cfg
        admin = method in ADMIN_METHODS and bool(cfg.admin_token)
        if not (cfg.auth_token or admin):
            return
        got = dict(context.invocation_metadata() or ()).get(AUTH_METADATA, "")
        tokens = [cfg.admin_token] if admin else [cfg.auth_token, cfg.admin_token]
        if not token_matches(got, tokens):
            self.metrics.refused.labels("auth").inc()
            if admin:
                raise Unauthenticated(f"{method} needs the admin token: "
                                      f"send `authorization: Bearer <admin_token>`")
            raise Unauthenticated("missing or wrong token: send `authorization: Bearer <token>`")

    def _admit(self, context, method: str) -> Engine:
        cfg = self.cfg
        self._authorize(context, method)
        engine = self.node.serving
        if engine is None:
            raise Unavailable("server is starting: the database is being recovered; retry shortly")
        if self.draining:
            raise Unavailable("server is shutting down; retry on another node or later")
        if self.rate.rate > 0 and not self.rate.allow(self._client(context)):
            self.metrics.refused.labels("rate").inc()
            raise Overloaded(f"rate limit of {cfg.rate_limit:g} requests/s exceeded; back off and retry")
        return engine

    def _deadline(self, context) -> float:
        left = context.time_remaining()
        return left if left is not None else self.cfg.default_deadline_s

    def _sweep(self) -> None:
        """Cancel the calls past their deadline (Gate.unary turns that into
        DEADLINE_EXCEEDED); re-armed while calls are in progress."""
        self._sweeper = None
        if not self._deadlines:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task, at in list(self._deadlines.items()):
            if at <= now and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        self._sweeper = loop.call_later(DEADLINE_SWEEP_S, self._sweep)

    def _enter(self, context, method: str, request, kind: _Kind) -> Engine:
        """Admit a call (see _admit) and take a slot of `kind.cap` (the caller leaves it);
        refused: Overloaded, counted under `kind.reason`."""
        _check(request)
        engine = self._admit(context, method)
        if not kind.cap.try_enter():
            self.metrics.refused.labels(kind.reason).inc()
            raise Overloaded(f"more than {kind.cap.limit} {kind.what}; back off and retry")
        return engine

    async def unary(self, method: str, context, handler, request=None) -> Any:
        async with _Call(self, self._unary, method, context, request) as engine:
            task = asyncio.current_task()
            loop = task.get_loop()
            self._deadlines[task] = loop.time() + self._deadline(context)
            if self._sweeper is None:
                self._sweeper = loop.call_later(DEADLINE_SWEEP_S, self._sweep)
            try:
                return await handler(engine)
            except asyncio.CancelledError:
                if task not in self._expired:
                    raise  # the client went away
                task.uncancel()
                raise TimeoutError(f"{method} ran past its deadline") from None
            finally:
                del self._deadlines[task]
                self._expired.discard(task)

    async def streaming(self, method: str, context, gen, request=None) -> AsyncIterator:
        """Admit a stream and serve `gen(engine, stream)`: `stream` is its entry in
        node.connections, registered while it is open."""
        async with _Call(self, self._streaming, method, context, request) as engine:
            # "ipv4:127.0.0.1:5000" -> "127.0.0.1:5000", as the WebSocket port says it
            peer = (context.peer() or "").partition(":")[2]
            stream = self.node.connections.open("grpc", peer, method)
            try:
                async for item in gen(engine, stream):
                    yield item
            finally:
                self.node.connections.close(stream)


class _Kind(NamedTuple):
    """Unary calls or streams: the cap on how many run at once, the gauge counting them,
    the `refused` reason and words for the error; whether latency is observed."""

    cap: Bulkhead
    gauge: Any
    reason: str
    what: str
    timed: bool


class _Call:
    """One call through the gate (`async with`): admitted on entry, which gives the engine;
    on exit its slot is left and it is observed; a failure, admission's included,
    becomes the call's status and trailers (`_failed`) and aborts it."""

    __slots__ = ("gate", "kind", "method", "context", "request", "t0", "entered")

    def __init__(self, gate: Gate, kind: _Kind, method: str, context, request) -> None:
        self.gate = gate
        self.kind = kind
        self.method = method
        self.context = context
        self.request = request
        self.t0 = time.perf_counter()
        self.entered = False

    async def __aenter__(self) -> Engine:
        try:
            engine = self.gate._enter(self.context, self.method, self.request, self.kind)
        except Exception as e:
            await self.__aexit__(type(e), e, None)
            raise
        self.entered = True
        self.kind.gauge.inc()
        return engine

    async def __aexit__(self, etype, e, tb) -> None:
        code = grpc.StatusCode.OK
        try:
            if isinstance(e, Exception):
                code, msg = _failed(self.context, e)
                await self.context.abort(code, msg)
        finally:
            kind = self.kind
            if self.entered:
                kind.cap.leave()
                kind.gauge.dec()
            self.gate.metrics.observe(self.method, code.name,
                                      time.perf_counter() - self.t0 if kind.timed else None)


_KINDS = {pb.Op.PUT: "put", pb.Op.DELETE: "delete"}


def _failed(context, e: Exception) -> tuple[grpc.StatusCode, str]:
    """A failed call's status and message; its trailers are set on `context`."""
    code, msg, trailers = classify(e)
    if trailers:
        context.set_trailing_metadata(trailers)
    return code, msg


def _ops(cfg: Config, req) -> list[tuple]:
    _check(req)
    return kv.check_ops(cfg, [(_KINDS.get(op.kind), op.key, op.value) for op in req.ops])


async def _write_batch(node: Node, engine: Engine, req, ops: list[tuple]) -> pb.BatchResponse:
    lsn, lsns = await kv.batch(node, engine, ops, req.request_id,
                               [op.request_id for op in req.ops])
    return pb.BatchResponse(lsn=lsn, id=req.id, lsns=lsns)


class _Service:
    """A service's handlers: each admits its call through the gate and calls the node."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.node = gate.node

    async def _write(self, method: str, context, request, reply, write) -> Any:
        """A write answered with its LSN: `write(engine)` is the node.kv call."""
        async def handle(engine: Engine):
            return reply(lsn=await write(engine))

        return await self.gate.unary(method, context, handle, request)


class KVService(_Service, pbg.KVServicer):
    """KV: each handler admits the call (Gate) and calls one node.kv function."""

    async def Put(self, request, context):
        return await self._write("KV.Put", context, request, pb.PutResponse, lambda engine: kv.put(
            self.node, engine, request.key, request.value, request.request_id))

    async def Get(self, request, context):
        async def handle(engine: Engine):
            value, lsn = kv.get(self.node, engine, request.key, request.stale_ok)
            if value is None:
                return pb.GetResponse(found=False)
            return pb.GetResponse(found=True, value=value, lsn=lsn)

        return await self.gate.unary("KV.Get", context, handle, request)

    async def Delete(self, request, context):
        return await self._write("KV.Delete", context, request, pb.DeleteResponse,
                                 lambda engine: kv.delete(self.node, engine, request.key,
                                                          request.request_id))

    async def Batch(self, request, context):
        async def handle(engine: Engine):
            return await _write_batch(self.node, engine, request, _ops(self.gate.cfg, request))

        return await self.gate.unary("KV.Batch", context, handle, request)

    async def CompareAndSet(self, request, context):
        which = request.WhichOneof("expect")
        expected = getattr(request, which) if which else None
        return await self._write(
            "KV.CompareAndSet", context, request, pb.CompareAndSetResponse,
            lambda engine: kv.compare_and_set(self.node, engine, request.key, request.value,
                                              request.delete, which, expected))

    async def Scan(self, request, context):
        async def gen(engine: Engine, _stream):
            loop = asyncio.get_running_loop()
            snap, it = kv.scan(self.node, engine, request.start, request.end, request.stale_ok)
            try:
                left = request.limit or (1 << 62)
                keys_only = request.keys_only

                def chunk() -> tuple[list, bool]:
                    out, size = [], 0
                    for k, v in it:
                        out.append(pb.KeyValue(key=k) if keys_only else pb.KeyValue(key=k, value=v))
                        size += len(k) + (0 if keys_only else len(v))
                        if len(out) >= min(SCAN_CHUNK_ITEMS, left) or size >= SCAN_CHUNK_BYTES:
                            return out, True
                    return out, False

                more = True
                while more and left > 0:
                    items, more = await loop.run_in_executor(None, chunk)
                    if items:
                        left -= len(items)
                        yield pb.ScanResponse(items=items, snapshot_lsn=snap.lsn)
            finally:
                snap.release()

        async for item in self.gate.streaming("KV.Scan", context, gen, request):
            yield item

    async def Write(self, request_iterator, context):
        gate, node = self.gate, self.node

        async def gen(engine: Engine, _stream):
            pending: asyncio.Queue = asyncio.Queue(WRITE_STREAM_INFLIGHT)
            done = object()

            async def reader() -> None:
                try:
                    async for req in request_iterator:
                        ops = _ops(gate.cfg, req)
                        node.check_write()
                        task = asyncio.ensure_future(_write_batch(node, engine, req, ops))
                        await pending.put((req.id, task))
                finally:
                    await pending.put((0, done))

            rtask = asyncio.ensure_future(reader())
            gate.write_readers.add(rtask)
            try:
                while True:
                    rid, task = await pending.get()
                    if task is done:
                        break
                    yield await task
                if rtask.cancelled() and gate.draining:
                    # Every message read was answered above; the rest were never
                    # taken, so the client can resend them (with their ids) elsewhere.
                    raise Unavailable("server is shutting down; resend unanswered writes "
                                      "on another node or later")
                await rtask  # surfaces a bad request's error
            finally:
                gate.write_readers.discard(rtask)
                rtask.cancel()

        async for item in gate.streaming("KV.Write", context, gen):
            yield item


class EventsService(_Service, pbg.EventsServicer):
    async def Publish(self, request, context):
        return await self._write("Events.Publish", context, request, pb.PublishResponse,
                                 lambda engine: kv.publish(self.node, engine, request.topic,
                                                           request.key, request.payload))

    async def Subscribe(self, request, context):
        gate, subs = self.gate, self.node.subscriptions

        async def gen(engine: Engine, stream):
            stream.tier = "realtime"
            topics = frozenset(request.topics) if request.topics else None
            subs.connected += 1
            try:
                async for ev in hub_stream(self.node.hub, engine, topics, request.key_prefix,
                                           request.from_lsn, gate.cfg.subscriber_queue):
                    yield pb.Event(lsn=ev.lsn, topic=ev.topic, key=ev.key, value=ev.value,
                                   deleted=ev.deleted, ts_ms=ev.ts or 0)
            except Lapped as e:
                subs.cut_off += 1
                raise Overloaded(str(e), (("strata-resume-lsn", str(e.resume_lsn)),)) from None
            finally:
                subs.connected -= 1

        async for item in gate.streaming("Events.Subscribe", context, gen, request):
            yield item

    async def Consume(self, request_iterator, context):
        async for item in self.gate.streaming(
                "Events.Consume", context,
                lambda engine, stream: consume(self.gate, engine, request_iterator, stream)):
            yield item


class _GrpcIO:
    """session's transport for Events.Consume: responses wait in a bounded deque
    that the stream's generator empties; over 64 waiting, the session pauses."""

    HIGH, LOW = 64, 16

    def __init__(self) -> None:
        self.queue: collections.deque = collections.deque()
        self.ready = asyncio.Event()
        self.room = asyncio.Event()

    def write(self, items) -> None:
        ts = items[-1].ts or 0
        self.queue.append(pb.ConsumeResponse(
            events=[pb.Event(lsn=e.lsn, topic=e.topic, key=e.key, value=e.value,
                             deleted=e.deleted, ts_ms=e.ts or 0) for e in (s.ev for s in items)],
            ts_ms=ts))
        self.ready.set()

    def paused(self) -> bool:
        return len(self.queue) >= self.HIGH

    async def drain(self) -> None:
        while len(self.queue) > self.LOW:
            self.room.clear()
            await self.room.wait()


async def consume(gate: Gate, engine: Engine, requests, stream=None) -> AsyncIterator:
    """Events.Consume: the WebSocket tiers' reliable subscription over gRPC; the
    lifecycle is node.subscriptions', the end its End's gRPC status."""
    first = await anext(requests, None)
    if first is None or first.WhichOneof("op") != "subscribe":
        raise InvalidInput("the first Consume message must be subscribe")
    sub = first.subscribe
    try:
        req = parse_request({"op": "subscribe", "tier": sub.tier or "realtime",
                             "topics": list(sub.topics) or None, "prefix": sub.key_prefix,
                             "from_lsn": sub.from_lsn, "consumer": sub.consumer,
                             "ack": "manual" if sub.manual_ack else "auto",
                             "credits": sub.credits if sub.HasField("credits") else None,
                             "window_ms": sub.window_ms or 100})
    except BadRequest as e:
        raise InvalidInput(str(e)) from None
    subs = gate.node.subscriptions
    subs.admit(req["consumer"])
    c = subs.open(GRPC, req)
    if stream is not None:
        stream.consumer = c  # node.connections forgets it when the stream closes
    io = _GrpcIO()
    task = reader = None
    try:
        start, last = await subs.start(c, engine, req["from_lsn"])
        yield pb.ConsumeResponse(from_lsn=start, last_lsn=last)
        task = asyncio.ensure_future(subs.run(c, engine, start, io, lambda: gate.draining))

        async def read() -> None:
            async for m in requests:
                op = m.WhichOneof("op")
                if op == "ack":
                    c.ack(m.ack)
                elif op == "credit":
                    c.grant(m.credit)
                else:
                    c.end("bad_request", "subscribe only once per stream", c.first_unsent())

        reader = asyncio.ensure_future(read())
        while True:
            while io.queue:
                yield io.queue.popleft()
                if len(io.queue) <= io.LOW:
                    io.room.set()
            if task.done():
                break
            io.ready.clear()
            ready = asyncio.ensure_future(io.ready.wait())
            try:
                await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
            finally:
                # Left pending when the session ended first or the stream was cancelled,
                # it was collected while pending: "Task was destroyed but it is pending!"
                # at ERROR for every consumer that went away.
                ready.cancel()
        raise task.result()
    finally:
        for t in (reader, task):
            if t is not None and not t.done():
                t.cancel()
        await subs.close(c)


def checkpoint_path(root: str, name: str) -> str:
    """The absolute path for checkpoint `name` under `root` (created if missing).

    Only relative names are taken; one that leaves `root` (`..`, or through a
    symbolic link) is refused: a token holder may write checkpoints, not
    files anywhere the daemon can reach.
    """
    if not name or os.path.isabs(name) or "\0" in name:
        raise InvalidInput("checkpoint path must be a relative name, created under the "
                           "server's backup_dir")
    os.makedirs(root, exist_ok=True)
    real_root = os.path.realpath(root)
    path = os.path.normpath(os.path.join(real_root, name))
    parent = os.path.realpath(os.path.dirname(path))
    if os.path.commonpath([real_root, parent]) != real_root or path == real_root:
        raise InvalidInput(f"checkpoint path {name!r} leaves the backup directory")
    if os.path.lexists(path):
        raise InvalidInput(f"checkpoint {name!r} already exists")
    os.makedirs(parent, exist_ok=True)
    return path


def list_checkpoints(root: str) -> list[pb.CheckpointInfo]:
    """Every checkpoint under `root`: each directory holding a CURRENT file (not looked
    into further), oldest first. Blocks on the file system: run it off the loop."""
    out = []
    for here, dirs, files in os.walk(root):
        if CURRENT not in files:
            dirs.sort()
            continue
        dirs[:] = []  # a database's own directories are not checkpoints
        size = count = 0
        for name in files:
            try:
                size += os.stat(os.path.join(here, name)).st_size
                count += 1
            except FileNotFoundError:
                pass
        try:
            created = os.stat(os.path.join(here, CURRENT)).st_mtime
        except FileNotFoundError:
            continue
        out.append(pb.CheckpointInfo(name=os.path.relpath(here, root), path=here, bytes=size,
                                     files=count, created_unix_s=created))
    out.sort(key=lambda c: (c.created_unix_s, c.name))
    return out


class AdminService(_Service, pbg.AdminServicer):
    async def Status(self, request, context):
        async def handle(engine: Engine):
            st = node_status(self.node)
            repl = dict(st.replication)
            if "peers" in repl:
                repl["peers"] = [pb.Peer(**p) for p in repl["peers"]]
            return pb.StatusResponse(
                node=st.node, **repl, durable_lsn=st.durable_lsn, applied_lsn=st.applied_lsn,
                last_lsn=st.last_lsn, flushed_lsn=st.flushed_lsn,
                levels=[pb.Level(level=lv.level, files=lv.files, bytes=lv.bytes)
                        for lv in st.levels],
                sst_bytes=st.sst_bytes, wal_bytes=st.wal_bytes,
                wal_preallocated_bytes=st.wal_preallocated_bytes, version=VERSION,
                uptime_seconds=st.uptime_seconds, durability=st.durability,
                writable=st.writable, write_error=st.write_error, paused=st.paused)

        return await self.gate.unary("Admin.Status", context, handle, request)

    async def Checkpoint(self, request, context):
        async def handle(engine: Engine):
            path = checkpoint_path(backup_dir(self.gate.cfg), request.path)
            lsn = engine.last_lsn
            t0 = time.monotonic()
            log.info("checkpoint %r: writing %s (up to LSN %d)", request.path, path, lsn)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, engine.checkpoint, path)
            written = await loop.run_in_executor(None, list_checkpoints, path)
            log.info("checkpoint %r done: %d bytes in %d files, LSN %d, %.3fs, %s",
                     request.path, sum(c.bytes for c in written), sum(c.files for c in written),
                     lsn, time.monotonic() - t0, path)
            return pb.CheckpointResponse(path=path, lsn=lsn)

        return await self.gate.unary("Admin.Checkpoint", context, handle, request)

    async def Checkpoints(self, request, context):
        async def handle(engine: Engine):
            root = backup_dir(self.gate.cfg)
            found = await asyncio.get_running_loop().run_in_executor(None, list_checkpoints, root)
            return pb.CheckpointsResponse(backup_dir=root, checkpoints=found)

        return await self.gate.unary("Admin.Checkpoints", context, handle, request)

    async def Compact(self, request, context):
        async def handle(engine: Engine):
            t0 = time.monotonic()
            before = engine.disk_usage()["sst_bytes"]
            log.info("compaction of the whole key range: starting (%d table bytes)", before)
            await asyncio.get_running_loop().run_in_executor(None, engine.compact_all)
            log.info("compaction of the whole key range done in %.3fs: %d table bytes, were %d",
                     time.monotonic() - t0, engine.disk_usage()["sst_bytes"], before)
            return pb.CompactResponse(seconds=time.monotonic() - t0)

        return await self.gate.unary("Admin.Compact", context, handle, request)

    async def TransferLeader(self, request, context):
        async def handle(engine: Engine):
            cluster = self.gate.node.cluster
            if cluster is None:
                raise InvalidInput("this node has no peers: there is no one to hand over to")
            t0 = time.monotonic()
            winner = await cluster.transfer_leadership(request.to)
            return pb.TransferLeaderResponse(
                master=f"{winner}={cluster.master_address.get(winner, '')}",
                term=cluster.node.term, seconds=time.monotonic() - t0)

        return await self.gate.unary("Admin.TransferLeader", context, handle, request)

    async def Consumers(self, request, context):
        async def handle(engine: Engine):
            r = self.gate.node.retention
            states = await r.refresh()
            return pb.ConsumersResponse(
                consumers=[pb.ConsumerInfo(
                    name=s.name, cursor_lsn=s.cursor_lsn, lag_lsns=s.lag_lsns,
                    lag_bytes=s.lag_bytes, connected=s.connected,
                    connected_since_unix_s=s.connected_since, last_ack_unix_s=s.last_ack,
                    retained=s.retained, held_bytes=s.held_bytes) for s in states.values()],
                last_lsn=r.last_lsn, earliest_lsn=r.earliest, retention_limit_bytes=r.limit,
                retention_headroom_bytes=r.headroom)

        return await self.gate.unary("Admin.Consumers", context, handle, request)

    async def DeleteConsumer(self, request, context):
        async def handle(engine: Engine):
            node = self.gate.node
            try:
                cursor_key(request.name)
            except ValueError as e:
                raise InvalidInput(str(e)) from None
            node.check_write()  # cursors are written on the master (they replicate)
            try:
                owner, cursor = await node.cursors.delete(request.name)
            except KeyError:
                raise NotFound(f"no consumer named {request.name!r}") from None
            if owner is not None:
                owner.end("deleted", f"consumer {request.name!r} was deleted by an operator "
                                     f"(its cursor, LSN {cursor}, is gone)",
                          owner.first_unsent(owner.acked + 1))
            log.warning("consumer %r deleted (cursor LSN %d%s)", request.name, cursor,
                        ", its subscription ended" if owner is not None else "")
            await node.retention.refresh()  # release its hold on the log now
            return pb.DeleteConsumerResponse(was_connected=owner is not None, cursor_lsn=cursor)

        return await self.gate.unary("Admin.DeleteConsumer", context, handle, request)
