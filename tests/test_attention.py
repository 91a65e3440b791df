"""Attention signals against a real server, on every backend: each rule
raised and cleared with short thresholds (one of them across a restart),
the signals in the stream, ListAttention, GetReader and the snapshot, and
AcknowledgeAttention with its audit row and its refusals."""

from __future__ import annotations

import json
import time
from typing import Any

import grpc
import pytest

from cursor.v1 import admin_service_pb2 as apb
from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2 as pb
from cursor_grpc.config import AttentionSettings, LiveSettings
from cursor_grpc.storage.sql import attention
from tests.conftest import Client, Harness
from tests.helpers import error_reason, rpc_error
from tests.streams import StreamReader

# Thresholds a test can wait out: present readers without progress for 1 s
# are stuck; silent ones idle after 1 s; the sweep runs ten times a second.
FAST_LIVE = LiveSettings(presence_idle_seconds=1.0, presence_grace_seconds=0.0, presence_sweep_seconds=0.1)
FAST_RULES = AttentionSettings(attention_stuck_seconds=1.0, attention_stuck_min_seconds=1.0)


@pytest.fixture
def fast(make_harness: Any) -> Harness:
    return make_harness(live=FAST_LIVE, attention=FAST_RULES)  # type: ignore[no-any-return]


def interact(reader: Client, type_: str, payload: dict[str, Any]) -> int:
    response = reader.reader.RecordInteraction(rpb.RecordInteractionRequest(interaction=rpb.NewInteraction(
        type=type_, payload_json=json.dumps(payload), summary=f"{type_} {payload}")), metadata=reader.md)
    return int(response.interaction.sequence)


def answer(reader: Client, correct: bool, question: str = "q3") -> int:
    return interact(reader, "answer", {"question_id": question, "answer": "b", "time_ms": 900, "correct": correct})


def watch(consultant: Client, **request: Any) -> StreamReader:
    stream = StreamReader(consultant.consultant.WatchActivity(
        cpb.WatchActivityRequest(kinds=[pb.EVENT_KIND_ATTENTION_CHANGED], include_snapshot=True, **request),
        metadata=consultant.md))
    stream.wait_for(lambda: any(r.snapshot_complete for r in stream.responses))
    return stream


def signals(stream: StreamReader, reader: Client | None = None) -> list[pb.AttentionSignal]:
    return [e.attention for e in stream.events
            if e.kind == pb.EVENT_KIND_ATTENTION_CHANGED and (reader is None or e.reader == reader.account)]


def wait_signal(stream: StreamReader, reader: Client, rule: int, state: int, timeout: float = 10.0
                ) -> pb.AttentionSignal:
    def found() -> list[pb.AttentionSignal]:
        return [s for s in signals(stream, reader) if s.rule == rule and s.state == state]

    stream.wait_for(lambda: bool(found()), timeout)
    return found()[-1]


def open_signals(consultant: Client, **request: Any) -> list[pb.AttentionSignal]:
    return list(consultant.consultant.ListAttention(cpb.ListAttentionRequest(**request),
                                                    metadata=consultant.md).signals)


def seq_of(cursor: str) -> int:
    return int(cursor.rpartition("-")[2])


def test_struggling_is_raised_by_wrong_answers_in_a_row_and_cleared_by_a_right_one(h: Harness) -> None:
    consultant, reader = h.new_consultant(), h.new_reader("struggler")
    stream = watch(consultant)
    first = answer(reader, False)
    answer(reader, True)  # a right answer breaks the streak
    wrong = [answer(reader, False, f"q{n}") for n in (4, 5, 6)]
    raised = wait_signal(stream, reader, pb.ATTENTION_RULE_STRUGGLING, pb.ATTENTION_STATE_OPEN)
    assert raised.summary == "3 wrong answers in a row (last: q6)"
    assert [seq_of(c) for c in raised.evidence_cursors] == wrong, "the evidence is the streak, not the first miss"
    assert first not in [seq_of(c) for c in raised.evidence_cursors]
    assert raised.name.startswith(f"{reader.account}/attentionSignals/")
    # A fourth wrong answer raises nothing more: once per episode.
    answer(reader, False)
    listed = open_signals(consultant)
    assert [(s.name, s.rule) for s in listed] == [(raised.name, pb.ATTENTION_RULE_STRUGGLING)]
    got = consultant.consultant.GetReader(cpb.GetReaderRequest(name=reader.account), metadata=consultant.md)
    assert [s.name for s in got.attention] == [raised.name]

    answer(reader, True)
    cleared = wait_signal(stream, reader, pb.ATTENTION_RULE_STRUGGLING, pb.ATTENTION_STATE_CLEARED)
    assert cleared.name == raised.name
    assert cleared.clear_reason == "answered correctly"
    assert cleared.HasField("clear_time")
    assert len([s for s in signals(stream, reader) if s.state == pb.ATTENTION_STATE_OPEN]) == 1
    assert open_signals(consultant) == []
    assert not consultant.consultant.GetReader(cpb.GetReaderRequest(name=reader.account),
                                               metadata=consultant.md).attention
    # The events are in the history like any other: a resume from before them replays both, once.
    replay = StreamReader(consultant.consultant.WatchActivity(cpb.WatchActivityRequest(
        kinds=[pb.EVENT_KIND_ATTENTION_CHANGED], after=stream.events[0].cursor.rpartition("-")[0] + "-0"),
        metadata=consultant.md))
    replay.wait_for(lambda: len(signals(replay, reader)) >= 2)
    assert [(s.name, s.state) for s in signals(replay, reader)] == [
        (raised.name, pb.ATTENTION_STATE_OPEN), (raised.name, pb.ATTENTION_STATE_CLEARED)]
    replay.cancel()
    stream.cancel()


def test_an_answer_flag_that_is_not_a_boolean_is_refused(h: Harness) -> None:
    reader = h.new_reader()
    for payload in ({"correct": "yes"}, {"correct": 1}, {"question_id": True}, {"question_id": 1.5}):
        error = rpc_error(lambda p=payload: interact(reader, "answer", p))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_reason(error) == "INVALID_ANSWER"
    assert interact(reader, "answer", {"question_id": 7, "answer": "c", "time_ms": 1200}) > 0, "correct is optional"
    assert interact(reader, "open_page", {"correct": "anything"}) > 0, "only answers carry the flag"


def test_asked_for_help_until_a_consultant_replies_or_reads(h: Harness) -> None:
    consultant, reader = h.new_consultant(), h.new_reader("asker")
    stream = watch(consultant)
    sent = reader.reader.SendMyMessage(rpb.SendMyMessageRequest(body="I don't get\nquestion 3"), metadata=reader.md)
    raised = wait_signal(stream, reader, pb.ATTENTION_RULE_ASKED_FOR_HELP, pb.ATTENTION_STATE_OPEN)
    assert raised.summary == 'asked: "I don\'t get question 3"'
    assert [seq_of(c) for c in raised.evidence_cursors] == [sent.message.sequence]
    # A second message while it is open raises nothing more.
    reader.reader.SendMyMessage(rpb.SendMyMessageRequest(body="hello?"), metadata=reader.md)
    consultant.consultant.SendMessage(cpb.SendMessageRequest(reader=reader.account, body="Look at page 4"),
                                      metadata=consultant.md)
    cleared = wait_signal(stream, reader, pb.ATTENTION_RULE_ASKED_FOR_HELP, pb.ATTENTION_STATE_CLEARED)
    assert cleared.clear_reason == f"{consultant.account} replied"

    reader.reader.SendMyMessage(rpb.SendMyMessageRequest(body="thanks, one more thing"), metadata=reader.md)
    # A cleared signal never reopens; the rule raises a new one.
    stream.wait_for(lambda: len({s.name for s in signals(stream, reader)}) == 2)
    [again] = [s for s in signals(stream, reader) if s.name != raised.name]
    assert again.state == pb.ATTENTION_STATE_OPEN
    consultant.consultant.MarkMessagesRead(cpb.MarkMessagesReadRequest(reader=reader.account),
                                           metadata=consultant.md)
    stream.wait_for(lambda: len([s for s in signals(stream, reader) if s.name == again.name]) == 2)
    read = [s for s in signals(stream, reader) if s.name == again.name]
    assert read[-1].state == pb.ATTENTION_STATE_CLEARED
    assert read[-1].clear_reason == f"read by {consultant.account}"
    stream.cancel()


def test_stuck_when_present_without_progress_and_cleared_by_moving_on(fast: Harness) -> None:
    consultant, reader = fast.new_consultant(), fast.new_reader("stuck")
    stream = watch(consultant)
    step = interact(reader, "progress", {"percent": 0.3, "step": 7})
    deadline = time.monotonic() + 10
    while not [s for s in signals(stream, reader) if s.rule == pb.ATTENTION_RULE_STUCK]:
        assert time.monotonic() < deadline, "stuck was never raised"
        interact(reader, "open_page", {"page": 12})  # present and busy, but not moving on
        time.sleep(0.2)
    raised = wait_signal(stream, reader, pb.ATTENTION_RULE_STUCK, pb.ATTENTION_STATE_OPEN)
    assert raised.summary.startswith("stuck on step 7 for ")
    assert "usual pace" not in raised.summary, "no pace yet: the fixed threshold"
    # The evidence is the state change that put the reader on step 7.
    assert [seq_of(c) for c in raised.evidence_cursors] == [step + 1]
    interact(reader, "progress", {"percent": 0.4, "step": 8})
    cleared = wait_signal(stream, reader, pb.ATTENTION_RULE_STUCK, pb.ATTENTION_STATE_CLEARED)
    assert cleared.clear_reason == "moved on to step 8"
    stream.cancel()


def test_stalled_when_idle_before_finishing_and_cleared_on_return_after_a_restart(make_harness: Any) -> None:
    first = make_harness(live=FAST_LIVE, attention=FAST_RULES)
    consultant, reader = first.new_consultant(), first.new_reader("staller")
    stream = watch(consultant)
    interact(reader, "progress", {"percent": 0.5, "step": 3})
    raised = wait_signal(stream, reader, pb.ATTENTION_RULE_STALLED, pb.ATTENTION_STATE_OPEN)
    assert raised.summary == "went idle at step 3 (50%) after reading"
    presence = [e for e in stream.events if e.reader == reader.account]
    assert raised.evidence_cursors, "the evidence is the presence change"
    stream.cancel()
    del presence

    # The signal is state in the database: a new server on it still has it open.
    first.server.stop()
    second = make_harness(first.database, live=FAST_LIVE, attention=FAST_RULES)
    consultant2 = second.anonymous.login(consultant_email(first, consultant),
                                         kind=pb.ACCOUNT_KIND_CONSULTANT)
    reader2 = second.anonymous.login(reader_email(first, reader), kind=pb.ACCOUNT_KIND_READER)
    assert [s.name for s in open_signals(consultant2)] == [raised.name]
    stream2 = watch(consultant2)
    assert [s.name for r in stream2.responses for s in r.snapshot_attention] == [raised.name]
    interact(reader2, "heartbeat", {})
    cleared = wait_signal(stream2, reader2, pb.ATTENTION_RULE_STALLED, pb.ATTENTION_STATE_CLEARED)
    assert cleared.clear_reason == "came back"
    assert cleared.name == raised.name
    stream2.cancel()


def test_a_finished_reader_does_not_stall(fast: Harness) -> None:
    consultant, done, only_heartbeats = fast.new_consultant(), fast.new_reader("done"), fast.new_reader("hb")
    stream = watch(consultant)
    interact(done, "progress", {"percent": 1.0, "step": 9})
    interact(only_heartbeats, "heartbeat", {})
    watcher_all = StreamReader(consultant.consultant.WatchActivity(
        cpb.WatchActivityRequest(kinds=[pb.EVENT_KIND_PRESENCE_CHANGED]), metadata=consultant.md))
    watcher_all.wait_for(lambda: len([e for e in watcher_all.events if e.presence.presence == pb.PRESENCE_IDLE])
                         >= 2)
    time.sleep(0.3)
    assert signals(stream) == [], "completed, or never more than heartbeats: nothing to raise"
    watcher_all.cancel()
    stream.cancel()


def test_acknowledge_is_audited_seen_by_watchers_and_refused_once_cleared(h: Harness) -> None:
    consultant, other, reader = h.new_consultant(), h.new_consultant(), h.new_reader()
    stream = watch(other)
    reader.reader.SendMyMessage(rpb.SendMyMessageRequest(body="help"), metadata=reader.md)
    raised = wait_signal(stream, reader, pb.ATTENTION_RULE_ASKED_FOR_HELP, pb.ATTENTION_STATE_OPEN)
    taken = consultant.consultant.AcknowledgeAttention(cpb.AcknowledgeAttentionRequest(name=raised.name),
                                                       metadata=consultant.md).signal
    assert taken.acknowledged_by == consultant.account
    assert taken.state == pb.ATTENTION_STATE_OPEN, "acknowledged is not cleared"
    stream.wait_for(lambda: any(s.acknowledged_by == consultant.account for s in signals(stream, reader)))
    # Again by the same consultant: nothing new is written.
    consultant.consultant.AcknowledgeAttention(cpb.AcknowledgeAttentionRequest(name=raised.name),
                                               metadata=consultant.md)
    rows = h.database.rows("SELECT actor_id, details FROM audit_logs WHERE action = 'attention.acknowledge'")
    assert len(rows) == 1
    assert json.loads(rows[0][1])["rule"] == "asked_for_help"
    assert [s.acknowledged_by for s in open_signals(other)] == [consultant.account]

    consultant.consultant.SendMessage(cpb.SendMessageRequest(reader=reader.account, body="here"),
                                      metadata=consultant.md)
    wait_signal(stream, reader, pb.ATTENTION_RULE_ASKED_FOR_HELP, pb.ATTENTION_STATE_CLEARED)
    late = rpc_error(lambda: other.consultant.AcknowledgeAttention(
        cpb.AcknowledgeAttentionRequest(name=raised.name), metadata=other.md))
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(late) == "SIGNAL_CLEARED"
    unknown = rpc_error(lambda: other.consultant.AcknowledgeAttention(cpb.AcknowledgeAttentionRequest(
        name=raised.name.rsplit("/", 1)[0] + "/00000000-0000-0000-0000-000000000000"), metadata=other.md))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    for bad in ("", "readers/x", raised.name.replace("attentionSignals", "signals")):
        error = rpc_error(lambda b=bad: other.consultant.AcknowledgeAttention(  # type: ignore[misc]
            cpb.AcknowledgeAttentionRequest(name=b), metadata=other.md))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    refused = rpc_error(lambda: reader.consultant.AcknowledgeAttention(
        cpb.AcknowledgeAttentionRequest(name=raised.name), metadata=reader.md))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    stream.cancel()


def test_list_attention_filters_by_rule_and_assignee_and_pages(h: Harness) -> None:
    supervisor = h.new_consultant(pb.CONSULTANT_ROLE_SUPERVISOR)
    mine = h.new_consultant()
    readers = [h.new_reader(f"r{n}") for n in range(4)]
    for reader in readers:
        reader.reader.SendMyMessage(rpb.SendMyMessageRequest(body="help"), metadata=reader.md)
    for _ in range(3):
        answer(readers[0], False)
    for reader in readers[:2]:
        supervisor.admin.AssignReader(apb.AssignReaderRequest(reader=reader.account, consultant=mine.account),
                                      metadata=supervisor.md)
    everything = open_signals(mine)
    assert len(everything) == 5
    assert [s.reader for s in everything[:4]] == [r.account for r in readers], "longest waiting first"
    assert {s.rule for s in open_signals(mine, rules=[pb.ATTENTION_RULE_STRUGGLING])} == {
        pb.ATTENTION_RULE_STRUGGLING}
    assert {s.reader for s in open_signals(mine, only_my_readers=True)} == {readers[0].account, readers[1].account}
    assert {s.assignee for s in open_signals(mine, only_my_readers=True)} == {mine.account}
    assert {s.reader for s in open_signals(mine, assignee="consultants/-")} == {readers[2].account,
                                                                                 readers[3].account}
    assert {s.reader for s in open_signals(supervisor, assignee=mine.account)} == {readers[0].account,
                                                                                   readers[1].account}
    pages, token = [], ""
    while True:
        page = mine.consultant.ListAttention(cpb.ListAttentionRequest(page_size=2, page_token=token),
                                             metadata=mine.md)
        pages.append([s.name for s in page.signals])
        token = page.next_page_token
        if not token:
            break
    assert [n for p in pages for n in p] == [s.name for s in everything]
    assert len(pages) == 3
    for bad in ({"rules": [pb.ATTENTION_RULE_UNSPECIFIED]}, {"assignee": "readers/x"},
                {"only_my_readers": True, "assignee": mine.account}):
        error = rpc_error(lambda b=bad: open_signals(mine, **b))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A token is bound to its filters.
    first = mine.consultant.ListAttention(cpb.ListAttentionRequest(page_size=1), metadata=mine.md)
    error = rpc_error(lambda: open_signals(mine, page_token=first.next_page_token, only_my_readers=True))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_snapshot_of_a_watch_holds_the_open_signals_of_its_readers(h: Harness) -> None:
    consultant, asking, quiet = h.new_consultant(), h.new_reader(), h.new_reader()
    asking.reader.SendMyMessage(rpb.SendMyMessageRequest(body="help"), metadata=asking.md)
    everyone = watch(consultant)
    assert [s.reader for r in everyone.responses for s in r.snapshot_attention] == [asking.account]
    just_quiet = watch(consultant, readers=[quiet.account])
    assert [s for r in just_quiet.responses for s in r.snapshot_attention] == []
    everyone.cancel()
    just_quiet.cancel()


# --- the rules' arithmetic ---------------------------------------------------------


def test_the_stuck_threshold_follows_the_readers_pace_within_bounds() -> None:
    rules = AttentionSettings()
    assert rules.stuck_after(None, 0) == 300
    assert rules.stuck_after(40.0, 4) == 300, "too few steps timed: the fixed threshold"
    assert rules.stuck_after(40.0, 5) == 160
    assert rules.stuck_after(10.0, 9) == 120, "never below the minimum"
    assert rules.stuck_after(900.0, 9) == 1800, "never above the maximum"


def test_pace_is_a_moving_average_of_timed_steps() -> None:
    rules = AttentionSettings()
    start = 1_700_000_000 * 10**9
    tracked = attention.Tracked.new()
    at, pace, steps = attention.paced(tracked, 0.1, 1, start, rules)
    assert (pace, steps) == (None, 0), "the first step starts the clock"
    tracked = attention.Tracked(1, 0.1, at, pace, steps, 0, [], set())
    at, pace, steps = attention.paced(tracked, 0.2, 2, start + 40 * 10**9, rules)
    assert (pace, steps) == (40.0, 1)
    tracked = attention.Tracked(2, 0.2, at, pace, steps, 0, [], set())
    at2, pace, steps = attention.paced(tracked, 0.25, None, start + 50 * 10**9, rules)
    assert (pace, steps) == (40.0, 1), "progress within a step restarts the clock but times no step"
    assert at2 != at
    tracked = attention.Tracked(2, 0.25, at2, pace, steps, 0, [], set())
    _, pace, steps = attention.paced(tracked, 0.3, 3, start + 70 * 10**9, rules)
    assert steps == 2
    assert pace == pytest.approx(0.7 * 40 + 0.3 * 20)
    tracked = attention.Tracked(3, 0.3, at2, pace, steps, 0, [], set())
    _, pace2, steps2 = attention.paced(tracked, 0.4, 4, start + 4000 * 10**9, rules)
    assert (pace2, steps2) == (pace, steps), "a step that took longer than the maximum was time away"


def test_a_streak_raises_once_and_a_right_answer_clears() -> None:
    tracked = attention.Tracked.new()
    answers = [attention.Answer(n, False, "q1") for n in (1, 2, 3, 4)] + [attention.Answer(5, True, "q1")]
    actions = attention.count_answers(tracked, answers, 3)
    assert actions == [("raise", "3 wrong answers in a row (last: q1)", [1, 2, 3]),
                       ("clear", "answered correctly", [])]
    assert (tracked.wrong_streak, tracked.wrong_seqs) == (0, [])


def consultant_email(h: Harness, client: Client) -> str:
    return str(h.database.rows("SELECT email FROM consultants WHERE id = ?",
                               (client.account.rsplit("/", 1)[-1],))[0][0])


def reader_email(h: Harness, client: Client) -> str:
    return str(h.database.rows("SELECT email FROM users WHERE id = ?", (client.account.rsplit("/", 1)[-1],))[0][0])
