"""Block compression: bytes on disk and what each codec costs writes and reads,
Strata beside LevelDB (snappy, its default) and RocksDB, in one run.

    python -m bench compression              # N = 300,000; writes docs/bench/compression.md
    python -m bench compression --quick      # N = 30,000; no docs
    python -m bench compression --json       # the figures as JSON on stdout

For each value set and each engine configuration, in a fresh directory:
fill N keys (16 B) with 100-byte values in batches of 1000, in random order,
unsynced; compact the whole key range (Strata `compact_all`, LevelDB and
RocksDB `compact_range`), so every byte sits in settled tables; measure the
table files' bytes (`*.sst`, `*.ldb`: logs and manifests excluded); then
random gets of stored keys and one full scan. Block caches are 8 MiB for
every engine, smaller than the data, so reads decompress blocks as a cold
cache would. Value sets: `text` (words of a small vocabulary: compresses
about 2-3x, like JSON or log lines) and `random` (incompressible).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.engine.loops import cpu_ns

CACHE = 8 << 20
BATCH = 1000
WORDS = [w.encode() for w in (
    "the user order status active pending shipped id name email city zip region "
    "total price item count true false null created updated at by version tag "
    "alpha beta gamma delta north south east west red green blue small large "
    "error warning info debug request response latency ms ok code path api v1"
).split()]


def _values(kind: str, seed: int, n: int = 4096) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if kind == "random":
            out.append(rng.randbytes(100))
        else:
            v = b""
            while len(v) < 100:
                v += rng.choice(WORDS) + b" "
            out.append(v[:100])
    return out


def _table_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            if f.endswith((".sst", ".ldb")):
                total += os.path.getsize(os.path.join(root, f))
    return total


class _Strata:
    def __init__(self, codec: str) -> None:
        self.codec = codec

    def open(self, path: str) -> None:
        from strata.storage import Engine

        per = self.codec if "," in self.codec else ""
        one = self.codec if not per else "none"
        self.db = Engine.open(path, durability="none", block_cache_size=CACHE,
                              compression=one, compression_per_level=per)

    def fill(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self.db.write_batch([("put", k, v) for k, v in pairs])

    def settle(self) -> None:
        self.db.compact_all()

    def get(self, key: bytes) -> bytes | None:
        return self.db.get(key)

    def scan(self) -> int:
        it = self.db.scan()
        try:
            return sum(1 for _ in it)
        finally:
            it.close()

    def close(self) -> None:
        self.db.close()


class _LevelDB:
    codec = "snappy"

    def open(self, path: str) -> None:
        import plyvel

        self.db = plyvel.DB(path, create_if_missing=True, lru_cache_size=CACHE)

    def fill(self, pairs) -> None:
        with self.db.write_batch() as wb:
            for k, v in pairs:
                wb.put(k, v)

    def settle(self) -> None:
        self.db.compact_range()

    def get(self, key):
        return self.db.get(key)

    def scan(self) -> int:
        return sum(1 for _ in self.db.iterator())

    def close(self) -> None:
        self.db.close()


class _RocksDB:
    def __init__(self, codec: str) -> None:
        self.codec = codec

    def open(self, path: str) -> None:
        import rocksdict as rd

        opts = rd.Options(raw_mode=True)
        opts.set_compression_type(getattr(rd.DBCompressionType, self.codec)())
        table = rd.BlockBasedOptions()
        table.set_block_cache(rd.Cache(CACHE))
        opts.set_block_based_table_factory(table)
        self.rd = rd
        self.db = rd.Rdict(path, options=opts)

    def fill(self, pairs) -> None:
        wb = self.rd.WriteBatch(raw_mode=True)
        for k, v in pairs:
            wb.put(k, v)
        self.db.write(wb)

    def settle(self) -> None:
        self.db.compact_range(None, None)

    def get(self, key):
        return self.db.get(key)

    def scan(self) -> int:
        return sum(1 for _ in self.db.keys())

    def close(self) -> None:
        self.db.close()


def _configs() -> list[tuple[str, str, Any]]:
    """(engine label, codec, factory)."""
    out: list[tuple[str, str, Any]] = [
        ("Strata", c, (lambda c=c: _Strata(c))) for c in ("none", "lz4", "zstd", "none,lz4,zstd")]
    try:
        import plyvel  # noqa: F401

        out.append(("LevelDB", "snappy", _LevelDB))
    except ImportError:
        print("LevelDB (plyvel) missing: not run", file=sys.stderr)
    try:
        import rocksdict  # noqa: F401

        out += [("RocksDB", c, (lambda c=c: _RocksDB(c))) for c in ("snappy", "lz4", "zstd")]
    except ImportError:
        print("RocksDB (rocksdict) missing: not run", file=sys.stderr)
    return out


def _one(factory, root: str, n: int, reads: int, values: list[bytes], seed: int) -> dict:
    eng = factory()
    path = tempfile.mkdtemp(prefix="db-", dir=root)
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    mask = len(values) - 1
    try:
        eng.open(path)
        c0, t0 = cpu_ns(), time.perf_counter()
        for i in range(0, n, BATCH):
            eng.fill([(b"%016d" % k, values[k & mask]) for k in order[i:i + BATCH]])
        fill_s, fill_cpu = time.perf_counter() - t0, cpu_ns() - c0
        t1 = time.perf_counter()
        eng.settle()
        settle_s = time.perf_counter() - t1
        table = _table_bytes(path)
        keys = [b"%016d" % rng.randrange(n) for _ in range(reads)]
        get = eng.get
        c2, t2 = cpu_ns(), time.perf_counter()
        found = sum(1 for k in keys if get(k) is not None)
        get_s, get_cpu = time.perf_counter() - t2, cpu_ns() - c2
        c3, t3 = cpu_ns(), time.perf_counter()
        scanned = eng.scan()
        scan_s, scan_cpu = time.perf_counter() - t3, cpu_ns() - c3
    finally:
        try:
            eng.close()
        finally:
            shutil.rmtree(path, ignore_errors=True)
    if found != reads or scanned != n:
        raise RuntimeError(f"wrong answers: {found}/{reads} gets found, scan saw {scanned}/{n}")
    # CPU per operation: user + system of this process (the engines' threads) and its
    # children (Strata's merge workers), in ns
    return {"table_bytes": table, "fill_per_s": n / fill_s, "settle_s": settle_s,
            "get_per_s": reads / get_s, "scan_per_s": n / scan_s,
            "fill_cpu_ns": fill_cpu / n, "get_cpu_ns": get_cpu / reads,
            "scan_cpu_ns": scan_cpu / n}


def run(n: int, reads: int, root: str, verbose: bool) -> dict:
    results = []
    for kind in ("text", "random"):
        values = _values(kind, 7)
        for label, codec, factory in _configs():
            rec = {"values": kind, "engine": label, "codec": codec}
            try:
                rec.update(_one(factory, root, n, reads, values, 11))
            except Exception as e:  # reported, the run goes on
                rec["error"] = f"{type(e).__name__}: {e}"
            results.append(rec)
            if verbose:
                print(f"[{kind}] {label} {codec}: " + (rec.get("error") or
                      f"{report.fmt_bytes(rec['table_bytes'])}, fill {report.fmt_rate(rec['fill_per_s'])}/s, "
                      f"get {report.fmt_rate(rec['get_per_s'])}/s, scan {report.fmt_rate(rec['scan_per_s'])}/s"),
                      file=sys.stderr, flush=True)
    return {"n": n, "reads": reads, "raw_bytes": n * (16 + 100), "results": results}


def _ns(v: float | None) -> str:
    return "-" if v is None else f"{v / 1000:.2f} µs" if v >= 1000 else f"{v:.0f} ns"


def _rows(doc: dict) -> tuple[list[str], list[list[str]]]:
    headers = ["values", "engine", "codec", "table bytes", "vs raw", "fill puts/s", "CPU/put",
               "gets/s", "CPU/get", "scan items/s", "CPU/item", "gets vs Strata none",
               "bytes vs LevelDB"]
    rows = []
    by = {(r["values"], r["engine"], r["codec"]): r for r in doc["results"]}
    for r in doc["results"]:
        if "error" in r:
            rows.append([r["values"], r["engine"], r["codec"], r["error"][:60]]
                        + [""] * (len(headers) - 4))
            continue
        base = by.get((r["values"], "Strata", "none"), {})
        ldb = by.get((r["values"], "LevelDB", "snappy"), {})
        rows.append([
            r["values"], r["engine"], r["codec"], report.fmt_bytes(r["table_bytes"]),
            f"{r['table_bytes'] / doc['raw_bytes']:.2f}", report.fmt_rate(r["fill_per_s"]),
            _ns(r.get("fill_cpu_ns")), report.fmt_rate(r["get_per_s"]), _ns(r.get("get_cpu_ns")),
            report.fmt_rate(r["scan_per_s"]), _ns(r.get("scan_cpu_ns")),
            report.fmt_ratio(r["get_per_s"] / base["get_per_s"]) if base.get("get_per_s") else "-",
            report.fmt_ratio(r["table_bytes"] / ldb["table_bytes"])
            if ldb.get("table_bytes") else "-",
        ])
    return headers, rows


PAGE = """# Block compression: bytes on disk and what they cost

`python -m bench compression` (bench/compression.py), one run on one machine, {date}.
{n:,} keys of 16 B with 100-byte values (raw {raw}), filled in batches of 1000 in
random order, then the whole range compacted; table files only (`*.sst`, `*.ldb`).
{reads:,} random gets of stored keys and one full scan with 8 MiB block caches
(smaller than the data: reads decompress as with a cold cache). `text` values are
words of a small vocabulary (compress 2-3x); `random` values do not compress.
Machine: {cpu}, {cores} cores, Python {python}.

{table}

Reading it: `CPU/…` is the user + system CPU of the process (the engine's threads)
and its children (Strata's merge workers) per operation, a figure that holds on any
machine; `vs raw` is table bytes over keys + values; `gets vs Strata none` is the
read cost of a codec (1.00x: free); `bytes vs LevelDB` compares the space with
LevelDB's snappy tables. The module docstring has the method.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench compression", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="keys (default 300,000; quick 30,000)")
    ap.add_argument("--reads", type=int, default=None, help="random gets (default 100,000)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--docs", default=None, help="write compression.md/.json here")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("-q", "--quiet", action="store_true")
    ap.add_argument("--dir", default=None, help="where the data directories go, made if "
                    "missing (default: $STRATA_BENCH_DIR, else the system's temp dir)")
    a = ap.parse_args(argv)
    n = a.n or (30_000 if a.quick else 300_000)
    reads = a.reads or (10_000 if a.quick else 100_000)
    top = a.dir or os.environ.get("STRATA_BENCH_DIR") or None
    if top:
        os.makedirs(top, exist_ok=True)
    root = tempfile.mkdtemp(prefix="strata-bench-compression-", dir=top)
    try:
        doc = run(n, reads, root, not a.quiet and not a.json)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    machine = report.machine_info(root if os.path.exists(root) else tempfile.gettempdir())
    doc["machine"] = machine
    headers, rows = _rows(doc)
    if a.json:
        print(json.dumps(doc, indent=1, default=str))
    else:
        print(report.text_table(headers, rows))
    docs = a.docs or (None if (a.quick or a.json or a.no_docs) else
                      str(Path(__file__).resolve().parents[1] / "docs" / "bench"))
    if docs:
        os.makedirs(docs, exist_ok=True)
        page = PAGE.format(
            date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), n=n, reads=reads,
            raw=report.fmt_bytes(doc["raw_bytes"]), cpu=machine.get("cpu_model"),
            cores=machine.get("cpus_usable"), python=machine.get("python"),
            table=report.markdown_table(headers, rows))
        Path(docs, "compression.md").write_text(page)
        Path(docs, "compression.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
        if not a.quiet:
            print(f"wrote {docs}/compression.md, compression.json", file=sys.stderr)
    return 0
