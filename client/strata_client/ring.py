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
    header := word[0..]:  0 magic "STRARING" | 1 version | 2 capacity | 3 writer pid
                          4 created (ns)    | 5 write_pos | 6 reserve_pos | 7 last_lsn
                          8 closed | 9 tail_pos | 64.. doorbell slots
    frame  := length u32 | crc32 u32 | lsn u64 | ts_ns u64 | topic_len u16 | flags u8
              | pad u8 | key_len u32 | topic | key | value | zero pad to 8 bytes
    wrap   := length u32 = 0xFFFFFFFF     (the rest of the data area is unused)

Positions (`write_pos`, `reserve_pos`) count bytes ever written, so they only
grow; a position's offset in the data area is `pos % capacity`. `length` counts
the bytes after the 32-byte frame header; `crc32` (zlib's, in the standard
library) covers bytes 8 .. 32 + length. flags bit 0: a deletion (no value);
bit 1: truncated (the event was larger than a quarter of the ring; only its
topic is here, read it from the server by LSN).

The writer's protocol for a batch of frames spanning [p, q): store
`reserve_pos = q`, copy the frames, store `write_pos = q`. A reader at
position r reads up to `write_pos`; the frames it parsed are intact if, after
checking their CRC, `reserve_pos - capacity <= r` (the writer has not started
to overwrite them). Otherwise the reader was lapped: it raises
`Lapped(resume_lsn)`, the first LSN it did not return, to resume from through
the server's historical tier. It never skips an event silently. Views of the
frames it returned from position s stay intact while `reserve_pos - capacity
<= s` (`still_valid`): the writer overwrites the oldest bytes first.

Changing any of these constants breaks attached readers: bump VERSION.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from multiprocessing import resource_tracker, shared_memory
from typing import NamedTuple

from .errors import Lapped, StrataError

MAGIC = int.from_bytes(b"STRARING", "little")
VERSION = 1
HEADER_SIZE = 4096  # one page: the data area starts page-aligned
W_MAGIC, W_VERSION, W_CAPACITY, W_PID, W_CREATED, W_WRITE, W_RESERVE, W_LAST_LSN, W_CLOSED, W_TAIL \
    = range(10)
W_SLOTS = 64  # doorbell slots: word 64 + i is reader i's "asleep at position" word (0: awake)
MAX_SLOTS = HEADER_SIZE // 8 - W_SLOTS
FRAME = struct.Struct("<IIQQHBBI")
FRAME_HEADER = FRAME.size  # 32
_LEN_CRC_LSN = struct.Struct("<IIQ")
WRAP = 0xFFFFFFFF
FLAG_DELETED = 1
FLAG_TRUNCATED = 2  # larger than a quarter of the ring: key and value left out
MIN_CAPACITY = 64 << 10


class RingClosed(StrataError):
    """The ring's writer shut down, died or replaced the ring; attach again (by name)."""


class RingCorrupt(StrataError):
    """A frame failed its checksum although the writer had not lapped the reader."""


class RingEvent(NamedTuple):
    """One committed event. `key`, `value` and `topic_bytes` are memoryviews into
    the ring: valid until the writer laps the reader (copy with bytes() to keep)."""

    lsn: int
    ts_ns: int
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
    def parse(frame: memoryview) -> RingEvent:
        """A frame from RingReader.poll_frames as an event (views into the same memory)."""
        _, _, lsn, ts, tlen, flags, _, klen = FRAME.unpack_from(frame)
        b = FRAME_HEADER + tlen
        k = b + klen
        return RingEvent(lsn, ts, frame[FRAME_HEADER:b], frame[b:k], None if flags else frame[k:],
                         flags)

    @property
    def topic(self) -> str:
        return bytes(self.topic_bytes).decode(errors="replace")


def shm_path(name: str) -> str:
    return "/dev/shm/" + name.lstrip("/")


def _untrack(shm: shared_memory.SharedMemory) -> None:
    # Python < 3.13 registers every attached segment with the resource tracker,
    # which unlinks it when this process exits: the ring belongs to the daemon.
    try:
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    except Exception:
        pass


_FENCE = threading.Lock()


def fence() -> None:
    """A full memory barrier: taking a lock is a locked read-modify-write, which x86
    (and every other CPU CPython runs on) orders against all earlier stores and
    later loads. The doorbell needs it: without it a reader's "asleep" store and
    the writer's "published" store can each miss the other's (store-load
    reordering), and the reader sleeps through an event until its timeout."""
    _FENCE.acquire()
    _FENCE.release()


def _close_shm(shm: shared_memory.SharedMemory) -> None:
    try:
        shm.close()
    except BufferError:
        # Event views are still held: the mapping is unmapped when the last goes.
        shm._mmap = None  # type: ignore[attr-defined]


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
        # How long an idle reader keeps checking (yielding the core each time)
        # before it sleeps: short before the doorbell, longer when polling.
        if spin_us is None:
            spin_us = 50.0 if wait == "doorbell" else 2000.0
        self.spin_s = spin_us / 1e6
        try:
            self._shm = shared_memory.SharedMemory(name=name)
        except FileNotFoundError:
            raise RingClosed(f"no ring named {name!r} (is the daemon running with rings = "
                             f"\"{name}:...\"?)") from None
        _untrack(self._shm)
        buf = self._shm.buf
        self._words = buf[:HEADER_SIZE].cast("Q")
        w = self._words
        if w[W_MAGIC] != MAGIC or w[W_VERSION] != VERSION:
            w.release()
            buf.release()
            _close_shm(self._shm)
            raise RingClosed(f"{name!r} is not a Strata ring of version {VERSION}")
        self.capacity = w[W_CAPACITY]
        self.writer_pid = w[W_PID]
        self._data = buf[HEADER_SIZE:HEADER_SIZE + self.capacity]
        self._inode = os.fstat(self._shm._fd).st_ino  # type: ignore[attr-defined]
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
            if cap - off < FRAME_HEADER or FRAME.unpack_from(self._data, off)[0] == WRAP:
                pos += cap - off
                if pos >= wpos:
                    break
                off = 0
            lsn = FRAME.unpack_from(self._data, off)[2]
            if w[W_RESERVE] - cap <= pos:  # not overwritten while we looked
                return pos, lsn - 1
        # Not last_lsn loaded now: it may belong to a batch after wpos, and a resume
        # point past an event the reader never got would skip it.
        return wpos, last_lsn

    def close(self) -> None:
        if self._bell is not None:
            self._bell.close()
            self._bell = None
        for v in ("_data", "_words"):
            mv = getattr(self, v, None)
            if mv is not None:
                mv.release()
                setattr(self, v, None)
        _close_shm(self._shm)

    def __enter__(self) -> RingReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------

    def poll(self, max_events: int = 256) -> list[RingEvent]:
        """The events published since the last call (at most max_events); never blocks."""
        wpos = self._unread()
        if wpos is None:
            return []
        pos, cap = self.pos, self.capacity
        data = self._data
        out: list[RingEvent] = []
        unpack = FRAME.unpack_from
        crc = zlib.crc32
        verify = self.verify
        start = pos
        last = self.last_lsn
        while pos < wpos and len(out) < max_events:
            off = pos % cap
            if cap - off < FRAME_HEADER:  # no room for a header: an implicit wrap
                pos += cap - off
                continue
            length, c, lsn, ts, tlen, flags, _, klen = unpack(data, off)
            if length == WRAP:
                pos += cap - off
                continue
            end = off + FRAME_HEADER + length
            if end > cap or tlen + klen > length or (verify and crc(data[off + 8:end]) != c):
                self._check_lapped(start, last)
                raise RingCorrupt(f"ring {self.name!r}: damaged frame at position {pos}")
            a = off + FRAME_HEADER
            b = a + tlen
            k = b + klen
            out.append(RingEvent(lsn, ts, data[a:b], data[b:k],
                                 None if flags else data[k:end], flags))
            last = lsn
            pos += FRAME_HEADER + length + (-length % 8)
        self._advance(start, pos, last, bool(out))
        return out

    def poll_frames(self, max_events: int = 1024) -> list[tuple[int, memoryview]]:
        """The fast path: (lsn, frame) pairs, `frame` a memoryview of the whole frame
        (32-byte header, topic, key, value; decode with `RingEvent.parse`). Same
        checks as poll(): checksums (unless verify=False), lapping, closing."""
        wpos = self._unread()
        if wpos is None:
            return []
        pos, cap = self.pos, self.capacity
        data = self._data
        out: list[tuple[int, memoryview]] = []
        append = out.append
        unpack = _LEN_CRC_LSN.unpack_from
        crc = zlib.crc32 if self.verify else None
        start, last = pos, self.last_lsn
        n = 0
        while pos < wpos and n < max_events:
            off = pos % cap
            if cap - off < FRAME_HEADER:
                pos += cap - off
                continue
            length, c, lsn = unpack(data, off)
            if length == WRAP:
                pos += cap - off
                continue
            end = off + FRAME_HEADER + length
            if end > cap or (crc is not None and crc(data[off + 8:end]) != c):
                self._check_lapped(start, last)
                raise RingCorrupt(f"ring {self.name!r}: damaged frame at position {pos}")
            append((lsn, data[off:end]))
            last = lsn
            n += 1
            pos += FRAME_HEADER + length + (-length % 8)
        self._advance(start, pos, last, bool(out))
        return out

    def _unread(self) -> int | None:
        """The writer's position when it is past ours (None: nothing new). Raises
        RingClosed when the writer closed the ring and everything was read, Lapped when
        the writer is a whole ring ahead. Shared by poll() and poll_frames(): one call a
        poll, not one an event."""
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

    def _advance(self, start: int, pos: int, last: int, got: bool) -> None:
        """Take the frames read from `start` up to `pos` (the last one `last`), once the
        writer is known not to have overwritten them meanwhile."""
        self._check_lapped(start, last)
        self.pos = pos
        self.last_lsn = last
        if got:
            self._views_from = start

    def _check_lapped(self, start: int, last: int) -> None:
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

    def read_frames(self, max_events: int = 1024,
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
