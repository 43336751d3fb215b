"""Compaction (storage/compaction.py): the picker (table-driven), the dropping rules, run_merge."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strata.storage.compaction import LevelPicker, MergeJob, drop_obsolete, merge, run_merge
from strata.storage.errors import Corruption
from strata.storage.manifest import NUM_LEVELS, FileMeta, Version
from strata.storage.sstable import TableReader, build_tables
from strata.storage.vfs import MemFS

TESTDATA = Path(__file__).parent / "testdata" / "compaction_picker.txt"

# ---------------------------------------------------------------------- picker (datadriven)


def parse_cases(text: str):
    """[(line_no, directive, input_lines, expected_lines)] from the testdata format."""
    cases = []
    block: list[tuple[int, str]] = []

    def flush():
        if not block:
            return
        lines = [ln for _, ln in block]
        assert "----" in lines, f"line {block[0][0]}: case without ----"
        sep = lines.index("----")
        cases.append((block[0][0], lines[0], lines[1:sep], lines[sep + 1:]))
        block.clear()

    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if line.startswith("#"):
            continue
        if not line:
            flush()
            continue
        block.append((no, line))
    flush()
    return cases


def build_case(directive: str, inputs: list[str]):
    words = directive.split()
    assert words[0] in ("pick", "pick-manual"), directive
    opts = {"l0_trigger": 4, "base": 1000, "multiplier": 10, "min_target": 1000, "max_bytes": 0}
    for w in words[1:]:
        k, v = w.split("=")
        assert k in opts, w
        opts[k] = int(v)
    picker = LevelPicker(opts["l0_trigger"], opts["base"], opts["multiplier"], opts["min_target"],
                         opts["max_bytes"] or None)
    levels: list[list[FileMeta]] = [[] for _ in range(NUM_LEVELS)]
    number = 0
    for line in inputs:
        if line.startswith("pointer "):
            lvl, key = line.split()[1].split("=")
            picker.pointers[int(lvl[1:])] = key.encode()
            continue
        head, _, files = line.partition(":")
        lvl = int(head.strip()[1:])
        for spec in files.split():
            rng, _, size = spec.partition(":")
            lo, hi = rng.split("-")
            number += 1
            # L0 is listed newest first: give earlier files higher LSNs.
            levels[lvl].append(FileMeta(number, int(size or 1), lo.encode(), hi.encode(), 1,
                                        1000 - number, 1000 - number))
        if lvl > 0:
            assert [f.smallest for f in levels[lvl]] == sorted(f.smallest for f in levels[lvl]), line
    return picker, Version(levels)


def render(c, picker) -> list[str]:
    if c is None:
        return ["none"]
    rng = lambda fs: " ".join(f"{f.smallest.decode()}-{f.largest.decode()}" for f in fs)
    out = [
        f"L{c.level} -> L{c.output_level}",
        f"inputs: {rng(c.inputs)}".rstrip(),
        f"next: {rng(c.next_inputs)}".rstrip(),
        f"bottommost: {str(c.bottommost).lower()}",
        f"trivial: {str(c.trivial_move).lower()}",
    ]
    if c.level > 0 and c.level in picker.pointers:
        out.append(f"pointer: {picker.pointers[c.level].decode()}")
    return out


CASES = parse_cases(TESTDATA.read_text())


def test_testdata_has_cases():
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[f"line{c[0]}" for c in CASES])
def test_picker(case):
    line, directive, inputs, expected = case
    picker, version = build_case(directive, inputs)
    pick = picker.pick_manual if directive.split()[0] == "pick-manual" else picker.pick
    got = render(pick(version), picker)
    assert got == expected, f"{TESTDATA.name}:{line}\n" + "\n".join(got)


def test_picker_round_robin_visits_every_file():
    # Repeated picks over a level that stays over target take each file in
    # turn, then wrap.
    levels = [[] for _ in range(NUM_LEVELS)]
    levels[1] = [FileMeta(i, 400, b"%c" % (97 + 2 * i), b"%c" % (98 + 2 * i), 1, 1, 1) for i in range(4)]
    v = Version(levels)
    p = LevelPicker(base_level_size=1000)
    picked = [p.pick(v).inputs[0].number for _ in range(9)]
    assert picked == [0, 1, 2, 3, 0, 1, 2, 3, 0]


def test_picker_target_and_scores():
    p = LevelPicker(l0_trigger=4, base_level_size=1000, multiplier=10)
    assert [p.target(n) for n in (1, 2, 3)] == [1000, 10_000, 100_000]
    levels = [[] for _ in range(NUM_LEVELS)]
    levels[0] = [FileMeta(i, 1, b"a", b"b", 1, i, i) for i in range(2)]
    levels[2] = [FileMeta(9, 5000, b"a", b"b", 1, 1, 1)]
    scores = dict((lvl, s) for s, lvl in p.scores(Version(levels)))
    assert scores[0] == 0.5 and scores[1] == 0.0 and scores[2] == 0.5
    assert NUM_LEVELS - 1 not in scores  # the last level has no score


# ---------------------------------------------------------------------- dropping rules


def E(key, lsn, value=b"v"):
    return (key, -lsn, value)


DROP_CASES = [
    # (name, entries, smallest_snapshot, drop_tombstones, expected)
    ("empty", [], 10, False, []),
    ("single", [E(b"a", 1)], 10, False, [E(b"a", 1)]),
    ("newer version above snapshot keeps the older",
     [E(b"k", 5, b"new"), E(b"k", 3, b"old")], 4, False, [E(b"k", 5, b"new"), E(b"k", 3, b"old")]),
    ("newer version at the snapshot drops the older",
     [E(b"k", 5, b"new"), E(b"k", 3, b"old")], 5, False, [E(b"k", 5, b"new")]),
    ("every version newer than the snapshot is kept, plus the newest at or below it",
     [E(b"k", 10), E(b"k", 8), E(b"k", 4), E(b"k", 3), E(b"k", 1)], 5, False,
     [E(b"k", 10), E(b"k", 8), E(b"k", 4)]),
    ("snapshot below every version keeps everything",
     [E(b"j", 9), E(b"k", 10), E(b"k", 8)], 0, True,
     [E(b"j", 9), E(b"k", 10), E(b"k", 8)]),
    ("keys are independent",
     [E(b"a", 9), E(b"a", 2), E(b"b", 7), E(b"b", 6), E(b"c", 1)], 8, False,
     [E(b"a", 9), E(b"a", 2), E(b"b", 7), E(b"c", 1)]),
    ("tombstone kept when not bottommost, hides what it shadows",
     [E(b"k", 5, None), E(b"k", 3)], 10, False, [E(b"k", 5, None)]),
    ("tombstone dropped when bottommost, with what it shadows",
     [E(b"k", 5, None), E(b"k", 3), E(b"z", 1)], 10, True, [E(b"z", 1)]),
    ("tombstone newer than the snapshot is kept even when bottommost",
     [E(b"k", 5, None), E(b"k", 3), E(b"k", 2)], 4, True, [E(b"k", 5, None), E(b"k", 3)]),
    ("tombstone at the snapshot is dropped when bottommost",
     [E(b"k", 5), E(b"k", 4, None), E(b"k", 2)], 4, True, [E(b"k", 5)]),
    ("tombstone visible to the oldest snapshot hides older versions from it",
     [E(b"k", 9), E(b"k", 4, None), E(b"k", 2)], 6, False, [E(b"k", 9), E(b"k", 4, None)]),
    ("older tombstones under a shadowing put go",
     [E(b"k", 9), E(b"k", 4, None)], 9, False, [E(b"k", 9)]),
]


@pytest.mark.parametrize("name,entries,snap,bottom,expected", DROP_CASES, ids=[c[0] for c in DROP_CASES])
def test_drop_obsolete(name, entries, snap, bottom, expected):
    assert drop_obsolete(list(entries), snap, bottom) == expected


def model_drop(entries, snap, bottom):
    """Per key: every version newer than snap, plus the newest at or below snap
    unless it is a tombstone and the compaction is bottommost."""
    out = []
    seen_visible = set()
    for k, neg, v in entries:
        if -neg > snap:
            out.append((k, neg, v))
        elif k not in seen_visible:
            seen_visible.add(k)
            if not (v is None and bottom):
                out.append((k, neg, v))
    return out


def read_at(entries, key, snap):
    for k, neg, v in entries:
        if k == key and -neg <= snap:
            return v
    return None


@st.composite
def internal_entries(draw):
    ops = draw(st.lists(st.tuples(st.sampled_from([b"a", b"b", b"c", b"d"]),
                                  st.one_of(st.none(), st.binary(min_size=1, max_size=3))),
                        max_size=40))
    lsns = draw(st.permutations(range(1, len(ops) + 1)))
    entries = [(k, -lsn, v) for (k, v), lsn in zip(ops, lsns)]
    entries.sort(key=lambda e: (e[0], e[1]))
    snap = draw(st.integers(0, len(ops) + 1))
    return entries, snap


@settings(max_examples=150, deadline=None)
@given(internal_entries(), st.booleans())
def test_drop_obsolete_matches_model_and_every_reader(data, bottom):
    entries, snap = data
    out = drop_obsolete(list(entries), snap, bottom)
    assert out == model_drop(entries, snap, bottom)
    # Every reader at or above the smallest snapshot sees the same values.
    top = max((-n for _, n, _ in entries), default=0)
    for key in (b"a", b"b", b"c", b"d"):
        for t in range(snap, top + 2):
            assert read_at(out, key, t) == read_at(entries, key, t), (key, t)


def test_merge_of_runs_sorts_and_drops():
    run1 = [E(b"a", 5), E(b"c", 2), E(b"e", 9, None)]
    run2 = [E(b"a", 3), E(b"b", 4), E(b"e", 1)]
    run3 = [E(b"a", 7, None), E(b"d", 6)]
    assert merge([run1, run2, run3], 100, False) == [
        E(b"a", 7, None), E(b"b", 4), E(b"c", 2), E(b"d", 6), E(b"e", 9, None)]
    assert merge([run1, run2, run3], 100, True) == [E(b"b", 4), E(b"c", 2), E(b"d", 6)]
    assert merge([run1, run2, run3], 4, False) == [
        E(b"a", 7, None), E(b"a", 5), E(b"a", 3), E(b"b", 4), E(b"c", 2), E(b"d", 6),
        E(b"e", 9, None), E(b"e", 1)]
    assert merge([run2], 100, False) == run2


# ---------------------------------------------------------------------- run_merge


@pytest.fixture
def fs():
    m = MemFS()
    m.mkdir("/db")
    return m


def make_table(fs, number, entries):
    entries = sorted(entries, key=lambda e: (e[0], e[1]))
    ((path, _),) = build_tables(fs, entries, lambda i: f"/db/{number:06d}.sst", 1 << 30)
    return path


def random_runs(seed, nruns=3, n=400):
    rnd = random.Random(seed)
    lsns = list(range(1, nruns * n + 1))
    rnd.shuffle(lsns)
    runs = []
    for _ in range(nruns):
        run = {}
        for _ in range(n):
            key = b"key%04d" % rnd.randrange(300)
            lsn = lsns.pop()
            run[(key, -lsn)] = None if rnd.random() < 0.2 else b"v%d" % lsn
        runs.append(sorted((k, n_, v) for (k, n_), v in run.items()))
    return runs


@pytest.mark.parametrize("window", [1 << 30, 700, 1])
@pytest.mark.parametrize("snap,bottom", [(10**9, False), (10**9, True), (600, True), (0, False)])
def test_run_merge_in_process(fs, snap, bottom, window):
    """The same result whatever the merge window: one window for everything, a few
    blocks per window, or one block (cuts between every block of every input)."""
    runs = random_runs(1)
    paths = [make_table(fs, i + 1, run) for i, run in enumerate(runs)]
    job = MergeJob(dir="/db", inputs=paths, smallest_snapshot=snap, drop_tombstones=bottom,
                   target_file_size=2000, prefix="compaction-9", window_bytes=window)
    result = run_merge(job, fs)
    outs = result.outputs
    assert len(outs) > 1
    assert [p for p, _ in outs] == [f"/db/compaction-9-{i}.sst.tmp" for i in range(len(outs))]
    assert result.read_bytes == sum(fs.size(p) for p in paths)
    assert result.written_bytes == sum(fs.size(p) for p, _ in outs)
    assert result.seconds >= 0
    got = []
    for i, (p, props) in enumerate(outs):
        r = TableReader(fs, p, 100 + i)
        es = r.all_entries()
        assert (props["smallest"], props["largest"], props["entries"]) == (es[0][0], es[-1][0], len(es))
        got += es
        r.close()
    merged = sorted(e for run in runs for e in run)
    assert got == model_drop(merged, snap, bottom)
    for (_, a), (_, b) in zip(outs, outs[1:]):
        assert a["largest"] < b["smallest"]
    # Inputs are left in place: the engine deletes them after installing the result.
    assert all(fs.exists(p) for p in paths)


def test_run_merge_everything_dropped_writes_nothing(fs):
    paths = [make_table(fs, 1, [E(b"a", 5, None), E(b"b", 6, None)]),
             make_table(fs, 2, [E(b"a", 1), E(b"b", 2)])]
    job = MergeJob(dir="/db", inputs=paths, smallest_snapshot=100, drop_tombstones=True,
                   target_file_size=1 << 20, prefix="c")
    result = run_merge(job, fs)
    assert result.outputs == [] and result.written_bytes == 0
    assert not [n for n in fs.listdir("/db") if n.endswith(".tmp")]


def test_run_merge_reports_a_damaged_input(fs):
    runs = random_runs(2, nruns=2, n=50)
    paths = [make_table(fs, i + 1, run) for i, run in enumerate(runs)]
    data = bytearray(fs.read_bytes(paths[1]))
    data[3] ^= 0x01  # first data block
    f = fs.create(paths[1])
    f.write(bytes(data))
    f.close()
    job = MergeJob(dir="/db", inputs=paths, smallest_snapshot=10**9, drop_tombstones=False,
                   target_file_size=1 << 20, prefix="c")
    with pytest.raises(Corruption) as ei:
        run_merge(job, fs)
    assert (ei.value.path, ei.value.offset) == (paths[1], 0)
    assert not [n for n in fs.listdir("/db") if n.endswith(".tmp")]


def test_run_merge_keeps_versions_for_snapshots(fs):
    paths = [make_table(fs, 1, [E(b"k", 30, b"c"), E(b"k", 20, b"b")]),
             make_table(fs, 2, [E(b"k", 10, b"a"), E(b"k", 5, None), E(b"k", 1, b"z")])]
    job = MergeJob(dir="/db", inputs=paths, smallest_snapshot=15, drop_tombstones=True,
                   target_file_size=1 << 20, prefix="c")
    ((p, _),) = run_merge(job, fs).outputs
    r = TableReader(fs, p, 7)
    assert r.all_entries() == [E(b"k", 30, b"c"), E(b"k", 20, b"b"), E(b"k", 10, b"a")]
    assert r.get(b"k", 15) == (-10, b"a")
    assert r.get(b"k", 25) == (-20, b"b")
    assert os.path.basename(p) == "c-0.sst.tmp"


MERGE_RSS_SCRIPT = r"""
import json, os, sys
from strata.storage import sstable
from strata.storage.compaction import MergeJob, run_merge
from strata.storage.vfs import OsFS
d, window = sys.argv[1], int(sys.argv[2])
fs = OsFS()
paths = []
for t in range(4):  # four overlapping inputs of ~12 MB each, versions of the same keys
    entries = [(b"key%08d" % i, -(t * 10**6 + i + 1), b"v" * 100) for i in range(0, 400_000, 4)]
    entries += [(b"key%08d" % i, -(t * 10**6 + i + 1), b"w" * 100) for i in range(t, 400_000, 4)]
    entries.sort()
    p = os.path.join(d, f"in{t}.sst")
    sstable.build_tables(fs, entries, lambda i, p=p: p, 1 << 40)
    paths.append(p)
    del entries
import gc, tracemalloc; gc.collect()
# Heap, not RSS: the inputs are read through mmap, whose page-cache pages RSS counts.
tracemalloc.start()
job = MergeJob(dir=d, inputs=paths, smallest_snapshot=10**12, drop_tombstones=True,
               target_file_size=4 << 20, prefix="out", window_bytes=window)
res = run_merge(job)
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"peak_heap": peak, "read": res.read_bytes,
                  "written": res.written_bytes, "outputs": len(res.outputs)}))
"""


def test_merge_memory_is_bounded_by_the_window_not_the_inputs(tmp_path):
    """run_merge used to load every input whole: an L0 compaction of many files held
    them all in memory (several times their size as Python objects). Measured here:
    ~95 MB of inputs, peak heap with one window for everything vs a 2 MB window."""
    import json
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", MERGE_RSS_SCRIPT, str(tmp_path), str(2 << 20)],
                         capture_output=True, text=True, cwd=root, check=True,
                         env={**os.environ, "PYTHONPATH": root})
    stats = json.loads(out.stdout)
    assert stats["read"] > 80 << 20 and stats["outputs"] >= 8
    # ~95 MB of inputs held whole took about 3x their size in Python objects; with a
    # 2 MB window the heap holds one window and about one output table's entries
    # (measured: 274 MB whole, ~35 MB windowed).
    assert stats["peak_heap"] < 60 << 20, stats


def test_a_worker_that_stays_large_after_a_job_retires_and_the_next_job_gets_a_fresh_one(tmp_path):
    """A worker process gives freed memory back after each job; one still over its limit
    says so in its reply and exits, and the next job runs in a new process."""
    from strata.storage.compaction import MergeWorker
    from strata.storage.vfs import OsFS

    os_fs = OsFS()
    runs = random_runs(3)
    paths = []
    for i, run in enumerate(runs):
        p = str(tmp_path / f"{i + 1:06d}.sst")
        build_tables(os_fs, sorted(run), lambda _i, p=p: p, 1 << 30)
        paths.append(p)
    job = MergeJob(dir=str(tmp_path), inputs=paths, smallest_snapshot=10**9,
                   drop_tombstones=False, target_file_size=1 << 30, prefix="compaction-5")
    expected = model_drop(sorted(e for run in runs for e in run), 10**9, False)

    def merged(result) -> list:
        ((out, _),) = result.outputs
        r = TableReader(os_fs, out, 99)
        try:
            return r.all_entries()
        finally:
            r.close()
            os.remove(out)

    retiring = MergeWorker(retire_bytes=-1)  # a limit below any growth: retire after every job
    staying = MergeWorker()
    try:
        for _ in range(3):
            assert merged(retiring.run(job)) == expected
            assert merged(staying.run(job)) == expected
        assert retiring.started == 3 and retiring.restarts == 0
        assert staying.started == 1
    finally:
        retiring.close()
        staying.close()


def test_a_flush_sent_in_parts_writes_the_memtable_and_is_sent_again_to_a_fresh_worker(tmp_path):
    """The flush worker takes a memtable's items in parts after its job (so the process
    taking writes never packs a whole memtable at once): the table holds exactly the
    memtable, keys with several versions included, and a worker that dies between
    parts gets every part again from a fresh process."""
    from strata.storage import compaction
    from strata.storage.compaction import FLUSH_PART_ITEMS, FlushJob, MergeWorker
    from strata.storage.memtable import MemTable
    from strata.storage.vfs import OsFS

    mem = MemTable()
    lsn = 0
    for i in range(3 * FLUSH_PART_ITEMS + 17):
        lsn += 1
        mem.add(lsn, b"k%06d" % i, b"v%d" % i)
        if i % 5 == 0:  # a second version, or a tombstone, of some keys
            lsn += 1
            mem.add(lsn, b"k%06d" % i, None if i % 10 == 0 else b"w%d" % i)
    expected = mem.sorted_entries()
    worker = MergeWorker()
    sent: list[int] = []

    def parts():
        for n, part in enumerate(mem.raw_item_chunks(FLUSH_PART_ITEMS)):
            sent.append(n)
            if len(sent) == 2:  # the first attempt: the worker dies after one part
                worker._proc.kill()
                worker._proc.wait()
            yield part

    path = str(tmp_path / "000009.sst")
    try:
        result = worker.run(FlushJob(path, [], smallest_snapshot=1), parts)
    finally:
        worker.close()
    assert worker.restarts == 1 and worker.started == 2
    assert sent[sent.index(0, 1):] == [0, 1, 2, 3]  # the retry sent every part
    ((out, props),) = result.outputs
    assert out == path and props["entries"] == len(expected)
    r = TableReader(OsFS(), path, 9)
    try:
        assert r.all_entries() == expected  # every version: snapshot 1 sees them all
    finally:
        r.close()
    entries, several = compaction.memtable_entries(mem.raw_item_chunks(1 << 30).__next__())
    assert several and entries == expected


def test_a_flush_whose_parts_cannot_be_sent_leaves_no_worker_waiting_mid_job(tmp_path):
    """A part that fails on the parent's side (here: it does not pack) used to leave the
    worker waiting for the rest of the job, so that it took the next job's message for
    one of its parts: the next flush failed and a merge sent after it hung. The worker
    is now replaced, and the next job runs whole in a fresh one."""
    from strata.storage.compaction import FlushJob, MergeWorker
    from strata.storage.memtable import MemTable
    from strata.storage.vfs import OsFS

    mem = MemTable()
    for i in range(100):
        mem.add(i + 1, b"k%03d" % i, b"v")
    worker = MergeWorker()

    def broken():
        yield next(mem.raw_item_chunks(10))
        yield [(b"k", object())]  # msgpack cannot pack this

    try:
        with pytest.raises(TypeError):
            worker.run(FlushJob(str(tmp_path / "000001.sst"), [], 1), broken)
        path = str(tmp_path / "000002.sst")
        result = worker.run(FlushJob(path, [], 1), lambda: mem.raw_item_chunks(30))
        assert worker.started == 2
    finally:
        worker.close()
    ((out, props),) = result.outputs
    assert out == path and props["entries"] == 100
    r = TableReader(OsFS(), path, 2)
    try:
        assert r.all_entries() == mem.sorted_entries()
    finally:
        r.close()


def test_the_flush_worker_lets_go_of_a_flush_items_before_it_reports_its_size(tmp_path):
    """The worker retires when it stays large after a job; a name in its loop kept the
    last flush's items alive past the job, so a big memtable made it retire after every
    flush. With the items freed, flushes of ~40 MB of items run in one process."""
    from strata.storage.compaction import FlushJob, MergeWorker
    from strata.storage.memtable import MemTable

    mem = MemTable()
    for i in range(300_000):
        mem.add(i + 1, b"%016d" % (i * 7919 % 10**9), b"v" * 10)
    worker = MergeWorker(retire_bytes=30 << 20)
    try:
        for n in range(3):
            worker.run(FlushJob(str(tmp_path / f"{n + 1:06d}.sst"), [], 1),
                       lambda: mem.raw_item_chunks(16384))
        assert worker.started == 1, f"{worker.started} processes for 3 flushes"
    finally:
        worker.close()
