"""The Strata daemon: configuration, CLI, gRPC services (KV, Events, Admin, health,
reflection), WebSocket subscriptions, limits, metrics and lifecycle."""
