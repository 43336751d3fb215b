"""Distribution of committed records to subscribers: the event hub (bounded per-subscriber
queues, history replayed from the WAL, then live). Shared-memory rings and the delayed and
reliable WebSocket tiers are not built yet."""
