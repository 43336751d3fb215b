"""Engine behaviour through its public API, on the real file system."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from strata.storage import Closed, Engine, InvalidArgument, TooLarge
from strata.storage.errors import StorageError


def k(i: int) -> bytes:
    return b"key%08d" % i


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "db")


def small(**kw):
    """Options that make flushes and compactions happen within a few thousand writes."""
    opts = dict(memtable_size=64 << 10, base_level_size=256 << 10, target_file_size=64 << 10,
                durability="none")
    opts.update(kw)
    return opts


def test_put_get_delete_roundtrip(path):
    with Engine.open(path) as db:
        l1 = db.put(b"a", b"1")
        l2 = db.put(b"b", b"2")
        assert l2 > l1 >= 1
        assert db.get(b"a") == b"1"
        assert db.get(b"missing") is None
        l3 = db.delete(b"a")
        assert l3 > l2
        assert db.get(b"a") is None
        db.put(b"a", b"3")
        assert db.get(b"a") == b"3"


def test_data_survives_clean_reopen_without_replay(path):
    with Engine.open(path, **small()) as db:
        for i in range(3000):
            db.put(k(i), b"v%d" % i)
        db.delete(k(7))
    with Engine.open(path, **small()) as db:
        assert db.stats.recovered_frames == 0, "a clean close must leave nothing to replay"
        assert db.get(k(7)) is None
        assert db.get(k(2999)) == b"v2999"
        assert sum(1 for _ in db.scan()) == 2999


def test_unflushed_writes_are_replayed_from_wal(path):
    db = Engine.open(path, durability="always")
    for i in range(100):
        db.put(k(i), b"x")
    db._halt()  # a crash: no flush, no close; files stay as written
    with Engine.open(path) as db2:
        assert db2.stats.recovered_frames == 100
        assert all(db2.get(k(i)) == b"x" for i in range(100))
        assert db2.last_lsn == 100


def test_scan_bounds_order_and_tombstones(path):
    with Engine.open(path, **small()) as db:
        for i in range(0, 2000, 2):
            db.put(k(i), b"%d" % i)
        for i in range(0, 2000, 10):
            db.delete(k(i))
        got = list(db.scan(k(100), k(200)))
        expected = [(k(i), b"%d" % i) for i in range(100, 200, 2) if i % 10]
        assert got == expected
        assert list(db.scan(k(5000))) == []
        keys = [kk for kk, _ in db.scan()]
        assert keys == sorted(keys)
        assert len(keys) == 1000 - 200


def test_scans_across_memtable_l0_and_l1_at_snapshots_match_a_model(path):
    """A scan's merge at its edges: L1 below two L0 files and a memtable, overwrites of the
    same keys in every source (each newer), deletes in L0 and in the memtable shadowing
    older values, runs of keys found in one source only, a key with two versions in the
    memtable, and snapshots taken between the writes of each source; bounds that fall
    inside runs, on keys and between them; blocks of a few entries."""
    opts = small(l0_compaction_trigger=8, l0_slowdown_trigger=20, l0_stop_trigger=24,
                 block_size=256)
    with Engine.open(path, **opts) as db:
        model: dict[bytes, bytes] = {}
        seen = []  # (snapshot, what it sees)

        def put(i, v):
            db.put(k(i), v)
            model[k(i)] = v

        def delete(i):
            db.delete(k(i))
            model.pop(k(i), None)

        for i in range(0, 2000, 2):
            put(i, b"a%d" % i)
        db.compact_all()
        seen.append((db.snapshot(), dict(model)))
        for i in range(0, 2000, 3):  # L0, interleaved with L1's keys
            put(i, b"b%d" % i)
        for i in range(0, 2000, 14):
            delete(i)
        db.flush()
        seen.append((db.snapshot(), dict(model)))
        for i in range(700, 900):  # L0: a run of its own, deleting some of the above
            put(i, b"c%d" % i) if i % 4 else delete(i)
        db.flush()
        for i in range(100, 140):  # memtable: a run, a snapshot in the middle of it
            put(i, b"d%d" % i)
            if i == 120:
                seen.append((db.snapshot(), dict(model)))
        for i in range(110, 130, 5):  # a second version of some keys in the memtable
            put(i, b"e%d" % i)
        delete(131)
        delete(1501)  # never written: a tombstone shadowing nothing
        seen.append((None, dict(model)))
        assert len(db.versions.current.levels[0]) >= 2 and db.versions.current.levels[1]
        bounds = [None, k(0), k(99), k(100), k(121), k(131), k(700), k(701), k(899),
                  k(1500), k(1999), k(5000)]
        for snap, want in seen:
            for start in bounds:
                for end in bounds:
                    expected = sorted((kk, v) for kk, v in want.items()
                                      if (start is None or kk >= start)
                                      and (end is None or kk < end))
                    got = list(db.scan(start, end, snapshot=snap))
                    assert got == expected, (snap, start, end)
            if snap is not None:
                snap.release()


def test_write_batch_is_atomic_and_ordered(path):
    with Engine.open(path) as db:
        db.put(b"b", b"old")
        last = db.write_batch([("put", b"a", b"1"), ("delete", b"b"), ("put", b"c", b"3"),
                               ("put", b"a", b"2")])
        assert db.last_lsn == last
        assert db.get(b"a") == b"2", "later ops in a batch win"
        assert db.get(b"b") is None
        assert db.get(b"c") == b"3"
        with pytest.raises(InvalidArgument):
            db.write_batch([("put", b"x", b"1"), ("frobnicate", b"y")])
        assert db.get(b"x") is None, "a rejected batch writes nothing"
        with pytest.raises(InvalidArgument):
            db.write_batch([])


def test_snapshot_isolation_across_flush_and_compaction(path):
    with Engine.open(path, **small()) as db:
        for i in range(500):
            db.put(k(i), b"old")
        snap = db.snapshot()
        for i in range(500):
            db.put(k(i), b"new")
        db.delete(k(0))
        db.compact_all()
        assert db.get(k(1)) == b"new"
        assert db.get(k(1), snapshot=snap) == b"old"
        assert db.get(k(0), snapshot=snap) == b"old"
        assert db.get(k(0)) is None
        assert [v for _, v in db.scan(snapshot=snap)] == [b"old"] * 500
        snap.release()
        db.compact_all()
        assert db.get(k(1)) == b"new"


def test_invalid_arguments_are_refused_before_writing(path):
    with Engine.open(path, max_value_size=1024) as db:
        before = db.last_lsn
        with pytest.raises(InvalidArgument):
            db.put("str", b"v")
        with pytest.raises(InvalidArgument):
            db.put(b"k", "v")
        with pytest.raises(InvalidArgument):
            db.put(b"", b"v")
        with pytest.raises(InvalidArgument):
            db.put(bytearray(b"k"), b"v")
        with pytest.raises(TooLarge) as e:
            db.put(b"k", b"x" * 1025)
        assert e.value.limit == 1024 and e.value.size == 1025
        with pytest.raises(TooLarge):
            db.put(b"k" * (64 * 1024 + 1), b"v")
        with pytest.raises(InvalidArgument):
            db.get(123)
        assert db.last_lsn == before
    with pytest.raises(InvalidArgument):
        Engine.open(path, durability="sometimes")
    with pytest.raises(InvalidArgument):
        Engine.open(path, no_such_option=1)


def test_second_open_of_same_directory_is_refused(path):
    with Engine.open(path):
        with pytest.raises(StorageError, match="locked"):
            Engine.open(path)


def test_closed_engine_refuses_writes(path):
    db = Engine.open(path)
    db.close()
    with pytest.raises(Closed):
        db.put(b"a", b"b")
    db.close()  # idempotent


def test_concurrent_synced_writers_share_fsyncs(path):
    with Engine.open(path, durability="always") as db:
        n_threads, per = 16, 50
        errors = []

        def writer(t):
            try:
                for i in range(per):
                    db.put(b"t%02d-%04d" % (t, i), b"v")
            except Exception as e:  # surfaced by the assertion below
                errors.append(e)

        ts = [threading.Thread(target=writer, args=(t,)) for t in range(n_threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors
        assert db.last_lsn == n_threads * per
        assert db.stats.group_frames == n_threads * per
        assert db.stats.groups < n_threads * per, "group commit never grouped anything"
        assert sum(1 for _ in db.scan()) == n_threads * per


def test_compaction_keeps_tree_bounded_and_data_correct(path):
    with Engine.open(path, **small()) as db:
        for round_ in range(4):
            for i in range(3000):
                db.put(k(i), b"r%d-%d" % (round_, i) + b"x" * 50)
        db.wait_for_compactions()
        assert db.stats.compactions + db.stats.trivial_moves > 0
        assert len(db.versions.current.levels[0]) < db.opts.l0_stop_trigger
        for i in range(0, 3000, 37):
            assert db.get(k(i)) == b"r3-%d" % i + b"x" * 50
        assert sum(1 for _ in db.scan()) == 3000


def test_writes_continue_while_a_compaction_runs(path):
    with Engine.open(path, **small()) as db:
        for i in range(20000):
            db.put(k(i), b"x" * 80)
        db.flush()
        done = threading.Event()
        t = threading.Thread(target=lambda: (db.compact_all(), done.set()))
        t.start()
        written = 0
        deadline = time.monotonic() + 30
        while not done.is_set() and time.monotonic() < deadline:
            db.put(b"during-%06d" % written, b"y")
            written += 1
        t.join()
        assert done.is_set()
        assert written > 0, "no write completed while the compaction ran"
        assert db.get(b"during-%06d" % (written - 1)) == b"y"


def test_checkpoint_is_an_openable_consistent_copy(path, tmp_path):
    cp = str(tmp_path / "cp")
    with Engine.open(path, **small()) as db:
        for i in range(3000):
            db.put(k(i), b"v1")
        db.flush()
        for i in range(100):
            db.put(k(i), b"v2")  # only in the memtable / WAL tail
        db.checkpoint(cp)
        db.put(k(0), b"after")
        with pytest.raises(InvalidArgument):
            db.checkpoint(cp)
    with Engine.open(cp) as copy:
        assert copy.get(k(0)) == b"v2"
        assert copy.get(k(99)) == b"v2"
        assert copy.get(k(100)) == b"v1"
        assert sum(1 for _ in copy.scan()) == 3000


def test_async_api_runs_fsync_off_the_loop(path):
    async def main():
        with Engine.open(path, durability="always") as db:
            lsns = await asyncio.gather(*[db.put_async(k(i), b"v") for i in range(64)])
            assert sorted(lsns) == list(range(1, 65))
            assert await db.get_async(k(5)) == b"v"
            await db.delete_async(k(5))
            assert await db.get_async(k(5)) is None
            await db.write_batch_async([("put", b"z", b"1")])
            assert db.get(b"z") == b"1"

    asyncio.run(main())


def test_wal_retention_purges_flushed_segments(path):
    with Engine.open(path, **small(wal_retention_bytes=0)) as db:
        for i in range(5000):
            db.put(k(i), b"x" * 100)
        db.flush()
        segs = [n for n in os.listdir(path) if n.startswith("wal-")]
        assert len(segs) <= 2, segs


def test_space_amplification_after_overwrite_heavy_load(path):
    n_keys, rounds, vsize = 3000, 12, 200
    with Engine.open(path, **small(wal_retention_bytes=0)) as db:
        for r in range(rounds):
            for i in range(n_keys):
                db.put(k(i), bytes([r]) * vsize)
        db.flush()
        db.wait_for_compactions()
        live = n_keys * (len(k(0)) + vsize)
        natural = db.disk_usage()["sst_bytes"] / live
        assert natural < 1.5, f"space amplification {natural:.2f}x after leveled compaction"
        db.compact_all()
        settled = db.disk_usage()["sst_bytes"] / live
        assert settled < 1.2, f"space amplification {settled:.2f}x after a full compaction"
        assert db.get(k(5)) == bytes([rounds - 1]) * vsize


def test_async_writers_share_fsyncs_without_a_thread_each(path):
    async def main():
        with Engine.open(path, durability="always") as db:
            n = 400
            lsns = await asyncio.gather(
                *[db.put_async(k(i), b"v%d" % i) for i in range(n)],
                db.write_batch_async([("put", b"b1", b"x"), ("put", b"b2", b"y")]),
            )
            assert len(set(lsns)) == n + 1
            assert db.last_lsn == n + 2
            stats = db.stats
            assert stats.groups < n / 4, f"{stats.groups} fsync groups for {n} async puts"
            assert all(db.get(k(i)) == b"v%d" % i for i in range(n))
            # Sync threads and coroutines mixed in one queue.
            t = threading.Thread(target=lambda: [db.put(b"thr%d" % i, b"t") for i in range(100)])
            t.start()
            await asyncio.gather(*[db.put_async(b"co%d" % i, b"c") for i in range(100)])
            await asyncio.get_running_loop().run_in_executor(None, t.join)
            assert sum(1 for kk, _ in db.scan() if kk[:3] in (b"thr", b"co0", b"co1")) >= 100
            assert db.last_lsn == n + 2 + 200

    asyncio.run(main())


@pytest.mark.parametrize("durability", ["always", "none"])
def test_compare_and_set(path, durability):
    from strata.storage import Conflict

    with Engine.open(path, durability=durability) as db:
        lsn = db.compare_and_set(b"c", b"1", expect_absent=True)
        assert db.get_entry(b"c") == (b"1", lsn)
        with pytest.raises(Conflict) as e:
            db.compare_and_set(b"c", b"2", expect_absent=True)
        assert e.value.current_lsn == lsn
        lsn2 = db.compare_and_set(b"c", b"2", expected_lsn=lsn)
        with pytest.raises(Conflict):
            db.compare_and_set(b"c", b"3", expected_lsn=lsn)
        db.compare_and_set(b"c", b"3", expected_value=b"2")
        db.compare_and_set(b"c", expected_value=b"3", delete=True)
        assert db.get_entry(b"c") == (None, 0)
        assert lsn2 > lsn
        with pytest.raises(InvalidArgument):
            db.compare_and_set(b"c", b"x")

        # Concurrent increments: every success is exactly one step.
        db.put(b"n", b"0")

        def incr(times):
            done = 0
            while done < times:
                value, at = db.get_entry(b"n")
                try:
                    db.compare_and_set(b"n", b"%d" % (int(value) + 1), expected_lsn=at)
                    done += 1
                except Conflict:
                    pass

        ts = [threading.Thread(target=incr, args=(50,)) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert db.get(b"n") == b"200"


def test_commit_listener_sees_every_frame_in_lsn_order(path):
    from strata.storage import record

    seen = []
    with Engine.open(path, durability="always") as db:
        db.add_commit_listener(lambda frames: seen.extend(record.parse_frame(f)[0] for f in frames))
        ts = [threading.Thread(target=lambda t=t: [db.put(b"%d-%d" % (t, i), b"v") for i in range(50)])
              for t in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        db.write_batch([("put", b"x", b"1"), ("put", b"y", b"2")])
        db.append_event(b"topic", b"k", b"payload")
    assert seen == sorted(seen)
    assert seen[:200] == list(range(1, 201))
    assert seen[-2:] == [201, 203]  # the batch takes 201-202, its frame carries 201


def test_manual_compaction_keeps_a_delete_whose_old_value_sits_deeper():
    """A tombstone in a wide L1 file hides an old value in L2; compact_all() merges a narrow
    L0 file outside L2's range into it. The tombstone must survive that merge (it did not:
    "bottommost" was decided from the L0 file's range, and the deleted key came back)."""
    from strata.storage.vfs import MemFS

    fs = MemFS()
    # compression off: the tree's shape below follows from the tables' sizes
    opts = dict(durability="none", memtable_size=1 << 20, target_file_size=4 << 10,
                base_level_size=4 << 10, l0_compaction_trigger=1, compaction_executor="thread",
                compression="none")

    def files(db):
        v = db.versions.current
        return {lvl: [(f.smallest, f.largest) for f in v.levels[lvl]]
                for lvl in range(len(v.levels)) if v.levels[lvl]}

    db = Engine.open("/db", fs=fs, **opts)
    db.put(b"b", b"old")
    for i in range(100):
        db.put(b"f%03d" % i, b"x" * 100)
    db.compact_all()
    db.wait_for_compactions()
    assert files(db) == {2: [(b"b", b"f099")]}
    db.put(b"a", b"1")
    db.delete(b"b")
    db.put(b"z", b"1")
    db.flush()
    db.wait_for_compactions()
    assert files(db) == {1: [(b"a", b"z")], 2: [(b"b", b"f099")]}
    db.close()
    # No automatic L0 compaction now: the manual one picks L0 = [y] with L1's a..z.
    db = Engine.open("/db", fs=fs, **dict(opts, l0_compaction_trigger=100))
    db.put(b"y", b"1")
    db.compact_all()
    assert db.get(b"b") is None
    assert dict(db.scan()).keys() == {b"a", b"y", b"z"} | {b"f%03d" % i for i in range(100)}
    db.close()
    with Engine.open("/db", fs=fs, **opts) as db:
        assert db.get(b"b") is None


def test_close_under_thread_writers_has_one_commit_leader():
    """close() wakes the committer thread; it used to lead the group a thread writer was
    already leading (frames written twice: 'LSN 1196 where 1200 was expected' at reopen,
    'release unlocked lock', a 30 s hang in close)."""
    from strata.storage.vfs import MemFS

    for round_ in range(15):
        fs = MemFS()
        db = Engine.open("/db", fs=fs, durability="always", compaction_executor="thread")
        acked: list[bytes] = []
        errors: list[BaseException] = []

        def writer(t: int, db=db, acked=acked, errors=errors) -> None:
            for i in range(100_000):
                key = b"t%d-%06d" % (t, i)
                try:
                    db.put(key, b"v")
                except Closed:
                    return
                except BaseException as e:  # noqa: BLE001 - anything else is the defect
                    errors.append(e)
                    return
                acked.append(key)

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.02 + 0.01 * (round_ % 5))
        t0 = time.monotonic()
        db.close()
        assert time.monotonic() - t0 < 10, "close hung"
        for t in threads:
            t.join(10)
            assert not t.is_alive()
        assert not errors, errors[:3]
        with Engine.open("/db", fs=fs, compaction_executor="thread") as db2:
            assert all(db2.get(key) == b"v" for key in acked)


def test_get_sees_a_consistent_read_point_while_flushes_install():
    """A key overwritten all the time is never absent: get() must not pair an older LSN
    with a read view whose new table dropped the version that LSN needs."""
    from strata.storage.vfs import MemFS

    db = Engine.open("/db", fs=MemFS(), durability="none", memtable_size=4 << 10,
                     compaction_executor="thread", l0_compaction_trigger=2,
                     base_level_size=16 << 10, target_file_size=4 << 10)
    db.put(b"hot", b"0")
    stop = threading.Event()

    def overwrite() -> None:
        i = 0
        while not stop.is_set() and i < 2_000_000:
            db.put(b"hot", b"%d" % i)
            db.put(b"pad%04d" % (i % 500), b"x" * 40)
            i += 1

    t = threading.Thread(target=overwrite)
    t.start()
    misses = 0
    try:
        deadline = time.monotonic() + 2.0
        n = 0
        while time.monotonic() < deadline and n < 1_000_000:
            if db.get(b"hot") is None:
                misses += 1
            if db.get_entry(b"hot")[0] is None:
                misses += 1
            n += 1
    finally:
        stop.set()
        t.join()
        db.close()
    assert misses == 0


def test_event_only_traffic_keeps_the_log_bounded(path):
    """Published events never fill the memtable: the log used to grow without bound
    (400 MB of events, 400 MB of WAL, all replayed at open). Retention applies to every
    frame."""
    opts = dict(durability="none", memtable_size=64 << 10, wal_retention_bytes=256 << 10,
                wal_preallocate=False)
    with Engine.open(path, **opts) as db:
        for i in range(20_000):  # ~2.4 MB of events
            db.append_event(b"orders", b"o%06d" % i, b"x" * 100)
        db.wait_for_compactions()
        wal_bytes = db.disk_usage()["wal_bytes"]
        assert wal_bytes < 1 << 20, f"{wal_bytes} bytes of log for 2.4 MB of events"
        assert db.wal().earliest_lsn() > 1
        last = db.last_lsn
    with Engine.open(path, **opts) as db:
        assert db.stats.recovered_frames < 2_000
        assert db.last_lsn == last
        db.put(b"k", b"v")
        assert db.get(b"k") == b"v"


@pytest.mark.parametrize("durability", ["always", "none"])
def test_write_counters_are_exact_under_concurrent_writers(path, durability):
    with Engine.open(path, durability=durability) as db:
        def writer(t: int) -> None:
            for i in range(1500):
                db.put(b"t%d-%d" % (t, i), b"v")
                if i % 3 == 0:
                    db.delete(b"t%d-%d" % (t, i))
                if i % 5 == 0:
                    db.write_batch([("put", b"b%d-%d" % (t, i), b"v")])
        threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        st = db.stats
        assert (st.puts, st.deletes, st.batches) == (8 * 1500, 8 * 500, 8 * 300)


def _table_codecs(db) -> dict[int, set[int]]:
    """level -> the compression bytes found in its tables' data blocks."""
    out: dict[int, set[int]] = {}
    for level, f in db.versions.current.files():
        r = db._readers[f.number]
        buf = r._buf
        out.setdefault(level, set()).update(buf[o + s] for o, s in zip(r._offsets, r._sizes))
    return out


def test_compression_per_level_and_a_codec_change_between_opens(path):
    value = b"abcdefgh" * 32  # compressible
    with Engine.open(path, **small(compression="none")) as db:
        for i in range(3000):
            db.put(k(i), value + b"%d" % i)
        db.flush()
        assert set().union(*_table_codecs(db).values()) == {0}
    opts = small(compression_per_level="none,lz4,zstd", l0_compaction_trigger=2)
    with Engine.open(path, **opts) as db:
        for i in range(3000, 9000):
            db.put(k(i), value + b"%d" % i)
        db.flush()
        db.compact_all()
        codecs = _table_codecs(db)
        assert codecs and 0 not in codecs  # a settled tree has nothing left in L0
        code = {"none": 0, "lz4": 1, "zstd": 2}
        for level, found in codecs.items():
            # a table written into a level has that level's codec; one moved down
            # unchanged (a trivial move) keeps the codec of a level above, or none
            # if it dates from the first open
            allowed = {0} | {code[db.opts.codec(lv)] for lv in range(level + 1)}
            assert found <= allowed, (level, found)
        deepest = max(codecs)
        assert code[db.opts.codec(deepest)] in codecs[deepest], codecs
        for i in range(0, 9000, 97):  # tables of both opens read back
            assert db.get(k(i)) == value + b"%d" % i
    with Engine.open(path) as db:  # reopened with no compression: old tables still read
        assert db.get(k(4321)) == value + b"4321"
        assert sum(1 for _ in db.scan()) == 9000


def _chunked(entries: list[tuple], rnd, snap: int) -> list[tuple]:
    """entries (internal order) cut into chunks of random sizes that never split a key's
    versions, in the shape TableReader.chunks_from yields, -lsns left out where allowed."""
    out, i = [], 0
    while i < len(entries):
        j = min(len(entries), i + rnd.choice([1, 2, 3, 7, 50]))
        while j < len(entries) and entries[j][0] == entries[j - 1][0]:
            j += 1
        part = entries[i:j]
        keys = [k for k, _, _ in part]
        unique = len(set(keys)) == len(keys)
        visible = all(-neg <= snap for _, neg, _ in part)
        negs = None if unique and visible and rnd.random() < 0.5 else [n for _, n, _ in part]
        out.append((keys, negs, [v for _, _, v in part], unique))
        i = j
    return out


@pytest.mark.parametrize("seed", range(6))
def test_a_scan_merges_chunked_sources_at_a_snapshot_as_a_model_does(seed):
    """visible_columns against a model: sources newest first (a key's versions in a source
    newer than in the ones after it), keys in several sources, several versions of a key
    in one source, tombstones shadowing older sources, snapshots falling inside a
    source's LSNs, runs from one source next to interleaved keys, empty sources."""
    import random

    from strata.storage import reads

    rnd = random.Random(seed)
    for _ in range(40):
        nsrc = rnd.randint(1, 5)
        sources = []
        lsn = 100_000
        for _ in range(nsrc):  # newest first: each source's LSNs below the previous one's
            n = rnd.choice([0, 1, 5, 40, 300])
            width = rnd.choice([30, 120, 400])
            base = rnd.randrange(0, 400)  # a run of keys of its own, or overlapping others
            entries = []
            for _ in range(n):
                lsn -= 1
                entries.append((b"k%04d" % (base + rnd.randrange(width)), -lsn,
                                None if rnd.random() < 0.2 else b"v%d" % lsn))
            sources.append(sorted(entries))
        snap = rnd.choice([100_000, lsn + rnd.randrange(0, 100_001 - lsn), lsn - 1])
        want: dict[bytes, bytes | None] = {}
        for src in reversed(sources):  # oldest first: the newest visible version wins
            seen = set()
            for k, neg, v in src:
                if -neg <= snap and k not in seen:
                    seen.add(k)
                    want[k] = v
        want_items = sorted((k, v) for k, v in want.items() if v is not None)
        chunks = [iter(_chunked(src, rnd, snap)) for src in sources]
        may_delete = [any(v is None for _, _, v in src) or rnd.random() < 0.5
                      for src in sources]
        got = [kv for part in reads.visible_columns(chunks, may_delete, snap) for kv in part]
        assert got == want_items


# ---------------------------------------------------------------------- request ids


def _write_with_ids(db, n: int, start: int = 0) -> list[tuple[str, int]]:
    """Writes of every kind carrying request ids; returns the (id, LSN) each names."""
    out = []
    for i in range(start, start + n):
        kind = i % 4
        if kind == 0:
            out.append((f"p{i}", db.put(k(i), b"v%d" % i, request_id=f"p{i}")))
        elif kind == 1:
            out.append((f"d{i}", db.delete(k(i), request_id=f"d{i}")))
        elif kind == 2:
            last = db.write_batch([("put", k(i), b"a"), ("delete", k(i + 1))],
                                  request_id=f"b{i}")
            out.append((f"b{i}", last))  # the whole batch's id names its last LSN
        else:
            last = db.write_batch([("put", k(i), b"a"), ("put", k(i + 1), b"b"),
                                   ("delete", k(i + 2))], request_ids=[f"x{i}", None, f"z{i}"])
            out += [(f"x{i}", last - 2), (f"z{i}", last)]
        db.put(k(i), b"no id")  # writes without an id are in between
    return out


def test_request_ids_are_read_back_from_the_log_after_a_crash(path):
    opts = dict(small(wal_segment_size=32 << 10), flush_after_recovery=False,
                wal_retention_bytes=64 << 20)  # the ids are read from the log
    with Engine.open(path, **opts) as db:
        want = _write_with_ids(db, 400)
        db.flush()  # flushed writes keep their ids while their segments are retained
        want += _write_with_ids(db, 100, start=400)
        assert len(db.wal().segments()) > 2
        db._halt()  # crash: the tail is only in the log
    with Engine.open(path, **opts) as db:
        got = db.recent_request_ids(10_000)
        assert [(rid, lsn) for rid, lsn, _ in got] == want
        now = time.time()
        assert all(now - 60 < written <= now for _, _, written in got)
        # the newest `limit` only
        assert [(rid, lsn) for rid, lsn, _ in db.recent_request_ids(7)] == want[-7:]
        assert db.recent_request_ids(0) == []


def test_a_log_cut_on_reopen_forgets_the_ids_of_the_cut_writes(tmp_path):
    p = str(tmp_path / "db")
    opts = dict(small(), flush_after_recovery=False)
    with Engine.open(p, **opts) as db:
        kept = _write_with_ids(db, 40)
        keep = db.last_lsn
        _write_with_ids(db, 40, start=40)  # the tail a new master never had
        db._halt()
    with Engine.open(p, truncate_after=keep, **opts) as db:
        assert [(rid, lsn) for rid, lsn, _ in db.recent_request_ids(10_000)] == kept
        again = db.put(b"again", b"1", request_id="p40")  # an id of a cut write, written anew
        assert db.recent_request_ids(1)[0][:2] == ("p40", again)


def test_request_ids_of_segments_last_written_before_max_age_are_not_read(path):
    opts = dict(small(wal_segment_size=16 << 10), flush_after_recovery=False,
                wal_retention_bytes=64 << 20)  # the ids are read from the log
    with Engine.open(path, **opts) as db:
        old = _write_with_ids(db, 300)
        db.flush()  # rolls the log: the old writes are all in sealed segments
        sealed = db.wal().segments()[:-1]
        assert len(sealed) >= 2 and sealed[-1][0] < db.wal().segments()[-1][0] == db.last_lsn + 1
        new = _write_with_ids(db, 5, start=300)
        hour_ago = time.time() - 3600
        for _, p in sealed:
            os.utime(p, (hour_ago, hour_ago))
        got = db.recent_request_ids(10_000, max_age_s=60)
        assert [(rid, lsn) for rid, lsn, _ in got] == new
        every = db.recent_request_ids(10_000)
        assert [(rid, lsn) for rid, lsn, _ in every] == old + new
        # a frame is dated by its segment's last write
        assert [w for _, _, w in every[:len(old)]] == pytest.approx([hour_ago] * len(old))


def test_request_ids_are_checked_before_anything_is_written(path):
    with Engine.open(path) as db:
        for bad in ("r" * 65, b"bytes", 7):
            with pytest.raises(InvalidArgument):
                db.put(b"k", b"v", request_id=bad)
            with pytest.raises(InvalidArgument):
                db.delete(b"k", request_id=bad)
            with pytest.raises(InvalidArgument):
                db.write_batch([("put", b"k", b"v")], request_ids=[bad])
        with pytest.raises(InvalidArgument):
            db.write_batch([("put", b"k", b"v")], request_id="a", request_ids=["b"])
        with pytest.raises(InvalidArgument):
            db.write_batch([("put", b"k", b"v")], request_ids=["a", "b"])
        assert db.last_lsn == 0
        db.put(b"k", b"v", request_id="")  # "" is no id
        assert db.recent_request_ids(10) == []


def test_async_writes_carry_their_ids(path):
    async def main(db):
        a = await db.put_async(b"a", b"1", request_id="A")
        d = await db.delete_async(b"a", request_id="D")
        b = await db.write_batch_async([("put", b"b", b"2")], request_id="B")
        c = await db.write_batch_async([("put", b"c", b"3"), ("put", b"e", b"4")],
                                       request_ids=["C", "E"])
        return [("A", a), ("D", d), ("B", b), ("C", c - 1), ("E", c)]

    with Engine.open(path, durability="always") as db:
        want = asyncio.run(main(db))
        assert [(rid, lsn) for rid, lsn, _ in db.recent_request_ids(10)] == want
