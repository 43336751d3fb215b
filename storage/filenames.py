"""Every file name in a database directory, made and parsed in one place
(LevelDB's db/filename.h). docs/format.md, "Files in a database directory",
lists them; nothing else formats or parses a name.

    wal-<first_lsn:020d>.log     WAL segment named by its first frame's LSN
    wal.next                     the next WAL segment, made ahead of time
    <number:06d>.sst             table
    MANIFEST-<number:06d>        log of version edits
    CURRENT                      names the live manifest
    LOCK                         held while the database is open
    <prefix>-<i>.sst.tmp         a compaction's output before it is installed
    *.tmp                        any temporary; deleted at open

Changing a name breaks existing databases.
"""

from __future__ import annotations

CURRENT = "CURRENT"
LOCK = "LOCK"
NEXT_SEGMENT = "wal.next"
TEMP_SUFFIX = ".tmp"

_WAL_PREFIX = "wal-"
_WAL_SUFFIX = ".log"
_TABLE_SUFFIX = ".sst"
_MANIFEST_PREFIX = "MANIFEST-"
_COMPACTION_PREFIX = "compaction-"


def segment_name(first_lsn: int) -> str:
    """20 digits: enough for any u64, and name order is LSN order."""
    return f"{_WAL_PREFIX}{first_lsn:020d}{_WAL_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """The first LSN a segment's name carries, or None if `name` is no segment."""
    if name.startswith(_WAL_PREFIX) and name.endswith(_WAL_SUFFIX):
        digits = name[len(_WAL_PREFIX): -len(_WAL_SUFFIX)]
        if digits.isdigit():
            return int(digits)
    return None


def table_name(number: int) -> str:
    """At least 6 digits, more if the number needs them."""
    return f"{number:06d}{_TABLE_SUFFIX}"


def parse_table_name(name: str) -> int | None:
    if name.endswith(_TABLE_SUFFIX) and name[: -len(_TABLE_SUFFIX)].isdigit():
        return int(name[: -len(_TABLE_SUFFIX)])
    return None


def manifest_name(number: int) -> str:
    return f"{_MANIFEST_PREFIX}{number:06d}"


def parse_manifest_name(name: str) -> int | None:
    if name.startswith(_MANIFEST_PREFIX) and name[len(_MANIFEST_PREFIX):].isdigit():
        return int(name[len(_MANIFEST_PREFIX):])
    return None


def compaction_prefix(number: int) -> str:
    """The prefix of one compaction's temporary outputs (`compaction_output`)."""
    return f"{_COMPACTION_PREFIX}{number}"


def compaction_output(prefix: str, index: int) -> str:
    return f"{prefix}-{index}{_TABLE_SUFFIX}{TEMP_SUFFIX}"


def is_compaction_output(name: str) -> bool:
    return name.startswith(_COMPACTION_PREFIX) and name.endswith(_TABLE_SUFFIX + TEMP_SUFFIX)


def is_temporary(name: str) -> bool:
    return name.endswith(TEMP_SUFFIX)


def is_database_file(name: str) -> bool:
    """A segment, table or manifest: what only an initialised database holds."""
    return (parse_segment_name(name) is not None or parse_table_name(name) is not None
            or parse_manifest_name(name) is not None)
