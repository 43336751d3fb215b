"""Smoke test of bench/distribution.py's harness: tiny runs, checked for shape and
completeness (every event counted), not speed."""

from __future__ import annotations

import pytest

from bench import distribution as d
from bench import rings
from tests import daemon_logs


def test_ring_and_queue_harness():
    r = rings.bench_ring(3000, 1, "poll", True, None)
    assert r["events_per_s"] > 0 and r["lapped"] == 0 and r["reader_cpu_ns"] > 0
    paced = rings.bench_ring(500, 2, "doorbell", False, 5000)
    assert paced["lapped"] == 0 and paced["latency_us"]["p99"] is not None
    q = rings.bench_mp_queue(1000, None)
    assert q["events_per_s"] > 0 and q["reader_cpu_ns"] > 0


@pytest.mark.parametrize("tier", ["realtime", "delayed"])
def test_websocket_tier_harness_delivers_every_event(tmp_path, tier):
    r = d.bench_strata_ws(str(tmp_path), tier, 2, 2000, None)
    assert r["complete"] and r["events_per_s"] > 0
    paced = d.bench_strata_ws(str(tmp_path), tier, 1, 300, 2000)
    assert paced["complete"] and paced["latency_ms"]["p50"] is not None
    logs = sorted(tmp_path.glob("*/log"))  # each daemon's (bench/distribution.py, Strata)
    assert len(logs) == 2
    for log in logs:
        daemon_logs.record(log)
