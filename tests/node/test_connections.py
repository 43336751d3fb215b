"""node/connections.py: the registry of open streams, with real Consumers and no I/O."""

from __future__ import annotations

from strata.distribution.consumer import Consumer
from strata.node.connections import Connections


def test_streams_are_listed_while_open_with_their_consumers_figures():
    reg = Connections()
    ws = reg.open("websocket", "127.0.0.1:5000", "/v1/events", "https://ops.example")
    sub = reg.open("grpc", "ipv4:127.0.0.1:5001", "Events.Subscribe", tier="realtime")
    scan = reg.open("grpc", "ipv4:127.0.0.1:5002", "KV.Scan")
    assert len(reg) == 3 and reg.counts() == {"websocket": 1, "grpc": 2}
    assert reg.tiers() == {"realtime": 1}  # a scan delivers no events

    c = Consumer(tier="delayed", name="billing")
    c.next_lsn = c.start_lsn = 11  # positioned: the next event it takes is LSN 11
    c.sent, c.queued_bytes = 10, 300
    ws.consumer = c
    assert reg.tiers() == {"realtime": 1, "delayed": 1}
    rows = {r.id: r for r in reg.status(last_lsn=15)}
    r = rows[ws.id]
    assert (r.transport, r.peer, r.origin, r.tier, r.consumer) == (
        "websocket", "127.0.0.1:5000", "https://ops.example", "delayed", "billing")
    assert (r.queued_bytes, r.delivered, r.lag_lsns) == (300, 10, 5)  # 11..15 not taken
    assert rows[scan.id].lag_lsns is None and rows[sub.id].tier == "realtime"

    c.live = True  # live with nothing waiting: it has every event it wants (a filter)
    assert reg.status(last_lsn=15)[0].lag_lsns == 0

    reg.close(ws)
    assert ws.consumer is None and [r.id for r in reg.status(0)] == [sub.id, scan.id]
    reg.close(ws)  # twice: nothing more
    reg.close(sub)
    reg.close(scan)
    assert len(reg) == 0 and reg.tiers() == {} and reg.counts() == {}
