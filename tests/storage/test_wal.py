"""Write-ahead log (storage/wal.py): recovery, torn tails, corruption, retention, reads.

Run on the strict MemFS and on the real file system (with preallocation, so
the zero-filled tail of a segment is exercised). Damage is made by rewriting
segment bytes in place, then recovery is asserted to stop exactly at the
damaged frame, naming the file and the offset.
"""

from __future__ import annotations

import os

import msgpack
import pytest

from strata.storage import record
from strata.storage.errors import Compacted, Corruption, StorageError
from strata.storage.filenames import parse_segment_name, segment_name
from strata.storage.vfs import MemFS, OsFS
from strata.storage.wal import Wal

H = record.HEADER_SIZE
FH = record.FRAME_HEADER_SIZE


@pytest.fixture(params=["mem", "os"])
def env(request, tmp_path):
    """(fs, dir, preallocate) for a fresh, empty log directory."""
    if request.param == "mem":
        fs = MemFS()
        fs.mkdir("/db")
        fs.sync_dir("/")
        return fs, "/db", 0
    d = tmp_path / "db"
    d.mkdir()
    return OsFS(), str(d), 4096


@pytest.fixture
def mem():
    fs = MemFS()
    fs.mkdir("/db")
    fs.sync_dir("/")
    return fs, "/db", 0


def put(lsn: int, term: int = 1, size: int = 8) -> bytes:
    return record.encode_frame(lsn, term, record.TYPE_PUT,
                               msgpack.packb([b"k%06d" % lsn, b"v" * size]))


def batch(lsn: int, nops: int, term: int = 1) -> bytes:
    ops = [[1, b"b%d" % (lsn + i), b"x"] for i in range(nops)]
    return record.encode_frame(lsn, term, record.TYPE_BATCH, msgpack.packb(ops))


def new_wal(env, **kw) -> Wal:
    fs, d, pre = env
    kw.setdefault("preallocate", pre)
    return Wal(fs, d, **kw)


def write_log(env, counts, *, term=1, **kw) -> Wal:
    """A fresh log with one segment per entry of `counts`, that many puts each.

    LSNs run 1, 2, ... across segments. The returned Wal is still open.
    """
    w = new_wal(env, **kw)
    assert w.recover(0).frames == []
    lsn = 1
    w.start(lsn)
    for i, n in enumerate(counts):
        if i:
            w.roll(lsn)
        for _ in range(n):
            w.append(put(lsn, term), lsn)
            lsn += 1
    w.sync()
    return w


def patch(fs, path, fn):
    """Replace the bytes of `path` with fn(bytearray(old)), durably."""
    data = bytearray(fs.read_bytes(path))
    new = bytes(fn(data))
    f = fs.create(path)
    f.write(new)
    f.sync()
    f.close()


def flip(pos, mask=0x01):
    def fn(b):
        b[pos] ^= mask
        return b
    return fn


def frame_offsets(fs, path):
    return [(f.offset, f.lsn) for f in record.iter_frames(fs.read_bytes(path), H)]


def lsns(frames):
    return [f.lsn for f in frames]


# ---------------------------------------------------------------------- names


def test_segment_names_sort_by_lsn_and_parse_back():
    assert segment_name(42) == "wal-00000000000000000042.log"
    assert parse_segment_name(segment_name(42)) == 42
    assert parse_segment_name(segment_name(10**19)) == 10**19
    for bad in ("wal-12.txt", "wal-abc.log", "xwal-1.log", "wal-.log", "MANIFEST-000001", "wal-1.log.tmp"):
        assert parse_segment_name(bad) is None, bad
    names = [segment_name(n) for n in (1, 9, 10, 100, 2)]
    assert [parse_segment_name(n) for n in sorted(names)] == [1, 2, 9, 10, 100]


def test_lsn_count_and_decode_ops():
    assert record.lsn_count(record.TYPE_PUT, msgpack.packb([b"k", b"v"])) == 1
    assert record.lsn_count(record.TYPE_DELETE, msgpack.packb(b"k")) == 1
    assert record.lsn_count(record.TYPE_EVENT, msgpack.packb([b"t", b"k", b"p"])) == 1
    assert record.lsn_count(record.TYPE_BATCH, msgpack.packb([[1, b"a", b"1"]] * 7)) == 7
    assert record.decode_ops(record.TYPE_PUT, 5, msgpack.packb([b"k", b"v"])) == [(5, b"k", b"v")]
    assert record.decode_ops(record.TYPE_DELETE, 6, msgpack.packb(b"k")) == [(6, b"k", None)]
    assert record.decode_ops(record.TYPE_BATCH, 7, msgpack.packb([[1, b"a", b"1"], [2, b"b", None]])) \
        == [(7, b"a", b"1"), (8, b"b", None)]
    assert record.decode_ops(record.TYPE_EVENT, 9, msgpack.packb([b"t", b"k", b"p"])) == []


def test_list_segments_ignores_other_files(env):
    fs, d, _ = env
    w = write_log(env, [2, 2])
    w.close()
    for name in ("CURRENT", "000001.sst", "wal-x.log", "wal-00000000000000000003.log.tmp"):
        f = fs.create(os.path.join(d, name))
        f.close()
    assert [lsn for lsn, _ in new_wal(env).list_segments()] == [1, 3]


# ---------------------------------------------------------------------- clean recovery


def test_recover_empty_directory(env):
    tail = new_wal(env).recover(0)
    assert (tail.frames, tail.last_lsn, tail.last_term, tail.truncated_bytes) == ([], 0, 0, 0)


def test_recover_after_clean_writes(env):
    w = write_log(env, [5, 5, 3], term=3)
    w.close()
    tail = new_wal(env).recover(0)
    assert lsns(tail.frames) == list(range(1, 14))
    assert (tail.last_lsn, tail.last_term, tail.truncated_bytes) == (13, 3, 0)
    for f in tail.frames:
        assert msgpack.unpackb(f.payload) == [b"k%06d" % f.lsn, b"v" * 8]
        assert bytes(f.raw) == put(f.lsn, 3)
    assert [lsn for lsn, _ in new_wal(env).list_segments()] == [1, 6, 11]


def test_recover_after_lsn_returns_only_newer_frames(env):
    w = write_log(env, [5, 5, 3])
    w.close()
    for after, first in ((0, 1), (3, 4), (5, 6), (7, 8), (12, 13), (13, None)):
        tail = new_wal(env).recover(after)
        assert lsns(tail.frames) == (list(range(first, 14)) if first else []), after
        assert tail.last_lsn == 13, after


def test_fully_flushed_segments_are_not_read(env):
    # Only the unflushed tail is read at open: damage in a segment whose every
    # LSN is at or below the flush point is not even seen.
    fs, d, _ = env
    w = write_log(env, [5, 5, 3])
    w.close()
    first_seg = w.segments()[0][1]
    patch(fs, first_seg, flip(H + FH + 2))
    tail = new_wal(env).recover(5)
    assert lsns(tail.frames) == list(range(6, 14))
    with pytest.raises(Corruption):
        new_wal(env).recover(4)


def test_recovered_wal_lists_every_segment_for_retention(env):
    w = write_log(env, [2, 2, 2])
    w.close()
    w2 = new_wal(env)
    w2.recover(4)
    assert [lsn for lsn, _ in w2.segments()] == [1, 3, 5]
    assert w2.earliest_lsn() == 1


def test_recovery_then_new_writes(env):
    w = write_log(env, [3])
    w.close()
    w2 = new_wal(env)
    tail = w2.recover(0)
    w2.start(tail.last_lsn + 1)
    for lsn in (4, 5):
        w2.append(put(lsn), lsn)
    w2.close()
    assert lsns(new_wal(env).recover(0).frames) == [1, 2, 3, 4, 5]


def test_newest_segment_with_only_a_header_is_reused(env):
    # A run that opened a segment and wrote nothing leaves a header-only file;
    # the next run starts a segment with the same first LSN.
    w = write_log(env, [3])
    w.roll(4)
    w.close()
    w2 = new_wal(env)
    tail = w2.recover(0)
    assert (lsns(tail.frames), tail.last_lsn) == ([1, 2, 3], 3)
    w2.start(4)
    assert [lsn for lsn, _ in w2.segments()] == [1, 4]
    w2.append(put(4), 4)
    w2.close()
    assert lsns(new_wal(env).recover(0).frames) == [1, 2, 3, 4]


def test_newest_segment_of_zeros_is_removed(env):
    # Crash between creating (preallocating) a segment and syncing its header.
    fs, d, pre = env
    w = write_log(env, [3])
    w.close()
    p = os.path.join(d, segment_name(4))
    f = fs.create(p, pre)
    if not pre:
        f.write(bytes(100))
    f.close()
    w2 = new_wal(env)
    tail = w2.recover(0)
    assert (lsns(tail.frames), tail.last_lsn) == ([1, 2, 3], 3)
    assert not fs.exists(p)


def test_segment_rolls_at_segment_size(mem):
    frame_len = len(put(1))
    w = new_wal(mem, segment_size=H + 3 * frame_len)
    w.recover(0)
    w.start(1)
    for lsn in range(1, 11):
        w.append(put(lsn), lsn)
    w.close()
    segs = w.segments()
    assert [lsn for lsn, _ in segs] == [1, 4, 7, 10]
    fs = mem[0]
    for first, path in segs:
        assert fs.size(path) <= H + 3 * frame_len
        assert frame_offsets(fs, path)[0] == (H, first)
    assert lsns(new_wal(mem).recover(0).frames) == list(range(1, 11))


def test_oversize_group_goes_into_an_empty_segment_without_rolling(mem):
    w = new_wal(mem, segment_size=100)
    w.recover(0)
    w.start(1)
    w.append(put(1, size=500), 1)  # bigger than a segment, but the segment is empty
    w.append(put(2), 2)  # does not fit: roll
    w.close()
    assert [lsn for lsn, _ in w.segments()] == [1, 2]


def test_roll_of_an_empty_segment_is_a_no_op(mem):
    w = new_wal(mem)
    w.recover(0)
    w.start(1)
    w.roll(1)
    w.roll(1)
    assert [lsn for lsn, _ in w.segments()] == [1]


# ---------------------------------------------------------------------- torn tail


def _torn_cut(kind):
    """How the last write was torn: the bytes of frame 6 that reached the disk."""
    frame = put(6)
    if kind == "header":
        return frame[:6]
    if kind == "payload":
        return frame[:FH + 3]
    if kind == "crc":  # complete length, bad checksum (sector of the payload lost)
        b = bytearray(frame)
        b[-1] ^= 0xFF
        return bytes(b)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["header", "payload", "crc"])
def test_torn_tail_is_truncated_and_later_writes_append_cleanly(env, kind):
    fs, d, _ = env
    w = write_log(env, [3, 5])
    newest = os.path.join(w.dir, segment_name(w.segments()[-1][0]))
    good_end = H + 5 * len(put(4))
    torn = _torn_cut(kind)
    assert torn[-1] != 0  # trailing zeros would read as the zero-fill
    w.append(torn, 6)
    w.close()

    w2 = new_wal(env)
    tail = w2.recover(0)
    # frames 1..3 in the sealed segment, 4..8 in the newest, then the torn one.
    assert lsns(tail.frames) == list(range(1, 9))
    assert tail.last_lsn == 8
    # The loss reported is the torn write itself, not the preallocated zeros.
    assert tail.truncated_bytes == len(torn)
    assert fs.size(newest) == good_end
    assert fs.read_bytes(newest)[good_end - len(put(8)):] == put(8)

    w2.start(9)
    for lsn in (9, 10):
        w2.append(put(lsn), lsn)
    w2.close()
    tail = new_wal(env).recover(0)
    assert lsns(tail.frames) == list(range(1, 11))
    assert tail.truncated_bytes == 0


def test_torn_tail_length_on_memfs_is_exactly_the_partial_frame(mem):
    w = write_log(mem, [4])
    w.append(put(5)[:17], 5)
    w.close()
    tail = new_wal(mem).recover(0)
    assert (tail.last_lsn, tail.truncated_bytes) == (4, 17)


def test_torn_first_frame_of_newest_segment(env):
    fs, d, _ = env
    w = write_log(env, [3])
    w.roll(4)
    w.append(put(4)[:FH + 1], 4)
    w.close()
    tail = new_wal(env).recover(0)
    assert (lsns(tail.frames), tail.last_lsn) == ([1, 2, 3], 3)
    assert fs.size(os.path.join(d, segment_name(4))) == H


def test_damage_within_one_group_of_the_end_of_newest_segment_is_a_torn_tail(env):
    # One commit group (<= record.MAX_GROUP_BYTES) is written by one write and
    # made durable by one fdatasync: a power cut can keep a later page of it and
    # lose an earlier one. Damage followed by valid frames within that reach
    # was never acknowledged, so it is truncated like a torn tail.
    fs, d, _ = env
    w = write_log(env, [3, 5])
    w.close()
    newest = os.path.join(w.dir, segment_name(w.segments()[-1][0]))
    offs = frame_offsets(fs, newest)
    off, lsn = offs[2]
    end = offs[-1][0] + len(put(8))
    patch(fs, newest, flip(off + FH + 1))
    tail = new_wal(env).recover(0)
    assert (lsns(tail.frames), tail.last_lsn) == ([1, 2, 3, 4, 5], 5)
    assert tail.truncated_bytes == end - off
    assert fs.size(newest) == off


def _synced_log(mem, terms):
    """One segment; each frame written as its own synced group (sync flag set)."""
    w = new_wal(mem)
    w.recover(0)
    w.start(1)
    for lsn, term in enumerate(terms, 1):
        w.append(record.mark_sync(put(lsn, term=term)), lsn)
    w.close()
    return w


def test_damage_followed_by_a_synced_group_and_more_is_corruption(mem):
    # A sync point after the damage, followed by more frames, proves the
    # damaged frame was fsynced (acknowledged) before later groups: corruption.
    fs, d, _ = mem
    w = _synced_log(mem, [1] * 6)
    seg = w.segments()[-1][1]
    off, _ = frame_offsets(fs, seg)[1]
    before = fs.size(seg)
    patch(fs, seg, flip(off + FH + 2))
    with pytest.raises(Corruption) as ei:
        new_wal(mem).recover(0)
    assert (ei.value.path, ei.value.offset, ei.value.reason) == (seg, off, "frame checksum mismatch")
    assert fs.size(seg) == before, "nothing may be truncated without repair"
    # repair cuts there
    tail = new_wal(mem).recover(0, repair=True)
    assert (lsns(tail.frames), tail.last_lsn) == ([1], 1)
    assert fs.size(seg) == off


def test_damage_in_the_last_group_is_a_torn_tail(mem):
    # Frames after the damage with no sync point, or a sync point only at the
    # very end, may be the torn last group: truncated, not corruption.
    fs, d, _ = mem
    w = new_wal(mem)
    w.recover(0)
    w.start(1)
    w.append(record.mark_sync(put(1)), 1)
    w.append(put(2) + put(3) + record.mark_sync(put(4)), 2)  # the last group
    w.close()
    seg = w.segments()[-1][1]
    off, _ = frame_offsets(fs, seg)[1]
    patch(fs, seg, flip(off + FH + 2))
    tail = new_wal(mem).recover(0)
    assert lsns(tail.frames) == [1]
    assert tail.truncated_bytes > 0


def test_damage_before_frames_of_a_newer_term_is_corruption(mem):
    # To tell damage from a torn tail, recovery searches past the damage for
    # a valid frame. Frames written after a term change count too.
    fs, d, _ = mem
    w = _synced_log(mem, [1, 1, 2, 2, 2, 300])
    seg = w.segments()[-1][1]
    off, _ = frame_offsets(fs, seg)[1]
    patch(fs, seg, flip(off + FH + 2))
    with pytest.raises(Corruption) as ei:
        new_wal(mem).recover(0)
    assert (ei.value.path, ei.value.offset) == (seg, off)


# ---------------------------------------------------------------------- sealed damage


@pytest.mark.parametrize("seg_idx,frame_idx", [(0, 0), (0, 4), (1, 1)])
def test_bit_flip_in_sealed_segment_raises_corruption_with_path_and_offset(env, seg_idx, frame_idx):
    fs, d, _ = env
    w = write_log(env, [5, 3, 2])
    w.close()
    sealed = w.segments()[seg_idx][1]
    off, lsn = frame_offsets(fs, sealed)[frame_idx]
    patch(fs, sealed, flip(off + FH + 4, 0x20))
    with pytest.raises(Corruption) as ei:
        new_wal(env).recover(0)
    e = ei.value
    assert (e.path, e.offset, e.reason) == (sealed, off, "frame checksum mismatch")
    assert sealed in str(e) and str(off) in str(e)
    assert isinstance(e, StorageError)


def test_damage_in_last_frame_of_sealed_segment_is_not_a_torn_tail(env):
    # A sealed segment was fsynced before the next one was started: a bad
    # last frame there is corruption even though nothing follows it.
    fs, d, _ = env
    w = write_log(env, [4, 2])
    w.close()
    sealed = w.segments()[0][1]
    off, _ = frame_offsets(fs, sealed)[-1]
    patch(fs, sealed, flip(off + FH))
    with pytest.raises(Corruption) as ei:
        new_wal(env).recover(0)
    assert (ei.value.path, ei.value.offset) == (sealed, off)


def test_truncated_sealed_segment_is_corruption(env):
    fs, d, _ = env
    w = write_log(env, [4, 2])
    w.close()
    sealed = w.segments()[0][1]
    off, _ = frame_offsets(fs, sealed)[-1]
    patch(fs, sealed, lambda b: b[: off + FH + 2])
    with pytest.raises(Corruption) as ei:
        new_wal(env).recover(0)
    assert (ei.value.path, ei.value.offset) == (sealed, off)
    assert "runs past the end" in ei.value.reason


@pytest.mark.parametrize("pos,reason", [(0, "bad magic"), (9, "header checksum mismatch")])
def test_bad_header_of_sealed_segment(env, pos, reason):
    fs, d, _ = env
    w = write_log(env, [2, 2])
    w.close()
    sealed = w.segments()[0][1]
    patch(fs, sealed, flip(pos))
    with pytest.raises(Corruption) as ei:
        new_wal(env).recover(0)
    assert (ei.value.path, ei.value.offset) == (sealed, 0)
    assert reason in ei.value.reason


def test_lsn_discontinuity_inside_a_sealed_segment_is_corruption(env):
    fs, d, _ = env
    w = new_wal(env)
    w.recover(0)
    w.start(1)
    for lsn in (1, 2, 3, 5, 6):
        w.append(put(lsn), lsn)
    w.roll(7)
    w.append(put(7), 7)
    w.close()
    seg = w.segments()[0][1]
    off = frame_offsets(fs, seg)[3][0]
    with pytest.raises(Corruption) as ei:
        new_wal(env).recover(0)
    assert (ei.value.path, ei.value.offset, ei.value.reason) == (seg, off, "LSN 5 where 4 was expected")


def test_first_frame_must_carry_the_segment_lsn(env):
    fs, d, _ = env
    w = write_log(env, [2, 2])
    w.close()
    sealed = w.segments()[0][1]
    patch(fs, sealed, lambda b: record.encode_header(1) + put(2) + put(3))  # named 1, starts at 2
    with pytest.raises(Corruption) as ei:
        new_wal(env).recover(0)
    assert (ei.value.path, ei.value.offset, ei.value.reason) == (sealed, H, "LSN 2 where 1 was expected")


@pytest.mark.parametrize("how", ["cut", "zeroed"])
def test_sealed_segment_that_ends_early_is_corruption(env, how):
    # The LSN chain runs across segments: a sealed segment whose frames stop
    # before the next segment's first LSN has lost acknowledged writes.
    fs, d, _ = env
    w = write_log(env, [3, 3])
    w.close()
    sealed = w.segments()[0][1]
    off3, lsn3 = frame_offsets(fs, sealed)[2]
    if how == "cut":
        patch(fs, sealed, lambda b: b[:off3])
    else:  # zeros at a frame boundary read as the end of the data
        patch(fs, sealed, lambda b: b[:off3] + bytes(len(b) - off3))
    with pytest.raises(Corruption) as ei:
        new_wal(env).recover(0)
    assert (ei.value.path, ei.value.offset) == (sealed, off3)


def test_segment_header_that_disagrees_with_its_name_is_corruption(env):
    fs, d, _ = env
    w = write_log(env, [3, 3])
    w.close()
    sealed = w.segments()[0][1]
    patch(fs, sealed, lambda b: record.encode_header(2) + b[H:])
    with pytest.raises(Corruption) as ei:
        new_wal(env).recover(0)
    assert (ei.value.path, ei.value.offset) == (sealed, 0)


def test_damaged_header_of_newest_segment_is_corruption_not_an_empty_segment(env):
    fs, d, _ = env
    w = write_log(env, [3, 3])
    w.close()
    newest = os.path.join(w.dir, segment_name(w.segments()[-1][0]))
    patch(fs, newest, flip(13))
    with pytest.raises(Corruption) as ei:
        new_wal(env).recover(0)
    assert (ei.value.path, ei.value.offset) == (newest, 0)
    assert fs.exists(newest)


def test_missing_middle_segment_is_detected(env):
    # The chain is checked across segments too: a lost segment of unflushed
    # frames must not be skipped with the frames after it replayed over the
    # hole (as the committed HEAD version did).
    fs, d, _ = env
    w = write_log(env, [3, 3, 3])
    w.close()
    fs.remove(w.segments()[1][1])  # LSNs 4..6, none flushed
    with pytest.raises(Corruption) as ei:
        new_wal(env).recover(0)
    assert ei.value.path == w.segments()[0][1]


# ---------------------------------------------------------------------- repair


@pytest.mark.parametrize("frame_idx", [0, 2])
def test_repair_cuts_the_log_at_sealed_damage(env, frame_idx):
    fs, d, _ = env
    w = write_log(env, [5, 3, 2])
    w.close()
    segs = w.segments()
    sealed = segs[1][1]
    off, lsn = frame_offsets(fs, sealed)[frame_idx]
    patch(fs, sealed, flip(off + FH + 4, 0x20))
    w2 = new_wal(env)
    tail = w2.recover(0, repair=True)
    assert lsns(tail.frames) == list(range(1, lsn))
    assert tail.last_lsn == lsn - 1
    assert fs.size(sealed) == off
    assert not fs.exists(segs[2][1]), "segments after the damage are dropped"
    assert [p for _, p in w2.segments()] == [segs[0][1], sealed]
    # The repaired log takes new writes and recovers cleanly.
    w2.start(lsn)
    w2.append(put(lsn), lsn)
    w2.close()
    tail = new_wal(env).recover(0)
    assert lsns(tail.frames) == list(range(1, lsn + 1))


def test_repair_drops_a_segment_with_a_bad_header_and_all_after(env):
    fs, d, _ = env
    w = write_log(env, [2, 2, 2])
    w.close()
    segs = w.segments()
    patch(fs, segs[1][1], flip(3))
    tail = new_wal(env).recover(0, repair=True)
    assert (lsns(tail.frames), tail.last_lsn) == ([1, 2], 2)
    assert [fs.exists(p) for _, p in segs] == [True, False, False]


def test_repair_of_mid_segment_damage_in_newest_segment(env):
    fs, d, _ = env
    w = write_log(env, [6])
    w.close()
    seg = w.segments()[0][1]
    off, lsn = frame_offsets(fs, seg)[2]
    patch(fs, seg, flip(off + FH))
    tail = new_wal(env).recover(0, repair=True)
    assert (lsns(tail.frames), tail.last_lsn) == ([1, 2], 2)
    assert fs.size(seg) == off


# ---------------------------------------------------------------------- batches


def test_batch_frame_consumes_one_lsn_per_op(env):
    fs, d, _ = env
    w = new_wal(env)
    w.recover(0)
    w.start(1)
    w.append(put(1), 1)
    w.append(batch(2, 3), 2)  # LSNs 2, 3, 4
    w.append(put(5), 5)
    w.append(batch(6, 2), 6)  # LSNs 6, 7
    w.close()
    tail = new_wal(env).recover(0)
    assert lsns(tail.frames) == [1, 2, 5, 6]
    assert tail.last_lsn == 7
    # A batch that straddles the flush point is replayed (the engine filters its ops).
    assert lsns(new_wal(env).recover(3).frames) == [2, 5, 6]
    assert lsns(new_wal(env).recover(4).frames) == [5, 6]
    assert lsns(new_wal(env).recover(6).frames) == [6]
    assert lsns(new_wal(env).recover(7).frames) == []


def test_frame_after_batch_with_too_small_lsn_is_corruption(env):
    fs, d, _ = env
    w = new_wal(env)
    w.recover(0)
    w.start(1)
    w.append(batch(1, 3), 1)
    w.append(put(2), 2)  # should have been 4
    w.append(put(3), 3)
    w.roll(4)
    w.append(put(4), 4)
    w.close()
    seg = w.segments()[0][1]
    off = frame_offsets(fs, seg)[1][0]
    with pytest.raises(Corruption) as ei:
        new_wal(env).recover(0)
    assert (ei.value.offset, ei.value.reason) == (off, "LSN 2 where 4 was expected")


def test_segment_after_a_batch_starts_past_all_its_lsns(mem):
    w = new_wal(mem)
    w.recover(0)
    w.start(1)
    w.append(batch(1, 4), 1)
    w.roll(5)
    w.append(put(5), 5)
    w.close()
    assert [lsn for lsn, _ in w.segments()] == [1, 5]
    tail = new_wal(mem).recover(0)
    assert (lsns(tail.frames), tail.last_lsn) == ([1, 5], 5)
    assert lsns(new_wal(mem).recover(4).frames) == [5]


# ---------------------------------------------------------------------- power cut (MemFS)


def test_synced_frames_survive_a_power_cut_and_unsynced_do_not(mem):
    fs = mem[0]
    w = write_log(mem, [2, 3])  # synced
    for lsn in (6, 7):
        w.append(put(lsn), lsn)  # written, never synced
    fs.reset_to_synced_state()
    tail = new_wal(mem).recover(0)
    assert (lsns(tail.frames), tail.last_lsn, tail.truncated_bytes) == ([1, 2, 3, 4, 5], 5, 0)


# ---------------------------------------------------------------------- purge / retention


def _sizes(fs, w):
    return [fs.size(p) for _, p in w.segments()]


def test_purge_respects_retention_bytes(mem):
    fs = mem[0]
    w = write_log(mem, [2, 2, 2, 2, 2])  # five equal segments; the last is open
    seg_size = _sizes(fs, w)[0]
    assert len(set(_sizes(fs, w))) == 1
    w.retention_bytes = 2 * seg_size
    removed = w.purge(10)
    segs = w.segments()
    assert [lsn for lsn, _ in segs] == [5, 7, 9]
    assert sorted(removed) == [os.path.join("/db", segment_name(n)) for n in (1, 3)]
    assert all(not fs.exists(p) for p in removed)
    assert w.earliest_lsn() == 5
    # Nothing more to do at the same flush point.
    assert w.purge(10) == []


def test_purge_keeps_segments_that_are_not_wholly_flushed(mem):
    w = write_log(mem, [2, 2, 2, 2])  # 1-2, 3-4, 5-6, 7-8 (open)
    w.retention_bytes = 0
    assert w.purge(3) == [os.path.join("/db", segment_name(1))]  # 3-4 holds LSN 4 > 3
    assert [lsn for lsn, _ in w.segments()] == [3, 5, 7]
    w.purge(6)
    assert [lsn for lsn, _ in w.segments()] == [7], "the open segment is never purged"
    w.purge(1000)
    assert [lsn for lsn, _ in w.segments()] == [7]


def test_purge_with_large_retention_removes_nothing(mem):
    w = write_log(mem, [2, 2, 2])
    assert w.purge(6) == []
    assert [lsn for lsn, _ in w.segments()] == [1, 3, 5]


def test_purge_keeps_young_segments_for_retention_age(env):
    # Segment ages come through the FileSystem seam, so retention_age_s
    # holds on every file system, MemFS included.
    w = write_log(env, [2, 2, 2])
    w.retention_bytes = 0
    w.retention_age_s = 3600.0
    assert w.purge(6) == []
    assert [lsn for lsn, _ in w.segments()] == [1, 3, 5]
    w.retention_age_s = 0.0
    assert len(w.purge(6)) == 2
    w.close()


def test_purge_removes_only_the_oldest_history(mem):
    # Retention keeps an unbroken run of the newest segments: a small old
    # segment must not survive a bigger, newer one that was deleted, or
    # read_from() would serve 1, 2 and jump to 5 without raising Compacted.
    fs = mem[0]
    w = new_wal(mem)
    w.recover(0)
    w.start(1)
    sizes = [10, 10, 1000, 1000, 10, 10, 10]
    for lsn, size in enumerate(sizes, 1):
        if lsn in (3, 5, 7):
            w.roll(lsn)
        w.append(put(lsn, size=size), lsn)
    w.sync()
    small, big, _ = _sizes(fs, w)[:3]
    assert big > 2 * small
    w.retention_bytes = 2 * small + 1  # fits the two small segments, not the big one
    w.purge(7)
    kept = [lsn for lsn, _ in w.segments()]
    got = lsns(w.read_from(w.earliest_lsn()))
    assert got == list(range(got[0], 8)), f"retained history {kept} has a hole: read_from gives {got}"


# ---------------------------------------------------------------------- read_from


def test_read_from_returns_frames_from_that_lsn(env):
    w = write_log(env, [3, 3, 3])  # last segment open
    assert lsns(w.read_from(1)) == list(range(1, 10))
    assert lsns(w.read_from(2)) == list(range(2, 10))
    assert lsns(w.read_from(4)) == list(range(4, 10))  # a segment boundary
    assert lsns(w.read_from(8)) == [8, 9]  # inside the open segment
    assert lsns(w.read_from(9)) == [9]
    assert lsns(w.read_from(10)) == []
    frames = list(w.read_from(5))
    assert [bytes(f.raw) for f in frames] == [put(n) for n in range(5, 10)]
    assert all(f.type == record.TYPE_PUT for f in frames)
    w.close()


def test_read_from_sees_appends_to_the_open_segment(env):
    w = write_log(env, [2])
    assert lsns(w.read_from(1)) == [1, 2]
    w.append(put(3), 3)
    w.sync()
    assert lsns(w.read_from(1)) == [1, 2, 3]
    w.close()


def test_read_from_includes_a_batch_that_spans_the_lsn(mem):
    w = new_wal(mem)
    w.recover(0)
    w.start(1)
    w.append(put(1), 1)
    w.append(batch(2, 3), 2)  # 2..4
    w.append(put(5), 5)
    assert lsns(w.read_from(3)) == [2, 5]
    assert lsns(w.read_from(4)) == [2, 5]
    assert lsns(w.read_from(5)) == [5]


def test_read_from_purged_history_raises_compacted(mem):
    w = write_log(mem, [2, 2, 2, 2])
    w.retention_bytes = 0
    w.purge(4)
    assert w.earliest_lsn() == 5
    for lsn in (1, 4):
        with pytest.raises(Compacted) as ei:
            list(w.read_from(lsn))
        assert (ei.value.requested_lsn, ei.value.earliest_lsn) == (lsn, 5)
    assert lsns(w.read_from(5)) == [5, 6, 7, 8]


def test_read_from_without_segments_is_empty(mem):
    w = new_wal(mem)
    w.recover(0)
    assert w.earliest_lsn() == 0
    assert list(w.read_from(1)) == []


def test_read_from_after_recovery_serves_flushed_history(env):
    w = write_log(env, [3, 3])
    w.close()
    w2 = new_wal(env)
    w2.recover(6)
    w2.start(7)
    w2.append(put(7), 7)
    assert lsns(w2.read_from(2)) == list(range(2, 8))
    w2.close()


def test_read_from_damaged_segment_raises_corruption(env):
    # Damage met while streaming is Corruption(path, offset) as at recovery,
    # not a bare record.BadFrame (which the committed HEAD version let escape).
    fs, d, _ = env
    w = write_log(env, [3, 3])
    sealed = w.segments()[0][1]
    off, _ = frame_offsets(fs, sealed)[1]
    patch(fs, sealed, flip(off + FH))
    with pytest.raises(Corruption) as ei:
        list(w.read_from(1))
    assert (ei.value.path, ei.value.offset) == (sealed, off)
    w.close()
