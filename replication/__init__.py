"""Master-slave replication of WAL frames over gRPC streams, failure detection and failover."""
