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


class ConfigError(ValueError):
    """A configuration value is missing, malformed or out of range; says which and why."""


@dataclass
class Config:
    data_dir: str = "./data"
    grpc_listen: str = "127.0.0.1:7400"
    ws_listen: str = "127.0.0.1:7401"
    metrics_listen: str = "127.0.0.1:7402"
    node: str = field(default_factory=socket.gethostname)
    durability: str = "always"
    sync_interval_ms: int = 100
    memtable_size: int = 8 << 20
    block_cache_size: int = 64 << 20
    wal_retention_bytes: int = 64 << 20
    log_level: str = "info"
    max_key_size: int = 64 << 10
    max_value_size: int = 4 << 20
    max_batch_ops: int = 10_000
    max_batch_bytes: int = 16 << 20
    max_concurrent_calls: int = 2048
    max_streams: int = 512
    rate_limit: float = 0.0
    rate_burst: int = 0
    default_deadline_s: float = 30.0
    drain_timeout_s: float = 10.0
    subscriber_queue: int = 10_000
    auth_token: str = ""
    admin_token: str = ""
    backup_dir: str = ""
    tls_cert: str = ""
    tls_key: str = ""


# name -> (help, reloadable on SIGHUP)
OPTIONS: dict[str, tuple[str, bool]] = {
    "data_dir": ("database directory (created if missing)", False),
    "grpc_listen": ("gRPC address host:port", False),
    "ws_listen": ("WebSocket address host:port (empty: disabled)", False),
    "metrics_listen": ("Prometheus /metrics address host:port (empty: disabled)", False),
    "node": ("this node's name in status, logs and metrics (default: host name)", False),
    "durability": ("when a write is acknowledged: always (after fsync), interval, none", False),
    "sync_interval_ms": ("fsync period of durability=interval", False),
    "memtable_size": ("bytes of writes buffered in memory before a flush to L0", False),
    "block_cache_size": ("bytes of decoded table blocks cached", False),
    "wal_retention_bytes": ("flushed WAL kept for history replay (bytes)", False),
    "log_level": ("debug, info, warning, error", True),
    "max_key_size": ("largest key accepted (bytes)", True),
    "max_value_size": ("largest value accepted (bytes)", True),
    "max_batch_ops": ("most operations in one Batch / Write request", True),
    "max_batch_bytes": ("largest Batch request (bytes of keys and values)", True),
    "max_concurrent_calls": ("unary calls in progress at once; more get RESOURCE_EXHAUSTED", True),
    "max_streams": ("streams (Scan, Write, Subscribe) open at once; more get RESOURCE_EXHAUSTED", True),
    "rate_limit": ("requests per second per client address; 0: unlimited", True),
    "rate_burst": ("token-bucket burst per client (0: one second of rate_limit)", True),
    "default_deadline_s": ("deadline applied to calls that bring none", True),
    "drain_timeout_s": ("on SIGTERM, how long in-flight calls may take to finish", True),
    "subscriber_queue": ("events buffered per subscriber before it is cut off", True),
    "auth_token": ("shared token required in `authorization: Bearer <token>` (empty: no auth)", False),
    "admin_token": ("token Admin.Checkpoint and Admin.Compact require instead of auth_token "
                    "(empty: auth_token suffices)", False),
    "backup_dir": ("directory Admin.Checkpoint writes into, by relative name "
                   "(empty: <data_dir>/checkpoints, on the same file system: hard links)", False),
    "tls_cert": ("PEM certificate chain for gRPC TLS (with tls_key)", False),
    "tls_key": ("PEM private key for gRPC TLS", False),
}

ENV_PREFIX = "STRATA_"
_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# The engine refuses limits past its frame size; so does the config, earlier.
_ENGINE_MAX_VALUE = 16 << 20
_ENGINE_MAX_BATCH = 31 << 20


def _coerce(name: str, raw: Any, source: str) -> Any:
    default = getattr(Config(), name)
    try:
        if isinstance(default, bool):
            if isinstance(raw, str):
                return raw.strip().lower() in ("1", "true", "yes", "on")
            return bool(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} from {source}: {raw!r} is not a {type(default).__name__}") from None


def load(path: str | None = None, env: dict[str, str] | None = None,
         flags: dict[str, Any] | None = None) -> tuple[Config, dict[str, str]]:
    """Build the effective config; return it with {option: source}."""
    env = os.environ if env is None else env
    cfg = Config()
    sources = {name: "default" for name in _FIELDS}
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path}: {e}") from None
        for key, raw in data.items():
            name = key.replace("-", "_")
            if name not in _FIELDS:
                raise ConfigError(f"config file {path}: unknown option {key!r}")
            setattr(cfg, name, _coerce(name, raw, path))
            sources[name] = path
    for name in _FIELDS:
        var = ENV_PREFIX + name.upper()
        if var in env:
            setattr(cfg, name, _coerce(name, env[var], var))
            sources[name] = var
    for name, raw in (flags or {}).items():
        if raw is not None:
            setattr(cfg, name, _coerce(name, raw, "flag"))
            sources[name] = "flag --" + name.replace("_", "-")
    validate(cfg)
    return cfg, sources


def validate(cfg: Config) -> None:
    if cfg.durability not in ("always", "interval", "none"):
        raise ConfigError(f"durability must be always, interval or none, not {cfg.durability!r}")
    for name in ("grpc_listen", "ws_listen", "metrics_listen"):
        value = getattr(cfg, name)
        if name != "grpc_listen" and not value:
            continue
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"{name} must be host:port, not {value!r}")
    if not 1 <= cfg.max_key_size <= 64 << 10:
        raise ConfigError("max_key_size must be 1 .. 65536")
    if not 0 <= cfg.max_value_size <= _ENGINE_MAX_VALUE:
        raise ConfigError(f"max_value_size must be 0 .. {_ENGINE_MAX_VALUE}")
    if not 1 <= cfg.max_batch_bytes <= _ENGINE_MAX_BATCH:
        raise ConfigError(f"max_batch_bytes must be 1 .. {_ENGINE_MAX_BATCH}")
    for name in ("max_batch_ops", "max_concurrent_calls", "max_streams", "subscriber_queue"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    if cfg.rate_limit < 0 or cfg.rate_burst < 0:
        raise ConfigError("rate_limit and rate_burst must not be negative")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise ConfigError("tls_cert and tls_key go together")
    if cfg.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level must be debug, info, warning or error, not {cfg.log_level!r}")


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
    return max(_ENGINE_MAX_BATCH, (64 << 10) + _ENGINE_MAX_VALUE) + 100_000 * 16 + (64 << 10)


def render(cfg: Config, sources: dict[str, str]) -> str:
    """The effective configuration as TOML, each line annotated with its source."""
    lines = ["# effective Strata configuration (value  # source: help)"]
    for name in _FIELDS:
        value = getattr(cfg, name)
        if name in ("auth_token", "admin_token") and value:
            value = "<set>"
        text = f'"{value}"' if isinstance(value, str) else repr(value)
        lines.append(f"{name} = {text}  # {sources[name]}: {OPTIONS[name][0]}")
    return "\n".join(lines) + "\n"


def markdown() -> str:
    """The options table of docs/operations.md."""
    d = Config()
    rows = ["| option | env | default | reload | meaning |", "|---|---|---|---|---|"]
    for name, (text, reload) in OPTIONS.items():
        default = getattr(d, name) if name != "node" else "host name"
        rows.append(f"| `{name}` | `{ENV_PREFIX}{name.upper()}` | `{default!r}` | "
                    f"{'SIGHUP' if reload else 'restart'} | {text} |")
    return "\n".join(rows) + "\n"
