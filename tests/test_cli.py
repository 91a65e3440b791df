"""The real command line in subprocesses: migrate, serve (driven with
grpcurl), restart, refusals of a database that does not match the code, and
create-admin. Every subprocess is bounded by a timeout and killed in the end."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from cursor_grpc.storage.sqlite.migrations import load_migrations
from tests.databases import TestDatabase
from tests.helpers import db_rows
from tests.procs import ServerProcess

BIN = Path(sys.executable).parent
GRPCURL = BIN / "grpcurl"
PASSWORD = "correct horse battery staple"
ADMIN_PASSWORD = "a long admin password"
SERVICES = ("cursor.v1.AuthService", "cursor.v1.ReaderService", "cursor.v1.ConsultantService",
            "cursor.v1.AdminService", "grpc.health.v1.Health")


def cli_command() -> list[str]:
    script = shutil.which("cursor-grpc", path=str(BIN))
    return [script] if script else [sys.executable, "-m", "cursor_grpc"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any CURSOR_* setting of the machine running the tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURSOR_")}
    env.update(extra)
    return env


def run_cli(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60,
            stdin: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli_command(), *args], cwd=cwd, env=env or clean_env(), capture_output=True, text=True,
        timeout=timeout, stdin=stdin, check=False,
    )


def write(db: Path, sql: str, params: tuple[Any, ...] = ()) -> None:
    conn = apsw.Connection(str(db))
    conn.set_busy_timeout(5000)
    try:
        conn.execute(sql, params)
    finally:
        conn.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """Factory of served subprocesses; each is killed at the end whatever happened."""
    started: list[ServerProcess] = []

    def start(db: Path | str, *extra: str) -> ServerProcess:
        served = ServerProcess(db, args=("--grace", "2", *extra), command=cli_command(), cwd=tmp_path,
                               base_env=clean_env(), wait=False)
        started.append(served)
        return served

    try:
        yield start
    finally:
        for served in started:
            served.kill()


def grpcurl(address: str, *args: str, data: Any = None, token: str = "") -> subprocess.CompletedProcess[str]:
    command = [str(GRPCURL), "-plaintext", "-max-time", "10"]
    if token:
        command += ["-H", f"authorization: Bearer {token}"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    return subprocess.run([*command, address, *args], capture_output=True, text=True, timeout=30, check=False)


def grpcurl_json(address: str, method: str, data: Any = None, token: str = "") -> Any:
    result = grpcurl(address, method, data=data if data is not None else {}, token=token)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def migrate(cwd: Path, db: Path | str) -> None:
    """`cursor-grpc migrate --db DB`, which must succeed."""
    result = run_cli(cwd, "migrate", "--db", str(db))
    assert result.returncode == 0, result.stderr


def migrated(tmp_path: Path, name: str = "cursor.db") -> Path:
    """A migrated SQLite file in the test's folder."""
    db = tmp_path / name
    migrate(tmp_path, db)
    return db


# --- migrate ----------------------------------------------------------------------------------------------------------


@pytest.mark.sqlite_only
def test_migrate_twice_changes_nothing_the_second_time(tmp_path: Path) -> None:
    db = tmp_path / "cursor.db"
    first = run_cli(tmp_path, "migrate", "--db", str(db))
    assert first.returncode == 0, first.stderr
    names = [m.name for m in load_migrations()]
    assert [line for line in first.stdout.splitlines() if line.startswith("applied ")] == [
        f"applied {n}" for n in names
    ]
    ledger = db_rows(db, "SELECT name, checksum, applied_at FROM schema_migrations ORDER BY name")
    schema = db_rows(db, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    assert [r[0] for r in ledger] == names
    time.sleep(0.01)  # a rewritten applied_at would differ
    second = run_cli(tmp_path, "migrate", "--db", str(db))
    assert second.returncode == 0, second.stderr
    assert "schema is up to date" in second.stdout
    assert "applied" not in second.stdout
    assert db_rows(db, "SELECT name, checksum, applied_at FROM schema_migrations ORDER BY name") == ledger
    assert db_rows(db, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == schema


# --- serve, grpcurl, restart ---------------------------------------------------------------------------------


def test_serve_answers_grpcurl_and_survives_a_restart(tmp_path: Path, serve: Any, database: TestDatabase) -> None:
    assert GRPCURL.exists(), "grpcurl is installed next to the interpreter by `make setup`"
    db = database.url
    migrate(tmp_path, db)
    created = run_cli(tmp_path, "create-admin", "--db", db, "--email", "boss@example.com",
                      env=clean_env(CURSOR_ADMIN_PASSWORD=ADMIN_PASSWORD))
    assert created.returncode == 0, created.stderr

    server = serve(db).wait_serving()
    # The served process runs with the tuned GIL switch interval and says so.
    assert "GIL switch interval 1 ms" in server.stderr
    listed = grpcurl(server.address, "list")
    assert listed.returncode == 0, listed.stderr
    for service in SERVICES:
        assert service in listed.stdout.split()
    assert grpcurl_json(server.address, "grpc.health.v1.Health/Check") == {"status": "SERVING"}

    reader = grpcurl_json(server.address, "cursor.v1.AuthService/RegisterReader",
                          {"email": "ann@example.com", "password": PASSWORD, "display_name": "Ann"})["reader"]
    assert reader["name"].startswith("readers/")
    token = grpcurl_json(server.address, "cursor.v1.AuthService/Login",
                         {"email": "ann@example.com", "password": PASSWORD})["session"]["token"]
    recorded = grpcurl_json(
        server.address, "cursor.v1.ReaderService/RecordInteraction",
        {"interaction": {"type": "progress", "payload_json": json.dumps({"percent": 0.5, "step": 3}),
                         "summary": "half way"}},
        token=token,
    )
    interaction = recorded["interaction"]["name"]
    assert interaction.startswith(reader["name"] + "/interactions/")
    assert recorded["state"]["progress"] == 0.5
    # Without the token the same call is refused.
    refused = grpcurl(server.address, "cursor.v1.ReaderService/GetMyState", data={})
    assert refused.returncode != 0
    assert "Unauthenticated" in refused.stderr
    # The admin made by create-admin signs in as a consultant and sees the reader.
    admin_token = grpcurl_json(server.address, "cursor.v1.AuthService/Login", {
        "email": "boss@example.com", "password": ADMIN_PASSWORD, "account_kind": "ACCOUNT_KIND_CONSULTANT",
    })["session"]["token"]
    active = grpcurl_json(server.address, "cursor.v1.ConsultantService/ListActiveReaders", {}, token=admin_token)
    assert [r["name"] for r in active["readers"]] == [reader["name"]]

    assert server.terminate() == 0, server.stderr
    assert "database closed" in server.stderr
    for secret in (ADMIN_PASSWORD, PASSWORD, token, admin_token):
        assert secret not in server.stderr, "no password or token is ever logged"

    again = serve(db).wait_serving()
    token = grpcurl_json(again.address, "cursor.v1.AuthService/Login",
                         {"email": "ann@example.com", "password": PASSWORD})["session"]["token"]
    listed_interactions = grpcurl_json(again.address, "cursor.v1.ReaderService/ListMyInteractions", {}, token=token)
    assert [i["name"] for i in listed_interactions["interactions"]] == [interaction]
    assert again.terminate() == 0, again.stderr
    assert "database closed" in again.stderr


# --- refusals -----------------------------------------------------------------------------------------------------


@pytest.mark.sqlite_only
def test_serve_refuses_a_database_with_an_unknown_migration(tmp_path: Path, serve: Any) -> None:
    db = migrated(tmp_path)
    write(db, "INSERT INTO schema_migrations(name, checksum, applied_at) VALUES (?, ?, ?)",
          ("9999_from_the_future.sql", "0" * 64, "2030-01-01T00:00:00.000Z"))
    server = serve(db)
    assert server.exit_code() != 0
    assert "does not know" in server.stderr
    assert "9999_from_the_future.sql" in server.stderr
    assert "Traceback" not in server.stderr
    assert "serving on" not in server.stderr
    # migrate refuses it too, and leaves it alone.
    result = run_cli(tmp_path, "migrate", "--db", str(db))
    assert result.returncode != 0
    assert "9999_from_the_future.sql" in result.stderr
    assert db_rows(db, "SELECT count(*) FROM schema_migrations WHERE name = '9999_from_the_future.sql'") == [(1,)]


@pytest.mark.sqlite_only
def test_serve_refuses_a_database_whose_migration_changed(tmp_path: Path, serve: Any) -> None:
    db = migrated(tmp_path)
    first = load_migrations()[0].name
    write(db, "UPDATE schema_migrations SET checksum = ? WHERE name = ?", ("f" * 64, first))
    server = serve(db)
    assert server.exit_code() != 0
    assert first in server.stderr
    assert "modified" in server.stderr
    assert "Traceback" not in server.stderr
    assert "serving on" not in server.stderr


@pytest.mark.sqlite_only
def test_serve_refuses_pending_migrations_unless_told_to_migrate(tmp_path: Path, serve: Any) -> None:
    fresh = tmp_path / "fresh.db"
    refused = serve(fresh)
    assert refused.exit_code() != 0
    assert "migrate" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not fresh.exists(), "refusing must not create the database file"

    # A database one migration behind.
    behind = migrated(tmp_path, "behind.db")
    last = load_migrations()[-1].name
    write(behind, "DELETE FROM schema_migrations WHERE name = ?", (last,))
    refused = serve(behind)
    assert refused.exit_code() != 0
    assert "pending" in refused.stderr
    assert last in refused.stderr
    assert "Traceback" not in refused.stderr

    served = serve(fresh, "--migrate").wait_serving()
    assert grpcurl_json(served.address, "grpc.health.v1.Health/Check") == {"status": "SERVING"}
    assert served.terminate() == 0, served.stderr
    assert [r[0] for r in db_rows(fresh, "SELECT name FROM schema_migrations ORDER BY name")] == [
        m.name for m in load_migrations()
    ]


# --- create-admin ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "value", "says"), [
    ("CURSOR_ARGON2_THREADS", "two", "CURSOR_ARGON2_THREADS must be a whole number, not 'two'"),
    ("CURSOR_FANOUT_INTERVAL_SECONDS", "5ms", "CURSOR_FANOUT_INTERVAL_SECONDS must be a number, not '5ms'"),
    ("CURSOR_ARGON2_PRIORITY", "high", "CURSOR_ARGON2_PRIORITY must be one of auto, idle, low, normal, not 'high'"),
    ("CURSOR_BACKUP_EVERY", "soon", "CURSOR_BACKUP_EVERY: not a duration: 'soon'"),
    ("CURSOR_SYNCHRONOUS", "OFF", "synchronous must be NORMAL or FULL, not 'OFF'"),
    ("CURSOR_SWITCH_INTERVAL_SECONDS", "0", "CURSOR_SWITCH_INTERVAL_SECONDS must be above 0 and at most 0.1, not 0"),
])
def test_serve_refuses_a_bad_setting_in_one_line(tmp_path: Path, setting: str, value: str, says: str) -> None:
    db = migrated(tmp_path)
    result = run_cli(tmp_path, "serve", "--db", str(db), "--listen", "127.0.0.1:0",
                     env=clean_env(**{setting: value}), timeout=30)
    assert result.returncode == 2
    assert f"cursor-grpc: {says}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "serving on" not in result.stderr


def test_serve_says_when_it_cannot_listen(tmp_path: Path, serve: Any) -> None:
    db = migrated(tmp_path)
    first = serve(db).wait_serving()
    # Another database: the same one is refused earlier (tests/test_single_owner.py).
    other = migrated(tmp_path, "other.db")
    result = run_cli(tmp_path, "serve", "--db", str(other), "--listen", first.address, timeout=30)
    assert result.returncode == 2
    assert f"cursor-grpc: cannot listen on {first.address}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("command", "where"), [
    (("migrate", "--db", "mysql://cursor:secret@localhost/cursor"), {}),
    (("serve", "--listen", "127.0.0.1:0"), {"CURSOR_DB": "mysql://cursor:secret@localhost/cursor"}),
    (("create-admin", "--email", "root@example.com"), {"CURSOR_DB": "mysql://cursor:secret@localhost/cursor"}),
])
def test_an_unknown_database_scheme_is_refused_in_one_line(
    tmp_path: Path, command: tuple[str, ...], where: dict[str, str]
) -> None:
    result = run_cli(tmp_path, *command, env=clean_env(CURSOR_ADMIN_PASSWORD=ADMIN_PASSWORD, **where), timeout=30)
    assert result.returncode == 2, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("cursor-grpc: "), line
    assert "unknown backend 'mysql'" in line
    assert "secret" not in result.stderr, "the rest of the URL may hold a password"
    assert list(tmp_path.iterdir()) == [], "nothing was created"


@pytest.mark.sqlite_only
def test_a_sqlite_url_names_the_file(tmp_path: Path) -> None:
    db = tmp_path / "by_url.db"
    migrate(tmp_path, f"sqlite://{db}")
    assert db.exists()
    assert [m.name for m in load_migrations()] == [row[0] for row in db_rows(
        db, "SELECT name FROM schema_migrations ORDER BY name")]


def test_create_admin(tmp_path: Path, database: TestDatabase) -> None:
    db = database.url
    migrate(tmp_path, db)
    with_password = clean_env(CURSOR_ADMIN_PASSWORD=ADMIN_PASSWORD)

    first = run_cli(tmp_path, "create-admin", "--db", db, "--email", "Root@Example.com",
                    "--display-name", "Root", env=with_password)
    assert first.returncode == 0, first.stderr
    assert re.search(r"created admin consultants/[0-9a-f-]{36} <root@example.com>", first.stdout)
    assert ADMIN_PASSWORD not in first.stdout + first.stderr
    [(cid, role, name, password_hash)] = database.rows("SELECT id, role, display_name, password_hash FROM consultants")
    assert (role, name) == ("admin", "Root")
    assert password_hash.startswith("$argon2id$")
    assert ADMIN_PASSWORD not in password_hash
    assert database.rows("SELECT actor_type, actor_id, action, target_id FROM audit_logs") == [
        ("system", None, "consultant.create", cid)
    ]

    second = run_cli(tmp_path, "create-admin", "--db", db, "--email", "second@example.com", env=with_password)
    assert second.returncode != 0
    assert "--additional" in second.stderr
    assert database.rows("SELECT count(*) FROM consultants") == [(1,)]

    extra = run_cli(tmp_path, "create-admin", "--db", db, "--email", "second@example.com", "--additional",
                    env=with_password)
    assert extra.returncode == 0, extra.stderr
    assert database.rows("SELECT count(*) FROM consultants WHERE role = 'admin'") == [(2,)]

    # No password in the environment and no terminal to ask on: refused, nothing written.
    no_password = run_cli(tmp_path, "create-admin", "--db", db, "--email", "third@example.com", "--additional")
    assert no_password.returncode != 0
    assert "CURSOR_ADMIN_PASSWORD" in no_password.stderr
    weak = run_cli(tmp_path, "create-admin", "--db", db, "--email", "third@example.com", "--additional",
                   env=clean_env(CURSOR_ADMIN_PASSWORD="short"))
    assert weak.returncode != 0
    assert "at least 10" in weak.stderr
    duplicate = run_cli(tmp_path, "create-admin", "--db", db, "--email", "root@example.com", "--additional",
                        env=with_password)
    assert duplicate.returncode != 0
    assert "already exists" in duplicate.stderr
    assert database.rows("SELECT count(*) FROM consultants") == [(2,)]
    assert database.rows("SELECT count(*) FROM audit_logs") == [(2,)]


def test_create_admin_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    db = tmp_path / "nothing.db"
    result = run_cli(tmp_path, "create-admin", "--db", str(db), "--email", "root@example.com",
                     env=clean_env(CURSOR_ADMIN_PASSWORD=ADMIN_PASSWORD))
    assert result.returncode != 0
    assert "migrate" in result.stderr
    assert "Traceback" not in result.stderr
    assert not db.exists()
