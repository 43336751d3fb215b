"""Sync and asyncio clients for Strata's gRPC API.

Retries: only errors that are `retryable` (UNAVAILABLE, RESOURCE_EXHAUSTED,
DEADLINE_EXCEEDED) and only for requests that are safe to repeat: reads,
and writes that carry a request id (put, delete and batch get one
automatically, so the server answers a repeat with the first LSN instead of
writing twice). Publish and compare-and-set are never retried. Back-off is
exponential with full jitter. A per-endpoint circuit breaker fails calls fast
after `threshold` consecutive transient failures, for `cooldown` seconds,
then lets one probe through.

Clusters: `target` may list several nodes ("a:7400,b:7400,c:7400"). A
NotMaster answer (FAILED_PRECONDITION, trailer `strata-master: id=host:port`)
is followed at once, without using up an attempt; a transient error moves
the next attempt to the next listed node. With more than one node listed,
retryable calls keep trying (with back-off) until their deadline rather than
for a fixed number of attempts, so a call made during a failover is answered
by the new master once one is elected. Writes carry request ids, so a retry
of one that reached the old master is answered, not written twice, whenever
it lands on the node that took it.
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
    after `cooldown_s` (one probe) -> closed on success / open again on failure."""

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

    def before(self) -> None:
        with self._lock:
            if self.failures < self.threshold:
                return
            if time.monotonic() < self.open_until or self._probe:
                raise errors.Unavailable(
                    f"circuit open after {self.failures} failures; not calling the server", "UNAVAILABLE")
            self._probe = True

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
    return [("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message)]


class _Base:
    def __init__(self, target: str, token: str | None, timeout: float,
                 retry: RetryPolicy | None, breaker: CircuitBreaker | None,
                 root_certificates: bytes | None, tls: bool, max_message: int,
                 batching: Batching | None) -> None:
        self.batching = batching if batching is not None else Batching()
        self.endpoints = [t.strip() for t in target.split(",") if t.strip()] or [target]
        self.target = self.endpoints[0]
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker()
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._tls = tls or root_certificates is not None
        self._roots = root_certificates
        self._max_message = max_message

    def _stubs(self, channel) -> None:
        self._channel = channel
        self.breaker.success()  # a new endpoint starts with a closed circuit
        self.kv = pbg.KVStub(channel)
        self.events = pbg.EventsStub(channel)
        self.admin = pbg.AdminStub(channel)

    def _next_target(self, err: errors.StrataError) -> str | None:
        """Where the next attempt goes: the master a NotMaster names, or after a transient
        error the next listed node; None: stay."""
        if isinstance(err, errors.NotMaster) and err.master:
            return err.master.rpartition("=")[2] or None
        if err.retryable and len(self.endpoints) > 1:
            i = self.endpoints.index(self.target) if self.target in self.endpoints else -1
            return self.endpoints[(i + 1) % len(self.endpoints)]
        return None

    def _keep_trying(self, retry: bool, err: errors.StrataError, attempt: int,
                     until: float) -> bool:
        if not (retry and err.retryable):
            return False
        if len(self.endpoints) > 1:
            return time.monotonic() < until
        return attempt < self.retry.attempts

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
        err = errors.from_rpc_error(e)
        if err.retryable:
            self.breaker.failure()
        else:
            self.breaker.success()  # the endpoint answered: it is up
        return err

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
    """Blocking client. Thread-safe; one channel (HTTP/2 connection) per client.
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
        self._switching = threading.Lock()
        self._connect(self.endpoints[0])

    def _send(self, calls: list[Call]) -> list:
        """One message for the coalescer: each call's LSN or its own error."""
        if len(calls) == 1:
            method, req = self._single(calls[0])
            return [self._call(method, req, retry=True).lsn]
        try:
            return self._lsns(self._call("kv.Batch", self._coalesced(calls), retry=True),
                              len(calls))
        except errors.InvalidArgument:  # nothing was written: find the bad call(s)
            self._coalescer.stats.splits += 1
            out: list = []
            for c in calls:
                try:
                    out += self._send([c])
                except errors.StrataError as e:
                    out.append(e)
            return out

    def _connect(self, target: str) -> None:
        args = _channel_args(self._max_message)
        if self._tls:
            ch = grpc.secure_channel(target, grpc.ssl_channel_credentials(self._roots), args)
        else:
            ch = grpc.insecure_channel(target, args)
        self._stubs(ch)
        self.target = target

    def close(self) -> None:
        self._channel.close()

    def _switch(self, target: str) -> None:
        """Move to `target` (a redirect or the next node). Other threads may have calls in
        flight on the old channel: it is closed once their deadline has passed, not now,
        and a thread that finds the move already made does nothing."""
        with self._switching:
            if target == self.target:
                return
            old = self._channel
            self._connect(target)
        t = threading.Timer(self.timeout + 1.0, old.close)
        t.daemon = True
        t.start()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request, *, retry: bool, timeout: float | None = None):
        attempt = 0
        redirects = 0  # NotMaster redirects cost no attempt (a few per call)
        service, name = method.split(".")
        until = time.monotonic() + (timeout or self.timeout)
        while True:
            self.breaker.before()
            try:
                left = until - time.monotonic() if len(self.endpoints) > 1 else None
                resp = getattr(getattr(self, service), name)(
                    request, timeout=max(0.05, left) if left is not None else timeout or self.timeout,
                    metadata=self._metadata)
                self.breaker.success()
                return resp
            except grpc.RpcError as e:
                err = self._handle(e)
                nxt = self._next_target(err)
                if isinstance(err, errors.NotMaster) and nxt and redirects < 2 + len(self.endpoints):
                    redirects += 1
                    self._switch(nxt)
                    continue
                attempt += 1
                if not self._keep_trying(retry, err, attempt, until):
                    raise err from None
                if nxt and nxt != self.target:
                    self._switch(nxt)
            time.sleep(min(self.retry.delay(attempt - 1), max(0.0, until - time.monotonic())))

    # -- KV
    def put(self, key: bytes, value: bytes, *, request_id: str | None = None) -> int:
        if self._coalescer is not None:
            return self._coalescer.submit(("put", key, value), request_id or uuid.uuid4().hex)
        req = pb.PutRequest(key=key, value=value, request_id=request_id or uuid.uuid4().hex)
        return self._call("kv.Put", req, retry=True).lsn

    def get(self, key: bytes, *, stale_ok: bool = False) -> bytes | None:
        return self.get_entry(key, stale_ok=stale_ok)[0]

    def get_entry(self, key: bytes, *, stale_ok: bool = False) -> tuple[bytes | None, int]:
        """(value, LSN of the write that produced it); (None, 0) if absent. `stale_ok`:
        any node may answer from what it has applied (in a cluster: maybe behind)."""
        resp = self._call("kv.Get", pb.GetRequest(key=key, stale_ok=stale_ok), retry=True)
        return (resp.value, resp.lsn) if resp.found else (None, 0)

    def delete(self, key: bytes, *, request_id: str | None = None) -> int:
        if self._coalescer is not None:
            return self._coalescer.submit(("delete", key), request_id or uuid.uuid4().hex)
        req = pb.DeleteRequest(key=key, request_id=request_id or uuid.uuid4().hex)
        return self._call("kv.Delete", req, retry=True).lsn

    def batch(self, ops: Iterable[tuple], *, request_id: str | None = None) -> int:
        """Atomic ("put", key, value) / ("delete", key) operations; returns the last LSN."""
        req = pb.BatchRequest(ops=_ops(ops), request_id=request_id or uuid.uuid4().hex)
        return self._call("kv.Batch", req, retry=True).lsn

    def compare_and_set(self, key: bytes, value: bytes | None = None, *,
                        expected_lsn: int | None = None, expected_value: bytes | None = None,
                        expect_absent: bool = False, delete: bool = False) -> int:
        req = _cas_request(key, value, expected_lsn, expected_value, expect_absent, delete)
        return self._call("kv.CompareAndSet", req, retry=False).lsn

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
        return self._call("events.Publish", req, retry=False).lsn

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
        return self._call("admin.Status", pb.StatusRequest(), retry=True)

    def checkpoint(self, path: str) -> int:
        return self._call("admin.Checkpoint", pb.CheckpointRequest(path=path), retry=False,
                          timeout=max(self.timeout, 600)).lsn

    def compact(self) -> float:
        return self._call("admin.Compact", pb.CompactRequest(), retry=False,
                          timeout=max(self.timeout, 3600)).seconds

    def transfer_leader(self, to: str = ""):
        """Hand the master's role to node `to` (default: the most caught-up replica);
        returns the TransferLeaderResponse (master "id=host:port", term, seconds)."""
        return self._call("admin.TransferLeader", pb.TransferLeaderRequest(to=to), retry=False)


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
        self._closing: set = set()  # old channels closing with a grace (see _switch)
        self._connect(self.endpoints[0])

    async def _send(self, calls: list[Call]) -> list:
        if len(calls) == 1:
            method, req = self._single(calls[0])
            return [(await self._call(method, req, retry=True)).lsn]
        try:
            return self._lsns(await self._call("kv.Batch", self._coalesced(calls), retry=True),
                              len(calls))
        except errors.InvalidArgument:  # nothing was written: find the bad call(s)
            self._coalescer.stats.splits += 1
            return await asyncio.gather(*(self._send_one(c) for c in calls))

    async def _send_one(self, call: Call):
        try:
            return (await self._send([call]))[0]
        except errors.StrataError as e:
            return e

    def _connect(self, target: str) -> None:
        args = _channel_args(self._max_message)
        if self._tls:
            ch = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(self._roots), args)
        else:
            ch = grpc.aio.insecure_channel(target, args)
        self._stubs(ch)
        self.target = target

    async def close(self) -> None:
        for old in list(self._closing):  # no more grace: the client is going away
            await old.close()
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: str, request, *, retry: bool, timeout: float | None = None):
        attempt = 0
        redirects = 0  # NotMaster redirects cost no attempt (a few per call)
        service, name = method.split(".")
        until = time.monotonic() + (timeout or self.timeout)
        while True:
            self.breaker.before()
            try:
                left = until - time.monotonic() if len(self.endpoints) > 1 else None
                resp = await getattr(getattr(self, service), name)(
                    request, timeout=max(0.05, left) if left is not None else timeout or self.timeout,
                    metadata=self._metadata)
                self.breaker.success()
                return resp
            except grpc.RpcError as e:
                err = self._handle(e)
                nxt = self._next_target(err)
                if isinstance(err, errors.NotMaster) and nxt and redirects < 2 + len(self.endpoints):
                    redirects += 1
                    await self._switch(nxt)
                    continue
                attempt += 1
                if not self._keep_trying(retry, err, attempt, until):
                    raise err from None
                if nxt and nxt != self.target:
                    await self._switch(nxt)
            await asyncio.sleep(min(self.retry.delay(attempt - 1),
                                    max(0.0, until - time.monotonic())))

    async def _switch(self, target: str) -> None:
        """Move to `target` (a redirect or the next node). Other calls may be in flight on
        the old channel (coalesced messages, concurrent callers): it is closed with a grace
        that lets them finish, in the background; a call that finds the move already made
        does nothing."""
        if target == self.target:
            return
        old = self._channel
        self._connect(target)
        self._closing.add(old)
        t = asyncio.ensure_future(old.close(grace=self.timeout))
        t.add_done_callback(lambda _t: self._closing.discard(old))

    async def put(self, key: bytes, value: bytes, *, request_id: str | None = None) -> int:
        if self._coalescer is not None:
            return await self._coalescer.submit(("put", key, value),
                                                request_id or uuid.uuid4().hex)
        req = pb.PutRequest(key=key, value=value, request_id=request_id or uuid.uuid4().hex)
        return (await self._call("kv.Put", req, retry=True)).lsn

    async def get(self, key: bytes, *, stale_ok: bool = False) -> bytes | None:
        return (await self.get_entry(key, stale_ok=stale_ok))[0]

    async def get_entry(self, key: bytes, *, stale_ok: bool = False) -> tuple[bytes | None, int]:
        resp = await self._call("kv.Get", pb.GetRequest(key=key, stale_ok=stale_ok), retry=True)
        return (resp.value, resp.lsn) if resp.found else (None, 0)

    async def delete(self, key: bytes, *, request_id: str | None = None) -> int:
        if self._coalescer is not None:
            return await self._coalescer.submit(("delete", key), request_id or uuid.uuid4().hex)
        req = pb.DeleteRequest(key=key, request_id=request_id or uuid.uuid4().hex)
        return (await self._call("kv.Delete", req, retry=True)).lsn

    async def batch(self, ops: Iterable[tuple], *, request_id: str | None = None) -> int:
        req = pb.BatchRequest(ops=_ops(ops), request_id=request_id or uuid.uuid4().hex)
        return (await self._call("kv.Batch", req, retry=True)).lsn

    async def compare_and_set(self, key: bytes, value: bytes | None = None, *,
                              expected_lsn: int | None = None, expected_value: bytes | None = None,
                              expect_absent: bool = False, delete: bool = False) -> int:
        req = _cas_request(key, value, expected_lsn, expected_value, expect_absent, delete)
        return (await self._call("kv.CompareAndSet", req, retry=False)).lsn

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
        return (await self._call("events.Publish", req, retry=False)).lsn

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
        return await self._call("admin.Status", pb.StatusRequest(), retry=True)

    async def transfer_leader(self, to: str = ""):
        return await self._call("admin.TransferLeader", pb.TransferLeaderRequest(to=to),
                                retry=False)
