"""Full disks: writes stop with NoSpace and come back by themselves once space is freed;
flushes and compactions pause instead of stopping the engine; a database opens (for reads)
with too little space to preallocate a segment. On the fault-injecting file system and on
real, small tmpfs mounts."""

from __future__ import annotations

import errno
import os
import time

import pytest

from strata.storage import Engine, NoSpace, WritesStopped
from strata.storage.vfs import FaultFS, MemFS


def k(i: int) -> bytes:
    return b"key%07d" % i


def wait_until(cond, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("durability", ["always", "none"])
def test_wal_write_on_a_full_disk_stops_writes_then_they_resume(durability):
    mem = MemFS()
    fs = FaultFS(mem)
    db = Engine.open("/db", fs=fs, durability=durability, compaction_executor="thread")
    db._pause_s = 0.05
    for i in range(100):
        db.put(k(i), b"v")
    fs.fail("write", err=errno.ENOSPC)
    with pytest.raises(NoSpace) as e:
        db.put(b"doomed", b"v")
    assert e.value.resumable and e.value.outcome_unknown
    assert "outcome is unknown" in str(e.value)
    with pytest.raises(NoSpace) as e2:
        db.put(b"later", b"v")
    assert not e2.value.outcome_unknown  # never written: a plain refusal
    assert isinstance(db.write_error, NoSpace)
    assert db.get(k(50)) == b"v", "reads keep working"
    time.sleep(0.3)
    assert db.write_error is not None, "no resume while the disk is still full"
    fs.heal()
    wait_until(lambda: db.write_error is None, what="writes to resume")
    lsn = db.put(b"after", b"v")
    assert db.get(b"after") == b"v"
    db.close()
    with Engine.open("/db", fs=mem, compaction_executor="thread") as db:
        assert all(db.get(k(i)) == b"v" for i in range(100))
        assert db.get(b"after") == b"v" and db.last_lsn >= lsn


def test_a_half_written_frame_is_cut_before_writes_resume():
    """write(2) ran out of space in the middle of a frame: the bytes before the ENOSPC
    stay in the file unless cut, and a later frame after them would break the log."""
    mem = MemFS()
    fs = FaultFS(mem)
    db = Engine.open("/db", fs=fs, durability="none", compaction_executor="thread")
    for i in range(10):
        db.put(k(i), b"v")
    db._pause_s = 0.05
    fs.fail("write", err=errno.ENOSPC, once=True, partial=True)
    with pytest.raises(NoSpace):
        db.put(b"torn", b"x" * 100)
    assert mem.size(db.wal().segments()[-1][1]) > db.wal()._cur.size, "half a frame was written"
    wait_until(lambda: db.write_error is None, what="writes to resume")
    for i in range(10, 20):
        db.put(k(i), b"v")
    db._halt()
    with Engine.open("/db", fs=mem, compaction_executor="thread") as db:
        assert db.get(b"torn") is None
        assert all(db.get(k(i)) == b"v" for i in range(20))


def test_flush_on_a_full_disk_pauses_and_writes_go_on():
    mem = MemFS()
    fs = FaultFS(mem)
    db = Engine.open("/db", fs=fs, durability="none", memtable_size=16 << 10,
                     compaction_executor="thread", max_immutable=4, stall_timeout_s=0.5)
    db._pause_s = 0.05
    fs.fail("create", err=errno.ENOSPC)  # no new table (nor segment) can be made
    written = 0
    with pytest.raises((NoSpace, WritesStopped, Exception)):
        while written < 5000:
            db.put(k(written), b"v" * 100)
            written += 1
    assert written > 200, "writes must go on while the WAL still fits"
    assert "flush" in db.paused or db.write_error is not None
    fs.heal()
    wait_until(lambda: db.write_error is None and not db.paused, what="flush to resume")
    db.flush()
    assert db.stats.flushes >= 1
    db.close()
    with Engine.open("/db", fs=mem, compaction_executor="thread") as db:
        assert all(db.get(k(i)) == b"v" * 100 for i in range(written))


def test_compaction_on_a_full_disk_pauses_without_stopping_writes():
    mem = MemFS()
    fs = FaultFS(mem)
    db = Engine.open("/db", fs=fs, durability="none", memtable_size=8 << 10,
                     l0_compaction_trigger=2, compaction_executor="thread", stall_timeout_s=5)
    db._pause_s = 0.05
    for i in range(300):
        db.put(k(i), b"v" * 100)
    db.wait_for_compactions()
    # Tables of merges fail; the WAL and flushes (which rename nothing) go on.
    fs.fail("rename", err=errno.ENOSPC)
    for i in range(300, 900):  # ~8 more L0 files: below the slowdown trigger
        db.put(k(i), b"v" * 100)
    wait_until(lambda: "compaction" in db.paused, what="compaction to pause")
    assert db.write_error is None, "a compaction out of space must not stop writes"
    # Partial outputs are removed to give the space back: at most the one of the
    # attempt running now is there, not one per attempt.
    assert len([n for n in mem.listdir("/db") if n.endswith(".sst.tmp")]) <= 1
    fs.heal()
    wait_until(lambda: "compaction" not in db.paused, what="compaction to resume")
    db.compact_all()
    assert all(db.get(k(i)) == b"v" * 100 for i in range(900))
    db.close()


# ------------------------------------------------------------------ real small file systems


def fill(path: str, leave: int) -> None:
    """Fill the file system holding `path` until `leave` bytes are free."""
    st = os.statvfs(os.path.dirname(path))
    free = st.f_bavail * st.f_frsize
    with open(path, "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def test_open_with_too_little_space_for_a_segment_serves_reads_then_takes_writes(tmpfs):
    """With 2 MiB free a database could not even be opened to read it (a raw ENOSPC
    without a path, and a restart loop under systemd)."""
    tmpfs = tmpfs(24)
    path = str(tmpfs / "db")
    with Engine.open(path, durability="always") as db:
        for i in range(1000):
            db.put(k(i), b"v" * 100)
    filler = str(tmpfs / "filler")
    fill(filler, 2 << 20)
    db = Engine.open(path, durability="always", memtable_size=32 << 20)  # 33 MiB preallocation
    try:
        assert all(db.get(k(i)) == b"v" * 100 for i in range(0, 1000, 37))
        db.put(b"small", b"fits without preallocation")
        fill(filler + "2", 0)
        with pytest.raises(NoSpace) as e:
            for i in range(100_000):
                db.put(k(i), b"w" * 1000)
        assert path in str(e.value) or str(tmpfs) in str(e.value)
        assert db.get(b"small") == b"fits without preallocation"
        os.remove(filler)
        os.remove(filler + "2")
        wait_until(lambda: db.write_error is None, what="writes to resume once space is back")
        db.put(b"after", b"space came back")
    finally:
        db.close()
    with Engine.open(path) as db:
        assert db.get(b"after") == b"space came back"
        assert db.get(b"small") == b"fits without preallocation"


def test_open_on_a_completely_full_disk_is_read_only_until_space_returns(tmpfs):
    tmpfs = tmpfs(24)
    path = str(tmpfs / "db")
    db = Engine.open(path, durability="always")
    for i in range(500):
        db.put(k(i), b"v" * 100)
    # Left in the log (as a replica closes): a clean close with a flush leaves an empty
    # preallocated segment that the next open takes up, and writes fit in it.
    db.close(flush=False)
    filler = str(tmpfs / "filler")
    fill(filler, 0)
    db = Engine.open(path, durability="always")
    try:
        assert isinstance(db.write_error, NoSpace)
        assert db.get(k(499)) == b"v" * 100
        with pytest.raises(NoSpace):
            db.put(b"x", b"y")
        os.remove(filler)
        wait_until(lambda: db.write_error is None, what="writes to resume")
        db.put(b"x", b"y")
    finally:
        db.close()
    with Engine.open(path) as db:
        assert db.get(b"x") == b"y" and db.get(k(0)) == b"v" * 100


def test_close_on_a_read_only_file_system_says_what_may_be_lost():
    """close() raised a raw EROFS."""
    mem = MemFS()
    fs = FaultFS(mem)
    db = Engine.open("/db", fs=fs, durability="none", compaction_executor="thread")
    db.put(b"k", b"v")
    fs.fail("sync", err=errno.EROFS)
    fs.fail("create", err=errno.EROFS)
    with pytest.raises(WritesStopped) as e:
        db.close()
    assert "may be lost" in str(e.value) and isinstance(e.value.cause, OSError)
    assert e.value.cause.errno == errno.EROFS
    fs.heal()
    with Engine.open("/db", fs=mem, compaction_executor="thread") as db:
        assert db.get(b"k") == b"v"  # the page cache (MemFS) still had it: SIGKILL-like


def test_writes_waiting_on_a_paused_flush_are_refused_at_once():
    """Flushes paused for space and the immutable memtables full: a write used to wait
    for the whole stall timeout (past any client deadline)."""
    mem = MemFS()
    fs = FaultFS(mem)
    db = Engine.open("/db", fs=fs, durability="none", memtable_size=8 << 10, max_immutable=1,
                     compaction_executor="thread", stall_timeout_s=60)
    db._pause_s = 0.05
    fs.fail("create", err=errno.ENOSPC)
    t0 = time.monotonic()
    with pytest.raises(NoSpace) as e:
        for i in range(10_000):
            db.put(k(i), b"v" * 100)
    assert time.monotonic() - t0 < 10
    assert "flushes are waiting for disk space" in str(e.value)
    assert isinstance(db.write_error, NoSpace)
    fs.heal()
    wait_until(lambda: db.write_error is None, what="the flush to resume")
    db.put(b"after", b"v")
    db.close()
