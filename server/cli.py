"""`strata` command line.

    strata serve [--config FILE] [--data-dir D] [--grpc-listen H:P] ...   run the daemon
    strata config [--config FILE] [flags] [--markdown]                  effective configuration
    strata put KEY VALUE | get KEY | del KEY | scan [START [END]] | status   client commands
    strata admin transfer-leader [--to NODE]                            hand the master's role over
    strata consumers [delete NAME]                                      named consumers: list, delete

Client commands talk to --server (default $STRATA_SERVER or 127.0.0.1:7400)
through strata_client; keys and values are taken as UTF-8 text, or as hex
with --hex.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from strata.storage.options import DURABILITY_MODES

from . import config as config_mod
from . import tail

FLAG_OPTIONS = ("data_dir", "grpc_listen", "ws_listen", "metrics_listen", "durability", "log_level",
                "node", "auth_token", "peers", "replication", "advertise", "rings",
                "ws_allowed_origins")


def _add_server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=os.environ.get("STRATA_CONFIG") or None,
                   help="TOML configuration file (default: $STRATA_CONFIG)")
    for name in FLAG_OPTIONS:
        kwargs: dict = {"help": config_mod.OPTIONS[name][0], "default": None}
        if name == "durability":
            kwargs["choices"] = DURABILITY_MODES
        names = ["--" + name.replace("_", "-")] + (["--node-id"] if name == "node" else [])
        p.add_argument(*names, dest=name, **kwargs)


def _flags(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in FLAG_OPTIONS if getattr(args, name) is not None}


def _serve(args: argparse.Namespace) -> int:
    from . import logs

    try:
        cfg, _ = config_mod.load(args.config, flags=_flags(args))
    except config_mod.ConfigError as e:
        print(f"strata: configuration error: {e}", file=sys.stderr)
        return 2
    logs.setup(cfg.log_level)
    from .daemon import run

    try:
        import uvloop
    except ImportError:
        uvloop = None
    if uvloop is not None and os.environ.get("STRATA_EVENT_LOOP", "uvloop") == "uvloop":
        return uvloop.run(run(cfg, args.config, _flags(args)))
    return asyncio.run(run(cfg, args.config, _flags(args)))


def _config(args: argparse.Namespace) -> int:
    if args.markdown:
        sys.stdout.write(config_mod.markdown())
        return 0
    try:
        cfg, sources = config_mod.load(args.config, flags=_flags(args))
    except config_mod.ConfigError as e:
        print(f"strata: configuration error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(config_mod.render(cfg, sources))
    return 0


def _bytes(text: str, hex_: bool) -> bytes:
    return bytes.fromhex(text) if hex_ else text.encode()


def _show(b: bytes, hex_: bool) -> str:
    return b.hex() if hex_ else b.decode(errors="backslashreplace")


def _when(unix_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s)) if unix_s else "-"


def _print_consumers(r) -> None:
    """The table of `strata consumers`: one line per named consumer, then the limit."""
    rows = [("NAME", "CURSOR", "LAG_LSNS", "LAG_BYTES", "CONNECTED", "SINCE", "LAST_ACK", "LOG")]
    for x in r.consumers:
        rows.append((x.name, str(x.cursor_lsn), str(x.lag_lsns), str(x.lag_bytes),
                     "yes" if x.connected else "no", _when(x.connected_since_unix_s),
                     _when(x.last_ack_unix_s),
                     f"held {x.held_bytes} B" if x.retained else "COMPACTED"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print(f"last LSN {r.last_lsn}  earliest retained LSN {r.earliest_lsn}  "
          f"consumer_retention_bytes {r.retention_limit_bytes}  "
          f"headroom {r.retention_headroom_bytes} B")


def _client_cmd(args: argparse.Namespace) -> int:
    from strata_client import Client, errors

    token = args.token or os.environ.get("STRATA_AUTH_TOKEN") or None
    try:
        with Client(args.server, token=token, timeout=args.timeout) as c:
            h = args.hex
            if args.command == "put":
                print(c.put(_bytes(args.key, h), _bytes(args.value, h)))
            elif args.command == "get":
                value, lsn = c.get_entry(_bytes(args.key, h))
                if value is None:
                    print("(not found)", file=sys.stderr)
                    return 1
                print(_show(value, h))
            elif args.command == "del":
                print(c.delete(_bytes(args.key, h)))
            elif args.command == "scan":
                for k, v in c.scan(_bytes(args.start, h), _bytes(args.end, h), limit=args.limit):
                    print(f"{_show(k, h)}\t{_show(v, h)}")
            elif args.command == "consumers":
                if args.consumers_command == "delete":
                    r = c.delete_consumer(args.name)
                    print(f"deleted consumer {args.name!r} (cursor LSN {r.cursor_lsn}"
                          f"{', its subscription ended' if r.was_connected else ''})")
                else:
                    _print_consumers(c.consumers())
            elif args.command == "admin":
                r = c.transfer_leader(args.to)
                print(f"master {r.master} (term {r.term}) after {r.seconds * 1000:.0f} ms")
            elif args.command == "status":
                st = c.status()
                print(f"node {st.node}  role {st.role}  term {st.term}  durability {st.durability}")
                print(f"last LSN {st.last_lsn}  flushed LSN {st.flushed_lsn}  "
                      f"uptime {st.uptime_seconds:.0f}s  version {st.version}")
                print(f"disk: {st.sst_bytes} B tables, {st.wal_bytes} B WAL")
                for lv in st.levels:
                    print(f"  L{lv.level}: {lv.files} files, {lv.bytes} B")
                if st.replication:
                    print(f"replication {st.replication}  master {st.master or '(none known)'}  "
                          f"commit LSN {st.commit_lsn}  applied LSN {st.applied_lsn}"
                          + (f"  lease {'held' if st.lease else 'LOST'}"
                             if st.role == "master" else ""))
                    for p in st.peers:
                        seen = (f"{p.last_heartbeat_ago_s:.2f}s ago"
                                if p.last_heartbeat_ago_s >= 0 else "never")
                        print(f"  peer {p.node} {p.address}: {p.state}, acked LSN {p.acked_lsn}, "
                              f"lag {p.lag_lsns} LSNs / {p.lag_ms:.1f} ms, last answer {seen}")
    except errors.StrataError as e:
        print(f"strata: {e.code or type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"strata: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="strata", description="Strata storage-and-distribution server")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the server (no config needed: data in ./data, loopback ports)")
    _add_server_flags(s)
    c = sub.add_parser("config", help="print the effective configuration and where each value came from")
    _add_server_flags(c)
    c.add_argument("--markdown", action="store_true", help="print the options table for the docs")
    client_parent = argparse.ArgumentParser(add_help=False)
    client_parent.add_argument("--server", default=os.environ.get("STRATA_SERVER", "127.0.0.1:7400"))
    client_parent.add_argument("--token", default=None, help="auth token (or $STRATA_AUTH_TOKEN)")
    client_parent.add_argument("--timeout", type=float, default=10.0)
    client_parent.add_argument("--hex", action="store_true", help="keys and values in hex")
    sp = sub.add_parser("put", parents=[client_parent], help="store a value")
    sp.add_argument("key")
    sp.add_argument("value")
    sg = sub.add_parser("get", parents=[client_parent], help="print a value")
    sg.add_argument("key")
    sd = sub.add_parser("del", parents=[client_parent], help="delete a key")
    sd.add_argument("key")
    ss = sub.add_parser("scan", parents=[client_parent], help="list pairs in key order")
    ss.add_argument("start", nargs="?", default="")
    ss.add_argument("end", nargs="?", default="")
    ss.add_argument("--limit", type=int, default=0)
    sub.add_parser("status", parents=[client_parent], help="node status")
    sa = sub.add_parser("admin", help="cluster administration")
    asub = sa.add_subparsers(dest="admin_command", required=True)
    tl = asub.add_parser("transfer-leader", parents=[client_parent],
                         help="hand the master's role to a replica (no election timeout passes)")
    tl.add_argument("--to", default="",
                    help="node id of the new master (default: the most caught-up replica)")
    sc = sub.add_parser("consumers", parents=[client_parent],
                        help="list named consumers: cursor, lag, connected, last ack")
    csub = sc.add_subparsers(dest="consumers_command")
    cd = csub.add_parser("delete", parents=[client_parent],
                         help="delete a named consumer (its cursor and hold on the log; a "
                              "connected one is ended); takes the admin token")
    cd.add_argument("name")
    tail.add_parser(sub)
    args = p.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "config":
        return _config(args)
    if args.command == "tail":
        return tail.run(args)
    return _client_cmd(args)


if __name__ == "__main__":
    sys.exit(main())
