"""The lock file beside a database that keeps `restore` away from a server.

A server holds `<db>.lock` with a shared `flock` for as long as it runs;
`restore` takes it exclusively (without waiting) and keeps it until the new
file is in place, so a restore never replaces a database under a running
server and a server never starts on a half-restored one. Several servers (or
a server restarting) can share the lock. The kernel drops it when a process
dies, so a crashed server leaves nothing stale behind.

`restore` also asks SQLite whether any other connection has the database open
(an exclusive-mode transaction fails while one does), which catches processes
that do not take this lock, such as the sqlite3 shell or a running `archive`.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]


class DatabaseInUse(RuntimeError):
    """Another process holds the database (or is restoring it)."""


def lock_path(db_path: Path) -> Path:
    db_path = Path(db_path)
    return db_path.with_name(db_path.name + ".lock")


class DatabaseLock:
    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.path = lock_path(self.db_path)
        self._fd: int | None = None

    def _take(self, exclusive: bool) -> None:
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if exclusive:
                    raise DatabaseInUse(
                        f"{self.db_path} is held by a running server; stop it before restoring"
                    ) from None
                raise DatabaseInUse(f"{self.db_path} is being restored; start the server when that is done") from None
        self._fd = fd

    def acquire_shared(self) -> DatabaseLock:
        """For a server: many may hold it, a restore may not start."""
        self._take(exclusive=False)
        return self

    def acquire_exclusive(self) -> DatabaseLock:
        """For restore: fails at once if any server holds the database."""
        self._take(exclusive=True)
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> DatabaseLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
