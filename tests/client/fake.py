"""A scripted strata.v1 server for client tests, in-process on 127.0.0.1.

Its KV, Admin and Events services answer from a per-method script: a queue of
actions (a response, an error with trailers, a stream, or a callable)
followed by a default. Every call it receives is recorded (method, request,
metadata), so tests can count server hits, compare request ids across
retries and check the token.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from strata_client import AsyncClient, CircuitBreaker, RetryPolicy
from strata_client._proto import strata_pb2 as pb
from strata_client._proto import strata_pb2_grpc as pbg

C = grpc.StatusCode
FAST = dict(base_s=0.001, cap_s=0.01)
COOLDOWN = 0.2


# --------------------------------------------------------------------------- fake server

@dataclass
class Err:
    code: grpc.StatusCode
    details: str = "scripted"
    trailers: tuple = ()


@dataclass
class Stream:
    items: list = field(default_factory=list)
    err: Err | None = None


@dataclass
class Call:
    method: str
    request: object
    metadata: dict


DEFAULTS = {
    "Put": lambda: pb.PutResponse(lsn=11),
    "Get": lambda: pb.GetResponse(found=True, value=b"v", lsn=10),
    "Delete": lambda: pb.DeleteResponse(lsn=12),
    "Batch": lambda: pb.BatchResponse(lsn=13),
    "CompareAndSet": lambda: pb.CompareAndSetResponse(lsn=14),
    "Publish": lambda: pb.PublishResponse(lsn=15),
    "Status": lambda: pb.StatusResponse(node="fake", role="master", last_lsn=99),
    "Checkpoint": lambda: pb.CheckpointResponse(path="/tmp/cp", lsn=16),
    "Compact": lambda: pb.CompactResponse(seconds=0.5),
    "TransferLeader": lambda: pb.TransferLeaderResponse(master="id=127.0.0.1:1", term=3),
    "Consumers": lambda: pb.ConsumersResponse(last_lsn=99),
    "DeleteConsumer": lambda: pb.DeleteConsumerResponse(was_connected=True, cursor_lsn=17),
    "Scan": lambda: Stream([]),
    "Subscribe": lambda: Stream([]),
    "Write": lambda: None,  # Write answers each batch itself
    "Consume": lambda: Stream([]),
}


class Fake:
    """Scripted behaviour + call log shared by the three servicers of one server."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._queues: dict[str, deque] = defaultdict(deque)
        self._always: dict[str, object] = {}
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self.address = ""
        self.server: grpc.Server | None = None  # stop(0) it to take the node down

    # scripting
    def then(self, method: str, *actions) -> Fake:
        """Answer the next calls of `method` with `actions`, in order."""
        with self._lock:
            self._queues[method].extend(actions)
        return self

    def always(self, method: str, action) -> Fake:
        """Answer `method` with `action` once its queue is empty."""
        with self._lock:
            self._always[method] = action
        return self

    # inspection
    def hits(self, method: str | None = None) -> int:
        with self._lock:
            return sum(1 for c in self.calls if method is None or c.method == method)

    def requests(self, method: str) -> list:
        with self._lock:
            return [c.request for c in self.calls if c.method == method]

    def wait_hits(self, n: int, timeout: float = 5.0) -> None:
        with self._cv:
            assert self._cv.wait_for(lambda: len(self.calls) >= n, timeout), \
                f"server saw {len(self.calls)} calls, wanted {n}"

    # dispatch
    def _next(self, method: str, request, context):
        with self._cv:
            self.calls.append(Call(method, request, dict(context.invocation_metadata())))
            self._cv.notify_all()
            q = self._queues[method]
            if q:
                return q.popleft()
            if method in self._always:
                return self._always[method]
        return DEFAULTS[method]()

    @staticmethod
    def _fail(context, err: Err):
        if err.trailers:
            context.set_trailing_metadata(tuple(err.trailers))
        context.abort(err.code, err.details)

    def unary(self, method: str, request, context):
        action = self._next(method, request, context)
        if callable(action) and not isinstance(action, Err):
            action = action(request, context)
        if isinstance(action, Err):
            self._fail(context, action)
        return action

    def stream(self, method: str, request, context):
        action = self._next(method, request, context)
        if callable(action) and not isinstance(action, (Err, Stream)):
            action = action(request, context)
        if isinstance(action, Err):
            self._fail(context, action)
        yield from action.items
        if action.err is not None:
            self._fail(context, action.err)


class _KV(pbg.KVServicer):
    def __init__(self, fake: Fake) -> None:
        self.f = fake

    def Put(self, request, context):
        return self.f.unary("Put", request, context)

    def Get(self, request, context):
        return self.f.unary("Get", request, context)

    def Delete(self, request, context):
        return self.f.unary("Delete", request, context)

    def Batch(self, request, context):
        return self.f.unary("Batch", request, context)

    def CompareAndSet(self, request, context):
        return self.f.unary("CompareAndSet", request, context)

    def Scan(self, request, context):
        yield from self.f.stream("Scan", request, context)

    def Write(self, request_iterator, context):
        for req in request_iterator:
            self.f._next("Write", req, context)
            yield pb.BatchResponse(lsn=100 + req.id, id=req.id)


class _Events(pbg.EventsServicer):
    def __init__(self, fake: Fake) -> None:
        self.f = fake

    def Publish(self, request, context):
        return self.f.unary("Publish", request, context)

    def Subscribe(self, request, context):
        yield from self.f.stream("Subscribe", request, context)

    def Consume(self, request_iterator, context):
        # The subscription is answered with the scripted stream, which then ends with
        # its error, or else stays open: each later request (ack, credit) is recorded
        # as a call of "Consume" too.
        first = next(request_iterator)
        action = self.f._next("Consume", first, context)
        yield from action.items
        if action.err is not None:
            self.f._fail(context, action.err)
        for req in request_iterator:
            self.f._next("Consume", req, context)


class _Admin(pbg.AdminServicer):
    def __init__(self, fake: Fake) -> None:
        self.f = fake

    def Status(self, request, context):
        return self.f.unary("Status", request, context)

    def Checkpoint(self, request, context):
        return self.f.unary("Checkpoint", request, context)

    def Compact(self, request, context):
        return self.f.unary("Compact", request, context)

    def TransferLeader(self, request, context):
        return self.f.unary("TransferLeader", request, context)

    def Consumers(self, request, context):
        return self.f.unary("Consumers", request, context)

    def DeleteConsumer(self, request, context):
        return self.f.unary("DeleteConsumer", request, context)


def slow(resp, seconds: float):
    """An action answering `resp` after `seconds`."""
    def act(req, ctx):
        time.sleep(seconds)
        return resp
    return act


def start_fake() -> tuple[Fake, grpc.Server]:
    fake = Fake()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pbg.add_KVServicer_to_server(_KV(fake), server)
    pbg.add_EventsServicer_to_server(_Events(fake), server)
    pbg.add_AdminServicer_to_server(_Admin(fake), server)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port
    server.start()
    fake.address = f"127.0.0.1:{port}"
    fake.server = server
    return fake, server


def async_client(target: str, *, attempts: int = 5, threshold: int = 100, **kw) -> AsyncClient:
    return AsyncClient(target, retry=RetryPolicy(attempts=attempts, **FAST),
                       breaker=CircuitBreaker(threshold=threshold, cooldown_s=COOLDOWN), **kw)
