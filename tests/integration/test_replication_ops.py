"""Three daemons run the way operators run them: a replica restarted with SIGTERM, paused
with SIGSTOP, cut off by the network for a few seconds, and a rolling restart of every
node. Writes go on throughout (a recorded history, checked for linearizability); a
replica that comes back must reach the master's LSN within 2 s, every acknowledged write
must be in the final log, and status and health must tell the truth meanwhile."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from strata_client import Client

from .test_replication import Cluster, namespaced_cluster
from .test_replication_jepsen import Recorder, committed_events

CATCH_UP_S = 2.0


def replica_health(addr: str) -> int | None:
    try:
        with grpc.insecure_channel(addr) as ch:
            return health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="strata.v1.Replica"), timeout=1).status
    except grpc.RpcError:
        return None


def wait_replica_health(addr: str, want: int, timeout: float = 5.0) -> int | None:
    deadline = time.monotonic() + timeout
    while (got := replica_health(addr)) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


def caught_up_in(c: Cluster, master: str, replica: str, limit: float = 10.0) -> float:
    """Seconds until `replica` has durably every LSN the master had when this was called."""
    t0 = time.monotonic()
    target = c.status(master).last_lsn
    while time.monotonic() - t0 < limit:
        try:
            if c.status(replica).durable_lsn >= target:
                took = time.monotonic() - t0
                print(f"{replica} reached LSN {target} of master {master} in {took:.3f}s")
                return took
        except grpc.RpcError:
            pass
        time.sleep(0.02)
    return math.inf


def peer(c: Cluster, at: str, node: str):
    return next(p for p in c.status(at).peers if p.node == node)


def check_outcome(c: Cluster, rec: Recorder) -> None:
    """The history is linearizable and every acknowledged put is in the master's log."""
    rec.verify(min_done=100)
    final = c.master()
    c.stop()
    log = {kv for kv in committed_events(c.nodes[final].data_dir).values()}
    acked = [(op.key, op.value) for op in rec.history
             if op.kind == "put" and op.ret != math.inf]
    missing = [kv for kv in acked if kv not in log]
    assert not missing, f"{len(missing)} acknowledged puts missing, e.g. {missing[:3]}"


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.stop()


def test_a_replica_restarted_with_sigterm_is_resumed(cluster):
    c = cluster.start()
    rec = Recorder([d.grpc for d in c.nodes.values()])
    rec.start()
    try:
        time.sleep(1.0)
        m = c.master()
        r, other = (i for i in c.nodes if i != m)
        for _ in range(2):  # the second time, the link it stalled before must work too
            assert c.nodes[r].terminate() == 0
            time.sleep(1.0)
            c.nodes[r].start()
            took = caught_up_in(c, m, r)
            assert took <= CATCH_UP_S, f"replica {r} caught up after {took:.2f}s:\n" \
                                       f"{c.nodes[m].logs()[-3000:]}"
        # It acknowledges again: with the other replica gone, writes go on.
        c.nodes[other].kill()
        time.sleep(1.0)
        assert peer(c, m, r).state == "healthy"
        assert c.status(m).lease
    finally:
        rec.finish()
    check_outcome(c, rec)


def test_a_paused_replica_is_resumed_and_status_shows_it_meanwhile(cluster):
    c = cluster.start()
    rec = Recorder([d.grpc for d in c.nodes.values()])
    rec.start()
    try:
        time.sleep(1.0)
        m = c.master()
        r, other = (i for i in c.nodes if i != m)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert wait_replica_health(c.nodes[r].grpc, serving) == serving
        for _ in range(2):
            c.nodes[r].proc.send_signal(signal.SIGSTOP)
            try:
                time.sleep(3.0)
                p = peer(c, m, r)
                assert p.state == "failed", p
                assert p.last_heartbeat_ago_s >= 2.0, p
                assert p.lag_ms >= 1000, p  # writes went on: its oldest unacked frame is old
            finally:
                c.nodes[r].proc.send_signal(signal.SIGCONT)
            took = caught_up_in(c, m, r)
            assert took <= CATCH_UP_S, f"replica {r} caught up after {took:.2f}s:\n" \
                                       f"{c.nodes[m].logs()[-3000:]}"
        time.sleep(0.5)
        p = peer(c, m, r)
        assert p.state == "healthy" and p.last_heartbeat_ago_s < 0.5 and p.lag_ms < 500, p
        rs = c.status(r)
        assert rs.commit_lsn > 0 and rs.commit_lsn >= rs.durable_lsn - 1000, rs
        assert wait_replica_health(c.nodes[r].grpc, serving) == serving
        c.nodes[other].kill()
        time.sleep(1.0)
        assert c.status(m).lease, "the resumed replica does not count towards the quorum"
    finally:
        rec.finish()
    check_outcome(c, rec)


def test_replica_health_says_not_serving_without_a_master(cluster):
    c = cluster.start()
    m = c.master()
    r, other = (i for i in c.nodes if i != m)
    serving, not_serving = (health_pb2.HealthCheckResponse.SERVING,
                            health_pb2.HealthCheckResponse.NOT_SERVING)
    assert wait_replica_health(c.nodes[r].grpc, serving) == serving
    assert wait_replica_health(c.nodes[m].grpc, serving) == serving
    c.nodes[m].kill()
    c.nodes[other].kill()
    assert wait_replica_health(c.nodes[r].grpc, not_serving) == not_serving
    # The process itself works: the overall service stays SERVING.
    with grpc.insecure_channel(c.nodes[r].grpc) as ch:
        st = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
    assert st.status == health_pb2.HealthCheckResponse.SERVING


def test_rolling_restart_with_sigterm(cluster):
    c = cluster.start()
    rec = Recorder([d.grpc for d in c.nodes.values()])
    rec.start()
    try:
        time.sleep(1.0)
        for i in list(c.nodes):
            assert c.nodes[i].terminate() == 0
            m = c.master(among=[j for j in c.nodes if j != i])
            c.nodes[i].start()
            took = caught_up_in(c, m, i)
            assert took <= CATCH_UP_S, f"node {i} caught up after {took:.2f}s"
            time.sleep(0.5)
    finally:
        rec.finish()
    check_outcome(c, rec)


def test_a_replica_cut_off_for_3s_is_resumed(tmp_path, network):
    c = namespaced_cluster(tmp_path, network)
    c.start()
    try:
        rec = Recorder([d.grpc for d in c.nodes.values()])
        rec.start()
        try:
            time.sleep(1.0)
            m = c.master()
            r, other = (i for i in c.nodes if i != m)
            for _ in range(2):
                network.cut(r, [m, other])
                try:
                    time.sleep(3.0)
                    assert peer(c, m, r).state == "failed"
                finally:
                    network.heal(r)
                took = caught_up_in(c, m, r)
                assert took <= CATCH_UP_S, f"replica {r} caught up after {took:.2f}s:\n" \
                                           f"{c.nodes[m].logs()[-3000:]}"
            assert c.master() == m, "a replica cut off for 3 s deposed the master"
            c.nodes[other].kill()
            time.sleep(1.0)
            assert c.status(m).lease
        finally:
            rec.finish()
        check_outcome(c, rec)
    finally:
        c.stop()


class Writers:
    """Threads putting distinct keys through the README's client with a node list;
    records when each acknowledgement came and every error raised."""

    def __init__(self, targets: str, n: int = 4, batching: bool = True) -> None:
        from strata_client import Batching, Client

        self.acks: list[tuple[float, bytes, bytes, int]] = []
        self.errors: list[Exception] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.client = Client(targets, timeout=10,
                             batching=Batching(enabled=batching))
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, n: int) -> None:
        from strata_client import errors

        for i in range(100_000):  # bounded: the stop event ends it first
            if self.stop.is_set():
                return
            key, value = b"w%d-%d" % (n, i), b"v%d" % i
            try:
                lsn = self.client.put(key, value)
            except errors.StrataError as e:
                with self.lock:
                    self.errors.append(e)
                continue
            with self.lock:
                self.acks.append((time.monotonic(), key, value, lsn))

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        self.client.close()

    def max_gap(self, start: float, end: float) -> float:
        times = sorted(t for t, *_ in self.acks if start <= t <= end)
        return max((b - a for a, b in zip(times, times[1:])), default=math.inf)


def test_sigterm_of_the_master_hands_over_without_an_election(cluster):
    c = cluster.start()
    w = Writers(c.targets())
    try:
        time.sleep(1.0)
        m = c.master()
        term = c.status(m).term
        t0 = time.monotonic()
        assert c.nodes[m].terminate() == 0
        new = c.master(among=[i for i in c.nodes if i != m])
        time.sleep(1.0)
        t1 = time.monotonic()
    finally:
        w.finish()
    assert c.status(new).term == term + 1, "more than one election ran"
    gap = w.max_gap(t0 - 0.5, t1)
    print(f"longest time between two acknowledged writes around the SIGTERM: {gap * 1000:.0f} ms")
    # An election would take at least an election timeout (500 ms here) to start.
    assert gap < 0.5, f"{gap * 1000:.0f} ms without an acknowledged write"
    assert "handing the master's role" in c.nodes[m].logs()
    assert not w.errors, w.errors[:5]
    c.nodes[m].start()
    with Client(c.targets()) as cl:
        last = cl.put(b"after", b"1")
    c.wait_applied(m, last)
    for _, key, value, _lsn in w.acks[-50:]:
        assert cl_get(c, m, key) == value


def cl_get(c: Cluster, node: str, key: bytes) -> bytes | None:
    with Client(c.nodes[node].grpc) as cl:
        return cl.get(key, stale_ok=True)


def test_admin_transfer_leader_from_the_cli(cluster):
    c = cluster.start()
    m = c.master()
    r = next(i for i in c.nodes if i != m)
    term = c.status(m).term
    out = subprocess.run(
        [sys.executable, "-m", "strata.server.cli", "admin", "transfer-leader", "--to", r,
         "--server", c.nodes[r].grpc], capture_output=True, text=True, timeout=30,
        env=c.nodes[r].env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"master {r}={c.nodes[r].grpc} (term {term + 1})"), out.stdout
    assert c.master() == r and c.status(r).term == term + 1
    # Without --to: the most caught-up replica; a write goes on working through it.
    with Client(c.targets()) as cl:
        resp = cl.transfer_leader()
        assert resp.term == term + 2 and not resp.master.startswith(f"{r}=")
        assert cl.put(b"k", b"v") > 0
    out = subprocess.run(
        [sys.executable, "-m", "strata.server.cli", "admin", "transfer-leader", "--to", "nope",
         "--server", c.targets()], capture_output=True, text=True, timeout=30,
        env=c.nodes[r].env)
    assert out.returncode == 1 and "not a peer" in out.stderr, out.stderr
