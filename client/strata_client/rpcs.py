"""What each client method sends and how its answer is read, with no I/O.

Each unary method is a `core.Unary` built here: its request, its retry kind
(strata_client.attempts: READ, WRITE, ONCE, NODE) and how the response becomes the
method's result. Both Client and AsyncClient send exactly these, so the two cannot
differ in what goes on the wire. Streams get their request and their item decoding
here too, and the coalescer's messages (`message`, `message_failed`) their request
and the reading of their per-op answers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from . import errors
from ._proto import strata_pb2 as pb
from .attempts import NODE, ONCE, READ, WRITE
from .batching import Call
from .core import Nodes, Stream, Unary


def new_id() -> str:
    """A fresh request id: the server answers a repeat of it with the first LSN."""
    return uuid.uuid4().hex


def _lsn(resp: Any) -> int:
    return resp.lsn


def encode_ops(ops: Iterable[tuple]) -> list:
    """("put", key, value) / ("delete", key) tuples as Ops; InvalidArgument otherwise."""
    out = []
    for op in ops:
        if op[0] == "put":
            out.append(pb.Op(kind=pb.Op.PUT, key=op[1], value=op[2]))
        elif op[0] == "delete":
            out.append(pb.Op(kind=pb.Op.DELETE, key=op[1]))
        else:
            raise errors.InvalidArgument(f"unknown batch op {op[0]!r}", "INVALID_ARGUMENT")
    return out


# -- KV

def write(op: tuple, request_id: str) -> Unary:
    """One put ("put", key, value) or delete ("delete", key) as its own call; -> LSN."""
    if len(op) == 3:
        return Unary("kv.Put", pb.PutRequest(key=op[1], value=op[2], request_id=request_id),
                     WRITE, _lsn)
    return Unary("kv.Delete", pb.DeleteRequest(key=op[1], request_id=request_id), WRITE, _lsn)


def batch(ops: Iterable[tuple], request_id: str) -> Unary:
    """An atomic batch; -> its last LSN."""
    return Unary("kv.Batch", pb.BatchRequest(ops=encode_ops(ops), request_id=request_id),
                 WRITE, _lsn)


def _entry(resp: Any) -> tuple[bytes | None, int]:
    return (resp.value, resp.lsn) if resp.found else (None, 0)


def get_entry(key: bytes, stale_ok: bool) -> Unary:
    """-> (value, LSN of the write that produced it), or (None, 0) if absent."""
    return Unary("kv.Get", pb.GetRequest(key=key, stale_ok=stale_ok), READ, _entry)


def compare_and_set(key: bytes, value: bytes | None, expected_lsn: int | None,
                    expected_value: bytes | None, expect_absent: bool, delete: bool) -> Unary:
    """Never sent again once it may have reached a server (ONCE); -> LSN."""
    req = pb.CompareAndSetRequest(key=key, value=value or b"", delete=delete)
    if expected_lsn is not None:
        req.expected_lsn = expected_lsn
    elif expected_value is not None:
        req.expected_value = expected_value
    elif expect_absent:
        req.expect_absent = True
    return Unary("kv.CompareAndSet", req, ONCE, _lsn)


def _pairs(chunk: Any) -> Iterator[tuple[bytes, bytes]]:
    return ((kv.key, kv.value) for kv in chunk.items)


def scan(nodes: Nodes, start: bytes, end: bytes, limit: int, keys_only: bool,
         stale_ok: bool) -> Stream:
    """(key, value) pairs from one snapshot, within the client's timeout. It passes the
    breaker first, as unary calls do, but is not retried mid-stream."""
    req = pb.ScanRequest(start=start, end=end, limit=limit, keys_only=keys_only,
                         stale_ok=stale_ok)
    return Stream(nodes, "kv.Scan", req, items=_pairs, timeout=nodes.timeout, probe=True)


def _requests(batches: Iterable[list[tuple]]) -> Iterator:
    for i, ops in enumerate(batches):
        yield pb.BatchRequest(ops=encode_ops(ops), id=i, request_id=new_id())


def _lsns_of(resp: Any) -> tuple[int]:
    return (resp.lsn,)


def write_stream(nodes: Nodes, batches: Iterable[list[tuple]]) -> Stream:
    """A Write stream: one BatchRequest per batch (ids from 0, a request id each);
    yields their LSNs in order. `batches` is read as the stream sends (with grpc.aio,
    on the event loop: it should not block)."""
    return Stream(nodes, "kv.Write", _requests(batches), items=_lsns_of)


# -- Events

def publish(topic: str, key: bytes, payload: bytes) -> Unary:
    """Never sent again once it may have reached a server (ONCE); -> LSN."""
    return Unary("events.Publish", pb.PublishRequest(topic=topic, key=key, payload=payload),
                 ONCE, _lsn)


def _one(ev: Any) -> tuple:
    return (ev,)


def subscribe(nodes: Nodes, topics: Iterable[str], key_prefix: bytes, from_lsn: int,
              timeout: float | None) -> Stream:
    """Events in LSN order until `timeout` (None: no deadline); ends with Lapped or
    Compacted, which (as its own deadline) count as answers on the node's breaker."""
    req = pb.SubscribeRequest(topics=list(topics), key_prefix=key_prefix, from_lsn=from_lsn)
    return Stream(nodes, "events.Subscribe", req, items=_one, timeout=timeout,
                  subscription=True)


def consume(consumer: str, tier: str, topics: Iterable[str], key_prefix: bytes,
            from_lsn: int, manual_ack: bool, credits: int | None,
            window_ms: int) -> pb.ConsumeRequest:
    """The first request of a Consume stream (the subscription itself)."""
    sub = pb.ConsumeSubscribe(tier=tier, topics=list(topics), key_prefix=key_prefix,
                              from_lsn=from_lsn, consumer=consumer, manual_ack=manual_ack,
                              window_ms=window_ms)
    if credits is not None:
        sub.credits = credits
    return pb.ConsumeRequest(subscribe=sub)


# -- Admin

def status() -> Unary:
    return Unary("admin.Status", pb.StatusRequest(), READ)


def checkpoint(path: str) -> Unary:
    """One node's own operation (NODE), given at least 10 minutes; -> the checkpoint's LSN."""
    return Unary("admin.Checkpoint", pb.CheckpointRequest(path=path), NODE, _lsn, 600)


def checkpoints() -> Unary:
    """One node's own checkpoints (NODE): a CheckpointsResponse."""
    return Unary("admin.Checkpoints", pb.CheckpointsRequest(), NODE)


def _seconds(resp: Any) -> float:
    return resp.seconds


def compact() -> Unary:
    """One node's own operation (NODE), given at least an hour; -> seconds it took."""
    return Unary("admin.Compact", pb.CompactRequest(), NODE, _seconds, 3600)


def transfer_leader(to: str) -> Unary:
    return Unary("admin.TransferLeader", pb.TransferLeaderRequest(to=to), ONCE)


def consumers() -> Unary:
    return Unary("admin.Consumers", pb.ConsumersRequest(), READ)


def delete_consumer(name: str) -> Unary:
    return Unary("admin.DeleteConsumer", pb.DeleteConsumerRequest(name=name), NODE)


# -- the coalescer's messages (strata_client.batching)

def lsns(resp: Any, n: int) -> list[int]:
    """Each op's LSN from a BatchResponse of n ops."""
    if len(resp.lsns) == n:
        return list(resp.lsns)
    return [resp.lsn - n + 1 + i for i in range(n)]  # a server without per-op LSNs


def message(calls: list[Call]) -> Unary:
    """One message of coalesced calls: a lone call as its own Put/Delete, several as a
    Batch whose ops carry each call's own request id (the message has none of its
    own); -> each call's LSN."""
    if len(calls) == 1:
        single = write(calls[0].op, calls[0].request_id)
        return Unary(single.method, single.request, WRITE, lambda resp: [resp.lsn])
    ops = [pb.Op(kind=pb.Op.PUT, key=c.op[1], value=c.op[2], request_id=c.request_id)
           if len(c.op) == 3 else
           pb.Op(kind=pb.Op.DELETE, key=c.op[1], request_id=c.request_id) for c in calls]
    n = len(calls)
    return Unary("kv.Batch", pb.BatchRequest(ops=ops), WRITE, lambda resp: lsns(resp, n))


def message_failed(calls: list[Call], err: errors.StrataError) -> list | None:
    """What a message that failed with `err` means for its calls: each call's own
    error (a coalesced message of unknown outcome: each OutcomeUnknown carries its
    call's request id), or None when the calls must be sent again one by one (a
    Batch refused as INVALID_ARGUMENT wrote nothing: find the bad call or calls).
    Raises `err` when it is every call's answer."""
    if len(calls) > 1:
        if isinstance(err, errors.OutcomeUnknown):
            return [errors.OutcomeUnknown(f"{err} (request id {c.request_id})", err.code,
                                          c.request_id) for c in calls]
        if isinstance(err, errors.InvalidArgument):
            return None
    raise err
