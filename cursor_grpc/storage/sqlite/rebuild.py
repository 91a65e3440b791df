"""Large table changes in chunks: new table, backfill in chunks, swap.

SQLite can add a column in place, but changing a constraint, a column type or
the table's options means building a new table and moving the rows. Doing
that in one `INSERT INTO new SELECT * FROM old` holds the write lock for the
whole copy and writes the whole table to the WAL in one transaction.
`rebuild_table` does it in bounded steps instead:

1. create `<table>__rebuild` from the new definition, plus three triggers on
   the old table that mirror every insert, update and delete into it, plus a
   progress row in `cursor_rebuild_progress` (one transaction);
2. backfill: copy `chunk_rows` rows at a time in rowid order, each chunk in
   its own short transaction that also records how far it got, so a crash
   resumes where it stopped and writes made meanwhile (by anyone) are never
   lost (the triggers carry them);
3. swap, in one transaction: drop the triggers and the old table, rename the
   new one, recreate the old table's indexes and triggers (their SQL is taken
   from the schema, so indexes added by later migrations survive), carry over
   the AUTOINCREMENT counter, check foreign keys, and (for a migration)
   record it in the ledger, so the swap and "migration applied" commit
   together.

Used by a Python migration (`migrations/NNNN_name.py` defining
`migrate(conn, record)`); see migrations/0005_interactions_payload_object.py.
Only rowid tables are supported (every table of this schema is one).
"""

# Table and column names are checked to be plain identifiers (`_q`) or come
# from the schema itself; values are always bound.

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import apsw

from cursor_grpc.storage.sql.connection import fetch_all

log = logging.getLogger("cursor.ops.rebuild")

PROGRESS_TABLE = "cursor_rebuild_progress"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class RebuildError(RuntimeError):
    """The table cannot be rebuilt as asked."""


@dataclass(frozen=True)
class TableRebuild:
    table: str
    # The new definition, naming the table by its real name:
    # `CREATE TABLE interactions (...)`.
    create_sql: str
    chunk_rows: int = 5000
    # Run after the swap (new indexes, say). The old table's own indexes and
    # triggers are recreated unless `keep_indexes_and_triggers` is False.
    after_swap_sql: Sequence[str] = ()
    keep_indexes_and_triggers: bool = True


@dataclass
class RebuildStats:
    rows_copied: int = 0
    chunks: int = 0
    resumed: bool = False
    longest_chunk_seconds: float = 0.0
    seconds: float = 0.0
    chunk_seconds: list[float] = field(default_factory=list)


def _q(name: str) -> str:
    if not _IDENT.match(name):
        raise RebuildError(f"{name!r} is not a plain identifier")
    return name


def _exists(conn: apsw.Connection, kind: str, name: str) -> bool:
    return bool(fetch_all(conn, "SELECT 1 FROM sqlite_master WHERE type = ? AND name = ?", (kind, name)))


def _columns(conn: apsw.Connection, table: str) -> list[tuple[str, str, int]]:
    """(name, declared type, pk position) of each column."""
    return [(str(r[1]), str(r[2]).upper(), int(r[5])) for r in conn.execute(f"PRAGMA table_info({_q(table)})")]


def _rowid_alias(columns: list[tuple[str, str, int]]) -> str | None:
    pks = [c for c in columns if c[2] > 0]
    if len(pks) == 1 and pks[0][1] == "INTEGER":
        return pks[0][0]
    return None


def _new_definition(spec: TableRebuild, new: str) -> str:
    pattern = re.compile(r"^\s*CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?[\"`\[]?" + re.escape(spec.table) + r"[\"`\]]?",
                         re.IGNORECASE)
    if not pattern.match(spec.create_sql):
        raise RebuildError(f"create_sql must start with CREATE TABLE {spec.table}")
    return pattern.sub(f"CREATE TABLE {new}", spec.create_sql, count=1)


def _in_transaction(conn: apsw.Connection, work: Callable[[], None]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        work()
        conn.execute("COMMIT")
    except BaseException:
        if not conn.getautocommit():
            conn.execute("ROLLBACK")
        raise


def rebuild_table(
    conn: apsw.Connection,
    spec: TableRebuild,
    *,
    record: Callable[[apsw.Connection], None] | None = None,
    pause_seconds: float = 0.0,
) -> RebuildStats:
    """Rebuild `spec.table` with its new definition; see the module docstring.
    `conn` must be in autocommit mode; the function manages transactions.
    `record(conn)` runs inside the swap transaction."""
    started = time.perf_counter()
    stats = RebuildStats()
    table = _q(spec.table)
    new = _q(f"{table}__rebuild")
    if not conn.getautocommit():
        raise RebuildError("rebuild_table needs a connection outside any transaction")
    if not _exists(conn, "table", table):
        raise RebuildError(f"there is no table {table}")
    without_rowid = fetch_all(conn,
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ? AND sql LIKE '%WITHOUT ROWID%'", (table,)
    )
    if without_rowid:
        raise RebuildError(f"{table} is a WITHOUT ROWID table; rebuild_table handles rowid tables only")

    def prepare() -> None:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {PROGRESS_TABLE} (tbl TEXT PRIMARY KEY, last_rowid INTEGER NOT NULL)")
        if _exists(conn, "table", new):
            stats.resumed = True
            return
        conn.execute(_new_definition(spec, new))
        conn.execute(f"INSERT OR REPLACE INTO {PROGRESS_TABLE}(tbl, last_rowid) VALUES (?, 0)", (table,))

    _in_transaction(conn, prepare)
    old_cols = _columns(conn, table)
    new_cols = _columns(conn, new)
    new_names = {c[0] for c in new_cols}
    alias = _rowid_alias(old_cols)
    common = [c[0] for c in old_cols if c[0] in new_names and c[0] != alias]
    if alias is not None and alias not in new_names:
        raise RebuildError(f"the new {table} must keep its INTEGER PRIMARY KEY column {alias}")
    target = ", ".join(["rowid", *common])
    source_new = ", ".join(["NEW.rowid", *(f"NEW.{c}" for c in common)])
    source_plain = ", ".join(["rowid", *common])

    def mirror() -> None:
        conn.execute(
            f"CREATE TRIGGER IF NOT EXISTS {new}_ai AFTER INSERT ON {table} BEGIN "
            f"INSERT OR REPLACE INTO {new}({target}) VALUES ({source_new}); END"
        )
        conn.execute(
            f"CREATE TRIGGER IF NOT EXISTS {new}_au AFTER UPDATE ON {table} BEGIN "
            f"DELETE FROM {new} WHERE rowid = OLD.rowid; "
            f"INSERT OR REPLACE INTO {new}({target}) VALUES ({source_new}); END"
        )
        conn.execute(
            f"CREATE TRIGGER IF NOT EXISTS {new}_ad AFTER DELETE ON {table} BEGIN "
            f"DELETE FROM {new} WHERE rowid = OLD.rowid; END"
        )

    _in_transaction(conn, mirror)

    try:
        _backfill_and_swap(conn, spec, table, new, target, source_plain, stats, record, pause_seconds)
    except apsw.Error:
        # A constraint the old rows break, a foreign key, a full disk: undo the
        # helper objects so the database is as before. (A crash cannot get
        # here; the next run resumes instead.)
        _abandon(conn, table, new)
        raise
    stats.seconds = time.perf_counter() - started
    log.info("rebuilt %s: %d rows in %d chunks (%.2f s, longest chunk %.1f ms)%s", table, stats.rows_copied,
             stats.chunks, stats.seconds, stats.longest_chunk_seconds * 1000, " (resumed)" if stats.resumed else "")
    return stats


def _abandon(conn: apsw.Connection, table: str, new: str) -> None:
    if not conn.getautocommit():
        conn.execute("ROLLBACK")

    def drop() -> None:
        for suffix in ("ai", "au", "ad"):
            conn.execute(f"DROP TRIGGER IF EXISTS {new}_{suffix}")
        conn.execute(f"DROP TABLE IF EXISTS {new}")
        if _exists(conn, "table", PROGRESS_TABLE):
            conn.execute(f"DELETE FROM {PROGRESS_TABLE} WHERE tbl = ?", (table,))
            if not fetch_all(conn, f"SELECT 1 FROM {PROGRESS_TABLE} LIMIT 1"):
                conn.execute(f"DROP TABLE {PROGRESS_TABLE}")

    _in_transaction(conn, drop)


def _backfill_and_swap(
    conn: apsw.Connection, spec: TableRebuild, table: str, new: str, target: str, source_plain: str,
    stats: RebuildStats, record: Callable[[apsw.Connection], None] | None, pause_seconds: float,
) -> None:
    # Backfill, one short transaction per chunk.
    copy_sql = (f"INSERT OR REPLACE INTO {new}({target}) SELECT {source_plain} FROM {table} "
                f"WHERE rowid > ? ORDER BY rowid LIMIT ?")
    while True:
        chunk_started = time.perf_counter()
        moved = 0

        def chunk() -> None:
            nonlocal moved
            last = int(fetch_all(conn, f"SELECT last_rowid FROM {PROGRESS_TABLE} WHERE tbl = ?",
                                    (table,))[0][0])
            upper = fetch_all(conn,
                f"SELECT max(rowid), count(*) FROM (SELECT rowid FROM {table} WHERE rowid > ? "
                "ORDER BY rowid LIMIT ?)", (last, spec.chunk_rows),
            )[0]
            if not upper[1]:
                return
            conn.execute(copy_sql, (last, spec.chunk_rows))
            conn.execute(f"UPDATE {PROGRESS_TABLE} SET last_rowid = ? WHERE tbl = ?", (upper[0], table))
            moved = int(upper[1])

        _in_transaction(conn, chunk)
        if not moved:
            break
        elapsed = time.perf_counter() - chunk_started
        stats.rows_copied += moved
        stats.chunks += 1
        stats.chunk_seconds.append(elapsed)
        stats.longest_chunk_seconds = max(stats.longest_chunk_seconds, elapsed)
        if pause_seconds:
            time.sleep(pause_seconds)

    # Swap.
    foreign_keys = bool(fetch_all(conn, "PRAGMA foreign_keys")[0][0])
    if foreign_keys:
        conn.execute("PRAGMA foreign_keys=OFF")  # only outside a transaction; DROP TABLE must not cascade

    def swap() -> None:
        keep = [] if not spec.keep_indexes_and_triggers else [
            str(r[0]) for r in fetch_all(conn,
                "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('index', 'trigger') "
                "AND sql IS NOT NULL AND name NOT LIKE ? ORDER BY type, name",
                (table, f"{new}_%"),
            )
        ]
        counter = None
        if _exists(conn, "table", "sqlite_sequence"):
            found = fetch_all(conn, "SELECT seq FROM sqlite_sequence WHERE name = ?", (table,))
            counter = int(found[0][0]) if found else None
        for suffix in ("ai", "au", "ad"):
            conn.execute(f"DROP TRIGGER IF EXISTS {new}_{suffix}")
        conn.execute(f"DROP TABLE {table}")
        conn.execute(f"ALTER TABLE {new} RENAME TO {table}")
        for statement in [*keep, *spec.after_swap_sql]:
            conn.execute(statement)
        if counter is not None:
            conn.execute("DELETE FROM sqlite_sequence WHERE name = ?", (new,))
            updated = fetch_all(conn,
                "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ? RETURNING seq", (counter, table)
            )
            if not updated:
                conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES (?, ?)", (table, counter))
        conn.execute(f"DELETE FROM {PROGRESS_TABLE} WHERE tbl = ?", (table,))
        if not fetch_all(conn, f"SELECT 1 FROM {PROGRESS_TABLE} LIMIT 1"):
            conn.execute(f"DROP TABLE {PROGRESS_TABLE}")
        if foreign_keys:
            problems = fetch_all(conn, "PRAGMA foreign_key_check")
            if problems:
                raise RebuildError(f"rebuilding {table} would break {len(problems)} foreign key(s); nothing changed")
        if record is not None:
            record(conn)

    try:
        _in_transaction(conn, swap)
    finally:
        if foreign_keys:
            conn.execute("PRAGMA foreign_keys=ON")
