"""The client side: worker processes that load one server through its own client
(Strata and etcd over gRPC, Redis over redis-py) and report latencies."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import sys
import time
from abc import ABC, abstractmethod
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .common import KEY_FMT, LOAD_CHUNK, MAX_ERRORS, RPC_TIMEOUT_S, VALUE_POOL, VALUE_SIZE

# ---------------------------------------------------------------- client side (worker processes)
#
# A worker is a long-lived process driven by JSON lines on stdin: "prepare"
# (connect, warm up), "go" (run the point, answer with the figures), "load"
# (store the read set), "exit". The parent sends "go" to every worker of a
# point only once all are prepared, so connection set-up is not measured.


def _value_pool(seed: int) -> list[bytes]:
    rng = random.Random(seed ^ 0x5EED)
    pool = []
    for _ in range(VALUE_POOL):
        half = rng.randbytes(VALUE_SIZE // 2)
        pool.append(half + half)
    return pool


@dataclass
class Point:
    """One worker's share of a load point."""

    system: str
    address: str
    workload: str  # put, get, batch, write
    inflight: int
    seconds: float
    max_requests: int
    key_base: int
    batch_ops: int
    read_keys: int
    seed: int


Op = Callable[[int], Awaitable[bool]]  # request i -> answered correctly (a get found its key)


class Conn(ABC):
    """A client connection to one server; `op(point)` returns the request a slot repeats."""

    @abstractmethod
    async def open(self, address: str, inflight: int) -> None:
        """See the class docstring."""

    @abstractmethod
    async def close(self) -> None:
        """See the class docstring."""

    @abstractmethod
    def op(self, p: Point, vals: list[bytes]) -> Op:
        """See the class docstring."""

    @abstractmethod
    async def load(self, lo: int, hi: int, vals: list[bytes]) -> None:
        """See the class docstring."""


def _get_keys(p: Point) -> Callable[[int], bytes]:
    rng = random.Random(p.seed ^ p.key_base)
    n, fmt, pick = p.read_keys, KEY_FMT, rng.randrange
    return lambda _i: fmt % pick(n)


class StrataConn(Conn):
    def __init__(self) -> None:
        import grpc

        from strata_client._proto import strata_pb2, strata_pb2_grpc

        self.grpc, self.pb, self.pbg = grpc, strata_pb2, strata_pb2_grpc
        self.channel: Any = None
        self.stub: Any = None
        self.client: Any = None

    async def open(self, address: str, inflight: int) -> None:
        self.channel = self.grpc.aio.insecure_channel(address, options=[
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20),
        ])
        await asyncio.wait_for(self.channel.channel_ready(), 15)
        self.stub = self.pbg.KVStub(self.channel)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self.channel is not None:
            await self.channel.close()

    def op(self, p: Point, vals: list[bytes]) -> Op:
        pb, fmt, mask, base, t = self.pb, KEY_FMT, VALUE_POOL - 1, p.key_base, RPC_TIMEOUT_S
        if p.workload == "client":
            # The application's way: one AsyncClient, every coroutine awaiting put();
            # concurrent calls are coalesced into Batch requests (the default).
            from strata_client import AsyncClient

            self.client = AsyncClient(p.address, timeout=t)
            cput = self.client.put

            async def do_client_put(i: int) -> bool:
                await cput(fmt % (base + i), vals[i & mask])
                return True

            return do_client_put
        if p.workload == "put":
            put, req = self.stub.Put, pb.PutRequest

            async def do_put(i: int) -> bool:
                await put(req(key=fmt % (base + i), value=vals[i & mask]), timeout=t)
                return True

            return do_put
        if p.workload == "get":
            get, greq, key = self.stub.Get, pb.GetRequest, _get_keys(p)

            async def do_get(i: int) -> bool:
                return (await get(greq(key=key(i)), timeout=t)).found

            return do_get
        if p.workload == "batch":
            batch, breq, opm, PUT = self.stub.Batch, pb.BatchRequest, pb.Op, pb.Op.PUT
            b = p.batch_ops

            async def do_batch(i: int) -> bool:
                k0 = base + i * b
                ops = [opm(kind=PUT, key=fmt % (k0 + j), value=vals[(k0 + j) & mask])
                       for j in range(b)]
                await batch(breq(ops=ops), timeout=t)
                return True

            return do_batch
        raise ValueError(f"strata has no workload {p.workload!r}")

    def batch_message(self, p: Point, i: int, vals: list[bytes]) -> Any:
        pb, b, mask = self.pb, p.batch_ops, VALUE_POOL - 1
        k0 = p.key_base + i * b
        return pb.BatchRequest(id=i + 1, ops=[
            pb.Op(kind=pb.Op.PUT, key=KEY_FMT % (k0 + j), value=vals[(k0 + j) & mask])
            for j in range(b)])

    async def load(self, lo: int, hi: int, vals: list[bytes]) -> None:
        pb, mask = self.pb, VALUE_POOL - 1

        async def chunk(start: int) -> None:
            ops = [pb.Op(kind=pb.Op.PUT, key=KEY_FMT % k, value=vals[k & mask])
                   for k in range(start, min(start + LOAD_CHUNK, hi))]
            await self.stub.Batch(pb.BatchRequest(ops=ops), timeout=RPC_TIMEOUT_S)

        starts = list(range(lo, hi, LOAD_CHUNK))
        for s in range(0, len(starts), 4):  # four requests in flight
            await asyncio.gather(*(chunk(x) for x in starts[s:s + 4]))


class EtcdConn(Conn):
    def __init__(self) -> None:
        import etcd_pb2  # generated from bench/etcd.proto into a dir on sys.path
        import etcd_pb2_grpc
        import grpc

        self.grpc, self.pb, self.pbg = grpc, etcd_pb2, etcd_pb2_grpc
        self.channel: Any = None
        self.stub: Any = None

    async def open(self, address: str, inflight: int) -> None:
        self.channel = self.grpc.aio.insecure_channel(address)
        await asyncio.wait_for(self.channel.channel_ready(), 15)
        self.stub = self.pbg.KVStub(self.channel)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    def op(self, p: Point, vals: list[bytes]) -> Op:
        pb, fmt, mask, base, t = self.pb, KEY_FMT, VALUE_POOL - 1, p.key_base, RPC_TIMEOUT_S
        if p.workload == "put":
            put, req = self.stub.Put, pb.PutRequest

            async def do_put(i: int) -> bool:
                await put(req(key=fmt % (base + i), value=vals[i & mask]), timeout=t)
                return True

            return do_put
        if p.workload == "get":
            rng, rreq, key = self.stub.Range, pb.RangeRequest, _get_keys(p)

            async def do_get(i: int) -> bool:
                return len((await rng(rreq(key=key(i), serializable=True), timeout=t)).kvs) == 1

            return do_get
        raise ValueError(f"etcd has no workload {p.workload!r}")

    async def load(self, lo: int, hi: int, vals: list[bytes]) -> None:
        pb, mask, nxt = self.pb, VALUE_POOL - 1, [lo]

        async def slot() -> None:
            while nxt[0] < hi:
                k = nxt[0]
                nxt[0] += 1
                await self.stub.Put(pb.PutRequest(key=KEY_FMT % k, value=vals[k & mask]),
                                    timeout=RPC_TIMEOUT_S)

        await asyncio.gather(*(slot() for _ in range(64)))


class RedisConn(Conn):
    def __init__(self) -> None:
        import redis.asyncio as aioredis

        self.aioredis = aioredis
        self.r: Any = None

    async def open(self, address: str, inflight: int) -> None:
        host, port = address.rsplit(":", 1)
        self.r = self.aioredis.Redis(host=host, port=int(port), socket_timeout=RPC_TIMEOUT_S,
                                     socket_connect_timeout=15, max_connections=max(1, inflight))
        # one connection per slot, made now: opening them is not part of the point
        await asyncio.gather(*(self.r.ping() for _ in range(max(1, inflight))))

    async def close(self) -> None:
        if self.r is not None:
            await self.r.aclose()

    def op(self, p: Point, vals: list[bytes]) -> Op:
        fmt, mask, base = KEY_FMT, VALUE_POOL - 1, p.key_base
        if p.workload == "put":
            set_ = self.r.set

            async def do_put(i: int) -> bool:
                await set_(fmt % (base + i), vals[i & mask])
                return True

            return do_put
        if p.workload == "get":
            get, key = self.r.get, _get_keys(p)

            async def do_get(i: int) -> bool:
                return (await get(key(i))) is not None

            return do_get
        raise ValueError(f"redis has no workload {p.workload!r}")

    async def load(self, lo: int, hi: int, vals: list[bytes]) -> None:
        mask = VALUE_POOL - 1
        for start in range(lo, hi, LOAD_CHUNK):
            await self.r.mset({KEY_FMT % k: vals[k & mask]
                               for k in range(start, min(start + LOAD_CHUNK, hi))})


def _conn_for(system: str) -> Conn:
    if system.startswith("strata") or system == "ceiling":
        return StrataConn()
    if system == "etcd":
        return EtcdConn()
    if system.startswith("redis"):
        return RedisConn()
    raise ValueError(f"unknown system {system!r}")


async def _run_slots(op: Op, p: Point) -> dict[str, Any]:
    """p.inflight slots, each sending its next request when its last is answered."""
    pc = time.perf_counter_ns
    lat = array("q")
    append = lat.append
    nxt = 0
    misses = errors = 0
    first_error: str | None = None
    stop = False
    limit = p.max_requests
    deadline = 0

    async def slot() -> None:
        nonlocal nxt, misses, errors, first_error, stop
        while not stop:
            i = nxt
            if i >= limit:
                return
            nxt = i + 1
            t0 = pc()
            if t0 >= deadline:
                return
            try:
                ok = await op(i)
            except Exception as exc:  # counted, and the point goes on until too many
                errors += 1
                if first_error is None:
                    first_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                if errors >= MAX_ERRORS:
                    stop = True
                continue
            append(pc() - t0)
            if not ok:
                misses += 1

    c0 = time.process_time()
    start = pc()
    deadline = start + int(p.seconds * 1e9)
    await asyncio.gather(*(slot() for _ in range(p.inflight)))
    end = pc()
    return {"requests": len(lat), "t0": start, "t1": end, "lat": lat, "misses": misses,
            "errors": errors, "first_error": first_error, "cpu": time.process_time() - c0}


class WriteStream:
    """Strata's bidi KV.Write: one stream, up to p.inflight messages awaiting their answer."""

    def __init__(self, conn: StrataConn, p: Point, vals: list[bytes]) -> None:
        self.conn, self.p, self.vals = conn, p, vals
        self.call: Any = None

    async def open(self) -> None:
        self.call = self.conn.stub.Write(timeout=self.p.seconds + 120)
        # one message answered before the point starts: the stream is set up
        warm = self.conn.batch_message(self.p, self.p.max_requests + 1, self.vals)
        await self.call.write(warm)
        resp = await self.call.read()
        if resp is self.conn.grpc.aio.EOF or resp.id != warm.id:
            raise RuntimeError(f"Write stream: unexpected first answer {resp!r}")

    async def run(self) -> dict[str, Any]:
        p, grpc = self.p, self.conn.grpc
        pc = time.perf_counter_ns
        lat = array("q")
        window = asyncio.Semaphore(p.inflight)
        sent: dict[int, int] = {}
        state: dict[str, Any] = {"errors": 0, "first_error": None}
        call = self.call
        c0 = time.process_time()
        start = pc()
        deadline = start + int(p.seconds * 1e9)

        async def sender() -> None:
            try:
                for i in range(p.max_requests):
                    await window.acquire()
                    if pc() >= deadline or state["errors"]:
                        break
                    msg = self.conn.batch_message(p, i, self.vals)
                    sent[msg.id] = pc()
                    await call.write(msg)
            except Exception as exc:
                fail(exc)
            finally:
                try:
                    await call.done_writing()
                except Exception:
                    pass

        async def receiver() -> None:
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    return
                t1 = pc()
                t0 = sent.pop(resp.id, None)
                if t0 is not None:
                    lat.append(t1 - t0)
                window.release()

        def fail(exc: BaseException) -> None:
            state["errors"] += 1
            if state["first_error"] is None:
                state["first_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"

        send_task = asyncio.ensure_future(sender())
        try:
            await receiver()
        except Exception as exc:
            fail(exc)
            window.release()  # unblock the sender, which then stops
        await send_task
        end = pc()
        # after a failure, the messages sent and never answered count as failed too
        errors = state["errors"] + (len(sent) if state["errors"] else 0)
        return {"requests": len(lat), "t0": start, "t1": end, "lat": lat, "misses": 0,
                "errors": errors, "first_error": state["first_error"],
                "cpu": time.process_time() - c0}

    async def close(self) -> None:
        if self.call is not None:
            self.call.cancel()


class Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.vals = _value_pool(20240601)
        self.conn: Conn | None = None
        self.point: Point | None = None
        self.runner: Callable[[], Awaitable[dict[str, Any]]] | None = None
        self.stream: WriteStream | None = None

    async def _drop(self) -> None:
        if self.stream is not None:
            await self.stream.close()
        if self.conn is not None:
            await self.conn.close()
        self.conn = self.point = self.runner = self.stream = None

    async def prepare(self, cmd: dict[str, Any]) -> dict[str, Any]:
        await self._drop()
        p = Point(**cmd["point"])
        conn = _conn_for(p.system)
        self.conn, self.point = conn, p
        await conn.open(p.address, p.inflight)
        if p.workload == "write":
            assert isinstance(conn, StrataConn)
            self.stream = WriteStream(conn, p, self.vals)
            await self.stream.open()
            self.runner = self.stream.run
        else:
            op = conn.op(p, self.vals)
            # one request per slot, not measured (put keys past the point's own)
            warm_base = p.max_requests + 1
            await asyncio.gather(*(op(warm_base + s) for s in range(p.inflight)))
            self.runner = lambda: _run_slots(op, p)
        return {"ready": True}

    async def go(self) -> dict[str, Any]:
        if self.runner is None:
            raise RuntimeError("go before prepare")
        try:
            res = await self.runner()
        finally:
            await self._drop()
        res["lat"] = base64.b64encode(res["lat"].tobytes()).decode()
        return res

    async def load(self, cmd: dict[str, Any]) -> dict[str, Any]:
        await self._drop()
        conn = _conn_for(cmd["system"])
        t0 = time.perf_counter()
        try:
            await conn.open(cmd["address"], 1)
            await conn.load(cmd["lo"], cmd["hi"], self.vals)
        finally:
            await conn.close()
        return {"loaded": cmd["hi"] - cmd["lo"], "seconds": round(time.perf_counter() - t0, 3)}


async def _worker_loop(index: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout
    worker = Worker(index)

    def reply(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    reply({"hello": index, "pid": os.getpid()})
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        what = cmd.get("cmd")
        if what == "exit":
            break
        try:
            if what == "prepare":
                reply(await worker.prepare(cmd))
            elif what == "go":
                reply(await worker.go())
            elif what == "load":
                reply(await worker.load(cmd))
            else:
                reply({"error": f"unknown command {what!r}"})
        except Exception as exc:
            try:
                await worker._drop()
            except Exception:
                pass
            reply({"error": f"{type(exc).__name__}: {str(exc)[:500]}"})
    await worker._drop()


def worker_cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.server", description="internal: a client")
    p.add_argument("--worker", type=int, required=True)
    p.add_argument("--stubs", default="", help="dir holding etcd_pb2*.py")
    a = p.parse_args(argv)
    if a.stubs:
        sys.path.insert(0, a.stubs)
    asyncio.run(_worker_loop(a.worker))
    return 0
