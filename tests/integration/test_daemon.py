"""The daemon end to end: real process, real gRPC client, SIGKILL / SIGTERM, restarts."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2

from strata_client import Client, errors
from strata_client._proto import strata_pb2 as pb
from strata_client._proto import strata_pb2_grpc as pbg

from .conftest import ROOT, health_status


def test_kv_api_end_to_end(daemon):
    with Client(daemon.grpc) as c:
        l1 = c.put(b"a", b"1")
        assert c.get_entry(b"a") == (b"1", l1)
        assert c.get(b"missing") is None
        l2 = c.batch([("put", b"b", b"2"), ("put", b"c", b"3"), ("delete", b"a")])
        assert l2 == l1 + 3
        assert c.get(b"a") is None
        assert list(c.scan()) == [(b"b", b"2"), (b"c", b"3")]
        assert list(c.scan(b"c")) == [(b"c", b"3")]
        assert list(c.scan(limit=1)) == [(b"b", b"2")]
        assert list(c.scan(keys_only=True)) == [(b"b", b""), (b"c", b"")]
        c.delete(b"c")
        lsn = c.compare_and_set(b"n", b"1", expect_absent=True)
        with pytest.raises(errors.Conflict) as e:
            c.compare_and_set(b"n", b"2", expected_lsn=lsn - 1)
        assert e.value.current_lsn == lsn
        c.compare_and_set(b"n", b"2", expected_lsn=lsn)
        assert c.get(b"n") == b"2"
        st = c.status()
        assert st.last_lsn >= lsn + 1 and st.role == "master" and st.durability == "always"
        # Many batches on one Write stream, answered in order.
        lsns = list(c.write_stream([[("put", b"w%04d" % i, b"x")] for i in range(300)]))
        assert lsns == sorted(lsns) and len(set(lsns)) == 300
        assert c.get(b"w0299") == b"x"


def test_retried_put_with_request_id_writes_once(daemon):
    with Client(daemon.grpc) as c:
        first = c.put(b"k", b"v", request_id="req-1")
        again = c.put(b"k", b"v", request_id="req-1")
        assert first == again
        assert c.status().last_lsn == first


def test_sigkill_under_concurrent_writers_loses_no_acknowledged_write(daemon_factory):
    d = daemon_factory()
    acked: dict[bytes, bytes] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(t: int) -> None:
        with Client(d.grpc, timeout=5, retry=None) as c:
            c.retry.attempts = 1
            for i in range(100_000):
                if stop.is_set():
                    return
                k, v = b"t%d-%06d" % (t, i), os.urandom(16)
                try:
                    c.put(k, v)
                except errors.StrataError:
                    return  # the server died under us
                with lock:
                    acked[k] = v

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    d.kill()
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acked) > 100, "the writers barely wrote"
    d2 = daemon_factory(data_dir=d.data_dir)
    with Client(d2.grpc) as c:
        lost = [k for k, v in acked.items() if c.get(k) != v]
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged writes lost"


def test_sigterm_drains_flushes_and_restart_replays_nothing(daemon_factory):
    d = daemon_factory()
    with Client(d.grpc) as c:
        for i in range(200):
            c.put(b"k%03d" % i, b"v")
    t0 = time.monotonic()
    assert d.terminate() == 0
    assert time.monotonic() - t0 < 2.0, "SIGTERM to exit took over 2 s"
    assert any("stopped cleanly" in r.get("msg", "") for r in d.log_records())
    d2 = daemon_factory(data_dir=d.data_dir)
    opened = [r["msg"] for r in d2.log_records() if r.get("logger") == "strata.engine"
              and r.get("msg", "").startswith("opened")]
    assert opened and " 0 WAL frames replayed" in opened[0], opened
    with Client(d2.grpc) as c:
        assert c.get(b"k199") == b"v"


def test_startup_to_serving_is_fast_on_an_empty_dir(daemon_factory):
    d = daemon_factory(start=False).start(wait=False)
    took = d.wait_serving(30)
    assert took < 5.0  # the 1 s target is measured by bench/server; this guards regressions


def test_bad_input_gets_documented_codes_and_leaves_data_intact(daemon_factory):
    d = daemon_factory(extra_env={"STRATA_MAX_VALUE_SIZE": "1024", "STRATA_MAX_BATCH_BYTES": "65536"})
    with grpc.insecure_channel(d.grpc) as ch:
        kv = pbg.KVStub(ch)
        kv.Put(pb.PutRequest(key=b"keep", value=b"safe"))

        def code_of(fn, req):
            with pytest.raises(grpc.RpcError) as e:
                fn(req, timeout=5)
            return e.value.code()

        C = grpc.StatusCode
        assert code_of(kv.Put, pb.PutRequest(key=b"", value=b"v")) == C.INVALID_ARGUMENT
        assert code_of(kv.Put, pb.PutRequest(key=b"k" * 70000, value=b"v")) == C.INVALID_ARGUMENT
        assert code_of(kv.Put, pb.PutRequest(key=b"k", value=b"v" * 1025)) == C.INVALID_ARGUMENT
        assert code_of(kv.Batch, pb.BatchRequest()) == C.INVALID_ARGUMENT
        assert code_of(kv.Batch, pb.BatchRequest(ops=[pb.Op(key=b"x")])) == C.INVALID_ARGUMENT
        assert code_of(kv.Batch, pb.BatchRequest(ops=[
            pb.Op(kind=pb.Op.PUT, key=b"x%d" % i, value=b"v" * 1000) for i in range(100)])) \
            == C.INVALID_ARGUMENT
        # Over the configured limit but within what any configuration admits: the
        # handler's clear INVALID_ARGUMENT (not a retryable RESOURCE_EXHAUSTED).
        assert code_of(kv.Put, pb.PutRequest(key=b"k", value=b"v" * (4 << 20))) \
            == C.INVALID_ARGUMENT
        # Over the transport's message limit: refused by gRPC before any handler runs.
        assert code_of(kv.Put, pb.PutRequest(key=b"k", value=b"v" * (40 << 20))) \
            == C.RESOURCE_EXHAUSTED
        assert code_of(kv.CompareAndSet, pb.CompareAndSetRequest(key=b"k", value=b"v")) \
            == C.INVALID_ARGUMENT
        assert code_of(pbg.EventsStub(ch).Publish, pb.PublishRequest(topic="kv")) \
            == C.INVALID_ARGUMENT
        for bad in ("/tmp/absolute", "../escape", "a/../../escape", ""):
            assert code_of(pbg.AdminStub(ch).Checkpoint, pb.CheckpointRequest(path=bad)) \
                == C.INVALID_ARGUMENT, bad
        # Malformed protobuf bytes on a real method.
        raw = ch.unary_unary("/strata.v1.KV/Put", request_serializer=lambda b: b,
                             response_deserializer=lambda b: b)
        assert code_of(raw, b"\xff\xff\xff\xff garbage") == C.INVALID_ARGUMENT
        resp = kv.Get(pb.GetRequest(key=b"keep"))
        assert resp.found and resp.value == b"safe"
        assert kv.Get(pb.GetRequest(key=b"x1")).found is False, "a refused batch wrote something"


def test_random_bytes_on_ports_leave_the_daemon_healthy(daemon):
    rng = random.Random(7)
    for addr in (daemon.grpc, daemon.ws, daemon.metrics):
        host, port = addr.rsplit(":", 1)
        for _ in range(5):
            with socket.create_connection((host, int(port)), timeout=2) as s:
                try:
                    s.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4096))))
                    s.settimeout(0.5)
                    s.recv(4096)
                except OSError:
                    pass
    assert health_status(daemon.grpc) == health_pb2.HealthCheckResponse.SERVING
    with Client(daemon.grpc) as c:
        c.put(b"still", b"fine")
        assert c.get(b"still") == b"fine"


def test_health_reports_not_serving_while_recovering(daemon_factory, tmp_path):
    from strata.storage import Engine

    data = str(tmp_path / "data")
    db = Engine.open(data, durability="none", memtable_size=1 << 30)
    for i in range(150_000):
        db.put(b"k%08d" % i, b"v" * 20)
    db._halt()  # a crash: everything is in the WAL, to be replayed
    d = daemon_factory(data_dir=data, start=False).start(wait=False)
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = health_status(d.grpc, 0.5)
        if st is not None and (not seen or seen[-1] != st):
            seen.append(st)
        if st == health_pb2.HealthCheckResponse.SERVING:
            break
        time.sleep(0.01)
    assert seen[0] == health_pb2.HealthCheckResponse.NOT_SERVING, seen
    assert seen[-1] == health_pb2.HealthCheckResponse.SERVING, seen
    with Client(d.grpc) as c:
        assert c.get(b"k00149999") == b"v" * 20


def test_calls_during_recovery_get_unavailable(daemon_factory, tmp_path):
    from strata.storage import Engine

    data = str(tmp_path / "data")
    db = Engine.open(data, durability="none", memtable_size=1 << 30)
    for i in range(150_000):
        db.put(b"k%08d" % i, b"v" * 20)
    db._halt()
    d = daemon_factory(data_dir=data, start=False).start(wait=False)
    codes = set()
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(d.grpc) as ch:
        kv = pbg.KVStub(ch)
        while time.monotonic() < deadline:
            try:
                kv.Get(pb.GetRequest(key=b"k00000001"), timeout=1)
                break
            except grpc.RpcError as e:
                codes.add(e.code())
            time.sleep(0.01)
    assert grpc.StatusCode.UNAVAILABLE in codes


def test_auth_token_is_required_when_configured(daemon_factory):
    d = daemon_factory(extra_env={"STRATA_AUTH_TOKEN": "s3cret"})
    with Client(d.grpc) as c:
        with pytest.raises(errors.Unauthenticated):
            c.put(b"k", b"v")
    with Client(d.grpc, token="wrong") as c:
        with pytest.raises(errors.Unauthenticated):
            c.get(b"k")
    with Client(d.grpc, token="s3cret") as c:
        c.put(b"k", b"v")
        assert c.get(b"k") == b"v"


def test_rate_limit_refuses_with_resource_exhausted(daemon_factory):
    d = daemon_factory(extra_env={"STRATA_RATE_LIMIT": "5", "STRATA_RATE_BURST": "5"})
    with grpc.insecure_channel(d.grpc) as ch:
        kv = pbg.KVStub(ch)
        codes = []
        for _ in range(20):
            try:
                kv.Get(pb.GetRequest(key=b"k"), timeout=5)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
    assert codes[:5] == [grpc.StatusCode.OK] * 5
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[5:]
    metrics = urllib.request.urlopen(f"http://{d.metrics}/metrics", timeout=5).read().decode()
    assert 'strata_refused_total{reason="rate"}' in metrics


def test_metrics_endpoint_exports_requests_and_engine(daemon):
    with Client(daemon.grpc) as c:
        c.put(b"m", b"1")
        c.get(b"m")
    text = urllib.request.urlopen(f"http://{daemon.metrics}/metrics", timeout=5).read().decode()
    assert 'strata_requests_total{code="OK",method="KV.Put"} 1.0' in text
    assert "strata_request_seconds_bucket" in text
    assert 'strata_engine_lsn{kind="last"} 1.0' in text
    assert "strata_engine_wal_groups_total" in text


def test_sighup_reloads_limits(daemon_factory, tmp_path):
    conf = tmp_path / "strata.toml"
    conf.write_text("max_value_size = 100\n")
    d = daemon_factory(args=["--config", str(conf)])
    with Client(d.grpc) as c:
        with pytest.raises(errors.InvalidArgument):
            c.put(b"k", b"v" * 200)
        conf.write_text("max_value_size = 1000\n")
        d.proc.send_signal(__import__("signal").SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                c.put(b"k", b"v" * 200)
                break
            except errors.InvalidArgument:
                time.sleep(0.05)
        assert c.get(b"k") == b"v" * 200
    assert any("reloaded" in r.get("msg", "") for r in d.log_records())


def test_config_command_shows_sources(tmp_path):
    conf = tmp_path / "s.toml"
    conf.write_text('durability = "interval"\n')
    out = subprocess.run(
        [sys.executable, "-m", "strata.server.cli", "config", "--config", str(conf), "--data-dir", "/x"],
        env=dict(os.environ, PYTHONPATH=ROOT, STRATA_MEMTABLE_SIZE="1048576"),
        capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert f'durability = "interval"  # {conf}' in out
    assert 'data_dir = "/x"  # flag --data-dir' in out
    assert "memtable_size = 1048576  # STRATA_MEMTABLE_SIZE" in out
    assert 'grpc_listen = "127.0.0.1:7400"  # default' in out
    bad = subprocess.run([sys.executable, "-m", "strata.server.cli", "config"],
                         env=dict(os.environ, PYTHONPATH=ROOT, STRATA_DURABILITY="sometimes"),
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "durability" in bad.stderr


def test_cli_client_commands(daemon):
    env = dict(os.environ, PYTHONPATH=ROOT, STRATA_SERVER=daemon.grpc)

    def strata(*args):
        return subprocess.run([sys.executable, "-m", "strata.server.cli", *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=30)

    assert strata("put", "greeting", "hello").returncode == 0
    r = strata("get", "greeting")
    assert r.returncode == 0 and r.stdout.strip() == "hello"
    assert "greeting\thello" in strata("scan").stdout
    assert "role master" in strata("status").stdout
    assert strata("del", "greeting").returncode == 0
    assert strata("get", "greeting").returncode == 1


def test_wal_histograms_are_exported(daemon):
    with Client(daemon.grpc) as c:
        for i in range(5):
            c.put(b"h%d" % i, b"v")
    text = urllib.request.urlopen(f"http://{daemon.metrics}/metrics", timeout=5).read().decode()
    assert 'strata_wal_fsync_seconds_bucket{le="+Inf"}' in text
    count = [line for line in text.splitlines() if line.startswith("strata_wal_fsync_seconds_count")]
    assert count and float(count[0].split()[-1]) >= 5
    assert 'strata_wal_group_frames_bucket{le="1"}' in text


def test_value_limit_and_its_reload_do_not_depend_on_the_batch_limit(daemon_factory, tmp_path):
    """The transport limit was derived from max_batch_bytes alone: a 2 MiB put under a
    4 MiB max_value_size got RESOURCE_EXHAUSTED (which clients retry), and raising a limit
    on SIGHUP never reached the transport."""
    conf = tmp_path / "strata.toml"
    conf.write_text("max_batch_bytes = 1048576\nmax_value_size = 4194304\n")
    d = daemon_factory(args=["--config", str(conf)])
    big = b"v" * (2 << 20)
    with Client(d.grpc) as c:
        c.put(b"big", big)
        assert c.get(b"big") == big
        with pytest.raises(errors.InvalidArgument):
            c.put(b"bigger", b"v" * (5 << 20))
        conf.write_text("max_batch_bytes = 1048576\nmax_value_size = 8388608\n")
        d.proc.send_signal(__import__("signal").SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                c.put(b"bigger", b"v" * (5 << 20))
                break
            except errors.InvalidArgument:
                time.sleep(0.05)
        assert c.get(b"bigger") == b"v" * (5 << 20)


def test_checkpoints_go_under_backup_dir_by_relative_name(daemon_factory, tmp_path):
    """Admin.Checkpoint used to write wherever an absolute path pointed; now a relative
    name under backup_dir, and nothing that leaves it (.., symlinks)."""
    backups = tmp_path / "backups"
    outside = tmp_path / "outside"
    outside.mkdir()
    backups.mkdir()
    (backups / "link").symlink_to(outside)
    d = daemon_factory(extra_env={"STRATA_BACKUP_DIR": str(backups)})
    with Client(d.grpc) as c:
        for i in range(200):
            c.put(b"k%03d" % i, b"v%d" % i)
        lsn = c.checkpoint("nightly/2026-12-02")
        assert lsn >= 200
        for bad in ("link/cp", "../outside/cp", "/abs", "nightly/2026-12-02"):
            with pytest.raises(errors.InvalidArgument):
                c.checkpoint(bad)
    assert not os.listdir(outside)
    cp = backups / "nightly" / "2026-12-02"
    assert (cp / "CURRENT").exists()
    d2 = daemon_factory(data_dir=str(cp))
    with Client(d2.grpc) as c:
        assert c.get(b"k199") == b"v199"


def test_admin_token_guards_checkpoint_and_compact(daemon_factory):
    d = daemon_factory(extra_env={"STRATA_AUTH_TOKEN": "data", "STRATA_ADMIN_TOKEN": "admin"})
    with Client(d.grpc, token="data") as c:
        c.put(b"k", b"v")
        c.status()
        with pytest.raises(errors.Unauthenticated):
            c.checkpoint("cp1")
        with pytest.raises(errors.Unauthenticated):
            c.compact()
    with Client(d.grpc, token="admin") as c:
        assert c.checkpoint("cp1") >= 1
        c.compact()
        assert c.get(b"k") == b"v"
    assert os.path.exists(os.path.join(d.data_dir, "checkpoints", "cp1", "CURRENT"))


def test_a_put_retried_after_its_deadline_is_written_once(daemon):
    """A Put whose deadline expired while it waited for its group's fsync still commits;
    its retry with the same request_id must get that LSN, not write again (34-51 of 400
    such puts used to appear twice in the WAL history)."""
    import asyncio

    async def main() -> int:
        stop = asyncio.Event()
        timed_out = 0
        async with grpc.aio.insecure_channel(daemon.grpc) as ch:
            kv = pbg.KVStub(ch)

            async def background(n: int) -> None:  # keeps every group commit busy
                for i in range(100_000):
                    if stop.is_set():
                        return
                    await kv.Put(pb.PutRequest(key=b"bg%02d-%06d" % (n, i), value=b"x" * 200))

            bg = [asyncio.ensure_future(background(n)) for n in range(64)]
            try:
                await asyncio.sleep(0.2)
                for i in range(400):
                    req = pb.PutRequest(key=b"probe%04d" % i, value=b"v",
                                        request_id=f"probe-{i}")
                    try:
                        await kv.Put(req, timeout=0.004 + 0.036 * (i % 10) / 10)
                    except grpc.aio.AioRpcError as e:
                        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
                        timed_out += 1
                        await kv.Put(req, timeout=30)  # the client's retry, same id
            finally:
                stop.set()
                await asyncio.gather(*bg, return_exceptions=True)
        return timed_out

    timed_out = asyncio.run(main())
    assert timed_out > 0, "no put timed out: the test proved nothing"
    seen: dict[bytes, int] = {}
    with grpc.insecure_channel(daemon.grpc) as ch:
        pbg.KVStub(ch).Put(pb.PutRequest(key=b"probe~end", value=b"."))  # after every probe
        for ev in pbg.EventsStub(ch).Subscribe(
                pb.SubscribeRequest(topics=["kv"], key_prefix=b"probe", from_lsn=1), timeout=60):
            if ev.key == b"probe~end":
                break
            seen[ev.key] = seen.get(ev.key, 0) + 1
    twice = {k: n for k, n in seen.items() if n > 1}
    assert not twice, f"{len(twice)} of 400 puts written more than once ({timed_out} timed out)"
    assert len(seen) == 400
