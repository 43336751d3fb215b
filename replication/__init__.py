"""Master-replica replication of WAL frames over gRPC streams, with elections, terms and
leases for failover (docs/replication.md). Built on the engine's public replication API
(`apply_frames`, `term_history`, `read_log`, commit listeners, `open(truncate_after=)`)."""
