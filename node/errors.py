"""Errors the node raises to a transport, each carrying what the caller needs.

Transports map them: server/errors.py to gRPC status codes (one table), server/ws.py
to close codes through node.subscriptions.End. Trailers are (key, value) pairs that a
transport sends with the error (gRPC trailing metadata), e.g. strata-resume-lsn.
"""

from __future__ import annotations


class NodeError(Exception):
    """Base of the node's errors; `trailers` go to the caller with the message."""

    def __init__(self, message: str, trailers: tuple = ()) -> None:
        super().__init__(message)
        self.trailers = trailers


class InvalidInput(NodeError):
    """Bad or oversized input; nothing was written."""


class Overloaded(NodeError):
    """A limit of the node was reached (rate, concurrency, streams, a slow subscriber)."""


class Superseded(NodeError):
    """A named consumer subscribed again elsewhere; this stream is over."""


class ConsumerDeleted(NodeError):
    """An operator deleted the named consumer this stream served; the stream is over."""


class OutOfRange(NodeError):
    """History older than the log holds, with a message naming what the caller asked
    for (a named consumer's cursor); trailer strata-earliest-lsn as for Compacted."""


class Unavailable(NodeError):
    """Starting, reopening or draining: retry later or elsewhere."""


class Unauthenticated(NodeError):
    """A missing or wrong token."""


class NotFound(NodeError):
    """A named resource (not a key) does not exist."""
