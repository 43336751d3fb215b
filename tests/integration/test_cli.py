"""The `strata` command against real daemons: status (one node and --cluster), output
formats, checkpoints and compaction, failed starts, configuration errors, and a tail
that outlives a restart of the server."""

from __future__ import annotations

import json
import os
import pty
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from strata_client import Client

from .. import daemon_logs
from .conftest import ROOT, Daemon
from .test_replication import Cluster


def _strata() -> list[str]:
    """The installed console script (what people run), else the module."""
    exe = os.path.join(os.path.dirname(sys.executable), "strata")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "strata.server.cli"]


ENV = dict(os.environ, PYTHONPATH=ROOT)
for _var in [v for v in ENV if v.startswith("STRATA_")]:
    del ENV[_var]


def strata(*args: str, env: dict | None = None, timeout: float = 60,
           **kw) -> subprocess.CompletedProcess:
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    r = subprocess.run([*_strata(), *args], text=True, cwd=ROOT,
                       env=dict(ENV, **(env or {})), timeout=timeout, **kw)
    if args[:1] == ("serve",) and isinstance(r.stderr, str):
        # a daemon's log like any other: checked for errors at the end of the run
        (daemon_logs.log_file("serve") or Path(os.devnull)).write_text(r.stderr)
    return r


def test_version():
    r = strata("--version")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"strata \S+ \(Python 3\.\d+\.\d+\)\n", r.stdout), r.stdout


def test_status_consumers_and_config_as_json_and_tables(daemon):
    with Client(daemon.grpc) as c:
        for i in range(3):
            c.put(b"k%d" % i, b"v" * 1000)
    r = strata("status", "--server", daemon.grpc, "-o", "json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["role"] == "master" and st["last_lsn"] == 3 and isinstance(st["wal_bytes"], int)
    assert st["wal_preallocated_bytes"] > 0  # fsync durability allocates the log ahead
    r = strata("status", "--server", daemon.grpc)
    assert r.returncode == 0, r.stderr
    assert re.search(r"disk: \d+ B tables, \d+\.\d KiB WAL", r.stdout), r.stdout  # ~3 KiB

    r = strata("consumers", "--server", daemon.grpc, "-o", "json")
    assert r.returncode == 0, r.stderr
    cons = json.loads(r.stdout)
    assert cons["consumers"] == [] and cons["last_lsn"] == 3
    r = strata("consumers", "--server", daemon.grpc)
    assert "consumer_retention_bytes 1.0 GiB" in r.stdout, r.stdout

    r = strata("config", "-o", "json", "--durability", "interval",
               env={"STRATA_AUTH_TOKEN": "secret"})
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["durability"] == {"value": "interval", "source": "flag --durability"}
    assert cfg["auth_token"] == {"value": "<set>", "source": "STRATA_AUTH_TOKEN"}
    r = strata("config", "-o", "table")
    assert re.search(r"^grpc_listen +\"127\.0\.0\.1:7400\" +default$", r.stdout, re.M), r.stdout


def test_output_cut_short_by_head_is_quiet(daemon):
    with Client(daemon.grpc) as c:
        c.batch([("put", b"key%05d" % i, b"x" * 100) for i in range(3000)])  # ~350 KB of scan
    for cmd in ("scan", "status"):
        r = subprocess.run(["bash", "-c", f"{' '.join(_strata())} {cmd} --server {daemon.grpc}"
                                          " | head -1; echo \"status ${PIPESTATUS[0]}\""],
                           capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=60)
        assert r.stderr == "", r.stderr
        first, last = r.stdout.splitlines()
        assert first.startswith("key00000" if cmd == "scan" else "node ")
        # scan fills the pipe long before it ends: it meets the closed pipe for sure
        assert last in (("status 141",) if cmd == "scan" else ("status 0", "status 141"))


def test_checkpoint_checkpoints_and_compact(daemon):
    with Client(daemon.grpc) as c:
        c.batch([("put", b"key%05d" % i, b"x" * 100) for i in range(2000)])
    r = strata("checkpoint", "nightly/one", "--server", daemon.grpc)
    assert r.returncode == 0, r.stderr
    m = re.fullmatch(r"checkpoint nightly/one at LSN 2000: (\d+\.\d KiB) in \d+ files, "
                     r"\d+\.\ds, (/.*)\n", r.stdout)
    assert m, r.stdout
    assert os.path.isfile(os.path.join(m.group(2), "CURRENT"))
    assert r.stderr == ""  # not a terminal: no progress drawn

    # On a terminal, progress is drawn on stderr and erased before the result
    main, sub = pty.openpty()
    try:
        r = strata("checkpoint", "nightly/two", "--server", daemon.grpc, stderr=sub)
        os.close(sub)
        sub = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(main)
        if sub >= 0:
            os.close(sub)
    assert r.returncode == 0
    assert b"\rcheckpoint nightly/two: copying " in drawn, drawn
    assert drawn.endswith(b"\r\x1b[K"), drawn

    r = strata("checkpoints", "--server", daemon.grpc, "-o", "json")
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert [x["name"] for x in listed["checkpoints"]] == ["nightly/one", "nightly/two"]
    assert listed["backup_dir"] == os.path.join(os.path.abspath(daemon.data_dir), "checkpoints")
    assert all(x["bytes"] > 200_000 and x["files"] >= 3 for x in listed["checkpoints"])
    r = strata("checkpoints", "--server", daemon.grpc)
    assert re.search(r"^nightly/two +\S+Z +\d+\.\dKiB +\d+ +/", r.stdout, re.M), r.stdout

    done = [x["msg"] for x in daemon.log_records() if "checkpoint 'nightly/one' done" in x["msg"]]
    assert len(done) == 1 and re.search(r"done: \d+ bytes in \d+ files, LSN 2000, [\d.]+s", done[0])

    r = strata("compact", "--server", daemon.grpc)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"compacted in \d+\.\d\ds\n", r.stdout), r.stdout
    r = strata("checkpoint", "nightly/one", "--server", daemon.grpc)
    assert r.returncode == 1 and "already exists" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("setting", ["grpc_listen", "metrics_listen"])
@pytest.mark.expect_log_errors(r'"msg": "startup failed: cannot listen on 127\.0\.0\.1:\d+ \('
                               r'(grpc|metrics)_listen, from STRATA_')
def test_a_taken_port_is_one_line_naming_address_and_setting(tmp_path, setting):
    d = Daemon(str(tmp_path / "data"))
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = f"127.0.0.1:{holder.getsockname()[1]}"
    listen = {"grpc_listen": d.grpc, "ws_listen": d.ws, "metrics_listen": d.metrics}
    del listen[setting]  # from the environment, to check the source is named
    try:
        r = strata("serve", "--data-dir", d.data_dir,
                   *[a for k, v in listen.items() for a in ("--" + k.replace("_", "-"), v)],
                   env={"STRATA_" + setting.upper(): taken})
    finally:
        holder.close()
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and "stopped cleanly" not in r.stderr, r.stderr
    errors = [json.loads(line) for line in r.stderr.splitlines()
              if line.startswith("{") and json.loads(line)["level"] == "error"]
    assert [e["msg"] for e in errors] == [
        f"startup failed: cannot listen on {taken} ({setting}, from STRATA_{setting.upper()}): "
        f"Address already in use (another process holds it)"], r.stderr
    assert "E1" not in r.stderr  # gRPC's own bind error line (it is asked only when free)


def test_configuration_errors_all_at_once_naming_the_closest_option(tmp_path):
    r = strata("config", "--replication", "bogus")
    assert r.returncode == 2
    assert r.stderr == ("strata: configuration error: replication must be one of async, "
                        "quorum, sync, not 'bogus'\n")
    conf = tmp_path / "s.toml"
    conf.write_text('durabilty = "always"\nmax_key_size = 0\n')
    for cmd in ("config", "serve"):
        r = strata(cmd, "--config", str(conf), "--grpc-listen", "nowhere",
                   env={"STRATA_DURABILTY": "none", "STRATA_MEMTABLE_SIZE": "big"},
                   timeout=30)
        assert r.returncode == 2, r.stderr
        assert r.stderr.splitlines() == [
            "strata: configuration error: " + e for e in (
                f"config file {conf}: unknown option 'durabilty' (did you mean durability?)",
                "unknown environment variable 'STRATA_DURABILTY' (did you mean "
                "STRATA_DURABILITY?)",
                "memtable_size from STRATA_MEMTABLE_SIZE: 'big' is not a int",
                "grpc_listen must be host:port, not 'nowhere'",
                "max_key_size must be 1 .. 65536, not 0")], r.stderr


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path).start()
    yield c
    c.stop()


def test_status_cluster_from_any_node(cluster):
    master = cluster.master()
    with Client(cluster.nodes[master].grpc) as c:
        lsn = c.put(b"k", b"v")
    replicas = sorted(set(cluster.nodes) - {master})
    for i in replicas:
        cluster.wait_applied(i, lsn)
    seed = cluster.nodes[replicas[0]].grpc
    # Heartbeats keep coming; the master's view of a replica is "healthy" within a few
    deadline = time.monotonic() + 15
    while True:
        r = strata("status", "--cluster", "-o", "json", "--server", seed)
        assert r.returncode == 0, r.stderr
        rows = json.loads(r.stdout)
        if all(x["health"] == "healthy" for x in rows) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [(x["node"], x["role"]) for x in rows] == [(master, "master")] + [
        (i, "replica") for i in replicas], rows
    assert {x["address"] for x in rows} == {d.grpc for d in cluster.nodes.values()}
    assert all(x["health"] == "healthy" and x["term"] == rows[0]["term"] for x in rows), rows
    assert rows[0]["lease"] is True and rows[0]["commit_lsn"] >= lsn
    assert all(x["applied_lsn"] >= lsn for x in rows)

    r = strata("status", "--cluster", "--server", seed)
    head, *lines = r.stdout.splitlines()
    assert head.split() == ["NODE", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG",
                            "LEASE", "HEALTH"]
    assert lines[0].split()[:3] == [master, cluster.nodes[master].grpc, "master"]

    # The same node under another name for its address is one row, under the cluster's name
    r = strata("status", "--cluster", "-o", "json", "--server", seed.replace("127.0.0.1", "localhost"))
    assert sorted(x["address"] for x in json.loads(r.stdout)) == sorted(
        d.grpc for d in cluster.nodes.values()), r.stdout

    # A replica hears only its master; the other replica is shown as the master sees it
    r = strata("status", "--server", seed)
    assert r.returncode == 0, r.stderr
    other = re.search(rf"^  peer {replicas[1]} .*$", r.stdout, re.M).group(0)
    assert f"(as master {master} sees it)" in other and "unknown" not in other, r.stdout
    assert "never" not in other, r.stdout

    cluster.nodes[replicas[1]].kill()
    r = strata("status", "--cluster", "-o", "json", "--server", seed)
    assert r.returncode == 1 and r.stderr.startswith("strata: no answer from ")
    down = [x for x in json.loads(r.stdout) if x["health"] == "down"]
    assert [x["node"] for x in down] == [replicas[1]], r.stdout


def _restart(d: Daemon) -> None:
    assert d.terminate() == 0
    d._log.close()
    d.start()


def _ring_name() -> str:
    return f"strata-cli-{os.getpid()}-{random.randrange(1 << 30)}"


@pytest.mark.parametrize("source", ["grpc", "ws", "ring"])
def test_tail_reconnects_after_a_restart_and_resumes_after_the_last_lsn(daemon_factory, source):
    ring = _ring_name()
    d = daemon_factory(args=["--rings", f"{ring}:1MiB"], start=False)
    args = {"grpc": ["--server", d.grpc], "ws": ["--server", f"ws://{d.ws}"],
            "ring": ["--ring", ring]}[source]
    if source == "ring":
        d.start()  # a ring reader sees what is written after it attached
    else:
        args += ["--from-lsn", "1"]  # started before the server: it waits for it
    tail = subprocess.Popen([*_strata(), "tail", *args, "--count", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=ENV)
    try:
        if source == "ring":
            time.sleep(2)  # attached
        else:
            d.start()
        with Client(d.grpc) as c:
            c.put(b"a", b"1")
            c.put(b"b", b"2")
        first = tail.stdout.readline() + tail.stdout.readline()  # printed before the restart
        _restart(d)
        with Client(d.grpc) as c:
            c.put(b"c", b"3")
            c.put(b"d", b"4")
            first += tail.stdout.readline() + tail.stdout.readline()
            c.put(b"e", b"5")  # the tail is past its history now: this one is live
        out, err = tail.communicate(timeout=60)
        out = first + out
    finally:
        if tail.poll() is None:
            tail.send_signal(signal.SIGKILL)
            tail.wait()
    assert tail.returncode == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert [(x["lsn"], x["key"], x["value"]) for x in lines] == [
        (1, "a", "1"), (2, "b", "2"), (3, "c", "3"), (4, "d", "4"), (5, "e", "5")], out
    # ts: the write's commit time from its WAL frame, also for what a (re)connect read back
    assert all(isinstance(x["ts"], int) and x["ts"] > 1.7e12 for x in lines), out
    assert "reconnecting in" in err and "resuming after LSN 2" in err, err
    assert "Traceback" not in err


def test_a_ring_tail_waits_for_its_ring(daemon_factory):
    """The README started the tail before the daemon that makes the ring: it exited."""
    ring = _ring_name()
    d = daemon_factory(args=["--rings", f"{ring}:1MiB"], start=False)
    tail = subprocess.Popen([*_strata(), "tail", "--ring", ring, "--count", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=ENV)
    try:
        d.start()
        put = []
        with Client(d.grpc) as c:
            while tail.poll() is None and len(put) < 200:  # until it attached and printed one
                put.append(c.put(b"k%d" % len(put), b"v"))
                time.sleep(0.1)
        out, err = tail.communicate(timeout=30)
    finally:
        if tail.poll() is None:
            tail.send_signal(signal.SIGKILL)
            tail.wait()
    assert tail.returncode == 0, err
    (line,) = out.splitlines()
    assert json.loads(line)["lsn"] in put
    assert f"no ring named {ring!r}" in err and "reconnecting in" in err, err


def test_tail_without_follow_exits_when_the_server_stops(daemon):
    tail = subprocess.Popen([*_strata(), "tail", "--server", daemon.grpc, "--no-follow"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=ENV)
    time.sleep(2)
    daemon.terminate()
    _, err = tail.communicate(timeout=60)
    assert tail.returncode == 1 and "shutting down" in err and "Traceback" not in err, err

