"""Constants and the workloads of the engine benchmark."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

KEY_FMT = b"%016d"  # 16-byte keys
VALUE_SIZE = 100
VALUE_POOL = 4096  # distinct values; a power of two so `i & (POOL - 1)` picks one
BATCH_SIZE = 1000
SQLITE_COMMIT_EVERY = 1000
SCAN_LENGTH = 100_000
DEADLINE_CHECK_MASK = 1023  # check the time cap every 1024 ops: a clock read per op is not free

REPO_ROOT = Path(os.path.abspath(__file__)).parents[2]


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
