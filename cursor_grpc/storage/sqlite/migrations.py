"""Numbered SQL migrations with a checksummed ledger.

Files `NNNN_name.sql` are applied in order, each inside `BEGIN IMMEDIATE …
COMMIT`, recording name, checksum and `applied_at` in `schema_migrations`.
A database holding a migration this code does not know, or one whose file
was edited after it was applied, is refused: running against it could
corrupt data written by a newer or different version.

A migration may also be a Python file `NNNN_name.py` defining
`migrate(conn, record)`: it manages its own transactions (for changes too
large for one, see cursor_grpc/storage/sqlite/rebuild.py) and calls `record(conn)`
inside its last transaction, so the change and its ledger row commit
together. Its checksum is that of its source text.

The rules comparing the files with the ledger are shared with the PostgreSQL
backend (cursor_grpc/storage/ledger.py); this module reads and writes the
ledger of an SQLite database.
"""

from __future__ import annotations

from pathlib import Path

import apsw

from cursor_grpc.clock import now_iso
from cursor_grpc.config import StorageSettings
from cursor_grpc.storage import ledger
from cursor_grpc.storage.contract import MigrationError, Progress
from cursor_grpc.storage.ledger import Migration
from cursor_grpc.storage.sql.connection import fetch_all
from cursor_grpc.storage.sqlite.connection import open_connection

__all__ = [
    "LEDGER_DDL", "Migration", "applied", "has_tables", "load_migrations", "migrate", "migrate_hint",
    "migrations_dir", "pending_of", "plan", "status", "status_of", "verify_current",
]

LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       TEXT PRIMARY KEY,
    checksum   TEXT NOT NULL,
    applied_at TEXT NOT NULL
)
"""


def migrations_dir() -> Path:
    """The folder of SQL files: the repository's `migrations/` when run from
    a checkout, the packaged copy otherwise."""
    checkout = Path(__file__).resolve().parents[3] / "migrations"
    if checkout.is_dir():
        return checkout
    return ledger.package_folder("cursor_grpc.sql")


def load_migrations(folder: Path | None = None) -> list[Migration]:
    return ledger.load_migrations(folder or migrations_dir())


def applied(conn: apsw.Connection) -> dict[str, tuple[str, str]]:
    """name -> (checksum, applied_at) of every migration recorded. A
    read-only connection to a database without a ledger sees none."""
    has_ledger = fetch_all(conn, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'")
    if not has_ledger:
        if conn.readonly("main"):
            return {}
        conn.execute(LEDGER_DDL)
    rows = conn.execute("SELECT name, checksum, applied_at FROM schema_migrations")
    return {name: (checksum, at) for name, checksum, at in rows}


def plan(conn: apsw.Connection, known: list[Migration]) -> list[Migration]:
    """The pending migrations, after checking the ledger against the files."""
    return ledger.check_ledger(applied(conn), known)


def migrate(conn: apsw.Connection, known: list[Migration] | None = None,
            progress: Progress | None = None) -> list[str]:
    """Apply every pending migration on `conn` (the writer's connection, or a
    connection of its own before the server starts). Returns the names
    applied; `progress` counts the pending migrations done."""
    known = load_migrations() if known is None else known
    applied_now = []
    pending = plan(conn, known)
    for done, migration in enumerate(pending):
        if progress is not None:
            progress(done, len(pending))
        if migration.is_python:
            _apply_python(conn, migration)
            applied_now.append(migration.name)
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-check under the write lock: another process may have applied it.
            if fetch_all(conn, "SELECT 1 FROM schema_migrations WHERE name = ?", (migration.name,)):
                conn.execute("ROLLBACK")
                continue
            conn.execute(migration.sql)
            conn.execute(
                "INSERT INTO schema_migrations(name, checksum, applied_at) VALUES (?, ?, ?)",
                (migration.name, migration.checksum, now_iso()),
            )
            conn.execute("COMMIT")
        except BaseException:
            if not conn.getautocommit():
                conn.execute("ROLLBACK")
            raise
        applied_now.append(migration.name)
    if progress is not None and pending:
        progress(len(pending), len(pending))
    return applied_now


def _apply_python(conn: apsw.Connection, migration: Migration) -> None:
    namespace: dict[str, object] = {"__name__": f"cursor_migration_{migration.name[:4]}"}
    # The file is part of this release, like the .sql files beside it.
    exec(compile(migration.sql, migration.name, "exec"), namespace)  # noqa: S102
    run = namespace.get("migrate")
    if not callable(run):
        raise MigrationError(f"{migration.name} defines no migrate(conn, record) function")

    def record(inner: apsw.Connection) -> None:
        inner.execute(
            "INSERT INTO schema_migrations(name, checksum, applied_at) VALUES (?, ?, ?)",
            (migration.name, migration.checksum, now_iso()),
        )

    try:
        run(conn, record)
    except apsw.Error as error:
        raise MigrationError(f"{migration.name} failed and changed nothing: {error}") from error
    if not fetch_all(conn, "SELECT 1 FROM schema_migrations WHERE name = ?", (migration.name,)):
        raise MigrationError(f"{migration.name} finished without recording itself; its change may be incomplete")


def status(conn: apsw.Connection, known: list[Migration] | None = None) -> dict[str, list[tuple[str, str]]]:
    """For `migrate --status`, without writing: applied (name, applied_at),
    pending (name, ''), unknown (in the database, not in this version) and
    modified (applied, file changed since)."""
    known = load_migrations() if known is None else known
    has_ledger = fetch_all(conn, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'")
    done: dict[str, tuple[str, str]] = {}
    if has_ledger:
        done = {name: (checksum, at) for name, checksum, at in
                conn.execute("SELECT name, checksum, applied_at FROM schema_migrations ORDER BY name")}
    return ledger.status_of_ledger(done, known)


def migrate_hint(db: Path | str) -> str:
    """What to run, naming the database the command was given, so that the
    advice migrates that one and never creates another."""
    return ledger.migrate_hint(str(db))


def verify_current(conn: apsw.Connection, known: list[Migration] | None = None, *, db: Path | str = "") -> None:
    """Refuse to serve a database that is behind or ahead of the code; `db`
    names it in the hint."""
    known = load_migrations() if known is None else known
    pending = plan(conn, known)
    if pending:
        raise ledger.pending_error(str(db or "the database"), pending, migrate_hint(db or conn.filename))


def status_of(settings: StorageSettings, known: list[Migration]) -> dict[str, list[tuple[str, str]]]:
    """`status` of the database file, read-only; a file that does not exist
    yet has every migration pending."""
    if not Path(settings.path).exists():
        return ledger.all_pending(known)
    conn = open_connection(settings, readonly=True)
    try:
        return status(conn, known)
    finally:
        conn.close()


def pending_of(settings: StorageSettings, known: list[Migration]) -> list[Migration]:
    """The migrations `migrate` would apply to the (existing) file, read-only."""
    conn = open_connection(settings, readonly=True)
    try:
        has_ledger = fetch_all(conn, "SELECT 1 FROM sqlite_master WHERE name = 'schema_migrations'")
        return plan(conn, known) if has_ledger else known
    finally:
        conn.close()


def has_tables(path: Path) -> bool:
    """Whether the file holds any table: something a migration could lose."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return bool(fetch_all(conn, "SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1"))
    finally:
        conn.close()
