"""Pure logic: a stream's subscription buffer and its wait."""

from __future__ import annotations

import asyncio
import time

from cursor_grpc.live.broadcaster import Encoded, Subscription
from cursor_grpc.storage.records import EventFilter


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


def _event(seq: int, size: int) -> Encoded:
    return Encoded(seq=seq, reader_id="r", kind="interaction", interaction_type="answer", chunk=b"x" * size)


def test_the_buffer_is_bounded_in_bytes_too() -> None:
    """Big events overflow the buffer long before its event count would:
    the stream then catches up from the database, holding nothing."""

    async def scenario() -> tuple[int, bool, int]:
        subscription = Subscription(EventFilter(), limit=1000, session_id="s", account=("consultant", "c"),
                                    byte_limit=100)
        subscription.offer([_event(1, 40), _event(2, 40)])
        held = len(subscription.buffer)
        subscription.offer([_event(3, 40)])
        return held, subscription.overflowed, subscription.buffered_bytes

    held, overflowed, left = asyncio.run(scenario())
    assert held == 2
    assert overflowed
    assert left == 0


def test_take_stops_at_a_byte_budget_but_always_takes_one() -> None:
    async def scenario() -> list[list[int]]:
        subscription = Subscription(EventFilter(), limit=1000, session_id="s", account=("consultant", "c"))
        subscription.offer([_event(1, 300), _event(2, 300), _event(3, 300), _event(4, 2000), _event(5, 10)])
        taken = []
        while subscription.buffer:
            taken.append([e.seq for e in subscription.take(10, most_bytes=700)])
        assert subscription.buffered_bytes == 0
        return taken

    assert asyncio.run(scenario()) == [[1, 2], [3], [4], [5]]
