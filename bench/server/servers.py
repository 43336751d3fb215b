"""The servers under test, each started as a subprocess on free loopback ports:
the Strata daemon, etcd, Redis (appendfsync always / everysec)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from bench import report

from .common import BENCH_DIR
from .procs import child_env, free_port, spawn, stop_proc

# ---------------------------------------------------------------- parent: servers


class ServerError(RuntimeError):
    pass


class Server:
    """One server process: start (timed to ready), address for the clients, SIGTERM (timed)."""

    system = ""
    log_name = "server.log"

    def __init__(self, root: str) -> None:
        self.root = root  # this server's directory: data and log
        self.proc: subprocess.Popen | None = None
        self.address = ""
        self.log_path = ""
        self.exit_status: int | None = None

    @staticmethod
    def missing() -> str | None:
        return None

    @staticmethod
    def version() -> str | None:
        return None

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def probe(self) -> bool:
        """True once the server answers; called every few ms until then."""
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait until ready; return the milliseconds that took."""
        os.makedirs(self.root, exist_ok=True)
        cmd, env = self.command()
        self.log_path = os.path.join(self.root, f"{self.log_name}")
        log = open(self.log_path, "ab")
        try:
            t0 = time.perf_counter()
            self.proc = spawn(cmd, env=env, stdout=log, stderr=log, cwd=self.root)
        finally:
            log.close()
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.system} exited with status {self.proc.returncode} "
                                  f"while starting: {self.log_tail()}")
            if self.probe():
                return (time.perf_counter() - t0) * 1e3
            if time.perf_counter() > deadline:
                raise ServerError(f"{self.system} not ready after {timeout:.0f} s: "
                                  f"{self.log_tail()}")
            time.sleep(0.003)

    def sigterm(self, timeout: float = 60.0) -> float:
        """SIGTERM; return the milliseconds until the process has exited."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            raise ServerError(f"{self.system} is not running")
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            raise ServerError(
                f"{self.system} still running {timeout:.0f} s after SIGTERM; killed") from None
        finally:
            self.close_probe()
        ms = (time.perf_counter() - t0) * 1e3
        self.exit_status = proc.returncode
        # etcd re-raises the signal after its clean shutdown: death by SIGTERM is a clean exit too
        if proc.returncode not in (0, -signal.SIGTERM):
            raise ServerError(f"{self.system} exited with status {proc.returncode} after SIGTERM: "
                              f"{self.log_tail()}")
        return ms

    def kill(self) -> None:
        self.close_probe()
        stop_proc(self.proc, grace=10)

    def close_probe(self) -> None:
        pass

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def log_tail(self, n: int = 1500) -> str:
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
            return data[-n:].decode(errors="replace").strip()
        except OSError:
            return ""

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(rec, dict):
                        out.append(rec)
        except OSError:
            pass
        return out


class _GrpcProbe:
    """A sync gRPC channel that retries connecting every few ms, for readiness polling."""

    def __init__(self, address: str) -> None:
        import grpc

        self.grpc = grpc
        self.channel = grpc.insecure_channel(address, options=[
            ("grpc.initial_reconnect_backoff_ms", 5),
            ("grpc.min_reconnect_backoff_ms", 5),
            ("grpc.max_reconnect_backoff_ms", 20),
        ])

    def close(self) -> None:
        self.channel.close()


class _ProbedServer(Server):
    """A gRPC server that is ready once `ping` gets an answer on a retrying channel."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self._probe: Any = None

    def ping(self, channel) -> bool:
        """One call on `channel`: True if it says the server is ready; raises RpcError
        while it cannot be reached."""
        raise NotImplementedError

    def probe(self) -> bool:
        if self._probe is None:
            self._probe = _GrpcProbe(self.address)
        try:
            return self.ping(self._probe.channel)
        except self._probe.grpc.RpcError:
            return False

    def close_probe(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None

    def start(self, timeout: float = 60.0) -> float:
        try:
            return super().start(timeout)
        finally:
            self.close_probe()


class StrataServer(_ProbedServer):
    system = "strata"

    def __init__(self, root: str, event_loop: str = "uvloop", data_dir: str | None = None) -> None:
        super().__init__(root)
        self.event_loop = event_loop
        self.data_dir = data_dir or os.path.join(root, "data")
        self.starts = 0

    @staticmethod
    def version() -> str | None:
        return report.package_version("strata")

    def command(self) -> tuple[list[str], dict[str, str]]:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self.starts += 1
        self.log_name = f"daemon-{self.starts}.log"
        self.metrics_address = f"127.0.0.1:{free_port()}"
        cmd = [sys.executable, "-m", "strata.server.cli", "serve", "--data-dir", self.data_dir,
               "--grpc-listen", self.address, "--ws-listen", f"127.0.0.1:{free_port()}",
               "--metrics-listen", self.metrics_address]
        # only what we set: a STRATA_* variable of the caller's shell must not change the figures
        env = {k: v for k, v in child_env().items() if not k.startswith("STRATA_")}
        env["STRATA_DURABILITY"] = "always"
        env["STRATA_EVENT_LOOP"] = self.event_loop
        return cmd, env

    def ping(self, channel) -> bool:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        resp = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        return resp.status == health_pb2.HealthCheckResponse.SERVING

    def counters(self) -> dict[str, float]:
        """The engine's counters from the daemon's /metrics (strata_engine_*, unlabelled)."""
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://{self.metrics_address}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out = {}
        for line in text.splitlines():
            if line.startswith("strata_engine_") and "{" not in line:
                name, _, value = line.partition(" ")
                try:
                    out[name.removeprefix("strata_engine_").removesuffix("_total")] = float(value)
                except ValueError:
                    pass
        return out

    def log_figures(self) -> dict[str, Any]:
        """What the daemon's own log says: open/serve/stop times, WAL frames replayed."""
        out: dict[str, Any] = {}
        for rec in self.log_lines():
            msg, logger = str(rec.get("msg", "")), rec.get("logger")
            if logger == "strata.engine" and msg.startswith("opened"):
                out["opened_line"] = msg
                m = re.search(r"(\d+) WAL frames replayed", msg)
                if m:
                    out["replayed_frames"] = int(m.group(1))
                m = re.search(r" in ([\d.]+)s", msg)
                if m:
                    out["engine_open_ms"] = round(float(m.group(1)) * 1e3, 1)
            elif logger == "strata.daemon":
                m = re.match(r"serving in ([\d.]+)s", msg)
                if m:
                    out["serving_in_ms"] = round(float(m.group(1)) * 1e3, 1)
                m = re.match(r"stopped cleanly in ([\d.]+)s", msg)
                if m:
                    out["stopped_in_ms"] = round(float(m.group(1)) * 1e3, 1)
            if rec.get("level") in ("error", "critical") or (
                    rec.get("level") == "warning" and str(logger).startswith("strata")):
                out.setdefault("log_problems", []).append(f"{logger}: {msg}"[:300])
        return out


class CeilingServer(_ProbedServer):
    """bench/server/ceiling.py: empty handlers on Strata's proto (the per-call ceiling)."""

    system = "ceiling"

    @staticmethod
    def version() -> str | None:
        return report.package_version("grpcio")

    def command(self) -> tuple[list[str], dict[str, str]]:
        self.address = f"127.0.0.1:{free_port()}"
        return [sys.executable, "-m", "bench.server.ceiling", "--listen", self.address], child_env()

    def ping(self, channel) -> bool:
        from strata_client._proto import strata_pb2, strata_pb2_grpc

        strata_pb2_grpc.KVStub(channel).Get(strata_pb2.GetRequest(key=b"probe"), timeout=1.0)
        return True


class EtcdServer(_ProbedServer):
    system = "etcd"

    def __init__(self, root: str, stubs: str) -> None:
        super().__init__(root)
        self.stubs = stubs

    @staticmethod
    def missing() -> str | None:
        if not shutil.which("etcd"):
            return "etcd not found on PATH (Debian: apt-get install etcd-server)"
        return None

    @staticmethod
    def version() -> str | None:
        return _first_line_version(["etcd", "--version"], r"etcd Version: (\S+)")

    def command(self) -> tuple[list[str], dict[str, str]]:
        client, peer = free_port(), free_port()
        self.address = f"127.0.0.1:{client}"
        data = os.path.join(self.root, "data")
        cmd = ["etcd", "--name", "bench", "--data-dir", data,
               "--listen-client-urls", f"http://127.0.0.1:{client}",
               "--advertise-client-urls", f"http://127.0.0.1:{client}",
               "--listen-peer-urls", f"http://127.0.0.1:{peer}",
               "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
               "--initial-cluster", f"bench=http://127.0.0.1:{peer}",
               "--initial-cluster-state", "new",
               "--logger", "zap", "--log-level", "warn"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        return cmd, env

    def ping(self, channel) -> bool:
        if self.stubs not in sys.path:
            sys.path.insert(0, self.stubs)
        import etcd_pb2
        import etcd_pb2_grpc

        etcd_pb2_grpc.KVStub(channel).Range(etcd_pb2.RangeRequest(key=b"\0probe"), timeout=1.0)
        return True


class RedisServer(Server):
    def __init__(self, root: str, appendfsync: str) -> None:
        super().__init__(root)
        self.appendfsync = appendfsync
        self.system = f"redis-{appendfsync}"

    @staticmethod
    def missing() -> str | None:
        if not shutil.which("redis-server"):
            return "redis-server not found on PATH (Debian: apt-get install redis-server)"
        try:
            import redis.asyncio  # noqa: F401
        except ImportError:
            return "the redis Python package is not installed (pip install redis hiredis)"
        return None

    @staticmethod
    def version() -> str | None:
        return _first_line_version(["redis-server", "--version"], r"v=(\S+)")

    def command(self) -> tuple[list[str], dict[str, str]]:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        data = os.path.join(self.root, "data")
        os.makedirs(data, exist_ok=True)
        cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", data,
               "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "",
               "--daemonize", "no", "--protected-mode", "yes", "--logfile", ""]
        return cmd, dict(os.environ)

    def probe(self) -> bool:
        host, port = self.address.rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False


def _first_line_version(cmd: list[str], pattern: str) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(pattern, out)
    return m.group(1) if m else (out.strip().splitlines() or [None])[0]


def compile_etcd_stubs(dest: str) -> None:
    """bench/etcd.proto -> dest/etcd_pb2.py, etcd_pb2_grpc.py (grpc_tools.protoc)."""
    from grpc_tools import protoc

    os.makedirs(dest, exist_ok=True)
    rc = protoc.main(["protoc", f"-I{BENCH_DIR}", f"--python_out={dest}",
                      f"--grpc_python_out={dest}", str(BENCH_DIR / "etcd.proto")])
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc failed on bench/etcd.proto (status {rc})")
