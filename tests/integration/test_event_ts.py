"""An event's `ts` is its write's commit time, kept in the WAL frame: the same live and
read back from history after a restart, over gRPC (Subscribe, Consume) and every
WebSocket tier, and on a replica and on the master that took over after a SIGKILL."""

from __future__ import annotations

import base64
import json
import time

from websockets.sync.client import connect as ws_connect

from strata_client import Client

from .test_replication import cluster_factory  # noqa: F401  (fixture)


def ws_events(ws_addr: str, n: int, **req) -> dict[int, tuple[int | None, str, bytes]]:
    """{lsn: (ts, topic, key)} of the first n events of a WebSocket subscription."""
    out: dict[int, tuple[int | None, str, bytes]] = {}
    with ws_connect(f"ws://{ws_addr}/v1/events", subprotocols=["strata.v1.json"]) as ws:
        ws.send(json.dumps({"op": "subscribe", **req}))
        assert json.loads(ws.recv(timeout=10))["op"] == "subscribed"
        while len(out) < n:
            m = json.loads(ws.recv(timeout=20))
            assert m["op"] in ("event", "batch"), m
            for ev in m["events"] if m["op"] == "batch" else [m]:
                out[ev["lsn"]] = (ev["ts"], ev["topic"], base64.b64decode(ev["key"]))
    return out


def grpc_consume(addr: str, n: int, **kw) -> dict[int, tuple[int | None, str, bytes]]:
    out: dict[int, tuple[int | None, str, bytes]] = {}
    with Client(addr) as c:
        sub = c.consume(**kw)
        try:
            for ev in sub:
                out[ev.lsn] = (ev.ts_ms or None, ev.topic, ev.key)
                if len(out) == n:
                    break
        finally:
            sub.close()
    return out


def grpc_subscribe(addr: str, n: int, **kw) -> dict[int, tuple[int | None, str, bytes]]:
    out: dict[int, tuple[int | None, str, bytes]] = {}
    with Client(addr) as c:
        for ev in c.subscribe(timeout=20, **kw):
            out[ev.lsn] = (ev.ts_ms or None, ev.topic, ev.key)
            if len(out) == n:
                break
    return out


def write_some(addr: str) -> list[int]:
    """Puts, a batch, a delete and a published event, a few ms apart: 6 events."""
    with Client(addr) as c:
        lsns = [c.put(b"a", b"1")]
        time.sleep(0.005)
        lsns.append(c.batch([("put", b"b", b"2"), ("put", b"c", b"3")]))
        time.sleep(0.005)
        lsns.append(c.publish("news", b"n", b"hello"))
        time.sleep(0.005)
        lsns.append(c.delete(b"a"))
        lsns.append(c.put(b"d", b"4"))
    return lsns


def test_an_event_has_the_same_ts_live_and_from_history_after_a_restart(daemon_factory):
    import threading

    d = daemon_factory()
    t0 = int(time.time() * 1000)
    live: dict[str, dict] = {}

    def watch(name, fn):
        live[name] = fn()

    watchers = [threading.Thread(target=watch, args=("ws", lambda: ws_events(d.ws, 6))),
                threading.Thread(target=watch, args=("grpc", lambda: grpc_consume(d.grpc, 6)))]
    for t in watchers:
        t.start()
    time.sleep(1.0)  # both subscribed (live)
    lsns = write_some(d.grpc)
    for t in watchers:
        t.join(30)
    t1 = int(time.time() * 1000)
    first = lsns[0]
    assert live["ws"] == live["grpc"], live
    ref = live["ws"]
    assert sorted(ref) == list(range(first, first + 6))
    ts = [ref[lsn][0] for lsn in sorted(ref)]
    assert all(t is not None and t0 <= t <= t1 for t in ts), (t0, ts, t1)
    assert ts == sorted(ts) and ts[0] < ts[-1]  # each write its own time, not the fan-out's
    assert ref[first + 1][0] == ref[first + 2][0]  # a batch's ops share their frame's

    d.stop()  # a restart: what follows is read back from the WAL
    d.start()
    history = {
        "ws historical": ws_events(d.ws, 6, tier="historical", from_lsn=first),
        "ws delayed": ws_events(d.ws, 6, tier="delayed", from_lsn=first),
        "ws realtime": ws_events(d.ws, 6, from_lsn=first),
        "grpc consume": grpc_consume(d.grpc, 6, from_lsn=first),
        "grpc consume delayed": grpc_consume(d.grpc, 6, tier="delayed", from_lsn=first),
        "grpc subscribe": grpc_subscribe(d.grpc, 6, from_lsn=first),
    }
    for name, got in history.items():
        assert got == ref, name


def test_a_replicated_event_keeps_the_masters_ts_on_replicas_and_after_failover(
        cluster_factory):  # noqa: F811
    c = cluster_factory()
    m = c.master()
    lsns = write_some(c.nodes[m].grpc)
    first, last = lsns[0], lsns[-1]
    ref = grpc_subscribe(c.nodes[m].grpc, 6, from_lsn=first)
    assert sorted(ref) == list(range(first, last + 1))
    assert all(v[0] is not None for v in ref.values())
    replicas = [i for i in c.nodes if i != m]
    for r in replicas:
        c.wait_applied(r, last)
        assert grpc_subscribe(c.nodes[r].grpc, 6, from_lsn=first) == ref, r
        assert ws_events(c.nodes[r].ws, 6, tier="historical", from_lsn=first) == ref, r
    c.nodes[m].kill()
    new = c.master(among=replicas)
    assert grpc_consume(c.nodes[new].grpc, 6, from_lsn=first) == ref
    assert ws_events(c.nodes[new].ws, 6, tier="historical", from_lsn=first) == ref
    # The new master stamps its own writes: later than the old master's, on one clock here.
    with Client(c.nodes[new].grpc) as cl:
        lsn = cl.put(b"after", b"1")
    (after,) = grpc_subscribe(c.nodes[new].grpc, 1, from_lsn=lsn).values()
    assert after[0] >= ref[last][0]
