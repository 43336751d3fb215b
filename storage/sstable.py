"""SSTable: an immutable sorted file of internal entries (docs/format.md, "SSTable").

    table   := data_block* filter_block props_block index_block footer
    block   := contents | type u8 | crc32c u32            (trailer: 5 bytes)
    data    := block.py's restart groups (version 2)
             | msgpack array [key, -lsn, value|nil, key, -lsn, value|nil, ...]  (version 1)
    index   := msgpack array [last_key, offset, size, ...]  one triple per data block
    filter  := bloom.build(user keys)
    props   := msgpack map {smallest, largest, entries, tombstones, min_lsn, max_lsn}
    footer  := index_off u64 | index_size u32 | filter_off u64 | filter_size u32 |
               props_off u64 | props_size u32 | version u32 | magic[8] "STRATSST"   (48 bytes)

Entries are in internal-key order: user key ascending, LSN descending; the
LSN is stored negated, so an entry decodes to the tuple (key, -lsn, value)
whose natural Python order *is* internal-key order: merges and sorts then run
in C without a key function. `type`
is the compression of `contents` (0 none, 1 LZ4 block with its size, 2 zstd
frame; see `CODECS`), and the CRC covers the stored contents and type, as
LevelDB's trailer. A data block is stored compressed only when that saves an
eighth of it (LevelDB's rule); meta blocks are never compressed. `size` in the
index is the stored size, without the trailer.

Version 2 data blocks (block.py) hold restart groups with shared key prefixes and
a restart array, so a point read decodes one group of ~8 entries, and the block
cache holds blocks as their bytes plus the restart array. Version 1 blocks were
one msgpack array decoded whole on every cache miss: ~200 bytes of Python objects
per entry in the cache, so 250k keys did not fit the default cache and a get paid
a whole-block decode one time in five (bench/engine: readrandom-hit p99). Both
versions are read; only version 2 is written. All versions of one user key are
kept in one block (a block may exceed the target a little), so a point read
touches exactly one block.

Changing any of this breaks existing files: bump VERSION and keep a reader for the
old one (tests/storage/testdata holds a database of each older version).
"""

from __future__ import annotations

import struct
import threading
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterator
from itertools import accumulate, islice, repeat
from operator import add, eq, itemgetter

import msgpack
from crc32c import crc32c

from . import block, bloom
from .errors import Corruption
from .vfs import FileSystem

_key = itemgetter(0)
_value = itemgetter(2)

MAGIC = b"STRATSST"
VERSION = 2
READABLE_VERSIONS = (1, 2)
FOOTER = struct.Struct("<QIQIQII8s")
FOOTER_SIZE = FOOTER.size  # 48
TRAILER = struct.Struct("<BI")
TRAILER_SIZE = TRAILER.size  # 5
COMPRESSION_NONE = 0
COMPRESSION_LZ4 = 1
COMPRESSION_ZSTD = 2
CODECS = {"none": COMPRESSION_NONE, "lz4": COMPRESSION_LZ4, "zstd": COMPRESSION_ZSTD}
ZSTD_LEVEL = 3

BLOCK_SIZE = 4096
# The most blocks a scan decodes in one msgpack call (TableReader.chunks_from): 32 of
# the default size cost ~5 % less per entry than 8, 16 or 64 (bench/engine: scan).
CHUNK_BLOCKS = 32

_local = threading.local()  # zstd contexts are not thread-safe: one per thread


def _zstd_c():
    c = getattr(_local, "zc", None)
    if c is None:
        import zstandard

        c = _local.zc = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return c


def _zstd_d():
    d = getattr(_local, "zd", None)
    if d is None:
        import zstandard

        d = _local.zd = zstandard.ZstdDecompressor()
    return d


def compress(contents: bytes, ctype: int) -> bytes:
    if ctype == COMPRESSION_LZ4:
        import lz4.block

        return lz4.block.compress(contents, store_size=True)
    if ctype == COMPRESSION_ZSTD:
        return _zstd_c().compress(contents)
    return contents


def decompress(stored: bytes, ctype: int) -> bytes:
    """The block's contents; ValueError (or the codec's error) if `stored` is not a valid
    block of that codec; KeyError for a codec this version does not know."""
    if ctype == COMPRESSION_NONE:
        return stored
    if ctype == COMPRESSION_LZ4:
        import lz4.block

        return lz4.block.decompress(stored)
    if ctype == COMPRESSION_ZSTD:
        return _zstd_d().decompress(stored)
    raise KeyError(ctype)


_TYPE_BYTE = [bytes((t,)) for t in range(256)]  # the trailer's type byte, for the CRC


def _finish_block(contents: bytes, ctype: int = COMPRESSION_NONE) -> tuple[bytes, int]:
    """The block as stored (contents, maybe compressed, and trailer) and the stored size."""
    if ctype != COMPRESSION_NONE:
        packed = compress(contents, ctype)
        if len(packed) <= len(contents) - len(contents) // 8:
            contents = packed
        else:
            ctype = COMPRESSION_NONE  # not worth it: stored as it is
    return (contents + TRAILER.pack(ctype, crc32c(_TYPE_BYTE[ctype], crc32c(contents))),
            len(contents))


def _columns(entries: list[tuple]) -> tuple[list[bytes], list, list[int]]:
    """(keys, values, sizes) of entries: sizes are each entry's key and value bytes plus
    12 (what it takes in a block, about). Taken once per run of entries: the table and
    block encoders slice these lists rather than pick the fields out again (three
    passes over the entries each, a fifth of a flush)."""
    keys = list(map(_key, entries))
    values = list(map(_value, entries))
    lens = values
    if None in values:  # tombstones: no value bytes
        lens = [v if v is not None else b"" for v in values]
    return keys, values, list(map(add, map(add, map(len, keys), map(len, lens)), repeat(12)))


def _boundary(entries: list[tuple], cum: list[int], lo: int, budget: int) -> int:
    """End index of a run starting at `lo` holding about `budget` bytes.

    Never splits the versions of one user key: the run is extended until the
    key changes.
    """
    base = cum[lo - 1] if lo else 0
    hi = min(bisect_left(cum, base + budget, lo) + 1, len(entries))
    while hi < len(entries) and entries[hi][0] == entries[hi - 1][0]:
        hi += 1
    return hi


def build_tables(fs: FileSystem, entries: list[tuple], path_for, target_file_size: int,
                 block_size: int = BLOCK_SIZE, bloom_bits: int = bloom.BITS_PER_KEY,
                 compression: str = "none", restart_interval: int = block.RESTART_INTERVAL
                 ) -> list[tuple[str, dict]]:
    """Write `entries` (internal order) into tables of about `target_file_size`.

    Returns [(path, props)] with props as stored plus `file_size`. Each table
    is fsynced and closed; on error the partial table is removed. The work per
    entry is done by C code (slicing, msgpack, accumulate) wherever possible:
    a per-entry Python loop here would make compaction slower than ingest.
    """
    if not entries:
        return []
    keys, values, sizes = _columns(entries)
    cum = list(accumulate(sizes))
    out = []
    lo = 0
    while lo < len(entries):
        hi = _boundary(entries, cum, lo, target_file_size)
        path = path_for(len(out))
        out.append((path, _write_table(fs, path, entries, keys, values, cum, lo, hi, block_size,
                                       bloom_bits, CODECS[compression], restart_interval)))
        lo = hi
    return out


class TableSink:
    """Writes tables of about `target_file_size` from sorted runs of entries handed over
    one after another (a streaming merge's output), holding about 1.25 tables' worth
    of entries beyond the run being added. `finish()` returns [(path, props)] as
    `build_tables` does; on error the tables written so far are the caller's to remove.
    """

    def __init__(self, fs: FileSystem, path_for, target_file_size: int,
                 compression: str = "none", block_size: int = BLOCK_SIZE,
                 restart_interval: int = block.RESTART_INTERVAL) -> None:
        self.fs = fs
        self.block_size = block_size
        self.restart_interval = restart_interval
        self.path_for = path_for
        self.target = target_file_size
        self.ctype = CODECS[compression]
        self.outputs: list[tuple[str, dict]] = []
        self._buf: list[tuple] = []
        self._keys: list[bytes] = []  # _columns(self._buf)
        self._values: list = []
        self._sizes: list[int] = []
        self._bytes = 0

    def add(self, entries: list[tuple]) -> None:
        """Append entries that sort after everything added before."""
        if not entries:
            return
        keys, values, sizes = _columns(entries)
        self._buf += entries
        self._keys += keys
        self._values += values
        self._sizes += sizes
        self._bytes += sum(sizes)
        if self._bytes >= self.target + self.target // 4:
            self._drain(keep_tail=True)

    def _drain(self, keep_tail: bool) -> None:
        buf = self._buf
        cum = list(accumulate(self._sizes))
        lo = 0
        while lo < len(buf):
            hi = _boundary(buf, cum, lo, self.target)
            if keep_tail and hi >= len(buf):
                break  # less than a table left: it waits for more entries
            path = self.path_for(len(self.outputs))
            self.outputs.append((path, _write_table(self.fs, path, buf, self._keys,
                                                    self._values, cum, lo, hi,
                                                    self.block_size, bloom.BITS_PER_KEY,
                                                    self.ctype, self.restart_interval)))
            lo = hi
        self._buf = buf[lo:]
        self._keys = self._keys[lo:]
        self._values = self._values[lo:]
        self._sizes = self._sizes[lo:]
        self._bytes = (cum[-1] - (cum[lo - 1] if lo else 0)) if self._buf else 0

    def finish(self) -> list[tuple[str, dict]]:
        self._drain(keep_tail=False)
        return self.outputs


def _write_table(fs: FileSystem, path: str, entries: list[tuple], keys: list[bytes],
                 values: list, cum: list[int], lo: int, hi: int, block_size: int,
                 bloom_bits: int, ctype: int = COMPRESSION_NONE,
                 restart_interval: int = block.RESTART_INTERVAL) -> dict:
    """One table of entries[lo:hi]; keys, values and cum (cumulative sizes) are the
    entries' columns (`_columns`)."""
    f = fs.create(path)
    ok = False
    try:
        offset = 0
        index: list = []
        chunks: list[bytes] = []
        pending = 0
        encode = block.encode
        i = lo
        while i < hi:
            j = min(_boundary(entries, cum, i, block_size), hi)
            stored_block, stored = _finish_block(
                encode(entries, i, j, restart_interval, keys, values), ctype)
            index += (entries[j - 1][0], offset, stored)
            chunks.append(stored_block)
            offset += len(stored_block)
            pending += len(stored_block)
            if pending >= 1 << 20:
                f.write(b"".join(chunks))
                chunks.clear()
                pending = 0
            i = j
        table_keys = keys[lo:hi]
        negs = list(map(itemgetter(1), entries[lo:hi]))
        props = {
            "smallest": table_keys[0],
            "largest": table_keys[-1],
            "entries": hi - lo,
            "tombstones": values[lo:hi].count(None),
            "shadowed": sum(map(eq, table_keys, islice(table_keys, 1, None))),
            "min_lsn": -max(negs),
            "max_lsn": -min(negs),
        }
        meta = []
        for contents in (bloom.build(table_keys, bloom_bits),
                         msgpack.packb(props, use_bin_type=True),
                         msgpack.packb(index, use_bin_type=True)):
            stored_block, _ = _finish_block(contents)
            meta.append((offset, len(contents)))
            chunks.append(stored_block)
            offset += len(stored_block)
        (filter_off, filter_size), (props_off, props_size), (index_off, index_size) = meta
        chunks.append(FOOTER.pack(index_off, index_size, filter_off, filter_size,
                                  props_off, props_size, VERSION, MAGIC))
        offset += FOOTER_SIZE
        f.write(b"".join(chunks))
        f.sync()
        ok = True
    finally:
        f.close()
        if not ok:
            try:
                fs.remove(path)
            except OSError:
                pass
    props["file_size"] = offset
    return props


class BlockCache:
    """CLOCK cache of data blocks, parsed enough for a lookup, shared by every table of
    an engine: a version-2 block as its uncompressed contents and restart array, a
    version-1 block as its decoded lists.

    Bounded by `capacity` bytes: each block is charged what it takes in memory (the
    last element of its tuple: about its uncompressed size for version 2, about three
    times that for version 1's lists), so the option bounds memory, not file bytes. Overflow policy: evict in insertion order, giving a
    block read since its last pass a second chance (CLOCK, an LRU
    approximation). A hit is a lock-free dict lookup and a flag store: an
    LRU's move-to-end under a lock cost ~3 us per read (bench/engine:
    readrandom-hit).
    """

    def __init__(self, capacity: int = 64 << 20) -> None:
        self.capacity = capacity
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        # key -> [block, referenced], in clock order. An OrderedDict: popping a
        # plain dict from the front makes the next iter() skip every hole
        # left behind (it showed up as a third of readrandom-hit's time).
        self._d: OrderedDict[tuple[int, int], list] = OrderedDict()

    def get(self, key: tuple[int, int]):
        e = self._d.get(key)
        if e is None:
            self.misses += 1
            return None
        e[1] = True
        self.hits += 1
        return e[0]

    def put(self, key: tuple[int, int], blk: tuple) -> None:
        with self._lock:
            d = self._d
            if key in d:
                return
            d[key] = [blk, False]
            self.size += blk[3]
            budget = 2 * len(d) + 1  # every flag is cleared at most once per put
            while self.size > self.capacity and d:
                old_key, e = d.popitem(last=False)
                if budget > 0 and (e[1] or (old_key == key and d)):
                    # A read since the last pass, or the block being added:
                    # a second chance, behind the hand.
                    budget -= 1
                    e[1] = False
                    d[old_key] = e
                else:
                    self.size -= e[0][3]


class TableReader:
    """Read access to one table through an mmap (or bytes on MemFS).

    Thread-safe. Raises Corruption naming the file and offset when a block or
    the footer does not check out. Reads table format versions 1 and 2: the
    version's methods are bound at open, so a read tests no version.
    """

    def __init__(self, fs: FileSystem, path: str, number: int, cache: BlockCache | None = None) -> None:
        self.path = path
        self.number = number
        self._file = fs.open_read(path)
        self._buf = self._file.buf
        self._cache = cache
        n = len(self._buf)
        if n < FOOTER_SIZE:
            raise Corruption(path, 0, f"file of {n} bytes is shorter than the footer")
        (index_off, index_size, filter_off, filter_size, props_off, props_size,
         version, magic) = FOOTER.unpack_from(self._buf, n - FOOTER_SIZE)
        if magic != MAGIC:
            raise Corruption(path, n - FOOTER_SIZE, f"bad table magic {magic!r}")
        if version not in READABLE_VERSIONS:
            raise Corruption(path, n - FOOTER_SIZE, f"unsupported table version {version}")
        self.version = version
        if version == 1:
            self.get = self._get_v1  # type: ignore[method-assign]
            self.get_cached_first = self._get_filtered_v1  # type: ignore[method-assign]
            self._block = self._block_v1  # type: ignore[method-assign]
            self._columns = self._columns_v1  # type: ignore[method-assign]
            self._columns_of = self._columns_of_v1  # type: ignore[method-assign]
        index = self._decode_meta(index_off, index_size, "index", list)
        self._last_keys: list[bytes] = index[0::3]
        self._offsets: list[int] = index[1::3]
        self._sizes: list[int] = index[2::3]
        if not (len(self._last_keys) == len(self._offsets) == len(self._sizes)):
            raise Corruption(path, index_off, "index block is not a list of triples")
        self._nblocks = len(self._last_keys)
        try:
            self.filter = bloom.BloomFilter(self._read_block(filter_off, filter_size))
        except ValueError as e:
            raise Corruption(path, filter_off, f"bad filter block: {e}") from None
        self._first_two = self.filter.may_contain_first_two
        props = self._decode_meta(props_off, props_size, "properties", dict)
        try:
            self.smallest: bytes = props["smallest"]
            self.largest: bytes = props["largest"]
            self.entries: int = props["entries"]
            self.min_lsn: int = props["min_lsn"]
            self.max_lsn: int = props["max_lsn"]
        except KeyError as e:
            raise Corruption(path, props_off, f"properties block lacks {e}") from None
        # Whether a scan may take this table's entries as they are: None where the
        # table predates the property (it is then checked block by block).
        self.tombstones: int | None = props.get("tombstones")
        self.shadowed: int | None = props.get("shadowed")
        self.file_size = n

    def close(self) -> None:
        self._buf = b""
        self._file.close()

    def _decode_meta(self, off: int, size: int, what: str, kind: type):
        try:
            obj = msgpack.unpackb(self._read_block(off, size), use_list=True)
        except (ValueError, msgpack.UnpackException) as e:
            raise Corruption(self.path, off, f"undecodable {what} block: {e}") from None
        if not isinstance(obj, kind):
            raise Corruption(self.path, off, f"{what} block is not a {kind.__name__}")
        return obj

    def _read_block(self, off: int, size: int) -> bytes:
        buf = self._buf
        end = off + size + TRAILER_SIZE
        if off < 0 or end > len(buf):
            raise Corruption(self.path, off, f"block of {size} bytes runs past the end of the file")
        contents = bytes(buf[off : off + size])
        ctype, crc = TRAILER.unpack_from(buf, off + size)
        if crc != crc32c(_TYPE_BYTE[ctype], crc32c(contents)):  # chained: no copy
            raise Corruption(self.path, off, "block checksum mismatch")
        if ctype == COMPRESSION_NONE:
            return contents
        try:
            return decompress(contents, ctype)
        except KeyError:
            raise Corruption(self.path, off, f"unknown block compression {ctype}") from None
        except Exception as e:  # lz4's LZ4BlockError, zstandard's ZstdError, ValueError
            raise Corruption(self.path, off, f"undecompressible block (compression {ctype}): "
                                             f"{e}") from None

    def _undecodable(self, i: int, e: Exception) -> Corruption:
        return Corruption(self.path, self._offsets[i], f"undecodable block: {e}")

    # -- version 2: restart groups (block.py); the cache holds (contents, first keys,
    # group offsets, charge)

    def _block(self, i: int) -> tuple:
        """Data block i, parsed enough for a lookup, from the cache or the file."""
        off = self._offsets[i]
        cache = self._cache
        if cache is not None:
            blk = cache.get((self.number, off))
            if blk is not None:
                return blk
        return self._load(i)

    def _load(self, i: int) -> tuple:
        """Data block i read from the file, parsed, and put in the cache."""
        off = self._offsets[i]
        cache = self._cache
        try:
            contents, firsts, offs = block.parse(self._read_block(off, self._sizes[i]))
        except block.DECODE_ERRORS as e:
            raise self._undecodable(i, e) from None
        # Charged at what it takes in RSS: the contents, per group a first key and an
        # offset (~100 bytes beyond the key's own), ~300 for the lists, tuple and entry.
        blk = (contents, firsts, offs,
               len(contents) + sum(map(len, firsts)) + 100 * len(firsts) + 300)
        if cache is not None:
            cache.put((self.number, off), blk)
        return blk

    def get(self, key: bytes, snapshot: int) -> tuple[int, bytes | None]:
        """(-lsn, value) of the newest version of `key` with lsn <= snapshot; (0, None) if none.

        REQUIRES: the caller checked `may_contain` (or accepts a wasted block read).
        """
        i = bisect_left(self._last_keys, key)
        if i == self._nblocks:
            return 0, None
        cache = self._cache
        blk = cache.get((self.number, self._offsets[i])) if cache is not None else None
        if blk is None:
            blk = self._load(i)
        try:
            return block.lookup(blk, key, -snapshot)
        except block.DECODE_ERRORS as e:
            raise self._undecodable(i, e) from None

    def get_cached_first(self, key: bytes, snapshot: int) -> tuple[int, bytes | None]:
        """`get` behind the bloom filter, asking all of its probes only when the key's
        block is not cached.

        For the deepest level, where most keys are found: there every probe runs for a
        hit (~1 us of a ~6 us get, bench/engine: readrandom-hit) and saves little when
        the block is in memory; the filter still saves the read and decompression of a
        block that is not. The first two probes still turn away ~87 % of absent keys
        before the cache is asked: asking none (as RocksDB's optimize_filters_for_hits
        does for the last level) made a miss 2.7x dearer (a group decoded per miss).
        """
        if not self._first_two(key):
            return 0, None
        i = bisect_left(self._last_keys, key)
        if i == self._nblocks:
            return 0, None
        cache = self._cache
        blk = cache.get((self.number, self._offsets[i])) if cache is not None else None
        if blk is None:
            if not self.filter.may_contain(key):
                return 0, None
            blk = self._load(i)
        try:
            return block.lookup(blk, key, -snapshot)
        except block.DECODE_ERRORS as e:
            raise self._undecodable(i, e) from None

    def _columns(self, i: int, cached: bool) -> tuple[list, list, list]:
        """(keys, -lsns, values) of data block i; `cached`: through the block cache."""
        try:
            if cached:
                return block.columns(self._block(i))
            return block.columns(block.parse(self._read_block(self._offsets[i], self._sizes[i])))
        except block.DECODE_ERRORS as e:
            raise self._undecodable(i, e) from None

    def _columns_of(self, i: int, j: int, negs: bool) -> tuple[list, list | None, list]:
        """(keys, -lsns or None, values) of data blocks i..j-1, through the block cache."""
        blks = [self._block(b) for b in range(i, j)]
        try:
            return block.columns_many(blks, negs)
        except block.DECODE_ERRORS:
            for b, blk in zip(range(i, j), blks):  # which one: Corruption names it
                try:
                    block.columns(blk)
                except block.DECODE_ERRORS as e:
                    raise self._undecodable(b, e) from None
            raise

    # -- version 1: one msgpack array per block; the cache holds (keys, -lsns, values, charge)

    def _block_v1(self, i: int) -> tuple:
        off = self._offsets[i]
        cache = self._cache
        if cache is not None:
            blk = cache.get((self.number, off))
            if blk is not None:
                return blk
        keys, negs, values = self._columns_v1(i, False)
        # Charged at what the decoded block takes in RSS: per entry a key, a value and an
        # int object and three list slots, ~200 bytes beyond the data, ~400 per block.
        blk = (keys, negs, values, self._sizes[i] + 200 * len(keys) + 400)
        if cache is not None:
            cache.put((self.number, off), blk)
        return blk

    def _get_v1(self, key: bytes, snapshot: int) -> tuple[int, bytes | None]:
        i = bisect_left(self._last_keys, key)
        if i == self._nblocks:
            return 0, None
        keys, negs, values, _ = self._block_v1(i)
        j = bisect_left(keys, key)
        n = len(keys)
        neg_snap = -snapshot
        while j < n and keys[j] == key:
            if negs[j] >= neg_snap:
                return negs[j], values[j]
            j += 1
        return 0, None

    def _get_filtered_v1(self, key: bytes, snapshot: int) -> tuple[int, bytes | None]:
        if not self.filter.may_contain(key):
            return 0, None
        return self._get_v1(key, snapshot)

    def _columns_v1(self, i: int, cached: bool) -> tuple[list, list, list]:
        if cached:
            blk = self._block_v1(i)
            return blk[0], blk[1], blk[2]
        try:
            flat = msgpack.unpackb(self._read_block(self._offsets[i], self._sizes[i]),
                                   use_list=True)
            if type(flat) is not list or len(flat) % 3:
                raise ValueError("not a list of (key, -lsn, value) triples")
        except (ValueError, msgpack.UnpackException) as e:
            raise self._undecodable(i, e) from None
        return flat[0::3], flat[1::3], flat[2::3]

    def _columns_of_v1(self, i: int, j: int, negs: bool) -> tuple[list, list | None, list]:
        keys: list = []
        ns: list = []
        values: list = []
        for b in range(i, j):
            blk = self._block_v1(b)
            keys += blk[0]
            ns += blk[1]
            values += blk[2]
        return keys, ns, values

    # -- both versions

    def may_contain(self, key: bytes) -> bool:
        return self.smallest <= key <= self.largest and self.filter.may_contain(key)

    def all_entries(self) -> list[tuple[bytes, int, bytes | None]]:
        """Every entry as (key, -lsn, value), bypassing the block cache (compaction input)."""
        out: list = []
        for i in range(self._nblocks):
            out += zip(*self._columns(i, False))
        return out

    def block_bounds(self) -> list[tuple[bytes, int]]:
        """(last key, encoded size) of every data block: where a streaming merge may cut."""
        return list(zip(self._last_keys, self._sizes))

    def range_entries(self, start: bytes | None, end: bytes | None) -> list[tuple]:
        """Every entry with start <= key < end (None: unbounded), as a list, decoding
        whole blocks in C and bypassing the block cache (compaction input)."""
        i = 0 if start is None else bisect_left(self._last_keys, start)
        out: list = []
        n = self._nblocks
        while i < n:
            out += zip(*self._columns(i, False))
            if end is not None and self._last_keys[i] >= end:
                break
            i += 1
        # (k,) sorts before every (k, -lsn, value): bisect finds the first entry of k.
        lo = 0 if start is None else bisect_left(out, (start,))
        hi = len(out) if end is None else bisect_left(out, (end,))
        return out[lo:hi] if lo or hi < len(out) else out

    def entries_from(self, start: bytes | None = None, end: bytes | None = None
                     ) -> Iterator[tuple[bytes, int, bytes | None]]:
        """Yield (key, -lsn, value) in internal order for start <= key < end."""
        for keys, negs, values, _ in self.chunks_from(start, end):
            yield from zip(keys, negs, values)

    def chunks_from(self, start: bytes | None = None, end: bytes | None = None,
                    snapshot: int | None = None, first: int = 64, most: int = 2048
                    ) -> Iterator[tuple[list, list | None, list, bool]]:
        """Yield the entries with start <= key < end in internal order, a few whole blocks at
        a time, as (keys, -lsns, values, unique): parallel lists, never empty, that never
        split the versions of a key; unique tells that no key is there twice.

        -lsns is None when every entry is the only version of its key and visible at
        `snapshot` (the table's entries are all older): a scan then needs no -lsns, and
        they are not built. Chunks hold about `first` entries, then twice as many each
        time up to `most`: a short scan decodes little, a long one pays the per-chunk
        calls rarely. Through the block cache.
        """
        last_keys = self._last_keys
        n = self._nblocks
        i = 0 if start is None else bisect_left(last_keys, start)
        stop = n if end is None else min(n, bisect_left(last_keys, end) + 1)
        need_negs = not (snapshot is not None and self.max_lsn <= snapshot and self.shadowed == 0)
        per_block = max(1, self.entries // max(1, n))
        want = first
        cut = start is not None
        while i < stop:
            j = min(stop, i + min(CHUNK_BLOCKS, max(1, want // per_block)))
            keys, negs, values = self._columns_of(i, j, need_negs)
            lo = bisect_left(keys, start) if cut else 0
            hi = bisect_left(keys, end) if (j == stop and end is not None) else len(keys)
            if lo or hi < len(keys):
                keys = keys[lo:hi]
                values = values[lo:hi]
                if negs is not None:
                    negs = negs[lo:hi]
            if keys:
                if self.shadowed == 0:
                    unique = True
                else:
                    unique = not any(map(eq, keys, islice(keys, 1, None)))
                yield keys, negs, values, unique
            cut = False
            i = j
            want = min(want * 2, most)

    def verify(self) -> None:
        """Read, check and decode every block; raise Corruption at the first bad one."""
        for i in range(self._nblocks):
            self._columns(i, False)
