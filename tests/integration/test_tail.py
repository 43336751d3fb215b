"""`strata tail` follows a ring, the WebSocket tiers and gRPC, one JSON line an event."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

from strata_client import Client

from .conftest import ROOT


def test_tail_prints_the_same_events_from_every_source(daemon_factory):
    ring = f"strata-tail-{os.getpid()}-{random.randrange(1 << 30)}"
    d = daemon_factory(args=["--rings", f"{ring}:1MiB"])
    cmd = [sys.executable, "-m", "strata.server.cli", "tail", "--count", "3"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen(cmd + src, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=ROOT, env=env)
             for src in (["--ring", ring], ["--server", f"ws://{d.ws}"], ["--server", d.grpc])]
    time.sleep(2)  # attached and subscribed (live)
    with Client(d.grpc) as c:
        l1 = c.put(b"a", b"1")
        c.publish("news", b"n", "héllo".encode())
        c.delete(b"a")
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        outs.append([json.loads(line) for line in out.splitlines()])
    for lines in outs:
        assert [(e["lsn"], e["topic"], e["key"], e["value"]) for e in lines] == [
            (l1, "kv", "a", "1"), (l1 + 1, "news", "n", "héllo"), (l1 + 2, "kv", "a", None)]
    # Every source gives each event its write's commit time, from its WAL frame.
    ts = [[e["ts"] for e in lines] for lines in outs]
    assert ts[0] == ts[1] == ts[2] and None not in ts[0], ts
