"""Structured logs: one JSON object per line on stderr."""

from __future__ import annotations

import json
import logging
import sys


class JsonFormatter(logging.Formatter):
    """ts, level, logger, msg (and exc when present)."""

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


class _ClientGone(logging.Filter):
    """grpc.aio logs at ERROR, with a traceback, a response or status it could not send
    because the call had already ended: the client's deadline passed or it went away
    while the handler ran (normal use; the call is counted under its status code in
    the metrics). Kept, at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and \
                record.getMessage().startswith("ExecuteBatchError raised in core"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info = record.exc_text = None
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    grpc_core = logging.getLogger("grpc._cython.cygrpc")
    if not any(isinstance(f, _ClientGone) for f in grpc_core.filters):
        grpc_core.addFilter(_ClientGone())
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
