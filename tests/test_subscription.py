"""Pure logic: a stream's subscription buffer and its wait."""

from __future__ import annotations

import asyncio
import time

import pytest

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


def test_stream_caps_count_the_streams_other_instances_announce() -> None:
    """Pure logic of the shared caps: another instance's whole snapshot
    counts, a partial one does not replace the last whole one, and an
    instance that went silent is forgotten."""
    from cursor_grpc.config import LiveSettings
    from cursor_grpc.errors import ResourceExhausted
    from cursor_grpc.live import stream_limits
    from cursor_grpc.live.stream_limits import StreamLimits

    settings = LiveSettings(max_streams_per_session=4, max_streams_per_account=100)
    here, there = StreamLimits(settings), StreamLimits(settings)
    for n in range(3):
        there.admit("s1", ("consultant", "c1"))
        there.admit(f"other{n}", ("reader", f"r{n}"))
    for n in range(40):  # enough sessions for a snapshot of several parts
        there.admit(f"busy{n}", ("reader", "many"))
    now = time.monotonic()
    notes = there.snapshot_notes(now=now)
    assert len(notes) > 1
    assert there.snapshot_notes(now=now + 0.1) == [], "nothing changed, and the keep-alive is not due"
    assert there.snapshot_notes(now=now + stream_limits.KEEPALIVE_SECONDS + 0.1), "the keep-alive"
    for note in notes[:-1]:
        here.apply(note)
    here.admit("s1", ("consultant", "c1"))  # the partial snapshot does not count yet: 1 here
    here.release("s1", ("consultant", "c1"))
    here.apply(notes[-1])
    here.admit("s1", ("consultant", "c1"))  # 3 there + 1 here = the cap
    with pytest.raises(ResourceExhausted) as refused:
        here.admit("s1", ("consultant", "c1"))
    assert refused.value.metadata == {"scope": "session", "limit": "4"}
    here.apply('{"streams": "junk"}')
    here.apply("not json at all")
    # Silent past FORGET_SECONDS (the instance stopped or was killed): its streams no longer count.
    here._forget_silent(now=time.monotonic() + stream_limits.FORGET_SECONDS + 1)
    here.admit("s1", ("consultant", "c1"))
