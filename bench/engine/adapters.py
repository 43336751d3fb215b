"""One adapter per engine under test (Strata, sqlite3, LevelDB via plyvel, RocksDB via
rocksdict): the same operations behind one interface."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from itertools import islice
from typing import Any

from bench import report

from .common import SQLITE_COMMIT_EVERY

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
            if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
                stats = dataclasses.asdict(stats)
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
