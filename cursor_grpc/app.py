"""The parts one server process is made of, built and closed in order."""

from __future__ import annotations

import asyncio

from cursor_grpc.auth.passwords import Passwords
from cursor_grpc.auth.sessions import SessionManager
from cursor_grpc.auth.throttle import LoginThrottle
from cursor_grpc.config import Settings
from cursor_grpc.storage.store import Store


class App:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(settings.storage)
        self.passwords = Passwords(settings.auth)
        self.throttle = LoginThrottle(settings.auth)
        self.sessions = SessionManager(self.store, settings.auth)

    async def start(self) -> None:
        self.sessions.start()

    async def close(self) -> None:
        """Flush session activity, let queued writes commit, close the database."""
        await self.sessions.stop()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.passwords.close)
        await loop.run_in_executor(None, self.store.close)
