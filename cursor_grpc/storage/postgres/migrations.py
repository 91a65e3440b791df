"""Numbered SQL migrations for PostgreSQL, with the checksummed ledger.

The files are `migrations/postgres/NNNN_name.sql` (packaged as
`cursor_grpc.sql.postgres`); each is applied in its own transaction
together with its row in `schema_migrations(name, checksum, applied_at)`,
so a failed file changes nothing. The rules comparing files and ledger are
those of SQLite (cursor_grpc/storage/ledger.py): a database holding a
migration this code does not know, or one whose file was edited after it
was applied, is refused.

Several servers may start against one database at once: every transaction
of `migrate` first takes the transaction-scoped advisory lock
`MIGRATION_LOCK_KEY` and re-reads the ledger under it, so migrators
serialize and each file is applied once; the later ones see the work done
and apply nothing. Python migrations (SQLite's chunked rebuilds) have no
place here: PostgreSQL changes a constraint or a column in place.

Every function takes a psycopg 3 sync connection, in autocommit mode or
not; `migrate` needs one with no transaction open. Messages name the
database as `describe_url` does, never with its user or password.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, LiteralString
from urllib.parse import quote

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import tuple_row

from cursor_grpc.clock import now_iso
from cursor_grpc.storage import ledger
from cursor_grpc.storage.contract import MigrationError, Progress
from cursor_grpc.storage.ledger import Migration

__all__ = [
    "LEDGER_DDL", "MIGRATION_LOCK_KEY", "Migration", "applied", "describe_url", "has_tables",
    "load_migrations", "migrate", "migrate_hint", "migrations_dir", "plan", "status", "verify_current",
]

# pg_advisory_xact_lock key held by every migrating transaction: b"cursorMG".
MIGRATION_LOCK_KEY = int.from_bytes(b"cursorMG", "big")

LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text COLLATE "C" PRIMARY KEY,
    checksum   text COLLATE "C" NOT NULL,
    applied_at timestamptz NOT NULL
)
"""

# applied_at as the application's timestamp text, whatever loaders the connection has.
_LEDGER_ROWS = """
SELECT name, checksum, to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
FROM schema_migrations ORDER BY name
"""


def migrations_dir() -> Path:
    """The folder of SQL files: the repository's `migrations/postgres/` when
    run from a checkout, the packaged copy (`cursor_grpc.sql.postgres`) otherwise."""
    checkout = Path(__file__).resolve().parents[3] / "migrations" / "postgres"
    if checkout.is_dir():
        return checkout
    return ledger.package_folder("cursor_grpc.sql.postgres")


def load_migrations(folder: Path | None = None) -> list[Migration]:
    """The migration files, in order; PostgreSQL takes only `.sql` ones."""
    found = ledger.load_migrations(folder or migrations_dir())
    _refuse_python(found)
    return found


def _refuse_python(known: Sequence[Migration]) -> None:
    for migration in known:
        if migration.is_python:
            raise MigrationError(
                f"{migration.name} is a Python migration; the PostgreSQL backend applies only "
                "NNNN_name.sql files (a change PostgreSQL makes in place needs no chunked rebuild)"
            )


def _rows(conn: psycopg.Connection[Any], sql: LiteralString,
          params: Sequence[object] | None = None) -> list[tuple[Any, ...]]:
    # Tuples whatever row factory the connection was opened with.
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(sql, params, prepare=False)
        return cur.fetchall() if cur.description is not None else []


def _has_ledger(conn: psycopg.Connection[Any]) -> bool:
    return bool(_rows(conn, "SELECT to_regclass('schema_migrations') IS NOT NULL")[0][0])


def _read_ledger(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, str]]:
    return {name: (checksum, at) for name, checksum, at in _rows(conn, _LEDGER_ROWS)}


def _lock(conn: psycopg.Connection[Any]) -> None:
    _rows(conn, "SELECT pg_advisory_xact_lock(%s::bigint)", (MIGRATION_LOCK_KEY,))


def applied(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, str]]:
    """name -> (checksum, applied_at) of every migration recorded, without
    writing: a database without a ledger has none."""
    with conn.transaction():
        return _read_ledger(conn) if _has_ledger(conn) else {}


def plan(conn: psycopg.Connection[Any], known: list[Migration]) -> list[Migration]:
    """The pending migrations, after checking the ledger against the files
    (read-only: what `migrate` would apply now)."""
    return ledger.check_ledger(applied(conn), known)


def migrate(conn: psycopg.Connection[Any], known: list[Migration] | None = None,
            progress: Progress | None = None) -> list[str]:
    """Apply every pending migration, each in its own transaction with its
    ledger row, under the migration lock. Returns the names this call
    applied (none when another migrator got there first); `progress` counts
    the pending migrations done."""
    known = load_migrations() if known is None else known
    _refuse_python(known)
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise MigrationError("migrate needs a connection with no transaction open (commit or roll back first): "
                             "each migration commits on its own")
    with conn.transaction():
        _lock(conn)
        conn.execute(LEDGER_DDL, prepare=False)
        pending = ledger.check_ledger(_read_ledger(conn), known)
    applied_now: list[str] = []
    for done in range(len(pending)):
        if progress is not None:
            progress(done, len(pending))
        name = _apply_next(conn, known)
        if name is None:
            break  # another migrator applied the rest meanwhile
        applied_now.append(name)
    if progress is not None and pending:
        progress(len(pending), len(pending))
    return applied_now


def _apply_next(conn: psycopg.Connection[Any], known: list[Migration]) -> str | None:
    """Apply the first migration still pending under the lock, with its
    ledger row, in one transaction; None when nothing is pending any more."""
    with conn.transaction():
        _lock(conn)
        # Re-checked under the lock: another process may have applied some, or a newer version more.
        pending = ledger.check_ledger(_read_ledger(conn), known)
        if not pending:
            return None
        migration = pending[0]
        try:
            # A whole file: without parameters psycopg sends it as one multi-statement query.
            conn.execute(migration.sql.encode(), prepare=False)
        except psycopg.OperationalError:
            raise  # the connection, not the file: let the caller see it as such
        except psycopg.Error as error:
            raise MigrationError(f"{migration.name} failed and changed nothing: {error}") from error
        conn.execute(
            "INSERT INTO schema_migrations(name, checksum, applied_at) VALUES (%s, %s, %s::timestamptz)",
            (migration.name, migration.checksum, now_iso()),
            prepare=False,
        )
    return migration.name


def status(conn: psycopg.Connection[Any], known: list[Migration] | None = None) -> dict[str, list[tuple[str, str]]]:
    """For `migrate --status`, without writing: applied (name, applied_at),
    pending (name, ''), unknown (in the database, not in this version) and
    modified (applied, file changed since)."""
    known = load_migrations() if known is None else known
    return ledger.status_of_ledger(applied(conn), known)


def has_tables(conn: psycopg.Connection[Any]) -> bool:
    """Whether the connection's schema holds any table: something a migration could lose."""
    with conn.transaction():
        return bool(_rows(conn, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables "
                                "WHERE schemaname = current_schema())")[0][0])


def describe_url(url: str) -> str:
    """`postgresql://host[:port]/dbname` for a connection URL or libpq
    `key=value` string: no user, password or other parameter, so it can go
    into a message or a log. A Unix-socket directory is kept as the `host`
    parameter (`postgresql:///dbname?host=/run/postgresql`)."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://(unparsable connection string)"
    host, port, dbname = (params.get(key) for key in ("host", "port", "dbname"))
    return _url(str(host or params.get("hostaddr") or ""), str(port or ""), str(dbname or ""))


def _describe_connection(conn: psycopg.Connection[Any]) -> str:
    info = conn.info
    return _url(info.host, str(info.port) if info.port else None, info.dbname)


def _url(host: str | None, port: str | None, dbname: str | None) -> str:
    hosts = host.split(",") if host else []
    ports = port.split(",") if port else []
    if len(ports) == 1:
        ports *= max(1, len(hosts))
    path = "/" + quote(dbname or "", safe="")
    if any(h.startswith(("/", "@")) for h in hosts):  # Unix-socket directories
        query = "?host=" + quote(",".join(hosts), safe="/,@")
        if ports:
            query += "&port=" + quote(",".join(ports), safe=",")
        return f"postgresql://{path}{query}"
    netloc = []
    for i, h in enumerate(hosts or [""]):
        name = f"[{h}]" if ":" in h else quote(h, safe="")
        netloc.append(f"{name}:{quote(ports[i], safe='')}" if i < len(ports) else name)
    return f"postgresql://{','.join(netloc)}{path}"


def migrate_hint(db: str) -> str:
    """What to run, naming the database (as `describe_url` shows it: add the
    credentials yourself) so that the advice migrates that one."""
    return ledger.migrate_hint(describe_url(db))


def verify_current(conn: psycopg.Connection[Any], known: list[Migration] | None = None, *, db: str = "") -> None:
    """Refuse to serve a database that is behind or ahead of the code; `db`
    (a URL, never shown with its credentials) names it in the message."""
    known = load_migrations() if known is None else known
    pending = plan(conn, known)
    if pending:
        label = describe_url(db) if db else _describe_connection(conn)
        raise ledger.pending_error(label, pending, migrate_hint(db) if db else ledger.migrate_hint(label))
