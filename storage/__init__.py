"""Strata's storage engine: a WAL-backed LSM tree with leveled compaction.

Usable on its own as an embedded library::

    from strata.storage import Engine
    with Engine.open("/var/lib/app/db", durability="always") as db:
        lsn = db.put(b"key", b"value")
        assert db.get(b"key") == b"value"

`storage` imports nothing from the other Strata packages.
"""

from .engine import Engine
from .errors import (
    Closed,
    Compacted,
    Conflict,
    Corruption,
    InvalidArgument,
    LogMismatch,
    NoSpace,
    ReadOnly,
    StorageError,
    TooLarge,
    WritesStopped,
    WriteStalled,
)
from .options import Options
from .reads import Snapshot

__all__ = [
    "Engine", "Options", "Snapshot",
    "StorageError", "InvalidArgument", "TooLarge", "Corruption", "Closed", "WriteStalled", "Compacted",
    "Conflict", "WritesStopped", "NoSpace", "ReadOnly", "LogMismatch",
]
