"""PostgreSQL migrations (migrations/postgres/, cursor_grpc/storage/postgres/migrations.py)
against a real server: the schema matches SQLite's table for table, column
for column and index for index; the ledger refuses what SQLite's refuses;
concurrent migrators serialize on the advisory lock."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from cursor_grpc.clock import new_id, now_iso
from cursor_grpc.config import StorageSettings
from cursor_grpc.storage.contract import MigrationError
from cursor_grpc.storage.ledger import Migration
from cursor_grpc.storage.postgres import migrations as pg
from cursor_grpc.storage.sqlite import migrations as lite
from cursor_grpc.storage.sqlite.connection import open_connection

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[1]
# Every PostgreSQL migration this version has, in order.
ALL = [m.name for m in pg.load_migrations()]
TIMESTAMP = "2024-05-06T07:08:09.123Z"


@pytest.fixture
def conn(postgres_database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(postgres_database_url) as connection:
        yield connection


@pytest.fixture
def migrated(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    assert pg.migrate(conn) == [m.name for m in pg.load_migrations()]
    return conn


def _rows(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> list[tuple[Any, ...]]:
    with conn.transaction():
        return conn.execute(query, params).fetchall()


def _sqlite_schema(tmp_path: Path) -> dict[str, Any]:
    """Tables (columns in order, with NOT NULL, primary key and default) and
    explicit indexes (table, columns, unique, partial) of a SQLite database
    migrated by this version."""
    conn = open_connection(StorageSettings(path=tmp_path / "schema.db"))
    try:
        lite.migrate(conn)
        tables = {}
        for (name,) in fetch_all(conn, "SELECT name FROM sqlite_master WHERE type = 'table' "
                                       "AND name NOT LIKE 'sqlite_%' ORDER BY name"):
            tables[name] = [
                (col, bool(notnull) or bool(pk), pk > 0, _default(default))
                for _, col, _, notnull, default, pk in fetch_all(conn, f"PRAGMA table_info({name})")
            ]
        indexes = {}
        for name, table, sql in fetch_all(conn, "SELECT name, tbl_name, sql FROM sqlite_master "
                                               "WHERE type = 'index' AND sql IS NOT NULL"):
            columns = [col for _, _, col in fetch_all(conn, f"PRAGMA index_info({name})")]
            indexes[name] = (table, columns, sql.startswith("CREATE UNIQUE"), " WHERE " in sql)
        triggers = {name for (name,) in fetch_all(conn, "SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        meta = {key for (key,) in fetch_all(conn, "SELECT key FROM cursor_meta")}
        return {"tables": tables, "indexes": indexes, "triggers": triggers, "meta": meta}
    finally:
        conn.close()


def fetch_all(conn: apsw.Connection, query: str) -> list[Any]:
    return list(conn.execute(query))


def _default(text: str | None) -> str | None:
    # SQLite keeps the default's text ('{}', 1); PostgreSQL adds a cast ('{}'::text).
    return None if text is None else re.sub(r"::[a-z ]+$", "", text)


def _postgres_schema(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    tables: dict[str, list[tuple[str, bool, bool, str | None]]] = {}
    for table, column, nullable, default, pk in _rows(conn, """
        SELECT c.table_name, c.column_name, c.is_nullable = 'YES', c.column_default,
               EXISTS (SELECT 1 FROM information_schema.table_constraints t
                       JOIN information_schema.key_column_usage k USING (constraint_schema, constraint_name)
                       WHERE t.constraint_type = 'PRIMARY KEY' AND t.table_schema = c.table_schema
                         AND t.table_name = c.table_name AND k.column_name = c.column_name)
        FROM information_schema.columns c
        WHERE c.table_schema = current_schema()
        ORDER BY c.table_name, c.ordinal_position"""):
        tables.setdefault(table, []).append((column, not nullable, pk, _default(default)))
    indexes = {}
    for name, table, columns, unique, partial in _rows(conn, """
        SELECT i.relname, t.relname,
               array(SELECT a.attname::text FROM unnest(x.indkey) WITH ORDINALITY AS k(attnum, n)
                     JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum ORDER BY k.n),
               x.indisunique, x.indpred IS NOT NULL
        FROM pg_index x
        JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_class t ON t.oid = x.indrelid
        WHERE t.relnamespace = current_schema()::regnamespace AND i.relname LIKE 'idx\\_%'"""):
        indexes[name] = (table, list(columns), unique, partial)
    triggers = {name for (name,) in _rows(conn, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")}
    meta = {key for (key,) in _rows(conn, "SELECT key FROM cursor_meta")}
    return {"tables": tables, "indexes": indexes, "triggers": triggers, "meta": meta}


def _column_types(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], str]:
    return {(table, column): kind for table, column, kind in _rows(conn, """
        SELECT table_name, column_name, data_type FROM information_schema.columns
        WHERE table_schema = current_schema()""")}


def test_fresh_database_gets_sqlites_schema(migrated: psycopg.Connection[Any], tmp_path: Path) -> None:
    lite_schema = _sqlite_schema(tmp_path)
    pg_schema = _postgres_schema(migrated)
    assert set(pg_schema["tables"]) == set(lite_schema["tables"]) | {"event_sequence"}
    for table, columns in lite_schema["tables"].items():
        assert pg_schema["tables"][table] == columns, table
    assert pg_schema["indexes"] == lite_schema["indexes"]
    assert pg_schema["triggers"] == lite_schema["triggers"] == {"interactions_append_only"}
    assert pg_schema["meta"] == lite_schema["meta"] == {"event_epoch"}


def test_column_types(migrated: psycopg.Connection[Any]) -> None:
    types = _column_types(migrated)
    timestamps = {key for key in types if key[1].endswith("_at")}
    # 23 in 0001, reader_assignments.assigned_at in 0002, three of attention_signals and
    # reader_states.progress_at in 0003
    assert len(timestamps) == 28
    assert {key for key, kind in types.items() if kind == "timestamp with time zone"} == timestamps
    assert {types[key] for key in types if key[1] == "seq" or key[1].endswith("_seq")} == {"bigint"}
    assert types["sessions", "token_hash"] == "bytea"
    assert types["reader_states", "progress"] == "double precision"
    assert types["users", "is_active"] == types["interactions", "processed"] == "integer"
    for json_column in [("users", "metadata"), ("interactions", "payload"), ("events", "data"),
                        ("audit_logs", "details"), ("reader_states", "metadata"), ("messages", "metadata"),
                        ("attention_signals", "evidence"), ("reader_states", "wrong_seqs")]:
        assert types[json_column] == "text", json_column


def test_second_migrate_applies_nothing(migrated: psycopg.Connection[Any]) -> None:
    before = pg.status(migrated)
    assert pg.migrate(migrated) == []
    assert pg.status(migrated) == before
    assert before["pending"] == before["unknown"] == before["modified"] == []
    assert [name for name, _ in before["applied"]] == [m.name for m in pg.load_migrations()]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", before["applied"][0][1])
    pg.verify_current(migrated)
    assert migrated.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_autocommit_connection_with_dict_rows(postgres_database_url: str) -> None:
    with psycopg.connect(postgres_database_url, autocommit=True, row_factory=dict_row) as conn:
        assert pg.migrate(conn) == ALL
        assert [name for name, _ in pg.status(conn)["applied"]] == ALL
        pg.verify_current(conn)
        assert pg.has_tables(conn)


def test_concurrent_migrators_serialize(postgres_database_url: str) -> None:
    # A slow last file, so the two migrators overlap while there is work left.
    known = [*pg.load_migrations(),
             Migration("9999_slow.sql", "SELECT pg_sleep(0.3);\nCREATE TABLE slow_extra (x integer);\n")]
    start = threading.Barrier(2)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(postgres_database_url) as conn:
                start.wait(10)
                results.append(pg.migrate(conn, known))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(results) == 2
    assert sorted(name for names in results for name in names) == [m.name for m in known]
    with psycopg.connect(postgres_database_url) as conn:
        assert _rows(conn, "SELECT name, count(*) FROM schema_migrations GROUP BY name ORDER BY name") == [
            (m.name, 1) for m in known]
        pg.verify_current(conn, known)


def test_edited_file_is_refused(migrated: psycopg.Connection[Any]) -> None:
    first, *rest = pg.load_migrations()
    edited = [Migration(first.name, first.sql + "\n-- edited after it was applied\n"), *rest]
    with pytest.raises(MigrationError, match=f"{first.name} was applied but its file has been modified"):
        pg.migrate(migrated, edited)
    with pytest.raises(MigrationError, match="modified"):
        pg.verify_current(migrated, edited)
    assert [name for name, _ in pg.status(migrated, edited)["modified"]] == [first.name]


def test_unknown_ledger_row_is_refused(migrated: psycopg.Connection[Any]) -> None:
    with migrated.transaction():
        migrated.execute("INSERT INTO schema_migrations(name, checksum, applied_at) VALUES (%s, %s, %s)",
                         ("0099_from_the_future.sql", "0" * 64, TIMESTAMP))
    with pytest.raises(MigrationError, match=re.escape("does not know: 0099_from_the_future.sql")):
        pg.migrate(migrated)
    with pytest.raises(MigrationError, match="does not know"):
        pg.verify_current(migrated)
    assert pg.status(migrated)["unknown"] == [("0099_from_the_future.sql", TIMESTAMP)]


def test_verify_current_on_empty_database(conn: psycopg.Connection[Any], postgres_database_url: str) -> None:
    with_password = make_conninfo(postgres_database_url, password="s3cret-pw", user="postgres")
    with pytest.raises(MigrationError) as refused:
        pg.verify_current(conn, db=with_password)
    message = str(refused.value)
    described = pg.describe_url(with_password)
    assert "s3cret-pw" not in message
    assert "postgres@" not in message
    assert f"{described}: {len(ALL)} migration(s) pending (0001_init.sql first)" in message
    assert "cursor-grpc migrate --db" in message
    assert "cursor-grpc serve --migrate --db" in message
    # Without `db`, the connection names itself.
    with pytest.raises(MigrationError, match=r"pending .*run `cursor-grpc migrate --db 'postgresql://"):
        pg.verify_current(conn)
    # Nothing was written: no ledger appeared.
    assert pg.status(conn) == {"applied": [], "pending": [(name, "") for name in ALL], "unknown": [], "modified": []}
    assert not pg.has_tables(conn)


def test_epoch_and_event_sequence(migrated: psycopg.Connection[Any], postgres_database_url: str) -> None:
    ((epoch,),) = _rows(migrated, "SELECT value FROM cursor_meta WHERE key = 'event_epoch'")
    assert re.fullmatch(r"[0-9a-f]{16}", epoch)
    assert _rows(migrated, "SELECT id, last_seq FROM event_sequence") == [(1, 0)]
    with pytest.raises(psycopg.errors.CheckViolation), migrated.transaction():
        migrated.execute("INSERT INTO event_sequence(id, last_seq) VALUES (2, 0)")
    with pytest.raises(psycopg.errors.CheckViolation), migrated.transaction():
        migrated.execute("UPDATE event_sequence SET last_seq = -1")


def _user(conn: psycopg.Connection[Any], **columns: Any) -> str:
    row = {"id": new_id(), "email": f"{new_id()}@example.com", "password_hash": "x", "display_name": "R",
           "created_at": TIMESTAMP, "updated_at": TIMESTAMP, **columns}
    names = ", ".join(row)
    marks = ", ".join(["%s"] * len(row))
    with conn.transaction():
        conn.execute(f"INSERT INTO users({names}) VALUES ({marks})", list(row.values()))
    return str(row["id"])


def test_json_checks(migrated: psycopg.Connection[Any]) -> None:
    reader = _user(migrated, metadata='{"b": 1,  "a": [2]}')
    ((stored,),) = _rows(migrated, "SELECT metadata FROM users WHERE id = %s", (reader,))
    assert stored == '{"b": 1,  "a": [2]}'  # the exact text, not jsonb's
    for bad in ["{", "not json", "[1, 2]"]:  # users.metadata must be an object, like SQLite's check
        with pytest.raises(psycopg.errors.CheckViolation):
            _user(migrated, metadata=bad)
    with pytest.raises(psycopg.errors.CheckViolation), migrated.transaction():
        migrated.execute("INSERT INTO events(seq, kind, reader_id, data, created_at) VALUES (1, 'state', %s, %s, %s)",
                         (reader, "{'single': 'quotes'}", TIMESTAMP))
    with pytest.raises(psycopg.errors.CheckViolation), migrated.transaction():
        migrated.execute("INSERT INTO interactions(seq, id, reader_id, type, payload, created_at) "
                         "VALUES (1, %s, %s, 'page', '[]', %s)", (new_id(), reader, TIMESTAMP))
    with migrated.transaction():
        migrated.execute("INSERT INTO events(seq, kind, reader_id, data, created_at) "
                         "VALUES (1, 'state', %s, '[1]', %s)", (reader, TIMESTAMP))
        migrated.execute("INSERT INTO audit_logs(id, actor_type, action, created_at) VALUES (%s, 'system', 'x', %s)",
                         (new_id(), TIMESTAMP))
    assert _rows(migrated, "SELECT details FROM audit_logs") == [("{}",)]


def test_constraints_carried_over(migrated: psycopg.Connection[Any]) -> None:
    reader = _user(migrated)
    with pytest.raises(psycopg.errors.CheckViolation):
        _user(migrated, email="Upper@example.com")
    _user(migrated, email="\u00c9cole@example.com")  # SQLite's lower() is ASCII-only, and so is "C"'s
    with pytest.raises(psycopg.errors.CheckViolation):
        _user(migrated, is_active=2)
    interaction = new_id()
    with migrated.transaction():
        migrated.execute("INSERT INTO interactions(seq, id, reader_id, type, payload, created_at) "
                         "VALUES (7, %s, %s, 'page', '{}', %s)", (interaction, reader, TIMESTAMP))
        migrated.execute("UPDATE interactions SET processed = 1 WHERE id = %s", (interaction,))
    with pytest.raises(psycopg.errors.IntegrityError, match="append-only"), migrated.transaction():
        migrated.execute("UPDATE interactions SET payload = '{\"a\": 1}' WHERE id = %s", (interaction,))
    with pytest.raises(psycopg.errors.ForeignKeyViolation), migrated.transaction():
        migrated.execute("INSERT INTO reader_states(reader_id, updated_at) VALUES (%s, %s)", (new_id(), TIMESTAMP))
    with pytest.raises(psycopg.errors.CheckViolation), migrated.transaction():
        migrated.execute("INSERT INTO archive_index VALUES ('a.db', '2024-Q5', 1, 2, %s, %s, 2, %s)",
                         (TIMESTAMP, TIMESTAMP, TIMESTAMP))
    grantee = _user(migrated)
    with pytest.raises(psycopg.errors.CheckViolation), migrated.transaction():  # revoked before it was made
        migrated.execute("INSERT INTO consents VALUES (%s, %s, %s, 'state', %s, '2024-05-06T07:08:09.122Z')",
                         (new_id(), reader, grantee, TIMESTAMP))
    # Timestamps compare with the application's text.
    assert _rows(migrated, "SELECT count(*) FROM users WHERE created_at >= %s AND created_at < %s",
                 (TIMESTAMP, now_iso())) == [(3,)]
    assert _rows(migrated, "SELECT count(*) FROM users WHERE created_at > %s", (TIMESTAMP,)) == [(0,)]


def test_failed_file_changes_nothing(migrated: psycopg.Connection[Any]) -> None:
    broken = [*pg.load_migrations(), Migration("0002_broken.sql", "CREATE TABLE half (x integer);\nSELECT 1 / 0;\n")]
    with pytest.raises(MigrationError, match=re.escape("0002_broken.sql failed and changed nothing: division by zero")):
        pg.migrate(migrated, broken)
    assert _rows(migrated, "SELECT to_regclass('half')") == [(None,)]
    assert [name for name, _ in pg.status(migrated, broken)["pending"]] == ["0002_broken.sql"]


def test_python_migrations_and_open_transactions_are_refused(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    python = [Migration("0001_x.py", '"""x"""\n')]
    with pytest.raises(MigrationError, match=re.escape("0001_x.py is a Python migration")):
        pg.migrate(conn, python)
    (tmp_path / "0001_a.sql").write_text("SELECT 1;\n")
    (tmp_path / "0002_b.py").write_text('"""b"""\n')
    with pytest.raises(MigrationError, match=re.escape("only NNNN_name.sql")):
        pg.load_migrations(tmp_path)
    conn.execute("SELECT 1")  # a transaction is open now (autocommit is off)
    with pytest.raises(MigrationError, match="no transaction open"):
        pg.migrate(conn)
    conn.rollback()
    assert pg.migrate(conn) == ALL


def test_migration_files() -> None:
    assert pg.migrations_dir() == REPO / "migrations" / "postgres"
    assert ALL == ["0001_init.sql", "0002_reader_assignments.sql", "0003_attention.sql"]
    assert all(m.name != "0001_init.sql" or "json_valid" in m.sql for m in lite.load_migrations())


@pytest.mark.parametrize(("url", "described"), [
    ("postgresql://cursor:hunter2@db.example.com:5433/cursor?sslmode=require&password=x",
     "postgresql://db.example.com:5433/cursor"),
    ("postgres://db.example.com/cursor", "postgresql://db.example.com/cursor"),
    ("postgresql://postgres:pw@/cursor?host=/run/postgresql&port=5432",
     "postgresql:///cursor?host=/run/postgresql&port=5432"),
    ("host=a,b port=1,2 dbname=z user=u password=q", "postgresql://a:1,b:2/z"),
    ("postgresql://[::1]/x", "postgresql://[::1]/x"),
    ("/var/lib/cursor/cursor.db", "postgresql://(unparsable connection string)"),
])
def test_describe_url(url: str, described: str) -> None:
    assert pg.describe_url(url) == described
    assert pg.describe_url(described) == described or "unparsable" in described
    assert "hunter2" not in pg.migrate_hint(url)
    assert described in pg.migrate_hint(url)
