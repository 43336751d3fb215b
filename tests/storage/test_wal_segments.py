"""The WAL's segment list under concurrency and faults: checkpoints taken while writes and
flushes run, rolls that fail, purges racing rolls, gaps that must be refused."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from strata.storage import Corruption, Engine
from strata.storage.vfs import FaultFS, MemFS
from strata.storage.wal import Wal

from .test_wal import put


def k(i: int) -> bytes:
    return b"key%07d" % i


def test_checkpoints_taken_while_writes_and_flushes_run_hold_every_acknowledged_write(tmp_path):
    """WAL retention below one memtable's log: a flush between capturing the version and
    listing the segments used to purge segments the checkpoint needed (lost acknowledged
    writes, or FileNotFoundError and a partial directory)."""
    db = Engine.open(str(tmp_path / "db"), durability="none", memtable_size=16 << 10,
                     wal_retention_bytes=0, wal_preallocate=False)
    acked: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set() and i < 200_000:
            db.put(k(i), b"v" * 64)
            acked.append(i)
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        for n in range(40):
            before = len(acked)
            dest = str(tmp_path / f"cp{n}")
            db.checkpoint(dest)
            with Engine.open(dest, durability="none") as cp:
                missing = [i for i in acked[:before] if cp.get(k(i)) is None]
                assert not missing, f"checkpoint {n} lacks {len(missing)} acknowledged keys"
    finally:
        stop.set()
        t.join()
        db.close()
    assert len(acked) > 1000, "the writer must have run alongside the checkpoints"


def test_failed_checkpoint_leaves_no_partial_directory():
    mem = MemFS()
    fs = FaultFS(mem)
    db = Engine.open("/db", fs=fs, durability="none", compaction_executor="thread")
    for i in range(100):
        db.put(k(i), b"v")
    fs.fail("create", err=errno.ENOSPC)  # the manifest of the copy cannot be made
    with pytest.raises(OSError):
        db.checkpoint("/cp")
    fs.heal()
    assert not mem.exists("/cp")
    db.checkpoint("/cp")
    with Engine.open("/cp", fs=mem) as cp:
        assert cp.get(k(99)) == b"v"
    db.close()


def test_recovery_refuses_a_log_that_starts_after_the_flush_point():
    """A missing oldest segment is a hole in the log, not an empty tail."""
    fs = MemFS()
    db = Engine.open("/db", fs=fs, durability="always", memtable_size=1 << 20,
                     compaction_executor="thread")
    for i in range(10):
        db.put(k(i), b"a")
    db.wal().roll(db.last_lsn + 1)
    for i in range(10, 20):
        db.put(k(i), b"b")
    db._halt()
    first = sorted(n for n in fs.listdir("/db") if n.startswith("wal-"))[0]
    fs.remove("/db/" + first)
    with pytest.raises(Corruption, match="missing"):
        Engine.open("/db", fs=fs)


def test_a_failed_roll_loses_no_acknowledged_write():
    """ENOSPC while making the next segment: the open segment stays the open one (it
    used to be listed twice, and the flush's purge deleted it with its unflushed writes)
    and takes the writes that follow."""
    mem = MemFS()
    fs = FaultFS(mem)
    db = Engine.open("/db", fs=fs, durability="none", memtable_size=8 << 10,
                     wal_retention_bytes=0, compaction_executor="thread", stall_timeout_s=1)
    db._pause_s = 0.05
    acked = []
    for i in range(300):  # several rotations, so that flushes and purges have run
        db.put(k(i), b"v" * 64)
        acked.append(i)
    db.wait_for_compactions()
    fs.fail("create", err=errno.ENOSPC)  # no segment, spare or table can be made
    for i in range(300, 400):  # more than a memtable: a rotation whose roll fails
        db.put(k(i), b"v" * 64)
        acked.append(i)
    names = [p for _, p in db.wal().segments()]
    assert len(names) == len(set(names)), f"a segment is listed twice: {names}"
    assert db.write_error is None, "a roll without space must not stop writes"
    assert all(mem.exists(p) for p in names)
    fs.heal()
    for i in range(400, 600):
        db.put(k(i), b"v" * 64)
        acked.append(i)
    db.wait_for_compactions()
    names = [p for _, p in db.wal().segments()]
    assert all(mem.exists(p) for p in names)
    db._halt()
    with Engine.open("/db", fs=mem, compaction_executor="thread") as db:
        missing = [i for i in acked if db.get(k(i)) is None]
        assert not missing, f"{len(missing)} acknowledged writes lost"


def test_read_from_refuses_a_gap_between_segments():
    fs = MemFS()
    fs.mkdir("/w")
    wal = Wal(fs, "/w", preallocate=0)
    wal.recover(0)
    wal.start(1)
    wal.append(put(1), 1)
    wal.roll(5)  # LSNs 2..4 were never written anywhere
    wal.append(put(5), 5)
    with pytest.raises(Corruption, match="missing"):
        list(wal.read_from(1))


def test_concurrent_rolls_and_purges_keep_one_unbroken_chain():
    """The commit path rolls while the flush thread purges: no roll may be lost."""
    fs = MemFS()
    fs.mkdir("/w")
    wal = Wal(fs, "/w", preallocate=0, retention_bytes=0)
    wal.recover(0)
    wal.start(1)
    last = [0]
    stop = threading.Event()

    def purger() -> None:
        while not stop.is_set():
            wal.purge(max(0, last[0] - 50))

    t = threading.Thread(target=purger)
    t.start()
    try:
        for lsn in range(1, 3001):
            wal.append(put(lsn), lsn)
            last[0] = lsn
            if lsn % 5 == 0:
                wal.roll(lsn + 1)
    finally:
        stop.set()
        t.join()
    wal.close()  # finishes the last roll: every segment under its own name
    segs = wal.segments()
    on_disk = sorted(n for n in fs.listdir("/w"))
    assert [os.path.basename(p) for _, p in segs] == on_disk
    frames = list(wal.read_from(segs[0][0]))
    assert [f.lsn for f in frames] == list(range(segs[0][0], 3001))


def _roll_leaving_the_rename_pending(db: Engine) -> None:
    """Roll on the fast path with the background thread stopped: the old segment's sync
    and the new segment's rename stay pending, as at a crash right after a roll."""
    wal = db.wal()
    deadline = time.monotonic() + 5
    while wal._spare is None:
        assert time.monotonic() < deadline, "no spare segment was made"
        time.sleep(0.001)
    with wal._bg_cv:
        wal._bg_stop = True
        wal._bg_cv.notify_all()
    wal._bg_thread.join(5)
    with db._mutex:
        db._rotate_locked()
    assert wal._pending is not None and wal.segments()[-1][1].endswith("wal.next")


@pytest.mark.parametrize("durability", ["always", "interval", "none"])
def test_sigkill_between_a_roll_and_its_rename_loses_nothing(durability):
    fs = MemFS()
    db = Engine.open("/db", fs=fs, durability=durability, sync_interval_ms=60_000,
                     compaction_executor="thread")
    for i in range(50):
        db.put(k(i), b"a")
    _roll_leaving_the_rename_pending(db)
    for i in range(50, 100):
        db.put(k(i), b"b")  # acknowledged into the segment still named wal.next
    db._halt()
    with Engine.open("/db", fs=fs, compaction_executor="thread") as db:
        assert all(db.get(k(i)) == (b"a" if i < 50 else b"b") for i in range(100))


def test_power_cut_between_a_roll_and_its_background_sync_leaves_a_consistent_prefix():
    """durability=none: the old segment's tail and the new segment are both unsynced; a
    power cut may keep the new one and lose the old tail. Recovery must open (a prefix),
    not refuse with a hole."""
    fs = MemFS()
    db = Engine.open("/db", fs=fs, durability="none", compaction_executor="thread")
    for i in range(50):
        db.put(k(i), b"a")
    _roll_leaving_the_rename_pending(db)
    for i in range(50, 100):
        db.put(k(i), b"b")
    # The worst order a kernel may choose: the new segment reaches the disk, the old
    # segment's unsynced tail does not.
    fs.sync_file("/db/wal.next")
    db._halt()
    fs.reset_to_synced_state()
    with Engine.open("/db", fs=fs, compaction_executor="thread") as db:
        present = [i for i in range(100) if db.get(k(i)) is not None]
        assert present == list(range(len(present))), "recovered state is not a prefix"
        assert len(present) < 100


def test_power_cut_after_a_roll_in_always_mode_keeps_every_acknowledged_write():
    fs = MemFS()
    db = Engine.open("/db", fs=fs, durability="always", compaction_executor="thread")
    for i in range(50):
        db.put(k(i), b"a")
    _roll_leaving_the_rename_pending(db)
    for i in range(50, 100):
        db.put(k(i), b"b")  # fsynced in wal.next before the acknowledgement
    db._halt()
    fs.reset_to_synced_state()
    with Engine.open("/db", fs=fs, compaction_executor="thread") as db:
        assert all(db.get(k(i)) is not None for i in range(100))
