"""WatchActivity and WatchMyMessages: live push, resume, snapshot, presence."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import grpc
import pytest

from cursor.v1 import admin_service_pb2, auth_service_pb2
from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2 as pb
from tests.conftest import Client, Harness
from tests.helpers import error_reason, rpc_error
from tests.streams import StreamReader, collect


def record(client: Client, type_: str = "progress", **payload: Any) -> rpb.RecordInteractionResponse:
    return client.reader.RecordInteraction(
        rpb.RecordInteractionRequest(interaction=rpb.NewInteraction(type=type_, payload_json=json.dumps(payload))),
        metadata=client.md,
    )


def Watcher(client: Client, request: cpb.WatchActivityRequest | None = None) -> StreamReader:
    """A WatchActivity stream read on a background thread."""
    return StreamReader(
        client.consultant.WatchActivity(request or cpb.WatchActivityRequest(), metadata=client.md)
    )


def test_live_event_reaches_watcher_with_full_object(h: Harness) -> None:
    consultant, reader = h.new_consultant(), h.new_reader()
    watcher = Watcher(consultant)
    watcher.wait_for(lambda: bool(watcher.responses))  # the first message: the stream is open
    sent = record(reader, percent=0.5, step=4)
    watcher.wait_for(lambda: len(watcher.events) >= 3)
    kinds = [e.kind for e in watcher.events]
    assert kinds == [pb.EVENT_KIND_INTERACTION_RECORDED, pb.EVENT_KIND_READER_STATE_CHANGED,
                     pb.EVENT_KIND_PRESENCE_CHANGED]
    first = watcher.events[0]
    assert first.interaction == sent.interaction
    assert first.reader == reader.account
    assert first.event_id == sent.interaction.sequence
    assert watcher.events[1].state.progress == 0.5
    assert watcher.events[2].presence.presence == pb.PRESENCE_READING
    assert [e.event_id for e in watcher.events] == sorted(e.event_id for e in watcher.events)
    watcher.cancel()


def test_resume_after_disconnect_and_restart_has_no_gap_and_no_duplicate(make_harness: Any) -> None:
    h = make_harness()
    consultant, reader = h.new_consultant(), h.new_reader()
    watcher = Watcher(consultant, cpb.WatchActivityRequest(kinds=[pb.EVENT_KIND_INTERACTION_RECORDED]))
    watcher.wait_for(lambda: bool(watcher.responses))
    ids = [record(reader, "answer", n=i).interaction.sequence for i in range(5)]
    watcher.wait_for(lambda: len(watcher.events) == 5)
    cursor = watcher.cursor()
    watcher.cancel()
    ids += [record(reader, "answer", n=i).interaction.sequence for i in range(5, 10)]
    again = Watcher(consultant, cpb.WatchActivityRequest(kinds=[pb.EVENT_KIND_INTERACTION_RECORDED], after=cursor))
    again.wait_for(lambda: len(again.events) >= 5)
    ids += [record(reader, "answer", n=i).interaction.sequence for i in range(10, 12)]
    again.wait_for(lambda: len(again.events) >= 7)
    time.sleep(0.2)
    assert [e.event_id for e in again.events] == ids[5:]
    cursor = again.cursor()
    again.cancel()
    # Across a restart of the server on the same database.
    h.server.stop()
    h2 = make_harness(h.database)
    consultant2 = h2.anonymous.login(consultant_email(consultant, h2), kind=pb.ACCOUNT_KIND_CONSULTANT)
    reader2 = h2.anonymous.login(reader_email(reader, h2), kind=pb.ACCOUNT_KIND_READER)
    later = [record(reader2, "answer", n=i).interaction.sequence for i in range(3)]
    resumed = Watcher(consultant2, cpb.WatchActivityRequest(kinds=[pb.EVENT_KIND_INTERACTION_RECORDED], after=cursor))
    resumed.wait_for(lambda: len(resumed.events) >= 3)
    time.sleep(0.2)
    assert [e.event_id for e in resumed.events] == later
    resumed.cancel()


def consultant_email(client: Client, h: Harness) -> str:
    return _email(h, "consultants", client.account)


def reader_email(client: Client, h: Harness) -> str:
    return _email(h, "users", client.account)


def _email(h: Harness, table: str, name: str) -> str:
    return str(h.database.rows(f"SELECT email FROM {table} WHERE id = ?", (name.split("/")[1],))[0][0])


def test_bad_cursors_get_clear_answers(h: Harness) -> None:
    consultant = h.new_consultant()
    for after, code, reason in [
        ("nonsense", grpc.StatusCode.INVALID_ARGUMENT, "BAD_CURSOR"),
        ("0123456789abcdef-1", grpc.StatusCode.OUT_OF_RANGE, "CURSOR_OTHER_HISTORY"),
    ]:
        call = consultant.consultant.WatchActivity(cpb.WatchActivityRequest(after=after), metadata=consultant.md)
        error = rpc_error(lambda c=call: next(iter(c)))
        assert error.code() == code, after
        assert error_reason(error) == reason


def test_snapshot_then_marker_then_live(h: Harness) -> None:
    consultant = h.new_consultant()
    readers = [h.new_reader() for _ in range(3)]
    for r in readers:
        record(r, "open_page", page=1)
    watcher = Watcher(consultant, cpb.WatchActivityRequest(include_snapshot=True))
    watcher.wait_for(lambda: any(r.snapshot_complete for r in watcher.responses))
    snapshot = [reader.name for r in watcher.responses for reader in r.snapshot_readers]
    assert sorted(snapshot) == sorted(r.account for r in readers)
    assert not watcher.events
    record(readers[0], "answer", q=1)
    watcher.wait_for(lambda: len(watcher.events) >= 1)
    assert watcher.events[0].interaction.type == "answer"
    watcher.cancel()


def test_failed_write_produces_no_event(h: Harness) -> None:
    consultant, reader, other = h.new_consultant(), h.new_reader(), h.new_reader()
    watcher = Watcher(consultant, cpb.WatchActivityRequest(kinds=[pb.EVENT_KIND_INTERACTION_RECORDED]))
    watcher.wait_for(lambda: bool(watcher.responses))
    taken = record(reader, "answer").interaction.name.rsplit("/", 1)[1]
    request = rpb.RecordInteractionRequest(interaction=rpb.NewInteraction(id=taken, type="answer"))
    assert rpc_error(lambda: other.reader.RecordInteraction(request, metadata=other.md)).code() == \
        grpc.StatusCode.ALREADY_EXISTS
    record(reader, "heartbeat")
    watcher.wait_for(lambda: len(watcher.events) >= 2)
    time.sleep(0.2)
    assert [e.reader for e in watcher.events] == [reader.account, reader.account]
    watcher.cancel()


def test_idle_is_announced_on_time(make_harness: Any) -> None:
    h = make_harness()
    # Shorten presence times on the running server's settings.
    live = h.server.app.settings.live
    object.__setattr__(live, "presence_idle_seconds", 0.5)
    object.__setattr__(live, "presence_grace_seconds", 0.2)
    object.__setattr__(live, "presence_sweep_seconds", 0.1)
    h.server.call(h.server.app.presence.stop())
    h.server.loop.call_soon_threadsafe(h.server.app.presence.start)
    consultant, reader = h.new_consultant(), h.new_reader()
    watcher = Watcher(consultant, cpb.WatchActivityRequest(kinds=[pb.EVENT_KIND_PRESENCE_CHANGED]))
    watcher.wait_for(lambda: bool(watcher.responses))
    started = time.monotonic()
    record(reader, "open_page")
    watcher.wait_for(lambda: len(watcher.events) >= 2, timeout=5)
    elapsed = time.monotonic() - started
    assert [e.presence.presence for e in watcher.events] == [pb.PRESENCE_READING, pb.PRESENCE_IDLE]
    assert 0.6 <= elapsed < 2.5
    watcher.cancel()


def test_commits_within_one_fanout_interval_go_out_as_one_message(h: Harness) -> None:
    """Pacing batches commits into one message per stream, and a heartbeat
    sent while events wait for the flush never claims a cursor past them."""
    live = h.server.app.settings.live
    object.__setattr__(live, "heartbeat_seconds", 0.05)
    h.server.app.broadcaster.min_interval = 0.6
    consultant, reader = h.new_consultant(), h.new_reader()
    watcher = Watcher(consultant, cpb.WatchActivityRequest(kinds=[pb.EVENT_KIND_INTERACTION_RECORDED]))
    watcher.wait_for(lambda: len(watcher.responses) >= 1)
    time.sleep(0.7)  # a quiet spell: the next commit goes out at once
    first = record(reader, "answer", n=0).interaction.sequence
    watcher.wait_for(lambda: len(watcher.events) >= 1, timeout=0.5)
    burst = [record(reader, "answer", n=i).interaction.sequence for i in range(1, 4)]
    watcher.wait_for(lambda: len(watcher.events) >= 4, timeout=5)
    watcher.cancel()
    assert [e.event_id for e in watcher.events] == [first, *burst]
    carrying = [r for r in watcher.responses if r.events]
    assert [len(r.events) for r in carrying] == [1, 3]
    # Heartbeats between the two messages stand before the burst.
    between = watcher.responses[watcher.responses.index(carrying[0]) + 1:watcher.responses.index(carrying[1])]
    assert between, "heartbeats were expected while the burst waited"
    assert all(r.heartbeat and int(r.cursor.rpartition("-")[2]) < burst[0] for r in between)


@pytest.mark.parametrize("ending", ["logout", "rotation", "deactivation"])
def test_ending_the_session_ends_its_open_streams_within_a_second(h: Harness, ending: str) -> None:


    consultant, reader = h.new_consultant(), h.new_reader()
    watcher = Watcher(consultant)
    messages = StreamReader(reader.reader.WatchMyMessages(rpb.WatchMyMessagesRequest(), metadata=reader.md))
    watcher.wait_for(lambda: bool(watcher.responses))
    messages.wait_for(lambda: bool(messages.responses))
    started = time.monotonic()
    if ending == "logout":
        consultant.auth.Logout(auth_service_pb2.LogoutRequest(), metadata=consultant.md)
        reader.auth.Logout(auth_service_pb2.LogoutRequest(), metadata=reader.md)
    elif ending == "rotation":
        consultant.auth.RotateSession(auth_service_pb2.RotateSessionRequest(), metadata=consultant.md)
        reader.auth.RotateSession(auth_service_pb2.RotateSessionRequest(), metadata=reader.md)
    else:
        admin = h.admin()
        for account in (consultant.account, reader.account):
            admin.admin.SetAccountActive(
                admin_service_pb2.SetAccountActiveRequest(account=account, active=False), metadata=admin.md
            )
    for stream in (watcher, messages):
        stream.wait_for(lambda s=stream: s.error is not None, timeout=1.0)
        assert stream.error is not None
        assert stream.error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert time.monotonic() - started < 1.0


def test_reader_message_stream_live_and_after_resume(h: Harness) -> None:
    consultant, reader = h.new_consultant(), h.new_reader()
    call = reader.reader.WatchMyMessages(rpb.WatchMyMessagesRequest(), metadata=reader.md)
    got: list[rpb.WatchMyMessagesResponse] = []
    thread = threading.Thread(target=collect, args=(call, got), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not got:  # the first message: the stream is open
        assert time.monotonic() < deadline
        time.sleep(0.01)
    consultant.consultant.SendMessage(
        cpb.SendMessageRequest(reader=reader.account, body="hello"), metadata=consultant.md
    )
    deadline = time.monotonic() + 5
    while not any(e.message.body == "hello" for r in got for e in r.events):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    cursor = got[-1].cursor
    call.cancel()
    consultant.consultant.SendMessage(cpb.SendMessageRequest(reader=reader.account, body="while away"),
                                      metadata=consultant.md)
    resumed = reader.reader.WatchMyMessages(rpb.WatchMyMessagesRequest(after=cursor), metadata=reader.md)
    replayed = next(r for r in resumed if r.events)
    assert [e.message.body for e in replayed.events] == ["while away"]
    resumed.cancel()

