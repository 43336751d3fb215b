"""Every daemon a test starts logs to a file recorded with the test's node id; at the end of the
run, an error in any of those logs fails the run unless its test declared it.

An error is a line at level error or critical (the daemon's JSON lines, server/logs.py), a
Python traceback, an `ERROR`/`CRITICAL` word on a line that is not JSON, or a gRPC core error
line (`E1208 12:00:00.000000 ...`). A test that expects some declares them, as narrowly as it
can, with regular expressions searched in the offending line (or traceback block):

    @pytest.mark.expect_log_errors(r"startup failed: cannot listen on")
    def test_...

The check runs in pytest_sessionfinish over the tests that ran (with -x too), and names the
test, the log file and the lines. tests/test_daemon_logs.py checks that it catches a daemon
that logs an error, so it cannot pass by finding no logs.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

MARKER = "expect_log_errors"
LEVELS = {"error", "critical"}
_PLAIN_ERROR = re.compile(r"\b(ERROR|CRITICAL)\b")
_CHAINED = ("During handling", "The above exception")
_GRPC_CORE_ERROR = re.compile(r"^E\d{4} \d\d:\d\d:\d\d\.\d+ ")  # absl log prefix, severity E


@dataclass
class Recorded:
    nodeid: str
    path: Path
    expected: tuple[str, ...]


_log_dir: Path | None = None
_current: pytest.Item | None = None
_recorded: list[Recorded] = []
_seq = itertools.count(1)
_findings: list[tuple[Recorded, list[str]]] = []


def log_file(name: str = "daemon") -> Path | None:
    """A new log file for a daemon started now, recorded with the running test's node id and
    the patterns it declared; None outside a test run (the caller picks its own file)."""
    if _log_dir is None or _current is None:
        return None
    test_dir = _log_dir / re.sub(r"[^\w.-]+", "_", _current.nodeid)[-120:]
    test_dir.mkdir(parents=True, exist_ok=True)
    path = test_dir / f"{name}-{next(_seq)}.log"
    path.touch()
    expected = tuple(p for m in _current.iter_markers(MARKER) for p in m.args)
    _recorded.append(Recorded(_current.nodeid, path, expected))
    return path


def record(path: Path) -> None:
    """Record the log of a daemon that picked its own file (a bench's), for the running test."""
    if _current is not None:
        expected = tuple(p for m in _current.iter_markers(MARKER) for p in m.args)
        _recorded.append(Recorded(_current.nodeid, Path(path), expected))


def errors_in(text: str) -> list[str]:
    """The error lines of a log, a plain traceback (with its frames and exception line) as
    one entry."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith("{"):
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if isinstance(rec, dict):
                if str(rec.get("level", "")).lower() in LEVELS or "Traceback" in line:
                    out.append(line)
                continue
        if line.startswith("Traceback (most recent call last):"):
            block = [line]
            while True:
                while i < len(lines) and lines[i][:1].isspace():  # the frames
                    block.append(lines[i])
                    i += 1
                if i < len(lines):  # the exception line
                    block.append(lines[i])
                    i += 1
                j = i  # a chained exception: "During handling ...", then its traceback
                while j < len(lines) and lines[j] == "":
                    j += 1
                if not (j + 2 < len(lines) and lines[j].startswith(_CHAINED)
                        and lines[j + 2].startswith("Traceback")):
                    break
                block += lines[i:j + 3]
                i = j + 3
            out.append("\n".join(block))
        elif "Traceback" in line or _PLAIN_ERROR.search(line) or _GRPC_CORE_ERROR.match(line):
            out.append(line)
    return out


def unexpected(rec: Recorded) -> list[str]:
    try:
        text = rec.path.read_bytes().decode(errors="replace")
    except OSError:
        return []
    return [e for e in errors_in(text) if not any(re.search(p, e) for p in rec.expected)]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(*patterns): the daemons this test starts may log errors "
        "matching these regular expressions (tests/daemon_logs.py)")


@pytest.fixture(scope="session", autouse=True)
def _daemon_log_dir(tmp_path_factory: pytest.TempPathFactory):
    global _log_dir
    _log_dir = tmp_path_factory.mktemp("daemon-logs", numbered=False)
    yield _log_dir


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    global _current
    _current = item
    try:
        yield
    finally:
        _current = None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _findings[:] = [(r, bad) for r in _recorded if (bad := unexpected(r))]
    if _findings and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _findings:
        return
    tr = terminalreporter
    tr.section("errors in daemon logs", sep="=", red=True, bold=True)
    tr.write_line(f"{len(_findings)} daemon log(s) hold errors their test did not declare "
                  f"(@pytest.mark.{MARKER}, tests/daemon_logs.py):")
    for rec, bad in _findings:
        tr.write_line("")
        tr.write_line(f"{rec.nodeid}: {os.fspath(rec.path)}", bold=True)
        if rec.expected:
            tr.write_line(f"  declared: {', '.join(map(repr, rec.expected))}")
        for e in bad[:20]:
            tr.write_line("  " + e.replace("\n", "\n  ")[:4000])
        if len(bad) > 20:
            tr.write_line(f"  ... and {len(bad) - 20} more")
