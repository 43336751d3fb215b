"""One node: owns the engine and wires it to replication and distribution.

`Node` (node.py) opens, reopens and closes the engine and attaches every commit
listener in one place; `kv` (one function per KV and Events operation, with the
admission checks and request ids), `subscriptions` (a consumer's lifecycle for any
transport, and the `End` codes) and `status` (typed figures for Admin.Status and the
metrics) are the facades the transports in server/ call. Nothing here speaks gRPC,
WebSocket or HTTP. docs/architecture.md draws the layers.
"""
