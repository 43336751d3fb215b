"""RequestIds: a retried write is answered with the first attempt's LSN, never written twice."""

from __future__ import annotations

import asyncio

import pytest

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
