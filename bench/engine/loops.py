"""The measuring loops: timed fills, reads, scans and synced writes, with latencies."""

from __future__ import annotations

import os
import random
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import report

from .adapters import Adapter, Get, Put
from .common import BATCH_SIZE, DEADLINE_CHECK_MASK, KEY_FMT, VALUE_POOL, VALUE_SIZE

# ---------------------------------------------------------------- measuring loops
#
# Written out per workload rather than through one generic loop: an extra
# Python call per op would cost as much as a LevelDB get.


@dataclass
class Measured:
    ops: int
    elapsed_ns: int
    latencies: array  # one sample per op / batch / scan, ns
    extra: dict[str, Any] = field(default_factory=dict)


def cpu_ns() -> int:
    """User + system CPU of this process and its descendants so far, in ns.

    Live descendants count (Strata merges in worker processes; LevelDB and RocksDB
    compact in threads of this process, which process_time covers), and so do
    children already waited for. Read outside the timed loops: it walks /proc.
    """
    # process_time_ns: user + system of every thread, to the ns (os.times() counts 10 ms
    # ticks, too coarse for a short loop); children's figures come in ticks.
    t = os.times()
    children = t.children_user + t.children_system + _descendants_cpu_s(os.getpid())
    return time.process_time_ns() + int(children * 1e9)


def _descendants_cpu_s(root: int) -> float:
    """User + system CPU of the live descendants of `root`, from /proc (no psutil: the
    bench runs on the test extra too); 0 where there is no /proc."""
    kids: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # after "(comm)": state ppid ... utime (12th) stime (13th)
        fields = stat[stat.rindex(b")") + 2:].split()
        kids.setdefault(int(fields[1]), []).append(pid)
        ticks[pid] = int(fields[11]) + int(fields[12])
    total, stack = 0, list(kids.get(root, ()))
    while stack:
        pid = stack.pop()
        total += ticks.get(pid, 0)
        stack.extend(kids.get(pid, ()))
    return total / os.sysconf("SC_CLK_TCK")


def values(seed: int) -> list[bytes]:
    rng = random.Random(seed ^ 0x5EED)
    half = VALUE_SIZE // 2
    pool = []
    for _ in range(VALUE_POOL):
        chunk = rng.randbytes(half)
        pool.append(chunk + chunk)
    return pool


def fill_one_by_one(
    put: Put, order: Any, count: int, vals: list[bytes], seconds: float
) -> Measured:
    """put(key(order[i]), value) for i < count, until the time cap."""
    lat = report.new_latency_buffer(count)
    fmt, mask, pc = KEY_FMT, VALUE_POOL - 1, time.perf_counter_ns
    start = pc()
    deadline = start + int(seconds * 1e9)
    done = 0
    for i in range(count):
        j = order[i]
        k = fmt % (j << 1)
        v = vals[j & mask]
        t0 = pc()
        put(k, v)
        t1 = pc()
        lat[i] = t1 - t0
        if not i & DEADLINE_CHECK_MASK and t1 > deadline:
            done = i + 1
            break
    else:
        done = count
    end = pc()
    return Measured(done, end - start, lat[:done], {"capped": done < count})


def fill_batched(
    write_batch: Callable[[list[tuple[bytes, bytes]]], None],
    order: Any, count: int, vals: list[bytes], seconds: float,
) -> Measured:
    lat = array("q")
    fmt, mask, pc = KEY_FMT, VALUE_POOL - 1, time.perf_counter_ns
    start = pc()
    deadline = start + int(seconds * 1e9)
    done = 0
    while done < count:
        hi = min(done + BATCH_SIZE, count)
        pairs = [(fmt % (order[i] << 1), vals[order[i] & mask]) for i in range(done, hi)]
        t0 = pc()
        write_batch(pairs)
        t1 = pc()
        lat.append(t1 - t0)
        done = hi
        if t1 > deadline:
            break
    end = pc()
    return Measured(done, end - start, lat, {"capped": done < count, "batch": BATCH_SIZE})


def read_random(get: Get, key_ints: array, seconds: float) -> Measured:
    """get(KEY_FMT % x) for each x in key_ints, until the time cap; counts misses."""
    count = len(key_ints)
    lat = report.new_latency_buffer(count)
    fmt, pc = KEY_FMT, time.perf_counter_ns
    absent = 0
    start = pc()
    deadline = start + int(seconds * 1e9)
    done = 0
    for i in range(count):
        k = fmt % key_ints[i]
        t0 = pc()
        v = get(k)
        t1 = pc()
        lat[i] = t1 - t0
        if v is None:
            absent += 1
        if not i & DEADLINE_CHECK_MASK and t1 > deadline:
            done = i + 1
            break
    else:
        done = count
    end = pc()
    return Measured(done, end - start, lat[:done], {"found": done - absent, "absent": absent})


def scan_ranges(adapter: Adapter, starts: list[bytes], length: int, seconds: float) -> Measured:
    lat = array("q")
    pc = time.perf_counter_ns
    items = 0
    start = pc()
    deadline = start + int(seconds * 1e9)
    for s in starts:
        t0 = pc()
        items += adapter.scan(s, length)
        t1 = pc()
        lat.append(t1 - t0)
        if t1 > deadline:
            break
    end = pc()
    return Measured(items, end - start, lat, {"scans": len(lat), "scan_length": length})


def synced_writes(
    adapter: Adapter, threads: int, seconds: float, max_ops: int, key_base: int, vals: list[bytes]
) -> Measured:
    """`threads` writers, each putting its own keys with a synced put, for `seconds`.

    Counts acknowledged puts. All writers start together at a barrier; the
    clock runs from the barrier to the last writer's return.
    """
    quota = max(1, max_ops // threads)
    barrier = threading.Barrier(threads + 1)
    lats: list[array] = [array("q") for _ in range(threads)]
    errors: list[str] = []
    deadline = [0]

    def writer(t: int) -> None:
        try:
            put, release = adapter.sync_writer()
        except Exception as exc:
            errors.append(repr(exc))
            barrier.abort()
            return
        lat = lats[t]
        append, fmt, mask, pc = lat.append, KEY_FMT, VALUE_POOL - 1, time.perf_counter_ns
        base = key_base + t * quota
        try:
            barrier.wait()
            stop = deadline[0]
            for i in range(quota):
                k = fmt % (base + i)
                t0 = pc()
                put(k, vals[i & mask])
                t1 = pc()
                append(t1 - t0)
                if t1 > stop:
                    break
        except threading.BrokenBarrierError:
            pass
        except Exception as exc:
            errors.append(repr(exc))
        finally:
            release()

    pool = [threading.Thread(target=writer, args=(t,), daemon=True) for t in range(threads)]
    for th in pool:
        th.start()
    pc = time.perf_counter_ns
    # The writers are already waiting at the barrier: the point starts now.
    deadline[0] = pc() + int(seconds * 1e9)
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    start = pc()
    for th in pool:
        th.join()
    end = pc()
    merged = array("q")
    for lat in lats:
        merged.extend(lat)
    extra: dict[str, Any] = {"threads": threads}
    if errors:
        extra["errors"] = errors[:5]
        extra["error_count"] = len(errors)
    return Measured(len(merged), end - start, merged, extra)


def fdatasync_reference(dirpath: str, count: int, seconds: float) -> dict[str, dict[str, Any]]:
    """Raw 4 KiB write + fdatasync on the data dir's disk: appending, and into preallocated space.

    The reference for "a lone synced put costs about one fdatasync".
    """
    out: dict[str, dict[str, Any]] = {}
    block = os.urandom(4096)
    for mode in ("append", "preallocated"):
        path = os.path.join(dirpath, f"fdatasync-{mode}.dat")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if mode == "preallocated":
                os.posix_fallocate(fd, 0, 4096 * count)
                os.fsync(fd)
            lat = array("q")
            pc = time.perf_counter_ns
            start = pc()
            deadline = start + int(seconds * 1e9)
            for i in range(count):
                t0 = pc()
                os.pwrite(fd, block, 4096 * i)
                os.fdatasync(fd)
                t1 = pc()
                lat.append(t1 - t0)
                if t1 > deadline:
                    break
            end = pc()
        finally:
            os.close(fd)
            os.unlink(path)
        p50, p99 = report.percentiles(lat)
        out[mode] = {"ops": len(lat), "value": len(lat) / ((end - start) / 1e9),
                     "p50_ns": p50, "p99_ns": p99}
    return out
