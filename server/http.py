"""HTTP on metrics_listen: the metrics, health, the status JSON and the status page.

    GET /metrics          Prometheus text format (no token: a scraper's business)
    GET /healthz          200 "serving", 503 with the reason (no token; the event loop
                          is asked, and one that does not answer in 1 s is a 503)
    GET /v1/status        this node, its peers as it sees them, subscribers, consumers,
                          rings, disk and write state (JSON: node/status.py's Overview)
    GET /v1/connections   one entry per WebSocket connection or gRPC stream (JSON)
    GET /v1/cluster       every node of the cluster as it answers Admin.Status itself,
                          asked now (a replica knows little of the other nodes), beside
                          this node's view of it; a node that does not answer is down
    GET /v1/events        the live event tail, as Server-Sent Events
    GET /                 the status page (server/static/index.html, no build step)
    anything else         404; any method but GET and HEAD 405 (OPTIONS too: no
                          preflight is answered), and the connection is closed

Threads. A ThreadingHTTPServer on its own thread, one thread per connection, so the
event loop never serves HTTP. At most MAX_CONNECTIONS connections at a time (each
holds a thread); one more is answered 503 and closed at once, from the accepting
thread. A connection that sends nothing for REQUEST_TIMEOUT_S (a request left half
sent, an idle keep-alive) is closed, freeing its place. Figures the loop changes are read on the loop: the
handler asks it (run_coroutine_threadsafe) and waits at most STATUS_TIMEOUT_S,
answering 503 if the loop does not answer in time (/metrics then leaves the node's
figures out, keeping the process and request metrics).

Access. With auth_token set, everything but /metrics and /healthz takes the data
token (or the admin token) as `Authorization: Bearer <token>` or, for a browser,
`?token=<token>` (the page passes its own on to its requests); the check is the
WebSocket port's. The same paths take only a Host that names this listener: its
address, `localhost`, a loopback address, any address literal when it listens on every
address, or the host of a ws_allowed_origins entry; any other is refused (403), so that
a page whose name was made to resolve to this address (DNS rebinding) reads nothing.
A request carrying an Origin other than this server's own (`http://<Host>`, the Host
being one of those) is refused (403) unless ws_allowed_origins admits it, as on the
WebSocket port.

The event tail. One hub subscription on the loop, running while any /v1/events
client is connected, fills a ring of the last TAIL_EVENTS events; each client reads
from it at its own pace. Overflow: a client that falls more than TAIL_EVENTS
behind is sent a `gap` event (how many it missed) and goes on from the oldest
event kept; the hub subscription itself lapped (the loop fell behind) is a `gap`
too. At most MAX_EVENT_STREAMS clients at a time (each holds a thread): one more
is answered 503. A client that stops reading (a write to it does not complete within
STREAM_SEND_TIMEOUT_S) has its stream ended, freeing its place.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import hashlib
import ipaddress
import json
import logging
import re
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from strata.distribution.hub import Lapped
from strata.node.status import Figures, Member, connection_status, figures, node_status, overview
from strata_client._proto import strata_pb2 as pb
from strata_client._proto import strata_pb2_grpc as pbg
from strata_client.auth import AUTH_METADATA

from .config import ANY_ORIGIN, parse_origins
from .ws import _authorised, origin_allowed

log = logging.getLogger("strata.http")

STATUS_TIMEOUT_S = 2.0
HEALTH_TIMEOUT_S = 1.0  # /healthz: a loop that does not answer within this is unhealthy
# The tail keeps TAIL_EVENTS events of at most 2 * TAIL_VALUE_BYTES of text and a few
# hundred bytes of dict each: under 1 MiB.
TAIL_EVENTS = 1000
TAIL_VALUE_BYTES = 200  # keys and values are cut to this many bytes in the tail
TAIL_BACKLOG = 50  # events a new client is sent from before it connected
MAX_EVENT_STREAMS = 16
MAX_CONNECTIONS = 64  # threads the HTTP server may hold, event streams included
STREAM_SEND_TIMEOUT_S = 10.0  # an event stream whose client takes nothing this long ends
REQUEST_TIMEOUT_S = 10.0  # a connection silent this long while a request is read is closed
MEMBER_TIMEOUT_S = 0.5  # a node that does not answer Admin.Status within this is down
CLOSE_TIMEOUT_S = 2.0  # at stop, a channel to a peer is given this long to close
KEEPALIVE_S = 15.0
PAGE = Path(__file__).with_name("static") / "index.html"


def _text(b: bytes) -> str:
    cut = b[:TAIL_VALUE_BYTES]
    s = cut.decode("utf-8", errors="replace")
    return s + "…" if len(b) > TAIL_VALUE_BYTES else s


class EventTail:
    """The last TAIL_EVENTS committed events, numbered from 1, for /v1/events.

    Filled on the event loop by one hub subscription while any client is attached
    (`attach` / `detach`: an idle page costs the commit path nothing); read from the
    HTTP threads under `cond`. The hub's own bound on the subscription is TAIL_EVENTS
    events; lapped, it resubscribes and records a gap, as it does when it starts
    again after an idle spell (what was committed meanwhile is not shown).

    An event's id is `<boot>:<number>`: `boot` tells this process's numbers from a
    previous one's, so a browser reconnecting after a restart starts afresh.
    """

    def __init__(self, hub, loop: asyncio.AbstractEventLoop) -> None:
        self.hub = hub
        self.loop = loop
        self.boot = time.time_ns() // 1_000_000
        self.cond = threading.Condition()
        self.items: collections.deque[tuple[int, dict]] = collections.deque(maxlen=TAIL_EVENTS)
        self.seq = 0  # number of the last item
        self.closed = False
        self.clients = 0
        self._generation = 0  # of the subscription asked for (HTTP threads, under cond)
        self._running = 0  # of the subscription running (set on the loop, under cond)
        self._task: asyncio.Future | None = None  # event loop only

    # -- HTTP threads
    def attach(self, timeout: float = STATUS_TIMEOUT_S) -> None:
        """Count a client in and return once the subscription runs: every event
        committed after this returns is in the tail. Pair with `detach`."""
        with self.cond:
            self.clients += 1
            if self.clients == 1 and not self.closed:
                self._generation += 1
                self.loop.call_soon_threadsafe(self._start, self._generation)
            gen = self._generation
            self.cond.wait_for(lambda: self._running >= gen or self.closed, timeout)

    def detach(self) -> None:
        with self.cond:
            self.clients -= 1
            if self.clients == 0 and not self.closed:
                self.loop.call_soon_threadsafe(self._stop)

    def start_after(self, last_event_id: str | None, backlog: int) -> int:
        """The number a client starts after: the one its Last-Event-ID names (of this
        process), else `backlog` items before the newest."""
        with self.cond:
            boot, _, n = (last_event_id or "").partition(":")
            if boot == str(self.boot) and n.isascii() and n.isdigit() and int(n) <= self.seq:
                return int(n)
            return max(0, self.seq - backlog)

    def read(self, after: int, timeout: float) -> tuple[int, list[tuple[int, dict]]]:
        """(missed, items): the items numbered after `after`, waiting up to `timeout`
        for one; `missed` counts those no longer kept."""
        with self.cond:
            if self.seq <= after and not self.closed:
                self.cond.wait(timeout)
            if not self.items or self.seq <= after:
                return 0, []
            first = self.items[0][0]
            missed = max(0, first - after - 1)
            return missed, [it for it in self.items if it[0] > after]

    # -- event loop
    def _start(self, generation: int) -> None:
        if self.closed:
            return
        if self._task is None:
            sub = self.hub.subscribe(None, b"", TAIL_EVENTS)
            if self.seq:
                self._push({"type": "gap", "reason": "the tail starts again: events "
                            "committed while no one watched are not shown"})
            self._task = asyncio.ensure_future(self._run(sub))
        with self.cond:
            self._running = generation
            self.cond.notify_all()

    def _stop(self) -> None:
        with self.cond:
            idle = self.clients == 0
        if idle and self._task is not None:
            self._task.cancel()
            self._task = None

    def _push(self, item: dict) -> None:
        with self.cond:
            self.seq += 1
            self.items.append((self.seq, item))
            self.cond.notify_all()

    async def _run(self, sub) -> None:
        while True:
            try:
                while True:
                    ev = await sub.get()
                    self._push({"type": "event", "lsn": ev.lsn, "ts": ev.ts,
                                "topic": ev.topic, "key": _text(ev.key),
                                "value": None if ev.deleted else _text(ev.value),
                                "deleted": ev.deleted})
            except Lapped as e:
                if self.closed:  # cut off at shutdown: no new subscription
                    return
                self._push({"type": "gap", "resume_lsn": e.resume_lsn, "reason": e.reason})
                await asyncio.sleep(0.1)  # cut off again at once: do not spin
            finally:
                self.hub.unsubscribe(sub)
            if self.closed:
                return
            sub = self.hub.subscribe(None, b"", TAIL_EVENTS)

    def close(self) -> None:
        """Event loop: stop the subscription and wake every reader, which then ends
        its stream."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        with self.cond:
            self.closed = True
            self.cond.notify_all()


def _page_policy(page: bytes) -> str:
    """The page's Content-Security-Policy: its own inline script and style (by hash)
    and requests to this server, nothing else."""
    def hashes(tag: bytes) -> str:
        blocks = re.findall(b"<%s>(.*?)</%s>" % (tag, tag), page, re.DOTALL)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b).digest()).decode()}'"
                        for b in blocks) or "'none'"
    return (f"default-src 'none'; script-src {hashes(b'script')}; "
            f"style-src {hashes(b'style')}; connect-src 'self'; img-src 'self' data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


# Every answer: no Referer with the ?token= of the page's URL, no type sniffing, and
# (but the page's own, _page_policy) nothing to run or load.
SECURITY_HEADERS = {"Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
                    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'"}


def _host_name(host: str) -> str | None:
    """The name in a Host header, lower case, without port or brackets; None if it is
    not one."""
    try:
        return urlsplit("//" + host).hostname
    except ValueError:
        return None


def _json_default(o):
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    raise TypeError(f"{type(o).__name__} is not JSON")


class StatusServer:
    """The HTTP listener. `start()` binds (OSError when it cannot) and serves on a
    thread; `aclose()` stops it. Both from the loop's thread."""

    def __init__(self, listen: str, registry, gate, version: str) -> None:
        self.listen = listen
        self.registry = registry
        self.gate = gate  # gate.cfg (reloadable), gate.node, gate.draining
        self.version = version
        self.loop = asyncio.get_running_loop()
        self.tail = EventTail(gate.node.hub, self.loop)
        self.event_streams = 0
        self.connections = 0  # under _lock
        self._lock = threading.Lock()
        self._origins: tuple[str, frozenset[str]] = ("", frozenset())
        self._hosts: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
        host = (listen.rpartition(":")[0].strip("[]") or "127.0.0.1").lower()
        self.listen_host = host
        self.listen_any = host in ("0.0.0.0", "::")
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}  # event loop only
        self._closing = False  # aclose() began: no new channel

    @property
    def port(self) -> int:
        return self._server.server_port if self._server is not None else 0

    def start(self) -> None:
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        outer = self

        class Handler(_Handler):
            server_ref = outer

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True  # an event stream's thread must not hold up the exit
            request_queue_size = 128  # listen backlog (socketserver's 5 drops bursts)

            def handle_error(self, request, client_address) -> None:
                # socketserver prints the traceback to stderr; a client that went away
                # (reset, broken pipe) is normal use, anything else is logged with its cause
                exc = sys.exc_info()[1]
                if isinstance(exc, ConnectionError):
                    log.debug("%s: %s", client_address[0], exc)
                else:
                    log.error("HTTP request from %s failed", client_address[0], exc_info=True)

            def process_request(self, request, client_address) -> None:
                with outer._lock:
                    admit = outer.connections < MAX_CONNECTIONS
                    outer.connections += admit
                if not admit:
                    _refuse(request)
                    self.shutdown_request(request)
                    return
                try:
                    super().process_request(request, client_address)
                except BaseException:  # no thread started: it will not give its place back
                    with outer._lock:
                        outer.connections -= 1
                    raise

            def process_request_thread(self, request, client_address) -> None:
                try:
                    super().process_request_thread(request, client_address)
                finally:
                    with outer._lock:
                        outer.connections -= 1

        srv = Server((host, int(port)), Handler)  # OSError: the daemon names the address
        self._server = srv
        self._thread = threading.Thread(target=srv.serve_forever, name="strata-http",
                                        daemon=True)
        self._thread.start()

    async def aclose(self) -> None:
        """Event loop; returns once the peers' channels are closed (each given
        CLOSE_TIMEOUT_S, failures logged) and the listener is shut down. Never blocks
        the loop: the HTTP server's shutdown, which waits up to its 0.5 s poll, runs
        on an executor thread."""
        self.tail.close()
        self._closing = True  # a /v1/cluster still being answered opens no channel
        srv, self._server = self._server, None
        serving = self._thread is not None and self._thread.is_alive()
        if srv is not None:
            def stop() -> None:
                if serving:  # shutdown() waits for serve_forever, which may never have run
                    srv.shutdown()
                srv.server_close()
            await self.loop.run_in_executor(None, stop)
        channels = list(self._channels.items())
        self._channels.clear()
        results = await asyncio.gather(
            *(asyncio.wait_for(ch.close(), CLOSE_TIMEOUT_S) for _, ch in channels),
            return_exceptions=True)
        for (address, _), r in zip(channels, results):
            if isinstance(r, BaseException):
                log.warning("closing the status channel to %s failed: %r", address, r)

    # -- read from the HTTP threads

    def ask(self, fn, timeout: float = STATUS_TIMEOUT_S):
        """fn(node) run on the event loop; TimeoutError if it does not answer in time."""
        node = self.gate.node

        async def call():
            return fn(node)

        return self.ask_async(call, timeout)

    async def members(self) -> list[Member]:
        """Event loop: this node and every peer, each asked for its Admin.Status at
        once (MEMBER_TIMEOUT_S each, all together)."""
        node, cfg = self.gate.node, self.gate.cfg
        me = node_status(node) if node.serving is not None else None
        r = me.replication if me is not None else {}
        mine = Member(node=cfg.node, address=node.cluster.address if node.cluster else
                      cfg.grpc_listen, seen_as="self", reachable=me is not None,
                      error="" if me is not None else "starting",
                      role=r.get("role", ""), term=r.get("term", 0), master=r.get("master", ""),
                      last_lsn=me.last_lsn if me else 0, applied_lsn=me.applied_lsn if me else 0,
                      commit_lsn=r.get("commit_lsn", 0), lease=bool(r.get("lease")),
                      writable=bool(me and me.writable))
        if node.cluster is None:
            return [mine]
        seen = {p["node"]: p["state"] for p in node.cluster.status()["peers"]}
        peers = node.cluster.conf.peers
        answers = await asyncio.gather(*(self._ask_peer(a) for a in peers.values()),
                                       return_exceptions=True)
        out = [mine]
        for (pid, addr), st in zip(peers.items(), answers):
            if isinstance(st, BaseException):
                err = st.details() if isinstance(st, grpc.aio.AioRpcError) else str(st)
                out.append(Member(node=pid, address=addr, seen_as=seen.get(pid, "unknown"),
                                  reachable=False, error=err or type(st).__name__))
            else:
                out.append(Member(node=pid, address=addr, seen_as=seen.get(pid, "unknown"),
                                  reachable=True, role=st.role, term=st.term, master=st.master,
                                  last_lsn=st.last_lsn, applied_lsn=st.applied_lsn,
                                  commit_lsn=st.commit_lsn, lease=st.lease,
                                  writable=st.writable))
        return out

    async def _ask_peer(self, address: str) -> pb.StatusResponse:
        ch = self._channels.get(address)
        if ch is None:
            if self._closing:
                raise ConnectionError("the node is stopping")
            creds = self.gate.node.cluster.conf.credentials
            ch = (grpc.aio.secure_channel(address, creds) if creds is not None
                  else grpc.aio.insecure_channel(address))
            self._channels[address] = ch
        token = self.gate.cfg.auth_token
        md = ((AUTH_METADATA, f"Bearer {token}"),) if token else None
        return await pbg.AdminStub(ch).Status(pb.StatusRequest(), timeout=MEMBER_TIMEOUT_S,
                                              metadata=md)

    def figures(self) -> Figures | None:
        """For /metrics: the node's figures, or None (logged) if the loop did not answer
        in time, so that a scrape still has the process and request metrics."""
        try:
            return self.ask(figures)
        except TimeoutError:
            log.warning("metrics: the event loop did not answer within %gs; the node's "
                        "figures are left out of this scrape", STATUS_TIMEOUT_S)
            return None
        except RuntimeError:  # the loop is closed: stopping
            return None

    def ask_async(self, coro_fn, timeout: float = STATUS_TIMEOUT_S):
        """coro_fn() awaited on the event loop; TimeoutError past `timeout`."""
        fut = asyncio.run_coroutine_threadsafe(coro_fn(), self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def allowed_origins(self) -> frozenset[str]:
        text = self.gate.cfg.ws_allowed_origins
        if self._origins[0] != text:
            self._origins = (text, parse_origins(text))  # validated at load: cannot raise
        return self._origins[1]

    def host_allowed(self, host: str | None) -> bool:
        """Whether a Host header names this listener (the module's docstring says which
        do). No Host at all is not a browser (every browser sends one): allowed."""
        if host is None:
            return True
        name = _host_name(host)
        if name is None:
            return False
        if name in ("localhost", self.listen_host):
            return True
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            # A name: only those the operator gave as allowed origins.
            origins = self.allowed_origins()
            if self._hosts[0] is not origins:
                self._hosts = (origins, frozenset(_host_name(o.partition("://")[2]) or ""
                                                  for o in origins))
            return ANY_ORIGIN in origins or name in self._hosts[1]
        # An address literal cannot be rebound: a page's origin is then that address.
        return ip.is_loopback or self.listen_any

    def health(self) -> tuple[int, str]:
        """For /healthz (an HTTP thread): asked of the event loop, so that a loop that
        does not answer within HEALTH_TIMEOUT_S is not reported as serving."""
        try:
            return self.ask(lambda _: self._health(), HEALTH_TIMEOUT_S)
        except TimeoutError:
            return 503, "event loop not answering"
        except RuntimeError:  # the loop is closed: stopping
            return 503, "stopping"

    def _health(self) -> tuple[int, str]:
        node, gate = self.gate.node, self.gate
        engine = node.serving
        if gate.draining:
            return 503, "draining"
        if engine is None:
            return 503, "starting"
        err = engine.write_error
        if err is not None:
            return 503, f"writes stopped: {err}"
        return 200, "serving"


_TOKEN_IN_QUERY = re.compile(r"([?&;]token=)[^&;\s'\"]*", re.IGNORECASE)
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Connection: close\r\nContent-Length: %d\r\n\r\n%s")


def _refuse(sock: socket.socket) -> None:
    """Answer 503 on a connection beyond MAX_CONNECTIONS without a thread: never blocks
    (what does not fit in the socket's buffer is dropped). What the client already sent
    is read first, so that closing does not reset the connection under the answer."""
    body = b"more than %d connections open: try again\n" % MAX_CONNECTIONS
    try:
        sock.setblocking(False)
        try:
            sock.recv(65536)
        except BlockingIOError:
            pass
        sock.send(_BUSY % (len(body), body))
    except OSError:
        pass


class _Handler(BaseHTTPRequestHandler):
    server_ref: StatusServer
    protocol_version = "HTTP/1.1"
    server_version = "strata"
    timeout = REQUEST_TIMEOUT_S  # StreamRequestHandler sets it on the socket

    def log_message(self, format, *args) -> None:  # noqa: A002 (the base class's name)
        # Request lines carry `?token=` (the page's own requests do): never logged.
        log.debug("%s %s", self.address_string(), _TOKEN_IN_QUERY.sub(r"\1***", format % args))

    def _send(self, code: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self._answered = True
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _plain(self, code: int, text: str) -> None:
        self._send(code, (text + "\n").encode(), "text/plain; charset=utf-8")

    def _json(self, obj, extra: dict) -> None:
        body = json.dumps(obj, default=_json_default).encode()
        self._send(200, body, "application/json", extra)

    def do_HEAD(self) -> None:
        self.do_GET()

    def parse_request(self) -> bool:
        """The base class's, and then any method but GET and HEAD is a 405 (the base
        class would answer 501 to one it has no do_ method for)."""
        if not super().parse_request():
            return False
        if self.command in ("GET", "HEAD"):
            return True
        # The body is not read: the connection ends with the answer, so that what the
        # body holds is never taken for the next request (a desync behind a proxy).
        self.close_connection = True
        self._send(405, b"only GET and HEAD\n", "text/plain; charset=utf-8",
                   {"Allow": "GET, HEAD", "Connection": "close"})
        return False

    def _admit(self) -> dict | None:
        """Origin and token; None when refused (the answer is sent)."""
        srv = self.server_ref
        host = self.headers.get("Host")
        if not srv.host_allowed(host):
            log.warning("http request from %s refused: Host %r does not name this listener",
                        self.address_string(), host)
            self._plain(403, f"Host {host!r} does not name this server: use its address, "
                             "or add the name to ws_allowed_origins")
            return None
        origin = self.headers.get("Origin")
        extra: dict = {}
        if origin is not None and origin != f"http://{self.headers.get('Host', '')}":
            ok, _ = origin_allowed(srv.allowed_origins(), self)
            if not ok:
                log.warning("http request from %s refused: origin %r is not in "
                            "ws_allowed_origins", self.address_string(), origin)
                self._plain(403, "origin not allowed (ws_allowed_origins)")
                return None
            extra = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if not _authorised(srv.gate.cfg, self):
            self._plain(401, "missing or wrong token: send `Authorization: Bearer <token>` "
                             "or ?token=")
            return None
        return extra

    def do_GET(self) -> None:
        srv = self.server_ref
        path = urlsplit(self.path).path
        self._answered = False  # set once a status line is sent: no second one after it
        try:
            if path == "/metrics":
                self._send(200, generate_latest(srv.registry), CONTENT_TYPE_LATEST)
                return
            if path == "/healthz":
                self._plain(*srv.health())
                return
            if path not in ("/", "/index.html", "/v1/status", "/v1/connections", "/v1/cluster",
                            "/v1/events"):
                self._plain(404, "not found: try /, /metrics, /healthz, /v1/status, "
                                 "/v1/cluster, /v1/connections, /v1/events")
                return
            extra = self._admit()
            if extra is None:
                return
            if path in ("/", "/index.html"):
                page = PAGE.read_bytes()
                self._send(200, page, "text/html; charset=utf-8",
                           {**extra, "Content-Security-Policy": _page_policy(page)})
            elif path == "/v1/status":
                ov = srv.ask(overview)
                self._json({"version": srv.version, "now_unix_s": time.time(),
                            "draining": srv.gate.draining, **dataclasses.asdict(ov)}, extra)
            elif path == "/v1/connections":
                self._json({"connections": srv.ask(connection_status)}, extra)
            elif path == "/v1/cluster":
                self._json({"members": srv.ask_async(srv.members)}, extra)
            else:
                self._events(extra)
        except TimeoutError:
            if self._answered:  # a send timed out (a stream's client that does not read)
                self.close_connection = True
            else:
                self._plain(503, f"the event loop did not answer within {STATUS_TIMEOUT_S:g}s")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            log.exception("http %s failed", path)
            self.close_connection = True
            if not self._answered:
                try:
                    self._plain(500, "internal error (see the server's log)")
                except OSError:
                    pass

    def _client_gone(self) -> bool:
        """Whether the client closed its end (readable at EOF); it sends nothing else.
        poll, not select: select cannot take a descriptor past 1023."""
        sock = self.connection
        try:
            p = select.poll()
            p.register(sock, select.POLLIN)
            if not p.poll(0):
                return False
            return sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _events(self, extra: dict) -> None:
        srv = self.server_ref
        with srv._lock:
            if srv.event_streams >= MAX_EVENT_STREAMS:
                self._plain(503, f"more than {MAX_EVENT_STREAMS} event streams open")
                return
            srv.event_streams += 1
        tail = srv.tail
        tail.attach()
        try:
            after = tail.start_after(self.headers.get("Last-Event-ID"), TAIL_BACKLOG)
            self._answered = True
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            for k, v in {**SECURITY_HEADERS, **extra}.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command == "HEAD":
                return
            self.close_connection = True  # no Content-Length: the stream ends the connection
            self.connection.settimeout(STREAM_SEND_TIMEOUT_S)  # each write: TimeoutError past it
            self.wfile.write(b"retry: 1000\n\n")
            self.wfile.flush()
            quiet_since = time.monotonic()
            while not tail.closed and not srv.gate.draining:
                missed, items = tail.read(after, 1.0)
                if not missed and not items:
                    # A client that went away frees its slot within a second, not at
                    # the next write; a quiet stream gets a comment now and then.
                    if self._client_gone():
                        return
                    if time.monotonic() - quiet_since < KEEPALIVE_S:
                        continue
                quiet_since = time.monotonic()
                out = []
                if missed:
                    out.append(b"data: %s\n\n" % json.dumps(
                        {"type": "gap", "missed": missed,
                         "reason": "this client fell behind the tail"}).encode())
                for seq, item in items:
                    out.append(b"id: %d:%d\ndata: %s\n\n" % (tail.boot, seq,
                                                               json.dumps(item).encode()))
                    after = seq
                try:
                    self.wfile.write(b"".join(out) or b": keepalive\n\n")
                except TimeoutError:
                    log.info("event stream to %s ended: it took nothing for %gs",
                             self.address_string(), STREAM_SEND_TIMEOUT_S)
                    return
        finally:
            tail.detach()
            with srv._lock:
                srv.event_streams -= 1
