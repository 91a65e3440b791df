"""SQL for attention signals: who needs a consultant now.

The rules run inside the write transactions that see their evidence (an
interaction, a message, a read position, the presence sweep), so a signal
commits with what raised it, once, in the one event order, whichever
server decided it. Every change to `attention_signals`, and to
`reader_states.attention` (the open rules, read with the state row so
recording an interaction costs no extra query), goes through this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cursor_grpc.clock import iso_from_ns, iso_to_ns, new_id
from cursor_grpc.config import AttentionSettings
from cursor_grpc.errors import FailedPrecondition, NotFound
from cursor_grpc.storage.records import (
    KIND_ATTENTION,
    KIND_STATE,
    RULE_HELP,
    RULE_STALLED,
    RULE_STRUGGLING,
    RULE_STUCK,
    AttentionRecord,
    Event,
    Evented,
)
from cursor_grpc.storage.sql.connection import Connection, fetch_all
from cursor_grpc.storage.sql.events import SequenceAllocator, insert_event
from cursor_grpc.storage.sql.keyset import Where, oldest_first

LABEL = {RULE_STUCK: "stuck", RULE_STRUGGLING: "struggling", RULE_STALLED: "stalled", RULE_HELP: "asked for help"}

_COLUMNS = ("a.id, a.reader_id, a.rule, a.summary, a.evidence, a.raised_seq, a.raised_at, a.acknowledged_by, "
            "a.acknowledged_at, a.cleared_at, a.clear_reason, r.consultant_id")
_FROM = "FROM attention_signals a LEFT JOIN reader_assignments r ON r.reader_id = a.reader_id"


def _record(row: tuple[Any, ...]) -> AttentionRecord:
    return AttentionRecord(str(row[0]), str(row[1]), str(row[2]), str(row[3]), json.loads(row[4]), int(row[5]),
                           row[6], row[7], row[8], row[9], row[10], row[11])


def open_rules(text: str) -> set[str]:
    """The rules of `reader_states.attention`."""
    return set(text.split())


def duration(seconds: float) -> str:
    """`40 s`, `6 min`, `2 h` for summaries."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{round(seconds / 3600)} h"


# --- raising and clearing ------------------------------------------------------


def _save_open(conn: Connection, reader_id: str, rules: set[str]) -> None:
    conn.execute("UPDATE reader_states SET attention = ? WHERE reader_id = ?", (" ".join(sorted(rules)), reader_id))


def _assignee(conn: Connection, reader_id: str) -> str | None:
    found = fetch_all(conn, "SELECT consultant_id FROM reader_assignments WHERE reader_id = ?", (reader_id,))
    return str(found[0][0]) if found else None


def raise_signal(conn: Connection, seqs: SequenceAllocator, reader_id: str, rule: str, summary: str,
                 evidence: list[int], now: str, rules: set[str]) -> Event | None:
    """Open `rule` for the reader unless it is open already; `rules` is the
    reader's open set, updated here."""
    if rule in rules:
        return None
    seq, signal_id = seqs.next(), new_id()
    conn.execute(
        "INSERT INTO attention_signals(id, reader_id, rule, summary, evidence, raised_seq, raised_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (signal_id, reader_id, rule, summary, json.dumps(evidence), seq, now),
    )
    rules.add(rule)
    _save_open(conn, reader_id, rules)
    record = AttentionRecord(signal_id, reader_id, rule, summary, evidence, seq, now, None, None, None, None,
                             _assignee(conn, reader_id))
    return insert_event(conn, seq, KIND_ATTENTION, reader_id, signal_id, summary, record.data(), now)


def clear_signal(conn: Connection, seqs: SequenceAllocator, reader_id: str, rule: str, reason: str, now: str,
                 rules: set[str]) -> Event | None:
    """Clear the reader's open `rule`, if any; `rules` is updated here."""
    if rule not in rules:
        return None
    rules.discard(rule)
    _save_open(conn, reader_id, rules)
    found = fetch_all(
        conn,
        "UPDATE attention_signals SET cleared_at = ?, clear_reason = ? "
        "WHERE reader_id = ? AND rule = ? AND cleared_at IS NULL RETURNING id",
        (now, reason, reader_id, rule),
    )
    if not found:
        return None
    record = _get(conn, reader_id, str(found[0][0]))
    return insert_event(conn, seqs.next(), KIND_ATTENTION, reader_id, record.id,
                        f"{LABEL[rule]} cleared: {reason}", record.data(), now)


def _get(conn: Connection, reader_id: str, signal_id: str) -> AttentionRecord:
    rows = fetch_all(conn, f"SELECT {_COLUMNS} {_FROM} WHERE a.id = ? AND a.reader_id = ?", (signal_id, reader_id))
    if not rows:
        raise NotFound(f"attention signal readers/{reader_id}/attentionSignals/{signal_id} does not exist",
                       reason="SIGNAL_NOT_FOUND")
    return _record(rows[0])


def acknowledge(conn: Connection, seqs: SequenceAllocator, reader_id: str, signal_id: str, consultant_id: str,
                now: str) -> tuple[Evented[AttentionRecord], str | None]:
    """Mark an open signal as taken by `consultant_id`; also the one who had
    it before (None). A signal the caller holds already writes nothing."""
    record = _get(conn, reader_id, signal_id)
    if record.cleared_at is not None:
        raise FailedPrecondition(
            f"the signal was cleared at {record.cleared_at} ({record.clear_reason}); nothing to acknowledge",
            reason="SIGNAL_CLEARED")
    before = record.acknowledged_by
    if before == consultant_id:
        return Evented(record, []), before
    conn.execute("UPDATE attention_signals SET acknowledged_by = ?, acknowledged_at = ? WHERE id = ?",
                 (consultant_id, now, signal_id))
    record = _get(conn, reader_id, signal_id)
    event = insert_event(conn, seqs.next(), KIND_ATTENTION, reader_id, signal_id,
                         f"{LABEL[record.rule]}: consultants/{consultant_id} is on it", record.data(), now)
    return Evented(record, [event]), before


# --- reading -------------------------------------------------------------------


def list_open(conn: Connection, rules: frozenset[str], assignee: str | None, reader_ids: frozenset[str] | None,
              after_seq: int | None, limit: int) -> list[AttentionRecord]:
    """Open signals, longest waiting first. `assignee`: a consultant id,
    `-` for readers assigned to nobody, None for everyone's."""
    if reader_ids is not None and not reader_ids:
        return []
    where = Where().add("a.cleared_at IS NULL")
    if rules:
        where.add(f"a.rule IN ({','.join('?' * len(rules))})", *sorted(rules))
    if assignee == "-":
        where.add("r.consultant_id IS NULL")
    elif assignee is not None:
        where.add("r.consultant_id = ?", assignee)
    if reader_ids is not None:
        where.add(f"a.reader_id IN ({','.join('?' * len(reader_ids))})", *sorted(reader_ids))
    sql, params = oldest_first(f"SELECT {_COLUMNS} {_FROM}", where, ("a.raised_seq",),
                               None if after_seq is None else (after_seq,), limit)
    return [_record(row) for row in fetch_all(conn, sql, params)]


# --- the rules -------------------------------------------------------------------


@dataclass(slots=True)
class Tracked:
    """What the rules keep in a reader's state row, before a write."""

    current_step: int
    progress: float
    progress_at: str | None
    pace_seconds: float | None
    pace_steps: int
    wrong_streak: int
    wrong_seqs: list[int]
    attention: set[str]

    @classmethod
    def new(cls) -> Tracked:
        """A reader with no state row yet."""
        return cls(0, 0.0, None, None, 0, 0, [], set())

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Tracked:
        step, progress, progress_at, pace, steps, streak, wrong, attention = row
        return cls(int(step), float(progress), progress_at, pace, int(steps), int(streak), json.loads(wrong),
                   open_rules(attention))


TRACKED_COLUMNS = "current_step, progress, progress_at, pace_seconds, pace_steps, wrong_streak, wrong_seqs, attention"


def moved(tracked: Tracked, percent: float | None, step: int | None) -> bool:
    """Whether a write naming `percent`/`step` moves the reader on."""
    return (step is not None and step != tracked.current_step) or (percent is not None and percent != tracked.progress)


def paced(tracked: Tracked, percent: float | None, step: int | None, now_ns: int,
          settings: AttentionSettings) -> tuple[str | None, float | None, int]:
    """(progress_at, pace_seconds, pace_steps) after a write that names
    `percent`/`step`: a new step is timed into the moving average of the
    reader's time per step (unless it took longer than the stuck maximum:
    the reader went away), and any move restarts the clock."""
    moved_step = step is not None and step != tracked.current_step
    if not moved(tracked, percent, step):
        return tracked.progress_at, tracked.pace_seconds, tracked.pace_steps
    pace, steps = tracked.pace_seconds, tracked.pace_steps
    if moved_step and tracked.progress_at is not None:
        took = (now_ns - iso_to_ns(tracked.progress_at)) / 1e9
        if 0 <= took <= settings.attention_stuck_max_seconds:
            pace = took if pace is None else 0.7 * pace + 0.3 * took
            steps += 1
    return iso_from_ns(now_ns), pace, steps


@dataclass(slots=True)
class Answer:
    seq: int
    correct: bool
    question: str | None


def count_answers(tracked: Tracked, answers: list[Answer], needed: int) -> list[tuple[str, str, list[int]]]:
    """Move the wrong-answer streak through `answers` (in order); the
    struggling rule's raises and clears, as (action, text, evidence)."""
    actions: list[tuple[str, str, list[int]]] = []
    is_open = RULE_STRUGGLING in tracked.attention
    for answer in answers:
        if answer.correct:
            tracked.wrong_streak, tracked.wrong_seqs = 0, []
            if is_open:
                actions.append(("clear", "answered correctly", []))
                is_open = False
            continue
        tracked.wrong_streak += 1
        tracked.wrong_seqs = [*tracked.wrong_seqs, answer.seq][-needed:]
        if tracked.wrong_streak >= needed and not is_open:
            last = f" (last: {answer.question})" if answer.question else ""
            actions.append(("raise", f"{tracked.wrong_streak} wrong answers in a row{last}", tracked.wrong_seqs))
            is_open = True
    return actions


def after_interactions(conn: Connection, seqs: SequenceAllocator, reader_id: str, tracked: Tracked,
                       struggling: list[tuple[str, str, list[int]]], moved: bool, came_back: bool, status: str,
                       step: int, progress: float, now: str) -> list[Event]:
    """The rules' changes after a reader's write: struggling raised or
    cleared, stuck cleared by progress, stalled cleared by coming back;
    finishing clears all three."""
    rules = tracked.attention
    events: list[Event | None] = []
    for action, text, evidence in struggling:
        if action == "raise":
            events.append(raise_signal(conn, seqs, reader_id, RULE_STRUGGLING, text, evidence, now, rules))
        else:
            events.append(clear_signal(conn, seqs, reader_id, RULE_STRUGGLING, text, now, rules))
    if status == "completed":
        for rule in (RULE_STUCK, RULE_STALLED, RULE_STRUGGLING):
            events.append(clear_signal(conn, seqs, reader_id, rule, "finished", now, rules))
    if moved:
        reason = f"moved on to step {step}" if step != tracked.current_step else f"progress {progress:.0%}"
        events.append(clear_signal(conn, seqs, reader_id, RULE_STUCK, reason, now, rules))
    if came_back:
        events.append(clear_signal(conn, seqs, reader_id, RULE_STALLED, "came back", now, rules))
    return [e for e in events if e is not None]


def went_idle(conn: Connection, seqs: SequenceAllocator, reader_id: str, presence_seq: int, status: str,
              progress: float, step: int, last_active_at: str | None, attention: str, now_ns: int,
              idle_ns: int, settings: AttentionSettings) -> list[Event]:
    """A reader the presence sweep just found idle: stuck no longer holds;
    stalled when it had been reading (more than heartbeats) shortly before
    and had not finished."""
    rules, now = open_rules(attention), iso_from_ns(now_ns)
    events = [clear_signal(conn, seqs, reader_id, RULE_STUCK, "went idle", now, rules)]
    active_since = now_ns - idle_ns - int(settings.attention_stalled_active_seconds * 1e9)
    if status == "active" and progress < 1.0 and last_active_at is not None \
            and iso_to_ns(last_active_at) >= active_since:
        summary = f"went idle at step {step} ({progress:.0%}) after reading"
        events.append(raise_signal(conn, seqs, reader_id, RULE_STALLED, summary, [presence_seq], now, rules))
    return [e for e in events if e is not None]


_STUCK_CANDIDATES = f"""
SELECT reader_id, {TRACKED_COLUMNS} FROM reader_states
WHERE presence != 'idle' AND progress_at < ? AND status = 'active'
"""


def sweep_stuck(conn: Connection, seqs: SequenceAllocator, now_ns: int, settings: AttentionSettings) -> list[Event]:
    """Raise stuck for present readers with no progress for longer than
    their threshold (served by the partial index on present readers)."""
    shortest = min(settings.attention_stuck_seconds, settings.attention_stuck_min_seconds)
    cutoff = iso_from_ns(now_ns - int(shortest * 1e9))
    now = iso_from_ns(now_ns)
    events: list[Event] = []
    for row in fetch_all(conn, _STUCK_CANDIDATES, (cutoff,)):
        reader_id, tracked = str(row[0]), Tracked.from_row(row[1:])
        if RULE_STUCK in tracked.attention or tracked.progress_at is None:
            continue
        waited = (now_ns - iso_to_ns(tracked.progress_at)) / 1e9
        if waited < settings.stuck_after(tracked.pace_seconds, tracked.pace_steps):
            continue
        summary = f"stuck on step {tracked.current_step} for {duration(waited)}"
        if tracked.pace_seconds is not None and tracked.pace_steps >= settings.attention_pace_steps:
            summary += f"; usual pace 1 step/{duration(tracked.pace_seconds)}"
        last_move = fetch_all(conn, "SELECT max(seq) FROM events WHERE reader_id = ? AND kind = ?",
                              (reader_id, KIND_STATE))[0][0]
        evidence = [int(last_move)] if last_move is not None else []
        event = raise_signal(conn, seqs, reader_id, RULE_STUCK, summary, evidence, now, tracked.attention)
        if event is not None:
            events.append(event)
    return events


def message_written(conn: Connection, seqs: SequenceAllocator, reader_id: str, direction: str,
                    consultant_id: str | None, body: str, message_seq: int, now: str) -> list[Event]:
    """A reader writing asks for help; a consultant replying answers it."""
    rules = _open_of(conn, reader_id)
    if direction == "user_to_consultant":
        text = " ".join(body.split())
        summary = f'asked: "{text[:77]}…"' if len(text) > 80 else f'asked: "{text}"'
        event = raise_signal(conn, seqs, reader_id, RULE_HELP, summary, [message_seq], now, rules)
    elif direction == "consultant_to_user":
        event = clear_signal(conn, seqs, reader_id, RULE_HELP, f"consultants/{consultant_id} replied", now, rules)
    else:
        return []
    return [event] if event is not None else []


def conversation_read(conn: Connection, seqs: SequenceAllocator, reader_id: str, consultant_id: str,
                      up_to: int, now: str) -> list[Event]:
    """A consultant reading past the message that asked for help answers it."""
    rules = _open_of(conn, reader_id)
    if RULE_HELP not in rules:
        return []
    asked = fetch_all(conn, "SELECT evidence FROM attention_signals WHERE reader_id = ? AND rule = ? "
                            "AND cleared_at IS NULL", (reader_id, RULE_HELP))
    if asked and max(json.loads(asked[0][0]) or [0]) > up_to:
        return []
    event = clear_signal(conn, seqs, reader_id, RULE_HELP, f"read by consultants/{consultant_id}", now, rules)
    return [event] if event is not None else []


def _open_of(conn: Connection, reader_id: str) -> set[str]:
    """The reader's open rules from the signals themselves (off the hot path)."""
    return {str(rule) for (rule,) in fetch_all(
        conn, "SELECT rule FROM attention_signals WHERE reader_id = ? AND cleared_at IS NULL", (reader_id,))}
