"""systemd notifications, TLS, deadlines and stream caps, through the real daemon."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import grpc
import pytest

from strata_client import Client, errors
from strata_client._proto import strata_pb2 as pb
from strata_client._proto import strata_pb2_grpc as pbg

from .conftest import ROOT


def test_sd_notify_ready_watchdog_and_stopping(daemon_factory, tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.5)
    d = daemon_factory(extra_env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000"})
    messages: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any("WATCHDOG=1" in m for m in messages):
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
    assert any(m.startswith("READY=1") for m in messages), messages
    assert any("WATCHDOG=1" in m for m in messages), messages
    d.proc.send_signal(__import__("signal").SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any("STOPPING=1" in m for m in messages):
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
    assert any("STOPPING=1" in m for m in messages), messages
    assert d.proc.wait(10) == 0
    sock.close()


@pytest.fixture
def tls_pair(tmp_path):
    openssl = shutil.which("openssl")
    assert openssl, "openssl is part of the base system here"
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(key), str(cert)


def test_tls_from_config(daemon_factory, tls_pair):
    key, cert = tls_pair
    d = daemon_factory(extra_env={"STRATA_TLS_KEY": key, "STRATA_TLS_CERT": cert}, start=False)
    d.start(wait=False)
    roots = open(cert, "rb").read()
    deadline = time.monotonic() + 30
    while True:
        try:
            with Client(d.grpc, root_certificates=roots, timeout=2) as c:
                c.put(b"secure", b"yes")
                assert c.get(b"secure") == b"yes"
            break
        except errors.Unavailable:
            assert time.monotonic() < deadline, d.logs()
            time.sleep(0.1)
    with Client(d.grpc, timeout=2, retry=None) as plain:  # no TLS: refused
        plain.retry.attempts = 1
        with pytest.raises(errors.Unavailable):
            plain.get(b"secure")


def test_stream_cap_refuses_with_resource_exhausted(daemon_factory):
    d = daemon_factory(extra_env={"STRATA_MAX_STREAMS": "2"})
    with grpc.insecure_channel(d.grpc) as ch:
        events = pbg.EventsStub(ch)
        subs = [events.Subscribe(pb.SubscribeRequest(topics=["t"])) for _ in range(2)]
        time.sleep(0.5)  # both are open and waiting
        third = events.Subscribe(pb.SubscribeRequest(topics=["t"]), timeout=5)
        with pytest.raises(grpc.RpcError) as e:
            next(third)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for s in subs:
            s.cancel()


def test_client_deadline_is_honoured(daemon):
    with grpc.insecure_channel(daemon.grpc) as ch:
        admin = pbg.AdminStub(ch)
        kv = pbg.KVStub(ch)
        kv.Batch(pb.BatchRequest(ops=[pb.Op(kind=pb.Op.PUT, key=b"k%05d" % i, value=b"x" * 500)
                                      for i in range(5000)]))
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            admin.Compact(pb.CompactRequest(), timeout=0.001)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 2
        assert kv.Get(pb.GetRequest(key=b"k00001")).found  # still serving


def test_server_reflection_lists_the_services(daemon):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(daemon.grpc) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        (resp,) = list(stub.ServerReflectionInfo(iter([req]), timeout=5))
        names = {s.name for s in resp.list_services_response.service}
    assert {"strata.v1.KV", "strata.v1.Events", "strata.v1.Admin",
            "grpc.health.v1.Health"} <= names


def test_health_turns_not_serving_while_draining(daemon_factory):
    """A call in flight keeps the listener answering through the drain, and health
    says NOT_SERVING meanwhile. The call is a Scan the test stops reading: HTTP/2 flow
    control holds it open until the test reads on, whatever the machine's speed."""
    import signal

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    d = daemon_factory(extra_env={"STRATA_DRAIN_TIMEOUT_S": "20"})
    with grpc.insecure_channel(d.grpc) as ch, grpc.insecure_channel(d.grpc) as probe:
        kv = pbg.KVStub(ch)
        for part in range(3):
            kv.Batch(pb.BatchRequest(ops=[
                pb.Op(kind=pb.Op.PUT, key=b"k%d-%05d" % (part, i), value=b"x" * 2000)
                for i in range(4000)]))
        scan = kv.Scan(pb.ScanRequest(), timeout=60)
        got = len(next(scan).items)
        d.proc.send_signal(signal.SIGTERM)
        health = health_pb2_grpc.HealthStub(probe)  # its own connection: ch's window is full
        seen = set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and health_pb2.HealthCheckResponse.NOT_SERVING not in seen:
            seen.add(health.Check(health_pb2.HealthCheckRequest(), timeout=2).status)
            time.sleep(0.01)
        assert health_pb2.HealthCheckResponse.NOT_SERVING in seen, seen
        assert d.proc.poll() is None  # still draining: the scan holds it
        with pytest.raises(grpc.RpcError) as e:  # new calls are refused meanwhile
            kv.Get(pb.GetRequest(key=b"k0-00001"), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        for r in scan:  # the call in flight is served to its end
            got += len(r.items)
        assert got == 12000
    assert d.proc.wait(15) == 0


def test_concurrent_call_cap_refuses_with_resource_exhausted(daemon_factory):
    d = daemon_factory(extra_env={"STRATA_MAX_CONCURRENT_CALLS": "1"})
    with grpc.insecure_channel(d.grpc) as ch:
        kv = pbg.KVStub(ch)
        for part in range(6):  # a compaction long enough (~0.5 s) to be seen
            kv.Batch(pb.BatchRequest(ops=[
                pb.Op(kind=pb.Op.PUT, key=b"k%d-%05d" % (part, i), value=b"x" * 2000)
                for i in range(4000)]))
        slow = pbg.AdminStub(ch).Compact.future(pb.CompactRequest(), timeout=60)
        time.sleep(0.02)
        codes = []
        while not slow.done():  # every call made while the compaction holds the slot
            try:
                kv.Get(pb.GetRequest(key=b"k0-00001"), timeout=5)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
            time.sleep(0.01)
        slow.result()
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
        assert kv.Get(pb.GetRequest(key=b"k0-00001")).found  # the slot is free again


def test_sigterm_ends_write_streams_promptly_and_loses_no_acknowledged_write(daemon_factory):
    """Write streams used to keep getting writes acknowledged through the drain, then be
    cancelled, and shutdown always took the whole drain timeout. They stop reading,
    answer what they took, and end with UNAVAILABLE."""
    import signal

    d = daemon_factory(extra_env={"STRATA_DRAIN_TIMEOUT_S": "20"})
    acked: dict[int, int] = {}
    ended: list[grpc.RpcError] = []
    started = threading.Event()

    def requests():
        for i in range(1, 2_000_000):
            yield pb.BatchRequest(id=i, request_id=f"w-{i}", ops=[
                pb.Op(kind=pb.Op.PUT, key=b"w%07d" % i, value=b"v")])
            if i == 200:
                started.set()

    def run():
        with grpc.insecure_channel(d.grpc) as ch:
            try:
                for resp in pbg.KVStub(ch).Write(requests(), timeout=60):
                    acked[resp.id] = resp.lsn
            except grpc.RpcError as e:
                ended.append(e)

    t = threading.Thread(target=run)
    t.start()
    assert started.wait(20)
    time.sleep(0.2)
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0
    took = time.monotonic() - t0
    t.join(15)
    assert took < 10, f"shutdown took {took:.1f}s of a 20 s drain window"
    assert ended and ended[0].code() == grpc.StatusCode.UNAVAILABLE, ended
    assert len(acked) > 100
    d2 = daemon_factory(data_dir=d.data_dir)
    with grpc.insecure_channel(d2.grpc) as ch:
        kv = pbg.KVStub(ch)
        for i in sorted(acked)[:: max(1, len(acked) // 300)] + [max(acked)]:
            assert kv.Get(pb.GetRequest(key=b"w%07d" % i)).found, i


def test_healthcheck_command_speaks_tls_when_the_daemon_does(daemon_factory, tls_pair):
    """The Docker HEALTHCHECK dialled plaintext and so could never pass for a TLS daemon."""
    key, cert = tls_pair
    env = {"STRATA_TLS_KEY": key, "STRATA_TLS_CERT": cert}
    d = daemon_factory(extra_env=env, start=False)
    d.start(wait=False)
    probe_env = dict(d.env, STRATA_GRPC_LISTEN=d.grpc)
    deadline = time.monotonic() + 30
    while True:
        r = subprocess.run([sys.executable, "-m", "strata.server.healthcheck"], env=probe_env,
                           capture_output=True, text=True, cwd=ROOT)
        if r.returncode == 0:
            break
        assert time.monotonic() < deadline, r.stderr + d.logs()
        time.sleep(0.2)
    # The same probe without the daemon's TLS settings is refused: it proves nothing.
    plain = {k: v for k, v in probe_env.items() if not k.startswith("STRATA_TLS")}
    r = subprocess.run([sys.executable, "-m", "strata.server.healthcheck", d.grpc], env=plain,
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "unhealthy" in r.stderr


@pytest.mark.expect_log_errors(r'"msg": "(writes stopped, health NOT_SERVING: )?WAL write failed in '
                               r'\S+: \[Errno 28\] No space left on device; writes stopped')
def test_full_disk_is_reported_and_writes_resume_when_space_is_freed(tmpfs, daemon_factory):
    """A failed engine stayed hidden (health SERVING, no status field, INTERNAL for every
    write, no recovery without a restart). On a real 32 MiB tmpfs: fill it, see the
    state in health, Status and /metrics, free space, see writes come back."""
    import urllib.request

    from grpc_health.v1 import health_pb2

    from .conftest import health_status

    mnt = tmpfs(32)
    d = daemon_factory(data_dir=str(mnt / "data"),
                       extra_env={"STRATA_MEMTABLE_SIZE": str(1 << 20)})
    acked = []
    with Client(d.grpc, retry=None) as c:
        for i in range(200):
            c.put(b"k%06d" % i, b"v" * 1000)
            acked.append(i)
        st = os.statvfs(str(mnt))
        with open(mnt / "filler", "wb") as f:
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - (256 << 10)))
        with pytest.raises((errors.Overloaded, errors.Internal)) as e:
            for i in range(200, 100_000):
                c.put(b"k%06d" % i, b"v" * 1000)
                acked.append(i)
        assert "No space left" in str(e.value) or "no space" in str(e.value).lower()
    # A fresh client: the first one's breaker rightly opened on the retried failures.
    with Client(d.grpc, retry=None) as c:
        deadline = time.monotonic() + 10
        while health_status(d.grpc) != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() < deadline, "health did not turn NOT_SERVING"
            time.sleep(0.05)
        status = c.status()
        assert not status.writable and "No space left" in status.write_error
        metrics = urllib.request.urlopen(f"http://{d.metrics}/metrics", timeout=5).read()
        assert b'strata_engine_writes_stopped{reason="no_space"} 1.0' in metrics
        assert c.get(b"k000000") == b"v" * 1000, "reads keep working"
        os.remove(mnt / "filler")
        deadline = time.monotonic() + 15
        while health_status(d.grpc) != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "writes did not resume: " + d.logs()[-2000:]
            time.sleep(0.05)
        assert c.status().writable
        c.put(b"after", b"space is back")
        acked.append(-1)
    assert d.terminate() == 0
    d2 = daemon_factory(data_dir=str(mnt / "data"))
    with Client(d2.grpc) as c:
        assert c.get(b"after") == b"space is back"
        for i in acked[::25]:
            if i >= 0:
                assert c.get(b"k%06d" % i) == b"v" * 1000, i
    d2.stop()
