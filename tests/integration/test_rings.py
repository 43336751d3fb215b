"""Shared-memory rings fed by a daemon subprocess, read by other processes."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time

import pytest
from websockets.asyncio.client import connect

from strata_client import Client
from strata_client.errors import Lapped
from strata_client.ring import RingClosed, RingReader

from .conftest import ROOT

READER = r"""
import json, sys
from strata_client.ring import RingReader
r = RingReader(sys.argv[1], wait=sys.argv[2])
print("ready", flush=True)
n, out = int(sys.argv[3]), []
while len(out) < n:
    for ev in r.read(timeout=20):
        # zero-copy: views into the ring, copied only to print them
        assert isinstance(ev.key, memoryview) and isinstance(ev.value, memoryview)
        out.append([ev.lsn, ev.topic, bytes(ev.key).decode(), bytes(ev.value).decode()])
print(json.dumps(out), flush=True)
"""


@pytest.fixture
def ring_name():
    n = f"strata-it-{os.getpid()}-{random.randrange(1 << 30)}"
    yield n
    for p in (f"/dev/shm/{n}", f"/dev/shm/.{n}.doorbell"):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


@pytest.mark.parametrize("wait", ["doorbell", "poll"])
def test_another_process_reads_the_ring_zero_copy(daemon_factory, ring_name, wait):
    d = daemon_factory(args=["--rings", f"{ring_name}:1MiB"])
    p = subprocess.Popen([sys.executable, "-c", READER, ring_name, wait, "30"],
                         stdout=subprocess.PIPE, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        assert p.stdout.readline().strip() == "ready"
        with Client(d.grpc) as c:
            lsns = [c.put(b"k%d" % i, b"v%d" % i) for i in range(10)]
            lsns.append(c.batch([("put", b"b%d" % i, b"w") for i in range(19)]) - 18)
            lsns.append(c.publish("news", b"n", b"hello"))
        out = json.loads(p.stdout.readline())
    finally:
        p.kill()
        p.wait()
    assert [e[0] for e in out] == list(range(lsns[0], lsns[0] + 30))
    assert out[0][1:] == ["kv", "k0", "v0"] and out[-1][1:] == ["news", "n", "hello"]


def test_a_lapped_reader_resumes_through_the_historical_tier(daemon_factory, ring_name):
    d = daemon_factory(args=["--rings", f"{ring_name}:64KiB"])
    r = RingReader(ring_name, wait="poll")
    with Client(d.grpc) as c:
        first = c.put(b"first", b"v")
        for i in range(20):  # ~200 KB through a 64 KiB ring
            last = c.batch([("put", b"k%d-%d" % (i, j), b"x" * 100) for j in range(100)])
    with pytest.raises(Lapped) as e:  # it was idle while the ring wrapped
        r.read(timeout=1)
    assert e.value.resume_lsn == first  # the first LSN it never got
    r.close()

    async def replay():
        async with connect(f"ws://{d.ws}/v1/events") as ws:
            await ws.send(json.dumps({"op": "subscribe", "tier": "historical",
                                      "from_lsn": e.value.resume_lsn}))
            lsns = []
            while not lsns or lsns[-1] < last:
                m = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if m["op"] == "event":
                    lsns.append(m["lsn"])
            return lsns

    assert asyncio.run(replay()) == list(range(first, last + 1))


def test_a_ring_left_by_a_killed_daemon_is_replaced(daemon_factory, ring_name):
    d = daemon_factory(args=["--rings", f"{ring_name}:1MiB"])
    old = RingReader(ring_name, wait="poll")
    d.kill()
    assert os.path.exists(f"/dev/shm/{ring_name}")  # SIGKILL: nobody removed it
    with pytest.raises(RingClosed):  # the reader notices its writer is gone
        old.read(timeout=2)
    old.close()
    d.start()
    assert any("replaced a stale ring" in r.get("msg", "") for r in d.log_records())
    r = RingReader(ring_name, wait="poll")
    with Client(d.grpc) as c:
        lsn = c.put(b"after", b"restart")
    assert [e.lsn for e in r.read(timeout=5)] == [lsn]
    r.close()
    d.terminate()
    assert not os.path.exists(f"/dev/shm/{ring_name}")  # a clean stop removes it


@pytest.mark.expect_log_errors(r'"msg": "startup failed: ring \'strata-it-[\w-]+\' is written by live '
                               r'process \d+; choose another ring name"')
def test_a_ring_with_a_live_writer_stops_a_second_daemon(daemon_factory, ring_name, tmp_path):
    daemon_factory(args=["--rings", f"{ring_name}:1MiB"])
    d2 = daemon_factory(args=["--rings", f"{ring_name}:1MiB"], data_dir=str(tmp_path / "other"),
                        start=False)
    d2.start(wait=False)
    assert d2.proc.wait(30) != 0
    assert "written by live process" in d2.logs()


def test_ring_readers_do_not_starve_the_daemon(daemon_factory, ring_name):
    """Four polling readers on two cores: writes keep flowing and every reader keeps up."""
    d = daemon_factory(args=["--rings", f"{ring_name}:8MiB"])
    procs = [subprocess.Popen([sys.executable, "-c", READER, ring_name, "poll", "2000"],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=ROOT)) for _ in range(4)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        with Client(d.grpc) as c:
            for i in range(20):
                c.batch([("put", b"k%d-%d" % (i, j), b"v") for j in range(100)])
        took = time.monotonic() - t0
        outs = [json.loads(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert all(len(o) == 2000 for o in outs)
    assert took < 10


def test_frames_that_end_exactly_at_the_end_of_the_ring_all_arrive(daemon_factory, ring_name):
    """Values sized so that blocks end exactly at the end of a 64 KiB ring's data
    area, followed in the same commit by more events: every LSN arrives, in order,
    with its value (the writer used to fail there, 'commit listener failed', and the
    ring lost those events or stopped publishing for good)."""
    from strata_client.ring import W_WRITE

    cap = 64 << 10
    d = daemon_factory(args=["--rings", f"{ring_name}:64KiB"])
    r = RingReader(ring_name, wait="poll")
    sent: list[tuple[int, bytes]] = []
    got: list[tuple[int, bytes]] = []

    def value(block: int, i: int) -> bytes:  # alone, a block of `block` bytes: key k%05d
        return bytes([i % 251]) * (block - 32 - 32 - 2 - 6)

    def read_all() -> None:
        deadline = time.monotonic() + 10
        while len(got) < len(sent) and time.monotonic() < deadline:
            got.extend((e.lsn, bytes(e.value)) for e in r.read(timeout=1))
        assert [lsn for lsn, _ in got] == [lsn for lsn, _ in sent]

    with Client(d.grpc) as c:
        i = 0

        def write(frames: list[int]) -> None:
            nonlocal i
            ops = [("put", b"k%05d" % (i + j), value(f, i + j)) for j, f in enumerate(frames)]
            last = c.batch(ops) if len(ops) > 1 else c.put(ops[0][1], ops[0][2])
            sent.extend(zip(range(last - len(ops) + 1, last + 1), (v for _, _, v in ops),
                            strict=True))
            i += len(ops)
            read_all()

        left = -r._words[W_WRITE] % cap  # fill up to the end: the test starts at offset 0
        while left:
            frame = min(left, 16384)
            if 0 < left - frame < 80:  # leave room for a whole block (80 B is the least)
                frame -= 80
            write([frame])
            left -= frame
        for _ in range(3):  # 16 KiB, 16 KiB, 16 KiB, then [16 KiB (ends at capacity), small]
            write([16384])
        write([16384, 80])
        write([80] * 3)
        for _ in range(3 * cap // (3 * 4096) + 1):  # 4 KiB frames three by three: 3 laps
            write([4096] * 3)
        for _ in range(6):  # 8 KiB frames four by four (half the ring each commit)
            write([8192] * 4)
    assert got == sent
    assert "commit listener failed" not in d.logs()
    r.close()


def test_ring_mode_sets_the_permissions_of_the_ring_and_its_doorbell(daemon_factory, ring_name):
    """ring_mode from the environment (octal digits), applied to both files."""
    import stat

    daemon_factory(args=["--rings", f"{ring_name}:1MiB"], extra_env={"STRATA_RING_MODE": "0640"})
    for path in (f"/dev/shm/{ring_name}", f"/dev/shm/.{ring_name}.doorbell"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640, path
    r = RingReader(ring_name, wait="poll")  # the owner still reads it
    r.close()
