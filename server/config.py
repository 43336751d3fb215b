"""Configuration: embedded defaults < TOML file < STRATA_* environment < flags.

Every option is a field of `Config` with its default and its documentation
(`OPTIONS`); docs/operations.md is generated from the same table by
`strata config --markdown`. `strata config` prints the effective values and
where each came from.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from strata.storage.errors import InvalidArgument
from strata.storage.options import (
    DURABILITY_MODES,
    MAX_BATCH_BYTES,
    MAX_BATCH_OPS,
    MAX_KEY_SIZE,
    MAX_VALUE_SIZE,
    Options,
)


class ConfigError(ValueError):
    """The configuration is wrong: one or more values missing, malformed or out of range.

    `errors` holds every problem found (each says which option, from where, and why), so
    that one run shows them all rather than the first; str() joins them with "; ".
    """

    def __init__(self, errors: str | list[str]) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("; ".join(self.errors))


class FileMode(int):
    """A file permission mode: written and shown in octal (0o640), read from TOML
    as an integer (write it 0o640) and from the environment as octal digits."""

    def __repr__(self) -> str:
        return f"0o{self:03o}"


def _opt(default: Any, help: str, reload: bool = False, **kw: Any) -> Any:
    """A Config field with its documentation and whether SIGHUP reloads it."""
    return field(default=default, metadata={"help": help, "reload": reload}, **kw)


@dataclass
class Config:
    data_dir: str = _opt("./data", "database directory (created if missing)")
    grpc_listen: str = _opt("127.0.0.1:7400", "gRPC address host:port")
    ws_listen: str = _opt("127.0.0.1:7401", "WebSocket address host:port (empty: disabled)")
    metrics_listen: str = _opt("127.0.0.1:7402", "HTTP address host:port: /metrics, /healthz, "
                               "/v1/*, the status page (empty: off)")
    node: str = field(default_factory=socket.gethostname, metadata={
        "help": "this node's name in status, logs and metrics (default: host name)",
        "reload": False})
    durability: str = _opt("always", "when a write is acknowledged: "
                           + ", ".join(DURABILITY_MODES) + " (docs/durability.md)")
    sync_interval_ms: int = _opt(100, "fsync period of durability=interval")
    memtable_size: int = _opt(8 << 20, "bytes of writes buffered in memory before a flush to L0")
    block_cache_size: int = _opt(64 << 20, "bytes of decoded table blocks cached")
    wal_retention_bytes: int = _opt(64 << 20, "flushed WAL kept for history replay (bytes)")
    consumer_retention_bytes: int = _opt(
        1 << 30, "WAL kept beyond wal_retention_bytes for named consumers that are behind: the "
        "log from the lowest consumer cursor on stays while that extra totals at most this; past "
        "it the oldest goes and that consumer gets `compacted` (bytes; 0: named consumers hold "
        "nothing). docs/protocol.md, \"Consumer retention\"")
    log_level: str = _opt("info", "debug, info, warning, error", True)
    max_key_size: int = _opt(MAX_KEY_SIZE, f"largest key accepted (bytes; at most {MAX_KEY_SIZE})",
                             True)
    max_value_size: int = _opt(4 << 20, f"largest value accepted (bytes; at most {MAX_VALUE_SIZE})",
                               True)
    max_batch_ops: int = _opt(10_000, f"most operations in one Batch / Write request "
                                      f"(at most {MAX_BATCH_OPS})", True)
    max_batch_bytes: int = _opt(16 << 20, f"largest Batch request (bytes of keys and values; "
                                          f"at most {MAX_BATCH_BYTES})", True)
    max_concurrent_calls: int = _opt(
        2048, "unary calls in progress at once; more get RESOURCE_EXHAUSTED", True)
    max_streams: int = _opt(
        512, "streams (Scan, Write, Subscribe) open at once; more get RESOURCE_EXHAUSTED", True)
    rate_limit: float = _opt(0.0, "requests per second per client address; 0: unlimited", True)
    rate_burst: int = _opt(0, "token-bucket burst per client (0: one second of rate_limit)", True)
    default_deadline_s: float = _opt(30.0, "deadline applied to calls that bring none", True)
    request_id_capacity: int = _opt(
        100_000, "request ids remembered for exactly-once retries, the newest (0: none); each "
        "takes ~260 bytes (32 characters). docs/operations.md, \"Request ids\"", True)
    request_id_ttl_s: float = _opt(
        900.0, "how long a request id is remembered after its write (s; 0: until "
        "request_id_capacity newer ones push it out)", True)
    drain_timeout_s: float = _opt(10.0, "on SIGTERM, how long in-flight calls may take to finish",
                                  True)
    subscriber_memory: int = _opt(
        256 << 20, "bytes of events all subscribers together may hold queued; a subscriber "
        "that needs more is cut off with its resume LSN", True)
    subscriber_buffer: int = _opt(
        256 << 10, "bytes a WebSocket subscriber's connection may buffer before events queue "
        "(and its memory counts against subscriber_memory); also its socket's kernel send "
        "buffer (SO_SNDBUF)")
    max_ws_connections: int = _opt(1024, "WebSocket connections open at once; more get 503",
                                   True)
    ws_allowed_origins: str = _opt(
        "", "browser origins allowed to open a WebSocket, exact scheme://host[:port] entries "
        "separated by ',', or '*' for any (empty: only clients that send no Origin header, "
        "i.e. not browsers; any other handshake gets 403). docs/protocol.md, \"Origins\"", True)
    rings: str = _opt("", "shared-memory event rings for readers on this host: "
                      "name[:size[:topic,topic]] entries separated by ';', e.g. "
                      "\"events:64MiB;orders:8MiB:orders\" (docs/protocol.md, \"Event ring\")")
    ring_mode: int = _opt(
        FileMode(0o600), "permissions of each ring's shared-memory file (/dev/shm/<name>) and "
        "doorbell socket; readers open both read-write, so readers in the daemon's group need "
        "0o660. A ring is not behind auth_token: these permissions are its only protection")
    subscriber_queue: int = _opt(10_000, "events buffered per subscriber before it is cut off",
                                 True)
    auth_token: str = _opt(
        "", "shared token required in `authorization: Bearer <token>` (empty: no auth)")
    admin_token: str = _opt("", "token Admin.Checkpoint, Admin.Checkpoints, Admin.Compact, "
                                "Admin.TransferLeader and Admin.DeleteConsumer require instead "
                                "of auth_token (empty: auth_token suffices)")
    backup_dir: str = _opt("", "directory checkpoints (`strata checkpoint NAME`) are written "
                               "into, by relative name (empty: <data_dir>/checkpoints, on the "
                               "same file system: hard links). Under the systemd unit, one "
                               "outside /var/lib/strata needs ReadWritePaths "
                               "(deploy/install.sh --backup-dir)")
    tls_cert: str = _opt("", "PEM certificate chain for gRPC TLS (with tls_key)")
    tls_key: str = _opt("", "PEM private key for gRPC TLS")
    peers: str = _opt("", "the other nodes of a replicated cluster, id=host:port,... (their gRPC "
                          "addresses; empty: a single node, its own master). docs/replication.md")
    replication: str = _opt("quorum", "when a write is answered in a cluster: async (after the "
                                      "master's own durability), quorum (a majority has it "
                                      "durable), sync (every live replica and a majority)")
    advertise: str = _opt("", "this node's gRPC host:port as peers and clients reach it "
                              "(empty: grpc_listen)")
    heartbeat_ms: int = _opt(100, "master heartbeat interval in a cluster (ms)")
    election_timeout_ms: int = _opt(1000, "a replica that hears no master for this long (plus a "
                                          "random part up to as much again) starts an election; "
                                          "the master's lease is 0.8 of it (ms)")
    max_replica_lag_ms: int = _opt(5000, "the gRPC health service `strata.v1.Replica` answers "
                                         "NOT_SERVING on a replica behind the commit point for "
                                         "longer than this, or following no master (ms)",
                                   reload=True)
    engine: dict = field(default_factory=dict, metadata={
        "help": "[engine] table: further engine options by name (storage/options.py), "
                "e.g. l0_compaction_trigger, target_file_size, wal_segment_size",
        "reload": False})


# name -> (help, reloadable on SIGHUP), from the fields themselves
OPTIONS: dict[str, tuple[str, bool]] = {
    f.name: (f.metadata["help"], f.metadata["reload"]) for f in dataclasses.fields(Config)}

ENV_PREFIX = "STRATA_"
_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(name: str, raw: Any, source: str) -> Any:
    default = getattr(Config(), name)
    if isinstance(default, dict):  # the [engine] table: only from the file
        if not isinstance(raw, dict):
            raise ConfigError(f"{name} from {source}: a table is expected, not {raw!r}")
        return dict(raw)
    try:
        if isinstance(default, bool):
            if isinstance(raw, str):
                return raw.strip().lower() in ("1", "true", "yes", "on")
            return bool(raw)
        if isinstance(default, FileMode):
            if isinstance(raw, str):  # "640", "0640" or "0o640": octal, as chmod reads it
                return FileMode(int(raw.strip().lower().removeprefix("0o") or "x", 8))
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise TypeError(raw)
            return FileMode(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} from {source}: {raw!r} is not a {type(default).__name__}") from None


# STRATA_* variables that are not options: read by the CLI, the benches and the tests.
OTHER_VARIABLES = {
    "STRATA_CONFIG": "the TOML file `strata serve`, `strata config` and the health probe read",
    "STRATA_SERVER": "the address client commands (`strata put`, `status`, ...) talk to",
    "STRATA_EVENT_LOOP": "uvloop (default) or asyncio",
    "STRATA_BENCH_DIR": "where benchmarks put their data directories",
    "STRATA_REWRITE": "tests: rewrite the expected output of data-driven tests",
}


def closest_option(name: str) -> str | None:
    """The option (as its variable name when `name` is one) nearest to a misspelt `name`."""
    import difflib

    if name.startswith(ENV_PREFIX):
        known = [ENV_PREFIX + n.upper() for n in _FIELDS if n != "engine"] + list(OTHER_VARIABLES)
    else:
        known = list(_FIELDS)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown(what: str, name: str) -> str:
    near = closest_option(name)
    return f"{what} {name!r}" + (f" (did you mean {near}?)" if near else "")


def load(path: str | None = None, env: dict[str, str] | None = None,
         flags: dict[str, Any] | None = None) -> tuple[Config, dict[str, str]]:
    """Build the effective config; return it with {option: source}.

    Raises ConfigError listing every problem found: unknown options in the file,
    unknown STRATA_* variables, values of the wrong type, values out of range.
    """
    env = os.environ if env is None else env
    cfg = Config()
    sources = {name: "default" for name in _FIELDS}
    errors: list[str] = []

    def put(name: str, raw: Any, source: str, label: str) -> None:
        try:
            setattr(cfg, name, _coerce(name, raw, source))
            sources[name] = label
        except ConfigError as e:
            errors.extend(e.errors)

    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except OSError as e:
            raise ConfigError(f"config file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path}: {e}") from None
        for key, raw in data.items():
            name = key.replace("-", "_")
            if name not in _FIELDS:
                errors.append(f"config file {path}: " + _unknown("unknown option", key))
                continue
            put(name, raw, path, path)
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var in OTHER_VARIABLES:
            continue
        name = var[len(ENV_PREFIX):].lower()
        if name == "engine":
            errors.append(f"{var}: the [engine] table is set in the config file only")
            continue
        if name not in _FIELDS:
            errors.append(_unknown("unknown environment variable", var))
            continue
        put(name, env[var], var, var)
    for name, raw in (flags or {}).items():
        if raw is not None:
            put(name, raw, "flag", "flag --" + name.replace("_", "-"))
    errors += problems(cfg)
    if errors:
        raise ConfigError(errors)
    return cfg, sources


def validate(cfg: Config) -> None:
    """Raise ConfigError listing every problem of `cfg`, if it has any."""
    errors = problems(cfg)
    if errors:
        raise ConfigError(errors)


def problems(cfg: Config) -> list[str]:
    """Every problem of `cfg`, each one line saying which option and why; [] if none."""
    errors: list[str] = []
    if cfg.durability not in DURABILITY_MODES:
        errors.append(f"durability must be one of {', '.join(DURABILITY_MODES)}, "
                      f"not {cfg.durability!r}")
    for name in ("grpc_listen", "ws_listen", "metrics_listen"):
        value = getattr(cfg, name)
        if name != "grpc_listen" and not value:
            continue
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            errors.append(f"{name} must be host:port, not {value!r}")
    for name, low, high in (("max_key_size", 1, MAX_KEY_SIZE), ("max_value_size", 0, MAX_VALUE_SIZE),
                            ("max_batch_bytes", 1, MAX_BATCH_BYTES),
                            ("max_batch_ops", 1, MAX_BATCH_OPS)):
        if not low <= getattr(cfg, name) <= high:
            errors.append(f"{name} must be {low} .. {high}, not {getattr(cfg, name)}")
    try:
        engine_options(cfg)
    except InvalidArgument as e:
        errors.append(f"[engine]: {e}")
    try:
        parse_origins(cfg.ws_allowed_origins)
    except ValueError as e:
        errors.append(f"ws_allowed_origins: {e}")
    if cfg.rings:
        from strata.distribution.ring import parse_rings

        try:
            parse_rings(cfg.rings)
        except ValueError as e:
            errors.append(f"rings: {e}")
    if not 0 <= cfg.ring_mode <= 0o777 or cfg.ring_mode & 0o600 != 0o600:
        # The daemon reopens a ring by name (a stale one at the next start): it
        # needs read and write itself; set-id and sticky bits mean nothing here.
        errors.append(f"ring_mode must be 0o600 .. 0o777 with owner read and write "
                      f"(0o600 set), not {cfg.ring_mode:#o}")
    for name in ("max_batch_ops", "max_concurrent_calls", "max_streams", "subscriber_queue",
                 "subscriber_memory", "subscriber_buffer", "max_ws_connections"):
        if getattr(cfg, name) < 1:
            errors.append(f"{name} must be at least 1")
    if cfg.request_id_capacity < 0 or cfg.request_id_ttl_s < 0:
        errors.append("request_id_capacity and request_id_ttl_s must not be negative")
    if cfg.rate_limit < 0 or cfg.rate_burst < 0:
        errors.append("rate_limit and rate_burst must not be negative")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        errors.append("tls_cert and tls_key go together")
    from strata.replication.cluster import MODES, parse_peers

    # Checked with or without peers: a value that would be refused once peers are added
    # is wrong already.
    if cfg.replication not in MODES:
        errors.append(f"replication must be one of {', '.join(MODES)}, not {cfg.replication!r}")
    if cfg.peers:
        try:
            peers = parse_peers(cfg.peers)
        except ValueError as e:
            errors.append(f"peers: {e}")
        else:
            if cfg.node in peers:
                errors.append(f"peers: node {cfg.node!r} lists itself")
        if not 0 < cfg.heartbeat_ms * 3 <= cfg.election_timeout_ms:
            errors.append("heartbeat_ms must be positive and at most a third of "
                          "election_timeout_ms")
    if cfg.log_level.lower() not in ("debug", "info", "warning", "error"):
        errors.append(f"log_level must be debug, info, warning or error, not {cfg.log_level!r}")
    return errors


ANY_ORIGIN = "*"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalize_origin(origin: str) -> str:
    """An origin as browsers serialize it (RFC 6454 6.1): lower-case scheme and host, no
    default port, so that `HTTP://Example.com:80` in a config matches the header
    `http://example.com`. Raises ValueError for anything but scheme://host[:port]."""
    text = origin.strip()
    parts = urlsplit(text)
    if not parts.scheme or not parts.netloc or "://" not in text:
        raise ValueError(f"{origin!r} is not an origin: write scheme://host[:port], "
                         f"e.g. http://localhost:8000")
    if parts.path or parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError(f"{origin!r}: an origin has no path, query or fragment "
                         f"(not even a trailing '/')")
    if parts.username is not None or parts.password is not None or not parts.hostname:
        raise ValueError(f"{origin!r}: an origin is scheme://host[:port], with no user")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{origin!r}: the port must be a number 0 .. 65535") from None
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal, as the Origin header writes it
    scheme = parts.scheme.lower()
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def parse_origins(text: str) -> frozenset[str]:
    """ws_allowed_origins as a set of normalized origins; `ANY_ORIGIN` in it allows every
    origin (only when written out). Empty text: the empty set (no browser origin at all).
    Raises ValueError saying which entry is wrong and why."""
    if not text.strip():
        return frozenset()
    out = set()
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            raise ValueError(f"an empty entry in {text!r} (entries are separated by one ',')")
        if entry == ANY_ORIGIN:
            out.add(ANY_ORIGIN)
        elif entry.lower() == "null":
            # Sandboxed frames, file:// pages and some redirects all send "null": allowing
            # it would let any of them in.
            raise ValueError("'null' is not an allowed origin: every sandboxed page sends it")
        else:
            out.add(normalize_origin(entry))
    return frozenset(out)


def engine_options(cfg: Config) -> Options:
    """The engine's options: the daemon's own settings, then the [engine] table."""
    given = {"durability": cfg.durability, "sync_interval_ms": cfg.sync_interval_ms,
             "memtable_size": cfg.memtable_size, "block_cache_size": cfg.block_cache_size,
             "wal_retention_bytes": cfg.wal_retention_bytes,
             "wal_hold_bytes": cfg.consumer_retention_bytes}
    clash = sorted(set(given) & set(cfg.engine))
    if clash:
        raise InvalidArgument(f"set {', '.join(clash)} at the top level, not in [engine]")
    return Options.make(**given, **cfg.engine)


def backup_dir(cfg: Config) -> str:
    """Where Admin.Checkpoint writes: `backup_dir`, or <data_dir>/checkpoints by default."""
    return os.path.abspath(cfg.backup_dir or os.path.join(cfg.data_dir, "checkpoints"))


def grpc_message_limit(cfg: Config) -> int:
    """Largest gRPC message the transport accepts: what the engine's own limits could
    ever admit (a full batch, or the largest key and value), plus framing.

    The transport's limit is fixed when the server starts, while the configured
    limits reload on SIGHUP; so the transport admits the most any configuration
    may, and requests over the configured limits get INVALID_ARGUMENT from the
    handlers (a clear error, never RESOURCE_EXHAUSTED, which clients retry).
    """
    del cfg  # deliberately independent of the (reloadable) configured limits
    return max(MAX_BATCH_BYTES, MAX_KEY_SIZE + MAX_VALUE_SIZE) + MAX_BATCH_OPS * 16 + (64 << 10)


def shown(cfg: Config) -> dict[str, Any]:
    """The effective values by option, as `strata config` shows them: tokens masked."""
    out = {}
    for name in _FIELDS:
        value = getattr(cfg, name)
        if name in ("auth_token", "admin_token") and value:
            value = "<set>"
        out[name] = dict(value) if isinstance(value, dict) else value
    return out


def render(cfg: Config, sources: dict[str, str]) -> str:
    """The effective configuration as TOML, each line annotated with its source."""
    lines = ["# effective Strata configuration (value  # source: help)"]
    for name in _FIELDS:
        value = getattr(cfg, name)
        if isinstance(value, dict):
            continue  # tables come after every top-level key, as TOML wants
        if name in ("auth_token", "admin_token") and value:
            value = "<set>"
        lines.append(f"{name} = {toml_value(value)}  # {sources[name]}: {OPTIONS[name][0]}")
    lines.append(f"[engine]  # {sources['engine']}: {OPTIONS['engine'][0]}")
    lines += [f"{k} = {toml_value(v)}" for k, v in sorted(cfg.engine.items())]
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else repr(value)


def markdown() -> str:
    """The options table of docs/operations.md."""
    d = Config()
    rows = ["| option | env | default | reload | meaning |", "|---|---|---|---|---|"]
    for name, (text, reload) in OPTIONS.items():
        default = getattr(d, name) if name != "node" else "host name"
        env = "-" if name == "engine" else f"`{ENV_PREFIX}{name.upper()}`"
        rows.append(f"| `{name}` | {env} | `{default!r}` | "
                    f"{'SIGHUP' if reload else 'restart'} | {text} |")
    return "\n".join(rows) + "\n"
