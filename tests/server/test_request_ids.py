"""RequestIds: a retried write is answered with the first attempt's LSN, never written twice."""

from __future__ import annotations

import asyncio

import pytest

from strata.server.errors import InvalidInput
from strata.server.service import RequestIds


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
