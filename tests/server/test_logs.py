"""The daemon's log setup (server/logs.py): one JSON object a line, and grpc.aio's
report of a call that ended before its answer could be sent kept out of ERROR."""

from __future__ import annotations

import io
import json
import logging

from strata.server import logs


def _capture(level: str) -> io.StringIO:
    logs.setup(level)
    out = io.StringIO()
    logging.getLogger().handlers[0].setStream(out)
    return out


def test_a_call_that_ended_before_its_answer_is_not_an_error():
    root = logging.getLogger()
    saved, saved_level = root.handlers[:], root.level
    try:
        out = _capture("info")
        grpc_log = logging.getLogger("grpc._cython.cygrpc")
        try:
            raise RuntimeError("Failed \"execute_batch\"")
        except RuntimeError:
            grpc_log.exception("ExecuteBatchError raised in core by servicer method [/x/Put]")
        grpc_log.error("something else went wrong in core")
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [(r["level"], r["msg"]) for r in lines] == \
            [("error", "something else went wrong in core")]
        out = _capture("debug")
        grpc_log.error("ExecuteBatchError raised in core by servicer method [/x/Put]")
        (r,) = [json.loads(line) for line in out.getvalue().splitlines()]
        assert r["level"] == "debug" and "exc" not in r
    finally:
        root.handlers[:] = saved
        root.setLevel(saved_level)
        logging.getLogger("grpc._cython.cygrpc").filters.clear()
