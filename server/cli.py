"""`strata` command line.

`strata serve` opens the storage engine on its embedded defaults (data in
./data) and holds it open until SIGTERM or SIGINT, then closes it cleanly (the
memtable is flushed, so the next start replays nothing). The network APIs
(gRPC on 127.0.0.1:7400, WebSocket on :7401, metrics on :7402) are the
daemon's work and are not served yet; `serve` says so when it starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (and exc when present)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _serve(args: argparse.Namespace) -> int:
    from storage import Engine

    _setup_logging(args.log_level)
    log = logging.getLogger("strata.serve")
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t0 = time.monotonic()
    db = Engine.open(args.data_dir, durability=args.durability)
    log.info(
        "engine open at %s (durability=%s, last LSN %d) in %.3fs; network APIs are not served "
        "by this version (engine only)",
        os.path.abspath(args.data_dir), args.durability, db.last_lsn, time.monotonic() - t0,
    )
    try:
        while not stop.wait(1.0):
            pass
    finally:
        t1 = time.monotonic()
        db.close()
        log.info("closed cleanly in %.3fs", time.monotonic() - t1)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="strata", description="Strata storage-and-distribution server")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the server on its embedded defaults")
    s.add_argument("--data-dir", default=os.environ.get("STRATA_DATA_DIR", "./data"),
                   help="database directory (default ./data; env STRATA_DATA_DIR)")
    s.add_argument("--durability", choices=("always", "interval", "none"),
                   default=os.environ.get("STRATA_DURABILITY", "always"),
                   help="when a write is acknowledged: after fsync (always, default), "
                        "after write with periodic fsync (interval), after write (none)")
    s.add_argument("--log-level", default=os.environ.get("STRATA_LOG_LEVEL", "info"))
    args = p.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
