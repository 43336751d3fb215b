"""Named holds on the log (Engine.hold_log / release_log / set_log_holds): a history
reader that comes back later keeps its segments past wal_retention_bytes, within
wal_hold_bytes (named consumers in the daemon, issue 20)."""

from __future__ import annotations

import pytest

from strata.storage import Engine
from strata.storage.errors import Compacted

VALUE = b"v" * 1000
# Each round is its own segment (a flush rolls the log): ~10 frames of ~1 KiB.
ROUND = 10


def _round(db: Engine, i: int) -> int:
    for j in range(ROUND):
        last = db.put(b"k%04d-%d" % (i, j), VALUE)
    db.flush()
    return last


def _opts(**kw) -> dict:
    return dict(memtable_size=1 << 20, wal_retention_bytes=25_000, compaction_executor="thread",
                wal_preallocate=False, **kw)


def test_a_hold_keeps_its_segments_past_retention_and_release_lets_them_go(tmp_path):
    with Engine.open(str(tmp_path / "db"), **_opts(wal_hold_bytes=1 << 20)) as db:
        _round(db, 0)
        db.hold_log("c", 5)
        for i in range(1, 12):
            _round(db, i)
        assert db.earliest_lsn == 1, "the segment holding LSN 5 stays"
        assert [fr.lsn for fr in db.read_log(5)][:3] == [5, 6, 7]
        h = db.log_holds()["c"]
        assert h["lsn"] == 5 and h["retained"]
        # 12 rounds of ~10.3 KB, of which retention keeps the newest two: the rest is held.
        assert 80_000 < h["held_bytes"] < 110_000
        db.release_log("c")
        assert db.purge_log(), "released: the held segments go"
        assert db.earliest_lsn > 100
        with pytest.raises(Compacted):
            next(iter(db.read_log(5)))


def test_a_hold_keeps_at_most_wal_hold_bytes_and_then_falls_off(tmp_path):
    with Engine.open(str(tmp_path / "db"), **_opts(wal_hold_bytes=35_000)) as db:
        _round(db, 0)
        db.hold_log("c", 5)
        for i in range(1, 4):
            _round(db, i)
        assert db.earliest_lsn == 1, "within the limit: kept"
        for i in range(4, 12):
            _round(db, i)
        earliest = db.earliest_lsn
        assert earliest > 5, "past the limit: the oldest held segments are purged"
        h = db.log_holds()["c"]
        assert not h["retained"]
        assert 20_000 < h["held_bytes"] <= 35_000, "the newest held log that fits is kept"
        # Retention alone would keep ~2 rounds (LSNs 101..120): the hold kept 3 more.
        assert earliest < 100
        with pytest.raises(Compacted) as e:
            next(iter(db.read_log(5)))
        assert e.value.earliest_lsn == earliest


def test_the_lowest_of_several_holds_counts(tmp_path):
    with Engine.open(str(tmp_path / "db"), **_opts(wal_hold_bytes=1 << 20)) as db:
        _round(db, 0)
        _round(db, 1)
        db.set_log_holds({"a": 15, "b": 3})
        for i in range(2, 10):
            _round(db, i)
        assert db.earliest_lsn == 1
        db.set_log_holds({"a": 15})
        db.purge_log()
        assert db.earliest_lsn == 11, "b gone: only a's segment (LSNs 11..20) and later stay"
        assert set(db.log_holds()) == {"a"}


def test_holds_from_open_purge_nothing_until_the_owner_sets_them(tmp_path):
    d = str(tmp_path / "db")
    with Engine.open(d, **_opts(wal_hold_bytes=1 << 20, wal_holds_from_open=True)) as db:
        for i in range(8):
            _round(db, i)
        assert db.earliest_lsn == 1, "no holds set yet: nothing purged"
        db.set_log_holds({"c": 35})
        db.purge_log()
        assert db.earliest_lsn == 31
        for i in range(8, 10):
            db.put(b"tail-%d" % i, VALUE)  # replayed and flushed at the next open
    # The recovery flush at open would purge everything past retention: it waits.
    with Engine.open(d, **_opts(wal_hold_bytes=1 << 20, wal_holds_from_open=True)) as db:
        assert db.earliest_lsn == 31
        db.set_log_holds({})
        db.purge_log()
        assert db.earliest_lsn > 31
    # Without the option, holds are not kept across an open (they live in memory).
    with Engine.open(d, **_opts(wal_hold_bytes=1 << 20)) as db:
        assert db.log_holds() == {}


def test_log_bytes_from_counts_the_segments_still_to_read(tmp_path):
    with Engine.open(str(tmp_path / "db"), **_opts(wal_hold_bytes=1 << 20)) as db:
        db.hold_log("c", 1)
        for i in range(4):
            _round(db, i)
        total = db.wal_stats()["retained_bytes"]
        assert db.log_bytes_from(1) == total
        assert 0 < db.log_bytes_from(31) < total - 25_000
        assert db.log_bytes_from(db.last_lsn + 1) < 200, "only the open segment's header"
