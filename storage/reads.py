"""The read path: point reads, scans and snapshots over a read view.

A read view is the tuple (memtable, immutable memtables, version, readers, read
plan) that the engine swaps atomically (`Engine._install_sv`); a read takes it
and the read LSN together (`_read_point`) and then needs no lock. A part of
`Engine` (engine.py), which owns the fields used here.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Generator, Iterable, Iterator
from itertools import chain, compress, islice, repeat
from operator import eq, is_not, itemgetter
from typing import TYPE_CHECKING

from . import sstable
from .errors import (
    InvalidArgument,
)
from .manifest import NUM_LEVELS, Version
from .writes import check_bytes

if TYPE_CHECKING:
    from .engine import Engine

class Snapshot:
    """A consistent read point. Release it (or use `with`) so compaction can drop old versions."""

    __slots__ = ("lsn", "_engine", "_released")

    def __init__(self, engine: Engine, lsn: int) -> None:
        self.lsn = lsn
        self._engine = engine
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._engine._release_snapshot(self.lsn)

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Snapshot(lsn={self.lsn})"


def read_plan(version: Version, readers: dict[int, sstable.TableReader]) -> tuple:
    """What a point read walks, resolved once per read view: L0's files newest first as
    (smallest, largest, may_contain, get), then per non-empty deeper level the files'
    smallest and largest keys and their (may_contain, get). The deepest level's files
    have no may_contain: their get_cached_first asks the filter itself, only when the
    key's block is not cached (most hits are found there; TableReader.get_cached_first)."""
    levels = version.levels
    l0 = tuple((f.smallest, f.largest, readers[f.number].filter.may_contain,
                readers[f.number].get) for f in levels[0])
    deep = [files for files in levels[1:] if files]
    deeper = tuple(([f.smallest for f in files], [f.largest for f in files],
                    [(readers[f.number].filter.may_contain, readers[f.number].get)
                     if n < len(deep) - 1 else (None, readers[f.number].get_cached_first)
                     for f in files])
                   for n, files in enumerate(deep))
    return l0, deeper



class ScanIterator(chain):
    """What `scan` returns: an iterator of (key, value) with `close()`.

    A chain over the zip()s of the chunks a scan merges: each item comes from C, where
    a generator yielding them one by one cost ~40 ns an item more (bench/engine: scan).
    The generator of chunks pins the scan's files; close() (or exhaustion, or garbage
    collection of the iterator) releases them.
    """

    _chunks: Generator

    @classmethod
    def over(cls, chunks: Generator) -> ScanIterator:
        it = cls.from_iterable(chunks)
        it._chunks = chunks
        return it

    def close(self) -> None:
        self._chunks.close()


class ReadPath:
    """Gets, scans and snapshots. Mixed into Engine; thread-safe, lock-free but for
    snapshot bookkeeping."""

    def get(self, key: bytes, snapshot: Snapshot | None = None) -> bytes | None:
        """The value of key at the snapshot (default: every write acknowledged so far)."""
        if type(key) is not bytes:
            check_bytes("key", key, self.opts.max_key_size)
        if snapshot is not None:
            return self._lookup(key, snapshot.lsn)[1]
        sv = self._sv
        lsn = self._read_lsn
        while self._sv is not sv:  # see _read_point
            sv = self._sv
            lsn = self._read_lsn
        return self._lookup(key, lsn, sv)[1]

    def get_entry(self, key: bytes, snapshot: Snapshot | None = None) -> tuple[bytes | None, int]:
        """(value, lsn of the write that produced it); (None, 0) if absent or deleted."""
        if type(key) is not bytes:
            check_bytes("key", key, self.opts.max_key_size)
        if snapshot is not None:
            neg, value = self._lookup(key, snapshot.lsn)
        else:
            sv, lsn = self._read_point()
            neg, value = self._lookup(key, lsn, sv)
        return (value, -neg) if value is not None else (None, 0)

    def _read_point(self) -> tuple[tuple, int]:
        """(read view, LSN) taken together, as a seqlock: the LSN is read between two
        reads of the view that agree.

        Read apart, a flush or compaction installed in between could have dropped
        a version the LSN needs (it keeps only what the oldest reader it knew of
        sees). With both from one moment, the view holds no table written after
        the LSN was published, and its memtables hold every write up to it.
        """
        while True:
            sv = self._sv
            lsn = self._read_lsn
            if self._sv is sv:
                return sv, lsn

    def _lookup(self, key: bytes, snap: int, sv: tuple | None = None) -> tuple[int, bytes | None]:
        """(-lsn, value) of key's newest version <= snap, tombstones included; (0, None) if none."""
        mem, imms, _, _, (l0, deeper) = self._sv if sv is None else sv
        hit = mem.get(key, snap)
        if hit[0]:
            return hit
        for imm in reversed(imms):
            hit = imm.get(key, snap)
            if hit[0]:
                return hit
        for smallest, largest, may_contain, get in l0:
            if smallest <= key <= largest and may_contain(key):
                hit = get(key, snap)
                if hit[0]:
                    return hit
        for smallests, largests, tables in deeper:
            i = bisect_right(smallests, key) - 1
            if i >= 0 and key <= largests[i]:
                may_contain, get = tables[i]
                if may_contain is None or may_contain(key):
                    hit = get(key, snap)
                    if hit[0]:
                        return hit
        return 0, None

    def scan(self, start: bytes | None = None, end: bytes | None = None,
             snapshot: Snapshot | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Yield (key, value) for start <= key < end in key order, at one snapshot.

        The iterator pins the files it reads; close it (or exhaust it) to let
        compaction delete them.
        """
        for b, what in ((start, "start"), (end, "end")):
            if b is not None and type(b) is not bytes:
                raise InvalidArgument(f"scan {what} must be bytes or None")
        if snapshot is not None:
            return ScanIterator.over(self._scan(snapshot.lsn, start, end, self._sv))
        sv, snap = self._read_point()
        return ScanIterator.over(self._scan(snap, start, end, sv))

    def _scan(self, snap, start, end, sv) -> Iterator[Iterator[tuple[bytes, bytes]]]:
        """zip()s of (key, value) in key order: a scan's items, a chunk at a time."""
        mem, imms, version, readers, _ = sv
        self.versions.ref(version)
        try:
            # Newest first: for any key, a source holds only versions newer than those
            # of the sources after it (the order _lookup relies on too).
            sources: list[Iterator] = [mem.columns(start, end)]
            may_delete = [True]
            for imm in reversed(imms):
                sources.append(imm.columns(start, end))
                may_delete.append(True)
            lo, hi = start or b"", end
            for f in version.levels[0]:
                if (hi is None or f.smallest < hi) and f.largest >= lo:
                    r = readers[f.number]
                    sources.append(r.chunks_from(start, end, snap))
                    may_delete.append(r.tombstones != 0)
            for lvl in range(1, NUM_LEVELS):
                chosen = [readers[f.number] for f in version.levels[lvl]
                          if f.largest >= lo and (hi is None or f.smallest < hi)]
                if chosen:
                    sources.append(_chain(chosen, start, end, snap))
                    may_delete.append(any(r.tombstones != 0 for r in chosen))
            yield from visible_columns(sources, may_delete, snap)
        finally:
            self.versions.unref(version)

    def snapshot(self) -> Snapshot:
        """A read point at the last acknowledged write; release it when done."""
        with self._mutex:
            lsn = self._read_lsn
            self._snapshots.add(lsn)
        return Snapshot(self, lsn)

    def _release_snapshot(self, lsn: int) -> None:
        with self._mutex:
            self._snapshots.discard(lsn)

    async def get_async(self, key: bytes, snapshot: Snapshot | None = None) -> bytes | None:
        """get() never waits for I/O other than a page-cache read, so it runs inline."""
        return self.get(key, snapshot)



def _chain(readers: list[sstable.TableReader], start, end, snap) -> Iterator:
    for i, r in enumerate(readers):
        yield from r.chunks_from(start if i == 0 else None, end, snap)


_first = itemgetter(0)


def _resolve(chunk: tuple, neg_snap: int) -> tuple[list, list]:
    """(keys, values) of a chunk (keys, -lsns, values, unique) of one source at the
    snapshot: per key its newest version visible at it (None for a tombstone, kept to
    shadow older sources); keys with no version visible left out, so that older
    sources show through. A few C calls when every entry is visible and no key is there
    twice (the common case), a Python loop per entry otherwise."""
    keys, negs, values, unique = chunk
    if negs is None or (unique and min(negs) >= neg_snap):
        return keys, values
    ks: list = []
    vs: list = []
    last = None
    for k, neg, v in zip(keys, negs, values):
        if neg < neg_snap or k == last:
            continue
        last = k
        ks.append(k)
        vs.append(v)
    return ks, vs


def visible_columns(sources: list[Iterator], may_delete: list[bool], snap: int
                    ) -> Iterator[Iterable[tuple[bytes, bytes]]]:
    """Merge chunk sources (TableReader.chunks_from's shape), newest first, into iterables
    of (key, value): in key order, each key once with its value at `snap`, no tombstones.

    REQUIRES: for any key, every version in a source is newer than every version in the
    sources after it (an LSM read view's order); may_delete[i]: source i may hold
    tombstones.

    A round takes from every source what it holds up to the smallest of their chunks'
    last keys (chunks never split a key's versions, so a key is decided in one round).
    When a single source has entries below that bound (a run: the usual case for the
    deepest level below a few small L0 files), its lists go out as a zip of slices;
    otherwise the pieces' (key, value) pairs, newest source first, are sorted by key in
    C (timsort merges the runs; stable, so a key's newest version stays first), and a
    Python pass drops older versions and tombstones only if a key repeats or a piece
    holds a tombstone. Once one source is left, its chunks go out as they come. A
    per-entry Python loop (heap or sorted tuples, then a filter) cost more than decoding
    the blocks; a dict filled oldest source first ~20 ns an item more than the sort
    (bench/engine: scan).
    """
    neg_snap = -snap
    live: list[list] = []  # [keys, values, pos, source, may_delete], newest first
    for it, deletes in zip(sources, may_delete):
        for chunk in it:
            keys, values = _resolve(chunk, neg_snap)
            if keys:
                live.append([keys, values, 0, it, deletes])
                break
    while live:
        if len(live) == 1:
            keys, values, pos, it, deletes = live[0]
            while True:
                if pos:
                    keys = keys[pos:]
                    values = values[pos:]
                    pos = 0
                if deletes and None in values:
                    keys, values = _without_tombstones(keys, values)
                if keys:
                    yield zip(keys, values)
                for chunk in it:
                    keys, values = _resolve(chunk, neg_snap)
                    if keys:
                        break
                else:
                    return
        bound = min([st[0][-1] for st in live])
        pieces = []
        for st in live:
            keys = st[0]
            pos = st[2]
            j = len(keys) if keys[-1] <= bound else bisect_right(keys, bound, pos)
            if j > pos:
                pieces.append((st, pos, j))
                st[2] = j
        if len(pieces) == 1:
            st, pos, j = pieces[0]
            keys = st[0][pos:j] if pos or j < len(st[0]) else st[0]
            values = st[1][pos:j] if pos or j < len(st[1]) else st[1]
            if st[4] and None in values:
                keys, values = _without_tombstones(keys, values)
            if keys:
                yield zip(keys, values)
        else:
            pairs: list = []
            deletes = False
            for st, pos, j in pieces:  # newest first: a stable sort keeps them so
                values = st[1][pos:j]
                pairs += zip(st[0][pos:j], values)
                deletes = deletes or (st[4] and None in values)
            pairs.sort(key=_first)
            keys = list(map(_first, pairs))
            if any(map(eq, keys, islice(keys, 1, None))) or deletes:
                pairs = _newest_live(pairs)
            if pairs:
                yield pairs
        still = []
        for st in live:
            if st[2] < len(st[0]):
                still.append(st)
                continue
            for chunk in st[3]:
                keys, values = _resolve(chunk, neg_snap)
                if keys:
                    st[0], st[1], st[2] = keys, values, 0
                    still.append(st)
                    break
        live = still


def _newest_live(pairs: list) -> list:
    """pairs (key, value) sorted by key, a key's newest first: each key's first, unless
    it is a tombstone."""
    out = []
    last = None
    for pair in pairs:
        k = pair[0]
        if k != last:
            last = k
            if pair[1] is not None:
                out.append(pair)
    return out


def _without_tombstones(keys: list, values: list) -> tuple[list, list]:
    live = list(map(is_not, values, repeat(None)))
    return list(compress(keys, live)), list(compress(values, live))
