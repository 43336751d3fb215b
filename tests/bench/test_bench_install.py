"""The benches run as README.md's "Benchmarks" section says: in a fresh venv after
`pip install -e ./client -e '.[bench]'`, every `python -m bench NAME --quick` exits 0, its
`--dir` is made when missing, and a peer whose server is not on PATH is reported as missing.

The peers' servers are hidden from PATH (redis-server, redis-sentinel, nats-server), except
etcd where the machine has it: the server bench then runs it, which compiles its stubs with
grpc_tools, a module the bench extra must bring. The run in a fresh venv (pip installs
everything, then every bench runs: 2-3 minutes) is in the default selection, as CI runs
it; the same quick runs in this venv too, but for replication and distribution (`-m slow`:
they take ~40 s each and run in the fresh venv already).
Figures are not judged: sizes are the smallest that run every code path of the command.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(os.path.abspath(__file__)).parents[2]

# name -> the options of a small --quick run, and the peers' servers it must name as missing
BENCHES: dict[str, tuple[list[str], list[str]]] = {
    "engine": (["--n", "2000", "--seconds", "0.1", "--no-docs", "--quiet"], []),
    "server": (["--engines", "strata,etcd,redis-always", "--seconds", "0.2", "--inflight", "1",
                "--read-keys", "200", "--batch-ops", "10", "--no-docs", "--quiet"],
               ["redis-server"]),
    "compaction": (["--n", "5000", "--seconds", "0.2"], []),
    "compression": (["--n", "3000", "--reads", "1000", "--no-docs", "--quiet"], []),
    "replication": (["--seconds", "0.3", "--trials", "1", "--no-docs"],
                    ["redis-server", "etcd"]),
    "distribution": (["--no-docs"], ["redis-server", "nats-server"]),
}
HIDDEN = ("redis-server", "redis-sentinel", "nats-server")
MISSING = re.compile(r"not found|not on PATH|needs|missing|not run")


def _path(python: str, tools: Path, show_etcd: bool) -> str:
    """PATH for a bench: the venv's bin and the few tools the benches call; no peer server
    (but etcd when asked and present)."""
    tools.mkdir()
    for name in ("setpriv", "git", *(("etcd",) if show_etcd else ())):
        found = shutil.which(name)
        if found:
            (tools / name).symlink_to(found)
    return os.pathsep.join([os.path.dirname(python), str(tools)])


def _run_bench(python: str, name: str, tmp: Path) -> None:
    opts, missing = BENCHES[name]
    show_etcd = name == "server"  # replication's etcd cluster and failover trials take long
    if not show_etcd:
        missing = [*missing, *(("etcd",) if name == "replication" else ())]
    missing = sorted(set(missing))
    # short: the distribution bench binds a unix socket (pyzmq ipc, 107 bytes at most) in it
    top = tempfile.mkdtemp(prefix="sb-")
    data = Path(top) / "not" / "made"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("STRATA_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = _path(python, tmp / f"tools-{name}", show_etcd)
    try:
        r = subprocess.run([python, "-m", "bench", name, "--quick", "--dir", str(data), *opts],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        made = data.is_dir()
    finally:
        shutil.rmtree(top, ignore_errors=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"python -m bench {name} --quick: exit {r.returncode}\n{out[-4000:]}"
    assert "Traceback" not in out, out[-4000:]
    assert made
    for peer in missing:
        lines = [line for line in out.splitlines() if peer in line and MISSING.search(line)]
        assert lines, f"{name}: {peer} is hidden but not reported as missing:\n{out[-4000:]}"


# replication and distribution take ~40 s each even so (clusters, failovers, 100 subscribers)
@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[pytest.mark.slow] if name in ("replication", "distribution") else [])
    for name in BENCHES])
def test_quick_bench_runs_and_reports_missing_peers(name, tmp_path):
    _run_bench(sys.executable, name, tmp_path)


def test_benches_run_in_a_fresh_venv_installed_as_the_readme_says(tmp_path):
    readme = (REPO / "README.md").read_text()
    command = "pip install -e ./client -e '.[bench]'"
    assert f"After `{command}`" in readme
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    r = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    for name in BENCHES:
        _run_bench(python, name, tmp_path)
