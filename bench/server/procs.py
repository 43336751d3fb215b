"""Process management in the parent: spawning, stopping, CPU and RSS of a pid, the
pool of client worker processes."""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import socket
import subprocess
import sys
import threading
from typing import Any

from .common import REPO_ROOT

# ---------------------------------------------------------------- parent: processes


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_LOW = _ephemeral_low()
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback TCP port nobody listens on, for a server started later.

    Taken below the kernel's ephemeral range: a port from bind(0) lies inside it,
    so any connection opened before the server binds (a client, a health probe)
    can be given the same port as its local end, and the server then fails with
    "address already in use". A port is not handed out twice by one process, so
    a server restarted on its ports does not meet another one there."""
    low = 10000 if _EPHEMERAL_LOW > 11000 else 1024
    high = _EPHEMERAL_LOW - 1
    for _ in range(1000):
        port = random.randint(low, high)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {low}-{high}")


_SETPRIV = shutil.which("setpriv")


def spawn(cmd: list[str], *, env: dict[str, str] | None, stdout: Any, stderr: Any,
           stdin: Any = subprocess.DEVNULL, cwd: str | None = None) -> subprocess.Popen:
    """Start a child in its own session (Ctrl-C on the terminal reaches only us; we stop it).

    With util-linux `setpriv` the child also gets SIGTERM if this process dies
    without cleaning up (SIGKILL), so no server outlives the bench.
    """
    if _SETPRIV:
        cmd = [_SETPRIV, "--pdeathsig", "TERM", "--", *cmd]
    return subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr, stdin=stdin, cwd=cwd,
                            start_new_session=True)


def stop_proc(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; only this process."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.terminate()
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU of a process and its live children."""
    if pid is None:
        return None
    try:
        import psutil

        proc = psutil.Process(pid)
        total = sum(proc.cpu_times()[:2])
        for child in proc.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.Error:
                pass
        return total
    except Exception:
        return None


def rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except Exception:
        return None


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


class WorkerPool:
    """The client processes, alive for the whole run."""

    def __init__(self, count: int, stubs: str) -> None:
        self.stubs = stubs
        self.procs: list[subprocess.Popen] = []
        self.lines: list[queue.Queue] = []
        try:  # our stdout may be carrying --json: the workers' stderr goes to our stderr
            self.err: Any = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):
            self.err = subprocess.DEVNULL
        for i in range(count):
            self._start(i)
        for i in range(count):
            hello = self.recv(i, 60)
            if "hello" not in hello:
                raise RuntimeError(f"client process {i} did not start: {hello}")

    def _start(self, i: int) -> None:
        cmd = [sys.executable, "-m", "bench.server", "--worker", str(i), "--stubs", self.stubs]
        proc = spawn(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=self.err,
                      stdin=subprocess.PIPE, cwd=str(REPO_ROOT))
        lines: queue.Queue = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                lines.put(raw)
            lines.put(None)

        threading.Thread(target=pump, daemon=True, name=f"client-{i}-stdout").start()
        if i < len(self.procs):
            self.procs[i], self.lines[i] = proc, lines
        else:
            self.procs.append(proc)
            self.lines.append(lines)

    def send(self, i: int, obj: dict[str, Any]) -> None:
        stdin = self.procs[i].stdin
        assert stdin is not None
        stdin.write((json.dumps(obj) + "\n").encode())
        stdin.flush()

    def recv(self, i: int, timeout: float) -> dict[str, Any]:
        try:
            raw = self.lines[i].get(timeout=timeout)
        except queue.Empty:
            return {"error": f"client process {i} gave no answer in {timeout:.0f} s"}
        if raw is None:
            return {"error": f"client process {i} exited (status {self.procs[i].poll()})"}
        return json.loads(raw)

    def restart(self, i: int) -> None:
        """After a timeout: replace a client whose state is unknown."""
        stop_proc(self.procs[i], grace=2)
        self._start(i)
        self.recv(i, 60)

    def close(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.poll() is None:
                try:
                    self.send(i, {"cmd": "exit"})
                    proc.stdin.close()  # type: ignore[union-attr]
                except (OSError, ValueError):
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                stop_proc(proc, grace=2)
