"""`cursor-grpc copy --from PATH --to postgresql://…`: move a SQLite
deployment to PostgreSQL.

The source is read, never written: one read-only connection, one read
snapshot, while this process holds the database's lock file (so no server
writes it meanwhile; a running server makes the copy refuse at once). The
target is migrated if it is not yet, and must hold no data.

Everything goes into PostgreSQL in ONE transaction: the tables locked, the
emptiness checked under the lock, every table the two schemas share copied
with COPY (parents before children, as the foreign keys say), the history's
identity set (`cursor_meta` as the source has it, `event_sequence.last_seq`
the highest seq the source ever handed out), then the verification (row
counts, highest seq, epoch) before COMMIT. Any failure rolls it all back:
the target stays empty.

Archived interactions (quarter files, cursor_grpc/storage/sqlite/archive.py)
are copied into `interactions` by default, so PostgreSQL holds the whole
history again, without `archive_index` and without a history floor. With
`--no-archives` only the main database is copied, and `archive_index` and
`cursor_meta.history_floor_seq` come along, so the floor stays honest.

A consultant cursor `epoch-seq` taken before the move resumes after it:
same epoch, same seqs, and new writes continue above the old ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import psycopg
import psycopg.errors
from psycopg import sql

from cursor_grpc.config import ConfigError, StorageSettings, database_fields
from cursor_grpc.ops.progress import progress
from cursor_grpc.storage import DatabaseInUse, MigrationError, Progress, backend_name, migrate, require_current_schema
from cursor_grpc.storage import resolved as resolved_settings
from cursor_grpc.storage.postgres.connection import connect_raw
from cursor_grpc.storage.postgres.migrations import describe_url
from cursor_grpc.storage.sql import interactions as interaction_sql
from cursor_grpc.storage.sql.connection import fetch_all
from cursor_grpc.storage.sqlite.archive import archive_entries, resolve_archive
from cursor_grpc.storage.sqlite.connection import open_connection
from cursor_grpc.storage.sqlite.dblock import DatabaseLock
from cursor_grpc.storage.sqlite.store import max_seq

# Each database keeps its own migration ledger.
NOT_COPIED = ("schema_migrations",)
# PostgreSQL-only: the event counter, set from the source's highest seq.
SEQUENCE_TABLE = "event_sequence"
META = "cursor_meta"
ARCHIVE_INDEX = "archive_index"
INTERACTIONS = "interactions"
FLOOR_KEY = "history_floor_seq"
EPOCH_KEY = "event_epoch"
# Progress is shown (on stderr) for copies of at least this many rows.
PROGRESS_MIN_ROWS = 50_000
PROGRESS_EVERY = 5_000
# How long the copy waits for a lock on the target's tables.
LOCK_TIMEOUT = "10s"
# The copy's own reads are long by nature: no slow-query warnings for them.
NO_SLOW_LOG_MS = 1e9


class CopyError(RuntimeError):
    """Something the user can act on: the copy refused, nothing changed."""


class CopyFailed(RuntimeError):
    """The copy failed midway; its transaction was rolled back."""


@dataclass(frozen=True)
class ArchiveFile:
    stored: str  # as archive_index names it
    path: Path  # where it is read from
    row_count: int  # as archive_index says


@dataclass
class TableCopy:
    name: str
    rows: int
    note: str = ""


@dataclass
class CopyResult:
    source: Path
    target: str  # described, never with credentials
    applied: list[str]
    tables: list[TableCopy]
    skipped: list[str]
    epoch: str
    last_seq: int
    archived_rows: int
    archive_files: int
    kept_floor: int | None
    seconds: float = 0.0
    duplicates: int = 0
    progress_shown: bool = False
    not_in_source: list[str] = field(default_factory=list)


def _quoted(name: str) -> str:
    """A SQLite identifier, quoted (names come from the schema itself)."""
    return '"' + name.replace('"', '""') + '"'


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class _Source:
    """The SQLite database, read-only, in one read snapshot."""

    def __init__(self, settings: StorageSettings) -> None:
        self.settings = dataclasses.replace(settings, slow_query_ms=NO_SLOW_LOG_MS)
        self.path = Path(settings.path)
        self.conn = open_connection(self.settings, readonly=True)
        self._in_snapshot = False

    def begin(self) -> None:
        self.conn.execute("BEGIN")
        self._in_snapshot = True
        # The first read fixes the snapshot every later read sees.
        self.conn.execute("SELECT count(*) FROM sqlite_master").fetchall()

    def close(self) -> None:
        if self._in_snapshot:
            self.conn.execute("COMMIT")
            self._in_snapshot = False
        self.conn.close()

    def tables(self) -> dict[str, list[str]]:
        """Every table of the schema (SQLite's own left out) -> its columns."""
        names = [str(r[0]) for r in self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
            "ORDER BY rowid")]
        return {name: [str(r[1]) for r in self.conn.execute(f"PRAGMA table_info({_quoted(name)})")]
                for name in names}

    def count(self, table: str) -> int:
        return int(fetch_all(self.conn, f"SELECT count(*) FROM {_quoted(table)}")[0][0])  # noqa: S608

    def rows(self, table: str, columns: Sequence[str]) -> Iterable[tuple[Any, ...]]:
        order = " ORDER BY seq" if "seq" in columns else ""
        listed = ", ".join(map(_quoted, columns))
        return self.conn.execute(f"SELECT {listed} FROM {_quoted(table)}{order}")  # noqa: S608

    def seqs_between(self, low: int, high: int) -> set[int]:
        return {int(r[0]) for r in self.conn.execute(
            "SELECT seq FROM interactions WHERE seq BETWEEN ? AND ?", (low, high))}

    def max_of(self, table: str) -> int:
        return int(fetch_all(self.conn, f"SELECT coalesce(max(seq), 0) FROM {_quoted(table)}")[0][0])  # noqa: S608

    def meta(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.conn.execute("SELECT key, value FROM cursor_meta")}

    def highest_seq(self) -> int:
        return max_seq(self.conn)

    def archive_files(self, archive_dir: Path | None) -> list[ArchiveFile]:
        """The files archive_index lists, oldest history first, where they
        are read from: `archive_dir` when given, else as the index says."""
        found = []
        for entry in sorted(archive_entries(self.conn), key=lambda e: e.min_seq):
            path = (archive_dir / Path(entry.file).name) if archive_dir is not None \
                else resolve_archive(self.path, entry.file)
            found.append(ArchiveFile(entry.file, path, int(entry.row_count)))
        return found


class _Archive:
    """One archive file, read-only, in a read snapshot taken after the
    main database's (so rows the archiver moved meanwhile are in one of the
    two, and those in both are skipped here)."""

    def __init__(self, file: ArchiveFile) -> None:
        self.file = file
        journal = file.path.with_name(file.path.name + "-journal")
        if journal.exists():
            raise CopyError(
                f"archive file {file.stored} has the journal of an interrupted archive run beside it ({journal}); "
                "run `cursor-grpc archive` on the database once to finish that run, then copy again"
            )
        settings = StorageSettings(path=file.path, slow_query_ms=NO_SLOW_LOG_MS)
        self.conn = open_connection(settings, readonly=True)
        self.conn.execute("BEGIN")
        try:
            self.reader_column = interaction_sql.reader_column_of(self.conn)
            self.columns = [str(r[1]) for r in self.conn.execute("PRAGMA table_info(interactions)")]
            low, high, count = fetch_all(
                self.conn, "SELECT coalesce(min(seq), 0), coalesce(max(seq), 0), count(*) FROM interactions")[0]
        except BaseException:
            self.close()
            raise
        self.low, self.high, self.count = int(low), int(high), int(count)

    def rows(self, columns: Sequence[str]) -> Iterable[tuple[Any, ...]]:
        """The interactions in `columns` order (the reader column under
        either of its names: files made before migration 0006 say user_id)."""
        wanted = [self.reader_column if c == "reader_id" else c for c in columns]
        missing = sorted(set(wanted) - set(self.columns))
        if missing:
            raise CopyError(f"archive file {self.file.stored} has no column {', '.join(missing)} in interactions")
        listed = ", ".join(map(_quoted, wanted))
        return self.conn.execute(f"SELECT {listed} FROM interactions ORDER BY seq")  # noqa: S608

    def holding(self, seqs: set[int]) -> int:
        """How many of `seqs` this file holds."""
        found, ordered = 0, sorted(seqs)
        for start in range(0, len(ordered), 500):
            chunk = ordered[start:start + 500]
            found += int(fetch_all(self.conn, f"SELECT count(*) FROM interactions WHERE seq IN "  # noqa: S608
                                              f"({', '.join('?' * len(chunk))})", chunk)[0][0])
        return found

    def close(self) -> None:
        if not self.conn.getautocommit():
            self.conn.execute("COMMIT")
        self.conn.close()


def _target_settings(url: str) -> StorageSettings:
    settings = StorageSettings(**database_fields(url))  # type: ignore[arg-type]
    if backend_name(settings) != "postgresql":
        raise CopyError(f"--to must name a PostgreSQL database (postgresql://host/dbname), not {url!r}")
    return settings


def _source_settings(value: str | Path) -> StorageSettings:
    settings = resolved_settings(StorageSettings(**database_fields(str(value))))  # type: ignore[arg-type]
    if backend_name(settings) != "sqlite":
        raise CopyError("--from must name a SQLite database file (the deployment to move)")
    return settings


def _pg_columns(cur: psycopg.Cursor[Any]) -> dict[str, list[str]]:
    """The target's tables, in the order its schema made them, -> their columns."""
    cur.execute("SELECT c.relname, a.attname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
                "WHERE c.relkind IN ('r', 'p') AND c.relnamespace = current_schema()::regnamespace "
                "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY c.oid, a.attnum")
    found: dict[str, list[str]] = {}
    for table, column in cur.fetchall():
        found.setdefault(str(table), []).append(str(column))
    return found


def _pg_parents(cur: psycopg.Cursor[Any]) -> list[tuple[str, str]]:
    """(child, parent) for every foreign key of the target's schema."""
    cur.execute(
        "SELECT c.relname, p.relname FROM pg_constraint k "
        "JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class p ON p.oid = k.confrelid "
        "WHERE k.contype = 'f' AND c.relnamespace = current_schema()::regnamespace"
    )
    return [(str(child), str(parent)) for child, parent in cur.fetchall()]


def parents_first(tables: Sequence[str], edges: Iterable[tuple[str, str]]) -> list[str]:
    """`tables` ordered so every table comes after those its foreign keys
    reference (the given order otherwise)."""
    wanted, edges = set(tables), list(edges)
    needs = {t: {p for c, p in edges if c == t and p != t and p in wanted} for t in tables}
    ordered: list[str] = []
    while len(ordered) < len(tables):
        ready = [t for t in tables if t not in ordered and needs[t] <= set(ordered)]
        if not ready:
            raise CopyError(f"the foreign keys of {', '.join(t for t in tables if t not in ordered)} form a cycle")
        ordered.append(ready[0])
    return ordered


def _holding(cur: psycopg.Cursor[Any], tables: Sequence[str]) -> list[str]:
    """The tables of the target that hold data (cursor_meta's own epoch and
    an unused event counter are what a fresh database has)."""
    found = []
    for table in tables:
        if table == META:
            cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE key <> %s)").format(sql.Identifier(META)),
                        (EPOCH_KEY,))
        elif table == SEQUENCE_TABLE:
            cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE last_seq <> 0)").format(
                sql.Identifier(SEQUENCE_TABLE)))
        else:
            cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(table)))
        row = cur.fetchone()
        if row is not None and row[0]:
            found.append(table)
    return found


def _not_empty(target: str, holding: Sequence[str]) -> CopyError:
    return CopyError(
        f"{target} is not empty ({', '.join(holding)} hold{'s' if len(holding) == 1 else ''} data); "
        "copy only into a freshly migrated database with no data"
    )


def _refuse_data(url: str, target: str) -> None:
    """Refuse a target that holds data, whatever its schema is at (the copy
    checks again under its table locks)."""
    try:
        raw = connect_raw(url)
    except psycopg.OperationalError as error:
        raise CopyError(f"cannot connect to {target}: {_first_line(error)}") from None
    try:
        with raw.transaction(), raw.cursor() as cur:
            tables = [t for t in _pg_columns(cur) if t not in NOT_COPIED]
            holding = _holding(cur, tables)
    finally:
        raw.close()
    if holding:
        raise _not_empty(target, holding)


def _copy_rows(cur: psycopg.Cursor[Any], table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]],
               tick: Callable[[int], None]) -> int:
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)))
    written = 0
    with cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)
            written += 1
            if written % PROGRESS_EVERY == 0:
                tick(PROGRESS_EVERY)
    tick(written % PROGRESS_EVERY)
    return written


class _Ticker:
    def __init__(self, report: Progress | None, total: int) -> None:
        self.report, self.total, self.done = report, total, 0
        if report is not None:
            report(0, total)

    def __call__(self, rows: int) -> None:
        self.done += rows
        if self.report is not None and rows:
            self.report(min(self.done, self.total), self.total)


def copy_database(source_path: str | Path, url: str, *, archives: bool = True, archive_dir: Path | None = None,
                  progress_stream: TextIO | None = None) -> CopyResult:
    """Copy the SQLite deployment at `source_path` into the PostgreSQL
    database `url` (see the module docstring). Refusals are CopyError,
    MigrationError or DatabaseInUse, with nothing changed; a failure midway
    is CopyFailed, with the target rolled back to empty."""
    started = time.perf_counter()
    target_settings = _target_settings(url)
    target = describe_url(url)
    source_settings = _source_settings(source_path)
    path = Path(source_settings.path)
    if not path.is_file():
        raise CopyError(f"{path} does not exist; there is no SQLite database there to copy")
    lock = DatabaseLock(path)
    try:
        lock.acquire_exclusive("copy")
    except OSError as error:
        raise CopyError(f"cannot take the lock file {lock.path}, which keeps servers off the source: "
                        f"{error.strerror or error}") from None
    with lock:
        require_current_schema(source_settings)
        source = _Source(source_settings)
        opened: list[_Archive] = []
        try:
            source.begin()
            files = source.archive_files(archive_dir) if archives else []
            missing = [f for f in files if not f.path.is_file()]
            if missing:
                listed = ", ".join(f"{f.stored} ({f.row_count} interactions; looked at {f.path})" for f in missing)
                raise CopyError(
                    f"archive file{'s' if len(missing) > 1 else ''} listed in archive_index "
                    f"{'are' if len(missing) > 1 else 'is'} missing: {listed}; pass --archives DIR where the archive "
                    "files are, or --no-archives to copy only the main database (the history floor is kept)"
                )
            for file in files:
                opened.append(_Archive(file))
            # Refused before migrating, so a refusal changes nothing there either.
            _refuse_data(url, target)
            applied = migrate(target_settings)
            result = _copy_into(source, opened, url, target, applied, archives, progress_stream)
        finally:
            for archive in opened:
                archive.close()
            source.close()
    result.seconds = time.perf_counter() - started
    return result


def _copy_into(source: _Source, opened: list[_Archive], url: str, target: str, applied: list[str],
               archives: bool, progress_stream: TextIO | None) -> CopyResult:
    source_tables = source.tables()
    meta = source.meta()
    epoch = meta[EPOCH_KEY]
    highest = source.highest_seq()
    floor = int(meta[FLOOR_KEY]) if FLOOR_KEY in meta else None
    if archives:
        meta.pop(FLOOR_KEY, None)
    try:
        raw = connect_raw(url)
    except psycopg.OperationalError as error:
        raise CopyError(f"cannot connect to {target}: {_first_line(error)}") from None
    try:
        with raw.transaction(), raw.cursor() as cur:
            cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
            pg_tables = _pg_columns(cur)
            if SEQUENCE_TABLE not in pg_tables or META not in pg_tables:
                raise CopyError(f"{target} does not hold the Cursor schema (no {SEQUENCE_TABLE} or {META})")
            shared = [t for t in pg_tables if t in source_tables and t not in NOT_COPIED]
            skipped = [t for t in source_tables if t not in pg_tables and t not in NOT_COPIED]
            not_in_source = sorted(t for t in pg_tables if t not in source_tables
                                   and t not in NOT_COPIED and t != SEQUENCE_TABLE)
            for table in shared:
                if set(source_tables[table]) != set(pg_tables[table]):
                    raise CopyError(
                        f"table {table} has columns {source_tables[table]} in the source and {pg_tables[table]} "
                        f"in {target}; both must be at this version's schema"
                    )
            order = parents_first(shared, _pg_parents(cur))
            cur.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                sql.SQL(", ").join(sql.Identifier(t) for t in [*order, SEQUENCE_TABLE])))
            holding = _holding(cur, [*order, SEQUENCE_TABLE])
            if holding:
                raise _not_empty(target, holding)
            copied = [t for t in order if not (archives and t == ARCHIVE_INDEX)]
            expected = {t: source.count(t) for t in copied}
            expected[META] = len(meta)
            archived_total = sum(a.count for a in opened)
            total = sum(expected.values()) + archived_total
            shown = total >= PROGRESS_MIN_ROWS
            bar: AbstractContextManager[Progress | None] = (
                progress("copy", "rows", progress_stream or sys.stderr) if shown else nullcontext(None))
            with bar as report:
                ticker = _Ticker(report, total)
                written: dict[str, int] = {}
                archived = duplicates = 0
                for table in copied:
                    columns = pg_tables[table]
                    if table == META:
                        cur.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(META)))
                        by_name = [{"key": k, "value": v} for k, v in meta.items()]
                        written[table] = _copy_rows(cur, META, columns, ([r[c] for c in columns] for r in by_name),
                                                    ticker)
                        continue
                    count = 0
                    if table == INTERACTIONS:
                        for archive in opened:
                            # Rows in both places (an archive run stopped between its copy and its
                            # delete): the main database's copy is the one taken.
                            skip = source.seqs_between(archive.low, archive.high) if archive.count else set()
                            both = archive.holding(skip) if skip else 0
                            seq_at = columns.index("seq")
                            rows = (r for r in archive.rows(columns) if r[seq_at] not in skip)
                            moved = _copy_rows(cur, table, columns, rows, ticker)
                            ticker(archive.count - moved)
                            expected[INTERACTIONS] += archive.count - both
                            archived += moved
                            duplicates += both
                            count += moved
                    count += _copy_rows(cur, table, columns, source.rows(table, columns), ticker)
                    written[table] = count
                cur.execute(sql.SQL("UPDATE {} SET last_seq = %s WHERE id = 1").format(sql.Identifier(SEQUENCE_TABLE)),
                            (highest,))
                _verify(cur, source, copied, expected, written, epoch, highest, opened, target)
    except psycopg.errors.LockNotAvailable:
        raise CopyError(f"the tables of {target} stayed locked by another session for {LOCK_TIMEOUT} "
                        "(a server writing there?); stop it and copy again, nothing was copied") from None
    except psycopg.OperationalError as error:
        raise CopyFailed(f"the connection to {target} failed during the copy: {_first_line(error)}; "
                         "the transaction was rolled back, nothing was copied") from None
    except psycopg.Error as error:
        raise CopyFailed(f"PostgreSQL refused the copy: {_first_line(error)}; "
                         "the transaction was rolled back, nothing was copied") from None
    finally:
        raw.close()
    tables = []
    for table in copied:
        note = ""
        if table == INTERACTIONS and opened:
            note = f"{archived} from {len(opened)} archive file{'s' if len(opened) != 1 else ''}"
        tables.append(TableCopy(table, written[table], note))
    if not archives and ARCHIVE_INDEX in written:
        kept = written[ARCHIVE_INDEX]
        tables[[t.name for t in tables].index(ARCHIVE_INDEX)].note = \
            f"{kept} archive file{'s' if kept != 1 else ''} listed; their interactions were not copied"
    return CopyResult(
        source=source.path, target=target, applied=applied, tables=tables, skipped=skipped, epoch=epoch,
        last_seq=highest, archived_rows=archived, archive_files=len(opened),
        kept_floor=None if archives else floor, duplicates=duplicates, progress_shown=shown,
        not_in_source=not_in_source,
    )


def _verify(cur: psycopg.Cursor[Any], source: _Source, copied: Sequence[str], expected: dict[str, int],
            written: dict[str, int], epoch: str, highest: int, opened: list[_Archive], target: str) -> None:
    """Before COMMIT: what the target now holds against what the source
    holds. A difference is CopyFailed, and the transaction rolls back."""
    problems = []
    for table in copied:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
        row = cur.fetchone()
        have = int(row[0]) if row is not None else -1
        if not have == written[table] == expected[table]:
            problems.append(f"{table}: {expected[table]} rows in the source, {written[table]} sent, {have} in {target}")
    cur.execute(sql.SQL("SELECT value FROM {} WHERE key = %s").format(sql.Identifier(META)), (EPOCH_KEY,))
    row = cur.fetchone()
    if row is None or row[0] != epoch:
        problems.append(f"event epoch {row[0] if row else None} in {target}, {epoch} in the source")
    cur.execute(sql.SQL("SELECT last_seq FROM {} WHERE id = 1").format(sql.Identifier(SEQUENCE_TABLE)))
    row = cur.fetchone()
    if row is None or int(row[0]) != highest:
        problems.append(f"last seq {row[0] if row else None} in {target}, {highest} in the source")
    for table in (INTERACTIONS, "events"):
        if table not in copied:
            continue
        want = source.max_of(table)
        if table == INTERACTIONS:
            want = max([want, *(a.high for a in opened)])
        cur.execute(sql.SQL("SELECT coalesce(max(seq), 0) FROM {}").format(sql.Identifier(table)))
        row = cur.fetchone()
        have = int(row[0]) if row is not None else -1
        if have != want:
            problems.append(f"highest {table} seq {have} in {target}, {want} in the source")
        if have > highest:
            problems.append(f"{table} holds seq {have}, above the event counter {highest}")
    if problems:
        raise CopyFailed("verification failed, the transaction was rolled back and nothing was copied: "
                         + "; ".join(problems))


def report_lines(result: CopyResult) -> list[str]:
    lines = [f"copied {result.source} to {result.target} in {result.seconds:.2f} s"]
    if result.applied:
        lines.append(f"  migrated the target first: applied {', '.join(result.applied)}")
    width = max(len(t.name) for t in result.tables) if result.tables else 5
    digits = max(len(str(t.rows)) for t in result.tables) if result.tables else 4
    lines.append(f"  {'table':<{width}}  {'rows':>{digits}}")
    for table in result.tables:
        note = f"  ({table.note})" if table.note else ""
        lines.append(f"  {table.name:<{width}}  {table.rows:>{digits}}{note}")
    if result.skipped:
        lines.append(f"  not in the PostgreSQL schema, not copied: {', '.join(result.skipped)}")
    if result.not_in_source:
        lines.append(f"  not in the SQLite schema, left empty: {', '.join(result.not_in_source)}")
    if result.kept_floor is not None:
        lines.append(f"  --no-archives: archived interactions stay in their files; history floor seq "
                     f"{result.kept_floor} kept (cursors below it are expired)")
    elif result.archive_files:
        lines.append(f"  the history is whole again: {result.archived_rows} archived interactions are in interactions, "
                     "so archive_index and the history floor were not copied")
    if result.duplicates:
        lines.append(f"  {result.duplicates} archived interactions were also in the main database, copied once")
    lines.append(f"  verified before COMMIT: row counts, highest seq {result.last_seq}, epoch {result.epoch}")
    lines.append(f"  last cursor {result.epoch}-{result.last_seq}")
    return lines


def cmd_copy(args: argparse.Namespace) -> int:
    """`cursor-grpc copy`: refusals are one line on stderr and exit status 2,
    a copy that failed midway (rolled back) exit status 1. The archive files
    are looked for in --archives, else CURSOR_ARCHIVE_DIR, else where
    archive_index says."""
    from cursor_grpc.config import ops_settings_from_env

    try:
        archive_dir = None if args.no_archives else args.archives or ops_settings_from_env().archive_dir
        result = copy_database(args.source, args.target, archives=not args.no_archives, archive_dir=archive_dir)
    except (CopyError, MigrationError, DatabaseInUse, ConfigError) as error:
        print(f"cursor-grpc copy: {error}", file=sys.stderr)
        return 2
    except psycopg.OperationalError as error:
        print(f"cursor-grpc copy: cannot reach {describe_url(args.target)}: {_first_line(error)}", file=sys.stderr)
        return 2
    except CopyFailed as error:
        print(f"cursor-grpc copy: {error}", file=sys.stderr)
        return 1
    for line in report_lines(result):
        print(line)
    return 0
