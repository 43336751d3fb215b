"""The shared limits (strata_client.limits) agree with what the engine accepts, and
the one token check (strata_client.auth) admits exactly the configured tokens."""

from __future__ import annotations

import pytest

from strata.storage import Engine, InvalidArgument, record
from strata_client import limits
from strata_client.auth import bearer, token_matches


def test_the_engine_takes_topics_up_to_the_shared_limit(tmp_path):
    with Engine.open(str(tmp_path / "db")) as db:
        db.append_event(b"t" * limits.MAX_TOPIC_BYTES, b"k", b"v")
        with pytest.raises(InvalidArgument):
            db.append_event(b"t" * (limits.MAX_TOPIC_BYTES + 1), b"k", b"v")


def test_the_engine_takes_request_ids_up_to_the_shared_limit(tmp_path):
    assert record.MAX_REQUEST_ID == limits.MAX_REQUEST_ID_CHARS
    with Engine.open(str(tmp_path / "db")) as db:
        db.put(b"a", b"1", request_id="r" * limits.MAX_REQUEST_ID_CHARS)
        with pytest.raises(InvalidArgument):
            db.put(b"b", b"1", request_id="r" * (limits.MAX_REQUEST_ID_CHARS + 1))


def test_token_matches_only_a_configured_token():
    assert token_matches(bearer("s3cret"), ["s3cret"])
    assert token_matches(bearer("admin").encode(), ["data", "admin"])
    assert not token_matches(bearer("s3cre"), ["s3cret"])
    assert not token_matches("s3cret", ["s3cret"])  # no scheme
    assert not token_matches("", ["s3cret"])
    # An empty token configures nothing: "Bearer " never admits.
    assert not token_matches(bearer(""), ["", ""])
