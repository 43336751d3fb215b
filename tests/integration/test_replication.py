"""Three real daemons on loopback replicating each other: frames reach replicas, reads are
redirected or stale, a SIGKILLed master is replaced without losing an acknowledged write,
the old master rejoins with its unreplicated tail cut and converges, a replica that fell
past the master's WAL retention is seeded by a checkpoint, sync mode with a replica down."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import threading
import time
import urllib.request

import grpc
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from strata.storage import Engine, record
from strata_client import AsyncClient, Client
from strata_client import errors as cerr
from strata_client._proto import strata_pb2 as pb
from strata_client._proto import strata_pb2_grpc as pbg

from . import netns
from .conftest import Daemon

FAST = {"STRATA_HEARTBEAT_MS": "50", "STRATA_ELECTION_TIMEOUT_MS": "500"}


class Cluster:
    def __init__(self, root, mode="quorum", env=None, ids=("a", "b", "c"),
                 nodes: dict[str, Daemon] | None = None, args: tuple = ()) -> None:
        self.nodes: dict[str, Daemon] = nodes or {
            i: Daemon(str(root / f"node-{i}"), dict(FAST, **(env or {}))) for i in ids}
        for i, d in self.nodes.items():
            peers = ",".join(f"{j}={o.grpc}" for j, o in self.nodes.items() if j != i)
            d.args = ["--node", i, "--peers", peers, "--replication", mode, *args]

    def start(self) -> Cluster:
        for d in self.nodes.values():
            d.start(wait=False)
        for d in self.nodes.values():
            d.wait_serving()
        return self

    def stop(self) -> None:
        """SIGTERM every node, the master last: a master stopping while its replicas
        run hands its role over, and the new master's term marker would reach only
        the nodes still running (tests compare the logs afterwards)."""
        def is_master(i: str) -> bool:
            try:
                return self.status(i).role == "master"
            except grpc.RpcError:
                return False

        for i in sorted(self.alive(), key=is_master):
            self.nodes[i].stop()
        for d in self.nodes.values():
            d.stop()

    def status(self, i: str):
        with grpc.insecure_channel(self.nodes[i].grpc) as ch:
            return pbg.AdminStub(ch).Status(pb.StatusRequest(), timeout=2)

    def alive(self) -> list[str]:
        return [i for i, d in self.nodes.items() if d.proc is not None and d.proc.poll() is None]

    def master(self, timeout: float = 15.0, among=None) -> str:
        """The node that is master with its lease and a committed term marker."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for i in among or self.alive():
                try:
                    st = self.status(i)
                except grpc.RpcError:
                    continue
                if st.role == "master" and st.lease:
                    try:
                        with grpc.insecure_channel(self.nodes[i].grpc) as ch:
                            pbg.KVStub(ch).Get(pb.GetRequest(key=b"probe"), timeout=1)
                        return i
                    except grpc.RpcError:
                        pass
            time.sleep(0.05)
        raise TimeoutError("no master elected:\n" + "\n".join(
            f"--- {i}\n{d.logs()[-3000:]}" for i, d in self.nodes.items()))

    def targets(self) -> str:
        return ",".join(d.grpc for d in self.nodes.values())

    def wait_applied(self, i: str, lsn: int, timeout: float = 15.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if self.status(i).applied_lsn >= lsn:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"node {i} did not reach LSN {lsn}")


def namespaced_cluster(root, network) -> Cluster:
    """Three daemons, one in each of `network`'s namespaces (tests/integration/netns.py),
    on their namespace's address, without WebSocket or metrics listeners."""
    nodes = {i: Daemon(str(root / f"node-{i}"), dict(FAST), netns=network.ns[i],
                       host=network.ip[i]) for i in ("a", "b", "c")}
    return Cluster(root, nodes=nodes, args=("--ws-listen", "", "--metrics-listen", ""))


@pytest.fixture
def cluster_factory(tmp_path):
    made: list[Cluster] = []

    def make(mode="quorum", env=None, start=True) -> Cluster:
        c = Cluster(tmp_path, mode, env)
        made.append(c)
        return c.start() if start else c

    yield make
    for c in made:
        c.stop()


def log_frames(data_dir: str, from_lsn: int = 1) -> list[bytes]:
    """A stopped node's log from `from_lsn`, frames re-encoded without the sync flag
    (commit times kept: a replica's are its master's)."""
    with Engine.open(data_dir, flush_after_recovery=False, compaction_executor="thread") as db:
        return [record.encode_frame(fr.lsn, fr.term, fr.type, fr.payload, fr.ts)
                for fr in db.read_log(from_lsn)]


def test_writes_on_the_master_reach_replicas_and_reads_are_redirected(cluster_factory):
    c = cluster_factory()
    m = c.master()
    replicas = [i for i in c.nodes if i != m]
    with Client(c.nodes[m].grpc) as cl:
        lsns = [cl.put(b"k%03d" % i, b"v%03d" % i) for i in range(200)]
        last = cl.batch([("put", b"batch-%d" % i, b"x") for i in range(50)] + [("delete", b"k000")])
        assert cl.get(b"k001") == b"v001"
    assert lsns == sorted(lsns)
    for r in replicas:
        c.wait_applied(r, last)
        with Client(c.nodes[r].grpc) as rc:
            # A replica answers stale reads from what it applied ...
            assert rc.get(b"k199", stale_ok=True) == b"v199"
            assert rc.get(b"k000", stale_ok=True) is None
            assert dict(rc.scan(b"batch-", b"batch.", stale_ok=True)) == \
                {b"batch-%d" % i: b"x" for i in range(50)}
            # ... its subscribers see the replicated writes as events, in LSN order
            keys = []
            for ev in rc.subscribe(from_lsn=1, timeout=10):
                keys.append(ev.key)
                if ev.key == b"k000" and ev.deleted:
                    break
            assert keys[:200] == [b"k%03d" % i for i in range(200)]
            assert keys[200:250] == [b"batch-%d" % i for i in range(50)]
        # ... and redirects a linearizable read or a write to the master
        with grpc.insecure_channel(c.nodes[r].grpc) as ch:
            kv = pbg.KVStub(ch)
            for method, req in ((kv.Get, pb.GetRequest(key=b"k001")),
                                (kv.Put, pb.PutRequest(key=b"x", value=b"y"))):
                with pytest.raises(grpc.RpcError) as e:
                    method(req, timeout=2)
                assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                trailers = dict(e.value.trailing_metadata())
                assert trailers["strata-master"] == f"{m}={c.nodes[m].grpc}"
        # the client follows the redirect
        with Client(c.nodes[r].grpc) as rc:
            assert rc.put(b"via-" + r.encode(), b"1") > last
            assert rc.get(b"k002") == b"v002"
    st = c.status(m)
    assert st.role == "master" and st.replication == "quorum" and st.lease
    assert {p.node for p in st.peers} == set(replicas)
    assert all(p.state == "healthy" for p in st.peers), st.peers
    rst = c.status(replicas[0])
    assert rst.role == "replica" and rst.master == f"{m}={c.nodes[m].grpc}"
    assert rst.term == st.term


def test_coalesced_calls_sent_to_a_replica_follow_the_redirect_and_are_written_once(
        cluster_factory):
    """Concurrent puts through one client pointed at a replica (coroutines, then threads):
    the messages carrying them are redirected to the master (several may be in flight on
    the old channel when the first redirect lands), every call gets its own LSN, and the
    same ids sent again are answered, not written."""
    c = cluster_factory()
    m = c.master()
    r = next(i for i in c.nodes if i != m)
    before = c.status(m).last_lsn

    async def main():
        async with AsyncClient(c.nodes[r].grpc) as cl:
            puts = [cl.put(b"co%03d" % i, b"v%d" % i, request_id=f"co-{i}") for i in range(120)]
            lsns = await asyncio.gather(*puts)
            again = await asyncio.gather(*(cl.put(b"co%03d" % i, b"other", request_id=f"co-{i}")
                                           for i in range(120)))
            return lsns, again, cl.batching_stats()

    lsns, again, st = asyncio.run(main())
    assert len(set(lsns)) == 120 and again == lsns
    assert st["messages"] < st["calls"], st
    assert c.status(m).last_lsn == before + 120, "each put written once"
    # The blocking client, from 16 threads, through the other replica.
    r2 = next(i for i in c.nodes if i not in (m, r))
    got: dict = {}
    with Client(c.nodes[r2].grpc) as cl:
        def run(w: int) -> None:
            for j in range(8):
                got[w, j] = cl.put(b"th%02d-%d" % (w, j), b"t")

        ts = [threading.Thread(target=run, args=(w,)) for w in range(16)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
    assert len(got) == 128 and len(set(got.values())) == 128
    assert c.status(m).last_lsn == before + 120 + 128
    with Client(c.nodes[m].grpc) as mc:
        for i in range(120):
            assert mc.get_entry(b"co%03d" % i) == (b"v%d" % i, lsns[i])
        for (w, j), lsn in got.items():
            assert mc.get_entry(b"th%02d-%d" % (w, j)) == (b"t", lsn)


def test_master_sigkill_under_quorum_writes_loses_no_acknowledged_write(cluster_factory):
    c = cluster_factory()
    m = c.master()
    acked: dict[bytes, bytes] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        with Client(c.targets(), timeout=20) as cl:
            for i in range(100_000):  # bounded: the stop event ends it first
                if stop.is_set():
                    return
                key, value = b"w%d-%d" % (n, i % 50), b"%d-%d" % (n, i)
                try:
                    cl.put(key, value)
                except cerr.StrataError:
                    continue
                with lock:
                    acked[key] = value

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    old_term = c.status(m).term
    c.nodes[m].kill()
    t_kill = time.monotonic()
    new = c.master(among=[i for i in c.nodes if i != m])
    failover = time.monotonic() - t_kill
    time.sleep(1.5)  # writes go on against the new master
    stop.set()
    for t in threads:
        t.join(30)
    assert c.status(new).term > old_term
    assert failover < 10, failover
    with Client(c.nodes[new].grpc) as cl:
        for key, value in acked.items():  # last acknowledged value per key, single writer per key
            assert cl.get(key) == value, key
    # the old master rejoins as a replica, cuts what it alone had, and converges
    c.nodes[m].start()
    with Client(c.nodes[new].grpc) as cl:
        last = cl.put(b"after-rejoin", b"1")
    c.wait_applied(m, last)
    assert c.status(m).role == "replica"
    c.stop()
    logs = {i: log_frames(d.data_dir) for i, d in c.nodes.items()}
    first = max(record.parse_frame(f[0])[0] for f in logs.values())
    tails = {i: [f for f in fr if record.parse_frame(f)[0] >= first] for i, fr in logs.items()}
    assert tails[m] == tails[new] and len(tails[new]) > 0
    assert all(t == tails[new] for t in tails.values())


def test_sync_mode_with_a_replica_down_still_takes_writes(cluster_factory):
    c = cluster_factory(mode="sync")
    m = c.master()
    down = next(i for i in c.nodes if i != m)
    c.nodes[down].kill()
    with Client(c.nodes[m].grpc) as cl:
        t0 = time.monotonic()
        lsn = cl.put(b"k", b"v")
        assert time.monotonic() - t0 < 5
        other = next(i for i in c.nodes if i not in (m, down))
        st = c.status(other)
        assert st.durable_lsn >= lsn  # sync: the live replica had it before the answer
    c.nodes[down].start()
    c.wait_applied(down, lsn)


def test_a_replica_past_the_masters_retention_is_seeded_by_a_checkpoint(cluster_factory):
    env = {"STRATA_MEMTABLE_SIZE": str(64 << 10), "STRATA_WAL_RETENTION_BYTES": "0"}
    c = cluster_factory(env=env)
    m = c.master()
    lag = next(i for i in c.nodes if i != m)
    c.nodes[lag].kill()
    with Client(c.nodes[m].grpc) as cl:
        for i in range(30):
            last = cl.batch([("put", b"big-%d-%d" % (i, j), os.urandom(100)) for j in range(100)])
        expected = dict(cl.scan(b"big-", b"big."))
    with grpc.insecure_channel(c.nodes[m].grpc) as ch:
        st = pbg.AdminStub(ch).Status(pb.StatusRequest(), timeout=2)
    assert st.flushed_lsn > 0
    c.nodes[lag].start()
    c.wait_applied(lag, last, timeout=30)
    with Client(c.nodes[lag].grpc) as rc:
        assert dict(rc.scan(b"big-", b"big.", stale_ok=True)) == expected
    assert "fetching a checkpoint" in c.nodes[lag].logs()


class Subscriber:
    """A realtime WebSocket subscriber in a thread, keeping the keys it was sent."""

    def __init__(self, ws_addr: str) -> None:
        self.keys: list[bytes] = []
        self._ws = None
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ws_addr,), daemon=True)
        self._thread.start()
        assert self._subscribed.wait(10), "not subscribed"

    def _run(self, ws_addr: str) -> None:
        with ws_connect(f"ws://{ws_addr}/v1/events", subprotocols=["strata.v1.json"]) as ws:
            self._ws = ws
            ws.send(json.dumps({"op": "subscribe", "tier": "realtime"}))
            if json.loads(ws.recv(timeout=10))["op"] == "subscribed":
                self._subscribed.set()
            try:
                for m in ws:
                    msg = json.loads(m)
                    if msg["op"] == "event":
                        self.keys.append(base64.b64decode(msg["key"]))
            except ConnectionClosed:
                pass

    def wait_for(self, key: bytes, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while key not in self.keys:
            assert time.monotonic() < end, f"{key!r} not received; got {self.keys}"
            time.sleep(0.01)

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
        self._thread.join(5)


def test_a_returning_master_cuts_the_tail_it_alone_had(cluster_factory):
    """...and no subscriber ever saw that tail: events wait for the commit point."""
    why = netns.unavailable()
    if why:
        pytest.skip(f"needs nftables to cut the master off: {why}")
    c = cluster_factory()
    m = c.master()
    replicas = [i for i in c.nodes if i != m]
    subs = {i: Subscriber(c.nodes[i].ws) for i in (m, replicas[0])}
    with Client(c.nodes[m].grpc) as cl:
        base = cl.put(b"before", b"1")
    for r in replicas:
        c.wait_applied(r, base)
    for s in subs.values():  # committed: published on the master and on a replica
        s.wait_for(b"before")
    # Nothing reaches the replicas any more: the master's next writes stay its own.
    block = netns.PortBlock([int(c.nodes[r].grpc.rpartition(":")[2]) for r in replicas])
    lost = []
    try:
        with grpc.insecure_channel(c.nodes[m].grpc) as ch:
            kv = pbg.KVStub(ch)
            for i in range(20):
                try:
                    kv.Put(pb.PutRequest(key=b"lost-%d" % i, value=b"x"), timeout=0.05)
                    pytest.fail("a write was acknowledged without a quorum")
                except grpc.RpcError as e:
                    if e.code() == grpc.StatusCode.UNAVAILABLE:
                        break  # the lease ran out: refused before anything was written
                    lost.append(b"lost-%d" % i)
        assert lost, "no write reached the isolated master's log"
        time.sleep(0.5)  # what a subscriber would have been sent by now
        assert subs[m].keys == [b"before"], "an uncommitted write was published"
        metrics = urllib.request.urlopen(f"http://{c.nodes[m].metrics}/metrics",
                                         timeout=5).read().decode()
        held = re.search(r"^strata_events_awaiting_commit (\S+)$", metrics, re.M)
        # A put whose deadline passed may have reached the log or not (under load, some
        # are still waiting to be admitted): at least one did, none beyond those sent.
        assert held and 1 <= float(held.group(1)) <= len(lost), \
            f"the held writes are not counted: {held and held.group(1)}, {len(lost)} sent"
        c.nodes[m].kill()
        subs[m].close()
        # The dead master's sockets still hold those frames and the kernel would send
        # them once the block is lifted: restart the replicas, whose new sockets
        # refuse the old connections.
        for r in replicas:
            c.nodes[r].kill()
    finally:
        block.close()
    for r in replicas:
        c.nodes[r].start(wait=False)
    new = c.master(among=replicas)
    with Client(c.nodes[new].grpc) as cl:
        last = cl.batch([("put", b"after-%d" % i, b"y") for i in range(10)])
        assert all(cl.get(k) is None for k in lost)
    c.nodes[m].start()
    c.wait_applied(m, last)
    assert "cutting the log after LSN" in c.nodes[m].logs()
    with Client(c.nodes[m].grpc) as rc:
        assert all(rc.get(k, stale_ok=True) is None for k in lost)
        assert rc.get(b"after-9", stale_ok=True) == b"y"
    c.stop()
    logs = {i: log_frames(d.data_dir, base) for i, d in c.nodes.items()}
    assert logs[m] == logs[new] == logs[next(r for r in replicas if r != new)]
    subs[replicas[0]].close()
    assert not set(lost) & set(subs[replicas[0]].keys)
