"""The error taxonomy (one table, by exception type), the admission limits and the
checkpoint path rules, in-process."""

from __future__ import annotations

import errno
import os

import grpc
import pytest

from strata.server.errors import InvalidInput, Overloaded, Unavailable, classify
from strata.server.limits import Bulkhead, RateLimiter, TokenBucket
from strata.server.service import checkpoint_path
from strata.storage import errors as se

C = grpc.StatusCode


@pytest.mark.parametrize("exc,code,trailer", [
    (se.InvalidArgument("bad"), C.INVALID_ARGUMENT, None),
    (se.TooLarge("value", 10, 5), C.INVALID_ARGUMENT, None),
    (se.Conflict(b"k", 7), C.ABORTED, ("strata-current-lsn", "7")),
    (se.WriteStalled(40, 1.0), C.RESOURCE_EXHAUSTED, None),
    (se.Compacted(3, 100), C.OUT_OF_RANGE, ("strata-earliest-lsn", "100")),
    (se.NoSpace("disk full", OSError(errno.ENOSPC, "full"), "/d", True), C.RESOURCE_EXHAUSTED,
     None),
    (se.NoSpace("disk full", None, "/d", True, outcome_unknown=True), C.INTERNAL,
     ("strata-outcome", "unknown")),
    (se.WritesStopped("fsync failed", OSError(errno.EIO, "io"), "/d"), C.INTERNAL, None),
    (se.Closed("engine is closed"), C.UNAVAILABLE, None),
    (se.Corruption("/d/1.sst", 40, "crc"), C.INTERNAL, None),
    (TimeoutError(), C.DEADLINE_EXCEEDED, None),
    (InvalidInput("x"), C.INVALID_ARGUMENT, None),
    (Overloaded("x"), C.RESOURCE_EXHAUSTED, None),
    (Unavailable("x"), C.UNAVAILABLE, None),
    (KeyError("bug"), C.INTERNAL, None),
])
def test_each_error_maps_to_its_code_by_type(exc, code, trailer):
    got, message, trailers = classify(exc)
    assert got == code
    assert message
    if trailer is not None:
        assert trailer in trailers


def test_classification_does_not_read_message_text():
    """A Closed whose text happens to say "failed" is still a closed engine."""
    assert classify(se.Closed("the failed engine is closed"))[0] == C.UNAVAILABLE


def test_bulkhead_refuses_past_its_limit_and_frees_slots():
    b = Bulkhead(2)
    assert b.try_enter() and b.try_enter() and not b.try_enter()
    assert b.refused == 1
    b.leave()
    assert b.try_enter()


def test_rate_limiter_buckets_are_per_client_and_bounded():
    r = RateLimiter(rate=10, burst=3, max_clients=2)
    assert [r.allow("a") for _ in range(4)] == [True, True, True, False]
    assert r.allow("b")  # another client has its own bucket
    r.allow("c")  # a third forgets the least recently seen ("a")
    assert len(r._buckets) == 2 and "a" not in r._buckets
    assert RateLimiter(rate=0, burst=0).allow("anyone")  # 0: unlimited


def test_token_bucket_refills_at_its_rate(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("strata.server.limits.time.monotonic", lambda: now[0])
    b = TokenBucket(rate=2, burst=2)
    assert b.take() and b.take() and not b.take()
    now[0] += 0.5  # one token back
    assert b.take() and not b.take()


def test_checkpoint_paths_stay_under_the_backup_dir(tmp_path):
    root = tmp_path / "backups"
    outside = tmp_path / "outside"
    outside.mkdir()
    p = checkpoint_path(str(root), "nightly/one")
    assert p == os.path.join(os.path.realpath(root), "nightly", "one")
    assert os.path.isdir(os.path.dirname(p)) and not os.path.exists(p)
    (root / "out").symlink_to(outside)
    for bad in ("", "/abs", "../x", "a/../../x", "out/cp", ".", "a\0b"):
        with pytest.raises(InvalidInput):
            checkpoint_path(str(root), bad)
    os.mkdir(p)
    with pytest.raises(InvalidInput, match="already exists"):
        checkpoint_path(str(root), "nightly/one")
