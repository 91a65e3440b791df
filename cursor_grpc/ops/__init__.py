"""The operations commands of `cursor-grpc` (backup, restore, archive,
migrate): argument parsing and what they print. The work itself belongs to
the storage backend (`cursor_grpc.storage.sqlite`). See docs/operations.md."""
