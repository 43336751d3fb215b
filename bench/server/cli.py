"""The command line: options, the run itself, publishing the results."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Any

from bench import report

from .common import FAMILIES, LABELS, REPO_ROOT, SYSTEMS, Config, workloads
from .procs import WorkerPool
from .runner import Runner, run_event_loop_variant, run_system
from .servers import (
    CeilingServer,
    EtcdServer,
    RedisServer,
    Server,
    StrataServer,
    compile_etcd_stubs,
)
from .summary import render_text, summary_json, write_docs

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
        description="The Strata daemon over gRPC against the bare grpc.aio ceiling, etcd and "
                    "Redis (appendfsync always and everysec): the same load shape, one run, "
                    "ratios printed.",
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
        cls: Any = {"strata": StrataServer, "etcd": EtcdServer,
                    "ceiling": CeilingServer}.get(s, RedisServer)
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
            elif s == "ceiling":
                server = CeilingServer(root)
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
