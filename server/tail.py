"""`strata tail`: print the events that flow, one JSON line each.

    strata tail --ring events                 # a shared-memory ring on this host
    strata tail --server ws://127.0.0.1:7401  # the WebSocket tiers (realtime unless --tier)
    strata tail --server 127.0.0.1:7400       # gRPC Events.Consume

Each line: {"lsn": N, "ts": Unix ms or null, "topic": "kv", "key": "...", "value": "..."|null}
(keys and values as text, with --hex in hex; null value: a deletion). `ts` is when
the write was committed (the master's wall clock, kept in its WAL frame: the same
live, from history and on a replica); null only for events written before WAL
version 4, whose frames keep no time.

A lost connection (the server stopped or restarted, or cut this tail off because
it fell behind), or a ring that is not there (the daemon has not made it yet, or
stopped), is retried with back-off, resuming after the last LSN printed, so nothing
is skipped or printed twice (--no-follow: exit 1 instead). History that is gone
(`compacted`), a lapped ring, and a ring that wrapped past the next LSN while the
tail was away end it with status 3, saying where to resume.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys

from .console import fail


def _text(b, hex_: bool) -> str | None:
    if b is None:
        return None
    b = bytes(b)
    return b.hex() if hex_ else b.decode(errors="backslashreplace")


def _line(lsn: int, ts, topic: str, key, value, hex_: bool) -> str:
    return json.dumps({"lsn": lsn, "ts": ts, "topic": topic, "key": _text(key, hex_),
                       "value": _text(value, hex_)}, ensure_ascii=False)


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class _Lost(Exception):
    """The connection ended, or could not be made, in a way a later attempt may get past
    (the server stopped, restarted, cut this subscriber off): the tail reconnects."""


class _Printed:
    """What the tail has printed: the last LSN (where a reconnect resumes after) and how
    many events are still wanted (--count; -1: no limit)."""

    def __init__(self, args) -> None:
        self.hex = args.hex
        self.left = args.count if args.count else -1
        self.last_lsn = max(0, args.from_lsn - 1)  # --from-lsn N: as if N - 1 was printed

    def event(self, lsn: int, ts, topic: str, key, value) -> bool:
        """Print one event unless a reconnect delivered it already; False once --count
        events were printed."""
        if lsn <= self.last_lsn:
            return bool(self.left)
        _print(_line(lsn, ts, topic, key, value, self.hex))
        self.last_lsn = lsn
        self.left -= 1
        return bool(self.left)


def _ring_attempt(args, out: _Printed, from_lsn: int, connected) -> int:
    """One attachment to the ring. A reattachment (from_lsn set) reads from the ring's
    oldest frame, skips what was printed, and ends with status 3 if the ring no longer
    holds the next LSN (it wrapped while the tail was away)."""
    from strata_client.errors import Lapped
    from strata_client.ring import RingClosed, RingReader

    try:
        with RingReader(args.ring, wait=args.wait,
                        from_start=args.from_start or bool(from_lsn)) as r:
            connected()
            check = bool(from_lsn)
            while True:
                events = r.read(timeout=1.0)
                if check and events:
                    check = False
                    if events[0].lsn > from_lsn:
                        return fail("strata tail", f"the ring no longer holds LSN {from_lsn} "
                                    f"(it starts at {events[0].lsn}): strata tail --server ... "
                                    f"--from-lsn {from_lsn}", 3)
                for ev in events:
                    if not out.event(ev.lsn, ev.ts_ns // 1_000_000 or None, ev.topic, ev.key,
                                     None if ev.flags else ev.value):
                        return 0
    except Lapped as e:
        return fail("strata tail", f"lapped: resume from LSN {e.resume_lsn} "
                    f"(strata tail --server ... --from-lsn {e.resume_lsn})", 3)
    except RingClosed as e:  # not there yet, or its daemon stopped: it comes back
        raise _Lost(str(e)) from None


async def _tail_ws(args, out: _Printed, from_lsn: int, connected) -> int:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    url = args.server.rstrip("/")
    if not url.endswith("/v1/events"):
        url += "/v1/events"
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    req = {"op": "subscribe", "tier": args.tier, "from_lsn": from_lsn}
    if args.topics:
        req["topics"] = args.topics.split(",")
    if args.prefix:
        req["prefix"] = base64.b64encode(args.prefix.encode()).decode()
    if args.consumer:
        req["consumer"] = args.consumer
    try:
        async with connect(url, additional_headers=headers, max_size=None, open_timeout=5,
                           subprotocols=["strata.v1.json"]) as ws:
            await ws.send(json.dumps(req))
            connected()
            while True:
                m = json.loads(await ws.recv())
                if m["op"] == "error":
                    if m["code"] in ("lapped", "shutting_down", "too_many"):
                        raise _Lost(f"{m['code']}: {m['message']}")
                    return fail("strata tail", f"{m['code']}: {m['message']}"
                                + (f"; resume from LSN {m['resume_lsn']}" if "resume_lsn" in m
                                   else ""), 3)
                for ev in m["events"] if m["op"] == "batch" else [m] if m["op"] == "event" else []:
                    v = ev["value"]
                    if not out.event(ev["lsn"], ev["ts"], ev["topic"], base64.b64decode(ev["key"]),
                                     None if v is None else base64.b64decode(v)):
                        return 0
    except ConnectionClosed as e:
        raise _Lost(f"connection closed: {e}") from None
    except InvalidStatus as e:
        if e.response.status_code in (502, 503, 504):
            raise _Lost(f"server answered {e.response.status_code}") from None
        raise
    except (OSError, TimeoutError) as e:
        raise _Lost(str(e) or type(e).__name__) from None


def _tail_grpc(args, out: _Printed, from_lsn: int, connected) -> int:
    from strata_client import Client, errors

    try:
        with Client(args.server, token=args.token) as c:
            sub = c.consume(args.consumer or "", tier=args.tier, from_lsn=from_lsn,
                            topics=args.topics.split(",") if args.topics else (),
                            key_prefix=args.prefix.encode())
            try:
                for ev in sub:
                    connected()
                    # ts_ms: the event's commit time (0: a frame written before WAL
                    # version 4 keeps none)
                    if not out.event(ev.lsn, ev.ts_ms or None, ev.topic, ev.key,
                                     None if ev.deleted else ev.value):
                        return 0
            finally:
                sub.close()
    except errors.Lapped as e:  # fell behind, or the server is stopping
        raise _Lost(f"cut off: {e}") from None
    except (errors.Unavailable, errors.DeadlineExceeded) as e:
        raise _Lost(f"{e.code or type(e).__name__}: {e}") from None
    except errors.Compacted as e:
        return fail("strata tail",
                    f"compacted: {e}; the oldest retained LSN is {e.earliest_lsn}", 3)
    except errors.StrataError as e:
        return fail("strata tail", f"{e.code or type(e).__name__}: {e}")
    raise _Lost("the server ended the stream")


BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.1, 5.0


def follow(args, attempt) -> int:
    """Run `attempt(out, from_lsn, connected)` until it returns an exit status; each time
    it raises _Lost, wait (exponential back-off with jitter, from BACKOFF_FIRST_S to
    BACKOFF_MAX_S, reset once a connection is made) and try again from the LSN after the
    last one printed. Without --follow the first loss ends the tail with status 1."""
    import random
    import time

    out = _Printed(args)
    delay = BACKOFF_FIRST_S
    state = {"connected": False}

    def connected() -> None:
        state["connected"] = True

    while True:
        start = out.last_lsn + 1 if out.last_lsn else getattr(args, "from_lsn", 0)
        state["connected"] = False
        try:
            return attempt(out, start, connected)
        except _Lost as e:
            if not args.follow:
                return fail("strata tail", str(e))
            if state["connected"]:
                delay = BACKOFF_FIRST_S
            wait = delay * random.uniform(0.5, 1.0)
            print(f"strata tail: {e}; reconnecting in {wait:.1f}s"
                  + (f", resuming after LSN {out.last_lsn}" if out.last_lsn else ""),
                  file=sys.stderr)
            time.sleep(wait)
            delay = min(delay * 2, BACKOFF_MAX_S)


def add_parser(sub) -> None:
    t = sub.add_parser("tail", help="print events as they flow (a ring, WebSocket or gRPC)")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--ring", help="name of a shared-memory ring on this host")
    src.add_argument("--server", help="ws://HOST:PORT (WebSocket tiers) or HOST:PORT (gRPC)")
    t.add_argument("--wait", choices=("doorbell", "poll"), default="doorbell",
                   help="ring: sleep on the doorbell or poll with back-off")
    t.add_argument("--from-start", action="store_true", help="ring: from its oldest event")
    t.add_argument("--tier", choices=("realtime", "delayed", "historical"), default="realtime")
    t.add_argument("--from-lsn", type=int, default=0, help="replay from this LSN first")
    t.add_argument("--topics", default="", help="comma-separated topics (default: all)")
    t.add_argument("--prefix", default="", help="only keys starting with this")
    t.add_argument("--consumer", default="", help="a named consumer (resumes after its cursor)")
    t.add_argument("--token", default=None, help="auth token (or $STRATA_AUTH_TOKEN)")
    t.add_argument("--count", type=int, default=0, help="stop after this many events")
    t.add_argument("--hex", action="store_true", help="keys and values in hex")
    t.add_argument("--follow", action=argparse.BooleanOptionalAction, default=True,
                   help="when the connection is lost (the server stopped, restarted or cut "
                        "this tail off) or the ring is not there (yet, or any more), try again "
                        "with back-off and resume after the last LSN printed (default); "
                        "--no-follow exits with status 1")


def run(args) -> int:
    import os

    args.token = args.token or os.environ.get("STRATA_AUTH_TOKEN") or None
    try:
        if args.ring:
            return follow(args, lambda out, lsn, connected: _ring_attempt(args, out, lsn,
                                                                          connected))
        if args.server.startswith(("ws://", "wss://")):
            return follow(args, lambda out, lsn, connected: asyncio.run(
                _tail_ws(args, out, lsn, connected)))
        return follow(args, lambda out, lsn, connected: _tail_grpc(args, out, lsn, connected))
    except KeyboardInterrupt:
        return 0
    except OSError as e:
        return fail("strata tail", str(e))
