"""The daemon's lifecycle, composed in one place.

start:  gRPC listener up with health NOT_SERVING (so probes get an answer
        while the database recovers), metrics and WebSocket listeners, then
        the engine opened off the loop, then health SERVING and systemd
        READY=1.
run:    SIGHUP reloads the reloadable options and the log level; the systemd
        watchdog is fed while the loop is alive.
hand over: on SIGTERM/SIGINT, a cluster's master first hands its role to its most
        caught-up replica (Cluster.transfer_leadership): writes are redirected
        there, no election timeout passes;
drain:  then health NOT_SERVING, systemd STOPPING=1, new
        calls refused with UNAVAILABLE, subscribers told to resume elsewhere,
        in-flight calls given `drain_timeout_s` to finish;
stop:   listeners closed, then the engine closed (memtable flushed, so the
        next start replays nothing).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import signal
import socket
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from strata.node.node import Node
from strata.replication.cluster import ClusterConfig, ReplicationService, parse_peers
from strata_client._proto import strata_pb2 as pb
from strata_client._proto import strata_pb2_grpc as pbg

from . import config as config_mod
from . import sdnotify
from .config import Config, grpc_message_limit
from .logs import set_level
from .metrics import Metrics
from .service import AdminService, EventsService, Gate, KVService, tolerant_handlers

log = logging.getLogger("strata.daemon")

SERVICES = [d.full_name for d in pb.DESCRIPTOR.services_by_name.values()]
# Health of this node as a replica to read from (Cluster.replica_health); not a service
# of the proto, only a name the health service answers for.
REPLICA_HEALTH = "strata.v1.Replica"


class ListenError(OSError):
    """A listener could not open: which setting, which address (and where the setting
    came from), and why, in one line."""

    def __init__(self, setting: str, address: str, reason: str, source: str = "") -> None:
        self.setting, self.address, self.reason = setting, address, reason
        where = f"{setting}, from {source}" if source and source != "default" else setting
        super().__init__(f"cannot listen on {address} ({where}): {reason}")


def check_listen(setting: str, address: str, source: str = "") -> None:
    """Raise ListenError if `address` (host:port) cannot be bound now.

    gRPC says only "Failed to bind" (and logs the reason itself on stderr): this asks the
    kernel first, with the same SO_REUSEADDR gRPC sets, to say why. A port taken between
    this and the real bind still fails, with gRPC's words.
    """
    host, _, port = address.rpartition(":")
    if int(port) == 0:
        return
    host = host.strip("[]") or None
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ListenError(setting, address, f"cannot resolve {host!r}: {e.strerror}",
                          source) from None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
            except OSError as e:
                if e.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                    continue  # e.g. no IPv6 on this host: the listener decides
                why = e.strerror or str(e)
                if e.errno == errno.EADDRINUSE:
                    why += " (another process holds it)"
                raise ListenError(setting, address, why, source) from None


class Daemon:
    def __init__(self, cfg: Config, config_path: str | None = None,
                 flags: dict | None = None, sources: dict[str, str] | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.flags = flags or {}
        self.sources = sources or {}  # option -> where its value came from, for errors
        self.metrics = Metrics()
        # The node owns the engine, replication and distribution; the daemon owns the
        # listeners and the order things start and stop in.
        self.node = Node(cfg, lambda: dataclasses.asdict(config_mod.engine_options(self.cfg)),
                         self._cluster_config() if cfg.peers else None)
        self.cluster = self.node.cluster
        self.gate = Gate(cfg, self.metrics, self.node)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.ws = None
        self.grpc_port = 0
        self._stop = asyncio.Event()
        self._health_task: asyncio.Task | None = None

    async def _set_health(self, status) -> None:
        for name in ["", *SERVICES]:
            await self.health.set(name, status)
        if self.cluster is not None and status != health_pb2.HealthCheckResponse.SERVING:
            await self.health.set(REPLICA_HEALTH, status)

    def _listen_error(self, setting: str, e: Exception) -> ListenError:
        return ListenError(setting, getattr(self.cfg, setting), str(e),
                           self.sources.get(setting, ""))

    async def start(self) -> None:
        cfg = self.cfg
        t0 = time.monotonic()
        for setting in ("grpc_listen", "ws_listen", "metrics_listen"):
            if getattr(cfg, setting):
                check_listen(setting, getattr(cfg, setting), self.sources.get(setting, ""))
        limit = grpc_message_limit(cfg)
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_time_ms", 60_000),
        ])
        target = tolerant_handlers(server)
        pbg.add_KVServicer_to_server(KVService(self.gate), target)
        pbg.add_EventsServicer_to_server(EventsService(self.gate), target)
        pbg.add_AdminServicer_to_server(AdminService(self.gate), target)
        if self.cluster is not None:
            pbg.add_ReplicationServicer_to_server(ReplicationService(self.cluster, cfg.auth_token),
                                                  server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [*SERVICES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME], server)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            if cfg.tls_cert:
                with open(cfg.tls_key, "rb") as k, open(cfg.tls_cert, "rb") as c:
                    creds = grpc.ssl_server_credentials([(k.read(), c.read())])
                port = server.add_secure_port(cfg.grpc_listen, creds)
            else:
                port = server.add_insecure_port(cfg.grpc_listen)
        except RuntimeError as e:  # grpc's "Failed to bind to address ..."
            raise self._listen_error("grpc_listen", e) from None
        if not port:
            raise self._listen_error("grpc_listen", RuntimeError("gRPC could not bind it"))
        self.grpc_port = port
        if self.cluster is not None and self.cluster.address.endswith(":0"):
            self.cluster.address = self.cluster.address[:-1] + str(port)
            self.cluster.master_address[self.cluster.node_id] = self.cluster.address
        await server.start()
        self.server = server
        if cfg.metrics_listen:
            try:
                self.metrics.serve(cfg.metrics_listen, self.gate)
            except OSError as e:
                raise self._listen_error("metrics_listen", e.strerror or e) from None
        if cfg.ws_listen:
            from .ws import start_ws

            try:
                self.ws = await start_ws(cfg, self.gate)
            except OSError as e:
                raise self._listen_error("ws_listen", e.strerror or e) from None
        log.info("listening: grpc %s, websocket %s, metrics %s; recovering %s",
                 cfg.grpc_listen, cfg.ws_listen or "off", cfg.metrics_listen or "off", cfg.data_dir)
        self.metrics.attach_node(self.node)
        await self.node.open()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._health_task = asyncio.ensure_future(self._watch_writes())
        # A replica's log may be in the middle of a reset (a master ordered a cut while
        # this started): the engine is then None for a moment.
        engine = self.node.engine
        last = engine.last_lsn if engine is not None else 0
        sdnotify.notify(f"READY=1\nSTATUS=serving, last LSN {last}\nMAINPID={os.getpid()}")
        log.info("serving in %.3fs (last LSN %d, durability %s)",
                 time.monotonic() - t0, last, cfg.durability)

    def _cluster_config(self) -> ClusterConfig:
        cfg = self.cfg
        creds = None
        if cfg.tls_cert:
            with open(cfg.tls_cert, "rb") as c:
                creds = grpc.ssl_channel_credentials(c.read())
        conf = ClusterConfig(
            node_id=cfg.node, address=cfg.advertise or cfg.grpc_listen, peers=parse_peers(cfg.peers),
            mode=cfg.replication, heartbeat_interval=cfg.heartbeat_ms / 1000,
            election_timeout=cfg.election_timeout_ms / 1000, token=cfg.auth_token, credentials=creds)
        return conf

    def reload(self) -> None:
        """SIGHUP: re-read file and environment; apply what can change while running."""
        try:
            cfg, _ = config_mod.load(self.config_path, flags=self.flags)
        except config_mod.ConfigError as e:
            log.error("reload refused, keeping the running configuration: %s", e)
            return
        changed = [n for n, (_, reloadable) in config_mod.OPTIONS.items()
                   if reloadable and getattr(cfg, n) != getattr(self.cfg, n)]
        fixed = [n for n, (_, reloadable) in config_mod.OPTIONS.items()
                 if not reloadable and getattr(cfg, n) != getattr(self.cfg, n)]
        for n in changed:
            setattr(self.cfg, n, getattr(cfg, n))
        self.gate.reload(self.cfg)
        self.node.reload()
        set_level(self.cfg.log_level)
        log.info("reloaded: changed %s%s", ", ".join(changed) or "nothing",
                 f"; restart needed for {', '.join(fixed)}" if fixed else "")

    async def _watch_writes(self, every: float = 0.25) -> None:
        """Health follows the engine: NOT_SERVING while writes are stopped (a full disk,
        a failed fsync), SERVING again when they resume. Reads keep being answered."""
        serving = True
        replica_ok: bool | None = None
        while not self.gate.draining:
            if self.cluster is not None and serving:
                why = self.cluster.replica_health(self.cfg.max_replica_lag_ms / 1000)
                if (not why) != replica_ok:
                    replica_ok = not why
                    status = health_pb2.HealthCheckResponse
                    await self.health.set(REPLICA_HEALTH,
                                          status.SERVING if replica_ok else status.NOT_SERVING)
                    log.log(logging.INFO if replica_ok else logging.WARNING,
                            "replica health %s%s", "SERVING" if replica_ok else "NOT_SERVING",
                            f": {why}" if why else "")
            engine = self.node.engine
            err = engine.write_error if engine is not None else None
            if (err is None) != serving:
                serving = err is None
                status = health_pb2.HealthCheckResponse
                await self._set_health(status.SERVING if serving else status.NOT_SERVING)
                replica_ok = None  # _set_health set it too: decide it again
                if serving:
                    log.warning("writes resumed: health SERVING")
                    sdnotify.notify("STATUS=serving")
                else:
                    log.error("writes stopped, health NOT_SERVING: %s", err)
                    sdnotify.notify(f"STATUS=writes stopped: {err}")
            await asyncio.sleep(every)

    async def _watchdog(self, every: float) -> None:
        while True:
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(every)

    async def serve_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        every = sdnotify.watchdog_interval()
        dog = asyncio.ensure_future(self._watchdog(every)) if every else None
        await self._stop.wait()
        if dog is not None:
            dog.cancel()

    def request_stop(self) -> None:
        self._stop.set()

    async def _hand_over(self) -> None:
        """A master stopping hands its role to its most caught-up replica first, as etcd
        does: clients see a redirect, not an election. Calls keep being answered (sent
        on to the new master) meanwhile."""
        c = self.cluster
        if c is None or c.role_term() is None:
            return
        try:
            await c.transfer_leadership(timeout=2 * c.election_timeout)
        except Exception as e:  # NoMaster, or anything else: stop anyway
            log.warning("stopping without handing over: %s", e)

    async def stop(self, started: bool = True) -> None:
        """Hand over, drain, close. `started=False`: undo a start that failed part way
        (nothing was served: no hand-over, no drain, and no claim of a clean stop)."""
        t0 = time.monotonic()
        if started and not self.gate.draining:
            await self._hand_over()
        if started:
            log.info("draining: refusing new calls, %.1fs for calls in flight",
                     self.cfg.drain_timeout_s)
        sdnotify.notify("STOPPING=1")
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.gate.drain()
        if self._health_task is not None:
            self._health_task.cancel()
        await self.node.stop_replication()
        self.node.cut_off_subscribers("server shutting down")
        if self.ws is not None:
            self.ws.close()
        # Let calls in flight finish while the listener still answers (health
        # says NOT_SERVING, new calls get UNAVAILABLE): grpc.aio's stop() would
        # refuse even health checks from its first moment.
        deadline = time.monotonic() + self.cfg.drain_timeout_s
        while (self.gate.calls.active > 0 or self.gate.streams.active > 0) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self.server is not None:
            await self.server.stop(max(0.1, deadline - time.monotonic()))
        if self.ws is not None:
            await self.ws.wait_closed()
        await self.metrics.aclose()
        err = self.node.engine.write_error if self.node.engine is not None else None
        clean = await self.node.close()
        if not started:
            log.info("exiting after the failed start (%s)",
                     "files closed" if clean else "files not closed cleanly, see above")
            return
        if err is not None:
            log.error("stopped in %.3fs; writes had stopped: %s", time.monotonic() - t0, err)
            return
        if clean:
            log.info("stopped cleanly in %.3fs", time.monotonic() - t0)
        else:
            log.error("stopped in %.3fs, not cleanly (see above)", time.monotonic() - t0)


async def run(cfg: Config, config_path: str | None, flags: dict,
              sources: dict[str, str] | None = None) -> int:
    """Start, serve until SIGTERM/SIGINT, stop. Returns the exit status: 0 after a
    stop, 1 when the start failed (one ERROR line says why; no traceback for what the
    operator can fix: an address in use, a file that cannot be opened)."""
    try:
        d = Daemon(cfg, config_path, flags, sources)
    except Exception as e:
        log.error("startup failed: %s", e, exc_info=not isinstance(e, OSError))
        return 1
    try:
        await d.start()
    except Exception as e:
        log.error("startup failed: %s", e, exc_info=not isinstance(e, OSError))
        await d.stop(started=False)
        return 1
    await d.serve_until_signalled()
    await d.stop()
    return 0
