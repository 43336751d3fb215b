"""The streams open on this node, of every transport, for `/v1/connections`.

Each WebSocket connection and each gRPC stream registers itself for its lifetime:

    s = connections.open("websocket", peer, "/v1/events", origin)
    s.consumer = c        while a subscription runs on it (None again after)
    connections.close(s)  whatever happened

Event loop only (the HTTP thread asks the loop for `status()`). Bounded by the
transports' own caps: a stream is registered only once admitted (max_streams,
max_ws_connections) and removed when it ends, so the table never outgrows them.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from strata.distribution.consumer import Consumer


@dataclasses.dataclass
class Stream:
    """One open stream. `tier` names what a stream without a Consumer serves
    (Events.Subscribe: realtime); a consumer's own tier wins while one is set."""

    id: int
    transport: str  # "websocket" or "grpc"
    peer: str
    method: str  # the URL path or the gRPC method
    origin: str  # the browser's Origin header; "" for other clients
    opened_unix_s: float
    tier: str = ""
    consumer: Consumer | None = None


@dataclasses.dataclass(frozen=True)
class ConnectionStatus:
    """What `/v1/connections` says of one stream. `delivered`: events sent to it;
    `lag_lsns`: LSNs from the first event it has not taken to the log's end (0 while
    it is live with nothing waiting); None for a stream that delivers no events."""

    id: int
    transport: str
    peer: str
    method: str
    origin: str
    opened_unix_s: float
    tier: str
    consumer: str
    queued_bytes: int
    delivered: int
    lag_lsns: int | None


class Connections:
    """The registry. Event loop only."""

    def __init__(self) -> None:
        self._open: dict[int, Stream] = {}
        self._ids = itertools.count(1)

    def open(self, transport: str, peer: str, method: str, origin: str = "",
             tier: str = "") -> Stream:
        """Register a stream; the caller must `close` it whatever happens next."""
        s = Stream(next(self._ids), transport, peer, method, origin, time.time(), tier)
        self._open[s.id] = s
        return s

    def close(self, s: Stream) -> None:
        self._open.pop(s.id, None)
        s.consumer = None

    def __len__(self) -> int:
        return len(self._open)

    def status(self, last_lsn: int) -> list[ConnectionStatus]:
        """Every open stream, oldest first, its lag against `last_lsn`."""
        out = []
        for s in self._open.values():
            c = s.consumer
            if c is None:
                out.append(ConnectionStatus(s.id, s.transport, s.peer, s.method, s.origin,
                                            s.opened_unix_s, s.tier, "", 0, 0, None))
                continue
            # Live with nothing waiting: it has every event it wants (a filtered one
            # takes only some LSNs, so next_lsn alone would overstate its lag). Else
            # the LSNs from the first it has not taken to the log's end.
            nxt = max(c.next_lsn, c.start_lsn)
            idle = c.live and not c.queue and not c.held_events
            lag = 0 if idle or not nxt else max(0, last_lsn - nxt + 1)
            out.append(ConnectionStatus(s.id, s.transport, s.peer, s.method, s.origin,
                                        s.opened_unix_s, c.tier, c.name, c.queued_bytes,
                                        c.sent, lag))
        return out

    def counts(self) -> dict[str, int]:
        """Streams open per transport."""
        out: dict[str, int] = {}
        for s in self._open.values():
            out[s.transport] = out.get(s.transport, 0) + 1
        return out

    def tiers(self) -> dict[str, int]:
        """Subscribers per tier (streams with nothing subscribed are not counted)."""
        out: dict[str, int] = {}
        for s in self._open.values():
            tier = s.consumer.tier if s.consumer is not None else s.tier
            if tier:
                out[tier] = out.get(tier, 0) + 1
        return out
