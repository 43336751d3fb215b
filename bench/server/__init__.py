"""Server benchmark (one module per concern: common, clients, procs, servers, runner,
summary, cli, ceiling): the Strata daemon over gRPC against the bare grpc.aio ceiling,
etcd and Redis, one load shape.

    python -m bench server           # 5 s points; writes docs/bench/server.{md,png,json}
    python -m bench server --quick   # 0.5 s points, a small read set; under a minute; no docs
    python -m bench server --json    # only {"workloads": [...]} on stdout
    python -m bench server --engines strata --only put,get --inflight 1,16

Method (the same for every server, in one run):

- Each server is started by the bench as a subprocess on free loopback ports,
  with a fresh data directory under `--dir` (default `$STRATA_BENCH_DIR` or
  `../tmp-bench` beside the repository: the work tree's disk, never a tmpfs
  unless asked), and stopped with SIGTERM. Servers run one after another.
  - strata: `python -m strata.server.cli serve` with STRATA_DURABILITY=always (a put
    is acknowledged after its group's fsync), once with the default event
    loop (STRATA_EVENT_LOOP=uvloop) and once with STRATA_EVENT_LOOP=asyncio.
  - ceiling: bench/server/ceiling.py, grpc.aio on uvloop with empty handlers on
    Strata's own KV proto: the cost of a call to a Python gRPC server doing nothing.
  - etcd: one member, default options (a put is acknowledged after raft
    commits it, which on one member means after the WAL fsync); reached over
    its gRPC API (`bench/etcd.proto`, compiled at run time).
  - redis-always / redis-everysec: `redis-server` with appendonly yes and
    appendfsync always (reply after the AOF fsync) or everysec (fsync once a
    second, in the background: a put is not durable when acknowledged).
- Load: `--processes` client processes (asyncio, the stock event loop), the
  in-flight requests of a point spread over them (128 -> 64 + 64). Each
  in-flight slot sends its next request as soon as its last is answered. A
  point stops at `--seconds` or after `--max-requests` requests, whichever
  comes first; ops/s is the operations answered over the wall time from the
  first client's start to the last one's end. gRPC clients (Strata, etcd) use
  one channel (one HTTP/2 connection) per process; the Redis client one
  connection per in-flight slot (redis-py asyncio with hiredis).
- Keys are 16 ASCII digits, values 100 bytes (50 random bytes twice, from a
  pool of 4096). Every put writes a new key. Gets read keys chosen at random
  from a read set of `--read-keys` keys loaded before the first get point
  (every get must find its key: a miss is reported as a wrong answer).
- Latency is per request, from send to answer, in the client: per put, per
  get, per Batch RPC or per Write-stream message of `--batch-ops` puts.
  Batched workloads count puts (keys) per second.
- CPU: the server's process CPU time (user + system, its children included)
  over each point's wall time, and the same for the client processes
  together; 100 % is one core. On this two-core box clients and server share
  the cores: a figure near the machine's limit says which side was saturated.
"""

from __future__ import annotations

from .cli import main

__all__ = ["main"]
