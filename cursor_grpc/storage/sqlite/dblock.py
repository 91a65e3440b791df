"""The lock file beside a database: one owning process at a time.

`serve` and `restore` each hold `<db>.lock` with an exclusive `flock` for as
long as they run, and write their PID and purpose into it. A second server
on the same database (whose writer would hand out the same sequence numbers
as the first), a restore under a running server, or a server started on a
half-restored file, fails at once with one line naming the holder. The
kernel drops the lock when a process dies, so a crashed server leaves
nothing stale behind (the PID text may remain; it is only read while the
lock is held by someone).

Commands that write no events and allocate no sequence numbers (`archive`
moving old rows, `create-admin`) run beside a server under SQLite's own
write lock and do not take this one. `restore` also asks SQLite whether any
other connection has the database open (an exclusive-mode transaction fails
while one does), which catches those and the sqlite3 shell.
"""

from __future__ import annotations

import os
from pathlib import Path

from cursor_grpc.storage.contract import DatabaseInUse

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]


def lock_path(db_path: Path) -> Path:
    db_path = Path(db_path)
    return db_path.with_name(db_path.name + ".lock")


class DatabaseLock:
    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.path = lock_path(self.db_path)
        self._fd: int | None = None

    def holder(self) -> str:
        """Who holds the lock, as its file says: `a running server (pid 1234)`."""
        try:
            pid, _, purpose = self.path.read_text().strip().partition(" ")
        except OSError:
            pid, purpose = "", ""
        if not (pid.isascii() and pid.isdigit()):
            return "another process"
        return f"a running server (pid {pid})" if purpose == "serve" else f"cursor-grpc {purpose} (pid {pid})"

    def acquire_exclusive(self, purpose: str) -> DatabaseLock:
        """Own the database (for `purpose`: serve, restore), or fail at once
        naming the process that does."""
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise DatabaseInUse(
                    f"{self.db_path} is held by {self.holder()}; stop it first, or use another database "
                    f"(lock file {self.path})"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {purpose}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> DatabaseLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
