"""File-system seam (storage/vfs.py): strict MemFS power-cut semantics, FaultFS, OsFS basics."""

from __future__ import annotations

import errno
import os

import pytest

from strata.storage.vfs import FaultFS, MemFS, OsFS, write_file_atomic


@pytest.fixture
def fs():
    m = MemFS()
    m.mkdir("/d")
    m.sync_dir("/")
    return m


def write(fs, path, data, *, sync=True, preallocate=0):
    f = fs.create(path, preallocate)
    f.write(data)
    if sync:
        f.sync()
    f.close()


# ---------------------------------------------------------------------- MemFS basics


def test_memfs_basic_operations(fs):
    write(fs, "/d/a", b"hello")
    assert fs.exists("/d/a") and fs.exists("/d") and fs.exists("/")
    assert not fs.exists("/d/b") and not fs.exists("/nope/x")
    assert fs.read_bytes("/d/a") == b"hello"
    assert fs.size("/d/a") == 5
    assert fs.listdir("/d") == ["a"]
    r = fs.open_read("/d/a")
    assert bytes(r.buf[1:3]) == b"el" and len(r.buf) == 5
    r.close()
    fs.link("/d/a", "/d/b")
    assert fs.read_bytes("/d/b") == b"hello"
    fs.rename("/d/a", "/d/c")
    assert sorted(fs.listdir("/d")) == ["b", "c"]
    fs.truncate("/d/c", 2)
    assert fs.read_bytes("/d/c") == b"he"
    assert fs.read_bytes("/d/b") == b"he", "a hard link shares the inode"
    fs.remove("/d/b")
    assert fs.listdir("/d") == ["c"]


def test_memfs_paths_are_normalised(fs):
    write(fs, "d//x", b"1")
    assert fs.read_bytes("/d/./x") == b"1"
    assert fs.exists("/d/../d/x")


def test_memfs_missing_paths(fs):
    for op in (lambda: fs.read_bytes("/d/none"), lambda: fs.size("/d/none"),
               lambda: fs.remove("/d/none"), lambda: fs.rename("/d/none", "/d/x"),
               lambda: fs.open_read("/d/none"), lambda: fs.listdir("/nodir"),
               lambda: fs.create("/nodir/f"), lambda: fs.truncate("/d/none", 0)):
        with pytest.raises(FileNotFoundError):
            op()


def test_memfs_write_after_close_fails(fs):
    f = fs.create("/d/a")
    f.close()
    with pytest.raises(ValueError):
        f.write(b"x")


def test_memfs_open_read_is_a_snapshot(fs):
    f = fs.create("/d/a")
    f.write(b"abc")
    r = fs.open_read("/d/a")
    f.write(b"def")
    assert bytes(r.buf) == b"abc"
    assert fs.read_bytes("/d/a") == b"abcdef", "reads see unsynced data"


def test_memfs_create_truncates(fs):
    write(fs, "/d/a", b"old contents")
    write(fs, "/d/a", b"new")
    assert fs.read_bytes("/d/a") == b"new"


def test_memfs_mkdir_nested(fs):
    fs.mkdir("/x/y/z")
    assert fs.exists("/x") and fs.exists("/x/y") and fs.exists("/x/y/z")
    fs.mkdir("/x/y/z")  # exist_ok
    write(fs, "/x/y/z/f", b"1")
    assert fs.listdir("/x/y") == ["z"]


@pytest.fixture(params=["mem", "os"])
def anyfs(request, tmp_path):
    if request.param == "mem":
        m = MemFS()
        m.mkdir("/d")
        return m, "/d"
    d = tmp_path / "d"
    d.mkdir()
    return OsFS(), str(d)


# MemFS must refuse or do what the OS does, or code tested on it behaves
# differently on disk.


def test_truncate_to_a_larger_size_extends_with_zeros(anyfs):
    fs, d = anyfs
    write(fs, f"{d}/a", b"abc")
    fs.truncate(f"{d}/a", 6)
    assert fs.read_bytes(f"{d}/a") == b"abc\0\0\0"


def test_link_over_an_existing_name_fails(anyfs):
    fs, d = anyfs
    write(fs, f"{d}/a", b"a")
    write(fs, f"{d}/b", b"b")
    with pytest.raises(FileExistsError):
        fs.link(f"{d}/a", f"{d}/b")
    assert fs.read_bytes(f"{d}/b") == b"b"


def test_create_over_a_directory_fails(anyfs):
    fs, d = anyfs
    fs.mkdir(f"{d}/sub")
    with pytest.raises(IsADirectoryError):
        fs.create(f"{d}/sub")
    assert fs.listdir(f"{d}/sub") == []


# ---------------------------------------------------------------------- MemFS power cut


def test_unsynced_bytes_vanish(fs):
    f = fs.create("/d/a")
    fs.sync_dir("/d")
    f.write(b"never synced")
    fs.reset_to_synced_state()
    assert fs.exists("/d/a")
    assert fs.read_bytes("/d/a") == b""


def test_bytes_after_the_last_sync_vanish(fs):
    f = fs.create("/d/a")
    fs.sync_dir("/d")
    f.write(b"one ")
    f.sync()
    f.write(b"two ")
    f.sync()
    f.write(b"three")
    assert fs.read_bytes("/d/a") == b"one two three"
    fs.reset_to_synced_state()
    assert fs.read_bytes("/d/a") == b"one two "
    # The file can be reopened and appended to after the reset.
    write(fs, "/d/a", b"fresh")
    assert fs.read_bytes("/d/a") == b"fresh"


def test_synced_file_in_unsynced_directory_vanishes(fs):
    write(fs, "/d/a", b"data", sync=True)
    assert fs.exists("/d/a")
    fs.reset_to_synced_state()
    assert not fs.exists("/d/a")
    assert fs.listdir("/d") == []


def test_file_survives_when_data_and_directory_are_synced(fs):
    write(fs, "/d/a", b"data")
    fs.sync_dir("/d")
    fs.reset_to_synced_state()
    assert fs.read_bytes("/d/a") == b"data"


def test_directory_sync_before_data_sync_keeps_the_later_data_sync(fs):
    f = fs.create("/d/a")
    fs.sync_dir("/d")  # the entry is durable, the data not yet
    f.write(b"late")
    f.sync()
    fs.reset_to_synced_state()
    assert fs.read_bytes("/d/a") == b"late"


def test_rename_without_sync_dir_is_undone(fs):
    write(fs, "/d/tmp", b"new")
    write(fs, "/d/target", b"old")
    fs.sync_dir("/d")
    fs.rename("/d/tmp", "/d/target")
    assert fs.read_bytes("/d/target") == b"new" and not fs.exists("/d/tmp")
    fs.reset_to_synced_state()
    assert fs.read_bytes("/d/target") == b"old"
    assert fs.read_bytes("/d/tmp") == b"new"


def test_rename_followed_by_sync_dir_is_durable(fs):
    write(fs, "/d/tmp", b"new")
    write(fs, "/d/target", b"old")
    fs.sync_dir("/d")
    fs.rename("/d/tmp", "/d/target")
    fs.sync_dir("/d")
    fs.reset_to_synced_state()
    assert fs.read_bytes("/d/target") == b"new"
    assert not fs.exists("/d/tmp")


def test_remove_without_sync_dir_is_undone(fs):
    write(fs, "/d/a", b"keep")
    fs.sync_dir("/d")
    fs.remove("/d/a")
    fs.reset_to_synced_state()
    assert fs.read_bytes("/d/a") == b"keep"
    fs.remove("/d/a")
    fs.sync_dir("/d")
    fs.reset_to_synced_state()
    assert not fs.exists("/d/a")


def test_unsynced_directory_vanishes_with_its_files(fs):
    fs.mkdir("/d/sub")
    write(fs, "/d/sub/f", b"x")
    fs.sync_dir("/d/sub")  # the file is in sub, but sub is not in /d
    fs.reset_to_synced_state()
    assert not fs.exists("/d/sub")
    assert not fs.exists("/d/sub/f")
    with pytest.raises(FileNotFoundError):
        fs.listdir("/d/sub")


def test_synced_nested_directory_survives(fs):
    fs.mkdir("/d/sub")
    fs.sync_dir("/d")
    write(fs, "/d/sub/f", b"x")
    fs.sync_dir("/d/sub")
    fs.reset_to_synced_state()
    assert fs.read_bytes("/d/sub/f") == b"x"


def test_truncate_is_durable(fs):
    write(fs, "/d/a", b"0123456789")
    fs.sync_dir("/d")
    fs.truncate("/d/a", 4)
    fs.reset_to_synced_state()
    assert fs.read_bytes("/d/a") == b"0123"


def test_reset_is_idempotent_and_later_state_is_strict_again(fs):
    write(fs, "/d/a", b"1")
    fs.sync_dir("/d")
    fs.reset_to_synced_state()
    fs.reset_to_synced_state()
    assert fs.read_bytes("/d/a") == b"1"
    write(fs, "/d/b", b"2")
    fs.reset_to_synced_state()
    assert fs.listdir("/d") == ["a"]


def test_write_file_atomic_on_memfs(fs):
    write(fs, "/d/CURRENT", b"old\n")
    fs.sync_dir("/d")
    write_file_atomic(fs, "/d/CURRENT", b"new\n")
    assert not fs.exists("/d/CURRENT.tmp")
    fs.reset_to_synced_state()
    assert fs.read_bytes("/d/CURRENT") == b"new\n"
    assert not fs.exists("/d/CURRENT.tmp")


def test_write_file_atomic_interrupted_leaves_old_or_new(fs):
    write(fs, "/d/CURRENT", b"old\n")
    fs.sync_dir("/d")
    ffs = FaultFS(fs)
    ffs.fail("rename", err=errno.EIO)
    with pytest.raises(OSError):
        write_file_atomic(ffs, "/d/CURRENT", b"new\n")
    assert fs.read_bytes("/d/CURRENT") == b"old\n"
    fs.reset_to_synced_state()
    assert fs.read_bytes("/d/CURRENT") == b"old\n"


# ---------------------------------------------------------------------- FaultFS


def test_faultfs_fails_the_nth_write_once(fs):
    ffs = FaultFS(fs)
    f = ffs.create("/d/a")
    ffs.fail("write", after=2, err=errno.EIO, once=True)
    f.write(b"1")
    f.write(b"2")
    with pytest.raises(OSError) as ei:
        f.write(b"3")
    assert ei.value.errno == errno.EIO
    f.write(b"4")
    assert fs.read_bytes("/d/a") == b"124", "the failed write wrote nothing"


def test_faultfs_keeps_failing_until_healed(fs):
    ffs = FaultFS(fs)
    f = ffs.create("/d/a")
    ffs.fail("sync", after=1, err=errno.ENOSPC)
    f.write(b"x")
    f.sync()
    for _ in range(3):
        with pytest.raises(OSError) as ei:
            f.sync()
        assert ei.value.errno == errno.ENOSPC
        assert "injected" in str(ei.value)
    ffs.heal()
    f.sync()
    fs.sync_dir("/d")
    fs.reset_to_synced_state()
    assert fs.read_bytes("/d/a") == b"x"


def test_faultfs_failed_sync_does_not_make_data_durable(fs):
    ffs = FaultFS(fs)
    f = ffs.create("/d/a")
    fs.sync_dir("/d")
    f.write(b"data")
    ffs.fail("sync", err=errno.EIO, once=True)
    with pytest.raises(OSError):
        f.sync()
    fs.reset_to_synced_state()
    assert fs.read_bytes("/d/a") == b""


@pytest.mark.parametrize("kind,op", [
    ("create", lambda f: f.create("/d/new")),
    ("rename", lambda f: f.rename("/d/a", "/d/b")),
    ("remove", lambda f: f.remove("/d/a")),
])
def test_faultfs_fails_create_rename_remove(fs, kind, op):
    write(fs, "/d/a", b"1")
    ffs = FaultFS(fs)
    ffs.fail(kind, after=1, err=errno.EROFS, once=True)
    write(fs, "/d/a2", b"2")
    names = sorted(fs.listdir("/d"))
    # the first matching call passes ...
    {"create": lambda: ffs.create("/d/first").close(),
     "rename": lambda: ffs.rename("/d/a2", "/d/a3"),
     "remove": lambda: ffs.remove("/d/a2")}[kind]()
    names_after_first = sorted(fs.listdir("/d"))
    assert names_after_first != names
    # ... the second fails with the errno and changes nothing ...
    with pytest.raises(OSError) as ei:
        op(ffs)
    assert ei.value.errno == errno.EROFS
    assert sorted(fs.listdir("/d")) == names_after_first
    # ... and once=True healed it.
    op(ffs)


def test_faultfs_rules_are_per_kind_and_others_pass_through(fs):
    ffs = FaultFS(fs)
    ffs.fail("sync", err=errno.EIO)
    f = ffs.create("/d/a")
    f.write(b"abc")  # writes are not affected
    with pytest.raises(OSError):
        f.sync()
    assert ffs.read_bytes("/d/a") == b"abc"
    assert ffs.exists("/d/a") and ffs.size("/d/a") == 3 and ffs.listdir("/d") == ["a"]
    ffs.truncate("/d/a", 1)
    ffs.sync_dir("/d")
    ffs.link("/d/a", "/d/b")
    assert bytes(ffs.open_read("/d/b").buf) == b"a"
    ffs.fail("write", err=errno.ENOSPC)  # a second rule adds, it does not replace
    with pytest.raises(OSError) as ei:
        f.write(b"x")
    assert ei.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as ei:
        f.sync()
    assert ei.value.errno == errno.EIO
    ffs.heal()
    f.write(b"x")
    f.sync()


def test_faultfs_new_rule_for_a_kind_replaces_the_old(fs):
    ffs = FaultFS(fs)
    f = ffs.create("/d/a")
    ffs.fail("write", err=errno.EIO)
    ffs.fail("write", after=1, err=errno.ENOSPC)
    f.write(b"1")
    with pytest.raises(OSError) as ei:
        f.write(b"2")
    assert ei.value.errno == errno.ENOSPC


# ---------------------------------------------------------------------- OsFS


def test_osfs_roundtrip(tmp_path):
    fs = OsFS()
    d = str(tmp_path / "db")
    fs.mkdir(d)
    fs.mkdir(d)  # exist_ok
    p = os.path.join(d, "a")
    write(fs, p, b"hello")
    assert fs.exists(p) and fs.size(p) == 5 and fs.read_bytes(p) == b"hello"
    r = fs.open_read(p)
    assert bytes(r.buf[:]) == b"hello"
    r.close()
    fs.rename(p, os.path.join(d, "b"))
    fs.link(os.path.join(d, "b"), os.path.join(d, "c"))
    assert sorted(fs.listdir(d)) == ["b", "c"]
    fs.truncate(os.path.join(d, "b"), 2)
    assert fs.read_bytes(os.path.join(d, "c")) == b"he"
    fs.remove(os.path.join(d, "c"))
    fs.sync_dir(d)
    assert fs.listdir(d) == ["b"]


def test_osfs_preallocate_and_empty_file(tmp_path):
    fs = OsFS()
    p = str(tmp_path / "pre")
    f = fs.create(p, 8192)
    f.write(b"head")
    f.sync()
    f.close()
    f.close()  # idempotent
    assert fs.size(p) == 8192
    r = fs.open_read(p)
    assert bytes(r.buf[:4]) == b"head" and bytes(r.buf[4:]) == bytes(8188)
    r.close()
    e = str(tmp_path / "empty")
    write(fs, e, b"")
    r = fs.open_read(e)
    assert r.buf == b""
    r.close()


def test_osfs_create_truncates_and_rename_replaces(tmp_path):
    fs = OsFS()
    p, q = str(tmp_path / "p"), str(tmp_path / "q")
    write(fs, p, b"long old contents")
    write(fs, p, b"new")
    assert fs.read_bytes(p) == b"new"
    write(fs, q, b"q")
    fs.rename(q, p)
    assert fs.read_bytes(p) == b"q" and not fs.exists(q)
    with pytest.raises(FileNotFoundError):
        fs.read_bytes(q)


def test_osfs_write_file_atomic(tmp_path):
    fs = OsFS()
    p = str(tmp_path / "CURRENT")
    write_file_atomic(fs, p, b"one\n")
    write_file_atomic(fs, p, b"two\n")
    assert fs.read_bytes(p) == b"two\n"
    assert sorted(os.listdir(tmp_path)) == ["CURRENT"]


def test_faultfs_over_osfs(tmp_path):
    ffs = FaultFS(OsFS())
    p = str(tmp_path / "f")
    ffs.fail("write", after=1, err=errno.ENOSPC, once=True)
    f = ffs.create(p)
    f.write(b"a")
    with pytest.raises(OSError) as ei:
        f.write(b"b")
    assert ei.value.errno == errno.ENOSPC
    f.write(b"c")
    f.close()
    assert ffs.read_bytes(p) == b"ac"


def test_every_file_system_locks_the_database(tmp_path):
    """A FaultFS(OsFS()) used to run without a LOCK file; MemFS had none either."""
    from strata.storage import Engine
    from strata.storage.errors import StorageError


    for fs, path in ((FaultFS(OsFS()), str(tmp_path / "db")), (MemFS(), "/db")):
        with Engine.open(path, fs=fs, compaction_executor="thread"):
            with pytest.raises(StorageError, match="locked"):
                Engine.open(path, fs=fs, compaction_executor="thread")
        with Engine.open(path, fs=fs, compaction_executor="thread"):
            pass  # released at close


def test_local_path_says_where_worker_processes_may_go(tmp_path):


    assert OsFS().local_path(str(tmp_path)) == str(tmp_path)
    assert MemFS().local_path("/db") is None
    assert FaultFS(OsFS()).local_path(str(tmp_path)) is None  # faults must not be bypassed


def test_link_or_copy_copies_across_file_systems(tmp_path, tmpfs):
    """A checkpoint on another file system: hard links fail with EXDEV, so copy."""
    mnt = tmpfs(4)
    src = tmp_path / "a"
    src.write_bytes(b"table bytes")
    OsFS().link_or_copy(str(src), str(mnt / "a"))
    assert (mnt / "a").read_bytes() == b"table bytes"
    assert os.stat(src).st_nlink == 1  # copied, not linked
    OsFS().link_or_copy(str(src), str(tmp_path / "b"))
    assert os.stat(src).st_nlink == 2  # same file system: linked


def test_file_names_round_trip():
    from strata.storage import filenames as fn

    assert fn.parse_segment_name(fn.segment_name(12345)) == 12345
    assert fn.segment_name(1) == "wal-00000000000000000001.log"
    assert fn.parse_table_name(fn.table_name(7)) == 7 and fn.table_name(7) == "000007.sst"
    assert fn.parse_table_name(fn.table_name(12345678)) == 12345678
    assert fn.parse_manifest_name(fn.manifest_name(3)) == 3
    assert fn.is_compaction_output(fn.compaction_output(fn.compaction_prefix(9), 2))
    for other in ("CURRENT", "LOCK", "wal.next", "x.sst", "wal-12.log.tmp", "MANIFEST-x"):
        assert fn.parse_segment_name(other) is None or other == "wal-12.log.tmp"
        assert fn.parse_table_name(other) is None
        assert fn.parse_manifest_name(other) is None
    assert fn.parse_segment_name("wal-12.log.tmp") is None
