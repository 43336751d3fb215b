"""Sync and asyncio clients for Strata's gRPC API.

Retries (strata_client.attempts has the rules, shared by both clients): only
errors that are `retryable` (UNAVAILABLE, RESOURCE_EXHAUSTED,
DEADLINE_EXCEEDED), and only for calls that are safe to repeat: reads, and
writes that carry a request id (put, delete and batch get one automatically,
so the server answers a repeat with the first LSN instead of writing twice).
Publish and compare-and-set are never sent again once they may have reached a
server. Back-off is exponential with full jitter.

One node: transient errors are retried up to `RetryPolicy.attempts`, each
attempt with the whole timeout, and the circuit breaker fails calls fast after
`threshold` consecutive transient failures, for `cooldown` seconds, then lets
one probe through.

Clusters: `target` may list several nodes ("a:7400,b:7400,c:7400"). A call
then keeps trying until its deadline (the client's `timeout`) and never
raises NotMaster, Unavailable or a connection error while it has time left:
a NotMaster answer (FAILED_PRECONDITION, trailer `strata-master:
id=host:port`) is followed at once, a transient error or a master that does
not answer moves it to the next listed node, and a call going round in a
circle (replicas naming a dead master until they elect another) backs off a
little each round. So a call made during a failover is answered by the new
master once one is elected. Each node has its own channel and circuit
breaker; an open circuit only steers calls to the other nodes.

Outcomes: a call that may have been done but whose answer the client could
not get raises `errors.OutcomeUnknown` (an Unavailable) carrying its
`request_id`, never an error saying nothing was written. A write keeps
retrying with its id until the deadline (the server answers a known id with
its first LSN) and raises it only then; publish and compare-and-set raise it
at once (with no id). Calls that were refused (NotMaster, a connection never
made, a server's plain UNAVAILABLE) were not done.
"""

from __future__ import annotations

import asyncio
import queue
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

import grpc

from . import errors
from ._proto import strata_pb2 as pb
from ._proto import strata_pb2_grpc as pbg
from .attempts import NODE, ONCE, READ, WRITE, Attempts
from .batching import AsyncCoalescer, Batching, Call, Coalescer


@dataclass
class RetryPolicy:
    attempts: int = 5  # total tries, the first included
    base_s: float = 0.05
    cap_s: float = 2.0

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
        return random.uniform(0, min(self.cap_s, self.base_s * (2 ** min(attempt, 60))))


class CircuitBreaker:
    """closed -> open after `threshold` consecutive transient failures -> half-open
    after `cooldown_s` (one probe) -> closed on success / open again on failure.

    A client keeps one per node: the instance given to it serves the first listed
    node, and the others get their own with the same threshold and cooldown."""

    def __init__(self, threshold: int = 5, cooldown_s: float = 2.0) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.failures = 0
        self.open_until = 0.0
        self._probe = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        if self.failures < self.threshold:
            return "closed"
        return "open" if time.monotonic() < self.open_until else "half-open"

    def allow(self) -> bool:
        """Whether a call may go to the node now; True in half-open makes it the probe
        (its success() or failure() ends the probe)."""
        with self._lock:
            if self.failures < self.threshold:
                return True
            if time.monotonic() < self.open_until or self._probe:
                return False
            self._probe = True
            return True

    def before(self) -> None:
        """allow(), raising Unavailable ("circuit open") when the call may not go."""
        if not self.allow():
            raise errors.Unavailable(
                f"circuit open after {self.failures} failures; not calling the server",
                "UNAVAILABLE")

    def success(self) -> None:
        with self._lock:
            self.failures = 0
            self._probe = False

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            self._probe = False
            if self.failures >= self.threshold:
                self.open_until = time.monotonic() + self.cooldown_s


def _ops(ops: Iterable[tuple]) -> list:
    out = []
    for op in ops:
        if op[0] == "put":
            out.append(pb.Op(kind=pb.Op.PUT, key=op[1], value=op[2]))
        elif op[0] == "delete":
            out.append(pb.Op(kind=pb.Op.DELETE, key=op[1]))
        else:
            raise errors.InvalidArgument(f"unknown batch op {op[0]!r}", "INVALID_ARGUMENT")
    return out


def _cas_request(key: bytes, value: bytes | None, expected_lsn, expected_value,
                 expect_absent: bool, delete: bool):
    req = pb.CompareAndSetRequest(key=key, value=value or b"", delete=delete)
    if expected_lsn is not None:
        req.expected_lsn = expected_lsn
    elif expected_value is not None:
        req.expected_value = expected_value
    elif expect_absent:
        req.expect_absent = True
    return req


def _channel_args(max_message: int) -> list:
    # A node killed and restarted in a failover must be callable again within about a
    # second: grpc's own reconnect back-off grows to 120 s, and a channel waiting in it
    # fails every call at once.
    return [("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000)]


class _Stubs:
    """The stubs of one node's channel."""

    __slots__ = ("channel", "kv", "events", "admin")

    def __init__(self, channel) -> None:
        self.channel = channel
        self.kv = pbg.KVStub(channel)
        self.events = pbg.EventsStub(channel)
        self.admin = pbg.AdminStub(channel)


class _Base:
    """What Client and AsyncClient share: the node list, a channel and a circuit breaker
    per node (made on first use, closed by close(); a cluster names only its own nodes,
    so they stay few), and the node new calls start at (`target`: the last that answered,
    or the next listed after one that failed)."""

    def __init__(self, target: str, token: str | None, timeout: float,
                 retry: RetryPolicy | None, breaker: CircuitBreaker | None,
                 root_certificates: bytes | None, tls: bool, max_message: int,
                 batching: Batching | None) -> None:
        self.batching = batching if batching is not None else Batching()
        self.endpoints = [t.strip() for t in target.split(",") if t.strip()] or [target]
        self.target = self.endpoints[0]
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._breaker_model = breaker or CircuitBreaker()
        self._breakers: dict[str, CircuitBreaker] = {self.target: self._breaker_model}
        self._nodes: dict[str, _Stubs] = {}
        self._nodes_lock = threading.Lock()  # creating channels and breakers (threads)
        self.closed = False
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._tls = tls or root_certificates is not None
        self._roots = root_certificates
        self._max_message = max_message

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker of the node calls go to now."""
        return self._breaker(self.target)

    def _breaker(self, target: str) -> CircuitBreaker:
        b = self._breakers.get(target)
        if b is None:
            with self._nodes_lock:
                m = self._breaker_model
                b = self._breakers.setdefault(target, CircuitBreaker(m.threshold, m.cooldown_s))
        return b

    def _node(self, target: str) -> _Stubs:
        node = self._nodes.get(target)
        if node is None:
            with self._nodes_lock:
                node = self._nodes.get(target)
                if node is None:
                    node = self._nodes[target] = _Stubs(self._channel_to(target))
        return node

    def _channel_to(self, target: str):
        raise NotImplementedError

    # The stubs of the node calls go to now (streams: scan, subscribe, consume, write).
    @property
    def kv(self):
        return self._node(self.target).kv

    @property
    def events(self):
        return self._node(self.target).events

    @property
    def admin(self):
        return self._node(self.target).admin

    def batching_stats(self) -> dict:
        """What the put/delete coalescer did: calls, messages, ops_per_message, limit,
        inflight, queued, wait_ms (linger), rtt_ms, ... (see strata_client.batching)."""
        return self._coalescer.stats.as_dict() if self._coalescer else {}

    @staticmethod
    def _single(call: Call):
        """A lone call's own request: (method, request)."""
        if len(call.op) == 3:
            return "kv.Put", pb.PutRequest(key=call.op[1], value=call.op[2],
                                           request_id=call.request_id)
        return "kv.Delete", pb.DeleteRequest(key=call.op[1], request_id=call.request_id)

    @staticmethod
    def _coalesced(calls: list[Call]) -> pb.BatchRequest:
        ops = [pb.Op(kind=pb.Op.PUT, key=c.op[1], value=c.op[2], request_id=c.request_id)
               if len(c.op) == 3 else
               pb.Op(kind=pb.Op.DELETE, key=c.op[1], request_id=c.request_id) for c in calls]
        return pb.BatchRequest(ops=ops)

    @staticmethod
    def _lsns(resp, n: int) -> list[int]:
        if len(resp.lsns) == n:
            return list(resp.lsns)
        return [resp.lsn - n + 1 + i for i in range(n)]  # a server without per-op LSNs

    def _handle(self, e: grpc.RpcError) -> errors.StrataError:
        """A stream's error, typed, counted by the breaker of the node it came from."""
        err = errors.from_rpc_error(e)
        if err.retryable:
            self.breaker.failure()
        else:
            self.breaker.success()  # the endpoint answered: it is up
        return err

    @staticmethod
    def _request_id(request) -> str:
        return getattr(request, "request_id", "")

    @staticmethod
    def _unknown_each(e: errors.OutcomeUnknown, calls: list[Call]) -> list:
        """A coalesced message whose outcome is unknown: each call's own OutcomeUnknown,
        carrying its own request id (the message has none of its own)."""
        return [errors.OutcomeUnknown(f"{e} (request id {c.request_id})", e.code, c.request_id)
                for c in calls]

    def _handle_stream_end(self, e: grpc.RpcError) -> errors.StrataError:
        """A subscription's end. Its own deadline running out, or the server cutting a
        slow reader off with a resume LSN, says nothing against the server: the
        endpoint answered, and the breaker must not open over idle subscriptions."""
        err = errors.from_rpc_error(e)
        if isinstance(err, (errors.Lapped, errors.DeadlineExceeded)):
            self.breaker.success()
            return err
        return self._handle(e)


def _consume_request(consumer: str, tier: str, topics: Iterable[str], key_prefix: bytes,
                     from_lsn: int, manual_ack: bool, credits: int | None,
                     window_ms: int) -> pb.ConsumeRequest:
    sub = pb.ConsumeSubscribe(tier=tier, topics=list(topics), key_prefix=key_prefix,
                              from_lsn=from_lsn, consumer=consumer, manual_ack=manual_ack,
                              window_ms=window_ms)
    if credits is not None:
        sub.credits = credits
    return pb.ConsumeRequest(subscribe=sub)


class Consumption:
    """A reliable subscription (Events.Consume): iterate the events; with
    manual_ack, `ack(lsn)` what was processed; `credit(n)` grants more. A
    named consumer resumes after its last acknowledgement when it subscribes
    again. Once iteration began, `from_lsn` says where delivery started (0:
    live) and `last_lsn` the server's last LSN when it subscribed (a live
    subscription gets the events after it)."""

    def __init__(self, client, call, send) -> None:
        self._client = client
        self._call = call
        self._send = send
        self.from_lsn = 0
        self.last_lsn = 0

    def ack(self, lsn: int) -> None:
        self._send(pb.ConsumeRequest(ack=lsn))

    def credit(self, n: int) -> None:
        self._send(pb.ConsumeRequest(credit=n))

    def close(self) -> None:
        self._send(None)
        self._call.cancel()

    def __iter__(self) -> Iterator:
        try:
            for resp in self._call:
                if not resp.events and not self.last_lsn:  # the first response
                    self.from_lsn, self.last_lsn = resp.from_lsn, resp.last_lsn
                yield from resp.events
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                raise self._client._handle_stream_end(e) from None

    def __aiter__(self) -> AsyncIterator:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator:
        try:
            async for resp in self._call:
                if not resp.events and not self.last_lsn:  # the first response
                    self.from_lsn, self.last_lsn = resp.from_lsn, resp.last_lsn
                for ev in resp.events:
                    yield ev
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                raise self._client._handle_stream_end(e) from None


class Client(_Base):
    """Blocking client. Thread-safe; one channel (HTTP/2 connection) per node it talks to.
    put/delete calls made concurrently from several threads are coalesced into
    Batch requests (strata_client.batching; `batching=Batching(enabled=False)`
    turns it off)."""

    def __init__(self, target: str = "127.0.0.1:7400", *, token: str | None = None,
                 timeout: float = 10.0, retry: RetryPolicy | None = None,
                 breaker: CircuitBreaker | None = None, root_certificates: bytes | None = None,
                 tls: bool = False, max_message: int = 64 << 20,
                 batching: Batching | None = None) -> None:
        super().__init__(target, token, timeout, retry, breaker, root_certificates, tls,
                         max_message, batching)
        self._coalescer = Coalescer(self.batching, self._send) if self.batching.enabled else None

    def _send(self, calls: list[Call]) -> list:
        """One message for the coalescer: each call's LSN or its own error."""
        if len(calls) == 1:
            method, req = self._single(calls[0])
            return [self._call(method, req, kind=WRITE).lsn]
        try:
            return self._lsns(self._call("kv.Batch", self._coalesced(calls), kind=WRITE),
                              len(calls))
        except errors.OutcomeUnknown as e:
            return self._unknown_each(e, calls)
        except errors.InvalidArgument:  # nothing was written: find the bad call(s)
            self._coalescer.stats.splits += 1
            out: list = []
            for c in calls:
                try:
                    out += self._send([c])
                except errors.StrataError as e:
                    out.append(e)
            return out

    def _channel_to(self, target: str):
        args = _channel_args(self._max_message)
        if self._tls:
            return grpc.secure_channel(target, grpc.ssl_channel_credentials(self._roots), args)
        return grpc.insecure_channel(target, args)

    def close(self) -> None:
        with self._nodes_lock:
            self.closed = True
            nodes, self._nodes = list(self._nodes.values()), {}
        for node in nodes:
            node.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request, *, kind: str, timeout: float | None = None):
        """Send a unary call, retried and moved between nodes as strata_client.attempts
        says for its `kind`; raises a StrataError when it ends without an answer."""
        service, name = method.split(".")
        a = Attempts(self, kind, timeout or self.timeout, self._request_id(request))
        while True:
            target, left = a.next()
            rpc = getattr(getattr(self._node(target), service), name)
            try:
                resp = rpc(request, timeout=left, metadata=self._metadata)
            except grpc.RpcError as e:
                time.sleep(a.failed(e))
                continue
            a.answered()
            return resp

    # -- KV
    def put(self, key: bytes, value: bytes, *, request_id: str | None = None) -> int:
        if self._coalescer is not None:
            return self._coalescer.submit(("put", key, value), request_id or uuid.uuid4().hex)
        req = pb.PutRequest(key=key, value=value, request_id=request_id or uuid.uuid4().hex)
        return self._call("kv.Put", req, kind=WRITE).lsn

    def get(self, key: bytes, *, stale_ok: bool = False) -> bytes | None:
        return self.get_entry(key, stale_ok=stale_ok)[0]

    def get_entry(self, key: bytes, *, stale_ok: bool = False) -> tuple[bytes | None, int]:
        """(value, LSN of the write that produced it); (None, 0) if absent. `stale_ok`:
        any node may answer from what it has applied (in a cluster: maybe behind)."""
        resp = self._call("kv.Get", pb.GetRequest(key=key, stale_ok=stale_ok), kind=READ)
        return (resp.value, resp.lsn) if resp.found else (None, 0)

    def delete(self, key: bytes, *, request_id: str | None = None) -> int:
        if self._coalescer is not None:
            return self._coalescer.submit(("delete", key), request_id or uuid.uuid4().hex)
        req = pb.DeleteRequest(key=key, request_id=request_id or uuid.uuid4().hex)
        return self._call("kv.Delete", req, kind=WRITE).lsn

    def batch(self, ops: Iterable[tuple], *, request_id: str | None = None) -> int:
        """Atomic ("put", key, value) / ("delete", key) operations; returns the last LSN."""
        req = pb.BatchRequest(ops=_ops(ops), request_id=request_id or uuid.uuid4().hex)
        return self._call("kv.Batch", req, kind=WRITE).lsn

    def compare_and_set(self, key: bytes, value: bytes | None = None, *,
                        expected_lsn: int | None = None, expected_value: bytes | None = None,
                        expect_absent: bool = False, delete: bool = False) -> int:
        req = _cas_request(key, value, expected_lsn, expected_value, expect_absent, delete)
        return self._call("kv.CompareAndSet", req, kind=ONCE).lsn

    def scan(self, start: bytes = b"", end: bytes = b"", *, limit: int = 0,
             keys_only: bool = False, stale_ok: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """Pairs with start <= key < end from one snapshot (not retried mid-stream)."""
        self.breaker.before()
        call = self.kv.Scan(pb.ScanRequest(start=start, end=end, limit=limit, keys_only=keys_only,
                                           stale_ok=stale_ok),
                            timeout=self.timeout, metadata=self._metadata)
        failed = False
        try:
            for chunk in call:
                for kv in chunk.items:
                    yield kv.key, kv.value
        except grpc.RpcError as e:
            failed = True
            raise self._handle(e) from None
        finally:
            if not failed:  # finished, or abandoned by the caller: the endpoint answered
                self.breaker.success()
                call.cancel()

    def write_stream(self, batches: Iterable[list[tuple]]) -> Iterator[int]:
        """Send many batches on one Write stream; yields their LSNs in order."""
        def requests():
            for i, ops in enumerate(batches):
                yield pb.BatchRequest(ops=_ops(ops), id=i, request_id=uuid.uuid4().hex)

        try:
            for resp in self.kv.Write(requests(), metadata=self._metadata):
                yield resp.lsn
        except grpc.RpcError as e:
            raise self._handle(e) from None

    # -- Events
    def publish(self, topic: str, key: bytes, payload: bytes) -> int:
        req = pb.PublishRequest(topic=topic, key=key, payload=payload)
        return self._call("events.Publish", req, kind=ONCE).lsn

    def subscribe(self, topics: Iterable[str] = (), *, key_prefix: bytes = b"",
                  from_lsn: int = 0, timeout: float | None = None) -> Iterator:
        """Events (lsn, topic, key, value, deleted) in LSN order; raises Lapped/Compacted."""
        call = self.events.Subscribe(
            pb.SubscribeRequest(topics=list(topics), key_prefix=key_prefix, from_lsn=from_lsn),
            timeout=timeout, metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as e:
            raise self._handle_stream_end(e) from None

    def consume(self, consumer: str = "", *, tier: str = "realtime", topics: Iterable[str] = (),
                key_prefix: bytes = b"", from_lsn: int = 0, manual_ack: bool = False,
                credits: int | None = None, window_ms: int = 0) -> Consumption:
        """A reliable subscription (see Consumption); close() it when done."""
        q: queue.SimpleQueue = queue.SimpleQueue()
        q.put(_consume_request(consumer, tier, topics, key_prefix, from_lsn, manual_ack,
                               credits, window_ms))

        def requests():
            while (m := q.get()) is not None:
                yield m

        call = self.events.Consume(requests(), metadata=self._metadata)
        return Consumption(self, call, q.put)

    # -- Admin
    def status(self):
        return self._call("admin.Status", pb.StatusRequest(), kind=READ)

    def checkpoint(self, path: str) -> int:
        return self._call("admin.Checkpoint", pb.CheckpointRequest(path=path), kind=NODE,
                          timeout=max(self.timeout, 600)).lsn

    def compact(self) -> float:
        return self._call("admin.Compact", pb.CompactRequest(), kind=NODE,
                          timeout=max(self.timeout, 3600)).seconds

    def transfer_leader(self, to: str = ""):
        """Hand the master's role to node `to` (default: the most caught-up replica);
        returns the TransferLeaderResponse (master "id=host:port", term, seconds)."""
        return self._call("admin.TransferLeader", pb.TransferLeaderRequest(to=to), kind=ONCE)

    def consumers(self):
        """Named consumers as the node sees them: a ConsumersResponse (consumers: name,
        cursor_lsn, lag_lsns, lag_bytes, connected, connected_since_unix_s,
        last_ack_unix_s, retained, held_bytes; last_lsn, earliest_lsn,
        retention_limit_bytes, retention_headroom_bytes)."""
        return self._call("admin.Consumers", pb.ConsumersRequest(), kind=READ)

    def delete_consumer(self, name: str):
        """Delete named consumer `name` (its cursor and its hold on the log; a connected
        one's subscription ends with ConsumerDeleted). Send it to the master (NotMaster
        otherwise); takes the admin token if the server has one. Raises NotFound for
        an unknown name. Returns the DeleteConsumerResponse (was_connected, cursor_lsn)."""
        return self._call("admin.DeleteConsumer", pb.DeleteConsumerRequest(name=name),
                          kind=NODE)


class AsyncClient(_Base):
    """asyncio client on grpc.aio; same methods as Client, awaitable. put/delete
    calls awaited concurrently are coalesced as in Client."""

    def __init__(self, target: str = "127.0.0.1:7400", *, token: str | None = None,
                 timeout: float = 10.0, retry: RetryPolicy | None = None,
                 breaker: CircuitBreaker | None = None, root_certificates: bytes | None = None,
                 tls: bool = False, max_message: int = 64 << 20,
                 batching: Batching | None = None) -> None:
        super().__init__(target, token, timeout, retry, breaker, root_certificates, tls,
                         max_message, batching)
        self._coalescer = (AsyncCoalescer(self.batching, self._send)
                           if self.batching.enabled else None)

    async def _send(self, calls: list[Call]) -> list:
        if len(calls) == 1:
            method, req = self._single(calls[0])
            return [(await self._call(method, req, kind=WRITE)).lsn]
        try:
            return self._lsns(await self._call("kv.Batch", self._coalesced(calls), kind=WRITE),
                              len(calls))
        except errors.OutcomeUnknown as e:
            return self._unknown_each(e, calls)
        except errors.InvalidArgument:  # nothing was written: find the bad call(s)
            self._coalescer.stats.splits += 1
            return await asyncio.gather(*(self._send_one(c) for c in calls))

    async def _send_one(self, call: Call):
        try:
            return (await self._send([call]))[0]
        except errors.StrataError as e:
            return e

    def _channel_to(self, target: str):
        args = _channel_args(self._max_message)
        if self._tls:
            return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(self._roots),
                                           args)
        return grpc.aio.insecure_channel(target, args)

    async def close(self) -> None:
        self.closed = True
        nodes, self._nodes = list(self._nodes.values()), {}
        for node in nodes:
            await node.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: str, request, *, kind: str, timeout: float | None = None):
        """As Client._call, on the event loop."""
        service, name = method.split(".")
        a = Attempts(self, kind, timeout or self.timeout, self._request_id(request))
        while True:
            target, left = a.next()
            rpc = getattr(getattr(self._node(target), service), name)
            try:
                resp = await rpc(request, timeout=left, metadata=self._metadata)
            except grpc.RpcError as e:
                await asyncio.sleep(a.failed(e))
                continue
            a.answered()
            return resp

    async def put(self, key: bytes, value: bytes, *, request_id: str | None = None) -> int:
        if self._coalescer is not None:
            return await self._coalescer.submit(("put", key, value),
                                                request_id or uuid.uuid4().hex)
        req = pb.PutRequest(key=key, value=value, request_id=request_id or uuid.uuid4().hex)
        return (await self._call("kv.Put", req, kind=WRITE)).lsn

    async def get(self, key: bytes, *, stale_ok: bool = False) -> bytes | None:
        return (await self.get_entry(key, stale_ok=stale_ok))[0]

    async def get_entry(self, key: bytes, *, stale_ok: bool = False) -> tuple[bytes | None, int]:
        resp = await self._call("kv.Get", pb.GetRequest(key=key, stale_ok=stale_ok), kind=READ)
        return (resp.value, resp.lsn) if resp.found else (None, 0)

    async def delete(self, key: bytes, *, request_id: str | None = None) -> int:
        if self._coalescer is not None:
            return await self._coalescer.submit(("delete", key), request_id or uuid.uuid4().hex)
        req = pb.DeleteRequest(key=key, request_id=request_id or uuid.uuid4().hex)
        return (await self._call("kv.Delete", req, kind=WRITE)).lsn

    async def batch(self, ops: Iterable[tuple], *, request_id: str | None = None) -> int:
        req = pb.BatchRequest(ops=_ops(ops), request_id=request_id or uuid.uuid4().hex)
        return (await self._call("kv.Batch", req, kind=WRITE)).lsn

    async def compare_and_set(self, key: bytes, value: bytes | None = None, *,
                              expected_lsn: int | None = None, expected_value: bytes | None = None,
                              expect_absent: bool = False, delete: bool = False) -> int:
        req = _cas_request(key, value, expected_lsn, expected_value, expect_absent, delete)
        return (await self._call("kv.CompareAndSet", req, kind=ONCE)).lsn

    async def scan(self, start: bytes = b"", end: bytes = b"", *, limit: int = 0,
                   keys_only: bool = False, stale_ok: bool = False
                   ) -> AsyncIterator[tuple[bytes, bytes]]:
        self.breaker.before()
        call = self.kv.Scan(pb.ScanRequest(start=start, end=end, limit=limit, keys_only=keys_only,
                                           stale_ok=stale_ok),
                            timeout=self.timeout, metadata=self._metadata)
        failed = False
        try:
            async for chunk in call:
                for kv in chunk.items:
                    yield kv.key, kv.value
        except grpc.RpcError as e:
            failed = True
            raise self._handle(e) from None
        finally:
            if not failed:  # finished, or abandoned by the caller: the endpoint answered
                self.breaker.success()
                call.cancel()

    async def publish(self, topic: str, key: bytes, payload: bytes) -> int:
        req = pb.PublishRequest(topic=topic, key=key, payload=payload)
        return (await self._call("events.Publish", req, kind=ONCE)).lsn

    async def subscribe(self, topics: Iterable[str] = (), *, key_prefix: bytes = b"",
                        from_lsn: int = 0) -> AsyncIterator:
        call = self.events.Subscribe(
            pb.SubscribeRequest(topics=list(topics), key_prefix=key_prefix, from_lsn=from_lsn),
            metadata=self._metadata)
        try:
            async for ev in call:
                yield ev
        except grpc.RpcError as e:
            raise self._handle_stream_end(e) from None

    def consume(self, consumer: str = "", *, tier: str = "realtime", topics: Iterable[str] = (),
                key_prefix: bytes = b"", from_lsn: int = 0, manual_ack: bool = False,
                credits: int | None = None, window_ms: int = 0) -> Consumption:
        """A reliable subscription: `async for ev in client.consume("name")`."""
        q: asyncio.Queue = asyncio.Queue()
        q.put_nowait(_consume_request(consumer, tier, topics, key_prefix, from_lsn, manual_ack,
                                      credits, window_ms))

        async def requests():
            while (m := await q.get()) is not None:
                yield m

        call = self.events.Consume(requests(), metadata=self._metadata)
        return Consumption(self, call, q.put_nowait)

    async def status(self):
        return await self._call("admin.Status", pb.StatusRequest(), kind=READ)

    async def transfer_leader(self, to: str = ""):
        return await self._call("admin.TransferLeader", pb.TransferLeaderRequest(to=to),
                                kind=ONCE)

    async def consumers(self):
        """As Client.consumers."""
        return await self._call("admin.Consumers", pb.ConsumersRequest(), kind=READ)

    async def delete_consumer(self, name: str):
        """As Client.delete_consumer."""
        return await self._call("admin.DeleteConsumer", pb.DeleteConsumerRequest(name=name),
                                kind=NODE)
