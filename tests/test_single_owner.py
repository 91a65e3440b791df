"""One server per database: a second `serve` (or a `migrate`) on a file a
server holds refuses at once, naming the holder; a crashed server leaves no
lock behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import grpc
import pytest

from cursor.v1 import auth_service_pb2 as apb
from cursor.v1 import auth_service_pb2_grpc
from cursor_grpc.storage import DatabaseInUse
from tests import conftest
from tests.ops_support import run_cli
from tests.procs import ServerProcess

pytestmark = pytest.mark.sqlite_only  # the lock file beside the SQLite database


def register(address: str, email: str) -> None:
    with grpc.insecure_channel(address) as channel:
        auth_service_pb2_grpc.AuthServiceStub(channel).RegisterReader(
            apb.RegisterReaderRequest(email=email, password="correct horse battery", display_name="A"), timeout=30
        )


def test_a_second_server_on_the_same_database_refuses_naming_the_first(tmp_path: Path) -> None:
    db = tmp_path / "one.db"
    first = ServerProcess(db)
    try:
        second = ServerProcess(db, wait=False)
        assert second.exit_code(timeout=60) == 2
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        refusal = lines[-1]
        assert refusal.startswith("cursor-grpc: "), second.stderr
        assert f"pid {first.process.pid}" in refusal, refusal
        assert str(db) in refusal
        assert "Traceback" not in second.stderr
        # The first one is unharmed and still writes.
        register(first.address, "ann@example.com")

        migrate = run_cli("migrate", "--db", str(db), "--no-backup")
        assert migrate.returncode == 2, migrate.stderr
        assert f"a running server (pid {first.process.pid})" in migrate.stderr
    finally:
        first.kill()
    # Killed, not stopped: the kernel dropped the lock, so a new server starts.
    again = ServerProcess(db)
    try:
        register(again.address, "bob@example.com")
    finally:
        again.terminate()


def test_two_servers_in_one_process_cannot_share_a_database(tmp_path: Path, make_harness: Any) -> None:
    h = make_harness()
    with pytest.raises(DatabaseInUse, match=f"pid {os.getpid()}"):
        conftest.ServerThread(conftest.test_settings(h.db_path))
    assert h.new_reader().token
