"""The real command line in subprocesses: migrate, serve (driven with
grpcurl), restart, refusals of a database that does not match the code,
create-admin, the database every command takes, and --help and --version.
Every subprocess is bounded by a timeout and killed in the end."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from cursor_grpc import cli
from cursor_grpc.config import ConfigError, OpsSettings, Settings, StorageSettings
from cursor_grpc.server import start_server
from cursor_grpc.storage import open_store
from cursor_grpc.storage.postgres import migrations as pg_migrations
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
    # The hint names the database it was given, so following it migrates that one.
    quoted = shlex.quote(str(behind))
    assert f"`cursor-grpc migrate --db {quoted}`" in refused.stderr
    assert f"`cursor-grpc serve --migrate --db {quoted}`" in refused.stderr

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


def test_serve_refuses_a_metrics_address_in_one_line(tmp_path: Path) -> None:
    db = migrated(tmp_path)
    result = run_cli(tmp_path, "serve", "--db", str(db), "--listen", "127.0.0.1:0",
                     "--metrics-listen", "0.0.0.0:9999", timeout=30)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("cursor-grpc: metrics address '0.0.0.0:9999' is not a loopback address"), line


def test_serve_refuses_a_taken_metrics_port_cleanly(tmp_path: Path) -> None:
    db = migrated(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(tmp_path, "serve", "--db", str(db), "--listen", "127.0.0.1:0",
                         "--metrics-listen", f"127.0.0.1:{port}", timeout=30)
    assert result.returncode == 2, result.stderr
    assert f"cursor-grpc: cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Event loop is closed" not in result.stderr
    assert "serving on" not in result.stderr


@pytest.mark.sqlite_only
def test_a_refused_start_leaves_nothing_running(tmp_path: Path) -> None:
    """The metrics endpoint starts before the gRPC port serves, and a refusal
    closes what was opened: the database is free for the next owner."""
    db = migrated(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = Settings(listen="127.0.0.1:0", storage=StorageSettings(path=db),
                            ops=OpsSettings(metrics_listen=f"127.0.0.1:{taken.getsockname()[1]}"))

        async def refused() -> None:
            with pytest.raises(ConfigError, match="cannot serve metrics"):
                await start_server(settings)

        asyncio.run(refused())
    open_store(settings.storage, owner=True).close()


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


# --- one database for every command ---------------------------------------------------------------------------


@pytest.mark.sqlite_only
@pytest.mark.parametrize("how", ["CURSOR_DB", "--db"])
@pytest.mark.parametrize(("command", "code"), [
    (("create-admin", "--email", "root@example.com"), 3),
    (("serve", "--listen", "127.0.0.1:0"), 3),
    (("backup",), 3),
    (("archive",), 3),
    (("migrate", "--status"), 0),
])
def test_every_command_takes_the_database_from_db_or_cursor_db(
    tmp_path: Path, how: str, command: tuple[str, ...], code: int
) -> None:
    """A database that is not there is named as given, never swapped for the
    default, and nothing is created in its place or at the default."""
    elsewhere = tmp_path / "srv" / "cursor.db"
    env = clean_env(CURSOR_ADMIN_PASSWORD=ADMIN_PASSWORD)
    args: tuple[str, ...] = command
    if how == "CURSOR_DB":
        env["CURSOR_DB"] = str(elsewhere)
    else:
        args = (*command, "--db", str(elsewhere))
    result = run_cli(tmp_path, *args, env=env, timeout=30)
    assert result.returncode == code, result.stderr
    named = result.stdout if code == 0 else result.stderr
    assert str(elsewhere) in named
    assert "var/cursor.db" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing was created"


def test_a_missing_database_hint_names_it_and_serve_migrate(tmp_path: Path) -> None:
    explicit = tmp_path / "mine.db"
    result = run_cli(tmp_path, "create-admin", "--db", str(explicit), "--email", "root@example.com",
                     env=clean_env(CURSOR_ADMIN_PASSWORD=ADMIN_PASSWORD))
    assert result.returncode == 3
    quoted = shlex.quote(str(explicit))
    [line] = result.stderr.splitlines()
    assert line == (f"cursor-grpc: {explicit} does not exist; run `cursor-grpc migrate --db {quoted}` first, "
                    f"or serve with `cursor-grpc serve --migrate --db {quoted}`")
    # Without --db or CURSOR_DB it says that it looked at the default, and how to name the server's database.
    default = run_cli(tmp_path, "create-admin", "--email", "root@example.com",
                      env=clean_env(CURSOR_ADMIN_PASSWORD=ADMIN_PASSWORD))
    assert default.returncode == 3
    [line] = default.stderr.splitlines()
    assert line.startswith("cursor-grpc: var/cursor.db does not exist; run `cursor-grpc migrate --db var/cursor.db`")
    assert "var/cursor.db is the default" in line
    assert "--db or set CURSOR_DB" in line
    assert not (tmp_path / "var").exists()


@pytest.mark.sqlite_only
def test_make_create_admin_uses_the_database_of_make_serve(tmp_path: Path) -> None:
    """The README's flow: `make create-admin` passes on CURSOR_DB as `make
    serve` does (dry run: what make would execute)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[1]
    served = tmp_path / "served.db"
    env = clean_env(CURSOR_DB=str(served))
    shown = subprocess.run([make, "-n", "-C", str(root), "create-admin", "EMAIL=admin@example.com"], env=env,
                           capture_output=True, text=True, timeout=30, check=False)
    assert shown.returncode == 0, shown.stderr
    assert f'cursor-grpc create-admin --db "{served}" --email "admin@example.com"' in shown.stdout
    default = subprocess.run([make, "-n", "-C", str(root), "create-admin", "EMAIL=admin@example.com"],
                             env=clean_env(), capture_output=True, text=True, timeout=30, check=False)
    assert 'create-admin --db "var/cursor.db"' in default.stdout, "the default of make serve, too"


# --- help and version -------------------------------------------------------------------------------------------


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"cursor-grpc {importlib.metadata.version('cursor-grpc')}\n"


def _parsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {"cursor-grpc": parser, **{f"cursor-grpc {name}": sub for name, sub in commands.choices.items()}}


# Options that no environment variable sets: per-run choices, not settings.
NO_ENVIRONMENT = {"--grace", "--email", "--display-name", "--ca-file", "--duration", "--width", "--height"}


def test_every_option_says_its_default_and_environment_variable() -> None:
    for name, parser in _parsers().items():
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or action.dest in {"help", "version"}:
                continue  # switches, and positional arguments
            option = action.option_strings[-1]
            where = f"{name} {option}"
            assert action.help, f"{where} has no help"
            if action.required:
                assert "(required)" in action.help, where
                continue
            assert re.search(r"\(.*default [^)]+\)$", action.help), f"{where}: {action.help!r} names no default"
            if option not in NO_ENVIRONMENT:
                assert re.search(r"\(env CURSOR_[A-Z_]+; default", action.help), f"{where}: {action.help!r}"
    db = _parsers()["cursor-grpc restore"]._option_string_actions["--db"].help
    assert db == "the SQLite file, or postgresql://… for PostgreSQL (env CURSOR_DB; default var/cursor.db)", (
        "restore takes the database like the others")


def test_create_admin_help_names_the_password_variable() -> None:
    assert "CURSOR_ADMIN_PASSWORD" in _parsers()["cursor-grpc create-admin"].format_help()
    assert "CURSOR_LOG_LEVEL" in _parsers()["cursor-grpc"].format_help()


@pytest.mark.postgres
def test_the_commands_on_a_postgresql_url(tmp_path: Path, postgres_database_url: str) -> None:
    """`migrate` (with --status and --dry-run) works on PostgreSQL; the
    commands about SQLite files refuse it in one line; an unreachable server
    is one line too, without the password."""
    url = postgres_database_url
    status = run_cli(tmp_path, "migrate", "--db", url, "--status")
    assert status.returncode == 0, status.stderr
    known = [m.name for m in pg_migrations.load_migrations()]
    assert f"0 applied, {len(known)} pending" in status.stdout
    assert "pending  0001_init.sql" in status.stdout
    dry = run_cli(tmp_path, "migrate", "--db", url, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "CREATE TABLE" in dry.stdout
    migrated = run_cli(tmp_path, "migrate", "--db", url)
    assert migrated.returncode == 0, migrated.stderr
    assert "applied 0001_init.sql" in migrated.stdout
    again = run_cli(tmp_path, "migrate", "--db", url, "--status")
    assert f"{len(known)} applied, 0 pending" in again.stdout
    for command in (("backup",), ("archive",), ("restore", "some.db")):
        refused = run_cli(tmp_path, *command, "--db", url)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert "works on a SQLite file" in refused.stderr
    for command in (("migrate",), ("serve", "--listen", "127.0.0.1:0")):
        unreachable = run_cli(tmp_path, *command, "--db", "postgresql://someone:s3cret-pw@127.0.0.1:1/cursor")
        assert unreachable.returncode == 2, unreachable.stderr
        assert unreachable.stderr.strip().startswith("cursor-grpc: cannot reach postgresql://127.0.0.1:1/cursor")
        assert "s3cret-pw" not in unreachable.stderr
        assert "Traceback" not in unreachable.stderr
