"""The worker process: one engine, every workload, results on stdout."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
import traceback
from array import array
from typing import Any

from bench import report

from .adapters import ENGINES
from .common import KEY_FMT, ON_FILLED, SYNC_THREADS, Config
from .loops import (
    Measured,
    cpu_ns,
    fdatasync_reference,
    fill_batched,
    fill_one_by_one,
    read_random,
    scan_ranges,
    synced_writes,
    values,
)

# ---------------------------------------------------------------- worker (one engine, one process)


def _log(cfg: Config, engine: str, msg: str) -> None:
    if cfg.verbose:
        print(f"[{engine}] {msg}", file=sys.stderr, flush=True)


def _safe_rss() -> int | None:
    try:
        return report.process_rss()
    except Exception:
        return None


def _timed(fn, *args) -> Measured:
    """fn(*args), with the CPU it took (this process and its children) in extra["cpu_ns"]."""
    c0 = cpu_ns()
    m = fn(*args)
    m.extra["cpu_ns"] = cpu_ns() - c0
    return m


def _record(m: Measured, unit: str, path: str) -> dict[str, Any]:
    p50, p99 = report.percentiles(m.latencies)
    seconds = m.elapsed_ns / 1e9
    cpu = m.extra.get("cpu_ns")
    if cpu is not None and m.ops:
        m.extra["cpu_ns_per_op"] = round(cpu / m.ops, 1)
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
    vals = values(cfg.seed)
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
            m = _timed(fill_one_by_one, adapter.put_fn(), order, n, vals, cfg.fill_seconds)
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
                m = _timed(read_random, adapter.get_fn(), hit_ints, cfg.read_seconds)
                rec = _record(m, "ops/s", path)
                if m.extra["absent"]:
                    rec["wrong_answers"] = f"{m.extra['absent']} stored keys not found"
                note("readrandom-hit", rec)
            if "readrandom-miss" in selected:
                m = _timed(read_random, adapter.get_fn(), miss_ints, cfg.read_seconds)
                rec = _record(m, "ops/s", path)
                if m.extra["found"]:
                    rec["wrong_answers"] = f"{m.extra['found']} absent keys found"
                note("readrandom-miss", rec)
            if "scan" in selected:
                length = min(cfg.scan_length, loaded)
                # start low enough that `length` items follow: keys are 2*i for i < n
                starts = [KEY_FMT % (rng.randrange(max(1, n - length)) << 1)
                          for _ in range(cfg.scan_repeats)]
                m = _timed(scan_ranges, adapter, starts, length, cfg.scan_seconds)
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
                m = _timed(fill_one_by_one, adapter.put_fn(), range(n), n, vals,
                           cfg.fill_seconds)
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
                m = _timed(fill_batched, adapter.write_batch, order, n, vals, cfg.fill_seconds)
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
                    m = _timed(synced_writes, adapter, SYNC_THREADS[wl], cfg.sync_seconds,
                               cfg.sync_max_ops, key_base, vals)
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


def worker_cli(argv: list[str] | None = None) -> int:
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
