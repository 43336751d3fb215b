"""The event ring's writer and reader in one process: framing, wrap-around,
lapping, damage, truncation, the doorbell, stale rings."""

from __future__ import annotations

import os
import random
import struct
import threading
import time
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strata.distribution.ring import RingInUse, RingWriter, parse_rings
from strata_client.errors import Lapped
from strata_client.ring import (
    BLOCK_HEADER,
    FRAME_HEADER,
    HEADER_SIZE,
    INDEX_ENTRY,
    W_CLOSED,
    AsyncRingReader,
    RingClosed,
    RingCorrupt,
    RingEvent,
    RingReader,
    Segment,
)


def events(first: int, n: int, size: int = 100, topic: bytes = b"kv"):
    return [(lsn, 1000 + lsn, topic, b"key%06d" % lsn, bytes([lsn % 251]) * size)
            for lsn in range(first, first + n)]


def test_parse_rings():
    assert parse_rings("ev:1MiB; orders:64k:orders,pay ;x") == [
        ("ev", 1 << 20, None), ("orders", 64 << 10, frozenset({"orders", "pay"})),
        ("x", 64 << 20, None)]
    for bad in ("a:1k", "a/b:1M", "a:1M;a:2M", "a:zz"):
        with pytest.raises(ValueError):
            parse_rings(bad)


def test_frames_cross_the_wrap_point_many_times_in_order(name):
    w = RingWriter(name, 64 << 10)
    r = RingReader(name, wait="poll")
    rng = random.Random(7)
    lsn, seen = 1, []
    for _ in range(400):
        batch = [(lsn + i, 5, b"kv", b"k%d" % (lsn + i), os.urandom(rng.randrange(0, 700)))
                 for i in range(rng.randrange(1, 20))]
        w.publish(batch)
        lsn += len(batch)
        for ev in r.poll(10_000):
            seen.append((ev.lsn, bytes(ev.key), ev.topic, ev.ts_ns))
    assert [s[0] for s in seen] == list(range(1, lsn))
    assert all(k == b"k%d" % n and t == "kv" and ts == 5 for n, k, t, ts in seen)
    assert w._pos > 20 * w.capacity  # wrapped many times
    r.close()
    w.close()


def test_values_and_deletions_round_trip_zero_copy(name):
    w = RingWriter(name, 64 << 10)
    r = RingReader(name, wait="poll")
    w.publish([(1, 1, b"kv", b"a", b"one"), (2, 1, b"kv", b"b", None), (3, 1, b"news", b"", b"x")])
    got = r.poll()
    assert [(e.lsn, e.topic, bytes(e.key), e.value and bytes(e.value), e.deleted)
            for e in got] == [(1, "kv", b"a", b"one", False), (2, "kv", b"b", None, True),
                              (3, "news", b"", b"x", False)]
    assert isinstance(got[0].value, memoryview) and got[0].value.readonly is False
    assert r.still_valid()
    del got
    r.close()
    w.close()


def test_a_reader_a_whole_ring_behind_is_lapped_with_its_resume_lsn(name):
    w = RingWriter(name, 64 << 10)
    r = RingReader(name, wait="poll")
    w.publish(events(1, 10))
    assert [e.lsn for e in r.poll()] == list(range(1, 11))
    for first in range(11, 2000, 50):
        w.publish(events(first, 50))
    with pytest.raises(Lapped) as e:
        r.poll()
    assert e.value.resume_lsn == 11  # the first LSN it did not return: never a skip
    r.close()
    w.close()


def test_from_start_reads_the_oldest_intact_frame(name):
    w = RingWriter(name, 64 << 10)
    for first in range(1, 3000, 25):
        w.publish(events(first, 25))
    r = RingReader(name, wait="poll", from_start=True)
    got = r.poll(100_000)
    assert got[-1].lsn == 3000
    assert [e.lsn for e in got] == list(range(got[0].lsn, 3001))
    assert got[0].lsn > 1  # older frames were overwritten
    r.close()
    w.close()


def test_a_damaged_block_is_reported_not_returned(name):
    w = RingWriter(name, 64 << 10)
    r = RingReader(name, wait="poll")
    w.publish(events(1, 3))
    w._data[BLOCK_HEADER + 3 * INDEX_ENTRY + FRAME_HEADER + 3] ^= 0xFF  # the first key
    with pytest.raises(RingCorrupt):
        r.poll()
    r.close()
    w.close()


def test_an_event_larger_than_a_quarter_of_the_ring_is_marked_truncated(name):
    w = RingWriter(name, 64 << 10)
    r = RingReader(name, wait="poll")
    w.publish([(1, 0, b"kv", b"big", b"x" * (20 << 10)), (2, 0, b"kv", b"small", b"y")])
    a, b = r.poll()
    assert a.truncated and a.value is None and a.lsn == 1
    assert not b.truncated and bytes(b.value) == b"y"
    r.close()
    w.close()


def test_doorbell_wakes_a_sleeping_reader_quickly(name):
    w = RingWriter(name, 1 << 20)
    r = RingReader(name, wait="doorbell", spin_us=0)
    got = []
    t = threading.Thread(target=lambda: got.extend(r.read(timeout=10)))
    t.start()
    time.sleep(0.3)  # asleep on the doorbell by now
    assert w.readers == 1
    t0 = time.monotonic()
    w.publish(events(1, 1))
    t.join(5)
    assert [e.lsn for e in got] == [1]
    assert time.monotonic() - t0 < 0.04  # woken by the bell, not by the 50 ms safety net
    r.close()
    w.close()


def test_read_times_out_empty_and_closed_rings_raise(name):
    w = RingWriter(name, 64 << 10)
    r = RingReader(name, wait="poll")
    assert r.read(timeout=0.05) == []
    w.close()
    with pytest.raises(RingClosed):
        r.read(timeout=1)
    r.close()
    with pytest.raises(RingClosed):
        RingReader(name)


def test_async_reader(name):
    import asyncio

    w = RingWriter(name, 1 << 20)

    async def main():
        async with AsyncRingReader(name) as r:
            loop = asyncio.get_running_loop()
            loop.call_later(0.2, w.publish, events(1, 3))
            got = []
            async for ev in r:
                got.append(ev.lsn)
                if len(got) == 3:
                    break
            return got

    assert asyncio.run(main()) == [1, 2, 3]
    w.close()


def test_stale_ring_is_replaced_and_a_live_one_refused(name):
    # A ring whose writer died: a dead pid in the header.
    w = RingWriter(name, 64 << 10)
    r = RingReader(name, wait="poll")
    w._words[3] = 2 ** 22 + 12345  # W_PID: beyond pid_max, never alive
    w._bells.close()
    w2 = RingWriter(name, 64 << 10)
    assert r._words[W_CLOSED] == 1  # the old readers learn their ring is over
    with pytest.raises(RingClosed):
        r._check_writer()
    r.close()
    # A ring with a live writer (this process, seen from another "daemon") is refused.
    seg = Segment(name)
    words = seg.buf[:HEADER_SIZE].cast("Q")
    words[3] = os.getppid()
    words.release()
    seg.close()
    with pytest.raises(RingInUse):
        RingWriter(name, 64 << 10)
    w2.close()
    w._words.release()
    w._data.release()
    w._shm.close()


def test_poll_frames_is_the_same_stream_as_poll(name):
    from strata_client.ring import RingEvent

    w = RingWriter(name, 64 << 10)
    a = RingReader(name, wait="poll")
    b = RingReader(name, wait="poll")
    for first in range(1, 600, 30):
        w.publish(events(first, 30, size=37))
        slow = [(e.lsn, bytes(e.key), bytes(e.value)) for e in a.poll(1000)]
        fast = [RingEvent.parse(f) for _, f in b.read_frames(1000, timeout=1)]
        assert slow == [(e.lsn, bytes(e.key), bytes(e.value)) for e in fast]
        del fast
    a.close()
    b.close()
    w.close()


# -- the end of the data area ----------------------------------------------------------

def sized(lsn: int, block: int, topic: bytes = b"kv") -> tuple:
    """An event whose block, alone in it, is exactly `block` bytes (a multiple of 8, at
    least 80: block header and index entry 32, frame `block` - 32); beside others in a
    block it adds `block` - 16. Its value is a pattern of its LSN (so that an
    overwritten byte shows)."""
    key = b"k%07d" % lsn
    n = block - BLOCK_HEADER - INDEX_ENTRY - FRAME_HEADER - len(topic) - len(key)
    return (lsn, lsn, topic, key, pattern(lsn, n))


def pattern(lsn: int, n: int) -> bytes:
    return (lsn.to_bytes(8, "little") * (n // 8 + 1))[:n]


def check_published(w: RingWriter) -> None:
    """The writer's own positions agree with the header: nothing reserved but unwritten."""
    from strata_client.ring import W_RESERVE, W_WRITE

    assert w._words[W_WRITE] == w._words[W_RESERVE] == w._pos


def layout(w: RingWriter, p: int, q: int) -> list[tuple]:
    """What the writer put in [p, q): ("block", position, size, count) and ("wrap", position)."""
    cap, out = w.capacity, []
    while p < q:
        off = p % cap
        if cap - off < BLOCK_HEADER:
            out.append(("wrap", p))
            p += cap - off
            continue
        size, count = struct.unpack_from("<II", w._data, off)
        if size == 0xFFFFFFFF:
            out.append(("wrap", p))
            p += cap - off
            continue
        assert off + size <= cap, "a block across the end of the data area"
        out.append(("block", p, size, count))
        p += size
    assert p == q
    return out


def test_a_block_ending_at_the_end_of_the_data_area_then_more_of_the_same_commit(name):
    """16384 * 3, then a commit of [16384, small] on a 64 KiB ring: the fourth event's
    block ends exactly at the end of the data area and the fifth starts a block at
    offset 0. (With version 1's frames the fourth was copied past the end: ValueError
    in the commit listener, and LSNs 4, 5 lost.)"""
    cap = 64 << 10
    w = RingWriter(name, cap)
    r = RingReader(name, wait="poll")
    got = []
    for commit in ([sized(1, 16384)], [sized(2, 16384)], [sized(3, 16384)],
                   [sized(4, 16384), sized(5, 128)], [sized(6, 128)]):
        before = w._pos
        w.publish(commit)
        check_published(w)
        if commit[0][0] == 4:
            assert layout(w, before, w._pos) == [("block", 3 * 16384, 16384, 1),
                                                 ("block", cap, 128, 1)]
        got += [(e.lsn, bytes(e.value)) for e in r.poll(100)]
    assert [lsn for lsn, _ in got] == [1, 2, 3, 4, 5, 6]
    assert all(v == sized(lsn, len(v) + 74)[4] for lsn, v in got)
    assert w._pos == cap + 256
    r.close()
    w.close()


@pytest.mark.parametrize("block", [128, 512, 4096, 8192, 16384])
@pytest.mark.parametrize("per_commit", [2, 3, 5, 7])
def test_equal_blocks_that_divide_the_ring_and_commits_of_several_across_its_end(
        name, block, per_commit):
    """One-event blocks of a size that divides the ring end exactly at its end; on
    each of three laps a commit of several events comes when one block's room is
    left: its first block ends exactly at the end, the rest of it starts at offset
    0. (Version 1's frames stopped the ring from publishing for good there.)"""
    cap = 64 << 10
    per_commit = min(per_commit, cap // 2 // block)  # read after each: never lapped
    w = RingWriter(name, cap)
    r = RingReader(name, wait="poll")
    lsn, seen, want = 1, [], []

    def publish(evs: list[tuple]) -> None:
        nonlocal lsn
        w.publish(evs)
        check_published(w)
        want.extend(e[0] for e in evs)
        seen.extend(e.lsn for e in r.poll(10_000) if bytes(e.value) == dict(
            (x[0], x[4]) for x in evs).get(e.lsn))
        lsn += len(evs)

    for _ in range(3):
        while cap - w._pos % cap > block:
            publish([sized(lsn, block)])
        assert cap - w._pos % cap == block
        before = w._pos
        publish([sized(x, block) for x in range(lsn, lsn + per_commit)])
        first, second = layout(w, before, w._pos)
        assert first == ("block", before, block, 1) and (before + block) % cap == 0
        assert second == ("block", before + block, 16 + (per_commit - 1) * (block - 16),
                          per_commit - 1)
        gap = -w._pos % block  # back to a multiple of `block` for the next lap
        if gap:
            publish([sized(lsn, gap if gap >= 80 else gap + block)])
    assert seen == want == list(range(1, lsn))
    r.close()
    w.close()


@pytest.mark.parametrize("left", [8, 16, 24, 32, 40, 56, 64, 4096, 4104, 4112, 4120, 8208])
def test_commits_straddling_the_end(name, left):
    """A commit of four events (4 KiB each in a block) starting `left` bytes before the
    end of the data area: the events that fit in a block there (4112: one, exactly;
    8208: two), then a wrap (explicit from 16 bytes, implicit below) unless that
    block ended exactly at the end, and the rest in a block from offset 0, in order."""
    cap = 64 << 10
    w = RingWriter(name, cap)
    r = RingReader(name, wait="poll")
    fill = cap - left
    lsn, seen = 1, []
    while fill:  # blocks up to `left` bytes before the end, at most a quarter each
        size = min(fill, 16384)
        if fill - size and fill - size < 80:
            size -= 128
        w.publish([sized(lsn, size)])
        fill -= size
        lsn += 1
        seen += [e.lsn for e in r.poll(100)]
    assert w._pos == cap - left
    w.publish([sized(x, 4112) for x in range(lsn, lsn + 4)])
    check_published(w)
    got = r.poll(100)
    assert [e.lsn for e in got] == list(range(lsn, lsn + 4))
    assert all(bytes(e.value) == sized(e.lsn, 4112)[4] for e in got)
    assert seen == list(range(1, lsn))
    fits = max(0, (left - 16) // 4096)  # events in a block before the end; the rest at 0
    want = [("block", cap - left, 16 + fits * 4096, fits)] if fits else []
    if left - 16 - fits * 4096 != 0 or not fits:
        want.append(("wrap", cap - left + (16 + fits * 4096 if fits else 0)))
    want.append(("block", cap, 16 + (4 - fits) * 4096, 4 - fits))
    assert layout(w, cap - left, w._pos) == want
    del got
    r.close()
    w.close()


# -- block checksums ------------------------------------------------------------------

def reader_with(name: str, checksum: str) -> RingReader:
    """A reader that checks a block's CRC-32C (as where the crc32c module is installed)
    or its CRC-32 (as with nothing but the standard library)."""
    import crc32c

    r = RingReader(name, wait="poll")
    r._crc_fn = crc32c.crc32c if checksum == "crc32c" else zlib.crc32
    return r


@pytest.mark.parametrize("checksum", ["crc32c", "crc32"])
def test_a_changed_byte_anywhere_in_a_batch_is_detected(name, checksum):
    """A batch of two blocks around the end of the data area (block, wrap, block). Each
    byte a reader reads, changed in one bit or in all eight: RingCorrupt, nothing
    returned, the reader where it was; restored, the batch reads whole. The other
    checksum's four bytes are the only ones not read (changing them changes nothing)."""
    cap = 64 << 10
    w = RingWriter(name, cap)
    r = reader_with(name, checksum)
    w.publish([sized(x, 16384) for x in (1, 2, 3)])
    w.publish([sized(4, 16384 - 512)])
    r.poll(100)
    evs = [(x, x, b"kv", b"key%d" % x, None if x == 7 else pattern(x, 100 + 37 * x))
           for x in range(5, 12)]
    start = w._pos
    w.publish(evs)
    parts = layout(w, start, w._pos)
    assert [p[0] for p in parts] == ["block", "wrap", "block"], parts
    unread = 0 if checksum == "crc32c" else 4  # where the checksum not read is, after 8
    read: list[int] = []
    for part in parts:
        if part[0] == "wrap":
            read += range(part[1], part[1] + 4)
        else:
            read += [p for p in range(part[1], part[1] + part[2])
                     if not 8 + unread <= p - part[1] < 12 + unread]
    data = w._data
    for p in read:
        off = p % cap
        for flip in (1 << p % 8, 0xFF):
            data[off] ^= flip
            with pytest.raises(RingCorrupt):
                r.poll_frames(1000)
            data[off] ^= flip
            assert r.pos == start
    for part in parts:  # the checksum not read
        if part[0] == "block":
            for off in range(part[1] % cap + 8 + unread, part[1] % cap + 12 + unread):
                data[off] ^= 0xFF
    got = [(e.lsn, bytes(e.key), e.value and bytes(e.value)) for e in r.poll(1000)]
    assert got == [(x, k, v) for x, _, _, k, v in evs]
    r.close()
    w.close()


def capture(w: RingWriter, evs: list[tuple]) -> tuple[int, int, list[tuple[int, bytes]]]:
    """What publish(evs) would copy, as (start, end, [(position, bytes)]), not copied."""
    batches = []
    w._commit = lambda start, end, blocks, last: batches.append((start, end, blocks))
    try:
        w.publish(evs)
    finally:
        del w._commit
    (start, end, blocks), = batches
    return start, end, [(at, b"".join(pieces)) for at, pieces in blocks]


def copy_torn(w: RingWriter, blocks: list[tuple[int, bytes]], cut: int) -> None:
    """Copy the first `cut` bytes of the blocks, as a writer stopped partway would."""
    for at, b in blocks:
        n = min(cut, len(b))
        off = at % w.capacity
        w._data[off:off + n] = b[:n]
        cut -= n


@pytest.mark.parametrize("checksum", ["crc32c", "crc32"])
def test_a_torn_batch_whose_write_pos_was_seen_is_never_returned(name, checksum):
    """write_pos published over a batch only partly copied (a writer whose stores became
    visible out of order, or one that died mid-copy): the bytes not yet copied are
    the previous lap's or zeros. For every cut, the poll raises RingCorrupt and
    returns nothing; once the copy completes, the batch reads whole."""
    from strata_client.ring import W_RESERVE, W_WRITE

    cap = 256 << 10
    w = RingWriter(name, cap)
    r = reader_with(name, checksum)
    stale = events(1, 2000, size=100)  # a lap and more: every byte holds an older frame
    for i in range(0, 2000, 40):
        w.publish(stale[i:i + 40])
    r.close()
    r = reader_with(name, checksum)
    evs = events(1001, 1100, size=20)  # two blocks (MAX_BLOCK_FRAMES = 1024) in one batch
    start, end, blocks = capture(w, evs)
    assert len(blocks) == 2
    total = sum(len(b) for _, b in blocks)
    for cut in [*range(0, 512, 8), *range(512, total, 997), total - 8]:
        for at, b in blocks:  # what the ring held before this batch
            w._data[at % cap:at % cap + len(b)] = bytes(len(b)) if cut % 16 else \
                bytes(w._data[(at - 4096) % cap:(at - 4096) % cap + len(b)])
        copy_torn(w, blocks, cut)
        w._words[W_RESERVE] = w._words[W_WRITE] = end
        with pytest.raises(RingCorrupt):
            r.poll_frames(2000)
        assert r.pos == start
    copy_torn(w, blocks, total)
    w._pos = end
    got = []
    while len(got) < len(evs):
        got += [(e.lsn, bytes(e.value)) for e in r.poll(700)]
    assert got == [(e[0], e[4]) for e in evs]
    r.close()
    w.close()


def test_a_batch_torn_by_the_writer_lapping_the_reader_raises_lapped(name):
    """The writer, a lap ahead, is partway through copying a batch over frames the
    reader has not read yet (reserve_pos stored, write_pos not): whatever the cut,
    the reader raises Lapped with the first LSN it did not return."""
    from strata_client.ring import W_RESERVE

    cap = 64 << 10
    w = RingWriter(name, cap)
    r = RingReader(name, wait="poll")
    w.publish(events(1, 10))
    assert len(r.poll()) == 10
    lsn = 11
    while w._pos + 2000 < r.pos + cap:  # fill the ring up to just before the reader
        w.publish(events(lsn, 5, size=150))
        lsn += 5
    start, end, blocks = capture(w, events(lsn, 40, size=150))
    assert end - cap > r.pos  # this batch overwrites what the reader has not read
    for cut in range(0, sum(len(b) for _, b in blocks), 512):
        w._words[W_RESERVE] = end
        copy_torn(w, blocks, cut)
        with pytest.raises(Lapped) as e:
            r.poll(1000)
        assert e.value.resume_lsn == 11
    r.close()
    w.close()


def test_polls_that_stop_inside_a_block_resume_where_they_stopped(name):
    w = RingWriter(name, 64 << 10)
    r = RingReader(name, wait="poll")
    w.publish(events(1, 10))
    w.publish(events(11, 10))
    got = []
    for n in (3, 3, 3, 2, 4, 100):
        evs = r.poll(n)
        assert len(evs) == min(n, 20 - len(got))
        got += [(e.lsn, bytes(e.key)) for e in evs]
    assert got == [(x, b"key%06d" % x) for x in range(1, 21)]
    w.publish(events(21, 10))
    assert [e.lsn for e in r.poll(4)] == [21, 22, 23, 24]
    for first in range(31, 2000, 50):  # lapped while inside a block
        w.publish(events(first, 50))
    with pytest.raises(Lapped) as e:
        r.poll(4)
    assert e.value.resume_lsn == 25
    r.close()
    w.close()


def test_a_reader_refuses_a_ring_of_another_version(name):
    from strata_client.ring import VERSION, W_VERSION, RingVersionMismatch

    w = RingWriter(name, 64 << 10)
    assert w._words[W_VERSION] == VERSION == 2  # a version-1 reader refuses it (RingClosed)
    w._words[W_VERSION] = 1
    with pytest.raises(RingVersionMismatch) as e:
        RingReader(name)
    assert isinstance(e.value, RingClosed) and e.value.version == 1
    assert "version 1" in str(e.value) and "version 2" in str(e.value)
    w._words[W_VERSION] = VERSION
    w.close()


# -- still_valid() ---------------------------------------------------------------------

def test_still_valid_is_false_once_the_first_view_of_the_batch_is_overwritten(name):
    """Views of frames [a, b): the writer overwrites from a. It used to compare with
    b, the end of the batch, and said True for views already overwritten."""
    cap = 64 << 10
    w = RingWriter(name, cap)
    r = RingReader(name, wait="poll")
    w.publish([sized(1, 8192)])
    r.poll()
    w.publish([sized(2, 8192), sized(3, 8192)])  # the batch [8 KiB, 24 KiB)
    views = r.poll()
    assert [e.lsn for e in views] == [2, 3] and r.still_valid()
    w.publish([sized(x, 8192) for x in (4, 5, 6)])
    w.publish([sized(x, 8192) for x in (7, 8, 9, 10)])  # to 80 KiB: over 2, not over 3
    assert bytes(views[0].value) != sized(2, 8192)[4]
    assert bytes(views[1].value) == sized(3, 8192)[4]
    assert not r.still_valid()
    del views
    r.close()
    w.close()


def test_still_valid_speaks_of_the_last_poll_that_returned_events(name):
    w = RingWriter(name, 64 << 10)
    r = RingReader(name, wait="poll")
    w.publish([sized(1, 8192)])
    views = r.poll()
    assert r.poll() == []  # an empty poll returns no views: those of the last stay watched
    for x in range(2, 9):
        w.publish([sized(x, 8192)])
    assert r.still_valid()  # 1 is intact: the writer stopped just before it
    w.publish([sized(9, 128)])
    assert not r.still_valid()
    del views
    r.close()
    w.close()


# -- a model reader against random frames and commits ------------------------------------

@st.composite
def steps(draw):
    """Commits of random frames (sizes that end at the end of the ring often, sizes
    over a quarter of the ring sometimes), polls of random length, still_valid()
    checks and attaches, in random order."""
    # One-event blocks of 128, 512, 4096, 8192, 16384 bytes divide the ring: in an
    # example of those alone, blocks end exactly at its end again and again.
    exact = st.sampled_from([54, 438, 4022, 8118, 16310]).map(lambda n: ("exact", n))
    if draw(st.booleans()):
        value = exact
    else:
        value = st.one_of(
            exact,
            st.just(("exact", 6)),  # an 80-byte block: the smallest
            st.integers(0, 3000).map(lambda n: ("any", n)),
            st.integers(16343, 20000).map(lambda n: ("any", n)),  # truncated
            st.just(("delete", 0)))
    commit = st.lists(value, min_size=1, max_size=8).map(lambda c: ("commit", c))
    step = st.one_of(
        commit, commit, commit, commit,  # several commits between polls: the ring wraps
        st.tuples(st.just("poll"), st.sampled_from([1, 2, 5, 1000]), st.booleans()),
        st.just(("check",)),
        st.tuples(st.just("attach"), st.booleans()))
    return draw(st.lists(step, min_size=1, max_size=80))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=steps())
def test_model_no_silent_gap_and_no_bad_byte_behind_still_valid(script):
    """Every LSN published after the attach is returned, in order, or covered by a
    Lapped whose resume_lsn is the first LSN not returned (then the reader attaches
    again: from_start, or at the live end, as a client resuming through the
    historical tier would). A view still_valid() vouches for holds the bytes written."""
    name = f"strata-model-{os.getpid()}-{random.randrange(1 << 30)}"
    cap = 64 << 10
    w = RingWriter(name, cap)
    r = RingReader(name, wait="poll")
    try:
        lsn = 0  # the last LSN published
        nxt = 1  # the next LSN the reader owes us
        written: dict[int, tuple] = {}
        views: list = []  # (lsn, topic view, key view, value view or None)

        def attach(from_start: bool) -> None:
            nonlocal r, nxt, views
            views = []
            r.close()
            r = RingReader(name, wait="poll", from_start=from_start)
            if not from_start:
                assert r.last_lsn == lsn  # one thread: nothing is in flight
            # History from the resume LSN up to r.last_lsn covers what is in between.
            assert r.last_lsn < nxt or r.last_lsn <= lsn
            nxt = r.last_lsn + 1

        def poll(n: int, frames: bool) -> None:
            nonlocal nxt, views
            try:
                if frames:
                    got = [RingEvent.parse(f) for _, f in r.poll_frames(n)]
                else:
                    got = r.poll(n)
            except Lapped as e:
                assert e.resume_lsn == nxt  # never past an event not returned
                attach(random.random() < 0.5)
                return
            for ev in got:
                assert ev.lsn == nxt, "a silent gap (or a repeat)"
                nxt += 1
                topic, key, value = written[ev.lsn]
                assert bytes(ev.topic_bytes) == topic
                if ev.truncated:
                    assert FRAME_HEADER + len(topic) + len(key) + len(value or b"") > cap // 4
                    assert ev.value is None and bytes(ev.key) == b""
                else:
                    assert bytes(ev.key) == key
                    assert (None if ev.value is None else bytes(ev.value)) == value
            if got:
                assert r.still_valid()
                views = [(ev.lsn, ev.topic_bytes, ev.key, ev.value) for ev in got]

        def check() -> None:
            """Use the views (copy them), then ask still_valid() whether that was safe."""
            copies = [(bytes(t), bytes(k), None if v is None else bytes(v))
                      for _, t, k, v in views]
            if r.still_valid():
                for (n, *_), (t, k, v) in zip(views, copies, strict=True):
                    want = written[n]
                    assert t == want[0], "a bad topic passed as valid"
                    if k or v is not None:  # not truncated
                        assert (k, v) == want[1:], "a bad value passed as valid"

        for step in script:
            if step[0] == "commit":
                evs = []
                for kind, n in step[1]:
                    lsn += 1
                    if kind == "exact":  # alone, a block of exactly 64 + 10 + n bytes
                        topic, key, value = b"kv", b"k%07d" % (lsn % 10**7), pattern(lsn, n)
                    else:
                        topic, key = b"t", b"key-%d" % lsn
                        value = None if kind == "delete" else pattern(lsn, n)
                    written[lsn] = (topic, key, value)
                    evs.append((lsn, lsn, topic, key, value))
                w.publish(evs)
                check_published(w)
            elif step[0] == "poll":
                poll(step[1], step[2])
                check()
            elif step[0] == "check":
                check()
            else:
                attach(step[1])
        while nxt <= lsn:  # drain: every LSN is returned or covered by a Lapped
            before = nxt
            poll(1000, False)
            assert nxt > before or r.last_lsn >= lsn
        assert nxt == lsn + 1
    finally:
        views = []
        r.close()
        w.close()


STRESS_READER = r"""
import json, random, sys, time
from strata_client.errors import Lapped
from strata_client.ring import RingReader
name, secs = sys.argv[1], float(sys.argv[2])
rng = random.Random(1)
r = RingReader(name, wait="poll")
nxt, exact = None, False  # at the live end the first LSN is not known in advance
st = dict(read=0, lapped=0, gaps=0, repeats=0, vouched=0, bad=0)
print("ready", flush=True)
end = time.monotonic() + secs
while time.monotonic() < end:
    try:
        evs = r.poll(rng.choice((1, 4, 64, 1024)))
    except Lapped as e:
        st["lapped"] += 1
        st["gaps"] += nxt is not None and e.resume_lsn != nxt
        evs = None
        r.close()
        r = RingReader(name, wait="poll", from_start=True)  # history up to r.last_lsn
        nxt = r.last_lsn + 1
        continue
    for ev in evs:
        if nxt is not None and ev.lsn != nxt:
            st["gaps" if ev.lsn > nxt else "repeats"] += 1
        nxt = ev.lsn + 1
    st["read"] += len(evs)
    if evs and rng.random() < 0.5:
        time.sleep(rng.choice((0, 1e-5, 1e-4, 1e-3)))  # the writer runs meanwhile
        copies = [(ev.lsn, bytes(ev.value)) for ev in evs if ev.value is not None]
        if r.still_valid():
            st["vouched"] += 1
            st["bad"] += any(v != (n.to_bytes(8, "little") * (len(v) // 8 + 1))[:len(v)]
                             for n, v in copies)
    evs = None
r.close()
print(json.dumps(st), flush=True)
"""


@pytest.mark.parametrize("shape", ["random", "dividing"])
def test_a_reader_process_beside_a_writer_sees_no_gap_and_no_bad_byte(name, shape):
    """The writer here, a reader in another process (real concurrency, its polls and
    the writer's copies interleaved at any byte): 3 s of commits into a 64 KiB ring,
    the reader lapped thousands of times. Before the writer and still_valid() fixes
    this saw silent gaps and about one bad value in ten vouched for."""
    import json
    import subprocess
    import sys

    w = RingWriter(name, 64 << 10)
    p = subprocess.Popen([sys.executable, "-c", STRESS_READER, name, "3"],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        rng = random.Random(2)
        lsn = 1
        while p.poll() is None:
            if shape == "random":
                sizes = [rng.choice((rng.randrange(0, 300), rng.randrange(0, 5000), 16310))
                         for _ in range(rng.randrange(1, 8))]
            else:  # one-event blocks that divide the ring
                sizes = [rng.choice((438, 4022))]
            w.publish([sized(x, 74 + n) if n in (438, 4022, 16310)
                       else (x, 0, b"kv", b"k%07d" % x, pattern(x, n))
                       for x, n in zip(range(lsn, lsn + len(sizes)), sizes, strict=True)])
            lsn += len(sizes)
            if rng.random() < 0.01:
                time.sleep(0.001)  # let the reader catch up now and then
        out = json.loads(p.stdout.readline())
    finally:
        p.kill()
        p.wait()
        w.close()
    assert out["read"] > 1000 and out["vouched"] > 10, out
    assert (out["gaps"], out["repeats"], out["bad"]) == (0, 0, 0), out


STDLIB_ONLY_READER = r"""
import sys

class OnlyTheStandardLibrary:
    # Any import outside the standard library and strata_client fails, as it would
    # where only strata_client is installed (pip install --no-deps): grpc, protobuf...
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in sys.stdlib_module_names and top != "strata_client":
            raise ImportError(f"{name} is not installed here")
        return None

sys.meta_path.insert(0, OnlyTheStandardLibrary())
for m in [m for m in sys.modules if m.partition(".")[0] not in sys.stdlib_module_names]:
    del sys.modules[m]  # whatever site-packages' .pth files loaded
try:
    import grpc  # noqa: F401
    raise SystemExit("grpc is importable")
except ImportError:
    pass

from strata_client.errors import Lapped, StrataError
from strata_client.ring import RingReader

r = RingReader(sys.argv[1], wait="poll", from_start=True)
import zlib
assert r._crc_fn is zlib.crc32  # no crc32c module here: each block's CRC-32 is checked
print([e.lsn for e in r.read(1000, timeout=5)], flush=True)
sys.stdin.readline()  # the writer laps us meanwhile
try:
    r.read(timeout=5)
    print("not lapped", flush=True)
except Lapped as e:
    assert isinstance(e, StrataError)
    print("lapped", e.resume_lsn, flush=True)
r.close()
outside = sorted({m.partition(".")[0] for m in sys.modules} - set(sys.stdlib_module_names))
print(outside, flush=True)
"""


def test_the_ring_reader_runs_with_nothing_but_the_standard_library(name):
    """strata_client.ring (and the errors it raises, Lapped with resume_lsn) imports
    nothing outside the standard library: grpc and protobuf made unimportable."""
    import subprocess
    import sys

    w = RingWriter(name, 64 << 10)
    w.publish(events(1, 10))
    p = subprocess.Popen([sys.executable, "-c", STDLIB_ONLY_READER, name], text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline().strip() == str(list(range(1, 11))), p.stderr.read()
        for first in range(11, 2000, 50):
            w.publish(events(first, 50))
        out, err = p.communicate("go\n", timeout=30)
    finally:
        p.kill()
        p.wait()
        w.close()
    assert p.returncode == 0, err
    assert out.splitlines() == ["lapped 11", "['strata_client']"]


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o644])
def test_the_ring_file_and_its_doorbell_get_the_configured_mode(name, mode):
    """Exactly `mode`, whatever the umask: the permissions are a ring's only protection."""
    import stat

    from strata_client.ring import doorbell_path

    old = os.umask(0o077)
    try:
        w = RingWriter(name, 64 << 10, mode=mode)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(f"/dev/shm/{name}").st_mode) == mode
        assert stat.S_IMODE(os.stat(doorbell_path(name)).st_mode) == mode
    finally:
        w.close()
