"""Leveled compaction: what to compact (the picker) and the merge itself.

Picking (table-tested in tests/storage/test_compaction.py): L0 is compacted
into L1 when it holds `l0_trigger` files; level n >= 1 into n+1 when its size
exceeds its target. The deepest non-empty level D has the static target
`base_level_size * multiplier**(D-1)` (past it the tree grows a level); the
levels above it aim at size(D) / multiplier**(D-n), as RocksDB's dynamic
level bytes, so obsolete versions stay near a tenth of the data. The level
with the highest score (size / target, or files / trigger for L0) goes first.
Within a level, files are taken round-robin after the last compacted key, so
every key range is rewritten in turn.

The merge (`run_merge`) is a pure function of file paths and parameters. The
engine runs it in a worker process, so the k-way merge, which holds the GIL for
its whole duration, never slows writers in the main process; the main process
only installs the result (one manifest edit).

Dropping rules, for entries ordered by (key asc, lsn desc), where S is the
oldest LSN a live snapshot or reader may ask for:
- a version is dropped if a newer version of the same key has lsn <= S
  (no snapshot can see past the newer one);
- a tombstone with lsn <= S is dropped if no deeper level may hold the key
  (`bottommost`): nothing remains for it to hide.
"""

from __future__ import annotations

import gc
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import chain, compress
from operator import itemgetter, ne

import msgpack

from . import block, sstable
from .errors import Corruption, StorageError
from .filenames import compaction_output
from .manifest import NUM_LEVELS, FileMeta, Version
from .vfs import FileSystem, OsFS

_MAX_LSN = 1 << 64


@dataclass
class Compaction:
    level: int  # inputs come from `level` and `level + 1`; outputs go to `level + 1`
    inputs: list[FileMeta]
    next_inputs: list[FileMeta]
    bottommost: bool
    trivial_move: bool = False

    @property
    def output_level(self) -> int:
        return self.level + 1

    def input_bytes(self) -> int:
        return sum(f.size for f in self.inputs) + sum(f.size for f in self.next_inputs)


class LevelPicker:
    def __init__(self, l0_trigger: int = 4, base_level_size: int = 10 << 20,
                 multiplier: int = 10, min_target: int = 4 << 20,
                 max_compaction_bytes: int | None = None) -> None:
        self.l0_trigger = l0_trigger
        # One L0 compaction takes the oldest L0 files up to this many bytes (at
        # least two files), so its duration and its output stay bounded however
        # far L0 fell behind (RocksDB's max_compaction_bytes: 25 target files).
        self.max_compaction_bytes = max_compaction_bytes or 25 * min_target
        self.base_level_size = base_level_size
        self.multiplier = multiplier
        self.min_target = min_target  # one output file: a smaller target only churns
        self.pointers: dict[int, bytes] = {}  # level -> largest key of the last compaction

    def target(self, level: int) -> int:
        """The static target: when the deepest level outgrows it, the tree gets deeper."""
        return self.base_level_size * self.multiplier ** (level - 1)

    def targets(self, v: Version) -> dict[int, float]:
        """Per-level size targets, sized down from the deepest level (RocksDB's
        dynamic level bytes): level n aims at deepest / multiplier**(deepest - n),
        so ~90 % of the data sits in the last level and obsolete versions above
        it stay near 10 % (space amplification ~1.1x) whatever the database size.
        The deepest level keeps its static target; no target is below one file.
        """
        deepest = max((lvl for lvl in range(1, NUM_LEVELS - 1) if v.levels[lvl]), default=1)
        bottom = v.level_size(deepest)
        out: dict[int, float] = {}
        for lvl in range(1, NUM_LEVELS - 1):
            if lvl < deepest:
                out[lvl] = max(self.min_target, bottom / self.multiplier ** (deepest - lvl))
            else:
                out[lvl] = self.target(lvl)
        return out

    def scores(self, v: Version) -> list[tuple[float, int]]:
        out = [(len(v.levels[0]) / self.l0_trigger, 0)]
        for lvl, target in self.targets(v).items():
            out.append((v.level_size(lvl) / target, lvl))
        return out

    def pick(self, v: Version) -> Compaction | None:
        score, level = max(self.scores(v))
        if score < 1.0:
            return None
        if level == 0:
            inputs = self._oldest_l0(v)
        else:
            files = v.levels[level]
            ptr = self.pointers.get(level)
            inputs = [next((f for f in files if ptr is None or f.smallest > ptr), files[0])]
        c = compaction_for(v, level, inputs)
        if level > 0:  # LevelDB's rule: resume after the source level's inputs
            self.pointers[level] = max(f.largest for f in inputs)
        return c

    def _oldest_l0(self, v: Version) -> list[FileMeta]:
        """The oldest L0 files within max_compaction_bytes (at least two), newest first.

        Only the oldest may go: a newer L0 file left above an older one moved
        down keeps newer data above older, as reads expect.
        """
        files = v.levels[0]
        total = 0
        n = 0
        for f in reversed(files):  # L0 is listed newest first
            if n >= 2 and total + f.size > self.max_compaction_bytes:
                break
            total += f.size
            n += 1
        return list(files[len(files) - n:])

    def pick_manual(self, v: Version, upto_lsn: int = _MAX_LSN) -> Compaction | None:
        """A step of a manual full compaction: push the top level down until one level
        holds everything written up to `upto_lsn`.

        Files holding only later writes (min LSN > upto_lsn: flushed after the
        manual compaction began) are not chased, so it ends under a steady
        write load. A level goes down max_compaction_bytes at a time. Returns
        None when settled: at most one level holds such files, and it is not L0.
        """
        def old(files: list[FileMeta]) -> list[FileMeta]:
            return [f for f in files if f.min_lsn <= upto_lsn]

        nonempty = [lvl for lvl in range(NUM_LEVELS) if old(v.levels[lvl])]
        if not nonempty or (len(nonempty) == 1 and nonempty[0] > 0):
            return None
        level = nonempty[0]
        if level == 0:
            inputs = [f for f in self._oldest_l0(v) if f.min_lsn <= upto_lsn]  # the oldest
        else:
            inputs, total = [], 0
            for f in old(v.levels[level]):
                if inputs and total + f.size > self.max_compaction_bytes:
                    break
                inputs.append(f)
                total += f.size
        c = compaction_for(v, level, inputs)
        c.trivial_move = False  # a manual compaction rewrites (and so drops) what it can
        return c


def compaction_for(v: Version, level: int, inputs: list[FileMeta]) -> Compaction:
    """The compaction of `inputs` (files of `level`) into level + 1.

    The next level's overlapping files join the merge, and `bottommost` is
    decided over the key range of *all* merged files: a tombstone in a wider
    next-level file may only be dropped if no deeper level holds its key.
    Deciding it from the source files' range alone would let a delete vanish
    while an older value of the key still sits deeper (the key would come back).
    """
    lo = min(f.smallest for f in inputs)
    hi = max(f.largest for f in inputs)
    nxt = v.overlapping(level + 1, lo, hi)
    if nxt:
        lo = min(lo, nxt[0].smallest)
        hi = max(hi, nxt[-1].largest)
    bottommost = all(not v.overlapping(d, lo, hi) for d in range(level + 2, NUM_LEVELS))
    trivial = not nxt and len(inputs) == 1
    return Compaction(level, inputs, nxt, bottommost, trivial)


def merge(runs: list[list[tuple]], smallest_snapshot: int, drop_tombstones: bool) -> list[tuple]:
    """Merge sorted runs of (key, -lsn, value) and apply the dropping rules.

    The runs are concatenated and sorted: Timsort finds the runs and merges
    them in C, several times faster than heapq.merge driven from Python.
    (key, -lsn) is unique, so values are never compared.
    """
    if len(runs) == 1:
        merged = runs[0]
    else:
        merged = list(chain.from_iterable(runs))
        merged.sort()
    return drop_obsolete(merged, smallest_snapshot, drop_tombstones)


def drop_obsolete(entries: list[tuple], smallest_snapshot: int, drop_tombstones: bool) -> list[tuple]:
    """Apply the dropping rules (module docstring) to entries in internal order."""
    if not entries:
        return entries
    neg_s = -smallest_snapshot
    if min(map(itemgetter(1), entries)) >= neg_s:
        # Every version is visible to every reader: keep the newest of each key, the
        # first of its run (internal order), found by comparing each key with the one
        # before it, in C. (A dict of every key, as this was, costs 2.5x as much:
        # 100k entries, 41 against 15 ms.)
        keys = list(map(itemgetter(0), entries))
        first = list(map(ne, keys, chain((None,), keys)))
        out = list(compress(entries, first)) if False in first else entries
        if drop_tombstones:
            out = [e for e in out if e[2] is not None]
        return out
    out = []
    last_key = None
    last_neg = -_MAX_LSN
    for e in entries:
        key, neg, value = e
        if key != last_key:
            last_key = key
            last_neg = -_MAX_LSN
        if last_neg >= neg_s:
            continue  # shadowed by a newer version every reader sees
        last_neg = neg
        if value is None and drop_tombstones and neg >= neg_s:
            continue
        out.append(e)
    return out


_key0 = itemgetter(0)


def memtable_entries(items) -> tuple[list[tuple], bool]:
    """(key, -lsn, value) entries in internal order from a memtable's dict items, and
    whether any key has more than one version (without, nothing is shadowed).

    `items` is [(key, version-or-versions)], as `MemTable` holds them: one
    (-lsn, value) pair, or a list of them oldest first (msgpack turns the
    tuples into lists on the way to the worker; both shapes are accepted).
    """
    out: list[tuple] = []
    append = out.append
    for key, e in items:
        if type(e[0]) is int:
            append((key, e[0], e[1]))
        else:
            for neg, value in reversed(e):  # newest first: internal order within a key
                append((key, neg, value))
    several = len(out) != len(items)
    # Sorted on the key alone, stably: a key's versions are already newest first and
    # (one dict item per key) adjacent. Comparing bytes rather than tuples halves the
    # sort (41k random keys: 10.7 against 18.4 ms).
    out.sort(key=_key0)
    return out, several


# Encoded input bytes merged at once (decoded, about 3-5x that in Python objects):
# bounds a compaction's memory whatever the size of its inputs.
MERGE_WINDOW_BYTES = 16 << 20


@dataclass
class FlushJob:
    """Write one memtable as one table (`run_flush`)."""

    path: str  # the table to write
    items: list  # the memtable's dict items: see memtable_entries
    smallest_snapshot: int
    compression: str = "none"  # codec name (Options.codec)
    block_size: int = sstable.BLOCK_SIZE
    restart_interval: int = block.RESTART_INTERVAL


@dataclass
class MergeJob:
    """Merge input tables into new ones (`run_merge`)."""

    dir: str  # where the outputs go (and the job's owner, for MergeWorker.cancel)
    inputs: list[str]  # table paths
    smallest_snapshot: int
    drop_tombstones: bool  # the output level is the bottommost holding the keys
    target_file_size: int
    prefix: str  # the outputs' temporary name prefix (filenames.compaction_prefix)
    compression: str = "none"
    window_bytes: int = MERGE_WINDOW_BYTES
    block_size: int = sstable.BLOCK_SIZE
    restart_interval: int = block.RESTART_INTERVAL


@dataclass
class JobResult:
    """What a flush or merge wrote: [(path, table properties)] in key order."""

    outputs: list[tuple[str, dict]]
    read_bytes: int = 0  # a merge's input bytes
    written_bytes: int = 0
    seconds: float = 0.0


def run_flush(job: FlushJob, fs: FileSystem | None = None) -> JobResult:
    """Write a memtable (job.items, see memtable_entries) as one table at job.path.

    Runs in the flush worker process, so sorting and encoding ~100k entries
    does not hold the GIL of the process that takes writes (bench/engine:
    fillrandom p99).
    """
    fs = fs or OsFS()
    t0 = time.monotonic()
    entries, several = memtable_entries(job.items)
    if several:  # else every entry is its key's only version: none to drop
        entries = drop_obsolete(entries, job.smallest_snapshot, False)
    path = job.path
    outputs = sstable.build_tables(fs, entries, lambda i: path, 1 << 62,
                                   block_size=job.block_size, compression=job.compression,
                                   restart_interval=job.restart_interval)
    return JobResult(outputs, 0, sum(p["file_size"] for _, p in outputs),
                     time.monotonic() - t0)


def _windows(readers: list, window: int) -> list[tuple[bytes | None, bytes | None]]:
    """[start, end) key ranges covering every input, each holding about `window` bytes
    of input blocks. An end is a block's last key + b"\\0": the smallest key above it,
    so the key itself (all its versions) stays in the range that ends there."""
    bounds = sorted(b for r in readers for b in r.block_bounds())
    cuts: list[bytes] = []
    acc = 0
    for key, size in bounds:
        acc += size
        if acc >= window:
            cut = key + b"\0"
            if not cuts or cut > cuts[-1]:
                cuts.append(cut)
            acc = 0
    starts: list[bytes | None] = [None, *cuts]
    ends: list[bytes | None] = [*cuts, None]
    return list(zip(starts, ends))


def run_merge(job: MergeJob, fs: FileSystem | None = None) -> JobResult:
    """Merge the job's input tables into new tables; return their properties.

    Runs in the worker process (fs=None: the OS) or in a thread with the engine's FS.
    Outputs are named `<prefix>-<i>.sst.tmp`; the engine renames them to
    numbered tables when it installs the result.
    """
    fs = fs or OsFS()
    t0 = time.monotonic()
    readers = []
    try:
        for i, p in enumerate(job.inputs):
            readers.append(sstable.TableReader(fs, p, -1 - i, None))
        read_bytes = sum(r.file_size for r in readers)
        sink = sstable.TableSink(
            fs, lambda i: os.path.join(job.dir, compaction_output(job.prefix, i)),
            job.target_file_size, job.compression, job.block_size, job.restart_interval)
        # The key space is cut into windows of about `window` encoded bytes of input;
        # each window is merged (concatenated and sorted in C) and handed to the sink.
        # Every version of a key falls into one window, so the dropping rules see
        # them together; memory stays near one window plus one output table.
        for start, end in _windows(readers, job.window_bytes):
            runs = [run for run in (r.range_entries(start, end) for r in readers) if run]
            if runs:
                sink.add(merge(runs, job.smallest_snapshot, job.drop_tombstones))
        outputs = sink.finish()
    finally:
        for r in readers:
            r.close()
    return JobResult(outputs, read_bytes, sum(p["file_size"] for _, p in outputs),
                     time.monotonic() - t0)


# ---------------------------------------------------------------- worker process
#
# Merges run in a child process started with `python -m strata.storage.merge_worker`,
# talking length-prefixed msgpack over its stdin/stdout: a job goes as its fields plus
# "kind" ("flush" or "merge"), a result comes back as its fields or as "error" and
# what the error carries. A flush's items follow its job as parts of at most
# FLUSH_PART_ITEMS items, then an empty part: each is packed in about 4 ms, and the
# pipe write between two releases the GIL, so the process taking writes is never
# held for the ~18 ms packing a whole 8 MiB memtable took (the worker unpacks one
# part while the next is packed). Smaller parts cost more than they save: a thread
# waits up to the 5 ms switch interval for the GIL again after each write while a
# writer is busy, and with parts of 4096 items a busy writer stopped 0.65 s in 5
# flushes against 0.48 s (16384 items: 0.49 s; bench/engine fillrandom-batch). A plain subprocess
# rather than multiprocessing: it needs no importable __main__ in the parent
# (an embedding program may have none) and a crashed worker is restarted
# instead of breaking a pool for good.

_LEN = struct.Struct("<I")
FLUSH_PART_ITEMS = 16384


def _send(f, obj) -> None:
    data = msgpack.packb(obj, use_bin_type=True)
    f.write(_LEN.pack(len(data)) + data)
    f.flush()


def _recv(f):
    head = f.read(_LEN.size)
    if len(head) < _LEN.size:
        raise EOFError("merge worker closed its pipe")
    (n,) = _LEN.unpack(head)
    data = f.read(n)
    if len(data) < n:
        raise EOFError("merge worker closed its pipe mid-message")
    return msgpack.unpackb(data)


class Cancelled(StorageError):
    """The merge was cancelled (its engine is closing); its outputs are to be discarded."""


# A worker still holding this much more than when it started, after a job and after
# giving freed memory back, retires (the engine starts a fresh one for the next job):
# CPython keeps a merge's peak in partly used arenas, which would stay in RSS for good.
WORKER_RETIRE_BYTES = 48 << 20


class MergeWorker:
    """A child process that runs `run_merge` jobs one at a time. Thread-safe."""

    def __init__(self, retire_bytes: int | None = None) -> None:
        self._lock = threading.Lock()
        self._retire = WORKER_RETIRE_BYTES if retire_bytes is None else retire_bytes
        self.started = 0  # processes started: the first, then one per retirement or death
        self._proc: subprocess.Popen | None = None
        self._running_dir: str | None = None
        self._cancelled = False
        self.restarts = 0

    def cancel(self, dirpath: str) -> bool:
        """Kill the worker if it is merging for `dirpath` (a closing engine).

        The running `run` raises Cancelled; the partial outputs are `.tmp`
        files, removed by the engine (or as orphans at the next open).
        """
        p = self._proc
        if self._running_dir != dirpath or p is None:
            return False
        self._cancelled = True
        p.kill()
        return True

    def _ensure(self) -> subprocess.Popen:
        p = self._proc
        if p is None or p.poll() is not None:
            p = subprocess.Popen([sys.executable, "-m", "strata.storage.merge_worker",
                                  str(self._retire)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
            self._proc = p
            self.started += 1
        return p

    def run(self, job: FlushJob | MergeJob,
            parts: Callable[[], Iterable[list]] | None = None) -> JobResult:
        """Run `job` in the worker process; raise what it raised (Corruption, OSError with
        its errno, StorageError; Cancelled if `cancel` killed it). `parts`: a flush's
        items, as a fresh iterable of lists per call (a retry sends them again), sent
        after the job, whose own `items` are then empty."""
        kind = "flush" if isinstance(job, FlushJob) else "merge"
        # vars(), not asdict(): asdict deep-copies a flush's hundred thousand items.
        message = {"kind": kind, **vars(job)}
        if parts is not None:
            message["parts"] = True
        with self._lock:
            for attempt in range(2):
                p = self._ensure()
                self._running_dir = job.dir if isinstance(job, MergeJob) else None
                self._cancelled = False
                try:
                    _send(p.stdin, message)
                    if parts is not None:
                        for part in parts():
                            _send(p.stdin, part)
                        _send(p.stdin, [])
                    reply = _recv(p.stdout)
                except (BrokenPipeError, EOFError, OSError) as e:
                    p.kill()
                    p.wait()
                    self._proc = None
                    if self._cancelled:
                        raise Cancelled("compaction cancelled: the engine is closing") from None
                    self.restarts += 1
                    if attempt == 1:
                        raise StorageError(f"compaction worker died twice: {e}") from None
                    continue
                except BaseException:
                    # Not the pipe: the exchange stopped part way (a part that does not
                    # pack, an interrupt). The worker is mid-job or mid-reply and would
                    # take the next job for more of this one's: it goes.
                    p.kill()
                    p.wait()
                    self._proc = None
                    raise
                finally:
                    self._running_dir = None
                if reply.pop("retiring", False):  # it exits after this reply: a fresh one next
                    p.stdin.close()
                    p.wait()
                    self._proc = None
                if "error" in reply:
                    if reply.get("path") is not None:
                        raise Corruption(reply["path"], reply["offset"], reply["reason"])
                    what = "flush" if kind == "flush" else "compaction"
                    if reply.get("errno"):  # an I/O error: keep it one (a full disk pauses)
                        raise OSError(reply["errno"], f"{what} failed in the worker: "
                                      f"{reply['error']}", reply.get("filename"))
                    raise StorageError(f"{what} failed in the worker: {reply['error']}")
                return JobResult(**reply)
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            p = self._proc
            self._proc = None
        if p is not None and p.poll() is None:
            p.stdin.close()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _give_back() -> None:
    """Return what the job freed: collect cycles (the only collection: see worker_main),
    then let glibc trim its heap."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: what is freed stays with the process
        pass


def _read_parts(stdin, items: list) -> None:
    """Extend `items` with the parts that follow a flush's job, up to the empty one (a
    function of its own: no name here outlives it and keeps the items alive)."""
    while part := _recv(stdin):
        items += part


def worker_main() -> None:
    """The merge worker's loop: read a job, run it, reply; exit at EOF, or after a job that
    left it more than argv[1] bytes (default WORKER_RETIRE_BYTES) larger than it started
    (the reply says so)."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but replies may reach the pipe
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else WORKER_RETIRE_BYTES
    # No automatic collections: a job allocates hundreds of thousands of lists and
    # tuples (a flush's items, decoded blocks) and makes no cycles, and every few
    # hundred allocations the collector walked the young ones again, a full walk now
    # and then: unpacking a 50k-item flush took 27 ms with it, 7.5 ms without, and
    # a merge 5 % more. What starts the process (modules) is frozen out of the one
    # collection each job ends with (_give_back: 7 ms -> 0.4 ms).
    gc.collect()
    gc.freeze()
    gc.disable()
    base = _rss()
    while True:
        # Anything but the end of input while reading a job (its parts included) leaves
        # this process out of step with the parent's messages: it exits (the error on
        # stderr), and the parent starts a fresh worker and sends the job again.
        try:
            job = _recv(stdin)
            if job.pop("parts", False):
                _read_parts(stdin, job["items"])
        except EOFError:
            return
        try:
            kind = job.pop("kind")
            result = run_flush(FlushJob(**job)) if kind == "flush" else run_merge(MergeJob(**job))
            reply = vars(result)
        except Corruption as e:
            reply = {"error": str(e), "path": e.path, "offset": e.offset, "reason": e.reason}
        except OSError as e:
            reply = {"error": f"{type(e).__name__}: {e}", "errno": e.errno or 0,
                     "filename": e.filename if isinstance(e.filename, str) else None}
        except Exception as e:  # reported to the engine, which stops writes
            reply = {"error": f"{type(e).__name__}: {e}"}
        job = None
        _give_back()
        retire = _rss() - base > limit
        if retire:
            reply["retiring"] = True
        _send(stdout, reply)
        if retire:
            return

