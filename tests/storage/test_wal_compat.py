"""WAL segments written by older versions of the frame format still read (storage/record.py).

testdata/wal-v3 is a database whose writes are only in a version-3 WAL segment
(its README says how): frames without a commit time. Today's code recovers it,
reads its frames back with `ts` None, and appends version-4 frames (with one)
after them in a new segment.
"""

from __future__ import annotations

import shutil
import struct
import time
from pathlib import Path

from strata.storage import Engine, record

FIXTURE = Path(__file__).parent / "testdata" / "wal-v3"


def test_a_version_3_wal_recovers_and_its_frames_have_no_commit_time(tmp_path):
    db_dir = tmp_path / "db"
    shutil.copytree(FIXTURE, db_dir, ignore=shutil.ignore_patterns("README.md"))
    (seg,) = db_dir.glob("wal-*.log")
    assert struct.unpack_from("<I", seg.read_bytes(), 8)[0] == 3
    db = Engine.open(str(db_dir), compaction_executor="thread", wal_preallocate=False,
                     durability="always", wal_retention_bytes=1 << 20)
    try:
        assert db.last_lsn == 7
        assert dict(db.scan()) == {b"b": b"2", b"c": b"3", b"e": b"5"}
        old = list(db.read_log(1))
        assert [(fr.lsn, fr.type, fr.ts) for fr in old] == [
            (1, record.TYPE_PUT, None), (2, record.TYPE_PUT, None), (3, record.TYPE_DELETE, None),
            (4, record.TYPE_BATCH, None), (7, record.TYPE_EVENT, None)]
        assert record.decode_ids(old[1].type, 2, old[1].payload) == [("req-1", 2)]
        assert record.decode_event(old[-1].payload) == (b"news", b"k", b"hello")

        before = time.time_ns()
        db.put(b"f", b"6")
        db.write_batch([("put", b"g", b"7"), ("delete", b"b")])
        after = time.time_ns()
        new = [fr for fr in db.read_log(8)]
        assert [fr.lsn for fr in new] == [8, 9]
        assert all(before <= fr.ts <= after for fr in new)
        assert [fr.ts for fr in db.read_log(1)][:5] == [None] * 5
    finally:
        db.close(flush=False)
    # Both kinds of frame survive a restart: recovery replays the old segment and the new one.
    db = Engine.open(str(db_dir), compaction_executor="thread", wal_preallocate=False,
                     wal_retention_bytes=1 << 20)
    try:
        assert dict(db.scan()) == {b"c": b"3", b"e": b"5", b"f": b"6", b"g": b"7"}
        assert [fr.ts is None for fr in db.read_log(1)] == [True] * 5 + [False] * 2
        assert [fr.ts for fr in db.read_log(8)] == [fr.ts for fr in new]
    finally:
        db.close()


def test_commit_listeners_and_the_log_see_the_same_commit_time(tmp_path):
    """The time is taken once, when the frame is made: the frames handed to commit
    listeners (the hub, the rings, replication) and the log read back carry the same."""
    for durability in ("always", "none"):
        db = Engine.open(str(tmp_path / durability), compaction_executor="thread",
                         wal_preallocate=False, durability=durability)
        seen: list = []
        db.add_commit_listener(lambda frames, seen=seen: seen.extend(map(record.parse_frame_ts, frames)))
        try:
            db.put(b"a", b"1")
            db.write_batch([("put", b"b", b"2"), ("put", b"c", b"3")])
            db.append_event(b"t", b"k", b"v")
            db.delete(b"a")
            logged = {fr.lsn: fr.ts for fr in db.read_log(1)}
            assert [s[0] for s in seen] == [1, 2, 4, 5]
            assert {s[0]: s[4] for s in seen} == logged
            ts = [s[4] for s in seen]
            assert all(t is not None for t in ts) and ts == sorted(ts)
        finally:
            db.close()
