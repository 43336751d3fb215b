"""Errors a client can act on when a node cannot serve a call as master."""

from __future__ import annotations


class NotMaster(Exception):
    """This node is a replica: the call belongs on the master named here
    (FAILED_PRECONDITION with the trailer `strata-master: id=host:port`)."""

    def __init__(self, master: str, address: str) -> None:
        super().__init__(f"not the master: send writes and linearizable reads to {master} "
                         f"at {address} (or set stale_ok for a read)")
        self.master = master
        self.address = address


class NoMaster(Exception):
    """No master can serve the call now: none is elected, or this one lost its lease or
    is starting its term (UNAVAILABLE: retry). `outcome_unknown` is set when a write was
    written here but its replication could not be confirmed: it may survive or not."""

    def __init__(self, reason: str, outcome_unknown: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome_unknown = outcome_unknown
