"""`strata tail`: print the events that flow, one JSON line each.

    strata tail --ring events                 # a shared-memory ring on this host
    strata tail --server ws://127.0.0.1:7401  # the WebSocket tiers (realtime unless --tier)
    strata tail --server 127.0.0.1:7400       # gRPC Events.Consume

Each line: {"lsn": N, "ts": Unix ms or null, "topic": "kv", "key": "...", "value": "..."|null}
(keys and values as text, with --hex in hex; null value: a deletion). Cut off
or lapped, it says where to resume on stderr and exits with status 3.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys


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


def _count_left(args) -> int:
    return args.count if args.count else -1


def tail_ring(args) -> int:
    from strata_client.errors import Lapped
    from strata_client.ring import RingClosed, RingReader

    left = _count_left(args)
    try:
        with RingReader(args.ring, wait=args.wait, from_start=args.from_start) as r:
            while left:
                for ev in r.read(timeout=1.0):
                    _print(_line(ev.lsn, ev.ts_ns // 1_000_000, ev.topic, ev.key,
                                 None if ev.flags else ev.value, args.hex))
                    left -= 1
                    if not left:
                        break
    except Lapped as e:
        print(f"strata tail: lapped: resume from LSN {e.resume_lsn} "
              f"(strata tail --server ... --from-lsn {e.resume_lsn})", file=sys.stderr)
        return 3
    except RingClosed as e:
        print(f"strata tail: {e}", file=sys.stderr)
        return 1
    return 0


async def _tail_ws(args) -> int:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    url = args.server.rstrip("/")
    if not url.endswith("/v1/events"):
        url += "/v1/events"
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    req = {"op": "subscribe", "tier": args.tier, "from_lsn": args.from_lsn}
    if args.topics:
        req["topics"] = args.topics.split(",")
    if args.prefix:
        req["prefix"] = base64.b64encode(args.prefix.encode()).decode()
    if args.consumer:
        req["consumer"] = args.consumer
    left = _count_left(args)
    async with connect(url, additional_headers=headers, max_size=None,
                       subprotocols=["strata.v1.json"]) as ws:
        await ws.send(json.dumps(req))
        try:
            while left:
                m = json.loads(await ws.recv())
                if m["op"] == "error":
                    print(f"strata tail: {m['code']}: {m['message']}"
                          + (f"; resume from LSN {m['resume_lsn']}" if "resume_lsn" in m else ""),
                          file=sys.stderr)
                    return 3
                for ev in m["events"] if m["op"] == "batch" else [m] if m["op"] == "event" else []:
                    v = ev["value"]
                    _print(_line(ev["lsn"], ev["ts"], ev["topic"], base64.b64decode(ev["key"]),
                                 None if v is None else base64.b64decode(v), args.hex))
                    left -= 1
                    if not left:
                        break
        except ConnectionClosed as e:
            print(f"strata tail: connection closed: {e}", file=sys.stderr)
            return 1
    return 0


def tail_grpc(args) -> int:
    from strata_client import Client, errors

    left = _count_left(args)
    try:
        with Client(args.server, token=args.token) as c:
            sub = c.consume(args.consumer or "", tier=args.tier, from_lsn=args.from_lsn,
                            topics=args.topics.split(",") if args.topics else (),
                            key_prefix=args.prefix.encode())
            for ev in sub:
                _print(_line(ev.lsn, None, ev.topic, ev.key, None if ev.deleted else ev.value,
                             args.hex))
                left -= 1
                if not left:
                    break
            sub.close()
    except errors.Lapped as e:
        print(f"strata tail: lapped: resume from LSN {e.resume_lsn}", file=sys.stderr)
        return 3
    except errors.StrataError as e:
        print(f"strata tail: {e.code or type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


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


def run(args) -> int:
    import os

    args.token = args.token or os.environ.get("STRATA_AUTH_TOKEN") or None
    try:
        if args.ring:
            return tail_ring(args)
        if args.server.startswith(("ws://", "wss://")):
            return asyncio.run(_tail_ws(args))
        return tail_grpc(args)
    except KeyboardInterrupt:
        return 0
    except OSError as e:
        print(f"strata tail: {e}", file=sys.stderr)
        return 1
