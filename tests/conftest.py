"""Fixtures: a real server on a free loopback port over a real SQLite file in
a temp dir, and real gRPC channels to it."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cursor.v1 import (
    admin_service_pb2_grpc,
    auth_service_pb2,
    auth_service_pb2_grpc,
    consultant_service_pb2_grpc,
    reader_service_pb2_grpc,
    resources_pb2,
)
from cursor_grpc import cli
from cursor_grpc.config import AuthSettings, Settings, StorageSettings
from cursor_grpc.server import RunningServer, start_server
from cursor_grpc.storage.sqlite.store import apply_migrations

PASSWORD = "correct horse battery staple"
ADMIN_EMAIL = "admin@example.com"
_counter = itertools.count()


def test_settings(db_path: Path, **auth: Any) -> Settings:
    """Real defaults, except that every test talks from 127.0.0.1, so the
    per-peer login limit is raised (its own test lowers it again)."""
    auth_settings = dataclasses.replace(
        AuthSettings(), **{"peer_login_burst": 100_000, "peer_login_per_minute": 1_000_000.0, **auth}
    )
    return Settings(listen="127.0.0.1:0", storage=StorageSettings(path=db_path), auth=auth_settings)


class ServerThread:
    """The real server on its own event loop in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.running: RunningServer | None = None
        self._thread = threading.Thread(target=self._run, name="test-server", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        assert self.running is not None
        self.address = f"127.0.0.1:{self.running.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def boot() -> None:
            try:
                self.running = await start_server(self.settings)
            except BaseException as error:
                self._error = error
            finally:
                self._ready.set()

        self.loop.run_until_complete(boot())
        if self._error is None:
            self.loop.run_forever()
        self.loop.close()

    def call(self, coroutine: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop (to reach its internals)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def app(self) -> Any:
        assert self.running is not None
        return self.running.app

    def stop(self, grace: float = 2.0) -> None:
        """Stop gracefully; safe to call twice."""
        if self.loop.is_closed():
            return
        if self.running is not None:
            self.call(self.running.stop(grace))
            self.running = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@dataclasses.dataclass
class Client:
    """Stubs on one channel, plus the token of whoever signed in."""

    channel: grpc.Channel
    token: str = ""
    account: str = ""

    def __post_init__(self) -> None:
        self.auth = auth_service_pb2_grpc.AuthServiceStub(self.channel)
        self.reader = reader_service_pb2_grpc.ReaderServiceStub(self.channel)
        self.consultant = consultant_service_pb2_grpc.ConsultantServiceStub(self.channel)
        self.admin = admin_service_pb2_grpc.AdminServiceStub(self.channel)

    @property
    def md(self) -> tuple[tuple[str, str]]:
        return bearer(self.token)

    def login(self, email: str, password: str = PASSWORD, kind: int = 0) -> Client:
        session = self.auth.Login(
            auth_service_pb2.LoginRequest(email=email, password=password, account_kind=kind)
        ).session
        return Client(self.channel, session.token, session.account)


class Harness:
    """What a test gets: the server, a way to make clients, an admin."""

    def __init__(self, server: ServerThread, db_path: Path) -> None:
        self.server = server
        self.db_path = db_path
        self.channel = grpc.insecure_channel(server.address)
        self.anonymous = Client(self.channel)

    def new_reader(self, name: str | None = None) -> Client:
        n = next(_counter)
        email = f"{name or 'reader'}{n}@example.com"
        self.anonymous.auth.RegisterReader(
            auth_service_pb2.RegisterReaderRequest(email=email, password=PASSWORD, display_name=name or f"Reader {n}")
        )
        return self.anonymous.login(email, kind=resources_pb2.ACCOUNT_KIND_READER)

    def admin(self) -> Client:
        return self.anonymous.login(ADMIN_EMAIL, kind=resources_pb2.ACCOUNT_KIND_CONSULTANT)

    def new_consultant(self, role: int = resources_pb2.CONSULTANT_ROLE_CONSULTANT) -> Client:
        from cursor.v1 import admin_service_pb2

        n = next(_counter)
        email = f"consultant{n}@example.com"
        self.admin().admin.CreateConsultant(
            admin_service_pb2.CreateConsultantRequest(email=email, password=PASSWORD, display_name=f"C {n}", role=role),
            metadata=self.admin_md(),
        )
        return self.anonymous.login(email, kind=resources_pb2.ACCOUNT_KIND_CONSULTANT)

    def admin_md(self) -> tuple[tuple[str, str]]:
        if not hasattr(self, "_admin"):
            self._admin = self.admin()
        return self._admin.md

    def close(self) -> None:
        self.channel.close()


def create_admin(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURSOR_ADMIN_PASSWORD", PASSWORD)
    assert cli.main(["--log-level", "WARNING", "create-admin", "--db", str(db_path), "--email", ADMIN_EMAIL]) == 0


@pytest.fixture
def make_harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Factory: start a server (on a fresh or given database) with settings overrides."""
    started: list[Harness] = []

    def make(db_path: Path | None = None, **auth: Any) -> Harness:
        path = db_path or tmp_path / f"cursor{len(started)}.db"
        fresh = not path.exists()
        apply_migrations(StorageSettings(path=path))
        if fresh:
            create_admin(path, monkeypatch)
        harness = Harness(ServerThread(test_settings(path, **auth)), path)
        started.append(harness)
        return harness

    yield make
    for harness in started:
        harness.close()
        harness.server.stop()


@pytest.fixture
def h(make_harness: Any) -> Harness:
    """A running server on a fresh database with one admin."""
    return make_harness()  # type: ignore[no-any-return]
