"""Limits that the client and the daemon share, defined once.

The daemon (server/, node/) and the client both import these: a request the client
builds within them is never refused by the server for its size, and an error message
names the same number on both sides. Sizes an operator configures (max_key_size,
max_value_size, max_batch_*) are not here: server/config.py holds them, under the
engine's ceilings (storage/options.py).

Changing MAX_TOPIC_BYTES or MAX_REQUEST_ID_CHARS changes what the WAL accepts
(docs/format.md, TYPE_EVENT and the request id grammar): the engine checks the same
numbers (storage/record.py MAX_REQUEST_ID, Engine's event check), and
tests/node/test_limits.py fails when the two disagree.
"""

from __future__ import annotations

# A write's request id: a str of 1 .. 64 characters (docs/format.md, "rid").
MAX_REQUEST_ID_CHARS = 64

# An event topic in UTF-8: 1 .. 1024 bytes (docs/format.md, TYPE_EVENT). It was 256 in
# the server and 1024 in the engine; the format's number won, nothing stored changes.
MAX_TOPIC_BYTES = 1024

# The topic KV writes are published on; Publish refuses it.
KV_TOPIC = "kv"

# A named consumer: 1 .. 200 bytes of UTF-8 (distribution/cursors.py stores it in a key).
MAX_CONSUMER_NAME_BYTES = 200

# One WebSocket message from a client (subscribe, ack, credit): larger ones close 1009.
MAX_WS_MESSAGE_BYTES = 64 << 10

# Keys the daemon keeps for itself (consumer cursors): the KV API refuses them and
# scans never show them.
RESERVED_PREFIX = b"\xff\xffstrata/"
