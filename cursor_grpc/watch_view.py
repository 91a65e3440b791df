"""`cursor-grpc watch`: the consultant's live terminal.

Parts, kept apart so each can be tested on its own:

* `WatchModel` builds a table of readers, a feed and a pinned list. The
  table comes from WatchReaders responses (each reader's latest state, last
  activity, open signals and unread count, conflated by the server), and so
  does the feed (an update with a new last activity is a line); the pinned
  list from a WatchActivity stream of messages and signal changes only.
  Against a server without WatchReaders, one WatchActivity stream of every
  event builds all three, as before. No I/O, no rendering; applying a
  response costs the same whatever the table holds.
* `WatchClient` signs in as a consultant and keeps both streams open
  (`StreamLink`, one implementation for both): each resumes behind its own
  last cursor after a lost connection (exponential backoff), starts over
  when its cursor is refused as out of range, and signs in again once when
  the session is refused. It also makes the calls the keys ask for (reply,
  mark read, acknowledge, open a reader, narrow to my readers).
* `ReaderOrder` keeps the table in a stable order: rows move only when what
  ranks them changes meaningfully (a signal, unread messages, a reader
  coming or going) or when the re-sort timer is up, never on a heartbeat.
* `Terminal` is the keyboard: it turns keys into screen state (selection,
  sort, filter, the line editor, the open reader, help) and actions.
* `WatchView` renders all of it to a frame of a given size, building only
  the rows that fit, so its cost depends on the terminal size, not on the
  number of readers or the event rate.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import enum
import getpass
import heapq
import io
import itertools
import logging
import os
import random
import statistics
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from cursor.v1 import auth_service_pb2, auth_service_pb2_grpc, consultant_service_pb2_grpc
from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import resources_pb2 as pb

log = logging.getLogger("cursor.watch")

FEED_LINES = 200
PINNED_LINES = 100
FPS = 4.0
NS = 1_000_000_000
# The table re-sorts by recency (activity, last seen, progress) this often;
# in between, only a meaningful change moves a row.
RESORT_SECONDS = 5.0
# How long a notice (sent, marked read, an error) stays in the footer.
NOTICE_SECONDS = 6.0
# An open reader's history and thread are fetched again at most this often
# while its events come in.
DETAIL_REFRESH_SECONDS = 2.0
DEFAULT_WIDTH = 120

# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------


def _ns(ts: Timestamp) -> int:
    """A timestamp as integer nanoseconds (0 when unset)."""
    return ts.seconds * NS + ts.nanos


@dataclass(slots=True)
class ReaderRow:
    """One line of the readers table."""

    name: str
    display_name: str = ""
    email: str = ""
    progress: float = 0.0
    step: int = 0
    status: int = pb.READER_STATUS_UNSPECIFIED
    presence: int = pb.PRESENCE_UNSPECIFIED
    last_seen_ns: int = 0
    last_type: str = ""
    # The summary of the last interaction other than a heartbeat, and when.
    last_summary: str = ""
    last_activity_ns: int = 0
    # update_time of the state applied last; 0 before any state.
    state_ns: int = 0
    # Unread messages from the reader as the server last counted them
    # (WatchReaders, or ListUnreadCounts), plus the sequences of the ones a
    # WatchActivity stream of every event brought since.
    unread_base: int = 0
    unread_seqs: list[int] = field(default_factory=list)
    # Open attention signals by name.
    signals: dict[str, pb.AttentionSignal] = field(default_factory=dict)
    # True once the profile (display name and email) is known; WatchReaders
    # sends the display name only.
    resolved: bool = False
    # Counts messages and actions, so an open reader knows to refetch.
    changes: int = 0

    @property
    def unread(self) -> int:
        return self.unread_base + len(self.unread_seqs)

    @property
    def label(self) -> str:
        return self.display_name or self.name

    @property
    def activity(self) -> str:
        """What the reader last did, as the table shows it."""
        if self.last_summary:
            return f"{self.last_type}: {self.last_summary}" if self.last_type else self.last_summary
        return self.last_type

    def open_signals(self) -> list[pb.AttentionSignal]:
        """Oldest first: the one waiting longest leads."""
        return sorted(self.signals.values(), key=lambda s: (_ns(s.raise_time), s.name))


# On a WatchActivity stream of every event, lines of these kinds fold into
# one line per reader action (a progress interaction commits with its state
# change and presence change).
FOLDED_KINDS = frozenset({
    pb.EVENT_KIND_INTERACTION_RECORDED, pb.EVENT_KIND_READER_STATE_CHANGED, pb.EVENT_KIND_PRESENCE_CHANGED,
})
# Lines of these kinds go to the pinned list, where traffic cannot push them out.
PINNED_KINDS = frozenset({pb.EVENT_KIND_MESSAGE_SENT, pb.EVENT_KIND_ATTENTION_CHANGED})
FOLD_SEPARATOR = " · "


@dataclass(slots=True)
class FeedLine:
    """One reader action: the parts of the events that made it."""

    time_ns: int
    reader: str
    kind: int
    parts: list[str]
    kinds: tuple[int, ...] = ()
    event_id: int = 0

    @property
    def text(self) -> str:
        return FOLD_SEPARATOR.join(self.parts)

    def add(self, kind: int, text: str) -> None:
        """Fold in a part of the same action."""
        self.parts.append(text)
        self.kinds += (kind,)

    def folds(self, event_id: int, when: int, reader: str, kind: int) -> bool:
        """Whether the event belongs to this line: the same reader, the same
        commit (the next event id, or the same commit time), a kind the line
        does not hold yet."""
        return (reader == self.reader and kind in FOLDED_KINDS and self.kind in FOLDED_KINDS
                and kind not in self.kinds
                and (when == self.time_ns or (event_id != 0 and event_id == self.event_id + 1)))


RULE_BADGES: dict[int, str] = {
    pb.ATTENTION_RULE_STUCK: "STUCK",
    pb.ATTENTION_RULE_STRUGGLING: "STRUGGLING",
    pb.ATTENTION_RULE_STALLED: "STALLED",
    pb.ATTENTION_RULE_ASKED_FOR_HELP: "HELP",
}
# Names of signals an event cleared, kept so that an older listing cannot
# bring them back; bounded.
CLEARED_MEMORY = 10_000


class WatchModel:
    """The readers table, the activity feed and the pinned messages and
    signals. `me` is the signed-in consultant (`consultants/{id}`): its own
    read positions reset unread counts.

    With `dashboard`, the table and the feed are WatchReaders'
    (`apply_readers`): readers, their state, last activity, open signals and
    unread counts come from its updates, and an update with a new last
    activity is a feed line. WatchActivity's message and signal events
    (`apply`) make the pinned lines; they never add a reader nor count an
    unread message (the next update has it, counted). Without `dashboard`,
    WatchActivity's snapshot and events of every kind build everything."""

    def __init__(self, me: str = "", feed_size: int = FEED_LINES, feed_heartbeats: bool = False,
                 pinned_size: int = PINNED_LINES, dashboard: bool = False) -> None:
        self.me = me
        self.feed_heartbeats = feed_heartbeats
        self.dashboard = dashboard
        self.readers: dict[str, ReaderRow] = {}
        self.feed: deque[FeedLine] = deque(maxlen=feed_size)
        self.pinned: deque[FeedLine] = deque(maxlen=pinned_size)
        # Readers with open signals.
        self.signalled: set[str] = set()
        # Bumped by every change that can move a row in the table.
        self.order_changes = 0
        # Where the streams stand (WatchActivity, WatchReaders); empty before
        # the first cursor.
        self.cursor = ""
        self.readers_cursor = ""
        self.snapshot_complete = False
        self.last_event_id = 0
        self.events_applied = 0
        self.updates_applied = 0
        self.duplicates = 0
        self.responses = 0
        self.last_response_ns = 0
        self._staging: dict[str, ReaderRow] | None = None
        self._staged_signals: list[pb.AttentionSignal] = []
        self._replacing = False
        self._unresolved: set[str] = set()
        self._emails_wanted = False
        self._cleared: OrderedDict[str, None] = OrderedDict()

    # --- stream responses ----------------------------------------------------

    def begin_snapshot(self, replace: bool = False) -> None:
        """A stream with a snapshot is opening: its readers and signals
        replace the table's when it completes (the old table stays on screen
        until then); on a WatchActivity stream, event ids count again from
        there. `replace`: the scope changed, so readers kept only for their
        unread messages go too."""
        self._staging = {}
        self._staged_signals = []
        self._replacing = replace
        self.snapshot_complete = False
        if not self.dashboard:
            self.restart_events()

    def restart_events(self) -> None:
        """A WatchActivity stream opens afresh: event ids may count from 1
        again (another history)."""
        self.last_event_id = 0

    def apply(self, response: cpb.WatchActivityResponse) -> None:
        self._received()
        if response.snapshot_readers:
            staging = self._staging
            for reader in response.snapshot_readers:
                row = (staging if staging is not None else self.readers).get(reader.name)
                if row is None:
                    row = self._new_row(reader.name, staging)
                self._apply_reader(row, reader, from_event_order=True)
                if not row.last_activity_ns:
                    row.last_activity_ns = row.last_seen_ns
        if response.snapshot_attention:
            if self._staging is not None:
                self._staged_signals.extend(response.snapshot_attention)
            else:
                self.merge_signals(response.snapshot_attention)
        for event in response.events:
            self.apply_event(event)
        if response.snapshot_complete:
            self._finish_snapshot()
        if response.cursor:
            self.cursor = response.cursor

    def apply_readers(self, response: cpb.WatchReadersResponse) -> None:
        """A WatchReadersResponse: each update is the reader's latest, so it
        replaces what the row shows (signals included); unread counts are
        the server's, whole. Live, a new last activity is a feed line."""
        self._received()
        staging = self._staging
        lines: list[FeedLine] = []
        for update in response.updates:
            self.updates_applied += 1
            row = (staging if staging is not None else self.readers).get(update.reader)
            if row is None:
                row = self._new_row(update.reader, staging)
            line = self._apply_update(row, update, live=staging is None)
            if line is not None:
                lines.append(line)
        # One message holds a round: its readers' actions, in time order.
        self.feed.extend(sorted(lines, key=lambda line: line.time_ns))
        target = self.readers if staging is None else staging
        for count in response.unread_counts:
            # Updates come before counts: a count for a reader not in the
            # table is for a reader the stream does not watch.
            row = target.get(count.reader)
            if row is not None:
                if row.unread != count.unread:
                    self.order_changes += 1
                row.unread_base, row.unread_seqs = count.unread, []
        if response.snapshot_complete:
            self._finish_snapshot()
        if response.cursor:
            self.readers_cursor = response.cursor

    def _received(self) -> None:
        self.responses += 1
        self.last_response_ns = time.time_ns()

    def _finish_snapshot(self) -> None:
        staged, self._staging = self._staging, None
        if staged is not None:
            for name, old in self.readers.items():
                row = staged.get(name)
                if row is None:
                    if old.unread and not self._replacing:
                        # The snapshot's signals are all that are open at its cursor.
                        old.signals = {}
                        staged[name] = old
                    continue
                if not self.dashboard:
                    # ListUnreadCounts follows a WatchActivity snapshot;
                    # a WatchReaders snapshot came with its counts.
                    row.unread_base, row.unread_seqs = old.unread_base, old.unread_seqs
                if not row.resolved and old.resolved:
                    row.email, row.resolved = old.email, True  # updates carry no email
                if not row.last_type:
                    row.last_type, row.last_summary = old.last_type, old.last_summary
                row.last_activity_ns = max(row.last_activity_ns, old.last_activity_ns)
            self.readers = staged
            self.signalled = {name for name, row in staged.items() if row.signals}
            self._unresolved = {name for name, row in staged.items() if not row.resolved}
            for signal in self._staged_signals:
                self._set_signal(signal)
            self._staged_signals = []
        self.order_changes += 1
        self.snapshot_complete = True

    def apply_event(self, event: pb.ActivityEvent) -> None:
        event_id = event.event_id
        if event_id and event_id <= self.last_event_id:
            self.duplicates += 1
            return
        self.last_event_id = event_id
        self.events_applied += 1
        name = event.reader
        row = self.readers.get(name)
        if row is None:
            # In dashboard mode the table's readers are WatchReaders': the
            # event of another one only makes its line (a scratch row).
            row = ReaderRow(name) if self.dashboard else self._new_row(name)
        when = _ns(event.create_time)
        kind = event.kind
        if kind == pb.EVENT_KIND_INTERACTION_RECORDED:
            interaction = event.interaction
            type_ = interaction.type
            if when > row.last_seen_ns:
                row.last_seen_ns = when
            if type_ == "heartbeat":
                # Presence tells that the app is open; the column keeps
                # what the reader last did.
                if not row.last_type:
                    row.last_type = type_
                if not self.feed_heartbeats:
                    return
            else:
                # An update on the other stream may be newer than this event.
                if not self.dashboard or when >= row.last_activity_ns:
                    row.last_type = type_
                    row.last_summary = interaction.summary or event.summary
                row.last_activity_ns = max(row.last_activity_ns, when)
                row.changes += 1
            summary = interaction.summary or event.summary
            text = f"{type_}: {summary}" if summary else type_
        elif kind == pb.EVENT_KIND_READER_STATE_CHANGED:
            self._apply_state(row, event.state)
            text = f"state {event.summary}"
        elif kind == pb.EVENT_KIND_PRESENCE_CHANGED:
            change = event.presence
            row.presence = change.presence
            text = presence_text(change.presence, change.previous)
        elif kind == pb.EVENT_KIND_MESSAGE_SENT:
            message = event.message
            row.changes += 1
            if message.direction == pb.MESSAGE_DIRECTION_FROM_READER:
                if not self.dashboard and message.sequence not in row.unread_seqs:
                    row.unread_seqs.append(message.sequence)
                    self.order_changes += 1
                text = f"message from reader: {event.summary}"
            elif message.direction == pb.MESSAGE_DIRECTION_TO_READER:
                who = "you" if message.author == self.me and self.me else "consultant"
                text = f"message from {who}: {event.summary}"
            else:
                text = f"notice: {event.summary}"
        elif kind == pb.EVENT_KIND_MESSAGE_READ:
            read = event.message_read
            if read.participant == self.me:
                self._read_up_to(row, read.last_read_sequence)
                text = "you read the conversation"
            elif read.participant == name:
                text = "reader read your messages"
            else:
                text = f"read by {read.participant}"
        elif kind == pb.EVENT_KIND_ATTENTION_CHANGED:
            signal = event.attention
            known = row.signals.get(signal.name)
            self._set_signal(signal, create=not self.dashboard)
            text = self.signal_text(signal, known)
        else:
            text = event.summary or "event"
        self._append(event_id, when, name, kind, text)

    def _append(self, event_id: int, when: int, name: str, kind: int, text: str) -> None:
        if kind in PINNED_KINDS:
            self.pinned.append(FeedLine(when, name, kind, [text], (kind,), event_id))
            return
        feed = self.feed
        if feed and feed[-1].folds(event_id, when, name, kind):
            last = feed[-1]
            last.add(kind, text)
            last.event_id = event_id or last.event_id
            return
        feed.append(FeedLine(when, name, kind, [text], (kind,), event_id))

    def signal_text(self, signal: pb.AttentionSignal, known: pb.AttentionSignal | None) -> str:
        """A pinned line for a change of a signal."""
        badge = RULE_BADGES.get(signal.rule, "ATTENTION")
        if signal.state == pb.ATTENTION_STATE_CLEARED:
            return f"{badge} cleared: {signal.clear_reason}" if signal.clear_reason else f"{badge} cleared"
        if signal.acknowledged_by and (known is None or not known.acknowledged_by):
            return f"{badge} taken by {self.consultant_label(signal.acknowledged_by)}: {signal.summary}"
        return f"{badge}: {signal.summary}" if signal.summary else badge

    def consultant_label(self, name: str) -> str:
        return "you" if name == self.me else name

    def _apply_state(self, row: ReaderRow, state: pb.ReaderState) -> None:
        row.state_ns = max(_ns(state.update_time), 1)
        row.status = state.status
        row.progress = state.progress
        row.step = state.current_step
        if state.presence:
            row.presence = state.presence
        seen = _ns(state.last_seen_time)
        if seen > row.last_seen_ns:
            row.last_seen_ns = seen

    def _apply_reader(self, row: ReaderRow, reader: pb.Reader, from_event_order: bool) -> None:
        row.display_name = reader.display_name
        row.email = reader.email
        row.resolved = True
        if not reader.HasField("state"):
            return
        if from_event_order or not row.state_ns:
            self._apply_state(row, reader.state)
        else:
            # A looked-up profile may be older than the events applied since
            # it was asked for: only fill in what no event has told yet.
            seen = _ns(reader.state.last_seen_time)
            if seen > row.last_seen_ns:
                row.last_seen_ns = seen

    def _apply_update(self, row: ReaderRow, update: cpb.ReaderUpdate, live: bool) -> FeedLine | None:
        """A reader's latest from WatchReaders; live, the feed line of its
        new last activity, if it has one. Rows move at once only when the
        name or the signals change; state and activity are recency."""
        moved = False
        if update.display_name and update.display_name != row.display_name:
            row.display_name, moved = update.display_name, True
        at = _ns(update.last_activity_time)
        line = None
        if update.last_activity_type and at > row.last_activity_ns:
            row.last_type, row.last_summary = update.last_activity_type, update.last_activity_summary
            row.changes += 1
            if live:
                line = self._action_line(row, update, at)
        if update.HasField("state"):
            self._apply_state(row, update.state)
        row.last_activity_ns = max(row.last_activity_ns, at) or row.last_seen_ns
        if self._replace_signals(row, update.attention, live) or moved:
            self.order_changes += 1
        return line

    def _action_line(self, row: ReaderRow, update: cpb.ReaderUpdate, at: int) -> FeedLine:
        """What the reader did, with the state it moved (the state's time is
        the action's: they committed together) and the presence it changed
        (against the row before the update): one line per action, as the
        state and presence events folded in make it on a WatchActivity
        stream. Several actions within one update interval show as the
        last."""
        kind = pb.EVENT_KIND_INTERACTION_RECORDED
        summary = update.last_activity_summary
        line = FeedLine(at, row.name, kind, [f"{update.last_activity_type}: {summary}" if summary
                                             else update.last_activity_type], (kind,))
        state = update.state
        if update.HasField("state"):
            if _ns(state.update_time) == at:
                line.add(pb.EVENT_KIND_READER_STATE_CHANGED, f"state {STATUS_NAMES.get(state.status, '?')}, "
                                                             f"{state.progress:.0%}, step {state.current_step}")
            if state.presence and row.presence and state.presence != row.presence:
                line.add(pb.EVENT_KIND_PRESENCE_CHANGED, presence_text(state.presence, row.presence))
        return line

    def _new_row(self, name: str, staging: dict[str, ReaderRow] | None = None) -> ReaderRow:
        """A reader the table did not have; into a snapshot being staged,
        which the table takes as a whole when it completes."""
        row = ReaderRow(name)
        if staging is not None:
            staging[name] = row
            return row
        self.readers[name] = row
        self._unresolved.add(name)
        self.order_changes += 1
        return row

    def _read_up_to(self, row: ReaderRow, sequence: int) -> None:
        """My read position moved: what the stream brought after it stays
        unread; what the last count held was older than anything the stream
        brought, so it is read."""
        before = row.unread
        row.unread_base = 0
        row.unread_seqs = [s for s in row.unread_seqs if s > sequence]
        if row.unread != before:
            self.order_changes += 1

    def _set_signal(self, signal: pb.AttentionSignal, create: bool = True) -> None:
        if signal.state == pb.ATTENTION_STATE_CLEARED:
            self._cleared[signal.name] = None
            if len(self._cleared) > CLEARED_MEMORY:
                self._cleared.popitem(last=False)
        row = self.readers.get(signal.reader)
        if row is None:
            if not create:
                return
            row = self._new_row(signal.reader)
        if signal.state == pb.ATTENTION_STATE_CLEARED:
            row.signals.pop(signal.name, None)
        else:
            row.signals[signal.name] = signal
        self._signals_changed(row)

    def _signals_changed(self, row: ReaderRow) -> None:
        if row.signals:
            self.signalled.add(row.name)
        else:
            self.signalled.discard(row.name)
        self.order_changes += 1

    def _replace_signals(self, row: ReaderRow, signals: Iterable[pb.AttentionSignal], live: bool) -> bool:
        """The row's open signals become `signals` (an update's, the latest),
        except that a signal an event cleared stays cleared and a known
        acknowledgement stays: the other stream may be ahead. Whether they
        changed."""
        fresh: dict[str, pb.AttentionSignal] = {}
        for signal in signals:
            if signal.name in self._cleared:
                continue
            known = row.signals.get(signal.name)
            fresh[signal.name] = known if known is not None and _lost_ack(known, signal) else signal
        if fresh == row.signals:
            return False
        row.signals = fresh
        if live:
            self._signals_changed(row)
        return True

    # --- other sources -------------------------------------------------------

    def merge_signals(self, signals: Iterable[pb.AttentionSignal]) -> None:
        """Open signals from a lookup (ListAttention, GetReader,
        AcknowledgeAttention), which may be older than the events applied
        since: a signal an event cleared stays cleared, and a known
        acknowledgement stays."""
        for signal in signals:
            if signal.state == pb.ATTENTION_STATE_CLEARED or signal.name in self._cleared:
                continue
            row = self.readers.get(signal.reader)
            known = row.signals.get(signal.name) if row is not None else None
            if known is not None and (known == signal or _lost_ack(known, signal)):
                continue
            self._set_signal(signal)

    def apply_read(self, reader: str, read: pb.MessageRead) -> None:
        """My read position in `reader`'s conversation as MarkMessagesRead
        answered it (the event or the count says the same a moment later)."""
        row = self.readers.get(reader)
        if row is not None:
            self._read_up_to(row, read.last_read_sequence)

    def set_unread_counts(self, counts: Iterable[tuple[str, int]]) -> None:
        """Replace every unread count with ListUnreadCounts' answer."""
        given = dict(counts)
        for name, row in self.readers.items():
            row.unread_base = given.pop(name, 0)
            row.unread_seqs = []
        for name, unread in given.items():
            self._new_row(name).unread_base = unread
        self.order_changes += 1

    def want_emails(self) -> None:
        """The filter matches emails, which WatchReaders does not send: from
        now on, look up the profile of every reader without one."""
        if not self._emails_wanted:
            self._emails_wanted = True
            self._unresolved.update(name for name, row in self.readers.items() if not row.resolved)

    def take_unresolved(self, most: int) -> list[str]:
        """Readers whose profile to look up (each handed out once): those
        without a name, and while emails are wanted, those without one."""
        names: list[str] = []
        while self._unresolved and len(names) < most:
            name = self._unresolved.pop()
            row = self.readers.get(name)
            if row is not None and not row.resolved and (self._emails_wanted or not row.display_name):
                names.append(name)
        return names

    def apply_profile(self, reader: pb.Reader) -> None:
        """A looked-up reader (GetReader)."""
        row = self.readers.get(reader.name)
        if row is not None:
            self._apply_reader(row, reader, from_event_order=False)
            self.order_changes += 1

    def give_up_profile(self, name: str) -> None:
        row = self.readers.get(name)
        if row is not None:
            row.resolved = True

    def retry_profile(self, name: str) -> None:
        self._unresolved.add(name)

    # --- queries for rendering -------------------------------------------------

    def most_recent(self, most: int) -> list[ReaderRow]:
        """The `most` readers seen last, most recent first: O(n log most)."""
        if most <= 0:
            return []
        return heapq.nlargest(most, self.readers.values(), key=_recency)

    def total_unread(self) -> int:
        return sum(row.unread for row in self.readers.values())

    def presence_counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for row in self.readers.values():
            counts[row.presence] = counts.get(row.presence, 0) + 1
        return counts

    def waiting(self) -> int:
        """Readers with a signal nobody has taken yet."""
        readers = self.readers
        return sum(1 for name in self.signalled
                   if any(not s.acknowledged_by for s in readers[name].signals.values()))

    def label(self, name: str) -> str:
        row = self.readers.get(name)
        return row.label if row is not None else name


def _lost_ack(known: pb.AttentionSignal, listed: pb.AttentionSignal) -> bool:
    """Whether a listing lacks an acknowledgement the view knows of (it was
    read before the signal was taken; a taken signal stays taken)."""
    return bool(known.acknowledged_by) and not listed.acknowledged_by


def presence_text(now: int, was: int) -> str:
    return f"{PRESENCE_NAMES.get(now, '?')} (was {PRESENCE_NAMES.get(was, '?')})"


def _recency(row: ReaderRow) -> tuple[int, str]:
    return (row.last_seen_ns, row.name)


# --------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------

# Codes after which the stream is opened again behind the last cursor.
RETRY_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
})

# Login answers that no retry will change.
LOGIN_REFUSALS = frozenset({
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
})

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    # A stream message holds up to 500 events of up to 16 KiB payload each.
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # Notice a dead connection on an idle stream; the server allows pings
    # every 10 s.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # The channel's own reconnect backoff stays within ours (default max 120 s).
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]


# A stream not refused this long after its transport is up counts as open.
SETTLE_SECONDS = 0.3
# Deadline of the calls the keys make.
ACTION_TIMEOUT = 10.0
# ListAttention pages read after a snapshot (of up to 1,000 signals each).
ATTENTION_PAGES = 5


class WatchError(Exception):
    """The view cannot go on; the message says why, for a person."""


def open_channel(target: str, tls: bool = False, ca_file: Path | None = None) -> aio.Channel:
    if tls or ca_file is not None:
        roots = ca_file.read_bytes() if ca_file is not None else None
        return aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots), CHANNEL_OPTIONS)
    return aio.insecure_channel(target, CHANNEL_OPTIONS)


def _details(error: aio.AioRpcError) -> str:
    return f"{error.code().name}: {error.details() or 'no details'}"


@dataclass(slots=True)
class ReaderDetails:
    """What the open reader's screen shows beyond the table row."""

    reader: pb.Reader
    signals: list[pb.AttentionSignal]
    # Newest first, as the server lists them.
    interactions: list[pb.Interaction]
    messages: list[pb.Message]
    reads: list[pb.MessageRead]


class Actions(Protocol):
    """What the keys ask of the server; `WatchClient` does it for real."""

    only_my_readers: bool

    def set_only_my_readers(self, only: bool) -> None: ...

    async def send_message(self, reader: str, body: str) -> pb.Message: ...

    async def mark_read(self, reader: str) -> pb.MessageRead: ...

    async def acknowledge(self, signal: str) -> pb.AttentionSignal: ...

    async def reader_details(self, reader: str) -> ReaderDetails: ...


# What the WatchActivity stream carries next to WatchReaders: the pinned
# lines' events, a few a second in a busy class. Interactions (heartbeats
# included), state, presence and read positions stay on the server: the
# table and the feed come from WatchReaders, conflated.
PINNED_STREAM_KINDS = tuple(sorted(PINNED_KINDS))


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


class StreamLink:
    """One stream `WatchClient` keeps open, whichever it is: it resumes
    behind its own last cursor after a lost connection (exponential
    backoff), starts over when the cursor is refused, signs in again once
    when the session is refused, and opens again at once, afresh, on
    `restart` (a new scope). Subclasses say what to ask for and what to do
    with what comes."""

    # The model's field that holds this stream's cursor.
    cursor_field = ""

    def __init__(self, client: WatchClient) -> None:
        self.client = client
        self.status = "connecting"
        # While waiting to reconnect: when (monotonic) and why.
        self.retry_at: float | None = None
        self.reason = ""
        self.connected = False
        # Counters for tests.
        self.streams = 0
        self.snapshots = 0
        self.fresh_starts = 0
        self.resume_cursors: deque[str] = deque(maxlen=100)
        self._progressed = False
        self._opened_at: float | None = None
        self._call: aio.UnaryStreamCall[Any, Any] | None = None
        self._rescope = False
        self._wake = asyncio.Event()

    # --- what differs between the streams ------------------------------------

    @property
    def label(self) -> str:
        """How the status line names this stream ("" for the table's)."""
        return ""

    def request(self, fresh: bool) -> tuple[Any, bool]:
        """The request to open with, and whether a snapshot comes first; a
        fresh one prepares the model for it."""
        raise NotImplementedError

    def open(self, request: Any, token: str) -> aio.UnaryStreamCall[Any, Any]:
        raise NotImplementedError

    async def received(self, response: Any) -> None:
        raise NotImplementedError

    def unimplemented(self) -> bool:
        """The server does not offer this stream: True to end it quietly."""
        return False

    # --- the one reconnect loop ------------------------------------------------

    @property
    def cursor(self) -> str:
        return str(getattr(self.client.model, self.cursor_field))

    @cursor.setter
    def cursor(self, value: str) -> None:
        setattr(self.client.model, self.cursor_field, value)

    def status_line(self, now: float | None = None) -> str:
        """The status for the header; while waiting to reconnect, with the
        seconds left (the reason last, where the header cuts it short)."""
        if self.retry_at is None:
            return f"{self.label}{self.status}"
        left = max(0.0, self.retry_at - (time.monotonic() if now is None else now))
        return f"{self.label}disconnected, retrying in {left:.0f} s: {self.reason}"

    async def run(self) -> None:
        """Keep the stream open until cancelled; returns when the server does
        not offer it and it may do without, raises WatchError when the view
        cannot go on."""
        client = self.client
        attempt = 0
        signed_in_again = False
        try:
            while True:
                self._progressed = False
                self._opened_at = None
                token = client.token
                try:
                    token = await client.signed_in(self)
                    await self._stream_once(token)
                    reason = "the server ended the stream"
                except asyncio.CancelledError:
                    if not self._rescoped():
                        raise
                    continue
                except aio.AioRpcError as error:
                    code = error.code()
                    if self._worked():
                        attempt, signed_in_again = 0, False
                    if code == grpc.StatusCode.UNAUTHENTICATED:
                        if signed_in_again:
                            raise WatchError(
                                f"the server refused the session right after signing in again ({_details(error)})"
                            ) from None
                        signed_in_again = True
                        client.session_refused(token)
                        self.status = f"session refused ({_details(error)}); signing in again"
                        continue
                    if code == grpc.StatusCode.OUT_OF_RANGE or (
                        code == grpc.StatusCode.INVALID_ARGUMENT and self.cursor
                    ):
                        # The cursor belongs to another history or is too
                        # old: start over, right away.
                        self.cursor = ""
                        self.fresh_starts += 1
                        self.status = f"starting over ({_details(error)})"
                        continue
                    if code == grpc.StatusCode.UNIMPLEMENTED and self.unimplemented():
                        return
                    if code not in RETRY_CODES:
                        raise WatchError(_details(error)) from None
                    reason = _details(error)
                if self._worked():
                    attempt, signed_in_again = 0, False
                delay = min(client.max_backoff, client.initial_backoff * 2 ** attempt) * random.uniform(0.8, 1.0)
                attempt = min(attempt + 1, 30)
                self.status = f"disconnected ({reason}); reconnecting in {delay:.1f} s"
                log.debug("%s stream lost (%s); reconnecting in %.1f s", type(self).__name__, reason, delay)
                self.reason, self.retry_at = reason, time.monotonic() + delay
                try:
                    await self._nap(delay)
                finally:
                    self.retry_at = None
        finally:
            self.connected = False
            self.retry_at = None

    async def _nap(self, seconds: float) -> None:
        """Sleep before reconnecting; `restart` cuts it short."""
        if self._rescope:
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _rescoped(self) -> bool:
        """Whether a CancelledError came from `restart` cancelling the call,
        not from this task being cancelled."""
        task = asyncio.current_task()
        return self._rescope and (task is None or task.cancelling() == 0)

    def restart(self) -> None:
        """Open the stream again at once, afresh (a new scope or mode)."""
        self.cursor = ""
        self._rescope = True
        if self._call is not None:
            self._call.cancel()
        self._wake.set()

    def _worked(self) -> bool:
        """Whether the stream that just ended got anywhere: a message, or
        a few quiet seconds open. Backoff and the one new sign-in start
        afresh after such a stream."""
        opened = self._opened_at
        return self._progressed or (opened is not None and time.monotonic() - opened >= 5.0)

    async def _stream_once(self, token: str) -> None:
        client = self.client
        fresh = not self.cursor
        if not fresh:
            self.resume_cursors.append(self.cursor)
        request, snapshot = self.request(fresh)
        self._rescope = False
        self.status = "connecting" if fresh else f"resuming after {self.cursor}"
        call = self._call = self.open(request, token)
        try:
            # A resumed stream with nothing to catch up on carries nothing
            # until the next heartbeat, so "connected" means: the transport
            # is up and the server has not refused the stream at once.
            ended = asyncio.Event()
            call.add_done_callback(lambda _call: ended.set())
            waits = {asyncio.create_task(ended.wait()), asyncio.create_task(client.settled())}
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
            if call.done():
                await call.wait_for_connection()  # raises the refusal
            self.connected = True
            self.streams += 1
            self._opened_at = time.monotonic()
            self.status = "loading snapshot" if snapshot else "live"
            client.stream_opened(self)
            async for response in call:
                self._progressed = True
                await self.received(response)
        finally:
            self.connected = False
            self._call = None
            call.cancel()

    def _snapshot_done(self) -> None:
        self.snapshots += 1
        self.status = "live"
        self.client.check_synced()


class ReadersLink(StreamLink):
    """WatchReaders: the table, each reader's latest, conflated."""

    cursor_field = "readers_cursor"

    def request(self, fresh: bool) -> tuple[Any, bool]:
        if fresh:
            self.client.model.begin_snapshot(replace=self._rescope)
        return cpb.WatchReadersRequest(after=self.cursor, only_my_readers=self.client.only_my_readers), fresh

    def open(self, request: Any, token: str) -> aio.UnaryStreamCall[Any, Any]:
        return self.client.stub.WatchReaders(request, metadata=_bearer(token))

    async def received(self, response: Any) -> None:
        self.client.model.apply_readers(response)
        if response.snapshot_complete:
            self._snapshot_done()

    def unimplemented(self) -> bool:
        self.client.fall_back()
        return True


class ActivityLink(StreamLink):
    """WatchActivity: the pinned lines (messages, signal changes) next to
    WatchReaders; against a server without it, every event, building the
    table and the feed too."""

    cursor_field = "cursor"

    @property
    def label(self) -> str:
        return "" if self.client.dashboard is False else "messages: "

    def request(self, fresh: bool) -> tuple[Any, bool]:
        client, model = self.client, self.client.model
        mine = client.only_my_readers
        if client.dashboard is not False:
            # From now on when fresh: the pinned lines need no history.
            if fresh:
                model.restart_events()
            return cpb.WatchActivityRequest(kinds=PINNED_STREAM_KINDS, after=self.cursor, only_my_readers=mine), False
        if fresh:
            model.begin_snapshot(replace=self._rescope)
            return cpb.WatchActivityRequest(include_snapshot=True, only_my_readers=mine), True
        return cpb.WatchActivityRequest(after=self.cursor, only_my_readers=mine), False

    def open(self, request: Any, token: str) -> aio.UnaryStreamCall[Any, Any]:
        return self.client.stub.WatchActivity(request, metadata=_bearer(token))

    async def received(self, response: Any) -> None:
        self.client.model.apply(response)
        if response.snapshot_complete:
            await self.client.refresh_unread()
            await self.client.refresh_attention()
            self._snapshot_done()


class WatchClient:
    """Keeps `model` up to date until cancelled or until `fatal` is set:
    WatchReaders for the table and WatchActivity for the feed, or one
    WatchActivity stream of every event against a server without
    WatchReaders."""

    def __init__(
        self,
        model: WatchModel,
        target: str,
        email: str,
        password: str,
        *,
        tls: bool = False,
        ca_file: Path | None = None,
        initial_backoff: float = 0.25,
        max_backoff: float = 5.0,
        resolve_profiles: bool = True,
        only_my_readers: bool = False,
    ) -> None:
        self.model = model
        self.target = target
        self.email = email
        self._password = password
        self.tls = tls
        self.ca_file = ca_file
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.resolve_profiles = resolve_profiles
        self.only_my_readers = only_my_readers
        self.token = ""
        self.account = ""
        self.fatal: str | None = None
        # Whether the server offers WatchReaders: None until it answered.
        self.dashboard: bool | None = None
        model.dashboard = True
        # False once the server answered ListAttention with UNIMPLEMENTED.
        self.attention_available: bool | None = None
        self.logins = 0
        self.synced = asyncio.Event()
        self.readers = ReadersLink(self)
        self.feed = ActivityLink(self)
        self._login_lock = asyncio.Lock()
        self._channel: aio.Channel | None = None
        self._auth: auth_service_pb2_grpc.AuthServiceAsyncStub | None = None
        self._consultant: consultant_service_pb2_grpc.ConsultantServiceAsyncStub | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str]]:
        return _bearer(self.token)

    @property
    def stub(self) -> consultant_service_pb2_grpc.ConsultantServiceAsyncStub:
        assert self._consultant is not None
        return self._consultant

    @property
    def links(self) -> list[StreamLink]:
        """The streams kept open: the table's first."""
        return [self.feed] if self.dashboard is False else [self.readers, self.feed]

    @property
    def table(self) -> StreamLink:
        """The stream whose snapshot builds the table."""
        return self.links[0]

    @property
    def connected(self) -> bool:
        return all(link.connected for link in self.links)

    @property
    def status(self) -> str:
        return self.status_line()

    def status_line(self, now: float | None = None) -> str:
        """`live` when every stream is; else the first one that is not."""
        if self.fatal:
            return f"stopped: {self.fatal}"
        for link in self.links:
            if link.retry_at is not None or link.status != "live":
                return link.status_line(now)
        return "live"

    async def run(self) -> None:
        """Watch until cancelled; returns when the view cannot go on, with
        `fatal` saying why."""
        channel = self._channel = open_channel(self.target, self.tls, self.ca_file)
        self._auth = auth_service_pb2_grpc.AuthServiceStub(channel)
        self._consultant = consultant_service_pb2_grpc.ConsultantServiceStub(channel)
        pending = {asyncio.create_task(link.run()) for link in (self.readers, self.feed)}
        resolver = asyncio.create_task(self._resolve_forever()) if self.resolve_profiles else None
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # a WatchError ends the view
        except WatchError as error:
            self.fatal = str(error)
        finally:
            for task in [*pending, *([resolver] if resolver is not None else [])]:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await channel.close(grace=None)

    async def signed_in(self, link: StreamLink) -> str:
        """The session's token, signing in first when there is none; both
        streams share the one sign-in."""
        async with self._login_lock:
            if not self.token:
                link.status = f"signing in as {self.email}"
                await self._login()
        return self.token

    def session_refused(self, token: str) -> None:
        """A stream's session was refused: sign in again when a stream opens
        next, unless another stream has already."""
        if self.token == token:
            self.token = ""

    async def _login(self) -> None:
        assert self._auth is not None
        try:
            response = await self._auth.Login(
                auth_service_pb2.LoginRequest(
                    email=self.email, password=self._password, account_kind=pb.ACCOUNT_KIND_CONSULTANT
                ),
                timeout=30,
            )
        except aio.AioRpcError as error:
            if error.code() in LOGIN_REFUSALS:
                raise WatchError(f"signing in as {self.email} failed ({_details(error)})") from None
            raise
        self.token = response.session.token
        self.account = response.session.account
        self.model.me = self.account
        self.logins += 1

    async def settled(self) -> None:
        assert self._channel is not None
        await self._channel.channel_ready()
        await asyncio.sleep(SETTLE_SECONDS)

    def stream_opened(self, link: StreamLink) -> None:
        if link is self.readers:
            # WatchReaders rows carry their signals.
            self.dashboard = self.attention_available = True
        self.check_synced()

    def check_synced(self) -> None:
        """Synced: the table's snapshot is in and every stream is open."""
        if self.model.snapshot_complete and self.connected:
            self.synced.set()

    def fall_back(self) -> None:
        """The server has no WatchReaders: one WatchActivity stream of every
        event builds the table, as before it had."""
        log.info("the server does not offer WatchReaders; watching every event instead")
        self.dashboard = False
        self.model.dashboard = False
        self.feed.restart()

    def set_only_my_readers(self, only: bool) -> None:
        """Watch only my readers, or everyone's: the streams open again,
        the table's with a fresh snapshot of the new scope."""
        if only == self.only_my_readers:
            return
        self.only_my_readers = only
        for link in self.links:
            link.restart()

    async def refresh_unread(self) -> None:
        """After a WatchActivity snapshot: its readers carry no counts."""
        answer = await self.stub.ListUnreadCounts(
            cpb.ListUnreadCountsRequest(only_my_readers=self.only_my_readers), metadata=self.metadata, timeout=30
        )
        self.model.set_unread_counts((c.reader, c.unread) for c in answer.counts)

    async def refresh_attention(self) -> None:
        """Open signals beyond a WatchActivity snapshot's (ListAttention); a
        server without the call has none to give."""
        signals: list[pb.AttentionSignal] = []
        token = ""
        for _ in range(ATTENTION_PAGES):
            try:
                answer = await self.stub.ListAttention(
                    cpb.ListAttentionRequest(page_size=1000, page_token=token, only_my_readers=self.only_my_readers),
                    metadata=self.metadata, timeout=30,
                )
            except aio.AioRpcError as error:
                # Signals are extra: no answer leaves the table without
                # them, and the stream's own trouble shows on the stream.
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    self.attention_available = False
                else:
                    log.warning("listing attention signals failed (%s)", _details(error))
                return
            signals.extend(answer.signals)
            token = answer.next_page_token
            if not token:
                break
        self.attention_available = True
        self.model.merge_signals(signals)

    async def _resolve_forever(self) -> None:
        """Look up the profiles of readers first met without one."""
        while True:
            await asyncio.sleep(0.2)
            if not self.connected:
                continue
            names = self.model.take_unresolved(64)
            if names:
                await asyncio.gather(*(self._resolve(name) for name in names))

    async def _resolve(self, name: str) -> None:
        try:
            answer = await self.stub.GetReader(cpb.GetReaderRequest(name=name), metadata=self.metadata, timeout=10)
        except aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
                                grpc.StatusCode.INVALID_ARGUMENT):
                self.model.give_up_profile(name)
            else:
                self.model.retry_profile(name)
            return
        self.model.apply_profile(answer.reader)
        self.model.merge_signals(answer.attention)

    # --- what the keys ask for -------------------------------------------------

    def _stub(self) -> consultant_service_pb2_grpc.ConsultantServiceAsyncStub:
        if self._consultant is None or not self.token:
            raise WatchError("not signed in yet")
        return self._consultant

    async def send_message(self, reader: str, body: str) -> pb.Message:
        answer = await self._stub().SendMessage(
            cpb.SendMessageRequest(reader=reader, body=body), metadata=self.metadata, timeout=ACTION_TIMEOUT
        )
        return answer.message

    async def mark_read(self, reader: str) -> pb.MessageRead:
        answer = await self._stub().MarkMessagesRead(
            cpb.MarkMessagesReadRequest(reader=reader), metadata=self.metadata, timeout=ACTION_TIMEOUT
        )
        return answer.read

    async def acknowledge(self, signal: str) -> pb.AttentionSignal:
        answer = await self._stub().AcknowledgeAttention(
            cpb.AcknowledgeAttentionRequest(name=signal), metadata=self.metadata, timeout=ACTION_TIMEOUT
        )
        return answer.signal

    async def reader_details(self, reader: str) -> ReaderDetails:
        stub = self._stub()
        md = self.metadata
        got, history, thread = await asyncio.gather(
            stub.GetReader(cpb.GetReaderRequest(name=reader), metadata=md, timeout=ACTION_TIMEOUT),
            stub.ListInteractions(cpb.ListInteractionsRequest(parent=reader, page_size=50), metadata=md,
                                  timeout=ACTION_TIMEOUT),
            stub.ListMessages(cpb.ListMessagesRequest(parent=reader, page_size=50), metadata=md,
                              timeout=ACTION_TIMEOUT),
        )
        return ReaderDetails(got.reader, list(got.attention), list(history.interactions), list(thread.messages),
                             list(thread.reads))


# --------------------------------------------------------------------------
# The table's order and selection
# --------------------------------------------------------------------------

SortKey = tuple[Any, ...]
SORTS = ("attention", "name", "last seen", "progress")


def _attention_key(row: ReaderRow) -> tuple[SortKey, SortKey]:
    """Untaken signals (longest waiting first), taken ones, unread, then the
    rest; within each, the most recent activity first."""
    if row.signals:
        taken = all(s.acknowledged_by for s in row.signals.values())
        oldest = min(_ns(s.raise_time) for s in row.signals.values())
        return (1 if taken else 0, oldest), (-row.last_activity_ns,)
    return (2 if row.unread else 3, 0), (-row.last_activity_ns,)


# For each sort: (a key that moves a row at once, a recency key that moves it
# only when the re-sort timer is up).
SORT_KEYS: dict[str, Callable[[ReaderRow], tuple[SortKey, SortKey]]] = {
    "attention": _attention_key,
    "name": lambda row: ((row.label.casefold(),), ()),
    "last seen": lambda row: ((), (-row.last_seen_ns,)),
    "progress": lambda row: ((), (row.progress,)),
}


def matches(row: ReaderRow, needle: str) -> bool:
    """The filter: part of the display name, the email or the resource name,
    any case."""
    return needle in row.display_name.casefold() or needle in row.email.casefold() or needle in row.name


class ReaderOrder:
    """The readers in table order, filtered, and which one is selected.

    Sorting by recency at every change would reshuffle the rows on every
    heartbeat. So each sort's key has two parts: one that moves a row at
    once when it changes (a signal raised or taken, unread messages, the
    name) and a recency part frozen between re-sorts, refreshed every
    `resort_seconds`. The selection follows the reader, not the position.
    """

    def __init__(self, model: WatchModel, resort_seconds: float = RESORT_SECONDS) -> None:
        self.model = model
        self.resort_seconds = resort_seconds
        self.sort = SORTS[0]
        self.filter = ""
        self.names: list[str] = []
        self.selected: str | None = None
        # The first visible row, and how many rows fit (for paging).
        self.top = 0
        self.page = 10
        self.sorted_at = -float("inf")
        self.sorts = 0
        self._index: dict[str, int] = {}
        self._frozen: dict[str, SortKey] = {}
        self._seen: tuple[int, str, str] = (-1, "", "")

    def refresh(self, now: float) -> bool:
        """Sort again when something meaningful changed or the timer is up;
        True when it did."""
        model = self.model
        seen = (model.order_changes, self.sort, self.filter)
        timer = now - self.sorted_at >= self.resort_seconds
        if not timer and seen == self._seen:
            return False
        if timer or seen[1] != self._seen[1]:
            self._frozen = {}
            self.sorted_at = now
        self._seen = seen
        key_of, frozen = SORT_KEYS[self.sort], self._frozen

        def key(row: ReaderRow) -> SortKey:
            moving, recency = key_of(row)
            kept = frozen.get(row.name)
            if kept is None:
                kept = frozen[row.name] = recency
            return (moving, kept, row.name)

        rows: Iterable[ReaderRow] = model.readers.values()
        needle = self.filter.casefold()
        if needle:
            rows = [row for row in rows if matches(row, needle)]
        position = self._index.get(self.selected, 0) if self.selected is not None else 0
        self.names = [row.name for row in sorted(rows, key=key)]
        self._index = {name: i for i, name in enumerate(self.names)}
        if self.selected not in self._index:
            self.selected = self.names[min(position, len(self.names) - 1)] if self.names else None
        self.sorts += 1
        return True

    def position(self) -> int | None:
        return self._index.get(self.selected) if self.selected is not None else None

    def move(self, delta: int) -> None:
        current = self.position()
        self.move_to(0 if current is None else current + delta)

    def move_to(self, index: int) -> None:
        if self.names:
            self.selected = self.names[max(0, min(index, len(self.names) - 1))]

    def visible(self, rows: int) -> list[str]:
        """The names on screen: `rows` of them, scrolled so the selection
        shows."""
        self.page = max(1, rows)
        at = self.position()
        if at is not None:
            if at < self.top:
                self.top = at
            elif at >= self.top + rows:
                self.top = at - rows + 1
        self.top = max(0, min(self.top, len(self.names) - rows))
        return self.names[self.top:self.top + rows]


# --------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------

# Escape sequences of the keys the terminal uses (xterm and VT forms).
ESCAPES: dict[str, str] = {
    "[A": "up", "[B": "down", "[C": "right", "[D": "left", "[H": "home", "[F": "end",
    "OA": "up", "OB": "down", "OC": "right", "OD": "left", "OH": "home", "OF": "end",
    "[1~": "home", "[7~": "home", "[4~": "end", "[8~": "end", "[3~": "delete",
    "[5~": "pageup", "[6~": "pagedown",
}
CONTROLS: dict[str, str] = {
    "\r": "enter", "\n": "enter", "\x7f": "backspace", "\x08": "backspace", "\t": "tab",
    "\x01": "home", "\x05": "end", "\x15": "ctrl-u", "\x17": "ctrl-w", "\x03": "ctrl-c",
}


class KeyDecoder:
    """Turns what a cbreak terminal sends into key names: printable
    characters as themselves, and "up", "enter", "esc", "backspace"…"""

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, data: str) -> list[str]:
        data, self._pending = self._pending + data, ""
        keys: list[str] = []
        i, end = 0, len(data)
        while i < end:
            char = data[i]
            if char == "\x1b":
                introducer = data[i + 1] if i + 1 < end else ""
                if introducer not in ("[", "O"):
                    keys.append("esc")  # alone, or before a key (Alt)
                    i += 1
                    continue
                j = i + 2
                if introducer == "[":
                    while j < end and "\x20" <= data[j] <= "\x3f":
                        j += 1
                if j >= end:
                    self._pending = data[i:]  # the rest of it comes with the next read
                    break
                sequence = data[i + 1:j + 1]
                # Modified arrows (e.g. Ctrl-Up, "[1;5A") count as the arrow.
                key = ESCAPES.get(sequence) or ESCAPES.get("[" + sequence[-1], "")
                if key:
                    keys.append(key)
                i = j + 1
            elif char in CONTROLS:
                keys.append(CONTROLS[char])
                i += 1
            else:
                if char.isprintable():
                    keys.append(char)
                i += 1
        return keys


class LineEditor:
    """The footer's one-line editor (reply, filter): insert at the cursor,
    Backspace, Delete, Left/Right, Home/End, Ctrl-U clears, Ctrl-W deletes a
    word. Enter and Esc are the caller's."""

    def __init__(self, prompt: str, text: str = "", limit: int = 4000) -> None:
        self.prompt = prompt
        self.text = text
        self.cursor = len(text)
        self.limit = limit

    def key(self, key: str) -> None:
        """Apply an editing key; other keys change nothing."""
        text, at = self.text, self.cursor
        if key == "backspace":
            if at:
                self.text, self.cursor = text[:at - 1] + text[at:], at - 1
        elif key == "delete":
            self.text = text[:at] + text[at + 1:]
        elif key == "left":
            self.cursor = max(0, at - 1)
        elif key == "right":
            self.cursor = min(len(text), at + 1)
        elif key == "home":
            self.cursor = 0
        elif key == "end":
            self.cursor = len(text)
        elif key == "ctrl-u":
            self.text, self.cursor = text[at:], 0
        elif key == "ctrl-w":
            start = len(text[:at].rstrip().rpartition(" ")[0])
            start = start + 1 if start else 0
            self.text, self.cursor = text[:start] + text[at:], start
        elif len(key) == 1 and key.isprintable() and len(text) < self.limit:
            self.text, self.cursor = text[:at] + key + text[at:], at + 1

    def render(self, width: int) -> Text:
        """The prompt and as much of the text as fits, scrolled so the
        cursor shows."""
        room = max(1, width - len(self.prompt) - 1)
        start = max(0, self.cursor - room + 1)
        shown = self.text[start:start + room]
        at = self.cursor - start
        line = Text(self.prompt, style="bold")
        line.append(clean(shown[:at]))
        line.append(clean(shown[at:at + 1]) or " ", style="reverse")
        line.append(clean(shown[at + 1:]))
        return line


class Screen(enum.Enum):
    TABLE = "table"
    READER = "reader"


# The keys as help shows them, and docs/terminal.md.
KEY_HELP: tuple[tuple[str, str], ...] = (
    ("↑ ↓  j k", "select a reader (the table scrolls with the selection)"),
    ("PgUp PgDn  g G", "a page up or down; the first or the last reader"),
    ("Enter", "open the selected reader: state, open signals, messages, recent history"),
    ("Esc", "back to the table; in the table, clear the filter"),
    ("r", "reply to the reader: type in the footer, Enter sends, Esc cancels"),
    ("m", "mark the reader's messages read"),
    ("a", "acknowledge (take) the reader's oldest open signal nobody took yet"),
    ("/", "filter by name or email as you type: Enter keeps it, Esc cancels"),
    ("f", "only my readers / all readers (opens the streams again)"),
    ("s", "cycle the sort: attention, name, last seen, progress"),
    ("?", "this help (any key closes it)"),
    ("q", "quit"),
)
T = TypeVar("T")


class Terminal:
    """The keyboard side of the terminal: screen state, and the actions keys
    start. Keys are handled at once; the calls they make run as tasks on
    the event loop, so typing never waits for the server (`settle()` waits
    for them, for tests)."""

    def __init__(self, model: WatchModel, actions: Actions | None = None, *, interactive: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.model = model
        self.actions = actions
        self.interactive = interactive
        self.clock = clock
        self.order = ReaderOrder(model)
        self.screen = Screen.TABLE
        self.help = False
        self.quit = False
        self.editor: LineEditor | None = None
        self._editing = ""
        self._reply_to = ""
        self._filter_before = ""
        # The open reader.
        self.detail: str | None = None
        self.details: ReaderDetails | None = None
        self.detail_error = ""
        self._detail_changes = -1
        self._detail_loading = False
        self._detail_loaded_at = -float("inf")
        self.notice = ""
        self.notice_error = False
        self._notice_until = 0.0
        # Called after anything that changes the screen (to redraw at once).
        self.on_change: Callable[[], None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._keys: dict[str, Callable[[], None]] = {
            "up": lambda: self.order.move(-1), "k": lambda: self.order.move(-1),
            "down": lambda: self.order.move(1), "j": lambda: self.order.move(1),
            "pageup": lambda: self.order.move(-self.order.page),
            "pagedown": lambda: self.order.move(self.order.page),
            "home": lambda: self.order.move_to(0), "g": lambda: self.order.move_to(0),
            "end": lambda: self.order.move_to(len(self.order.names)),
            "G": lambda: self.order.move_to(len(self.order.names)),
            "enter": self.open_selected, "esc": self.back, "r": self.start_reply, "m": self.mark_read,
            "a": self.acknowledge, "/": self.start_filter, "f": self.toggle_mine, "s": self.next_sort,
            "?": self.toggle_help, "q": self.stop, "ctrl-c": self.stop,
        }

    # --- keys ----------------------------------------------------------------

    def press(self, key: str) -> None:
        # Keys act on the order the next frame shows.
        self.order.refresh(self.clock())
        if self.editor is not None:
            self._edit(key)
        elif self.help:
            self.help = False
            if key in ("q", "ctrl-c"):
                self.stop()
        else:
            action = self._keys.get(key)
            if action is not None:
                self.notice = ""
                action()
        self._changed()

    def press_all(self, keys: Iterable[str]) -> None:
        """Several keys (a word types as its letters)."""
        for key in keys:
            self.press(key)

    def _edit(self, key: str) -> None:
        editor = self.editor
        assert editor is not None
        if key == "enter":
            self.editor = None
            if self._editing == "reply":
                self._send(self._reply_to, editor.text.strip())
            return
        if key in ("esc", "ctrl-c"):
            self.editor = None
            if self._editing == "filter":
                self.order.filter = self._filter_before
            else:
                self.say("reply cancelled")
            return
        editor.key(key)
        if self._editing == "filter":
            self.order.filter = editor.text

    def target(self) -> str | None:
        """The reader r, m and a act on: the open one, else the selected one."""
        return self.detail if self.screen is Screen.READER else self.order.selected

    def open_selected(self) -> None:
        name = self.order.selected
        if self.screen is Screen.READER or name is None:
            return
        self.screen, self.detail, self.details, self.detail_error = Screen.READER, name, None, ""
        self._load_detail()

    def back(self) -> None:
        if self.screen is Screen.READER:
            self.screen, self.detail, self.details = Screen.TABLE, None, None
        elif self.order.filter:
            self.order.filter = ""
            self.say("filter cleared")

    def start_reply(self) -> None:
        name = self.target()
        if name is None:
            self.say("no reader selected", error=True)
            return
        self._reply_to = name
        self._begin_edit("reply", LineEditor(f"Reply to {clean(self.model.label(name))}: "))

    def start_filter(self) -> None:
        self.model.want_emails()
        self._filter_before = self.order.filter
        self._begin_edit("filter", LineEditor("Filter (name or email): ", self.order.filter, limit=100))

    def _begin_edit(self, purpose: str, editor: LineEditor) -> None:
        self._editing, self.editor = purpose, editor

    def next_sort(self) -> None:
        self.order.sort = SORTS[(SORTS.index(self.order.sort) + 1) % len(SORTS)]
        self.say(f"sorted by {self.order.sort}")

    def toggle_help(self) -> None:
        self.help = True

    def stop(self) -> None:
        self.quit = True

    def toggle_mine(self) -> None:
        actions = self.actions
        if actions is None:
            self.say("not connected", error=True)
            return
        actions.set_only_my_readers(not actions.only_my_readers)
        self.say("showing my readers" if actions.only_my_readers else "showing all readers")

    # --- actions -------------------------------------------------------------

    def mark_read(self) -> None:
        name = self.target()
        if name is None:
            self.say("no reader selected", error=True)
            return
        self._spawn(self._mark_read(name))

    async def _mark_read(self, name: str) -> None:
        read = await self._call("marking read", lambda actions: actions.mark_read(name))
        if read is not None:
            self.model.apply_read(name, read)
            self.say(f"marked {clean(self.model.label(name))}'s messages read")

    def _send(self, name: str, body: str) -> None:
        if not body:
            self.say("nothing to send")
            return
        self.say(f"sending to {clean(self.model.label(name))}…")
        self._spawn(self._send_message(name, body))

    async def _send_message(self, name: str, body: str) -> None:
        sent = await self._call("sending", lambda actions: actions.send_message(name, body))
        if sent is not None:
            self.say(f"sent to {clean(self.model.label(name))}")
            if self.detail == name:
                self._load_detail()

    def acknowledge(self) -> None:
        name = self.target()
        row = self.model.readers.get(name) if name is not None else None
        waiting = [s for s in row.open_signals() if not s.acknowledged_by] if row is not None else []
        if not waiting:
            self.say("no open signal to acknowledge" if row is None or not row.signals
                     else "every open signal is taken already")
            return
        signal = waiting[0]
        self._spawn(self._acknowledge(signal))

    async def _acknowledge(self, signal: pb.AttentionSignal) -> None:
        taken = await self._call("acknowledging", lambda actions: actions.acknowledge(signal.name))
        if taken is not None:
            self.model.merge_signals([taken])
            self.say(f"{RULE_BADGES.get(signal.rule, 'signal')} of {clean(self.model.label(signal.reader))} "
                     "is yours")

    def _load_detail(self) -> None:
        if self.detail is not None and not self._detail_loading:
            self._detail_loading = True
            self._spawn(self._fetch_detail(self.detail))

    async def _fetch_detail(self, name: str) -> None:
        row = self.model.readers.get(name)
        changes = row.changes if row is not None else 0
        try:
            details = await self._call("opening the reader", lambda actions: actions.reader_details(name))
        finally:
            self._detail_loading = False
            self._detail_loaded_at = self.clock()
        if details is None or self.detail != name:
            self.detail_error = self.notice if details is None and self.detail == name else ""
            return
        self.model.apply_profile(details.reader)
        self.model.merge_signals(details.signals)
        self.details, self.detail_error, self._detail_changes = details, "", changes

    async def _call(self, what: str, call: Callable[[Actions], Awaitable[T]]) -> T | None:
        """Make a call the keys asked for; a failure becomes a notice."""
        if self.actions is None:
            self.say(f"{what}: not connected", error=True)
            return None
        try:
            return await call(self.actions)
        except aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.say(f"{what}: this server does not offer it yet", error=True)
            else:
                self.say(f"{what} failed ({_details(error)})", error=True)
        except WatchError as error:
            self.say(f"{what} failed ({error})", error=True)
        return None

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a terminal action failed", exc_info=task.exception())
        self._changed()

    async def settle(self) -> None:
        """Wait for the calls keys started (and the ones those started)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()

    def say(self, text: str, error: bool = False) -> None:
        self.notice, self.notice_error = text, error
        self._notice_until = self.clock() + NOTICE_SECONDS

    def current_notice(self) -> str:
        return self.notice if self.notice and self.clock() < self._notice_until else ""

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def tick(self) -> None:
        """Once a frame: sort when due; fetch the open reader again when its
        events came in."""
        now = self.clock()
        self.order.refresh(now)
        if self.screen is Screen.READER and self.detail is not None and not self._detail_loading:
            row = self.model.readers.get(self.detail)
            if (row is not None and row.changes != self._detail_changes
                    and now - self._detail_loaded_at >= DETAIL_REFRESH_SECONDS):
                self._load_detail()


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------

STATUS_NAMES: dict[int, str] = {
    pb.READER_STATUS_UNSPECIFIED: "",
    pb.READER_STATUS_ACTIVE: "active",
    pb.READER_STATUS_COMPLETED: "completed",
    pb.READER_STATUS_PAUSED: "paused",
}
PRESENCE_NAMES: dict[int, str] = {
    pb.PRESENCE_UNSPECIFIED: "?",
    pb.PRESENCE_READING: "reading",
    pb.PRESENCE_ONLINE: "online",
    pb.PRESENCE_IDLE: "idle",
}
PRESENCE_STYLES: dict[int, str] = {pb.PRESENCE_READING: "green", pb.PRESENCE_ONLINE: "yellow", pb.PRESENCE_IDLE: "dim"}
FEED_STYLES: dict[int, str] = {
    pb.EVENT_KIND_INTERACTION_RECORDED: "",
    pb.EVENT_KIND_READER_STATE_CHANGED: "cyan",
    pb.EVENT_KIND_MESSAGE_SENT: "bold magenta",
    pb.EVENT_KIND_MESSAGE_READ: "magenta",
    pb.EVENT_KIND_PRESENCE_CHANGED: "dim",
    pb.EVENT_KIND_ATTENTION_CHANGED: "bold red",
}
BADGE_STYLES: dict[int, str] = {
    pb.ATTENTION_RULE_STUCK: "bold white on red",
    pb.ATTENTION_RULE_STRUGGLING: "bold black on yellow",
    pb.ATTENTION_RULE_STALLED: "bold white on blue",
    pb.ATTENTION_RULE_ASKED_FOR_HELP: "bold white on magenta",
}

# Text from readers goes to a terminal: no control characters (escape
# sequences) and no bidirectional overrides.
_UNSAFE = {c: " " for c in (*range(0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A))}
_SAFE = str.maketrans(_UNSAFE)


def clean(text: str) -> str:
    return text.translate(_SAFE)


def ago(seconds: float) -> str:
    if seconds < 0:
        seconds = 0
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h"
    return f"{seconds // 86400:.0f}d"


def progress_bar(progress: float, width: int = 8) -> Text:
    progress = min(max(progress, 0.0), 1.0)
    filled = round(progress * width)
    bar = Text("█" * filled, style="green")
    bar.append("░" * (width - filled), style="dim")
    bar.append(f" {progress:4.0%}")
    return bar


def short_id(name: str) -> str:
    """`consultants/4f9c2a…` as `4f9c2a`, for narrow cells."""
    return name.rpartition("/")[2][:6]


def badge(signal: pb.AttentionSignal, me: str) -> Text:
    """The rule, loud while nobody took it; then ✓ when I took it, or ✓ and
    who did."""
    label = RULE_BADGES.get(signal.rule, "ATTENTION")
    taker = signal.acknowledged_by
    if not taker:
        return Text(label, style=BADGE_STYLES.get(signal.rule, "bold red"))
    return Text(f"{label}✓" if taker == me else f"{label}✓{short_id(taker)}", style="dim")


def badges(row: ReaderRow, me: str) -> Text:
    """One badge per open signal, oldest first."""
    return Text(" ").join(badge(signal, me) for signal in row.open_signals())


class Cells(NamedTuple):
    now_ns: int
    me: str


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: its cell, how wide it may grow, and which columns
    give way first on a narrow terminal (higher drops sooner; 0 never)."""

    title: str
    cell: Callable[[ReaderRow, Cells], Text]
    right: bool = False
    most: int = 40
    drop: int = 0
    fill: bool = False


COLUMNS: tuple[Column, ...] = (
    Column("Reader", lambda row, c: Text(clean(row.label)), most=28),
    Column("Attention", lambda row, c: badges(row, c.me), most=36),
    Column("Unread", lambda row, c: Text(str(row.unread), style="bold magenta") if row.unread else Text(""),
           right=True, most=6, drop=1),
    Column("Progress", lambda row, c: progress_bar(row.progress), most=13, drop=5),
    Column("Step", lambda row, c: Text(str(row.step)), right=True, most=6, drop=6),
    Column("Status", lambda row, c: Text(STATUS_NAMES.get(row.status, "")), most=9, drop=7),
    Column("Presence", lambda row, c: Text(PRESENCE_NAMES.get(row.presence, "?"),
                                           style=PRESENCE_STYLES.get(row.presence, "")), most=8, drop=3),
    Column("Seen", lambda row, c: Text(ago((c.now_ns - row.last_seen_ns) / NS) if row.last_seen_ns else "-"),
           right=True, most=5, drop=4),
    Column("Last activity", lambda row, c: Text(clean(row.activity)), most=10_000, drop=2, fill=True),
)
GAP = "  "
# Reader names in the feed and the pinned lines line up at this width.
FEED_NAME_WIDTH = 16
# The narrowest the last activity gets before it gives way altogether.
MIN_FILL = 12


def fit_columns(columns: tuple[Column, ...], widths: list[int], width: int) -> list[int]:
    """Widths that fit `width`: the filling column takes what is left; when
    even that is too little, the columns that drop first go (width 0)."""
    widths = list(widths)
    gap = len(GAP)
    order = sorted((c.drop, i) for i, c in enumerate(columns) if c.drop)
    while True:
        shown = [i for i, w in enumerate(widths) if w > 0]
        used = sum(widths[i] for i in shown if not columns[i].fill) + gap * (len(shown) - 1)
        fill = next((i for i in shown if columns[i].fill), None)
        if fill is not None and width - used - gap >= MIN_FILL:
            widths[fill] = width - used - gap
            return widths
        if fill is None and used <= width:
            return widths
        if not order:
            return widths
        widths[order.pop()[1]] = 0


class WatchView:
    """Renders a model, the terminal's state and the client's status to a
    frame of a given size."""

    def __init__(self, model: WatchModel, client: WatchClient | None = None, title: str = "",
                 terminal: Terminal | None = None) -> None:
        self.model = model
        self.client = client
        self.title = title
        self.terminal = terminal if terminal is not None else Terminal(model, client, interactive=False)
        # time.gmtime in tests, for stable captures.
        self.localtime: Callable[[float], time.struct_time] = time.localtime

    def frame(self, console: Console, now_ns: int | None = None) -> RenderableType:
        return self.render(console.size.height, now_ns, console.size.width)

    def render(self, height: int, now_ns: int | None = None, width: int = DEFAULT_WIDTH) -> RenderableType:
        """Exactly `height` lines of at most `width` cells."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        term = self.terminal
        term.tick()
        footer = 1 if term.interactive else 0
        body = max(0, height - 1 - footer)
        if term.help:
            lines = self.help_lines(width)
        elif term.screen is Screen.READER:
            lines = self.reader_lines(body, width, now_ns)
        else:
            lines = self.table_screen(body, width, now_ns)
        lines = [self.header(width), *lines[:body]]
        lines += [Text() for _ in range(height - footer - len(lines))]
        if footer:
            lines.append(self.footer(width))
        for line in lines:
            line.no_wrap, line.overflow, line.end = True, "ellipsis", "\n"
        return Group(*lines[:height])

    # --- the header and the footer -------------------------------------------

    def header(self, width: int) -> Text:
        model, client = self.model, self.client
        status = client.status_line() if client is not None else ("live" if model.snapshot_complete else "")
        style = "bold green" if status == "live" else "bold yellow"
        if client is not None and client.fatal:
            style = "bold red"
        counts = model.presence_counts()
        actions = self.terminal.actions
        scope = "my readers" if actions is not None and actions.only_my_readers else "all readers"
        facts = (f"  {len(model.readers)} readers: {counts.get(pb.PRESENCE_READING, 0)} reading, "
                 f"{counts.get(pb.PRESENCE_ONLINE, 0)} online, {counts.get(pb.PRESENCE_IDLE, 0)} idle"
                 f" · {model.waiting()} waiting · {model.total_unread()} unread · {scope}")
        if client is not None and client.attention_available is False:
            facts += " · no signals on this server"
        if client is not None and client.dashboard is False:
            facts += " · every event (no WatchReaders on this server)"
        if self.title:
            facts += f" · {clean(self.title)}"
        text = Text("Cursor watch ", style="bold")
        # The status gets what the counts leave, and at least 48 cells (the
        # counts give way): a long disconnect reason is cut short, not the
        # line wrapped.
        room = min(width - len(text) - 2, max(48, width - len(text) - 2 - len(facts)))
        shown = clean(status)
        if len(shown) > room:
            shown = shown[:room - 1] + "…"
        text.append(f"[{shown}]", style=style)
        text.append(facts)
        text.truncate(width, overflow="ellipsis")
        return text

    def footer(self, width: int) -> Text:
        term = self.terminal
        if term.editor is not None:
            return term.editor.render(width)
        notice = term.current_notice()
        if notice:
            return Text(clean(notice), style="bold red" if term.notice_error else "bold")
        if term.screen is Screen.READER:
            hints = "Esc back  r reply  m mark read  a acknowledge  ? help  q quit"
        else:
            hints = "? help  q quit  ↑↓ select  Enter open  r reply  m read  a ack  / filter  f mine  s sort"
        return Text(hints, style="dim")

    # --- the readers table, pinned lines and the feed ------------------------

    def table_screen(self, body: int, width: int, now_ns: int) -> list[Text]:
        model = self.model
        feed_rows = max(2, min(12, body // 4))
        pinned_rows = min(max(1, len(model.pinned)), max(1, body // 6))
        table_rows = max(1, body - 2 - (pinned_rows + 1) - (feed_rows + 1))
        lines = self.table_lines(table_rows, width, now_ns)
        lines.append(title_line(f"Messages and signals ({len(model.pinned)})", width))
        lines += self.feed_lines(model.pinned, pinned_rows, "no messages or signals yet")
        lines.append(title_line("Activity", width))
        lines += self.feed_lines(model.feed, feed_rows, "nothing yet")
        return lines

    def table_lines(self, rows: int, width: int, now_ns: int) -> list[Text]:
        """The title, the column heads and `rows` readers from the selection's
        page; columns as wide as what they show."""
        model, term = self.model, self.terminal
        order = term.order
        shown = [model.readers[name] for name in order.visible(rows) if name in model.readers]
        total = len(order.names)
        span = f"{order.top + 1}-{order.top + len(shown)} of {total}" if shown else f"0 of {total}"
        where = f" · filter “{clean(order.filter)}”" if order.filter else ""
        out = [title_line(f"Readers {span} · sort: {order.sort}{where}", width)]
        cells = Cells(now_ns, model.me)
        grid = [[column.cell(row, cells) for column in COLUMNS] for row in shown]
        widths = [min(column.most, max([len(column.title), *(line[i].cell_len for line in grid)]))
                  for i, column in enumerate(COLUMNS)]
        marker = 2 if term.interactive else 0
        widths = fit_columns(COLUMNS, widths, width - marker)
        heads = [Text(column.title) for column in COLUMNS]
        out.append(self._row(heads, widths, " " * marker, "bold"))
        selected = order.selected
        for row, line in zip(shown, grid, strict=True):
            mine = term.interactive and row.name == selected
            prefix = ("▶ " if mine else "  ") if marker else ""
            out.append(self._row(line, widths, prefix, "reverse" if mine else ""))
        out += [Text() for _ in range(rows - len(shown))]
        return out

    @staticmethod
    def _row(cells: list[Text], widths: list[int], prefix: str, style: str) -> Text:
        line = Text(prefix)
        first = True
        for cell, width, column in zip(cells, widths, COLUMNS, strict=True):
            if width <= 0:
                continue
            if not first:
                line.append(GAP)
            first = False
            cell.truncate(width, overflow="ellipsis")
            pad = " " * (width - cell.cell_len)
            if column.right:
                line.append(pad)
                line.append_text(cell)
            else:
                line.append_text(cell)
                if not column.fill:
                    line.append(pad)
        if style:
            line.stylize(style)
        return line

    def feed_lines(self, lines: deque[FeedLine], rows: int, empty: str) -> list[Text]:
        recent = list(itertools.islice(reversed(lines), max(rows, 0)))[::-1]
        out = [self.feed_line(line) for line in recent]
        if not out and rows > 0:
            out.append(Text(f"  {empty}", style="dim italic"))
        return out + [Text() for _ in range(rows - len(out))]

    def feed_line(self, line: FeedLine) -> Text:
        out = Text(f"{self.stamp(line.time_ns)}  ", style="dim")
        out.append_text(name_cell(self.model.label(line.reader), "bold"))
        out.append(clean(line.text), style=FEED_STYLES.get(line.kind, ""))
        return out

    def stamp(self, time_ns: int) -> str:
        return time.strftime("%H:%M:%S", self.localtime(time_ns / NS))

    # --- the open reader --------------------------------------------------------

    def reader_lines(self, body: int, width: int, now_ns: int) -> list[Text]:
        model, term = self.model, self.terminal
        name = term.detail or ""
        row = model.readers.get(name) or ReaderRow(name)
        email = f" <{clean(row.email)}>" if row.email else ""
        out = [title_line(f"{clean(row.label)}{email} · {name}", width)]
        seen = ago((now_ns - row.last_seen_ns) / NS) + " ago" if row.last_seen_ns else "never"
        state = Text("  ")
        state.append(STATUS_NAMES.get(row.status, "") or "no status")
        state.append(" · ")
        state.append(PRESENCE_NAMES.get(row.presence, "?"), style=PRESENCE_STYLES.get(row.presence, ""))
        state.append(" · ")
        state.append_text(progress_bar(row.progress))
        state.append(f" · step {row.step} · seen {seen} · {row.unread} unread")
        out.append(state)
        if row.activity:
            out.append(Text(f"  last: {clean(row.activity)}", style="dim"))
        signals = row.open_signals()
        out.append(title_line(f"Open signals ({len(signals)})", width))
        for signal in signals[:6]:
            out.append(self.signal_line(signal, now_ns))
        if not signals:
            out.append(Text("  none", style="dim italic"))
        details = term.details
        left = body - len(out) - 2
        if details is None:
            out.append(title_line("Messages", width))
            waiting = f"could not load: {term.detail_error}" if term.detail_error else "loading…"
            out.append(Text(f"  {clean(waiting)}", style="dim italic"))
            return out
        message_rows = max(1, left // 2)
        out.append(title_line(f"Messages (newest last, {len(details.messages)} loaded)", width))
        out += self.message_lines(details, message_rows)
        out.append(title_line("Recent history (newest first)", width))
        for interaction in details.interactions[:max(0, left - message_rows)]:
            line = Text(f"  {self.stamp(_ns(interaction.create_time))}  ", style="dim")
            line.append(clean(interaction.type), style="bold")
            if interaction.summary:
                line.append(f"  {clean(interaction.summary)}")
            out.append(line)
        if not details.interactions:
            out.append(Text("  none", style="dim italic"))
        return out

    def signal_line(self, signal: pb.AttentionSignal, now_ns: int) -> Text:
        line = Text("  ")
        line.append_text(badge(signal, self.model.me))
        line.append(f"  {clean(signal.summary)}")
        raised = _ns(signal.raise_time)
        if raised:
            line.append(f" · raised {ago((now_ns - raised) / NS)} ago", style="dim")
        if signal.acknowledged_by:
            line.append(f" · taken by {clean(self.model.consultant_label(signal.acknowledged_by))}", style="dim")
        return line

    def message_lines(self, details: ReaderDetails, rows: int) -> list[Text]:
        model = self.model
        mine = next((r.last_read_sequence for r in details.reads if r.participant == model.me), 0)
        out: list[Text] = []
        for message in reversed(details.messages[:rows]):
            if message.direction == pb.MESSAGE_DIRECTION_FROM_READER:
                who, style = model.label(details.reader.name), "bold"
            elif message.direction == pb.MESSAGE_DIRECTION_TO_READER:
                who, style = model.consultant_label(message.author), "bold cyan"
            else:
                who, style = "notice", "dim"
            new = message.direction == pb.MESSAGE_DIRECTION_FROM_READER and message.sequence > mine
            line = Text(f"{'•' if new else ' '} {self.stamp(_ns(message.create_time))}  ", style="dim")
            line.append_text(name_cell(who, style))
            line.append(clean(message.body))
            out.append(line)
        if not out:
            out.append(Text("  no messages", style="dim italic"))
        return out

    # --- help ---------------------------------------------------------------------

    def help_lines(self, width: int) -> list[Text]:
        out = [title_line("Keys (any key closes this)", width)]
        for keys, what in KEY_HELP:
            line = Text(f"  {keys:<16}", style="bold")
            line.append(what)
            out.append(line)
        out.append(title_line("The table", width))
        for text in (
            "Sort attention: untaken signals (longest waiting first), taken signals, unread, then the rest,",
            "  most recent activity first. Rows move at once only when signals or unread messages change;",
            f"  by recency every {RESORT_SECONDS:g} s.",
            "Badges: STUCK, STRUGGLING, STALLED, HELP; ✓ when you took it, ✓ and an id when another did.",
        ):
            out.append(Text(f"  {text}"))
        return out


def name_cell(name: str, style: str) -> Text:
    """A name padded to a fixed width and a gap, so what follows lines up."""
    cell = Text(clean(name), style=style)
    cell.truncate(FEED_NAME_WIDTH, overflow="ellipsis", pad=True)
    cell.append("  ")
    return cell


def title_line(title: str, width: int) -> Text:
    """`── Title ─────…` across the width."""
    line = Text("── ", style="dim")
    line.append(title, style="bold")
    line.append(" " + "─" * max(0, width - len(title) - 4), style="dim")
    return line


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------


def read_password() -> str:
    """From CURSOR_PASSWORD, else a prompt; never a flag."""
    from_env = os.environ.get("CURSOR_PASSWORD")
    if from_env:
        return from_env
    if not sys.stdin.isatty():
        raise WatchError("set CURSOR_PASSWORD or run in a terminal to be asked for the password")
    return getpass.getpass("Password: ")


@contextlib.contextmanager
def keyboard(fd: int, on_key: Callable[[str], None]) -> Iterator[None]:
    """Keys as they are typed, read on the event loop: the terminal in
    cbreak mode (no echo, no line buffering; Ctrl-C still interrupts), its
    settings restored on the way out, whatever happens."""
    import termios
    import tty

    loop = asyncio.get_running_loop()
    saved = termios.tcgetattr(fd)
    keys = KeyDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def readable() -> None:
        try:
            data = os.read(fd, 1024)
        except (BlockingIOError, InterruptedError):
            return
        if not data:  # end of input: no more keys
            loop.remove_reader(fd)
            return
        for key in keys.feed(utf8.decode(data)):
            on_key(key)

    tty.setcbreak(fd, termios.TCSANOW)
    try:
        loop.add_reader(fd, readable)
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def watch_live(client: WatchClient, view: WatchView, console: Console, fps: float = FPS) -> None:
    """Full screen, redrawn `fps` times a second whatever the event rate,
    and at once after a key; keys only when stdin is a terminal."""
    task = asyncio.create_task(client.run())
    terminal = view.terminal
    wake = asyncio.Event()
    terminal.on_change = wake.set
    period = 1.0 / fps
    try:
        with contextlib.ExitStack() as stack:
            if sys.stdin.isatty():
                stack.enter_context(keyboard(sys.stdin.fileno(), terminal.press))
            live = stack.enter_context(Live(console=console, screen=True, auto_refresh=False,
                                            redirect_stderr=False))
            next_frame = time.monotonic()
            while not task.done() and not terminal.quit:
                wake.clear()
                live.update(view.frame(console), refresh=True)
                next_frame = max(next_frame + period, time.monotonic())
                woken = asyncio.ensure_future(wake.wait())
                await asyncio.wait({task, woken}, timeout=next_frame - time.monotonic(),
                                   return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
    finally:
        terminal.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def watch_for(client: WatchClient, once: bool, duration: float | None) -> None:
    """Run until the first snapshot is in (`once`) or for `duration` seconds,
    whichever comes first; also stops when the client gives up."""
    task = asyncio.create_task(client.run())
    waits: set[asyncio.Future[object]] = {task}  # type: ignore[arg-type]
    synced = asyncio.ensure_future(client.synced.wait()) if once else None
    if synced is not None:
        waits.add(synced)  # type: ignore[arg-type]
    try:
        await asyncio.wait(waits, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in (task, synced):
            if waiting is not None:
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting


def run_watch_command(args: argparse.Namespace) -> int:
    """`cursor-grpc watch`."""
    once, duration = bool(args.once), args.duration
    if duration is not None and duration <= 0:
        print("cursor-grpc watch: --duration must be positive", file=sys.stderr)
        return 2
    to_file = once or duration is not None
    if not to_file and not sys.stdout.isatty():
        print("cursor-grpc watch: stdout is not a terminal; use --once or --duration", file=sys.stderr)
        return 2
    try:
        password = read_password()
    except WatchError as error:
        print(f"cursor-grpc watch: {error}", file=sys.stderr)
        return 2
    model = WatchModel()
    client = WatchClient(model, args.server, args.email, password, tls=bool(args.tls), ca_file=args.ca_file,
                         only_my_readers=bool(args.mine))
    terminal = Terminal(model, client, interactive=not to_file)
    view = WatchView(model, client, title=f"{args.email} @ {args.server}", terminal=terminal)
    try:
        if to_file:
            # --once alone still gives up some time: a script should not hang.
            asyncio.run(watch_for(client, once, duration if duration is not None else 30.0))
            console = Console(file=sys.stdout, width=args.width, height=args.height, force_terminal=False)
            console.print(view.render(args.height, width=args.width))
        else:
            console = Console()
            asyncio.run(watch_live(client, view, console))
    except KeyboardInterrupt:
        return 0
    if client.fatal:
        print(f"cursor-grpc watch: {client.fatal}", file=sys.stderr)
        return 1
    if not model.snapshot_complete:
        print(f"cursor-grpc watch: no snapshot received ({client.status})", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------
# The redraw benchmark: python -m cursor_grpc.watch_view --readers 1000
# --------------------------------------------------------------------------


def synthetic_model(readers: int, now_ns: int, seed: int = 7) -> WatchModel:
    """A WatchReaders snapshot of `readers` active readers, a tenth of them
    with signals or unread messages, and a full feed: what a busy class
    looks like."""
    rng = random.Random(seed)
    model = WatchModel(me="consultants/me", dashboard=True)
    model.begin_snapshot()
    rules = list(RULE_BADGES)
    snapshot = []
    for i in range(readers):
        name = f"readers/r{i:05}"
        update = cpb.ReaderUpdate(reader=name, display_name=f"Reader {i:05} {'x' * rng.randrange(12)}",
                                  last_activity_type="answer", last_activity_summary=f"question {i % 40}: no")
        state = update.state
        state.status, state.progress, state.current_step = pb.READER_STATUS_ACTIVE, rng.random(), rng.randrange(40)
        state.presence = rng.choice((pb.PRESENCE_READING, pb.PRESENCE_ONLINE, pb.PRESENCE_IDLE))
        state.last_seen_time.FromNanoseconds(now_ns - rng.randrange(300) * NS)
        update.last_activity_time.CopyFrom(state.last_seen_time)
        if i % 10 == 0:
            signal = update.attention.add(name=f"{name}/attentionSignals/s{i}", reader=name,
                                          rule=rules[i // 10 % len(rules)], state=pb.ATTENTION_STATE_OPEN,
                                          summary="stuck on step 7 for 6 min")
            signal.raise_time.FromNanoseconds(now_ns - i * NS)
        snapshot.append(update)
    for start in range(0, readers, 200):
        model.apply_readers(cpb.WatchReadersResponse(updates=snapshot[start:start + 200]))
    model.apply_readers(cpb.WatchReadersResponse(
        unread_counts=[cpb.UnreadCount(reader=f"readers/r{i:05}", unread=1 + i % 3) for i in range(5, readers, 20)],
        snapshot_complete=True, cursor="bench-0"))
    events = cpb.WatchActivityResponse()
    for n in range(1, 2 * FEED_LINES):
        event = events.events.add(event_id=n, kind=pb.EVENT_KIND_INTERACTION_RECORDED,
                                  reader=f"readers/r{rng.randrange(readers):05}")
        event.interaction.type, event.interaction.summary = "answer", f"question {n}: {'yes' if n % 3 else 'no'}"
        event.create_time.FromNanoseconds(now_ns - (2 * FEED_LINES - n) * NS)
    model.apply(events)
    return model


class BenchResult(NamedTuple):
    readers: int
    width: int
    height: int
    frames: int
    median_ms: float
    p95_ms: float
    resort_ms: float


def benchmark(readers: int = 1000, width: int = 200, height: int = 50, frames: int = 200) -> BenchResult:
    """What one redraw costs: building the frame and writing it, with colours,
    to a console of `width` x `height` (to memory, so a terminal's own speed
    is not in it). A full re-sort of the table is timed apart: it happens
    every few seconds, not every frame."""
    now_ns = time.time_ns()
    model = synthetic_model(readers, now_ns)
    terminal = Terminal(model)
    view = WatchView(model, terminal=terminal, title="bench")
    out = io.StringIO()
    console = Console(file=out, width=width, height=height, force_terminal=True, color_system="truecolor")
    times = []
    for i in range(frames + 10):
        terminal.press("j")
        started = time.perf_counter()
        console.print(view.render(height, now_ns, width))
        elapsed = time.perf_counter() - started
        out.seek(0)
        out.truncate()
        if i >= 10:  # warm-up frames do not count
            times.append(elapsed * 1000)
    resorts = []
    for i in range(20):
        started = time.perf_counter()
        terminal.order.refresh(terminal.order.sorted_at + RESORT_SECONDS + i)
        resorts.append((time.perf_counter() - started) * 1000)
    times.sort()
    return BenchResult(readers, width, height, frames, statistics.median(times), times[int(len(times) * 0.95) - 1],
                       statistics.median(resorts))


def bench_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cursor_grpc.watch_view",
                                     description="Measure what one redraw of the watch terminal costs.")
    parser.add_argument("--readers", type=int, default=1000, help="active readers (default 1000)")
    parser.add_argument("--width", type=int, default=200, help="console columns (default 200)")
    parser.add_argument("--height", type=int, default=50, help="console lines (default 50)")
    parser.add_argument("--frames", type=int, default=200, help="frames to time (default 200)")
    args = parser.parse_args(argv)
    result = benchmark(args.readers, args.width, args.height, args.frames)
    print(f"{result.readers} readers, {result.width}x{result.height}: {result.median_ms:.2f} ms per frame "
          f"(median of {result.frames}; p95 {result.p95_ms:.2f} ms); a full re-sort {result.resort_ms:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(bench_main())
