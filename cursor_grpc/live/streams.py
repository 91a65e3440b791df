"""The loop every event stream runs: replay from the database when resuming
or after falling behind, live events otherwise, heartbeats when idle."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable
from typing import Any

from grpc import aio

from cursor_grpc import metrics
from cursor_grpc.auth.sessions import Principal
from cursor_grpc.config import LiveSettings
from cursor_grpc.errors import CursorError, ResourceExhausted, Unauthenticated
from cursor_grpc.live.broadcaster import Broadcaster, Subscription
from cursor_grpc.storage.store import Store

# Sequence numbers one replay query covers.
REPLAY_RANGE = 4096

# Builds the non-event fields of a response: (cursor, heartbeat) -> bytes.
Tail = Callable[[str, bool], bytes]


async def run_stream(
    context: aio.ServicerContext[Any, Any],
    caller: Principal,
    broadcaster: Broadcaster,
    store: Store,
    subscription: Subscription,
    after: int | None,
    settings: LiveSettings,
    tail: Tail,
    first: list[bytes] | None = None,
) -> None:
    """Serve one stream until the client leaves or the stream is closed.

    The subscription is registered before anything is read, so every event
    committed from then on is in its buffer; replayed events and buffered
    ones overlap at most, and `delivered` drops the overlap."""
    need_replay = after is not None
    delivered = after if after is not None else broadcaster.head
    most = settings.max_events_per_message

    async def send(chunks: list[bytes], seq: int, heartbeat: bool = False) -> None:
        data = b"".join(chunks) + tail(broadcaster.cursor(seq), heartbeat)
        if chunks:
            metrics.events_delivered(len(chunks))
        metrics.stream_lag(max(0, broadcaster.head - seq))
        try:
            # asyncio.timeout arms a timer on this task; wait_for would start
            # a task per message.
            async with asyncio.timeout(settings.stall_seconds):
                await context.write(data)
        except TimeoutError:
            raise ResourceExhausted(
                f"the stream made no progress for {settings.stall_seconds:.0f} s and was ended; "
                f"resume with after={broadcaster.cursor(delivered)}",
                reason="STREAM_STALLED", metadata={"cursor": broadcaster.cursor(delivered)},
            ) from None

    metrics.stream_opened()
    try:
        # The first message says the stream is open and where it stands,
        # so a client never waits a heartbeat interval to learn its cursor.
        for message in first or [tail(broadcaster.cursor(delivered), True)]:
            await context.write(message)
        while True:
            if subscription.closed is not None:
                raise _with_cursor(subscription.closed, broadcaster.cursor(delivered))
            if time.time_ns() >= caller.expires_ns:
                raise Unauthenticated("the session has expired; log in again", reason="SESSION_EXPIRED")
            if need_replay or subscription.overflowed:
                need_replay = False
                subscription.restart()
                target = broadcaster.head
                while delivered < target and not subscription.overflowed and subscription.closed is None:
                    upto = min(delivered + REPLAY_RANGE, target)
                    events = await store.replay(delivered, upto, subscription.wanted)
                    for start in range(0, len(events), most):
                        part = [broadcaster.encode(e) for e in events[start:start + most]]
                        await send([e.chunk for e in part], part[-1].seq)
                    delivered = upto
                continue
            items = [item for item in subscription.take(most) if item.seq > delivered]
            if items:
                await send([item.chunk for item in items], items[-1].seq)
                delivered = items[-1].seq
                continue
            if not await subscription.wait(settings.heartbeat_seconds):
                # Nothing buffered and nothing missed: every event up to the
                # head that this stream wants has been delivered.
                delivered = max(delivered, broadcaster.head)
                await send([], delivered, heartbeat=True)
    finally:
        broadcaster.unsubscribe(subscription)
        metrics.stream_closed()


def _with_cursor(error: CursorError, cursor: str) -> CursorError:
    """The closing error, naming where this stream can resume."""
    own = copy.copy(error)
    own.metadata = {**error.metadata, "cursor": cursor}
    own.message = f"{error.message}; resume with after={cursor}"
    return own
