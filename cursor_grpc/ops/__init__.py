"""Operations: backups and restore, archival, WAL housekeeping, the
scheduler that runs them inside `serve`, and the lock that keeps `restore`
away from a running server. See docs/operations.md."""
