"""The linearizability checker itself, on histories known to be (non-)linearizable.

Times are integers; the checker's own pictures of overlap: (call, return)."""

from __future__ import annotations

import math
import random

import pytest

from .lincheck import Op, check

K = b"k"


def put(c, v, call, ret=math.inf, key=K):
    return Op(c, "put", key, v, call, ret)


def get(c, v, call, ret, key=K):
    return Op(c, "get", key, v, call, ret)


LINEARIZABLE = {
    "sequential": [put(0, 1, 0, 1), get(1, 1, 2, 3), put(0, 2, 4, 5), get(1, 2, 6, 7)],
    "read of the initial value": [get(0, None, 0, 1), put(1, 1, 2, 3)],
    "concurrent read sees the old value": [put(0, 1, 0, 1), put(0, 2, 2, 10), get(1, 1, 3, 4)],
    "concurrent read sees the new value": [put(0, 1, 0, 1), put(0, 2, 2, 10), get(1, 2, 3, 4)],
    "two concurrent puts, reads agree on an order": [
        put(0, 1, 0, 10), put(1, 2, 0, 10), get(2, 1, 11, 12), get(3, 1, 13, 14)],
    "an unknown-outcome put that took effect": [put(0, 1, 0), get(1, 1, 5, 6)],
    "an unknown-outcome put that never took effect": [put(0, 1, 0), get(1, None, 5, 6)],
    "keys are independent": [put(0, 1, 0, 1, b"a"), put(0, 1, 0, 1, b"b"),
                             get(1, 1, 2, 3, b"a"), get(1, None, 2, 3, b"c")],
}

NOT_LINEARIZABLE = {
    "stale read after a completed write": [put(0, 1, 0, 1), put(0, 2, 2, 3), get(1, 1, 4, 5)],
    "a value never written": [put(0, 1, 0, 1), get(1, 3, 2, 3)],
    "lost acknowledged write": [put(0, 1, 0, 1), get(1, None, 2, 3)],
    "reads disagree on the order of two puts": [
        put(0, 1, 0, 10), put(1, 2, 0, 10),
        get(2, 1, 11, 12), get(3, 2, 13, 14), get(4, 1, 15, 16)],
    "a value read before it was written": [get(0, 1, 0, 1), put(1, 1, 2, 3)],
    "an unknown-outcome put observed, then unobserved": [
        put(0, 1, 0), get(1, 1, 5, 6), get(1, None, 7, 8)],
}


@pytest.mark.parametrize("name", LINEARIZABLE)
def test_linearizable_histories_pass(name):
    assert check(LINEARIZABLE[name]), name


@pytest.mark.parametrize("name", NOT_LINEARIZABLE)
def test_non_linearizable_histories_fail_naming_the_key(name):
    r = check(NOT_LINEARIZABLE[name])
    assert not r and r.key == K and r.ops


def _register_history(rng: random.Random, n: int, clients: int) -> list[Op]:
    """A real register run by `clients` concurrent clients in simulated time: each op takes
    effect at one instant inside its [call, return]; the history is linearizable."""
    value = None
    ops = []
    busy_until = [0.0] * clients
    t = 0.0
    for i in range(n):
        c = rng.randrange(clients)
        call = max(t, busy_until[c]) + rng.random()
        effect = call + rng.random()
        ret = effect + rng.random() * 3
        t = effect
        if rng.random() < 0.5:
            value = i
            ops.append(put(c, i, call, ret))
        else:
            ops.append(get(c, value, call, ret))
        busy_until[c] = ret
    return ops


def test_random_register_histories_pass_and_a_single_corruption_fails():
    rng = random.Random(7)
    for _ in range(30):
        ops = _register_history(rng, 60, 4)
        assert check(ops)
        # Make one read return a value no put ever wrote: never linearizable.
        i = next(j for j, o in enumerate(ops) if o.kind == "get")
        bad = list(ops)
        bad[i] = Op(bad[i].client, "get", K, "never written", bad[i].call, bad[i].ret)
        assert not check(bad)


def test_many_unread_unknown_puts_do_not_blow_up_the_search():
    """A crash leaves many puts of unknown outcome; those nobody read are left out."""
    ops = [put(0, 0, 0, 1)]
    ops += [put(c, 100 + c, 2) for c in range(200)]  # all cut off by the crash
    ops += [get(300, 0, 3, 4), put(301, 5, 5, 6), get(302, 5, 7, 8)]
    assert check(ops)
    ops.append(get(303, 104, 9, 10))  # one of them did take effect, late: still fine
    assert check(ops)
    ops.append(get(304, 5, 11, 12))  # ...but then 5 cannot come back
    assert not check(ops)
