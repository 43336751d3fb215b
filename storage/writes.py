"""Turning a caller's operations into frame payloads, with their checks (sizes, types,
request ids), before anything takes an LSN.

A part of `Engine` (engine.py); only `opts` is read, so this runs on any thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgpack

from . import record
from .errors import (
    InvalidArgument,
    TooLarge,
)

PACKB = msgpack.Packer(use_bin_type=True).pack  # one Packer: packb() builds one per call

def check_bytes(what: str, b: Any, limit: int) -> None:
    if type(b) is not bytes:
        if isinstance(b, (bytearray, memoryview)):
            raise InvalidArgument(f"{what} must be bytes, not {type(b).__name__}; pass bytes(...)")
        raise InvalidArgument(f"{what} must be bytes, not {type(b).__name__}")
    if len(b) > limit:
        raise TooLarge(what, len(b), limit)


def request_id_of(request_id: Any) -> str | None:
    """The id to write: None for None or "" (no id), else a str of at most
    record.MAX_REQUEST_ID characters (InvalidArgument otherwise)."""
    if request_id is None or request_id == "":
        return None
    if type(request_id) is not str:
        raise InvalidArgument(f"request id must be a str, not {type(request_id).__name__}")
    if len(request_id) > record.MAX_REQUEST_ID:
        raise InvalidArgument(f"request id is {len(request_id)} characters; the limit is "
                              f"{record.MAX_REQUEST_ID}")
    return request_id


class WriteEncoding:
    """Validation and encoding of writes. Mixed into Engine."""

    def _prepare_put(self, key: Any, value: Any,
                     request_id: Any = None) -> tuple[int, bytes, tuple]:
        self._validate(key, value)
        rid = request_id_of(request_id)
        return (record.TYPE_PUT, PACKB((key, value) if rid is None else (key, value, rid)),
                ((key, value),))

    def _prepare_delete(self, key: Any, request_id: Any = None) -> tuple[int, bytes, tuple]:
        self._validate(key, b"")
        rid = request_id_of(request_id)
        return record.TYPE_DELETE, PACKB(key if rid is None else (key, rid)), ((key, None),)

    def _prepare_batch(self, ops: Iterable[tuple], request_id: Any = None,
                       request_ids: list | None = None) -> tuple[int, bytes, list]:
        kvs: list[tuple[bytes, bytes | None]] = []
        wire: list[tuple[int, bytes, bytes | None]] = []
        size = 0
        mk, mv = self._max_key, self._max_value
        for op in ops:
            # Fast path for well-formed puts: a batch of 1000 spends most of its
            # time here (bench/engine: fillrandom-batch).
            if type(op) is tuple and len(op) == 3 and op[0] == "put":
                k, v = op[1], op[2]
                if type(k) is bytes and type(v) is bytes and 0 < len(k) <= mk and len(v) <= mv:
                    kvs.append((k, v))
                    wire.append((1, k, v))
                    size += len(k) + len(v)
                    continue
            if not isinstance(op, (tuple, list)) or not op:
                raise InvalidArgument(f"batch op must be a tuple, not {op!r}")
            kind = op[0]
            if kind == "put" and len(op) == 3:
                self._validate(op[1], op[2])
                kvs.append((op[1], op[2]))
                wire.append((1, op[1], op[2]))
                size += len(op[1]) + len(op[2])
            elif kind == "delete" and len(op) == 2:
                self._validate(op[1], b"")
                kvs.append((op[1], None))
                wire.append((2, op[1], None))
                size += len(op[1])
            else:
                raise InvalidArgument(
                    f"batch op must be ('put', key, value) or ('delete', key), not {op!r}")
        if not kvs:
            raise InvalidArgument("empty batch")
        if len(kvs) > self.opts.max_batch_ops:
            raise TooLarge("batch (operations)", len(kvs), self.opts.max_batch_ops)
        if size > self.opts.max_batch_bytes:
            raise TooLarge("batch", size, self.opts.max_batch_bytes)
        if request_ids is not None:
            if request_id:
                raise InvalidArgument("give a batch request_id or request_ids, not both")
            if len(request_ids) != len(wire):
                raise InvalidArgument(f"{len(request_ids)} request ids for {len(wire)} ops")
            for i, r in enumerate(request_ids):
                if (rid := request_id_of(r)) is not None:
                    wire[i] = (*wire[i], rid)
        elif (rid := request_id_of(request_id)) is not None:
            wire[-1] = (*wire[-1], rid)  # the batch's answer is its last op's LSN
        return record.TYPE_BATCH, PACKB(wire), kvs

    def _prepare_event(self, topic: Any, key: Any, payload: Any) -> tuple[int, bytes, tuple]:
        check_bytes("topic", topic, 1024)
        check_bytes("event key", key, self.opts.max_key_size)
        check_bytes("event payload", payload, self.opts.max_value_size)
        return record.TYPE_EVENT, PACKB((topic, key, payload)), ()

    def _validate(self, key: Any, value: Any) -> None:
        check_bytes("key", key, self.opts.max_key_size)
        if not key:
            raise InvalidArgument("key must not be empty")
        check_bytes("value", value, self.opts.max_value_size)
