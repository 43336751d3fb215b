"""Running the load points against one server and collecting their results."""

from __future__ import annotations

import base64
import math
import sys
import time
from array import array
from dataclasses import asdict
from typing import Any

from bench import report

from .clients import Point
from .common import KEY_SPACE, WORKER_SPACE, Config, Workload
from .procs import WorkerPool, cpu_seconds, rss
from .servers import Server, ServerError, StrataServer

# ---------------------------------------------------------------- parent: running points


class Runner:
    """Drives the client pool against one server at a time and keeps the results."""

    def __init__(self, cfg: Config, pool: WorkerPool) -> None:
        self.cfg = cfg
        self.pool = pool
        self.point_no = 0
        self.results: dict[str, dict[str, Any]] = {s: {} for s in cfg.systems}

    def log(self, msg: str) -> None:
        if self.cfg.verbose:
            print(msg, file=sys.stderr, flush=True)

    def note(self, system: str, name: str, rec: dict[str, Any]) -> None:
        self.results[system][name] = rec
        val = rec.get("value")
        if rec.get("error"):
            self.log(f"[{system}] {name}: ERROR {rec['error']}")
            return
        if rec.get("unit") == "ms":
            self.log(f"[{system}] {name}: {val:.1f} ms")
            return
        extra = ""
        if rec.get("errors"):
            extra += f"  errors={rec['errors']} ({rec.get('first_error')})"
        if rec.get("misses"):
            extra += f"  MISSES={rec['misses']}"
        self.log(f"[{system}] {name}: {report.fmt_rate(val)} ops/s  "
                 f"p50={report.fmt_ns(rec.get('p50_ns'))}  p99={report.fmt_ns(rec.get('p99_ns'))}"
                 f"  server CPU {pct(rec.get('server_cpu'))}  clients CPU "
                 f"{pct(rec.get('client_cpu'))}{extra}")

    def load(self, server: Server, keys: int) -> dict[str, Any]:
        self.pool.send(0, {"cmd": "load", "system": server.system, "address": server.address,
                           "lo": 0, "hi": keys})
        res = self.pool.recv(0, 600)
        if "error" in res:
            raise ServerError(f"loading the read set into {server.system}: {res['error']}")
        return res

    def point(self, server: Server, workload: str, inflight: int) -> dict[str, Any]:
        """One load point: every client prepared, then all started together."""
        cfg = self.cfg
        self.point_no += 1
        procs = max(1, min(cfg.processes, inflight))
        shares = [inflight // procs + (1 if i < inflight % procs else 0) for i in range(procs)]
        for i, share in enumerate(shares):
            p = Point(system=server.system, address=server.address, workload=workload,
                      inflight=share, seconds=cfg.seconds,
                      max_requests=max(1, math.ceil(cfg.max_requests * share / inflight)),
                      key_base=self.point_no * KEY_SPACE + i * WORKER_SPACE,
                      batch_ops=cfg.batch_ops, read_keys=cfg.read_keys, seed=cfg.seed + i)
            self.pool.send(i, {"cmd": "prepare", "point": asdict(p)})
        errors = []
        for i in range(procs):
            res = self.pool.recv(i, 60)
            if "error" in res:
                errors.append(f"client {i}: {res['error']}")
        if errors:
            self._reset(procs)
            return {"error": "; ".join(errors)}
        counters = isinstance(server, StrataServer)
        eng0 = server.counters() if counters else {}
        cpu0 = cpu_seconds(server.pid)
        w0 = time.perf_counter()
        for i in range(procs):
            self.pool.send(i, {"cmd": "go"})
        answers = [self.pool.recv(i, cfg.seconds + 120) for i in range(procs)]
        wall = time.perf_counter() - w0
        cpu1 = cpu_seconds(server.pid)
        eng1 = server.counters() if counters else {}
        errors = [f"client {i}: {a['error']}" for i, a in enumerate(answers) if "error" in a]
        if errors:
            self._reset(procs)
            return {"error": "; ".join(errors)}
        lat = array("q")
        for a in answers:
            lat.frombytes(base64.b64decode(a["lat"]))
        requests = sum(a["requests"] for a in answers)
        per_request = cfg.batch_ops if workload in ("batch", "write") else 1
        seconds = (max(a["t1"] for a in answers) - min(a["t0"] for a in answers)) / 1e9
        p50, p99 = report.percentiles(lat)
        rec: dict[str, Any] = {
            "value": requests * per_request / seconds if requests and seconds > 0 else None,
            "unit": "ops/s", "ops": requests * per_request, "requests": requests,
            "seconds": round(seconds, 4), "p50_ns": p50, "p99_ns": p99,
            "inflight": inflight, "processes": procs,
            "server_cpu": round((cpu1 - cpu0) / wall, 3) if cpu0 is not None and cpu1 else None,
            # the server's user + system CPU per acknowledged operation (put, get or key)
            "server_cpu_us_per_op": round((cpu1 - cpu0) / (requests * per_request) * 1e6, 2)
            if cpu0 is not None and cpu1 and requests else None,
            "client_cpu": round(sum(a["cpu"] for a in answers) / seconds, 3) if seconds else None,
            "capped_by_count": requests >= cfg.max_requests,
        }
        if eng0 and eng1:
            delta = {k: eng1[k] - eng0.get(k, 0.0) for k in eng1 if not k.startswith("level")
                     and k != "memtable_bytes"}
            groups = delta.get("wal_groups", 0.0)
            rec["engine"] = {
                "fsyncs_per_s": round(groups / wall, 1),
                "frames_per_fsync": round(delta.get("wal_group_frames", 0.0) / groups, 2)
                if groups else None,
                **{k: round(v, 3) for k, v in delta.items() if v},
            }
        errs = sum(a["errors"] for a in answers)
        if errs:
            rec["errors"] = errs
            rec["first_error"] = next(a["first_error"] for a in answers if a["first_error"])
        misses = sum(a["misses"] for a in answers)
        if misses:
            rec["misses"] = misses
            rec["wrong_answers"] = f"{misses} gets did not find a stored key"
        return rec

    def _reset(self, procs: int) -> None:
        """After a failed point: make sure no client is still holding a connection."""
        for i in range(procs):
            self.pool.restart(i)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f} %"


def _families_for(system: str) -> list[str]:
    return ["put", "get", "client", "batch", "write"] if system == "strata" else ["put", "get"]


def run_system(runner: Runner, system: str, server: Server, wls: list[Workload]) -> None:
    """Start one server, run its workloads, SIGTERM it; Strata also restarts once."""
    cfg, res = runner.cfg, runner.results[system]
    try:
        ms = server.start()
    except ServerError as exc:
        res["error"] = str(exc)
        runner.log(f"[{system}] not started: {exc}")
        return
    runner.note(system, "startup", {"value": ms, "unit": "ms",
                                    **_strata_log(server, ("serving_in_ms", "engine_open_ms"))})
    try:
        mine = [w for w in wls if w.family in _families_for(system)]
        loaded = False
        for w in mine:
            if w.family == "get" and not loaded:
                info = runner.load(server, cfg.read_keys)
                res["read_set"] = info
                runner.log(f"[{system}] read set: {info['loaded']:,} keys in {info['seconds']} s")
                loaded = True
            runner.note(system, w.name, runner.point(server, w.family, w.inflight))
        res["rss_after_load"] = rss(server.pid)
        ms = server.sigterm()
        runner.note(system, "sigterm-exit", {"value": ms, "unit": "ms",
                                             "exit_status": server.exit_status,
                                             **_strata_log(server, ("stopped_in_ms",))})
        if isinstance(server, StrataServer):
            res["log"] = server.log_figures()
            if any(w.name == "restart" for w in wls):
                ms = server.start()
                figs = server.log_figures()
                frames = figs.get("replayed_frames")
                rec = {"value": ms, "unit": "ms", "replayed_frames": frames,
                       "replay_ok": frames == 0, "opened_line": figs.get("opened_line"),
                       "serving_in_ms": figs.get("serving_in_ms")}
                if frames != 0:
                    rec["wrong_answers"] = (f"restart after SIGTERM replayed {frames} WAL frames "
                                            "(a clean stop should leave none)")
                runner.note(system, "restart", rec)
                runner.log(f"[{system}] restart: {figs.get('opened_line')}")
                res["restart_sigterm_ms"] = round(server.sigterm(), 1)
    except ServerError as exc:
        res["error"] = str(exc)
        runner.log(f"[{system}] stopped early: {exc}")
    finally:
        server.kill()


def _strata_log(server: Server, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(server, StrataServer):
        return {}
    figs = server.log_figures()
    return {k: figs[k] for k in keys if k in figs}


def run_event_loop_variant(runner: Runner, server: StrataServer, wls: list[Workload]) -> None:
    """The daemon on the stock asyncio loop: the put and get points again, fresh data dir."""
    mine = [w for w in wls if w.family == "asyncio"]
    res = runner.results["strata"]
    try:
        res["asyncio_startup_ms"] = round(server.start(), 1)
        info = runner.load(server, runner.cfg.read_keys)
        runner.log(f"[strata asyncio] read set: {info['loaded']:,} keys in {info['seconds']} s")
        for w in sorted(mine, key=lambda w: not w.name.startswith("put")):  # puts first
            kind = w.name.split("-")[0]
            runner.note("strata", w.name, runner.point(server, kind, w.inflight))
        res["asyncio_sigterm_ms"] = round(server.sigterm(), 1)
        res["asyncio_log"] = server.log_figures()
    except ServerError as exc:
        for w in mine:
            res.setdefault(w.name, {"error": str(exc)})
        runner.log(f"[strata asyncio] {exc}")
    finally:
        server.kill()
