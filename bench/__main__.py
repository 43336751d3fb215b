"""`python -m bench SUBCOMMAND [options]`: dispatch to one benchmark module.

Each subcommand is a module of this package with a `main(argv) -> int`; its own
options follow the subcommand (`python -m bench engine --help`).
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "engine": ("bench.engine", "embedded engine vs sqlite3, LevelDB (plyvel), RocksDB (rocksdict)"),
    "server": ("bench.server", "the daemon over gRPC vs etcd and Redis (appendfsync always/everysec)"),
    "compaction": ("bench.compaction", "write throughput kept during a full compaction, vs LevelDB"),
    "replication": ("bench.replication", "three nodes async/quorum/sync and failover, vs a 3-node "
                                         "etcd cluster and Redis Sentinel"),
    "compression": ("bench.compression", "table bytes and read/write cost of each block codec, "
                                         "vs LevelDB (snappy) and RocksDB"),
    "distribution": ("bench.distribution", "event rings and WebSocket tiers vs multiprocessing.Queue, "
                                           "pyzmq, websockets broadcast, Redis pub/sub, NATS"),
}


def _usage() -> str:
    lines = ["usage: python -m bench SUBCOMMAND [options]", "", "subcommands:"]
    width = max(len(name) for name in COMMANDS)
    for name, (_, about) in COMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {about}")
    lines.append("")
    lines.append("`python -m bench SUBCOMMAND --help` lists a subcommand's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
