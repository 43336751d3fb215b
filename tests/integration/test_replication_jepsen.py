"""Jepsen-style histories against a three-node quorum cluster: concurrent clients record
puts and gets while the master is SIGKILLed (twice) or cut off from the other two by a
network partition (namespaces and nftables), and the history must be linearizable
(tests/jepsen/lincheck.py). Each put writes a distinct value and is tried once: one that
fails in a way that may have written it is recorded with an unknown outcome."""

from __future__ import annotations

import base64
import json
import math
import random
import threading
import time

import grpc
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from strata.storage import Engine, record
from strata_client._proto import strata_pb2 as pb
from strata_client._proto import strata_pb2_grpc as pbg

from ..jepsen.lincheck import Op, check
from .test_replication import Cluster, namespaced_cluster

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


class Watcher:
    """A historical WebSocket subscriber on one node, from LSN 1, reconnecting through
    kills and cut-offs from where it stopped; keeps every event it was sent."""

    def __init__(self, ws_addr: str) -> None:
        self.addr = ws_addr
        self.events: list[tuple[int, bytes, bytes | None]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        nxt = 1
        while not self.stop.is_set():
            try:
                with ws_connect(f"ws://{self.addr}/v1/events", open_timeout=1) as ws:
                    ws.send(json.dumps({"op": "subscribe", "tier": "historical",
                                        "from_lsn": nxt}))
                    while not self.stop.is_set():
                        try:
                            m = json.loads(ws.recv(timeout=0.2))
                        except TimeoutError:
                            continue
                        if m["op"] == "event" and m["topic"] == "kv":
                            value = m["value"]
                            self.events.append((m["lsn"], base64.b64decode(m["key"]),
                                                None if value is None else base64.b64decode(value)))
                            nxt = m["lsn"] + 1
                        elif m["op"] == "error":
                            nxt = max(nxt, m.get("resume_lsn") or nxt)
            except (OSError, ConnectionClosed, InvalidStatus, TimeoutError):
                time.sleep(0.1)  # the node is down or restarting (503)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(10)


def committed_events(data_dir: str) -> dict[int, tuple[bytes, bytes | None]]:
    """LSN -> (key, value) of the key-space writes in a stopped node's log."""
    out = {}
    with Engine.open(data_dir, flush_after_recovery=False, compaction_executor="thread") as db:
        for fr in db.read_log(1):
            for lsn, k, v in record.decode_ops(fr.type & record.TYPE_MASK, fr.lsn, fr.payload):
                out[lsn] = (k, v)
    return out


def test_history_through_master_sigkills_is_linearizable(tmp_path):
    """...and what every node's subscribers were sent is the committed log: no write a
    kill then cut, each LSN once and in order."""
    c = Cluster(tmp_path).start()
    try:
        rec = Recorder([d.grpc for d in c.nodes.values()])
        watchers = {i: Watcher(d.ws) for i, d in c.nodes.items()}
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
            time.sleep(0.5)  # the last commits reach the subscribers
            for w in watchers.values():
                w.finish()
        assert any(op.ret == math.inf for op in rec.history), "no write was cut off by a kill"
        rec.verify()
        final = c.master()
        c.stop()
        log = committed_events(c.nodes[final].data_dir)
        for i, w in watchers.items():
            seen = [e for e in w.events if e[1] in KEYS]
            assert len(seen) > 20, f"node {i}'s subscriber saw only {len(seen)} events"
            lsns = [e[0] for e in seen]
            assert lsns == sorted(set(lsns)), f"node {i}: events repeated or out of order"
            phantom = [e for e in seen if log.get(e[0]) != e[1:]]
            assert not phantom, f"node {i}'s subscriber was sent writes not in the log: " \
                                f"{phantom[:5]}"
            # Resuming where it stopped, it skipped nothing up to the last event it got.
            want = [(lsn, *kv) for lsn, kv in sorted(log.items())
                    if kv[0] in KEYS and lsn <= lsns[-1]]
            assert seen == want, f"node {i}'s subscriber missed " \
                                 f"{sorted(set(want) - set(seen))[:5]}"
    finally:
        c.stop()


def test_history_through_a_partition_of_the_master_is_linearizable(tmp_path, network):
    c = namespaced_cluster(tmp_path, network)
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
