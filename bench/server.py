"""Server benchmark: the Strata daemon over gRPC against etcd and Redis, one load shape.

    python -m bench server           # 5 s points; writes docs/bench/server.{md,png,json}
    python -m bench server --quick   # 0.5 s points, a small read set; under a minute; no docs
    python -m bench server --json    # only {"workloads": [...]} on stdout
    python -m bench server --engines strata --only put,get --inflight 1,16

Method (the same for every server, in one run):

- Each server is started by the bench as a subprocess on free loopback ports,
  with a fresh data directory under `--dir` (default `$STRATA_BENCH_DIR` or
  `../tmp-bench` beside the repository: the work tree's disk, never a tmpfs
  unless asked), and stopped with SIGTERM. Servers run one after another.
  - strata: `python -m strata.server.cli serve` with STRATA_DURABILITY=always (a put
    is acknowledged after its group's fsync), once with the default event
    loop (STRATA_EVENT_LOOP=uvloop) and once with STRATA_EVENT_LOOP=asyncio.
  - etcd: one member, default options (a put is acknowledged after raft
    commits it, which on one member means after the WAL fsync); reached over
    its gRPC API (`bench/etcd.proto`, compiled at run time).
  - redis-always / redis-everysec: `redis-server` with appendonly yes and
    appendfsync always (reply after the AOF fsync) or everysec (fsync once a
    second, in the background: a put is not durable when acknowledged).
- Load: `--processes` client processes (asyncio, the stock event loop), the
  in-flight requests of a point spread over them (128 -> 64 + 64). Each
  in-flight slot sends its next request as soon as its last is answered. A
  point stops at `--seconds` or after `--max-requests` requests, whichever
  comes first; ops/s is the operations answered over the wall time from the
  first client's start to the last one's end. gRPC clients (Strata, etcd) use
  one channel (one HTTP/2 connection) per process; the Redis client one
  connection per in-flight slot (redis-py asyncio with hiredis).
- Keys are 16 ASCII digits, values 100 bytes (50 random bytes twice, from a
  pool of 4096). Every put writes a new key. Gets read keys chosen at random
  from a read set of `--read-keys` keys loaded before the first get point
  (every get must find its key: a miss is reported as a wrong answer).
- Latency is per request, from send to answer, in the client: per put, per
  get, per Batch RPC or per Write-stream message of `--batch-ops` puts.
  Batched workloads count puts (keys) per second.
- CPU: the server's process CPU time (user + system, its children included)
  over each point's wall time, and the same for the client processes
  together; 100 % is one core. On this two-core box clients and server share
  the cores: a figure near the machine's limit says which side was saturated.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import report

KEY_FMT = b"%016d"  # 16-byte keys
VALUE_SIZE = 100
VALUE_POOL = 4096  # a power of two: `i & (VALUE_POOL - 1)` picks a value
KEY_SPACE = 10**12  # keys of one point: point number * KEY_SPACE + worker * WORKER_SPACE + i
WORKER_SPACE = 10**10
RPC_TIMEOUT_S = 30.0  # no request waits longer than this
MAX_ERRORS = 50  # a client stops its point after this many failed requests
LOAD_CHUNK = 1000  # keys per request when loading the read set

REPO_ROOT = Path(os.path.abspath(__file__)).parent.parent
BENCH_DIR = Path(os.path.abspath(__file__)).parent

SYSTEMS = ("strata", "etcd", "redis-always", "redis-everysec")
PEERS = ("etcd", "redis-always", "redis-everysec")
LABELS = {
    "strata": "Strata",
    "etcd": "etcd",
    "redis-always": "Redis always",
    "redis-everysec": "Redis everysec",
}
SHORT = {"strata": "Strata", "etcd": "etcd", "redis-always": "R-always",
         "redis-everysec": "R-everysec"}
FAMILIES = ("put", "get", "batch", "write", "asyncio", "lifecycle")


# ---------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Workload:
    name: str
    family: str  # put, get, batch, write, asyncio, lifecycle
    unit: str  # "ops/s" or "ms" (lower is better)
    inflight: int  # 0 for lifecycle figures
    peer_source: str | None  # the peers' workload this one is compared with; None: Strata only
    about: str


@dataclass
class Config:
    """Everything a run needs; recorded in server.json."""

    seconds: float = 5.0  # length of each load point
    max_requests: int = 300_000  # count cap of each load point (all clients together)
    inflight: list[int] = field(default_factory=lambda: [1, 16, 128])
    processes: int = 2
    batch_ops: int = 100
    read_keys: int = 20_000
    seed: int = 20240601
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS))
    verbose: bool = True

    @classmethod
    def preset(cls, quick: bool) -> Config:
        if quick:
            return cls(seconds=0.5, max_requests=50_000, read_keys=2_000)
        return cls()


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def workloads(cfg: Config) -> list[Workload]:
    """The run's workloads, in report order."""
    fams, b, out = cfg.families, cfg.batch_ops, []
    if "put" in fams:
        out += [Workload(f"put-c{c}", "put", "ops/s", c, f"put-c{c}",
                         f"durable single-key puts, {_n(c, 'request')} in flight")
                for c in cfg.inflight]
    if "get" in fams:
        out += [Workload(f"get-c{c}", "get", "ops/s", c, f"get-c{c}",
                         f"single-key gets of stored keys, {_n(c, 'request')} in flight")
                for c in cfg.inflight]
    if "batch" in fams:
        out += [Workload(f"batch{b}-c{c}", "batch", "ops/s", c, None,
                         f"durable puts through KV.Batch, {b} puts a request, "
                         f"{_n(c, 'request')} in flight (puts/s)") for c in cfg.inflight]
    if "write" in fams:
        out += [Workload(f"write{b}-c{c}", "write", "ops/s", c, None,
                         f"durable puts through the bidi KV.Write stream, {b} puts a message, "
                         f"{_n(c, 'message')} in flight (puts/s)") for c in cfg.inflight]
    if "asyncio" in fams:
        for kind in ("put", "get"):
            out += [Workload(f"{kind}-c{c}-asyncio", "asyncio", "ops/s", c, f"{kind}-c{c}",
                             f"as {kind}-c{c}, the daemon on the stock asyncio loop "
                             "(STRATA_EVENT_LOOP=asyncio)") for c in cfg.inflight]
    if "lifecycle" in fams:
        out += [
            Workload("startup", "lifecycle", "ms", 0, "startup",
                     "process start to serving, empty data dir (Strata: health SERVING; etcd: "
                     "first Range answered; Redis: first PING answered)"),
            Workload("sigterm-exit", "lifecycle", "ms", 0, "sigterm-exit",
                     "SIGTERM to process exit, right after the last load point"),
            Workload("restart", "lifecycle", "ms", 0, None,
                     "process start to SERVING on the loaded data dir, after a clean SIGTERM"),
        ]
    return out


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

    async def open(self, address: str, inflight: int) -> None:
        self.channel = self.grpc.aio.insecure_channel(address, options=[
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20),
        ])
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
    if system.startswith("strata"):
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


def _worker_cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.server", description="internal: a client")
    p.add_argument("--worker", type=int, required=True)
    p.add_argument("--stubs", default="", help="dir holding etcd_pb2*.py")
    a = p.parse_args(argv)
    if a.stubs:
        sys.path.insert(0, a.stubs)
    asyncio.run(_worker_loop(a.worker))
    return 0


# ---------------------------------------------------------------- parent: processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SETPRIV = shutil.which("setpriv")


def _spawn(cmd: list[str], *, env: dict[str, str] | None, stdout: Any, stderr: Any,
           stdin: Any = subprocess.DEVNULL, cwd: str | None = None) -> subprocess.Popen:
    """Start a child in its own session (Ctrl-C on the terminal reaches only us; we stop it).

    With util-linux `setpriv` the child also gets SIGTERM if this process dies
    without cleaning up (SIGKILL), so no server outlives the bench.
    """
    if _SETPRIV:
        cmd = [_SETPRIV, "--pdeathsig", "TERM", "--", *cmd]
    return subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr, stdin=stdin, cwd=cwd,
                            start_new_session=True)


def _stop_proc(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; only this process."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.terminate()
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU of a process and its live children."""
    if pid is None:
        return None
    try:
        import psutil

        proc = psutil.Process(pid)
        total = sum(proc.cpu_times()[:2])
        for child in proc.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.Error:
                pass
        return total
    except Exception:
        return None


def _rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except Exception:
        return None


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


class WorkerPool:
    """The client processes, alive for the whole run."""

    def __init__(self, count: int, stubs: str) -> None:
        self.stubs = stubs
        self.procs: list[subprocess.Popen] = []
        self.lines: list[queue.Queue] = []
        try:  # our stdout may be carrying --json: the workers' stderr goes to our stderr
            self.err: Any = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):
            self.err = subprocess.DEVNULL
        for i in range(count):
            self._start(i)
        for i in range(count):
            hello = self.recv(i, 60)
            if "hello" not in hello:
                raise RuntimeError(f"client process {i} did not start: {hello}")

    def _start(self, i: int) -> None:
        cmd = [sys.executable, "-m", "bench.server", "--worker", str(i), "--stubs", self.stubs]
        proc = _spawn(cmd, env=_child_env(), stdout=subprocess.PIPE, stderr=self.err,
                      stdin=subprocess.PIPE, cwd=str(REPO_ROOT))
        lines: queue.Queue = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                lines.put(raw)
            lines.put(None)

        threading.Thread(target=pump, daemon=True, name=f"client-{i}-stdout").start()
        if i < len(self.procs):
            self.procs[i], self.lines[i] = proc, lines
        else:
            self.procs.append(proc)
            self.lines.append(lines)

    def send(self, i: int, obj: dict[str, Any]) -> None:
        stdin = self.procs[i].stdin
        assert stdin is not None
        stdin.write((json.dumps(obj) + "\n").encode())
        stdin.flush()

    def recv(self, i: int, timeout: float) -> dict[str, Any]:
        try:
            raw = self.lines[i].get(timeout=timeout)
        except queue.Empty:
            return {"error": f"client process {i} gave no answer in {timeout:.0f} s"}
        if raw is None:
            return {"error": f"client process {i} exited (status {self.procs[i].poll()})"}
        return json.loads(raw)

    def restart(self, i: int) -> None:
        """After a timeout: replace a client whose state is unknown."""
        _stop_proc(self.procs[i], grace=2)
        self._start(i)
        self.recv(i, 60)

    def close(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.poll() is None:
                try:
                    self.send(i, {"cmd": "exit"})
                    proc.stdin.close()  # type: ignore[union-attr]
                except (OSError, ValueError):
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _stop_proc(proc, grace=2)


# ---------------------------------------------------------------- parent: servers


class ServerError(RuntimeError):
    pass


class Server:
    """One server process: start (timed to ready), address for the clients, SIGTERM (timed)."""

    system = ""
    log_name = "server.log"

    def __init__(self, root: str) -> None:
        self.root = root  # this server's directory: data and log
        self.proc: subprocess.Popen | None = None
        self.address = ""
        self.log_path = ""
        self.exit_status: int | None = None

    @staticmethod
    def missing() -> str | None:
        return None

    @staticmethod
    def version() -> str | None:
        return None

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def probe(self) -> bool:
        """True once the server answers; called every few ms until then."""
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait until ready; return the milliseconds that took."""
        os.makedirs(self.root, exist_ok=True)
        cmd, env = self.command()
        self.log_path = os.path.join(self.root, f"{self.log_name}")
        log = open(self.log_path, "ab")
        try:
            t0 = time.perf_counter()
            self.proc = _spawn(cmd, env=env, stdout=log, stderr=log, cwd=self.root)
        finally:
            log.close()
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.system} exited with status {self.proc.returncode} "
                                  f"while starting: {self.log_tail()}")
            if self.probe():
                return (time.perf_counter() - t0) * 1e3
            if time.perf_counter() > deadline:
                raise ServerError(f"{self.system} not ready after {timeout:.0f} s: "
                                  f"{self.log_tail()}")
            time.sleep(0.003)

    def sigterm(self, timeout: float = 60.0) -> float:
        """SIGTERM; return the milliseconds until the process has exited."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            raise ServerError(f"{self.system} is not running")
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            raise ServerError(
                f"{self.system} still running {timeout:.0f} s after SIGTERM; killed") from None
        finally:
            self.close_probe()
        ms = (time.perf_counter() - t0) * 1e3
        self.exit_status = proc.returncode
        # etcd re-raises the signal after its clean shutdown: death by SIGTERM is a clean exit too
        if proc.returncode not in (0, -signal.SIGTERM):
            raise ServerError(f"{self.system} exited with status {proc.returncode} after SIGTERM: "
                              f"{self.log_tail()}")
        return ms

    def kill(self) -> None:
        self.close_probe()
        _stop_proc(self.proc, grace=10)

    def close_probe(self) -> None:
        pass

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def log_tail(self, n: int = 1500) -> str:
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
            return data[-n:].decode(errors="replace").strip()
        except OSError:
            return ""

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(rec, dict):
                        out.append(rec)
        except OSError:
            pass
        return out


class _GrpcProbe:
    """A sync gRPC channel that retries connecting every few ms, for readiness polling."""

    def __init__(self, address: str) -> None:
        import grpc

        self.grpc = grpc
        self.channel = grpc.insecure_channel(address, options=[
            ("grpc.initial_reconnect_backoff_ms", 5),
            ("grpc.min_reconnect_backoff_ms", 5),
            ("grpc.max_reconnect_backoff_ms", 20),
        ])

    def close(self) -> None:
        self.channel.close()


class StrataServer(Server):
    system = "strata"

    def __init__(self, root: str, event_loop: str = "uvloop", data_dir: str | None = None) -> None:
        super().__init__(root)
        self.event_loop = event_loop
        self.data_dir = data_dir or os.path.join(root, "data")
        self.starts = 0
        self._probe: Any = None

    @staticmethod
    def version() -> str | None:
        return report.package_version("strata")

    def command(self) -> tuple[list[str], dict[str, str]]:
        port = _free_port()
        self.address = f"127.0.0.1:{port}"
        self.starts += 1
        self.log_name = f"daemon-{self.starts}.log"
        self.metrics_address = f"127.0.0.1:{_free_port()}"
        cmd = [sys.executable, "-m", "strata.server.cli", "serve", "--data-dir", self.data_dir,
               "--grpc-listen", self.address, "--ws-listen", f"127.0.0.1:{_free_port()}",
               "--metrics-listen", self.metrics_address]
        # only what we set: a STRATA_* variable of the caller's shell must not change the figures
        env = {k: v for k, v in _child_env().items() if not k.startswith("STRATA_")}
        env["STRATA_DURABILITY"] = "always"
        env["STRATA_EVENT_LOOP"] = self.event_loop
        return cmd, env

    def probe(self) -> bool:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        if self._probe is None:
            self._probe = _GrpcProbe(self.address)
            self._stub = health_pb2_grpc.HealthStub(self._probe.channel)
        try:
            resp = self._stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        except self._probe.grpc.RpcError:
            return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING

    def close_probe(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None

    def start(self, timeout: float = 60.0) -> float:
        try:
            return super().start(timeout)
        finally:
            self.close_probe()

    def counters(self) -> dict[str, float]:
        """The engine's counters from the daemon's /metrics (strata_engine_*, unlabelled)."""
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://{self.metrics_address}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out = {}
        for line in text.splitlines():
            if line.startswith("strata_engine_") and "{" not in line:
                name, _, value = line.partition(" ")
                try:
                    out[name.removeprefix("strata_engine_").removesuffix("_total")] = float(value)
                except ValueError:
                    pass
        return out

    def log_figures(self) -> dict[str, Any]:
        """What the daemon's own log says: open/serve/stop times, WAL frames replayed."""
        out: dict[str, Any] = {}
        for rec in self.log_lines():
            msg, logger = str(rec.get("msg", "")), rec.get("logger")
            if logger == "strata.engine" and msg.startswith("opened"):
                out["opened_line"] = msg
                m = re.search(r"(\d+) WAL frames replayed", msg)
                if m:
                    out["replayed_frames"] = int(m.group(1))
                m = re.search(r" in ([\d.]+)s", msg)
                if m:
                    out["engine_open_ms"] = round(float(m.group(1)) * 1e3, 1)
            elif logger == "strata.daemon":
                m = re.match(r"serving in ([\d.]+)s", msg)
                if m:
                    out["serving_in_ms"] = round(float(m.group(1)) * 1e3, 1)
                m = re.match(r"stopped cleanly in ([\d.]+)s", msg)
                if m:
                    out["stopped_in_ms"] = round(float(m.group(1)) * 1e3, 1)
            if rec.get("level") in ("error", "critical") or (
                    rec.get("level") == "warning" and str(logger).startswith("strata")):
                out.setdefault("log_problems", []).append(f"{logger}: {msg}"[:300])
        return out


class EtcdServer(Server):
    system = "etcd"

    def __init__(self, root: str, stubs: str) -> None:
        super().__init__(root)
        self.stubs = stubs
        self._probe: Any = None

    @staticmethod
    def missing() -> str | None:
        if not shutil.which("etcd"):
            return "etcd not found on PATH (Debian: apt-get install etcd-server)"
        return None

    @staticmethod
    def version() -> str | None:
        return _first_line_version(["etcd", "--version"], r"etcd Version: (\S+)")

    def command(self) -> tuple[list[str], dict[str, str]]:
        client, peer = _free_port(), _free_port()
        self.address = f"127.0.0.1:{client}"
        data = os.path.join(self.root, "data")
        cmd = ["etcd", "--name", "bench", "--data-dir", data,
               "--listen-client-urls", f"http://127.0.0.1:{client}",
               "--advertise-client-urls", f"http://127.0.0.1:{client}",
               "--listen-peer-urls", f"http://127.0.0.1:{peer}",
               "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
               "--initial-cluster", f"bench=http://127.0.0.1:{peer}",
               "--initial-cluster-state", "new",
               "--logger", "zap", "--log-level", "warn"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        return cmd, env

    def probe(self) -> bool:
        if self.stubs not in sys.path:
            sys.path.insert(0, self.stubs)
        import etcd_pb2
        import etcd_pb2_grpc

        if self._probe is None:
            self._probe = _GrpcProbe(self.address)
            self._stub = etcd_pb2_grpc.KVStub(self._probe.channel)
        try:
            self._stub.Range(etcd_pb2.RangeRequest(key=b"\0probe"), timeout=1.0)
        except self._probe.grpc.RpcError:
            return False
        return True

    def close_probe(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None

    def start(self, timeout: float = 60.0) -> float:
        try:
            return super().start(timeout)
        finally:
            self.close_probe()


class RedisServer(Server):
    def __init__(self, root: str, appendfsync: str) -> None:
        super().__init__(root)
        self.appendfsync = appendfsync
        self.system = f"redis-{appendfsync}"

    @staticmethod
    def missing() -> str | None:
        if not shutil.which("redis-server"):
            return "redis-server not found on PATH (Debian: apt-get install redis-server)"
        try:
            import redis.asyncio  # noqa: F401
        except ImportError:
            return "the redis Python package is not installed (pip install redis hiredis)"
        return None

    @staticmethod
    def version() -> str | None:
        return _first_line_version(["redis-server", "--version"], r"v=(\S+)")

    def command(self) -> tuple[list[str], dict[str, str]]:
        port = _free_port()
        self.address = f"127.0.0.1:{port}"
        data = os.path.join(self.root, "data")
        os.makedirs(data, exist_ok=True)
        cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", data,
               "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "",
               "--daemonize", "no", "--protected-mode", "yes", "--logfile", ""]
        return cmd, dict(os.environ)

    def probe(self) -> bool:
        host, port = self.address.rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False


def _first_line_version(cmd: list[str], pattern: str) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(pattern, out)
    return m.group(1) if m else (out.strip().splitlines() or [None])[0]


def compile_etcd_stubs(dest: str) -> None:
    """bench/etcd.proto -> dest/etcd_pb2.py, etcd_pb2_grpc.py (grpc_tools.protoc)."""
    from grpc_tools import protoc

    os.makedirs(dest, exist_ok=True)
    rc = protoc.main(["protoc", f"-I{BENCH_DIR}", f"--python_out={dest}",
                      f"--grpc_python_out={dest}", str(BENCH_DIR / "etcd.proto")])
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc failed on bench/etcd.proto (status {rc})")


# ---------------------------------------------------------------- parent: running points


class Runner:
    """Drives the client pool against one server at a time and keeps the results."""

    def __init__(self, cfg: Config, pool: WorkerPool) -> None:
        self.cfg = cfg
        self.pool = pool
        self.point_no = 0
        self.results: dict[str, dict[str, Any]] = {s: {} for s in cfg.systems}

    def log(self, msg: str) -> None:
        if self.cfg.verbose:
            print(msg, file=sys.stderr, flush=True)

    def note(self, system: str, name: str, rec: dict[str, Any]) -> None:
        self.results[system][name] = rec
        val = rec.get("value")
        if rec.get("error"):
            self.log(f"[{system}] {name}: ERROR {rec['error']}")
            return
        if rec.get("unit") == "ms":
            self.log(f"[{system}] {name}: {val:.1f} ms")
            return
        extra = ""
        if rec.get("errors"):
            extra += f"  errors={rec['errors']} ({rec.get('first_error')})"
        if rec.get("misses"):
            extra += f"  MISSES={rec['misses']}"
        self.log(f"[{system}] {name}: {report.fmt_rate(val)} ops/s  "
                 f"p50={report.fmt_ns(rec.get('p50_ns'))}  p99={report.fmt_ns(rec.get('p99_ns'))}"
                 f"  server CPU {_pct(rec.get('server_cpu'))}  clients CPU "
                 f"{_pct(rec.get('client_cpu'))}{extra}")

    def load(self, server: Server, keys: int) -> dict[str, Any]:
        self.pool.send(0, {"cmd": "load", "system": server.system, "address": server.address,
                           "lo": 0, "hi": keys})
        res = self.pool.recv(0, 600)
        if "error" in res:
            raise ServerError(f"loading the read set into {server.system}: {res['error']}")
        return res

    def point(self, server: Server, workload: str, inflight: int) -> dict[str, Any]:
        """One load point: every client prepared, then all started together."""
        cfg = self.cfg
        self.point_no += 1
        procs = max(1, min(cfg.processes, inflight))
        shares = [inflight // procs + (1 if i < inflight % procs else 0) for i in range(procs)]
        for i, share in enumerate(shares):
            p = Point(system=server.system, address=server.address, workload=workload,
                      inflight=share, seconds=cfg.seconds,
                      max_requests=max(1, math.ceil(cfg.max_requests * share / inflight)),
                      key_base=self.point_no * KEY_SPACE + i * WORKER_SPACE,
                      batch_ops=cfg.batch_ops, read_keys=cfg.read_keys, seed=cfg.seed + i)
            self.pool.send(i, {"cmd": "prepare", "point": asdict(p)})
        errors = []
        for i in range(procs):
            res = self.pool.recv(i, 60)
            if "error" in res:
                errors.append(f"client {i}: {res['error']}")
        if errors:
            self._reset(procs)
            return {"error": "; ".join(errors)}
        counters = isinstance(server, StrataServer)
        eng0 = server.counters() if counters else {}
        cpu0 = _cpu_seconds(server.pid)
        w0 = time.perf_counter()
        for i in range(procs):
            self.pool.send(i, {"cmd": "go"})
        answers = [self.pool.recv(i, cfg.seconds + 120) for i in range(procs)]
        wall = time.perf_counter() - w0
        cpu1 = _cpu_seconds(server.pid)
        eng1 = server.counters() if counters else {}
        errors = [f"client {i}: {a['error']}" for i, a in enumerate(answers) if "error" in a]
        if errors:
            self._reset(procs)
            return {"error": "; ".join(errors)}
        lat = array("q")
        for a in answers:
            lat.frombytes(base64.b64decode(a["lat"]))
        requests = sum(a["requests"] for a in answers)
        per_request = cfg.batch_ops if workload in ("batch", "write") else 1
        seconds = (max(a["t1"] for a in answers) - min(a["t0"] for a in answers)) / 1e9
        p50, p99 = report.percentiles(lat)
        rec: dict[str, Any] = {
            "value": requests * per_request / seconds if requests and seconds > 0 else None,
            "unit": "ops/s", "ops": requests * per_request, "requests": requests,
            "seconds": round(seconds, 4), "p50_ns": p50, "p99_ns": p99,
            "inflight": inflight, "processes": procs,
            "server_cpu": round((cpu1 - cpu0) / wall, 3) if cpu0 is not None and cpu1 else None,
            "client_cpu": round(sum(a["cpu"] for a in answers) / seconds, 3) if seconds else None,
            "capped_by_count": requests >= cfg.max_requests,
        }
        if eng0 and eng1:
            delta = {k: eng1[k] - eng0.get(k, 0.0) for k in eng1 if not k.startswith("level")
                     and k != "memtable_bytes"}
            groups = delta.get("wal_groups", 0.0)
            rec["engine"] = {
                "fsyncs_per_s": round(groups / wall, 1),
                "frames_per_fsync": round(delta.get("wal_group_frames", 0.0) / groups, 2)
                if groups else None,
                **{k: round(v, 3) for k, v in delta.items() if v},
            }
        errs = sum(a["errors"] for a in answers)
        if errs:
            rec["errors"] = errs
            rec["first_error"] = next(a["first_error"] for a in answers if a["first_error"])
        misses = sum(a["misses"] for a in answers)
        if misses:
            rec["misses"] = misses
            rec["wrong_answers"] = f"{misses} gets did not find a stored key"
        return rec

    def _reset(self, procs: int) -> None:
        """After a failed point: make sure no client is still holding a connection."""
        for i in range(procs):
            self.pool.restart(i)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f} %"


def _families_for(system: str) -> list[str]:
    return ["put", "get", "batch", "write"] if system == "strata" else ["put", "get"]


def run_system(runner: Runner, system: str, server: Server, wls: list[Workload]) -> None:
    """Start one server, run its workloads, SIGTERM it; Strata also restarts once."""
    cfg, res = runner.cfg, runner.results[system]
    try:
        ms = server.start()
    except ServerError as exc:
        res["error"] = str(exc)
        runner.log(f"[{system}] not started: {exc}")
        return
    runner.note(system, "startup", {"value": ms, "unit": "ms",
                                    **_strata_log(server, ("serving_in_ms", "engine_open_ms"))})
    try:
        mine = [w for w in wls if w.family in _families_for(system)]
        loaded = False
        for w in mine:
            if w.family == "get" and not loaded:
                info = runner.load(server, cfg.read_keys)
                res["read_set"] = info
                runner.log(f"[{system}] read set: {info['loaded']:,} keys in {info['seconds']} s")
                loaded = True
            runner.note(system, w.name, runner.point(server, w.family, w.inflight))
        res["rss_after_load"] = _rss(server.pid)
        ms = server.sigterm()
        runner.note(system, "sigterm-exit", {"value": ms, "unit": "ms",
                                             "exit_status": server.exit_status,
                                             **_strata_log(server, ("stopped_in_ms",))})
        if isinstance(server, StrataServer):
            res["log"] = server.log_figures()
            if any(w.name == "restart" for w in wls):
                ms = server.start()
                figs = server.log_figures()
                frames = figs.get("replayed_frames")
                rec = {"value": ms, "unit": "ms", "replayed_frames": frames,
                       "replay_ok": frames == 0, "opened_line": figs.get("opened_line"),
                       "serving_in_ms": figs.get("serving_in_ms")}
                if frames != 0:
                    rec["wrong_answers"] = (f"restart after SIGTERM replayed {frames} WAL frames "
                                            "(a clean stop should leave none)")
                runner.note(system, "restart", rec)
                runner.log(f"[{system}] restart: {figs.get('opened_line')}")
                res["restart_sigterm_ms"] = round(server.sigterm(), 1)
    except ServerError as exc:
        res["error"] = str(exc)
        runner.log(f"[{system}] stopped early: {exc}")
    finally:
        server.kill()


def _strata_log(server: Server, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(server, StrataServer):
        return {}
    figs = server.log_figures()
    return {k: figs[k] for k in keys if k in figs}


def run_event_loop_variant(runner: Runner, server: StrataServer, wls: list[Workload]) -> None:
    """The daemon on the stock asyncio loop: the put and get points again, fresh data dir."""
    mine = [w for w in wls if w.family == "asyncio"]
    res = runner.results["strata"]
    try:
        res["asyncio_startup_ms"] = round(server.start(), 1)
        info = runner.load(server, runner.cfg.read_keys)
        runner.log(f"[strata asyncio] read set: {info['loaded']:,} keys in {info['seconds']} s")
        for w in sorted(mine, key=lambda w: not w.name.startswith("put")):  # puts first
            kind = w.name.split("-")[0]
            runner.note("strata", w.name, runner.point(server, kind, w.inflight))
        res["asyncio_sigterm_ms"] = round(server.sigterm(), 1)
        res["asyncio_log"] = server.log_figures()
    except ServerError as exc:
        for w in mine:
            res.setdefault(w.name, {"error": str(exc)})
        runner.log(f"[strata asyncio] {exc}")
    finally:
        server.kill()


# ---------------------------------------------------------------- summaries


def _rec(run: dict[str, Any], system: str, name: str) -> dict[str, Any]:
    return run["results"].get(system, {}).get(name, {}) or {}


def _value(run: dict[str, Any], system: str, name: str) -> float | None:
    val = _rec(run, system, name).get("value")
    return float(val) if isinstance(val, (int, float)) and val > 0 else None


def _peer_value(run: dict[str, Any], w: Workload, peer: str) -> float | None:
    if w.peer_source is None or peer not in run["systems"]:
        return None
    return _value(run, peer, w.peer_source)


def _ratio(run: dict[str, Any], w: Workload, peer: str) -> float | None:
    s, p = _value(run, "strata", w.name), _peer_value(run, w, peer)
    if s is None or p is None:
        return None
    return s / p


def summary_json(run: dict[str, Any]) -> dict[str, Any]:
    out = []
    for w in run["workloads"]:
        def rounded(v: float | None) -> float | None:
            return None if v is None else round(v, 1)

        out.append({
            "name": w.name, "unit": w.unit,
            "strata": (rounded(_value(run, "strata", w.name))
                       if "strata" in run["systems"] else None),
            "peers": {p: rounded(_peer_value(run, w, p)) for p in PEERS},
        })
    return {"workloads": out}


def _status(run: dict[str, Any], system: str, w: Workload) -> str:
    if system not in run["systems"]:
        return ""
    svc = run["services"].get(system, {})
    if svc.get("missing"):
        return "missing"
    name = w.name if system == "strata" else w.peer_source
    if name is None:
        return "n/a"
    rec = _rec(run, system, name)
    if rec.get("error") or (not rec and run["results"].get(system, {}).get("error")):
        return "error"
    return "" if rec else "-"


def _cell(run: dict[str, Any], system: str, w: Workload) -> str:
    v = _value(run, system, w.name) if system == "strata" else _peer_value(run, w, system)
    if v is None:
        return _status(run, system, w) or "-"
    return report.fmt_rate(v) if w.unit == "ops/s" else f"{v:.0f}"


def summary_rows(run: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    systems = run["systems"]
    peers = [p for p in PEERS if p in systems]
    headers = ["workload", "unit"] + [SHORT[s] for s in systems]
    if "strata" in systems:
        headers += [f"S/{SHORT[p]}" for p in peers]
    rows = []
    for w in run["workloads"]:
        row = [w.name, "ops/s" if w.unit == "ops/s" else "ms (lower is better)"]
        row += [_cell(run, s, w) for s in systems]
        if "strata" in systems:
            row += [report.fmt_ratio(_ratio(run, w, p)) for p in peers]
        rows.append(row)
    return headers, rows


def detail_rows(run: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """Rows of (workload, system) with ops/s, p50, p99, CPU; and footnotes."""
    headers = ["workload", "system", "requests", "ops/s", "p50", "p99", "server CPU",
               "clients CPU", "Strata/this"]
    rows: list[list[str]] = []
    notes: list[str] = []
    for w in run["workloads"]:
        if w.unit != "ops/s":
            continue
        for s in run["systems"]:
            name = w.name if s == "strata" else w.peer_source
            if name is None or (s != "strata" and w.family == "asyncio"):
                continue  # Strata-only workload; peers' figures are in the plain rows
            rec = _rec(run, s, name)
            status = _status(run, s, w)
            if status:
                why = (run["services"].get(s, {}).get("missing") or rec.get("error")
                       or run["results"].get(s, {}).get("error") or "")
                note = f"{LABELS[s]}: {w.name}: {status}: {why}"
                if why and note not in notes:
                    notes.append(note)
                rows.append([w.name, LABELS[s], "", status, "", "", "", "", ""])
                continue
            shown = report.fmt_rate(rec.get("value"))
            if rec.get("wrong_answers"):
                shown += " (!)"
                notes.append(f"{LABELS[s]}: {w.name}: WRONG ANSWERS: {rec['wrong_answers']}")
            if rec.get("errors"):
                notes.append(f"{LABELS[s]}: {w.name}: {rec['errors']} failed requests, first: "
                             f"{rec.get('first_error')}")
            if rec.get("capped_by_count"):
                notes.append(f"{LABELS[s]}: {w.name}: stopped at the request cap "
                             f"({rec['requests']:,}) before the time cap")
            ratio = "" if s == "strata" else report.fmt_ratio(_ratio(run, w, s))
            rows.append([w.name, LABELS[s], f"{rec.get('requests', 0):,}", shown,
                         report.fmt_ns(rec.get("p50_ns")), report.fmt_ns(rec.get("p99_ns")),
                         _pct(rec.get("server_cpu")), _pct(rec.get("client_cpu")), ratio])
    return headers, rows, notes


def engine_rows(run: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Strata's group commit during each write point, from the daemon's /metrics."""
    headers = ["workload", "fsyncs/s", "WAL frames per fsync", "flushes", "compactions",
               "write stall"]
    rows = []
    for w in run["workloads"]:
        eng = _rec(run, "strata", w.name).get("engine")
        if not eng or not eng.get("wal_groups"):
            continue
        fpf = eng.get("frames_per_fsync")
        rows.append([w.name, f"{eng['fsyncs_per_s']:.0f}", "-" if fpf is None else f"{fpf:.1f}",
                     f"{eng.get('flushes', 0):.0f}", f"{eng.get('compactions', 0):.0f}",
                     f"{eng.get('write_stall_seconds', 0):.2f} s"])
    return headers, rows


def lifecycle_lines(run: dict[str, Any]) -> list[str]:
    """The daemon's own view of start, stop and restart, next to the measured figures."""
    if "strata" not in run["systems"]:
        return []
    res = run["results"].get("strata", {})
    out = []
    st, ex, rs = (res.get(k, {}) for k in ("startup", "sigterm-exit", "restart"))
    if st.get("value"):
        out.append(f"Strata startup to SERVING (empty data dir): {st['value']:.0f} ms measured "
                   f"from process start (the daemon logs `serving in "
                   f"{st.get('serving_in_ms', '?')} ms` from its own start; the rest is the "
                   "interpreter and imports)")
    if ex.get("value"):
        out.append(f"Strata SIGTERM to exit after the load: {ex['value']:.0f} ms (the daemon logs "
                   f"`stopped cleanly in {ex.get('stopped_in_ms', '?')} ms`)")
    if rs.get("value"):
        verdict = "OK" if rs.get("replay_ok") else "NOT OK"
        out.append(f"Strata restart after SIGTERM: {rs['value']:.0f} ms to SERVING; replay check "
                   f"{verdict}: `{rs.get('opened_line')}`")
    if res.get("asyncio_startup_ms") is not None:
        out.append(f"Strata on the asyncio loop: startup {res['asyncio_startup_ms']:.0f} ms, "
                   f"SIGTERM to exit {res.get('asyncio_sigterm_ms', 0):.0f} ms")
    rss = [f"{LABELS[s]} {report.fmt_bytes(run['results'][s].get('rss_after_load'))}"
           for s in run["systems"] if run["results"].get(s, {}).get("rss_after_load")]
    if rss:
        out.append("Server RSS after the last load point: " + ", ".join(rss))
    for s in run["systems"]:
        probs = run["results"].get(s, {}).get("log", {}).get("log_problems")
        if probs:
            out.append(f"{LABELS[s]} log warnings/errors: " + "; ".join(probs[:5]))
    return out


def _params_line(run: dict[str, Any]) -> str:
    c = run["config"]
    return (f"points of {c['seconds']:g} s (at most {c['max_requests']:,} requests), in flight "
            f"{', '.join(str(x) for x in c['inflight'])} over up to {c['processes']} client "
            f"processes; 16 B keys, 100 B values; batches of {c['batch_ops']} puts; read set "
            f"{c['read_keys']:,} keys" + ("; --quick" if run["quick"] else ""))


def render_text(run: dict[str, Any]) -> str:
    out = [_params_line(run), ""]
    h, rows = summary_rows(run)
    out += ["Summary (ratio = Strata / peer; for ops/s above 1 means Strata is faster)",
            report.text_table(h, rows, "ll" + "r" * (len(h) - 2)), ""]
    h, rows, notes = detail_rows(run)
    out += ["Detail (latency per request: one put or get, or one message of "
            f"{run['config']['batch_ops']} puts for batch/write; CPU 100 % = one core)",
            report.text_table(h, rows, "ll" + "r" * (len(h) - 2))]
    out += notes
    h, rows = engine_rows(run)
    if rows:
        out += ["", "Strata group commit per point (daemon /metrics; a put, a Batch request "
                "and a Write message are one WAL frame each)", report.text_table(h, rows)]
    out += [""] + lifecycle_lines(run)
    missing = [f"{LABELS[s]}: {v['missing']}" for s, v in run["services"].items()
               if v.get("missing")]
    if missing:
        out += ["", "Not run: " + "; ".join(missing)]
    out += ["", f"wall time {run['wall_seconds']} s"]
    return "\n".join(out)


def draw_chart(run: dict[str, Any], path: Path) -> None:
    """One group per (put|get, in flight); a bar per server, and Strata's variants beside it."""
    c, b = run["config"], run["config"]["batch_ops"]
    groups = [(kind, n) for kind in ("put", "get") for n in c["inflight"]]
    systems = [s for s in run["systems"] if not run["services"].get(s, {}).get("missing")]
    series: dict[str, list[float | None]] = {}

    def add(label: str, values: list[float | None]) -> None:
        if any(v is not None for v in values):
            series[label] = values

    if "strata" in systems:
        add("Strata", [_value(run, "strata", f"{k}-c{n}") for k, n in groups])
        add("Strata, asyncio loop", [_value(run, "strata", f"{k}-c{n}-asyncio") for k, n in groups])
        add(f"Strata Batch x{b} (puts/s)",
            [_value(run, "strata", f"batch{b}-c{n}") if k == "put" else None for k, n in groups])
        add(f"Strata Write stream x{b} (puts/s)",
            [_value(run, "strata", f"write{b}-c{n}") if k == "put" else None for k, n in groups])
    for s in systems:
        if s != "strata":
            add(LABELS[s], [_value(run, s, f"{k}-c{n}") for k, n in groups])
    report.bar_chart(path, [f"{k} c{n}" for k, n in groups], series,
                     title="Strata daemon vs etcd and Redis, loopback, by requests in flight\n"
                           "(puts durable except Redis everysec)",
                     ylabel="ops/s (log)")


def render_markdown(run: dict[str, Any], has_chart: bool) -> str:
    m, c = run["machine"], run["config"]
    lines = [
        "# Server benchmark: Strata daemon vs etcd and Redis",
        "",
        f"Generated by `python -m bench server{' --quick' if run['quick'] else ''}` on "
        f"{m['date']} (Strata revision {m['strata_revision']}); the run took "
        f"{run['wall_seconds']} s. Every server ran the same load shape in the same run; ratios "
        "are Strata / peer. The machine has two cores shared by the server and its clients, so "
        "absolute figures are low and noisy; the ratios and the CPU columns say more.",
        "",
        _params_line(run) + ".",
        "",
        "## Summary",
        "",
        "ops/s: acknowledged requests per second; for `batch*` and `write*`, puts (keys) per "
        "second. `startup`, `sigterm-exit` and `restart` in ms, lower is better. For ops/s a "
        "ratio above 1 means Strata is faster. `*-asyncio` rows are the Strata daemon on the "
        "stock asyncio event loop, compared with the same peers' figures as the plain row. "
        "`n/a`: Strata-only workload; `missing`: the peer is not installed.",
        "",
    ]
    h, rows = summary_rows(run)
    lines += [report.markdown_table(h, rows, "ll" + "r" * (len(h) - 2)), ""]
    if has_chart:
        lines += ["![ops/s per workload and server](server.png)", ""]
    lines += ["## Detail", "",
              "Latency percentiles are nearest-rank over every request of the point, measured in "
              "the client from send to answer (one put or get; one Batch request or Write-stream "
              f"message of {c['batch_ops']} puts). CPU is process CPU time over the point's "
              "wall time, 100 % = one core; `clients CPU` adds up all client processes.", "",
              "Reading the CPU columns: server, clients and anything else on the machine share "
              f"its {m['cpus_usable'] or m['cpu_count']} cores. A Python server whose event loop "
              "is saturated shows about 100 % (one core: the loop and the GIL); when the clients "
              "add up to most of the cores, the Python clients, not the server, set the figure, "
              "and the peer's real capacity is higher than shown.", ""]
    h, rows, notes = detail_rows(run)
    lines += [report.markdown_table(h, rows, "ll" + "r" * (len(h) - 2)), ""]
    if notes:
        lines += [f"- {x}" for x in notes] + [""]
    h, rows = engine_rows(run)
    if rows:
        lines += ["## Strata group commit", "",
                  "What the engine did during each write point, from the daemon's `/metrics` "
                  "(`strata_engine_wal_groups_total`, `..._wal_group_frames_total`, flushes, "
                  "compactions, write stalls) read before and after the point. One fsync per "
                  "group; a put, a Batch request and a Write-stream message are one WAL frame "
                  "each, so frames per fsync is how many acknowledged requests shared a sync.",
                  "", report.markdown_table(h, rows), ""]
    lc = lifecycle_lines(run)
    if lc:
        lines += ["## Start, stop, restart", ""] + [f"- {x}" for x in lc] + [""]
    lines += ["## Workloads", ""]
    for w in run["workloads"]:
        lines.append(f"- `{w.name}`: {w.about}.")
    lines += ["", "## Method", ""]
    lines += [
        "- Servers: started by the bench one after another, each on free loopback ports with a "
        f"fresh data directory on the measured disk ({m['data_dir_fs']}), stopped with SIGTERM.",
        "  - Strata: `python -m strata.server.cli serve --data-dir D --grpc-listen 127.0.0.1:P "
        "--ws-listen ... --metrics-listen ...` with `STRATA_DURABILITY=always` (acknowledged "
        "after the group's fsync) and `STRATA_EVENT_LOOP=uvloop` (the default); the `*-asyncio` "
        "rows start a second daemon with `STRATA_EVENT_LOOP=asyncio`. Ready = the gRPC health "
        "service answers SERVING. Puts: `KV.Put`; gets: `KV.Get`; `batch*`: `KV.Batch`; "
        "`write*`: the bidi `KV.Write` stream, each client process keeping its share of the "
        "in-flight messages outstanding on one stream.",
        "  - etcd: one member (`--initial-cluster` of itself), default options, so a put is "
        "acknowledged after the raft entry is fsynced to the WAL. Reached over gRPC with stubs "
        "compiled at run time from `bench/etcd.proto` (KV.Put and KV.Range only); gets are "
        "`Range` with `serializable=true` (answered from the member's local state, no raft "
        "round). Ready = a Range answered.",
        "  - Redis: `redis-server --appendonly yes --appendfsync always|everysec --save \"\"`. "
        "With `always` the AOF is fsynced before replies are sent (one fsync per event-loop "
        "turn, so concurrent clients share it); with `everysec` an acknowledged SET may be lost "
        "on a crash: it is the not-durable reference. SET / GET through redis-py's asyncio "
        "client (with hiredis). Ready = PING answered.",
        "- Clients: up to "
        f"{c['processes']} processes running asyncio (the stock loop), started once for the run; "
        "a point's in-flight requests are split over them (1 -> 1; 16 -> 8 + 8; 128 -> 64 + 64). "
        "Each in-flight slot sends its next request as soon as its previous one is answered. "
        "Connections are opened and warmed (one request per slot) before the point's clock "
        "starts; all processes start together. gRPC: one channel (HTTP/2 connection) per "
        "process; Redis: one connection per slot.",
        f"- Each point stops at {c['seconds']:g} s or {c['max_requests']:,} requests, whichever "
        "comes first. ops/s = answered requests (puts for batch/write) over the wall time from "
        "the first client's start to the last one's end; failed requests are not counted and "
        "are reported.",
        "- Keys are 16 ASCII digits, values 100 bytes (50 random bytes twice). Every put writes "
        f"a key not written before. Gets read random keys of a {c['read_keys']:,}-key read set "
        "stored before the first get point (Strata `KV.Batch` of 1000, etcd puts, Redis MSET); "
        "every get must find its key.",
        "- Order per Strata daemon: start, puts, read set, gets, batch, write, SIGTERM, restart "
        "on the same data dir (the replay check reads the engine's `opened ...: N WAL frames "
        "replayed` log line), SIGTERM. Peers: start, puts, read set, gets, SIGTERM.",
        "- Server CPU is the server process's user + system CPU time (threads and child "
        "processes included) over the point; client CPU adds up the client processes.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu_model']}, {m['cpu_count']} logical CPUs (nproc {m['cpus_usable']})",
        f"- Memory: {report.fmt_bytes(m['memory'])}",
        f"- OS: {m['platform']}",
        f"- Python: {m['python']}",
        f"- Data dir: {m['data_dir_fs']}",
        f"- 1-minute load average at start / end: {m.get('loadavg_start')} / "
        f"{m.get('loadavg_end')} (above ~0.5, other processes were competing for the CPUs)",
        "- Servers: " + ", ".join(f"{LABELS[s]} {v.get('version') or '?'}"
                                  for s, v in run["services"].items() if not v.get("missing")),
        "- Libraries: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
        "",
        "Raw figures (every field, per server and workload) are in `server.json` beside this "
        "page. Reproduce with `python -m bench server` from the repository root (etcd and Redis "
        "from Debian's `etcd-server` and `redis-server` packages, `pip install redis hiredis`); "
        "`--quick` for a smoke run, `--help` for options.",
        "",
    ]
    missing = {s: v["missing"] for s, v in run["services"].items() if v.get("missing")}
    if missing:
        lines += ["## Servers without figures", ""]
        lines += [f"- {LABELS[s]}: {why}" for s, why in missing.items()] + [""]
    return "\n".join(lines)


def write_docs(run: dict[str, Any], docs_dir: Path) -> None:
    docs_dir.mkdir(parents=True, exist_ok=True)
    chart = docs_dir / "server.png"
    try:
        draw_chart(run, chart)
        has_chart = True
    except Exception as exc:  # a chart is a convenience; the table is the record
        print(f"chart not drawn: {exc!r}", file=sys.stderr)
        has_chart = False
    (docs_dir / "server.md").write_text(render_markdown(run, has_chart), encoding="utf-8")
    raw = dict(run)
    raw["workloads"] = [asdict(w) for w in run["workloads"]]
    (docs_dir / "server.json").write_text(json.dumps(raw, indent=1, default=str) + "\n",
                                          encoding="utf-8")


# ---------------------------------------------------------------- command line


def _default_data_dir() -> str:
    return os.environ.get("STRATA_BENCH_DIR") or str(REPO_ROOT.parent / "tmp-bench")


def _split(value: str | None, known: tuple[str, ...], what: str) -> list[str]:
    if value is None:
        return list(known)
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in names if v not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return [k for k in known if k in names]


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench server",
        description="The Strata daemon over gRPC against etcd and Redis (appendfsync always and "
                    "everysec): the same load shape, one run, ratios printed.",
    )
    p.add_argument("--quick", action="store_true",
                   help="0.5 s points and a 2,000-key read set (under a minute); "
                        "writes no docs unless --docs")
    p.add_argument("--json", action="store_true",
                   help='print only {"workloads": [...]} on stdout; writes no docs unless --docs')
    p.add_argument("--engines", default=None,
                   help="comma-separated servers: " + ",".join(SYSTEMS))
    p.add_argument("--only", default=None,
                   help="comma-separated workload families: " + ",".join(FAMILIES))
    p.add_argument("--inflight", default=None,
                   help="comma-separated requests in flight per point (default 1,16,128)")
    p.add_argument("--seconds", type=float, default=None,
                   help="length of each load point (default 5; quick 0.5)")
    p.add_argument("--max-requests", type=int, default=None,
                   help="request cap of each load point (default 300,000; quick 50,000)")
    p.add_argument("--processes", type=int, default=None, help="client processes (default 2)")
    p.add_argument("--batch-ops", type=int, default=None,
                   help="puts per Batch request / Write message (default 100)")
    p.add_argument("--read-keys", type=int, default=None,
                   help="keys stored for the get points (default 20,000; quick 2,000)")
    p.add_argument("--dir", default=None,
                   help="where the servers' data dirs go, on the disk to measure "
                        "(default $STRATA_BENCH_DIR or ../tmp-bench beside the repository)")
    p.add_argument("--docs", default=None,
                   help="write server.md/.png/.json into this dir "
                        "(default docs/bench on full runs)")
    p.add_argument("--no-docs", action="store_true", help="write no docs")
    p.add_argument("--keep", action="store_true", help="keep the run's data dir and server logs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    return p.parse_args(argv)


def _config(args: argparse.Namespace) -> Config:
    cfg = Config.preset(args.quick)
    if args.seconds is not None:
        cfg.seconds = args.seconds
    if args.max_requests is not None:
        cfg.max_requests = args.max_requests
    if args.processes is not None:
        cfg.processes = args.processes
    if args.batch_ops is not None:
        cfg.batch_ops = args.batch_ops
    if args.read_keys is not None:
        cfg.read_keys = args.read_keys
    if args.inflight is not None:
        try:
            cfg.inflight = [int(x) for x in args.inflight.split(",") if x.strip()]
        except ValueError:
            raise SystemExit(f"--inflight: not a list of integers: {args.inflight!r}") from None
    cfg.families = _split(args.only, FAMILIES, "workload family")
    cfg.systems = _split(args.engines, SYSTEMS, "server")
    cfg.verbose = not args.quiet
    if not (cfg.seconds > 0 and cfg.max_requests >= 1 and cfg.processes >= 1
            and 1 <= cfg.batch_ops <= 10_000 and cfg.read_keys >= 1 and cfg.inflight
            and all(c >= 1 for c in cfg.inflight)):
        raise SystemExit("--seconds, --max-requests, --processes, --batch-ops (up to 10,000), "
                         "--read-keys and --inflight must be positive")
    return cfg


class _Terminated(Exception):
    pass


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    cfg = _config(args)
    wls = workloads(cfg)
    data_root = os.path.abspath(args.dir or _default_data_dir())
    os.makedirs(data_root, exist_ok=True)
    run_dir = tempfile.mkdtemp(prefix="server-", dir=data_root)
    load_start = _loadavg()
    if cfg.verbose and load_start is not None and load_start > 1.0:
        print(f"warning: 1-minute load average is {load_start:.2f}: other processes compete for "
              "the CPUs and the disk, and the figures will show it", file=sys.stderr, flush=True)

    services: dict[str, dict[str, Any]] = {}
    for s in cfg.systems:
        cls: Any = {"strata": StrataServer, "etcd": EtcdServer}.get(s, RedisServer)
        why = cls.missing()
        services[s] = {"label": LABELS[s], "version": None if why else cls.version(),
                       "missing": why}
        if why:
            print(f"[{s}] not run: {why}", file=sys.stderr, flush=True)  # even with --quiet

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.perf_counter()
    pool: WorkerPool | None = None
    servers: list[Server] = []
    runner: Runner | None = None
    try:
        stubs = os.path.join(run_dir, "etcd_stubs")
        if "etcd" in cfg.systems and not services["etcd"]["missing"]:
            compile_etcd_stubs(stubs)
        pool = WorkerPool(cfg.processes, stubs)
        runner = Runner(cfg, pool)
        for s in cfg.systems:
            if services[s]["missing"]:
                continue
            root = os.path.join(run_dir, s)
            if s == "strata":
                server: Server = StrataServer(root)
            elif s == "etcd":
                server = EtcdServer(root, stubs)
            else:
                server = RedisServer(root, s.split("-", 1)[1])
            servers.append(server)
            runner.log(f"== {s}")
            run_system(runner, s, server, wls)
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
            if s == "strata" and any(w.family == "asyncio" for w in wls):
                root = os.path.join(run_dir, "strata-asyncio")
                servers.append(variant := StrataServer(root, event_loop="asyncio"))
                runner.log("== strata (daemon on the asyncio event loop)")
                run_event_loop_variant(runner, variant, wls)
                if not args.keep:
                    shutil.rmtree(root, ignore_errors=True)
    except (KeyboardInterrupt, _Terminated):
        print("interrupted; nothing written", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        for srv in servers:
            srv.kill()
        if pool is not None:
            pool.close()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        elif cfg.verbose:
            print(f"kept {run_dir}", file=sys.stderr)
    wall = time.perf_counter() - started

    machine = report.machine_info(
        data_root, ["strata", "grpcio", "grpcio-tools", "protobuf", "uvloop", "redis", "hiredis",
                    "psutil", "matplotlib"])
    machine["strata_revision"] = report.git_revision(REPO_ROOT)
    machine["loadavg_start"] = load_start
    machine["loadavg_end"] = _loadavg()
    assert runner is not None
    run = {"config": asdict(cfg), "systems": cfg.systems, "workloads": wls,
           "services": services, "results": runner.results, "machine": machine,
           "wall_seconds": round(wall, 1), "quick": args.quick}

    report.publish(run, args, "server", summary_json, render_text, write_docs, cfg.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_cli())
