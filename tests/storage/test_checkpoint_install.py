"""Installing a fetched checkpoint (storage/checkpoint.py, install) in place of a
database: a power cut after every step leaves a directory that, once install is called
again (as a restarting replica does), opens as the checkpoint's database."""

from __future__ import annotations

import os

import pytest

from strata.storage import Engine
from strata.storage.checkpoint import COMPLETE, install, is_engine_file
from strata.storage.vfs import MemFS

OPTS = dict(compaction_executor="thread")


class _Cutting(MemFS):
    """A MemFS that keeps what a power cut would leave after every call that changes a
    directory entry or makes one durable (`cuts`, while it is a list)."""

    def __init__(self) -> None:
        super().__init__()
        self.cuts: list[MemFS] | None = None

    def _cut(self) -> None:
        if self.cuts is not None:
            self.cuts.append(self.synced_copy())

    def sync_dir(self, path):
        super().sync_dir(path)
        self._cut()

    def remove(self, path):
        super().remove(path)
        self._cut()

    def link(self, src, dst):
        super().link(src, dst)
        self._cut()

    def rmdir(self, path):
        super().rmdir(path)
        self._cut()


def _fill(fs: MemFS, path: str, prefix: bytes, n: int) -> None:
    """A database with n keys, some in tables and some only in the log."""
    with Engine.open(path, fs=fs, **OPTS) as db:
        for i in range(n):
            db.put(prefix + b"%03d" % i, b"v%d" % i)
            if i == n // 2:
                db.flush()


def _contents(fs: MemFS, path: str) -> dict[bytes, bytes]:
    with Engine.open(path, fs=fs, **OPTS) as db:
        return dict(db.scan())


def _setup() -> _Cutting:
    """/data/db: the old database; /data/resync: a complete checkpoint of another."""
    fs = _Cutting()
    fs.mkdir("/data")
    fs.sync_dir("/")
    _fill(fs, "/data/db", b"old", 40)
    _fill(fs, "/data/master", b"new", 60)
    with Engine.open("/data/master", fs=fs, **OPTS) as db:
        db.put(b"new-unflushed", b"x")  # in the checkpoint's WAL only
        db.checkpoint("/data/resync")
    f = fs.create(os.path.join("/data/resync", COMPLETE))
    f.write(b"1")
    f.sync()
    f.close()
    fs.sync_dir("/data/resync")
    return fs


def test_install_replaces_the_database_and_removes_the_checkpoint():
    fs = _setup()
    new = _contents(fs, "/data/master")
    assert install(fs, "/data/db", "/data/resync") is True
    assert _contents(fs, "/data/db") == new
    assert not fs.exists("/data/resync")
    assert install(fs, "/data/db", "/data/resync") is False  # nothing left to install


def test_an_incomplete_checkpoint_is_dropped_and_the_database_stays():
    fs = _setup()
    old = _contents(fs, "/data/db")
    fs.remove(os.path.join("/data/resync", COMPLETE))
    assert install(fs, "/data/db", "/data/resync") is False
    assert not fs.exists("/data/resync")
    assert _contents(fs, "/data/db") == old


def test_a_power_cut_at_every_step_of_an_install_leaves_the_new_database_once_it_is_redone():
    fs = _setup()
    old = _contents(fs, "/data/db")
    new = _contents(fs, "/data/master")
    assert old != new and b"new-unflushed" in new
    fs.cuts = []
    install(fs, "/data/db", "/data/resync")
    cuts, fs.cuts = fs.cuts, None
    assert len(cuts) > 10
    for n, cut in enumerate(cuts):
        # What a restarting replica does: finish the install, then open.
        install(cut, "/data/db", "/data/resync")
        assert _contents(cut, "/data/db") == new, f"cut {n}"
        assert not cut.exists("/data/resync"), f"cut {n}"


@pytest.mark.parametrize("name,engine", [
    ("CURRENT", True), ("MANIFEST-000003", True), ("000012.sst", True),
    ("wal-00000000000000000001.log", True), ("wal.next", True), ("x.tmp", True),
    ("LOCK", False), ("ELECTION", False), ("resync", False),
])
def test_the_files_an_install_replaces(name, engine):
    assert is_engine_file(name) is engine
