"""Typed figures of one node, read by Admin.Status, the metrics and the status page
(`/v1/status`, `/v1/connections`: server/http.py).

Built on the event loop from the node's parts at the moment of the call; the
caller owns the returned objects (plain values, safe to hand to another thread).
Another thread asks the loop for them (asyncio.run_coroutine_threadsafe) rather
than reading the node's parts while the loop changes them.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from strata.storage import Engine
from strata.storage.stats import EngineStats

from .connections import ConnectionStatus
from .node import Node


@dataclasses.dataclass(frozen=True)
class Level:
    level: int
    files: int
    bytes: int


@dataclasses.dataclass(frozen=True)
class NodeStatus:
    """What Admin.Status answers. `replication` holds the cluster's own status
    (role, term, master, commit_lsn, lease, peers, replication mode); a single node
    is a master of its own term, committed at its last LSN, holding its lease."""

    node: str
    replication: dict[str, Any]
    durable_lsn: int
    applied_lsn: int
    last_lsn: int
    flushed_lsn: int
    levels: list[Level]
    sst_bytes: int
    wal_bytes: int
    wal_preallocated_bytes: int  # allocated ahead beyond wal_bytes (the files hold both)
    uptime_seconds: float
    durability: str
    writable: bool
    write_error: str
    paused: list[str]


@dataclasses.dataclass(frozen=True)
class SubscriberStatus:
    """The subscribers of every transport, the hub and the consumers' cursors."""

    connected: int
    cut_off: int
    queued_bytes: int
    memory_limit_bytes: int
    memory_cut_offs: int
    fanout_groups: int
    events_published: int
    awaiting_commit: int | None  # None: no feed (a single node)
    read_back: int | None
    cursor_writes: int


def durable_lsn(engine) -> int:
    """The last LSN known to survive a power cut. With durability `always` a write is
    visible only once its WAL group is synced: last_lsn. With `interval` or `none`
    the engine does not track which WAL frames the last fdatasync covered, so this is
    a lower bound: flushed_lsn, the last LSN in synced SSTables."""
    return engine.last_lsn if engine.opts.durability == "always" else engine.flushed_lsn


def node_status(node: Node) -> NodeStatus:
    """REQUIRES: node.serving is set (the engine is in service)."""
    engine = node.serving
    assert engine is not None
    du = engine.disk_usage()
    if node.cluster is not None:
        repl = node.cluster.status()
    else:
        repl = dict(role="master", term=engine.term, commit_lsn=engine.last_lsn, lease=True)
    return NodeStatus(
        node=node.cfg.node, replication=repl,
        durable_lsn=durable_lsn(engine), applied_lsn=engine.read_lsn,
        last_lsn=engine.last_lsn, flushed_lsn=engine.flushed_lsn,
        levels=[Level(lv["level"], lv["files"], lv["bytes"]) for lv in engine.levels()
                if lv["files"]],
        sst_bytes=du["sst_bytes"], wal_bytes=du["wal_bytes"],
        wal_preallocated_bytes=du["wal_preallocated_bytes"],
        uptime_seconds=time.monotonic() - node.started,
        durability=engine.opts.durability,
        writable=engine.write_error is None,
        write_error=str(engine.write_error or ""),
        paused=sorted(engine.paused))


def subscriber_status(node: Node) -> SubscriberStatus:
    """Any time, also before open(). Read from the metrics' HTTP thread too: every
    figure is one attribute read (a torn set of figures is fine for a scrape)."""
    b, hub, feed = node.budget, node.hub, node.feed
    return SubscriberStatus(
        connected=node.subscriptions.connected, cut_off=node.subscriptions.cut_off,
        queued_bytes=b.used, memory_limit_bytes=b.ceiling, memory_cut_offs=b.cut_offs,
        fanout_groups=len(hub.groups), events_published=hub.published,
        awaiting_commit=feed.held if feed is not None else None,
        read_back=feed.stats["read_back"] if feed is not None else None,
        cursor_writes=node.cursors.writes)


@dataclasses.dataclass(frozen=True)
class ConsumerLag:
    """A named consumer as the retention task last measured it (every second)."""

    name: str
    cursor_lsn: int
    lag_lsns: int
    lag_bytes: int
    connected: bool
    held_bytes: int


@dataclasses.dataclass(frozen=True)
class RingStatus:
    """A shared-memory ring: `last_lsn` is its position (the last LSN written)."""

    name: str
    capacity_bytes: int
    readers: int
    published: int
    truncated: int
    last_lsn: int


@dataclasses.dataclass(frozen=True)
class Overview:
    """What the status page shows of one node. `node` is None while the engine is
    not in service (starting, or a replica's log being reset)."""

    node: NodeStatus | None
    subscribers: SubscriberStatus
    tiers: dict[str, int]  # subscribers per tier
    consumers: list[ConsumerLag]
    rings: list[RingStatus]
    connections: int


def consumer_lags(node: Node) -> list[ConsumerLag]:
    r = node.retention
    engine = node.serving
    last = engine.last_lsn if engine is not None else r.last_lsn
    return [ConsumerLag(s.name, s.cursor_lsn, max(0, last - s.cursor_lsn), s.lag_bytes,
                        bool(s.connected), s.held_bytes) for s in list(r.states.values())]


def ring_status(node: Node) -> list[RingStatus]:
    if node.rings is None:
        return []
    return [RingStatus(r.name, r.capacity, r.readers, r.published, r.truncated, r.last_lsn)
            for r in node.rings.rings]


def overview(node: Node) -> Overview:
    """Event loop."""
    return Overview(
        node=node_status(node) if node.serving is not None else None,
        subscribers=subscriber_status(node), tiers=node.connections.tiers(),
        consumers=consumer_lags(node), rings=ring_status(node),
        connections=len(node.connections))


def connection_status(node: Node) -> list[ConnectionStatus]:
    """Event loop. Every open stream; lag against the log's end (0 with no engine)."""
    engine = node.serving
    return node.connections.status(engine.last_lsn if engine is not None else 0)


@dataclasses.dataclass(frozen=True)
class Member:
    """One node of the cluster as it answered Admin.Status when asked (server/http.py's
    /v1/cluster), beside what this node thinks of it (`seen_as`: its peer state here,
    "self" for this node). `reachable` False: it did not answer (`error` says how)."""

    node: str
    address: str
    seen_as: str
    reachable: bool
    error: str = ""
    role: str = ""
    term: int = 0
    master: str = ""
    last_lsn: int = 0
    applied_lsn: int = 0
    commit_lsn: int = 0
    lease: bool = False
    writable: bool = False


@dataclasses.dataclass(frozen=True)
class EngineFigures:
    """The engine's counters and histograms, for the metrics."""

    stats: EngineStats  # a copy (Engine.stats)
    levels: list[Level]  # every level, empty ones too
    last_lsn: int
    flushed_lsn: int
    sst_bytes: int
    wal_bytes: int
    wal_preallocated_bytes: int
    write_stopped: str  # "" (writable), "no_space" (resumes by itself) or "io_error"
    paused: list[str]
    fsync_buckets: list[tuple[float, int]]  # (upper bound in seconds or inf, count)
    fsync_seconds: float
    group_size_buckets: list[tuple[int, int]]  # (upper bound in frames or -1, groups)


@dataclasses.dataclass(frozen=True)
class Figures:
    """Everything /metrics exports of a node, taken at one moment on the loop."""

    overview: Overview
    engine: EngineFigures | None  # None while the engine is not in service
    replication: dict[str, Any] | None  # Cluster.status(); None on a single node
    replication_counts: dict[str, int] | None  # elections_won, step_downs, resyncs, ...
    retention_headroom: int
    connections: dict[str, int]  # streams open per transport


def engine_figures(engine: Engine) -> EngineFigures:
    du = engine.disk_usage()
    wal = engine.wal_stats()
    err = engine.write_error
    return EngineFigures(
        stats=engine.stats,
        levels=[Level(lv["level"], lv["files"], lv["bytes"]) for lv in engine.levels()],
        last_lsn=engine.last_lsn, flushed_lsn=engine.flushed_lsn,
        sst_bytes=du["sst_bytes"], wal_bytes=du["wal_bytes"],
        wal_preallocated_bytes=du["wal_preallocated_bytes"],
        write_stopped="" if err is None else "no_space" if err.resumable else "io_error",
        paused=sorted(engine.paused),
        fsync_buckets=list(wal["sync_buckets"]), fsync_seconds=wal["sync_seconds"],
        group_size_buckets=engine.group_size_histogram())


def figures(node: Node) -> Figures:
    """Event loop."""
    ov = overview(node)
    engine = node.serving
    cluster = node.cluster
    replication = None
    if cluster is not None:  # also while the engine is out of service
        replication = ov.node.replication if ov.node is not None else cluster.status()
    return Figures(
        overview=ov, engine=engine_figures(engine) if engine is not None else None,
        replication=replication,
        replication_counts=dict(cluster.stats) if cluster is not None else None,
        retention_headroom=node.retention.headroom,
        connections=node.connections.counts())
