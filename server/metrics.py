"""Prometheus metrics: request counters and latencies per method and code, plus
engine, limiter and subscriber figures read at scrape time.

Served by prometheus_client's HTTP server (its own thread) on metrics_listen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from strata.node.status import subscriber_status

if TYPE_CHECKING:
    from strata.node.node import Node
    from strata.storage import Engine

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("strata_requests_total", "RPCs finished, by method and status code",
                                ["method", "code"], registry=r)
        self.latency = Histogram("strata_request_seconds", "RPC latency, by method",
                                 ["method"], buckets=LATENCY_BUCKETS, registry=r)
        self.open_streams = Gauge("strata_open_streams", "streams open now", registry=r)
        self.inflight = Gauge("strata_inflight_calls", "unary calls in progress", registry=r)
        self.refused = Counter("strata_refused_total", "calls refused before running, by reason",
                               ["reason"], registry=r)
        self._server = None
        self._children: dict[tuple[str, str], tuple] = {}

    def observe(self, method: str, code: str, seconds: float | None) -> None:
        """Count one finished RPC (and its latency). Label children are cached:
        `labels()` costs several microseconds per call (bench/server)."""
        child = self._children.get((method, code))
        if child is None:
            child = self._children[(method, code)] = (self.requests.labels(method, code),
                                                      self.latency.labels(method))
        child[0].inc()
        if seconds is not None:
            child[1].observe(seconds)

    def attach_node(self, node: Node) -> None:
        """Export the node's figures, read at scrape time (no hot-path cost): the engine
        in service (none while it is reopened), replication, subscribers and rings."""
        self.registry.register(_EngineCollector(lambda: node.serving))
        if node.cluster is not None:
            self.registry.register(_ClusterCollector(node.cluster))
        self.registry.register(_DistributionCollector(node))

    def serve(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self._server, _ = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1",
                                            registry=self.registry)

    @property
    def port(self) -> int:
        return self._server.server_port if self._server is not None else 0

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _EngineCollector:
    def __init__(self, engine: Callable[[], Engine | None]) -> None:
        self.engine = engine

    def describe(self):
        return []

    def collect(self):
        eng = self.engine()
        if eng is None:
            return
        st = eng.stats
        counters = {
            "wal_groups": ("WAL group commits (one write+fsync each in durability=always)", "groups"),
            "wal_group_frames": ("frames written in group commits", "group_frames"),
            "flushes": ("memtable flushes to L0", "flushes"),
            "flush_bytes": ("bytes written by flushes", "flush_bytes"),
            "flush_seconds": ("time spent flushing", "flush_seconds"),
            "compactions": ("compactions run (trivial moves excluded)", "compactions"),
            "compaction_read_bytes": ("bytes read by compactions", "compaction_read_bytes"),
            "compaction_write_bytes": ("bytes written by compactions", "compaction_write_bytes"),
            "compaction_seconds": ("time spent compacting", "compaction_seconds"),
            "write_slowdowns": ("writes delayed 1 ms for L0 pressure", "slowdowns"),
            "write_stops": ("writes blocked until compaction caught up", "stops"),
            "write_stall_seconds": ("time writers spent stalled", "stall_seconds"),
        }
        for name, (doc, key) in counters.items():
            c = CounterMetricFamily(f"strata_engine_{name}", doc)
            c.add_metric([], getattr(st, key))
            yield c
        g = GaugeMetricFamily("strata_engine_level_bytes", "bytes per LSM level", labels=["level"])
        f = GaugeMetricFamily("strata_engine_level_files", "tables per LSM level", labels=["level"])
        for lvl in eng.levels():
            g.add_metric([str(lvl["level"])], lvl["bytes"])
            f.add_metric([str(lvl["level"])], lvl["files"])
        yield g
        yield f
        mem = GaugeMetricFamily("strata_engine_memtable_bytes", "bytes in the active memtable")
        mem.add_metric([], st.memtable_bytes)
        yield mem
        lsn = GaugeMetricFamily("strata_engine_lsn", "last committed and last flushed LSN", labels=["kind"])
        lsn.add_metric(["last"], eng.last_lsn)
        lsn.add_metric(["flushed"], eng.flushed_lsn)
        yield lsn
        err = eng.write_error
        w = GaugeMetricFamily("strata_engine_writes_stopped",
                              "1 while writes are stopped, by reason (no_space resumes by itself; "
                              "io_error needs a restart)", labels=["reason"])
        nospace = err is not None and err.resumable
        w.add_metric(["no_space"], 1 if nospace else 0)
        w.add_metric(["io_error"], 1 if err is not None and not nospace else 0)
        yield w
        p = GaugeMetricFamily("strata_engine_background_paused",
                              "1 while flushes or compactions wait for disk space", labels=["work"])
        paused = eng.paused
        for work in ("flush", "compaction"):
            p.add_metric([work], 1 if work in paused else 0)
        yield p
        du = eng.disk_usage()
        disk = GaugeMetricFamily("strata_engine_disk_bytes", "bytes on disk", labels=["kind"])
        disk.add_metric(["sst"], du["sst_bytes"])
        disk.add_metric(["wal"], du["wal_bytes"])
        yield disk
        wal = eng.wal_stats()
        buckets, acc = [], 0
        for le, n in wal["sync_buckets"]:
            acc += n
            buckets.append((str(le) if le != float("inf") else "+Inf", acc))
        h = HistogramMetricFamily("strata_wal_fsync_seconds", "WAL fdatasync latency")
        h.add_metric([], buckets, wal["sync_seconds"])
        yield h
        buckets, acc = [], 0
        for le, n in eng.group_size_histogram():
            acc += n
            buckets.append((str(le) if le >= 0 else "+Inf", acc))
        g = HistogramMetricFamily("strata_wal_group_frames", "frames per WAL group commit")
        g.add_metric([], buckets, st.group_frames)
        yield g


class _ClusterCollector:
    def __init__(self, cluster) -> None:
        self.c = cluster

    def describe(self):
        return []

    def collect(self):
        st = self.c.status()
        role = GaugeMetricFamily("strata_replication_role", "1 for this node's role",
                                 labels=["role"])
        for r in ("master", "candidate", "replica"):
            role.add_metric([r], 1 if st["role"] == r else 0)
        yield role
        for name, doc, value in (
                ("term", "current election term", st["term"]),
                ("commit_lsn", "highest LSN the replication mode counts as committed",
                 st["commit_lsn"]),
                ("lease", "1 while this master holds its lease", 1 if st["lease"] else 0)):
            g = GaugeMetricFamily(f"strata_replication_{name}", doc)
            g.add_metric([], value)
            yield g
        lag = GaugeMetricFamily("strata_replication_peer_lag_lsns",
                                "LSNs a replica has not acknowledged (on the master)",
                                labels=["peer"])
        lag_ms = GaugeMetricFamily("strata_replication_peer_lag_seconds",
                                   "age of the oldest write a replica has not acknowledged",
                                   labels=["peer"])
        state = GaugeMetricFamily("strata_replication_peer_state",
                                  "1 for the peer's state as seen by the master",
                                  labels=["peer", "state"])
        for p in st["peers"]:
            lag.add_metric([p["node"]], p["lag_lsns"])
            lag_ms.add_metric([p["node"]], p["lag_ms"] / 1000)
            for s in ("healthy", "degraded", "stalled", "failed", "unknown"):
                state.add_metric([p["node"], s], 1 if p["state"] == s else 0)
        yield lag
        yield lag_ms
        yield state
        for key, doc in (("elections_won", "elections this node won"),
                         ("step_downs", "times this node stopped being master"),
                         ("resyncs", "checkpoint resyncs this replica went through"),
                         ("truncations", "times this replica cut a log tail the master never had")):
            c = CounterMetricFamily(f"strata_replication_{key}", doc)
            c.add_metric([], self.c.stats[key])
            yield c


class _DistributionCollector:
    def __init__(self, node: Node) -> None:
        self.node = node

    def describe(self):
        return []

    def collect(self):
        node = self.node
        st = subscriber_status(node)
        rows = [
            (GaugeMetricFamily, "strata_subscribers", "event subscribers connected",
             st.connected),
            (CounterMetricFamily, "strata_subscribers_cut",
             "subscribers disconnected for falling behind", st.cut_off),
            (GaugeMetricFamily, "strata_subscriber_queued_bytes",
             "bytes of events waiting in subscribers' queues (bound: subscriber_memory)",
             st.queued_bytes),
            (GaugeMetricFamily, "strata_subscriber_memory_limit_bytes", "subscriber_memory",
             st.memory_limit_bytes),
            (CounterMetricFamily, "strata_subscriber_memory_cutoffs",
             "subscribers cut off because subscriber_memory was full", st.memory_cut_offs),
            (GaugeMetricFamily, "strata_fanout_groups",
             "groups of identical live streams served as one", st.fanout_groups),
            (CounterMetricFamily, "strata_events_published", "events handed to subscribers",
             st.events_published),
            (CounterMetricFamily, "strata_consumer_cursor_writes",
             "batches of consumer cursors written", st.cursor_writes),
        ]
        if st.awaiting_commit is not None:  # a cluster node's committed feed
            rows += [
                (GaugeMetricFamily, "strata_events_awaiting_commit",
                 "frames durable here, held until the commit point passes them (cluster)",
                 st.awaiting_commit),
                (CounterMetricFamily, "strata_events_read_back",
                 "frames read back from the WAL because more were awaiting the commit point "
                 "than the feed keeps in memory", st.read_back),
            ]
        for family, name, doc, value in rows:
            m = family(name, doc)
            m.add_metric([], value)
            yield m
        # Named consumers as the retention task last saw them (every second): lag
        # against the log's end now, the held log against consumer_retention_bytes.
        r = node.retention
        eng = node.serving
        last = eng.last_lsn if eng is not None else r.last_lsn
        lag = GaugeMetricFamily("strata_consumer_lag_lsns",
                                "LSNs a named consumer is behind the log's end", labels=["consumer"])
        held = GaugeMetricFamily("strata_consumer_held_bytes",
                                 "WAL kept for a named consumer beyond wal_retention_bytes",
                                 labels=["consumer"])
        for s in list(r.states.values()):
            lag.add_metric([s.name], max(0, last - s.cursor_lsn))
            held.add_metric([s.name], s.held_bytes)
        yield lag
        yield held
        g = GaugeMetricFamily("strata_consumer_retention_headroom_bytes",
                              "bytes the WAL held for named consumers may still grow before "
                              "consumer_retention_bytes cuts the furthest behind")
        g.add_metric([], r.headroom)
        yield g
        if node.rings is not None:
            ev = CounterMetricFamily("strata_ring_events", "events written into a ring",
                                     labels=["ring"])
            tr = CounterMetricFamily("strata_ring_truncated_events",
                                     "events too large for a ring (written without key and value)",
                                     labels=["ring"])
            rd = GaugeMetricFamily("strata_ring_doorbell_readers",
                                   "readers attached to a ring's doorbell", labels=["ring"])
            for r in node.rings.rings:
                ev.add_metric([r.name], r.published)
                tr.add_metric([r.name], r.truncated)
                rd.add_metric([r.name], r.readers)
            yield ev
            yield tr
            yield rd
