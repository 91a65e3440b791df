"""The doorbell between instances (cursor_grpc/cluster/doorbell.py) on real
NATS, Redis and PostgreSQL servers (tests/servers.py): hints arrive, junk
does not, `ring` never raises or blocks, and a doorbell comes back by itself
after its server did."""

from __future__ import annotations

import asyncio
import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import psycopg
import pytest
import redis

from cursor_grpc.cluster import MAX_HINT_BYTES, Doorbell, Hint, decode_hint, describe_url, encode_hint, open_doorbell
from cursor_grpc.config import ConfigError

KINDS = ["nats", "redis", pytest.param("postgres", marks=pytest.mark.postgres)]
ARRIVES = 1.0  # seconds a hint may take from one instance to another


class Bell:
    """A started doorbell and what its callbacks saw."""

    def __init__(self, doorbell: Doorbell) -> None:
        self.doorbell = doorbell
        self.hints: queue.Queue[Hint] = queue.Queue()
        self._reconnects = 0
        self._changed = threading.Condition()
        self.callback_threads: set[str] = set()

    def on_hint(self, hint: Hint) -> None:
        self.callback_threads.add(threading.current_thread().name)
        self.hints.put(hint)

    def on_reconnect(self) -> None:
        self.callback_threads.add(threading.current_thread().name)
        with self._changed:
            self._reconnects += 1
            self._changed.notify_all()

    @property
    def reconnects(self) -> int:
        with self._changed:
            return self._reconnects

    def wait_reconnects(self, count: int, timeout: float = 5.0) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self._reconnects >= count, timeout), \
                f"{self.doorbell.name}: {self._reconnects} (re)connects, not {count}, within {timeout} s"

    def next_hint(self, timeout: float = ARRIVES) -> Hint:
        try:
            return self.hints.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.doorbell.name}: no hint within {timeout} s") from None

    def hint_where(self, matches: Callable[[Hint], bool], timeout: float = ARRIVES) -> Hint:
        deadline = time.monotonic() + timeout
        while True:
            hint = self.next_hint(max(0.0, deadline - time.monotonic()))
            if matches(hint):
                return hint

    def drain(self, settle: float = 0.2) -> list[Hint]:
        time.sleep(settle)
        out = []
        while not self.hints.empty():
            out.append(self.hints.get_nowait())
        return out


@pytest.fixture
def channel() -> str:
    """A channel of the test's own: the servers are the session's."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def where(request: pytest.FixtureRequest) -> tuple[str, str | None, str]:
    """(kind, broker URL, database URL) of the transport the test is parametrized with."""
    kind = request.param
    if kind == "postgres":
        return kind, None, request.getfixturevalue("postgres_database_url")
    return kind, request.getfixturevalue(f"{kind}_url"), ""


@pytest.fixture
def make_bell(channel: str) -> Iterator[Callable[..., Bell]]:
    """Factory: an open, started doorbell, connected unless `wait=False`;
    all closed after the test."""
    made: list[Bell] = []

    def make(broker_url: str | None, database_url: str = "", *, wait: bool = True, name: str = channel) -> Bell:
        bell = Bell(open_doorbell(broker_url, database_url, channel=name))
        made.append(bell)
        bell.doorbell.start(bell.on_hint, bell.on_reconnect)
        if wait:
            bell.wait_reconnects(1)
            assert bell.doorbell.connected
        return bell

    yield make
    for bell in made:
        bell.doorbell.close()


def publish_raw(kind: str, broker_url: str | None, database_url: str, channel: str, payloads: list[bytes]) -> None:
    """Put messages on the channel as some other program would."""
    if kind == "nats":
        import nats

        async def send() -> None:
            nc = await nats.connect(broker_url)
            for payload in payloads:
                await nc.publish(channel, payload)
            await nc.flush()
            await nc.close()

        asyncio.run(send())
    elif kind == "redis":
        assert broker_url is not None
        client = redis.Redis.from_url(broker_url)
        for payload in payloads:
            client.publish(channel, payload)
        client.close()
    else:
        with psycopg.connect(database_url, autocommit=True) as conn:
            for payload in payloads:
                conn.execute("SELECT pg_notify(%s, %s)", (channel, payload.decode("utf-8", "replace")))


def doorbell_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("cursor-doorbell")]


# --- the codec ----------------------------------------------------------------

def test_a_hint_survives_encoding() -> None:
    for hint in (Hint("e1"), Hint("e1", 7), Hint("e1", 2**63 - 1, ("s1", "s2"), "node-a"), Hint("é", 0, ("ü",))):
        assert decode_hint(encode_hint(hint)) == hint
        assert decode_hint(encode_hint(hint).decode()) == hint  # a NOTIFY payload is text


def test_encoding_is_compact_json_without_defaults() -> None:
    assert encode_hint(Hint("e1")) == b'{"epoch":"e1"}'
    assert encode_hint(Hint("e1", 5, ("s",), "o")) == b'{"epoch":"e1","head":5,"ended":["s"],"origin":"o"}'


@pytest.mark.parametrize("raw", [
    b"", b"not json", b"\xff\xfe\x00", b"[1, 2]", b'"epoch"', b"null", b"{}",
    b'{"head": 5}',  # no epoch
    b'{"epoch": ""}', b'{"epoch": 5}', b'{"epoch": null}', b'{"epoch": ["e"]}',
    b'{"epoch": "e", "head": -1}', b'{"epoch": "e", "head": 1.5}', b'{"epoch": "e", "head": "5"}',
    b'{"epoch": "e", "head": true}', b'{"epoch": "e", "head": 99999999999999999999}',
    b'{"epoch": "e", "ended": "s1"}', b'{"epoch": "e", "ended": [1]}', b'{"epoch": "e", "ended": [""]}',
    b'{"epoch": "e", "ended": [["s"]]}', b'{"epoch": "e", "origin": 3}', b'{"epoch": "e", "origin": null}',
    b"[" * 60_000,  # nested deeper than any parser takes
])
def test_junk_decodes_to_none(raw: bytes) -> None:
    assert decode_hint(raw) is None


def test_oversize_is_dropped_unread() -> None:
    hint = Hint("e", 1, tuple(f"session-{n:06}" for n in range(6000)))
    assert len(encode_hint(hint)) > MAX_HINT_BYTES
    assert decode_hint(encode_hint(hint)) is None
    padded = b'{"epoch":"e","pad":"' + b"x" * MAX_HINT_BYTES + b'"}'
    assert decode_hint(padded) is None
    assert decode_hint(b'{"epoch":"e","pad":"' + b"x" * 100 + b'"}') == Hint("e")  # unknown keys: ignored


@pytest.mark.parametrize(
    "raw", [None, 5, object(), "\ud800", bytearray(b'{"epoch":"e"}'), memoryview(b'{"epoch":"e"}')],
)
def test_decode_never_raises(raw: Any) -> None:
    assert decode_hint(raw) in (None, Hint("e"))


# --- configuration --------------------------------------------------------------

def test_configuration_errors_name_no_more_than_the_scheme() -> None:
    for url in ("ftp://user:s3cret@example.com:21/x", "amqp://user:s3cret@host/"):
        with pytest.raises(ConfigError) as error:
            open_doorbell(url, "")
        assert "s3cret" not in str(error.value)
        assert "example.com" not in str(error.value)
        assert url.partition(":")[0] in str(error.value)
    with pytest.raises(ConfigError, match="no scheme"):
        open_doorbell("user:s3cret@localhost:4222", "")
    with pytest.raises(ConfigError, match="PostgreSQL"):
        open_doorbell(None, "var/cursor.db")
    with pytest.raises(ConfigError, match="channel"):
        open_doorbell("nats://127.0.0.1:4222", "", channel="bad channel")
    with pytest.raises(ConfigError, match="host") as error:
        open_doorbell("redis://user:s3cret@:99999", "")
    assert "s3cret" not in str(error.value)


def test_describe_url_keeps_no_secret() -> None:
    assert describe_url("nats://user:s3cret@broker.internal:4222/x?token=t") == "nats://broker.internal:4222"
    assert describe_url("rediss://:s3cret@cache:6380/0") == "rediss://cache:6380"
    assert describe_url("postgresql://cursor:s3cret@db:5433/cursor?sslmode=require") == "postgresql://db:5433"
    assert describe_url("host=/tmp/pg port=5432 password=s3cret") == "postgresql:///tmp/pg:5432"
    assert "s3cret" not in describe_url("postgresql://cursor:s3cret@[::1")


# --- on real servers ---------------------------------------------------------------

@pytest.mark.parametrize("where", KINDS, indirect=True)
def test_a_ring_reaches_the_other_instance(where: tuple[str, str | None, str], make_bell: Any) -> None:
    kind, broker, database = where
    a, b = make_bell(broker, database), make_bell(broker, database)
    assert a.doorbell.name == b.doorbell.name == kind
    sent = Hint("epoch-1", 42, ("session-1", "session-2"), "instance-a")
    started = time.monotonic()
    a.doorbell.ring(sent)
    assert b.next_hint() == sent
    assert time.monotonic() - started < ARRIVES
    assert a.next_hint() == sent  # a receiver skips nothing itself: that is the caller's, by origin
    assert b.callback_threads == {f"cursor-doorbell-{kind}"}


@pytest.mark.parametrize("where", KINDS, indirect=True)
def test_many_ended_sessions_arrive_even_past_the_message_limit(
    where: tuple[str, str | None, str], make_bell: Any,
) -> None:
    """NOTIFY takes 7999 bytes: a long list goes as several hints."""
    _, broker, database = where
    a, b = make_bell(broker, database), make_bell(broker, database)
    sessions = tuple(str(uuid.uuid4()) for _ in range(600))  # ~24 KB of ids
    a.doorbell.ring(Hint("epoch-1", 9, sessions, "a"))
    seen: list[str] = []
    while len(seen) < len(sessions):
        hint = b.next_hint()
        assert (hint.epoch, hint.head, hint.origin) == ("epoch-1", 9, "a")
        seen.extend(hint.ended_sessions)
    assert seen == list(sessions)


@pytest.mark.parametrize("where", KINDS, indirect=True)
def test_a_burst_coalesces_to_the_highest_head(where: tuple[str, str | None, str], make_bell: Any) -> None:
    _, broker, database = where
    a, b = make_bell(broker, database), make_bell(broker, database)
    for head in range(1, 2001):
        a.doorbell.ring(Hint("epoch-1", head, ("s-end",) if head == 1000 else (), "a"))
    received = [b.next_hint()]
    while received[-1].head != 2000:
        received.append(b.next_hint())
    heads = [hint.head for hint in received]
    assert heads == sorted(heads)
    assert len(heads) < 2000, "hints that piled up went as one"
    assert ("s-end",) in [hint.ended_sessions for hint in received]
    assert b.drain() == []


@pytest.mark.parametrize("where", KINDS, indirect=True)
def test_junk_on_the_channel_is_ignored(
    where: tuple[str, str | None, str], make_bell: Any, channel: str, caplog: pytest.LogCaptureFixture,
) -> None:
    kind, broker, database = where
    b = make_bell(broker, database)
    junk = [b"", b"hello", b"\xff\xfe", b"[1,2,3]", b'{"epoch": 5}', b'{"epoch":"e","head":-3}', b"{" * 5000]
    if kind != "postgres":
        junk.append(b'{"epoch":"e","pad":"' + b"x" * (MAX_HINT_BYTES + 10) + b'"}')
    with caplog.at_level(logging.WARNING, logger="cursor.cluster"):
        publish_raw(kind, broker, database, channel, junk)
        publish_raw(kind, broker, database, channel, [encode_hint(Hint("epoch-1", 3))])
        assert b.next_hint() == Hint("epoch-1", 3)
    assert b.drain() == []
    assert b.doorbell.connected
    warnings = [r for r in caplog.records if "not a hint" in r.getMessage()]
    assert len(warnings) == 1, "one warning per 10 s, not one per message"


@pytest.mark.parametrize("where", KINDS, indirect=True)
def test_callbacks_that_raise_do_not_stop_the_doorbell(
    where: tuple[str, str | None, str], channel: str, caplog: pytest.LogCaptureFixture,
) -> None:
    _, broker, database = where
    received: queue.Queue[Hint] = queue.Queue()

    def on_hint(hint: Hint) -> None:
        received.put(hint)
        raise RuntimeError("the store is unwell")

    def on_reconnect() -> None:
        raise RuntimeError("cannot catch up")

    doorbell = open_doorbell(broker, database, channel=channel)
    try:
        with caplog.at_level(logging.ERROR, logger="cursor.cluster"):
            doorbell.start(on_hint, on_reconnect)
            deadline = time.monotonic() + 5
            while not doorbell.connected and time.monotonic() < deadline:
                time.sleep(0.01)
            doorbell.ring(Hint("e", 1))
            assert received.get(timeout=2) == Hint("e", 1)
            doorbell.ring(Hint("e", 2))
            assert received.get(timeout=2) == Hint("e", 2)
            deadline = time.monotonic() + 1  # the log line follows the callback
            while sum("raised" in r.getMessage() for r in caplog.records) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
        assert sum("raised" in r.getMessage() for r in caplog.records) == 3
    finally:
        doorbell.close()


@pytest.mark.parametrize("where", KINDS, indirect=True)
def test_ring_never_raises_nor_blocks(where: tuple[str, str | None, str], channel: str) -> None:
    """Before start, after close, and from many threads at once."""
    _, broker, database = where
    doorbell = open_doorbell(broker, database, channel=channel)
    slowest = 0.0

    def ring_some(count: int) -> None:
        nonlocal slowest
        for n in range(count):
            started = time.perf_counter()
            doorbell.ring(Hint("e", n, (f"s{n}",)))
            slowest = max(slowest, time.perf_counter() - started)

    ring_some(100)
    assert not doorbell.connected
    doorbell.start(lambda hint: None, lambda: None)
    threads = [threading.Thread(target=ring_some, args=(500,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    closing = time.monotonic()
    doorbell.close()
    assert time.monotonic() - closing < 2.5
    ring_some(100)
    assert slowest < 0.05


def test_a_doorbell_that_cannot_connect_keeps_trying_quietly(
    make_bell: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="cursor.cluster"):
        bell = make_bell(f"nats://user:s3cret@127.0.0.1:{refused_port()}", wait=False)
        time.sleep(1.0)  # ~4 attempts at 0.1, 0.2, 0.4 s backoff
        started = time.perf_counter()
        for _ in range(1000):
            bell.doorbell.ring(Hint("e", 1))
        assert time.perf_counter() - started < 0.05
        assert not bell.doorbell.connected
        assert bell.reconnects == 0
        closing = time.monotonic()
        bell.doorbell.close()
        assert time.monotonic() - closing < 2.5
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot reach" in m for m in messages) == 1, messages
    assert sum("dropping hints" in m for m in messages) == 1, messages
    assert not any("s3cret" in m for m in messages)


def refused_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("kind", ["nats", "redis"])
def test_a_restarted_broker_brings_the_doorbells_back(
    kind: str, request: pytest.FixtureRequest, make_bell: Any,
) -> None:
    server = request.getfixturevalue(f"{kind}_server")
    a, b = make_bell(server.url), make_bell(server.url)
    server.stop()
    try:
        deadline = time.monotonic() + 5
        while (a.doorbell.connected or b.doorbell.connected) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not a.doorbell.connected
        assert not b.doorbell.connected
        started = time.perf_counter()
        a.doorbell.ring(Hint("e", 1))  # dropped: the others poll
        assert time.perf_counter() - started < 0.05
        time.sleep(0.5)  # a few failed reconnects
    finally:
        server.start()
    a.wait_reconnects(2)
    b.wait_reconnects(2)
    a.doorbell.ring(Hint("e", 2, ("s",), "a"))
    assert b.hint_where(lambda hint: hint.head == 2) == Hint("e", 2, ("s",), "a")


@pytest.mark.postgres
def test_postgres_doorbells_come_back_after_their_connections_are_killed(
    postgres_database_url: str, make_bell: Any,
) -> None:
    a, b = make_bell(None, postgres_database_url), make_bell(None, postgres_database_url)
    with psycopg.connect(postgres_database_url, autocommit=True) as conn:
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'cursor-doorbell' AND datname = current_database()"
        ).fetchone()
    assert killed == (4,)  # a listener and a notifier each
    a.wait_reconnects(2)
    b.wait_reconnects(2)
    a.doorbell.ring(Hint("e", 5))
    assert b.hint_where(lambda hint: hint.head == 5) == Hint("e", 5)


@pytest.mark.parametrize("where", KINDS, indirect=True)
def test_close_is_quick_idempotent_and_leaves_no_thread(where: tuple[str, str | None, str], channel: str) -> None:
    _, broker, database = where
    before = set(threading.enumerate())
    bell = Bell(open_doorbell(broker, database, channel=channel))
    bell.doorbell.start(bell.on_hint, bell.on_reconnect)
    bell.wait_reconnects(1)
    assert len(doorbell_threads()) >= 1
    started = time.monotonic()
    bell.doorbell.close()
    bell.doorbell.close()
    assert time.monotonic() - started < 2.5
    assert not bell.doorbell.connected
    assert set(threading.enumerate()) - before == set()
    with pytest.raises(RuntimeError):
        bell.doorbell.start(bell.on_hint, bell.on_reconnect)


@pytest.mark.parametrize("where", KINDS, indirect=True)
def test_close_while_connecting_is_quick_too(where: tuple[str, str | None, str], channel: str) -> None:
    """Closed at every moment of connecting: a client library that swallows
    the cancellation must not keep the thread alive."""
    _, broker, database = where
    before = set(threading.enumerate())
    for n in range(30):
        doorbell = open_doorbell(broker, database, channel=channel)
        doorbell.start(lambda hint: None, lambda: None)
        time.sleep(0.0005 * n)
        started = time.monotonic()
        doorbell.close()
        assert time.monotonic() - started < 2.5
        assert set(threading.enumerate()) - before == set()


def test_close_before_start_and_a_closed_ring() -> None:
    doorbell = open_doorbell("redis://127.0.0.1:1/0", "")
    doorbell.close()
    doorbell.close()
    doorbell.ring(Hint("e", 1))
    assert not doorbell.connected


def test_hint_payload_sizes_stay_small() -> None:
    assert len(orjson.dumps({"epoch": "x" * 36, "head": 2**40, "origin": "y" * 36})) < 200


def test_no_doorbell_thread_outlives_this_module() -> None:
    """Runs last in the file: every doorbell above was closed."""
    assert doorbell_threads() == []
