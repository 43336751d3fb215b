"""The state Client and AsyncClient share, with no I/O of their own: the node list, a
channel and a circuit breaker per node, and each call's bookkeeping.

strata_client.client holds the two drivers, which only send, receive and sleep (as
strata_client.batching's drivers do around its queue):

- `Nodes`: the listed nodes, the node new calls start at (`target`: the last that
  answered, or the next listed after one that failed), a channel (stubs) and a
  circuit breaker per node, made on first use (a cluster names only its own nodes,
  so they stay few). `close()` hands the channels to the driver to close.
- `Unary`: what one unary call sends and how its answer is read (strata_client.rpcs
  builds them); `Nodes.attempts()` gives its strata_client.attempts.Attempts, which
  decides retries and redirects; `Nodes.send()` starts one attempt, whose result the
  driver waits for (a response, or an awaitable for grpc.aio).
- `Stream`: one server stream: the node it runs on and that node's breaker, how its
  responses become items, how it ends. `Consumption` is the Events.Consume stream.
- `RetryPolicy`, `CircuitBreaker`: the knobs a caller may pass.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from . import errors
from ._proto import strata_pb2 as pb
from ._proto import strata_pb2_grpc as pbg
from .attempts import Attempts


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
    node, and the others get their own with the same threshold and cooldown.
    Thread-safe."""

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


def _same(resp: Any) -> Any:
    return resp


@dataclass(frozen=True, slots=True)
class Unary:
    """One unary call: `method` ("kv.Put"), its request, its attempts.READ / WRITE /
    ONCE / NODE kind, how its answer is read, and a floor on its timeout (checkpoint
    and compaction may take far longer than ordinary calls)."""

    method: str
    request: Any
    kind: str
    decode: Callable[[Any], Any] = _same
    min_timeout: float = 0.0


class Stubs:
    """The stubs of one node's channel."""

    __slots__ = ("channel", "kv", "events", "admin")

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.kv = pbg.KVStub(channel)
        self.events = pbg.EventsStub(channel)
        self.admin = pbg.AdminStub(channel)


def channel_options(max_message: int) -> list[tuple[str, int]]:
    # A node killed and restarted in a failover must be callable again within about a
    # second: grpc's own reconnect back-off grows to 120 s, and a channel waiting in it
    # fails every call at once.
    return [("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000)]


class Nodes:
    """The nodes of one client and what it keeps per node (see the module docstring).

    `api` is the module whose channels the client uses: `grpc` (blocking) or
    `grpc.aio`; both make channels with the same calls. Thread-safe: channels and
    breakers are made under a lock; `target` is a plain attribute that calls move."""

    def __init__(self, target: str, *, api: Any, token: str | None, timeout: float,
                 retry: RetryPolicy | None, breaker: CircuitBreaker | None,
                 root_certificates: bytes | None, tls: bool, max_message: int) -> None:
        self.endpoints = [t.strip() for t in target.split(",") if t.strip()] or [target]
        self.target = self.endpoints[0]
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.closed = False
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ())
        self._model = breaker or CircuitBreaker()
        self._breakers: dict[str, CircuitBreaker] = {self.target: self._model}
        self._stubs: dict[str, Stubs] = {}
        self._lock = threading.Lock()  # making channels and breakers; close()
        self._api = api
        self._credentials = (grpc.ssl_channel_credentials(root_certificates)
                             if tls or root_certificates is not None else None)
        self._options = channel_options(max_message)

    def breaker_of(self, target: str) -> CircuitBreaker:
        """The circuit breaker of node `target` (made like the first one on first use)."""
        b = self._breakers.get(target)
        if b is None:
            with self._lock:
                m = self._model
                b = self._breakers.setdefault(target, CircuitBreaker(m.threshold, m.cooldown_s))
        return b

    def stubs(self, target: str) -> Stubs:
        """The stubs of node `target`, its channel made on first use."""
        node = self._stubs.get(target)
        if node is None:
            with self._lock:
                node = self._stubs.get(target)
                if node is None:
                    node = self._stubs[target] = Stubs(self._channel(target))
        return node

    def _channel(self, target: str) -> Any:
        if self._credentials is not None:
            return self._api.secure_channel(target, self._credentials, self._options)
        return self._api.insecure_channel(target, self._options)

    def rpc(self, target: str, method: str) -> Callable:
        """The stub method of `method` ("kv.Put") on node `target`."""
        service, name = method.split(".")
        return getattr(getattr(self.stubs(target), service), name)

    def attempts(self, call: Unary) -> Attempts:
        """The retry and redirect state of one unary call (strata_client.attempts)."""
        return Attempts(self, call.kind, max(self.timeout, call.min_timeout),
                        getattr(call.request, "request_id", ""))

    def send(self, target: str, call: Unary, timeout: float) -> Any:
        """Start one attempt of `call` on node `target`: its response (grpc), or an
        awaitable of it (grpc.aio). Raises grpc.RpcError when the attempt fails."""
        return self.rpc(target, call.method)(call.request, timeout=timeout,
                                             metadata=self.metadata)

    def close(self) -> list:
        """Mark the client closed (calls still retrying end, new ones fail) and hand back
        the channels, for the driver to close."""
        with self._lock:
            self.closed = True
            stubs, self._stubs = list(self._stubs.values()), {}
        return [s.channel for s in stubs]


class Stream:
    """One server stream. The driver calls open() when iteration begins, passes each
    response through items(), hands a grpc.RpcError to end() (which raises what the
    stream ends with, or returns when its owner closed it) and calls finished()
    however iteration stopped. (grpc.aio ends a call cancelled here with
    asyncio.CancelledError, not an RpcError: the asyncio driver ends quietly on it
    when `closed` says the owner did it.)

    The stream runs on the node calls went to when it opened and counts its outcome
    on that node's breaker. It is not retried: a retry could repeat or skip items.
    `probe`: the stream passes the breaker first (fails fast while the circuit is
    open) and, ending well or abandoned by its reader, counts as a success.
    `subscription`: its own deadline running out, or the server cutting a slow
    reader off with a resume LSN, says nothing against the server: the breaker must
    not open over idle subscriptions. `owned`: the stream's call ends with the
    iteration (not so for Consumption, whose owner may iterate it again and close()s
    it)."""

    def __init__(self, nodes: Nodes, method: str, request: Any, *,
                 items: Callable[[Any], Iterable], timeout: float | None = None,
                 probe: bool = False, subscription: bool = False, owned: bool = True) -> None:
        self.nodes = nodes
        self.method = method
        self.request = request
        self.timeout = timeout
        self.items = items
        self.probe = probe
        self.subscription = subscription
        self.owned = owned
        self.call: Any = None
        self.breaker: CircuitBreaker | None = None
        self.failed = False
        self.closed = False  # cancelled by its owner (Consumption.close)

    def open(self) -> Any:
        """Start the call (once); returns it, to iterate (or async-iterate)."""
        if self.call is None:
            target = self.nodes.target
            self.breaker = self.nodes.breaker_of(target)
            if self.probe:
                self.breaker.before()
            self.call = self.nodes.rpc(target, self.method)(
                self.request, timeout=self.timeout, metadata=self.nodes.metadata)
        return self.call

    def end(self, e: grpc.RpcError) -> None:
        """The stream failed with `e`: raise it typed, counted by its node's breaker."""
        self.failed = True
        err = errors.from_rpc_error(e)
        if self.closed and getattr(e, "code", lambda: None)() == grpc.StatusCode.CANCELLED:
            return  # close()d by its owner
        if self.subscription and isinstance(err, (errors.Lapped, errors.DeadlineExceeded)):
            self.breaker.success()
        elif err.retryable:
            self.breaker.failure()
        else:
            self.breaker.success()  # the endpoint answered: it is up
        raise err from None

    def finished(self) -> None:
        """Iteration stopped (ran out, failed, or was abandoned by the reader)."""
        if self.failed or not self.owned or self.call is None:
            return
        if self.probe:
            self.breaker.success()  # finished or abandoned: the endpoint answered
        self.call.cancel()


class Consumption(Stream):
    """A reliable subscription (Events.Consume): iterate the events (`for` from a
    Client, `async for` from an AsyncClient); with manual_ack, `ack(lsn)` what was
    processed; `credit(n)` grants more. A named consumer resumes after its last
    acknowledgement when it subscribes again. Once iteration began, `from_lsn` says
    where delivery started (0: live) and `last_lsn` the server's last LSN when it
    subscribed (a live subscription gets the events after it); `ts_ms` is the commit time
    of the last event of the response being iterated (Unix ms; each event has its own
    `ts_ms`; 0: a write from before WAL version 4, which keeps no time). close() it
    when done.

    `requests` is the driver's request iterator, fed by `send` (None ends it);
    `iterate(stream)` is the driver's iteration of a Stream."""

    def __init__(self, nodes: Nodes, requests: Any, send: Callable[[Any], None],
                 iterate: Callable[[Stream], Any]) -> None:
        super().__init__(nodes, "events.Consume", requests, items=self._events,
                         subscription=True, owned=False)
        self._send = send
        self._iterate = iterate
        self.from_lsn = 0
        self.last_lsn = 0
        self.ts_ms = 0
        self.open()

    def _events(self, resp: Any) -> Iterable:
        if not resp.events and not self.last_lsn:  # the first response
            self.from_lsn, self.last_lsn = resp.from_lsn, resp.last_lsn
        self.ts_ms = resp.ts_ms
        return resp.events

    def end(self, e: grpc.RpcError) -> None:
        """As Stream.end; the request iterator ends too (it would wait for ever)."""
        self._send(None)
        super().end(e)

    def ack(self, lsn: int) -> None:
        self._send(pb.ConsumeRequest(ack=lsn))

    def credit(self, n: int) -> None:
        self._send(pb.ConsumeRequest(credit=n))

    def close(self) -> None:
        """End the subscription: iteration in progress ends quietly."""
        self.closed = True
        self._send(None)
        self.call.cancel()

    def __iter__(self) -> Any:
        return self._iterate(self)

    def __aiter__(self) -> Any:
        return self._iterate(self)
