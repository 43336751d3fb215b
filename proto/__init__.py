"""The public gRPC interface (`strata.v1`) and its generated stubs."""
