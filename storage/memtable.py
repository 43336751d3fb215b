"""MemTable: the newest writes, with every version a reader may still need.

Layout: a dict from user key to its versions, plus a sorted index of the keys
(`sortedcontainers.SortedList`) that is brought up to date lazily, when
something iterates in key order.

    _d[key] = (-lsn, value)                      one version (the common case)
    _d[key] = [(-lsn, value), (-lsn, value)...]  several, oldest first

Why not a SortedDict on internal keys (user key, -lsn), the textbook layout:
on the reference machine a SortedDict insert of a tuple key costs ~6 us, more
than the whole budget of an unsynced put (bench/engine: fillrandom, where
LevelDB does ~4 us per put). A dict insert is ~0.1 us; point reads become one
hash lookup; the cost of ordering moves to scans and flushes, which sort new
keys in bulk in C (`SortedList.update`) instead of one bisect-insert per put.

A value of None is a tombstone. LSNs are stored negated so that an entry
reads (key, -lsn, value), the internal order used by SSTables and merges.

Thread contract: one writer at a time (the engine's commit path) calls `add`;
readers call `get` and `entries` concurrently. Dict and list operations are
atomic in CPython, so `get` takes no lock; the sorted index is guarded by
`lock`. Versions are appended in LSN order (the commit path applies groups in
LSN order), so each key's chain is oldest first.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator
from itertools import islice
from operator import itemgetter

from sortedcontainers import SortedList

# Per-entry bookkeeping on top of key and value bytes (dict slot, tuple, int,
# index entry): ~90 bytes measured with tracemalloc on 100k entries.
ENTRY_OVERHEAD = 90

_neg = itemgetter(0)
_value = itemgetter(1)


class MemTable:
    __slots__ = ("_d", "_new_keys", "_indexed", "_sorted", "lock", "size", "first_lsn",
                 "last_lsn", "count")

    def __init__(self) -> None:
        self._d: dict[bytes, tuple | list] = {}
        self._new_keys: list[bytes] = []  # keys not yet in _sorted, in arrival order
        self._indexed = 0  # how many of _new_keys are in _sorted
        self._sorted = SortedList()
        self.lock = threading.Lock()
        self.size = 0
        self.first_lsn = 0  # lowest LSN held (0 when empty)
        self.last_lsn = 0
        self.count = 0  # versions held

    def __len__(self) -> int:
        return self.count

    def add(self, lsn: int, key: bytes, value: bytes | None) -> None:
        """Add one version. REQUIRES: the caller is the only writer; lsn > every earlier lsn."""
        d = self._d
        old = d.get(key)
        if old is None:
            d[key] = (-lsn, value)
            self._new_keys.append(key)
        elif type(old) is tuple:
            d[key] = [old, (-lsn, value)]
        else:
            old.append((-lsn, value))
        self.size += len(key) + (len(value) if value is not None else 0) + ENTRY_OVERHEAD
        self.count += 1
        if not self.first_lsn:
            self.first_lsn = lsn
        self.last_lsn = lsn

    def add_many(self, entries: list[tuple[int, bytes, bytes | None]]) -> None:
        for lsn, key, value in entries:
            self.add(lsn, key, value)

    def get(self, key: bytes, snapshot: int) -> tuple[int, bytes | None]:
        """(-lsn, value) of the newest version of key with lsn <= snapshot; (0, None) if none.

        A found version with value None is a tombstone: the key is deleted and
        older tables must not be consulted.
        """
        e = self._d.get(key)
        if e is None:
            return 0, None
        neg_snap = -snapshot
        if type(e) is tuple:
            if e[0] >= neg_snap:
                return e
            return 0, None
        for version in reversed(e):
            if version[0] >= neg_snap:
                return version
        return 0, None

    def _index(self) -> SortedList:
        """Bring the sorted key index up to date. REQUIRES: self.lock held."""
        n = len(self._new_keys)
        if self._indexed < n:
            self._sorted.update(self._new_keys[self._indexed : n])
            self._indexed = n
        return self._sorted

    def entries(self, start: bytes | None = None, end: bytes | None = None
                ) -> Iterator[tuple[bytes, int, bytes | None]]:
        """Yield (key, -lsn, value) in internal order for start <= key < end.

        Safe against a concurrent `add`: keys are taken from the index in
        chunks under the lock, each chunk re-seeking after the last key
        returned. Keys added after the scan passed their place are not seen;
        they carry LSNs newer than the reader's snapshot anyway.
        """
        d = self._d
        pos: bytes | None = start
        inclusive = True
        chunk = 512
        while True:
            keys = self._keys_from(pos, inclusive, chunk)
            if not keys:
                return
            for key in keys:
                if end is not None and key >= end:
                    return
                e = d[key]
                if type(e) is tuple:
                    yield key, e[0], e[1]
                else:
                    for neg, value in reversed(e[:]):
                        yield key, neg, value
            pos = keys[-1]
            inclusive = False
            if len(keys) < chunk:
                return

    def _keys_from(self, pos: bytes | None, inclusive: bool, n: int) -> list[bytes]:
        """Up to `n` keys in order from `pos` (None: the first; at it or only after it:
        `inclusive`), taken under the lock."""
        with self.lock:
            idx = self._index()
            if pos is None:
                i = 0
            elif inclusive:
                i = idx.bisect_left(pos)
            else:
                i = idx.bisect_right(pos)
            return idx[i : i + n]

    def columns(self, start: bytes | None = None, end: bytes | None = None,
                first: int = 64, most: int = 2048
                ) -> Iterator[tuple[list, list, list, bool]]:
        """Yield the entries with start <= key < end in internal order as (keys, -lsns,
        values, unique) chunks, as TableReader.chunks_from does (never empty, never
        splitting a key's versions; unique: no key twice), of `first` keys, then twice as
        many each time up to `most`.

        Safe against a concurrent `add`, as `entries` is. A chunk whose keys each hold
        one version is built by a few C calls, not a loop per entry.
        """
        d = self._d
        pos: bytes | None = start
        inclusive = True
        chunk = first
        while True:
            keys = self._keys_from(pos, inclusive, chunk)
            full = len(keys) == chunk
            if keys and end is not None and keys[-1] >= end:
                keys = keys[: bisect_left(keys, end)]
                full = False
            if not keys:
                return
            es = list(map(d.__getitem__, keys))
            if set(map(type, es)) == {tuple}:
                yield keys, list(map(_neg, es)), list(map(_value, es)), True
            else:
                ks: list = []
                negs: list = []
                values: list = []
                for key, e in zip(keys, es):
                    if type(e) is tuple:
                        ks.append(key)
                        negs.append(e[0])
                        values.append(e[1])
                    else:
                        for neg, value in reversed(e[:]):
                            ks.append(key)
                            negs.append(neg)
                            values.append(value)
                yield ks, negs, values, len(ks) == len(keys)
            if not full:
                return
            pos = keys[-1]
            inclusive = False
            chunk = min(chunk * 2, most)

    def raw_item_chunks(self, size: int) -> Iterator[list[tuple[bytes, tuple | list]]]:
        """The dict items, [(key, one (-lsn, value) pair or a list of them oldest first)],
        unsorted, in lists of at most `size`: the shape compaction.memtable_entries takes,
        packed a list at a time for the flush worker process (one packing call for a
        whole memtable held the GIL for ~20 ms per 8 MiB). REQUIRES: immutable."""
        it = iter(self._d.items())
        while chunk := list(islice(it, size)):
            yield chunk

    def sorted_entries(self) -> list[tuple[bytes, int, bytes | None]]:
        """All entries as (key, -lsn, value) in internal order. REQUIRES: immutable."""
        d = self._d
        out: list[tuple[bytes, int, bytes | None]] = []
        append = out.append
        for key in sorted(d):
            e = d[key]
            if type(e) is tuple:
                append((key, e[0], e[1]))
            else:
                for neg, value in reversed(e):
                    append((key, neg, value))
        return out
