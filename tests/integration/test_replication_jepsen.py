"""Jepsen-style histories against a three-node quorum cluster: concurrent clients record
puts and gets while the master is SIGKILLed (twice) or cut off from the other two by a
network partition (namespaces and nftables), and the history must be linearizable
(tests/jepsen/lincheck.py). Each put writes a distinct value and is tried once: one that
fails in a way that may have written it is recorded with an unknown outcome."""

from __future__ import annotations

import math
import random
import threading
import time

import grpc
import pytest

from strata_client._proto import strata_pb2 as pb
from strata_client._proto import strata_pb2_grpc as pbg

from ..jepsen.lincheck import Op, check
from . import netns
from .conftest import Daemon
from .test_replication import FAST, Cluster

KEYS = [b"reg-%d" % i for i in range(4)]
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 50),
                   ("grpc.min_reconnect_backoff_ms", 50),
                   ("grpc.max_reconnect_backoff_ms", 300)]


class Recorder:
    def __init__(self, addrs: list[str]) -> None:
        self.addrs = addrs
        self.history: list[Op] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self, clients: int = 6) -> None:
        self.threads = [threading.Thread(target=self._client, args=(n,)) for n in range(clients)]
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _client(self, n: int) -> None:
        rng = random.Random(n)
        chans = {a: grpc.insecure_channel(a, options=CHANNEL_OPTIONS) for a in self.addrs}
        stubs = {a: pbg.KVStub(ch) for a, ch in chans.items()}
        at = self.addrs[n % len(self.addrs)]
        try:
            for i in range(100_000):  # bounded: the stop event ends it first
                if self.stop.is_set():
                    return
                key = rng.choice(KEYS)
                t0 = time.monotonic()
                try:
                    if rng.random() < 0.5:
                        value = f"c{n}-{i}".encode()
                        op = Op(n, "put", key, value, t0, math.inf)
                        stubs[at].Put(pb.PutRequest(key=key, value=value, request_id=f"c{n}-{i}"),
                                      timeout=1)
                        op = Op(n, "put", key, value, t0, time.monotonic())
                    else:
                        op = None
                        r = stubs[at].Get(pb.GetRequest(key=key), timeout=1)
                        op = Op(n, "get", key, r.value if r.found else None, t0, time.monotonic())
                except grpc.RpcError as e:
                    code = e.code()
                    trailers = dict(e.trailing_metadata() or ())
                    if code == grpc.StatusCode.FAILED_PRECONDITION:
                        # refused before anything was written: a replica, naming the master
                        master = trailers.get("strata-master", "").rpartition("=")[2]
                        at = master if master in stubs else rng.choice(self.addrs)
                        continue
                    at = rng.choice([a for a in self.addrs if a != at])
                    refused = code == grpc.StatusCode.UNAVAILABLE and \
                        trailers.get("strata-outcome") != "unknown" and "lease" in (e.details() or "")
                    if op is None or refused:
                        continue  # a read observed nothing; a refused write wrote nothing
                    time.sleep(0.02)
                with self.lock:
                    self.history.append(op)
        finally:
            for ch in chans.values():
                ch.close()

    def verify(self, min_done: int = 200) -> None:
        done = [op for op in self.history if op.ret != math.inf]
        assert len(done) > min_done, f"too little load to mean anything: {len(done)} operations"
        result = check(self.history)
        assert result, (f"not linearizable on key {result.key!r}:\n"
                        + "\n".join(map(str, result.ops[:60])))


def test_history_through_master_sigkills_is_linearizable(tmp_path):
    c = Cluster(tmp_path).start()
    try:
        rec = Recorder([d.grpc for d in c.nodes.values()])
        rec.start()
        try:
            time.sleep(1.5)
            for _ in range(2):
                m = c.master()
                c.nodes[m].kill()  # mid-load: acknowledged puts must survive
                c.master(among=[i for i in c.nodes if i != m])
                time.sleep(0.5)
                c.nodes[m].start()
                time.sleep(1.0)
        finally:
            rec.finish()
        assert any(op.ret == math.inf for op in rec.history), "no write was cut off by a kill"
        rec.verify()
    finally:
        c.stop()


@pytest.fixture
def network():
    why = netns.unavailable()
    if why:
        pytest.skip(f"partition tests need network namespaces: {why}")
    net = netns.Network(["a", "b", "c"])
    yield net
    net.close()


def test_history_through_a_partition_of_the_master_is_linearizable(tmp_path, network):
    nodes = {i: Daemon(str(tmp_path / f"node-{i}"), dict(FAST), netns=network.ns[i],
                       host=network.ip[i]) for i in ("a", "b", "c")}
    c = Cluster(tmp_path, nodes=nodes, args=("--ws-listen", "", "--metrics-listen", ""))
    c.start()
    try:
        rec = Recorder([d.grpc for d in c.nodes.values()])
        rec.start()
        try:
            time.sleep(1.5)
            m = c.master()
            others = [i for i in c.nodes if i != m]
            network.cut(m, others)  # clients still reach the old master
            new = c.master(among=others, timeout=10)
            old = c.status(m)
            assert not old.lease, "an isolated master kept its lease"
            time.sleep(2.0)
            network.heal(m)
            time.sleep(2.0)
        finally:
            rec.finish()
        assert c.status(m).role == "replica"
        assert c.status(new).term > old.term
        rec.verify()
    finally:
        c.stop()
