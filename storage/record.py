"""WAL segment and frame format (specified in docs/format.md, "WAL").

A segment file is a header followed by frames::

    segment := header frame* zero-fill?
    header  := magic[8] "STRATWAL" | version u32 | first_lsn u64 | crc32c u32   (24 bytes)
    frame   := length u32 | crc32c u32 | lsn u64 | term u64 | type u8 | body[length]
    body    := payload                     (type & TS_FLAG == 0)
             | payload ts u64              (type & TS_FLAG: the commit time, Unix ns)

Payloads (msgpack; `rid` is a request id, a str of 1 .. MAX_REQUEST_ID characters)::

    put     := [key, value] | [key, value, rid]
    delete  := key | [key, rid]
    batch   := [op+]     op := [code, key, value|nil] | [code, key, value|nil, rid]
    event   := [topic, key, payload]
    term    := [term, node]

A request id names the write that carries it, in the same frame, so it is as
durable as the write and replicated with it. A batch written under one id for
the whole batch carries it on its last op: the batch's answer is its last LSN,
which is that op's. Ids are not data: `decode_ops` leaves them out, and only
`decode_ids` reads them.

A frame's commit time (`ts`) is the wall clock of the node that accepted the write
(the master), read once when the frame is encoded; it travels with the frame's bytes
(replicas write them as they are), so history, replicas and a new master after
failover all see the time the write was committed. Frames without the flag (version
2 and 3 segments, manifest edits) have no time: `Frame.ts` is None.

All integers little-endian. `crc32c` covers lsn..body, so a frame whose
length field is damaged fails its checksum rather than being misread. The
header's crc covers the 20 bytes before it. Segments are preallocated, so a
frame header of 25 zero bytes marks the end of the written part; a length of
zero is never written (every payload is a msgpack value, at least one byte).

The same frame layout (with lsn = term = 0, type = TYPE_EDIT) carries manifest
version edits: one codec, one set of corruption tests.

Changing any of these constants breaks existing files: bump VERSION and keep a
reader for the old one.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Iterator
from typing import NamedTuple

import msgpack
from crc32c import crc32c

MAGIC = b"STRATWAL"
# 2: the type byte's high bit is the sync-point flag (a version-1 reader
# would take flagged frames for unknown types and truncate them as damage).
# 3: payloads may end with a request id (a version-2 reader fails to decode a
# put or batch that carries one, and replays a delete with an id as the wrong
# key). Version-2 segments are read as they are: their payloads never carry one.
# 4: a frame may end with its commit time, flagged by the type byte's TS_FLAG (a
# version-3 reader would take flagged frames for unknown types). Version-2 and -3
# segments are read as they are: their frames never carry one, so their ts is None.
VERSION = 4
READ_VERSIONS = (2, 3, 4)
HEADER = struct.Struct("<8sIQI")
HEADER_SIZE = HEADER.size  # 24
FRAME = struct.Struct("<IIQQB")
FRAME_HEADER_SIZE = FRAME.size  # 25
_CRC_PART = struct.Struct("<QQB")  # lsn, term, type: the checksummed part of the header

# The largest payload any Strata frame may carry: WAL, replication, ring and
# WebSocket all share it, so a record accepted here can travel everywhere.
MAX_PAYLOAD = 32 << 20

# The type byte's high bit marks a sync point: the last frame of a group that
# the commit leader fsynced (durability=always). Recovery uses it to tell a
# torn last group (truncated) from damage in synced data (Corruption).
SYNC_FLAG = 0x80
# The type byte's next bit: the body ends with the frame's commit time (u64, Unix ns).
TS_FLAG = 0x40
TYPE_MASK = 0x3F
_TS = struct.Struct("<Q")

# Frame types. Payloads (msgpack):
TYPE_PUT = 1  # [key, value] or [key, value, request_id]
TYPE_DELETE = 2  # key or [key, request_id]
TYPE_BATCH = 3  # [[op, key, value|None(, request_id)], ...]: op 1 = put, 2 = delete;
#                 lsn is the first op's
TYPE_EVENT = 4  # [topic, key, payload]: a published event, not applied to the key space
TYPE_TERM = 5  # [term, node]: a new master's term marker
TYPE_EDIT = 16  # manifest version edit (msgpack map)

# The longest request id a frame may carry (characters): ids name a client's
# call, and a UUID's 32 hex digits fit with room for a prefix.
MAX_REQUEST_ID = 64
# msgpack's fixarray headers of the payloads with an id: `decode_ids` skips a
# put or delete without one by its first byte, without decoding it.
_PUT_WITH_ID = 0x93
_DELETE_WITH_ID = 0x92

_ZERO_HEADER = bytes(FRAME_HEADER_SIZE)
DATA_TYPES = bytes([TYPE_PUT, TYPE_DELETE, TYPE_BATCH, TYPE_EVENT, TYPE_TERM])

# The commit leader writes at most this many bytes of queued frames at once
# (more only when a single frame is larger): it bounds a group's latency and
# the memory of one write.
MAX_GROUP_BYTES = 4 << 20


def marker(term: int, types: bytes = DATA_TYPES) -> bytes:
    """The search marker of `next_valid_frame` for frames of `term` and `types`."""
    return struct.pack("<Q", term) + types


def encode_header(first_lsn: int) -> bytes:
    head = struct.pack("<8sIQ", MAGIC, VERSION, first_lsn)
    return head + struct.pack("<I", crc32c(head))


def decode_header(buf, path: str) -> int:
    """Return the segment's first LSN; raise ValueError with the reason if bad."""
    if len(buf) < HEADER_SIZE:
        raise ValueError(f"{path}: file shorter than the {HEADER_SIZE}-byte header")
    magic, version, first_lsn, crc = HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise ValueError(f"{path}: bad magic {magic!r}")
    if crc != crc32c(bytes(buf[:20])):
        raise ValueError(f"{path}: header checksum mismatch")
    if version not in READ_VERSIONS:
        raise ValueError(f"{path}: unsupported version {version}")
    return first_lsn


def encode_frame(lsn: int, term: int, ftype: int, payload: bytes, ts: int | None = None,
                 _pack=FRAME.pack, _crc_part=_CRC_PART.pack, _ts=_TS.pack) -> bytes:
    """One frame; `ts` (Unix ns) is its commit time, None for a frame without one."""
    # The CRC is chained (header part, then payload) so the payload is never
    # copied before the final concatenation: this runs once per put.
    if ts is None:
        crc = crc32c(payload, crc32c(_crc_part(lsn, term, ftype)))
        return _pack(len(payload), crc, lsn, term, ftype) + payload
    ftype |= TS_FLAG
    body = payload + _ts(ts)
    crc = crc32c(body, crc32c(_crc_part(lsn, term, ftype)))
    return _pack(len(body), crc, lsn, term, ftype) + body


def encode_frame_now(lsn: int, term: int, ftype: int, payload: bytes,
                     _pack=FRAME.pack, _crc_part=_CRC_PART.pack, _ts=_TS.pack,
                     _now=time.time_ns) -> bytes:
    """One data frame stamped with this node's wall clock as its commit time: what the
    node that accepts a write encodes (the commit path, once per frame). Inlined
    rather than calling encode_frame: it runs once per put. Copying the payload into
    the body once costs less than a third crc32c call (a 100-byte put: ~75 ns more
    than a frame without a time, ~50 of them time_ns; ~170 ns with the copy-free
    three-call chain)."""
    ftype |= TS_FLAG
    body = payload + _ts(_now())
    crc = crc32c(body, crc32c(_crc_part(lsn, term, ftype)))
    return _pack(len(body), crc, lsn, term, ftype) + body


class Frame(NamedTuple):
    offset: int  # where the frame starts in its file
    lsn: int
    term: int
    type: int
    payload: bytes  # without the commit time
    raw: memoryview  # the whole frame, as written (replication ships these bytes)
    ts: int | None = None  # commit time, Unix ns; None for a frame without one


def parse_frame(data: bytes) -> tuple[int, int, int, bytes]:
    """(lsn, term, type, payload) of one frame produced by this process (not checked)."""
    length, _, lsn, term, ftype = FRAME.unpack_from(data, 0)
    if ftype & TS_FLAG:
        length -= 8
    return lsn, term, ftype & TYPE_MASK, data[FRAME_HEADER_SIZE : FRAME_HEADER_SIZE + length]


def parse_frame_ts(data: bytes) -> tuple[int, int, int, bytes, int | None]:
    """(lsn, term, type, payload, ts) of one frame produced by this process (not
    checked); ts is the commit time in Unix ns, None for a frame without one."""
    length, _, lsn, term, ftype = FRAME.unpack_from(data, 0)
    if ftype & TS_FLAG:
        end = FRAME_HEADER_SIZE + length - 8
        return (lsn, term, ftype & TYPE_MASK, data[FRAME_HEADER_SIZE:end],
                _TS.unpack_from(data, end)[0])
    return lsn, term, ftype & TYPE_MASK, data[FRAME_HEADER_SIZE : FRAME_HEADER_SIZE + length], None


def decode_ops(ftype: int, lsn: int, payload: bytes) -> list[tuple[int, bytes, bytes | None]]:
    """The key-space operations a data frame carries: [(lsn, key, value or None for a
    delete)], one LSN each (a batch's ops take consecutive LSNs from the frame's).
    Events and term markers carry none, and request ids are not operations. The one
    decoder of payloads: the engine's recovery, the WAL's LSN chain and the event hub
    all read frames through it."""
    if ftype == TYPE_PUT:
        p = msgpack.unpackb(payload)
        return [(lsn, p[0], p[1])]
    if ftype == TYPE_DELETE:
        k = msgpack.unpackb(payload)
        return [(lsn, k if type(k) is bytes else k[0], None)]
    if ftype == TYPE_BATCH:
        return [(lsn + i, op[1], op[2] if op[0] == 1 else None)
                for i, op in enumerate(msgpack.unpackb(payload))]
    return []


def decode_ids(ftype: int, lsn: int, payload: bytes) -> list[tuple[str, int]]:
    """The request ids a data frame carries, as [(request id, LSN of the op it names)]
    in LSN order; [] for a frame without any (events and term markers never have one).
    A put or delete without an id is told by its payload's first byte (not decoded)."""
    if ftype == TYPE_PUT:
        if payload[0] != _PUT_WITH_ID:
            return []
        return [(msgpack.unpackb(payload)[2], lsn)]
    if ftype == TYPE_DELETE:
        if payload[0] != _DELETE_WITH_ID:
            return []
        return [(msgpack.unpackb(payload)[1], lsn)]
    if ftype == TYPE_BATCH:
        return [(op[3], lsn + i) for i, op in enumerate(msgpack.unpackb(payload)) if len(op) > 3]
    return []


def decode_event(payload: bytes) -> tuple[bytes, bytes, bytes]:
    """(topic, key, payload) of a TYPE_EVENT frame."""
    topic, key, value = msgpack.unpackb(payload)
    return topic, key, value


def lsn_count(ftype: int, payload: bytes) -> int:
    """How many LSNs a frame consumes: one per operation of a batch, else one."""
    if ftype == TYPE_BATCH:
        return len(msgpack.unpackb(payload))
    return 1


def frame_span(frame) -> tuple[int, int]:
    """(first, last) LSN of one encoded frame, from its header and, for a batch, the
    msgpack array header of its payload (nothing is decoded)."""
    _, _, lsn, _, ftype = FRAME.unpack_from(frame, 0)
    if ftype & TYPE_MASK != TYPE_BATCH:
        return lsn, lsn
    b = frame[FRAME_HEADER_SIZE]
    if 0x90 <= b <= 0x9F:
        n = b & 0x0F
    elif b == 0xDC:
        n = struct.unpack_from(">H", frame, FRAME_HEADER_SIZE + 1)[0]
    elif b == 0xDD:
        n = struct.unpack_from(">I", frame, FRAME_HEADER_SIZE + 1)[0]
    else:
        raise ValueError(f"batch frame at LSN {lsn}: payload is not a msgpack array")
    return lsn, lsn + max(n, 1) - 1


def mark_sync(frame: bytes) -> bytes:
    """The same frame (commit time included) with the sync-point flag set (re-checksummed)."""
    lsn, term, ftype, payload, ts = parse_frame_ts(frame)
    return encode_frame(lsn, term, ftype | SYNC_FLAG, payload, ts)


def set_sync(frame: bytes, sync: bool) -> bytes:
    """The same frame (commit time included) with the sync-point flag set or cleared
    (re-checksummed; the frame itself when it already is so)."""
    if bool(frame[24] & SYNC_FLAG) == sync:
        return frame
    lsn, term, ftype, payload, ts = parse_frame_ts(frame)
    return encode_frame(lsn, term, ftype | (SYNC_FLAG if sync else 0), payload, ts)


def is_sync_point(fr: Frame) -> bool:
    return bool(fr.raw[24] & SYNC_FLAG)


class BadFrame(Exception):
    """Raised by `iter_frames` at the first frame that does not check out."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


def iter_frames(buf, start: int) -> Iterator[Frame]:
    """Yield frames from `buf[start:]` until the end of the written data.

    Stops cleanly at the end of the buffer or at an all-zero frame header (the
    preallocated tail). Raises BadFrame(offset, reason) at a truncated frame or
    a checksum mismatch; the caller decides whether that is a torn tail or
    corruption.
    """
    view = memoryview(buf)
    end = len(view)
    pos = start
    unpack = FRAME.unpack_from
    unpack_ts = _TS.unpack_from
    while pos < end:
        if end - pos < FRAME_HEADER_SIZE:
            if bytes(view[pos:end]).count(0) == end - pos:
                return
            raise BadFrame(pos, f"truncated frame header ({end - pos} bytes)")
        length, crc, lsn, term, ftype = unpack(view, pos)
        if length == 0:
            if view[pos : pos + FRAME_HEADER_SIZE] == _ZERO_HEADER:
                return
            raise BadFrame(pos, "zero-length frame")
        if length > MAX_PAYLOAD:
            raise BadFrame(pos, f"frame length {length} exceeds the maximum {MAX_PAYLOAD}")
        stop = pos + FRAME_HEADER_SIZE + length
        if stop > end:
            raise BadFrame(pos, f"frame of {length} bytes runs past the end of the file")
        if crc32c(view[pos + 8 : stop]) != crc:
            raise BadFrame(pos, "frame checksum mismatch")
        if ftype & TS_FLAG:
            if length <= 8:
                raise BadFrame(pos, f"frame of {length} bytes too short for its commit time")
            yield Frame(pos, lsn, term, ftype & TYPE_MASK,
                        bytes(view[pos + FRAME_HEADER_SIZE : stop - 8]), view[pos:stop],
                        unpack_ts(view, stop - 8)[0])
        else:
            yield Frame(pos, lsn, term, ftype & TYPE_MASK,
                        bytes(view[pos + FRAME_HEADER_SIZE : stop]), view[pos:stop])
        pos = stop


def frame_follows(buf, offset: int) -> bool:
    """Whether a valid frame follows the damaged one at `offset`.

    When the damaged frame's length field is intact the next frame starts right
    after it; if that one checks out, the damage sits in the middle of written
    (acknowledged) data and is corruption, not a torn tail.
    """
    if len(buf) - offset < FRAME_HEADER_SIZE:
        return False
    length = FRAME.unpack_from(buf, offset)[0]
    nxt = offset + FRAME_HEADER_SIZE + length
    if length == 0 or length > MAX_PAYLOAD or nxt >= len(buf):
        return False
    try:
        for _ in iter_frames(buf, nxt):
            return True
    except BadFrame:
        return False
    return False


def next_valid_frame(buf, start: int, marker: bytes) -> int | None:
    """Offset of the first valid frame at or after `start`, or None.

    `marker` (see `marker()`) names the lowest term to look for and the frame
    types. Candidates are found with a C-speed regex on the frame header's
    term and type bytes (terms from the marker's up to the marker's | 0xFFFF:
    terms only grow) and confirmed by the checksum. Used at recovery
    only, to tell damage in the middle of written data from a torn tail.
    """
    term = struct.unpack_from("<Q", marker)[0]
    types = bytes(t | flags for flags in (0, SYNC_FLAG, TS_FLAG, SYNC_FLAG | TS_FLAG)
                  for t in marker[8:])
    # The term's low 16 bits are free (a term that grew past a 256 boundary
    # still matches); the checksum and `fr.term >= term` do the rest.
    # Lookahead: matches may overlap (an LSN equal to the term, say).
    pattern = re.compile(b"(?=.." + re.escape(marker[2:8]) + b"[" + re.escape(types) + b"])",
                         re.DOTALL)
    view = bytes(memoryview(buf)[start:])
    for m in pattern.finditer(view):
        off = m.start() - 16
        if off < 0:
            continue
        try:
            for fr in iter_frames(view, off):
                if fr.term >= term:
                    return start + off
                break
        except BadFrame:
            continue
    return None


def written_end(buf, start: int) -> int:
    """Offset just past the last non-zero byte at or after `start` (start if none)."""
    view = memoryview(buf)
    end = len(view)
    step = 1 << 20
    while end > start:
        lo = max(start, end - step)
        chunk = bytes(view[lo:end]).rstrip(b"\x00")
        if chunk:
            return lo + len(chunk)
        end = lo
    return start


def frames_end(buf, start: int = HEADER_SIZE) -> int:
    """Offset just past the last frame of the run that starts at `start`, found by
    the length fields alone (no checksums): where a segment's written part ends.

    Stops at the end of `buf`, at an all-zero frame header (the preallocated
    tail) and at a length no frame can have or that runs past the end. For
    accounting only (the WAL's retention counts these bytes): recovery, which
    decides what to keep, checks every frame with `iter_frames` instead.
    """
    end = len(buf)
    pos = start
    unpack = FRAME.unpack_from
    while end - pos >= FRAME_HEADER_SIZE:
        length = unpack(buf, pos)[0]
        if length == 0 or length > MAX_PAYLOAD or pos + FRAME_HEADER_SIZE + length > end:
            break
        pos += FRAME_HEADER_SIZE + length
    return pos


def is_zero(buf, start: int) -> bool:
    """True if buf[start:] holds only zero bytes (preallocated, never written)."""
    view = memoryview(buf)[start:]
    step = 1 << 20
    for i in range(0, len(view), step):
        chunk = view[i : i + step]
        if bytes(chunk).count(0) != len(chunk):
            return False
    return True
