"""HTTP on metrics_listen against a real daemon: the paths and what they answer, the
token and Origin rules, /v1/connections and /v1/status listing real WebSocket and gRPC
subscribers, the event tail and its overflow policy, and the metrics the docs list."""

from __future__ import annotations

import http.client
import itertools
import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect as ws_connect

from strata.server import http as status_http
from strata.server.http import MAX_EVENT_STREAMS
from strata.server.metrics import documented_families
from strata_client import Client

from .. import daemon_logs
from .conftest import ROOT


def get(addr: str, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(f"http://{addr}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def raw(addr: str, data: bytes, timeout: float = 5.0, rcvbuf: int = 0) -> bytes:
    """Send `data` on a new connection and read until the server closes it (or
    `timeout` passes)."""
    host, port = addr.rsplit(":", 1)
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect((host, int(port)))
    s.sendall(data)
    out = b""
    try:
        while d := s.recv(65536):
            out += d
    except (TimeoutError, ConnectionResetError):
        pass
    s.close()
    return out


def exported(addr: str) -> set[str]:
    """The families a running daemon exports, named as documented (counters with _total)."""
    _, _, body = get(addr, "/metrics")
    return {f.name + ("_total" if f.type == "counter" else "")
            for f in text_string_to_metric_families(body.decode())}


class EventStream:
    """A /v1/events client: reads Server-Sent Events one at a time."""

    def __init__(self, addr: str, headers: dict | None = None) -> None:
        host, port = addr.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=10)
        self.conn.request("GET", "/v1/events", headers=headers or {})
        self.resp = self.conn.getresponse()

    def next(self) -> tuple[str | None, dict]:
        """(id, data) of the next event (keepalive comments skipped)."""
        ident, data = None, None
        while True:
            line = self.resp.readline()
            assert line, "the stream ended"
            line = line.rstrip(b"\n")
            if line.startswith(b"id: "):
                ident = line[4:].decode()
            elif line.startswith(b"data: "):
                data = json.loads(line[6:])
            elif not line and data is not None:
                return ident, data

    def close(self) -> None:
        self.resp.close()  # holds the socket open too
        self.conn.close()


def test_paths_health_metrics_and_status(daemon):
    d = daemon
    assert get(d.metrics, "/healthz")[::2] == (200, b"serving\n")
    code, _, body = get(d.metrics, "/no/such/path")
    assert code == 404 and b"/v1/status" in body
    req = urllib.request.Request(f"http://{d.metrics}/v1/status", method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 405
    code, headers, page = get(d.metrics, "/")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    # One file that loads nothing from anywhere else.
    assert b"EventSource" in page and b"<script src" not in page and b"<link" not in page
    assert b"http://" not in page and b"https://" not in page

    with Client(d.grpc) as c:
        lsn = c.put(b"k", b"v" * 100)
    code, _, body = get(d.metrics, "/v1/status")
    st = json.loads(body)
    assert code == 200 and st["version"] and st["draining"] is False
    n = st["node"]
    assert n["last_lsn"] >= lsn and n["writable"] and n["wal_bytes"] > 100
    assert n["replication"]["role"] == "master" and st["rings"] == [] and st["consumers"] == []
    # Written and allocated-ahead log bytes add up to the WAL files' sizes (fsync
    # durability preallocates the open segment and a spare).
    wal_files = sum(os.path.getsize(os.path.join(d.data_dir, f))
                    for f in os.listdir(d.data_dir) if f.startswith("wal"))
    assert n["wal_preallocated_bytes"] > 0
    assert n["wal_bytes"] + n["wal_preallocated_bytes"] == wal_files

    _, _, metrics = get(d.metrics, "/metrics")
    text = metrics.decode()
    (line,) = [ln for ln in text.splitlines()
               if ln.startswith('strata_engine_disk_bytes{kind="wal_preallocated"} ')]
    assert float(line.split()[-1]) == wal_files - n["wal_bytes"], line
    assert f'strata_build_info{{version="{st["version"]}"}} 1.0' in text
    assert "process_cpu_seconds_total" in text and "python_info{" in text
    assert "python_gc_collections_total" in text
    assert "_created" not in text
    assert "strata_wal_fsync_total" not in text


def test_a_token_guards_the_page_and_the_json_but_not_metrics_or_health(daemon_factory):
    d = daemon_factory(extra_env={"STRATA_AUTH_TOKEN": "s3cret"})
    assert get(d.metrics, "/metrics")[0] == 200
    assert get(d.metrics, "/healthz")[0] == 200
    for path in ("/", "/v1/status", "/v1/connections", "/v1/cluster", "/v1/events"):
        assert get(d.metrics, path)[0] == 401, path
        assert get(d.metrics, path, {"Authorization": "Bearer wrong"})[0] == 401, path
    for path in ("/", "/v1/status", "/v1/connections", "/v1/cluster"):
        assert get(d.metrics, path, {"Authorization": "Bearer s3cret"})[0] == 200, path
        assert get(d.metrics, path + "?token=s3cret")[0] == 200, path
    s = EventStream(d.metrics)  # no token
    assert s.resp.status == 401
    s.close()


def test_origins_are_checked_as_on_the_websocket_port(daemon_factory):
    d = daemon_factory(extra_env={"STRATA_WS_ALLOWED_ORIGINS": "https://ops.example"})
    own = {"Origin": f"http://{d.metrics}"}
    assert get(d.metrics, "/v1/status", own)[0] == 200  # the page's own origin
    code, _, body = get(d.metrics, "/v1/status", {"Origin": "https://evil.example"})
    assert code == 403 and b"ws_allowed_origins" in body
    code, headers, _ = get(d.metrics, "/v1/status", {"Origin": "https://ops.example"})
    assert code == 200 and headers["Access-Control-Allow-Origin"] == "https://ops.example"
    s = EventStream(d.metrics, {"Origin": "https://evil.example"})
    assert s.resp.status == 403
    s.close()


def test_connections_and_status_list_websocket_and_grpc_subscribers(daemon_factory, tmp_path):
    ring = f"strata-http-test-{os.getpid()}"
    d = daemon_factory(args=["--rings", f"{ring}:1MiB"],
                       extra_env={"STRATA_WS_ALLOWED_ORIGINS": "http://localhost"})
    try:
        with Client(d.grpc) as c, ws_connect(f"ws://{d.ws}/v1/events",
                                             origin="http://localhost") as ws:
            ws.send(json.dumps({"op": "subscribe", "tier": "delayed", "window_ms": 10}))
            assert json.loads(ws.recv(timeout=5))["op"] == "subscribed"
            sub = c.consume("billing", manual_ack=True)
            events = iter(sub)
            lsns = [c.put(b"k%d" % i, b"v") for i in range(5)]
            assert [e.lsn for e in itertools.islice(events, 5)] == lsns
            got = 0
            while got < 5:  # the delayed tier's batches
                msg = json.loads(ws.recv(timeout=5))
                got += len(msg.get("events", []))

            _, _, body = get(d.metrics, "/v1/connections")
            conns = json.loads(body)["connections"]
            wsc = [x for x in conns if x["transport"] == "websocket"]
            grpcs = [x for x in conns if x["method"] == "Events.Consume"]
            host, port = ws.local_address[:2]
            assert len(wsc) == 1 and wsc[0]["peer"] == f"{host}:{port}"
            assert wsc[0]["origin"] == "http://localhost" and wsc[0]["tier"] == "delayed"
            assert wsc[0]["delivered"] == 5 and wsc[0]["lag_lsns"] == 0
            assert len(grpcs) == 1 and grpcs[0]["transport"] == "grpc"
            assert grpcs[0]["consumer"] == "billing" and grpcs[0]["tier"] == "realtime"
            assert grpcs[0]["delivered"] == 5 and grpcs[0]["peer"].startswith("127.0.0.1:")

            _, _, body = get(d.metrics, "/v1/status")
            st = json.loads(body)
            assert st["tiers"] == {"delayed": 1, "realtime": 1}
            assert st["subscribers"]["connected"] == 2
            assert [r["name"] for r in st["rings"]] == [ring]
            assert st["rings"][0]["last_lsn"] == lsns[-1]
            sub.close()
        # Both ended: neither is listed any more.
        for _ in range(100):
            _, _, body = get(d.metrics, "/v1/connections")
            if not json.loads(body)["connections"]:
                break
        assert json.loads(body)["connections"] == []
        # The metrics this daemon exports (rings, a named consumer) are all documented,
        # and all the documented ones are exported but those of a cluster.
        documented = {name for name, *_ in documented_families()}
        here = exported(d.metrics)
        assert here - documented == set()
        cluster_only = {n for n in documented if n.startswith("strata_replication_")} | {
            "strata_events_awaiting_commit", "strata_events_read_back_total"}
        assert documented - here == cluster_only
    finally:
        for p in (f"/dev/shm/{ring}", f"/dev/shm/.{ring}.doorbell"):
            if os.path.exists(p):
                os.unlink(p)


def test_the_event_tail_and_its_overflow_policy(daemon):
    d = daemon
    first = EventStream(d.metrics)
    assert first.resp.status == 200
    assert first.resp.headers["Content-Type"] == "text/event-stream"
    with Client(d.grpc) as c:
        lsn = c.put(b"after-open", b"value")
        ident, ev = first.next()
        assert ev == {"type": "event", "lsn": lsn, "ts": ev["ts"], "topic": "kv",
                      "key": "after-open", "value": "value", "deleted": False}
        # 1200 more: the tail keeps the last 1000 of the 1201, so a client resuming
        # after the first is told it missed 200, then goes on from the oldest kept.
        for _ in range(3):
            c.batch([("put", b"b%d" % i, b"x") for i in range(400)])
    again = EventStream(d.metrics, {"Last-Event-ID": ident})
    _, gap = again.next()
    assert gap["type"] == "gap" and gap["missed"] == 200
    ident2, ev2 = again.next()
    boot, n = ident.split(":")
    assert ident2 == f"{boot}:{int(n) + 1 + 200}" and ev2["type"] == "event"
    again.close()
    first.close()
    # An id from another process (a restart) starts afresh, 50 events back.
    other = EventStream(d.metrics, {"Last-Event-ID": f"{int(boot) - 1}:5"})
    assert other.next()[1]["type"] == "event"
    other.close()
    # One that is not a number (a digit that int() does not take) is no id at all.
    odd = EventStream(d.metrics, {"Last-Event-ID": f"{boot}:\u00b2"})
    assert odd.resp.status == 200 and odd.next()[1]["type"] == "event"
    odd.close()


def test_the_tail_stops_while_no_one_watches_and_says_so_when_it_starts_again(daemon):
    d = daemon
    with Client(d.grpc) as c:
        s = EventStream(d.metrics)
        lsn = c.put(b"seen", b"1")
        ident, ev = s.next()
        assert ev["lsn"] == lsn
        s.close()
        for _ in range(20):
            # Once the server noticed the client left (within a second) the tail stops:
            # a put then is not in it, and the next client is told so.
            time.sleep(1.2)
            c.put(b"unseen", b"2")
            s = EventStream(d.metrics, {"Last-Event-ID": ident})
            ident, first = s.next()
            s.close()
            if first["type"] == "gap":
                break
        assert first["type"] == "gap" and "no one watched" in first["reason"]


@pytest.mark.expect_log_errors(r'"msg": "startup failed: cannot listen on 127\.0\.0\.1:\d+ '
                               r'\(metrics_listen, from flag --metrics-listen\)')
def test_event_streams_are_capped_and_a_taken_port_is_named(daemon, daemon_factory):
    streams = [EventStream(daemon.metrics) for _ in range(MAX_EVENT_STREAMS)]
    try:
        assert [s.resp.status for s in streams] == [200] * MAX_EVENT_STREAMS
        one_more = EventStream(daemon.metrics)
        assert one_more.resp.status == 503
        one_more.close()
    finally:
        for s in streams:
            s.close()
    # Clients that went away leave their slots free.
    for _ in range(100):
        again = EventStream(daemon.metrics)
        if again.resp.status == 200:
            break
        again.close()
        time.sleep(0.05)
    assert again.resp.status == 200
    again.close()

    # metrics_listen already taken (by the first daemon): the start fails, saying where.
    d = daemon_factory(start=False, data_dir=str(daemon.data_dir) + "-2")
    d.metrics = daemon.metrics
    d.start(wait=False)
    assert d.proc.wait(30) != 0
    assert f"cannot listen on {daemon.metrics} (metrics_listen" in d.logs()


def test_a_host_name_that_is_not_this_listener_is_refused(daemon_factory):
    """DNS rebinding: a page at http://evil.example:PORT whose name is made to resolve to
    127.0.0.1 sends Host (and Origin) evil.example:PORT; it must not read anything."""
    d = daemon_factory(extra_env={"STRATA_WS_ALLOWED_ORIGINS": "https://ops.example"})
    port = d.metrics.rsplit(":", 1)[1]
    evil = f"evil.example:{port}"
    for path in ("/", "/v1/status", "/v1/connections", "/v1/cluster"):
        for headers in ({"Host": evil}, {"Host": evil, "Origin": f"http://{evil}"}):
            code, _, body = get(d.metrics, path, headers)
            assert code == 403 and b"evil.example" in body, (path, headers)
    s = EventStream(d.metrics, {"Host": evil, "Origin": f"http://{evil}"})
    assert s.resp.status == 403
    s.close()
    # This listener's own names, and those ws_allowed_origins admits.
    for host in (d.metrics, f"localhost:{port}", f"[::1]:{port}", "ops.example",
                 f"LOCALHOST:{port}"):
        assert get(d.metrics, "/v1/status", {"Host": host})[0] == 200, host
    code, _, _ = get(d.metrics, "/v1/status", {"Host": f"localhost:{port}",
                                                "Origin": f"http://localhost:{port}"})
    assert code == 200
    # The scraper and the probe may use any name.
    assert get(d.metrics, "/healthz", {"Host": evil})[0] == 200
    assert get(d.metrics, "/metrics", {"Host": evil})[0] == 200


@pytest.fixture
def many_fds():
    """Lets the daemons started meanwhile (and this process) hold 4096 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 4096")
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_event_stream_works_with_descriptors_past_1023(daemon_factory, many_fds):
    d = daemon_factory()
    # Connections that hold a descriptor of the daemon each: idle ones to the gRPC port,
    # which gRPC keeps for its handshake timeout (120 s; the WebSocket port's is 10 s,
    # and a loaded machine can take that long to accept them all).
    host, port = d.grpc.rsplit(":", 1)
    idle = [socket.create_connection((host, int(port))) for _ in range(1100)]
    try:
        for _ in range(100):  # until the daemon has accepted them
            if len(os.listdir(f"/proc/{d.proc.pid}/fd")) > 1100:
                break
            time.sleep(0.1)
        assert len(os.listdir(f"/proc/{d.proc.pid}/fd")) > 1100
        s = EventStream(d.metrics)
        assert s.resp.status == 200
        time.sleep(2.5)  # quiet: the server checks whether the client is still there
        with Client(d.grpc) as c:
            lsn = c.put(b"late", b"1")
            assert s.next()[1]["lsn"] == lsn
        s.close()
    finally:
        for sock in idle:
            sock.close()


def test_connections_are_capped_and_a_half_sent_request_times_out(daemon):
    d = daemon
    cap = status_http.MAX_CONNECTIONS
    host, port = d.metrics.rsplit(":", 1)
    half = []
    for _ in range(cap):
        s = socket.create_connection((host, int(port)))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
        half.append(s)
    for _ in range(40):  # until the server took all of them from its listen backlog
        answer = raw(d.metrics, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        if not answer.startswith(b"HTTP/1.1 200"):
            break
        time.sleep(0.25)
    assert answer.startswith(b"HTTP/1.1 503") and b"connections" in answer
    # The server gives up on each after REQUEST_TIMEOUT_S, freeing its place.
    for s in half:
        s.settimeout(status_http.REQUEST_TIMEOUT_S + 10)
        assert s.recv(100) == b""
        s.close()
    assert get(d.metrics, "/healthz")[0] == 200


def test_event_streams_that_do_not_read_are_ended(daemon):
    d = daemon
    host, port = d.metrics.rsplit(":", 1)
    stalled = []
    for _ in range(MAX_EVENT_STREAMS):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((host, int(port)))
        s.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
        stalled.append(s)
    try:
        time.sleep(1)
        with Client(d.grpc) as c:
            for b in range(8):
                c.batch([("put", b"k%d-%d" % (b, i), b"v" * 190) for i in range(500)])
        t0 = time.monotonic()
        while time.monotonic() - t0 < status_http.STREAM_SEND_TIMEOUT_S + 15:
            s = EventStream(d.metrics)
            if s.resp.status == 200:
                break
            s.close()
            time.sleep(0.5)
        assert s.resp.status == 200  # a stalled stream was ended, freeing its slot
        s.close()
    finally:
        for s in stalled:
            s.close()


def test_a_refused_method_closes_the_connection_unread_body_and_all(daemon):
    d = daemon
    inner = b"GET /v1/connections HTTP/1.1\r\nHost: x\r\n\r\n"
    out = raw(d.metrics, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
              % len(inner) + inner)
    assert out.startswith(b"HTTP/1.1 405") and out.count(b"HTTP/1.1 ") == 1, out
    assert b"connections" not in out


def test_every_method_but_get_and_head_is_405(daemon):
    d = daemon
    for m in ("OPTIONS", "TRACE", "PUT", "DELETE", "PATCH", "CONNECT", "BREW"):
        out = raw(d.metrics, f"{m} /v1/status HTTP/1.1\r\nHost: x\r\nOrigin: http://dash.example"
                  "\r\nAccess-Control-Request-Method: GET\r\nContent-Length: 0\r\n\r\n".encode())
        assert out.startswith(b"HTTP/1.1 405"), (m, out[:80])
        assert b"\r\nAllow: GET, HEAD\r\n" in out, m
    assert raw(d.metrics, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
               ).startswith(b"HTTP/1.1 200")


def test_healthz_says_when_the_event_loop_does_not_answer(tmp_path):
    from .conftest import free_port

    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    log_path = daemon_logs.log_file("blocking-loop") or tmp_path / "daemon.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.blocking_loop_daemon",
             str(tmp_path / "d"), *addrs], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
    try:
        assert proc.stdout.readline() == b"serving\n"
        assert get(addrs[2], "/healthz")[::2] == (200, b"serving\n")
        proc.stdin.write(b"6\n")
        proc.stdin.flush()
        time.sleep(0.5)
        code, _, body = get(addrs[2], "/healthz")
        assert (code, body) == (503, b"event loop not answering\n")
    finally:
        proc.stdin.close()
        proc.wait(30)


def test_the_token_is_not_written_to_the_log(daemon_factory):
    d = daemon_factory(extra_env={"STRATA_AUTH_TOKEN": "s3cret-tok", "STRATA_LOG_LEVEL": "debug"})
    assert get(d.metrics, "/v1/status?token=s3cret-tok")[0] == 200
    assert get(d.metrics, "/nope?x=1&token=s3cret-tok")[0] == 404
    raw(d.metrics, b"GET /v1/status?token=s3cret-tok HTTP/1.1 x\r\n\r\n")  # a 400
    time.sleep(0.3)
    logs = d.logs()
    assert "/v1/status?token=" in logs and "s3cret" not in logs


def test_durable_lsn_is_what_was_synced(daemon_factory, tmp_path):
    d = daemon_factory(extra_env={"STRATA_DURABILITY": "none"})
    with Client(d.grpc) as c:
        lsn = c.put(b"k", b"v")
    node = json.loads(get(d.metrics, "/v1/status")[2])["node"]
    assert node["last_lsn"] >= lsn and node["durable_lsn"] < lsn
    d.stop()
    d2 = daemon_factory(data_dir=str(tmp_path / "always"))
    with Client(d2.grpc) as c:
        lsn = c.put(b"k", b"v")
    node = json.loads(get(d2.metrics, "/v1/status")[2])["node"]
    assert node["durable_lsn"] == node["last_lsn"] >= lsn


def test_responses_carry_the_security_headers(daemon):
    d = daemon
    for path in ("/", "/v1/status", "/healthz", "/nope"):
        _, headers, _ = get(d.metrics, path)
        assert headers["Referrer-Policy"] == "no-referrer", path
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert "default-src 'none'" in headers["Content-Security-Policy"], path
    s = EventStream(d.metrics)
    assert s.resp.headers["X-Content-Type-Options"] == "nosniff"
    s.close()


def test_sigterm_closes_the_status_channels_to_peers_before_it_exits(tmp_path):
    """/v1/cluster asks every peer over a channel of its own; a stop with those channels
    open closes them, exits 0 well within its drain and logs nothing about them."""
    from .test_replication import Cluster

    c = Cluster(tmp_path).start()
    try:
        m = c.master()
        replica = next(i for i in c.nodes if i != m)
        d = c.nodes[replica]
        code, _, body = get(d.metrics, "/v1/cluster")
        members = json.loads(body)["members"]
        assert code == 200 and len(members) == 3, body
        assert all(n["reachable"] for n in members), members
        assert {n["role"] for n in members} == {"master", "replica"}, members
        t0 = time.monotonic()
        assert d.terminate() == 0
        assert time.monotonic() - t0 < 10
        log = d.logs()
        for bad in ("never awaited", "Task was destroyed", "Exception ignored",
                    "status channel", "Traceback"):
            assert bad not in log, log[-3000:]
        assert "stopped cleanly" in log
    finally:
        c.stop()
