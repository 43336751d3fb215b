"""Jepsen-style: concurrent clients record a history of puts and gets against one real
daemon, through a SIGKILL and a restart, and the history must be linearizable (checked by
tests/jepsen/lincheck.py, itself tested on histories known to be non-linearizable)."""

from __future__ import annotations

import math
import random
import signal
import threading
import time

import grpc

from strata_client._proto import strata_pb2 as pb
from strata_client._proto import strata_pb2_grpc as pbg

from ..jepsen.lincheck import Op, check

KEYS = [b"reg-%d" % i for i in range(4)]
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 50),
                   ("grpc.min_reconnect_backoff_ms", 50),
                   ("grpc.max_reconnect_backoff_ms", 300)]


def _client(n: int, addr: str, stop: threading.Event, history: list[Op],
            lock: threading.Lock) -> None:
    rng = random.Random(n)
    with grpc.insecure_channel(addr, options=CHANNEL_OPTIONS) as ch:
        kv = pbg.KVStub(ch)
        for i in range(100_000):  # bounded: the stop event ends it first
            if stop.is_set():
                return
            key = rng.choice(KEYS)
            t0 = time.monotonic()
            if rng.random() < 0.5:
                value = f"c{n}-{i}".encode()
                try:
                    kv.Put(pb.PutRequest(key=key, value=value, request_id=f"c{n}-{i}"),
                           timeout=2)
                    op = Op(n, "put", key, value, t0, time.monotonic())
                except grpc.RpcError:
                    op = Op(n, "put", key, value, t0, math.inf)  # may have happened
                    time.sleep(0.1)
            else:
                try:
                    r = kv.Get(pb.GetRequest(key=key), timeout=2)
                    op = Op(n, "get", key, r.value if r.found else None, t0, time.monotonic())
                except grpc.RpcError:
                    time.sleep(0.1)  # a failed read observed nothing
                    continue
            with lock:
                history.append(op)


def test_history_through_sigkill_and_restart_is_linearizable(daemon):
    history: list[Op] = []
    lock = threading.Lock()
    stop = threading.Event()
    clients = [threading.Thread(target=_client, args=(n, daemon.grpc, stop, history, lock))
               for n in range(6)]
    for t in clients:
        t.start()
    try:
        time.sleep(1.5)
        daemon.proc.send_signal(signal.SIGKILL)  # mid-load: acknowledged puts must survive
        daemon.proc.wait()
        time.sleep(0.3)
        daemon.start()
        time.sleep(1.5)
    finally:
        stop.set()
        for t in clients:
            t.join(10)
    done = [op for op in history if op.ret != math.inf]
    unknown = [op for op in history if op.ret == math.inf]
    assert len(done) > 300, f"too little load to mean anything: {len(done)} operations"
    assert unknown, "no operation was cut off by the kill: the crash was not under load"
    result = check(history)
    assert result, (f"not linearizable on key {result.key!r}:\n"
                    + "\n".join(map(str, result.ops[:60])))
