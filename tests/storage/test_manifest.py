"""Manifest and versions (storage/manifest.py): edits, recovery, torn and damaged edits, CURRENT."""

from __future__ import annotations

import errno
import os

import msgpack
import pytest

from strata.storage import manifest, record
from strata.storage.errors import Corruption
from strata.storage.filenames import manifest_name
from strata.storage.manifest import (
    NUM_LEVELS,
    FileMeta,
    Version,
    VersionSet,
    apply_edit,
)
from strata.storage.vfs import FaultFS, MemFS

D = "/db"


class TablesPresent(MemFS):
    """These tests exercise the manifest alone: every table it names "exists"."""

    def exists(self, path: str) -> bool:
        return path.endswith(".sst") or super().exists(path)


@pytest.fixture
def fs():
    m = TablesPresent()
    m.mkdir(D)
    m.sync_dir("/")
    return m


def fm(number, smallest, largest, *, size=100, min_lsn=1, max_lsn=None, entries=10):
    return FileMeta(number, size, smallest, largest, entries, min_lsn,
                    number if max_lsn is None else max_lsn)


def add(level, meta):
    return meta.to_wire(level)


def shape(v: Version):
    """Per level, the file numbers in the version's order."""
    return [[f.number for f in lvl] for lvl in v.levels]


def current_manifest(fs) -> str:
    return os.path.join(D, fs.read_bytes(os.path.join(D, "CURRENT")).decode().strip())


def frames(fs, path):
    return list(record.iter_frames(fs.read_bytes(path), 0))


def rewrite(fs, path, data):
    f = fs.create(path)
    f.write(data)
    f.sync()
    f.close()


def populated(fs) -> VersionSet:
    """A version set with a few edits: flushes to L0, a trivial move, a compaction."""
    vs = VersionSet(fs, D)
    vs.create()
    n = [vs.new_file_number() for _ in range(6)]
    vs.log_and_apply({"add": [add(0, fm(n[0], b"a", b"m", max_lsn=10))], "flushed_lsn": 10})
    vs.log_and_apply({"add": [add(0, fm(n[1], b"c", b"z", max_lsn=20))], "flushed_lsn": 20})
    vs.log_and_apply({"del": [[0, n[0]]], "add": [add(1, fm(n[0], b"a", b"m", max_lsn=10))]})
    vs.log_and_apply({"del": [[0, n[1]], [1, n[0]]],
                      "add": [add(1, fm(n[2], b"a", b"f")), add(1, fm(n[3], b"g", b"z"))]})
    vs.log_and_apply({"add": [add(0, fm(n[4], b"b", b"d", max_lsn=30)),
                              add(2, fm(n[5], b"x", b"y"))], "flushed_lsn": 30})
    vs.numbers = n
    return vs


def recovered(fs) -> VersionSet:
    vs = VersionSet(fs, D)
    vs.recover()
    return vs


# ---------------------------------------------------------------------- recovery


def test_create_then_recover_empty(fs):
    vs = VersionSet(fs, D)
    vs.create()
    assert fs.read_bytes(os.path.join(D, "CURRENT")) == (manifest_name(vs.manifest_number) + "\n").encode()
    vs.close()
    vs2 = recovered(fs)
    assert shape(vs2.current) == [[] for _ in range(NUM_LEVELS)]
    assert vs2.flushed_lsn == 0
    assert vs2.next_file > vs.manifest_number


def test_log_and_apply_then_recover_reproduces_version(fs):
    vs = populated(fs)
    n = vs.numbers
    assert shape(vs.current)[:3] == [[n[4]], [n[2], n[3]], [n[5]]]
    assert vs.flushed_lsn == 30
    next_file = vs.next_file
    vs.close()
    vs2 = recovered(fs)
    assert vs2.current.levels == vs.current.levels
    assert vs2.flushed_lsn == 30
    assert vs2.next_file >= next_file
    # The new manifest was started with a number never used before.
    assert vs2.manifest_number >= next_file
    assert current_manifest(fs) == os.path.join(D, manifest_name(vs2.manifest_number))


def test_recover_starts_a_new_manifest_and_deletes_the_old(fs):
    vs = populated(fs)
    old = current_manifest(fs)
    vs.close()
    vs2 = recovered(fs)
    new = current_manifest(fs)
    assert new != old and not fs.exists(old)
    fr = frames(fs, new)
    assert len(fr) == 1
    snap = msgpack.unpackb(fr[0].payload)
    assert snap["snapshot"] is True and snap["flushed_lsn"] == 30
    assert fr[0].type == record.TYPE_EDIT and (fr[0].lsn, fr[0].term) == (0, 0)
    vs2.close()
    assert recovered(fs).current.levels == vs.current.levels


def test_edits_survive_a_power_cut(fs):
    vs = populated(fs)  # never closed
    fs.reset_to_synced_state()
    vs2 = recovered(fs)
    assert vs2.current.levels == vs.current.levels
    assert vs2.flushed_lsn == 30


def test_flushed_lsn_and_next_file_only_grow(fs):
    vs = VersionSet(fs, D)
    vs.create()
    vs.log_and_apply({"flushed_lsn": 50})
    vs.log_and_apply({"flushed_lsn": 40})
    assert vs.flushed_lsn == 50
    vs.close()
    assert recovered(fs).flushed_lsn == 50


def test_term_is_persisted(fs):
    vs = VersionSet(fs, D)
    vs.create()
    vs.term = 7
    vs.log_and_apply({})
    vs.close()
    assert recovered(fs).term == 7


def test_new_manifest_when_the_current_one_is_too_big(fs, monkeypatch):
    monkeypatch.setattr(manifest, "MAX_MANIFEST", 300)
    vs = VersionSet(fs, D)
    vs.create()
    names = {current_manifest(fs)}
    for i in range(30):
        n = vs.new_file_number()
        vs.log_and_apply({"add": [add(0, fm(n, b"k%02d" % i, b"k%02d" % i, max_lsn=i + 1))],
                          "flushed_lsn": i + 1})
        names.add(current_manifest(fs))
    assert len(names) > 2, "a new manifest was started"
    assert [p for p in fs.listdir(D) if p.startswith("MANIFEST-")] == [os.path.basename(current_manifest(fs))]
    vs.close()
    vs2 = recovered(fs)
    assert vs2.current.levels == vs.current.levels
    assert len(vs2.current.levels[0]) == 30
    assert vs2.flushed_lsn == 30


# ---------------------------------------------------------------------- torn and damaged edits


def test_torn_last_edit_is_ignored(fs):
    vs = populated(fs)
    vs.close()
    path = current_manifest(fs)
    good = fs.read_bytes(path)
    fr = frames(fs, path)
    last = fr[-1]
    # The version as it was before the last edit.
    levels = [[] for _ in range(NUM_LEVELS)]
    for f in fr[:-1]:
        levels = apply_edit(levels, msgpack.unpackb(f.payload))
    for cut in range(last.offset + 1, len(good)):
        rewrite(fs, path, good[:cut])
        vs2 = VersionSet(fs, D)
        vs2.recover()
        assert vs2.current.levels == Version(levels).levels, cut
        assert vs2.flushed_lsn == 20, cut
        # recover() moved CURRENT to a new manifest; point it back for the next cut
        rewrite(fs, os.path.join(D, "CURRENT"), (os.path.basename(path) + "\n").encode())


@pytest.mark.parametrize("where", ["payload", "crc", "lsn"])
def test_damaged_last_edit_is_ignored(fs, where):
    vs = populated(fs)
    vs.close()
    path = current_manifest(fs)
    data = bytearray(fs.read_bytes(path))
    last = frames(fs, path)[-1]
    pos = {"payload": last.offset + 30, "crc": last.offset + 5, "lsn": last.offset + 8}[where]
    data[pos] ^= 0x01
    rewrite(fs, path, bytes(data))
    vs2 = recovered(fs)
    n = vs.numbers
    assert shape(vs2.current)[:3] == [[], [n[2], n[3]], []]
    assert vs2.flushed_lsn == 20


def test_damage_followed_by_a_valid_edit_is_corruption(fs):
    vs = populated(fs)
    vs.close()
    path = current_manifest(fs)
    fr = frames(fs, path)
    good = fs.read_bytes(path)
    for i in range(len(fr) - 1):  # every edit but the last, the first (snapshot) included
        data = bytearray(good)
        data[fr[i].offset + record.FRAME_HEADER_SIZE + 1] ^= 0x10
        rewrite(fs, path, bytes(data))
        with pytest.raises(Corruption) as ei:
            recovered(fs)
        assert (ei.value.path, ei.value.offset) == (path, fr[i].offset), i
        assert ei.value.reason == "frame checksum mismatch"
        assert current_manifest(fs) == path, "a failed recovery must not switch manifests"


def test_two_damaged_edits_before_a_valid_one_is_corruption(fs):
    # Only the last edit can be torn: a valid edit anywhere after the damage
    # means the damage is in the middle.
    vs = populated(fs)
    vs.close()
    path = current_manifest(fs)
    fr = frames(fs, path)
    data = bytearray(fs.read_bytes(path))
    data[fr[2].offset + record.FRAME_HEADER_SIZE] ^= 0x10
    data[fr[3].offset + record.FRAME_HEADER_SIZE] ^= 0x10
    rewrite(fs, path, bytes(data))
    with pytest.raises(Corruption) as ei:
        recovered(fs)
    assert (ei.value.path, ei.value.offset) == (path, fr[2].offset)


def test_damaged_length_of_a_middle_edit_is_corruption(fs):
    vs = populated(fs)
    vs.close()
    path = current_manifest(fs)
    fr = frames(fs, path)
    data = bytearray(fs.read_bytes(path))
    data[fr[1].offset] ^= 0x01  # length field: the next frame can no longer be located
    rewrite(fs, path, bytes(data))
    with pytest.raises(Corruption) as ei:
        recovered(fs)
    assert (ei.value.path, ei.value.offset) == (path, fr[1].offset)


@pytest.mark.parametrize("bad,reason", [
    (record.encode_frame(0, 0, record.TYPE_PUT, msgpack.packb([b"k", b"v"])), "frame type 1 in a manifest"),
    (record.encode_frame(0, 0, record.TYPE_EDIT, msgpack.packb([1, 2])), "undecodable edit: edit is not a map"),
])
def test_checksummed_frame_that_is_not_an_edit_is_corruption(fs, bad, reason):
    vs = populated(fs)
    vs.close()
    path = current_manifest(fs)
    fr = frames(fs, path)
    data = fs.read_bytes(path)
    at = fr[2].offset
    rewrite(fs, path, data[:at] + bad + data[at:])
    with pytest.raises(Corruption) as ei:
        recovered(fs)
    assert (ei.value.path, ei.value.offset, ei.value.reason) == (path, at, reason)


def test_damaged_first_edit_is_corruption_even_when_last(fs):
    vs = VersionSet(fs, D)
    vs.create()
    vs.close()
    path = current_manifest(fs)
    data = bytearray(fs.read_bytes(path))
    data[-1] ^= 0x01
    rewrite(fs, path, bytes(data))
    with pytest.raises(Corruption) as ei:
        recovered(fs)
    assert (ei.value.path, ei.value.offset, ei.value.reason) == (path, 0, "frame checksum mismatch")


def test_empty_manifest_is_corruption(fs):
    vs = VersionSet(fs, D)
    vs.create()
    vs.close()
    path = current_manifest(fs)
    rewrite(fs, path, b"")
    with pytest.raises(Corruption) as ei:
        recovered(fs)
    assert (ei.value.path, ei.value.offset) == (path, 0)


def test_current_naming_a_missing_manifest_is_corruption(fs):
    vs = populated(fs)
    vs.close()
    path = current_manifest(fs)
    fs.remove(path)
    with pytest.raises(Corruption) as ei:
        recovered(fs)
    assert (ei.value.path, ei.value.offset) == (os.path.join(D, "CURRENT"), 0)
    assert os.path.basename(path) in ei.value.reason


@pytest.mark.parametrize("content", [b"", b"\n", b"MANIFEST-\n", b"MANIFEST-12x\n", b"000003.sst\n",
                                     b"../MANIFEST-000001\n", b"\xff\xfe"])
def test_current_not_naming_a_manifest_is_corruption(fs, content):
    vs = populated(fs)
    vs.close()
    rewrite(fs, os.path.join(D, "CURRENT"), content)
    with pytest.raises(Corruption) as ei:
        recovered(fs)
    assert (ei.value.path, ei.value.offset) == (os.path.join(D, "CURRENT"), 0)


def test_current_without_newline_is_accepted(fs):
    vs = populated(fs)
    vs.close()
    path = current_manifest(fs)
    rewrite(fs, os.path.join(D, "CURRENT"), os.path.basename(path).encode())
    assert recovered(fs).current.levels == vs.current.levels


# ---------------------------------------------------------------------- failures


def test_failed_edit_write_installs_nothing(fs):
    ffs = FaultFS(fs)
    vs = VersionSet(ffs, D)
    vs.create()
    vs.log_and_apply({"add": [add(0, fm(vs.new_file_number(), b"a", b"b"))], "flushed_lsn": 5})
    before = vs.current
    for kind in ("write", "sync"):
        ffs.fail(kind, err=errno.EIO, once=True)
        with pytest.raises(OSError):
            vs.log_and_apply({"add": [add(0, fm(vs.new_file_number(), b"c", b"d"))], "flushed_lsn": 9})
        assert vs.current is before, kind
        assert vs.flushed_lsn == 5, kind


def test_failed_manifest_switch_installs_nothing(fs, monkeypatch):
    # Over MAX_MANIFEST, log_and_apply switches to a new manifest. If writing
    # it fails, nothing may be installed: an edit is installed only after it
    # is fsynced, or the in-memory version would hold an edit on disk nowhere.
    ffs = FaultFS(fs)
    vs = VersionSet(ffs, D)
    vs.create()
    vs.log_and_apply({"add": [add(0, fm(vs.new_file_number(), b"a", b"b"))], "flushed_lsn": 5})
    before = vs.current
    monkeypatch.setattr(manifest, "MAX_MANIFEST", 0)
    ffs.fail("create", err=errno.ENOSPC)
    with pytest.raises(OSError):
        vs.log_and_apply({"del": [[0, before.levels[0][0].number]], "flushed_lsn": 9})
    assert vs.flushed_lsn == 5
    assert vs.current is before


# ---------------------------------------------------------------------- versions


def test_apply_edit_orders_levels_and_leaves_input_alone():
    levels = [[] for _ in range(NUM_LEVELS)]
    edit = {"add": [add(0, fm(1, b"a", b"z", max_lsn=10)), add(0, fm(2, b"a", b"z", max_lsn=30)),
                    add(0, fm(3, b"a", b"z", max_lsn=20)), add(0, fm(4, b"a", b"z", max_lsn=30)),
                    add(1, fm(5, b"m", b"p")), add(1, fm(6, b"a", b"c")), add(1, fm(7, b"x", b"y"))]}
    new = apply_edit(levels, edit)
    assert levels == [[] for _ in range(NUM_LEVELS)]
    assert [f.number for f in new[0]] == [4, 2, 3, 1]  # newest first; number breaks ties
    assert [f.number for f in new[1]] == [6, 5, 7]
    newer = apply_edit(new, {"del": [[0, 2], [1, 5], [1, 99]], "add": [add(2, fm(2, b"a", b"z"))]})
    assert [f.number for f in new[0]] == [4, 2, 3, 1]
    assert [[f.number for f in lvl] for lvl in newer[:3]] == [[4, 3, 1], [6, 7], [2]]


def test_filemeta_wire_roundtrip():
    m = fm(12, b"lo", b"hi", size=4096, min_lsn=3, max_lsn=99, entries=7)
    assert FileMeta.from_wire(m.to_wire(4)) == (4, m)
    assert m.to_wire(4) == [4, 12, 4096, b"lo", b"hi", 7, 3, 99]


def version_l1(*ranges):
    levels = [[] for _ in range(NUM_LEVELS)]
    levels[1] = [fm(i + 1, lo, hi) for i, (lo, hi) in enumerate(ranges)]
    return Version(levels)


def test_version_find():
    v = version_l1((b"b", b"d"), (b"f", b"f"), (b"h", b"k"))
    expect = {b"a": None, b"b": 1, b"c": 1, b"d": 1, b"da": None, b"e": None, b"f": 2, b"fa": None,
              b"g": None, b"h": 3, b"j": 3, b"k": 3, b"ka": None, b"z": None, b"": None}
    for key, num in expect.items():
        got = v.find(1, key)
        assert (got.number if got else None) == num, key
    assert v.find(2, b"c") is None  # empty level


def test_version_overlapping_sorted_levels():
    v = version_l1((b"b", b"d"), (b"f", b"f"), (b"h", b"k"))
    cases = {
        (b"a", b"a"): [], (b"a", b"b"): [1], (b"c", b"c"): [1], (b"d", b"f"): [1, 2],
        (b"e", b"e"): [], (b"e", b"g"): [2], (b"a", b"z"): [1, 2, 3], (b"ka", b"z"): [],
        (b"k", b"k"): [3], (b"f", b"h"): [2, 3], (b"da", b"ez"): [],
    }
    for (lo, hi), nums in cases.items():
        assert [f.number for f in v.overlapping(1, lo, hi)] == nums, (lo, hi)


def test_version_overlapping_level0():
    levels = [[] for _ in range(NUM_LEVELS)]
    levels[0] = [fm(1, b"a", b"z", max_lsn=3), fm(2, b"m", b"p", max_lsn=2), fm(3, b"b", b"c", max_lsn=1)]
    v = Version(levels)
    assert [f.number for f in v.overlapping(0, b"d", b"e")] == [1]
    assert [f.number for f in v.overlapping(0, b"c", b"m")] == [1, 2, 3]
    assert [f.number for f in v.overlapping(0, b"0", b"1")] == []
    assert v.level_size(0) == 300
    assert [(lvl, f.number) for lvl, f in v.files()] == [(0, 1), (0, 2), (0, 3)]


def test_pinned_versions_keep_their_files_live(fs):
    vs = VersionSet(fs, D)
    vs.create()
    vs.log_and_apply({"add": [add(0, fm(10, b"a", b"b")), add(0, fm(11, b"c", b"d"))]})
    old = vs.ref(vs.current)
    vs.log_and_apply({"del": [[0, 10]]})
    assert vs.live_files() == {10, 11}
    vs.ref(old)
    vs.unref(old)
    assert vs.live_files() == {10, 11}
    vs.unref(old)
    assert vs.live_files() == {11}


def test_a_listed_table_that_is_missing_stops_recovery_and_deletes_nothing():
    m = MemFS()
    m.mkdir(D)
    m.sync_dir("/")
    vs = VersionSet(m, D)
    vs.create()
    n = vs.new_file_number()
    vs.log_and_apply({"add": [add(0, fm(n, b"a", b"b"))], "flushed_lsn": 5})
    before = sorted(m.listdir(D))
    with pytest.raises(Corruption, match="missing"):
        recovered(m)
    assert sorted(m.listdir(D)) == before, "a failed recovery must leave the files alone"
