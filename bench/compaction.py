"""Write throughput while a big compaction runs, Strata beside LevelDB.

    python -m bench compaction [--n 300000] [--seconds 3] [--json]

For each engine: load N keys, measure unsynced puts/s for `seconds` with no
compaction running (baseline), then start a full-range compaction in a
thread (Strata: compact_all, which merges in the worker process; LevelDB:
compact_range) and measure puts/s while it runs. The figure is the ratio
during / baseline: how much of its write throughput an engine keeps while
compacting. The issue's target for Strata is >= 0.5.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time


def _puts(put, seconds: float, start: int, stop_event: threading.Event | None = None) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = 0
    value = b"x" * 100
    deadline = t0 + seconds
    while n < 5_000_000:
        put(b"w%015d" % (start + n), value)
        n += 1
        if n % 256 == 0:
            now = time.perf_counter()
            if now >= deadline or (stop_event is not None and stop_event.is_set()):
                break
    return n, time.perf_counter() - t0


def _run(name: str, open_db, n: int, seconds: float) -> dict:
    db, put, compact, close = open_db()
    try:
        value = b"v" * 100
        for i in range(n):
            put(b"k%015d" % ((i * 7919) % n), value)
        # let background work from the load settle, then take the baseline
        time.sleep(1.0)
        base_n, base_t = _puts(put, seconds, 0)
        # churn the whole key range again so the full compaction has work
        for i in range(n):
            put(b"k%015d" % ((i * 104729) % n), value)
        done = threading.Event()
        t = threading.Thread(target=lambda: (compact(), done.set()))
        t0 = time.perf_counter()
        t.start()
        during_n, during_t = _puts(put, seconds, 10_000_000, done)
        t.join()
        compact_s = time.perf_counter() - t0
    finally:
        close()
    base = base_n / base_t
    during = during_n / during_t
    return {"engine": name, "baseline_puts_per_s": base, "during_puts_per_s": during,
            "kept": during / base, "compaction_seconds": compact_s,
            "compaction_finished_during_measure": during_t < seconds * 0.99}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench compaction")
    ap.add_argument("--n", type=int, default=None, help="keys (default 300,000; quick 30,000)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="length of each measure (default 3; quick 0.5)")
    ap.add_argument("--quick", action="store_true", help="a small run, in seconds")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dir", default=None, help="where the data directories go, made if "
                    "missing (default: $STRATA_BENCH_DIR, else the system's temp dir)")
    args = ap.parse_args(argv)
    args.n = args.n or (30_000 if args.quick else 300_000)
    args.seconds = args.seconds or (0.5 if args.quick else 3.0)
    top = args.dir or os.environ.get("STRATA_BENCH_DIR") or None
    if top:
        os.makedirs(top, exist_ok=True)
    root = tempfile.mkdtemp(prefix="strata-bench-compaction-", dir=top)
    results = []
    try:
        from strata.storage import Engine

        def open_strata():
            db = Engine.open(os.path.join(root, "strata"), durability="none")
            return db, db.put, db.compact_all, db.close

        results.append(_run("strata", open_strata, args.n, args.seconds))
        try:
            import plyvel
        except ImportError:
            plyvel = None
        if plyvel is not None:
            def open_leveldb():
                db = plyvel.DB(os.path.join(root, "leveldb"), create_if_missing=True)
                return db, db.put, db.compact_range, db.close

            results.append(_run("leveldb", open_leveldb, args.n, args.seconds))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        peers = {r["engine"]: r["kept"] for r in results if r["engine"] != "strata"}
        print(json.dumps({"workloads": [{"name": "puts-kept-during-compaction", "unit": "ratio",
                                         "strata": results[0]["kept"], "peers": peers}]}))
        return 0
    print(f"{'engine':<10} {'baseline puts/s':>16} {'during puts/s':>14} {'kept':>6} {'compaction s':>13}")
    for r in results:
        print(f"{r['engine']:<10} {r['baseline_puts_per_s']:>16,.0f} {r['during_puts_per_s']:>14,.0f} "
              f"{r['kept']:>6.2f} {r['compaction_seconds']:>13.2f}")
    if len(results) > 1:
        print(f"Strata kept / LevelDB kept: {results[0]['kept'] / results[1]['kept']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
