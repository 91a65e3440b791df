"""WatchReaders, the dashboard stream, against a real server on every
backend: the snapshot, conflation (at most one update per reader per
interval, with the latest; heartbeats send nothing), resuming behind a
cursor with the latest of each reader changed after it, filters, unread
counts per consultant, attention signals in the rows, the audit row, and
the stream ending with its session."""

from __future__ import annotations

import json
import time
from typing import Any

import grpc
import pytest

from cursor.v1 import auth_service_pb2 as aupb
from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2 as pb
from cursor_grpc.config import LiveSettings
from tests.conftest import Client, Harness
from tests.streams import StreamReader

INTERVAL = 0.25


def interact(reader: Client, type_: str, payload: dict[str, Any], summary: str = "") -> None:
    reader.reader.RecordInteraction(rpb.RecordInteractionRequest(interaction=rpb.NewInteraction(
        type=type_, payload_json=json.dumps(payload), summary=summary or type_)), metadata=reader.md)


def dashboard(consultant: Client, **request: Any) -> StreamReader:
    stream = StreamReader(consultant.consultant.WatchReaders(cpb.WatchReadersRequest(**request),
                                                             metadata=consultant.md))
    if not request.get("after"):
        stream.wait_for(lambda: any(r.snapshot_complete for r in stream.responses))
    else:
        stream.wait_for(lambda: bool(stream.responses))
    return stream


def updates(stream: StreamReader, reader: Client | None = None, live: bool = True) -> list[cpb.ReaderUpdate]:
    """The updates received (after the snapshot, with `live`)."""
    found, in_snapshot = [], True
    for response in list(stream.responses):
        if not live or not in_snapshot:
            found += [u for u in response.updates if reader is None or u.reader == reader.account]
        if response.snapshot_complete:
            in_snapshot = False
    return found


def snapshot(stream: StreamReader) -> tuple[list[cpb.ReaderUpdate], list[cpb.UnreadCount]]:
    rows: list[cpb.ReaderUpdate] = []
    for response in stream.responses:
        rows += response.updates
        if response.snapshot_complete:
            return rows, list(response.unread_counts)
    raise AssertionError("no snapshot")


def test_the_snapshot_holds_each_active_reader_with_its_latest(h: Harness) -> None:
    consultant = h.new_consultant()
    reading, asking, silent = h.new_reader("reading"), h.new_reader("asking"), h.new_reader("silent")
    interact(reading, "progress", {"percent": 0.4, "step": 6}, "page 6 of 15")
    interact(reading, "heartbeat", {})
    interact(asking, "open_page", {"page": 2}, "opened page 2")
    asking.reader.SendMyMessage(rpb.SendMyMessageRequest(body="help"), metadata=asking.md)
    stream = dashboard(consultant)
    rows, unread = snapshot(stream)
    by_reader = {row.reader: row for row in rows}
    assert set(by_reader) == {reading.account, asking.account}, "active readers; the silent one is not active"
    row = by_reader[reading.account]
    assert row.display_name == "reading"
    assert (row.state.progress, row.state.current_step) == (0.4, 6)
    assert (row.last_activity_type, row.last_activity_summary) == ("progress", "page 6 of 15"), \
        "the last activity is the last interaction that is not a heartbeat"
    assert row.HasField("last_activity_time")
    assert [s.rule for s in by_reader[asking.account].attention] == [pb.ATTENTION_RULE_ASKED_FOR_HELP]
    assert [(u.reader, u.unread) for u in unread] == [(asking.account, 1)]
    assert stream.responses[-1].cursor or any(r.cursor for r in stream.responses)
    del silent
    stream.cancel()


def test_updates_are_conflated_to_the_latest_and_heartbeats_send_nothing(h: Harness) -> None:
    consultant, reader, other = h.new_consultant(), h.new_reader(), h.new_reader()
    interact(reader, "progress", {"percent": 0.0, "step": 0})
    stream = dashboard(consultant)
    started = time.monotonic()
    for n in range(1, 41):
        interact(reader, "progress", {"percent": n / 40, "step": n})
    took = time.monotonic() - started
    stream.wait_for(lambda: any(u.state.current_step == 40 for u in updates(stream, reader)))
    got = updates(stream, reader)
    # At most one per interval (plus the leading one), each with the latest state.
    assert len(got) <= took / INTERVAL + 2, (len(got), took)
    assert len(got) < 40
    steps = [u.state.current_step for u in got]
    assert steps == sorted(steps), "never older than what was sent before"
    assert got[-1].state.progress == 1.0
    assert got[-1].state.status == pb.READER_STATUS_COMPLETED
    # Heartbeats move "last seen" but send nothing by themselves.
    before = len(updates(stream))
    for _ in range(5):
        interact(reader, "heartbeat", {})
    interact(other, "open_page", {"page": 1}, "other moved")  # something that does go out, as a marker
    stream.wait_for(lambda: bool(updates(stream, other)))
    assert [u.reader for u in updates(stream)[before:]] == [other.account]
    stream.cancel()


def test_a_resume_gets_the_latest_of_each_reader_changed_after_the_cursor(h: Harness) -> None:
    consultant = h.new_consultant()
    moving, still, later = h.new_reader("moving"), h.new_reader("still"), h.new_reader("later")
    for reader in (moving, still):
        interact(reader, "progress", {"percent": 0.1, "step": 1})
    first = dashboard(consultant)
    cursor = first.cursor()
    first.cancel()
    for n in range(2, 12):
        interact(moving, "progress", {"percent": n / 20, "step": n})
    interact(later, "open_page", {"page": 3}, "later opened page 3")
    for _ in range(3):
        interact(still, "heartbeat", {})
    resumed = dashboard(consultant, after=cursor)
    resumed.wait_for(lambda: {u.reader for u in updates(resumed, live=False)} >= {moving.account, later.account})
    time.sleep(INTERVAL * 2)
    got = updates(resumed, live=False)
    assert sorted(u.reader for u in got) == sorted([moving.account, later.account]), \
        "each changed reader once, the heartbeats' reader not at all"
    [moved] = [u for u in got if u.reader == moving.account]
    assert moved.state.current_step == 11
    # Resuming from the resumed stream's own cursor with nothing new sends no reader.
    again = dashboard(consultant, after=resumed.cursor())
    time.sleep(INTERVAL * 2)
    assert updates(again, live=False) == []
    resumed.cancel()
    again.cancel()


def test_filters_and_unread_counts_per_consultant(h: Harness) -> None:
    from cursor.v1 import admin_service_pb2 as apb

    mine, theirs = h.new_consultant(), h.new_consultant()
    r1, r2 = h.new_reader("r1"), h.new_reader("r2")
    supervisor = h.new_consultant(pb.CONSULTANT_ROLE_SUPERVISOR)
    supervisor.admin.AssignReader(apb.AssignReaderRequest(reader=r1.account, consultant=mine.account),
                                  metadata=supervisor.md)
    only_r2 = dashboard(theirs, readers=[r2.account])
    my_readers = dashboard(mine, only_my_readers=True)
    everyone = dashboard(theirs)
    for reader in (r1, r2):
        interact(reader, "open_page", {"page": 1})
    everyone.wait_for(lambda: {u.reader for u in updates(everyone)} >= {r1.account, r2.account})
    only_r2.wait_for(lambda: bool(updates(only_r2)))
    my_readers.wait_for(lambda: bool(updates(my_readers)))
    time.sleep(INTERVAL * 2)
    assert {u.reader for u in updates(only_r2)} == {r2.account}
    assert {u.reader for u in updates(my_readers)} == {r1.account}

    r1.reader.SendMyMessage(rpb.SendMyMessageRequest(body="hello"), metadata=r1.md)

    def unread(stream: StreamReader) -> list[tuple[str, int]]:
        return [(c.reader, c.unread) for r in list(stream.responses) for c in r.unread_counts]

    my_readers.wait_for(lambda: (r1.account, 1) in unread(my_readers))
    everyone.wait_for(lambda: (r1.account, 1) in unread(everyone))
    mine.consultant.MarkMessagesRead(cpb.MarkMessagesReadRequest(reader=r1.account), metadata=mine.md)
    my_readers.wait_for(lambda: unread(my_readers)[-1] == (r1.account, 0))
    time.sleep(INTERVAL * 2)
    assert unread(everyone)[-1] == (r1.account, 1), "another consultant's read position is not theirs"
    for stream in (only_r2, my_readers, everyone):
        stream.cancel()


def test_attention_changes_update_the_row(h: Harness) -> None:
    consultant, reader = h.new_consultant(), h.new_reader()
    interact(reader, "open_page", {"page": 1})
    stream = dashboard(consultant)
    for _ in range(3):
        interact(reader, "answer", {"question_id": "q1", "answer": "a", "time_ms": 500, "correct": False})
    stream.wait_for(lambda: any(s.rule == pb.ATTENTION_RULE_STRUGGLING
                                for u in updates(stream, reader) for s in u.attention))
    interact(reader, "answer", {"question_id": "q1", "answer": "c", "time_ms": 500, "correct": True})
    stream.wait_for(lambda: updates(stream, reader)[-1].last_activity_type == "answer"
                    and not updates(stream, reader)[-1].attention)
    stream.cancel()


def test_opening_is_audited_and_a_logout_ends_the_stream(h: Harness) -> None:
    consultant, reader = h.new_consultant(), h.new_reader()
    stream = dashboard(consultant, readers=[reader.account])
    rows = h.database.rows("SELECT target_id, details FROM audit_logs WHERE action = 'watch.open'")
    assert [(r[0], json.loads(r[1])["dashboard"]) for r in rows] == [(reader.account.rsplit("/", 1)[-1], True)]
    consultant.auth.Logout(aupb.LogoutRequest(), metadata=consultant.md)
    stream.wait_for(lambda: stream.error is not None)
    assert stream.error is not None
    assert stream.error.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("bad", [{"readers": ["nobody"]}, {"after": "not-a-cursor"}])
def test_bad_requests_are_refused(h: Harness, bad: dict[str, Any]) -> None:
    consultant = h.new_consultant()
    call = consultant.consultant.WatchReaders(cpb.WatchReadersRequest(**bad), metadata=consultant.md)
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(call))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_interval_is_a_setting(make_harness: Any) -> None:
    h = make_harness(live=LiveSettings(dashboard_interval_seconds=1.0))
    consultant, reader = h.new_consultant(), h.new_reader()
    interact(reader, "progress", {"percent": 0.0, "step": 0})
    stream = dashboard(consultant)
    started = time.monotonic()
    while time.monotonic() - started < 2.2:
        interact(reader, "progress", {"percent": 0.5, "step": int((time.monotonic() - started) * 100)})
        time.sleep(0.02)
    time.sleep(1.2)
    assert 2 <= len(updates(stream, reader)) <= 4, "about one a second"
    stream.cancel()


def test_a_round_waits_for_the_interval_then_for_the_fanout_budget() -> None:
    """The pacing of rounds, alone: at least the interval; then, while fan-out
    since the last round took more than its share of the time passed, until
    it is within it again; never longer than the maximum."""
    from types import SimpleNamespace

    from cursor_grpc.live.dashboard import DashboardHub

    hub = DashboardHub.__new__(DashboardHub)
    hub.pacer = SimpleNamespace(share=0.25, spent_total=0.0)  # type: ignore[assignment]
    hub.min_interval, hub.max_interval = 0.25, 10.0
    hub._last_round, hub._round_spent = 100.0, 0.0
    assert hub.wait_left(100.1) == pytest.approx(0.15), "the interval first"
    assert hub.wait_left(100.3) == 0.0, "nothing spent since: go"
    hub.pacer.spent_total = 0.5  # the last round's writes took half a second of the loop
    assert hub.wait_left(100.3) == pytest.approx(0.25), "re-asked a step later"
    assert hub.wait_left(101.9) == pytest.approx(0.1), "0.5 s is a quarter of 2 s"
    assert hub.wait_left(102.0) == 0.0
    hub.pacer.spent_total = 50.0
    assert hub.wait_left(109.9) == pytest.approx(0.1), "never past the maximum"
    assert hub.wait_left(110.0) == 0.0


def test_a_round_larger_than_a_message_reaches_the_stream_whole(make_harness: Any) -> None:
    """A round's updates share one seq; split over several messages (here 5
    updates each), every part is delivered, and only the last part's cursor
    moves past the round (a stream cut in between resumes before it)."""
    h = make_harness(live=LiveSettings(max_events_per_message=5, dashboard_interval_seconds=1.0))
    consultant = h.new_consultant()
    readers = [h.new_reader(f"crowd{n}") for n in range(12)]
    interact(readers[0], "open_page", {"page": 0}, "warm-up")  # the round after this one gathers the rest
    stream = dashboard(consultant)
    interact(readers[0], "open_page", {"page": 0}, "first")
    stream.wait_for(lambda: bool(updates(stream)))
    for n, reader in enumerate(readers):
        interact(reader, "open_page", {"page": n}, f"page {n}")
    stream.wait_for(lambda: {u.reader for u in updates(stream) if u.last_activity_summary.startswith("page ")}
                    == {r.account for r in readers})
    latest = {u.reader: u.last_activity_summary for u in updates(stream)}
    assert latest == {r.account: f"page {n}" for n, r in enumerate(readers)}
    live = [r for r in stream.responses if r.updates and not r.snapshot_complete][1:]
    assert len(live) >= 3, "the round came in several messages"
    assert all(len(r.updates) <= 5 for r in live)
    seqs = [int(r.cursor.rpartition("-")[2]) for r in live]
    assert seqs == sorted(seqs)
    assert seqs[0] < seqs[-1], "the parts before the last keep the cursor behind the round"
    stream.cancel()
