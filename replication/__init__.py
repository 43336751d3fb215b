"""Master-slave replication of WAL frames over gRPC streams, failure detection and
failover: not built yet (a node is its own master). It will ship and apply frames through
`Engine.read_log` and the commit listeners."""
