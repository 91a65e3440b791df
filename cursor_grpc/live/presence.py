"""Announces time-based changes on time, from a timer on the event loop:
presence (reading -> online, anything -> idle) and the attention rules that
time decides (stuck, stalled). The writer does the work."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cursor_grpc.config import AttentionSettings, LiveSettings
from cursor_grpc.storage import Store

log = logging.getLogger("cursor.live.presence")


class PresenceSweeper:
    def __init__(self, store: Store, settings: LiveSettings, rules: AttentionSettings) -> None:
        self._store = store
        self._settings = settings
        self._rules = rules
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        s = self._settings
        idle_ns = int((s.presence_idle_seconds + s.presence_grace_seconds) * 1e9)
        reading_ns = int(s.presence_reading_seconds * 1e9)
        while True:
            await asyncio.sleep(s.presence_sweep_seconds)
            try:
                await self._store.sweep_presence(idle_ns, reading_ns, self._rules)
            except Exception:
                log.exception("presence sweep failed; trying again next time")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
