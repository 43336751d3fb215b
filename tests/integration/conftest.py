"""Start the real daemon as a subprocess on free loopback ports with a temp data dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.server.procs import free_port

from .. import daemon_logs
from . import netns

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def health_status(addr: str, timeout: float = 1.0) -> int | None:
    try:
        with grpc.insecure_channel(addr) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""),
                                                        timeout=timeout)
            return resp.status
    except grpc.RpcError:
        return None


class Daemon:
    def __init__(self, data_dir: str, extra_env: dict | None = None, args: list | None = None,
                 netns: str | None = None, host: str | None = None):
        self.data_dir = data_dir
        self.netns = netns  # run inside this network namespace, listening on `host`
        if host:
            self.grpc, self.ws, self.metrics = (f"{host}:{p}" for p in (7400, 7401, 7402))
        else:
            self.grpc = f"127.0.0.1:{free_port()}"
            self.ws = f"127.0.0.1:{free_port()}"
            self.metrics = f"127.0.0.1:{free_port()}"
        self.env = dict(os.environ, PYTHONPATH=ROOT, **(extra_env or {}))
        self.args = args or []
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(os.path.dirname(data_dir), f"daemon-{time.monotonic_ns()}.log")

    def start(self, wait: bool = True, timeout: float = 30.0) -> Daemon:
        # a file of the run's, recorded with this test: the run fails on an error in it that
        # the test did not declare (tests/daemon_logs.py)
        self.log_path = str(daemon_logs.log_file() or self.log_path)
        self._log = open(self.log_path, "wb")
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "strata.server.cli", "serve", "--data-dir", self.data_dir,
             "--grpc-listen", self.grpc, "--ws-listen", self.ws, "--metrics-listen", self.metrics,
             *self.args],
            env=self.env, stdout=subprocess.DEVNULL, stderr=self._log, cwd=ROOT)
        if wait:
            self.wait_serving(timeout)
        return self

    def wait_serving(self, timeout: float = 30.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.logs()}")
            if health_status(self.grpc, 0.5) == health_pb2.HealthCheckResponse.SERVING:
                return time.monotonic() - t0
            time.sleep(0.02)
        raise TimeoutError(f"daemon not serving after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def log_records(self) -> list[dict]:
        out = []
        for line in self.logs().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout: float = 15.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate()
            except subprocess.TimeoutExpired:
                self.kill()
        if hasattr(self, "_log"):
            self._log.close()


@pytest.fixture
def daemon_factory(tmp_path):
    made: list[Daemon] = []

    def make(extra_env=None, args=None, data_dir=None, start=True) -> Daemon:
        d = Daemon(data_dir or str(tmp_path / "data"), extra_env, args)
        made.append(d)
        return d.start() if start else d

    yield make
    for d in made:
        d.stop()


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory()


@pytest.fixture
def network():
    """Three network namespaces a, b, c on a bridge (tests/integration/netns.py);
    skips, saying why, where they cannot be made."""
    why = netns.unavailable()
    if why:
        pytest.skip(f"partition tests need network namespaces: {why}")
    net = netns.Network(["a", "b", "c"])
    yield net
    net.close()
