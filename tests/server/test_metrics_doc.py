"""docs/operations.md's metrics list is the one the registry generates, and every
family the node's collectors can export is declared in NODE_METRICS (the integration
tests compare both with what running daemons export)."""

from __future__ import annotations

import os

from strata.server.metrics import DOC_BEGIN, DOC_END, NODE_METRICS, doc_table, documented_families

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "operations.md")


def test_the_doc_lists_exactly_what_the_registry_generates():
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    section = DOC_BEGIN + text.split(DOC_BEGIN, 1)[1].split(DOC_END, 1)[0] + DOC_END
    assert section == doc_table(), "run `python -m strata.server.metrics --doc`"


def test_no_series_the_daemon_does_not_have():
    names = {name for name, *_ in documented_families()}
    assert "strata_wal_fsync_total" not in names  # the fsync count is ..._seconds_count
    assert "strata_wal_fsync_seconds" in names and "strata_build_info" in names
    assert {"process_cpu_seconds_total", "python_info", "python_gc_collections_total"} <= names
    assert not [n for n in names if n.endswith("_created")]
    for name, (kind, _, doc) in NODE_METRICS.items():
        assert doc and kind in ("counter", "gauge", "histogram"), name
        assert not name.endswith("_total"), f"{name}: counters get _total when exported"
