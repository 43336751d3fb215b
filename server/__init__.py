"""The Strata daemon: configuration, CLI, lifecycle (gRPC services arrive with the daemon issue)."""
