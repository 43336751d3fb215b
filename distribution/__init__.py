"""Distribution of committed records to subscribers (shared-memory rings, WebSocket tiers)."""
