"""Where a replica's log meets the master's: the handshake's decision, as pure functions.

Both logs are described by their term history, [(term, first LSN)] runs. Two frames
at the same LSN with the same term are the same frame (one master per term writes
each LSN once; replicas copy its frames), and so is everything before them (Raft's
log matching property). The logs therefore agree up to the last LSN where their
terms agree; after it the replica holds a tail the master never had (a former
master's unreplicated writes), which must be cut before frames can follow.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

Terms = tuple[tuple[int, int], ...]


def term_at(terms: Terms, lsn: int) -> int:
    i = bisect_right(terms, lsn, key=lambda t: t[1]) - 1
    return terms[i][0] if i >= 0 else 0


def common_lsn(a: Terms, a_last: int, b: Terms, b_last: int) -> int:
    """The last LSN up to which two logs hold the same frames."""
    end = min(a_last, b_last)
    points = sorted({1} | {lsn for _, lsn in a if lsn <= end} | {lsn for _, lsn in b if lsn <= end})
    for p in points:  # terms are constant between consecutive points on both sides
        if p > end:
            break
        if term_at(a, p) != term_at(b, p):
            return p - 1
    return end


@dataclass(frozen=True)
class Plan:
    """What the master tells a replica after its Hello."""

    from_lsn: int  # the first LSN the master sends
    truncate_after: int | None = None  # cut the replica's log after this LSN first
    resync: bool = False  # no common point the master can continue from: a checkpoint
    reason: str = ""


def plan(master_terms: Terms, master_last: int, master_earliest: int,
         replica_terms: Terms, replica_last: int, replica_flushed: int) -> Plan:
    """Decide how a replica continues. `master_earliest` is the oldest LSN the master's
    WAL still returns (0: none retained); `replica_flushed` is as far down as the
    replica can cut its log (what its tables hold cannot be cut)."""
    common = common_lsn(master_terms, master_last, replica_terms, replica_last)

    def retained(first: int) -> bool:  # can the master send frames from `first` on?
        return first > master_last or (master_earliest and first >= master_earliest)

    if common == replica_last:
        if retained(common + 1):
            return Plan(common + 1)
        return Plan(common + 1, resync=True,
                    reason=f"the replica needs LSN {common + 1}; the master's log starts at "
                           f"{master_earliest}")
    if common < replica_flushed:
        return Plan(common + 1, resync=True,
                    reason=f"the logs part after LSN {common}, below the replica's tables "
                           f"(flushed to {replica_flushed})")
    if not retained(common + 1):
        return Plan(common + 1, resync=True,
                    reason=f"the logs part after LSN {common}; the master's log starts at "
                           f"{master_earliest}")
    return Plan(common + 1, truncate_after=common,
                reason=f"the replica's LSNs {common + 1}..{replica_last} were never the "
                       f"master's: cut")
