"""Prometheus metrics: request counters and latencies per method and code, the
process and the interpreter, and the node's figures read at scrape time.

`NODE_METRICS` is the one table of what the node's collectors export: name, kind,
labels and help. The collectors build their families from it, and the list in
docs/operations.md is generated from this registry (`python -m
strata.server.metrics --doc`; tests/server/test_metrics_doc.py compares), as
server/config.py does for options.

Served on metrics_listen by server/http.py (its own thread), with the status page;
the node's figures are node/status.py's Figures, taken on the event loop per scrape.
No `*_created` series: prometheus_client's are switched off for the process.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

if TYPE_CHECKING:
    from strata.node.node import Node
    from strata.node.status import EngineFigures, Figures

disable_created_metrics()

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

C, G, H = "counter", "gauge", "histogram"

# name (as exported, without _total) -> (kind, labels, help). Counters are exported
# with _total, histograms with _bucket/_sum/_count.
NODE_METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    # the engine (none while it is reopened)
    "strata_engine_wal_groups": (C, (), "WAL group commits (one write+fsync each in "
                                        "durability=always)"),
    "strata_engine_wal_group_frames": (C, (), "frames written in group commits"),
    "strata_engine_flushes": (C, (), "memtable flushes to L0"),
    "strata_engine_flush_bytes": (C, (), "bytes written by flushes"),
    "strata_engine_flush_seconds": (C, (), "time spent flushing"),
    "strata_engine_compactions": (C, (), "compactions run (trivial moves excluded)"),
    "strata_engine_compaction_read_bytes": (C, (), "bytes read by compactions"),
    "strata_engine_compaction_write_bytes": (C, (), "bytes written by compactions"),
    "strata_engine_compaction_seconds": (C, (), "time spent compacting"),
    "strata_engine_write_slowdowns": (C, (), "writes delayed 1 ms for L0 pressure"),
    "strata_engine_write_stops": (C, (), "writes blocked until compaction caught up"),
    "strata_engine_write_stall_seconds": (C, (), "time writers spent stalled"),
    "strata_engine_level_bytes": (G, ("level",), "bytes per LSM level"),
    "strata_engine_level_files": (G, ("level",), "tables per LSM level"),
    "strata_engine_memtable_bytes": (G, (), "bytes in the active memtable"),
    "strata_engine_lsn": (G, ("kind",), "last committed (kind=last) and last flushed "
                                        "(kind=flushed) LSN"),
    "strata_engine_writes_stopped": (G, ("reason",), "1 while writes are stopped, by reason "
                                     "(no_space resumes by itself; io_error needs a restart)"),
    "strata_engine_background_paused": (G, ("work",), "1 while flushes or compactions wait "
                                                      "for disk space"),
    "strata_engine_disk_bytes": (G, ("kind",), "bytes on disk (kind=sst, wal: the log "
                                 "written, wal_preallocated: log space allocated ahead)"),
    "strata_wal_fsync_seconds": (H, (), "WAL fdatasync latency (its _count: fdatasync calls)"),
    "strata_wal_group_frames": (H, (), "frames per WAL group commit"),
    # replication (a cluster node only)
    "strata_replication_role": (G, ("role",), "1 for this node's role (master, candidate, "
                                              "replica)"),
    "strata_replication_term": (G, (), "current election term"),
    "strata_replication_commit_lsn": (G, (), "highest LSN the replication mode counts as "
                                             "committed"),
    "strata_replication_lease": (G, (), "1 while this master holds its lease"),
    "strata_replication_peer_lag_lsns": (G, ("peer",), "LSNs a replica has not acknowledged "
                                                       "(on the master)"),
    "strata_replication_peer_lag_seconds": (G, ("peer",), "age of the oldest write a replica "
                                                          "has not acknowledged"),
    "strata_replication_peer_state": (G, ("peer", "state"), "1 for the peer's state as this "
                                      "node sees it (healthy, degraded, stalled, failed, "
                                      "unknown)"),
    "strata_replication_elections_won": (C, (), "elections this node won"),
    "strata_replication_step_downs": (C, (), "times this node stopped being master"),
    "strata_replication_resyncs": (C, (), "checkpoint resyncs this replica went through"),
    "strata_replication_truncations": (C, (), "times this replica cut a log tail the master "
                                              "never had"),
    "strata_replication_appends_applied": (C, (), "Appends with frames this replica applied"),
    "strata_replication_append_groups": (C, (), "groups of Appends this replica applied, one "
                                                "fsync each"),
    # distribution
    "strata_subscribers": (G, (), "event subscribers connected"),
    "strata_subscribers_cut": (C, (), "subscribers disconnected for falling behind"),
    "strata_subscriber_queued_bytes": (G, (), "bytes of events waiting in subscribers' queues "
                                              "(bound: subscriber_memory)"),
    "strata_subscriber_memory_limit_bytes": (G, (), "subscriber_memory"),
    "strata_subscriber_memory_cutoffs": (C, (), "subscribers cut off because "
                                                "subscriber_memory was full"),
    "strata_fanout_groups": (G, (), "groups of identical live streams served as one"),
    "strata_events_published": (C, (), "events handed to subscribers"),
    "strata_consumer_cursor_writes": (C, (), "batches of consumer cursors written"),
    "strata_events_awaiting_commit": (G, (), "frames durable here, held until the commit "
                                             "point passes them (cluster)"),
    "strata_events_read_back": (C, (), "frames read back from the WAL because more were "
                                       "awaiting the commit point than the feed keeps in "
                                       "memory (cluster)"),
    "strata_consumer_lag_lsns": (G, ("consumer",), "LSNs a named consumer is behind the "
                                                   "log's end"),
    "strata_consumer_held_bytes": (G, ("consumer",), "WAL kept for a named consumer beyond "
                                                     "wal_retention_bytes"),
    "strata_consumer_retention_headroom_bytes": (G, (), "bytes the WAL held for named "
                                                 "consumers may still grow before "
                                                 "consumer_retention_bytes cuts the furthest "
                                                 "behind"),
    "strata_connections": (G, ("transport",), "WebSocket connections and gRPC streams open "
                                              "(/v1/connections lists them)"),
    "strata_ring_events": (C, ("ring",), "events written into a ring"),
    "strata_ring_truncated_events": (C, ("ring",), "events too large for a ring (written "
                                                   "without key and value)"),
    "strata_ring_doorbell_readers": (G, ("ring",), "readers attached to a ring's doorbell"),
    "strata_ring_last_lsn": (G, ("ring",), "the last LSN written into a ring"),
}

_FAMILIES = {C: CounterMetricFamily, G: GaugeMetricFamily, H: HistogramMetricFamily}


def family(name: str):
    """An empty family for `name` from NODE_METRICS (KeyError: not in the table)."""
    kind, labels, doc = NODE_METRICS[name]
    return _FAMILIES[kind](name, doc, labels=list(labels))


def _one(name: str, value) -> object:
    m = family(name)
    m.add_metric([], value)
    return m


def _version() -> str:
    from .service import VERSION

    return VERSION


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
        Gauge("strata_build_info", "1, labelled with the version running", ["version"],
              registry=r).labels(_version()).set(1)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
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
        """Export the node's figures, taken at scrape time (no hot-path cost) on the
        event loop: the HTTP server asks the loop for them (server/http.py)."""
        self.registry.register(_NodeCollector(
            lambda: self._server.figures() if self._server is not None else None))

    def serve(self, listen: str, gate) -> None:
        """Start the HTTP listener (server/http.py) on `listen`; event loop. Raises
        OSError naming the address when it cannot listen."""
        from .http import StatusServer

        self._server = StatusServer(listen, self.registry, gate, _version())
        self._server.start()

    @property
    def port(self) -> int:
        return self._server.port if self._server is not None else 0

    async def aclose(self) -> None:
        """Stop the HTTP listener and close its channels to peers (event loop)."""
        srv, self._server = self._server, None
        if srv is not None:
            await srv.aclose()


class _NodeCollector:
    """The node's figures (NODE_METRICS), from one node/status.py Figures per scrape.
    `source` returns it, or None when there is none to export (the loop did not
    answer in time): the scrape then has the process and request metrics only."""

    ENGINE_COUNTERS = {  # NODE_METRICS name -> EngineStats attribute
        "strata_engine_wal_groups": "groups",
        "strata_engine_wal_group_frames": "group_frames",
        "strata_engine_flushes": "flushes",
        "strata_engine_flush_bytes": "flush_bytes",
        "strata_engine_flush_seconds": "flush_seconds",
        "strata_engine_compactions": "compactions",
        "strata_engine_compaction_read_bytes": "compaction_read_bytes",
        "strata_engine_compaction_write_bytes": "compaction_write_bytes",
        "strata_engine_compaction_seconds": "compaction_seconds",
        "strata_engine_write_slowdowns": "slowdowns",
        "strata_engine_write_stops": "stops",
        "strata_engine_write_stall_seconds": "stall_seconds",
    }
    PEER_STATES = ("healthy", "degraded", "stalled", "failed", "unknown")

    def __init__(self, source: Callable[[], Figures | None]) -> None:
        self.source = source

    def describe(self):
        return []

    def collect(self):
        f = self.source()
        if f is None:
            return
        if f.engine is not None:
            yield from self._engine(f.engine)
        if f.replication is not None:
            yield from self._replication(f.replication, f.replication_counts or {})
        yield from self._distribution(f)

    def _engine(self, e: EngineFigures):
        st = e.stats
        for name, key in self.ENGINE_COUNTERS.items():
            yield _one(name, getattr(st, key))
        g = family("strata_engine_level_bytes")
        n = family("strata_engine_level_files")
        for lv in e.levels:
            g.add_metric([str(lv.level)], lv.bytes)
            n.add_metric([str(lv.level)], lv.files)
        yield g
        yield n
        yield _one("strata_engine_memtable_bytes", st.memtable_bytes)
        lsn = family("strata_engine_lsn")
        lsn.add_metric(["last"], e.last_lsn)
        lsn.add_metric(["flushed"], e.flushed_lsn)
        yield lsn
        w = family("strata_engine_writes_stopped")
        for reason in ("no_space", "io_error"):
            w.add_metric([reason], 1 if e.write_stopped == reason else 0)
        yield w
        p = family("strata_engine_background_paused")
        for work in ("flush", "compaction"):
            p.add_metric([work], 1 if work in e.paused else 0)
        yield p
        disk = family("strata_engine_disk_bytes")
        disk.add_metric(["sst"], e.sst_bytes)
        disk.add_metric(["wal"], e.wal_bytes)
        disk.add_metric(["wal_preallocated"], e.wal_preallocated_bytes)
        yield disk
        buckets, acc = [], 0
        for le, count in e.fsync_buckets:
            acc += count
            buckets.append((str(le) if le != float("inf") else "+Inf", acc))
        h = family("strata_wal_fsync_seconds")
        h.add_metric([], buckets, e.fsync_seconds)
        yield h
        buckets, acc = [], 0
        for le, count in e.group_size_buckets:
            acc += count
            buckets.append((str(le) if le >= 0 else "+Inf", acc))
        h = family("strata_wal_group_frames")
        h.add_metric([], buckets, st.group_frames)
        yield h

    def _replication(self, st: dict, counts: dict):
        role = family("strata_replication_role")
        for r in ("master", "candidate", "replica"):
            role.add_metric([r], 1 if st["role"] == r else 0)
        yield role
        yield _one("strata_replication_term", st["term"])
        yield _one("strata_replication_commit_lsn", st["commit_lsn"])
        yield _one("strata_replication_lease", 1 if st["lease"] else 0)
        lag = family("strata_replication_peer_lag_lsns")
        lag_s = family("strata_replication_peer_lag_seconds")
        state = family("strata_replication_peer_state")
        for p in st["peers"]:
            lag.add_metric([p["node"]], p["lag_lsns"])
            lag_s.add_metric([p["node"]], p["lag_ms"] / 1000)
            for s in self.PEER_STATES:
                state.add_metric([p["node"], s], 1 if p["state"] == s else 0)
        yield lag
        yield lag_s
        yield state
        for key in ("elections_won", "step_downs", "resyncs", "truncations", "appends_applied",
                    "append_groups"):
            yield _one(f"strata_replication_{key}", counts.get(key, 0))

    def _distribution(self, f: Figures):
        ov = f.overview
        st = ov.subscribers
        rows = [
            ("strata_subscribers", st.connected),
            ("strata_subscribers_cut", st.cut_off),
            ("strata_subscriber_queued_bytes", st.queued_bytes),
            ("strata_subscriber_memory_limit_bytes", st.memory_limit_bytes),
            ("strata_subscriber_memory_cutoffs", st.memory_cut_offs),
            ("strata_fanout_groups", st.fanout_groups),
            ("strata_events_published", st.events_published),
            ("strata_consumer_cursor_writes", st.cursor_writes),
        ]
        if st.awaiting_commit is not None:  # a cluster node's committed feed
            rows += [("strata_events_awaiting_commit", st.awaiting_commit),
                     ("strata_events_read_back", st.read_back)]
        for name, value in rows:
            yield _one(name, value)
        # Named consumers as the retention task last saw them (every second): lag
        # against the log's end now, the held log against consumer_retention_bytes.
        lag = family("strata_consumer_lag_lsns")
        held = family("strata_consumer_held_bytes")
        for c in ov.consumers:
            lag.add_metric([c.name], c.lag_lsns)
            held.add_metric([c.name], c.held_bytes)
        yield lag
        yield held
        yield _one("strata_consumer_retention_headroom_bytes", f.retention_headroom)
        conns = family("strata_connections")
        for transport in ("websocket", "grpc"):
            conns.add_metric([transport], f.connections.get(transport, 0))
        yield conns
        if ov.rings:
            ev = family("strata_ring_events")
            tr = family("strata_ring_truncated_events")
            rd = family("strata_ring_doorbell_readers")
            pos = family("strata_ring_last_lsn")
            for r in ov.rings:
                ev.add_metric([r.name], r.published)
                tr.add_metric([r.name], r.truncated)
                rd.add_metric([r.name], r.readers)
                pos.add_metric([r.name], r.last_lsn)
            yield ev
            yield tr
            yield rd
            yield pos


def documented_families(metrics: Metrics | None = None) -> list[tuple[str, str, str, str]]:
    """(exported name, kind, labels, help) of every family this daemon can export:
    those of a Metrics registry (requests, process, interpreter, build) and NODE_METRICS."""
    metrics = metrics or Metrics()
    # Labelled metrics with no child yet have no samples to read their labels from.
    declared = {m._name: list(m._labelnames)
                for m in (metrics.requests, metrics.latency, metrics.refused)}
    out = {}
    for fam in metrics.registry.collect():
        name = fam.name + ("_total" if fam.type == "counter" else "")
        labels = declared.get(fam.name) or sorted(
            {k for s in fam.samples for k in s.labels if k != "le"})
        out[name] = (name, fam.type, ",".join(labels), fam.documentation)
    for name, (kind, labels, doc) in NODE_METRICS.items():
        exported = name + ("_total" if kind == C else "")
        out[exported] = (exported, kind, ",".join(labels), doc)
    return sorted(out.values())


DOC_BEGIN = "<!-- metrics: generated by `python -m strata.server.metrics --doc`; do not edit -->"
DOC_END = "<!-- end of metrics -->"


def doc_table(metrics: Metrics | None = None) -> str:
    """The metrics list of docs/operations.md, between DOC_BEGIN and DOC_END."""
    lines = [DOC_BEGIN, "", "| metric | type | labels | what |", "|---|---|---|---|"]
    for name, kind, labels, doc in documented_families(metrics):
        lines.append(f"| `{name}` | {kind} | {labels} | {doc.replace('|', '/')} |")
    return "\n".join([*lines, "", DOC_END])


def rewrite_doc(path: str) -> bool:
    """Replace the generated list in `path`; returns whether it changed."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    head, sep, rest = text.partition(DOC_BEGIN)
    _, sep2, tail = rest.partition(DOC_END)
    if not sep or not sep2:
        raise SystemExit(f"{path}: no {DOC_BEGIN!r} ... {DOC_END!r} section")
    new = head + doc_table() + tail
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    return new != text


if __name__ == "__main__":
    if sys.argv[1:2] == ["--doc"]:
        path = sys.argv[2] if len(sys.argv) > 2 else "docs/operations.md"
        print(f"{path}: {'updated' if rewrite_doc(path) else 'up to date'}")
    else:
        print(doc_table())
