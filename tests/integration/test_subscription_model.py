"""Model-based test of the WebSocket tiers and gRPC Events.Consume against the real
daemon: random writes (puts, deletes, batches, published events), compactions and
checkpoints, while subscriptions of every tier, transport (JSON, MessagePack, gRPC),
ack mode and credit window come and go,
acknowledge, get credit, unsubscribe, and named consumers resume. The model is
the list of events each write produced (its LSNs from the acknowledgements);
every subscription must receive exactly the model's events from its start, in
order, never more than its credits allow, and a named consumer resumes with no
event skipped after its last acknowledgement; a ring reader sees them all.

Each example writes under its own key prefix and subscribes with that prefix,
so one daemon serves every example."""

from __future__ import annotations

import base64
import itertools
import json
import os
import random
import threading
import time

import msgpack
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from strata_client import Client, errors
from strata_client.ring import RingReader

from .conftest import Daemon

DAEMON: Daemon | None = None
RING = f"strata-model-{os.getpid()}-{random.randrange(1 << 30)}"
EXAMPLES = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def daemon(tmp_path_factory):
    global DAEMON
    # A small memtable: flushes (and new WAL segments) and compactions happen under the
    # subscriptions, whose history is then read across segments.
    # A ring too, read by every example alongside its WebSocket subscriptions.
    DAEMON = Daemon(str(tmp_path_factory.mktemp("submodel") / "data"),
                    {"STRATA_MEMTABLE_SIZE": "16384"}, args=["--rings", f"{RING}:4MiB"])
    DAEMON.start()
    with Client(DAEMON.grpc) as c:
        c.put(b"seed", b"")  # a Consume stream's first response then names a last LSN > 0
    yield DAEMON
    DAEMON.stop()
    DAEMON = None
    for p in (f"/dev/shm/{RING}", f"/dev/shm/.{RING}.doorbell"):
        if os.path.exists(p):
            os.unlink(p)


class Sub:
    """One subscription and what it received: (lsn, topic, key, value | None)."""

    def __init__(self, req: dict) -> None:
        self.req = req
        self.manual = req.get("ack") == "manual"
        self.credits = req.get("credits")  # None: unlimited
        self.granted = 0
        self.name = req.get("consumer")
        self.got: list[tuple] = []
        self.acked = 0
        self.error: dict | None = None
        self.reply: dict = {}  # from_lsn (None: live), last_lsn


class WsSub(Sub):
    """A WebSocket subscription (`fmt`: json or msgpack)."""

    def __init__(self, fmt: str, req: dict) -> None:
        super().__init__(req)
        self.fmt = fmt
        self._cm = ws_connect(f"ws://{DAEMON.ws}/v1/events", subprotocols=[f"strata.v1.{fmt}"],
                              max_size=None)
        self.ws = self._cm.__enter__()
        self.send(req)
        reply = self.recv(10)
        assert reply is not None and reply["op"] == "subscribed", reply
        self.reply = reply

    def send(self, msg: dict) -> None:
        self.ws.send(json.dumps(msg) if self.fmt == "json" else msgpack.packb(msg))

    def recv(self, timeout: float) -> dict | None:
        try:
            m = self.ws.recv(timeout=timeout)
        except TimeoutError:
            return None
        return json.loads(m) if self.fmt == "json" else msgpack.unpackb(m)

    def pump(self, timeout: float = 0.05) -> None:
        """Take in whatever arrives within `timeout` of the last message."""
        while self.error is None:
            try:
                msg = self.recv(timeout)
            except ConnectionClosed:
                return
            if msg is None or not self._take(msg):
                return

    def _take(self, msg: dict) -> bool:
        op = msg["op"]
        if op == "event":
            self._event(msg)
        elif op == "batch":
            assert self.req.get("tier") == "delayed"
            for e in msg["events"]:
                self._event(e)
        elif op == "error":
            self.error = msg
        else:
            return False
        return True

    def _event(self, e: dict) -> None:
        def b(x):
            return base64.b64decode(x) if self.fmt == "json" and x is not None else x
        self.got.append((e["lsn"], e["topic"], b(e["key"]), b(e["value"])))

    def unsubscribe(self) -> int:
        """The LSN `unsubscribed` names, after the events sent before it."""
        self.send({"op": "unsubscribe"})
        deadline = time.monotonic() + 10
        other = []
        while time.monotonic() < deadline:
            msg = self.recv(1.0)
            if msg is None:
                continue
            if msg["op"] == "unsubscribed":
                return msg["lsn"]
            if not self._take(msg):
                other.append(msg)
        raise AssertionError(f"no unsubscribed answer: {self.req} got {self.got} {other}")

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self._cm.__exit__(None, None, None)


class GrpcSub(Sub):
    """An Events.Consume stream through the Python client, read by a thread."""

    def __init__(self, req: dict) -> None:
        super().__init__(req)
        self.client = Client(DAEMON.grpc)
        self.cons = self.client.consume(
            self.name or "", tier=req["tier"], topics=req.get("topics") or (),
            key_prefix=req["prefix"], from_lsn=req.get("from_lsn", 0), manual_ack=self.manual,
            credits=self.credits, window_ms=req["window_ms"])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.cons.last_lsn and self.error is None:  # the first response
            assert time.monotonic() < deadline, "no first Consume response"
            time.sleep(0.002)
        assert self.error is None, self.error
        self.reply = {"from_lsn": self.cons.from_lsn or None, "last_lsn": self.cons.last_lsn}

    def _run(self) -> None:
        try:
            for ev in self.cons:
                self.got.append((ev.lsn, ev.topic, ev.key, None if ev.deleted else ev.value))
        except errors.Superseded as e:
            self.error = {"code": "superseded", "message": str(e)}
        except errors.StrataError as e:
            self.error = {"code": type(e).__name__, "message": str(e)}

    def send(self, msg: dict) -> None:
        if msg["op"] == "ack":
            self.cons.ack(msg["lsn"])
        elif msg["op"] == "credit":
            self.cons.credit(msg["n"])
        else:
            raise AssertionError(msg)

    def pump(self, timeout: float = 0.05) -> None:
        n = -1
        while n != len(self.got) and self.error is None:
            n = len(self.got)
            time.sleep(timeout)

    def unsubscribe(self) -> None:
        """gRPC has no unsubscribe message: the client ends the stream."""
        self.close()

    def close(self) -> None:
        self.cons.close()
        self._thread.join(5)
        self.client.close()


class SubscriptionModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.prefix = b"m%05d/" % next(EXAMPLES)
        self.client = Client(DAEMON.grpc)
        self.events: list[tuple] = []  # the model: (lsn, topic, key, value | None)
        self.subs: list[Sub] = []
        self.cursor: dict[str, int] = {}  # named consumer -> last LSN it acknowledged
        self.ring = RingReader(RING, wait="poll")  # from the next event written on
        self.ring_got: list[tuple] = []

    # -- writes ----------------------------------------------------------------------

    KEYS = st.integers(0, 4).map(lambda i: b"k%d" % i)

    @rule(k=KEYS, v=st.binary(max_size=24))
    def put(self, k, v):
        lsn = self.client.put(self.prefix + k, v)
        self.events.append((lsn, "kv", self.prefix + k, v))

    @rule(k=KEYS)
    def delete(self, k):
        lsn = self.client.delete(self.prefix + k)
        self.events.append((lsn, "kv", self.prefix + k, None))

    @rule(ops=st.lists(st.tuples(st.booleans(), KEYS, st.binary(max_size=8)), min_size=1,
                       max_size=6))
    def batch(self, ops):
        last = self.client.batch([("put", self.prefix + k, v) if p else ("delete", self.prefix + k)
                                  for p, k, v in ops])
        for i, (p, k, v) in enumerate(ops):
            self.events.append((last - len(ops) + 1 + i, "kv", self.prefix + k, v if p else None))

    @rule(topic=st.sampled_from(["orders", "audit"]), k=KEYS, payload=st.binary(max_size=8))
    def publish(self, topic, k, payload):
        lsn = self.client.publish(topic, self.prefix + k, payload)
        self.events.append((lsn, topic, self.prefix + k, payload))

    @rule()
    def compact(self):
        self.client.compact()

    @rule()
    def checkpoint(self):
        self.client.checkpoint(f"{self.prefix.decode()[:-1]}-{len(self.events)}-{time.monotonic_ns()}")

    # -- subscriptions -----------------------------------------------------------------

    @precondition(lambda self: len(self.subs) < 3)
    @rule(tier=st.sampled_from(["realtime", "delayed", "historical"]),
          transport=st.sampled_from(["json", "msgpack", "grpc"]),
          manual=st.booleans(),
          credits=st.none() | st.integers(0, 4),
          start=st.sampled_from(["default", "first", "middle", "last"]),
          name=st.none() | st.sampled_from(["a", "b"]),
          topics=st.none() | st.sampled_from([["kv"], ["orders", "audit"]]))
    def subscribe(self, tier, transport, manual, credits, start, name, topics):
        req: dict = {"op": "subscribe", "tier": tier, "prefix": base64.b64encode(self.prefix).decode(),
                     "ack": "manual" if manual or name else "auto", "window_ms": 10}
        if transport != "json":
            req["prefix"] = self.prefix
        if credits is not None:
            req["credits"] = credits
        if topics is not None:
            req["topics"] = topics
        if start != "default" and self.events:
            i = {"first": 0, "middle": len(self.events) // 2, "last": -1}[start]
            req["from_lsn"] = self.events[i][0]
        if name is not None:
            req["consumer"] = f"{self.prefix.decode()[:-1]}-{name}"
        sub = GrpcSub(req) if transport == "grpc" else WsSub(transport, req)
        for old in [s for s in self.subs if name is not None and s.name == sub.name]:
            # The newer subscription takes over: the older one is told and closed, after
            # the events sent before the take-over (checked like any others).
            deadline = time.monotonic() + 10
            while old.error is None and time.monotonic() < deadline:
                old.pump(0.2)
            assert old.error is not None and old.error["code"] == "superseded", old.error
            self._check(old)
            self._drop(old)
        if name is not None and "from_lsn" not in req and sub.name in self.cursor:
            # No event after the last acknowledgement is skipped.
            start = sub.reply["from_lsn"]
            assert start is not None and start <= self.cursor[sub.name] + 1, \
                (sub.reply, self.cursor[sub.name], type(sub).__name__, sub.req)
        self.subs.append(sub)

    def _start(self, sub: Sub) -> int:
        r = sub.reply
        if r["from_lsn"]:
            return r["from_lsn"]
        return r["last_lsn"] + 1  # live

    def _expected(self, sub: Sub) -> list[tuple]:
        start = self._start(sub)
        topics = sub.req.get("topics")
        return [e for e in self.events if e[0] >= start and (topics is None or e[1] in topics)]

    def _check(self, sub: Sub) -> None:
        want = self._expected(sub)
        assert sub.got == want[:len(sub.got)], (sub.req, sub.got, want)
        if sub.credits is not None:
            granted = sub.credits + sub.granted
            acked = sum(1 for e in sub.got if e[0] <= sub.acked) if sub.manual else 0
            assert len(sub.got) <= granted + acked, (len(sub.got), granted, acked)

    def _drop(self, sub: Sub) -> None:
        sub.close()
        self.subs.remove(sub)

    @precondition(lambda self: self.subs)
    @rule(i=st.integers(0, 2))
    def read(self, i):
        sub = self.subs[i % len(self.subs)]
        sub.pump()
        assert sub.error is None, sub.error
        self._check(sub)

    # Preconditions look only at what the rules did, never at what arrived (timing):
    # Hypothesis replays a rule sequence and expects the same rules to be enabled.
    @precondition(lambda self: any(s.manual for s in self.subs))
    @rule(i=st.integers(0, 2), upto=st.sampled_from(["all", "half"]))
    def ack(self, i, upto):
        subs = [s for s in self.subs if s.manual]
        sub = subs[i % len(subs)]
        if not sub.got:
            return
        lsn = sub.got[-1][0] if upto == "all" else sub.got[len(sub.got) // 2][0]
        if lsn > sub.acked:
            sub.send({"op": "ack", "lsn": lsn})
            sub.acked = lsn
            if sub.name:
                self.cursor[sub.name] = lsn

    @precondition(lambda self: any(s.credits is not None for s in self.subs))
    @rule(i=st.integers(0, 2), n=st.integers(1, 5))
    def credit(self, i, n):
        subs = [s for s in self.subs if s.credits is not None]
        sub = subs[i % len(subs)]
        sub.send({"op": "credit", "n": n})
        sub.granted += n

    @precondition(lambda self: self.subs)
    @rule(i=st.integers(0, 2))
    def unsubscribe(self, i):
        sub = self.subs[i % len(self.subs)]
        last = sub.unsubscribe()
        self._check(sub)
        if last is not None:
            # Everything up to `last` was sent (resuming after it skips nothing), and was
            # received before the answer.
            assert [e for e in self._expected(sub) if e[0] <= last] == sub.got, (last, sub.got)
        self._drop(sub)

    @rule()
    def read_ring(self):
        self._read_ring(0.01)

    def _read_ring(self, timeout: float) -> None:
        for e in self.ring.read(timeout=timeout):
            assert not e.truncated
            if bytes(e.key).startswith(self.prefix):
                self.ring_got.append((e.lsn, e.topic, bytes(e.key),
                                      None if e.deleted else bytes(e.value)))
        assert self.ring_got == self.events[:len(self.ring_got)], (self.ring_got, self.events)

    def teardown(self):
        try:
            deadline = time.monotonic() + 15
            while len(self.ring_got) < len(self.events) and time.monotonic() < deadline:
                self._read_ring(0.1)
            assert self.ring_got == self.events
            # Every open subscription receives all of its events once credit allows.
            for sub in self.subs:
                if sub.credits is not None:
                    sub.send({"op": "credit", "n": 100_000})
                    sub.granted += 100_000
                want = self._expected(sub)
                deadline = time.monotonic() + 15
                while len(sub.got) < len(want) and time.monotonic() < deadline:
                    if sub.manual and sub.got:
                        sub.send({"op": "ack", "lsn": sub.got[-1][0]})
                        sub.acked = sub.got[-1][0]
                    sub.pump(0.1)
                assert sub.error is None, sub.error
                assert sub.got == want, (sub.req, sub.got, want)
        finally:
            for sub in self.subs:
                sub.close()
            self.ring.close()
            self.client.close()


TestSubscriptionModel = SubscriptionModel.TestCase
# No example database: what fails here depends on timing as well as on the rules, so a
# stored example would not fail again the same way on replay.
TestSubscriptionModel.settings = settings(max_examples=40, stateful_step_count=40, deadline=None,
                                          database=None, suppress_health_check=list(HealthCheck))
