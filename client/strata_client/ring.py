"""Shared-memory event ring: read Strata's committed events from another process.

The daemon is the ring's one writer (`rings = "events:64MiB"` in its
configuration); any number of processes on the same host attach by name and
read, with nothing but the standard library::

    from strata_client.ring import RingReader
    with RingReader("events") as r:
        for ev in r:                       # blocks; ev.key / ev.value are memoryviews
            print(ev.lsn, ev.topic, bytes(ev.key))

Layout (docs/format.md, "Event ring"). Every integer is little-endian; the
header is 64-bit words, each 8-byte aligned so that one word is written and
read in one piece (an unaligned 8-byte index can tear under concurrent reads)::

    ring   := header[4096] data[capacity]
    header := word[0..]:  0 magic "STRARING" | 1 version (2) | 2 capacity | 3 writer pid
                          4 created (ns)    | 5 write_pos | 6 reserve_pos | 7 last_lsn
                          8 closed | 9 tail_pos | 64.. doorbell slots
    data   := (block | wrap)*
    block  := size u32 | count u32 | crc32 u32 | crc32c u32
              | lsn u64 * count | start u32 * count | end u32 * count | frame * count
    frame  := length u32 | 0 u32 | lsn u64 | ts_ns u64 | topic_len u16 | flags u8
              | pad u8 | key_len u32 | topic | key | value | zero pad to 8 bytes
    wrap   := u32 0xFFFFFFFF              (the rest of the data area is unused)

Positions (`write_pos`, `reserve_pos`) count bytes ever written, so they only
grow; a position's offset in the data area is `pos % capacity`. A block is
`size` bytes (a multiple of 8) and never crosses the end of the data area.
Its two checksums, `crc32` (zlib's CRC-32, in the standard library) and
`crc32c` (CRC-32C), each cover its bytes 0 .. 8 and 16 .. size: size, count,
the index and the frames with their padding. One call checks up to
MAX_BLOCK_FRAMES events; a reader checks one of the two: CRC-32C where the
`crc32c` module is installed (the daemon's dependency; hardware CRC, about
five times faster here), CRC-32 with nothing but the standard library. The
index gives each frame's LSN and where the frame starts and ends (its padding
excluded) as offsets from the block's first byte, so that a reader cuts a
block into frames without a Python step per frame. A frame's `length` counts
the bytes after its 32-byte header. Where fewer than 16 bytes are left
before the end of the data area, nothing is written: a reader skips them.
flags bit 0: a deletion (no value); bit 1: truncated (the event was larger
than a quarter of the ring; only its topic is here, read it from the server
by LSN).

The writer's protocol for a batch of blocks spanning [p, q): store
`reserve_pos = q`, copy the blocks, store `write_pos = q`. A reader at
position r reads up to `write_pos`; the blocks it parsed are intact if, after
copying out their index and then checking their CRC, `reserve_pos - capacity
<= r` (the writer has not started to overwrite them). Otherwise the reader was lapped: it raises
`Lapped(resume_lsn)`, the first LSN it did not return, to resume from through
the server's historical tier. It never skips an event silently. Views of the
frames it returned from position s stay intact while `reserve_pos - capacity
<= s` (`still_valid`): the writer overwrites the oldest bytes first.

A reader refuses a header whose capacity or writer pid no writer stores
(RingClosed), and a block whose header or index no writer writes (RingCorrupt:
a size over max_block_size, a count over MAX_BLOCK_FRAMES, frames out of order
or outside the block, LSNs not increasing), whether or not its checksum
matches. An event's LSN is its index entry's.

Changing any of these constants breaks attached readers: bump VERSION (a
reader refuses a ring of another version with RingVersionMismatch; version 1
had one CRC per frame and no blocks).
"""

from __future__ import annotations

import asyncio
import mmap
import os
import socket
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from itertools import repeat
from operator import getitem
from typing import NamedTuple

from .errors import Lapped, StrataError

try:  # CRC-32C in hardware when installed; the standard library's CRC-32 otherwise
    from crc32c import crc32c as _crc32c
except ImportError:
    _crc32c = None

MAGIC = int.from_bytes(b"STRARING", "little")
VERSION = 2
HEADER_SIZE = 4096  # one page: the data area starts page-aligned
W_MAGIC, W_VERSION, W_CAPACITY, W_PID, W_CREATED, W_WRITE, W_RESERVE, W_LAST_LSN, W_CLOSED, W_TAIL \
    = range(10)
W_SLOTS = 64  # doorbell slots: word 64 + i is reader i's "asleep at position" word (0: awake)
MAX_SLOTS = HEADER_SIZE // 8 - W_SLOTS
FRAME = struct.Struct("<IIQQHBBI")  # length, 0, lsn, ts_ns, topic_len, flags, 0, key_len
FRAME_HEADER = FRAME.size  # 32
BLOCK = struct.Struct("<IIII")  # size, count, crc32 (zlib), crc32c
BLOCK_HEADER = BLOCK.size  # 16
INDEX_ENTRY = 16  # lsn u64, start u32, end u32 per frame
# A block is closed at MAX_BLOCK_FRAMES frames or once it holds BLOCK_BYTES: what
# one CRC call checks and what a reader holds parsed between polls stays small.
MAX_BLOCK_FRAMES = 1024
BLOCK_BYTES = 1 << 20
# Block sizes are multiples of 8, so no damage to one byte makes one read as a wrap.
WRAP = 0xFFFFFFFF
FLAG_DELETED = 1
FLAG_TRUNCATED = 2  # larger than a quarter of the ring: key and value left out
MIN_CAPACITY = 64 << 10
MAX_TOPIC = 0xFFFF  # topic_len is a u16; a truncated frame still holds its topic
# Linux's PID_MAX_LIMIT (include/linux/threads.h, 4M on 64-bit): kernel.pid_max is
# at most this, and a pid is below pid_max. A writer pid outside 1 .. 2^22 - 1 is
# no process: the reader treats the writer as gone.
PID_MAX_LIMIT = 1 << 22


def max_block_size(capacity: int) -> int:
    """The largest block a writer of a ring of `capacity` bytes produces.

    The writer closes a block once it holds BLOCK_BYTES, so before its last frame
    a block holds less than that; the last frame adds its index entry and at most
    max(capacity // 4, FRAME_HEADER + MAX_TOPIC) bytes, rounded up to 8 (larger
    events are truncated to their topic). A block header claiming more is damage,
    refused before its index is read (a count of millions would otherwise be
    unpacked before the checksum rejects it)."""
    return BLOCK_BYTES + INDEX_ENTRY + max(capacity // 4, FRAME_HEADER + MAX_TOPIC) + 8


class RingClosed(StrataError):
    """The ring's writer shut down, died or replaced the ring; attach again (by name)."""


class RingVersionMismatch(RingClosed):
    """The ring was written in another format version than this reader reads:
    upgrade whichever side is older. `version` is the ring's."""

    def __init__(self, message: str, version: int) -> None:
        super().__init__(message)
        self.version = version


class RingCorrupt(StrataError):
    """A block failed its checksum although the writer had not lapped the reader."""


class RingEvent(NamedTuple):
    """One committed event. `key`, `value` and `topic_bytes` are memoryviews into
    the ring: valid until the writer laps the reader (copy with bytes() to keep)."""

    lsn: int
    ts_ns: int  # the write's commit time, Unix ns (the master's clock, from its WAL frame); 0: unknown
    topic_bytes: memoryview
    key: memoryview
    value: memoryview | None  # None: a deletion (or a truncated event)
    flags: int = 0

    @property
    def deleted(self) -> bool:
        return bool(self.flags & FLAG_DELETED)

    @property
    def truncated(self) -> bool:
        """Too large for the ring: key and value are left out; read the event from the
        server's historical tier (from_lsn = lsn)."""
        return bool(self.flags & FLAG_TRUNCATED)

    @staticmethod
    def parse(frame: memoryview, lsn: int | None = None) -> RingEvent:
        """A frame from RingReader.poll_frames as an event (views into the same memory).

        `lsn`: the LSN poll_frames paired with the frame (from the block's index, which
        the checksum vouched for, as the resume LSN after Lapped is); without it, the
        frame header's copy."""
        _, _, flsn, ts, tlen, flags, _, klen = FRAME.unpack_from(frame)
        b = FRAME_HEADER + tlen
        k = b + klen
        return RingEvent(flsn if lsn is None else lsn, ts, frame[FRAME_HEADER:b], frame[b:k],
                         None if flags else frame[k:], flags)

    @property
    def topic(self) -> str:
        return bytes(self.topic_bytes).decode(errors="replace")


def shm_path(name: str) -> str:
    return "/dev/shm/" + name.lstrip("/")


class Segment:
    """A POSIX shared-memory segment (a file in /dev/shm), mapped read-write.

    Not multiprocessing's SharedMemory: before Python 3.13 it registers every
    segment it opens with the resource tracker, which unlinks the segment when the
    process exits, and a ring belongs to the daemon that writes it (which unlinks
    it at stop, or as stale at its next start).
    """

    def __init__(self, name: str, create_size: int = 0, mode: int = 0o600) -> None:
        path = shm_path(name)
        if create_size:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
        else:
            fd = os.open(path, os.O_RDWR)
        try:
            if create_size:
                os.fchmod(fd, mode)  # exact: open's mode is less the umask
                os.ftruncate(fd, create_size)
            self.size = os.fstat(fd).st_size
            self._map = mmap.mmap(fd, self.size) if self.size else None
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.buf = memoryview(self._map if self._map is not None else b"")

    @property
    def inode(self) -> int:
        return os.fstat(self.fd).st_ino

    def close(self) -> None:
        """Close the file and unmap; while views of it are still held (events a caller
        kept), the mapping stays until the last of them goes."""
        if self.fd < 0:
            return
        os.close(self.fd)
        self.fd = -1
        try:
            self.buf.release()
            if self._map is not None:
                self._map.close()
        except BufferError:
            pass
        self._map = None


_FENCE = threading.Lock()


def fence() -> None:
    """A full memory barrier: taking a lock is a locked read-modify-write, which x86
    (and every other CPU CPython runs on) orders against all earlier stores and
    later loads. The doorbell needs it: without it a reader's "asleep" store and
    the writer's "published" store can each miss the other's (store-load
    reordering), and the reader sleeps through an event until its timeout."""
    _FENCE.acquire()
    _FENCE.release()


def doorbell_path(name: str, run_dir: str | None = None) -> str:
    """The Unix socket the daemon listens on for ring `name`'s doorbell readers."""
    return os.path.join(run_dir or "/dev/shm", f".{name.lstrip('/')}.doorbell")


class RingReader:
    """Reads one ring. Not thread-safe: one reader object per consumer thread.

    wait: "doorbell" (default) blocks in the kernel until the writer rings, after
    a 50 us spin; "poll" checks for 2 ms (yielding the core between checks),
    then backs off from 50 us to 1 ms sleeps: lower latency while events flow,
    a core's worth of checks while they do; the trade-off is measured in
    docs/bench/distribution.md.
    from_start: begin at the oldest frame still in the ring instead of at the
    next one written.
    """

    def __init__(self, name: str, wait: str = "doorbell", from_start: bool = False,
                 verify: bool = True, spin_us: float | None = None) -> None:
        if wait not in ("doorbell", "poll"):
            raise ValueError("wait must be 'doorbell' or 'poll'")
        self.name = name
        self.wait = wait
        self.verify = verify
        self._crc_fn = _crc32c or zlib.crc32  # which of a block's two checksums is checked
        # How long an idle reader keeps checking (yielding the core each time)
        # before it sleeps: short before the doorbell, longer when polling.
        if spin_us is None:
            spin_us = 50.0 if wait == "doorbell" else 2000.0
        self.spin_s = spin_us / 1e6
        try:
            self._shm = Segment(name)
        except FileNotFoundError:
            raise RingClosed(f"no ring named {name!r} (is the daemon running with rings = "
                             f"\"{name}:...\"?)") from None
        buf = self._shm.buf
        if len(buf) < HEADER_SIZE:
            self._shm.close()
            raise RingClosed(f"{name!r} is not a Strata ring ({len(buf)} bytes, under "
                             f"the {HEADER_SIZE}-byte header)")
        self._words = buf[:HEADER_SIZE].cast("Q")
        w = self._words
        magic, version = w[W_MAGIC], w[W_VERSION]
        capacity, pid = w[W_CAPACITY], w[W_PID]
        wrong = None
        if magic != MAGIC:
            wrong = "no magic"
        elif version == VERSION:
            # The writer stores these before the magic: with it, they are final.
            wrong = _bad_header(capacity, pid, len(buf) - HEADER_SIZE)
        if wrong is not None or version != VERSION:
            w.release()
            buf.release()
            self._shm.close()
            if wrong is not None:
                raise RingClosed(f"{name!r} is not a Strata ring: {wrong}")
            raise RingVersionMismatch(
                f"ring {name!r} is in format version {version}; this reader reads version "
                f"{VERSION}: run a daemon and strata_client of the same release", version)
        self.capacity = capacity
        self.writer_pid = pid
        self._max_block = max_block_size(capacity)
        self._data = buf[HEADER_SIZE:HEADER_SIZE + capacity]
        self._inode = self._shm.inode
        # Start at the live end, or at the oldest frame the ring still holds.
        # last_lsn before write_pos (the writer stores them the other way round): a
        # resume point taken from it may repeat an event, never skip one.
        # At the live end that LSN is a lower bound: events after it and before the
        # first one returned were published before the attach. from_start is exact.
        self.last_lsn = w[W_LAST_LSN]  # the last LSN returned (or passed over at attach)
        wpos = w[W_WRITE]
        self.pos = wpos
        if from_start:
            self.pos, self.last_lsn = self._oldest(wpos, self.last_lsn)
        # Where the frames of the last non-empty poll start: their views stay
        # intact while reserve_pos - capacity <= this (see still_valid).
        self._views_from = self.pos
        # The block self.pos lies in, checked and parsed, when the last poll stopped
        # inside it: [block position, view, lsns, starts, ends, next frame's index].
        self._block: list | None = None
        self._bell: socket.socket | None = None
        self._slot = -1
        self._checked = time.monotonic()

    # -- attach / detach -------------------------------------------------------------

    def _oldest(self, wpos: int, last_lsn: int) -> tuple[int, int]:
        """The oldest frame the ring still holds (`tail_pos`, a frame start the writer
        keeps up to date), and the LSN before it; (wpos, last_lsn), the live end
        as loaded at attach, if the writer keeps overwriting it."""
        w, cap = self._words, self.capacity
        for _ in range(1000):
            pos = w[W_TAIL]
            if pos >= wpos:
                break
            off = pos % cap
            if cap - off < BLOCK_HEADER or BLOCK.unpack_from(self._data, off)[0] == WRAP:
                pos += cap - off
                if pos >= wpos:
                    break
                off = 0
            # The first LSN of the index (a block holds at least one frame).
            lsn = int.from_bytes(self._data[off + BLOCK_HEADER:off + BLOCK_HEADER + 8], "little")
            if w[W_RESERVE] - cap <= pos:  # not overwritten while we looked
                return pos, lsn - 1
        # Not last_lsn loaded now: it may belong to a batch after wpos, and a resume
        # point past an event the reader never got would skip it.
        return wpos, last_lsn

    def close(self) -> None:
        self._block = None
        if self._bell is not None:
            self._bell.close()
            self._bell = None
        for v in ("_data", "_words"):
            mv = getattr(self, v, None)
            if mv is not None:
                mv.release()
                setattr(self, v, None)
        self._shm.close()

    def __enter__(self) -> RingReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------

    def poll(self, max_events: int = 256) -> list[RingEvent]:
        """The events published since the last call (at most max_events); never blocks."""
        got = self._take(max_events)
        if got is None:
            return []
        start, pos, last, frames, block = got
        parse = RingEvent.parse
        # Parsed before the check of _advance: the integers of a frame (ts_ns, flags,
        # lengths) are copied out while its bytes are known to be the ones written.
        # The LSN is the index's, as poll_frames and the resume LSN after Lapped take it.
        try:
            out = [parse(f, lsn) for lsn, f in frames]
        except struct.error:  # a frame cut short: an index torn (verify=False)
            self._check_lapped(start)
            raise RingCorrupt(f"ring {self.name!r}: damaged block after position {start}") \
                from None
        self._advance(start, pos, last, bool(out), block)
        return out

    def poll_frames(self, max_events: int = 256) -> list[tuple[int, memoryview]]:
        """The fast path: (lsn, frame) pairs, `frame` a memoryview of the whole frame
        (32-byte header, topic, key, value; decode with `RingEvent.parse`, then ask
        `still_valid`). Same checks as poll(): checksums (unless verify=False),
        lapping, closing.

        Larger batches cost more per event, not less, once past a few hundred: each
        pair is two objects the cycle collector tracks, and a batch that outlives a
        collection is traversed again (bench distribution's prefilled ring, one
        reader: 275 ns of CPU an event at 1024 a batch, 185 ns at 256)."""
        got = self._take(max_events)
        if got is None:
            return []
        start, pos, last, out, block = got
        self._advance(start, pos, last, bool(out), block)
        return out

    def _take(self, max_events: int) -> tuple[int, int, int, list, list | None] | None:
        """Up to max_events (lsn, frame view) pairs from the reader's position, not yet
        taken: (start, end position, last LSN, pairs, the block left inside), or None.

        Each block's CRC is checked once, when the reader reaches the block; its
        frames are then cut out of it by the block's index, in C (map over
        slices), with no Python step per frame. A poll that stops inside a block
        keeps the parsed block for the next (its bytes stay intact while the
        writer has not lapped the reader, which every poll checks).
        """
        wpos = self._unread()
        if wpos is None:
            return None
        start = pos = self.pos
        block = self._block
        out: list[tuple[int, memoryview]] = []
        last = self.last_lsn
        left = max_events
        while left > 0 and pos < wpos:
            if block is None:
                pos, block = self._parse_block(pos, wpos, start)
                if block is None:  # a wrap
                    continue
            bpos, view, lsns, starts, ends, i = block
            j = min(len(lsns), i + left)
            if i == 0 and j == len(lsns):
                out += zip(lsns, map(getitem, repeat(view, j), map(slice, starts, ends)))
            else:
                out += zip(lsns[i:j], map(getitem, repeat(view, j - i),
                                          map(slice, starts[i:j], ends[i:j])))
            left -= j - i
            last = lsns[j - 1]
            if j == len(lsns):
                pos = bpos + len(view)
                block = None
            else:
                pos = bpos + starts[j]
                block = [bpos, view, lsns, starts, ends, j]
        return start, pos, last, out, block

    def _parse_block(self, pos: int, wpos: int, start: int) -> tuple[int, list | None]:
        """The block at `pos`, its CRC checked: (pos, [pos, view, lsns, starts, ends, 0]),
        or (the position after a wrap, None). Raises RingCorrupt (or Lapped, when the
        damage is the writer overwriting what this poll reads from `start`)."""
        cap, data = self.capacity, self._data
        off = pos % cap
        if cap - off < BLOCK_HEADER:  # no room for a block header: an implicit wrap
            return pos + cap - off, None
        size, count, crc, crc_c = BLOCK.unpack_from(data, off)
        if size == WRAP:
            return pos + cap - off, None
        # Bounded before anything is unpacked: a damaged count would otherwise have
        # millions of index entries copied out before the checksum refused them.
        if (size % 8 or size > cap - off or size > wpos - pos or size > self._max_block
                or not 0 < count <= MAX_BLOCK_FRAMES
                or BLOCK_HEADER + INDEX_ENTRY * count > size):
            self._check_lapped(start)
            raise RingCorrupt(f"ring {self.name!r}: damaged block at position {pos}")
        view = data[off:off + size]
        # The index is copied out before the checksum is taken, so that a checksum that
        # matches vouches for the copy: the writer never writes a block's bytes back as
        # they were, so bytes that match at the end of the check matched all along.
        index = struct.unpack_from(f"<{count}Q{2 * count}I", view, BLOCK_HEADER)
        if self.verify and not self._check(data, off, size, crc, crc_c):
            self._check_lapped(start)
            raise RingCorrupt(f"ring {self.name!r}: damaged block at position {pos}")
        lsns, starts, ends = index[:count], index[count:2 * count], index[2 * count:]
        if not _index_sound(lsns, starts, ends, count, size):
            self._check_lapped(start)
            raise RingCorrupt(f"ring {self.name!r}: block at position {pos} has an index "
                              f"outside its frames")
        return pos, [pos, view, lsns, starts, ends, 0]

    def _check(self, data: memoryview, off: int, size: int, crc: int, crc_c: int) -> bool:
        """Whether the block at `off` holds the bytes its checksum was taken of."""
        fn = self._crc_fn
        c = fn(data[off + BLOCK_HEADER:off + size], fn(data[off:off + 8]))
        return c == (crc_c if fn is _crc32c else crc)

    def _unread(self) -> int | None:
        """The writer's position when it is past ours (None: nothing new). Raises
        RingClosed when the writer closed the ring and everything was read, Lapped when
        the writer is a whole ring ahead. One call a poll, not one an event."""
        w = self._words
        wpos = w[W_WRITE]
        if wpos == self.pos:
            if w[W_CLOSED]:
                raise RingClosed(f"ring {self.name!r} was closed by its writer")
            return None
        if wpos - self.pos > self.capacity:
            raise Lapped(f"ring {self.name!r}: the reader fell a whole ring behind",
                         "RING_LAPPED", self.last_lsn + 1)
        return wpos

    def _advance(self, start: int, pos: int, last: int, got: bool, block: list | None) -> None:
        """Take the frames read from `start` up to `pos` (the last one `last`; `block` the
        one `pos` lies inside), once the writer is known not to have overwritten them
        meanwhile."""
        self._check_lapped(start)
        self.pos = pos
        self.last_lsn = last
        self._block = block
        if got:
            self._views_from = start

    def _check_lapped(self, start: int) -> None:
        if self._words[W_RESERVE] - self.capacity > start:
            raise Lapped(f"ring {self.name!r}: the writer overwrote frames while they were "
                         f"read", "RING_LAPPED", self.last_lsn + 1)

    def still_valid(self) -> bool:
        """True while the views returned by the last poll that returned any (poll,
        poll_frames, read, read_frames) cannot yet have been overwritten.

        Call it after using the views: True means every byte read through them
        was the byte written. The test is on where those frames start, not on
        where they end: the writer overwrites the oldest bytes first, so the
        first frame is the first one lost.
        """
        return self._words[W_RESERVE] - self.capacity <= self._views_from

    def read(self, max_events: int = 256, timeout: float | None = None) -> list[RingEvent]:
        """Block until at least one event (or `timeout` seconds: then []); at most max_events."""
        return self._read(self.poll, max_events, timeout)

    def read_frames(self, max_events: int = 256,
                    timeout: float | None = None) -> list[tuple[int, memoryview]]:
        """read() of poll_frames(): the fastest way through a busy ring."""
        return self._read(self.poll_frames, max_events, timeout)

    def _read(self, poll, max_events: int, timeout: float | None) -> list:
        evs = poll(max_events)
        if evs:
            return evs
        deadline = None if timeout is None else time.monotonic() + timeout
        spin_end = time.monotonic() + self.spin_s
        pause = 0.0
        while True:
            evs = poll(max_events)
            if evs:
                return evs
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return []
            if now >= spin_end:
                if self.wait == "doorbell" and self._arm():
                    self._sleep(deadline)
                    spin_end = time.monotonic() + self.spin_s
                    continue
                # poll: back off from a yield to 50 us to 1 ms, so that idle
                # readers leave the cores to the daemon and to each other.
                pause = min(max(pause * 2, 50e-6), 1e-3)
                time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - now)))
            else:
                os.sched_yield()
            if now - self._checked > 0.5:
                self._check_writer()

    def __iter__(self) -> Iterator[RingEvent]:
        while True:
            yield from self.read()

    # -- liveness and the doorbell ---------------------------------------------------

    def _bell_closed(self, s: socket.socket) -> None:
        """The doorbell read as closed: drop it and say why (the writer is gone, or it
        closed the ring). Raises RingClosed."""
        self._bell = None
        s.close()
        self._check_writer()
        raise RingClosed(f"ring {self.name!r}: the doorbell closed")

    def _check_writer(self) -> None:
        """Raise RingClosed if the writer is gone or the name now holds another ring."""
        self._checked = time.monotonic()
        if self._words[W_CLOSED]:
            raise RingClosed(f"ring {self.name!r} was closed by its writer")
        try:
            if not 0 < self.writer_pid < PID_MAX_LIMIT:
                raise ProcessLookupError  # no process has it (attach refuses one)
            os.kill(self.writer_pid, 0)
        except ProcessLookupError:
            raise RingClosed(f"ring {self.name!r}: writer {self.writer_pid} is gone") from None
        except PermissionError:
            pass
        try:
            if os.stat(shm_path(self.name)).st_ino != self._inode:
                raise RingClosed(f"ring {self.name!r} was replaced; attach again")
        except FileNotFoundError:
            raise RingClosed(f"ring {self.name!r} was removed") from None

    def _arm(self) -> bool:
        """Connect to the doorbell if needed; mark this reader asleep. False: no doorbell."""
        if self._bell is None:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(doorbell_path(self.name))
                hello = s.recv(8)
                if len(hello) != 8:
                    raise OSError("short doorbell greeting")
                self._slot = int.from_bytes(hello, "little")
                if not 0 <= self._slot < MAX_SLOTS:
                    raise OSError("doorbell full")
                self._bell = s
            except OSError:
                self.wait = "poll"  # no doorbell (old daemon, too many readers): back off
                return False
        # Asleep at our position: the writer rings when write_pos passes it.
        self._words[W_SLOTS + self._slot] = self.pos + 1
        fence()  # the store above before the caller's load of write_pos
        return True

    def _sleep(self, deadline: float | None) -> None:
        s = self._bell
        w = self._words
        try:
            if w[W_WRITE] != self.pos:
                return  # published between the check and arming
            # A bounded wait: a ring that crossed the arming (store-load reordering
            # between processes) costs at most this long, never a lost event.
            wait = 0.05 if deadline is None else max(0.0, min(0.05, deadline - time.monotonic()))
            s.settimeout(wait)
            try:
                if not s.recv(64):
                    self._bell_closed(s)
            except TimeoutError:
                self._check_writer()
        finally:
            if w is not None and self._slot >= 0:
                w[W_SLOTS + self._slot] = 0


def _bad_header(capacity: int, pid: int, data_size: int) -> str | None:
    """What is wrong with a ring header's capacity and writer pid words (None: nothing),
    the file holding `data_size` bytes after its header."""
    if capacity != data_size:
        return f"capacity {capacity} is not the file's {data_size} bytes after the header"
    if capacity % 8 or capacity < MIN_CAPACITY:
        return f"capacity {capacity} is not a multiple of 8 of at least {MIN_CAPACITY}"
    if not 0 < pid < PID_MAX_LIMIT:
        return f"writer pid {pid} is no process id"
    return None


def _index_sound(lsns: tuple, starts: tuple, ends: tuple, count: int, size: int) -> bool:
    """Whether a block's index cuts it into frames in order: the first right after the
    index, each one after the one before, inside the block, with LSNs strictly
    increasing. A checksum that matches vouches for bytes, not for the writer that
    took it, and verify=False vouches for nothing.

    A few C passes, no Python step per frame: start, end, start, end, ... in
    non-decreasing order is one sort of sorted data (a single run, n comparisons),
    and LSNs in order and all different are a sort and a set.
    """
    if starts[0] != BLOCK_HEADER + INDEX_ENTRY * count or ends[-1] > size:
        return False
    chain = [0] * (2 * count)
    chain[::2] = starts
    chain[1::2] = ends
    if sorted(chain) != chain:
        return False
    order = list(lsns)
    return sorted(order) == order and len(set(order)) == count


class AsyncRingReader:
    """The asyncio variant: `async for ev in AsyncRingReader("events")`.

    Waits on the doorbell socket through the event loop (no thread, no spin);
    with wait="poll" it polls with back-off from 50 us to 1 ms instead.
    """

    def __init__(self, name: str, wait: str = "doorbell", from_start: bool = False,
                 verify: bool = True) -> None:
        self._r = RingReader(name, wait=wait, from_start=from_start, verify=verify)
        self._ready: asyncio.Event | None = None

    @property
    def last_lsn(self) -> int:
        return self._r.last_lsn

    def close(self) -> None:
        if self._r._bell is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._r._bell.fileno())
            except (RuntimeError, ValueError):
                pass
        self._r.close()

    async def __aenter__(self) -> AsyncRingReader:
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()

    async def read(self, max_events: int = 256, timeout: float | None = None) -> list[RingEvent]:
        r = self._r
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        pause = 0.0
        while True:
            evs = r.poll(max_events)
            if evs:
                return evs
            now = loop.time()
            if deadline is not None and now >= deadline:
                return []
            left = None if deadline is None else deadline - now
            if r.wait == "doorbell" and r._arm():
                await self._bell_wait(min(0.05, left) if left is not None else 0.05)
                continue
            pause = min(max(pause * 2, 50e-6), 1e-3)
            await asyncio.sleep(pause if left is None else min(pause, left))
            if now - r._checked > 0.5:
                r._check_writer()

    async def _bell_wait(self, timeout: float) -> None:
        r = self._r
        s = r._bell
        loop = asyncio.get_running_loop()
        try:
            if r._words[W_WRITE] != r.pos:
                return
            fut = loop.create_future()
            s.setblocking(False)
            loop.add_reader(s.fileno(), lambda: fut.done() or fut.set_result(None))
            try:
                async with asyncio.timeout(timeout):  # wait_for may swallow a cancel (3.11)
                    await fut
                try:
                    if not s.recv(64):
                        r._bell_closed(s)
                except BlockingIOError:
                    pass
            except TimeoutError:
                r._check_writer()
            finally:
                if r._bell is not None:
                    loop.remove_reader(s.fileno())
        finally:
            if r._words is not None and r._slot >= 0:
                r._words[W_SLOTS + r._slot] = 0

    def __aiter__(self) -> AsyncIterator[RingEvent]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[RingEvent]:
        while True:
            for ev in await self.read():
                yield ev
