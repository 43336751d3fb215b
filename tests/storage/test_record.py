"""WAL/manifest frame codec (storage/record.py), in the style of LevelDB's log_test.cc.

Every reader error path is walked by building a buffer in memory, flipping
bytes or cutting it short, and asserting exactly where reading stops
(offset) and why (reason).
"""

from __future__ import annotations

import struct

import msgpack
import pytest
from crc32c import crc32c

from strata.storage import record
from strata.storage.record import (
    FRAME_HEADER_SIZE,
    HEADER_SIZE,
    MAX_PAYLOAD,
    BadFrame,
    decode_header,
    encode_frame,
    encode_header,
    frame_follows,
    is_zero,
    iter_frames,
    marker,
    next_valid_frame,
    written_end,
)


def frames_of(specs):
    """Encode [(lsn, term, type, payload)] back to back; return (buf, [offsets])."""
    buf = bytearray()
    offsets = []
    for lsn, term, ftype, payload in specs:
        offsets.append(len(buf))
        buf += encode_frame(lsn, term, ftype, payload)
    return bytes(buf), offsets


def read_all(buf, start=0):
    """(frames, error): every frame iter_frames yields, and the BadFrame it ended with (or None)."""
    out = []
    try:
        for fr in iter_frames(buf, start):
            out.append(fr)
    except BadFrame as e:
        return out, e
    return out, None


# Payload lengths chosen so that no frame's length field starts with a zero
# byte: a truncated header made only of zeros legitimately reads as end-of-data.
SPECS = [
    (1, 7, record.TYPE_PUT, b"\x92\xa1k\xa1v"),
    (2, 7, record.TYPE_DELETE, b"x" * 33),
    (3, 8, record.TYPE_BATCH, bytes(range(1, 120))),
    (4, 8, record.TYPE_EVENT, b"\xc4\x01z"),
]


# ---------------------------------------------------------------------- encode / decode


def test_frame_layout_is_as_documented():
    payload = b"hello"
    raw = encode_frame(0x0102030405060708, 0x1112131415161718, record.TYPE_PUT, payload)
    assert len(raw) == FRAME_HEADER_SIZE + len(payload) == 30
    length, crc, lsn, term, ftype = struct.unpack_from("<IIQQB", raw)
    assert (length, lsn, term, ftype) == (5, 0x0102030405060708, 0x1112131415161718, 1)
    assert crc == crc32c(raw[8:])
    assert raw[FRAME_HEADER_SIZE:] == payload


def test_roundtrip_yields_every_field_and_the_raw_bytes():
    buf, offsets = frames_of(SPECS)
    got, err = read_all(buf)
    assert err is None
    assert [(f.lsn, f.term, f.type, f.payload) for f in got] == SPECS
    assert [f.offset for f in got] == offsets
    for f, (lsn, term, ftype, payload) in zip(got, SPECS):
        assert bytes(f.raw) == encode_frame(lsn, term, ftype, payload)
        assert isinstance(f.payload, bytes)


def test_roundtrip_extreme_field_values():
    top = (1 << 64) - 1
    buf = encode_frame(top, top, 0xBF, b"\xff") + encode_frame(top, top, 0xBF, b"\xff", ts=top)
    f, g = list(iter_frames(buf, 0))
    # The type byte's high bit is the sync-point flag and the next one the commit
    # time's, both reported apart from the type.
    assert (f.lsn, f.term, f.type, f.payload, f.ts) == (top, top, 63, b"\xff", None)
    assert (g.lsn, g.term, g.type, g.payload, g.ts) == (top, top, 63, b"\xff", top)
    assert record.is_sync_point(f) and record.is_sync_point(g)


def test_iter_frames_starts_at_the_given_offset():
    buf, offsets = frames_of(SPECS)
    got = list(iter_frames(buf, offsets[2]))
    assert [f.lsn for f in got] == [3, 4]
    assert got[0].offset == offsets[2]
    # Offsets are relative to the buffer, not to `start` (a segment header precedes frames).
    seg = encode_header(1) + buf
    assert [f.offset for f in iter_frames(seg, HEADER_SIZE)] == [HEADER_SIZE + o for o in offsets]


def test_empty_buffer_and_start_at_end_yield_nothing():
    assert read_all(b"") == ([], None)
    buf, _ = frames_of(SPECS)
    assert read_all(buf, len(buf)) == ([], None)


def test_iter_frames_accepts_memoryview_and_bytearray():
    buf, _ = frames_of(SPECS)
    for b in (bytearray(buf), memoryview(buf)):
        assert [f.lsn for f in iter_frames(b, 0)] == [1, 2, 3, 4]


# ---------------------------------------------------------------------- zero-filled tail


@pytest.mark.parametrize("tail", [1, FRAME_HEADER_SIZE - 1, FRAME_HEADER_SIZE, 4096])
def test_stops_cleanly_at_zero_filled_tail(tail):
    buf, _ = frames_of(SPECS)
    got, err = read_all(buf + bytes(tail))
    assert err is None
    assert [f.lsn for f in got] == [1, 2, 3, 4]


def test_zero_header_ends_reading_even_if_data_follows():
    # The preallocated tail is recognised by its header alone; what lies past
    # it is never looked at (frame_follows is what tells damage from a tail).
    buf, _ = frames_of(SPECS[:2])
    tail, _ = frames_of(SPECS[2:])
    got, err = read_all(buf + bytes(FRAME_HEADER_SIZE) + tail)
    assert err is None
    assert [f.lsn for f in got] == [1, 2]


def test_zero_length_with_nonzero_header_is_bad():
    buf, offsets = frames_of(SPECS[:2])
    # encode_frame does not refuse an empty payload, but no writer produces one
    # and the reader must not take it for the zero-filled tail.
    bad = encode_frame(3, 0, record.TYPE_PUT, b"")
    assert bad[:4] == b"\0\0\0\0" and bad != bytes(FRAME_HEADER_SIZE)
    got, err = read_all(buf + bad + encode_frame(4, 0, 1, b"x"))
    assert [f.lsn for f in got] == [1, 2]
    assert err.offset == len(buf)
    assert err.reason == "zero-length frame"


# ---------------------------------------------------------------------- truncation


def test_every_truncation_stops_at_the_cut_frame():
    buf, offsets = frames_of(SPECS)
    ends = [o + FRAME_HEADER_SIZE + len(s[3]) for o, s in zip(offsets, SPECS)]
    for cut in range(len(buf) + 1):
        got, err = read_all(buf[:cut])
        complete = [i for i, e in enumerate(ends) if e <= cut]
        assert [f.lsn for f in got] == [SPECS[i][0] for i in complete], cut
        if cut in ends or cut == 0:
            assert err is None, cut
            continue
        start = offsets[len(complete)]
        assert err is not None, cut
        assert err.offset == start, cut
        if cut - start < FRAME_HEADER_SIZE:
            assert err.reason == f"truncated frame header ({cut - start} bytes)", cut
        else:
            length = len(SPECS[len(complete)][3])
            assert err.reason == f"frame of {length} bytes runs past the end of the file", cut


def test_truncated_header_of_zero_bytes_reads_as_end():
    # A header cut inside a run of zero bytes is indistinguishable from the
    # preallocated tail: reading stops cleanly there.
    buf, _ = frames_of(SPECS[:1])
    frame = encode_frame(2, 0, 1, b"y" * 256)  # length 256: first length byte is 0
    assert frame[0] == 0
    assert read_all(buf + frame[:1]) == (read_all(buf)[0], None)
    got, err = read_all(buf + frame[:2])
    assert err.offset == len(buf) and err.reason == "truncated frame header (2 bytes)"


def test_truncated_payload_reports_frame_start():
    frame = encode_frame(9, 1, 1, b"p" * 100)
    got, err = read_all(frame[:-1])
    assert got == []
    assert (err.offset, err.reason) == (0, "frame of 100 bytes runs past the end of the file")


# ---------------------------------------------------------------------- damage


def test_every_single_bit_flip_is_caught_at_its_frame():
    buf, offsets = frames_of(SPECS)
    bounds = list(zip(offsets, offsets[1:] + [len(buf)]))
    for pos in range(len(buf)):
        idx = next(i for i, (a, b) in enumerate(bounds) if a <= pos < b)
        for bit in range(8):
            dam = bytearray(buf)
            dam[pos] ^= 1 << bit
            got, err = read_all(bytes(dam))
            assert [f.lsn for f in got] == [s[0] for s in SPECS[:idx]], (pos, bit)
            assert err is not None, (pos, bit)
            assert err.offset == offsets[idx], (pos, bit)
            rel = pos - offsets[idx]
            if rel >= 4:  # length intact: only the checksum can tell
                expected = "frame checksum mismatch"
            else:  # length damaged: whichever check trips first
                n = len(SPECS[idx][3]) ^ (1 << (8 * rel + bit))
                if n == 0:
                    expected = "zero-length frame"
                elif n > MAX_PAYLOAD:
                    expected = f"frame length {n} exceeds the maximum {MAX_PAYLOAD}"
                elif offsets[idx] + FRAME_HEADER_SIZE + n > len(buf):
                    expected = f"frame of {n} bytes runs past the end of the file"
                else:
                    expected = "frame checksum mismatch"
            assert err.reason == expected, (pos, bit)


def test_crc_mismatch_in_payload():
    buf, offsets = frames_of(SPECS)
    dam = bytearray(buf)
    dam[offsets[1] + FRAME_HEADER_SIZE + 5] ^= 0x40
    got, err = read_all(bytes(dam))
    assert [f.lsn for f in got] == [1]
    assert (err.offset, err.reason) == (offsets[1], "frame checksum mismatch")


def test_crc_covers_lsn_term_and_type():
    for field_off in (8, 16, 24):  # lsn, term, type
        dam = bytearray(encode_frame(5, 6, 1, b"abc"))
        dam[field_off] ^= 1
        _, err = read_all(bytes(dam))
        assert (err.offset, err.reason) == (0, "frame checksum mismatch"), field_off


def test_oversize_length_is_refused_before_reading_payload():
    good, _ = frames_of(SPECS[:1])
    hdr = struct.pack("<IIQQB", MAX_PAYLOAD + 1, 0, 2, 0, 1)
    got, err = read_all(good + hdr + b"z" * 10)
    assert [f.lsn for f in got] == [1]
    assert err.offset == len(good)
    assert err.reason == f"frame length {MAX_PAYLOAD + 1} exceeds the maximum {MAX_PAYLOAD}"


def test_length_at_the_maximum_is_not_oversize():
    hdr = struct.pack("<IIQQB", MAX_PAYLOAD, 0, 2, 0, 1)
    _, err = read_all(hdr + b"z" * 10)
    assert (err.offset, err.reason) == (0, f"frame of {MAX_PAYLOAD} bytes runs past the end of the file")


def test_all_ones_length():
    hdr = b"\xff" * FRAME_HEADER_SIZE
    _, err = read_all(hdr)
    assert err.offset == 0
    assert err.reason == f"frame length {0xFFFFFFFF} exceeds the maximum {MAX_PAYLOAD}"


def test_garbage_tail_shorter_than_a_header():
    buf, _ = frames_of(SPECS)
    got, err = read_all(buf + b"\x00\x00\x07")
    assert len(got) == 4
    assert (err.offset, err.reason) == (len(buf), "truncated frame header (3 bytes)")


# ---------------------------------------------------------------------- frame_follows


def test_frame_follows_false_for_torn_last_frame():
    buf, offsets = frames_of(SPECS)
    assert not frame_follows(buf[:-3], offsets[-1])  # payload cut short
    dam = bytearray(buf)
    dam[-1] ^= 1
    assert not frame_follows(bytes(dam), offsets[-1])  # last frame bad, nothing after


def test_frame_follows_false_when_zero_fill_follows():
    buf, offsets = frames_of(SPECS)
    dam = bytearray(buf + bytes(4096))
    dam[offsets[-1] + FRAME_HEADER_SIZE] ^= 1
    assert not frame_follows(bytes(dam), offsets[-1])


def test_frame_follows_true_for_mid_file_damage():
    buf, offsets = frames_of(SPECS)
    for i in range(len(SPECS) - 1):
        dam = bytearray(buf)
        dam[offsets[i] + FRAME_HEADER_SIZE] ^= 0x80
        _, err = read_all(bytes(dam))
        assert err.offset == offsets[i]
        assert frame_follows(bytes(dam), err.offset), i


def test_frame_follows_looks_exactly_one_frame_ahead():
    buf, offsets = frames_of(SPECS)
    dam = bytearray(buf)
    dam[offsets[1] + FRAME_HEADER_SIZE] ^= 1
    dam[offsets[2] + FRAME_HEADER_SIZE] ^= 1
    # Frame 2 is damaged and so is frame 3, the one after it: no valid frame follows 2.
    assert not frame_follows(bytes(dam), offsets[1])
    assert frame_follows(bytes(dam), offsets[2])


def test_frame_follows_cannot_see_past_a_damaged_length():
    # Documented limit: with the length field damaged, the next frame cannot be
    # located, so damage there looks like a torn tail.
    buf, offsets = frames_of(SPECS)
    dam = bytearray(buf)
    dam[offsets[1]] ^= 0x01  # 33 -> 32
    _, err = read_all(bytes(dam))
    assert err.offset == offsets[1]
    assert not frame_follows(bytes(dam), offsets[1])


def test_frame_follows_near_end_of_buffer():
    buf, offsets = frames_of(SPECS)
    assert not frame_follows(buf, len(buf))
    assert not frame_follows(buf, len(buf) - FRAME_HEADER_SIZE + 1)
    zero_len = struct.pack("<IIQQB", 0, 1, 0, 0, 0) + buf
    assert not frame_follows(zero_len, 0)
    huge = struct.pack("<IIQQB", MAX_PAYLOAD + 1, 1, 0, 0, 0) + buf
    assert not frame_follows(huge, 0)


# ---------------------------------------------------------------------- next_valid_frame


def test_next_valid_frame_finds_the_first_frame_after_garbage():
    f1 = encode_frame(10, 0, record.TYPE_PUT, b"\x92\xa1a\xa1b")
    f2 = encode_frame(11, 0, record.TYPE_DELETE, b"\xa1a")
    buf = b"\x5a" * 37 + f1 + f2
    m = marker(0)
    assert next_valid_frame(buf, 0, m) == 37
    assert next_valid_frame(buf, 37, m) == 37
    assert next_valid_frame(buf, 38, m) == 37 + len(f1)
    assert next_valid_frame(buf, 37 + len(f1) + 1, m) is None
    assert next_valid_frame(b"", 0, m) is None
    assert next_valid_frame(bytes(4096), 0, m) is None


def test_next_valid_frame_requires_the_checksum():
    good = encode_frame(10, 0, record.TYPE_PUT, b"\x92\xa1a\xa1b")
    bad = bytearray(good)
    bad[-1] ^= 1
    assert next_valid_frame(b"xx" + bytes(bad), 0, marker(0)) is None
    assert next_valid_frame(b"xx" + bytes(bad) + good, 0, marker(0)) == 2 + len(good)


def test_next_valid_frame_filters_by_term_and_type():
    f = encode_frame(10, 7, record.TYPE_PUT, b"\x92\xa1a\xa1b")
    assert next_valid_frame(b"zz" + f, 0, marker(7)) == 2
    assert next_valid_frame(b"zz" + f, 0, marker(6)) == 2  # terms only grow: newer ones count
    assert next_valid_frame(b"zz" + f, 0, marker(8)) is None
    edit = encode_frame(0, 0, record.TYPE_EDIT, b"\x80")
    assert next_valid_frame(b"zz" + edit, 0, marker(0)) is None  # not a data type
    assert next_valid_frame(b"zz" + edit, 0, marker(0, bytes([record.TYPE_EDIT]))) == 2


def test_next_valid_frame_finds_a_frame_whose_lsn_equals_its_term():
    # Marker matches may overlap: when a frame's lsn field holds the same 8
    # bytes as its term and the term's low byte is a data type (term 1..5 and
    # lsn == term, for example), the lsn field plus the term's first byte look
    # like a marker too, and the real marker 8 bytes later must still be found.
    for term in (1, 2, 3, 4, 5, 6, 257):
        f = encode_frame(term, term, record.TYPE_PUT, b"\x92\xa1a\xa1b")
        assert next_valid_frame(b"\xaa" * 10 + f, 0, marker(term)) == 10, term


def test_written_end():
    assert written_end(b"", 0) == 0
    assert written_end(bytes(100), 0) == 0
    assert written_end(bytes(100), 40) == 40
    assert written_end(b"ab" + bytes(100), 0) == 2
    assert written_end(b"ab\x00c" + bytes(10), 0) == 4
    assert written_end(b"ab" + bytes(100), 5) == 5
    big = bytearray(3 << 20)
    big[5] = 1
    assert written_end(big, 0) == 6  # across several 1 MiB chunks
    big[(2 << 20) + 3] = 1
    assert written_end(big, 0) == (2 << 20) + 4


def test_is_zero():
    assert is_zero(b"", 0)
    assert is_zero(bytes(100), 0)
    assert is_zero(b"abc" + bytes(100), 3)
    assert not is_zero(b"abc" + bytes(100), 2)
    big = bytearray((1 << 20) + 10)
    assert is_zero(big, 0)
    big[-1] = 1
    assert not is_zero(big, 0)
    assert not is_zero(big, (1 << 20) + 9)
    assert is_zero(big, (1 << 20) + 10)


# ---------------------------------------------------------------------- segment header


def test_segment_header_roundtrip():
    for lsn in (0, 1, 12345, (1 << 64) - 1):
        h = encode_header(lsn)
        assert len(h) == HEADER_SIZE
        assert h[:8] == b"STRATWAL"
        assert decode_header(h, "seg") == lsn
        assert decode_header(h + b"trailing frames", "seg") == lsn


def test_segment_header_too_short():
    h = encode_header(5)
    for n in range(HEADER_SIZE):
        with pytest.raises(ValueError, match=r"^p: file shorter than the 24-byte header$"):
            decode_header(h[:n], "p")


def test_segment_header_bad_magic():
    h = bytearray(encode_header(5))
    h[0:8] = b"STRATWAX"
    with pytest.raises(ValueError, match=r"^p: bad magic b'STRATWAX'$"):
        decode_header(bytes(h), "p")


def test_segment_header_bad_crc():
    for pos in range(8, HEADER_SIZE):  # every byte after the magic
        h = bytearray(encode_header(5))
        h[pos] ^= 0x10
        with pytest.raises(ValueError, match=r"^p: header checksum mismatch$"):
            decode_header(bytes(h), "p")


def test_segment_header_wrong_version_with_valid_crc():
    head = struct.pack("<8sIQ", b"STRATWAL", 1, 5)  # version 1 had no sync-point flag
    h = head + struct.pack("<I", crc32c(head))
    with pytest.raises(ValueError, match=r"^p: unsupported version 1$"):
        decode_header(h, "p")


def test_all_zero_header_is_bad_magic():
    with pytest.raises(ValueError, match="bad magic"):
        decode_header(bytes(HEADER_SIZE), "p")


# ---------------------------------------------------------------------- payloads and request ids


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


# (type, payload as written, ops decode_ops must return from LSN 10, ids decode_ids must return)
PAYLOADS = [
    (record.TYPE_PUT, (b"k", b"v"), [(10, b"k", b"v")], []),
    (record.TYPE_PUT, (b"k", b"v", "r-1"), [(10, b"k", b"v")], [("r-1", 10)]),
    (record.TYPE_PUT, (b"k", b"", "r" * 64), [(10, b"k", b"")], [("r" * 64, 10)]),
    (record.TYPE_DELETE, b"k", [(10, b"k", None)], []),
    (record.TYPE_DELETE, (b"k", "r-2"), [(10, b"k", None)], [("r-2", 10)]),
    (record.TYPE_BATCH, [(1, b"a", b"1"), (2, b"b", None)],
     [(10, b"a", b"1"), (11, b"b", None)], []),
    # one id for the whole batch rides on its last op (the batch's answer is that LSN)
    (record.TYPE_BATCH, [(1, b"a", b"1"), (2, b"b", None, "whole")],
     [(10, b"a", b"1"), (11, b"b", None)], [("whole", 11)]),
    # coalesced calls: an id per op, some ops without one
    (record.TYPE_BATCH, [(1, b"a", b"1", "x"), (1, b"b", b"2"), (2, b"c", None, "z")],
     [(10, b"a", b"1"), (11, b"b", b"2"), (12, b"c", None)], [("x", 10), ("z", 12)]),
    (record.TYPE_EVENT, (b"topic", b"k", b"p"), [], []),
    (record.TYPE_TERM, (3, b"node-a"), [], []),
]


@pytest.mark.parametrize("ftype,obj,ops,ids", PAYLOADS)
def test_payloads_with_and_without_request_ids_roundtrip(ftype, obj, ops, ids):
    payload = _pack(obj)
    frame = encode_frame(10, 2, ftype, payload)
    (fr,) = list(iter_frames(frame, 0))
    assert record.decode_ops(fr.type, fr.lsn, fr.payload) == ops
    assert record.decode_ids(fr.type, fr.lsn, fr.payload) == ids
    # The LSN accounting never looks at the ids: a batch takes one LSN per op.
    n = len(ops) or 1
    assert record.lsn_count(fr.type, fr.payload) == n
    assert record.frame_span(frame) == (10, 10 + n - 1)
    assert record.frame_span(record.mark_sync(frame)) == (10, 10 + n - 1)


def test_version_2_frames_still_decode():
    """Frames as version 2 wrote them (the bytes of docs/format.md's example put and
    payloads without ids) decode unchanged, and a version-2 segment header is read."""
    put = bytes.fromhex("07000000c293b128" "0100000000000000" "0000000000000000" "01"
                        "92c4016bc40176")
    (fr,) = list(iter_frames(put, 0))
    assert record.decode_ops(fr.type, fr.lsn, fr.payload) == [(1, b"k", b"v")]
    assert record.decode_ids(fr.type, fr.lsn, fr.payload) == []
    head = struct.pack("<8sIQ", b"STRATWAL", 2, 7)
    assert decode_header(head + struct.pack("<I", crc32c(head)), "p") == 7
    assert record.VERSION == 4 and encode_header(7)[8:12] == b"\x04\x00\x00\x00"


def test_a_delete_with_an_id_is_not_taken_for_a_key():
    # A version-2 delete's payload is the key itself (bin); one with an id is an array.
    # Deciding by the msgpack type, not by length, keeps a key that looks like an array
    # header a key.
    for key in (b"\x92", b"\x92\xa1r", bytes(range(256))):
        assert record.decode_ops(record.TYPE_DELETE, 5, _pack(key)) == [(5, key, None)]
        assert record.decode_ids(record.TYPE_DELETE, 5, _pack(key)) == []


def test_a_frames_commit_time_travels_with_it():
    """Version 4: a frame may end with its commit time (TS_FLAG); every reader gives
    it back, re-flagging keeps it, and it is checksummed like the rest."""
    import time

    payload = msgpack.packb([[1, b"a", b"1"], [2, b"b", None]])
    before = time.time_ns()
    frame = record.encode_frame_now(10, 2, record.TYPE_BATCH, payload)
    assert before <= record.parse_frame_ts(frame)[4] <= time.time_ns()
    ts = record.parse_frame_ts(frame)[4]
    assert len(frame) == FRAME_HEADER_SIZE + len(payload) + 8 and frame[24] & record.TS_FLAG
    assert record.parse_frame(frame) == (10, 2, record.TYPE_BATCH, payload)
    assert record.frame_span(frame) == (10, 11)
    synced = record.mark_sync(frame)
    assert record.set_sync(synced, True) is synced and record.set_sync(frame, False) is frame
    assert record.set_sync(synced, False) == frame
    for raw in (frame, synced):
        (fr,) = list(iter_frames(raw, 0))
        assert (fr.lsn, fr.term, fr.type, fr.payload, fr.ts) == (10, 2, record.TYPE_BATCH, payload, ts)
        assert bytes(fr.raw) == raw
    assert record.parse_frame_ts(encode_frame(3, 0, record.TYPE_PUT, b"\x90"))[4] is None
    for i in range(len(frame) - 8, len(frame)):  # a damaged commit time fails the checksum
        dam = bytearray(frame)
        dam[i] ^= 0x01
        with pytest.raises(BadFrame, match="checksum"):
            list(iter_frames(dam, 0))


def test_next_valid_frame_finds_frames_with_a_commit_time():
    """Recovery's search after damage finds version-4 frames (TS_FLAG, with or without
    the sync-point flag) as it finds the others."""
    f1 = record.encode_frame_now(10, 3, record.TYPE_PUT, b"\x92\xa1a\xa1b")
    f2 = record.mark_sync(record.encode_frame_now(11, 3, record.TYPE_DELETE, b"\xa1a"))
    buf = b"\x5a" * 37 + f1 + f2
    m = marker(3)
    assert next_valid_frame(buf, 0, m) == 37
    assert next_valid_frame(buf, 38, m) == 37 + len(f1)
    assert next_valid_frame(buf, 37 + len(f1) + 1, m) is None
