"""The WebSocket tiers on ws_listen: `ws://HOST:PORT/v1/events` (docs/protocol.md).

Sub-protocols `strata.v1.json` (bytes as base64; the default when the client
offers none) and `strata.v1.msgpack`. The client sends `subscribe`, `ack`,
`credit` and `unsubscribe` messages; the server sends `subscribed`, `event`
(realtime, historical), `batch` (delayed), `unsubscribed` and `error`. One
subscription per connection at a time.

Close codes: 1001 shutting down (resume_lsn in the error message), 1002 a
malformed message, 1009 a message over 64 KiB, 1013 too many connections or
subscriptions, 4001 from_lsn no longer retained, 4002 cut off (fell behind;
resume_lsn), 4003 a well-formed but invalid request, 4004 superseded by a newer
subscription of the same consumer, 4005 a named consumer on a replica.
Every close is preceded by an `error` message saying the same.

Origins. A handshake whose `Origin` header is not allowed by ws_allowed_origins
gets HTTP 403 before anything else is looked at: a browser sends the page's
origin with every WebSocket, and without this check any site open in a browser
on a host that can reach the port could subscribe (and take a named consumer
over). With the default (empty) only handshakes without an Origin, i.e. not
from a browser, are accepted.

`/v1/subscribe`, the earlier realtime-only URL, is gone: it answers 404 with a
pointer here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import msgpack
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from strata.distribution.consumer import (
    JSON,
    MSGPACK,
    Consumer,
    encode_message,
    frame_message,
)
from strata.distribution.session import MAX_CREDITS, BadRequest, int_field, parse_request
from strata.node.subscriptions import End, Ended
from strata_client.auth import bearer, token_matches
from strata_client.limits import MAX_WS_MESSAGE_BYTES

from .config import ANY_ORIGIN, Config, normalize_origin, parse_origins

log = logging.getLogger("strata.ws")

SUBPROTOCOLS = {"strata.v1.json": JSON, "strata.v1.msgpack": MSGPACK}
CLOSE_TIMEOUT_S = 2  # for the client to read the close frame and answer it (docs/protocol.md)


class ProtocolError(ValueError):
    """Not a message of this protocol: the connection is closed with 1002."""


def _authorised(cfg: Config, request) -> bool:
    """The data token (or the admin token, which admits every call) in the
    Authorization header or, for browsers, which cannot set headers, `?token=`."""
    if not cfg.auth_token:
        return True
    tokens = (cfg.auth_token, cfg.admin_token)
    query = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
    # Both are compared, whichever matches: the time taken does not say which was sent.
    header_ok = token_matches(request.headers.get("Authorization") or "", tokens)
    query_ok = token_matches(bearer(query), tokens)
    return header_ok or query_ok


def origin_allowed(allowed: frozenset[str], request) -> tuple[bool, str | None]:
    """Whether a handshake's Origin passes ws_allowed_origins (parsed by parse_origins);
    returns that and the origin as sent (None: no header, a client that is not a
    browser, always allowed). Several Origin headers, or one that is not an origin,
    are refused: no browser sends either."""
    values = request.headers.get_all("Origin")
    if not values:
        return True, None
    if len(values) > 1:
        return False, ", ".join(values)
    origin = values[0]
    if ANY_ORIGIN in allowed:
        return True, origin
    try:
        return normalize_origin(origin) in allowed, origin
    except ValueError:
        return False, origin


def decode_message(fmt: str, data) -> dict:
    try:
        if fmt == JSON:
            msg = json.loads(data)
        else:
            if isinstance(data, str):
                raise ProtocolError("strata.v1.msgpack takes binary messages")
            msg = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
            UnicodeDecodeError) as e:
        raise ProtocolError(f"not a {fmt} message: {e}"[:200]) from None
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise ProtocolError('a message is an object with a string "op"')
    return msg


class _Transport:
    """session's view of a websockets connection: writes pre-framed messages."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws

    def write(self, data: bytes) -> None:
        ws = self.ws
        # Whole frames only, and only while open: the protocol object writes
        # pings and the close frame between them, never inside one.
        if ws.protocol.state is State.OPEN:
            ws.transport.write(data)

    def paused(self) -> bool:
        ws = self.ws
        # The transport's own word, checked against its buffer: a connection left
        # paused with nothing buffered must not stall a subscriber that reads.
        return ws.paused and ws.transport.get_write_buffer_size() > 0

    async def drain(self) -> None:
        if self.ws.protocol.state is not State.OPEN:
            await asyncio.sleep(0.01)
            return
        while self.paused():
            try:
                async with asyncio.timeout(0.05):  # see paused(): a resume may not come
                    await self.ws.drain()
            except TimeoutError:
                pass


class Connection:
    """One WebSocket connection: decodes messages and drives at most one subscription
    through node.subscriptions (the lifecycle Events.Consume uses too). Event loop."""

    def __init__(self, ws: ServerConnection, gate, fmt: str, stream=None) -> None:
        self.ws = ws
        self.stream = stream  # its entry in node.connections
        self.gate = gate
        self.subs = gate.node.subscriptions
        self.fmt = fmt
        self.io = _Transport(ws)
        self.consumer: Consumer | None = None
        self.task: asyncio.Task | None = None

    def send(self, msg: dict) -> None:
        self.io.write(frame_message(self.fmt, encode_message(self.fmt, msg)))

    async def fail(self, end: End, message: str, resume_lsn: int | None = None) -> None:
        """The `error` message, then the close frame with the End's close code."""
        code = end.code
        msg = {"op": "error", "code": code, "message": message}
        if resume_lsn is not None:
            msg["resume_lsn"] = resume_lsn
        self.send(msg)
        reason = f"{code}; resume_lsn={resume_lsn}" if resume_lsn is not None else \
            f"{code}: {message}"
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.ws.close(end.ws_close, reason[:120])
        except TimeoutError:
            # websockets writes the close frame, then waits for its write buffer to
            # drain before its own close timeout starts: a client that never reads
            # never drains it, and the connection (its buffers, and a SIGTERM waiting
            # for it) stayed until the keepalive gave up, up to ping_interval later.
            self.ws.transport.abort()

    async def run(self) -> None:
        try:
            async for data in self.ws:
                try:
                    msg = decode_message(self.fmt, data)
                    await self.handle(msg)
                except ProtocolError as e:
                    await self.fail(End.PROTOCOL_ERROR, str(e))
                    return
                except BadRequest as e:
                    await self.fail(End.BAD_REQUEST, str(e))
                    return
        except ConnectionClosed:
            pass
        finally:
            await self.stop()

    async def handle(self, msg: dict) -> None:
        op = msg["op"]
        c = self.consumer
        if op == "subscribe":
            if c is not None:
                raise BadRequest("one subscription per connection: unsubscribe first")
            await self.subscribe(parse_request(msg))
        elif op == "ack":
            lsn = int_field(msg, "lsn", 0, 1 << 63)
            if lsn is None:
                raise BadRequest("ack needs lsn")
            if c is not None:
                c.ack(lsn)
        elif op == "credit":
            n = int_field(msg, "n", 1, MAX_CREDITS)
            if n is None:
                raise BadRequest("credit needs n")
            if c is not None:
                c.grant(n)
        elif op == "unsubscribe":
            if c is not None:
                if c.ended is None:
                    # What counts as sent goes out first: a delayed batch still open (its
                    # own, or its group's) and output held back by a full write buffer.
                    self.subs.hub.leave_group(c)
                    if c.batcher is not None:
                        c.seal_batch()
                    data = c.take()
                    if data:
                        self.io.write(data)
                last = c.next_lsn - 1
                await self.stop()
                self.send({"op": "unsubscribed", "lsn": last})
        else:
            raise ProtocolError(f"unknown op {op!r}")

    async def subscribe(self, req: dict) -> None:
        gate, subs = self.gate, self.subs
        engine = gate.node.serving
        if engine is None or gate.draining:
            await self.fail(End.SHUTTING_DOWN, "the server is starting or draining")
            return
        name = req["consumer"]
        try:
            subs.admit(name)
        except Exception as e:
            await self.fail(End.NOT_MASTER, f"named consumers keep their cursor on the "
                            f"master: {e}")
            return
        if not gate.streams.try_enter():
            await self.fail(End.TOO_MANY, "too many subscriptions")
            return
        c = self.consumer = subs.open(self.fmt, req)
        if self.stream is not None:
            self.stream.consumer = c
        start, last = await subs.start(c, engine, req["from_lsn"])
        self.send({"op": "subscribed", "tier": c.tier, "from_lsn": start or None,
                   "last_lsn": last, "consumer": name or None})
        self.task = asyncio.ensure_future(self.serve(c, engine, start))

    async def serve(self, c: Consumer, engine, start: int) -> None:
        ended: Ended = await self.subs.run(c, engine, start, self.io, lambda: self.gate.draining)
        await self.fail(ended.end, ended.message, ended.resume_lsn)

    async def stop(self) -> None:
        c, t = self.consumer, self.task
        self.consumer = self.task = None
        if t is not None and not t.done() and t is not asyncio.current_task():
            if c is not None and c.ended is not None:
                # It is telling the client why it ended: let it finish the close.
                await asyncio.wait([t], timeout=5)
            t.cancel()
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        if self.stream is not None:
            self.stream.consumer = None
        if c is not None:
            self.gate.streams.leave()
            await self.subs.close(c)


def _peer(connection: ServerConnection) -> str:
    addr = connection.remote_address
    if not addr:
        return "unknown"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_ws(cfg: Config, gate):
    host, _, port = cfg.ws_listen.rpartition(":")
    conns = {"n": 0}
    # Parsed once per configuration (SIGHUP replaces gate.cfg), not per handshake.
    origins: dict[str, frozenset[str]] = {}

    def process_request(connection: ServerConnection, request):
        url = urlsplit(request.path)
        if url.path != "/v1/events":
            return connection.respond(HTTPStatus.NOT_FOUND, "try /v1/events (docs/protocol.md)\n")
        text = gate.cfg.ws_allowed_origins
        allowed = origins.get(text)
        if allowed is None:
            origins.clear()
            allowed = origins[text] = parse_origins(text)  # validated at load: cannot raise
        ok, origin = origin_allowed(allowed, request)
        if not ok:
            log.warning("ws handshake from %s refused: origin %r is not in ws_allowed_origins",
                        _peer(connection), origin)
            return connection.respond(HTTPStatus.FORBIDDEN,
                                      "origin not allowed (ws_allowed_origins)\n")
        if not _authorised(gate.cfg, request):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        if gate.node.serving is None or gate.draining:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "starting or draining\n")
        if conns["n"] >= gate.cfg.max_ws_connections:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        return None

    def select_subprotocol(connection: ServerConnection, offered):
        # The first of ours the client offers; none offered: JSON (browsers, wscat).
        return next((p for p in offered if p in SUBPROTOCOLS), None)

    async def handler(ws: ServerConnection) -> None:
        log.info("ws connection from %s, origin %s, subprotocol %s", _peer(ws),
                 ws.request.headers.get("Origin") or "none", ws.subprotocol or "none")
        conns["n"] += 1
        stream = gate.node.connections.open("websocket", _peer(ws), "/v1/events",
                                            ws.request.headers.get("Origin") or "")
        sock = ws.transport.get_extra_info("socket")
        if sock is not None:
            # The kernel's send buffer is bounded too (the kernel doubles the figure):
            # autotuned, it grows to MiBs per connection, which a client that never
            # reads fills before its subscription sees a full buffer. 500 stalled
            # subscribers cost writes 0.71x of none with it, 0.31x without (bench
            # distribution --only stalled, same machine, one run each).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, gate.cfg.subscriber_buffer)
        try:
            await Connection(ws, gate, SUBPROTOCOLS.get(ws.subprotocol, JSON), stream).run()
        finally:
            conns["n"] -= 1
            gate.node.connections.close(stream)

    return await serve(handler, host.strip("[]") or "127.0.0.1", int(port),
                       process_request=process_request, max_size=MAX_WS_MESSAGE_BYTES, max_queue=64,
                       subprotocols=list(SUBPROTOCOLS), select_subprotocol=select_subprotocol,
                       compression=None,
                       write_limit=cfg.subscriber_buffer, ping_interval=20, ping_timeout=20,
                       close_timeout=CLOSE_TIMEOUT_S)
