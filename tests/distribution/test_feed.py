"""The committed feed with a real engine: frames held until the commit point passes
them, handed on in LSN order, gaps read back from the WAL, logs cut and reattached."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from strata.distribution import feed as feed_mod
from strata.distribution.feed import ALL, CommittedFeed
from strata.storage import Engine, record


def lsns(frames: list[bytes]) -> list[int]:
    out = []
    for f in frames:
        first, last = record.frame_span(f)
        out += range(first, last + 1)
    return out


class Rig:
    """An engine whose commits go through a feed into a list."""

    def __init__(self, path: str, loop, **feed_opts) -> None:
        self.path = path
        self.got: list[bytes] = []
        self.lost: list[tuple] = []
        self.listening = True
        self.engine = Engine.open(path, durability="always", flush_after_recovery=False)
        self.feed = CommittedFeed(loop, lambda: self.engine, [self.got.extend],
                                  wanted=lambda: self.listening,
                                  lost=lambda *a: self.lost.append(a), **feed_opts)
        self.engine.add_commit_listener(self.feed.on_commit)
        self.feed.attach(self.engine)

    def put(self, n: int, start: int = 0) -> None:
        for i in range(start, start + n):
            self.engine.put(b"k%03d" % i, b"v")

    async def settle(self) -> None:
        for _ in range(100):
            await asyncio.sleep(0.01)
            pump = self.feed._pump
            if not self.feed._scheduled and (pump is None or pump.done()):
                return
        raise AssertionError("the feed did not settle")

    def reopen(self, truncate_after: int | None) -> None:
        self.feed.reset()
        self.engine.close(False)
        self.engine = Engine.open(self.path, durability="always", flush_after_recovery=False,
                                  truncate_after=truncate_after)
        self.engine.add_commit_listener(self.feed.on_commit)
        self.feed.attach(self.engine)


@pytest.fixture
def rig(tmp_path):
    made = []

    def make(loop, **opts) -> Rig:
        r = Rig(str(tmp_path / "db"), loop, **opts)
        made.append(r)
        return r

    yield make
    for r in made:
        r.engine.close(False)


def test_frames_wait_for_the_limit_and_go_on_in_order(rig):
    async def main():
        r = rig(asyncio.get_running_loop())
        r.put(5)
        r.engine.write_batch([("put", b"b1", b"x"), ("put", b"b2", b"x"), ("delete", b"k000")])
        await r.settle()
        assert r.got == [] and r.feed.released == 0 and r.feed.held == 6
        r.feed.set_limit(3)
        await r.settle()
        assert lsns(r.got) == [1, 2, 3] and r.feed.released == 3
        r.feed.set_limit(6)  # the batch (LSNs 6..8) is not whole below the limit
        await r.settle()
        assert lsns(r.got) == [1, 2, 3, 4, 5] and r.feed.released == 5
        r.feed.set_limit(8)
        await r.settle()
        assert lsns(r.got) == list(range(1, 9)) and r.feed.held == 0
        r.put(2, 10)  # frames above the limit wait; with ALL they go on as they come
        await r.settle()
        assert len(lsns(r.got)) == 8
        r.feed.set_limit(ALL)
        await r.settle()
        assert lsns(r.got) == list(range(1, 11))
        r.put(1, 20)
        await r.settle()
        assert lsns(r.got) == list(range(1, 12)) and r.feed.released == 11
        assert r.lost == []

    asyncio.run(main())


@pytest.mark.parametrize("chunk", [4 << 20, 64])
def test_frames_past_the_bound_are_read_back_from_the_log(rig, monkeypatch, chunk):
    monkeypatch.setattr(feed_mod, "READ_BACK_BYTES", chunk)  # 64: a frame or two a read

    async def main():
        r = rig(asyncio.get_running_loop(), max_frames=3)
        r.put(10)
        assert r.feed.held == 3 and r.feed.stats["gaps"] == 1
        r.feed.set_limit(7)  # inside the gap: read up to it
        await r.settle()
        assert lsns(r.got) == list(range(1, 8))
        r.put(3, 10)  # they join the gap until it is read
        assert r.feed.held == 0
        r.feed.set_limit(13)
        await r.settle()
        assert lsns(r.got) == list(range(1, 14))
        assert r.feed.stats["read_back"] == 10 and r.feed.stats["gaps"] == 1
        r.put(2, 20)  # the gap is closed: held in memory again
        assert r.feed.held == 2
        r.feed.set_limit(15)
        await r.settle()
        assert lsns(r.got) == list(range(1, 16)) and r.lost == []

    asyncio.run(main())


def test_a_cut_log_loses_its_unreleased_tail_and_the_rest_is_read_back(rig):
    async def main():
        loop = asyncio.get_running_loop()
        r = rig(loop)
        r.put(4)
        r.feed.set_limit(2)
        await r.settle()
        assert lsns(r.got) == [1, 2]
        r.put(4, 10)  # LSNs 5..8: never committed, about to be cut
        r.reopen(truncate_after=6)
        assert r.engine.last_lsn == 6
        r.put(2, 20)  # LSNs 7..8 again, other writes
        r.feed.set_limit(8)
        await r.settle()
        assert lsns(r.got) == list(range(1, 9))
        keys = [k for f in r.got[2:] for _, k, _ in record.decode_ops(*_ops(f))]
        assert keys == [b"k002", b"k003", b"k010", b"k011", b"k020", b"k021"]

    asyncio.run(main())


def _ops(f: bytes) -> tuple:
    lsn, _, ftype, payload = record.parse_frame(f)
    return ftype, lsn, payload


def test_a_restarted_node_reads_its_log_back_once_committed_or_skips_it_unheard(tmp_path):
    async def main():
        loop = asyncio.get_running_loop()
        path = str(tmp_path / "db")
        r = Rig(path, loop)
        r.put(5)
        r.engine.close(False)
        r = Rig(path, loop)  # a restart: the log holds 1..5 already
        try:
            r.put(1, 10)
            r.feed.set_limit(4)
            await r.settle()
            assert lsns(r.got) == [1, 2, 3, 4]
            r.feed.set_limit(6)
            await r.settle()
            assert lsns(r.got) == list(range(1, 7))
        finally:
            r.engine.close(False)
        r = Rig(path, loop)
        try:
            r.listening = False  # no subscriber, no ring: history covers it, nothing is read
            r.feed.set_limit(6)
            await r.settle()
            assert r.got == [] and r.feed.released == 6 and r.feed.stats["read_back"] == 0
        finally:
            r.engine.close(False)

    asyncio.run(main())


def test_a_gap_the_log_no_longer_holds_is_reported_lost(tmp_path):
    async def main():
        r = Rig(str(tmp_path / "db"), asyncio.get_running_loop(), max_frames=1)
        try:
            r.engine.close(False)  # reopened with no retention: flushed segments go
            r.engine = Engine.open(r.path, durability="always", wal_retention_bytes=0)
            r.engine.add_commit_listener(r.feed.on_commit)
            r.feed.attach(r.engine)
            r.put(5)
            r.engine.flush()
            r.put(1, 10)
            assert r.engine.earliest_lsn > 2
            r.feed.set_limit(6)
            await r.settle()
            # 2..5 were flushed and their segment removed; 6 is read back.
            assert lsns(r.got) == [1, 6]
            assert [lost[:2] for lost in r.lost] == [(2, 5)] and r.feed.released == 6
        finally:
            r.engine.close(False)

    asyncio.run(main())


class FeedModel(RuleBasedStateMachine):
    """The feed against a model: writes, batches, the commit point moving, the log cut
    above it and reopened, with a queue of two frames so that gaps are read back.
    What goes on is always exactly the log's committed prefix, in order, once."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.loop = asyncio.new_event_loop()
        self.rig = Rig(os.path.join(self.dir, "db"), self.loop, max_frames=2)
        self.keys: dict[int, bytes] = {}  # LSN -> key of the log as it stands
        self.n = 0

    def _write(self, ops: int) -> None:
        if ops == 1:
            self.n += 1
            key = b"k%d" % self.n
            self.keys[self.rig.engine.put(key, b"v")] = key
            return
        batch = []
        for _ in range(ops):
            self.n += 1
            batch.append(("put", b"k%d" % self.n, b"v"))
        last = self.rig.engine.write_batch(batch)
        for i, (_, key, _) in enumerate(batch):
            self.keys[last - ops + 1 + i] = key

    @rule(ops=st.integers(1, 4))
    def write(self, ops):
        self._write(ops)

    @rule(frac=st.floats(0, 1))
    def commit(self, frac):
        feed, last = self.rig.feed, self.rig.engine.last_lsn
        self.rig.feed.set_limit(max(feed.limit, feed.limit + round((last - feed.limit) * frac)))
        self.loop.run_until_complete(self.rig.settle())

    @precondition(lambda self: self.rig.engine.last_lsn > self.rig.feed.limit)
    @rule(frac=st.floats(0, 1))
    def cut(self, frac):
        """A replica's log cut above the commit point (a frame boundary), as
        replication/cluster.py orders it."""
        eng, limit = self.rig.engine, self.rig.feed.limit
        ends = sorted({lsn for lsn in self.keys if lsn >= limit and self._frame_end(lsn)})
        after = ends[round((len(ends) - 1) * frac)] if ends else limit
        self.rig.reopen(truncate_after=after)
        self.keys = {lsn: k for lsn, k in self.keys.items() if lsn <= after}
        assert eng.last_lsn >= self.rig.engine.last_lsn == max(self.keys, default=0)

    def _frame_end(self, lsn: int) -> bool:
        return any(f_last == lsn for f_last in self._frame_lasts())

    def _frame_lasts(self) -> list[int]:
        return [record.frame_span(bytes(fr.raw))[1] for fr in self.rig.engine.read_log(1)]

    @invariant()
    def committed_prefix_in_order(self):
        got = lsns(self.rig.got)
        assert got == list(range(1, len(got) + 1)), got  # each LSN once, in order
        assert self.rig.feed.released == len(got) <= self.rig.feed.limit
        for f in self.rig.got:
            for lsn, key, _ in record.decode_ops(*_ops(f)):
                assert self.keys.get(lsn) == key, (lsn, key)  # never a write later cut

    def teardown(self):
        feed, last = self.rig.feed, self.rig.engine.last_lsn
        feed.set_limit(max(feed.limit, last))
        self.loop.run_until_complete(self.rig.settle())
        assert lsns(self.rig.got) == list(range(1, last + 1))
        self.rig.engine.close(False)
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)


TestFeedModel = FeedModel.TestCase
TestFeedModel.settings = settings(max_examples=30, stateful_step_count=25, deadline=None,
                                  suppress_health_check=list(HealthCheck))
