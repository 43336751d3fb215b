"""`strata` command line.

    strata serve [--config FILE] [--data-dir D] [--grpc-listen H:P] ...   run the daemon
    strata config [--config FILE] [flags] [--markdown]                  effective configuration
    strata put KEY VALUE | get KEY | del KEY | scan [START [END]]       client commands
    strata status [--cluster] [-o json]                                 one node, or every node
    strata checkpoint NAME | checkpoints | compact                      backups and compaction
    strata admin transfer-leader [--to NODE]                            hand the master's role over
    strata consumers [delete NAME]                                      named consumers: list, delete
    strata tail --server ADDR | --ring NAME                             print events as they flow

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
from . import console, tail

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


def _config_failed(e: config_mod.ConfigError) -> int:
    for err in e.errors:
        print(f"strata: configuration error: {err}", file=sys.stderr)
    return 2


def _serve(args: argparse.Namespace) -> int:
    from . import logs

    try:
        cfg, sources = config_mod.load(args.config, flags=_flags(args))
    except config_mod.ConfigError as e:
        return _config_failed(e)
    logs.setup(cfg.log_level)
    from .daemon import run

    try:
        import uvloop
    except ImportError:
        uvloop = None
    if uvloop is not None and os.environ.get("STRATA_EVENT_LOOP", "uvloop") == "uvloop":
        return uvloop.run(run(cfg, args.config, _flags(args), sources))
    return asyncio.run(run(cfg, args.config, _flags(args), sources))


def _config(args: argparse.Namespace) -> int:
    if args.markdown:
        sys.stdout.write(config_mod.markdown())
        return 0
    try:
        cfg, sources = config_mod.load(args.config, flags=_flags(args))
    except config_mod.ConfigError as e:
        return _config_failed(e)
    if args.output == "toml":
        sys.stdout.write(config_mod.render(cfg, sources))
        return 0
    shown = config_mod.shown(cfg)
    if args.output == "json":
        sys.stdout.write(console.to_json(
            {name: {"value": value, "source": sources[name]} for name, value in shown.items()}))
    else:
        sys.stdout.write(console.table(
            [("OPTION", "VALUE", "SOURCE")]
            + [(name, config_mod.toml_value(value), sources[name]) for name, value in shown.items()]))
    return 0


def _bytes(text: str, hex_: bool) -> bytes:
    return bytes.fromhex(text) if hex_ else text.encode()


def _show(b: bytes, hex_: bool) -> str:
    return b.hex() if hex_ else b.decode(errors="backslashreplace")


def _print_consumers(r) -> None:
    """The table of `strata consumers`: one line per named consumer, then the limit."""
    rows = [("NAME", "CURSOR", "LAG_LSNS", "LAG", "CONNECTED", "SINCE", "LAST_ACK", "LOG")]
    for x in r.consumers:
        rows.append((x.name, x.cursor_lsn, x.lag_lsns, console.size(x.lag_bytes, ""),
                     "yes" if x.connected else "no", console.when(x.connected_since_unix_s),
                     console.when(x.last_ack_unix_s),
                     f"holds {console.size(x.held_bytes, '')}" if x.retained else "COMPACTED"))
    sys.stdout.write(console.table(rows))
    print(f"last LSN {r.last_lsn}  earliest retained LSN {r.earliest_lsn}  "
          f"consumer_retention_bytes {console.size(r.retention_limit_bytes)}  "
          f"headroom {console.size(r.retention_headroom_bytes)}")


def _seen(p) -> str:
    return f"{p.last_heartbeat_ago_s:.2f}s ago" if p.last_heartbeat_ago_s >= 0 else "never"


def _print_status(st, master_view=None) -> None:
    """`strata status` as text. On a replica, `master_view` (the master's own status, if
    it answered) gives the other replicas' state: a replica hears only its master."""
    print(f"node {st.node}  role {st.role}  term {st.term}  durability {st.durability}")
    print(f"last LSN {st.last_lsn}  flushed LSN {st.flushed_lsn}  "
          f"uptime {st.uptime_seconds:.0f}s  version {st.version}")
    print(f"disk: {console.size(st.sst_bytes)} tables, {console.size(st.wal_bytes)} WAL "
          f"(+{console.size(st.wal_preallocated_bytes)} allocated ahead)")
    for lv in st.levels:
        print(f"  L{lv.level}: {lv.files} files, {console.size(lv.bytes)}")
    if not st.writable:
        print(f"writes stopped: {st.write_error}")
    if not st.replication:
        return
    print(f"replication {st.replication}  master {st.master or '(none known)'}  "
          f"commit LSN {st.commit_lsn}  applied LSN {st.applied_lsn}"
          + (f"  lease {'held' if st.lease else 'LOST'}" if st.role == "master" else ""))
    seen_by_master = {p.node: p for p in master_view.peers} if master_view is not None else {}
    master_id = st.master.partition("=")[0]
    for p in st.peers:
        m = seen_by_master.get(p.node)
        if m is not None and p.node != master_id:
            print(f"  peer {p.node} {p.address}: {m.state} (as master {master_view.node} sees "
                  f"it), acked LSN {m.acked_lsn}, lag {m.lag_lsns} LSNs / {m.lag_ms:.1f} ms, "
                  f"last answer {_seen(m)}")
        else:
            print(f"  peer {p.node} {p.address}: {p.state}, acked LSN {p.acked_lsn}, "
                  f"lag {p.lag_lsns} LSNs / {p.lag_ms:.1f} ms, last answer {_seen(p)}")


def _master_status(args, st):
    """The status of the master a replica names, or None (no master known, unreachable)."""
    from strata_client import errors

    if st.role == "master" or not st.master:
        return None
    try:
        return _node_status(args, st.master.partition("=")[2])
    except errors.StrataError:
        return None


def _node_status(args, address: str, timeout: float | None = None):
    from strata_client import Client

    with Client(address, token=_token(args), timeout=timeout or args.timeout) as c:
        return c.status()


def _token(args) -> str | None:
    return args.token or os.environ.get("STRATA_AUTH_TOKEN") or None


CLUSTER_COLUMNS = ("node", "address", "role", "term", "commit_lsn", "applied_lsn", "lag_lsns",
                   "lag_ms", "lease", "health", "error")


def cluster_status(args) -> list[dict]:
    """Ask every node the cluster's statuses name (peers and masters, transitively, from
    --server on) in parallel; one row per node. Health of a replica is its master's view
    of it (healthy / degraded / stalled / failed): a replica hears only its master."""
    from concurrent.futures import ThreadPoolExecutor

    from strata_client import errors

    timeout = min(args.timeout, 3.0)
    answers: dict[str, object] = {}  # address -> status or the error
    names: dict[str, str] = {}  # address -> node id, as others name it
    todo = [args.server]
    with ThreadPoolExecutor(max_workers=8) as pool:
        while todo:
            batch = [a for a in dict.fromkeys(todo) if a not in answers][:64 - len(answers)]
            todo = []

            def ask(address: str):
                try:
                    return _node_status(args, address, timeout)
                except errors.StrataError as e:
                    return e

            for address, st in zip(batch, pool.map(ask, batch)):
                answers[address] = st
                if isinstance(st, Exception):
                    continue
                names[address] = st.node
                for p in st.peers:
                    names.setdefault(p.address, p.node)
                    todo.append(p.address)
                if st.master:
                    node, _, address2 = st.master.partition("=")
                    names.setdefault(address2, node)
                    todo.append(address2)
    # One row per node: an address given by hand (localhost:7410) and the one the peers
    # name (127.0.0.1:7410) may be the same node.
    seen: dict[str, str] = {}
    for address, st in list(answers.items()):
        if isinstance(st, Exception):
            continue
        if st.node not in seen:
            seen[st.node] = address
        elif seen[st.node] == args.server:  # keep the address the cluster uses
            del answers[args.server]
            seen[st.node] = address
        else:
            del answers[address]
    statuses = [st for st in answers.values() if not isinstance(st, Exception)]
    masters = [st for st in statuses if st.role == "master"]
    master = max(masters, key=lambda st: (st.term, st.lease), default=None)
    view = {p.node: p for p in master.peers} if master is not None else {}
    rows = []
    for address, st in answers.items():
        if isinstance(st, Exception):
            rows.append(dict(node=names.get(address, "?"), address=address, role="-", term=None,
                             commit_lsn=None, applied_lsn=None, lag_lsns=None, lag_ms=None,
                             lease=None, health="down",
                             error=f"{getattr(st, 'code', '') or type(st).__name__}: {st}"))
            continue
        row = dict(node=st.node, address=address, role=st.role, term=st.term,
                   commit_lsn=st.commit_lsn, applied_lsn=st.applied_lsn, lag_lsns=0, lag_ms=0.0,
                   lease=st.lease if st.role == "master" else None, health="healthy", error="")
        if not st.writable:
            row["health"] = "writes stopped"
            row["error"] = st.write_error
        if st is master:
            if not st.lease:
                row["health"] = "no lease"
        elif st.node in view:
            p = view[st.node]
            row.update(lag_lsns=p.lag_lsns, lag_ms=p.lag_ms,
                       health=p.state if row["health"] == "healthy" else row["health"])
        elif master is not None:
            row.update(lag_lsns=max(0, master.last_lsn - st.last_lsn), health="unknown to master")
        else:
            row.update(health="no master")
        rows.append(row)
    rows.sort(key=lambda r: (r["role"] != "master", r["node"]))
    return rows


def _print_cluster(rows: list[dict]) -> None:
    def show(v) -> str:
        return "-" if v is None or v == "" else "held" if v is True else "LOST" if v is False \
            else str(v)

    out = [("NODE", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG", "LEASE", "HEALTH")]
    for r in rows:
        lag = ("-" if r["lag_lsns"] is None
               else f"{r['lag_lsns']} LSNs / {r['lag_ms']:.0f} ms")
        out.append((r["node"], r["address"], r["role"], show(r["term"]), show(r["commit_lsn"]),
                    show(r["applied_lsn"]), lag, show(r["lease"]), r["health"]))
    sys.stdout.write(console.table(out))
    for r in rows:
        if r["error"]:
            print(f"{r['node']} ({r['address']}): {r['error']}")


def _status(args, c) -> int:
    if args.cluster:
        rows = cluster_status(args)
        if args.output == "json":
            sys.stdout.write(console.to_json(rows))
        else:
            _print_cluster(rows)
        down = [r["address"] for r in rows if r["health"] == "down"]
        if down:
            return console.fail("strata", f"no answer from {', '.join(down)}")
        return 0
    st = c.status()
    master_view = _master_status(args, st)
    if args.output == "json":
        out = console.message_dict(st)
        if master_view is not None:
            out["master_view"] = {p.node: console.message_dict(p) for p in master_view.peers}
        sys.stdout.write(console.to_json(out))
    else:
        _print_status(st, master_view)
    return 0


def _checkpoint(args, c) -> int:
    """`strata checkpoint NAME`: on a terminal, the time taken so far and the size of what
    is being copied, redrawn on stderr until the server answers."""
    import threading

    tty = sys.stderr.isatty() and not args.quiet
    t0 = time.monotonic()
    result: dict = {}

    def call() -> None:
        try:
            result["lsn"] = c.checkpoint(args.name)
        except BaseException as e:  # handed to the main thread, raised there
            result["error"] = e

    if tty:
        try:
            st = c.status()
            what = f"{console.size(st.sst_bytes)} tables + {console.size(st.wal_bytes)} WAL"
        except Exception:
            what = "the database"
        worker = threading.Thread(target=call, daemon=True)
        worker.start()
        spin = "|/-\\"
        i = 0
        while True:  # drawn at least once, however quick the server is
            sys.stderr.write(f"\rcheckpoint {args.name}: copying {what} {spin[i % 4]} "
                             f"{time.monotonic() - t0:.1f}s ")
            sys.stderr.flush()
            i += 1
            worker.join(0.2)
            if not worker.is_alive():
                break
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()
    else:
        call()
    if "error" in result:
        raise result["error"]
    seconds = time.monotonic() - t0
    found = [x for x in c.checkpoints().checkpoints if x.name == os.path.normpath(args.name)]
    if found:
        x = found[0]
        print(f"checkpoint {x.name} at LSN {result['lsn']}: {console.size(x.bytes)} in "
              f"{x.files} files, {seconds:.1f}s, {x.path}")
    else:
        print(f"checkpoint {args.name} at LSN {result['lsn']}, {seconds:.1f}s")
    return 0


def _checkpoints(args, c) -> int:
    r = c.checkpoints()
    if args.output == "json":
        sys.stdout.write(console.to_json(console.message_dict(r)))
        return 0
    rows = [("NAME", "CREATED", "SIZE", "FILES", "PATH")]
    rows += [(x.name, console.when(x.created_unix_s), console.size(x.bytes, ""), x.files, x.path)
             for x in r.checkpoints]
    sys.stdout.write(console.table(rows))
    print(f"{len(r.checkpoints)} checkpoint(s) in {r.backup_dir}")
    return 0


def _client_cmd(args: argparse.Namespace) -> int:
    from strata_client import Client, errors

    try:
        with Client(args.server, token=_token(args), timeout=args.timeout) as c:
            h = getattr(args, "hex", False)
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
                elif args.output == "json":
                    sys.stdout.write(console.to_json(console.message_dict(c.consumers())))
                else:
                    _print_consumers(c.consumers())
            elif args.command == "admin":
                r = c.transfer_leader(args.to)
                print(f"master {r.master} (term {r.term}) after {r.seconds * 1000:.0f} ms")
            elif args.command == "status":
                return _status(args, c)
            elif args.command == "checkpoint":
                return _checkpoint(args, c)
            elif args.command == "checkpoints":
                return _checkpoints(args, c)
            elif args.command == "compact":
                print(f"compacted in {c.compact():.2f}s")
    except errors.StrataError as e:
        return console.fail("strata", f"{e.code or type(e).__name__}: {e}")
    except ValueError as e:
        return console.fail("strata", str(e), 2)
    return 0


def _version() -> str:
    import importlib.metadata
    import platform

    try:
        v = importlib.metadata.version("strata")
    except importlib.metadata.PackageNotFoundError:  # a tree that was never installed
        v = "unknown"
    return f"strata {v} (Python {platform.python_version()})"


def _output(p: argparse.ArgumentParser, *choices: str) -> None:
    p.add_argument("-o", "--output", choices=choices, default=choices[0],
                   help=f"output format (default {choices[0]})")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="strata", description="Strata storage-and-distribution server",
                                epilog="exit status: 0 done; 1 the server refused or did not "
                                       "answer; 2 bad usage or configuration; 3 a tail cut off "
                                       "or lapped; 141 stdout closed early (as by head)")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the server (no config needed: data in ./data, loopback ports)")
    _add_server_flags(s)
    c = sub.add_parser("config", help="print the effective configuration and where each value "
                                      "came from; exits 2 on the errors `serve` would refuse")
    _add_server_flags(c)
    c.add_argument("--markdown", action="store_true", help="print the options table for the docs")
    _output(c, "toml", "table", "json")
    client_parent = argparse.ArgumentParser(add_help=False)
    client_parent.add_argument("--server", default=os.environ.get("STRATA_SERVER", "127.0.0.1:7400"),
                               help="host:port (default $STRATA_SERVER or 127.0.0.1:7400)")
    client_parent.add_argument("--token", default=None, help="auth token (or $STRATA_AUTH_TOKEN)")
    client_parent.add_argument("--timeout", type=float, default=10.0)
    data_parent = argparse.ArgumentParser(add_help=False)
    data_parent.add_argument("--hex", action="store_true", help="keys and values in hex")
    sp = sub.add_parser("put", parents=[client_parent, data_parent], help="store a value")
    sp.add_argument("key")
    sp.add_argument("value")
    sg = sub.add_parser("get", parents=[client_parent, data_parent], help="print a value")
    sg.add_argument("key")
    sd = sub.add_parser("del", parents=[client_parent, data_parent], help="delete a key")
    sd.add_argument("key")
    ss = sub.add_parser("scan", parents=[client_parent, data_parent],
                        help="list pairs in key order")
    ss.add_argument("start", nargs="?", default="")
    ss.add_argument("end", nargs="?", default="")
    ss.add_argument("--limit", type=int, default=0)
    st = sub.add_parser("status", parents=[client_parent], help="node status")
    st.add_argument("--cluster", action="store_true",
                    help="every node the cluster names, one row each (exits 1 if one is down)")
    _output(st, "table", "json")
    sa = sub.add_parser("admin", help="cluster administration")
    asub = sa.add_subparsers(dest="admin_command", required=True)
    tl = asub.add_parser("transfer-leader", parents=[client_parent],
                         help="hand the master's role to a replica (no election timeout passes)")
    tl.add_argument("--to", default="",
                    help="node id of the new master (default: the most caught-up replica)")
    sc = sub.add_parser("consumers", parents=[client_parent],
                        help="list named consumers: cursor, lag, connected, last ack")
    _output(sc, "table", "json")
    csub = sc.add_subparsers(dest="consumers_command")
    cd = csub.add_parser("delete", parents=[client_parent],
                         help="delete a named consumer (its cursor and hold on the log; a "
                              "connected one is ended); takes the admin token")
    cd.add_argument("name")
    ck = sub.add_parser("checkpoint", parents=[client_parent],
                        help="write a checkpoint (an openable copy of the database) under the "
                             "server's backup_dir; takes the admin token")
    ck.add_argument("name", help="relative name under backup_dir, e.g. nightly/2026-12-07")
    ck.add_argument("-q", "--quiet", action="store_true", help="no progress on a terminal")
    cl = sub.add_parser("checkpoints", parents=[client_parent],
                        help="list the checkpoints under the server's backup_dir")
    _output(cl, "table", "json")
    sub.add_parser("compact", parents=[client_parent],
                   help="flush and compact the whole key range (blocks until settled); "
                        "takes the admin token")
    tail.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "config":
            status = _config(args)
        elif args.command == "tail":
            status = tail.run(args)
        else:
            status = _client_cmd(args)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # The reader went away (`strata status | head -1`): say nothing, as cat does.
        # Point stdout at /dev/null so that the flush at exit finds no pipe either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13  # as a process killed by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
