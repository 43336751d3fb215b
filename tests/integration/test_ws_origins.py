"""Which browser origins may open a WebSocket (ws_allowed_origins, docs/protocol.md,
"Origins"): a daemon subprocess and the real `websockets` sync client, which sends
`Origin` exactly as a browser would when given `origin=`."""

from __future__ import annotations

import json

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from strata_client import Client


def url(d) -> str:
    return f"ws://{d.ws}/v1/events"


def subscribe(ws, **req) -> dict:
    ws.send(json.dumps({"op": "subscribe", **req}))
    msg = json.loads(ws.recv(timeout=10))
    assert msg["op"] == "subscribed", msg
    return msg


def refused(d, origin: str) -> int:
    """The HTTP status a handshake with this Origin gets (it must not open)."""
    with pytest.raises(InvalidStatus) as e:
        with connect(url(d), origin=origin, open_timeout=10):
            pass
    return e.value.response.status_code


def test_default_takes_only_clients_without_origin_and_a_foreign_page_takes_nothing_over(
        daemon):
    with connect(url(daemon), open_timeout=10) as ws:  # no Origin: not a browser
        subscribe(ws, consumer="billing", ack="manual")
        # A page on another site, open in a browser on this host, tries to take the
        # consumer over: refused before any message, so the holder is not superseded.
        for origin in ("https://evil.example", "http://127.0.0.1:7401", "null"):
            assert refused(daemon, origin) == 403
        with Client(daemon.grpc) as c:
            lsn = c.put(b"k", b"v")
        ev = json.loads(ws.recv(timeout=10))
        assert (ev["op"], ev["lsn"]) == ("event", lsn), ev
    records = daemon.log_records()
    warned = [r for r in records if r.get("level") == "warning" and "refused" in r.get("msg", "")]
    assert len(warned) == 3, warned
    assert "'https://evil.example'" in warned[0]["msg"] and "127.0.0.1:" in warned[0]["msg"]
    infos = [r["msg"] for r in records if r.get("msg", "").startswith("ws connection from")]
    assert len(infos) == 1 and "origin none" in infos[0] and "subprotocol none" in infos[0], infos


def test_listed_origins_are_accepted_exactly_and_others_refused(daemon_factory):
    d = daemon_factory(args=["--ws-allowed-origins",
                             "http://localhost:8000, HTTPS://Dash.Example:443"])
    for origin in ("http://localhost:8000", "https://dash.example"):
        with connect(url(d), origin=origin, open_timeout=10,
                     subprotocols=["strata.v1.json"]) as ws:
            assert subscribe(ws)["tier"] == "realtime"
    with connect(url(d), open_timeout=10) as ws:  # no Origin: still accepted
        subscribe(ws)
    for origin in ("http://localhost:8001", "https://localhost:8000", "http://localhost",
                   "https://dash.example.evil", "http://sub.localhost:8000", "null"):
        assert refused(d, origin) == 403, origin
    infos = [r["msg"] for r in d.log_records() if r.get("msg", "").startswith("ws connection")]
    assert any("origin http://localhost:8000" in m and "subprotocol strata.v1.json" in m
               for m in infos), infos


def test_star_written_out_accepts_any_origin(daemon_factory):
    d = daemon_factory(extra_env={"STRATA_WS_ALLOWED_ORIGINS": "*"})
    for origin in ("https://anything.example", "null", "http://127.0.0.1:9"):
        with connect(url(d), origin=origin, open_timeout=10) as ws:
            subscribe(ws)
    with connect(url(d), open_timeout=10) as ws:
        subscribe(ws)


def test_a_bad_setting_stops_the_daemon_with_a_clear_error(daemon_factory):
    d = daemon_factory(args=["--ws-allowed-origins", "localhost:8000"], start=False)
    d.start(wait=False)
    assert d.proc.wait(30) == 2
    assert "ws_allowed_origins: 'localhost:8000' is not an origin" in d.logs()
