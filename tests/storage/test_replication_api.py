"""The engine's replication API: apply_frames, term markers and history, cutting the log
on reopen, read-only mode and the read gate."""

import pytest

from strata.storage import Engine, InvalidArgument, LogMismatch, ReadOnly, StorageError, record

SMALL = dict(memtable_size=64 << 10, wal_segment_size=128 << 10, compaction_executor="thread")


def raw_log(db, from_lsn=1):
    """The log's frames as bytes, the sync-point flag cleared (it marks where each node
    synced; everything else must be identical)."""
    out = []
    for fr in db.read_log(from_lsn):
        out.append(record.set_sync(bytes(fr.raw), False))
    return out


def fill(db, n, start=0):
    for i in range(start, start + n):
        if i % 7 == 3:
            db.write_batch([("put", b"b%05d" % i, b"x" * 50), ("delete", b"k%05d" % (i - 1))])
        elif i % 11 == 5:
            db.append_event(b"topic", b"e%d" % i, b"payload")
        else:
            db.put(b"k%05d" % i, b"v%05d" % i * 10)


def ship(src, dst, chunk=17):
    """Copy src's log after dst's last LSN into dst in chunks of `chunk` frames."""
    frames = [bytes(fr.raw) for fr in src.read_log(dst.last_lsn + 1)]
    for i in range(0, len(frames), chunk):
        dst.apply_frames(b"".join(frames[i : i + chunk]))


def test_a_replica_applying_the_masters_frames_holds_the_same_data_and_log(tmp_path):
    with Engine.open(str(tmp_path / "m"), **SMALL) as m, \
            Engine.open(str(tmp_path / "r"), **SMALL) as r:
        r.set_read_only(True)
        m.begin_term(1, "m")
        fill(m, 300)
        seen = []
        r.add_commit_listener(seen.extend)
        ship(m, r)
        assert r.last_lsn == m.last_lsn
        assert list(r.scan()) == list(m.scan())
        assert raw_log(r) == raw_log(m)
        assert r.term_history == m.term_history == ((1, 1),)
        assert [record.parse_frame(f)[0] for f in seen][-1] <= r.last_lsn
        assert len(seen) == len(raw_log(m))
        with pytest.raises(ReadOnly):
            r.put(b"k", b"v")
        with pytest.raises(ReadOnly):
            r.write_batch([("put", b"k", b"v")])


def test_apply_frames_refuses_a_gap_a_repeat_and_damaged_bytes(tmp_path):
    with Engine.open(str(tmp_path / "m"), **SMALL) as m, \
            Engine.open(str(tmp_path / "r"), **SMALL) as r:
        fill(m, 20)
        frames = [bytes(fr.raw) for fr in m.read_log(1)]
        with pytest.raises(LogMismatch) as e:
            r.apply_frames(frames[1])
        assert (e.value.expected_lsn, e.value.got_lsn) == (1, 2)
        r.apply_frames(b"".join(frames[:3]))
        with pytest.raises(LogMismatch):
            r.apply_frames(frames[2])  # a repeat
        bad = bytearray(frames[3])
        bad[-1] ^= 0xFF
        with pytest.raises(InvalidArgument):
            r.apply_frames(bytes(bad))
        r.apply_frames(b"".join(frames[3:]))
        assert list(r.scan()) == list(m.scan())


def test_term_history_and_term_at_survive_flushes_reopen_and_checkpoints(tmp_path):
    p = str(tmp_path / "db")
    with Engine.open(p, **SMALL) as db:
        fill(db, 5)
        t1 = db.begin_term(1, "a")
        fill(db, 50)
        t3 = db.begin_term(3, "b")
        fill(db, 2000)  # several flushes: the early history lives only in the manifest
        assert db.flushed_lsn > t3
        with pytest.raises(InvalidArgument):
            db.begin_term(2, "c")
        assert db.term_history == ((1, t1), (3, t3))
        assert [db.term_at(x) for x in (1, t1 - 1, t1, t3 - 1, t3, db.last_lsn)] == [0, 0, 1, 1, 3, 3]
        assert db.last_entry() == (3, db.last_lsn)
        db.checkpoint(str(tmp_path / "cp"))
        last = db.last_lsn
    with Engine.open(p, **SMALL) as db:
        assert db.term_history == ((1, t1), (3, t3))
        assert db.last_entry() == (3, last)
    with Engine.open(str(tmp_path / "cp"), **SMALL) as cp:
        assert cp.term_history == ((1, t1), (3, t3))


def test_reopen_cuts_the_log_after_an_lsn_and_its_terms(tmp_path):
    p = str(tmp_path / "db")
    opts = dict(SMALL, flush_after_recovery=False)
    with Engine.open(p, **opts) as db:
        db.begin_term(1, "a")
        fill(db, 40)
        db.flush()
        fill(db, 10, start=40)  # in the log only, and kept
        keep = db.last_lsn
        expected = list(db.scan())
        db.begin_term(2, "a")
        for i in range(30):
            db.put(b"k%05d" % i, b"late")  # the tail a new master never had
        db._halt()  # crash: the tail stays in the log, not in tables
    with pytest.raises(StorageError):
        Engine.open(p, truncate_after=keep - 20, **opts)  # below the flush point
    with Engine.open(p, truncate_after=keep, **opts) as db:
        assert db.last_lsn == keep
        assert list(db.scan()) == expected
        assert db.term_history == ((1, 1),)
        assert db.last_entry() == (1, keep)
        db.put(b"new", b"write")  # the log continues at keep + 1
        assert db.last_lsn == keep + 1
    with Engine.open(p, **opts) as db:
        assert db.get(b"new") == b"write" and db.get(b"k00000") != b"late"


def test_the_read_gate_holds_reads_at_the_commit_point(tmp_path):
    with Engine.open(str(tmp_path / "db"), **SMALL) as db:
        a = db.put(b"a", b"1")
        db.set_commit_lsn(a)
        b = db.put(b"b", b"2")
        assert db.last_lsn == b and db.read_lsn == a
        assert db.get(b"a") == b"1" and db.get(b"b") is None
        assert list(db.scan()) == [(b"a", b"1")]
        snap = db.snapshot()
        assert snap.lsn == a
        snap.release()
        db.set_commit_lsn(b)
        assert db.get(b"b") == b"2"
        db.set_commit_lsn(a)  # never back
        assert db.get(b"b") == b"2"
        db.set_commit_lsn(None)
        c = db.put(b"c", b"3")
        assert db.read_lsn == c


def test_frame_span_reads_a_batch_frames_lsn_range_without_decoding(tmp_path):
    with Engine.open(str(tmp_path / "db"), **SMALL) as db:
        for n in (1, 15, 16, 70000 // 7):
            last = db.write_batch([("put", b"k%d" % i, b"") for i in range(n)])
            frame = bytes(next(fr for fr in db.read_log(last - n + 1)).raw)
            assert record.frame_span(frame) == (last - n + 1, last)
        lsn = db.put(b"a", b"b")
        assert record.frame_span(bytes(next(db.read_log(lsn)).raw)) == (lsn, lsn)
