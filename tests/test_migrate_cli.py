"""`cursor-grpc migrate --status / --dry-run`, the automatic pre-migration
backup, and the chunked table rebuild (new table, backfill in chunks, swap)
used by a real migration."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest

from cursor_grpc.config import StorageSettings
from cursor_grpc.storage.sqlite.backup import list_backups, verify_backup
from cursor_grpc.storage.sqlite.connection import open_connection
from cursor_grpc.storage.sqlite.files import sha256_file
from cursor_grpc.storage.sqlite.migrations import load_migrations, migrate
from cursor_grpc.storage.sqlite.rebuild import TableRebuild, rebuild_table
from tests.helpers import db_rows
from tests.ops_support import run_cli

pytestmark = pytest.mark.sqlite_only  # SQLite's migration runner and table rebuilds

KNOWN = [m.name for m in load_migrations()]
REBUILD = "0005_interactions_payload_object.py"
NAMES = "0006_design_names.sql"


def old_database(path: Path, upto: str = "0004_archive_index.sql", interactions: int = 1200) -> None:
    """A database an older version made and used: migrations up to `upto`, data in it."""
    conn = open_connection(StorageSettings(path=path))
    known = load_migrations()
    migrate(conn, known[: [m.name for m in known].index(upto) + 1])
    # user_id before 0006, reader_id since.
    reader = "reader_id" if upto >= NAMES else "user_id"
    conn.execute("BEGIN")
    conn.execute("INSERT INTO users(id, email, password_hash, display_name, created_at, updated_at) "
                 "VALUES ('u1', 'u1@example.com', 'x', 'U', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')")
    conn.executemany(
        f"INSERT INTO interactions(id, {reader}, type, payload, summary, created_at) VALUES (?, 'u1', 'answer', ?, '', "
        "'2026-01-01T00:00:00.000Z')",
        [(f"i{n}", json.dumps({"n": n})) for n in range(interactions)],
    )
    conn.execute("DELETE FROM interactions WHERE id IN ('i1198', 'i1199')")  # AUTOINCREMENT remembers 1200
    conn.execute("UPDATE interactions SET processed = 1 WHERE id = 'i5'")
    conn.execute("COMMIT")
    conn.close()


def test_status_and_dry_run_change_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "new.db"
    status = run_cli("migrate", "--status", "--db", str(missing))
    assert status.returncode == 0, status.stderr
    assert f"0 applied, {len(KNOWN)} pending" in status.stdout
    assert all(f"pending  {name}" in status.stdout for name in KNOWN)
    assert not missing.exists()

    db = tmp_path / "old.db"
    old_database(db)
    before = sha256_file(db)
    status = run_cli("migrate", "--status", "--db", str(db))
    assert status.returncode == 0
    pending = KNOWN[KNOWN.index("0004_archive_index.sql") + 1:]
    assert f"{len(KNOWN) - len(pending)} applied, {len(pending)} pending" in status.stdout
    assert "applied  0001_init.sql" in status.stdout
    assert f"pending  {REBUILD}" in status.stdout
    assert f"pending  {NAMES}" in status.stdout

    dry = run_cli("migrate", "--dry-run", "--db", str(db))
    assert dry.returncode == 0, dry.stderr
    assert f"would apply {len(pending)} migration(s), in this order after a verified backup" in dry.stdout
    assert f"== {REBUILD}" in dry.stdout
    assert "backfill in chunks" in dry.stdout, "a Python migration is described by its docstring"
    assert dry.stdout.index(f"== {REBUILD}") < dry.stdout.index(f"== {NAMES}")
    assert "RENAME COLUMN user_id TO reader_id" in dry.stdout, "an SQL migration shows its SQL"
    dry_fresh = run_cli("migrate", "--dry-run", "--db", str(missing))
    assert "CREATE TABLE users" in dry_fresh.stdout, "SQL migrations show their SQL"
    assert sha256_file(db) == before
    assert not (tmp_path / "backups").exists()
    assert not missing.exists()

    done = run_cli("migrate", "--db", str(db), "--no-backup")
    assert done.returncode == 0, done.stderr
    assert "up to date" in run_cli("migrate", "--dry-run", "--db", str(db)).stdout
    assert f"{len(KNOWN)} applied, 0 pending" in run_cli("migrate", "--status", "--db", str(db)).stdout


def test_migrate_takes_a_verified_backup_first_and_rebuilds_in_chunks(tmp_path: Path) -> None:
    db = tmp_path / "prod.db"
    old_database(db)
    before = {t: db_rows(db, f"SELECT count(*) FROM {t}")[0][0] for t in ("users", "interactions")}
    content = db_rows(db, "SELECT seq, id, user_id, type, payload, summary, processed, created_at FROM interactions "
                       "ORDER BY seq")  # the names before 0006

    done = run_cli("migrate", "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert "backup before migrating:" in done.stdout
    assert f"applied {REBUILD}" in done.stdout
    assert f"applied {NAMES}" in done.stdout
    # Not a terminal: the backup's and then the migrations' progress as plain lines, the summary once.
    pending = len(KNOWN) - KNOWN.index(REBUILD)
    lines = done.stdout.splitlines()
    assert [line for line in lines if line.startswith("migrate: ")] == [
        f"migrate: {n}/{pending} migrations ({n * 100 // pending}%)" for n in range(pending + 1)
    ]
    assert lines.index(f"migrate: {pending}/{pending} migrations (100%)") < lines.index(f"applied {REBUILD}")
    backup_progress = [line for line in lines if line.startswith("backup: ")]
    assert backup_progress[-1].endswith("pages (100%)")
    assert done.stdout.count("backup before migrating:") == 1
    assert "verified" not in done.stderr, "the backup's own summary is not logged a second time"
    [backup] = list_backups(tmp_path / "backups", "prod")
    manifest = verify_backup(backup)
    assert manifest["reason"] == "pre-migration"
    assert manifest["schema_version"] == "0004_archive_index.sql", "the backup is of the database before migrating"
    assert {t: manifest["tables"][t] for t in before} == before

    # The rebuilt table: same rows, same counter, same indexes and trigger, new constraint.
    assert db_rows(db, "SELECT seq, id, reader_id, type, payload, summary, processed, created_at FROM interactions "
                    "ORDER BY seq") == content
    assert db_rows(db, "SELECT seq FROM sqlite_sequence WHERE name = 'interactions'") == [(1200,)]
    names = {r[0] for r in db_rows(db, "SELECT name FROM sqlite_master WHERE tbl_name = 'interactions'")}
    assert {"idx_interactions_user_seq", "idx_interactions_type_seq", "interactions_append_only"} <= names
    assert not any("rebuild" in n for n in names)
    assert not db_rows(db, "SELECT 1 FROM sqlite_master WHERE name = 'cursor_rebuild_progress'")
    conn = apsw.Connection(str(db))
    with pytest.raises(apsw.ConstraintError):
        conn.execute("INSERT INTO interactions(id, reader_id, type, payload, created_at) "
                     "VALUES ('bad', 'u1', 'answer', '[1, 2]', '2026-01-01T00:00:00.000Z')")
    with pytest.raises(apsw.ConstraintError, match="append-only"):
        conn.execute("UPDATE interactions SET payload = '{}' WHERE id = 'i3'")
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()

    # Nothing pending: no second backup.
    again = run_cli("migrate", "--db", str(db))
    assert "up to date" in again.stdout
    assert len(list_backups(tmp_path / "backups", "prod")) == 1


def test_no_backup_no_migration(tmp_path: Path) -> None:
    db = tmp_path / "guarded.db"
    old_database(db, interactions=10)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the backup folder should be")
    failed = run_cli("migrate", "--db", str(db), "--backup-dir", str(blocker))
    assert failed.returncode == 1
    assert "nothing was migrated" in failed.stderr
    assert f"pending  {REBUILD}" in run_cli("migrate", "--status", "--db", str(db)).stdout


def test_a_migration_that_cannot_apply_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "bad.db"
    old_database(db, interactions=10)
    conn = apsw.Connection(str(db))
    conn.execute("INSERT INTO interactions(id, user_id, type, payload, created_at) "
                 "VALUES ('arr', 'u1', 'answer', '[1]', '2026-01-01T00:00:00.000Z')")
    conn.close()
    schema_before = db_rows(db, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    failed = run_cli("migrate", "--db", str(db), "--no-backup")
    assert failed.returncode == 3
    assert f"{REBUILD} failed and changed nothing" in failed.stderr
    assert "CHECK constraint failed" in failed.stderr
    assert db_rows(db, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == schema_before


_REBUILD_SCRIPT = """
import sys
from cursor_grpc.config import StorageSettings
from cursor_grpc.storage.sqlite.rebuild import TableRebuild, rebuild_table
from cursor_grpc.storage.sqlite.connection import open_connection
conn = open_connection(StorageSettings(path={db!r}))
rebuild_table(conn, TableRebuild("interactions", {definition!r}, chunk_rows=200), pause_seconds=0.05)
"""

NEW_DEFINITION = """CREATE TABLE interactions (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    reader_id  TEXT NOT NULL REFERENCES users(id),
    type       TEXT NOT NULL CHECK (length(type) BETWEEN 1 AND 32),
    payload    TEXT NOT NULL CHECK (json_valid(payload)),
    summary    TEXT NOT NULL DEFAULT '',
    processed  INTEGER NOT NULL DEFAULT 0 CHECK (processed IN (0, 1)),
    created_at TEXT NOT NULL,
    note       TEXT NOT NULL DEFAULT ''
) STRICT"""


def test_rebuild_resumes_after_a_kill_and_keeps_concurrent_writes(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    old_database(db, upto=KNOWN[-1], interactions=3000)
    process = subprocess.Popen(
        [sys.executable, "-c", _REBUILD_SCRIPT.format(db=str(db), definition=NEW_DEFINITION)],
        stderr=subprocess.PIPE, text=True,
    )
    conn = apsw.Connection(str(db))
    conn.set_busy_timeout(5000)

    def progress() -> int:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'cursor_rebuild_progress'").fetchall():
            return 0
        found = conn.execute("SELECT last_rowid FROM cursor_rebuild_progress").fetchall()
        return int(found[0][0]) if found else 0

    deadline = time.monotonic() + 30
    while progress() < 1000:
        assert process.poll() is None, process.stderr.read() if process.stderr else "the rebuild ended early"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    # Writes while the rebuild is half done: all must survive the swap.
    conn.execute("INSERT INTO interactions(id, reader_id, type, payload, created_at) "
                 "VALUES ('late', 'u1', 'answer', '{\"late\": true}', '2026-02-01T00:00:00.000Z')")
    conn.execute("UPDATE interactions SET processed = 1 WHERE id IN ('i10', 'i2500')")
    conn.execute("DELETE FROM interactions WHERE id IN ('i20', 'i2600')")
    expected = conn.execute("SELECT seq, id, processed FROM interactions ORDER BY seq").fetchall()
    counter = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'interactions'").fetchall()
    conn.close()

    conn = open_connection(StorageSettings(path=db))
    stats = rebuild_table(conn, TableRebuild("interactions", NEW_DEFINITION, chunk_rows=500))
    assert stats.resumed
    assert 0 < stats.rows_copied < 3000, "it went on from where the killed run stopped"
    assert conn.execute("SELECT seq, id, processed FROM interactions ORDER BY seq").fetchall() == expected
    assert conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'interactions'").fetchall() == counter
    assert "STRICT" in conn.execute("SELECT sql FROM sqlite_master WHERE name = 'interactions'").fetchall()[0][0]
    assert conn.execute("SELECT count(*) FROM interactions WHERE note = ''").fetchall()[0][0] == len(expected)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert stats.longest_chunk_seconds < 0.5
    conn.close()
