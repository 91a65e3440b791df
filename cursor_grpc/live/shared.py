"""Ends shared streams whose consent no longer holds, wherever it was
revoked. The instance that serves RevokeConsent ends its own streams at
once; another instance on the same database (or a change made by hand)
is found by this check: every `interval` one read looks at the consents
behind every open WatchSharedActivity stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cursor_grpc.errors import PermissionDenied
from cursor_grpc.live.broadcaster import Broadcaster
from cursor_grpc.storage import Store

log = logging.getLogger("cursor.live.shared")


class SharedStreamCheck:
    def __init__(self, broadcaster: Broadcaster, store: Store, interval: float) -> None:
        self._broadcaster = broadcaster
        self._store = store
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except Exception:
                log.exception("could not check the consents of shared streams; trying again")

    async def check(self) -> int:
        """End the shared streams whose consent was revoked, narrowed to state
        only, or whose granter was deactivated; returns how many ended."""
        streams = self._broadcaster.shared_streams()
        if not streams:
            return 0
        in_force = await self._store.consents_in_force(list(streams))
        ended = 0
        for (granter_id, grantee_id), carries_interactions in streams.items():
            consent = in_force.get((granter_id, grantee_id))
            if consent is None:
                error = PermissionDenied("consent revoked", reason="CONSENT_REVOKED")
            elif carries_interactions and not consent.shares_interactions:
                error = PermissionDenied("the consent was changed to state only; open the stream again",
                                         reason="CONSENT_CHANGED")
            else:
                continue
            ended += self._broadcaster.close_shared(granter_id, grantee_id, error)
        return ended

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
