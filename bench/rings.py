"""Same-host event rows of `python -m bench distribution`: the shared-memory ring
(one writer process, readers in other processes) beside multiprocessing.Queue and
pyzmq PUSH/PULL over ipc; and the harness basics the network rows of
bench/distribution.py share: 100-byte events, the pacing of the latency runs,
percentiles, spawned processes.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time

VALUE = b"v" * 100
PACE = 10_000  # events/s of the latency runs
# Readers and subscribers start from a fresh interpreter: a forked child of a process that
# runs gRPC threads (the test suite's) can inherit a lock held at fork time and hang.
CTX = mp.get_context("spawn")


def pace_until(t0: float, done: int, rate: float) -> None:
    """Wait until `done` events are due at `rate`: sleep while more than 200 us
    remain, then spin on sleep(0), which releases the GIL (multiprocessing.Queue
    sends from a feeder thread of the producer)."""
    due = t0 + done / rate
    left = due - time.perf_counter()
    if left > 2e-4:
        time.sleep(left - 1e-4)
    while time.perf_counter() < due:
        time.sleep(0)


def percentiles(xs: list[float]) -> dict:
    xs = sorted(xs)
    if not xs:
        return {"p50": None, "p99": None, "p999": None}
    pick = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]
    return {"p50": pick(0.5), "p99": pick(0.99), "p999": pick(0.999)}


def have_module(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ------------------------------------------------------------------------- rings

def _ring_reader(name: str, n: int, wait: str, from_start: bool, record: bool, verify: bool,
                 ready, out) -> None:
    from strata_client.ring import RingEvent, RingReader

    r = RingReader(name, wait=wait, from_start=from_start, verify=verify)
    ready.put(1)
    got, lat, t0 = 0, [], None
    parse = RingEvent.parse
    cpu0 = time.process_time()
    while got < n:
        evs = r.read_frames(timeout=30)  # (lsn, frame view) pairs: zero-copy, 256 at most
        if not evs:
            break
        now = time.time_ns()
        if t0 is None:
            t0 = time.perf_counter()
        if record:
            lat.extend((now - parse(f).ts_ns) / 1000 for _, f in evs)
        got += len(evs)
    out.put((got, time.perf_counter() - (t0 or time.perf_counter()), lat,
             time.process_time() - cpu0))
    r.close()


def _publish(w, n: int, batch: int, pace: float | None) -> float:
    t0 = time.perf_counter()
    lsn = 1
    while lsn <= n:
        k = min(batch, n - lsn + 1)
        ts = time.time_ns()
        w.publish([(lsn + i, ts, b"kv", b"key%08d" % (lsn + i), VALUE) for i in range(k)])
        lsn += k
        if pace:
            pace_until(t0, lsn - 1, pace)
    return time.perf_counter() - t0


def bench_ring(n: int, readers: int, wait: str, prefill: bool, pace: float | None,
               verify: bool = True) -> dict:
    from strata.distribution.ring import RingWriter

    name = f"strata-bench-{os.getpid()}"
    # A 100-byte event takes 168 bytes (frame 152, index entry 16) and a block 16 more.
    size = (n * 176 + (1 << 20)) if prefill else 64 << 20
    w = RingWriter(name, size)
    ready, out = CTX.Queue(), CTX.Queue()
    try:
        if prefill:
            wrote = _publish(w, n, 64, None)
        procs = [CTX.Process(target=_ring_reader, args=(name, n, wait, prefill, bool(pace), verify, ready,
                                                     out))
                 for _ in range(readers)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=30)
        if not prefill:
            wrote = _publish(w, n, 1 if pace else 64, pace)
        res = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join()
    finally:
        w.close()
    got = sum(r[0] for r in res)
    secs = max(r[1] for r in res)
    lat = [x for r in res for x in r[2]]
    return {"events_per_s": got / secs if secs else None, "writer_per_s": n / wrote,
            "lapped": sum(1 for r in res if r[0] < n), "latency_us": percentiles(lat),
            "reader_cpu_ns": _cpu_ns(res)}


def _cpu_ns(res: list[tuple]) -> float | None:
    """Reader (consumer) processes' CPU, user + sys, per event delivered, in ns."""
    got = sum(r[0] for r in res)
    return sum(r[3] for r in res) / got * 1e9 if got else None


def _q_consumer(q, n: int, record: bool, out) -> None:
    got, lat, t0 = 0, [], None
    cpu0 = time.process_time()
    while got < n:
        lsn, ts, _ = q.get()
        now = time.time_ns()
        if t0 is None:
            t0 = time.perf_counter()
        if record:
            lat.append((now - ts) / 1000)
        got += 1
    out.put((got, time.perf_counter() - t0, lat, time.process_time() - cpu0))


def bench_mp_queue(n: int, pace: float | None) -> dict:
    q, out = CTX.Queue(), CTX.Queue()
    p = CTX.Process(target=_q_consumer, args=(q, n, bool(pace), out))
    p.start()
    t0 = time.perf_counter()
    for i in range(n):
        q.put((i, time.time_ns(), VALUE))
        if pace:
            pace_until(t0, i + 1, pace)
    res = out.get(timeout=300)
    p.join()
    return {"events_per_s": res[0] / res[1], "latency_us": percentiles(res[2]),
            "reader_cpu_ns": _cpu_ns([res])}


def _zmq_consumer(addr: str, n: int, record: bool, ready, out) -> None:
    import zmq

    s = zmq.Context().socket(zmq.PULL)
    s.connect(addr)
    ready.put(1)
    got, lat, t0 = 0, [], None
    cpu0 = time.process_time()
    while got < n:
        m = s.recv()
        now = time.time_ns()
        if t0 is None:
            t0 = time.perf_counter()
        if record:
            lat.append((now - int.from_bytes(m[:8], "little")) / 1000)
        got += 1
    out.put((got, time.perf_counter() - t0, lat, time.process_time() - cpu0))


def bench_zmq(n: int, pace: float | None, root: str) -> dict:
    import zmq

    addr = f"ipc://{root}/zmq.sock"
    s = zmq.Context().socket(zmq.PUSH)
    s.bind(addr)
    ready, out = CTX.Queue(), CTX.Queue()
    p = CTX.Process(target=_zmq_consumer, args=(addr, n, bool(pace), ready, out))
    p.start()
    ready.get(timeout=30)
    time.sleep(0.2)
    t0 = time.perf_counter()
    for i in range(n):
        s.send(time.time_ns().to_bytes(8, "little") + VALUE)
        if pace:
            pace_until(t0, i + 1, pace)
    res = out.get(timeout=300)
    p.join()
    s.close(linger=0)
    return {"events_per_s": res[0] / res[1], "latency_us": percentiles(res[2]),
            "reader_cpu_ns": _cpu_ns([res])}


def run_ring(res: dict, root: str, n_ring: int, n_lat: int) -> None:
    """The same-host rows: rings beside multiprocessing.Queue and pyzmq, into res["ring"]."""
    log = lambda *a: print(*a, file=sys.stderr, flush=True)
    res["ring_run"] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "loadavg": os.getloadavg()[0]}
    r = res["ring"]
    r["ring, 1 reader, draining a full ring"] = bench_ring(n_ring, 1, "poll", True, None)
    r["ring, same, checksums not verified"] = bench_ring(n_ring, 1, "poll", True, None, False)
    r["ring, 1 reader, writer running"] = bench_ring(n_ring, 1, "poll", False, None)
    r["ring, 4 readers, writer running"] = bench_ring(n_ring, 4, "poll", False, None)
    r["ring, polling reader, paced"] = bench_ring(n_lat, 1, "poll", False, PACE)
    r["ring, doorbell reader, paced"] = bench_ring(n_lat, 1, "doorbell", False, PACE)
    r["ring, 4 doorbell readers, paced"] = bench_ring(n_lat, 4, "doorbell", False, PACE)
    r["multiprocessing.Queue"] = bench_mp_queue(n_ring // 4, None)
    r["multiprocessing.Queue, paced"] = bench_mp_queue(n_lat, PACE)
    if have_module("zmq"):
        r["pyzmq ipc"] = bench_zmq(n_ring // 2, None, root)
        r["pyzmq ipc, paced"] = bench_zmq(n_lat, PACE, root)
    else:
        res["skipped"]["pyzmq"] = "pyzmq not installed (pip install -e '.[bench]')"
    for k, v in r.items():
        log(f"{k}: {v['events_per_s']:,.0f}/s, latency us {v['latency_us']}")
