"""`python -m strata.server.healthcheck [HOST:PORT] [--server-name NAME]`: exit 0 if SERVING.

Used by the Docker HEALTHCHECK (no grpc_health_probe binary needed in the
image). It reads the daemon's own configuration (STRATA_* variables, and
STRATA_CONFIG for a file), so it speaks TLS when the daemon does, trusting the
daemon's certificate; `--server-name` overrides the name checked against that
certificate when it names neither the address dialled nor localhost. Without
HOST:PORT it dials the configured gRPC port on the loopback interface.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .config import ConfigError, load
from .console import fail


def _channel(target: str, cert_path: str, server_name: str | None) -> grpc.Channel:
    if not cert_path:
        return grpc.insecure_channel(target)
    with open(cert_path, "rb") as f:
        roots = f.read()
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(roots), options)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m strata.server.healthcheck")
    ap.add_argument("target", nargs="?", help="HOST:PORT (default: the configured gRPC port)")
    ap.add_argument("--server-name", help="name to check the daemon's TLS certificate against")
    args = ap.parse_args(argv)
    try:
        cfg, _ = load(os.environ.get("STRATA_CONFIG") or None)
    except ConfigError as e:
        return fail("unhealthy", f"configuration: {e}")
    target = args.target
    if not target:
        host, _, port = cfg.grpc_listen.rpartition(":")
        target = f"{'127.0.0.1' if host in ('', '0.0.0.0', '[::]', '::') else host}:{port}"
    try:
        with _channel(target, cfg.tls_cert, args.server_name) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
    except grpc.RpcError as e:
        return fail("unhealthy", e.code().name)
    except OSError as e:
        return fail("unhealthy", f"cannot read the TLS certificate: {e}")
    if resp.status != health_pb2.HealthCheckResponse.SERVING:
        return fail("unhealthy", health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
