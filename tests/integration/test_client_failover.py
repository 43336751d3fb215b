"""The client keeps its promise through failover: three daemons on loopback, the master
SIGKILLed three times (restarted once a new master is elected), while threads (one
`Client` with coalescing, one without) and coroutines (one `AsyncClient` with
coalescing, one without) put through the node list with a 10 s timeout.

No call may raise NotMaster, Unavailable or a connection error: only OutcomeUnknown, and
only at its deadline. Every acknowledged put must be on the cluster afterwards. Retries
after a failover may write a put twice (request ids do not yet travel in the replicated
log), so duplicates are not asserted on here."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

from strata_client import AsyncClient, Batching, Client
from strata_client import errors as cerr

from .test_replication import Cluster

TIMEOUT = 10.0
KILLS = 3
# The daemon's default failure detection (FAST elects in ~0.5 s): replicas name the dead
# master for longer, which is what used to exhaust a count of redirects.
DEFAULT_TIMING = {"STRATA_HEARTBEAT_MS": "100", "STRATA_ELECTION_TIMEOUT_MS": "1000"}
WRITERS = 8  # threads per Client, coroutines per AsyncClient


class Outcomes:
    """What every writer saw: acknowledged puts (key -> value) and the calls that raised,
    as (client, exception, seconds into the call)."""

    def __init__(self) -> None:
        self.acked: dict[bytes, bytes] = {}
        self.raised: list[tuple[str, BaseException, float]] = []
        self.calls: Counter = Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def ok(self, name: str, key: bytes, value: bytes) -> None:
        with self.lock:
            self.acked[key] = value
            self.calls[name] += 1

    def failed(self, name: str, e: BaseException, took: float) -> None:
        with self.lock:
            self.raised.append((name, e, took))
            self.calls[name] += 1

    def broken(self) -> list[str]:
        """Calls that broke the promise: any error but OutcomeUnknown at the deadline."""
        return [f"{name}: {type(e).__name__} after {took:.2f}s: {e}"
                for name, e, took in self.raised
                if not (isinstance(e, cerr.OutcomeUnknown) and took >= TIMEOUT - 0.5)]


def _thread_writers(out: Outcomes, name: str, client: Client) -> list[threading.Thread]:
    def run(w: int) -> None:
        for i in range(1_000_000):  # bounded; the stop event ends it first
            if out.stop.is_set():
                return
            key, value = b"%s-%d-%06d" % (name.encode(), w, i), b"v%d" % i
            t0 = time.monotonic()
            try:
                client.put(key, value)
            except Exception as e:  # recorded: the test fails on any but OutcomeUnknown
                out.failed(name, e, time.monotonic() - t0)
                continue
            out.ok(name, key, value)

    return [threading.Thread(target=run, args=(w,), name=f"{name}-{w}") for w in range(WRITERS)]


def _async_writers(out: Outcomes, targets: str) -> threading.Thread:
    async def writer(name: str, client: AsyncClient, w: int) -> None:
        for i in range(1_000_000):  # bounded; the stop event ends it first
            if out.stop.is_set():
                return
            key, value = b"%s-%d-%06d" % (name.encode(), w, i), b"v%d" % i
            t0 = time.monotonic()
            try:
                await client.put(key, value)
            except Exception as e:  # recorded: the test fails on any but OutcomeUnknown
                out.failed(name, e, time.monotonic() - t0)
                continue
            out.ok(name, key, value)

    async def main() -> None:
        async with AsyncClient(targets, timeout=TIMEOUT) as on, \
                AsyncClient(targets, timeout=TIMEOUT, batching=Batching(enabled=False)) as off:
            await asyncio.gather(*(writer(n, cl, w) for n, cl in (("async", on), ("async-off", off))
                                   for w in range(WRITERS)))

    return threading.Thread(target=lambda: asyncio.run(main()), name="async-writers")


def test_puts_through_three_master_kills_raise_nothing_but_outcome_unknown(tmp_path):
    c = Cluster(tmp_path, env=DEFAULT_TIMING).start()
    out = Outcomes()
    clients = [Client(c.targets(), timeout=TIMEOUT),
               Client(c.targets(), timeout=TIMEOUT, batching=Batching(enabled=False))]
    threads: list[threading.Thread] = []
    try:
        m = c.master()
        threads = (_thread_writers(out, "sync", clients[0])
                   + _thread_writers(out, "sync-off", clients[1])
                   + [_async_writers(out, c.targets())])
        for t in threads:
            t.start()
        time.sleep(1.0)
        failovers = []
        for _ in range(KILLS):
            c.nodes[m].kill()
            t_kill = time.monotonic()
            new = c.master(among=[i for i in c.nodes if i != m])
            failovers.append(round(time.monotonic() - t_kill, 2))
            c.nodes[m].start()
            c.wait_applied(m, c.status(new).last_lsn)  # caught up before the next kill
            time.sleep(0.5)  # writes go on against the new master
            m = new
        time.sleep(1.0)
    finally:
        out.stop.set()
        for t in threads:
            t.join(2 * TIMEOUT + 5)  # a coalesced call may wait a message ahead of it
        for cl in clients:
            cl.close()
    try:
        assert not any(t.is_alive() for t in threads), "a writer did not stop"
        kinds = Counter(f"{name}:{type(e).__name__}" for name, e, _ in out.raised)
        print(f"failovers {failovers}s, calls {dict(out.calls)}, raised {dict(kinds)}")
        for name in ("sync", "sync-off", "async", "async-off"):
            assert out.calls[name] > 50, f"too little load through {name}: {dict(out.calls)}"
        broken = out.broken()
        assert not broken, f"{len(broken)} calls broke the promise:\n" + "\n".join(broken[:30])
        # Every acknowledged put is on the cluster (read from the master, one scan).
        m = c.master()
        with Client(c.nodes[m].grpc, timeout=TIMEOUT) as cl:
            stored = dict(cl.scan())
        missing = [k for k, v in out.acked.items() if stored.get(k) != v]
        assert not missing, f"{len(missing)} acknowledged puts missing, e.g. {missing[:5]}"
    finally:
        c.stop()
