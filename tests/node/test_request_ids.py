"""RequestIds: a retried write is answered with the first attempt's LSN, never written twice."""

from __future__ import annotations

import asyncio
import time

import pytest

from strata.node.errors import InvalidInput
from strata.node.request_ids import RequestIds
from strata.storage import Engine


def test_a_write_whose_caller_timed_out_still_records_its_lsn():
    async def main():
        ids = RequestIds()
        loop = asyncio.get_running_loop()
        commit = loop.create_future()  # the group's fsync, finishing after the deadline
        calls = []

        async def write() -> int:
            calls.append(1)
            return await commit

        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await ids.run("req-1", write)
        commit.set_result(42)  # the write commits although its caller is gone
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert await ids.run("req-1", write) == 42
        assert len(calls) == 1, "the retry must not write again"

    asyncio.run(main())


def test_a_retry_during_the_write_waits_for_it():
    async def main():
        ids = RequestIds()
        commit = asyncio.get_running_loop().create_future()
        calls = []

        async def write() -> int:
            calls.append(1)
            return await commit

        first = asyncio.ensure_future(ids.run("r", write))
        await asyncio.sleep(0)
        first.cancel()  # the caller gives up; the write goes on
        second = asyncio.ensure_future(ids.run("r", write))
        await asyncio.sleep(0)
        commit.set_result(7)
        assert await second == 7
        assert len(calls) == 1

    asyncio.run(main())


def test_a_failed_write_is_not_recorded_and_bounds_hold():
    async def main():
        ids = RequestIds(capacity=2)

        async def fail() -> int:
            raise RuntimeError("disk full")

        with pytest.raises(RuntimeError):
            await ids.run("x", fail)
        assert ids.lsn("x") is None

        async def ok(n=1) -> int:
            return n

        for i in range(3):
            assert await ids.run(f"id{i}", lambda i=i: ok(i)) == i
        assert ids.lsn("id0") is None and ids.lsn("id2") == 2  # least recently used forgotten
        assert await ids.run("", lambda: ok(9)) == 9  # no id: just written

    asyncio.run(main())


# ----------------------------------------------------------------- ops with their own ids

def _writer(commit_lsns: list[int], log: list):
    """write(indices) for run_ops: records what it was asked to write, returns the
    next scripted last-LSN."""
    async def write(idx: list[int]) -> int:
        log.append(list(idx))
        await asyncio.sleep(0)
        return commit_lsns.pop(0)
    return write


def test_coalesced_ops_get_consecutive_lsns_and_a_repeat_is_answered_not_written():
    async def main():
        ids = RequestIds()
        log: list = []
        write = _writer([12, 30], log)
        assert await ids.run_ops(["a", "b", "c"], write) == [10, 11, 12]
        # b and c again, with a new op between them: only the new one is written
        assert await ids.run_ops(["b", "d", "c"], write) == [11, 30, 12]
        assert log == [[0, 1, 2], [1]]
        assert ids.lsn("d") == 30

    asyncio.run(main())


def test_an_op_in_flight_elsewhere_is_waited_for_and_ids_repeated_in_one_request_once():
    async def main():
        ids = RequestIds()
        commit = asyncio.get_running_loop().create_future()
        log: list = []

        async def slow(idx):
            log.append(list(idx))
            return await commit

        first = asyncio.ensure_future(ids.run_ops(["x", "y"], slow))
        await asyncio.sleep(0)
        # "y" is in flight in the first request; "z" twice in this one
        second = asyncio.ensure_future(ids.run_ops(["y", "z", "z"], _writer([50], log)))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        commit.set_result(21)
        assert await first == [20, 21]
        assert await second == [21, 50, 50]
        assert log == [[0, 1], [1]]

    asyncio.run(main())


def test_ops_of_a_failed_write_are_not_recorded_and_a_bad_id_registers_nothing():
    async def main():
        ids = RequestIds()

        async def fails(idx):
            raise OSError("disk full")

        with pytest.raises(OSError):
            await ids.run_ops(["p", "q"], fails)
        assert ids.lsn("p") is None and not ids._inflight
        with pytest.raises(InvalidInput):
            await ids.run_ops(["ok", "x" * 65], _writer([1], []))
        assert not ids._inflight, "a refused request must leave no id in flight"
        log: list = []
        assert await ids.run_ops(["p", "", "q"], _writer([9], log)) == [7, 8, 9]
        assert log == [[0, 1, 2]]  # an op without an id is always written

    asyncio.run(main())


# ----------------------------------------------------------------- expiry

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ids_expire_by_count_and_by_age():
    async def main():
        clock = Clock()
        ids = RequestIds(capacity=3, ttl_s=10.0, clock=clock)
        written: list[str] = []

        def write(rid: str, lsn: int):
            async def w() -> int:
                written.append(rid)
                return lsn
            return w

        for i in range(4):
            assert await ids.run(f"r{i}", write(f"r{i}", i + 1)) == i + 1
            clock.now += 2
        # count: the newest 3 are kept
        assert [ids.lsn(f"r{i}") for i in range(4)] == [None, 2, 3, 4]
        # age: r1 was written at 1002, r3 at 1006; at 1014.5 only r3 is within 10 s
        clock.now = 1014.5
        assert [ids.lsn(f"r{i}") for i in range(4)] == [None, None, None, 4]
        assert await ids.run("r3", write("again", 99)) == 4  # known: answered
        assert await ids.run("r1", write("r1 again", 50)) == 50  # forgotten: written
        assert written == ["r0", "r1", "r2", "r3", "r1 again"]
        assert ids.lsn("r1") == 50 and len(ids) <= 3
        ids.configure(capacity=1, ttl_s=0)  # SIGHUP: applied at once; 0 = no age limit
        assert len(ids) == 1 and ids.lsn("r1") == 50
        clock.now += 1e6
        assert ids.lsn("r1") == 50

    asyncio.run(main())


# ----------------------------------------------------------------- the table follows the log

def test_the_table_holds_the_ids_of_the_frames_an_engine_commits_or_applies(tmp_path):
    """Writes taken elsewhere (a replica applying the master's frames) are known too, and
    a write's id is in the table before the write's own caller is answered."""
    async def main(master: Engine, replica: Engine):
        on_master = RequestIds()
        on_master.follow(master, [])
        on_replica = RequestIds()
        on_replica.follow(replica, replica.recent_request_ids(100))
        lsn = await master.put_async(b"a", b"1", request_id="A")
        assert on_master.lsn("A") == lsn  # before any other callback could run
        last = await master.write_batch_async([("put", b"b", b"2"), ("delete", b"c")],
                                              request_ids=["B", "C"])
        whole = await master.write_batch_async([("put", b"d", b"3"), ("put", b"e", b"4")],
                                               request_id="D")
        await master.delete_async(b"x")  # no id
        replica.apply_frames(b"".join(bytes(fr.raw) for fr in master.read_log(1)))
        await asyncio.sleep(0)  # applied on this thread: the loop takes them next
        for table in (on_master, on_replica):
            assert (table.lsn("A"), table.lsn("B"), table.lsn("C"), table.lsn("D")) == \
                (lsn, last - 1, last, whole)
            assert len(table) == 4

    m = Engine.open(str(tmp_path / "m"), durability="always")
    r = Engine.open(str(tmp_path / "r"), durability="always")
    r.set_read_only(True)
    try:
        asyncio.run(main(m, r))
    finally:
        m.close()
        r.close()


def test_a_log_cut_or_restart_rebuilds_the_table_from_what_the_log_holds(tmp_path):
    p = str(tmp_path / "db")
    opts = dict(durability="always", flush_after_recovery=False)

    ids = RequestIds()

    async def before(db: Engine) -> int:
        ids.follow(db, [])
        await db.put_async(b"k", b"1", request_id="kept")
        keep = db.last_lsn
        await db.put_async(b"k", b"2", request_id="cut")  # a tail the next master never had
        await asyncio.sleep(0)
        assert ids.lsn("kept") == keep and ids.lsn("cut") == keep + 1
        return keep

    async def after(db: Engine, keep: int) -> None:
        ids.follow(db, db.recent_request_ids(100))
        assert ids.lsn("kept") == keep
        assert ids.lsn("cut") is None, "an id of a write that was cut is remembered"

    db = Engine.open(p, **opts)
    keep = asyncio.run(before(db))
    db._halt()
    db.close()
    with Engine.open(p, truncate_after=keep, **opts) as db:
        asyncio.run(after(db, keep))


def test_ids_read_back_from_the_log_keep_their_age():
    async def main():
        clock = Clock()
        ids = RequestIds(ttl_s=900.0, clock=clock)

        class NoEngine:
            def add_commit_listener(self, fn) -> None:
                pass

        now = time.time()
        ids.follow(NoEngine(), [("old", 1, now - 3600), ("recent", 2, now - 890),
                                ("new", 3, now)])
        assert (ids.lsn("old"), ids.lsn("recent"), ids.lsn("new")) == (None, 2, 3)
        clock.now += 20  # "recent" was written 910 s ago now
        assert (ids.lsn("recent"), ids.lsn("new")) == (None, 3)

    asyncio.run(main())


# ----------------------------------------------------------------- answers wait for the commit point

def test_a_known_id_is_answered_once_its_lsn_is_committed_and_not_before():
    async def main():
        committed = asyncio.get_running_loop().create_future()
        asked: list[int] = []

        async def settle(lsn: int) -> None:
            asked.append(lsn)
            await committed

        ids = RequestIds(settle=settle)
        now = time.monotonic()
        ids._record("seen", 41, now, now)  # in the log, not yet committed

        async def never() -> int:
            raise AssertionError("a known id was written again")

        retry = asyncio.ensure_future(ids.run("seen", never))
        ops = asyncio.ensure_future(ids.run_ops(["seen", "fresh"], _writer([50], [])))
        await asyncio.sleep(0.01)
        assert not retry.done() and not ops.done(), "answered above the commit point"
        committed.set_result(None)
        assert await retry == 41
        assert await ops == [41, 50]
        assert asked == [41, 41]

    asyncio.run(main())


def test_a_known_id_whose_commit_is_unknown_fails_like_its_write_would():
    async def main():
        async def deposed(lsn: int) -> None:
            raise RuntimeError("no longer master")

        ids = RequestIds(settle=deposed)
        now = time.monotonic()
        ids._record("seen", 7, now, now)
        with pytest.raises(RuntimeError):
            await ids.run("seen", lambda: None)

    asyncio.run(main())
