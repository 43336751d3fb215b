"""Smoke test of `python -m bench server`: a tiny Strata-only run, checked for shape, not speed.

Runs the real command line in a subprocess (as a user would) against Strata
alone (`--engines strata`), so neither etcd nor Redis needs to be installed:
two client processes, 0.2 s points at 1 and 8 requests in flight, a 300-key
read set. Every Strata workload family runs (unary puts and gets on both event
loops, Batch, the Write stream, startup / SIGTERM / restart), so the daemon's
whole path is exercised in well under a minute. Figures are not judged: on a
shared machine they mean nothing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(os.path.abspath(__file__)).parents[2]
PEERS = {"ceiling", "etcd", "redis-always", "redis-everysec"}


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_server_bench_json_shape(tmp_path: Path, tmp_path_factory) -> None:
    docs = tmp_path_factory.mktemp("docs")
    cmd = [
        sys.executable, "-m", "bench", "server", "--quick", "--json", "--quiet",
        "--engines", "strata,ceiling", "--seconds", "0.2", "--inflight", "1,8",
        "--read-keys", "300", "--batch-ops", "20", "--dir", str(tmp_path), "--docs", str(docs),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout)  # stdout holds the JSON document and nothing else
    assert set(doc) == {"workloads"}
    entries = doc["workloads"]
    names = [e["name"] for e in entries]
    expected = (
        [f"put-c{c}" for c in (1, 8)] + [f"get-c{c}" for c in (1, 8)]
        + [f"client-put-c{c}" for c in (1, 8)]
        + [f"batch20-c{c}" for c in (1, 8)] + [f"write20-c{c}" for c in (1, 8)]
        + [f"{k}-c{c}-asyncio" for k in ("put", "get") for c in (1, 8)]
        + ["startup", "sigterm-exit", "restart"]
    )
    assert names == expected
    for e in entries:
        assert set(e) == {"name", "unit", "strata", "peers"}
        assert e["unit"] == ("ms" if e["name"] in ("startup", "sigterm-exit", "restart")
                             else "ops/s")
        assert _positive(e["strata"]), (e, proc.stderr[-4000:])
        # Strata and the ceiling ran: every peer is there, the others null; the ceiling
        # has what it is compared on (unary puts and gets, start and stop), not the
        # Strata-only batch, write and restart
        assert set(e["peers"]) == PEERS
        assert all(v is None for p, v in e["peers"].items() if p != "ceiling")
        has_ceiling = not e["name"].startswith(("batch", "write", "restart"))
        assert _positive(e["peers"]["ceiling"]) == has_ceiling, e
    # the run stopped every server and removed its data
    assert not any(tmp_path.iterdir())
    # the page: bench/server/page.md filled in, every placeholder replaced
    page = (docs / "server.md").read_text()
    assert "${" not in page and "\n\n\n" not in page
    for heading in ("## Summary", "## Detail", "## Strata group commit", "## Workloads",
                    "## Method", "## Machine"):
        assert heading in page, heading
