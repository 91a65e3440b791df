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

# What an instance announces after a consent ended or narrowed, or a granter
# was deactivated: the others check their shared streams at once.
CONSENTS_CHANGED = '{"consents":"changed"}'


class SharedStreamCheck:
    def __init__(self, broadcaster: Broadcaster, store: Store, interval: float) -> None:
        self._broadcaster = broadcaster
        self._store = store
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._check_soon: asyncio.Task[None] | None = None

    def changed(self) -> None:
        """A consent ended or narrowed here (committed): tell the other instances."""
        self._store.announce(CONSENTS_CHANGED)

    def apply(self, note: str) -> None:
        """Another instance's announcement: on "consents changed", check now
        (the database decides), once however many arrive meanwhile."""
        if note != CONSENTS_CHANGED or self._check_soon is not None:
            return
        self._check_soon = asyncio.get_running_loop().create_task(self._check_now())

    async def _check_now(self) -> None:
        try:
            await self.check()
        except Exception:
            log.exception("could not check the consents of shared streams; the periodic check will")
        finally:
            self._check_soon = None

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
