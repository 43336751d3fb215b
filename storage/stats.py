"""The engine's counters (`Engine.stats`), typed: a reader names a field, not a string.

Every counter counts from the engine's open; none is persisted.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineStats:
    """Counters since open. `Engine.stats` returns a copy the caller owns; inside the
    engine one instance is updated under its mutex (a flush or compaction thread adds
    its figures when it installs its result)."""

    # Writes by kind: each put, delete, atomic batch and event is one.
    puts: int = 0
    deletes: int = 0
    batches: int = 0
    events: int = 0
    # WAL group commits (one write and one fdatasync each in durability=always;
    # replicated frames applied count one per apply_frames call) and their frames.
    groups: int = 0
    group_frames: int = 0
    # Memtable flushes to L0.
    flushes: int = 0
    flush_bytes: int = 0
    flush_seconds: float = 0.0
    # Compactions (trivial moves, which only edit the manifest, counted apart).
    compactions: int = 0
    trivial_moves: int = 0
    compaction_read_bytes: int = 0
    compaction_write_bytes: int = 0
    compaction_seconds: float = 0.0
    # Write stalls: delayed 1 ms for L0 pressure, blocked until a flush or
    # compaction caught up, and the time writers spent in both.
    slowdowns: int = 0
    stops: int = 0
    stall_seconds: float = 0.0
    # Times a flush or compaction was paused for want of disk space.
    paused_flush: int = 0
    paused_compaction: int = 0
    # Recovery at open: WAL frames replayed, bytes cut from a torn tail (or by
    # open(truncate_after=)).
    recovered_frames: int = 0
    wal_truncated_bytes: int = 0
    # Gauges, read when the copy is made.
    memtable_bytes: int = 0
    block_cache_hits: int = 0
    block_cache_misses: int = 0
