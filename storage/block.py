"""Data blocks of table format version 2: restart groups with shared key prefixes
(docs/format.md, "Data block").

    block    := group* restarts restarts_off u32
    group    := msgpack array [shared, suffix_0, -lsn_0, value_0|nil, suffix_1, -lsn_1, ...]
    restarts := msgpack array [first_key_0, group_off_0, first_key_1, group_off_1, ...]

    | group 0 | group 1 | ... | group R-1 | restarts | restarts_off (u32 LE) |
    ^0        ^group_off_1                ^restarts_off

As LevelDB's block: entries in key order, a restart point every `interval`
entries (a group), keys stored as a shared prefix plus a suffix, and a restart
array a point lookup binary-searches so that it decodes one group, not the block.
Two differences, both for CPython's sake:

- The shared prefix is the group's, not the previous key's: `shared` bytes of
  the group's first key begin every key of the group (the common prefix of its
  first and last keys, as they are sorted; or 0 in every group of a block where
  prefixes would save little, see `encode`). A key then depends on the group's
  first key only, so a whole group decodes with one msgpack call and one
  `map`, in C; LevelDB's chain of deltas needs a Python loop per entry (~0.4 us
  each here), which would make scans and compactions several times slower.
- The restart array holds each group's first key beside its offset, so the
  binary search compares keys without decoding anything; LevelDB decodes the
  entry at each probe. It costs about a key per group.

Every version of a user key is in one group (a group may run past `interval`
to keep them together), so a lookup never looks beyond the group the restart
array names. Group offsets ascend and the last group ends at `restarts_off`.

Changing any of this breaks existing files: bump sstable.VERSION.
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from itertools import chain, repeat
from operator import add, floordiv, itemgetter, mod

import msgpack

RESTART_INTERVAL = 8  # entries per group (Options.block_restart_interval)
TAIL = struct.Struct("<I")  # restarts_off
TAIL_SIZE = TAIL.size

_packb = msgpack.Packer(use_bin_type=True).pack
_unpackb = msgpack.unpackb
_key = itemgetter(0)
_neg = itemgetter(1)
_value = itemgetter(2)

# What a malformed (but checksummed) block raises while decoding; callers turn it
# into Corruption naming the file and the block.
DECODE_ERRORS = (ValueError, TypeError, IndexError, msgpack.UnpackException)


def _shared(a: bytes, b: bytes) -> int:
    """Length of the common prefix of a and b (binary search: ~4 slice compares)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) >> 1
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def encode(entries: list[tuple], lo: int, hi: int, interval: int = RESTART_INTERVAL,
           keys: list[bytes] | None = None, values: list | None = None) -> bytes:
    """The block holding entries[lo:hi] ((key, -lsn, value|None), internal order).
    `keys` and `values`, if given, are the entries' keys and values (the whole lists:
    the table encoder has them already).

    REQUIRES: lo < hi, and entries[lo:hi] does not split the versions of a key
    from versions outside it.

    Keys are stored whole (shared 0 in every group) unless the groups' shared prefixes
    save an eighth of the block's key and value bytes (LevelDB's rule for compression):
    a scan builds no key of such a block (decoding its keys is a third of a scanned
    item's cost with prefixes, bench/engine: scan), and a few bytes a key are all it
    costs. Where keys share long prefixes beside small values, prefixes are kept.
    """
    part = entries[lo:hi]
    n = hi - lo
    keys = list(map(_key, part)) if keys is None else keys[lo:hi]
    key_bytes = sum(map(len, keys))
    values = map(_value, part) if values is None else values[lo:hi]
    size = key_bytes + sum(map(len, filter(None, values)))
    if len(set(keys)) == n:  # one version per key: groups of exactly `interval`
        bounds = [(s, min(s + interval, n)) for s in range(0, n, interval)]
    else:
        bounds = []
        s = 0
        while s < n:
            e = min(s + interval, n)
            while e < n and keys[e] == keys[e - 1]:
                e += 1
            bounds.append((s, e))
            s = e
    # A group's prefix is at most each of its keys, so prefixes save at most the key
    # bytes: where those are under an eighth, no prefix is worth computing.
    shared = None
    if key_bytes * 8 >= size:
        shared = [_shared(keys[s], keys[e - 1]) for s, e in bounds]
        if sum(p * (e - s) for p, (s, e) in zip(shared, bounds)) * 8 < size:
            shared = None
    flat = list(chain.from_iterable(part))  # key_0, -lsn_0, value_0, key_1, ...
    groups: list[bytes] = []
    restarts: list = []
    off = 0
    for g, (s, e) in enumerate(bounds):
        p = shared[g] if shared else 0
        if p:
            cut = itemgetter(slice(p, None))
            run = part[s:e]
            packed = _packb([p, *chain.from_iterable(zip(map(cut, keys[s:e]), map(_neg, run),
                                                         map(_value, run)))])
        else:
            packed = _packb([0, *flat[3 * s : 3 * e]])
        restarts += (keys[s], off)
        groups.append(packed)
        off += len(packed)
    groups.append(_packb(restarts))
    groups.append(TAIL.pack(off))
    return b"".join(groups)


def parse(contents: bytes) -> tuple[bytes, list[bytes], list[int]]:
    """(contents, first keys, group offsets + [restarts_off]): what a lookup needs, without
    decoding any entry. ValueError (or another of DECODE_ERRORS) if malformed."""
    n = len(contents)
    if n < TAIL_SIZE:
        raise ValueError(f"block of {n} bytes is shorter than its tail")
    end = TAIL.unpack_from(contents, n - TAIL_SIZE)[0]
    if end > n - TAIL_SIZE:
        raise ValueError(f"restart array at {end} is past the block's end")
    restarts = _unpackb(memoryview(contents)[end : n - TAIL_SIZE])
    if type(restarts) is not list or not restarts or len(restarts) & 1:
        raise ValueError("restart array is not a list of (key, offset) pairs")
    keys = restarts[0::2]
    offs = restarts[1::2]
    offs.append(end)
    if offs[0] != 0 or any(a >= b for a, b in zip(offs, offs[1:])):
        raise ValueError("restart offsets do not ascend from 0 to the restart array")
    return contents, keys, offs


def lookup(blk: tuple, key: bytes, neg_snap: int) -> tuple[int, bytes | None]:
    """(-lsn, value) of key's newest version with -lsn >= neg_snap in the parsed block
    `blk` (`parse`); (0, None) if none. Decodes one group."""
    contents, keys, offs = blk[0], blk[1], blk[2]
    g = bisect_right(keys, key) - 1
    if g < 0:
        return 0, None
    flat = _unpackb(memoryview(contents)[offs[g] : offs[g + 1]])
    p = flat[0]
    if key[:p] != keys[g][:p]:
        return 0, None
    suffixes = flat[1::3]
    sk = key[p:]
    j = bisect_left(suffixes, sk)
    n = len(suffixes)
    while j < n and suffixes[j] == sk:
        neg = flat[3 * j + 2]
        if neg >= neg_snap:
            return neg, flat[3 * j + 3]
        j += 1
    return 0, None


def columns(blk: tuple) -> tuple[list, list, list]:
    """(keys, -lsns, values) of every entry of the parsed block (`parse`). ValueError (or
    another of DECODE_ERRORS) if its groups do not decode as the restart array says."""
    return columns_many([blk])


def _array_header(n: int) -> bytes:
    """The msgpack header of an array of n items."""
    if n < 16:
        return _FIXARRAY[n]
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


_FIXARRAY = [bytes((0x90 | n,)) for n in range(16)]
_first = itemgetter(0)
_suffixes = itemgetter(slice(1, None, 3))
_negs = itemgetter(slice(2, None, 3))
_values = itemgetter(slice(3, None, 3))
_cut = bytes.__getitem__
_from = chain.from_iterable


def columns_many(blks: list[tuple], negs: bool = True) -> tuple[list, list | None, list]:
    """(keys, -lsns, values) of every entry of the parsed blocks `blks`, consecutive blocks
    of one table in order; with `negs` False, None for the -lsns (a scan that knows every
    entry visible needs none). ValueError (or another of DECODE_ERRORS) if malformed.

    Every group of every block decodes in one msgpack call: the blocks' group regions
    joined behind an array header counting their groups, which msgpack must consume to
    the last byte, one group per restart. The rest is a fixed number of C calls
    whatever the number of groups: a Python loop per group cost ~100 ns per entry
    (bench/engine: scan), an Unpacker per block a few microseconds.
    """
    firsts: list = []
    regions: list = [b""]
    for contents, fs, offs, *_ in blks:
        firsts += fs
        regions.append(memoryview(contents)[: offs[-1]])
    regions[0] = _array_header(len(firsts))
    flats = _unpackb(b"".join(regions), use_list=True)
    if not all(map(list.__instancecheck__, flats)):
        raise ValueError("a restart group is not an array")
    lens = list(map(len, flats))
    if set(map(mod, lens, repeat(3))) != {1}:
        raise ValueError("a restart group is not [shared, (suffix, -lsn, value)...]")
    counts = list(map(floordiv, lens, repeat(3)))
    shared = list(map(_first, flats))
    suffixes = _from(map(_suffixes, flats))
    if any(shared):
        # add over repeat(): a C function per key, a third cheaper than a bound __add__
        prefixes = _from(map(repeat, map(_cut, firsts, map(slice, shared)), counts))
        keys = list(map(add, prefixes, suffixes))
    else:
        keys = list(suffixes)
    values = list(_from(map(_values, flats)))
    return keys, (list(_from(map(_negs, flats))) if negs else None), values
