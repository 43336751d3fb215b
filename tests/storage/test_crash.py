"""SIGKILL a writer process at random moments; every acknowledged write must survive.

The writer runs the real engine (compaction in its worker process) and tells
the parent each acknowledgement; the parent kills it mid-stream, reopens the
database and checks: every acknowledged put is present with its value, and
every batch is all there or not at all. Repeated across restarts on one
directory so recovery runs on the output of earlier recoveries.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from strata.storage import Engine

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_and_kill(path: str, start: int, durability: str, run_s: float) -> list[str]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "storage", "crash_writer.py"),
                          path, str(start), durability], stdout=subprocess.PIPE, env=env)
    assert p.stdout is not None
    fd = p.stdout.fileno()
    os.set_blocking(fd, False)
    buf = bytearray()
    deadline = time.monotonic() + run_s
    while time.monotonic() < deadline and p.poll() is None:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            chunk = b""
        buf += chunk
        if not chunk:
            time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, f"writer exited by itself: {p.returncode}"
    while True:  # what it printed before dying was acknowledged
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        buf += chunk
    p.stdout.close()
    # A partial last line is not an acknowledgement.
    return buf.decode().split("\n")[:-1]


def _check(path: str, acks: list[str]) -> int:
    with Engine.open(path) as db:
        for line in acks:
            kind, *keys = line.split()
            if kind == "P":
                i = int(keys[0][1:])
                assert db.get(keys[0].encode()) == b"v%d" % i * 8, f"lost acknowledged put {keys[0]}"
            else:
                i = int(keys[0][1:-1])
                vals = [db.get(kk.encode()) for kk in keys]
                assert vals == [b"batch-%d" % i] * 3, f"lost or torn batch {keys}: {vals}"
        # No batch anywhere is half-applied, acknowledged or not.
        by_batch: dict[bytes, int] = {}
        for key, _ in db.scan():
            if key[-1:] in (b"a", b"b", b"c") and key[:1] == b"k":
                by_batch[key[:-1]] = by_batch.get(key[:-1], 0) + 1
        torn = {k: n for k, n in by_batch.items() if n != 3}
        assert not torn, f"half-applied batches: {torn}"
        return db.last_lsn


def _crash_loop(tmp_path, rounds: int, durability: str, seed: int) -> None:
    rng = random.Random(seed)
    path = str(tmp_path / "db")
    start = 0
    total_acks = 0
    for _ in range(rounds):
        acks = _run_and_kill(path, start, durability, 0.6 + rng.random() * 1.2)
        total_acks += len(acks)
        _check(path, acks)
        start += len(acks) + 1000  # fresh keys each round; unacknowledged ones may exist
    assert total_acks > rounds * 10, "the writer barely wrote anything"


@pytest.mark.parametrize("durability", ["always", "none"])
def test_sigkill_loses_no_acknowledged_write(tmp_path, durability):
    _crash_loop(tmp_path, rounds=5, durability=durability, seed=1)


@pytest.mark.slow
def test_sigkill_soak(tmp_path):
    _crash_loop(tmp_path, rounds=60, durability="always", seed=2)
