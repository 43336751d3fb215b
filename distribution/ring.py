"""The writing side of the shared-memory event rings (the format and the reader
are in strata_client/ring.py, which readers import without the daemon).

The daemon is each ring's one writer. `Rings.on_commit` is an engine commit
listener: on the committing thread it decodes the group's frames once and
copies the matching events into every ring, then rings the doorbell of the
readers that sleep. It never waits for a reader: a reader that falls a whole
ring behind finds out (`Lapped`) and resumes through the historical tier.

Lifecycle: a ring is created when the daemon starts and unlinked when it
stops (its `closed` word set first, so attached readers learn it). A ring left
behind by a daemon that was killed is found at the next start (its writer
process is gone) and replaced; a ring whose writer is alive belongs to another
daemon and stops this one from starting.
"""

from __future__ import annotations

import collections
import logging
import os
import selectors
import socket
import struct
import threading
import time
import zlib

from crc32c import crc32c

from strata.storage import record
from strata_client.ring import (
    BLOCK_BYTES,
    BLOCK_HEADER,
    FLAG_DELETED,
    FLAG_TRUNCATED,
    FRAME,
    FRAME_HEADER,
    HEADER_SIZE,
    INDEX_ENTRY,
    MAGIC,
    MAX_BLOCK_FRAMES,
    MAX_SLOTS,
    MIN_CAPACITY,
    VERSION,
    W_CAPACITY,
    W_CLOSED,
    W_CREATED,
    W_LAST_LSN,
    W_MAGIC,
    W_PID,
    W_RESERVE,
    W_SLOTS,
    W_TAIL,
    W_VERSION,
    W_WRITE,
    WRAP,
    Segment,
    doorbell_path,
    fence,
    shm_path,
)

from .cursors import is_reserved

log = logging.getLogger("strata.ring")

_SIZE_COUNT = struct.Struct("<II")  # a block's first 8 bytes
_CRCS = struct.Struct("<II")  # and its next 8: crc32, crc32c
_WRAP = struct.pack("<I", WRAP)


class RingInUse(OSError):
    """A ring of that name has a live writer: another daemon uses it."""


def parse_size(text: str) -> int:
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    mult = 1
    for suffix, m in (("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
            break
    return int(float(t) * mult)


def parse_rings(spec: str) -> list[tuple[str, int, frozenset[str] | None]]:
    """`name[:size[:topic,topic]]` entries separated by `;` -> [(name, bytes, topics)]."""
    out = []
    for entry in (e.strip() for e in spec.split(";")):
        if not entry:
            continue
        name, _, rest = entry.partition(":")
        size_text, _, topics = rest.partition(":")
        name = name.strip()
        if not name or "/" in name or len(name) > 200:
            raise ValueError(f"ring name {name!r}: 1 .. 200 characters, no '/'")
        size = parse_size(size_text) if size_text.strip() else 64 << 20
        if size < MIN_CAPACITY:
            raise ValueError(f"ring {name!r}: size must be at least {MIN_CAPACITY} bytes")
        ts = frozenset(t.strip() for t in topics.split(",") if t.strip()) or None
        if any(n == name for n, _, _ in out):
            raise ValueError(f"ring {name!r} is listed twice")
        out.append((name, size, ts))
    return out


class RingWriter:
    """One ring: create (or replace a stale one), publish batches, close.

    `mode`: the permissions of the shared-memory file and the doorbell socket,
    set exactly (not through the umask). A ring bypasses the server's tokens:
    whoever may open the file reads every event in it.
    """

    def __init__(self, name: str, capacity: int, topics: frozenset[str] | None = None,
                 mode: int = 0o600) -> None:
        capacity -= capacity % 8
        if capacity < MIN_CAPACITY:  # readers refuse a smaller ring as damaged
            raise ValueError(f"ring {name!r}: capacity must be at least {MIN_CAPACITY} bytes")
        self.name = name
        self.capacity = capacity
        self.topics = topics
        self.max_frame = capacity // 4
        self._replace_stale(name)
        # Readers open it read-write: their doorbell slot is in the header.
        self._shm = Segment(name, HEADER_SIZE + capacity, mode)
        buf = self._shm.buf
        self._words = buf[:HEADER_SIZE].cast("Q")
        self._data = buf[HEADER_SIZE:HEADER_SIZE + capacity]
        w = self._words
        w[W_CAPACITY] = capacity
        w[W_PID] = os.getpid()
        w[W_CREATED] = time.time_ns()
        w[W_VERSION] = VERSION
        w[W_MAGIC] = MAGIC  # last: a reader that sees the magic sees the rest
        self._pos = 0
        self._batches: collections.deque[int] = collections.deque()  # batch start positions
        self.published = 0
        self.truncated = 0
        self._bells = _Doorbell(doorbell_path(name), self._words, mode)

    @staticmethod
    def _replace_stale(name: str) -> None:
        try:
            old = Segment(name)
        except FileNotFoundError:
            return
        pid = 0
        w = old.buf[:HEADER_SIZE].cast("Q") if old.size >= HEADER_SIZE else None
        try:
            if w is not None and w[W_MAGIC] == MAGIC:
                pid = w[W_PID]
                if pid and pid != os.getpid() and not w[W_CLOSED] and _alive(pid):
                    raise RingInUse(f"ring {name!r} is written by live process {pid}; "
                                    f"choose another ring name")
                w[W_CLOSED] = 1  # readers still attached to it learn it is over
        finally:
            if w is not None:
                w.release()
            old.close()
        _unlink(name)
        log.warning("replaced a stale ring %r left by process %s", name, pid or "unknown")

    def publish(self, events: list[tuple[int, int, bytes, bytes, bytes | None]]) -> None:
        """Write events (lsn, ts_ns, topic, key, value|None) and wake sleeping readers.

        REQUIRES: one caller at a time (the engine's commit listener is).
        Events are packed into blocks (strata_client.ring: one CRC and an index
        per block, at most MAX_BLOCK_FRAMES frames, closed once BLOCK_BYTES
        full, never across the end of the data area) and the blocks into
        batches of at most half the ring, each published with the reserve /
        copy / write protocol of `_commit`, so that a reader that had caught up
        is never lapped by one batch.
        """
        cap = self.capacity
        half = cap // 2
        max_frame = self.max_frame
        start = at = self._pos  # the batch's start; where the open block starts
        blocks: list[tuple[int, list[bytes]]] = []  # (position, pieces) of the batch
        frames = bytearray()  # the open block's frames
        lsns: list[int] = []
        starts: list[int] = []  # frame offsets from the first frame (the index adds its size)
        ends: list[int] = []
        used = 0  # bytes of the open block (0: none open)
        pack = FRAME.pack
        last = 0
        for lsn, ts, topic, key, value in events:
            flags = 0
            if value is None:
                flags, value = FLAG_DELETED, b""
            length = len(topic) + len(key) + len(value)
            if FRAME_HEADER + length > max_frame:
                flags |= FLAG_TRUNCATED  # readers fetch it from the server by LSN
                key = value = b""
                length = len(topic)
                self.truncated += 1
            grow = INDEX_ENTRY + FRAME_HEADER + length + (-length % 8)
            while True:
                # Invariant: a block never crosses the end of the data area. One that
                # ends exactly there is closed here, so the next starts at offset 0.
                if used and at % cap + used + grow > cap:
                    blocks.append((at, _block(frames, lsns, starts, ends)))
                    at += used
                    frames, lsns, starts, ends, used = bytearray(), [], [], [], 0
                if not used:
                    off = at % cap
                    if cap - off < BLOCK_HEADER + grow:  # explicit wrap: the rest is skipped
                        if cap - off >= BLOCK_HEADER:
                            blocks.append((at, [_WRAP]))
                        at += cap - off
                # Keep one batch under half the ring. `at > start`, not `blocks`: a wrap
                # alone moves the batch on.
                if (at + (used or BLOCK_HEADER) + grow - start > half
                        and (used or at > start)):
                    if used:
                        blocks.append((at, _block(frames, lsns, starts, ends)))
                        at += used
                        frames, lsns, starts, ends, used = bytearray(), [], [], [], 0
                    self._commit(start, at, blocks, last)
                    blocks, start = [], at
                    continue
                break
            starts.append(len(frames))
            frames += pack(length, 0, lsn, ts, len(topic), flags, 0, len(key))
            frames += topic
            frames += key
            frames += value
            ends.append(len(frames))
            if length % 8:
                frames += bytes(8 - length % 8)
            lsns.append(lsn)
            used = (used or BLOCK_HEADER) + grow
            last = lsn
            if len(lsns) == MAX_BLOCK_FRAMES or used >= BLOCK_BYTES:
                blocks.append((at, _block(frames, lsns, starts, ends)))
                at += used
                frames, lsns, starts, ends, used = bytearray(), [], [], [], 0
        if used:
            blocks.append((at, _block(frames, lsns, starts, ends)))
            at += used
        if blocks:
            self._commit(start, at, blocks, last)
            self.published += len(events)
            self._bells.ring(at)

    def _commit(self, start: int, end: int, blocks: list[tuple[int, list[bytes]]],
                last_lsn: int) -> None:
        """Publish the batch [start, end): tail, reserve, copy the blocks, write.

        REQUIRES: each block lies within the data area (at % cap + its size <= cap)
        and end - start <= cap // 2. A copy that raised here would leave reserve_pos
        ahead of write_pos and `_pos` behind both: every later batch misplaced.
        """
        w, data, cap = self._words, self._data, self.capacity
        batches = self._batches
        batches.append(start)
        while batches[0] < end - cap:
            batches.popleft()
        w[W_TAIL] = batches[0]  # the oldest frame start that stays intact
        w[W_RESERVE] = end
        for at, pieces in blocks:
            off = at % cap
            for piece in pieces:
                data[off:off + len(piece)] = piece
                off += len(piece)
        w[W_WRITE] = end
        if last_lsn:
            w[W_LAST_LSN] = last_lsn
        self._pos = end

    @property
    def last_lsn(self) -> int:
        """The last LSN written into the ring (0: none yet)."""
        return self._words[W_LAST_LSN]

    @property
    def readers(self) -> int:
        """Readers attached to the doorbell (polling readers are not counted)."""
        return len(self._bells.socks)

    def close(self) -> None:
        """Mark the ring closed (attached readers raise RingClosed) and remove it."""
        self._bells.close()
        self._words[W_CLOSED] = 1
        self._words.release()
        self._data.release()
        self._shm.close()
        _unlink(self.name)


def _block(frames: bytearray, lsns: list[int], starts: list[int],
           ends: list[int]) -> list[bytes]:
    """A block as the pieces to copy: size, count and checksums; index; frames."""
    n = len(lsns)
    base = BLOCK_HEADER + INDEX_ENTRY * n
    head = _SIZE_COUNT.pack(base + len(frames), n)
    index = struct.pack(f"<{n}Q{2 * n}I", *lsns, *map(base.__add__, starts),
                        *map(base.__add__, ends))
    c32 = zlib.crc32(frames, zlib.crc32(index, zlib.crc32(head)))
    c32c = crc32c(frames, crc32c(index, crc32c(head)))
    return [head, _CRCS.pack(c32, c32c), index, frames]


def _unlink(name: str) -> None:
    try:
        os.unlink(shm_path(name))
    except FileNotFoundError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Doorbell:
    """The Unix socket sleeping readers wait on. A reader connects, gets its slot
    number (8 bytes); before it sleeps it stores `position + 1` into its slot
    word; `ring` sends one byte to every reader whose slot is set. A thread
    accepts readers and notices the ones that leave."""

    def __init__(self, path: str, words, mode: int = 0o600) -> None:
        self.path = path
        self.words = words
        self.socks: dict[int, socket.socket] = {}
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self._listen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listen.bind(path)
        os.chmod(path, mode)  # connecting needs write permission: the ring's readers'
        self._listen.listen(64)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listen, selectors.EVENT_READ)
        self._stop_r, self._stop_w = socket.socketpair()
        self._sel.register(self._stop_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name=f"doorbell {path}", daemon=True)
        self._thread.start()

    def ring(self, pos: int) -> None:
        socks = self.socks
        if not socks:
            return
        fence()  # write_pos stored before the slots are loaded (see strata_client.ring.fence)
        words = self.words
        for slot, s in socks.items():
            if words[W_SLOTS + slot]:
                try:
                    s.send(b"\1")
                except OSError:
                    pass  # full (it will wake anyway) or gone (the thread drops it)

    def _run(self) -> None:
        while True:
            for key, _ in self._sel.select():
                sock = key.fileobj
                if sock is self._stop_r:
                    return
                if sock is self._listen:
                    self._accept()
                    continue
                try:
                    data = sock.recv(64)
                except OSError:
                    data = b""
                if not data:  # the reader left
                    self._drop(key.data, sock)

    def _accept(self) -> None:
        try:
            s, _ = self._listen.accept()
        except OSError:
            return
        free = next((i for i in range(MAX_SLOTS) if i not in self.socks), MAX_SLOTS)
        if free < MAX_SLOTS:
            # Registered before the reader learns its slot, so that its first sleep
            # is already rung. Replaced whole: ring() iterates a snapshot.
            self.words[W_SLOTS + free] = 0
            self.socks = {**self.socks, free: s}
        try:
            s.sendall(free.to_bytes(8, "little"))
        except OSError:
            self._drop(free, s, registered=False)
            return
        if free == MAX_SLOTS:  # full: the reader falls back to polling
            s.close()
            return
        s.setblocking(False)
        self._sel.register(s, selectors.EVENT_READ, free)

    def _drop(self, slot: int, s: socket.socket, registered: bool = True) -> None:
        if registered:
            self._sel.unregister(s)
        s.close()
        self.socks = {k: v for k, v in self.socks.items() if k != slot}
        self.words[W_SLOTS + slot] = 0

    def close(self) -> None:
        self._stop_w.send(b"x")
        self._thread.join(timeout=2)
        for s in self.socks.values():
            s.close()
        self.socks = {}
        self._listen.close()
        self._stop_r.close()
        self._stop_w.close()
        self._sel.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class Rings:
    """The configured rings, fed by the engine's commit listener."""

    def __init__(self, spec: str, mode: int = 0o600) -> None:
        """`spec` as `parse_rings` reads it; `mode` the permissions of every ring's files
        (config `ring_mode`)."""
        self.rings: list[RingWriter] = []
        try:
            for name, size, topics in parse_rings(spec):
                self.rings.append(RingWriter(name, size, topics, mode))
                log.info("ring %r: %d bytes, topics %s", name, size,
                         ", ".join(sorted(topics)) if topics else "all")
        except BaseException:
            self.close()
            raise

    def on_commit(self, frames: list[bytes]) -> None:
        """Engine commit listener (committing thread): decode once, copy into each ring."""
        events = []
        for fr in frames:
            lsn, _, ftype, payload, ts = record.parse_frame_ts(fr)
            if ts is None:
                ts = 0  # a frame without a commit time (written before WAL version 4)
            if ftype == record.TYPE_EVENT:
                topic, k, v = record.decode_event(payload)
                events.append((lsn, ts, topic, k, v))
            elif ftype in (record.TYPE_PUT, record.TYPE_DELETE, record.TYPE_BATCH):
                for op_lsn, k, v in record.decode_ops(ftype, lsn, payload):
                    if not is_reserved(k):
                        events.append((op_lsn, ts, b"kv", k, v))
        if not events:
            return
        for r in self.rings:
            if r.topics is None:
                r.publish(events)
            else:
                want = r.topics
                sel = [e for e in events if e[2].decode(errors="replace") in want]
                if sel:
                    r.publish(sel)

    def close(self) -> None:
        for r in self.rings:
            try:
                r.close()
            except Exception:
                log.exception("closing ring %r", r.name)
        self.rings = []
