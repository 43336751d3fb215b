"""`Node`: one node's engine and everything that hangs off its commits.

Who owns what (all built in the constructor, nothing filled in later by others):

    Node
     ├─ engine            opened by open(), replaced by reopen(), closed by close()
     ├─ ids               request ids: filled from the log at open, then per commit
     ├─ cluster           replication (None on a single node); reaches the engine here
     ├─ hub, feed, rings  fan-out of committed frames (feed only in a cluster)
     ├─ cursors, retention  named consumers' stored cursors and the log they hold
     ├─ subscriptions     a consumer's lifecycle for every transport
     └─ connections       the streams open on it, of every transport (for status)

The commit listeners are attached in one place (`_attach`), in the order a frame
must reach them: the cluster (to stream it), the request ids, then the hub and the
rings (through the feed in a cluster, which holds frames until they are committed).

Threads: the engine calls the listeners on its committer thread; everything else
here runs on the event loop the Node was built in.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from strata.distribution.consumer import Budget
from strata.distribution.cursors import CursorStore
from strata.distribution.feed import CommittedFeed
from strata.distribution.hub import Hub
from strata.distribution.retention import ConsumerRetention
from strata.distribution.ring import Rings
from strata.replication import checkpoints
from strata.replication.cluster import Cluster, ClusterConfig
from strata.storage import Engine, StorageError

from .connections import Connections
from .request_ids import RequestIds
from .subscriptions import Subscriptions

log = logging.getLogger("strata.node")


class NodeConfig(Protocol):
    """The options a Node reads (server/config.py's Config has them). Read when used,
    so an option reloaded in place (SIGHUP) takes effect."""

    data_dir: str
    node: str
    request_id_capacity: int
    request_id_ttl_s: float
    subscriber_memory: int
    subscriber_queue: int
    rings: str
    ring_mode: int
    max_key_size: int
    max_value_size: int
    max_batch_ops: int
    max_batch_bytes: int


class Node:
    """One node. Construct on the event loop that will run it (the hub and the feed
    hand frames to it); then `open()`, serve, `close()`."""

    def __init__(self, cfg: NodeConfig, engine_options: Callable[[], dict[str, Any]],
                 cluster: ClusterConfig | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.cfg = cfg
        self._engine_options = engine_options
        self.started = time.monotonic()
        # The open engine (None before open() and while reopen() runs) and the one
        # calls may use: set once every listener is attached and the cluster started.
        self.engine: Engine | None = None
        self.serving: Engine | None = None
        self.ids = RequestIds(cfg.request_id_capacity, cfg.request_id_ttl_s, settle=self.settle)
        self.cluster = (Cluster(cluster, os.path.abspath(cfg.data_dir), lambda: self.engine,
                                self.reopen) if cluster is not None else None)
        self.hub = Hub(loop)
        self.rings = Rings(cfg.rings, cfg.ring_mode) if cfg.rings else None
        self.feed: CommittedFeed | None = None
        if self.cluster is not None:
            # Subscribers and rings see a write once it is committed, never a tail a
            # failover could cut: frames wait in the feed for the commit point.
            hub, rings = self.hub, self.rings
            sinks = [hub.on_commit] + ([rings.on_commit] if rings else [])
            self.feed = CommittedFeed(
                loop, lambda: self.engine, sinks,
                wanted=lambda: bool(hub.subs or hub.groups or rings),
                lost=lambda first, last, why: hub.cut_off_all(
                    f"events {first}..{last} are no longer in the log: {why}", self.engine))
            self.hub.feed = self.feed
            self.cluster.on_publish_limit = self.feed.set_limit
        self.budget = Budget(cfg.subscriber_memory)
        self.cursors = CursorStore(lambda: self.serving)
        self.retention = ConsumerRetention(lambda: self.serving, self.cursors)
        self.subscriptions = Subscriptions(self.hub, self.cursors, self.budget,
                                           lambda: self.cfg.subscriber_queue, self.check_write)
        self.connections = Connections()
        self._tasks: list[asyncio.Task] = []

    def reload(self) -> None:
        """Apply reloaded options (the config was changed in place)."""
        self.budget.ceiling = self.cfg.subscriber_memory
        self.ids.configure(self.cfg.request_id_capacity, self.cfg.request_id_ttl_s)

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> Engine:
        """Open the engine off the loop, start the cluster, attach every listener, hold
        the named consumers' log, then serve. Raises what Engine.open raises."""
        self.engine = await self._open()
        self._tasks.append(asyncio.ensure_future(self.cursors.run()))
        if self.cluster is not None:
            await self.cluster.start()
        self._attach(self.engine)
        # Named consumers hold their log before anything is served (the engine purges
        # nothing until then: wal_holds_from_open).
        try:
            await self.retention.refresh()
        except Exception as e:  # a replica's log reset under way: the next refresh sets them
            log.warning("consumer holds not set yet: %s", e)
        self._tasks.append(asyncio.ensure_future(self.retention.run()))
        return self.engine

    def _open_engine(self, truncate_after: int | None = None) -> Engine:
        opts = dict(self._engine_options())
        # Named consumers' holds are read from the database once it is open
        # (ConsumerRetention): until then the engine purges nothing.
        opts["wal_holds_from_open"] = True
        if self.cluster is not None:
            # The log's tail stays in the log across restarts, so that a tail a new
            # master never had can be cut; a fetched checkpoint is installed first.
            opts["flush_after_recovery"] = False
            checkpoints.finish_install(self.cfg.data_dir)
        return Engine.open(self.cfg.data_dir, truncate_after=truncate_after, **opts)

    async def _open(self, truncate_after: int | None = None) -> Engine:
        """Open the engine off the loop and make the request ids its log's, before
        anything can write to it or apply frames to it."""
        loop = asyncio.get_running_loop()
        eng = await loop.run_in_executor(None, self._open_engine, truncate_after)
        cfg = self.cfg
        try:
            seen = await loop.run_in_executor(
                None, eng.recent_request_ids, cfg.request_id_capacity,
                cfg.request_id_ttl_s or math.inf)
        except StorageError as e:
            # The log opened but its retained history does not read back: writes are
            # still exactly once from here on, retries of older ones may write again.
            log.error("request ids not recovered from the log: %s", e)
            seen = []
        self.ids.follow(eng, seen)
        log.info("request ids: %d recovered from the log", len(self.ids))
        return eng

    def _attach(self, engine: Engine) -> None:
        """Put an open engine in service: every commit listener, then calls."""
        if self.cluster is not None:
            self.cluster.attach(engine)
        if self.feed is not None:
            engine.add_commit_listener(self.feed.on_commit)
            self.feed.attach(engine)
        else:
            engine.add_commit_listener(self.hub.on_commit)
            if self.rings is not None:
                engine.add_commit_listener(self.rings.on_commit)
        self.serving = engine

    async def reopen(self, truncate_after: int | None = None, install: bool = False) -> None:
        """Close the engine and open it again, its log cut after `truncate_after` or
        replaced by a fetched checkpoint (the cluster calls this). Calls meanwhile get
        UNAVAILABLE; subscribers are cut off with their resume point."""
        eng = self.engine
        loop = asyncio.get_running_loop()
        self.serving = None
        self.engine = None
        if eng is not None:
            self.hub.cut_off_all("the replica's log is being reset", eng)
            if self.feed is not None:
                self.feed.reset()
            await loop.run_in_executor(None, eng.close, False)
        log.warning("reopening %s%s", self.cfg.data_dir,
                    f" with the log cut after LSN {truncate_after}" if truncate_after is not None
                    else " on the master's checkpoint" if install else "")
        try:
            self.engine = await self._open(truncate_after)
        except StorageError:
            log.exception("reopening failed; retrying on the same files")
            self.engine = await self._open(None)
        self._attach(self.engine)

    async def stop_replication(self) -> None:
        if self.cluster is not None:
            await self.cluster.stop()

    def cut_off_subscribers(self, reason: str) -> None:
        self.hub.cut_off_all(reason, self.engine)

    async def close(self) -> bool:
        """Stop the background tasks, save the cursors, close the rings and the engine
        (flushed on a single node; a replicated node keeps its tail in the log).
        Returns whether everything closed cleanly; logs what did not."""
        for t in self._tasks:
            t.cancel()
        self._tasks.clear()
        clean = True
        if self.serving is not None:
            try:
                await self.cursors.flush()
            except Exception as e:
                log.warning("consumer cursors not saved: %s", e)
        if self.rings is not None:
            self.rings.close()
        if self.engine is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, self.engine.close, self.cluster is None)
            except StorageError as e:
                log.error("closing the database: %s", e)
                clean = False
        return clean

    # --------------------------------------------------------- the write rules

    def check_write(self) -> None:
        """In a cluster: only a master holding its lease takes writes (else NotMaster
        naming the master, or NoMaster)."""
        if self.cluster is not None:
            self.cluster.check_write()

    def check_read(self, stale_ok: bool) -> None:
        if self.cluster is not None:
            self.cluster.check_read(stale_ok)

    async def settle(self, lsn: int) -> None:
        """Return once a write at `lsn` may be acknowledged: at once on a single node,
        at the cluster's commit point otherwise (NoMaster if this node stops being
        master first). A retry answered from the request ids waits here too."""
        if self.cluster is not None:
            await self.cluster.committed(lsn)

    async def replicated(self, write) -> int:
        """Await a write, then its replication as the cluster's mode asks."""
        lsn = await write
        await self.settle(lsn)
        return lsn
