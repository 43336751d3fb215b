"""Model-based test: the engine against a dict, across random operations.

A tiny memtable makes flushes and compactions happen every few operations;
`reopen` closes cleanly, `power_cut` reopens from only the synced state (every
write is acknowledged after fsync, so the model is unchanged), and snapshots
taken along the way must keep reading what they saw.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from strata.storage import Engine
from strata.storage.vfs import MemFS

# A small key space, so deletes and overwrites hit keys that already sit in tables.
KEYS = st.integers(0, 150).map(lambda i: b"k%03d" % i) | st.binary(min_size=1, max_size=4)
VALUES = st.binary(max_size=300)
# Targets this small put data in L1..L4 within a few dozen steps, so the manual
# compaction meets tombstones in every level and wide files above narrow ones.
# Stall thresholds this low make the bound on L0 one the engine guarantees however
# far behind the compaction workers fall on a loaded machine.
OPTS = dict(durability="always", memtable_size=1 << 10, base_level_size=1 << 10,
            target_file_size=512, l0_compaction_trigger=2, l0_slowdown_trigger=10,
            l0_stop_trigger=12)


class EngineModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.fs = MemFS()
        self.opts = dict(OPTS)
        self.db = Engine.open("/db", fs=self.fs, **self.opts)
        self.model: dict[bytes, bytes] = {}
        self.snaps: list[tuple[object, dict[bytes, bytes]]] = []
        self.checkpoints = 0

    @rule(key=KEYS, value=VALUES)
    def put(self, key, value):
        self.db.put(key, value)
        self.model[key] = value

    @rule(key=KEYS)
    def delete(self, key):
        self.db.delete(key)
        self.model.pop(key, None)

    @rule(ops=st.lists(st.tuples(st.booleans(), KEYS, VALUES), min_size=1, max_size=20))
    def batch(self, ops):
        self.db.write_batch([("put", k, v) if is_put else ("delete", k) for is_put, k, v in ops])
        for is_put, k, v in ops:
            if is_put:
                self.model[k] = v
            else:
                self.model.pop(k, None)

    @rule(key=KEYS)
    def get(self, key):
        assert self.db.get(key) == self.model.get(key)

    @rule(start=st.none() | KEYS, end=st.none() | KEYS)
    def scan(self, start, end):
        expected = sorted((k, v) for k, v in self.model.items()
                          if (start is None or k >= start) and (end is None or k < end))
        assert list(self.db.scan(start, end)) == expected

    @precondition(lambda self: len(self.snaps) < 3)
    @rule()
    def take_snapshot(self):
        self.snaps.append((self.db.snapshot(), dict(self.model)))

    @precondition(lambda self: self.snaps)
    @rule()
    def check_and_release_snapshot(self):
        snap, seen = self.snaps.pop(0)
        assert dict(self.db.scan(snapshot=snap)) == seen
        for k, v in list(seen.items())[:10]:
            assert self.db.get(k, snapshot=snap) == v
        snap.release()

    @rule()
    def compact(self):
        self.db.compact_all()

    @rule()
    def flush(self):
        self.db.flush()

    @rule()
    def checkpoint(self):
        """A checkpoint opens as a database holding exactly what was acknowledged."""
        self.checkpoints += 1
        dest = f"/cp{self.checkpoints}"
        self.db.checkpoint(dest)
        with Engine.open(dest, fs=self.fs, **self.opts) as cp:
            assert dict(cp.scan()) == self.model

    @rule(auto_l0=st.booleans())
    def reopen(self, auto_l0):
        """Reopen, with or without automatic L0 compactions (without them, L0 files wait
        for the manual compaction, which then merges them into whatever L1 holds)."""
        self._drop_snapshots()
        self.db.close()
        self.opts["l0_compaction_trigger"] = OPTS["l0_compaction_trigger"] if auto_l0 else 8
        self.db = Engine.open("/db", fs=self.fs, **self.opts)

    @rule()
    def power_cut(self):
        self._drop_snapshots()
        survivor = self.fs.synced_copy()
        self.db._halt()
        self.fs = survivor
        self.db = Engine.open("/db", fs=self.fs, **self.opts)

    def _drop_snapshots(self):
        for snap, _ in self.snaps:
            snap.release()
        self.snaps.clear()

    @invariant()
    def tree_is_bounded(self):
        """Writes stop at l0_stop_trigger; the memtables rotated before the stop (at most
        max_immutable, plus the one a reopen recovers) can still land in L0 after it."""
        opts = self.db.opts
        assert len(self.db.versions.current.levels[0]) <= opts.l0_stop_trigger + opts.max_immutable

    def teardown(self):
        self.db.close()


TestEngineModel = EngineModel.TestCase
TestEngineModel.settings = settings(max_examples=100, stateful_step_count=80, deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow])


CODEC_CHOICES = st.sampled_from(["none", "lz4", "zstd", "none,lz4,zstd", "zstd,none,lz4"])


class CompressedEngineModel(EngineModel):
    """The same model with compressed tables: values that compress, and reopening with
    another codec (or per-level codecs), so tables of every codec sit side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.db.close()
        self.opts["compression_per_level"] = "none,lz4,zstd"
        self.db = Engine.open("/db", fs=self.fs, **self.opts)

    @rule(key=KEYS, n=st.integers(1, 120), unit=st.binary(min_size=1, max_size=4))
    def put_compressible(self, key, n, unit):
        value = unit * n
        self.db.put(key, value)
        self.model[key] = value

    @rule(codecs=CODEC_CHOICES)
    def reopen_with_codecs(self, codecs):
        self._drop_snapshots()
        self.db.close()
        self.opts["compression_per_level"] = codecs
        self.db = Engine.open("/db", fs=self.fs, **self.opts)


TestCompressedEngineModel = CompressedEngineModel.TestCase
TestCompressedEngineModel.settings = settings(max_examples=40, stateful_step_count=80,
                                              deadline=None,
                                              suppress_health_check=[HealthCheck.too_slow])


class BlockFormatModel(CompressedEngineModel):
    """The same model with data blocks of a few entries, restart groups of one to five,
    and a block cache of a few blocks, reopened with other shapes along the way: block
    boundaries, restart groups, cache misses (where the deepest level asks its bloom
    filter) and every codec on every level, side by side (docs/format.md, "Data block")."""

    def __init__(self) -> None:
        super().__init__()
        self.db.close()
        self.opts.update(block_size=64, block_restart_interval=2, block_cache_size=2048)
        self.db = Engine.open("/db", fs=self.fs, **self.opts)

    @rule(block_size=st.sampled_from([64, 100, 256, 4096]), interval=st.integers(1, 5),
          cache=st.sampled_from([0, 1024, 64 << 10]), codecs=CODEC_CHOICES)
    def reopen_with_block_shape(self, block_size, interval, cache, codecs):
        self._drop_snapshots()
        self.db.close()
        self.opts.update(block_size=block_size, block_restart_interval=interval,
                         block_cache_size=cache, compression_per_level=codecs)
        self.db = Engine.open("/db", fs=self.fs, **self.opts)

    @rule()
    def verify(self):
        self.db.verify()


TestBlockFormatModel = BlockFormatModel.TestCase
TestBlockFormatModel.settings = settings(max_examples=40, stateful_step_count=80,
                                         deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
