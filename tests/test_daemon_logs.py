"""The check of daemon logs (tests/daemon_logs.py) catches a daemon that logs an error: pytest
runs in a subprocess on a small test file whose real daemon fails to start (its gRPC port is
taken) and so logs an error."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from . import daemon_logs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAILING_DAEMON = textwrap.dedent('''
    import socket

    import pytest

    from tests.integration.conftest import Daemon


    def failed_start(tmp_path):
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        d = Daemon(str(tmp_path / "data"))
        d.grpc = "127.0.0.1:%d" % holder.getsockname()[1]
        try:
            assert d.start(wait=False).proc.wait(60) == 1
        finally:
            holder.close()
        return d


    def test_undeclared(tmp_path):
        failed_start(tmp_path)


    @pytest.mark.expect_log_errors(r"startup failed: cannot listen on 127\\.0\\.0\\.1:\\d+ ")
    def test_declared(tmp_path):
        failed_start(tmp_path)


    @pytest.mark.expect_log_errors(r"some other error")
    def test_declared_otherwise(tmp_path):
        failed_start(tmp_path)
''')


def _pytest(tmp_path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_failing_daemon.py").write_text(FAILING_DAEMON)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.daemon_logs", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "--basetemp", str(tmp_path / "run"), "-q",
         str(tmp_path / "test_failing_daemon.py"), *args],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
        timeout=180)


def test_an_undeclared_error_fails_the_run_naming_test_file_and_line(tmp_path):
    r = _pytest(tmp_path, "-k", "undeclared or otherwise")
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert "2 passed" in out and "errors in daemon logs" in out, out
    report = out[out.index("errors in daemon logs"):]
    for name in ("test_undeclared", "test_declared_otherwise"):
        assert f"test_failing_daemon.py::{name}: {tmp_path}/run/daemon-logs/" in report, report
    assert report.count('"level": "error"') == 2 and "startup failed" in report, report
    assert "declared: 'some other error'" in report, report


def test_a_declared_error_passes(tmp_path):
    r = _pytest(tmp_path, "-k", "test_declared and not otherwise")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed" in r.stdout and "errors in daemon logs" not in r.stdout, r.stdout


def test_this_run_records_daemon_logs(request):
    """The suite itself has the check on (tests/conftest.py): a log made now is recorded."""
    path = daemon_logs.log_file("probe")
    assert path is not None and path.exists()
    assert daemon_logs._recorded[-1].nodeid == request.node.nodeid


def test_errors_in_finds_each_kind_of_error_line():
    log = "\n".join([
        '{"level": "info", "msg": "serving"}',
        '{"level": "error", "msg": "bad"}',
        '{"level": "warning", "msg": "w", "exc": "Traceback (most recent call last):\\n x"}',
        '{"level": "critical", "msg": "worse"}',
        "Traceback (most recent call last):",
        '  File "a.py", line 1, in <module>',
        "ValueError: boom",
        "",
        "During handling of the above exception, another exception occurred:",
        "",
        "Traceback (most recent call last):",
        '  File "b.py", line 2, in <module>',
        "KeyError: 1",
        "a plain line",
        "E1208 00:12:13.123456  123 server.cc:12] oops",
        "ERROR:asyncio:Task was destroyed but it is pending!",
        "I1208 00:12:13.123456  123 server.cc:12] fine",
    ])
    found = daemon_logs.errors_in(log)
    assert found == [
        '{"level": "error", "msg": "bad"}',
        '{"level": "warning", "msg": "w", "exc": "Traceback (most recent call last):\\n x"}',
        '{"level": "critical", "msg": "worse"}',
        "\n".join(log.splitlines()[4:13]),
        "E1208 00:12:13.123456  123 server.cc:12] oops",
        "ERROR:asyncio:Task was destroyed but it is pending!",
    ]
