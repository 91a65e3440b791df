"""Pure logic: a stream's subscription buffer and its wait."""

from __future__ import annotations

import asyncio
import time

from cursor_grpc.live.broadcaster import Encoded, Subscription
from cursor_grpc.storage.events import EventFilter


def test_news_arriving_as_the_wait_times_out_is_not_reported_as_quiet() -> None:
    """The heartbeat path treats a quiet wait as "everything up to the head
    has been delivered". If the timeout and a flush fall in the same loop
    iteration, timer first, the wait must still say that news came, or the
    stream would skip the buffered event."""

    async def scenario() -> tuple[bool, int]:
        loop = asyncio.get_running_loop()
        subscription = Subscription(EventFilter(), limit=10, session_id="s", account=("consultant", "c"))
        event = Encoded(seq=1, reader_id="r", kind="interaction", interaction_type="answer", chunk=b"")
        waiting = asyncio.ensure_future(subscription.wait(0.01))
        await asyncio.sleep(0)  # the wait has armed its 10 ms timer
        # Due 10 ms after the timer, so the loop runs it right after it.
        loop.call_at(loop.time() + 0.02, subscription.offer, [event])
        time.sleep(0.05)  # noqa: ASYNC251 -- hold the loop on purpose: both come due in one iteration
        news = await waiting
        return news, len(subscription.buffer)

    news, buffered = asyncio.run(scenario())
    assert buffered == 1
    assert news, "the wait said nothing came while an event sat in the buffer"


def test_a_quiet_wait_says_so() -> None:
    async def scenario() -> bool:
        subscription = Subscription(EventFilter(), limit=10, session_id="s", account=("consultant", "c"))
        return await subscription.wait(0.01)

    assert asyncio.run(scenario()) is False
