"""Event distribution: shared-memory rings and the WebSocket tiers, beside their peers.

    python -m bench distribution [--quick] [--json] [--docs DIR]

One run, loopback, 100-byte events, every peer measured with the same harness
(subscribers in their own processes, Python on both ends):
- ring (one writer process, readers in other processes) against
  multiprocessing.Queue and pyzmq PUSH/PULL over ipc: delivered events/s (a
  reader draining a full ring, and writer and reader running together) and
  publish -> read latency at a paced 10k events/s, polling and doorbell, and
  the reader processes' CPU (user + sys) per event (`--only ring` runs these
  rows alone; bench/rings.py);
- the daemon's WebSocket realtime and delayed tiers against the raw
  `websockets` broadcast (the transport's own ceiling), Redis pub/sub
  (redis-py) and NATS core (nats-py): delivered events/s with 1, 10 and 100
  subscribers, and put acknowledged (publish, for the peers) -> received at a
  paced 10k events/s; beside each, the server process's CPU (user + sys, from
  /proc) per event delivered, and the subscriber processes' own;
- the daemon's batched durable puts with 0 subscribers, 10 realtime readers, 100
  delayed-tier subscribers and 10 delayed-tier subscribers with a 1 ms window,
  with the daemon's CPU per put and the subscribers' CPU per event (Python
  clients on the same cores: a realtime reader's per-message cost is what takes
  the writers' CPU);
- the same puts with 500 stalled subscribers (connected and subscribed, never
  reading: `--stalled N`) and with none, each on a fresh daemon with its default
  subscriber bounds, with the daemon's CPU (user + sys) per put and its RSS
  (`--only stalled` runs this row alone).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import report
from .rings import CTX, PACE, VALUE, have_module, pace_until, percentiles, run_ring
from .server.procs import child_env, free_port, spawn, stop_proc

# ----------------------------------------------------------------- network peers

def _sub_proc(kind: str, target: str, conns: int, n: int, ready, go, out, sub_msg) -> None:
    """`conns` subscribers of one kind in one process; each counts n events."""
    import uvloop

    async def one(i: int, record: bool) -> tuple[int, float, list]:
        got, lat = 0, []
        if kind == "ws":
            from websockets.asyncio.client import connect
            from websockets.exceptions import ConnectionClosed

            async with connect(target, max_size=None, max_queue=None) as ws:
                if sub_msg:
                    await ws.send(sub_msg)
                    await ws.recv()  # subscribed
                ready.put(1)
                try:
                    while got < n:
                        m = await ws.recv()
                        now = time.time_ns()
                        if not sub_msg:  # the raw broadcast: one event a message, ts first
                            if record:
                                lat.append((now, m))
                            got += 1
                            continue
                        k = m.count('"lsn"')
                        if record:  # a delayed batch may hold a single event
                            d = json.loads(m)
                            events = d["events"] if d["op"] == "batch" else [d]
                            lat.extend((now, e) for e in events)
                        got += k
                except ConnectionClosed:  # cut off (it could not keep up): counted short
                    pass
                last = time.perf_counter()
        elif kind == "redis":
            import redis.asyncio as aredis

            r = aredis.Redis.from_url(target)
            ps = r.pubsub()
            await ps.subscribe("ev")
            await ps.get_message(timeout=5)
            ready.put(1)
            while got < n:
                m = await ps.get_message(timeout=30)
                if m is None:
                    break
                if m["type"] != "message":
                    continue
                if record:
                    lat.append((time.time_ns(), m["data"]))
                got += 1
            last = time.perf_counter()
            await r.aclose()
        else:  # nats
            import nats

            nc = await nats.connect(target)
            done = asyncio.Event()
            state = {"got": 0}

            async def cb(msg):
                state["got"] += 1
                if record:
                    lat.append((time.time_ns(), msg.data))
                if state["got"] >= n:
                    done.set()

            await nc.subscribe("ev", cb=cb, pending_msgs_limit=10_000_000,
                               pending_bytes_limit=1 << 30)
            await nc.flush()
            ready.put(1)
            await asyncio.wait_for(done.wait(), 300)
            got = state["got"]
            last = time.perf_counter()
            await nc.close()
        return got, last, lat

    async def main():
        res = await asyncio.gather(*(one(i, i == 0) for i in range(conns)))
        cpu = os.times()
        out.put(([(g, t, lat) for g, t, lat in res], cpu.user + cpu.system))

    uvloop.install()
    asyncio.run(main())


def _subscribers(kind: str, target: str, total: int, n: int, sub_msg: str | None):
    procs_n = min(total, 2)
    per = [total // procs_n + (1 if i < total % procs_n else 0) for i in range(procs_n)]
    ready, go, out = CTX.Queue(), CTX.Event(), CTX.Queue()
    procs = [CTX.Process(target=_sub_proc, args=(kind, target, c, n, ready, go, out, sub_msg))
             for c in per]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 60
    for _ in range(total):
        while True:
            try:
                ready.get(timeout=0.5)
                break
            except queue.Empty:
                dead = [p.exitcode for p in procs if not p.is_alive()]
                if dead or time.monotonic() > deadline:
                    for p in procs:
                        p.kill()
                    raise RuntimeError(f"{kind} subscribers not ready after "
                                       f"{60 - (deadline - time.monotonic()):.0f} s; exited: "
                                       f"{dead}") from None
    return procs, out


def _collect(procs, out) -> tuple[int, float, list]:
    """(events received, when the last subscriber finished, latency samples); the
    subscriber processes' CPU seconds go to `_collect.cpu_s` (the last call's)."""
    parts = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(30)
    res = [x for part in parts for x in part[0]]
    _collect.cpu_s = sum(part[1] for part in parts)
    return sum(r[0] for r in res), max(r[1] for r in res), [x for r in res for x in r[2]]


def _latency_from(samples: list, ack: dict[int, int] | None) -> dict:
    lat = []
    for now, m in samples:
        if ack is not None:
            t = ack.get(m["lsn"])
            if t is not None:
                lat.append((now - t) / 1e6)
        else:
            data = m if isinstance(m, bytes) else m.encode() if isinstance(m, str) else m
            lat.append((now - int(data[:19])) / 1e6)
    return percentiles(lat)


async def _strata_write(addr: str, n: int, pace: float | None, batch: int = 100,
                        inflight: int = 8) -> tuple[float, dict[int, int]]:
    """n puts in batches (paced: batches of 10 on a clock); {lsn: ack time ns}."""
    from strata_client import AsyncClient

    acks: dict[int, int] = {}
    async with AsyncClient(addr) as c:
        if pace:
            batch, inflight = 10, 1
        sem = asyncio.Semaphore(inflight)
        t0 = time.perf_counter()
        tasks = []

        async def one(i: int) -> None:
            async with sem:
                last = await c.batch([("put", b"k%09d" % (i + j), VALUE) for j in range(batch)])
                now = time.time_ns()
                for j in range(batch):
                    acks[last - batch + 1 + j] = now

        for i in range(0, n, batch):
            if pace:
                due = t0 + i / pace
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(i)))
            if len(tasks) > 1000:
                await asyncio.gather(*tasks)
                tasks = []
        await asyncio.gather(*tasks)
        return time.perf_counter() - t0, acks


class Strata:
    def __init__(self, root: str, env: dict[str, str] | None = None) -> None:
        self.grpc = f"127.0.0.1:{free_port()}"
        self.ws = f"127.0.0.1:{free_port()}"
        d = tempfile.mkdtemp(dir=root)
        self.proc = spawn([sys.executable, "-m", "strata.server.cli", "serve", "--data-dir", d,
                           "--grpc-listen", self.grpc, "--ws-listen", self.ws, "--metrics-listen",
                           "", "--log-level", "warning"],
                          env={**child_env(), "STRATA_SUBSCRIBER_QUEUE": "200000",
                               "STRATA_WAL_RETENTION_BYTES": str(1 << 30), **(env or {})},
                          stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "log"), "ab"))
        from strata_client import Client

        end = time.monotonic() + 30
        while True:
            try:
                with Client(self.grpc, timeout=1) as c:
                    c.status()
                # the WebSocket listener opens after the gRPC one: wait for it too
                host, port = self.ws.rsplit(":", 1)
                socket.create_connection((host, int(port)), timeout=1).close()
                break
            except Exception:
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        stop_proc(self.proc)


def bench_strata_ws(root: str, tier: str, subs: int, n: int, pace: float | None) -> dict:
    s = Strata(root)
    try:
        msg = json.dumps({"op": "subscribe", "tier": tier, "window_ms": 20})
        procs, out = _subscribers("ws", f"ws://{s.ws}/v1/events", subs, n, msg)
        cpu0 = _cpu_s(s.proc.pid)
        t0 = time.perf_counter()
        write_s, acks = asyncio.run(_strata_write(s.grpc, n, pace))
        got, last, samples = _collect(procs, out)
        cpu = _cpu_s(s.proc.pid) - cpu0
    finally:
        s.stop()
    secs = last - t0
    return {"events_per_s": got / secs, "per_sub": got / subs / secs,
            "writes_per_s": n / write_s, "complete": got == n * subs,
            "cpu_us_per_event": cpu / got * 1e6 if got else None,
            "subscriber_cpu_us_per_event": _collect.cpu_s / got * 1e6 if got else None,
            "latency_ms": _latency_from(samples, acks)}


def bench_write_path(root: str, n: int, realtime: int, delayed: int,
                     window_ms: int = 100) -> dict:
    """Batched durable puts while subscribers read; the daemon's CPU per put (the
    subscribers' share included, collected to their last event) and the subscriber
    processes' CPU per event they received."""
    s = Strata(root)
    try:
        procs, out = [], None
        if realtime:
            procs, out = _subscribers("ws", f"ws://{s.ws}/v1/events", realtime, n,
                                      json.dumps({"op": "subscribe"}))
        if delayed:
            procs, out = _subscribers("ws", f"ws://{s.ws}/v1/events", delayed, n,
                                      json.dumps({"op": "subscribe", "tier": "delayed",
                                                  "window_ms": window_ms}))
        cpu0 = _cpu_s(s.proc.pid)
        write_s, _ = asyncio.run(_strata_write(s.grpc, n, None))
        sub_cpu = got = None
        if procs:
            got = _collect(procs, out)[0]
            sub_cpu = _collect.cpu_s / got * 1e6 if got else None
        cpu = _cpu_s(s.proc.pid) - cpu0
    finally:
        s.stop()
    return {"puts_per_s": n / write_s, "cpu_us_per_put": cpu / n * 1e6,
            "subscriber_cpu_us_per_event": sub_cpu}


def _stalled_proc(target: str, n: int, ready, stop) -> None:
    """`n` WebSocket subscribers that subscribe and never read again: raw sockets with
    a 4 KiB receive buffer, so the server's writes to them back up at once."""
    import base64 as b64
    import struct

    host, port = target.rsplit(":", 1)
    sub = json.dumps({"op": "subscribe"}).encode()
    mask = b"\x00\x00\x00\x00"  # clients must mask (RFC 6455 5.3); a zero key is a valid one
    frame = struct.pack("!BB", 0x81, 0x80 | len(sub)) + mask + sub
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((host, int(port)))
        key = b64.b64encode(os.urandom(16)).decode()
        s.sendall(f"GET /v1/events HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n\r\n".encode() + frame)
        got = b""
        while b'"subscribed"' not in got:  # the 101 answer, then the subscribed message
            part = s.recv(4096)
            if not part:
                raise RuntimeError(f"closed before subscribed: {got[:200]!r}")
            got += part
        socks.append(s)
    ready.put(1)
    stop.wait(600)
    for s in socks:
        s.close()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat fields 14, 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_stalled(root: str, n: int, stalled: int) -> dict:
    """Batched durable puts while `stalled` realtime subscribers (daemon defaults for
    their queue and write buffer) never read; the daemon's CPU per put."""
    s = Strata(root, env={"STRATA_SUBSCRIBER_QUEUE": "10000"})
    procs, stop = [], CTX.Event()
    try:
        if stalled:
            ready = CTX.Queue()
            per = [stalled // 2 + stalled % 2, stalled // 2]
            procs = [CTX.Process(target=_stalled_proc, args=(s.ws, k, ready, stop))
                     for k in per if k]
            for p in procs:
                p.start()
            for _ in procs:
                ready.get(timeout=120)
        cpu0 = _cpu_s(s.proc.pid)
        write_s, _ = asyncio.run(_strata_write(s.grpc, n, None))
        cpu = _cpu_s(s.proc.pid) - cpu0
        rss = _rss_mib(s.proc.pid)
    finally:
        stop.set()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
        s.stop()
    return {"puts_per_s": n / write_s, "cpu_us_per_put": cpu / n * 1e6, "rss_mib": rss}


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def bench_stalled_pair(root: str, n: int, stalled: int) -> dict:
    """The same puts with none and with `stalled` stalled subscribers, and the ratio."""
    none = bench_stalled(root, n, 0)
    some = bench_stalled(root, n, stalled)
    return {"none": none, "stalled": some, "subscribers": stalled,
            "ratio": some["puts_per_s"] / none["puts_per_s"]}


def _ws_broadcast_server(port: int, n: int, subs: int, pace: float | None, started) -> None:
    import uvloop
    from websockets.asyncio.server import broadcast, serve

    async def main():
        conns: set = set()
        full = asyncio.Event()

        async def handler(ws):
            conns.add(ws)
            if len(conns) >= subs:
                full.set()
            await ws.wait_closed()

        async with serve(handler, "127.0.0.1", port, compression=None, max_queue=None):
            started.set()
            await full.wait()
            await asyncio.sleep(0.5)
            t0 = time.perf_counter()
            for i in range(n):
                broadcast(conns, b'%019d{"op":"event","value":"%s"}' % (time.time_ns(), VALUE),
                          text=True)
                if pace:
                    due = t0 + (i + 1) / pace
                    d = due - time.perf_counter()
                    if d > 0:
                        await asyncio.sleep(d)
                elif i % 100 == 0:
                    await asyncio.sleep(0)
            await asyncio.sleep(60)

    uvloop.install()
    asyncio.run(main())


def bench_ws_broadcast(subs: int, n: int, pace: float | None) -> dict:
    port = free_port()
    started = CTX.Event()
    srv = CTX.Process(target=_ws_broadcast_server, args=(port, n, subs, pace, started))
    srv.start()
    started.wait(30)
    try:
        procs, out = _subscribers("ws", f"ws://127.0.0.1:{port}", subs, n, None)
        cpu0 = _cpu_s(srv.pid)
        t0 = time.perf_counter()
        got, last, samples = _collect(procs, out)
        cpu = _cpu_s(srv.pid) - cpu0
    finally:
        srv.kill()
        srv.join()
    lat = _latency_from(samples, None) if pace else percentiles([])
    return {"events_per_s": got / (last - t0), "cpu_us_per_event": cpu / got * 1e6 if got else None,
            "subscriber_cpu_us_per_event": _collect.cpu_s / got * 1e6 if got else None,
            "latency_ms": lat}


def bench_redis(root: str, subs: int, n: int, pace: float | None) -> dict:
    import redis

    port = free_port()
    srv = spawn(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                 "--dir", root], env=None, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = redis.Redis(port=port)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        procs, out = _subscribers("redis", f"redis://127.0.0.1:{port}", subs, n, None)
        cpu0 = _cpu_s(srv.pid)
        t0 = time.perf_counter()
        i = 0
        while i < n:
            k = 1 if pace else 100
            p = r.pipeline(transaction=False)
            for _ in range(k):
                p.publish("ev", b"%019d" % time.time_ns() + VALUE)
            p.execute()
            i += k
            if pace:
                pace_until(t0, i, pace)
        got, last, samples = _collect(procs, out)
        cpu = _cpu_s(srv.pid) - cpu0
    finally:
        stop_proc(srv)
    return {"events_per_s": got / (last - t0), "cpu_us_per_event": cpu / got * 1e6 if got else None,
            "subscriber_cpu_us_per_event": _collect.cpu_s / got * 1e6 if got else None,
            "latency_ms": _latency_from(samples, None) if pace else percentiles([])}


def bench_nats(root: str, subs: int, n: int, pace: float | None) -> dict:
    import nats

    port = free_port()
    srv = spawn(["nats-server", "-a", "127.0.0.1", "-p", str(port)], env=None,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        procs, out = _subscribers("nats", f"nats://127.0.0.1:{port}", subs, n, None)

        async def pub():
            nc = await nats.connect(f"nats://127.0.0.1:{port}")
            t0 = time.perf_counter()
            for i in range(n):
                await nc.publish("ev", b"%019d" % time.time_ns() + VALUE)
                if pace:
                    due = t0 + (i + 1) / pace
                    d = due - time.perf_counter()
                    if d > 0:
                        await nc.flush()
                        await asyncio.sleep(d)
                elif i % 1000 == 0:
                    await nc.flush()
            await nc.flush()
            await nc.close()

        cpu0 = _cpu_s(srv.pid)
        t0 = time.perf_counter()
        asyncio.run(pub())
        got, last, samples = _collect(procs, out)
        cpu = _cpu_s(srv.pid) - cpu0
    finally:
        stop_proc(srv)
    return {"events_per_s": got / (last - t0), "cpu_us_per_event": cpu / got * 1e6 if got else None,
            "subscriber_cpu_us_per_event": _collect.cpu_s / got * 1e6 if got else None,
            "latency_ms": _latency_from(samples, None) if pace else percentiles([])}


# ------------------------------------------------------------------------- run

def run(args) -> dict:
    root = tempfile.mkdtemp(prefix="strata-bench-dist-", dir=args.dir)
    q = args.quick
    n_ring = 200_000 if q else 1_000_000
    n_net = 20_000 if q else 100_000
    n_lat = 5_000 if q else 20_000
    res: dict[str, Any] = {"machine": report.machine_info(root, ["websockets", "redis", "nats-py",
                                                                 "pyzmq"]),
                           "ring": {}, "ws": {}, "write_path": {}, "skipped": {}}
    log = lambda *a: print(*a, file=sys.stderr, flush=True)
    n_stalled = 30_000 if q else 100_000
    if args.only == "stalled":
        try:
            res["stalled"] = st = bench_stalled_pair(root, n_stalled, args.stalled)
            log(f"stalled: {st}")
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return res
    if args.only == "ring":
        try:
            run_ring(res, root, n_ring, n_lat)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return res
    try:
        run_ring(res, root, n_ring, n_lat)
        w = res["ws"]
        redis_ok = bool(shutil.which("redis-server")) and have_module("redis")
        nats_ok = bool(shutil.which("nats-server")) and have_module("nats")
        for subs in (1, 10, 100):
            n = n_net if subs < 100 else n_net // 5
            for tier in ("realtime", "delayed"):
                w[f"strata {tier}, {subs} subs"] = bench_strata_ws(root, tier, subs, n, None)
            w[f"websockets broadcast, {subs} subs"] = bench_ws_broadcast(subs, n, None)
            if redis_ok:
                w[f"redis pub/sub, {subs} subs"] = bench_redis(root, subs, n, None)
            if nats_ok:
                w[f"nats core, {subs} subs"] = bench_nats(root, subs, n, None)
            for k in [k for k in w if k.endswith(f", {subs} subs")]:
                log(f"{k}: {w[k]['events_per_s']:,.0f} events/s")
        w["strata realtime, 10 subs, paced"] = bench_strata_ws(root, "realtime", 10, n_lat, PACE)
        w["websockets broadcast, 10 subs, paced"] = bench_ws_broadcast(10, n_lat, PACE)
        if redis_ok:
            w["redis pub/sub, 10 subs, paced"] = bench_redis(root, 10, n_lat, PACE)
        if nats_ok:
            w["nats core, 10 subs, paced"] = bench_nats(root, 10, n_lat, PACE)
        if not redis_ok:
            res["skipped"]["redis"] = "needs redis-server (Debian) and redis-py (bench extra)"
        if not nats_ok:
            res["skipped"]["nats"] = "needs nats-server (Debian) and nats-py (bench extra)"
        wp = res["write_path"]
        n_w = 100_000 if q else 300_000
        wp["no subscribers"] = bench_write_path(root, n_w, 0, 0)
        wp["10 realtime subscribers"] = bench_write_path(root, n_w, 10, 0)
        wp["100 delayed-tier subscribers"] = bench_write_path(root, n_w, 0, 100)
        wp["10 delayed-tier subscribers, window 1 ms"] = bench_write_path(root, n_w, 0, 10, 1)
        log(f"write path: {wp}")
        res["stalled"] = st = bench_stalled_pair(root, n_stalled, args.stalled)
        log(f"stalled: {st}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return res


def _r(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _f(x, unit="", digits=1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}{unit}" if x < 100 else f"{x:,.0f}{unit}"


def render_text(res: dict) -> str:
    out: list[str] = []
    if res["ring"]:
        out += _render_main(res)
    st = res.get("stalled")
    if st:
        out.append(f"\nBatched durable puts (100 a batch, 8 in flight) with {st['subscribers']} "
                   "stalled WebSocket subscribers (subscribed, never reading) and with none; "
                   "daemon CPU (user + sys) per put")
        rows = [[k, _f(v["puts_per_s"]), _r(v["puts_per_s"], st["none"]["puts_per_s"]),
                 _f(v["cpu_us_per_put"]), _f(v["rss_mib"])]
                for k, v in ((f"{st['subscribers']} stalled", st["stalled"]),
                             ("none", st["none"]))]
        out.append(report.text_table(["subscribers", "puts/s", "vs none", "CPU us/put",
                                      "RSS MiB"], rows))
    for k, why in res["skipped"].items():
        out.append(f"skipped {k}: {why}")
    return "\n".join(out)


def _render_main(res: dict) -> list[str]:
    ring = res["ring"]
    q = ring.get("multiprocessing.Queue", {}).get("events_per_s")
    out = ["Same host (100-byte events): delivered events/s, publish -> read latency (us), "
           "reader CPU (user + sys of the reader processes) per event"]
    when = res.get("ring_run")
    if when:
        out[0] += f"; measured {when['date']}, load average {when['loadavg']:.1f} at the start"
    out.append(report.text_table(
        ["transport", "events/s", "vs mp.Queue", "p50 us", "p99 us", "p999 us", "CPU ns/event"],
        [[k, _f(v["events_per_s"]), _r(v["events_per_s"], q), _f(v["latency_us"]["p50"]),
          _f(v["latency_us"]["p99"]), _f(v["latency_us"]["p999"]), _f(v.get("reader_cpu_ns"))]
         for k, v in ring.items()]))
    ws = res["ws"]
    out.append("\nNetwork (loopback), delivered events/s over all subscribers; latency (ms) put "
               "acknowledged -> received (peers: published -> received)")
    rows = []
    for k, v in ws.items():
        subs = k.split(", ")[1] if ", " in k else ""
        raw = ws.get(f"websockets broadcast, {subs}", {}).get("events_per_s")
        red = ws.get(f"redis pub/sub, {subs}", {}).get("events_per_s")
        nat = ws.get(f"nats core, {subs}", {}).get("events_per_s")
        raw_cpu = ws.get(f"websockets broadcast, {subs}", {}).get("cpu_us_per_event")
        lat = v["latency_ms"]
        cpu = v.get("cpu_us_per_event")
        rows.append([k, _f(v["events_per_s"]), _r(v["events_per_s"], raw), _r(v["events_per_s"], red),
                     _r(v["events_per_s"], nat), _f(cpu, "", 2), _r(cpu, raw_cpu),
                     _f(v.get("subscriber_cpu_us_per_event"), "", 2), _f(lat["p50"]),
                     _f(lat["p99"]), _f(lat["p999"])])
    out.append(report.text_table(["system", "events/s", "vs ws raw", "vs redis", "vs nats",
                                  "CPU us/event", "CPU vs ws raw", "subs CPU us/event", "p50 ms",
                                  "p99 ms", "p999 ms"], rows))
    out.append("CPU us/event: the server process's user + sys CPU (/proc) over the run, divided "
               "by the events all subscribers received; Strata's includes taking the puts "
               "(gRPC, WAL, fsync), the peers' their publishers' messages. subs CPU: the "
               "subscriber processes' own, per event they received.")
    wp = {k: v if isinstance(v, dict) else {"puts_per_s": v}
          for k, v in res["write_path"].items()}  # a float: a page from before CPU was measured
    base = wp.get("no subscribers", {}).get("puts_per_s")
    out.append("\nBatched durable puts (100 a batch, 8 in flight) while subscribers read; daemon "
               "CPU (user + sys) per put, the subscribers' share included")
    out.append(report.text_table(
        ["subscribers", "puts/s", "vs none", "CPU us/put", "subs CPU us/event"],
        [[k, _f(v["puts_per_s"]), _r(v["puts_per_s"], base), _f(v.get("cpu_us_per_put")),
          _f(v.get("subscriber_cpu_us_per_event"), "", 2)] for k, v in wp.items()]))
    return out


def render_markdown(res: dict, has_chart: bool) -> str:
    m = res["machine"]
    lines = ["# Distribution benchmark", "",
             "`python -m bench distribution` (bench/distribution.py), one run on one machine: "
             "servers, writers and subscriber processes share its cores. See the module's "
             "docstring for what each row measures.", "",
             f"Machine: {m.get('cpu_model', '?')}, {m.get('cpus_usable', '?')} usable cores, "
             f"{m.get('python', '?')}, {m.get('date', '?')}.", ""]
    if has_chart and res["ws"]:
        lines += ["![latency](distribution.png)", ""]
    lines += ["```", render_text(res), "```", ""]
    return "\n".join(lines)


def draw_chart(res: dict, path: Path) -> None:
    rows = {k: v["latency_ms"] for k, v in res["ws"].items() if k.endswith("paced")}
    rows.update({k: {p: (x / 1000 if x is not None else None) for p, x in v["latency_us"].items()}
                 for k, v in res["ring"].items() if k.endswith("paced")})
    report.bar_chart(path, list(rows), {p: [r[p] for r in rows.values()]
                                        for p in ("p50", "p99", "p999")},
                     title=f"Latency at a paced {PACE:,} events/s (ms, log scale)",
                     ylabel="ms", log=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench distribution", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer events per run")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--docs", default=None, help="write the page into this directory")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--dir", default=None,
                    help="where the data directories go, made if missing (default: /tmp)")
    ap.add_argument("--only", choices=("all", "stalled", "ring"), default="all",
                    help="stalled: only the puts with and without stalled subscribers; "
                         "ring: only the same-host rows (rings, multiprocessing.Queue, pyzmq)")
    ap.add_argument("--stalled", type=int, default=500,
                    help="stalled subscribers in that row (default 500)")
    args = ap.parse_args(argv)
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
    res = run(args)
    page = res
    if args.only in ("stalled", "ring"):
        # One part of the page: the others stay as the last full run measured them.
        docs = Path(args.docs) if args.docs else Path(__file__).resolve().parent.parent / \
            "docs" / "bench"
        try:
            page = json.loads((docs / "distribution.json").read_text())
            page[args.only] = res[args.only]
            if args.only == "ring":
                page["ring_run"] = res["ring_run"]
        except (OSError, ValueError):
            page = res
    report.publish(page, args, "distribution", lambda r: r, render_text,
                   lambda r, d: report.write_page(d, "distribution", r, draw_chart,
                                                  render_markdown, r), True)
    return 0
