"""Engine benchmark: Strata's embedded engine against sqlite3, LevelDB and RocksDB.

    python -m bench engine          # N = 1,000,000 keys; writes docs/bench/engine.{md,png,json}
    python -m bench engine --quick  # N = 50,000 and short time caps; under a minute; no docs
    python -m bench engine --json   # only {"workloads": [...]} on stdout
    python -m bench engine --only fillrandom,readrandom-hit --engines strata,plyvel

Method (the same for every engine, in one run):

- Keys are 16 ASCII digits (`b"%016d" % (2 * i)`), values 100 bytes drawn from
  a pool of 4096, each 50 random bytes written twice, so they compress to about
  half, as db_bench's default values do. Misses use the odd numbers, which fall
  between stored keys: a lookup cannot be answered from the key range alone.
- Each engine runs in its own subprocess (so RSS is its own) in a fresh
  directory under the data dir (`--dir`, default `../tmp-bench` beside the
  repository: the same disk as the work tree, never a tmpfs unless asked).
  Engines run one after another, never at the same time.
- Every loop stops at its count or at its time cap, whichever comes first; the
  figures are over the operations actually done (the count is reported).
- ops/s is operations over the wall time of the whole loop, including the
  harness making keys (the same few hundred ns an op for every engine).
  Latency is `perf_counter_ns` around each call: each op for one-by-one
  workloads, each batch for batched fill, each scan for the range scan, each
  acknowledged put (per thread) for synced writes.
- RSS is measured after each workload, with the database still open, and
  includes child processes (an engine may compact in helpers). Disk is `du` of
  the engine's directory at the same moment (preallocated space counts).

Engines and how each workload maps onto them:

- strata: `storage.Engine`; unsynced workloads open with durability="none",
  synced ones with durability="always" (concurrent puts share one fsync).
  After the random fill, `wait_for_compactions()` waits for the compactions
  the fill scheduled; LevelDB and RocksDB get the same: the harness waits
  until their background threads go idle (`wait_until_idle`). With
  `--settle full` every engine compacts its whole key range (`compact_all()`,
  LevelDB/RocksDB `compact_range()`) before the reads.
- sqlite3-normal / sqlite3-full: journal_mode=WAL, synchronous=NORMAL or FULL,
  `CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID`, default page
  cache. "One-by-one" fills execute one INSERT per row but commit every 1000
  rows (a commit per row is a different workload, not a slower engine).
  Batched fill is `executemany` of 1000 rows and one commit. Synced writes use
  FULL with one autocommit INSERT per put and one connection per thread;
  NORMAL does not fsync a commit in WAL mode, so it has no synced figure.
- plyvel (LevelDB): default options, `put(sync=False)`, `write_batch()`;
  synced writes with `put(sync=True)`.
- rocksdict (RocksDB): `Rdict` in raw mode (bytes in, bytes out, no pickling),
  default options; synced writes with `WriteOptions.sync = True`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from abc import ABC, abstractmethod
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from bench import report

KEY_FMT = b"%016d"  # 16-byte keys
VALUE_SIZE = 100
VALUE_POOL = 4096  # distinct values; a power of two so `i & (POOL - 1)` picks one
BATCH_SIZE = 1000
SQLITE_COMMIT_EVERY = 1000
SCAN_LENGTH = 100_000
DEADLINE_CHECK_MASK = 1023  # check the time cap every 1024 ops: a clock read per op is not free

REPO_ROOT = Path(os.path.abspath(__file__)).parent.parent


# ---------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Workload:
    name: str
    unit: str  # "ops/s" (higher is better) or "ms" (lower is better)
    latency: str  # what one latency sample covers
    about: str


WORKLOADS: list[Workload] = [
    Workload("fillrandom", "ops/s", "per put", "one-by-one puts, random key order, unsynced"),
    Workload("fillseq", "ops/s", "per put", "one-by-one puts, ascending keys, unsynced"),
    Workload("fillrandom-batch", "ops/s", "per batch",
             "random key order, batches of 1000, unsynced"),
    Workload("readrandom-hit", "ops/s", "per get",
             "gets of stored keys, random order, after reopen"),
    Workload("readrandom-miss", "ops/s", "per get", "gets of absent keys between stored ones"),
    Workload("scan", "ops/s", "per scan", "range scans of 100k items from a random key (items/s)"),
    Workload("reopen", "ms", "", "close + open + first get of the filled database"),
    Workload("sync-1", "ops/s", "per put",
             "synced puts, 1 writer thread (acknowledged durable puts/s)"),
    Workload("sync-8", "ops/s", "per put", "synced puts, 8 writer threads"),
    Workload("sync-64", "ops/s", "per put", "synced puts, 64 writer threads"),
]
WORKLOAD_BY_NAME = {w.name: w for w in WORKLOADS}
# Workloads that run on the database filled by `fillrandom` (which then runs even if not asked for).
ON_FILLED = ("fillrandom", "readrandom-hit", "readrandom-miss", "scan", "reopen")
SYNC_THREADS = {"sync-1": 1, "sync-8": 8, "sync-64": 64}


@dataclass
class Config:
    """Everything a worker needs; crosses the process boundary as JSON."""

    n: int = 1_000_000
    reads: int = 200_000
    scan_length: int = SCAN_LENGTH
    scan_repeats: int = 10
    fill_seconds: float = 300.0  # cap of each fill loop
    read_seconds: float = 60.0  # cap of each read loop
    scan_seconds: float = 10.0  # cap of all scans together
    sync_seconds: float = 3.0  # length of each synced-writes point
    sync_max_ops: int = 1_000_000  # count cap of each synced-writes point
    seed: int = 20240601
    settle: str = "wait"  # after the random fill: "wait" for scheduled compactions, or "full"
    settle_seconds: float = 120.0  # cap of the wait for peers' background threads to go idle
    fsync_ref_ops: int = 1000  # raw fdatasync reference, taken before each engine's synced points
    fsync_ref_seconds: float = 1.0
    workloads: list[str] = field(default_factory=lambda: [w.name for w in WORKLOADS])
    verbose: bool = True

    @classmethod
    def preset(cls, quick: bool, n: int | None, seconds: float | None) -> Config:
        if quick:
            cfg = cls(
                n=50_000, scan_repeats=3, fill_seconds=4.0, read_seconds=1.5,
                scan_seconds=1.0, sync_seconds=0.5, sync_max_ops=100_000, settle_seconds=5.0,
                fsync_ref_ops=200, fsync_ref_seconds=0.2,
            )
        else:
            cfg = cls()
        if n is not None:
            cfg.n = n
        cfg.reads = min(200_000, max(1_000, cfg.n // 5))
        if seconds is not None:
            cfg.sync_seconds = seconds
        return cfg

    def worker_budget(self) -> float:
        """Seconds a worker may take before it is killed: its caps, twice, plus slack."""
        caps = (
            3 * self.fill_seconds + 2 * self.read_seconds + self.scan_seconds
            + len(SYNC_THREADS) * self.sync_seconds + 2 * self.fsync_ref_seconds
        )
        # opening, settling (Strata's own wait has its own timeout), closing scale with n
        return 2 * caps + self.settle_seconds + 120 + self.n / 5_000


# ---------------------------------------------------------------- engines

Put = Callable[[bytes, bytes], Any]
Get = Callable[[bytes], "bytes | None"]


class Adapter(ABC):
    """One engine behind the handful of calls the workloads make.

    Lifecycle: `open(path, synced)`, calls, `close()`; open again on the same
    path to reopen. `put_fn`/`get_fn` return the engine's bound methods (or the
    thinnest closure possible) so the hot loops pay one call per op.
    `sync_writer()` is called in each writer thread and returns that thread's
    synced put and a function to release what it holds.
    """

    name = ""
    label = ""
    sync_unsupported: str | None = None  # why synced workloads do not apply

    @abstractmethod
    def open(self, path: str, synced: bool) -> None:
        """See the class docstring."""

    @abstractmethod
    def close(self) -> None:
        """See the class docstring."""

    @abstractmethod
    def put_fn(self) -> Put:
        """See the class docstring."""

    @abstractmethod
    def get_fn(self) -> Get:
        """See the class docstring."""

    @abstractmethod
    def write_batch(self, pairs: list[tuple[bytes, bytes]]) -> None:
        """See the class docstring."""

    @abstractmethod
    def scan(self, start: bytes, limit: int) -> int:
        """Read up to limit items in key order from start; return how many were read."""

    @abstractmethod
    def sync_writer(self) -> tuple[Put, Callable[[], None]]:
        """See the class docstring."""

    def settle(self, full: bool, limit: float) -> None:  # noqa: B027 - optional hook
        """After a fill, before reopen: let the engine finish the work the fill left.

        full=False: commit what is pending and wait (up to `limit` seconds) for
        the background flushes and compactions the fill scheduled, so that the
        reads that follow do not compete with them. full=True: also compact
        the whole key range, where the engine can.
        """

    def info(self) -> dict[str, Any]:
        return {}


def wait_until_idle(busy: Callable[[], bool] | None, limit: float) -> float:
    """Sleep until this process's background threads go idle; return the seconds waited.

    The calling thread only sleeps, so CPU time the process uses meanwhile is
    the engine's background work (flushes, compactions). Idle: under 10 % of
    one CPU, and `busy()` false if given, for windows of 0.25 s in a row
    adding up to a tenth of `limit` (at most 1 s). Gives up after `limit` seconds.
    """
    window, threshold = 0.25, 0.10
    quiet_needed = max(1, round(min(1.0, limit / 10) / window))
    t0 = time.monotonic()
    quiet = 0
    while time.monotonic() - t0 < limit and quiet < quiet_needed:
        c0, w0 = time.process_time(), time.monotonic()
        time.sleep(window)
        used, span = time.process_time() - c0, time.monotonic() - w0
        idle = used < threshold * span and (busy is None or not busy())
        quiet = quiet + 1 if idle else 0
    return time.monotonic() - t0


def _count(it: Any, limit: int) -> int:
    n = 0
    for _item in islice(it, limit):
        n += 1
    return n


def _noop() -> None:
    pass


class StrataAdapter(Adapter):
    name = "strata"
    label = "Strata"

    def __init__(self) -> None:
        from strata.storage import Engine  # ImportError marks the engine missing

        self._engine_cls = Engine
        self.db: Any = None
        self.settle_seconds: float | None = None
        self.settle_how = ""

    def open(self, path: str, synced: bool) -> None:
        self.db = self._engine_cls.open(path, durability="always" if synced else "none")

    def close(self) -> None:
        self.db.close()
        self.db = None

    def put_fn(self) -> Put:
        return self.db.put

    def get_fn(self) -> Get:
        return self.db.get

    def write_batch(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self.db.write_batch([("put", k, v) for k, v in pairs])

    def scan(self, start: bytes, limit: int) -> int:
        it = self.db.scan(start=start)
        try:
            return _count(it, limit)
        finally:
            it.close()  # the iterator pins files until closed

    def sync_writer(self) -> tuple[Put, Callable[[], None]]:
        return self.db.put, _noop

    def settle(self, full: bool, limit: float) -> None:
        # Waiting for the compactions the fill scheduled is what the peers' reads get too
        # (they compact in the background meanwhile); compact_all() merges everything.
        del limit  # the engine's own wait has its own timeout
        how = "compact_all" if full else "wait_for_compactions"
        fn = getattr(self.db, how, None)
        if fn is None:
            how = "compact_all"
            fn = getattr(self.db, how, None)
        if fn is not None:
            t0 = time.perf_counter()
            fn()
            self.settle_seconds = time.perf_counter() - t0
            self.settle_how = how

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": report.package_version("strata")}
        if self.settle_seconds is not None:
            out["settle"] = self.settle_how
            out["settle_seconds"] = round(self.settle_seconds, 3)
        if self.db is None:
            return out
        try:  # information only: a failure here must not cost the figures
            stats = getattr(self.db, "stats", None)
            if callable(stats):
                stats = stats()
            if stats is not None:
                out["stats"] = json.loads(json.dumps(stats, default=str))
            levels = getattr(self.db, "levels", None)
            if callable(levels):
                out["levels"] = json.loads(json.dumps(levels(), default=str))
        except Exception as exc:
            out["stats_error"] = repr(exc)
        return out


class SqliteAdapter(Adapter):
    """sqlite3 in WAL mode; `synchronous` is NORMAL or FULL."""

    TABLE = "CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID"
    UPSERT = "INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)"
    SELECT = "SELECT v FROM kv WHERE k = ?"
    RANGE = "SELECT k, v FROM kv WHERE k >= ? ORDER BY k LIMIT ?"

    def __init__(self, synchronous: str) -> None:
        import sqlite3

        self.sqlite3 = sqlite3
        self.synchronous = synchronous
        self.name = f"sqlite3-{synchronous.lower()}"
        self.label = f"sqlite3 WAL {synchronous}"
        if synchronous != "FULL":
            self.sync_unsupported = "synchronous=NORMAL does not fsync commits in WAL mode"
        self.file = ""
        self.conn: Any = None

    def _connect(self, autocommit: bool) -> Any:
        conn = self.sqlite3.connect(
            self.file, timeout=60.0, isolation_level=None if autocommit else "",
            check_same_thread=False,
        )
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        return conn

    def open(self, path: str, synced: bool) -> None:
        os.makedirs(path, exist_ok=True)
        self.file = os.path.join(path, "kv.sqlite")
        self.conn = self._connect(autocommit=False)
        self.conn.execute(self.TABLE)
        self.conn.commit()

    def close(self) -> None:
        self.conn.commit()
        self.conn.close()
        self.conn = None

    def put_fn(self) -> Put:
        execute, commit, sql = self.conn.execute, self.conn.commit, self.UPSERT
        pending = 0

        def put(k: bytes, v: bytes) -> None:
            nonlocal pending
            execute(sql, (k, v))
            pending += 1
            if pending == SQLITE_COMMIT_EVERY:
                commit()
                pending = 0

        return put

    def get_fn(self) -> Get:
        execute, sql = self.conn.execute, self.SELECT

        def get(k: bytes) -> bytes | None:
            row = execute(sql, (k,)).fetchone()
            return None if row is None else row[0]

        return get

    def write_batch(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self.conn.executemany(self.UPSERT, pairs)
        self.conn.commit()

    def scan(self, start: bytes, limit: int) -> int:
        return _count(self.conn.execute(self.RANGE, (start, limit)), limit)

    def sync_writer(self) -> tuple[Put, Callable[[], None]]:
        conn = self._connect(autocommit=True)  # one connection per thread
        execute, sql = conn.execute, self.UPSERT

        def put(k: bytes, v: bytes) -> None:
            execute(sql, (k, v))

        return put, conn.close

    def settle(self, full: bool, limit: float) -> None:
        self.conn.commit()  # a B-tree updated in place: nothing to compact

    def info(self) -> dict[str, Any]:
        return {"version": self.sqlite3.sqlite_version}


class PlyvelAdapter(Adapter):
    name = "plyvel"
    label = "LevelDB (plyvel)"

    def __init__(self) -> None:
        import plyvel

        self.plyvel = plyvel
        self.db: Any = None

    def open(self, path: str, synced: bool) -> None:
        self.db = self.plyvel.DB(path, create_if_missing=True)

    def close(self) -> None:
        self.db.close()
        self.db = None

    def put_fn(self) -> Put:
        return self.db.put

    def get_fn(self) -> Get:
        return self.db.get

    def settle(self, full: bool, limit: float) -> None:
        if full:
            self.db.compact_range()
        # LevelDB has no "compaction pending" property: wait for its thread to go idle.
        wait_until_idle(None, limit)

    def levels(self) -> list[int]:
        return [int(self.db.get_property(b"leveldb.num-files-at-level%d" % i) or 0)
                for i in range(7)]

    def write_batch(self, pairs: list[tuple[bytes, bytes]]) -> None:
        with self.db.write_batch() as wb:
            put = wb.put
            for k, v in pairs:
                put(k, v)

    def scan(self, start: bytes, limit: int) -> int:
        it = self.db.iterator(start=start)
        try:
            return _count(it, limit)
        finally:
            it.close()

    def sync_writer(self) -> tuple[Put, Callable[[], None]]:
        db_put = self.db.put

        def put(k: bytes, v: bytes) -> None:
            db_put(k, v, sync=True)

        return put, _noop

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.plyvel.__version__}
        if self.db is not None:
            out["files_per_level"] = self.levels()
        return out


class RocksdictAdapter(Adapter):
    name = "rocksdict"
    label = "RocksDB (rocksdict)"

    def __init__(self) -> None:
        import rocksdict

        self.rocksdict = rocksdict
        self.db: Any = None

    def open(self, path: str, synced: bool) -> None:
        rd = self.rocksdict
        self.db = rd.Rdict(path, options=rd.Options(raw_mode=True))
        self.sync_opts = rd.WriteOptions()
        self.sync_opts.sync = True

    def close(self) -> None:
        self.db.close()
        self.db = None

    def put_fn(self) -> Put:
        return self.db.put

    def get_fn(self) -> Get:
        return self.db.get

    def settle(self, full: bool, limit: float) -> None:
        if full:
            self.db.compact_range(None, None)
        wait_until_idle(self._busy, limit)

    _BUSY = ("rocksdb.compaction-pending", "rocksdb.num-running-compactions",
             "rocksdb.num-running-flushes", "rocksdb.mem-table-flush-pending")

    def _busy(self) -> bool:
        return any(self.db.property_int_value(p) for p in self._BUSY)

    def write_batch(self, pairs: list[tuple[bytes, bytes]]) -> None:
        wb = self.rocksdict.WriteBatch(raw_mode=True)
        put = wb.put
        for k, v in pairs:
            put(k, v)
        self.db.write(wb)

    def scan(self, start: bytes, limit: int) -> int:
        return _count(self.db.items(from_key=start), limit)

    def sync_writer(self) -> tuple[Put, Callable[[], None]]:
        db_put, opts = self.db.put, self.sync_opts

        def put(k: bytes, v: bytes) -> None:
            db_put(k, v, opts)

        return put, _noop

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": report.package_version("rocksdict")}
        if self.db is not None:
            out["files_per_level"] = [
                self.db.property_int_value(f"rocksdb.num-files-at-level{i}") for i in range(7)]
        return out


ENGINES: dict[str, Callable[[], Adapter]] = {
    "strata": StrataAdapter,
    "sqlite3-normal": lambda: SqliteAdapter("NORMAL"),
    "sqlite3-full": lambda: SqliteAdapter("FULL"),
    "plyvel": PlyvelAdapter,
    "rocksdict": RocksdictAdapter,
}
LABELS = {
    "strata": "Strata",
    "sqlite3-normal": "sqlite3 NORMAL",
    "sqlite3-full": "sqlite3 FULL",
    "plyvel": "LevelDB (plyvel)",
    "rocksdict": "RocksDB (rocksdict)",
}
SHORT = {  # column headers of the summary table
    "strata": "Strata",
    "sqlite3-normal": "sqlite N",
    "sqlite3-full": "sqlite F",
    "plyvel": "LevelDB",
    "rocksdict": "RocksDB",
}
BASELINE = "plyvel"  # the chart normalises to it


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


def _values(seed: int) -> list[bytes]:
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


# ---------------------------------------------------------------- worker (one engine, one process)


def _log(cfg: Config, engine: str, msg: str) -> None:
    if cfg.verbose:
        print(f"[{engine}] {msg}", file=sys.stderr, flush=True)


def _safe_rss() -> int | None:
    try:
        return report.process_rss()
    except Exception:
        return None


def _record(m: Measured, unit: str, path: str) -> dict[str, Any]:
    p50, p99 = report.percentiles(m.latencies)
    seconds = m.elapsed_ns / 1e9
    disk, apparent = report.disk_usage(path)
    return {
        "value": (m.ops / seconds) if seconds > 0 and m.ops else None,
        "unit": unit,
        "ops": m.ops,
        "seconds": round(seconds, 4),
        "p50_ns": p50,
        "p99_ns": p99,
        "rss": _safe_rss(),
        "disk": disk,
        "disk_apparent": apparent,
        **m.extra,
    }


def run_engine(name: str, cfg: Config, workdir: str) -> dict[str, Any]:
    """Run the selected workloads on one engine; return its results (JSON-able).

    Never raises for a failing workload: the failure is recorded in its slot and
    the rest go on (those that depend on a failed fill are marked too).
    """
    try:
        adapter = ENGINES[name]()
    except ImportError as exc:
        return {"engine": name, "missing": f"ImportError: {exc}"}

    selected = set(cfg.workloads)
    results: dict[str, dict[str, Any]] = {}
    info: dict[str, Any] = {}
    vals = _values(cfg.seed)
    n = cfg.n
    rng = random.Random(cfg.seed)
    order = array("q", range(n))
    rng.shuffle(order)
    info["rss_before_open"] = _safe_rss()
    log = lambda msg: _log(cfg, name, msg)  # noqa: E731

    def fail(names: list[str], exc: BaseException) -> None:
        msg = f"{type(exc).__name__}: {exc}"
        # Said even when quiet: a null in the summary needs its reason somewhere.
        print(f"[{name}] error in {', '.join(names)}: {msg}\n{traceback.format_exc()}",
              file=sys.stderr, flush=True)
        for wl in names:
            if wl in selected and wl not in results:
                results[wl] = {"error": msg}

    def fresh(tag: str) -> str:
        path = os.path.join(workdir, tag)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        return path

    def done_with(path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def note(wl: str, rec: dict[str, Any]) -> None:
        if wl in selected:
            results[wl] = rec
            val = rec.get("value")
            if val is None:
                shown = "-"
            elif rec["unit"] == "ops/s":
                shown = report.fmt_rate(val) + " ops/s"
            else:
                shown = f"{val:.1f} {rec['unit']}"
            log(f"{wl}: {shown}  ops={rec.get('ops', '-')}  p50={report.fmt_ns(rec.get('p50_ns'))}"
                f"  p99={report.fmt_ns(rec.get('p99_ns'))}")

    # -- the random fill, then everything that reads it
    if selected & set(ON_FILLED):
        path = fresh("filled")
        opened = False
        try:
            adapter.open(path, synced=False)
            opened = True
            m = fill_one_by_one(adapter.put_fn(), order, n, vals, cfg.fill_seconds)
            note("fillrandom", _record(m, "ops/s", path))
            loaded = m.ops
            t_settle = time.perf_counter()
            adapter.settle(cfg.settle == "full", cfg.settle_seconds)
            info["settle_seconds"] = round(time.perf_counter() - t_settle, 3)

            t0 = time.perf_counter_ns()
            adapter.close()
            opened = False
            t1 = time.perf_counter_ns()
            adapter.open(path, synced=False)
            opened = True
            t2 = time.perf_counter_ns()
            first = adapter.get_fn()(KEY_FMT % (order[0] << 1))
            t3 = time.perf_counter_ns()
            disk, apparent = report.disk_usage(path)
            rec = {
                "value": (t3 - t0) / 1e6, "unit": "ms", "ops": 1,
                "close_ms": round((t1 - t0) / 1e6, 3), "open_ms": round((t2 - t1) / 1e6, 3),
                "first_get_ms": round((t3 - t2) / 1e6, 3),
                "rss": _safe_rss(), "disk": disk, "disk_apparent": apparent,
            }
            if first is None:
                rec["wrong_answers"] = "the first key written was not found after reopen"
            note("reopen", rec)

            reads = cfg.reads
            hit_ints = array("q", ((order[rng.randrange(loaded)] << 1) for _ in range(reads)))
            miss_ints = array("q", (((rng.randrange(n) << 1) | 1) for _ in range(reads)))
            # A fast wrong answer is no figure: every hit must be found, no miss may be.
            if "readrandom-hit" in selected:
                m = read_random(adapter.get_fn(), hit_ints, cfg.read_seconds)
                rec = _record(m, "ops/s", path)
                if m.extra["absent"]:
                    rec["wrong_answers"] = f"{m.extra['absent']} stored keys not found"
                note("readrandom-hit", rec)
            if "readrandom-miss" in selected:
                m = read_random(adapter.get_fn(), miss_ints, cfg.read_seconds)
                rec = _record(m, "ops/s", path)
                if m.extra["found"]:
                    rec["wrong_answers"] = f"{m.extra['found']} absent keys found"
                note("readrandom-miss", rec)
            if "scan" in selected:
                length = min(cfg.scan_length, loaded)
                # start low enough that `length` items follow: keys are 2*i for i < n
                starts = [KEY_FMT % (rng.randrange(max(1, n - length)) << 1)
                          for _ in range(cfg.scan_repeats)]
                m = scan_ranges(adapter, starts, length, cfg.scan_seconds)
                note("scan", _record(m, "ops/s", path))
            info["filled"] = adapter.info()
        except Exception as exc:
            fail(list(ON_FILLED), exc)
        finally:
            if opened:
                try:
                    adapter.close()
                except Exception as exc:
                    log(f"close failed: {exc!r}")
            done_with(path)

    # -- ascending fill on a fresh database
    if "fillseq" in selected:
        path = fresh("seq")
        try:
            adapter.open(path, synced=False)
            try:
                m = fill_one_by_one(adapter.put_fn(), range(n), n, vals, cfg.fill_seconds)
                note("fillseq", _record(m, "ops/s", path))
            finally:
                adapter.close()
        except Exception as exc:
            fail(["fillseq"], exc)
        done_with(path)

    # -- batched random fill on a fresh database
    if "fillrandom-batch" in selected:
        path = fresh("batch")
        try:
            adapter.open(path, synced=False)
            try:
                m = fill_batched(adapter.write_batch, order, n, vals, cfg.fill_seconds)
                note("fillrandom-batch", _record(m, "ops/s", path))
            finally:
                adapter.close()
        except Exception as exc:
            fail(["fillrandom-batch"], exc)
        done_with(path)

    # -- synced writes: one fresh database, one point per thread count
    points = [w for w in SYNC_THREADS if w in selected]
    if points and adapter.sync_unsupported:
        for wl in points:
            results[wl] = {"na": adapter.sync_unsupported}
    elif points:
        path = fresh("sync")
        try:
            # The disk's own figure, taken just before this engine's synced writes, so that
            # load from elsewhere shifts both alike.
            info["fdatasync"] = fdatasync_reference(path, cfg.fsync_ref_ops,
                                                    cfg.fsync_ref_seconds)
            adapter.open(path, synced=True)
            try:
                for idx, wl in enumerate(points):
                    key_base = (idx + 1) * 10**13
                    m = synced_writes(adapter, SYNC_THREADS[wl], cfg.sync_seconds, cfg.sync_max_ops,
                                      key_base, vals)
                    rec = _record(m, "ops/s", path)
                    if m.extra.get("error_count") and not m.ops:
                        rec["value"] = None
                    note(wl, rec)
                info["synced"] = adapter.info()
            finally:
                adapter.close()
        except Exception as exc:
            fail(points, exc)
        done_with(path)

    return {"engine": name, "label": adapter.label, "workloads": results, "info": info}


def _worker_cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.engine",
                                description="internal: one engine's run")
    p.add_argument("--worker", required=True, choices=sorted(ENGINES))
    p.add_argument("--config", required=True, help="Config as JSON")
    p.add_argument("--workdir", required=True)
    p.add_argument("--result", required=True, help="file to write the result JSON to")
    a = p.parse_args(argv)
    cfg = Config(**json.loads(a.config))
    res = run_engine(a.worker, cfg, a.workdir)
    tmp = a.result + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(res, f)
    os.replace(tmp, a.result)
    return 0


# ---------------------------------------------------------------- parent: orchestrate, report


def run_worker(name: str, cfg: Config, workdir: str) -> dict[str, Any]:
    """Run one engine in a child process; its stdout and stderr go to our stderr."""
    os.makedirs(workdir, exist_ok=True)
    result_file = os.path.join(workdir, "result.json")
    cmd = [
        sys.executable, "-m", "bench.engine", "--worker", name,
        "--config", json.dumps(asdict(cfg)), "--workdir", workdir, "--result", result_file,
    ]
    env = dict(os.environ)
    paths = [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    budget = cfg.worker_budget()
    try:  # the child's stdout goes to our stderr: our stdout may be carrying --json
        err: Any = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        err = subprocess.DEVNULL
    # Own session so a timeout can end the child and any helpers it started, and only those.
    proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), env=env, stdout=err, stderr=err,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        rc = proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return {"engine": name, "error": f"killed after {budget:.0f} s (worker budget)"}
    except BaseException:  # Ctrl-C: the child is in its own session and did not get the signal
        _kill_group(proc)
        raise
    if os.path.exists(result_file):
        with open(result_file, encoding="utf-8") as f:
            return json.load(f)
    return {"engine": name, "error": f"worker exited with status {rc} and no result"}


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


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


def _default_data_dir() -> str:
    return os.environ.get("STRATA_BENCH_DIR") or str(REPO_ROOT.parent / "tmp-bench")


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench engine",
        description="Strata's embedded engine against sqlite3, LevelDB (plyvel) and RocksDB "
                    "(rocksdict): the same workloads, one run, ratios printed.",
    )
    p.add_argument("--n", type=int, default=None,
                   help="keys to load (default 1,000,000; quick 50,000)")
    p.add_argument("--quick", action="store_true",
                   help="N=50,000 and short time caps (under a minute); "
                        "writes no docs unless --docs")
    p.add_argument("--json", action="store_true",
                   help='print only {"workloads": [...]} on stdout; writes no docs unless --docs')
    p.add_argument("--dir", default=None,
                   help="data dir, on the disk to measure "
                        "(default $STRATA_BENCH_DIR or ../tmp-bench beside the repository)")
    p.add_argument("--only", default=None,
                   help="comma-separated workloads: " + ",".join(WORKLOAD_BY_NAME))
    p.add_argument("--engines", default=None, help="comma-separated engines: " + ",".join(ENGINES))
    p.add_argument("--seconds", type=float, default=None,
                   help="length of each synced-writes point (default 3; quick 0.5)")
    p.add_argument("--settle", choices=("wait", "full"), default="wait",
                   help="before the reads: 'wait' = every engine finishes the flushes and "
                        "compactions its fill scheduled (default); 'full' = every engine "
                        "compacts its whole key range")
    p.add_argument("--docs", default=None,
                   help="write engine.md/.png/.json into this dir "
                        "(default docs/bench on full runs)")
    p.add_argument("--no-docs", action="store_true", help="write no docs")
    p.add_argument("--keep", action="store_true", help="keep the run's data dir")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    return p.parse_args(argv)


def _split(value: str | None, known: dict[str, Any], what: str) -> list[str]:
    if value is None:
        return list(known)
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in names if v not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return [k for k in known if k in names]  # canonical order


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    cfg = Config.preset(args.quick, args.n, args.seconds)
    cfg.workloads = _split(args.only, WORKLOAD_BY_NAME, "workload")
    cfg.verbose = not args.quiet
    cfg.settle = args.settle
    engines = _split(args.engines, ENGINES, "engine")
    if cfg.n < 1:
        raise SystemExit("--n must be at least 1")

    data_root = os.path.abspath(args.dir or _default_data_dir())
    os.makedirs(data_root, exist_ok=True)
    run_dir = tempfile.mkdtemp(prefix="engine-", dir=data_root)
    load_start = _loadavg()
    if load_start is not None and load_start > 1.0:
        print(f"warning: 1-minute load average is {load_start:.2f}: other processes compete for "
              "the CPUs and the disk, and the figures will show it", file=sys.stderr, flush=True)
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in engines:
            if cfg.verbose:
                print(f"== {name}", file=sys.stderr, flush=True)
            results[name] = res = run_worker(name, cfg, os.path.join(run_dir, name))
            why = res.get("missing") or res.get("error")
            if why:  # said even with --quiet: a silent null in the JSON explains nothing
                print(f"[{name}] no figures: {why}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted; nothing written", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    wall = time.perf_counter() - started

    machine = report.machine_info(
        data_root,
        ["strata", "plyvel", "rocksdict", "msgpack", "crc32c", "mmh3", "sortedcontainers",
         "matplotlib", "psutil"],
    )
    machine["sqlite"] = _sqlite_version()
    machine["strata_revision"] = report.git_revision(REPO_ROOT)
    machine["loadavg_start"] = load_start
    machine["loadavg_end"] = _loadavg()
    run = {
        "config": asdict(cfg), "engines": engines, "results": results,
        "machine": machine, "wall_seconds": round(wall, 1), "quick": args.quick,
    }

    report.publish(run, args, "engine", summary_json, render_text, write_docs, cfg.verbose)
    return 0


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _sqlite_version() -> str | None:
    try:
        import sqlite3

        return sqlite3.sqlite_version
    except ImportError:
        return None


# ---------------------------------------------------------------- summaries


def _value(run: dict[str, Any], engine: str, workload: str) -> float | None:
    res = run["results"].get(engine, {})
    rec = res.get("workloads", {}).get(workload, {})
    val = rec.get("value")
    return float(val) if isinstance(val, (int, float)) else None


def _status(run: dict[str, Any], engine: str, workload: str) -> str:
    """Why a figure is absent: 'missing', 'n/a', 'error', or '' if present."""
    res = run["results"].get(engine, {})
    if "missing" in res:
        return "missing"
    if "error" in res:
        return "error"
    rec = res.get("workloads", {}).get(workload, {})
    if "na" in rec:
        return "n/a"
    if "error" in rec:
        return "error"
    return "" if rec.get("value") is not None else "-"


def summary_json(run: dict[str, Any]) -> dict[str, Any]:
    """The --json document: one entry per workload; null where an engine has no figure."""
    peers = [e for e in run["engines"] if e != "strata"]
    out = []
    for wl in run["config"]["workloads"]:
        unit = WORKLOAD_BY_NAME[wl].unit

        def rounded(v: float | None, unit: str = unit) -> float | None:
            return None if v is None else round(v, 3 if unit == "ms" else 1)

        out.append({
            "name": wl,
            "unit": unit,
            "strata": rounded(_value(run, "strata", wl)) if "strata" in run["engines"] else None,
            "peers": {p: rounded(_value(run, p, wl)) for p in peers},
        })
    return {"workloads": out}


def _ratio(run: dict[str, Any], workload: str, peer: str) -> float | None:
    s, p = _value(run, "strata", workload), _value(run, peer, workload)
    if s is None or p is None or p == 0:
        return None
    return s / p


def _cell_value(run: dict[str, Any], engine: str, wl: str) -> str:
    v = _value(run, engine, wl)
    if v is None:
        return _status(run, engine, wl) or "-"
    return report.fmt_rate(v) if WORKLOAD_BY_NAME[wl].unit == "ops/s" else f"{v:.1f} ms"


def summary_rows(run: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    engines = run["engines"]
    peers = [e for e in engines if e != "strata"]
    headers = ["workload", "unit"] + [SHORT[e] for e in engines]
    if "strata" in engines:
        headers += [f"S/{SHORT[p]}" for p in peers]
    rows = []
    for wl in run["config"]["workloads"]:
        unit = WORKLOAD_BY_NAME[wl].unit
        row = [wl, unit if unit == "ops/s" else f"{unit} (lower is better)"]
        row += [_cell_value(run, e, wl) for e in engines]
        if "strata" in engines:
            row += [report.fmt_ratio(_ratio(run, wl, p)) for p in peers]
        rows.append(row)
    return headers, rows


def detail_rows(run: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """Rows of (workload, engine) and the footnotes saying why a figure is absent."""
    headers = ["workload", "engine", "ops", "ops/s", "p50", "p99", "RSS", "disk", "Strata/this"]
    rows = []
    notes: list[str] = []
    for wl in run["config"]["workloads"]:
        for e in run["engines"]:
            res = run["results"].get(e, {})
            rec = res.get("workloads", {}).get(wl, {})
            status = _status(run, e, wl)
            if status and status != "-":
                reason = (res.get("missing") or res.get("error") or rec.get("na")
                          or rec.get("error") or "")
                note = f"{LABELS[e]}: {status}: {reason}"
                if note not in notes:
                    notes.append(note)
                rows.append([wl, LABELS[e], "", status, "", "", "", "", ""])
                continue
            shown = _cell_value(run, e, wl)
            ratio = "" if e == "strata" else report.fmt_ratio(_ratio(run, wl, e))
            if rec.get("wrong_answers"):
                notes.append(f"{LABELS[e]}: {wl}: WRONG ANSWERS: {rec['wrong_answers']}")
                shown += " (!)"
            if rec.get("capped"):
                notes.append(f"{LABELS[e]}: {wl}: stopped at the time cap after {rec['ops']:,} ops")
            if rec.get("error_count"):
                notes.append(f"{LABELS[e]}: {wl}: {rec['error_count']} writer errors, "
                             f"first: {rec['errors'][0]}")
            rows.append([
                wl, LABELS[e], f"{rec.get('ops', 0):,}", shown,
                report.fmt_ns(rec.get("p50_ns")), report.fmt_ns(rec.get("p99_ns")),
                report.fmt_bytes(rec.get("rss")), report.fmt_bytes(rec.get("disk")), ratio,
            ])
    return headers, rows, notes


def fsync_rows(run: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Lone synced put (sync-1) p50 of each engine against raw fdatasync p50 taken just before."""
    headers = ["engine", "sync-1 p50", "fdatasync p50 (append)", "(preallocated)",
               "put / append", "put / prealloc"]
    rows = []
    for e in run["engines"]:
        res = run["results"].get(e, {})
        ref = res.get("info", {}).get("fdatasync") or {}
        put = res.get("workloads", {}).get("sync-1", {}).get("p50_ns")
        app = ref.get("append", {}).get("p50_ns")
        pre = ref.get("preallocated", {}).get("p50_ns")
        if not (put or app):
            continue
        rows.append([
            LABELS[e], report.fmt_ns(put), report.fmt_ns(app), report.fmt_ns(pre),
            report.fmt_ratio(put / app if put and app else None),
            report.fmt_ratio(put / pre if put and pre else None),
        ])
    return headers, rows


def _baseline_lines(run: dict[str, Any]) -> list[str]:
    parts = []
    for e in run["engines"]:
        rss = run["results"].get(e, {}).get("info", {}).get("rss_before_open")
        if rss:
            parts.append(f"{SHORT[e]} {report.fmt_bytes(rss)}")
    if not parts:
        return []
    return ["RSS of each worker before opening its engine (interpreter, library, key order, "
            "no database): " + ", ".join(parts)]


def _settle_times(run: dict[str, Any]) -> str:
    parts = []
    for e in run["engines"]:
        secs = run["results"].get(e, {}).get("info", {}).get("settle_seconds")
        if secs is not None:
            parts.append(f"{SHORT[e]} {secs:.2f} s")
    return f" Settling took: {', '.join(parts)}." if parts else ""


def _params_line(run: dict[str, Any]) -> str:
    c = run["config"]
    return (f"N={c['n']:,} keys (16 B keys, 100 B values), reads={c['reads']:,} per read workload, "
            f"up to {c['scan_repeats']} scans of min({c['scan_length']:,}, loaded) items, "
            f"synced points of {c['sync_seconds']:g} s; "
            f"caps: fill {c['fill_seconds']:g} s, read {c['read_seconds']:g} s"
            + f"; settle={c.get('settle', 'wait')}" + ("; --quick" if run["quick"] else ""))


def render_text(run: dict[str, Any]) -> str:
    out = [_params_line(run), ""]
    h, rows = summary_rows(run)
    out += ["Summary (ratio = Strata / peer; for ops/s above 1 means Strata is faster)",
            report.text_table(h, rows, "ll" + "r" * (len(h) - 2)), ""]
    h, rows, notes = detail_rows(run)
    out += ["Detail (latency: per op; per batch of 1000 for fillrandom-batch; per scan for scan)",
            report.text_table(h, rows, "ll" + "r" * (len(h) - 2))]
    out += notes + _baseline_lines(run)
    h, rows = fsync_rows(run)
    if rows:
        out += ["", "Lone synced put vs raw 4 KiB write + fdatasync on the same disk, "
                "measured just before each engine's synced writes",
                report.text_table(h, rows)]
    out += ["", f"wall time {run['wall_seconds']} s"]
    return "\n".join(out)


def write_docs(run: dict[str, Any], docs_dir: Path) -> None:
    docs_dir.mkdir(parents=True, exist_ok=True)
    chart = docs_dir / "engine.png"
    try:
        draw_chart(run, chart)
        has_chart = True
    except Exception as exc:  # a chart is a convenience; the table is the record
        print(f"chart not drawn: {exc!r}", file=sys.stderr)
        has_chart = False
    (docs_dir / "engine.md").write_text(render_markdown(run, has_chart), encoding="utf-8")
    raw = json.dumps(run, indent=1, default=str) + "\n"
    (docs_dir / "engine.json").write_text(raw, encoding="utf-8")


def draw_chart(run: dict[str, Any], path: Path) -> None:
    wls = [w for w in run["config"]["workloads"] if WORKLOAD_BY_NAME[w].unit == "ops/s"]
    engines = [e for e in run["engines"] if "missing" not in run["results"].get(e, {})]
    base_ok = BASELINE in engines and all(_value(run, BASELINE, w) for w in wls)
    series: dict[str, list[float | None]] = {}
    for e in engines:
        vals = []
        for w in wls:
            v = _value(run, e, w)
            if v is not None and base_ok:
                v = v / (_value(run, BASELINE, w) or 1)
            vals.append(v)
        series[LABELS[e]] = vals
    c = run["config"]
    title = f"Strata engine vs peers, N={c['n']:,} (16 B keys, 100 B values)"
    if base_ok:
        report.bar_chart(path, wls, series, title=title, ylabel="ops/s relative to LevelDB (log)",
                         reference_line=1.0)
    else:
        report.bar_chart(path, wls, series, title=title, ylabel="ops/s (log)")


def render_markdown(run: dict[str, Any], has_chart: bool) -> str:
    m = run["machine"]
    c = run["config"]
    lines = [
        "# Engine benchmark: Strata vs sqlite3, LevelDB, RocksDB",
        "",
        f"Generated by `python -m bench engine{' --quick' if run['quick'] else ''}` on {m['date']} "
        f"(Strata revision {m['strata_revision']}); the run took {run['wall_seconds']} s. "
        "Every engine ran the same workloads in the same run; ratios are Strata / peer. "
        "Absolute numbers move between machines, the ratios much less.",
        "",
        _params_line(run) + ".",
        "",
        "## Summary",
        "",
        "ops/s (items/s for `scan`); `reopen` in ms, lower is better. For ops/s a ratio above "
        "1 means Strata is faster. `n/a`: the workload has no meaning for that engine "
        "(sqlite3 NORMAL does not fsync commits); `missing`: the library is not installed.",
        "",
    ]
    h, rows = summary_rows(run)
    lines += [report.markdown_table(h, rows, "ll" + "r" * (len(h) - 2)), ""]
    if has_chart:
        lines += ["![ops/s relative to LevelDB](engine.png)", ""]
    lines += ["## Detail", "",
              "Latency percentiles are nearest-rank over every sample: per op, per batch of 1000 "
              "for `fillrandom-batch`, per scan for `scan`, per acknowledged put (all threads) for "
              "`sync-*`. RSS is the process (and its children) after the workload with the "
              "database open; disk is `du` of the database directory at that moment (allocated "
              "bytes: preallocated log space counts in full; `engine.json` also has the apparent "
              "size as `disk_apparent`).", ""]
    h, rows, notes = detail_rows(run)
    lines += [report.markdown_table(h, rows, "ll" + "r" * (len(h) - 2)), ""]
    extra = notes + _baseline_lines(run)
    if extra:
        lines += [f"- {x}" for x in extra] + [""]
    h, rows = fsync_rows(run)
    if rows:
        lines += [
            "## Synced writes against the disk", "",
            "A lone synced put (`sync-1` p50) against a raw 4 KiB `pwrite` + `fdatasync` on the "
            "same disk, measured in each engine's worker just before its synced writes (so load "
            "from elsewhere shifts both alike): appending to a new file, and overwriting space "
            "preallocated with `posix_fallocate` (no file-size change to journal).", "",
            report.markdown_table(h, rows), "",
        ]
    lines += ["## Workloads", ""]
    for wl in c["workloads"]:
        w = WORKLOAD_BY_NAME[wl]
        lines.append(f"- `{wl}`: {w.about}.")
    lines += ["", "## Method", ""]
    lines += [
        "- Keys `b\"%016d\" % (2*i)`; values 100 bytes from a pool of 4096, each 50 random bytes "
        "twice: they compress to about half, as db_bench's do (LevelDB and RocksDB compress "
        "blocks with snappy by default, which shows in their disk column). Misses use odd "
        "numbers, between stored keys.",
        "- Each engine runs in its own subprocess, one engine at a time, in a fresh directory "
        f"on the measured disk ({m['data_dir_fs']}).",
        "- Every loop stops at its count or its time cap; figures are over the ops done (the "
        "`ops` column). ops/s is over the whole loop's wall time including making keys, which "
        "costs every engine the same.",
        "- Reads run after `fillrandom` on the same database, after close and reopen. "
        + ("Before closing, every engine compacted its whole key range (`--settle full`: Strata "
           "`compact_all()`, LevelDB and RocksDB `compact_range()`; sqlite3 has nothing to "
           "compact)." if c.get("settle") == "full" else
           "Before closing, each engine finishes the flushes and compactions its fill "
           "scheduled, so the reads do not compete with them: Strata "
           "`wait_for_compactions()`; LevelDB and RocksDB until their background threads go "
           "idle (process CPU under 10 % for 1 s while the caller sleeps; RocksDB also until "
           "its compaction-pending and running-job properties read 0). `--settle full` "
           "compacts the whole key range on every engine instead.")
        + _settle_times(run),
        "- Unsynced workloads: Strata `durability=\"none\"`, plyvel `sync=False`, rocksdict "
        "default write options. sqlite3 executes one INSERT per row and commits every "
        f"{SQLITE_COMMIT_EVERY} rows (a commit per row would measure commits, not the engine); "
        "batched fill is `executemany` + one commit per batch.",
        "- Synced writes: Strata `durability=\"always\"` (group commit), plyvel "
        "`put(sync=True)`, rocksdict `WriteOptions.sync=True`, sqlite3 FULL with one "
        "autocommit INSERT per put and one connection per thread. Each writer puts its own "
        "keys; all start at a barrier; ops/s counts acknowledged puts over the point's wall time.",
        "- Default options everywhere else (memtable / write buffer, caches, sqlite page cache).",
        "- Python bindings decide what threads can do: plyvel releases the GIL during a "
        "write, so LevelDB sees concurrent writers and groups their syncs; rocksdict appears "
        "to hold it (a thread spinning in Python stalls while a synced put runs, and its "
        "sync-8/sync-64 figures stay at its sync-1 figure), so its writers take turns.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu_model']}, {m['cpu_count']} logical CPUs ({m['cpus_usable']} usable)",
        f"- Memory: {report.fmt_bytes(m['memory'])}",
        f"- OS: {m['platform']}",
        f"- Python: {m['python']}",
        f"- Data dir: {m['data_dir_fs']}",
        f"- 1-minute load average at start / end: {m.get('loadavg_start')} / "
        f"{m.get('loadavg_end')} (above ~0.5, other processes were competing for the CPUs)",
        f"- sqlite {m['sqlite']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
        "",
        "Raw figures (every field, per engine and workload) are in `engine.json` beside this page. "
        "Reproduce with `python -m bench engine` from the repository root; `--quick` for a smoke "
        "run, `--help` for options.",
        "",
    ]
    missing = {e: r.get("missing") or r.get("error") for e, r in run["results"].items()
               if r.get("missing") or r.get("error")}
    if missing:
        lines += ["## Engines without figures", ""]
        lines += [f"- {LABELS[e]}: {why}" for e, why in missing.items()] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(_worker_cli())
