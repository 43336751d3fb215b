"""The parent: options, one worker process per engine, publishing the results."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Any

from bench import report

from .adapters import ENGINES
from .common import REPO_ROOT, WORKLOAD_BY_NAME, Config
from .summary import render_text, summary_json, write_docs

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
