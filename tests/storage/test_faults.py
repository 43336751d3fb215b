"""Full disks, failing fsyncs, corrupt files: a clear error, and nothing acknowledged is lost."""

from __future__ import annotations

import errno
import os

import pytest

from strata.storage import Closed, Corruption, Engine, WriteStalled
from strata.storage.vfs import FaultFS, MemFS

SMALL = dict(memtable_size=32 << 10, base_level_size=128 << 10, target_file_size=32 << 10)


def _abandon(db: Engine) -> None:
    db._halt()


@pytest.mark.parametrize("durability,kind,err", [
    ("always", "write", errno.ENOSPC),
    ("always", "sync", errno.EIO),
    ("none", "write", errno.ENOSPC),  # 'none' never syncs on the write path
])
def test_wal_failure_stops_writes_and_keeps_acknowledged_data(durability, kind, err):
    mem = MemFS()
    fs = FaultFS(mem)
    db = Engine.open("/db", fs=fs, durability=durability)
    for i in range(100):
        db.put(b"k%03d" % i, b"v")
    fs.fail(kind, err=err)
    with pytest.raises(Closed) as e:
        db.put(b"doomed", b"v")
    assert os.strerror(err) in str(e.value)
    with pytest.raises(Closed):
        db.put(b"later", b"v")
    assert db.get(b"k050") == b"v", "reads keep working after a write failure"
    _abandon(db)
    fs.heal()
    survivor = mem.synced_copy() if durability == "always" else mem
    with Engine.open("/db", fs=survivor) as db2:
        assert all(db2.get(b"k%03d" % i) == b"v" for i in range(100))
        assert db2.get(b"later") is None
        db2.put(b"again", b"ok")
        assert db2.get(b"again") == b"ok"


@pytest.mark.parametrize("kind", ["create", "write", "sync", "rename"])
def test_failure_during_flush_or_compaction_loses_nothing(kind):
    mem = MemFS()
    fs = FaultFS(mem)
    db = Engine.open("/db", fs=fs, durability="always", stall_timeout_s=1, **SMALL)
    for i in range(300):
        db.put(b"k%05d" % i, b"x" * 100)
    # Let the WAL writes through; fail the next table/manifest operation. A full disk
    # stops writes (Closed) or, when only flushes fail, stalls them (WriteStalled).
    fs.fail(kind, after=0 if kind in ("create", "rename") else 3, err=errno.ENOSPC)
    acked = 300
    try:
        for i in range(300, 5000):
            db.put(b"k%05d" % i, b"x" * 100)
            acked = i + 1
    except (Closed, WriteStalled):
        pass
    _abandon(db)
    fs.heal()
    with Engine.open("/db", fs=mem.synced_copy(), **SMALL) as db2:
        missing = [i for i in range(acked) if db2.get(b"k%05d" % i) != b"x" * 100]
        assert not missing, f"lost {len(missing)} acknowledged writes"


def _first_table(path: str) -> str:
    return sorted(n for n in os.listdir(path) if n.endswith(".sst"))[0]


def test_corrupt_table_block_is_reported_with_file_and_offset(tmp_path):
    path = str(tmp_path / "db")
    with Engine.open(path, **SMALL) as db:
        for i in range(2000):
            db.put(b"k%05d" % i, b"v%05d" % i)
        db.compact_all()
    name = _first_table(path)
    with open(os.path.join(path, name), "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0x40]))
    with Engine.open(path, **SMALL) as db:
        with pytest.raises(Corruption) as e:
            db.verify()
        assert e.value.path.endswith(name)
        assert e.value.offset == 0  # the first data block starts at 0
        with pytest.raises(Corruption):
            for _ in db.scan():
                pass


def test_corrupt_sealed_wal_segment_refuses_to_open_unless_repair(tmp_path):
    path = str(tmp_path / "db")
    db = Engine.open(path, durability="always", memtable_size=1 << 30)
    for i in range(200):
        db.put(b"k%03d" % i, b"v" * 50)
    with db._mutex:
        db._wal.roll(db.last_lsn + 1)  # seal the segment holding all 200 frames
    for i in range(200, 210):
        db.put(b"k%03d" % i, b"v" * 50)
    _abandon(db)
    db._release_lock_file()
    segs = sorted(n for n in os.listdir(path) if n.startswith("wal-"))
    sealed = os.path.join(path, segs[0])
    with open(sealed, "r+b") as f:
        f.seek(24 + 25 + 5)  # inside the first frame's payload
        f.write(b"\xff")
    with pytest.raises(Corruption) as e:
        Engine.open(path)
    assert e.value.path == sealed
    assert e.value.offset == 24
    with Engine.open(path, repair=True) as db2:
        assert db2.get(b"k000") is None  # dropped with the damage
        db2.put(b"new", b"1")
    with Engine.open(path) as db3:
        assert db3.get(b"new") == b"1"


def test_torn_tail_is_truncated_and_logged(tmp_path, caplog):
    path = str(tmp_path / "db")
    db = Engine.open(path, durability="always")
    for i in range(50):
        db.put(b"k%03d" % i, b"v" * 50)
    _abandon(db)
    db._release_lock_file()
    seg = os.path.join(path, sorted(n for n in os.listdir(path) if n.startswith("wal-"))[-1])
    with open(seg, "r+b") as f:
        data = f.read()
        # Half-write the last frame: cut its payload and leave zeros behind.
        end = data.rstrip(b"\x00").__len__()
        f.seek(end - 30)
        f.write(b"\x00" * 30)
    with caplog.at_level("WARNING"):
        with Engine.open(path) as db2:
            assert db2.get(b"k048") == b"v" * 50
            assert db2.get(b"k049") is None
            assert db2.stats.wal_truncated_bytes > 0
    assert any("torn tail" in r.getMessage() for r in caplog.records)


def test_garbage_current_file_is_a_clear_error(tmp_path):
    path = str(tmp_path / "db")
    with Engine.open(path) as db:
        db.put(b"a", b"b")
    with open(os.path.join(path, "CURRENT"), "wb") as f:
        f.write(b"\x00garbage")
    with pytest.raises(Corruption, match="CURRENT"):
        Engine.open(path)
