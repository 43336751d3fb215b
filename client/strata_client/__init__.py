"""Python client for the Strata server.

    from strata_client import Client
    with Client("127.0.0.1:7400") as c:
        lsn = c.put(b"k", b"v")
        c.get(b"k")

Depends only on grpcio and protobuf; `strata_client.errors` holds the typed
errors (Conflict.current_lsn, Lapped.resume_lsn, Compacted.earliest_lsn,
OutcomeUnknown.request_id, ...).
"""

from . import errors
from .batching import Batching
from .client import AsyncClient, CircuitBreaker, Client, RetryPolicy

__all__ = ["Client", "AsyncClient", "Batching", "RetryPolicy", "CircuitBreaker", "errors"]
