"""The loop every event stream runs: replay from the database when resuming
or after falling behind, live events otherwise, heartbeats when idle; and
its session checked again every heartbeat interval and ended on time.

It reads a `StreamSource` (the broadcaster for events, the dashboard hub
for reader updates) and writes to a `StreamSink`, so it knows neither the
backend nor the transport."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from cursor_grpc import metrics
from cursor_grpc.auth.sessions import Principal, SessionManager, session_ended
from cursor_grpc.config import LiveSettings
from cursor_grpc.errors import CursorError, ResourceExhausted, Unauthenticated
from cursor_grpc.live.broadcaster import Encoded, FanoutPacer, Subscription

# Builds the non-event fields of a response: (cursor, heartbeat) -> bytes.
Tail = Callable[[str, bool], bytes]


class StreamSource(Protocol):
    """What feeds a stream's subscription, and what it catches up from."""

    # Everything at or below `head` was offered to the subscriptions.
    head: int
    # Most sequence numbers one catch-up read covers.
    replay_range: int
    pacer: FanoutPacer

    def cursor(self, seq: int) -> str: ...

    async def replay(self, subscription: Subscription, after: int, upto: int,
                     max_bytes: int | None = None) -> tuple[list[Encoded], int]:
        """What `subscription` would have been offered for after < seq <=
        upto, and how far that reaches."""
        ...

    def unsubscribe(self, subscription: Subscription) -> None: ...


class StreamSink(Protocol):
    """Where a stream's messages go, already serialized; a gRPC servicer
    context is one. Waiting in `write` is the client's flow control."""

    async def write(self, data: bytes, /) -> None:
        ...


async def run_stream(
    sink: StreamSink,
    caller: Principal,
    sessions: SessionManager,
    source: StreamSource,
    subscription: Subscription,
    after: int | None,
    settings: LiveSettings,
    tail: Tail,
    first: list[bytes] | None = None,
    start: int | None = None,
) -> None:
    """Serve one stream until the client leaves or the stream is closed.
    Without `after`, it goes on from `start` (the seq its snapshot `first`
    was read at, so what committed while it was read is sent too), else
    from the head.

    The subscription is registered before anything is read, so every event
    committed from then on is in its buffer; replayed events and buffered
    ones overlap at most, and `delivered` drops the overlap. Whatever ends
    the session closes the subscription (see SessionManager.ending and
    check_in_use); expiry does so from a timer."""
    need_replay = after is not None
    delivered = after if after is not None else (start if start is not None else source.head)
    most, most_bytes = settings.max_events_per_message, settings.max_stream_message_bytes
    pacer = source.pacer
    loop = asyncio.get_running_loop()
    expiry = loop.call_later(max(0.0, (caller.expires_ns - time.time_ns()) / 1e9),
                             subscription.close, session_ended("expired"))
    checked_at = loop.time()

    def ended() -> CursorError | None:
        if subscription.closed is not None:
            return _with_cursor(subscription.closed, source.cursor(delivered))
        return None

    async def check_session() -> None:
        nonlocal checked_at
        checked_at = loop.time()
        try:
            await sessions.validate(caller.token_hash)
        except Unauthenticated as error:
            raise _with_cursor(error, source.cursor(delivered)) from None

    async def send(chunks: list[bytes], seq: int, heartbeat: bool = False) -> None:
        data = b"".join(chunks) + tail(source.cursor(seq), heartbeat)
        metrics.stream_lag(max(0, source.head - seq))
        try:
            # asyncio.timeout arms a timer on this task; wait_for would start
            # a task per message. Closing the subscription cuts it short.
            async with asyncio.timeout(settings.stall_seconds) as deadline:
                subscription.write_deadline = deadline
                await sink.write(data)
            counted.sent(len(chunks))
        except TimeoutError:
            closing = ended()
            if closing is not None:
                raise closing from None
            raise ResourceExhausted(
                f"the stream made no progress for {settings.stall_seconds:.0f} s and was ended; "
                f"resume with after={source.cursor(delivered)}",
                reason="STREAM_STALLED", metadata={"cursor": source.cursor(delivered)},
            ) from None
        finally:
            subscription.write_deadline = None

    counted = metrics.stream_opened()
    try:
        # The first message says the stream is open and where it stands,
        # so a client never waits a heartbeat interval to learn its cursor.
        for message in first or [tail(source.cursor(delivered), True)]:
            if (closing := ended()) is not None:
                raise closing
            await sink.write(message)
            counted.sent(0)
        while True:
            if (closing := ended()) is not None:
                raise closing
            if time.time_ns() >= caller.expires_ns:
                raise _with_cursor(session_ended("expired"), source.cursor(delivered))
            if loop.time() - checked_at >= settings.heartbeat_seconds:
                await check_session()  # a busy stream sends no heartbeats
                continue
            if need_replay or subscription.overflowed:
                need_replay = False
                subscription.restart()
                target = source.head
                while delivered < target and not subscription.overflowed and subscription.closed is None:
                    upto = min(delivered + source.replay_range, target)
                    items, reached = await source.replay(subscription, delivered, upto, settings.replay_page_bytes)
                    parts = list(_batches(items, most, most_bytes))
                    for n, part in enumerate(parts):
                        last = part[-1].seq
                        # Items may share a seq (a dashboard round's updates): a message
                        # with only some of them keeps the cursor behind them.
                        whole = n + 1 == len(parts) or parts[n + 1][0].seq != last
                        await send([e.chunk for e in part], last if whole else delivered)
                        if whole:
                            delivered = last
                    delivered = reached
                continue
            # Live: the loop's CPU time taking, joining and writing (not the
            # waiting) is fan-out's, charged to the pacer that paces it.
            began = pacer.cpu()
            items = [item for item in subscription.take(most, most_bytes) if item.seq > delivered]
            if items:
                last = items[-1].seq
                # More items of the same seq still buffered (a dashboard round larger
                # than a message): this message's cursor stays behind them, and they
                # go in the next one.
                whole = not (subscription.buffer and subscription.buffer[0].seq == last)
                await pacer.metered(send([item.chunk for item in items], last if whole else delivered), began)
                if whole:
                    delivered = last
                continue
            if not await subscription.wait(settings.heartbeat_seconds):
                await check_session()
                if subscription.has_news:
                    continue  # news came during the check: the heartbeat would not be quiet
                # Nothing buffered and nothing missed: every event up to the
                # head that this stream wants has been delivered.
                delivered = max(delivered, source.head)
                await send([], delivered, heartbeat=True)
    finally:
        expiry.cancel()
        source.unsubscribe(subscription)
        counted.closed()


def _batches(items: Iterable[Encoded], most: int, most_bytes: int) -> Iterator[list[Encoded]]:
    """Consecutive messages of at most `most` events and `most_bytes` bytes
    (at least one event each)."""
    batch: list[Encoded] = []
    size = 0
    for item in items:
        if batch and (len(batch) >= most or size + len(item.chunk) > most_bytes):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += len(item.chunk)
    if batch:
        yield batch


def _with_cursor(error: CursorError, cursor: str) -> CursorError:
    """The closing error, naming where this stream can resume."""
    own = copy.copy(error)
    own.metadata = {**error.metadata, "cursor": cursor}
    own.message = f"{error.message}; resume with after={cursor}"
    return own
