"""Typed errors raised by the storage engine.

Every error a caller can act on carries what it needs to act: the file and
offset of a corruption, the limit that was exceeded, the LSN that is no longer
retained. The server maps these to gRPC status codes in one place.
"""

from __future__ import annotations

import errno


class StorageError(Exception):
    """Base class of every error raised by `storage`."""


class InvalidArgument(StorageError, ValueError):
    """A caller passed something the engine cannot store (wrong type, too big)."""


class TooLarge(InvalidArgument):
    """A key, value or batch exceeds its configured limit."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is {size} bytes; the limit is {limit} bytes")
        self.what = what
        self.size = size
        self.limit = limit


class Corruption(StorageError):
    """Bytes on disk do not match their checksum or their format.

    `path` names the file and `offset` the byte where the bad record starts, so
    an operator can inspect it; `Engine.open(..., repair=True)` is the explicit
    way to drop what cannot be read.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"corruption in {path} at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class Closed(StorageError):
    """The engine was closed, or failed and refuses further writes."""


class WritesStopped(Closed):
    """The engine stopped taking writes after an I/O error; reads keep working.

    `cause` is the OSError, `path` the file it concerned (when known).
    `resumable` says whether writes come back by themselves once the cause
    is gone (a full disk that gets space again); otherwise a restart is
    needed (a failed fsync: the page cache can no longer be trusted).
    `outcome_unknown` is set on the error returned to the writers of a group
    whose fsync failed: their write may still be present after a restart.
    """

    def __init__(self, message: str, cause: BaseException | None = None, path: str | None = None,
                 resumable: bool = False, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.cause = cause
        self.path = path
        self.resumable = resumable
        self.outcome_unknown = outcome_unknown


class NoSpace(WritesStopped):
    """The disk is full: writes are refused until space is freed, then resume."""


class WriteStalled(StorageError):
    """A write could not proceed within its deadline because L0 is full."""

    def __init__(self, l0_files: int, waited_s: float) -> None:
        super().__init__(
            f"write stopped: {l0_files} L0 files pending compaction, waited {waited_s:.3f}s"
        )
        self.l0_files = l0_files
        self.waited_s = waited_s


class Compacted(StorageError):
    """The requested LSN is older than the oldest retained WAL record."""

    def __init__(self, requested_lsn: int, earliest_lsn: int) -> None:
        super().__init__(
            f"LSN {requested_lsn} is no longer retained; earliest available is {earliest_lsn}"
        )
        self.requested_lsn = requested_lsn
        self.earliest_lsn = earliest_lsn


class Conflict(StorageError):
    """A compare-and-set found the key's current version different from the expectation."""

    def __init__(self, key: bytes, current_lsn: int) -> None:
        super().__init__(
            f"compare-and-set failed: key {key[:64]!r} is at LSN {current_lsn}"
            + (" (absent)" if current_lsn == 0 else "")
        )
        self.key = key
        self.current_lsn = current_lsn


class ReadOnly(StorageError):
    """Writes are refused because the engine follows another node's log (a replica):
    only `Engine.apply_frames` extends it."""


class LogMismatch(StorageError):
    """Frames handed to `Engine.apply_frames` do not continue this log: the first LSN
    is not the next one expected, or the frames skip or repeat an LSN."""

    def __init__(self, expected_lsn: int, got_lsn: int) -> None:
        super().__init__(f"frames start at LSN {got_lsn}; this log continues at {expected_lsn}")
        self.expected_lsn = expected_lsn
        self.got_lsn = got_lsn


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_no_space(e: BaseException) -> bool:
    """Whether `e` says the disk (or the user's quota) is full: work that waits for
    space and resumes, rather than stopping for good."""
    return isinstance(e, OSError) and e.errno in _NO_SPACE
