"""Python client for the Strata server.

    from strata_client import Client
    with Client("127.0.0.1:7400") as c:
        lsn = c.put(b"k", b"v")
        c.get(b"k")

Depends only on grpcio and protobuf; `strata_client.errors` holds the typed
errors (Conflict.current_lsn, Lapped.resume_lsn, Compacted.earliest_lsn,
OutcomeUnknown.request_id, ...).

`strata_client.ring` needs nothing but the standard library: importing it (or
`errors`) does not import the gRPC client, which is loaded on first use of the
names below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import errors
from .batching import Batching

if TYPE_CHECKING:
    from .client import AsyncClient, CircuitBreaker, Client, RetryPolicy

__all__ = ["Client", "AsyncClient", "Batching", "RetryPolicy", "CircuitBreaker", "errors"]
_FROM_CLIENT = ("Client", "AsyncClient", "RetryPolicy", "CircuitBreaker")


def __getattr__(name: str) -> Any:
    # PEP 562: grpc is imported with the client, not with the package (ring readers).
    if name in _FROM_CLIENT:
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
