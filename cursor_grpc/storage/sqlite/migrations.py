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
"""

from __future__ import annotations

import ast
import hashlib
import importlib.resources
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import apsw

from cursor_grpc.clock import now_iso
from cursor_grpc.config import StorageSettings
from cursor_grpc.storage.contract import MigrationError, Progress
from cursor_grpc.storage.sqlite.connection import fetch_all, open_connection

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.(sql|py)$")

LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       TEXT PRIMARY KEY,
    checksum   TEXT NOT NULL,
    applied_at TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def is_python(self) -> bool:
        return self.name.endswith(".py")

    def describe(self) -> str:
        """What it does, for `migrate --dry-run`: the SQL, or a Python
        migration's docstring."""
        if not self.is_python:
            return self.sql.strip()
        doc = ast.get_docstring(ast.parse(self.sql)) or "(a Python migration without a docstring)"
        return f"Python migration, run in its own transactions:\n{doc}"


def migrations_dir() -> Path:
    """The folder of SQL files: the repository's `migrations/` when run from
    a checkout, the packaged copy otherwise."""
    checkout = Path(__file__).resolve().parents[3] / "migrations"
    if checkout.is_dir():
        return checkout
    return Path(str(importlib.resources.files("cursor_grpc.sql")))


def load_migrations(folder: Path | None = None) -> list[Migration]:
    folder = folder or migrations_dir()
    found = []
    for path in sorted([*folder.glob("*.sql"), *folder.glob("*.py")]):
        if path.name == "__init__.py":
            continue
        if not _NAME.match(path.name):
            raise MigrationError(f"migration file {path.name} is not named NNNN_lowercase_name.sql (or .py)")
        found.append(Migration(path.name, path.read_text(encoding="utf-8")))
    numbers = [m.name[:4] for m in found]
    if len(set(numbers)) != len(numbers):
        raise MigrationError("two migration files share a number")
    return found


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
    done = applied(conn)
    by_name = {m.name: m for m in known}
    unknown = sorted(set(done) - set(by_name))
    if unknown:
        raise MigrationError(
            f"the database has migrations this version does not know: {', '.join(unknown)}; "
            "run a version of cursor-grpc that includes them"
        )
    for name, (checksum, _) in done.items():
        if by_name[name].checksum != checksum:
            raise MigrationError(
                f"migration {name} was applied but its file has been modified since; "
                "restore the original file and add a new migration instead"
            )
    return [m for m in known if m.name not in done]


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
    by_name = {m.name: m for m in known}
    return {
        "applied": [(name, at) for name, (_, at) in sorted(done.items())],
        "pending": [(m.name, "") for m in known if m.name not in done],
        "unknown": [(name, at) for name, (_, at) in sorted(done.items()) if name not in by_name],
        "modified": [(name, at) for name, (checksum, at) in sorted(done.items())
                     if name in by_name and by_name[name].checksum != checksum],
    }


def migrate_hint(db: Path | str) -> str:
    """What to run, naming the database the command was given, so that the
    advice migrates that one and never creates another."""
    quoted = shlex.quote(str(db))
    return f"run `cursor-grpc migrate --db {quoted}` first, or serve with `cursor-grpc serve --migrate --db {quoted}`"


def verify_current(conn: apsw.Connection, known: list[Migration] | None = None, *, db: Path | str = "") -> None:
    """Refuse to serve a database that is behind or ahead of the code; `db`
    names it in the hint."""
    known = load_migrations() if known is None else known
    pending = plan(conn, known)
    if pending:
        raise MigrationError(
            f"{db or 'the database'}: {len(pending)} migration(s) pending ({pending[0].name} first); "
            f"{migrate_hint(db or conn.filename)}"
        )


def status_of(settings: StorageSettings, known: list[Migration]) -> dict[str, list[tuple[str, str]]]:
    """`status` of the database file, read-only; a file that does not exist
    yet has every migration pending."""
    if not Path(settings.path).exists():
        return {"applied": [], "pending": [(m.name, "") for m in known], "unknown": [], "modified": []}
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
