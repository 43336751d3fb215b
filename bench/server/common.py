"""Constants, the workloads and the run configuration of the server benchmark."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

KEY_FMT = b"%016d"  # 16-byte keys
VALUE_SIZE = 100
VALUE_POOL = 4096  # a power of two: `i & (VALUE_POOL - 1)` picks a value
KEY_SPACE = 10**12  # keys of one point: point number * KEY_SPACE + worker * WORKER_SPACE + i
WORKER_SPACE = 10**10
RPC_TIMEOUT_S = 30.0  # no request waits longer than this
MAX_ERRORS = 50  # a client stops its point after this many failed requests
LOAD_CHUNK = 1000  # keys per request when loading the read set

REPO_ROOT = Path(os.path.abspath(__file__)).parents[2]
BENCH_DIR = Path(os.path.abspath(__file__)).parents[1]

SYSTEMS = ("strata", "ceiling", "etcd", "redis-always", "redis-everysec")
PEERS = ("ceiling", "etcd", "redis-always", "redis-everysec")
LABELS = {
    "strata": "Strata",
    "ceiling": "ceiling (bare grpc.aio)",
    "etcd": "etcd",
    "redis-always": "Redis always",
    "redis-everysec": "Redis everysec",
}
SHORT = {"strata": "Strata", "ceiling": "ceiling", "etcd": "etcd", "redis-always": "R-always",
         "redis-everysec": "R-everysec"}
FAMILIES = ("put", "get", "client", "batch", "write", "asyncio", "lifecycle")


# ---------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Workload:
    name: str
    family: str  # put, get, client, batch, write, asyncio, lifecycle
    unit: str  # "ops/s" or "ms" (lower is better)
    inflight: int  # 0 for lifecycle figures
    peer_source: str | None  # the peers' workload this one is compared with; None: Strata only
    about: str


@dataclass
class Config:
    """Everything a run needs; recorded in server.json."""

    seconds: float = 5.0  # length of each load point
    max_requests: int = 300_000  # count cap of each load point (all clients together)
    inflight: list[int] = field(default_factory=lambda: [1, 16, 128])
    processes: int = 2
    batch_ops: int = 100
    read_keys: int = 20_000
    seed: int = 20240601
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS))
    verbose: bool = True

    @classmethod
    def preset(cls, quick: bool) -> Config:
        if quick:
            return cls(seconds=0.5, max_requests=50_000, read_keys=2_000)
        return cls()


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def workloads(cfg: Config) -> list[Workload]:
    """The run's workloads, in report order."""
    fams, b, out = cfg.families, cfg.batch_ops, []
    if "put" in fams:
        out += [Workload(f"put-c{c}", "put", "ops/s", c, f"put-c{c}",
                         f"durable single-key puts, {_n(c, 'request')} in flight")
                for c in cfg.inflight]
    if "get" in fams:
        out += [Workload(f"get-c{c}", "get", "ops/s", c, f"get-c{c}",
                         f"single-key gets of stored keys, {_n(c, 'request')} in flight")
                for c in cfg.inflight]
    if "client" in fams:
        out += [Workload(f"client-put-c{c}", "client", "ops/s", c, f"put-c{c}",
                         f"durable puts from {_n(c, 'coroutine')} calling "
                         "strata_client.AsyncClient.put (concurrent calls coalesced, the "
                         "default), against the peers' unary puts") for c in cfg.inflight]
    if "batch" in fams:
        out += [Workload(f"batch{b}-c{c}", "batch", "ops/s", c, None,
                         f"durable puts through KV.Batch, {b} puts a request, "
                         f"{_n(c, 'request')} in flight (puts/s)") for c in cfg.inflight]
    if "write" in fams:
        out += [Workload(f"write{b}-c{c}", "write", "ops/s", c, None,
                         f"durable puts through the bidi KV.Write stream, {b} puts a message, "
                         f"{_n(c, 'message')} in flight (puts/s)") for c in cfg.inflight]
    if "asyncio" in fams:
        for kind in ("put", "get"):
            out += [Workload(f"{kind}-c{c}-asyncio", "asyncio", "ops/s", c, f"{kind}-c{c}",
                             f"as {kind}-c{c}, the daemon on the stock asyncio loop "
                             "(STRATA_EVENT_LOOP=asyncio)") for c in cfg.inflight]
    if "lifecycle" in fams:
        out += [
            Workload("startup", "lifecycle", "ms", 0, "startup",
                     "process start to serving, empty data dir (Strata: health SERVING; etcd: "
                     "first Range answered; Redis: first PING answered)"),
            Workload("sigterm-exit", "lifecycle", "ms", 0, "sigterm-exit",
                     "SIGTERM to process exit, right after the last load point"),
            Workload("restart", "lifecycle", "ms", 0, None,
                     "process start to SERVING on the loaded data dir, after a clean SIGTERM"),
        ]
    return out
