"""The KV and Events operations, one function each: input checks, the write rule
(master with its lease), request ids, the engine, then the replication wait.

Every function runs on the event loop and takes the engine the transport was
admitted with (`Node.serving` at admission), so a reopen in the middle of a call
does not switch engines under it. Raises InvalidInput for bad input (nothing is
written), NotMaster / NoMaster from the write rule, and what the engine raises.
Return values are plain (LSNs, bytes): the transport builds its messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from strata.distribution.cursors import RESERVED_PREFIX, is_reserved
from strata.storage import Engine
from strata_client.limits import KV_TOPIC, MAX_TOPIC_BYTES

from .errors import InvalidInput
from .node import Node, NodeConfig

# ------------------------------------------------------------------- admission


def check_key(cfg: NodeConfig, key: bytes) -> bytes:
    if not key:
        raise InvalidInput("key must not be empty")
    if len(key) > cfg.max_key_size:
        raise InvalidInput(f"key is {len(key)} bytes; the limit is {cfg.max_key_size}")
    if key[:2] == b"\xff\xff" and is_reserved(key):
        raise InvalidInput(f"keys starting with {RESERVED_PREFIX!r} are reserved (consumer "
                           f"cursors)")
    return key


def check_value(cfg: NodeConfig, value: bytes) -> bytes:
    if len(value) > cfg.max_value_size:
        raise InvalidInput(f"value is {len(value)} bytes; the limit is {cfg.max_value_size}")
    return value


def check_ops(cfg: NodeConfig, ops: list[tuple]) -> list[tuple]:
    """A batch's ops as the engine takes them, from ("put", key, value), ("delete",
    key) or (None, ...) for an op of no known kind."""
    if not ops:
        raise InvalidInput("a batch needs at least one operation")
    if len(ops) > cfg.max_batch_ops:
        raise InvalidInput(f"batch has {len(ops)} operations; the limit is {cfg.max_batch_ops}")
    out: list[tuple] = []
    size = 0
    for i, op in enumerate(ops):
        if op[0] == "put":
            out.append(("put", check_key(cfg, op[1]), check_value(cfg, op[2])))
            size += len(op[1]) + len(op[2])
        elif op[0] == "delete":
            out.append(("delete", check_key(cfg, op[1])))
            size += len(op[1])
        else:
            raise InvalidInput(f"operation {i} has no kind (PUT or DELETE)")
    if size > cfg.max_batch_bytes:
        raise InvalidInput(f"batch is {size} bytes; the limit is {cfg.max_batch_bytes}")
    return out


# ------------------------------------------------------------------ operations


async def put(node: Node, engine: Engine, key: bytes, value: bytes, request_id: str) -> int:
    cfg = node.cfg
    key, value = check_key(cfg, key), check_value(cfg, value)
    node.check_write()
    return await node.ids.run(request_id, lambda: node.replicated(
        engine.put_async(key, value, request_id=request_id)))


def get(node: Node, engine: Engine, key: bytes, stale_ok: bool) -> tuple[bytes | None, int]:
    """(value, LSN of the write that set it); (None, 0) when absent."""
    check_key(node.cfg, key)
    node.check_read(stale_ok)
    return engine.get_entry(key)


async def delete(node: Node, engine: Engine, key: bytes, request_id: str) -> int:
    check_key(node.cfg, key)
    node.check_write()
    return await node.ids.run(request_id, lambda: node.replicated(
        engine.delete_async(key, request_id=request_id)))


async def batch(node: Node, engine: Engine, ops: list[tuple], request_id: str,
                op_ids: list[str]) -> tuple[int, list[int]]:
    """An atomic batch (ops checked by check_ops): once per request id, or, when its
    ops carry their own ids (coalesced calls), once per op (RequestIds.run_ops).
    Returns (LSN of the batch, each op's LSN or [] without per-op ids)."""
    node.check_write()
    if not any(op_ids):
        lsn = await node.ids.run(request_id, lambda: node.replicated(
            engine.write_batch_async(ops, request_id=request_id)))
        return lsn, []
    if request_id:
        raise InvalidInput("set request_id on the batch or on its ops, not both")
    lsns = await node.ids.run_ops(
        op_ids, lambda idx: node.replicated(engine.write_batch_async(
            [ops[i] for i in idx], request_ids=[op_ids[i] for i in idx])))
    return max(lsns), lsns


async def compare_and_set(node: Node, engine: Engine, key: bytes, value: bytes, delete: bool,
                          expect: str | None, expected: Any) -> int:
    """Write (or delete) `key` if `expect` holds: "expected_lsn", "expected_value" or
    "expect_absent" (which must be true), compared with `expected`. Conflict if not."""
    cfg = node.cfg
    check_key(cfg, key)
    if expect is None:
        raise InvalidInput("set one of expected_lsn, expected_value, expect_absent")
    if expect == "expect_absent" and not expected:
        raise InvalidInput("expect_absent must be true when set")
    node.check_write()
    kwargs: dict[str, Any] = {expect: expected}
    if delete:
        write = engine.compare_and_set_async(key, delete=True, **kwargs)
    else:
        write = engine.compare_and_set_async(key, check_value(cfg, value), **kwargs)
    return await node.replicated(write)


async def publish(node: Node, engine: Engine, topic: str, key: bytes, payload: bytes) -> int:
    cfg = node.cfg
    raw = topic.encode()
    if not 1 <= len(raw) <= MAX_TOPIC_BYTES:
        raise InvalidInput(f"topic must be 1 .. {MAX_TOPIC_BYTES} bytes")
    if topic == KV_TOPIC:
        raise InvalidInput(f'topic "{KV_TOPIC}" is reserved for key-space writes')
    check_value(cfg, payload)
    if len(key) > cfg.max_key_size:
        raise InvalidInput("event key is over max_key_size")
    node.check_write()
    return await node.replicated(engine.append_event_async(raw, key, payload))


def scan(node: Node, engine: Engine, start: bytes, end: bytes, stale_ok: bool):
    """(snapshot, iterator of (key, value)) over [start, end) at one snapshot; the
    caller owns the snapshot and must release() it. The reserved range (consumer
    cursors) sorts last and is never shown. The iterator reads the disk: drive it off
    the loop."""
    node.check_read(stale_ok)
    snap = engine.snapshot()
    end = min(end or RESERVED_PREFIX, RESERVED_PREFIX)
    it: Iterator = engine.scan(start or None, end, snapshot=snap)
    return snap, it
