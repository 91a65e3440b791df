"""One module per gRPC service: validate, call the store, convert with
`cursor_grpc.wire`. What several of them need is in `common`; no service
module imports another."""
