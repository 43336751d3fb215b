"""Typed errors of the Strata client, one per server error class.

Each carries what the caller needs to act: the current LSN of a failed
compare-and-set, the LSN to resume a subscription from, the earliest LSN
still retained, the master's address, the request id of a write whose outcome
is unknown.

Standard library only at import: strata_client.ring (which must run without
grpc, for readers on the daemon's host) raises these same classes. grpc is
imported by `from_rpc_error`, which only a gRPC caller reaches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc


class StrataError(Exception):
    """Base class. `code` is the gRPC status code name; `retryable` says whether
    the same request may succeed later (the client retries those itself)."""

    retryable = False

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class InvalidArgument(StrataError):
    """Bad or oversized input; nothing was written. Fix the request."""


class NotFound(StrataError):
    pass


class Conflict(StrataError):
    """A compare-and-set found another version: `current_lsn` (0: absent)."""

    def __init__(self, message: str, code: str, current_lsn: int) -> None:
        super().__init__(message, code)
        self.current_lsn = current_lsn


class Superseded(Conflict):
    """The named consumer subscribed again elsewhere: this subscription is over (the
    newer one continues from the acknowledgements)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message, code, 0)


class ConsumerDeleted(Conflict):
    """An operator deleted the named consumer (`strata consumers delete`): this
    subscription is over and its cursor gone; subscribing again starts afresh."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message, code, 0)


class NotMaster(StrataError):
    """The node is a replica; `master` names the master as "id=host:port" (may be empty)."""

    def __init__(self, message: str, code: str, master: str) -> None:
        super().__init__(message, code)
        self.master = master


class Overloaded(StrataError):
    """Rate limit, concurrency cap or write stall: back off and retry."""

    retryable = True


class Lapped(Overloaded):
    """A subscription fell behind; resume from `resume_lsn`."""

    def __init__(self, message: str, code: str, resume_lsn: int) -> None:
        super().__init__(message, code)
        self.resume_lsn = resume_lsn


class Unavailable(StrataError):
    """The server is starting, draining or unreachable: retry (elsewhere or later)."""

    retryable = True


class OutcomeUnknown(Unavailable):
    """The call may or may not have been done, and the client could not find out before
    its deadline: the server said so (UNAVAILABLE with trailer `strata-outcome: unknown`,
    e.g. a master that lost its lease with the write on its own log), or the connection
    broke or the deadline passed after the request may have reached a server.

    `request_id` is the write's id ("" for a call without one: publish,
    compare-and-set). Sending the same write again with that id is answered with its
    first LSN by a node that knows the id, instead of writing it twice; or read the key
    to find out. Never raised for a call the client knows was not done."""

    def __init__(self, message: str, code: str = "UNAVAILABLE", request_id: str = "") -> None:
        super().__init__(message, code)
        self.request_id = request_id


class DeadlineExceeded(StrataError):
    """The deadline passed. A write may or may not have happened (use request ids)."""

    retryable = True


class Compacted(StrataError):
    """The requested history is gone; `earliest_lsn` is the oldest still retained."""

    def __init__(self, message: str, code: str, earliest_lsn: int) -> None:
        super().__init__(message, code)
        self.earliest_lsn = earliest_lsn


class Unauthenticated(StrataError):
    pass


class Internal(StrataError):
    """A server-side failure (bug, corruption, failed disk)."""


def _trailer(err: grpc.RpcError, name: str) -> str:
    try:
        for k, v in err.trailing_metadata() or ():
            if k == name:
                return v
    except Exception:  # some RpcErrors (channel-level) carry no metadata
        pass
    return ""


def from_rpc_error(err: grpc.RpcError) -> StrataError:
    import grpc  # here, not at the top: see the module docstring

    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    msg = (err.details() if hasattr(err, "details") else "") or str(err)
    name = code.name if code is not None else "UNKNOWN"
    C = grpc.StatusCode
    if code == C.INVALID_ARGUMENT:
        return InvalidArgument(msg, name)
    if code == C.NOT_FOUND:
        return NotFound(msg, name)
    if code == C.ABORTED:
        if _trailer(err, "strata-superseded"):
            return Superseded(msg, name)
        if _trailer(err, "strata-consumer-deleted"):
            return ConsumerDeleted(msg, name)
        return Conflict(msg, name, int(_trailer(err, "strata-current-lsn") or 0))
    if code == C.FAILED_PRECONDITION:
        return NotMaster(msg, name, _trailer(err, "strata-master"))
    if code == C.RESOURCE_EXHAUSTED:
        resume = _trailer(err, "strata-resume-lsn")
        if resume:
            return Lapped(msg, name, int(resume))
        return Overloaded(msg, name)
    if code == C.UNAVAILABLE:
        if _trailer(err, "strata-outcome") == "unknown":
            return OutcomeUnknown(msg, name)
        return Unavailable(msg, name)
    if code == C.DEADLINE_EXCEEDED:
        return DeadlineExceeded(msg, name)
    if code == C.OUT_OF_RANGE:
        return Compacted(msg, name, int(_trailer(err, "strata-earliest-lsn") or 0))
    if code == C.UNAUTHENTICATED:
        return Unauthenticated(msg, name)
    return Internal(msg, name)
