"""A consumer's lifecycle for any transport, and how a subscription ends.

Both transports (server/ws.py, Events.Consume in server/service.py) go through the
same steps, in this order, on the event loop:

    admit(name)          a named consumer's cursor is written on the master
    open(fmt, request)   the Consumer (distribution/consumer.py), counted as connected
    start(c, engine, from_lsn) -> (start, last)   position and hand-over to live
    run(c, engine, start, io) -> Ended            session.run until the consumer ends
    close(c)             out of the hub, queue dropped, cursor saved

Every ending is one `End`: its code string (what distribution/ and the WebSocket
`error` message say), its WebSocket close code and its gRPC status, mapped here
once. `Ended` is the error a transport raises or turns into a close frame.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from strata.distribution import session
from strata.distribution.consumer import Budget, Consumer
from strata.distribution.cursors import CursorStore
from strata.distribution.hub import Hub
from strata.distribution.retention import compacted_message

if TYPE_CHECKING:
    from strata.storage import Engine

log = logging.getLogger("strata.subscriptions")

RESUME = "strata-resume-lsn"


class End(enum.Enum):
    """Why a subscription ended: (code, WebSocket close code, gRPC status, trailer).

    The trailer names what a gRPC caller gets in trailing metadata: the LSN to
    resume from (strata-resume-lsn, also appended to the message), the oldest LSN
    retained (strata-earliest-lsn), or the consumer's name. docs/protocol.md lists
    the close codes; changing one breaks clients.
    """

    SHUTTING_DOWN = ("shutting_down", 1001, grpc.StatusCode.UNAVAILABLE, RESUME)
    PROTOCOL_ERROR = ("protocol_error", 1002, grpc.StatusCode.INVALID_ARGUMENT, None)
    TOO_MANY = ("too_many", 1013, grpc.StatusCode.RESOURCE_EXHAUSTED, None)
    COMPACTED = ("compacted", 4001, grpc.StatusCode.OUT_OF_RANGE, "strata-earliest-lsn")
    LAPPED = ("lapped", 4002, grpc.StatusCode.RESOURCE_EXHAUSTED, RESUME)
    BAD_REQUEST = ("bad_request", 4003, grpc.StatusCode.INVALID_ARGUMENT, None)
    SUPERSEDED = ("superseded", 4004, grpc.StatusCode.ABORTED, "strata-superseded")
    NOT_MASTER = ("not_master", 4005, grpc.StatusCode.FAILED_PRECONDITION, None)
    DELETED = ("deleted", 4006, grpc.StatusCode.ABORTED, "strata-consumer-deleted")

    def __init__(self, code: str, ws_close: int, grpc_status: grpc.StatusCode,
                 trailer: str | None) -> None:
        self.code = code
        self.ws_close = ws_close
        self.grpc_status = grpc_status
        self.trailer = trailer

    @classmethod
    def of(cls, code: str) -> End:
        """The End for a code string; an unknown one (none today) ends as shutting down,
        with its resume LSN, as the gRPC transport always did."""
        return _BY_CODE.get(code, cls.SHUTTING_DOWN)


_BY_CODE = {e.code: e for e in End}


class Ended(Exception):
    """A subscription's end as a transport reports it. `message` is the reason as
    distribution/ said it; str() is the gRPC message (with "; resume from LSN N"
    when the caller should resume); `trailers` the gRPC trailing metadata."""

    def __init__(self, end: End, message: str, resume_lsn: int | None = None,
                 consumer: str = "") -> None:
        self.end, self.message, self.resume_lsn, self.consumer = end, message, resume_lsn, consumer
        text = message
        if end.trailer == RESUME and resume_lsn is not None:
            text = f"{message}; resume from LSN {resume_lsn}"
        super().__init__(text)

    @property
    def trailers(self) -> tuple:
        t = self.end.trailer
        if t is None:
            return ()
        if t in (RESUME, "strata-earliest-lsn"):
            return ((t, str(self.resume_lsn)),) if self.resume_lsn is not None else ()
        return ((t, self.consumer),)


class Subscriptions:
    """Opens and closes consumers over the node's hub and cursors.

    Event loop only. Owns the counts the metrics export (`connected`, `cut_off`);
    the hub, cursors and budget belong to the Node that built this.
    """

    def __init__(self, hub: Hub, cursors: CursorStore, budget: Budget,
                 max_queue: Callable[[], int], check_write: Callable[[], None]) -> None:
        self.hub = hub
        self.cursors = cursors
        self.budget = budget
        self.max_queue = max_queue  # subscriber_queue, read per subscription (reloadable)
        self.check_write = check_write
        self.connected = 0  # subscribers connected now, any transport and model
        self.cut_off = 0  # subscribers disconnected for falling behind, since start

    def admit(self, name: str) -> None:
        """A named consumer's cursor is written on the master: raises NotMaster / NoMaster
        on a replica, as a write would."""
        if name:
            self.check_write()

    def open(self, fmt: str, req: dict) -> Consumer:
        """A consumer for a parsed subscribe request (session.parse_request); the caller
        owns it and must hand it to `close` whatever happens next."""
        c = Consumer(fmt=fmt, tier=req["tier"], topics=req["topics"], prefix=req["prefix"],
                     ack=req["ack"], credits=req["credits"], window_ms=req["window_ms"],
                     name=req["consumer"], max_queue=self.max_queue(), budget=self.budget)
        self.connected += 1
        return c

    async def start(self, c: Consumer, engine: Engine, from_lsn: int) -> tuple[int, int]:
        """(start, last): where delivery starts (0: live) and the last LSN visible now.
        Raises what session.position raises (Compacted for history gone)."""
        start = await session.position(c, engine, self.cursors, from_lsn)
        last = session.go_live(c, self.hub, engine) if not start else self.hub.visible(engine)
        return start, last

    async def run(self, c: Consumer, engine: Engine, start: int, io, draining: Callable[[],
                  bool]) -> Ended:
        """Serve `c` through `io` (write / paused / drain) until it ends; never raises
        but CancelledError. A failure ends it as shutting down, after what it was sent
        (its open batch sealed by end) went out, so the resume LSN skips nothing."""
        try:
            code, message, resume = await session.run(c, self.hub, engine, start, io)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("subscription failed")
            c.end("shutting_down", f"internal error: {e}", c.first_unsent())
            data = c.take()
            if data:
                io.write(data)
            code, message, resume = c.ended
        return self.ending(c, start, code, message, resume, draining())

    def ending(self, c: Consumer, start: int, code: str, message: str, resume: int,
               draining: bool) -> Ended:
        """What the transport tells the subscriber. A compacted consumer is named after
        its cursor (and the oldest LSN retained); lapped while the node drains is the
        shutdown, not a slow subscriber."""
        end = End.of(code)
        if end is End.COMPACTED:
            message = compacted_message(c.name, c.acked, start, resume)
        elif end is End.LAPPED:
            if draining:
                end, message = End.SHUTTING_DOWN, "the server is shutting down"
            else:
                self.cut_off += 1
        return Ended(end, message, resume, c.name)

    async def close(self, c: Consumer) -> None:
        """Out of the hub, queue dropped, a named consumer's cursor written (a failure
        to write it is logged: the cursor stays where it last was). Never raises."""
        self.hub.unsubscribe(c)
        c.drop_queue()
        self.connected -= 1
        if c.name:
            try:
                await self.cursors.release(c.name, c)
            except Exception as e:
                log.warning("consumer %r: cursor not saved: %s", c.name, e)
