"""WebSocket subscriptions (realtime tier) on ws_listen.

    GET /v1/subscribe?topics=a,b&prefix=<hex>&from_lsn=<n>
    Authorization: Bearer <token>          (when auth_token is set; or ?token=)

Each event is one text message:
    {"lsn": 7, "topic": "kv", "key": "<base64>", "value": "<base64>", "deleted": false}
The same stream as gRPC Events.Subscribe: history from `from_lsn` (if
given) then live, in LSN order, each event once. The server closes with
  4001 "compacted; earliest_lsn=N"   from_lsn is no longer retained
  4002 "lapped; resume_lsn=N"         the client fell subscriber_queue events behind
  4003 "<reason>"                     a malformed request
  1001 "shutting down; resume_lsn=N"  the server is draining
The socket is read-only for the client; messages it sends are ignored. A
frame over 64 KiB from the client closes the connection (1009).
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve

from strata.distribution.hub import Lapped, stream
from strata.storage.errors import Compacted

from .config import Config

log = logging.getLogger("strata.ws")


def _authorised(cfg: Config, request) -> bool:
    if not cfg.auth_token:
        return True
    got = (request.headers.get("Authorization") or "").encode()
    token = f'Bearer {parse_qs(urlsplit(request.path).query).get("token", [""])[0]}'.encode()
    for t in (cfg.auth_token, cfg.admin_token):  # the admin token admits every call
        want = f"Bearer {t}".encode()
        if t and (hmac.compare_digest(got, want) or hmac.compare_digest(token, want)):
            return True
    return False


async def start_ws(cfg: Config, gate):
    host, _, port = cfg.ws_listen.rpartition(":")

    def process_request(connection: ServerConnection, request):
        url = urlsplit(request.path)
        if url.path != "/v1/subscribe":
            return connection.respond(HTTPStatus.NOT_FOUND, "try /v1/subscribe\n")
        if not _authorised(gate.cfg, request):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        if gate.engine is None or gate.draining:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "starting or draining\n")
        if not gate.streams.try_enter():
            return connection.respond(HTTPStatus.TOO_MANY_REQUESTS, "too many streams\n")
        gate.streams.leave()
        return None

    async def handler(ws: ServerConnection) -> None:
        q = parse_qs(urlsplit(ws.request.path).query)
        try:
            topics = frozenset(t for t in q.get("topics", [""])[0].split(",") if t) or None
            prefix = bytes.fromhex(q.get("prefix", [""])[0])
            from_lsn = int(q.get("from_lsn", ["0"])[0])
            if from_lsn < 0:
                raise ValueError("from_lsn must not be negative")
        except ValueError as e:
            await ws.close(4003, f"bad request: {e}"[:120])
            return
        if not gate.streams.try_enter():
            await ws.close(1013, "too many streams")
            return
        gate.metrics.subscribers.inc()
        b64 = base64.b64encode
        try:
            async for ev in stream(gate.hub, gate.engine, topics, prefix, from_lsn,
                                   gate.cfg.subscriber_queue):
                await ws.send(json.dumps({
                    "lsn": ev.lsn, "topic": ev.topic, "key": b64(ev.key).decode(),
                    "value": b64(ev.value).decode(), "deleted": ev.deleted}))
        except Compacted as e:
            await ws.close(4001, f"compacted; earliest_lsn={e.earliest_lsn}")
        except Lapped as e:
            if gate.draining:
                await ws.close(1001, f"shutting down; resume_lsn={e.resume_lsn}")
            else:
                gate.metrics.subscribers_cut.inc()
                await ws.close(4002, f"lapped; resume_lsn={e.resume_lsn}")
        finally:
            gate.streams.leave()
            gate.metrics.subscribers.dec()

    server = await serve(handler, host.strip("[]") or "127.0.0.1", int(port),
                         process_request=process_request, max_size=64 << 10,
                         ping_interval=20, ping_timeout=20, close_timeout=2)
    return server
