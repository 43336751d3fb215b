"""Exactly once across failover: writers on 8 threads (put with client batching off and on,
delete, batch) through a 3-node cluster whose master is SIGKILLed three times. The client
retries a write with the same request id on the next master; replaying the final master's
log must then show every acknowledged call applied exactly once, any other call at most
once, and each acknowledged call answered with the LSN its write has in the log."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from strata.storage import Engine, record
from strata_client import Batching, CircuitBreaker, Client, RetryPolicy
from strata_client import errors as cerr

from .test_replication import Cluster

THREADS = 8
CALLS_PER_THREAD = 5000  # a bound: the run's clock stops the writers well before
KILLS = 3


def applied_ops(data_dir: str) -> list[tuple[int, bytes, bytes | None]]:
    """Every key-space op in a stopped node's log, (lsn, key, value or None), in LSN order."""
    out = []
    with Engine.open(data_dir, flush_after_recovery=False, compaction_executor="thread") as db:
        for fr in db.read_log(1):
            out.extend(record.decode_ops(fr.type & record.TYPE_MASK, fr.lsn, fr.payload))
    return out


class Writers:
    """THREADS threads issuing distinct calls until stopped; each call's ops (key, value or
    None) are recorded as acknowledged (with the LSN answered) or as raised."""

    def __init__(self, targets: str) -> None:
        retry = RetryPolicy(attempts=20, base_s=0.05, cap_s=0.4)

        def client(batching: bool) -> Client:
            return Client(targets, timeout=5.0, retry=retry,
                          breaker=CircuitBreaker(threshold=1_000_000),
                          batching=Batching(enabled=batching))

        self.single = client(False)
        self.coalescing = client(True)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked: list[tuple[str, list[tuple[bytes, bytes | None]], int]] = []
        self.raised: list[tuple[str, list[tuple[bytes, bytes | None]], str]] = []
        self.threads = [threading.Thread(target=self._run, args=(t,)) for t in range(THREADS)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _call(self, kind: str, t: int, n: int) -> tuple[list, int]:
        key = b"t%d-%05d" % (t, n)
        value = b"v%d-%05d" % (t, n)
        if kind == "put":
            return [(key, value)], self.single.put(key, value)
        if kind == "put-coalesced":
            return [(key, value)], self.coalescing.put(key, value)
        if kind == "delete":
            return [(key, None)], self.single.delete(key)
        if kind == "delete-coalesced":
            return [(key, None)], self.coalescing.delete(key)
        ops = [(key + b"/%d" % i, value + b"/%d" % i) for i in range(3)] + [(key + b"/x", None)]
        return ops, self.single.batch([("put", k, v) if v is not None else ("delete", k)
                                       for k, v in ops])

    def _run(self, t: int) -> None:
        kinds = ("put", "put-coalesced", "batch", "delete", "put-coalesced", "delete-coalesced")
        for n in range(CALLS_PER_THREAD):
            if self.stop.is_set():
                return
            kind = kinds[(t + n) % len(kinds)]
            try:
                ops, lsn = self._call(kind, t, n)
            except cerr.StrataError as e:
                key = b"t%d-%05d" % (t, n)
                value = b"v%d-%05d" % (t, n)
                ops = ([(key + b"/%d" % i, value + b"/%d" % i) for i in range(3)]
                       + [(key + b"/x", None)] if kind == "batch"
                       else [(key, None if kind.startswith("delete") else value)])
                with self.lock:
                    self.raised.append((kind, ops, type(e).__name__))
                continue
            with self.lock:
                self.acked.append((kind, ops, lsn))

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        self.single.close()
        self.coalescing.close()


def test_writes_retried_across_master_sigkills_are_applied_exactly_once(tmp_path):
    t0 = time.monotonic()
    c = Cluster(tmp_path).start()
    try:
        w = Writers(c.targets())
        w.start()
        try:
            time.sleep(1.0)
            for _ in range(KILLS):
                m = c.master()
                c.nodes[m].kill()  # mid-load: calls in flight are retried on the next master
                c.master(among=[i for i in c.nodes if i != m])
                time.sleep(0.3)
                c.nodes[m].start()
                time.sleep(1.0)
        finally:
            w.finish()
        assert all(not t.is_alive() for t in w.threads), "a writer thread hung"
        final = c.master()
        st = c.status(final)
        for i in c.nodes:
            c.wait_applied(i, st.commit_lsn)
        c.stop()
        ops = applied_ops(c.nodes[final].data_dir)
    finally:
        c.stop()

    applied: dict[tuple[bytes, bytes | None], list[int]] = defaultdict(list)
    for lsn, k, v in ops:
        applied[(k, v)].append(lsn)
    twice: dict[str, list] = defaultdict(list)
    missing: dict[str, list] = defaultdict(list)
    wrong_lsn = []
    for kind, call_ops, lsn in w.acked:
        counts = [len(applied.get(op, ())) for op in call_ops]
        if max(counts) > 1:
            twice[kind].append(call_ops[0])
        if min(counts) == 0:
            missing[kind].append(call_ops[0])
        elif max(counts) == 1 and applied[call_ops[-1]][0] != lsn:
            wrong_lsn.append((kind, call_ops[-1], lsn, applied[call_ops[-1]]))
    raised_twice = [(kind, call_ops[0]) for kind, call_ops, _ in w.raised
                    if max(len(applied.get(op, ())) for op in call_ops) > 1]
    by_kind = defaultdict(int)
    for kind, _, _ in w.acked:
        by_kind[kind] += 1
    summary = (f"{len(w.acked)} acknowledged calls ({dict(by_kind)}), {len(w.raised)} raised; "
               f"applied twice: { {k: len(v) for k, v in twice.items()} }, raised and applied "
               f"twice: {len(raised_twice)}; missing: { {k: len(v) for k, v in missing.items()} }"
               f"; {time.monotonic() - t0:.1f}s")
    print(summary)
    assert len(w.acked) > 1000, summary
    assert {"put", "put-coalesced", "batch", "delete", "delete-coalesced"} <= set(by_kind), summary
    assert not twice, f"{summary}: {dict(twice)}"
    assert not raised_twice, f"{summary}: {raised_twice[:10]}"
    assert not missing, f"{summary}: {dict(missing)}"
    assert not wrong_lsn, f"{summary}: answered with another LSN than the log's: {wrong_lsn[:10]}"


def test_a_retry_after_a_restart_is_answered_from_the_log(daemon_factory):
    """One node, SIGKILLed between a write and its retry: the id comes back from the WAL
    (the table was in memory only before), for puts, deletes, whole batches and coalesced
    ops alike."""
    d = daemon_factory()
    calls = [("put", "id-put"), ("delete", "id-del"), ("batch", "id-batch"), ("op", "id-op")]

    def issue(c: Client, kind: str, rid: str, value: bytes) -> int:
        if kind == "put":
            return c.put(b"k-put", value, request_id=rid)
        if kind == "delete":
            return c.delete(b"k-del", request_id=rid)
        if kind == "batch":
            return c.batch([("put", b"k-batch", value), ("delete", b"k-x")], request_id=rid)
        return c.put(b"k-op", value, request_id=rid)  # coalesced: an id on the op

    with Client(d.grpc, batching=Batching(enabled=False)) as single, Client(d.grpc) as coal:
        first = {rid: issue(coal if kind == "op" else single, kind, rid, b"first")
                 for kind, rid in calls}
    d.kill()
    d.start()
    with Client(d.grpc, batching=Batching(enabled=False)) as single, Client(d.grpc) as coal:
        again = {rid: issue(coal if kind == "op" else single, kind, rid, b"second")
                 for kind, rid in calls}
        assert again == first
        assert single.get(b"k-put") == b"first" and single.get(b"k-batch") == b"first"
        assert coal.get(b"k-op") == b"first"
    d.stop()
    ops = applied_ops(d.data_dir)
    assert [k for _, k, _ in ops].count(b"k-put") == 1
    assert [k for _, k, _ in ops].count(b"k-del") == 1
    assert [k for _, k, _ in ops].count(b"k-op") == 1
