"""Power cuts: every byte and directory entry not yet synced is lost.

SIGKILL leaves the page cache intact, so it cannot show that an acknowledged
write was durable. These tests run the engine on the strict in-memory file
system and cut the power (`MemFS.synced_copy()`) at arbitrary instants while
writers, flushes and compactions are running, then open what survived.
"""

from __future__ import annotations

import errno
import random
import threading
import time

import pytest

from strata.storage import Closed, Engine
from strata.storage.vfs import FaultFS, MemFS

SMALL = dict(memtable_size=32 << 10, base_level_size=128 << 10, target_file_size=32 << 10,
             l0_compaction_trigger=2)


def _abandon(db: Engine) -> None:
    db._halt()


@pytest.mark.parametrize("seed", range(4))
def test_acknowledged_writes_survive_power_cut_during_load(seed):
    rng = random.Random(seed)
    fs = MemFS()
    db = Engine.open("/db", fs=fs, durability="always", **SMALL)
    acked: dict[bytes, bytes] = {}
    batches: list[tuple[bytes, ...]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(t: int) -> None:
        i = 0
        while not stop.is_set() and i < 3000:
            key = b"w%d-%05d" % (t, i)
            val = b"%d" % rng.randrange(10**9) * 5
            if i % 7 == 0:
                keys = (key + b"a", key + b"b", key + b"c")
                db.write_batch([("put", kk, val) for kk in keys])
                with lock:
                    for kk in keys:
                        acked[kk] = val
                    batches.append(keys)
            else:
                db.put(key, val)
                with lock:
                    acked[key] = val
            i += 1

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2 + rng.random() * 0.8)
    with lock:
        must_survive = dict(acked)
    survived_fs = fs.synced_copy()  # the power cut
    stop.set()
    for t in threads:
        t.join()
    _abandon(db)

    assert must_survive, "the load never acknowledged a write"
    with Engine.open("/db", fs=survived_fs, **SMALL) as db2:
        lost = [kk for kk, v in must_survive.items() if db2.get(kk) != v]
        assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:3]}"
        for keys in batches:
            present = [db2.get(kk) is not None for kk in keys]
            assert all(present) or not any(present), f"batch half-applied: {keys}"
        # The survivor is a working database: it takes writes and reopens.
        db2.put(b"after", b"cut")
    with Engine.open("/db", fs=survived_fs) as db3:
        assert db3.get(b"after") == b"cut"


def test_power_cut_right_after_ack_of_lone_put():
    fs = MemFS()
    db = Engine.open("/db", fs=fs, durability="always")
    for i in range(50):
        db.put(b"k%d" % i, b"v%d" % i)
        cut = fs.synced_copy()
        with Engine.open("/db", fs=cut) as probe:
            assert probe.get(b"k%d" % i) == b"v%d" % i
    db.close()


def test_unsynced_modes_lose_at_most_the_unsynced_tail_and_stay_consistent():
    fs = MemFS()
    db = Engine.open("/db", fs=fs, durability="none", **SMALL)
    for i in range(2000):
        db.put(b"k%05d" % i, b"v")
    db.flush()  # tables and manifest are synced even in "none" mode
    flushed = db.flushed_lsn
    for i in range(2000, 2100):
        db.put(b"k%05d" % i, b"v")
    cut = fs.synced_copy()
    _abandon(db)
    with Engine.open("/db", fs=cut) as db2:
        assert db2.last_lsn >= flushed
        for i in range(2000):
            assert db2.get(b"k%05d" % i) == b"v"
        keys = [kk for kk, _ in db2.scan()]
        assert keys == sorted(keys)


def test_power_cut_during_checkpoint_leaves_source_intact(tmp_path):
    fs = MemFS()
    db = Engine.open("/db", fs=fs, durability="always", **SMALL)
    for i in range(1500):
        db.put(b"k%05d" % i, b"v%d" % i)
    fs.mkdir("/backups")
    fs.sync_dir("/")
    db.checkpoint("/backups/cp1")
    cut = fs.synced_copy()
    _abandon(db)
    with Engine.open("/db", fs=cut) as src:
        assert src.get(b"k01499") == b"v1499"
    with Engine.open("/backups/cp1", fs=cut) as cp:
        assert cp.get(b"k00000") == b"v0"
        assert cp.get(b"k01499") == b"v1499"


@pytest.mark.parametrize("first_mode", ["interval", "none"])
def test_kill_restart_then_power_cut_keeps_the_log_whole(first_mode):
    """SIGKILL leaves an unsynced tail in the page cache; recovery replays it and the
    restarted engine acknowledges fsynced writes after it. A power cut then must not
    leave a hole between the replayed tail and the new writes (it did: 'segment ends at
    LSN .. but the next segment starts at LSN ..: frames are missing')."""
    fs = MemFS()
    db = Engine.open("/db", fs=fs, durability=first_mode, sync_interval_ms=60_000,
                     compaction_executor="thread")
    for i in range(200):
        db.put(b"a%04d" % i, b"x" * 50)
    db._halt()  # SIGKILL: the page cache (MemFS's unsynced bytes) survives
    db = Engine.open("/db", fs=fs, durability="always", compaction_executor="thread")
    for i in range(100):
        db.put(b"b%04d" % i, b"y" * 50)  # acknowledged after fsync
    db._halt()
    fs.reset_to_synced_state()  # the power cut
    with Engine.open("/db", fs=fs, compaction_executor="thread") as db:
        assert all(db.get(b"b%04d" % i) == b"y" * 50 for i in range(100))
        assert all(db.get(b"a%04d" % i) == b"x" * 50 for i in range(200)), \
            "the replayed tail was built upon, so it must have been made durable"


def test_after_an_fsync_error_close_does_not_sync_again():
    """fsyncgate: the second fsync after an EIO 'succeeds' without writing what was lost;
    a closing engine must not treat it as a sync."""
    mem = MemFS()
    fs = FaultFS(mem)
    db = Engine.open("/db", fs=fs, durability="always", compaction_executor="thread")
    db.put(b"ok", b"1")
    fs.fail("sync", err=errno.EIO, once=True)
    with pytest.raises(Closed):
        db.put(b"lost", b"2")
    syncs = db.wal().syncs
    assert db.wal().failed is not None
    with pytest.raises(OSError):
        db.wal().sync()
    with pytest.raises(Closed, match="could not be synced"):  # WritesStopped, saying so
        db.close()
    assert db.wal().syncs == syncs
    mem.reset_to_synced_state()
    with Engine.open("/db", fs=mem, compaction_executor="thread") as db:
        assert db.get(b"ok") == b"1"
