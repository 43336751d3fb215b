"""The bearer token on the wire: how a caller sends it and how a server checks it.

One owner for both sides, as the limits are (limits.py): the client, the daemon's
transports (gRPC, WebSocket) and the replication service between nodes all use
these, so a token is formatted and compared in one place.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

# gRPC metadata key (lower case, as gRPC requires) and HTTP header of the token.
AUTH_METADATA = "authorization"


def bearer(token: str) -> str:
    """The header value that carries `token`."""
    return f"Bearer {token}"


def token_matches(got: str | bytes, tokens: Iterable[str]) -> bool:
    """Whether the header value `got` is `Bearer <t>` for one of the non-empty `tokens`.

    Constant-time in the compared bytes (hmac.compare_digest), so the time a refusal
    takes says nothing about how much of a token was right; every token is compared,
    so neither does which one matched. Any thread; raises nothing.
    """
    raw = got.encode() if isinstance(got, str) else got
    ok = False
    for t in tokens:
        if t and hmac.compare_digest(raw, bearer(t).encode()):
            ok = True
    return ok
