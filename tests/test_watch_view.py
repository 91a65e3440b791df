"""`cursor-grpc watch`: the model alone (the table from WatchReaders
updates, and the fallback of one WatchActivity stream of every event), the
client against a real server (both streams, and the fallback), reconnection
across a server restart on the same port, and the command."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from rich.console import Console

from cursor.v1 import admin_service_pb2 as apb
from cursor.v1 import auth_service_pb2, auth_service_pb2_grpc, reader_service_pb2_grpc
from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2 as pb
from cursor_grpc import cli
from cursor_grpc.watch_view import PINNED_KINDS, ReadersLink, WatchClient, WatchModel, WatchView
from tests.conftest import ADMIN_EMAIL, PASSWORD, Client, Harness, bearer, migrate_with_admin
from tests.databases import TestDatabase
from tests.procs import ServerProcess

NS = 1_000_000_000
ME = "consultants/me"

# --------------------------------------------------------------------------
# Scripted responses for the model
# --------------------------------------------------------------------------


def _event(event_id: int, reader: str, kind: int, at_s: float, summary: str = "", **obj: Any) -> pb.ActivityEvent:
    event = pb.ActivityEvent(
        cursor=f"e-{event_id}", event_id=event_id, kind=kind, reader=reader, summary=summary, **obj
    )
    event.create_time.FromNanoseconds(int(at_s * NS))
    return event


def interaction(event_id: int, reader: str, type_: str, at_s: float, summary: str = "") -> pb.ActivityEvent:
    return _event(event_id, reader, pb.EVENT_KIND_INTERACTION_RECORDED, at_s, summary,
                  interaction=pb.Interaction(type=type_, summary=summary, sequence=event_id))


def state(event_id: int, reader: str, at_s: float, progress: float, step: int,
          status: int = pb.READER_STATUS_ACTIVE) -> pb.ActivityEvent:
    event = _event(event_id, reader, pb.EVENT_KIND_READER_STATE_CHANGED, at_s, f"{progress:.0%}, step {step}",
                   state=pb.ReaderState(reader=reader, status=status, progress=progress, current_step=step,
                                        presence=pb.PRESENCE_READING))
    event.state.last_seen_time.FromNanoseconds(int(at_s * NS))
    event.state.update_time.FromNanoseconds(int(at_s * NS))
    return event


def presence(event_id: int, reader: str, at_s: float, now: int, was: int) -> pb.ActivityEvent:
    return _event(event_id, reader, pb.EVENT_KIND_PRESENCE_CHANGED, at_s,
                  presence=pb.PresenceChange(presence=now, previous=was))


def message(event_id: int, reader: str, at_s: float, direction: int, body: str) -> pb.ActivityEvent:
    return _event(event_id, reader, pb.EVENT_KIND_MESSAGE_SENT, at_s, body,
                  message=pb.Message(direction=direction, body=body, sequence=event_id))


def read(event_id: int, reader: str, at_s: float, participant: str, upto: int) -> pb.ActivityEvent:
    return _event(event_id, reader, pb.EVENT_KIND_MESSAGE_READ, at_s, "read",
                  message_read=pb.MessageRead(reader=reader, participant=participant, last_read_sequence=upto))


def snapshot_reader(name: str, display: str, seen_s: float, progress: float = 0.0, step: int = 0,
                    presence_: int = pb.PRESENCE_ONLINE) -> pb.Reader:
    reader = pb.Reader(name=name, display_name=display, email=f"{display.lower()}@example.com", active=True,
                       state=pb.ReaderState(reader=name, status=pb.READER_STATUS_ACTIVE, progress=progress,
                                            current_step=step, presence=presence_))
    reader.state.last_seen_time.FromNanoseconds(int(seen_s * NS))
    reader.state.update_time.FromNanoseconds(int(seen_s * NS))
    return reader


def batch(*events: pb.ActivityEvent) -> cpb.WatchActivityResponse:
    return cpb.WatchActivityResponse(events=events, cursor=events[-1].cursor)


def update(name: str, display: str, seen_s: float, progress: float = 0.0, step: int = 0,
           presence_: int = pb.PRESENCE_ONLINE, activity: tuple[str, str, float] | None = None,
           signals: tuple[pb.AttentionSignal, ...] = (), state_s: float | None = None,
           status: int = pb.READER_STATUS_ACTIVE) -> cpb.ReaderUpdate:
    """A reader's latest as WatchReaders sends it; `activity` is (type,
    summary, when), `state_s` when its state last moved (default: seen)."""
    made = cpb.ReaderUpdate(reader=name, display_name=display, attention=signals,
                            state=pb.ReaderState(reader=name, status=status, progress=progress, current_step=step,
                                                 presence=presence_))
    made.state.last_seen_time.FromNanoseconds(int(seen_s * NS))
    made.state.update_time.FromNanoseconds(int((seen_s if state_s is None else state_s) * NS))
    if activity is not None:
        made.last_activity_type, made.last_activity_summary = activity[0], activity[1]
        made.last_activity_time.FromNanoseconds(int(activity[2] * NS))
    return made


def readers_batch(*updates: cpb.ReaderUpdate, unread: dict[str, int] | None = None, complete: bool = False,
                  cursor: str = "") -> cpb.WatchReadersResponse:
    counts = [cpb.UnreadCount(reader=name, unread=n) for name, n in (unread or {}).items()]
    return cpb.WatchReadersResponse(updates=updates, unread_counts=counts, snapshot_complete=complete, cursor=cursor)


def render_text(view: WatchView, width: int = 140, height: int = 40, now_s: float | None = None) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, height=height, force_terminal=False)
    console.print(view.render(height, None if now_s is None else int(now_s * NS), width))
    return out.getvalue()


# --------------------------------------------------------------------------
# (a) The model: the table and the feed from WatchReaders, the pinned lines
# from WatchActivity
# --------------------------------------------------------------------------


def test_dashboard_model_takes_the_table_and_the_feed_from_updates() -> None:
    model = WatchModel(me=ME, dashboard=True)
    model.begin_snapshot()
    model.apply_readers(readers_batch(
        update("readers/a", "Ann", 100, 0.25, 2, activity=("open_page", "page 2", 95)),
        update("readers/b", "Bob", 90, 0.5, 5, pb.PRESENCE_IDLE),
    ))
    assert model.readers == {}  # the snapshot lands when it is complete
    model.apply_readers(readers_batch(unread={"readers/b": 2}, complete=True, cursor="r-10"))
    assert model.snapshot_complete
    assert (model.readers_cursor, model.cursor) == ("r-10", "")
    a, b = model.readers["readers/a"], model.readers["readers/b"]
    assert (a.display_name, a.activity, a.last_activity_ns, a.unread) == ("Ann", "open_page: page 2", 95 * NS, 0)
    assert (b.progress, b.step, b.presence, b.unread) == (0.5, 5, pb.PRESENCE_IDLE, 2)
    assert model.take_unresolved(10) == []  # updates carry the name: no lookups
    assert not model.feed  # a snapshot is no action

    # A round of updates: Bob's progress moved his state and woke him up,
    # Ann answered (her state did not move), a reader new to the table;
    # counts, one of them for a reader the stream does not watch. One line
    # per action, in time order.
    model.apply_readers(readers_batch(
        update("readers/b", "Bob", 110, 0.75, 6, pb.PRESENCE_READING, activity=("progress", "step 6", 110)),
        update("readers/a", "Ann", 105, 0.25, 2, pb.PRESENCE_READING, activity=("answer", "q1", 105), state_s=100),
        update("readers/c", "Cyd", 108, activity=("open_page", "page 1", 108), state_s=50),
        unread={"readers/a": 1, "readers/x": 4}, cursor="r-12"))
    assert model.readers_cursor == "r-12"
    assert [line.text for line in model.feed] == [
        "answer: q1 · reading (was online)",
        "open_page: page 1",
        "progress: step 6 · state active, 75%, step 6 · reading (was idle)",
    ]
    assert model.feed[-1].kinds == (pb.EVENT_KIND_INTERACTION_RECORDED, pb.EVENT_KIND_READER_STATE_CHANGED,
                                    pb.EVENT_KIND_PRESENCE_CHANGED)
    assert (b.progress, b.step, b.presence, b.activity) == (0.75, 6, pb.PRESENCE_READING, "progress: step 6")
    assert (a.unread, "readers/x" in model.readers) == (1, False)
    assert sorted(model.readers) == ["readers/a", "readers/b", "readers/c"]
    # An update without a new action (presence, a message, a heartbeat's
    # "seen") makes no line.
    model.apply_readers(readers_batch(update("readers/b", "Bob", 120, 0.75, 6, pb.PRESENCE_ONLINE,
                                             activity=("progress", "step 6", 110), state_s=110)))
    assert (len(model.feed), b.presence, b.last_seen_ns) == (3, pb.PRESENCE_ONLINE, 120 * NS)

    # The WatchActivity stream: messages and signals, pinned; they count
    # no unread message (the updates do) and add no reader.
    model.apply(batch(message(13, "readers/a", 112, pb.MESSAGE_DIRECTION_FROM_READER, "help?"),
                      message(14, "readers/z", 113, pb.MESSAGE_DIRECTION_FROM_READER, "anyone?")))
    assert model.cursor == "e-14"
    assert a.unread == 1
    assert "readers/z" not in model.readers
    assert [line.text for line in model.pinned] == ["message from reader: help?", "message from reader: anyone?"]

    text = render_text(WatchView(model, title="me"), now_s=140)
    assert "Ann" in text
    assert "state active, 75%, step 6" in text
    assert "readers/z" in text  # pinned, by name: not a row


def test_dashboard_signals_are_the_updates_but_a_clear_or_a_take_seen_first_stays() -> None:
    model = WatchModel(me=ME, dashboard=True)
    model.begin_snapshot()
    stuck = pb.AttentionSignal(name="readers/a/attentionSignals/s1", reader="readers/a",
                               rule=pb.ATTENTION_RULE_STUCK, state=pb.ATTENTION_STATE_OPEN, summary="stuck")
    help_ = pb.AttentionSignal(name="readers/a/attentionSignals/s2", reader="readers/a",
                               rule=pb.ATTENTION_RULE_ASKED_FOR_HELP, state=pb.ATTENTION_STATE_OPEN, summary="help")
    model.apply_readers(readers_batch(update("readers/a", "Ann", 10, signals=(stuck,)), complete=True, cursor="r-1"))
    row = model.readers["readers/a"]
    assert list(row.signals) == [stuck.name]
    assert model.signalled == {"readers/a"}
    # The update is the latest: it replaces the row's signals.
    model.apply_readers(readers_batch(update("readers/a", "Ann", 11, signals=(help_,))))
    assert list(row.signals) == [help_.name]
    # The feed stream is ahead: the help is taken, then cleared...
    taken = pb.AttentionSignal()
    taken.CopyFrom(help_)
    taken.acknowledged_by = ME
    model.apply(batch(_event(20, "readers/a", pb.EVENT_KIND_ATTENTION_CHANGED, 12, attention=taken)))
    assert row.signals[help_.name].acknowledged_by == ME
    # ...an update read before the take does not untake it...
    model.apply_readers(readers_batch(update("readers/a", "Ann", 11, signals=(help_,))))
    assert row.signals[help_.name].acknowledged_by == ME
    cleared = pb.AttentionSignal()
    cleared.CopyFrom(taken)
    cleared.state = pb.ATTENTION_STATE_CLEARED
    model.apply(batch(_event(21, "readers/a", pb.EVENT_KIND_ATTENTION_CHANGED, 13, attention=cleared)))
    assert not row.signals
    # ...nor one read before the clear bring it back.
    model.apply_readers(readers_batch(update("readers/a", "Ann", 11, signals=(taken,))))
    assert not row.signals
    assert model.signalled == set()
    assert [line.text for line in model.pinned] == ["HELP taken by you: help", "HELP cleared"]
    # A signal event of a reader the table does not have pins a line only.
    other = pb.AttentionSignal(name="readers/q/attentionSignals/s9", reader="readers/q",
                               rule=pb.ATTENTION_RULE_STUCK, state=pb.ATTENTION_STATE_OPEN, summary="stuck")
    model.apply(batch(_event(22, "readers/q", pb.EVENT_KIND_ATTENTION_CHANGED, 14, attention=other)))
    assert "readers/q" not in model.readers
    assert model.pinned[-1].text == "STUCK: stuck"


def test_dashboard_fresh_snapshots_keep_emails_and_a_new_scope_drops_the_rest() -> None:
    model = WatchModel(me=ME, dashboard=True)
    model.begin_snapshot()
    model.apply_readers(readers_batch(update("readers/a", "Ann", 10), update("readers/b", "Bob", 11),
                                      unread={"readers/b": 3}, complete=True, cursor="r-1"))
    # The filter wants emails, which updates do not carry: looked up once each.
    model.want_emails()
    assert sorted(model.take_unresolved(10)) == ["readers/a", "readers/b"]
    model.apply_profile(snapshot_reader("readers/a", "Ann", 10))
    model.give_up_profile("readers/b")
    # Starting over (the cursor was refused): Bob is gone from the snapshot
    # but kept for his unread messages; Ann's email stays; counts are the
    # new snapshot's.
    model.begin_snapshot()
    model.apply_readers(readers_batch(update("readers/a", "Ann", 20), update("readers/c", "Cyd", 21),
                                      unread={"readers/a": 1}, complete=True, cursor="r-9"))
    assert sorted(model.readers) == ["readers/a", "readers/b", "readers/c"]
    assert (model.readers["readers/a"].email, model.readers["readers/a"].unread) == ("ann@example.com", 1)
    assert model.readers["readers/b"].unread == 3
    assert model.take_unresolved(10) == ["readers/c"]  # emails are still wanted
    # A new scope (f): only the snapshot's readers.
    model.begin_snapshot(replace=True)
    model.apply_readers(readers_batch(update("readers/c", "Cyd", 30), complete=True, cursor="r-12"))
    assert list(model.readers) == ["readers/c"]


def test_dashboard_model_takes_a_thousand_readers_and_their_traffic_quickly() -> None:
    model = WatchModel(me=ME, dashboard=True)
    model.begin_snapshot()
    for start in range(0, 1000, 200):
        model.apply_readers(readers_batch(*(update(f"readers/r{i:04}", f"Reader {i}", 1000)
                                            for i in range(start, start + 200))))
    model.apply_readers(readers_batch(complete=True, cursor="r-0"))
    # Ten seconds of a busy class: every reader acting in every round of
    # 250 ms (the most the server sends), and messages on the other stream.
    rounds = [readers_batch(*(update(f"readers/r{i:04}", f"Reader {i}", 2000 + n / 4, (n % 100) / 100, n,
                                     activity=("answer", "q", 2000 + n / 4)) for i in range(1000)),
                            unread={f"readers/r{n:04}": 1}, cursor=f"r-{n}") for n in range(1, 41)]
    events = [message(i, f"readers/r{i % 1000:04}", 2000 + i / 1000, pb.MESSAGE_DIRECTION_FROM_READER, "hi")
              for i in range(1, 10_001)]
    view = WatchView(model, title="me")
    started = time.perf_counter()
    for n, response in enumerate(rounds):
        model.apply_readers(response)
        model.apply(batch(*events[n * 250:(n + 1) * 250]))
    render_text(view, height=50)
    elapsed = time.perf_counter() - started
    assert model.updates_applied == 41_000
    assert model.events_applied == 10_000
    assert model.total_unread() == 40
    assert len(model.feed) == 200
    assert elapsed < 3.0, f"40,000 updates, 10,000 events and one frame took {elapsed:.2f} s"


# --------------------------------------------------------------------------
# (b) The model without WatchReaders: one stream of every event
# --------------------------------------------------------------------------


def test_model_applies_snapshot_events_and_unread_counts() -> None:
    model = WatchModel(me=ME)
    model.begin_snapshot()
    model.apply(cpb.WatchActivityResponse(snapshot_readers=[
        snapshot_reader("readers/a", "Ann", 100, 0.25, 2),
        snapshot_reader("readers/b", "Bob", 90, 0.5, 5, pb.PRESENCE_IDLE),
    ]))
    assert model.readers == {}  # the snapshot lands when it is complete
    model.apply(cpb.WatchActivityResponse(snapshot_complete=True, cursor="e-10"))
    assert model.snapshot_complete
    assert model.cursor == "e-10"
    assert [r.display_name for r in model.most_recent(10)] == ["Ann", "Bob"]
    model.set_unread_counts([("readers/b", 2), ("readers/z", 1)])
    assert (model.readers["readers/b"].unread, model.readers["readers/z"].unread) == (2, 1)
    assert model.take_unresolved(10) == ["readers/z"]  # known only from its count

    model.apply(batch(
        interaction(11, "readers/b", "answer", 110, "q1 = yes"),
        state(12, "readers/b", 110, 0.75, 6),
        presence(13, "readers/b", 110, pb.PRESENCE_READING, pb.PRESENCE_IDLE),
        interaction(14, "readers/c", "heartbeat", 111),
        message(15, "readers/a", 112, pb.MESSAGE_DIRECTION_FROM_READER, "help?"),
        message(16, "readers/a", 113, pb.MESSAGE_DIRECTION_TO_READER, "on my way"),
        read(17, "readers/b", 114, ME, 14),
        read(18, "readers/a", 115, "consultants/other", 15),
    ))
    assert model.cursor == "e-18"
    assert model.events_applied == 8
    b, a, c = model.readers["readers/b"], model.readers["readers/a"], model.readers["readers/c"]
    assert (b.progress, b.step, b.status, b.presence) == (0.75, 6, pb.READER_STATUS_ACTIVE, pb.PRESENCE_READING)
    assert b.last_type == "answer"
    assert b.last_seen_ns == 110 * NS
    assert b.unread == 0  # read by me
    assert a.unread == 1  # someone else's read position does not count
    assert c.last_type == "heartbeat"
    assert c.last_seen_ns == 111 * NS
    assert not c.resolved
    assert [r.name for r in model.most_recent(2)] == ["readers/c", "readers/b"]
    # Heartbeats stay out of the feed; an answer with the state and presence
    # changes of its commit is one line; messages are pinned apart.
    assert [line.kinds for line in model.feed] == [
        (pb.EVENT_KIND_INTERACTION_RECORDED, pb.EVENT_KIND_READER_STATE_CHANGED, pb.EVENT_KIND_PRESENCE_CHANGED),
        (pb.EVENT_KIND_MESSAGE_READ,), (pb.EVENT_KIND_MESSAGE_READ,),
    ]
    assert model.feed[0].text == "answer: q1 = yes · state 75%, step 6 · reading (was idle)"
    assert [line.text for line in model.pinned] == ["message from reader: help?", "message from consultant: on my way"]

    # A later message from the reader, then my read position up to the first one only.
    model.apply(batch(message(19, "readers/a", 116, pb.MESSAGE_DIRECTION_FROM_READER, "still there?")))
    assert a.unread == 2
    model.apply(batch(read(20, "readers/a", 117, ME, 15)))
    assert a.unread == 1
    # A replayed event is not applied twice.
    model.apply(batch(message(19, "readers/a", 116, pb.MESSAGE_DIRECTION_FROM_READER, "still there?")))
    assert (a.unread, model.duplicates) == (1, 1)

    text = render_text(WatchView(model, title="me"), now_s=120)
    assert "Ann" in text
    assert "Bob" in text
    assert "75%" in text
    assert "still there?" in text
    assert "readers/c" in text  # not looked up yet: shown by name


def test_a_looked_up_profile_does_not_undo_newer_events() -> None:
    model = WatchModel(me=ME)
    model.apply(batch(state(5, "readers/n", 200, 0.9, 9)))
    stale = snapshot_reader("readers/n", "Nia", 150, 0.1, 1)
    model.apply_profile(stale)
    row = model.readers["readers/n"]
    assert (row.display_name, row.progress, row.step, row.last_seen_ns) == ("Nia", 0.9, 9, 200 * NS)
    assert model.take_unresolved(5) == []


def test_a_fresh_snapshot_replaces_the_table_and_keeps_unread_counts() -> None:
    model = WatchModel(me=ME)
    model.begin_snapshot()
    model.apply(cpb.WatchActivityResponse(snapshot_readers=[snapshot_reader("readers/a", "Ann", 10)]))
    model.apply(cpb.WatchActivityResponse(snapshot_complete=True, cursor="old-3"))
    model.apply(batch(interaction(3, "readers/gone", "answer", 11),
                      message(4, "readers/a", 12, pb.MESSAGE_DIRECTION_FROM_READER, "hi")))
    # Start over (the cursor was out of range): event ids of the new history start low.
    model.cursor = ""
    model.begin_snapshot()
    model.apply(cpb.WatchActivityResponse(snapshot_readers=[snapshot_reader("readers/a", "Ann", 20),
                                                            snapshot_reader("readers/b", "Bob", 21)]))
    model.apply(cpb.WatchActivityResponse(snapshot_complete=True, cursor="new-1"))
    assert sorted(model.readers) == ["readers/a", "readers/b"]
    assert model.readers["readers/a"].unread == 1
    model.apply(batch(interaction(2, "readers/b", "open_page", 22)))
    assert model.readers["readers/b"].last_type == "open_page"
    assert model.duplicates == 0


def test_feed_is_bounded_and_render_shows_what_fits() -> None:
    model = WatchModel(me=ME, feed_size=200)
    model.begin_snapshot()
    model.apply(cpb.WatchActivityResponse(snapshot_readers=[
        snapshot_reader(f"readers/r{i:04}", f"Reader {i}", 1000 + i) for i in range(300)
    ]))
    model.apply(cpb.WatchActivityResponse(snapshot_complete=True, cursor="e-0"))
    model.apply(batch(*(interaction(i, f"readers/r{i % 300:04}", "answer", 2000 + i) for i in range(1, 1001))))
    assert len(model.feed) == 200
    assert model.feed[-1].text == "answer"
    text = render_text(WatchView(model, title="me"), height=30, now_s=3000)
    lines = text.splitlines()
    assert len(lines) == 30
    # No "+N more": the title says which rows show, and the rest scroll into view.
    shown = sum(1 for line in lines if "Reader " in line and "answer" in line and "%" in line)
    assert f"Readers 1-{shown} of 300" in text
    # Markup and escape sequences from readers are shown as text, not obeyed.
    model.apply(batch(interaction(2000, "readers/r0001", "answer", 5000, "[bold red]x[/] \x1b[2J")))
    text = render_text(WatchView(model, title="me"), height=30, now_s=5000)
    assert "[bold red]x[/]" in text
    assert "\x1b" not in text


def test_a_thousand_readers_take_a_burst_of_ten_thousand_events_quickly() -> None:
    model = WatchModel(me=ME)
    model.begin_snapshot()
    readers = [snapshot_reader(f"readers/r{i:04}", f"Reader {i}", 1000) for i in range(1000)]
    for start in range(0, 1000, 200):
        model.apply(cpb.WatchActivityResponse(snapshot_readers=readers[start:start + 200]))
    model.apply(cpb.WatchActivityResponse(snapshot_complete=True, cursor="e-0"))
    makers: list[Callable[[int, str, float], pb.ActivityEvent]] = [
        lambda i, r, t: interaction(i, r, "answer", t, "q"),
        lambda i, r, t: state(i, r, t, (i % 100) / 100, i % 9),
        lambda i, r, t: presence(i, r, t, pb.PRESENCE_READING, pb.PRESENCE_ONLINE),
        lambda i, r, t: message(i, r, t, pb.MESSAGE_DIRECTION_FROM_READER, "hello"),
        lambda i, r, t: interaction(i, r, "heartbeat", t),
    ]
    events = [makers[i % 5](i, f"readers/r{i % 1000:04}", 2000 + i / 1000) for i in range(1, 10_001)]
    responses = [batch(*events[i:i + 500]) for i in range(0, 10_000, 500)]
    view = WatchView(model, title="me")
    started = time.perf_counter()
    for response in responses:
        model.apply(response)
    applied = time.perf_counter() - started
    render_text(view, height=50)
    elapsed = time.perf_counter() - started
    assert model.events_applied == 10_000
    assert model.total_unread() == 2000
    assert elapsed < 3.0, f"10,000 events and one frame took {elapsed:.2f} s (apply {applied:.2f} s)"


# --------------------------------------------------------------------------
# The client in-process against the real server
# --------------------------------------------------------------------------


class Background:
    """A WatchClient running on its own event loop in a thread."""

    def __init__(self, client: WatchClient) -> None:
        self.client = client
        self.loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._started.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self._task = asyncio.create_task(self.client.run())
            self._started.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

        self.loop.run_until_complete(main())
        # Let gRPC deliver its last callbacks before the loop closes.
        self.loop.run_until_complete(asyncio.sleep(0.05))
        self.loop.close()

    def wait_for(self, condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if condition():
                    return
            except RuntimeError:  # the model changed while the test read it
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; client status: {self.client.status}")
            time.sleep(0.02)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def stop(self) -> None:
        if self._thread.is_alive() and self._task is not None:
            self.loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)
        assert not self._thread.is_alive()


@pytest.fixture
def background() -> Iterator[Callable[[WatchClient], Background]]:
    started: list[Background] = []

    def start(client: WatchClient) -> Background:
        started.append(Background(client))
        return started[-1]

    yield start
    for item in started:
        item.stop()


def record(client: Client, type_: str = "progress", **payload: Any) -> rpb.RecordInteractionResponse:
    return client.reader.RecordInteraction(
        rpb.RecordInteractionRequest(interaction=rpb.NewInteraction(
            type=type_, payload_json=json.dumps(payload), summary=f"{type_} {payload}"[:100]
        )),
        metadata=client.md,
    )


def new_consultant_email(h: Harness, name: str) -> tuple[str, str]:
    """A consultant with a known email; returns (email, account)."""
    email = f"{name}@example.com"
    created = h.anonymous.admin.CreateConsultant(
        apb.CreateConsultantRequest(email=email, password=PASSWORD, display_name=name,
                                    role=pb.CONSULTANT_ROLE_CONSULTANT),
        metadata=h.admin_md(),
    )
    return email, created.consultant.name


def _profile(model: WatchModel, name: str) -> str:
    return model.readers[name].display_name


def _kinds_applied(model: WatchModel) -> list[int]:
    """Record the kind of every event the model applies from now on."""
    kinds: list[int] = []
    apply_event = model.apply_event

    def recording(event: pb.ActivityEvent) -> None:
        kinds.append(event.kind)
        apply_event(event)

    model.apply_event = recording  # type: ignore[method-assign]
    return kinds


def _class_of_three(h: Harness) -> tuple[Client, Client, Client]:
    ann, bob, cyd = h.new_reader("Ann"), h.new_reader("Bob"), h.new_reader("Cyd")
    record(ann, "open_page", page=1)
    record(bob, "progress", percent=0.2, step=2)
    ann.reader.SendMyMessage(rpb.SendMyMessageRequest(body="a question"), metadata=ann.md)
    return ann, bob, cyd


def _live_traffic(h: Harness, email: str, ann: Client, bob: Client, cyd: Client) -> None:
    """A reader the snapshot did not have, progress, an answer, a message,
    my read position."""
    record(cyd, "progress", percent=0.5, step=3)
    record(bob, "answer", q=1)
    bob.reader.SendMyMessage(rpb.SendMyMessageRequest(body="me too"), metadata=bob.md)
    me = h.anonymous.login(email, kind=pb.ACCOUNT_KIND_CONSULTANT)
    me.consultant.MarkMessagesRead(cpb.MarkMessagesReadRequest(reader=ann.account), metadata=me.md)


def test_client_takes_the_table_and_the_feed_from_watch_readers_and_messages_from_watch_activity(
    h: Harness, background: Any
) -> None:
    email, account = new_consultant_email(h, "watcher")
    ann, bob, cyd = _class_of_three(h)
    model = WatchModel()
    kinds = _kinds_applied(model)
    client = WatchClient(model, h.server.address, email, PASSWORD, max_backoff=0.5)
    watch = background(client)
    watch.wait_for(client.synced.is_set, what="the snapshot")
    assert client.dashboard is True
    assert client.connected
    assert model.me == account
    assert sorted(model.readers) == sorted([ann.account, bob.account])
    assert model.readers[ann.account].unread == 1  # the snapshot's count
    assert [s.rule for s in model.readers[ann.account].signals.values()] == [pb.ATTENTION_RULE_ASKED_FOR_HELP]
    assert model.readers[bob.account].progress == pytest.approx(0.2)

    _live_traffic(h, email, ann, bob, cyd)
    watch.wait_for(lambda: model.readers[ann.account].unread == 0 and model.readers[bob.account].unread == 1
                   and not model.readers[ann.account].signals  # reading her message ended her HELP
                   and cyd.account in model.readers and bool(model.readers[bob.account].signals)
                   and any(line.text.startswith("answer") for line in model.feed)
                   and any(line.text.startswith("message from reader: me too") for line in model.pinned),
                   what="the updates and the pinned lines")
    cyd_row, bob_row = model.readers[cyd.account], model.readers[bob.account]
    assert _profile(model, cyd.account).startswith("Cyd")  # from its update, no lookup
    assert (cyd_row.progress, cyd_row.step, cyd_row.presence) == (0.5, 3, pb.PRESENCE_READING)
    assert bob_row.last_type == "answer"
    # Cyd's progress is one line, with the state it committed with.
    assert model.feed[0].text == "progress: progress {'percent': 0.5, 'step': 3} · state active, 50%, step 3"
    assert model.feed[1].text == "answer: answer {'q': 1}"
    pinned = [line.text for line in model.pinned]
    assert 'HELP: asked: "me too"' in pinned
    assert any(text.startswith("HELP cleared: read by consultants/") for text in pinned)  # Ann's, when I read
    # The WatchActivity stream carried only what is pinned: no interaction,
    # no heartbeat, no state, presence or read position.
    assert kinds
    assert set(kinds) <= PINNED_KINDS
    assert model.duplicates == 0
    assert (client.readers.snapshots, client.feed.snapshots) == (1, 0)
    frame = render_text(WatchView(model, client, title=email))
    assert "[live]" in frame
    assert "WatchReaders" not in frame
    for name in ("Ann", "Bob", "Cyd", "me too"):
        assert name in frame


def test_client_falls_back_to_one_stream_of_every_event_without_watch_readers(
    h: Harness, background: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server without WatchReaders: this one, asked for a method it does
    not have, answers UNIMPLEMENTED as an older one would."""

    def missing(link: ReadersLink, request: cpb.WatchReadersRequest, token: str) -> Any:
        assert link.client._channel is not None
        call = link.client._channel.unary_stream(
            "/cursor.v1.ConsultantService/WatchReadersNotHere",
            request_serializer=cpb.WatchReadersRequest.SerializeToString,
            response_deserializer=cpb.WatchReadersResponse.FromString)
        return call(request, metadata=(("authorization", f"Bearer {token}"),))

    monkeypatch.setattr(ReadersLink, "open", missing)
    email, _ = new_consultant_email(h, "elder")
    ann, bob, cyd = _class_of_three(h)
    model = WatchModel()
    kinds = _kinds_applied(model)
    client = WatchClient(model, h.server.address, email, PASSWORD, max_backoff=0.5)
    watch = background(client)
    watch.wait_for(client.synced.is_set, what="the snapshot")
    assert client.dashboard is False
    assert client.links == [client.feed]
    assert sorted(model.readers) == sorted([ann.account, bob.account])
    assert model.readers[ann.account].unread == 1  # ListUnreadCounts
    assert model.readers[ann.account].signals  # ListAttention
    _live_traffic(h, email, ann, bob, cyd)
    watch.wait_for(lambda: model.readers[ann.account].unread == 0 and model.readers[bob.account].unread == 1
                   and cyd.account in model.readers and _profile(model, cyd.account).startswith("Cyd"),
                   what="live events and the looked-up name")
    assert (model.readers[cyd.account].progress, model.readers[cyd.account].step) == (0.5, 3)
    assert "you read the conversation" in [line.text for line in model.feed]
    assert {pb.EVENT_KIND_READER_STATE_CHANGED, pb.EVENT_KIND_MESSAGE_READ} <= set(kinds)
    assert client.feed.snapshots == 1
    assert model.duplicates == 0
    header = render_text(WatchView(model, client, title=email), width=200).splitlines()[0]
    assert "[live]" in header
    assert "every event (no WatchReaders on this server)" in header


def test_client_starts_over_when_its_cursor_is_out_of_range(h: Harness, background: Any) -> None:
    email, _ = new_consultant_email(h, "restarter")
    reader = h.new_reader("Dee")
    record(reader, "open_page")
    model = WatchModel()
    # Both from another history of the database.
    model.cursor = model.readers_cursor = "0123456789abcdef-1"
    client = WatchClient(model, h.server.address, email, PASSWORD, max_backoff=0.5)
    watch = background(client)
    watch.wait_for(client.synced.is_set, what="a fresh snapshot")
    watch.wait_for(lambda: bool(model.cursor) and model.cursor != "0123456789abcdef-1", what="the feed's cursor")
    for link in client.links:
        assert link.fresh_starts == 1
        assert list(link.resume_cursors) == ["0123456789abcdef-1"]
    assert list(model.readers) == [reader.account]
    assert model.readers_cursor != "0123456789abcdef-1"


def test_client_signs_in_again_once_then_gives_up(h: Harness, background: Any) -> None:
    email, account = new_consultant_email(h, "relogger")
    reader = h.new_reader("Eve")
    model = WatchModel()
    client = WatchClient(model, h.server.address, email, PASSWORD, max_backoff=0.5)
    watch = background(client)
    watch.wait_for(client.synced.is_set, what="the snapshot")
    first_token = client.token
    # The session ends under the open stream: the view signs in again and resumes.
    h.anonymous.auth.Logout(auth_service_pb2.LogoutRequest(), metadata=bearer(first_token))
    watch.wait_for(lambda: client.logins == 2 and client.connected, what="signing in again")
    time.sleep(0.3)
    assert client.logins == 2, "both streams were refused; one sign-in serves them"
    assert client.readers.resume_cursors
    assert client.feed.resume_cursors
    record(reader, "answer", q=2)
    watch.wait_for(lambda: model.readers.get(reader.account) is not None
                   and model.readers[reader.account].last_type == "answer", what="the event after signing in")
    # The account is switched off: signing in fails, and the view stops with a reason.
    h.anonymous.admin.SetAccountActive(apb.SetAccountActiveRequest(account=account, active=False),
                                       metadata=h.admin_md())
    watch.wait_for(lambda: watch.done, what="giving up")
    assert client.fatal is not None
    # Either the sign-in is refused, or (when the stream ended a moment before the switch-off
    # committed) the sign-in succeeds and the new session is refused at once: both give up, saying why.
    assert ("signing in as relogger@example.com failed" in client.fatal
            or "refused the session right after signing in again" in client.fatal), client.fatal
    assert "deactivated" in client.fatal


# --------------------------------------------------------------------------
# (c) Reconnection across a server restart on the same port
# --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_reader(address: str, email: str) -> tuple[grpc.Channel, reader_service_pb2_grpc.ReaderServiceStub,
                                                      tuple[tuple[str, str]]]:
    channel = grpc.insecure_channel(address)
    token = auth_service_pb2_grpc.AuthServiceStub(channel).Login(
        auth_service_pb2.LoginRequest(email=email, password=PASSWORD, account_kind=pb.ACCOUNT_KIND_READER),
        timeout=10,
    ).session.token
    return channel, reader_service_pb2_grpc.ReaderServiceStub(channel), bearer(token)


def actions(address: str, email: str, numbers: range) -> list[str]:
    """For each number, a message and an answer; returns the pinned lines
    the messages should make."""
    channel, stub, md = process_reader(address, email)
    try:
        for n in numbers:
            stub.SendMyMessage(rpb.SendMyMessageRequest(body=f"number {n}"), metadata=md, timeout=10)
            stub.RecordInteraction(
                rpb.RecordInteractionRequest(interaction=rpb.NewInteraction(
                    type="answer", payload_json=json.dumps({"n": n}), summary=f"number {n}"
                )),
                metadata=md, timeout=10,
            )
    finally:
        channel.close()
    return [f"message from reader: number {n}" for n in numbers]


def test_view_resumes_both_streams_behind_their_cursors_after_a_restart(
    database: TestDatabase, monkeypatch: pytest.MonkeyPatch, background: Any
) -> None:
    """Messages are pinned exactly once each, in order, also those written
    while the view could not reach the server; the table ends with the
    reader's latest, caught up behind the WatchReaders cursor."""
    db = migrate_with_admin(database, monkeypatch).url
    port = free_port()
    address = f"127.0.0.1:{port}"
    servers: list[ServerProcess] = []
    try:
        servers.append(ServerProcess(db, listen=address))
        channel = grpc.insecure_channel(address)
        fay = auth_service_pb2_grpc.AuthServiceStub(channel).RegisterReader(
            auth_service_pb2.RegisterReaderRequest(email="fay@example.com", password=PASSWORD, display_name="Fay"),
            timeout=10,
        ).reader.name
        channel.close()
        names = actions(address, "fay@example.com", range(0, 2))

        model = WatchModel()
        client = WatchClient(model, address, ADMIN_EMAIL, PASSWORD, initial_backoff=0.1, max_backoff=0.5)
        watch = background(client)
        watch.wait_for(client.synced.is_set, what="the snapshot")
        names += actions(address, "fay@example.com", range(2, 4))
        watch.wait_for(lambda: _messages_seen(model) == names[2:] and _last_summary(model, fay) == "number 3",
                       what="live updates and messages")

        # The server goes down; while the view cannot reach it, another server
        # on the same database (another port) takes writes.
        assert servers[0].terminate() == 0
        watch.wait_for(lambda: not (client.readers.connected or client.feed.connected), what="the disconnect")
        cursors = {client.readers: model.readers_cursor, client.feed: model.cursor}
        other = ServerProcess(db)
        servers.append(other)
        names += actions(other.address, "fay@example.com", range(4, 7))
        assert other.terminate() == 0
        assert _last_summary(model, fay) == "number 3"
        # Back on the same port; more once it is up.
        servers.append(ServerProcess(db, listen=address))
        watch.wait_for(lambda: client.connected, what="the reconnect")
        watch.wait_for(lambda: _last_summary(model, fay) == "number 6", what="the table caught up")
        names += actions(address, "fay@example.com", range(7, 9))
        watch.wait_for(lambda: len(_messages_seen(model)) >= len(names) - 2 and _last_summary(model, fay) == "number 8",
                       what="the missed and new messages")
        time.sleep(0.3)
    finally:
        for server in servers:
            server.kill()
    seen = _messages_seen(model)
    assert seen == names[2:], "every message after the snapshot, in order, exactly once"
    assert model.duplicates == 0
    assert client.table.snapshots == 1, "resumed, not started over"
    for link, cursor in cursors.items():
        assert link.fresh_starts == 0
        assert set(link.resume_cursors) == {cursor}, "each stream behind its own last cursor"
    assert cursors[client.readers] != cursors[client.feed]
    assert client.logins == 1, "the session survived the restart"
    assert client.fatal is None


def _messages_seen(model: WatchModel) -> list[str]:
    """The messages in the pinned lines, in the order the view applied them."""
    return [line.text for line in list(model.pinned) if line.text.startswith("message from reader:")]


def _last_summary(model: WatchModel, reader: str) -> str:
    row = model.readers.get(reader)
    return row.last_summary if row is not None else ""


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------


def test_password_is_never_a_flag() -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["watch", "--email", "a@example.com", "--password", "x"])


def test_watch_command_prints_a_frame_once_the_snapshot_is_in(h: Harness) -> None:
    email, _ = new_consultant_email(h, "scripted")
    reader = h.new_reader("Gus")
    record(reader, "progress", percent=0.4, step=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURSOR_")}
    base = [sys.executable, "-m", "cursor_grpc", "watch", "--server", h.server.address, "--email", email,
            "--width", "150", "--height", "30"]
    done = subprocess.run([*base, "--once"], env={**env, "CURSOR_PASSWORD": PASSWORD}, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 30
    assert "[live]" in lines[0]
    assert any("Gus" in line and "40%" in line for line in lines)
    assert PASSWORD not in done.stdout + done.stderr
    refused = subprocess.run([*base, "--once"], env={**env, "CURSOR_PASSWORD": "not the password at all"},
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert refused.returncode == 1
    assert "signing in as scripted@example.com failed" in refused.stderr
    no_password = subprocess.run([*base, "--once"], env=env, capture_output=True, text=True, timeout=60,
                                 stdin=subprocess.DEVNULL, check=False)
    assert no_password.returncode == 2
    assert "CURSOR_PASSWORD" in no_password.stderr
