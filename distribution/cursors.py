"""Durable consumer cursors: the last LSN a named consumer acknowledged.

Cursors live in the engine's key space under a reserved prefix, so they are
written through the WAL, replicated with the data and kept by checkpoints. The
prefix sorts after every key a client may write (the KV API refuses keys that
start with it, and scans and subscriptions never show them)::

    key   := RESERVED_PREFIX "cursor/" consumer-name (UTF-8)
    value := msgpack [acked_lsn u64, updated_unix_ms u64]
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgpack

from strata_client.limits import MAX_CONSUMER_NAME_BYTES, RESERVED_PREFIX

log = logging.getLogger("strata.cursors")

CURSOR_PREFIX = RESERVED_PREFIX + b"cursor/"
MAX_NAME = MAX_CONSUMER_NAME_BYTES


def is_reserved(key: bytes) -> bool:
    return key[:2] == b"\xff\xff" and key.startswith(RESERVED_PREFIX)


def cursor_key(name: str) -> bytes:
    raw = name.encode()
    if not 1 <= len(raw) <= MAX_NAME:
        raise ValueError(f"consumer name must be 1 .. {MAX_NAME} bytes of UTF-8")
    return CURSOR_PREFIX + raw


def encode(acked_lsn: int) -> bytes:
    return msgpack.packb([acked_lsn, int(time.time() * 1000)])


def decode(value: bytes | None) -> int:
    """The acknowledged LSN stored in a cursor value (0: none)."""
    return decode_entry(value)[0]


def decode_entry(value: bytes | None) -> tuple[int, float]:
    """(acknowledged LSN, when it was written in Unix seconds) of a cursor value."""
    if not value:
        return 0, 0.0
    lsn, ms = msgpack.unpackb(value)
    return int(lsn), ms / 1000


class CursorStore:
    """Named consumers' cursors: loaded at subscribe, written back in batches.

    An acknowledgement only moves the consumer's `acked` in memory; `run`
    writes the cursors that moved every `interval` seconds, all in one engine
    batch, and a consumer's cursor is written when it unsubscribes or
    disconnects. A crash can therefore lose the last `interval` of
    acknowledgements: those events are delivered again (at least once), never
    skipped.
    One subscription owns a name at a time; a new one with the same name takes
    it over (`claim`, which returns the previous owner to be ended) and starts
    from the previous owner's acknowledgements.
    `delete` forgets a name: its cursor is deleted and its owner, if any, is no
    longer one (its release writes nothing back). Cursor writes and deletes are
    serialised (`_lock`), so a delete is never overtaken by an older write.
    """

    def __init__(self, get_engine, interval: float = 0.1) -> None:
        self._engine = get_engine
        self.interval = interval
        self.owners: dict[str, object] = {}  # name -> Consumer (has .acked)
        self.saved: dict[str, int] = {}
        self.writes = 0
        self.since: dict[str, float] = {}  # name -> when its owner claimed it (Unix s)
        # name -> when this node last wrote its cursor forward (Unix s): the last ack,
        # to within `interval`
        self.acked_at: dict[str, float] = {}
        self._lock = asyncio.Lock()

    async def load(self, name: str) -> int:
        lsn = decode(await self._engine().get_async(cursor_key(name)))
        self.saved[name] = max(self.saved.get(name, 0), lsn)
        return lsn

    def claim(self, name: str, owner) -> object | None:
        prev = self.owners.get(name)
        self.owners[name] = owner
        self.since[name] = time.time()
        return prev

    async def release(self, name: str, owner) -> None:
        """The owner is done: write its cursor, then forget it."""
        if self.owners.get(name) is not owner:
            return
        try:
            await self.flush({name: owner.acked})
        finally:
            if self.owners.get(name) is owner:
                del self.owners[name]
                self.saved.pop(name, None)
                self.since.pop(name, None)

    async def flush(self, only: dict[str, int] | None = None) -> None:
        todo = only if only is not None else {n: c.acked for n, c in self.owners.items()}
        todo = {n: lsn for n, lsn in todo.items() if lsn > self.saved.get(n, 0)}
        engine = self._engine()
        if not todo or engine is None:
            return
        async with self._lock:
            # A name deleted while this waited for the lock stays deleted.
            todo = {n: lsn for n, lsn in todo.items() if n in self.owners}
            if not todo:
                return
            await engine.write_batch_async([("put", cursor_key(n), encode(lsn))
                                            for n, lsn in todo.items()])
        self.writes += 1
        now = time.time()
        for n, lsn in todo.items():
            self.saved[n] = max(self.saved.get(n, 0), lsn)
            self.acked_at[n] = now

    async def stored(self) -> dict[str, tuple[int, float]]:
        """Every cursor stored in the engine: name -> (acknowledged LSN, written at in
        Unix seconds). Read off the loop (a scan of the reserved range)."""
        engine = self._engine()
        if engine is None:
            return {}

        def scan() -> dict[str, tuple[int, float]]:
            end = CURSOR_PREFIX[:-1] + bytes([CURSOR_PREFIX[-1] + 1])
            return {k[len(CURSOR_PREFIX):].decode(errors="replace"): decode_entry(v)
                    for k, v in engine.scan(CURSOR_PREFIX, end)}

        return await asyncio.get_running_loop().run_in_executor(None, scan)

    async def delete(self, name: str) -> tuple[object | None, int]:
        """Forget consumer `name`: delete its stored cursor and disown its owner (the
        caller ends it). Returns (the owner it had or None, its cursor LSN). Raises
        KeyError if the name has neither a cursor nor an owner."""
        engine = self._engine()
        key = cursor_key(name)
        async with self._lock:
            stored = decode(await engine.get_async(key))
            owner = self.owners.pop(name, None)
            if owner is None and not stored:
                raise KeyError(name)
            cursor = max(stored, getattr(owner, "acked", 0) or 0)
            if stored:
                await engine.write_batch_async([("delete", key)])
            self.saved.pop(name, None)
            self.since.pop(name, None)
            self.acked_at.pop(name, None)
        return owner, cursor

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception as e:
                log.warning("consumer cursors not saved yet: %s", e)
