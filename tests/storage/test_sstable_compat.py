"""Tables written by older versions of the format still read (storage/sstable.py).

testdata/sst-v1 is a database written with table format version 1 (its README
says how). It is copied, opened with today's code, read, compacted into
version-2 tables and read again.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

from strata.storage import Engine
from strata.storage.sstable import FOOTER_SIZE, VERSION

FIXTURE = Path(__file__).parent / "testdata" / "sst-v1"


def model() -> dict[bytes, bytes]:
    """What the fixture's writes leave (testdata/sst-v1/README.md)."""
    m = {}
    for i in range(3000):
        m[b"key%05d" % i] = (b"v1-%05d-" % i) * (1 + i % 13)
    for i in range(0, 3000, 3):
        m[b"key%05d" % i] = (b"v2-%05d-" % i) * (1 + i % 5)
    for i in range(0, 3000, 7):
        del m[b"key%05d" % i]
    for i in range(50):
        m[b"late%03d" % i] = b"late-%03d" % i
    return m


def table_versions(path: Path) -> dict[str, int]:
    out = {}
    for name in sorted(os.listdir(path)):
        if name.endswith(".sst"):
            data = (path / name).read_bytes()
            out[name] = struct.unpack_from("<I", data, len(data) - 12)[0]
            assert data[-8:] == b"STRATSST"
            assert len(data) >= FOOTER_SIZE
    return out


def test_a_version_1_database_reads_and_compacts_into_the_current_version(tmp_path):
    db_dir = tmp_path / "db"
    shutil.copytree(FIXTURE, db_dir, ignore=shutil.ignore_patterns("README.md"))
    assert set(table_versions(db_dir).values()) == {1}
    expected = model()
    db = Engine.open(str(db_dir), compaction_executor="thread", wal_preallocate=False)
    try:
        levels = [lvl["files"] for lvl in db.levels()]
        assert levels[0] and levels[1] and levels[2], levels  # every codec and level is there
        assert dict(db.scan()) == expected
        for i in range(3000):
            key = b"key%05d" % i
            assert db.get(key) == expected.get(key), key
        assert db.get(b"key03000") is None and db.get(b"late050") is None
        assert dict(db.scan(b"key01000", b"key01100")) == {
            k: v for k, v in expected.items() if b"key01000" <= k < b"key01100"}
        db.verify()
        # Overwrite some keys, then rewrite everything as current tables.
        for i in range(0, 3000, 11):
            db.put(b"key%05d" % i, b"v3")
            expected[b"key%05d" % i] = b"v3"
        db.compact_all()
        assert set(table_versions(db_dir).values()) == {VERSION}
        assert dict(db.scan()) == expected
    finally:
        db.close()
    db = Engine.open(str(db_dir), compaction_executor="thread", wal_preallocate=False)
    try:
        assert dict(db.scan()) == expected
        assert all(db.get(k) == v for k, v in expected.items())
    finally:
        db.close()
