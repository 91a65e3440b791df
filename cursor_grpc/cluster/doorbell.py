"""The doorbell: a small hint between Cursor instances that share one
PostgreSQL database, over NATS, Redis pub/sub or PostgreSQL LISTEN/NOTIFY.

The database is the record. After a commit an instance rings a hint ("the
history of epoch E now reaches seq N", "end the streams of session S") so
the others read the new rows at once instead of at their next poll. Every
instance polls anyway (about once a second), so a hint that is lost,
duplicated or late costs latency, never an event: nothing here retries,
acknowledges or orders anything.

Each doorbell runs one daemon thread with an event loop of its own, so
`ring` works from any thread (the database writer's included) and nothing
depends on the gRPC server's loop. It reconnects forever and calls
`on_reconnect` after every (re)connect, when the subscription is in place,
so the store can read whatever it missed while deaf.

URLs may carry passwords: only `describe_url` (scheme://host:port) of them
is ever logged or put in an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol
from urllib.parse import urlsplit

import orjson

from cursor_grpc.config import ConfigError

if TYPE_CHECKING:
    import nats.aio.client
    import nats.aio.msg
    import psycopg
    import redis.asyncio
    import redis.asyncio.client

log = logging.getLogger("cursor.cluster")

# A hint is a few dozen bytes; a receiver drops anything larger unread.
MAX_HINT_BYTES = 64 * 1024
# PostgreSQL: "the payload must be shorter than 8000 bytes".
PG_NOTIFY_MAX_BYTES = 7999
_MAX_HEAD = 2**63 - 1

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0
# A connection that stayed up this long starts the backoff afresh.
_STABLE_SECONDS = 5.0
# At most one warning per this many seconds for each kind of trouble.
WARN_EVERY = 10.0
# A quiet connection is probed this often; no answer within the timeout
# counts as lost (a peer that vanished without closing the socket).
PROBE_EVERY = 5.0
PROBE_TIMEOUT = 5.0
CLOSE_SECONDS = 2.0
_CONNECT_TIMEOUT = 3
# The longest note a hint carries (longer ones are not sent).
MAX_NOTE_BYTES = 1024
_CHANNEL = re.compile(r"[A-Za-z0-9_-]{1,63}")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,20}")


@dataclass(frozen=True, slots=True)
class Hint:
    """What one ring says. All fields are advisory: a receiver re-reads the
    database, it never takes a hint for the record."""

    epoch: str  # which event history (database) this is about
    head: int = 0  # highest seq the sender committed; 0 for pure control
    ended_sessions: tuple[str, ...] = ()  # control: sessions whose streams must end now
    origin: str = ""  # sender instance id, so a receiver may skip its own hints
    # Announcements to the other instances (opaque short texts, e.g. a login
    # failure the throttles share); best effort like everything here.
    notes: tuple[str, ...] = ()


def encode_hint(hint: Hint) -> bytes:
    """Compact JSON; fields at their defaults are left out."""
    doc: dict[str, object] = {"epoch": hint.epoch}
    if hint.head:
        doc["head"] = hint.head
    if hint.ended_sessions:
        doc["ended"] = list(hint.ended_sessions)
    if hint.origin:
        doc["origin"] = hint.origin
    if hint.notes:
        doc["notes"] = list(hint.notes)
    return orjson.dumps(doc)


def decode_hint(raw: bytes | bytearray | memoryview | str) -> Hint | None:
    """The hint in `raw`, or None for anything else: a channel may carry junk
    (another program, an older or newer Cursor), and junk must never reach
    the store or stop the receiving thread. Never raises."""
    try:
        data = raw.encode() if isinstance(raw, str) else bytes(raw)
        if len(data) > MAX_HINT_BYTES:
            return None
        doc = orjson.loads(data)
    except Exception:
        return None
    if not isinstance(doc, dict):
        return None
    epoch = doc.get("epoch")
    head = doc.get("head", 0)
    ended = doc.get("ended", [])
    origin = doc.get("origin", "")
    notes = doc.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) and len(n) <= MAX_NOTE_BYTES for n in notes):
        return None
    if not isinstance(epoch, str) or not epoch:
        return None
    if type(head) is not int or not 0 <= head <= _MAX_HEAD:  # bool is an int, but not a seq
        return None
    if not isinstance(ended, list) or not all(isinstance(s, str) and s for s in ended):
        return None
    if not isinstance(origin, str):
        return None
    return Hint(epoch, head, tuple(ended), origin, tuple(notes))


class Doorbell(Protocol):
    """What the store needs of a doorbell, whatever carries it."""

    name: str  # "nats" | "redis" | "postgres"

    @property
    def connected(self) -> bool:
        """Whether hints go out and come in right now."""

    def start(self, on_hint: Callable[[Hint], None], on_reconnect: Callable[[], None]) -> None:
        """Connect in the background. Both callbacks run on the doorbell's
        thread and must be quick; what they raise is logged."""

    def ring(self, hint: Hint) -> None:
        """Send a hint soon. Thread-safe, never blocks, never raises; dropped
        while disconnected."""

    def close(self) -> None:
        """Disconnect and stop the thread. Idempotent, returns within ~2 s."""


def describe_url(url: str) -> str:
    """scheme://host:port of a URL, the only part of it fit for a log line
    or an error (no user, password, path or query)."""
    scheme = url.partition("://")[0] if "://" in url else ""
    if not _SCHEME.fullmatch(scheme):
        scheme = "?"
    if scheme.lower() in {"postgres", "postgresql"} or (scheme == "?" and "=" in url):
        return _describe_postgres(url)
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return f"{scheme}://?"
    return f"{scheme}://{host}" + (f":{port}" if port else "")


def _describe_postgres(url: str) -> str:
    """Also for key=value connection strings and Unix sockets (`host=/dir`)."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(url)
    except Exception:
        return "postgresql://?"
    host = str(params.get("host") or "(default socket)")
    port = params.get("port")
    return f"postgresql://{host}" + (f":{port}" if port else "")


class _Every:
    """True at most once per `seconds`: one warning per kind of trouble,
    not one per ring. Thread-safe."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._last = -seconds
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last < self._seconds:
                return False
            self._last = now
            return True


@dataclass
class _Pending:
    head: int
    ended: dict[str, None]  # an ordered set
    notes: list[str] = dataclasses.field(default_factory=list)


def _why(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


class _ThreadedDoorbell:
    """The thread, the loop, coalescing, reconnecting and the callbacks;
    a transport adds `_connect`, `_listen`, `_publish` and `_disconnect`."""

    name: str = ""
    max_payload: ClassVar[int] = MAX_HINT_BYTES

    def __init__(self, where: str) -> None:
        self.where = where  # describe_url of the server: safe to log
        self._connected = False
        self._closed = False
        self._lifecycle = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._wake: asyncio.Event | None = None
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._on_hint: Callable[[Hint], None] = lambda hint: None
        self._on_reconnect: Callable[[], None] = lambda: None
        self._warn_dropped = _Every(WARN_EVERY)
        self._warn_junk = _Every(WARN_EVERY)
        self._warn_unreachable = _Every(WARN_EVERY)
        self._warn_oversize = _Every(WARN_EVERY)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "connected" if self._connected else "disconnected"
        return f"<{type(self).__name__} {self.where} {state}>"

    @property
    def connected(self) -> bool:
        return self._connected

    # --- any thread ---------------------------------------------------------

    def start(self, on_hint: Callable[[Hint], None], on_reconnect: Callable[[], None]) -> None:
        with self._lifecycle:
            if self._closed:
                raise RuntimeError("this doorbell is closed")
            if self._thread is not None:
                raise RuntimeError("this doorbell is started already")
            self._on_hint, self._on_reconnect = on_hint, on_reconnect
            loop = asyncio.new_event_loop()
            self._wake = asyncio.Event()
            # Made before the thread runs, so that close() can always cancel it.
            self._main = loop.create_task(self._run())
            self._loop = loop
            self._thread = threading.Thread(target=self._thread_main, name=f"cursor-doorbell-{self.name}", daemon=True)
            self._thread.start()

    def ring(self, hint: Hint) -> None:
        if self._closed:
            return
        loop = self._loop
        if loop is None or not self._connected:
            if self._warn_dropped():
                log.warning("doorbell %s is not connected to %s: dropping hints (the other instances "
                            "see the changes at their next poll)", self.name, self.where)
            return
        with contextlib.suppress(RuntimeError):  # the loop closed in between
            loop.call_soon_threadsafe(self._enqueue, hint)

    def close(self) -> None:
        with self._lifecycle:
            if self._closed:
                return
            self._closed = True
            loop, main, thread = self._loop, self._main, self._thread
        if loop is not None and main is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(main.cancel)
        if thread is not None and thread is not threading.current_thread():
            thread.join(CLOSE_SECONDS)
            if thread.is_alive():
                log.warning("doorbell %s: its thread did not stop within %.0f s", self.name, CLOSE_SECONDS)
        self._connected = False

    # --- the doorbell's thread ----------------------------------------------

    def _thread_main(self) -> None:
        loop, main = self._loop, self._main
        assert loop is not None
        assert main is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("doorbell %s stopped on an unexpected error", self.name)
        finally:
            self._connected = False
            try:
                leftovers = [task for task in asyncio.all_tasks(loop) if not task.done()]
                for task in leftovers:
                    task.cancel()
                if leftovers:
                    loop.run_until_complete(asyncio.wait(leftovers, timeout=0.3))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            except Exception:
                log.debug("doorbell %s: cleaning up its loop failed", self.name, exc_info=True)
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def _call(self, callback: Callable[..., None], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("doorbell %s: %s raised", self.name, getattr(callback, "__qualname__", callback))

    async def _run(self) -> None:
        """Connect, serve until the connection is lost, back off, again:
        until close() cancels it.

        The work runs in a task of its own, cancelled again and again on
        close: a client library that swallows one cancellation must not
        keep the thread alive (redis-py 8.1 does, about one time in ten,
        when the cancel lands in its connect during a PING or SUBSCRIBE)."""
        loop = asyncio.get_running_loop()
        work = asyncio.create_task(self._reconnect_forever())
        try:
            await asyncio.wait({work})  # unlike `await work`, a cancel of _run ends this at once
        finally:
            deadline = loop.time() + 0.5
            while not work.done() and loop.time() < deadline:
                work.cancel()
                await asyncio.wait({work}, timeout=0.05)
            self._connected = False
            await self._quiet_disconnect()
        work.result()

    async def _reconnect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        delay = BACKOFF_FIRST
        while not self._closed:
            try:
                await self._connect()
            except Exception as error:
                await self._quiet_disconnect()
                if self._warn_unreachable():
                    log.warning("doorbell %s cannot reach %s (%s); retrying", self.name, self.where, _why(error))
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            if self._closed:  # closed while connecting
                return
            up_since = loop.time()
            self._connected = True
            log.info("doorbell %s connected to %s", self.name, self.where)
            self._call(self._on_reconnect)
            try:
                await self._serve()
                reason = "the connection ended"
            except Exception as error:
                reason = _why(error)
            self._connected = False
            await self._quiet_disconnect()
            log.warning("doorbell %s lost %s (%s); reconnecting", self.name, self.where, reason)
            if loop.time() - up_since > _STABLE_SECONDS:
                delay = BACKOFF_FIRST
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _serve(self) -> None:
        """Receive and send over one connection; returns or raises once
        either side of it fails."""
        tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._send())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)

    async def _quiet_disconnect(self) -> None:
        try:
            await asyncio.wait_for(self._disconnect(), 0.8)
        except Exception:
            log.debug("doorbell %s: disconnecting failed", self.name, exc_info=True)

    def _enqueue(self, hint: Hint) -> None:
        """Coalesce: of what piles up, the highest head per (epoch, origin)
        and every ended session are all that need sending."""
        key = (hint.epoch, hint.origin)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(hint.head, dict.fromkeys(hint.ended_sessions))
        else:
            pending.head = max(pending.head, hint.head)
            pending.ended.update(dict.fromkeys(hint.ended_sessions))
        pending.notes.extend(note for note in hint.notes if len(note) <= MAX_NOTE_BYTES)
        assert self._wake is not None
        self._wake.set()

    async def _send(self) -> None:
        assert self._wake is not None
        while True:
            if not self._pending:  # what a lost connection left unsent goes out on the next one
                self._wake.clear()
                await self._wake.wait()
            while self._pending:
                pending, self._pending = self._pending, {}
                for (epoch, origin), merged in pending.items():
                    for payload in self._payloads(Hint(epoch, merged.head, tuple(merged.ended), origin)):
                        await self._publish(payload)
                    for payload in self._note_payloads(Hint(epoch, 0, (), origin), merged.notes):
                        await self._publish(payload)

    def _payloads(self, hint: Hint) -> list[bytes]:
        """The hint as one message, or as several if its ended sessions do
        not fit in one (PostgreSQL takes 7999 bytes at most)."""
        whole = encode_hint(hint)
        limit = self.max_payload
        if len(whole) <= limit:
            return [whole]
        base = len(encode_hint(dataclasses.replace(hint, ended_sessions=("",))))
        out: list[bytes] = []
        chunk: list[str] = []
        size = base
        for session in hint.ended_sessions:
            cost = len(orjson.dumps(session)) + 1
            if base + cost > limit:
                if self._warn_oversize():
                    log.warning("doorbell %s: a session id too long for a hint was not sent", self.name)
                continue
            if chunk and size + cost > limit:
                out.append(encode_hint(dataclasses.replace(hint, ended_sessions=tuple(chunk))))
                chunk, size = [], base
            chunk.append(session)
            size += cost
        if chunk or not out:
            out.append(encode_hint(dataclasses.replace(hint, ended_sessions=tuple(chunk))))
        return out

    def _note_payloads(self, base: Hint, notes: list[str]) -> list[bytes]:
        """Notes packed into as few messages as fit the transport's limit."""
        out: list[bytes] = []
        limit = self.max_payload
        empty = len(encode_hint(dataclasses.replace(base, notes=("",))))
        chunk: list[str] = []
        size = empty
        for note in notes:
            cost = len(orjson.dumps(note)) + 1
            if chunk and size + cost > limit:
                out.append(encode_hint(dataclasses.replace(base, notes=tuple(chunk))))
                chunk, size = [], empty
            chunk.append(note)
            size += cost
        if chunk:
            out.append(encode_hint(dataclasses.replace(base, notes=tuple(chunk))))
        return out

    def _deliver(self, raw: bytes | str) -> None:
        hint = decode_hint(raw)
        if hint is None:
            if self._warn_junk():
                log.warning("doorbell %s: ignored a message on the channel that is not a hint (%d bytes)",
                            self.name, len(raw))
            return
        self._call(self._on_hint, hint)

    # --- the transport --------------------------------------------------------

    async def _connect(self) -> None:
        """Connect and subscribe; on return the subscription is in place."""
        raise NotImplementedError

    async def _listen(self) -> None:
        """Hand each message to `_deliver`; raise once the connection is lost."""
        raise NotImplementedError

    async def _publish(self, payload: bytes) -> None:
        raise NotImplementedError

    async def _disconnect(self) -> None:
        """Close whatever `_connect` opened, also after it failed halfway."""
        raise NotImplementedError


class NatsDoorbell(_ThreadedDoorbell):
    """Core NATS publish/subscribe on subject `channel`. nats-py's own
    reconnecting is off: the shared loop reconnects, so that every
    reconnect reaches `on_reconnect`."""

    name = "nats"

    def __init__(self, url: str, channel: str) -> None:
        super().__init__(describe_url(url))
        self._url = url
        self._subject = channel
        self._nc: nats.aio.client.Client | None = None
        self._lost: asyncio.Event | None = None

    async def _connect(self) -> None:
        import nats

        lost = asyncio.Event()
        self._lost = lost

        async def gone() -> None:
            lost.set()

        async def error(problem: Exception) -> None:
            log.debug("doorbell nats: %s", _why(problem))

        async def message(msg: nats.aio.msg.Msg) -> None:
            self._deliver(msg.data)

        # max_reconnect_attempts=1 with no wait: nats-py tries twice, then gives
        # up (0 would make its connect() retry the server forever).
        self._nc = await asyncio.wait_for(nats.connect(
            servers=[self._url], name="cursor-doorbell", allow_reconnect=False, max_reconnect_attempts=1,
            reconnect_time_wait=0.0, connect_timeout=_CONNECT_TIMEOUT, ping_interval=int(PROBE_EVERY),
            max_outstanding_pings=1, error_cb=error, disconnected_cb=gone, closed_cb=gone,
        ), 3 * _CONNECT_TIMEOUT)
        await self._nc.subscribe(self._subject, cb=message)
        await self._nc.flush(timeout=_CONNECT_TIMEOUT)  # the server has the subscription

    async def _listen(self) -> None:
        assert self._lost is not None
        await self._lost.wait()
        raise ConnectionError("disconnected")

    async def _publish(self, payload: bytes) -> None:
        assert self._nc is not None
        await self._nc.publish(self._subject, payload)

    async def _disconnect(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            await nc.close()


class RedisDoorbell(_ThreadedDoorbell):
    """Redis PUBLISH/SUBSCRIBE on channel `channel`, over two connections
    (a subscribed connection cannot publish). redis-py's retries are off for
    the same reason as nats-py's reconnecting."""

    name = "redis"

    def __init__(self, url: str, channel: str) -> None:
        super().__init__(describe_url(url))
        self._url = url
        self._channel = channel
        self._publisher: redis.asyncio.Redis | None = None
        self._subscriber: redis.asyncio.Redis | None = None
        self._pubsub: redis.asyncio.client.PubSub | None = None

    def _client(self) -> redis.asyncio.Redis:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        return Redis.from_url(
            self._url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=_CONNECT_TIMEOUT,
            socket_timeout=PROBE_TIMEOUT, socket_keepalive=True, client_name="cursor-doorbell",
        )

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._publisher = self._client()
        await self._publisher.ping()
        self._subscriber = self._client()
        self._pubsub = self._subscriber.pubsub()
        await self._pubsub.subscribe(self._channel)
        deadline = loop.time() + _CONNECT_TIMEOUT
        while True:  # until Redis confirms: before that, a publish may pass us by
            message = await self._pubsub.get_message(timeout=max(0.0, deadline - loop.time()))
            if message is not None and message.get("type") == "subscribe":
                return
            if loop.time() >= deadline:
                raise TimeoutError("Redis did not confirm the subscription")

    async def _listen(self) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        loop = asyncio.get_running_loop()
        heard = loop.time()
        pinged: float | None = None
        while True:
            message = await pubsub.get_message(timeout=1.0)
            now = loop.time()
            if message is not None:
                heard, pinged = now, None
                if message.get("type") == "message":
                    self._deliver(message["data"])
            elif pinged is not None and now - pinged > PROBE_TIMEOUT:
                raise TimeoutError(f"no answer to a ping within {PROBE_TIMEOUT:.0f} s")
            elif pinged is None and now - heard > PROBE_EVERY:
                await pubsub.ping()  # its answer arrives as a message
                pinged = now

    async def _publish(self, payload: bytes) -> None:
        assert self._publisher is not None
        await self._publisher.publish(self._channel, payload)

    async def _disconnect(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        clients = [self._subscriber, self._publisher]
        self._subscriber = self._publisher = None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        for client in clients:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()


class PostgresDoorbell(_ThreadedDoorbell):
    """LISTEN/NOTIFY on the shared database itself: no broker to run, at the
    price of two more connections per instance and NOTIFY's 8000-byte limit."""

    name = "postgres"
    max_payload = PG_NOTIFY_MAX_BYTES

    def __init__(self, url: str, channel: str) -> None:
        super().__init__(describe_url(url))
        self._url = url
        self._channel = channel
        self._listener: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._notifier: psycopg.AsyncConnection[tuple[object, ...]] | None = None

    async def _open(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        import psycopg

        return await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, connect_timeout=_CONNECT_TIMEOUT, application_name="cursor-doorbell",
        )

    async def _connect(self) -> None:
        from psycopg import sql

        self._listener = await self._open()
        await self._listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        self._notifier = await self._open()

    async def _listen(self) -> None:
        listener = self._listener
        assert listener is not None
        while True:
            async for note in listener.notifies(timeout=PROBE_EVERY):
                self._deliver(note.payload)
            # Notifications that arrive meanwhile wait in psycopg for the next notifies().
            await asyncio.wait_for(listener.execute("SELECT 1"), PROBE_TIMEOUT)

    async def _publish(self, payload: bytes) -> None:
        assert self._notifier is not None
        await self._notifier.execute("SELECT pg_notify(%s, %s)", (self._channel, payload.decode()))

    async def _disconnect(self) -> None:
        connections = [self._listener, self._notifier]
        self._listener = self._notifier = None
        for conn in connections:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()


def _is_postgres_url(url: str) -> bool:
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    return scheme in {"postgres", "postgresql"} or (not scheme and "=" in url)  # or a key=value string


def open_doorbell(broker_url: str | None, database_url: str, *, channel: str = "cursor") -> Doorbell:
    """The doorbell `broker_url` names: nats:// or tls:// (NATS), redis:// or
    rediss:// (Redis), or none: LISTEN/NOTIFY on the PostgreSQL database of
    `database_url`. Not started yet. A bad setting is a ConfigError that
    names no more of a URL than its scheme."""
    if not _CHANNEL.fullmatch(channel):
        raise ConfigError("the doorbell channel must be 1 to 63 letters, digits, '_' or '-'")
    if not broker_url:
        if not _is_postgres_url(database_url):
            raise ConfigError(
                "without a broker URL the doorbell uses PostgreSQL LISTEN/NOTIFY, which needs a PostgreSQL "
                "database (postgresql://…); set a nats:// or redis:// broker otherwise"
            )
        return PostgresDoorbell(database_url, channel)
    scheme = broker_url.partition("://")[0] if "://" in broker_url else ""
    if not scheme:
        raise ConfigError("the broker URL has no scheme: use nats://, tls://, redis:// or rediss://")
    shown = repr(scheme) if _SCHEME.fullmatch(scheme) else "that is not a URL scheme"
    kind = scheme.lower()
    if kind in {"nats", "tls", "redis", "rediss"}:
        try:
            parts = urlsplit(broker_url)
            valid = bool(parts.hostname) and (parts.port is None or parts.port > 0)
        except ValueError:
            valid = False
        if not valid:
            raise ConfigError(f"the {kind}:// broker URL has no valid host and port")
        return NatsDoorbell(broker_url, channel) if kind in {"nats", "tls"} else RedisDoorbell(broker_url, channel)
    raise ConfigError(f"unknown broker URL scheme {shown}: use nats://, tls://, redis:// or rediss://")
