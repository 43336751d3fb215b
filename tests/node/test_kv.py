"""node.kv's admission: sizes, reserved keys, batches and topics are refused before
anything is written (the engine stand-in records every write)."""

from __future__ import annotations

import asyncio
import types

import pytest

from strata.node import kv
from strata.node.errors import InvalidInput
from strata.node.request_ids import RequestIds
from strata_client.limits import MAX_TOPIC_BYTES

CFG = types.SimpleNamespace(max_key_size=8, max_value_size=16, max_batch_ops=3,
                            max_batch_bytes=40)


class Engine:
    def __init__(self) -> None:
        self.writes: list = []

    async def put_async(self, key, value, request_id=None):
        self.writes.append(("put", key, value))
        return len(self.writes)

    async def append_event_async(self, topic, key, payload):
        self.writes.append(("event", topic, key, payload))
        return len(self.writes)


class Node:
    def __init__(self) -> None:
        self.cfg = CFG
        self.ids = RequestIds()
        self.writable = True

    def check_write(self) -> None:
        if not self.writable:
            raise RuntimeError("not master")

    async def replicated(self, write):
        return await write


def run(coro):
    return asyncio.run(coro)


def test_put_checks_before_writing():
    node, eng = Node(), Engine()
    assert run(kv.put(node, eng, b"k", b"v", "")) == 1
    for key, value in ((b"", b"v"), (b"k" * 9, b"v"), (b"k", b"v" * 17)):
        with pytest.raises(InvalidInput):
            run(kv.put(node, eng, key, value, ""))
    node.writable = False
    with pytest.raises(RuntimeError, match="not master"):
        run(kv.put(node, eng, b"k", b"v", ""))
    assert eng.writes == [("put", b"k", b"v")]


def test_consumer_cursors_are_reserved():
    cfg = types.SimpleNamespace(max_key_size=64)
    with pytest.raises(InvalidInput, match="reserved"):
        kv.check_key(cfg, b"\xff\xffstrata/cursor/orders")
    assert kv.check_key(cfg, b"\xff\xffmine") == b"\xff\xffmine"


def test_batch_limits():
    assert kv.check_ops(CFG, [("put", b"a", b"1"), ("delete", b"b")]) == [
        ("put", b"a", b"1"), ("delete", b"b")]
    with pytest.raises(InvalidInput, match="at least one"):
        kv.check_ops(CFG, [])
    with pytest.raises(InvalidInput, match="4 operations"):
        kv.check_ops(CFG, [("delete", b"a")] * 4)
    with pytest.raises(InvalidInput, match="no kind"):
        kv.check_ops(CFG, [(None, b"a", b"")])
    with pytest.raises(InvalidInput, match="batch is 48 bytes"):
        kv.check_ops(CFG, [("put", b"a" * 8, b"b" * 16)] * 2)


def test_publish_topic_limits_are_the_shared_ones():
    node, eng = Node(), Engine()
    CFG.max_key_size = 8
    assert run(kv.publish(node, eng, "t" * MAX_TOPIC_BYTES, b"", b"p")) == 1
    for topic in ("", "t" * (MAX_TOPIC_BYTES + 1), "kv"):
        with pytest.raises(InvalidInput):
            run(kv.publish(node, eng, topic, b"", b"p"))
    assert len(eng.writes) == 1
