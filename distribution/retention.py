"""Consumer retention: the WAL named consumers need is kept, within a limit, and an
operator sees how close each one is to losing it.

Every named consumer with a stored cursor holds the log from its cursor + 1 on
(Engine.set_log_holds), connected or not, so that one that stays away resumes
with every event. What the holds keep beyond wal_retention_bytes is bounded by
the engine's wal_hold_bytes (the daemon's consumer_retention_bytes), as Kafka
bounds a topic's log whatever its consumers' offsets: past it the oldest held
segments go and that consumer gets `compacted`, naming its cursor and the oldest
retained LSN (`compacted_message`). Before that, each consumer whose held log
passes WARN_FRACTION of the limit is logged (at most once per WARN_EVERY_S) and
the metrics show lag and headroom.

Holds follow the cursors stored in the engine, which replicate: a replica reads
them the same way and holds the same log. They are refreshed every `interval`
seconds (and after a delete), so a cursor stored less than `interval` ago may not
hold yet; a consumer acknowledges well after it subscribed, so that window only
matters for one whose cursor was written moments before a purge past it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from .cursors import CursorStore

log = logging.getLogger("strata.consumers")

WARN_FRACTION = 0.8  # of consumer_retention_bytes: the held log is about to be cut
WARN_EVERY_S = 60.0  # at most one warning per consumer this often


@dataclass
class ConsumerState:
    """One named consumer as last seen (see ConsumerRetention.refresh)."""

    name: str
    cursor_lsn: int  # last LSN acknowledged (stored, or newer in memory if connected here)
    lag_lsns: int
    lag_bytes: int  # WAL bytes from cursor_lsn + 1 on, to within a segment
    connected: bool
    connected_since: float  # Unix seconds; 0 when not connected
    last_ack: float  # Unix seconds its cursor last moved (written); 0: never
    retained: bool  # the log still holds cursor_lsn + 1
    held_bytes: int  # log kept for it beyond wal_retention_bytes


def compacted_message(name: str, cursor: int, start: int, earliest: int) -> str:
    """What a subscription starting at `start` is told when the log begins at `earliest`;
    a named consumer's also names its cursor and the limit that let it fall off."""
    if not name:
        return (f"LSN {start} is no longer retained; the oldest retained LSN is {earliest}")
    return (f"consumer {name!r} fell off the log: its cursor is at LSN {cursor} and the oldest "
            f"retained LSN is {earliest} (it stayed behind past consumer_retention_bytes); "
            f"resume from LSN {earliest}, or delete the consumer")


class ConsumerRetention:
    """Keeps the engine's holds equal to the stored cursors and reports on them.

    Runs on the event loop; engine scans, purges and byte counts run off it.
    `refresh` is serialised, so Admin.Consumers and the periodic task never race.
    """

    def __init__(self, get_engine, cursors: CursorStore, interval: float = 1.0) -> None:
        self._engine = get_engine
        self.cursors = cursors
        self.interval = interval
        self.states: dict[str, ConsumerState] = {}
        self.limit = 0  # the engine's wal_hold_bytes
        self.headroom = 0  # bytes the held log may still grow before the limit
        self.earliest = 0
        self.last_lsn = 0
        self._holds: dict[str, int] | None = None  # as last set on the engine
        self._held_by: object = None  # the engine they were set on (a reopen makes a new one)
        self._warned: dict[tuple[str, str], float] = {}  # (name, kind) -> when logged
        self._lock = asyncio.Lock()

    async def refresh(self) -> dict[str, ConsumerState]:
        """Set the holds from the stored cursors, purge what they no longer keep, and
        recompute every consumer's state; warn about the ones near or past the limit.
        Returns the states by name."""
        async with self._lock:
            engine = self._engine()
            if engine is None:
                return self.states
            stored = await self.cursors.stored()
            holds = {name: lsn + 1 for name, (lsn, _) in stored.items()}
            loop = asyncio.get_running_loop()
            changed = holds != self._holds or engine is not self._held_by
            engine.set_log_holds(holds)
            self._holds, self._held_by = holds, engine
            owners = dict(self.cursors.owners)

            def measure() -> tuple[dict, dict[str, int], int, int]:
                if changed:
                    engine.purge_log()  # a released or advanced hold frees its log now
                held = engine.log_holds()
                last = engine.last_lsn
                names = set(stored) | set(owners)
                cursor = {n: max(stored.get(n, (0, 0.0))[0],
                                 getattr(owners.get(n), "acked", 0) or 0) for n in names}
                lag_bytes = {n: engine.log_bytes_from(c + 1) for n, c in cursor.items()}
                return held, lag_bytes, last, engine.earliest_lsn

            held, lag_bytes, last, earliest = await loop.run_in_executor(None, measure)
            self.limit = engine.opts.wal_hold_bytes
            self.last_lsn, self.earliest = last, earliest
            states: dict[str, ConsumerState] = {}
            for name in sorted(set(stored) | set(owners)):
                lsn, written = stored.get(name, (0, 0.0))
                owner = owners.get(name)
                cursor = max(lsn, getattr(owner, "acked", 0) or 0)
                h = held.get(name)
                states[name] = ConsumerState(
                    name=name, cursor_lsn=cursor, lag_lsns=max(0, last - cursor),
                    lag_bytes=lag_bytes.get(name, 0), connected=owner is not None,
                    connected_since=self.cursors.since.get(name, 0.0) if owner else 0.0,
                    last_ack=max(written, self.cursors.acked_at.get(name, 0.0)),
                    retained=cursor == 0 or cursor + 1 >= earliest,
                    held_bytes=h["held_bytes"] if h else 0)
            self.states = states
            most = max((s.held_bytes for s in states.values()), default=0)
            self.headroom = max(0, self.limit - most)
            self._warn(states, earliest)
            return states

    def _warn(self, states: dict[str, ConsumerState], earliest: int) -> None:
        """Log each consumer near the limit, and each that fell off, at most once per
        WARN_EVERY_S for each of the two (falling off is news even just after the
        warning that it was near)."""
        now = time.monotonic()
        for key in list(self._warned):
            if key[0] not in states:
                del self._warned[key]
        for s in states.values():
            if not s.retained:
                kind = "fell"
            elif s.held_bytes > 0 and s.held_bytes >= WARN_FRACTION * self.limit:
                kind = "near"
            else:
                continue
            if now - self._warned.get((s.name, kind), -WARN_EVERY_S) < WARN_EVERY_S:
                continue
            self._warned[(s.name, kind)] = now
            if kind == "fell":
                log.warning("consumer %r fell off the log: its cursor is at LSN %d, the oldest "
                            "retained LSN is %d (consumer_retention_bytes %d exceeded)",
                            s.name, s.cursor_lsn, earliest, self.limit)
            else:
                log.warning("consumer %r is holding %d bytes of WAL beyond wal_retention_bytes, "
                            "%.0f%% of consumer_retention_bytes (%d): its cursor is at LSN %d, "
                            "%d LSNs behind; past the limit it loses events (delete it with "
                            "`strata consumers delete` if it is gone for good)",
                            s.name, s.held_bytes, 100 * s.held_bytes / max(1, self.limit),
                            self.limit, s.cursor_lsn, s.lag_lsns)

    async def run(self) -> None:
        """Refresh every `interval` seconds until cancelled."""
        while True:
            try:
                await self.refresh()
            except Exception as e:  # a closed or reopening engine: next round
                log.warning("consumer retention not refreshed: %s", e)
            await asyncio.sleep(self.interval)
