"""Bloom filter (storage/bloom.py): no false negatives, measured false-positive rate, layout."""

from __future__ import annotations

import mmh3
import pytest

from strata.storage import bloom
from strata.storage.bloom import BITS_PER_KEY, BloomFilter, build


def keys(prefix: bytes, n: int, start: int = 0) -> list[bytes]:
    return [b"%s%09d" % (prefix, i) for i in range(start, start + n)]


def test_no_false_negatives():
    present = keys(b"user:", 20_000)
    f = BloomFilter(build(present))
    assert all(f.may_contain(k) for k in present)


def test_no_false_negatives_for_odd_keys():
    present = [b"", b"\x00", b"\xff" * 300, bytes(range(256)), b"a", b"a\x00"] + \
        [bytes([i]) * i for i in range(1, 64)]
    f = BloomFilter(build(present))
    assert all(f.may_contain(k) for k in present)


@pytest.mark.parametrize("n", [1, 2, 5, 7, 63, 64, 65, 1000])
def test_no_false_negatives_at_small_sizes(n):
    present = keys(b"s", n)
    f = BloomFilter(build(present))
    assert all(f.may_contain(k) for k in present)


def test_false_positive_rate_at_10_bits_per_key():
    present = keys(b"in:", 50_000)
    f = BloomFilter(build(present, 10))
    absent = keys(b"out:", 100_000)
    fp = sum(1 for k in absent if f.may_contain(k))
    rate = fp / len(absent)
    assert rate <= 0.01, f"false-positive rate {rate:.4%}"
    assert rate > 0.0, "a filter that never says yes for absent keys is suspicious at 10 bits/key"


def test_more_bits_per_key_fewer_false_positives():
    present = keys(b"in:", 10_000)
    absent = keys(b"out:", 40_000)
    rates = []
    for bpk in (4, 10, 20):
        f = BloomFilter(build(present, bpk))
        assert all(f.may_contain(k) for k in present)
        rates.append(sum(map(f.may_contain, absent)) / len(absent))
    assert rates[0] > rates[1] > rates[2]
    assert rates[2] < 0.001


def test_empty_key_list():
    data = build([])
    assert len(data) == 64 // 8 + 1
    assert data[:-1] == bytes(8)
    assert data[-1] == bloom.PROBES
    f = BloomFilter(data)
    assert not any(f.may_contain(k) for k in keys(b"x", 1000) + [b""])


def test_layout_size_and_k():
    for n in (1, 6, 7, 100, 1001):
        data = build(keys(b"k", n))
        m = max(64, n * BITS_PER_KEY)
        m = (m + 7) // 8 * 8
        assert len(data) == m // 8 + 1, n
        assert data[-1] == bloom.PROBES, n  # the default: 11 bits per key, 5 probes
    assert build(keys(b"k", 10), 10)[-1] == 7  # other densities: k = round(bits * ln 2)
    assert build(keys(b"k", 10), 20)[-1] == 14
    assert build(keys(b"k", 10), 1)[-1] == 1
    assert build(keys(b"k", 10), 100)[-1] == 30  # clamped


def test_duplicates_allowed():
    present = [b"dup"] * 50 + [b"other"]
    f = BloomFilter(build(present))
    assert f.may_contain(b"dup") and f.may_contain(b"other")


def test_bits_follow_the_documented_probe_sequence():
    # Bit ((h1 + i*h2) mod 2**64) mod m, LSB first, for the two little-endian
    # halves of MurmurHash3 x64-128; an independent re-implementation must
    # produce the same bytes (a change silently breaks existing files).
    present = keys(b"doc", 37)
    data = build(present)
    m = (len(data) - 1) * 8
    k = data[-1]
    expect = bytearray(m // 8)
    for key in present:
        h = mmh3.hash_bytes(key)
        h1 = int.from_bytes(h[:8], "little")
        h2 = int.from_bytes(h[8:], "little")
        for i in range(k):
            p = ((h1 + i * h2) % (1 << 64)) % m
            expect[p >> 3] |= 1 << (p & 7)
    assert data[:-1] == bytes(expect)


def test_reader_takes_k_and_m_from_the_block():
    present = keys(b"r", 500)
    for bpk in (3, 10, 16):
        f = BloomFilter(build(present, bpk))
        assert all(f.may_contain(k) for k in present), bpk


def test_too_short_block_is_refused():
    for data in (b"", b"\x07"):
        with pytest.raises(ValueError):
            BloomFilter(data)


def test_all_ones_filter_says_yes_to_everything():
    f = BloomFilter(b"\xff" * 8 + bytes([bloom._k_for(10)]))
    assert all(f.may_contain(k) for k in keys(b"z", 100))


def test_first_two_probes_never_turn_away_a_key_that_is_in():
    """may_contain_first_two: a cheaper, weaker may_contain (TableReader.get_cached_first):
    every stored key passes; it turns away a subset of what may_contain does."""
    import random

    from strata.storage import bloom as bloom_mod

    keys = [b"key%06d" % i for i in range(0, 20000, 2)]
    for k in (1, 2, 5, 7):
        f = bloom_mod.BloomFilter(bloom_mod.build(keys, 11, k))
        assert all(f.may_contain_first_two(key) for key in keys)
        absent = [b"key%06d" % i for i in range(1, 20000, 2)] + [random.randbytes(8) for _ in range(500)]
        for key in absent:
            if f.may_contain(key):
                assert f.may_contain_first_two(key), key
        turned_away = sum(not f.may_contain_first_two(key) for key in absent)
        assert turned_away > len(absent) // 2, (k, turned_away)
