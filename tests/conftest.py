"""Fixtures: a real server on a free loopback port over a real database of
each backend under test (tests/databases.py), and real gRPC channels to it.

Every test that takes `backend` (directly, or through `make_harness`, `h` or
`database`) runs once per backend `CURSOR_TEST_BACKENDS` selects; one marked
`sqlite_only` is about SQLite itself and runs on SQLite alone."""

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
from cursor_grpc.config import AttentionSettings, AuthSettings, LiveSettings, Settings
from cursor_grpc.server import RunningServer, start_server
from tests.databases import BACKENDS, Backend, TestDatabase, as_database, backends_under_test, sqlite_file
from tests.servers import (  # noqa: F401 - the suite's own PostgreSQL, NATS and Redis (fixtures)
    nats_server,
    nats_url,
    postgres_database_url,
    postgres_server,
    redis_server,
    redis_url,
)

PASSWORD = "correct horse battery staple"
ADMIN_EMAIL = "admin@example.com"
_counter = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    backends_under_test()  # a bad CURSOR_TEST_BACKENDS stops the run before it starts
    config.addinivalue_line(
        "markers", "sqlite_only: about SQLite itself (files, WAL, backups, archives, the lock file, "
        "migrations); runs on SQLite whatever CURSOR_TEST_BACKENDS selects",
    )
    config.addinivalue_line(
        "markers", "postgres_only: about the PostgreSQL backend itself (its connections, its server); "
        "runs on PostgreSQL when CURSOR_TEST_BACKENDS selects it, else not at all",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One run per backend under test for every test that needs a database."""
    if "backend" in metafunc.fixturenames:
        names = ["sqlite"] if metafunc.definition.get_closest_marker("sqlite_only") else backends_under_test()
        if metafunc.definition.get_closest_marker("postgres_only"):
            names = [name for name in names if name == "postgresql"]
        metafunc.parametrize("backend", names, indirect=True, scope="module")


@pytest.fixture(scope="module")
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The backend under test (a parameter: see pytest_generate_tests)."""
    made = BACKENDS[request.param](request)
    yield made
    made.close()


@pytest.fixture
def database(backend: Backend, tmp_path: Path) -> TestDatabase:
    """A fresh, empty database of the backend under test, not migrated."""
    return backend.fresh_database(tmp_path, "cursor")


def test_settings(database: TestDatabase | Path, **auth: Any) -> Settings:
    """Real defaults, except that every test talks from 127.0.0.1, so the
    per-peer login limit is raised (its own test lowers it again)."""
    auth_settings = dataclasses.replace(
        AuthSettings(), **{"peer_login_burst": 100_000, "peer_login_per_minute": 1_000_000.0, **auth}
    )
    return Settings(listen="127.0.0.1:0", storage=as_database(database).storage_settings(), auth=auth_settings)


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

    def __init__(self, server: ServerThread, database: TestDatabase) -> None:
        self.server = server
        self.database = database
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

    @property
    def db_path(self) -> Path:
        """The SQLite file, for tests about SQLite itself (`sqlite_only`)."""
        return sqlite_file(self.database)

    def close(self) -> None:
        self.channel.close()


def create_admin(database: TestDatabase | Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin (ADMIN_EMAIL, PASSWORD), made by `cursor-grpc create-admin`."""
    monkeypatch.setenv("CURSOR_ADMIN_PASSWORD", PASSWORD)
    url = as_database(database).url
    assert cli.main(["--log-level", "WARNING", "create-admin", "--db", url, "--email", ADMIN_EMAIL]) == 0


def migrate_with_admin(database: TestDatabase, monkeypatch: pytest.MonkeyPatch) -> TestDatabase:
    """Ready to serve: migrated, with the admin unless it has consultants already."""
    database.migrate()
    if database.count("consultants") == 0:
        create_admin(database, monkeypatch)
    return database


@pytest.fixture
def make_harness(backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Factory: start a server with settings overrides, on a fresh database of
    the backend under test or on a given one (a restart, a restored file)."""
    started: list[Harness] = []

    def make(database: TestDatabase | Path | None = None, *, live: LiveSettings | None = None,
             attention: AttentionSettings | None = None, **auth: Any) -> Harness:
        if database is None:
            database = backend.fresh_database(tmp_path, f"cursor{len(started)}")
        ready = migrate_with_admin(as_database(database), monkeypatch)
        settings = test_settings(ready, **auth)
        settings = dataclasses.replace(settings, live=live or settings.live,
                                       attention=attention or settings.attention)
        harness = Harness(ServerThread(settings), ready)
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
