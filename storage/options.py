"""Engine options and the hard limits they live within.

`Engine.open(path, **options)` takes these as keyword arguments; the daemon's
configuration takes its limits and durability modes from here rather than
restating them (docs/operations.md lists both).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from . import record
from .errors import InvalidArgument

DURABILITY_MODES = ("always", "interval", "none")
CODECS = ("none", "lz4", "zstd")  # block compression (storage/sstable.py)

# Hard limits: a key, value or batch over them is refused before anything is
# written, whatever the options say. One WAL frame carries one write, so a
# batch stays a megabyte below the frame's payload limit (record.MAX_PAYLOAD).
MAX_KEY_SIZE = 64 << 10
MAX_VALUE_SIZE = 16 << 20
MAX_BATCH_OPS = 100_000
MAX_BATCH_BYTES = record.MAX_PAYLOAD - (1 << 20)
MAX_GROUP_BYTES = record.MAX_GROUP_BYTES


@dataclass
class Options:
    durability: str = "always"  # one of DURABILITY_MODES; docs/durability.md
    sync_interval_ms: int = 100  # fsync period of durability=interval
    memtable_size: int = 8 << 20  # a memtable rotates (and its WAL segment rolls) past this
    max_immutable: int = 2  # rotated memtables waiting for their flush before writes stop
    block_cache_size: int = 64 << 20  # decoded table blocks kept in memory
    l0_compaction_trigger: int = 4
    # RocksDB's defaults for the L0 thresholds. base_level_size is the static
    # target of the deepest level (past it the tree grows a level); the levels
    # above it are sized down from it (compaction.LevelPicker.targets).
    l0_slowdown_trigger: int = 20
    l0_stop_trigger: int = 36
    base_level_size: int = 64 << 20
    level_multiplier: int = 10
    target_file_size: int = 4 << 20
    # Input bytes of one compaction from L0, or of one manual step (0: 25 target files).
    max_compaction_bytes: int = 0
    wal_segment_size: int = 64 << 20
    # Flushed log kept for history readers and replicas. None by default: an embedded
    # engine has no subscribers, and the log would take the disk that the tables
    # already hold the data in. The daemon sets its own (server/config.py,
    # wal_retention_bytes) for its historical tier and lagging replicas.
    wal_retention_bytes: int = 0
    wal_retention_age_s: float = 0.0
    # Log kept beyond the retention above for named holds (Engine.hold_log): a hold
    # keeps its LSN's segment and all later ones while those total at most this.
    wal_hold_bytes: int = 0
    # Purges wait for the first Engine.set_log_holds: for an owner whose holds are
    # stored in this database, so that it can read them after open before anything
    # it needs is purged (the recovery flush at open would purge otherwise).
    wal_holds_from_open: bool = False
    wal_preallocate: bool = True  # not with durability="none" (recovery.wal_preallocation)
    compaction_executor: str = "process"  # "process" | "thread"
    # Data blocks of new tables (docs/format.md, "Data block"): about this many bytes
    # before compression, with a restart point every `block_restart_interval` entries.
    # A point read decodes one restart group, in C but an object per field: 8 entries
    # instead of LevelDB's 16 take ~0.6 us off a get for ~0.5 % more bytes
    # (bench/engine: readrandom-hit, 250k keys).
    block_size: int = 4096
    block_restart_interval: int = 8
    # Data blocks of new tables: "none", "lz4" or "zstd" (docs/format.md). Tables keep
    # the codec they were written with, so this can change between opens. LZ4: about
    # half the bytes of text-like values for ~2 us per block read from disk; zstd saves
    # a third more and costs ~4x that (docs/bench/compression.md).
    compression: str = "lz4"
    # Per level, as RocksDB's compression_per_level: "none,lz4,zstd" (or a list) means
    # L0 none, L1 lz4, L2 and deeper zstd; empty: `compression` on every level.
    compression_per_level: str | list = ""
    max_key_size: int = MAX_KEY_SIZE
    max_value_size: int = MAX_VALUE_SIZE
    max_batch_ops: int = MAX_BATCH_OPS
    max_batch_bytes: int = MAX_BATCH_BYTES
    stall_timeout_s: float = 60.0  # a write held by the stop thresholds gives up after this
    repair: bool = False  # cut the WAL at damage instead of refusing to open
    # Write the replayed WAL tail into a table at open (a fresh copy from memory after
    # a possible fsync error). A replicated node keeps it in the log instead, so that a
    # tail the new master never had can still be cut (`truncate_log`).
    flush_after_recovery: bool = True
    create_if_missing: bool = True

    def codec(self, level: int) -> str:
        """The compression of tables written into `level`."""
        per = self.compression_per_level
        return per[min(level, len(per) - 1)] if per else self.compression

    @classmethod
    def make(cls, **options) -> Options:
        """Options from keyword arguments; InvalidArgument for an unknown name or a
        value outside the hard limits."""
        opts = cls()
        names = {f.name for f in fields(cls)}
        for k, v in options.items():
            if k not in names:
                raise InvalidArgument(f"unknown engine option {k!r}")
            setattr(opts, k, v)
        if opts.durability not in DURABILITY_MODES:
            raise InvalidArgument(
                f"durability must be one of {DURABILITY_MODES}, not {opts.durability!r}")
        if not 64 <= opts.block_size <= 1 << 24:
            raise InvalidArgument(f"block_size must be 64 .. {1 << 24}, not {opts.block_size}")
        if not 1 <= opts.block_restart_interval <= 1024:
            raise InvalidArgument(
                f"block_restart_interval must be 1 .. 1024, not {opts.block_restart_interval}")
        if opts.compaction_executor not in ("process", "thread"):
            raise InvalidArgument("compaction_executor must be 'process' or 'thread'")
        if isinstance(opts.compression_per_level, str):
            opts.compression_per_level = [c.strip() for c in opts.compression_per_level.split(",")
                                          if c.strip()]
        opts.compression_per_level = list(opts.compression_per_level)
        for codec in [opts.compression, *opts.compression_per_level]:
            if codec not in CODECS:
                raise InvalidArgument(f"compression must be one of {CODECS}, not {codec!r}")
        for name, limit in (("max_key_size", MAX_KEY_SIZE), ("max_value_size", MAX_VALUE_SIZE),
                            ("max_batch_ops", MAX_BATCH_OPS), ("max_batch_bytes", MAX_BATCH_BYTES)):
            low = 0 if name == "max_value_size" else 1  # empty values are values
            if not low <= getattr(opts, name) <= limit:
                raise InvalidArgument(f"{name} must be {low} .. {limit}, not {getattr(opts, name)}")
        # One frame must carry the largest write the limits admit.
        biggest = max(opts.max_key_size + opts.max_value_size, opts.max_batch_bytes) + 64
        if biggest > record.MAX_PAYLOAD:
            raise InvalidArgument(
                f"max_key_size + max_value_size and max_batch_bytes must stay below the "
                f"{record.MAX_PAYLOAD}-byte frame limit (with headroom); got {biggest - 64}")
        return opts
