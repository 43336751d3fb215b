"""Smoke test of `python -m bench engine`: a tiny run, checked for shape, not speed.

Runs the real command line in a subprocess (as a user would) with N=2000 and
0.1 s synced points, so every adapter and every workload is exercised in a few
seconds. Figures are not judged here: on a shared CI machine they mean nothing.
sqlite3 FULL runs only the short workloads: 64 threads contending for its write
lock leave a tail of a second or more whatever the point's length.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(os.path.abspath(__file__)).parents[2]
WORKLOADS = {
    "fillrandom", "fillseq", "fillrandom-batch", "readrandom-hit", "readrandom-miss",
    "scan", "reopen", "sync-1", "sync-8", "sync-64",
}
PEERS = {"sqlite3-normal", "plyvel", "rocksdict"}


def _run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "bench", "engine", "--quick", "--json", "--quiet",
        "--n", "2000", "--seconds", "0.1", "--dir", str(tmp_path), *extra,
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180, check=False)


def test_engine_bench_json_shape(tmp_path: Path, tmp_path_factory) -> None:
    docs = tmp_path_factory.mktemp("docs")
    proc = _run(tmp_path, "--engines", ",".join(["strata", *sorted(PEERS)]), "--docs", str(docs))
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout)  # stdout holds the JSON document and nothing else
    assert set(doc) == {"workloads"}
    entries = doc["workloads"]
    assert {e["name"] for e in entries} == WORKLOADS
    for e in entries:
        assert set(e) == {"name", "unit", "strata", "peers", "cpu_ns_per_op"}
        assert e["unit"] == ("ms" if e["name"] == "reopen" else "ops/s")
        strata = e["strata"]
        ok = isinstance(strata, (int, float)) and math.isfinite(strata) and strata > 0
        assert ok, (e, proc.stderr[-4000:])
        assert set(e["peers"]) == PEERS
        for value in e["peers"].values():
            # null: peer missing, or workload not applicable (sqlite3 NORMAL has no synced figure)
            assert value is None or (isinstance(value, (int, float)) and value > 0)
        cpu = e["cpu_ns_per_op"]
        assert set(cpu) == {"strata", *PEERS}
        if e["unit"] == "ops/s":
            assert cpu["strata"] > 0, e  # every op costs some CPU
        for name, value in cpu.items():
            assert value is None or value > 0, (name, e)
    # the run cleans up after itself
    assert not any(tmp_path.iterdir())
    # the page: bench/engine/page.md filled in, every placeholder replaced
    page = (docs / "engine.md").read_text()
    assert "${" not in page and "\n\n\n" not in page
    for heading in ("## Summary", "## Detail", "## Workloads", "## Method", "## Machine"):
        assert heading in page, heading
    assert "| Strata CPU/op |" in page and "| CPU/op S/LevelDB |" in page


def test_engine_bench_only_and_engines(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--only", "fillseq,sync-1", "--engines",
                "strata,sqlite3-normal,sqlite3-full")
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout)
    assert [e["name"] for e in doc["workloads"]] == ["fillseq", "sync-1"]
    by_name = {e["name"]: e for e in doc["workloads"]}
    assert by_name["fillseq"]["strata"] > 0
    assert by_name["sync-1"]["strata"] > 0
    sync_peers = by_name["sync-1"]["peers"]
    assert set(sync_peers) == {"sqlite3-normal", "sqlite3-full"}
    assert sync_peers["sqlite3-normal"] is None  # NORMAL does not fsync a commit: n/a
    assert sync_peers["sqlite3-full"] is None or sync_peers["sqlite3-full"] > 0
