"""WAL retention across restarts: it counts the bytes written, not the space preallocated,
and no restart leaves an empty preallocated segment behind (issue 20)."""

from __future__ import annotations

import os
import time

import pytest

from strata.storage import Engine, record
from strata.storage.filenames import parse_segment_name, segment_name
from strata.storage.record import HEADER_SIZE
from strata.storage.vfs import FaultFS, MemFS
from strata.storage.wal import Wal

from .test_wal import put


def _wal_file_bytes(d: str) -> int:
    """The sizes of the segments and the spare segment (wal.next) in `d`."""
    return sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d) if n.startswith("wal"))


def _segments(d: str) -> list[tuple[int, int]]:
    """(first LSN, file size) of every segment file in `d`, oldest first."""
    out = []
    for name in os.listdir(d):
        lsn = parse_segment_name(name)
        if lsn is not None:
            out.append((lsn, os.path.getsize(os.path.join(d, name))))
    return sorted(out)


def test_twenty_restarts_keep_every_frame_within_a_small_retention(tmp_path):
    """Each open preallocated a segment of memtable_size + 1 MiB, and retention counted
    file sizes: with 64 KiB of retention, each restart's 1 MiB file evicted all history
    (read_log(1) raised Compacted after the first restart)."""
    d = str(tmp_path / "db")
    opts = dict(memtable_size=64 << 10, wal_retention_bytes=64 << 10,
                compaction_executor="thread")
    lsns: list[int] = []
    for i in range(20):
        with Engine.open(d, **opts) as db:
            for j in range(3):
                lsns.append(db.put(b"k%02d-%d" % (i, j), b"v" * 100))
    with Engine.open(d, **opts) as db:
        # The spare the background makes counts as preallocated once it is made: its
        # file exists a little earlier (created, then synced), so wait for both.
        for _ in range(500):
            du = db.disk_usage()
            if os.path.exists(os.path.join(d, "wal.next")) and \
                    du["wal_bytes"] + du["wal_preallocated_bytes"] == _wal_file_bytes(d):
                break
            time.sleep(0.01)
        assert db.earliest_lsn == 1
        assert [fr.lsn for fr in db.read_log(1)] == lsns == list(range(1, 61))
        du = db.disk_usage()
        assert du["wal_bytes"] + du["wal_preallocated_bytes"] == _wal_file_bytes(d)
        assert du["wal_bytes"] < 20 * 3 * 200 + 21 * HEADER_SIZE, "headers and frames only"
        assert du["wal_preallocated_bytes"] >= 64 << 10, "the open segment is preallocated"
        stats = db.wal_stats()
        assert (stats["retained_bytes"], stats["preallocated_bytes"]) == (
            du["wal_bytes"], du["wal_preallocated_bytes"])
    # One segment per session that wrote, and one empty one the next open takes up:
    # every sealed segment was given back the space preallocated past its frames.
    segs = _segments(d)
    assert [lsn for lsn, _ in segs] == [*range(1, 61, 3), 61]
    assert all(n < 1000 for _, n in segs[:-2]), segs


def test_retention_still_evicts_by_written_bytes(tmp_path):
    """The policy still works: written bytes past retention_bytes are purged, oldest first,
    and what is kept is an unbroken run ending at the log's end."""
    d = str(tmp_path / "db")
    opts = dict(memtable_size=64 << 10, wal_retention_bytes=2000, compaction_executor="thread")
    for i in range(10):
        with Engine.open(d, **opts) as db:
            for j in range(3):
                db.put(b"k%02d-%d" % (i, j), b"v" * 200)
    with Engine.open(d, **opts) as db:
        first = db.earliest_lsn
        assert 1 < first < 30
        assert [fr.lsn for fr in db.read_log(first)] == list(range(first, 31))


class _Recording(MemFS):
    """A MemFS that remembers the paths created, and can keep what a power cut would
    leave after each directory-changing call (`cuts`)."""

    def __init__(self) -> None:
        super().__init__()
        self.created: list[str] = []
        self.cuts: list[MemFS] | None = None

    def _cut(self) -> None:
        if self.cuts is not None:
            self.cuts.append(self.synced_copy())

    def create(self, path, preallocate=0):
        self._cut()
        self.created.append(os.path.basename(path))
        f = super().create(path, preallocate)
        self._cut()
        return f

    def reopen(self, path, size):
        self._cut()
        f = super().reopen(path, size)
        self._cut()
        return f

    def sync_dir(self, path):
        super().sync_dir(path)
        self._cut()

    def remove(self, path):
        self._cut()
        super().remove(path)
        self._cut()

    def rename(self, src, dst):
        self._cut()
        super().rename(src, dst)
        self._cut()

    def truncate(self, path, size):
        self._cut()
        super().truncate(path, size)
        self._cut()


def test_a_clean_restart_takes_up_the_empty_segment_instead_of_making_one():
    fs = _Recording()
    opts = dict(fs=fs, compaction_executor="thread",
                wal_retention_bytes=64 << 20)  # the log is read back below
    with Engine.open("/db", **opts) as db:
        db.put(b"a", b"1")
        db.put(b"b", b"2")
    names = sorted(n for n in fs.listdir("/db") if parse_segment_name(n) is not None)
    assert names == [segment_name(1), segment_name(3)]
    fs.created.clear()
    with Engine.open("/db", **opts) as db:
        assert db.wal().segments()[-1][1].endswith(segment_name(3))
        assert segment_name(3) not in fs.created, "the empty segment was made again"
        db.put(b"c", b"3")
    with Engine.open("/db", **opts) as db:
        assert [fr.lsn for fr in db.read_log(1)] == [1, 2, 3]


def test_power_cut_at_every_step_of_taking_up_the_empty_segment():
    """Cut the power after every directory change and file creation of an open that
    takes the empty segment up, then writes: each state opens with every write that was
    acknowledged (durability=always) before the cut, and the whole log reads back."""
    fs = _Recording()
    with Engine.open("/db", fs=fs, compaction_executor="thread", wal_retention_bytes=1 << 20) as db:
        for i in range(5):
            db.put(b"k%d" % i, b"v")
    fs.cuts = []
    db = Engine.open("/db", fs=fs, compaction_executor="thread", wal_retention_bytes=1 << 20)
    # (cuts taken before the acknowledgement, its LSN): cut n holds what was
    # acknowledged before it was taken. LSNs 1..5 were durable before any cut.
    acked = [(0, 5)]
    for i in range(5, 8):
        acked.append((len(fs.cuts), db.put(b"k%d" % i, b"v")))
    db.close()
    cuts, fs.cuts = fs.cuts, None
    assert len(cuts) > 5
    for n, cut in enumerate(cuts):
        last = max(lsn for taken, lsn in acked if taken <= n)
        with Engine.open("/db", fs=cut, compaction_executor="thread", wal_retention_bytes=1 << 20) as db2:
            got = [fr.lsn for fr in db2.read_log(1)]
            assert got[:last] == list(range(1, last + 1)), f"cut {n}"
            assert all(db2.get(b"k%d" % i) == b"v" for i in range(last)), f"cut {n}"


def _log_with_empty_newest(fs: MemFS, d: str, empty_at: int) -> None:
    """wal-1 holding LSNs 1..3 and an empty (header-only) segment named `empty_at`."""
    fs.mkdir(d)
    fs.sync_dir("/")
    w = Wal(fs, d)
    w.recover(0)
    w.start(1)
    for lsn in (1, 2, 3):
        w.append(put(lsn), lsn)
    w.sync()
    w.roll(empty_at)
    w.close()


def test_an_empty_segment_that_does_not_fit_is_removed_and_a_cut_leaves_an_openable_log():
    """The tables hold up to LSN 6 (say), so the log goes on from 7: the empty wal-4 is
    removed (it used to stay, a segment of nothing ahead of a gap). A power cut at each
    step of removing it and making wal-7 leaves a log that recovers with LSNs 1..3."""
    mem = _Recording()
    _log_with_empty_newest(mem, "/d", 4)
    mem.cuts = []
    w = Wal(mem, "/d")
    w.recover(6)
    w.start(7)
    w.close()
    cuts, mem.cuts = mem.cuts, None
    assert [lsn for lsn, _ in w.list_segments()] == [1, 7]
    assert len(cuts) >= 3
    for n, cut in enumerate(cuts):
        w2 = Wal(cut, "/d")
        w2.recover(6)
        w2.start(7)
        assert [lsn for lsn, _ in w2.list_segments()] == [1, 7], f"cut {n}"
        w2.close()
        held = record.iter_frames(cut.read_bytes("/d/" + segment_name(1)), HEADER_SIZE)
        assert [fr.lsn for fr in held] == [1, 2, 3], f"cut {n}"


def test_an_empty_segment_left_by_a_crash_after_a_roll_is_taken_up():
    """A process killed right after a roll leaves the new segment with only its header
    (perhaps still named wal.next); after a power cut the next start takes it up."""
    mem = _Recording()
    mem.mkdir("/d")
    mem.sync_dir("/")
    w = Wal(mem, "/d")
    w.recover(0)
    w.start(1)
    for lsn in (1, 2, 3):
        w.append(put(lsn), lsn)
    w.sync()
    w.roll(4)
    w.sync()
    w.halt()  # killed: no close
    mem.reset_to_synced_state()
    mem.created.clear()
    w = Wal(mem, "/d")
    tail = w.recover(0)
    assert tail.last_lsn == 3
    w.start(4)
    assert segment_name(4) not in mem.created
    assert [lsn for lsn, _ in w.segments()] == [1, 4]
    w.append(put(4), 4)
    w.sync()
    w.close()
    w = Wal(mem, "/d")
    assert [fr.lsn for fr in w.recover(0).frames] == [1, 2, 3, 4]
    w.close()


def test_taking_up_a_segment_fails_cleanly_and_the_next_open_still_works():
    mem = MemFS()
    _log_with_empty_newest(mem, "/d", 4)
    fs = FaultFS(mem)
    fs.fail("create", once=True)
    w = Wal(fs, "/d")
    w.recover(3)
    with pytest.raises(OSError):
        w.start(4)
    w = Wal(mem, "/d")
    w.recover(3)
    w.start(4)
    assert [lsn for lsn, _ in w.segments()] == [1, 4]
    w.close()
