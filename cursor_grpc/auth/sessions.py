"""Session tokens: issue, authenticate, end.

A token is 256 random bits from `secrets`, shown once; the database keeps
only its SHA-256 (a slow hash buys nothing for a random 256-bit secret).
Authenticated sessions are cached in memory by token hash so an RPC costs a
dict lookup, not a read; a cached session is re-read every `CACHE_SECONDS`.
When this process ends a session (or all of an account's), the cache entry
and the open streams go before the write and again once it committed, and
`Revocations` keeps a read that began before the commit from caching the
session again. Every `session_check_seconds` one query checks every session
in use (cached or streaming), so one ended elsewhere stops within a second.
`last_active_at` is written in batches at most once per
`touch_interval_seconds` per session, never on every RPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass

from cursor_grpc.auth.revocations import Key, Revocations, account_key, session_key
from cursor_grpc.clock import iso_from_ns, iso_to_ns, now_iso
from cursor_grpc.config import AuthSettings, ConfigError
from cursor_grpc.errors import Unauthenticated
from cursor_grpc.storage import Credential, SessionRecord, Store

log = logging.getLogger("cursor.auth")

CACHE_SECONDS = 10
# Cached sessions unused this long are dropped (memory stays bounded).
UNUSED_SECONDS = 300
_NS = 1_000_000_000
# What an instance announces after a revocation committed (docs/scaling.md).
SESSIONS_CHANGED = '{"sessions":"changed"}'


_ENDED = {
    "missing": ("the session token is not valid; log in again", "INVALID_TOKEN"),
    "revoked": ("the session has ended (logged out, rotated or revoked); log in again", "SESSION_REVOKED"),
    "inactive": ("the account is deactivated", "ACCOUNT_INACTIVE"),
    "expired": ("the session has expired; log in again", "SESSION_EXPIRED"),
    "idle": ("the session expired after inactivity; log in again", "SESSION_IDLE_EXPIRED"),
}


def session_ended(why: str) -> Unauthenticated:
    """What a call (or an open stream) with an ended session is answered:
    `why` is missing, revoked, inactive, expired or idle."""
    message, reason = _ENDED[why]
    return Unauthenticated(message, reason=reason)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(slots=True)
class Principal:
    """The caller of an RPC, resolved from its session."""

    session_id: str
    kind: str  # 'reader' | 'consultant'
    account_id: str
    role: str  # 'reader', or the consultant's role
    token_hash: bytes
    expires_ns: int
    idle_ns: int
    last_active_ns: int
    last_written_ns: int
    checked_ns: int

    @property
    def name(self) -> str:
        return f"{self.kind}s/{self.account_id}"


@dataclass(frozen=True, slots=True)
class IssuedSession:
    token: str
    principal: Principal


# listener(session_id, None, error) when a session ends,
# listener(None, (kind, account_id), error) when all of an account's do.
RevokedListener = Callable[[str | None, tuple[str, str] | None, Unauthenticated], None]


class SessionManager:
    def __init__(self, store: Store, settings: AuthSettings) -> None:
        if not settings.session_check_seconds > 0:
            raise ConfigError(f"CURSOR_SESSION_CHECK_SECONDS must be above 0, not {settings.session_check_seconds:g}")
        self._store = store
        self._settings = settings
        self._cache: dict[bytes, Principal] = {}
        self._touches: dict[str, str] = {}
        self._revocations = Revocations()
        self._streaming: Callable[[], Iterable[str]] = tuple
        self._tasks: list[asyncio.Task[None]] = []
        self._revoked_listeners: list[RevokedListener] = []
        self._check_soon: asyncio.Task[None] | None = None

    def on_revoked(self, listener: RevokedListener) -> None:
        """Call `listener` whenever a session, or all of an account's, ends."""
        self._revoked_listeners.append(listener)

    def check_streaming(self, session_ids: Callable[[], Iterable[str]]) -> None:
        """The periodic check also covers these sessions (those with open
        streams, which may have left the cache)."""
        self._streaming = session_ids

    def _revoked(self, session_id: str | None, account: tuple[str, str] | None, error: Unauthenticated) -> None:
        for listener in self._revoked_listeners:
            listener(session_id, account, error)

    def lifetimes(self, kind: str) -> tuple[int, int]:
        """(idle seconds, absolute seconds) for an account kind."""
        s = self._settings
        if kind == "reader":
            return s.reader_idle_seconds, s.reader_absolute_seconds
        return s.consultant_idle_seconds, s.consultant_absolute_seconds

    @staticmethod
    def new_token() -> tuple[str, bytes]:
        token = secrets.token_urlsafe(32)
        return token, hash_token(token)

    def _principal(self, session_id: str, kind: str, account_id: str, role: str, token_hash: bytes,
                   created_ns: int, last_active_ns: int) -> Principal:
        idle, absolute = self.lifetimes(kind)
        now = time.time_ns()
        return Principal(session_id, kind, account_id, role, token_hash, created_ns + absolute * _NS, idle * _NS,
                         last_active_ns, last_active_ns, now)

    async def issue(self, credential: Credential, new_password_hash: str | None = None) -> IssuedSession:
        """Start a session after a successful login. It is cached unless the
        account's sessions were ended meanwhile (then the next call reads it)."""
        token, token_hash = self.new_token()
        now = time.time_ns()
        principal = self._principal("", credential.kind, credential.id, credential.role, token_hash, now, now)
        started = self._revocations.begin_read()
        try:
            principal.session_id = await self._store.start_session(
                credential, token_hash, iso_from_ns(principal.expires_ns), new_password_hash
            )
            if self._revocations.admits(started, self._keys(principal)):
                self._cache[token_hash] = principal
        finally:
            self._revocations.end_read(started)
        return IssuedSession(token, principal)

    async def replace(self, caller: Principal, reason: str, *, new_password_hash: str | None = None,
                      end_other_sessions: bool = False) -> IssuedSession:
        """End the caller's session and start its successor with a new token.
        The successor keeps the absolute expiry: rotating must not let a
        session (or a stolen token) live for ever."""
        token, token_hash = self.new_token()
        now = time.time_ns()
        principal = self._principal("", caller.kind, caller.account_id, caller.role, token_hash, now, now)
        principal.expires_ns = min(principal.expires_ns, caller.expires_ns)
        account = (caller.kind, caller.account_id) if end_other_sessions else None
        async with self.ending(caller, account):
            principal.session_id, _ = await self._store.replace_session(
                caller.session_id, caller.kind, caller.account_id, token_hash, iso_from_ns(principal.expires_ns),
                reason, new_password_hash=new_password_hash, end_other_sessions=end_other_sessions,
            )
        self._cache[token_hash] = principal
        return IssuedSession(token, principal)

    async def end(self, caller: Principal, reason: str) -> None:
        async with self.ending(caller):
            await self._store.end_session(caller.session_id, reason)

    @contextlib.asynccontextmanager
    async def ending(self, caller: Principal | None = None, account: tuple[str, str] | None = None,
                     error: Unauthenticated | None = None) -> AsyncIterator[None]:
        """Around the write that ends the caller's session, or every session
        of `account`. From the start nothing admits them, and their cache
        entries and open streams go (so nothing committed after the
        revocation reaches those streams); again once the write committed;
        and a read that began before the commit cannot cache them again."""
        keys = [session_key(caller.session_id)] if caller is not None else []
        if account is not None:
            keys.append(account_key(*account))
        error = error or session_ended("revoked")
        self._revocations.begin(keys)
        self._forget(caller, account, error)
        try:
            yield
        except BaseException:
            self._revocations.abandoned(keys)
            raise
        self._revocations.committed(keys)
        self._forget(caller, account, error)
        # Other instances on this database check their sessions in use now,
        # instead of at their next periodic check.
        self._store.announce(SESSIONS_CHANGED)

    def _forget(self, caller: Principal | None, account: tuple[str, str] | None, error: Unauthenticated) -> None:
        """Drop the cache entries and end the open streams of a session or an account."""
        if caller is not None:
            self._cache.pop(caller.token_hash, None)
            self._revoked(caller.session_id, None, error)
        if account is not None:
            kind, account_id = account
            for key in [k for k, p in self._cache.items() if p.kind == kind and p.account_id == account_id]:
                del self._cache[key]
            self._revoked(None, account, error)

    @staticmethod
    def _keys(principal: Principal) -> list[Key]:
        return [session_key(principal.session_id), account_key(principal.kind, principal.account_id)]

    @staticmethod
    def token_from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
        for key, value in metadata or ():
            if key == "authorization":
                text = value.decode() if isinstance(value, bytes) else value
                scheme, _, token = text.partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    raise Unauthenticated(
                        "authorization metadata must be 'Bearer <token>'", reason="MALFORMED_AUTHORIZATION"
                    )
                return token.strip()
        raise Unauthenticated(
            "missing authorization metadata; send 'authorization: Bearer <token>' with the token from Login",
            reason="MISSING_TOKEN",
        )

    async def authenticate(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Principal:
        return await self.validate(hash_token(self.token_from_metadata(metadata)))

    async def validate(self, token_hash: bytes) -> Principal:
        """The live session of a token, from the cache or the database, or
        UNAUTHENTICATED. It counts as activity: open streams call it on
        every heartbeat, so watching keeps a session from going idle."""
        now = time.time_ns()
        principal = self._cache.get(token_hash)
        if principal is None or now - principal.checked_ns > CACHE_SECONDS * _NS:
            started = self._revocations.begin_read()
            try:
                record = await self._store.session_by_token_hash(token_hash)
                principal = self._check_record(record, token_hash, principal, started)
            finally:
                self._revocations.end_read(started)
            self._cache[token_hash] = principal
        if now >= principal.expires_ns:
            self._cache.pop(token_hash, None)
            raise session_ended("expired")
        if now - principal.last_active_ns > principal.idle_ns:
            self._cache.pop(token_hash, None)
            raise session_ended("idle")
        principal.last_active_ns = now
        if now - principal.last_written_ns > self._settings.touch_interval_seconds * _NS:
            principal.last_written_ns = now
            self._touches[principal.session_id] = iso_from_ns(now)
        return principal

    def _check_record(self, record: SessionRecord | None, token_hash: bytes, cached: Principal | None,
                      started: int) -> Principal:
        if record is None:
            self._cache.pop(token_hash, None)
            raise session_ended("missing")
        ended_here = not self._revocations.admits(
            started, [session_key(record.id), account_key(record.actor_type, record.actor_id)])
        if record.revoked_at is not None or ended_here:
            self._cache.pop(token_hash, None)
            raise session_ended("revoked")
        if not record.account_active:
            self._cache.pop(token_hash, None)
            raise session_ended("inactive")
        last_active = iso_to_ns(record.last_active_at)
        if cached is not None:
            last_active = max(last_active, cached.last_active_ns)
        principal = self._principal(record.id, record.actor_type, record.actor_id, record.role, token_hash,
                                    iso_to_ns(record.created_at), last_active)
        principal.expires_ns = iso_to_ns(record.expires_at)
        principal.last_written_ns = cached.last_written_ns if cached else iso_to_ns(record.last_active_at)
        return principal

    # --- background upkeep -------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._flush_loop()), loop.create_task(self._check_loop())]

    async def _flush_loop(self) -> None:
        interval = max(1.0, self._settings.touch_interval_seconds / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush()
            except Exception:
                log.exception("could not record session activity")

    async def flush(self) -> None:
        """Write pending `last_active_at` values and drop stale cache entries."""
        now = time.time_ns()
        unused = UNUSED_SECONDS * _NS
        for key in [k for k, p in self._cache.items() if now - p.last_active_ns > unused]:
            del self._cache[key]
        if self._touches:
            touches, self._touches = list(self._touches.items()), {}
            await self._store.touch_sessions(touches)

    def apply(self, note: str) -> None:
        """Another instance's announcement: on "sessions changed", check the
        sessions in use against the database at once (the database decides,
        not the note), once however many arrive meanwhile."""
        if note != SESSIONS_CHANGED or self._check_soon is not None:
            return
        self._check_soon = asyncio.get_running_loop().create_task(self._check_now())

    async def _check_now(self) -> None:
        try:
            await self.check_in_use()
        except Exception:
            log.exception("could not check the sessions in use; the periodic check will")
        finally:
            self._check_soon = None

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.session_check_seconds)
            try:
                await self.check_in_use()
            except Exception:
                log.exception("could not check the sessions in use; trying again")

    async def check_in_use(self) -> None:
        """One query over every session in use, cached or streaming: those
        that ended behind this process's back (revoked or deleted with SQL,
        account deactivated, expired) lose their cache entry and streams."""
        in_use = {p.session_id for p in self._cache.values()}
        in_use.update(self._streaming())
        if not in_use:
            return
        started = self._revocations.begin_read()
        try:
            ended = await self._store.ended_sessions(list(in_use), now_iso())
        finally:
            self._revocations.end_read(started)
        if not ended:
            return
        why = dict(ended)
        self._revocations.seen([session_key(session_id) for session_id in why])
        for key in [k for k, p in self._cache.items() if p.session_id in why]:
            del self._cache[key]
        for session_id, reason in why.items():
            self._revoked(session_id, None, session_ended(reason))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush()
