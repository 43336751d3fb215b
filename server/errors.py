"""The error taxonomy and its mapping to gRPC status codes, in one place.

| class          | gRPC code            | when                                              |
|----------------|----------------------|---------------------------------------------------|
| invalid input  | INVALID_ARGUMENT     | bad or oversized key/value/batch; nothing written |
| not found      | NOT_FOUND            | a named resource (not a key) does not exist        |
| conflict       | ABORTED              | compare-and-set mismatch (trailer strata-current-lsn); a consumer's stream superseded by a newer one (strata-superseded) or its consumer deleted (strata-consumer-deleted) |
| not master     | FAILED_PRECONDITION  | write sent to a replica (trailer strata-master)   |
| overload       | RESOURCE_EXHAUSTED   | rate limit, concurrency cap, write stall, disk full |
| timeout        | DEADLINE_EXCEEDED    | the call's deadline passed                        |
| transient      | UNAVAILABLE          | starting, recovering, draining, no master elected or lease lost: retry elsewhere/later (trailer strata-outcome: unknown when a write may or may not survive a failover) |
| out of range   | OUT_OF_RANGE         | history older than the WAL retains (trailer strata-earliest-lsn) |
| internal       | INTERNAL             | a bug, corruption, or a failed disk; a write whose outcome is unknown (trailer strata-outcome: unknown) |

Transient and overload are retryable (with back-off); the client library
retries only those, and writes only when they carry a request id.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from strata.node.errors import (
    ConsumerDeleted,
    InvalidInput,
    NodeError,
    NotFound,
    OutOfRange,
    Overloaded,
    Superseded,
    Unauthenticated,
    Unavailable,
)
from strata.node.subscriptions import Ended
from strata.replication.errors import NoMaster, NotMaster
from strata.storage import errors as se

log = logging.getLogger("strata.rpc")

__all__ = ["CODES", "ConsumerDeleted", "InvalidInput", "NotFound", "OutOfRange", "Overloaded",
           "Superseded", "Unauthenticated", "Unavailable", "classify"]


# The node's errors by identity (node/errors.py); the first class in an error's MRO
# that is here decides its code.
CODES: dict[type, grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Superseded: grpc.StatusCode.ABORTED,
    ConsumerDeleted: grpc.StatusCode.ABORTED,
    OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    NotFound: grpc.StatusCode.NOT_FOUND,
}


def classify(exc: BaseException) -> tuple[grpc.StatusCode, str, tuple]:
    """(code, message, trailing metadata) for any exception raised by a handler."""
    if isinstance(exc, Ended):
        return exc.end.grpc_status, str(exc), exc.trailers
    if isinstance(exc, NodeError):
        code = next((CODES[c] for c in type(exc).__mro__ if c in CODES),
                    grpc.StatusCode.INTERNAL)
        return code, str(exc), exc.trailers
    if isinstance(exc, NotMaster):
        return (grpc.StatusCode.FAILED_PRECONDITION, str(exc),
                (("strata-master", f"{exc.master}={exc.address}"),))
    if isinstance(exc, NoMaster):
        return (grpc.StatusCode.UNAVAILABLE, str(exc),
                (("strata-outcome", "unknown"),) if exc.outcome_unknown else ())
    if isinstance(exc, se.ReadOnly):
        return grpc.StatusCode.UNAVAILABLE, "this node just stopped being master; retry", ()
    if isinstance(exc, se.InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc), ()
    if isinstance(exc, se.Conflict):
        return grpc.StatusCode.ABORTED, str(exc), (("strata-current-lsn", str(exc.current_lsn)),)
    if isinstance(exc, se.WriteStalled):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), ()
    if isinstance(exc, se.Compacted):
        return (grpc.StatusCode.OUT_OF_RANGE, str(exc),
                (("strata-earliest-lsn", str(exc.earliest_lsn)),))
    if isinstance(exc, se.WritesStopped):
        if exc.outcome_unknown:  # not retried by clients: the write may be present
            return grpc.StatusCode.INTERNAL, str(exc), (("strata-outcome", "unknown"),)
        if isinstance(exc, se.NoSpace):  # gRPC's own "the file system is out of space"
            return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), ()
        return grpc.StatusCode.INTERNAL, f"storage failure: {exc}", ()
    if isinstance(exc, se.Closed):
        return grpc.StatusCode.UNAVAILABLE, "server is shutting down; retry on another node or later", ()
    if isinstance(exc, se.Corruption):
        return grpc.StatusCode.INTERNAL, f"storage corruption: {exc}", ()
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded", ()
    log.exception("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}", ()
