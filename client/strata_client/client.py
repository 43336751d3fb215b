"""Sync and asyncio clients for Strata's gRPC API.

Built as strata_client.batching is: one core and two thin drivers. What a call
sends, its retry kind and how its answer is read are strata_client.rpcs; the
retry and redirect decisions strata_client.attempts; the nodes, their channels
and circuit breakers, and the bookkeeping of streams strata_client.core. `Client`
(threads) and `AsyncClient` (asyncio) only send, wait and sleep, and have the same
methods with the same signatures (the async ones awaitable, or async iterators).

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
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import grpc

from . import errors, rpcs
from .batching import AsyncCoalescer, Batching, Call, Coalescer
from .core import CircuitBreaker, Consumption, Nodes, RetryPolicy, Stream, Unary

__all__ = ["Client", "AsyncClient", "Consumption", "RetryPolicy", "CircuitBreaker"]


class _OfNodes:
    """A client attribute that is its core's (core.Nodes) own: read there and, unless
    read-only, set there (calls move `target`; tests set it too)."""

    def __init__(self, doc: str, *, settable: bool = True) -> None:
        self.__doc__ = doc
        self.settable = settable
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, client: Any, owner: type | None = None) -> Any:
        return self if client is None else getattr(client._nodes, self.name)

    def __set__(self, client: Any, value: Any) -> None:
        if not self.settable:
            raise AttributeError(f"{self.name} is read-only")
        setattr(client._nodes, self.name, value)


class _StubOf(_OfNodes):
    """A stub (kv, events, admin) of the node calls go to now."""

    def __init__(self, doc: str) -> None:
        super().__init__(doc, settable=False)

    def __get__(self, client: Any, owner: type | None = None) -> Any:
        if client is None:
            return self
        return getattr(client._nodes.stubs(client._nodes.target), self.name)


class _Driver:
    """What Client and AsyncClient are made of beside their I/O: the construction, the
    core (`_nodes`, `_coalescer`), the attributes callers read or set, and the methods
    that do no I/O of their own. A driver sets `_api` (grpc or grpc.aio) and
    `_coalescer_type`, and defines `_unary`, `_stream`, `_send` and `_requests`."""

    _api: Any = grpc
    _coalescer_type: Callable = Coalescer

    def __init__(self, target: str = "127.0.0.1:7400", *, token: str | None = None,
                 timeout: float = 10.0, retry: RetryPolicy | None = None,
                 breaker: CircuitBreaker | None = None, root_certificates: bytes | None = None,
                 tls: bool = False, max_message: int = 64 << 20,
                 batching: Batching | None = None) -> None:
        """`target`: "host:port", or a node list "a:7400,b:7400,c:7400" (see the module
        docstring). `timeout`: each call's deadline in seconds. `breaker` serves the
        first listed node; the others get their own alike. `batching`: the put/delete
        coalescer's knobs (strata_client.batching)."""
        self.batching = batching if batching is not None else Batching()
        self._nodes = Nodes(target, api=self._api, token=token, timeout=timeout, retry=retry,
                            breaker=breaker, root_certificates=root_certificates, tls=tls,
                            max_message=max_message)
        self._coalescer = (self._coalescer_type(self.batching, self._send)
                           if self.batching.enabled else None)

    # -- what callers read (and may set): the core's own
    endpoints = _OfNodes("The listed nodes.", settable=False)
    target = _OfNodes("The node new calls start at: the last that answered, or the next "
                      "listed after one that failed.")
    timeout = _OfNodes("Each call's deadline, in seconds.")
    retry = _OfNodes("The RetryPolicy of transient errors.")
    closed = _OfNodes("Whether close() was called.", settable=False)
    kv = _StubOf("The KV stub of the node calls go to now.")
    events = _StubOf("The Events stub of the node calls go to now.")
    admin = _StubOf("The Admin stub of the node calls go to now.")

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker of the node calls go to now."""
        return self._nodes.breaker_of(self._nodes.target)

    def breaker_of(self, target: str) -> CircuitBreaker:
        """The circuit breaker of node `target` ("host:port")."""
        return self._nodes.breaker_of(target)

    def batching_stats(self) -> dict:
        """What the put/delete coalescer did: calls, messages, ops_per_message, limit,
        inflight, queued, wait_ms (linger), rtt_ms, ... (see strata_client.batching);
        {} with batching off."""
        return self._coalescer.stats.as_dict() if self._coalescer else {}

    def consume(self, consumer: str = "", *, tier: str = "realtime", topics: Iterable[str] = (),
                key_prefix: bytes = b"", from_lsn: int = 0, manual_ack: bool = False,
                credits: int | None = None, window_ms: int = 0) -> Consumption:
        """A reliable subscription (see core.Consumption), open when this returns:
        `for ev in c.consume("name")` (Client), `async for` (AsyncClient). `consumer`
        names a durable cursor ("" for none); `credits`: events the server may send
        ahead of acknowledgements. close() it when done."""
        requests, send = self._requests()
        send(rpcs.consume(consumer, tier, topics, key_prefix, from_lsn, manual_ack, credits,
                          window_ms))
        return Consumption(self._nodes, requests, send, self._stream)

    # -- what each driver does its own way
    def _send(self, calls: list[Call]) -> Any:
        raise NotImplementedError

    def _stream(self, s: Stream) -> Any:
        raise NotImplementedError

    def _requests(self) -> tuple[Any, Callable[[Any], None]]:
        """A request iterator for a client stream, and the function that feeds it (None
        ends it)."""
        raise NotImplementedError


class Client(_Driver):
    """Blocking client. Thread-safe; one channel (HTTP/2 connection) per node it talks to.
    put/delete calls made concurrently from several threads are coalesced into
    Batch requests (strata_client.batching; `batching=Batching(enabled=False)`
    turns it off)."""

    # -- the driver: send, wait, sleep
    def _unary(self, call: Unary) -> Any:
        """Send a unary call, retried and moved between nodes as strata_client.attempts
        says for its kind; raises a StrataError when it ends without an answer."""
        a = self._nodes.attempts(call)
        while True:
            target, left = a.next()
            try:
                resp = self._nodes.send(target, call, left)
            except grpc.RpcError as e:
                time.sleep(a.failed(e))
                continue
            a.answered()
            return call.decode(resp)

    @staticmethod
    def _stream(s: Stream) -> Iterator:
        try:
            for resp in s.open():
                yield from s.items(resp)
        except grpc.RpcError as e:
            s.end(e)
        finally:
            s.finished()

    def _requests(self) -> tuple[Iterator, Callable[[Any], None]]:
        q: queue.SimpleQueue = queue.SimpleQueue()

        def requests() -> Iterator:
            while (m := q.get()) is not None:
                yield m

        return requests(), q.put

    def _write(self, op: tuple, request_id: str | None) -> int:
        rid = request_id or rpcs.new_id()
        if self._coalescer is None:
            return self._unary(rpcs.write(op, rid))
        return self._coalescer.submit(op, rid)

    def _send(self, calls: list[Call]) -> list:
        """One message for the coalescer: each call's LSN or its own error."""
        try:
            return self._unary(rpcs.message(calls))
        except errors.StrataError as e:
            out = rpcs.message_failed(calls, e)
        if out is None:
            self._coalescer.stats.splits += 1
            out = [self._send_alone(c) for c in calls]
        return out

    def _send_alone(self, call: Call) -> Any:
        try:
            return self._send([call])[0]
        except errors.StrataError as e:
            return e

    def close(self) -> None:
        """Close every channel; calls still retrying end with Unavailable."""
        for channel in self._nodes.close():
            channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- KV
    def put(self, key: bytes, value: bytes, *, request_id: str | None = None) -> int:
        """Write `value` under `key`; returns the write's LSN. `request_id` (default: a
        fresh one) makes a retry answered, not written twice."""
        return self._write(("put", key, value), request_id)

    def get(self, key: bytes, *, stale_ok: bool = False) -> bytes | None:
        """The value of `key`, or None if absent (see get_entry)."""
        return self.get_entry(key, stale_ok=stale_ok)[0]

    def get_entry(self, key: bytes, *, stale_ok: bool = False) -> tuple[bytes | None, int]:
        """(value, LSN of the write that produced it); (None, 0) if absent. `stale_ok`:
        any node may answer from what it has applied (in a cluster: maybe behind)."""
        return self._unary(rpcs.get_entry(key, stale_ok))

    def delete(self, key: bytes, *, request_id: str | None = None) -> int:
        """Delete `key`; returns the write's LSN (as put)."""
        return self._write(("delete", key), request_id)

    def batch(self, ops: Iterable[tuple], *, request_id: str | None = None) -> int:
        """Atomic ("put", key, value) / ("delete", key) operations; returns the last LSN."""
        return self._unary(rpcs.batch(ops, request_id or rpcs.new_id()))

    def compare_and_set(self, key: bytes, value: bytes | None = None, *,
                        expected_lsn: int | None = None, expected_value: bytes | None = None,
                        expect_absent: bool = False, delete: bool = False) -> int:
        """Write (or with `delete`, delete) `key` only if it is at `expected_lsn`, holds
        `expected_value`, or (`expect_absent`) is absent; returns the LSN. Raises
        Conflict(current_lsn) otherwise. Never sent twice (OutcomeUnknown instead)."""
        return self._unary(rpcs.compare_and_set(key, value, expected_lsn, expected_value,
                                                expect_absent, delete))

    def scan(self, start: bytes = b"", end: bytes = b"", *, limit: int = 0,
             keys_only: bool = False, stale_ok: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """Pairs with start <= key < end from one snapshot (not retried mid-stream)."""
        return self._stream(rpcs.scan(self._nodes, start, end, limit, keys_only, stale_ok))

    def write_stream(self, batches: Iterable[list[tuple]]) -> Iterator[int]:
        """Send many batches on one Write stream; yields their LSNs in order."""
        return self._stream(rpcs.write_stream(self._nodes, batches))

    # -- Events
    def publish(self, topic: str, key: bytes, payload: bytes) -> int:
        """Publish an event on `topic`; returns its LSN. Never sent twice."""
        return self._unary(rpcs.publish(topic, key, payload))

    def subscribe(self, topics: Iterable[str] = (), *, key_prefix: bytes = b"",
                  from_lsn: int = 0, timeout: float | None = None) -> Iterator:
        """Events (lsn, topic, key, value, deleted) in LSN order, from `from_lsn` (0:
        live) until `timeout` seconds (None: none); raises Lapped/Compacted."""
        return self._stream(rpcs.subscribe(self._nodes, topics, key_prefix, from_lsn, timeout))

    # -- Admin
    def status(self) -> Any:
        """The node's StatusResponse."""
        return self._unary(rpcs.status())

    def checkpoint(self, path: str) -> int:
        """A checkpoint of the node into directory `path`; returns its LSN."""
        return self._unary(rpcs.checkpoint(path))

    def checkpoints(self) -> Any:
        """The node's checkpoints under its backup_dir: a CheckpointsResponse (backup_dir;
        checkpoints: name, path, bytes, files, created_unix_s; oldest first)."""
        return self._unary(rpcs.checkpoints())

    def compact(self) -> float:
        """Compact the node's whole key range; returns the seconds it took."""
        return self._unary(rpcs.compact())

    def transfer_leader(self, to: str = "") -> Any:
        """Hand the master's role to node `to` (default: the most caught-up replica);
        returns the TransferLeaderResponse (master "id=host:port", term, seconds)."""
        return self._unary(rpcs.transfer_leader(to))

    def consumers(self) -> Any:
        """Named consumers as the node sees them: a ConsumersResponse (consumers: name,
        cursor_lsn, lag_lsns, lag_bytes, connected, connected_since_unix_s,
        last_ack_unix_s, retained, held_bytes; last_lsn, earliest_lsn,
        retention_limit_bytes, retention_headroom_bytes)."""
        return self._unary(rpcs.consumers())

    def delete_consumer(self, name: str) -> Any:
        """Delete named consumer `name` (its cursor and its hold on the log; a connected
        one's subscription ends with ConsumerDeleted). Send it to the master (NotMaster
        otherwise); takes the admin token if the server has one. Raises NotFound for
        an unknown name. Returns the DeleteConsumerResponse (was_connected, cursor_lsn)."""
        return self._unary(rpcs.delete_consumer(name))


class AsyncClient(_Driver):
    """asyncio client on grpc.aio: Client's methods, awaitable (streams: async
    iterators). put/delete calls awaited concurrently are coalesced as in Client.
    Use it on one event loop."""

    _api = grpc.aio
    _coalescer_type = AsyncCoalescer

    # -- the driver: send, wait, sleep
    async def _unary(self, call: Unary) -> Any:
        """As Client._unary, on the event loop."""
        a = self._nodes.attempts(call)
        while True:
            target, left = a.next()
            try:
                resp = await self._nodes.send(target, call, left)
            except grpc.RpcError as e:
                await asyncio.sleep(a.failed(e))
                continue
            a.answered()
            return call.decode(resp)

    @staticmethod
    async def _stream(s: Stream) -> AsyncIterator:
        try:
            async for resp in s.open():
                for item in s.items(resp):
                    yield item
        except grpc.RpcError as e:
            s.end(e)
        except asyncio.CancelledError:
            if not s.closed:  # the task itself is being cancelled
                raise
        finally:
            s.finished()

    def _requests(self) -> tuple[AsyncIterator, Callable[[Any], None]]:
        q: asyncio.Queue = asyncio.Queue()

        async def requests() -> AsyncIterator:
            while (m := await q.get()) is not None:
                yield m

        return requests(), q.put_nowait

    async def _write(self, op: tuple, request_id: str | None) -> int:
        rid = request_id or rpcs.new_id()
        if self._coalescer is None:
            return await self._unary(rpcs.write(op, rid))
        return await self._coalescer.submit(op, rid)

    async def _send(self, calls: list[Call]) -> list:
        """As Client._send; the calls of a refused message are resent together."""
        try:
            return await self._unary(rpcs.message(calls))
        except errors.StrataError as e:
            out = rpcs.message_failed(calls, e)
        if out is None:
            self._coalescer.stats.splits += 1
            out = await asyncio.gather(*(self._send_alone(c) for c in calls))
        return out

    async def _send_alone(self, call: Call) -> Any:
        try:
            return (await self._send([call]))[0]
        except errors.StrataError as e:
            return e

    async def close(self) -> None:
        """As Client.close."""
        for channel in self._nodes.close():
            await channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- KV
    async def put(self, key: bytes, value: bytes, *, request_id: str | None = None) -> int:
        """As Client.put."""
        return await self._write(("put", key, value), request_id)

    async def get(self, key: bytes, *, stale_ok: bool = False) -> bytes | None:
        """As Client.get."""
        return (await self.get_entry(key, stale_ok=stale_ok))[0]

    async def get_entry(self, key: bytes, *, stale_ok: bool = False) -> tuple[bytes | None, int]:
        """As Client.get_entry."""
        return await self._unary(rpcs.get_entry(key, stale_ok))

    async def delete(self, key: bytes, *, request_id: str | None = None) -> int:
        """As Client.delete."""
        return await self._write(("delete", key), request_id)

    async def batch(self, ops: Iterable[tuple], *, request_id: str | None = None) -> int:
        """As Client.batch."""
        return await self._unary(rpcs.batch(ops, request_id or rpcs.new_id()))

    async def compare_and_set(self, key: bytes, value: bytes | None = None, *,
                              expected_lsn: int | None = None, expected_value: bytes | None = None,
                              expect_absent: bool = False, delete: bool = False) -> int:
        """As Client.compare_and_set."""
        return await self._unary(rpcs.compare_and_set(key, value, expected_lsn, expected_value,
                                                      expect_absent, delete))

    def scan(self, start: bytes = b"", end: bytes = b"", *, limit: int = 0,
             keys_only: bool = False, stale_ok: bool = False
             ) -> AsyncIterator[tuple[bytes, bytes]]:
        """As Client.scan: `async for key, value in c.scan(...)`."""
        return self._stream(rpcs.scan(self._nodes, start, end, limit, keys_only, stale_ok))

    def write_stream(self, batches: Iterable[list[tuple]]) -> AsyncIterator[int]:
        """As Client.write_stream: `async for lsn in c.write_stream(...)`."""
        return self._stream(rpcs.write_stream(self._nodes, batches))

    # -- Events
    async def publish(self, topic: str, key: bytes, payload: bytes) -> int:
        """As Client.publish."""
        return await self._unary(rpcs.publish(topic, key, payload))

    def subscribe(self, topics: Iterable[str] = (), *, key_prefix: bytes = b"",
                  from_lsn: int = 0, timeout: float | None = None) -> AsyncIterator:
        """As Client.subscribe: `async for ev in c.subscribe(...)`."""
        return self._stream(rpcs.subscribe(self._nodes, topics, key_prefix, from_lsn, timeout))

    # -- Admin
    async def status(self) -> Any:
        """As Client.status."""
        return await self._unary(rpcs.status())

    async def checkpoint(self, path: str) -> int:
        """As Client.checkpoint."""
        return await self._unary(rpcs.checkpoint(path))

    async def checkpoints(self) -> Any:
        """As Client.checkpoints."""
        return await self._unary(rpcs.checkpoints())

    async def compact(self) -> float:
        """As Client.compact."""
        return await self._unary(rpcs.compact())

    async def transfer_leader(self, to: str = "") -> Any:
        """As Client.transfer_leader."""
        return await self._unary(rpcs.transfer_leader(to))

    async def consumers(self) -> Any:
        """As Client.consumers."""
        return await self._unary(rpcs.consumers())

    async def delete_consumer(self, name: str) -> Any:
        """As Client.delete_consumer."""
        return await self._unary(rpcs.delete_consumer(name))
