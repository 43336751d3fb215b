"""MemTable (storage/memtable.py): versions, snapshots, tombstones, ordered scans, concurrency."""

from __future__ import annotations

import random
import threading

from strata.storage.memtable import ENTRY_OVERHEAD, MemTable

NOT_FOUND = (0, None)


def model_get(ops, key, snap):
    """(-lsn, value) of the newest op on key with lsn <= snap, else (0, None); ops = [(lsn, key, value)]."""
    best = None
    for lsn, k, v in ops:
        if k == key and lsn <= snap and (best is None or lsn > best[0]):
            best = (lsn, v)
    return NOT_FOUND if best is None else (-best[0], best[1])


def test_empty():
    m = MemTable()
    assert len(m) == 0
    assert m.get(b"a", 100) == NOT_FOUND
    assert list(m.entries()) == []
    assert m.sorted_entries() == []
    assert (m.first_lsn, m.last_lsn, m.size) == (0, 0, 0)


def test_snapshot_reads_see_exactly_lsn_le_snapshot():
    m = MemTable()
    m.add(10, b"k", b"v10")
    m.add(20, b"k", b"v20")
    m.add(30, b"k", b"v30")
    assert m.get(b"k", 9) == NOT_FOUND
    assert m.get(b"k", 10) == (-10, b"v10")
    assert m.get(b"k", 19) == (-10, b"v10")
    assert m.get(b"k", 20) == (-20, b"v20")
    assert m.get(b"k", 29) == (-20, b"v20")
    assert m.get(b"k", 30) == (-30, b"v30")
    assert m.get(b"k", 1 << 62) == (-30, b"v30")


def test_neighbouring_keys_do_not_leak_into_a_get():
    m = MemTable()
    m.add(5, b"a", b"A")
    m.add(6, b"ab", b"AB")
    m.add(7, b"b", b"B")
    assert m.get(b"a", 4) == NOT_FOUND  # next entry is a's newer version: still a
    assert m.get(b"aa", 100) == NOT_FOUND  # between a and ab
    assert m.get(b"ab", 5) == NOT_FOUND  # ab exists but only at 6
    assert m.get(b"b", 6) == NOT_FOUND
    assert m.get(b"c", 100) == NOT_FOUND  # past the end
    assert m.get(b"", 100) == NOT_FOUND


def test_tombstones_are_found_and_hide_older_versions():
    m = MemTable()
    m.add(1, b"k", b"v1")
    m.add(2, b"k", None)
    m.add(3, b"k", b"v3")
    assert m.get(b"k", 1) == (-1, b"v1")
    assert m.get(b"k", 2) == (-2, None)  # found: a deletion, do not look further
    assert m.get(b"k", 3) == (-3, b"v3")
    m2 = MemTable()
    m2.add(4, b"gone", None)
    assert m2.get(b"gone", 4) == (-4, None)
    assert m2.get(b"gone", 3) == NOT_FOUND


def test_random_ops_match_model():
    rnd = random.Random(7)
    m = MemTable()
    ops = []
    keys = [b"k%02d" % i for i in range(20)]
    for lsn in range(1, 600):
        k = rnd.choice(keys)
        v = None if rnd.random() < 0.2 else b"v%d" % lsn
        m.add(lsn, k, v)
        ops.append((lsn, k, v))
    for k in keys + [b"absent", b"k", b"k99"]:
        for snap in range(0, 601, 7):
            assert m.get(k, snap) == model_get(ops, k, snap), (k, snap)
    assert len(m) == 599
    assert (m.first_lsn, m.last_lsn) == (1, 599)


def test_add_many_equals_add():
    entries = [(i, b"k%d" % (i % 5), None if i % 7 == 0 else b"v%d" % i) for i in range(1, 50)]
    a, b = MemTable(), MemTable()
    for e in entries:
        a.add(*e)
    b.add_many(entries)
    assert a.sorted_entries() == b.sorted_entries()
    assert (a.size, a.first_lsn, a.last_lsn) == (b.size, b.first_lsn, b.last_lsn)
    b.add_many([])
    assert (b.first_lsn, b.last_lsn) == (1, 49)


def test_size_accounting():
    m = MemTable()
    m.add(1, b"abc", b"12345")
    m.add(2, b"abc", None)
    assert m.size == (3 + 5 + ENTRY_OVERHEAD) + (3 + ENTRY_OVERHEAD)
    assert (m.first_lsn, m.last_lsn) == (1, 2)


def test_entries_order_is_key_ascending_lsn_descending():
    m = MemTable()
    rnd = random.Random(1)
    for lsn in range(1, 300):  # LSNs in order (the writer's contract), keys at random
        m.add(lsn, b"k%d" % rnd.randrange(13), b"v%d" % lsn)
    got = list(m.entries())
    assert len(got) == 299
    for (k1, n1, _), (k2, n2, _) in zip(got, got[1:]):
        assert k1 < k2 or (k1 == k2 and -n1 > -n2), ((k1, n1), (k2, n2))
    assert got == sorted(got, key=lambda e: (e[0], e[1]))
    assert got == m.sorted_entries()
    assert sorted(-n for _, n, _ in got) == list(range(1, 300))


def test_entries_bounds_start_inclusive_end_exclusive():
    m = MemTable()
    for i, k in enumerate([b"a", b"b", b"c", b"d"], 1):
        m.add(i, k, k.upper())
        m.add(i + 10, k, k.upper() * 2)
    keys = lambda it: [(k, -n) for k, n, _ in it]
    assert keys(m.entries(b"b", b"d")) == [(b"b", 12), (b"b", 2), (b"c", 13), (b"c", 3)]
    assert keys(m.entries(b"bb", b"c")) == []
    assert keys(m.entries(b"bb", b"cc")) == [(b"c", 13), (b"c", 3)]
    assert keys(m.entries(None, b"b")) == [(b"a", 11), (b"a", 1)]
    assert keys(m.entries(b"d", None)) == [(b"d", 14), (b"d", 4)]
    assert keys(m.entries(b"e")) == []
    assert keys(m.entries(b"c", b"c")) == []
    assert keys(m.entries(b"d", b"a")) == []
    assert [v for _, _, v in m.entries(b"a", b"b")] == [b"AA", b"A"]


def test_entries_across_many_chunks_against_model():
    m = MemTable()
    rnd = random.Random(3)
    ops = []
    for lsn in range(1, 3001):
        k = b"%05d" % rnd.randrange(1000)
        v = None if rnd.random() < 0.1 else b"v"
        m.add(lsn, k, v)
        ops.append((k, -lsn, v))
    ops.sort()
    assert list(m.entries()) == ops
    for _ in range(30):
        lo, hi = sorted(b"%05d" % rnd.randrange(1100) for _ in range(2))
        assert list(m.entries(lo, hi)) == [e for e in ops if lo <= e[0] < hi], (lo, hi)


def test_entries_while_another_thread_adds():
    # The scan re-seeks between chunks: concurrent adds must never make it
    # raise, repeat an entry, go backwards, or miss one that existed before it began.
    m = MemTable()
    base = [(lsn, b"key%06d" % (lsn * 7 % 5000), b"base") for lsn in range(1, 5001)]
    m.add_many(base)
    before = {(k, -lsn) for lsn, k, _ in base}
    lo, hi = b"key001000", b"key002000"
    before_part = {e for e in before if lo <= e[0] < hi}
    done = threading.Event()
    errors: list[BaseException] = []
    last = [5000]

    def writer():
        rnd = random.Random(11)
        try:
            for lsn in range(5001, 40001):
                m.add(lsn, b"key%06d" % rnd.randrange(6000), b"w%d" % lsn)
                last[0] = lsn
        except BaseException as e:  # reported below
            errors.append(e)
        finally:
            done.set()

    t = threading.Thread(target=writer)
    t.start()
    overlapped = 0
    try:
        for scans in range(1000):
            at_start = last[0]
            seen = [(k, n) for k, n, _ in m.entries()]
            if last[0] != at_start:
                overlapped += 1
            for a, b in zip(seen, seen[1:]):
                assert a < b, (a, b)  # strictly increasing: no repeat, no step back
            assert before <= set(seen)
            part = [(k, n) for k, n, _ in m.entries(lo, hi)]
            assert all(lo <= k < hi for k, _ in part)
            assert part == sorted(set(part))
            assert before_part <= set(part)
            if done.is_set() and scans >= 3:
                break
    finally:
        t.join()
    assert not errors
    assert overlapped, "no scan ran concurrently with the writer"
    final = list(m.entries())
    assert len(final) == len(m) == 40000  # quiescent: every version, once


def test_get_while_another_thread_adds():
    m = MemTable()
    m.add(1, b"stable", b"v1")
    stop = threading.Event()

    def writer():
        lsn = 2
        while not stop.is_set() and lsn < 200000:
            m.add(lsn, b"w%07d" % lsn, b"x")
            lsn += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        for snap in range(1, 20000):
            assert m.get(b"stable", snap) == (-1, b"v1")
            assert m.get(b"stablf", snap) == NOT_FOUND
    finally:
        stop.set()
        t.join()
