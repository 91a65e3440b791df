"""Session tokens: issue, authenticate, end.

A token is 256 random bits from `secrets`, shown once; the database keeps
only its SHA-256 (a slow hash buys nothing for a random 256-bit secret).
Authenticated sessions are cached in memory by token hash so an RPC costs a
dict lookup, not a read; the cache is re-checked against the database every
`CACHE_SECONDS` and dropped at once when this process ends a session or
deactivates an account. `last_active_at` is written in batches at most once
per `touch_interval_seconds` per session, never on every RPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cursor_grpc.clock import iso_from_ns, iso_to_ns
from cursor_grpc.config import AuthSettings
from cursor_grpc.errors import Unauthenticated
from cursor_grpc.storage.records import Credential, SessionRecord
from cursor_grpc.storage.store import Store

log = logging.getLogger("cursor.auth")

CACHE_SECONDS = 10
# Cached sessions unused this long are dropped (memory stays bounded).
UNUSED_SECONDS = 300
_NS = 1_000_000_000


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


class SessionManager:
    def __init__(self, store: Store, settings: AuthSettings) -> None:
        self._store = store
        self._settings = settings
        self._cache: dict[bytes, Principal] = {}
        self._touches: dict[str, str] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._revoked_listeners: list[Callable[[str | None, tuple[str, str] | None], None]] = []

    def on_revoked(self, listener: Callable[[str | None, tuple[str, str] | None], None]) -> None:
        """Call `listener(session_id, None)` when a session ends and
        `listener(None, (kind, account_id))` when all of an account's do."""
        self._revoked_listeners.append(listener)

    def _revoked(self, session_id: str | None, account: tuple[str, str] | None) -> None:
        for listener in self._revoked_listeners:
            listener(session_id, account)

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
        """Start a session after a successful login."""
        token, token_hash = self.new_token()
        now = time.time_ns()
        principal = self._principal("", credential.kind, credential.id, credential.role, token_hash, now, now)
        principal.session_id = await self._store.start_session(
            credential, token_hash, iso_from_ns(principal.expires_ns), new_password_hash
        )
        self._cache[token_hash] = principal
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
        principal.session_id, _ = await self._store.replace_session(
            caller.session_id, caller.kind, caller.account_id, token_hash, iso_from_ns(principal.expires_ns),
            reason, new_password_hash=new_password_hash, end_other_sessions=end_other_sessions,
        )
        if end_other_sessions:
            self.forget_account(caller.kind, caller.account_id)
        else:
            self._cache.pop(caller.token_hash, None)
            self._revoked(caller.session_id, None)
        self._cache[token_hash] = principal
        return IssuedSession(token, principal)

    async def end(self, caller: Principal, reason: str) -> None:
        self._cache.pop(caller.token_hash, None)
        await self._store.end_session(caller.session_id, reason)
        self._revoked(caller.session_id, None)

    def forget_account(self, kind: str, account_id: str) -> None:
        """Drop every cached session of an account (deactivation, password change)."""
        for key in [k for k, p in self._cache.items() if p.kind == kind and p.account_id == account_id]:
            del self._cache[key]
        self._revoked(None, (kind, account_id))

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
        token_hash = hash_token(self.token_from_metadata(metadata))
        now = time.time_ns()
        principal = self._cache.get(token_hash)
        if principal is None or now - principal.checked_ns > CACHE_SECONDS * _NS:
            record = await self._store.session_by_token_hash(token_hash)
            principal = self._check_record(record, token_hash, principal)
            self._cache[token_hash] = principal
        if now >= principal.expires_ns:
            self._cache.pop(token_hash, None)
            raise Unauthenticated("the session has expired; log in again", reason="SESSION_EXPIRED")
        if now - principal.last_active_ns > principal.idle_ns:
            self._cache.pop(token_hash, None)
            raise Unauthenticated("the session expired after inactivity; log in again", reason="SESSION_IDLE_EXPIRED")
        principal.last_active_ns = now
        if now - principal.last_written_ns > self._settings.touch_interval_seconds * _NS:
            principal.last_written_ns = now
            self._touches[principal.session_id] = iso_from_ns(now)
        return principal

    def _check_record(self, record: SessionRecord | None, token_hash: bytes, cached: Principal | None) -> Principal:
        if record is None:
            raise Unauthenticated("the session token is not valid; log in again", reason="INVALID_TOKEN")
        if record.revoked_at is not None:
            self._cache.pop(token_hash, None)
            raise Unauthenticated(
                "the session has ended (logged out, rotated or revoked); log in again", reason="SESSION_REVOKED"
            )
        if not record.account_active:
            self._cache.pop(token_hash, None)
            raise Unauthenticated("the account is deactivated", reason="ACCOUNT_INACTIVE")
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
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

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

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()
