"""Events: Publish, Subscribe over gRPC and WebSocket, history replay and hand-over."""

from __future__ import annotations

import threading
import time

import pytest

from strata_client import Client, errors


def _collect(it, n: int, out: list, done: threading.Event) -> None:
    try:
        for ev in it:
            out.append(ev)
            if len(out) >= n:
                break
    except errors.StrataError as e:
        out.append(e)
    done.set()


def test_subscribe_live_then_history_with_no_gap_or_duplicate(daemon):
    with Client(daemon.grpc) as c:
        first = c.put(b"user:1", b"alice")
        c.publish("orders", b"o1", b"{}")
        # Live subscriber for the "orders" topic only.
        live: list = []
        done = threading.Event()
        t = threading.Thread(target=_collect, args=(c.subscribe(["orders"]), 3, live, done))
        t.start()
        time.sleep(0.5)
        lsns = [c.publish("orders", b"o%d" % i, b"x") for i in range(2, 5)]
        c.put(b"user:2", b"bob")  # another topic: not delivered
        assert done.wait(10), live
        assert [e.lsn for e in live] == lsns
        assert all(e.topic == "orders" for e in live)
        # History from the first LSN on every topic, then live, in order.
        hist: list = []
        done2 = threading.Event()
        t2 = threading.Thread(target=_collect,
                              args=(c.subscribe(from_lsn=first), 7, hist, done2))
        t2.start()
        time.sleep(0.5)
        c.delete(b"user:1")
        assert done2.wait(10), hist
        got = [(e.lsn, e.topic, e.key, e.deleted) for e in hist]
        assert [g[0] for g in got] == sorted({g[0] for g in got}), "gap or duplicate"
        assert got[0] == (first, "kv", b"user:1", False)
        assert got[-1][1:] == ("kv", b"user:1", True)
        assert len(got) == 7


def test_subscribe_key_prefix_and_batch_events(daemon):
    with Client(daemon.grpc) as c:
        out: list = []
        done = threading.Event()
        t = threading.Thread(target=_collect,
                             args=(c.subscribe(["kv"], key_prefix=b"acct:"), 3, out, done))
        t.start()
        time.sleep(0.5)
        last = c.batch([("put", b"acct:1", b"a"), ("put", b"other", b"b"),
                        ("put", b"acct:2", b"c"), ("delete", b"acct:1")])
        assert done.wait(10), out
        assert [(e.lsn, e.key, e.deleted) for e in out] == [
            (last - 3, b"acct:1", False), (last - 1, b"acct:2", False), (last, b"acct:1", True)]


def test_subscribe_from_a_purged_lsn_is_out_of_range(daemon_factory):
    d = daemon_factory(extra_env={"STRATA_MEMTABLE_SIZE": "65536", "STRATA_WAL_RETENTION_BYTES": "0"})
    with Client(d.grpc) as c:
        c.batch([("put", b"k%05d" % i, b"x" * 200) for i in range(2000)])
        c.batch([("put", b"j%05d" % i, b"x" * 200) for i in range(2000)])
        c.compact()
        with pytest.raises(errors.Compacted) as e:
            next(iter(c.subscribe(from_lsn=1, timeout=10)))
        assert e.value.earliest_lsn > 1
