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

from .cli import main

__all__ = ["main"]
