"""One module per gRPC service: validate, call the store, convert."""
