"""The commit pipeline: group commit for thread and asyncio writers (LevelDB's
writer queue; Pebble isolates the same behind `commitEnv`).

Writers join one queue under the database mutex, their LSNs assigned in queue
order. The queue's head is the leader: it takes the queue's first writers up to
MAX_GROUP_BYTES as one group, writes and syncs them with one call (outside the
mutex), applies them, then publishes them and wakes the group under the mutex;
the next head leads the next group. A thread writer leads its own group; a
group headed by an asyncio writer is led by the committer thread, and its
futures are resolved with one loop wake-up per group and loop. Invariant: one
leader at a time, and a group is published only after every earlier group.

The pipeline knows nothing of WALs or memtables: `CommitEnv` is what it needs,
so tests drive it with no database at all (tests/storage/test_commit.py).
"""

from __future__ import annotations

import asyncio
import threading
from _thread import allocate_lock
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .options import MAX_GROUP_BYTES


class Writer:
    """One write waiting in the queue: its encoded frame and the operations it applies."""

    __slots__ = ("frame", "lsn", "ops", "last_lsn", "wake", "done", "error", "fut")

    def __init__(self, frame: bytes, lsn: int, ops: list, last_lsn: int) -> None:
        self.frame = frame
        self.lsn = lsn
        self.ops = ops  # [(lsn, key, value|None), ...]
        self.last_lsn = last_lsn
        self.wake = None  # a held lock a waiting thread writer blocks on
        self.done = False
        self.error: BaseException | None = None
        self.fut: tuple | None = None  # (loop, future) of an asyncio writer


class CommitEnv(Protocol):
    def write_group(self, writers: list[Writer]) -> None:
        """Make the group's frames durable (one write, one sync). Outside the mutex;
        raises on failure."""
        ...

    def apply_group(self, writers: list[Writer]) -> None:
        """Apply a durable group (the memtable). Outside the mutex, leader only."""
        ...

    def publish_locked(self, writers: list[Writer]) -> None:
        """Make an applied group visible (LSN, listeners, stats). REQUIRES: mutex."""
        ...

    def fail_locked(self, error: BaseException) -> tuple[BaseException, BaseException]:
        """Stop writes after `error`; return (the error for the group being written,
        the error for writers queued behind it, which were never written).
        REQUIRES: mutex."""
        ...


@dataclass(frozen=True, slots=True)
class CommitCallbacks:
    """A CommitEnv made of four functions, as Pebble's commitEnv is a struct of
    closures: the database hands the pipeline exactly what it needs and nothing more.
    Each has the contract of the CommitEnv method of the same name."""

    write_group: Callable[[list[Writer]], None]
    apply_group: Callable[[list[Writer]], None]
    publish_locked: Callable[[list[Writer]], None]
    fail_locked: Callable[[BaseException], tuple[BaseException, BaseException]]


def _resolve(items: list) -> None:
    """Resolve the futures of one group on their loop (called via call_soon_threadsafe)."""
    for fut, w in items:
        if not fut.done():
            if w.error is not None:
                fut.set_exception(w.error)
            else:
                fut.set_result(w.last_lsn)


class CommitPipeline:
    """The writer queue and its leaders. `env` is what it calls (a CommitEnv: the engine
    hands it a CommitCallbacks); `mutex` is the database's."""

    def __init__(self, env: CommitEnv, mutex: threading.Lock) -> None:
        self.env = env
        self.mutex = mutex
        self.queue: list[Writer] = []
        self.closed = False  # set by the database when it closes: the committer exits
        self._committer_wake = threading.Semaphore(0)

    def enqueue_locked(self, w: Writer) -> None:
        """Join the queue. REQUIRES: mutex; LSNs assigned in this same critical section."""
        self.queue.append(w)
        if w.fut is not None:
            if len(self.queue) == 1:
                self._committer_wake.release()
        elif len(self.queue) > 1:
            w.wake = allocate_lock()
            w.wake.acquire()

    def commit(self, w: Writer) -> int:
        """A thread writer's wait (it leads its group when it heads the queue)."""
        if w.wake is not None:
            w.wake.acquire()  # released when our group is done or we are the new leader
            if w.done:
                if w.error is not None:
                    raise w.error
                return w.last_lsn
        self.lead()
        if w.error is not None:
            raise w.error
        return w.last_lsn

    def wake_committer(self) -> None:
        self._committer_wake.release()

    def run_committer(self) -> None:
        """The committer thread: leads groups whose head is an asyncio writer."""
        while True:
            # Once closed, poll: the queue drains of groups led by their own
            # thread writers, and nobody may be left to wake this thread.
            self._committer_wake.acquire(timeout=0.05 if self.closed else None)
            with self.mutex:
                if not self.queue:
                    if self.closed:
                        return
                    continue
                if self.queue[0].fut is None:
                    # A thread writer heads the queue and leads its own group (a
                    # stale wake-up must not make a second leader write it again).
                    continue
            self.lead()

    def lead(self) -> None:
        """Commit the queue's head group. REQUIRES: the caller is the queue's head."""
        with self.mutex:
            q = self.queue
            group = [q[0]]
            size = len(q[0].frame)
            for w in q[1:]:
                size += len(w.frame)
                if size > MAX_GROUP_BYTES:
                    break
                group.append(w)
        error: BaseException | None = None
        try:
            self.env.write_group(group)
        except BaseException as e:
            error = e
        if error is None:
            self.env.apply_group(group)
        futures: dict[asyncio.AbstractEventLoop, list] = {}
        with self.mutex:
            if error is not None:
                err, later = self.env.fail_locked(error)
                for w in group:
                    w.error = err
                for w in q[len(group):]:
                    w.error = later
                done = group + q[len(group):]  # nothing after a failed write is acknowledged
                q.clear()
            else:
                self.env.publish_locked(group)
                del q[: len(group)]
                done = group
            for i, w in enumerate(done):
                if w.fut is not None:
                    futures.setdefault(w.fut[0], []).append((w.fut[1], w))
                elif i > 0:  # done[0] is this thread's own writer when it is a thread
                    w.done = True
                    w.wake.release()
            if q:
                if q[0].fut is not None:
                    self._committer_wake.release()
                else:
                    q[0].wake.release()  # the next head leads the next group
        for loop, items in futures.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:
                pass  # the loop was closed; nobody is waiting
