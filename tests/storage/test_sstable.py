"""SSTables (storage/sstable.py): build, read at snapshots, block/file splitting, corruption.

Tables are built on MemFS and then damaged in memory: every byte flipped and
every length cut, asserting that the reader stops with Corruption naming the
file and the offset of the block (or footer) that failed.
"""

from __future__ import annotations

import errno
import os
import random
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strata.storage.errors import Corruption
from strata.storage.sstable import FOOTER_SIZE, TRAILER_SIZE, BlockCache, TableReader, build_tables
from strata.storage.vfs import FaultFS, MemFS

FOOTER = struct.Struct("<QIQIQII8s")


@pytest.fixture
def fs():
    m = MemFS()
    m.mkdir("/t")
    return m


def path_for(i: int) -> str:
    return f"/t/{i:06d}.sst"


def est(e) -> int:
    """The builder's size estimate of one entry (docs/format.md)."""
    k, _, v = e
    return len(k) + (len(v) if v is not None else 0) + 12


def make_entries(nkeys=200, seed=5, max_versions=4, value_size=(0, 40), tomb=0.15, prefix=b"key"):
    """Entries (key, -lsn, value) in internal order with unique LSNs."""
    rnd = random.Random(seed)
    lsns = list(range(1, nkeys * max_versions + 1))
    rnd.shuffle(lsns)
    out = []
    for i in range(nkeys):
        key = b"%s%05d" % (prefix, i * 3)  # gaps: key%05d with i*3+1 is absent
        nver = rnd.randint(1, max_versions)
        for _ in range(nver):
            lsn = lsns.pop()
            v = None if rnd.random() < tomb else bytes([97 + i % 26]) * rnd.randint(*value_size)
            out.append((key, -lsn, v))
    out.sort(key=lambda e: (e[0], e[1]))
    return out


NOT_FOUND = (0, None)


def model_get(entries, key, snap):
    """(-lsn, value) of the newest version at or below snap, else (0, None)."""
    for k, neg, v in entries:
        if k == key and -neg <= snap:
            return neg, v  # entries are newest first per key
    return NOT_FOUND


def decode_block(contents: bytes):
    """An independent decoder of a version-2 data block (docs/format.md, "Data block"):
    [(first_key, shared, [(key, -lsn, value), ...]) per restart group]."""
    end, = struct.unpack_from("<I", contents, len(contents) - 4)
    restarts = msgpack.unpackb(contents[end:-4])
    firsts, offs = restarts[0::2], restarts[1::2] + [end]
    groups = []
    for first, a, b in zip(firsts, offs, offs[1:]):
        flat = msgpack.unpackb(contents[a:b])
        shared = flat[0]
        es = [(first[:shared] + s, n, v) for s, n, v in zip(flat[1::3], flat[2::3], flat[3::3])]
        assert es[0][0] == first
        groups.append((first, shared, es))
    return groups


def parse_table(buf: bytes):
    """An independent reader: [(last_key, offset, size, [(key, -lsn, value), ...])], meta offsets.
    Uncompressed tables only."""
    (index_off, index_size, filter_off, filter_size, props_off, props_size, version,
     magic) = FOOTER.unpack_from(buf, len(buf) - FOOTER_SIZE)
    assert magic == b"STRATSST" and version == 2
    index = msgpack.unpackb(buf[index_off:index_off + index_size])
    blocks = []
    for last, off, size in zip(index[0::3], index[1::3], index[2::3]):
        assert buf[off + size] == 0, "uncompressed"
        es = [e for _, _, group in decode_block(buf[off:off + size]) for e in group]
        blocks.append((last, off, size, es))
    meta = {"filter": (filter_off, filter_size), "props": (props_off, props_size),
            "index": (index_off, index_size)}
    return blocks, meta


def build_one(fs, entries, block_size=256, **kw):
    out = build_tables(fs, entries, path_for, target_file_size=1 << 30, block_size=block_size, **kw)
    assert len(out) == 1
    return out[0]


def reopen(fs, path, number=1, cache=None):
    return TableReader(fs, path, number, cache)


def rewrite(fs, path, data):
    f = fs.create(path)
    f.write(data)
    f.sync()
    f.close()


# ---------------------------------------------------------------------- roundtrip


def test_roundtrip_props_and_all_entries(fs):
    entries = make_entries()
    path, props = build_one(fs, entries)
    r = reopen(fs, path)
    assert r.all_entries() == entries
    assert (r.smallest, r.largest) == (entries[0][0], entries[-1][0])
    assert r.entries == len(entries)
    assert r.min_lsn == min(-n for _, n, _ in entries)
    assert r.max_lsn == max(-n for _, n, _ in entries)
    assert r.file_size == props["file_size"] == fs.size(path)
    assert props["smallest"] == r.smallest and props["largest"] == r.largest
    assert props["entries"] == len(entries)
    assert props["tombstones"] == sum(1 for e in entries if e[2] is None)
    assert (props["min_lsn"], props["max_lsn"]) == (r.min_lsn, r.max_lsn)
    r.verify()
    r.close()


def test_get_at_every_snapshot(fs):
    entries = make_entries()
    path, _ = build_one(fs, entries)
    r = reopen(fs, path)
    keys = sorted({k for k, _, _ in entries})
    for key in keys:
        lsns = sorted(-n for k, n, _ in entries if k == key)
        snaps = {0, 1, 1 << 62, r.max_lsn}
        for lsn in lsns:
            snaps |= {lsn - 1, lsn, lsn + 1}
        for s in sorted(snaps):
            assert r.get(key, s) == model_get(entries, key, s), (key, s)


def test_get_absent_keys(fs):
    entries = make_entries()
    path, _ = build_one(fs, entries)
    r = reopen(fs, path)
    for key in (b"", b"a", b"key", b"key00001", b"key00299x", b"key99999", b"zzz", b"\xff"):
        assert r.get(key, 1 << 62) == NOT_FOUND, key
    assert not r.may_contain(b"a") and not r.may_contain(b"zzz")  # outside [smallest, largest]
    present = {k for k, _, _ in entries}
    assert all(r.may_contain(k) for k in present)


def test_tombstone_is_found_not_absent(fs):
    entries = [(b"a", -3, None), (b"a", -1, b"old"), (b"b", -2, b"B")]
    path, props = build_one(fs, entries)
    r = reopen(fs, path)
    assert r.get(b"a", 5) == (-3, None)
    assert r.get(b"a", 2) == (-1, b"old")
    assert r.get(b"a", 0) == NOT_FOUND
    assert props["tombstones"] == 1


@pytest.mark.parametrize("block_size", [1, 64, 256, 4096])
def test_entries_from_bounds(fs, block_size):
    entries = make_entries(nkeys=120, seed=9)
    path, _ = build_one(fs, entries, block_size=block_size)
    r = reopen(fs, path)
    keys = sorted({k for k, _, _ in entries})
    bounds = [None, b"", b"a", keys[0], keys[1], b"key00001", keys[57], keys[58], b"key00200",
              keys[-1], b"key99999", b"\xff"]
    for lo in bounds:
        for hi in bounds:
            want = [e for e in entries if (lo is None or e[0] >= lo) and (hi is None or e[0] < hi)]
            assert list(r.entries_from(lo, hi)) == want, (lo, hi)


def test_roundtrip_on_the_os_file_system(tmp_path):
    from strata.storage.vfs import OsFS

    osfs = OsFS()
    entries = make_entries(nkeys=100, seed=12)
    ((path, props),) = build_tables(osfs, entries, lambda i: str(tmp_path / f"{i:06d}.sst"),
                                    1 << 30, block_size=256)
    r = TableReader(osfs, path, 1, BlockCache(1 << 20))  # reads through an mmap
    assert r.all_entries() == entries
    for k, n, v in entries[::7]:
        assert r.get(k, -n) == (n, v)
    assert list(r.entries_from(b"key00030", b"key00060")) == [
        e for e in entries if b"key00030" <= e[0] < b"key00060"]
    r.verify()
    r.close()
    data = bytearray((tmp_path / "000000.sst").read_bytes())
    data[10] ^= 0x01
    (tmp_path / "000000.sst").write_bytes(bytes(data))
    r = TableReader(osfs, path, 2)
    with pytest.raises(Corruption) as ei:
        r.verify()
    assert (ei.value.path, ei.value.offset) == (path, 0)
    r.close()


def test_table_larger_than_the_write_buffer(fs):
    # The builder writes in chunks of about 1 MiB; a bigger table spans several.
    entries = [(b"big%06d" % i, -(i + 1), bytes([i % 251]) * 700) for i in range(3000)]
    path, props = build_one(fs, entries, block_size=4096)
    assert props["file_size"] > 2 << 20
    r = reopen(fs, path)
    assert r.all_entries() == entries
    r.verify()
    for i in (0, 1499, 2999):
        assert r.get(b"big%06d" % i, 1 << 62) == (-(i + 1), bytes([i % 251]) * 700)


def test_single_entry_table(fs):
    path, props = build_one(fs, [(b"only", -7, b"v")])
    r = reopen(fs, path)
    assert r.get(b"only", 7) == (-7, b"v")
    assert r.get(b"only", 6) == NOT_FOUND
    assert list(r.entries_from()) == [(b"only", -7, b"v")]
    assert (r.min_lsn, r.max_lsn, r.entries) == (7, 7, 1)


def test_empty_input_builds_nothing(fs):
    assert build_tables(fs, [], path_for, 1000) == []
    assert fs.listdir("/t") == []


def test_reader_through_cache_matches_reader_without(fs):
    entries = make_entries(nkeys=300, seed=2)
    path, _ = build_one(fs, entries, block_size=128)
    cache = BlockCache(1 << 20)
    a, b = reopen(fs, path), reopen(fs, path, cache=cache)
    for _ in range(2):
        for k, n, _ in entries[::3]:
            assert a.get(k, -n) == b.get(k, -n)
        assert list(a.entries_from(b"key00100", b"key00500")) == list(b.entries_from(b"key00100", b"key00500"))
    assert cache.hits > 0 and cache.misses > 0


# ---------------------------------------------------------------------- layout


def test_index_points_at_blocks_in_order_and_versions_never_split(fs):
    # One key with many versions (bigger than a block) among ordinary keys.
    entries = make_entries(nkeys=150, seed=3)
    many = [(b"key00150", -(10_000 + i), b"x" * 30) for i in range(100)]
    entries = sorted([e for e in entries if e[0] != b"key00150"] + many, key=lambda e: (e[0], e[1]))
    path, _ = build_one(fs, entries, block_size=200)
    blocks, meta = parse_table(fs.read_bytes(path))
    assert len(blocks) > 10
    flat = [e for *_, es in blocks for e in es]
    assert flat == entries
    owner = {}
    pos = 0
    for i, (last, off, size, es) in enumerate(blocks):
        assert off == pos, "blocks are contiguous from offset 0"
        pos = off + size + TRAILER_SIZE
        assert last == es[-1][0]
        for k, _, _ in es:
            assert owner.setdefault(k, i) == i, f"versions of {k!r} split across blocks"
        # closed after the entry that reaches block_size, extended to the key's end
        total = sum(map(est, es))
        last_group = sum(est(e) for e in es if e[0] == last)
        assert total >= 200 or i == len(blocks) - 1
        assert total - last_group < 200
    assert meta["filter"][0] == pos
    assert sum(1 for e in blocks if any(k == b"key00150" for k, _, _ in e[3])) == 1
    r = reopen(fs, path)
    for i in range(100):
        assert r.get(b"key00150", 10_000 + i) == (-(10_000 + i), b"x" * 30)


def test_file_split_near_target_and_keys_never_span_files(fs):
    rnd = random.Random(4)
    entries = []
    lsn = 1
    for i in range(2000):
        nver = 40 if i % 500 == 7 else 1  # a few keys with many versions
        for _ in range(nver):
            entries.append((b"k%06d" % i, -lsn, b"v" * rnd.randint(20, 60)))
            lsn += 1
    entries.sort(key=lambda e: (e[0], e[1]))
    target = 8192
    outs = build_tables(fs, entries, path_for, target_file_size=target, block_size=1024)
    assert [p for p, _ in outs] == [path_for(i) for i in range(len(outs))]
    assert len(outs) > 10
    got = []
    for i, (p, props) in enumerate(outs):
        r = reopen(fs, p, number=i)
        es = r.all_entries()
        got += es
        total = sum(map(est, es))
        last_group = sum(est(e) for e in es if e[0] == r.largest)
        if i < len(outs) - 1:
            assert total >= target, i
        assert total - last_group < target, i
        # The split counts whole keys; shared key prefixes make the file a little smaller.
        assert 0.75 * target < props["file_size"] < 2 * target or i == len(outs) - 1
        assert props["entries"] == len(es)
    assert got == entries
    for (_, a), (_, b) in zip(outs, outs[1:]):
        assert a["largest"] < b["smallest"], "a key's versions never span two tables"


# ---------------------------------------------------------------------- corruption


def test_flipped_byte_in_data_block_raises_on_read_and_verify(fs):
    entries = make_entries(nkeys=100, seed=8)
    path, _ = build_one(fs, entries, block_size=256)
    good = fs.read_bytes(path)
    blocks, _ = parse_table(good)
    assert len(blocks) >= 4
    for idx in (0, len(blocks) // 2, len(blocks) - 1):
        last, off, size, es = blocks[idx]
        for pos in (off, off + size // 2, off + size - 1, off + size, off + size + TRAILER_SIZE - 1):
            bad = bytearray(good)
            bad[pos] ^= 0x04
            rewrite(fs, path, bytes(bad))
            r = reopen(fs, path)  # data blocks are not read at open
            key = es[0][0]
            with pytest.raises(Corruption) as ei:
                r.get(key, 1 << 62)
            assert (ei.value.path, ei.value.offset) == (path, off), (idx, pos)
            with pytest.raises(Corruption) as ei:
                r.verify()
            assert (ei.value.path, ei.value.offset) == (path, off)
            with pytest.raises(Corruption) as ei:
                r.all_entries()
            assert ei.value.offset == off
            with pytest.raises(Corruption) as ei:
                list(r.entries_from())
            assert ei.value.offset == off
            # Blocks before the damaged one still read.
            if idx > 0:
                assert r.get(blocks[0][3][0][0], 1 << 62) == model_get(entries, blocks[0][3][0][0], 1 << 62)


def test_every_byte_flip_is_detected(fs):
    entries = [(b"k%03d" % i, -(i + 1), b"v%d" % i) for i in range(40)]
    path, _ = build_one(fs, entries, block_size=100)
    good = fs.read_bytes(path)
    n = len(good)
    blocks, meta = parse_table(good)
    regions = [(off, off + size + TRAILER_SIZE, off) for _, off, size, _ in blocks]
    regions += [(off, off + size + TRAILER_SIZE, off) for off, size in meta.values()]
    for pos in range(n):
        bad = bytearray(good)
        bad[pos] ^= 0xFF
        rewrite(fs, path, bytes(bad))
        with pytest.raises(Corruption) as ei:
            r = reopen(fs, path)
            r.verify()
        e = ei.value
        assert e.path == path
        if pos >= n - 12:  # version and magic
            assert e.offset == n - FOOTER_SIZE, pos
            assert ("magic" if pos >= n - 8 else "version") in e.reason, pos
        elif pos < n - FOOTER_SIZE:
            (start, end, off), = [r for r in regions if r[0] <= pos < r[1]]
            assert e.offset == off, pos
            assert e.reason == "block checksum mismatch", pos


def test_every_truncation_is_detected_at_open(fs):
    entries = [(b"k%03d" % i, -(i + 1), b"v%d" % i) for i in range(40)]
    path, _ = build_one(fs, entries, block_size=100)
    good = fs.read_bytes(path)
    for cut in range(len(good)):
        rewrite(fs, path, good[:cut])
        with pytest.raises(Corruption) as ei:
            reopen(fs, path)
        if cut < FOOTER_SIZE:
            assert ei.value.offset == 0, cut
            assert ei.value.reason == f"file of {cut} bytes is shorter than the footer"
        else:
            assert ei.value.offset == cut - FOOTER_SIZE, cut
            assert "bad table magic" in ei.value.reason, cut


def test_bad_footer_magic_and_version(fs):
    path, _ = build_one(fs, [(b"a", -1, b"1")])
    good = bytearray(fs.read_bytes(path))
    n = len(good)
    bad = bytearray(good)
    bad[-8:] = b"LEVELDB!"
    rewrite(fs, path, bytes(bad))
    with pytest.raises(Corruption) as ei:
        reopen(fs, path)
    assert (ei.value.offset, ei.value.reason) == (n - FOOTER_SIZE, "bad table magic b'LEVELDB!'")
    bad = bytearray(good)
    bad[-12:-8] = struct.pack("<I", 3)
    rewrite(fs, path, bytes(bad))
    with pytest.raises(Corruption) as ei:
        reopen(fs, path)
    assert (ei.value.offset, ei.value.reason) == (n - FOOTER_SIZE, "unsupported table version 3")


def test_footer_offset_past_the_end(fs):
    path, _ = build_one(fs, [(b"a", -1, b"1")])
    good = bytearray(fs.read_bytes(path))
    n = len(good)
    bad = bytearray(good)
    struct.pack_into("<Q", bad, n - FOOTER_SIZE, n)  # index_off = file size
    rewrite(fs, path, bytes(bad))
    with pytest.raises(Corruption) as ei:
        reopen(fs, path)
    assert ei.value.offset == n
    assert "runs past the end" in ei.value.reason


def test_unknown_compression_type_with_valid_crc(fs):
    from crc32c import crc32c

    path, _ = build_one(fs, [(b"a", -1, b"1"), (b"b", -2, b"2")])
    good = bytearray(fs.read_bytes(path))
    blocks, _ = parse_table(bytes(good))
    _, off, size, _ = blocks[0]
    contents = bytes(good[off:off + size])
    good[off + size:off + size + TRAILER_SIZE] = struct.pack("<BI", 9, crc32c(contents + b"\x09"))
    rewrite(fs, path, bytes(good))
    r = reopen(fs, path)
    with pytest.raises(Corruption) as ei:
        r.get(b"a", 5)
    assert (ei.value.offset, ei.value.reason) == (off, "unknown block compression 9")


def test_undecodable_block_with_valid_crc(fs):
    from crc32c import crc32c

    path, _ = build_one(fs, [(b"a", -1, b"1"), (b"b", -2, b"2")])
    good = bytearray(fs.read_bytes(path))
    blocks, _ = parse_table(bytes(good))
    _, off, size, _ = blocks[0]
    junk = b"\xc1" * size  # 0xc1 is never used in msgpack
    good[off:off + size] = junk
    good[off + size:off + size + TRAILER_SIZE] = struct.pack("<BI", 0, crc32c(junk + b"\x00"))
    rewrite(fs, path, bytes(good))
    r = reopen(fs, path)
    with pytest.raises(Corruption) as ei:
        r.get(b"a", 5)
    assert ei.value.offset == off
    assert ei.value.reason.startswith("undecodable block")
    with pytest.raises(Corruption):
        r.all_entries()
    with pytest.raises(Corruption) as ei:
        r.verify()  # verify decodes every block, beyond its CRC (docs/format.md)
    assert ei.value.offset == off


# ---------------------------------------------------------------------- failures while building


@pytest.mark.parametrize("kind", ["write", "sync"])
def test_failed_build_removes_the_partial_table(fs, kind):
    ffs = FaultFS(fs)
    ffs.fail(kind, err=errno.ENOSPC)
    with pytest.raises(OSError) as ei:
        build_tables(ffs, make_entries(), path_for, 1 << 30)
    assert ei.value.errno == errno.ENOSPC
    assert fs.listdir("/t") == []


def test_failed_second_table_keeps_the_first(fs):
    ffs = FaultFS(fs)
    ffs.fail("create", after=1, err=errno.EIO)
    with pytest.raises(OSError):
        build_tables(ffs, make_entries(nkeys=400), path_for, 2000)
    assert fs.listdir("/t") == ["000000.sst"]
    reopen(fs, "/t/000000.sst").verify()


# ---------------------------------------------------------------------- block cache


def blk(size):
    return ([], [], [], size)


def test_block_cache_stays_within_capacity_and_evicts_lru():
    c = BlockCache(1000)
    for i in range(10):
        c.put((1, i), blk(300))
        assert c.size <= 1000
    assert c.size == 900
    assert [c.get((1, i)) is not None for i in range(10)] == [False] * 7 + [True] * 3
    c2 = BlockCache(1000)
    c2.put((1, 0), blk(400))
    c2.put((1, 1), blk(400))
    assert c2.get((1, 0)) is not None  # 0 is now most recently used
    c2.put((1, 2), blk(400))  # evicts 1, not 0
    assert c2.get((1, 1)) is None
    assert c2.get((1, 0)) is not None and c2.get((1, 2)) is not None
    assert c2.size == 800


def test_block_cache_oversized_block_and_duplicates():
    c = BlockCache(100)
    c.put((1, 0), blk(60))
    c.put((1, 0), blk(60))  # already cached: not counted twice
    assert c.size == 60
    c.put((2, 0), blk(500))  # larger than the cache: does not stay
    assert c.size <= 100
    assert c.get((2, 0)) is None
    hits, misses = c.hits, c.misses
    c.get((9, 9))
    assert (c.hits, c.misses) == (hits, misses + 1)


def test_block_cache_bounded_under_table_reads(fs):
    entries = make_entries(nkeys=400, seed=6)
    path, _ = build_one(fs, entries, block_size=128)
    blocks, _ = parse_table(fs.read_bytes(path))
    # a decoded block is charged its size plus ~200 bytes an entry (sstable.TableReader._block)
    cap = 3 * max(size + 200 * len(ents) + 400 for _, _, size, ents in blocks)
    cache = BlockCache(cap)
    r1 = reopen(fs, path, number=1, cache=cache)
    r2 = reopen(fs, path, number=2, cache=cache)
    for k, n, _ in entries:
        assert r1.get(k, -n) == r2.get(k, -n)
        assert cache.size <= cap
    h = cache.hits
    k = entries[0][0]
    r1.get(k, 1 << 62)
    r1.get(k, 1 << 62)
    assert cache.hits >= h + 1


# ---------------------------------------------------------------- block compression

def _trailer_types(buf: bytes) -> list[int]:
    """The compression byte of every data block, read from the file's own index."""
    (index_off, index_size, *_rest) = FOOTER.unpack_from(buf, len(buf) - FOOTER_SIZE)
    index = msgpack.unpackb(buf[index_off:index_off + index_size])
    return [buf[off + size] for off, size in zip(index[1::3], index[2::3])]


@pytest.mark.parametrize("codec,code", [("lz4", 1), ("zstd", 2)])
def test_compressed_tables_read_back_what_was_written_at_every_snapshot(fs, codec, code):
    entries = make_entries(nkeys=300, value_size=(20, 120))  # runs of one letter: compressible
    plain_path, _ = build_one(fs, entries)
    path, props = build_tables(fs, entries, lambda i: f"/t/{codec}-{i}.sst", 1 << 30,
                               block_size=256, compression=codec)[0]
    buf = fs.read_bytes(path)
    assert set(_trailer_types(buf)) == {code}
    assert props["file_size"] < len(fs.read_bytes(plain_path)) * 0.7
    r = reopen(fs, path)
    assert list(r.entries_from()) == entries
    keys = sorted({k for k, _, _ in entries})
    for key in keys[::7] + [b"key00001", b"zzz"]:
        for snap in (1, 200, 10**9):
            assert r.get(key, snap) == model_get(entries, key, snap)
    assert r.range_entries(keys[10], keys[50]) == [e for e in entries if keys[10] <= e[0] < keys[50]]


def test_a_block_that_does_not_shrink_by_an_eighth_is_stored_plain(fs):
    rnd = random.Random(3)
    entries = [(b"k%04d" % i, -(i + 1), rnd.randbytes(200)) for i in range(50)]
    path, _ = build_tables(fs, entries, path_for, 1 << 30, block_size=512, compression="zstd")[0]
    assert set(_trailer_types(fs.read_bytes(path))) == {0}
    assert list(reopen(fs, path).entries_from()) == entries


def test_the_block_cache_counts_uncompressed_bytes(fs):
    entries = make_entries(nkeys=100, value_size=(100, 100), tomb=0)
    path, _ = build_tables(fs, entries, path_for, 1 << 30, block_size=256, compression="lz4")[0]
    cache = BlockCache(1 << 30)
    r = reopen(fs, path, cache=cache)
    list(r.entries_from())
    stored = sum(r._sizes)
    assert cache.size > stored, "decoded blocks are charged at their uncompressed size"


@pytest.mark.parametrize("codec,code", [("lz4", 1), ("zstd", 2)])
def test_a_compressed_block_that_does_not_decompress_is_corruption(fs, codec, code):
    from crc32c import crc32c

    entries = make_entries(nkeys=60, value_size=(50, 80))
    path, _ = build_tables(fs, entries, path_for, 1 << 30, block_size=256, compression=codec)[0]
    buf = bytearray(fs.read_bytes(path))
    (index_off, index_size, *_rest) = FOOTER.unpack_from(buf, len(buf) - FOOTER_SIZE)
    index = msgpack.unpackb(bytes(buf[index_off:index_off + index_size]))
    off, size = index[1], index[2]
    assert buf[off + size] == code
    garbage = bytes(range(256))[:size] * (size // 256 + 1)
    buf[off:off + size] = garbage[:size]  # a payload the codec cannot read, with a valid CRC
    buf[off + size:off + size + TRAILER_SIZE] = struct.pack("<BI", code,
                                                             crc32c(garbage[:size] + bytes([code])))
    rewrite(fs, path, bytes(buf))
    r = reopen(fs, path)
    with pytest.raises(Corruption) as ei:
        r.get(entries[0][0], 10**9)
    assert ei.value.offset == off
    assert ei.value.reason.startswith(f"undecompressible block (compression {code})")


def test_unknown_codec_names_are_refused():
    from strata.storage.errors import InvalidArgument
    from strata.storage.options import Options

    with pytest.raises(InvalidArgument):
        Options.make(compression="snappy")
    with pytest.raises(InvalidArgument):
        Options.make(compression_per_level="none,lz5")
    o = Options.make(compression="lz4", compression_per_level="none, lz4 ,zstd")
    assert [o.codec(i) for i in range(5)] == ["none", "lz4", "zstd", "zstd", "zstd"]
    assert Options.make(compression="zstd").codec(3) == "zstd"


# ---------------------------------------------------------------------- the block format, by model


KEYS_WITH_PREFIXES = st.lists(
    st.tuples(st.sampled_from([b"", b"a", b"ab", b"abc", b"user:", b"user:1"]),
              st.binary(max_size=3)).map(lambda t: t[0] + t[1]),
    min_size=1, max_size=60, unique=True)


@st.composite
def table_entries(draw):
    """(key, -lsn, value|None) in internal order: keys sharing prefixes of every length
    (the empty key included), up to four versions each, tombstones, empty values."""
    keys = sorted(draw(KEYS_WITH_PREFIXES))
    lsns = draw(st.permutations(range(1, 4 * len(keys) + 1)))
    out = []
    for k in keys:
        for _ in range(draw(st.integers(1, 4))):
            v = draw(st.none() | st.binary(max_size=40))
            out.append((k, -lsns.pop(), v))
    out.sort(key=lambda e: (e[0], e[1]))
    return out


@settings(max_examples=150, deadline=None)
@given(entries=table_entries(), block_size=st.sampled_from([16, 64, 200, 4096]),
       interval=st.integers(1, 6), codec=st.sampled_from(["none", "lz4", "zstd"]),
       cached=st.booleans(), data=st.data())
def test_block_format_against_a_model(entries, block_size, interval, codec, cached, data):
    """Every entry, every version at every snapshot, absent keys and ranges read back as
    written, whatever the block size, restart interval and codec (format version 2)."""
    fs = MemFS()
    fs.mkdir("/t")
    (path, props), = build_tables(fs, entries, path_for, 1 << 30, block_size=block_size,
                                  compression=codec, restart_interval=interval)
    r = TableReader(fs, path, 1, BlockCache(1 << 20) if cached else None)
    assert r.version == 2
    assert r.all_entries() == entries
    r.verify()
    keys = sorted({k for k, _, _ in entries})
    for key in keys + [b"a\x00", b"user:\xff", b"zz", keys[0] + b"\x00"]:
        snaps = {0, 1 << 62} | {-n for k, n, _ in entries if k == key} | {-n - 1 for k, n, _ in entries if k == key}
        for s in snaps:
            want = model_get(entries, key, s)
            assert r.get(key, s) == want, (key, s)
            assert r.get_cached_first(key, s) == want, (key, s)
    for _ in range(3):
        start = data.draw(st.none() | st.sampled_from(keys) | st.binary(max_size=3))
        end = data.draw(st.none() | st.sampled_from(keys) | st.binary(max_size=3))
        want = [e for e in entries
                if (start is None or e[0] >= start) and (end is None or e[0] < end)]
        assert list(r.entries_from(start, end)) == want
        assert r.range_entries(start, end) == want


def test_restart_groups_share_prefixes_and_never_split_a_key(fs):
    """The layout itself (docs/format.md, "Data block"): groups of `interval` entries
    unless a key's versions run on, each group's keys begin with its shared prefix."""
    entries = [(b"user:%04d" % (i // 3), -(1000 - i), b"v%d" % i) for i in range(300)]
    entries.sort()
    path, _ = build_one(fs, entries, block_size=1 << 16, restart_interval=4)
    blocks, _ = parse_table(fs.read_bytes(path))
    assert len(blocks) == 1
    _, off, size, _ = blocks[0]
    groups = decode_block(fs.read_bytes(path)[off:off + size])
    assert [e for _, _, es in groups for e in es] == entries
    for first, shared, es in groups:
        assert shared == len(os.path.commonprefix([es[0][0], es[-1][0]]))
        assert 4 <= len(es) <= 6 or es is groups[-1][2]  # 4, run on to keep 3 versions whole
        assert all(k.startswith(first[:shared]) for k, _, _ in es)
    for (_, _, a), (_, _, b) in zip(groups, groups[1:]):
        assert a[-1][0] != b[0][0], "a key's versions split across groups"


def test_keys_are_stored_whole_unless_prefixes_save_an_eighth_of_the_block(fs):
    """16-byte keys beside 100-byte values (prefixes would save ~8 %): every group has
    shared 0 and its keys whole; long shared prefixes beside small values keep them.
    Both read back the same (docs/format.md, "Data block")."""
    for key_fmt, value, whole in ((b"%016d", b"v" * 100, True),
                                  (b"tenant-0001/user/%08d", b"v", False)):
        entries = sorted((key_fmt % (i * 7), -(i + 1), value) for i in range(200))
        path, _ = build_one(fs, entries, block_size=4096, restart_interval=8)
        blocks, _ = parse_table(fs.read_bytes(path))
        data = fs.read_bytes(path)
        shared = [sh for _, off, size, _ in blocks
                  for _, sh, _ in decode_block(data[off:off + size])]
        assert (set(shared) == {0}) == whole, shared
        r = reopen(fs, path)
        assert r.all_entries() == entries
        assert list(r.entries_from(entries[50][0], entries[150][0])) == entries[50:150]
        for key, neg, v in entries[::13]:
            assert r.get(key, 1 << 62) == (neg, v)
        fs.remove(path)


def _rewrite_block(fs, path, off, size, contents: bytes) -> None:
    """Replace data block (off, size) with `contents`, uncompressed, with a valid CRC, and
    the index entry's size with the new one (the block must keep its length)."""
    from crc32c import crc32c

    assert len(contents) == size
    good = bytearray(fs.read_bytes(path))
    good[off:off + size] = contents
    good[off + size:off + size + TRAILER_SIZE] = struct.pack("<BI", 0, crc32c(contents + b"\x00"))
    rewrite(fs, path, bytes(good))


@pytest.mark.parametrize("damage", ["tail past the end", "restarts not pairs",
                                    "offsets descend", "group not msgpack"])
def test_malformed_block_with_valid_crc_is_corruption(fs, damage):
    """A block whose CRC checks out but whose restart array or groups do not (a bug, or
    a block of another format) is Corruption naming the block, never a wrong answer."""
    entries = [(b"key%03d" % i, -(i + 1), b"v%d" % i) for i in range(40)]
    path, _ = build_one(fs, entries, block_size=4096, restart_interval=4)
    blocks, _ = parse_table(fs.read_bytes(path))
    _, off, size, _ = blocks[0]
    contents = bytearray(fs.read_bytes(path)[off:off + size])
    end, = struct.unpack_from("<I", contents, size - 4)
    if damage == "tail past the end":
        struct.pack_into("<I", contents, size - 4, size)
    elif damage == "restarts not pairs":
        restarts = msgpack.unpackb(bytes(contents[end:size - 4]))
        packed = msgpack.packb(restarts[:-1])
        packed += b"\xc0" * (size - 4 - end - len(packed))  # nil padding: extra data
        contents[end:size - 4] = packed[:size - 4 - end]
    elif damage == "offsets descend":
        restarts = msgpack.unpackb(bytes(contents[end:size - 4]))
        restarts[3], restarts[5] = restarts[5], restarts[3]
        packed = msgpack.packb(restarts)
        assert len(packed) == size - 4 - end
        contents[end:size - 4] = packed
    else:
        contents[0:4] = b"\xc1\xc1\xc1\xc1"  # 0xc1 is never used in msgpack
    _rewrite_block(fs, path, off, size, bytes(contents))
    r = reopen(fs, path)
    with pytest.raises(Corruption) as ei:
        for k, _, _ in entries:
            r.get(k, 1 << 62)
    assert ei.value.offset == off
    with pytest.raises(Corruption):
        r.verify()
    with pytest.raises(Corruption):
        list(r.entries_from())
