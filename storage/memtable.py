"""MemTable: the newest writes, sorted, with every version a snapshot may need.

Entries are keyed by the internal key `(user_key, -lsn)`, so all versions of a
key sit together, newest first, and a read at snapshot S is one bisect: the
first entry at or after `(key, -S)`. A value of None is a tombstone.

Thread contract: one writer at a time (the commit leader) calls `add`; readers
call `get` and `items` concurrently. SortedDict is not safe against a
concurrent insert (a reader could see a half-split sublist), so both sides
take `self.lock`; the critical sections are a bisect or an insert.
"""

from __future__ import annotations

import threading
from typing import Iterator

from sortedcontainers import SortedDict

# Per-entry bookkeeping on top of key and value bytes: the tuple, the int, the
# SortedDict slots. Measured with tracemalloc on 100k entries: ~90 bytes.
ENTRY_OVERHEAD = 90


class MemTable:
    __slots__ = ("_data", "_keys", "lock", "size", "first_lsn", "last_lsn", "wal_lsn")

    def __init__(self) -> None:
        self._data: SortedDict = SortedDict()
        self._keys = self._data.keys()
        self.lock = threading.Lock()
        self.size = 0
        self.first_lsn = 0  # lowest LSN held (0 when empty)
        self.last_lsn = 0

    def __len__(self) -> int:
        return len(self._data)

    def add(self, lsn: int, key: bytes, value: bytes | None) -> None:
        with self.lock:
            self._data[(key, -lsn)] = value
        self.size += len(key) + (len(value) if value is not None else 0) + ENTRY_OVERHEAD
        if not self.first_lsn:
            self.first_lsn = lsn
        self.last_lsn = lsn

    def add_many(self, entries: list[tuple[int, bytes, bytes | None]]) -> None:
        data = self._data
        size = 0
        with self.lock:
            for lsn, key, value in entries:
                data[(key, -lsn)] = value
                size += len(key) + (len(value) if value is not None else 0) + ENTRY_OVERHEAD
        self.size += size
        if entries:
            if not self.first_lsn:
                self.first_lsn = entries[0][0]
            self.last_lsn = entries[-1][0]

    def get(self, key: bytes, snapshot: int) -> tuple[bool, bytes | None]:
        """Return (found, value) of the newest version of key with lsn <= snapshot.

        found=True with value None means a tombstone: the key is deleted and
        older tables must not be consulted.
        """
        data = self._data
        with self.lock:
            i = data.bisect_left((key, -snapshot))
            if i == len(data):
                return False, None
            ik = self._keys[i]
            if ik[0] != key:
                return False, None
            return True, data[ik]

    def entries(self, start: bytes | None = None, end: bytes | None = None) -> Iterator[tuple[bytes, int, bytes | None]]:
        """Yield (key, -lsn, value) in internal-key order for start <= key < end.

        Safe against concurrent `add`: iterates in chunks, re-seeking after the
        last key returned, so an insert between chunks is never half-seen.
        """
        keys = self._keys
        data = self._data
        bisect_left, bisect_right = data.bisect_left, data.bisect_right
        pos_key: tuple | None = (start, -(1 << 64)) if start is not None else None
        inclusive = True
        chunk = 256
        while True:
            with self.lock:
                if pos_key is None:
                    i = 0
                elif inclusive:
                    i = bisect_left(pos_key)
                else:
                    i = bisect_right(pos_key)
                batch = [(ik, data[ik]) for ik in keys[i : i + chunk]]
            if not batch:
                return
            for ik, v in batch:
                if end is not None and ik[0] >= end:
                    return
                yield ik[0], ik[1], v
            pos_key = batch[-1][0]
            inclusive = False
            if len(batch) < chunk:
                return

    def sorted_entries(self) -> list[tuple[bytes, int, bytes | None]]:
        """All entries as (key, -lsn, value) in internal order. REQUIRES: immutable."""
        return [(k, n, v) for (k, n), v in self._data.items()]
