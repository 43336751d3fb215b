"""The event ring's reader against damaged rings: header words, block headers and
indexes that are wrong (with checksums that match, or with verify=False) raise
RingClosed or RingCorrupt, and nothing is returned."""

from __future__ import annotations

import os
import struct
import tracemalloc
import zlib

import pytest
from crc32c import crc32c

from strata.distribution.ring import RingWriter
from strata_client.ring import (
    BLOCK_HEADER,
    FRAME_HEADER,
    HEADER_SIZE,
    INDEX_ENTRY,
    MAX_BLOCK_FRAMES,
    MIN_CAPACITY,
    PID_MAX_LIMIT,
    W_CAPACITY,
    W_PID,
    RingClosed,
    RingCorrupt,
    RingReader,
    max_block_size,
)


def events(first: int, n: int, size: int = 100):
    return [(lsn, 1000 + lsn, b"kv", b"key%06d" % lsn, bytes([lsn % 251]) * size)
            for lsn in range(first, first + n)]


def index(data, off: int = 0) -> tuple[int, int, list[int], list[int], list[int]]:
    """The block at `off`: size, count, LSNs, starts, ends."""
    size, count = struct.unpack_from("<II", data, off)
    ix = list(struct.unpack_from(f"<{count}Q{2 * count}I", data, off + BLOCK_HEADER))
    return size, count, ix[:count], ix[count:2 * count], ix[2 * count:]


def rewrite(data, off: int, size: int, count: int, lsns, starts, ends) -> None:
    """Store a block header and index and take both checksums again, as a writer that
    wrote a wrong index would: the checksums vouch for the bytes as they are."""
    struct.pack_into("<II", data, off, size, count)
    struct.pack_into(f"<{count}Q{2 * count}I", data, off + BLOCK_HEADER, *lsns, *starts, *ends)
    head, body = bytes(data[off:off + 8]), bytes(data[off + BLOCK_HEADER:off + size])
    struct.pack_into("<II", data, off + 8, zlib.crc32(body, zlib.crc32(head)),
                     crc32c(body, crc32c(head)))


# -- header words ----------------------------------------------------------------------

@pytest.mark.parametrize("word, value, says", [
    (W_CAPACITY, 0, "capacity 0"),
    (W_CAPACITY, 2 << 20, "capacity 2097152"),  # twice the file: struct.error when read
    (W_CAPACITY, 1 << 63, "capacity"),
    (W_CAPACITY, (1 << 20) - 8, "capacity"),  # under the file, a multiple of 8
    (W_CAPACITY, 12, "capacity 12"),
    (W_PID, 0, "writer pid 0"),  # os.kill(0, 0) signals the reader's own process group
    (W_PID, 1 << 63, "writer pid"),  # OverflowError from os.kill
    (W_PID, PID_MAX_LIMIT, "writer pid"),
])
def test_a_header_word_no_writer_stores_is_refused_at_attach(name, word, value, says):
    w = RingWriter(name, 1 << 20)
    w.publish(events(1, 2000))
    w._words[word] = value
    with pytest.raises(RingClosed) as e:
        RingReader(name, wait="poll", from_start=True)
    assert "not a Strata ring" in str(e.value) and says in str(e.value)
    w._words[word] = 1 << 20 if word == W_CAPACITY else os.getpid()  # as written
    r = RingReader(name, wait="poll", from_start=True)
    assert [e.lsn for e in r.poll(5000)] == list(range(1, 2001))
    r._check_writer()
    r.close()
    w.close()


def test_a_capacity_of_the_file_size_but_not_a_multiple_of_8_is_refused(name):
    """The file itself cut to a size the writer never makes: capacity agrees with it."""
    w = RingWriter(name, MIN_CAPACITY)
    os.truncate("/dev/shm/" + name, HEADER_SIZE + MIN_CAPACITY + 4)
    w._words[W_CAPACITY] = MIN_CAPACITY + 4
    with pytest.raises(RingClosed, match="not a multiple of 8"):
        RingReader(name, wait="poll")
    w.close()


def test_the_writer_makes_no_ring_its_readers_refuse():
    with pytest.raises(ValueError):
        RingWriter(f"strata-test-{os.getpid()}-small", MIN_CAPACITY - 8)


# -- block headers ---------------------------------------------------------------------

def test_a_huge_count_is_refused_before_the_index_is_copied_out(name):
    """A block header claiming millions of frames (its size within what was written):
    refused from the header alone, not after unpacking an index of that count and
    taking the checksum over megabytes."""
    w = RingWriter(name, 16 << 20)
    for b in range(8):
        w.publish(events(1 + 1000 * b, 1000, 900))
    size = min(w._pos, 8 << 20)
    struct.pack_into("<II", w._data, 0, size, size // INDEX_ENTRY - 1)
    r = RingReader(name, wait="poll", from_start=True)
    tracemalloc.start()
    try:
        with pytest.raises(RingCorrupt):
            r.poll(10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak  # the index of that count alone is over 50 MB
    r.close()
    w.close()


@pytest.mark.parametrize("damage", ["count over the limit", "count over the frames",
                                    "size over the limit"])
def test_a_block_header_no_writer_writes_is_refused_unverified(name, damage):
    """verify=False reads no checksum: the header's own bounds are all there is."""
    w = RingWriter(name, 16 << 20)
    r = RingReader(name, wait="poll", verify=False)
    w.publish(events(1, MAX_BLOCK_FRAMES + 1, 6000))  # blocks of about BLOCK_BYTES
    w.publish(events(5000, 1))
    size, count = struct.unpack_from("<II", w._data, 0)
    frames = count  # one poll of the first block's frames, no more: it stops at its end
    if damage == "count over the limit":
        # As many entries as the block's bytes hold, more than a writer puts in one.
        count = MAX_BLOCK_FRAMES + 1
    elif damage == "count over the frames":
        count += 1
    else:
        size = max_block_size(w.capacity) + 8
        assert size <= w._pos  # within what was written: only the bound refuses it
    struct.pack_into("<II", w._data, 0, size, count)
    with pytest.raises(RingCorrupt):
        r.poll_frames(frames)
    assert r.pos == 0
    r.close()
    w.close()


def test_the_largest_block_a_writer_makes_is_read(name):
    """The bound on a block's size is no tighter than the writer: a block filled to just
    under BLOCK_BYTES, then closed by an event of a quarter of the ring."""
    cap = 8 << 20
    w = RingWriter(name, cap)
    r = RingReader(name, wait="poll")
    evs = events(1, 199, 5200)  # 16 + 199 * 5264 bytes: 1024 short of BLOCK_BYTES
    big = cap // 4 - FRAME_HEADER - 2 - 6  # the largest frame not truncated
    evs.append((200, 0, b"kv", b"bigkey", b"z" * big))
    w.publish(evs)
    size, count = struct.unpack_from("<II", w._data, 0)
    assert count == 200 and size > max_block_size(cap) - (8 << 10), size
    got = r.poll(1000)
    assert [e.lsn for e in got] == list(range(1, 201))
    assert not got[-1].truncated and len(got[-1].value) == big
    r.close()
    w.close()


# -- indexes ---------------------------------------------------------------------------

def damage_index(kind: str, size: int, count: int, lsns, starts, ends) -> None:
    if kind == "end past the block":
        ends[1] = size + 4096
    elif kind == "start inside the index":
        starts[2] = 0
    elif kind == "first start not after the index":
        starts[0] += 8
    elif kind == "frames overlapping":
        starts[2] = starts[1] + 8
    elif kind == "start after end":
        starts[1], ends[1] = ends[1], starts[1]
    elif kind == "last end past the block":
        ends[-1] = size + 8
    elif kind == "LSNs out of order":
        lsns[1], lsns[2] = lsns[2], lsns[1]
    elif kind == "LSN repeated":
        lsns[2] = lsns[1]
    else:
        raise AssertionError(kind)


KINDS = ["end past the block", "start inside the index", "first start not after the index",
         "frames overlapping", "start after end", "last end past the block",
         "LSNs out of order", "LSN repeated"]


@pytest.mark.parametrize("read", ["poll", "poll_frames"])
@pytest.mark.parametrize("kind", KINDS)
def test_an_index_outside_its_frames_is_refused_though_its_checksums_match(name, kind, read):
    w = RingWriter(name, 1 << 20)
    r = RingReader(name, wait="poll")
    w.publish(events(1, 4, 40))
    size, count, lsns, starts, ends = index(w._data)
    damage_index(kind, size, count, lsns, starts, ends)
    rewrite(w._data, 0, size, count, lsns, starts, ends)
    with pytest.raises(RingCorrupt):
        getattr(r, read)()
    assert r.pos == 0 and r.last_lsn == 0
    r.close()
    w.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_index_is_refused_unverified(name, kind):
    """verify=False: an index torn or damaged, no checksum taken, is still never served."""
    w = RingWriter(name, 1 << 20)
    r = RingReader(name, wait="poll", verify=False)
    w.publish(events(1, 4, 40))
    size, count, lsns, starts, ends = index(w._data)
    damage_index(kind, size, count, lsns, starts, ends)
    struct.pack_into(f"<{count}Q{2 * count}I", w._data, BLOCK_HEADER, *lsns, *starts, *ends)
    with pytest.raises(RingCorrupt):
        r.poll_frames()
    r.close()
    w.close()


def test_poll_and_poll_frames_take_the_lsn_from_the_index(name):
    """A frame header's LSN that differs from its index entry (both under matching
    checksums): poll() gives the index's, as poll_frames() and a Lapped resume do."""
    w = RingWriter(name, 1 << 20)
    a = RingReader(name, wait="poll")
    b = RingReader(name, wait="poll")
    w.publish(events(10, 3, 40))
    size, count, lsns, starts, ends = index(w._data)
    struct.pack_into("<Q", w._data, starts[1] + 8, 999)  # frame 2's header LSN
    rewrite(w._data, 0, size, count, lsns, starts, ends)
    assert [e.lsn for e in a.poll()] == [lsn for lsn, _ in b.poll_frames()] == [10, 11, 12]
    assert a.last_lsn == b.last_lsn == 12
    a.close()
    b.close()
    w.close()
