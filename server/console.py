"""What the command line prints: tables, JSON, sizes and times people read, and the one
line a failure gets.

Every command prints its result on stdout (a table by default, `-o json` for scripts)
and each failure as one line on stderr, `<prefix>: <what>`, with a documented exit
status (docs/operations.md, "Exit status").
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def size(n: int | float, sep: str = " ") -> str:
    """Bytes as people read them: 512 B, 1.5 KiB, 12.0 MiB (powers of 1024). Table cells
    take sep="" (1.5KiB), so that a row still splits into its columns on blanks."""
    if n < 1024:
        return f"{int(n)}{sep}B"
    for unit in _UNITS:
        n /= 1024
        if n < 1024 or unit == _UNITS[-1]:
            return f"{n:.1f}{sep}{unit}"
    raise AssertionError("unreachable")


def when(unix_s: float) -> str:
    """A Unix time as UTC ISO 8601 to the second; "-" for 0 (never)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s)) if unix_s else "-"


def table(rows: Sequence[Sequence[Any]]) -> str:
    """Rows (the first is the header) as columns aligned with two spaces between."""
    cells = [[str(c) for c in row] for row in rows]
    if not cells:
        return ""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n"
                   for row in cells)


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def message_dict(msg: Any) -> dict:
    """A protobuf message as a plain dict with every field (defaults too), by its proto
    names; 64-bit integers stay numbers (json_format would write them as strings)."""
    out: dict[str, Any] = {}
    for f in msg.DESCRIPTOR.fields:
        value = getattr(msg, f.name)
        repeated = f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED
        if f.message_type is not None:
            value = [message_dict(v) for v in value] if repeated else message_dict(value)
        elif repeated:
            value = list(value)
        elif isinstance(value, bytes):
            value = value.hex()
        out[f.name] = value
    return out


def fail(prefix: str, message: str, status: int = 1) -> int:
    """Say what went wrong in one line on stderr; return the exit status to give."""
    print(f"{prefix}: {message}", file=sys.stderr)
    return status
