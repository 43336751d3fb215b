"""The commit pipeline without a database (as Pebble's commit_test.go drives commitEnv):
group commit, order, one leader at a time, failures, thread and asyncio writers."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from strata.storage.commit import CommitPipeline, Writer


class FakeEnv:
    """Records what the pipeline asks for; a slow write lets groups form."""

    def __init__(self, write_seconds: float = 0.002) -> None:
        self.write_seconds = write_seconds
        self.groups: list[list[int]] = []
        self.applied: list[int] = []
        self.published: list[int] = []
        self.fail_next: BaseException | None = None
        self._writing = threading.Lock()
        self.overlaps = 0

    def write_group(self, writers: list[Writer]) -> None:
        if not self._writing.acquire(blocking=False):
            self.overlaps += 1  # two leaders at once
            self._writing.acquire()
        try:
            time.sleep(self.write_seconds)
            if self.fail_next is not None:
                e, self.fail_next = self.fail_next, None
                raise e
            self.groups.append([w.lsn for w in writers])
        finally:
            self._writing.release()

    def apply_group(self, writers: list[Writer]) -> None:
        self.applied += [w.lsn for w in writers]

    def publish_locked(self, writers: list[Writer]) -> None:
        self.published += [w.lsn for w in writers]

    def fail_locked(self, error: BaseException) -> tuple[BaseException, BaseException]:
        return RuntimeError(f"group failed: {error}"), RuntimeError("not written")


class Db:
    """The least a database does around the pipeline: LSNs under the mutex."""

    def __init__(self, env: FakeEnv) -> None:
        self.mutex = threading.Lock()
        self.pipeline = CommitPipeline(env, self.mutex)
        self.next_lsn = 1
        self.committer = threading.Thread(target=self.pipeline.run_committer, daemon=True)
        self.committer.start()

    def _writer(self, fut=None) -> Writer:
        lsn = self.next_lsn
        self.next_lsn += 1
        w = Writer(b"x" * 100, lsn, [(lsn, b"k", b"v")], lsn)
        w.fut = fut
        self.pipeline.enqueue_locked(w)
        return w

    def put(self) -> int:
        with self.mutex:
            w = self._writer()
        return self.pipeline.commit(w)

    async def put_async(self) -> int:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self.mutex:
            self._writer((loop, fut))
        return await fut

    def close(self) -> None:
        with self.mutex:
            self.pipeline.closed = True
        self.pipeline.wake_committer()
        self.committer.join(5)
        assert not self.committer.is_alive()


def test_thread_writers_share_groups_in_lsn_order():
    env = FakeEnv()
    db = Db(env)
    results: list[int] = []
    threads = [threading.Thread(target=lambda: [results.append(db.put()) for _ in range(50)])
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    db.close()
    assert sorted(results) == list(range(1, 401))
    flat = [lsn for g in env.groups for lsn in g]
    assert flat == list(range(1, 401)), "groups are written in LSN order"
    assert env.published == flat and env.applied == flat
    assert len(env.groups) < 400 / 2, "concurrent writers must share groups"
    assert env.overlaps == 0, "one leader at a time"


def test_asyncio_and_thread_writers_mixed():
    env = FakeEnv()
    db = Db(env)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(db.put_async() for _ in range(300))))

    thread_results: list[int] = []
    t = threading.Thread(target=lambda: [thread_results.append(db.put()) for _ in range(100)])
    t.start()
    async_results = asyncio.run(main())
    t.join()
    db.close()
    assert sorted(async_results + thread_results) == list(range(1, 401))
    assert [lsn for g in env.groups for lsn in g] == list(range(1, 401))
    assert env.overlaps == 0


def test_a_failed_write_fails_its_group_and_every_writer_queued_behind_it():
    env = FakeEnv(write_seconds=0.05)
    db = Db(env)
    env.fail_next = OSError(28, "No space left on device")
    errors: list[str] = []

    def put() -> None:
        try:
            db.put()
        except RuntimeError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=put) for _ in range(6)]
    for t in threads:
        t.start()
        time.sleep(0.005)  # the first leads alone; the rest queue behind its write
    for t in threads:
        t.join(5)
    db.close()
    assert len(errors) == 6 and not env.published
    assert sum("group failed" in e for e in errors) == 1
    assert sum("not written" in e for e in errors) == 5


def test_a_lone_writer_commits_without_waiting_for_anyone():
    env = FakeEnv(write_seconds=0)
    db = Db(env)
    assert [db.put() for _ in range(3)] == [1, 2, 3]
    assert env.groups == [[1], [2], [3]]
    db.close()


@pytest.mark.parametrize("n", [1, 64])
def test_the_committer_thread_exits_on_close(n):
    env = FakeEnv(write_seconds=0)
    db = Db(env)

    async def main() -> None:
        await asyncio.gather(*(db.put_async() for _ in range(n)))

    asyncio.run(main())
    db.close()
