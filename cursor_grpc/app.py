"""The parts one server process is made of, built and closed in order."""

from __future__ import annotations

import asyncio
import contextlib

from cursor_grpc import metrics
from cursor_grpc.auth.passwords import Passwords
from cursor_grpc.auth.sessions import SessionManager
from cursor_grpc.auth.throttle import LoginThrottle
from cursor_grpc.config import ConfigError, Settings
from cursor_grpc.errors import Unauthenticated
from cursor_grpc.live.broadcaster import Broadcaster
from cursor_grpc.live.dashboard import DashboardHub
from cursor_grpc.live.presence import PresenceSweeper
from cursor_grpc.live.shared import SharedStreamCheck
from cursor_grpc.live.stream_limits import share_counts
from cursor_grpc.storage import Store, open_store


class App:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # The owner while serving: a second server or a restore on this database refuses to start.
        self.store: Store = open_store(settings.storage, owner=True)
        self.passwords = Passwords(settings.auth, workers=settings.auth.argon2_threads)
        loop = asyncio.get_running_loop()
        # Shared with the other instances on this database, if any (docs/scaling.md).
        self.throttle = LoginThrottle(settings.auth, announce=self.store.announce)

        def announced(note: str) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
                loop.call_soon_threadsafe(self._announced, note)

        self.store.on_announcement(announced)
        self.sessions = SessionManager(self.store, settings.auth)
        self.broadcaster = Broadcaster(self.store, asyncio.get_running_loop(), settings.live)
        self.dashboard = DashboardHub(self.store, self.broadcaster, settings.live,
                                      settings.limits.active_window_seconds)
        self.presence = PresenceSweeper(self.store, settings.live, settings.attention)
        self.shared_check = SharedStreamCheck(self.broadcaster, self.store, settings.auth.session_check_seconds)
        self.sessions.on_revoked(self._end_streams)
        self.sessions.check_streaming(self.broadcaster.streaming_sessions)
        self.metrics_server: metrics.MetricsServer | None = None
        self._share_caps: asyncio.Task[None] | None = None

    def _announced(self, note: str) -> None:
        """Loop: what another instance announced, to whoever it concerns."""
        self.throttle.apply(note)
        self.sessions.apply(note)
        self.shared_check.apply(note)
        self.broadcaster.limits.apply(note)

    def _end_streams(self, session_id: str | None, account: tuple[str, str] | None, error: Unauthenticated) -> None:
        """A session or account that stops working loses its open streams at once."""
        self.broadcaster.close_where(
            lambda s: s.session_id == session_id or (account is not None and s.account == account), error
        )

    async def start(self) -> None:
        """Background work: session and presence upkeep, the metrics endpoint
        (if `ops.metrics_listen`), the backend's scheduled maintenance."""
        self.sessions.start()
        self.presence.start()
        self.shared_check.start()
        # The stream caps per session and account hold across instances (docs/scaling.md).
        self._share_caps = asyncio.get_running_loop().create_task(
            share_counts(self.broadcaster.limits, self.store.announce))
        metrics.bind_store(self.store)
        if listen := self.settings.ops.metrics_listen:
            try:
                self.metrics_server = metrics.start_metrics_server(listen)
            except OSError as error:  # the port is taken, or the address is not this machine's
                raise ConfigError(f"cannot serve metrics on {listen}: {error.strerror or error}") from error
        await self.store.start_maintenance(self.settings.ops)

    async def close(self) -> None:
        """Flush session activity, let queued writes commit, close the database."""
        await self.store.stop_maintenance()
        loop = asyncio.get_running_loop()
        if self.metrics_server is not None:
            await loop.run_in_executor(None, self.metrics_server.close)
            self.metrics_server = None
        metrics.unbind_store(self.store)
        await self.presence.stop()
        await self.dashboard.close()
        await self.shared_check.stop()
        if self._share_caps is not None:
            self._share_caps.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._share_caps
        await self.sessions.stop()
        await loop.run_in_executor(None, self.passwords.close)
        await loop.run_in_executor(None, self.store.close)
