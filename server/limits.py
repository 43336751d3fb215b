"""Admission control: per-client token buckets and concurrency caps (bulkheads).

Both are plain objects driven from the event loop (no locks needed); their
bounds are documented in docs/operations.md and exported as metrics.
"""

from __future__ import annotations

import time
from collections import OrderedDict


class TokenBucket:
    """`rate` tokens per second, at most `burst` banked."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self, n: float = 1.0) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


class RateLimiter:
    """One token bucket per client. Bounded: the least recently seen clients are forgotten
    past `max_clients` (a forgotten client starts again with a full bucket)."""

    def __init__(self, rate: float, burst: int, max_clients: int = 100_000) -> None:
        self.max_clients = max_clients
        self.configure(rate, burst)
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.refused = 0

    def configure(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst or max(1.0, rate)
        for b in getattr(self, "_buckets", {}).values():
            b.rate, b.burst = self.rate, self.burst

    def allow(self, client: str) -> bool:
        if self.rate <= 0:
            return True
        b = self._buckets.get(client)
        if b is None:
            b = self._buckets[client] = TokenBucket(self.rate, self.burst)
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
        if b.take():
            return True
        self.refused += 1
        return False


class Bulkhead:
    """At most `limit` holders at once; the rest are refused at once (no queue)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.refused = 0

    def try_enter(self) -> bool:
        if self.active >= self.limit:
            self.refused += 1
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1
