"""End: one table of close codes and gRPC statuses; Ended's message and trailers as
each transport reports them; Subscriptions.ending's rules."""

from __future__ import annotations

import grpc
import pytest

from strata.node.subscriptions import End, Ended, Subscriptions
from strata.server.errors import classify

# docs/protocol.md's close codes: clients depend on them.
WS = {"shutting_down": 1001, "protocol_error": 1002, "too_many": 1013, "compacted": 4001,
      "lapped": 4002, "bad_request": 4003, "superseded": 4004, "not_master": 4005,
      "deleted": 4006}


def test_close_codes_are_the_documented_ones_and_distinct():
    assert {e.code: e.ws_close for e in End} == WS
    assert End.of("lapped") is End.LAPPED
    assert End.of("something new") is End.SHUTTING_DOWN


@pytest.mark.parametrize("end,status,message,trailers", [
    (End.LAPPED, grpc.StatusCode.RESOURCE_EXHAUSTED, "too slow; resume from LSN 7",
     (("strata-resume-lsn", "7"),)),
    (End.SHUTTING_DOWN, grpc.StatusCode.UNAVAILABLE, "too slow; resume from LSN 7",
     (("strata-resume-lsn", "7"),)),
    (End.COMPACTED, grpc.StatusCode.OUT_OF_RANGE, "too slow", (("strata-earliest-lsn", "7"),)),
    (End.SUPERSEDED, grpc.StatusCode.ABORTED, "too slow", (("strata-superseded", "orders"),)),
    (End.DELETED, grpc.StatusCode.ABORTED, "too slow", (("strata-consumer-deleted", "orders"),)),
    (End.BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT, "too slow", ()),
])
def test_ended_as_grpc_reports_it(end, status, message, trailers):
    assert classify(Ended(end, "too slow", 7, "orders")) == (status, message, trailers)


class Consumer:
    name, acked = "orders", 3


def subscriptions() -> Subscriptions:
    return Subscriptions(hub=None, cursors=None, budget=None, max_queue=lambda: 1,
                         check_write=lambda: None)


def test_lapped_counts_a_cut_off_unless_the_node_drains():
    s = subscriptions()
    e = s.ending(Consumer(), 0, "lapped", "fell behind", 12, draining=False)
    assert (e.end, e.message, e.resume_lsn, s.cut_off) == (End.LAPPED, "fell behind", 12, 1)
    e = s.ending(Consumer(), 0, "lapped", "fell behind", 12, draining=True)
    assert (e.end, e.message, s.cut_off) == (End.SHUTTING_DOWN, "the server is shutting down", 1)


def test_compacted_names_the_consumers_cursor():
    e = subscriptions().ending(Consumer(), 4, "compacted", "LSN 1 is gone", 50, draining=False)
    assert e.end is End.COMPACTED and "orders" in e.message and e.resume_lsn == 50


def test_admit_checks_the_write_rule_for_named_consumers_only():
    class NotMaster(Exception):
        pass

    def refuse():
        raise NotMaster

    s = Subscriptions(None, None, None, lambda: 1, refuse)
    s.admit("")
    with pytest.raises(NotMaster):
        s.admit("orders")
