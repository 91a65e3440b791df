"""`cursor-grpc watch`: the consultant's live terminal view.

Three parts, kept apart so each can be tested on its own:

* `WatchModel` applies WatchActivity responses (snapshot, events of every
  kind, unread counts) to a table of readers and a bounded feed. No I/O, no
  rendering; applying an event costs the same whatever the table holds.
* `WatchClient` signs in as a consultant, keeps one WatchActivity stream
  open and feeds the model: it resumes behind the last cursor after a lost
  connection (exponential backoff), starts over with a fresh snapshot when
  the cursor is refused as out of range, and signs in again once when the
  session is refused.
* `WatchView` renders the model with rich at a fixed frame rate, showing
  only the rows that fit, so its cost depends on the terminal size, not on
  the number of readers or the event rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import heapq
import itertools
import logging
import os
import random
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from rich.console import Console, RenderableType
from rich.layout import Layout
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cursor.v1 import auth_service_pb2, auth_service_pb2_grpc, consultant_service_pb2_grpc
from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import resources_pb2 as pb

log = logging.getLogger("cursor.watch")

FEED_LINES = 200
FPS = 4.0
NS = 1_000_000_000

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
    # update_time of the state applied last; 0 before any state.
    state_ns: int = 0
    # Unread messages from the reader as ListUnreadCounts reported them, plus
    # the sequences of the ones the stream brought since.
    unread_base: int = 0
    unread_seqs: list[int] = field(default_factory=list)
    # True once the profile (display name) is known.
    resolved: bool = False

    @property
    def unread(self) -> int:
        return self.unread_base + len(self.unread_seqs)


class FeedLine(NamedTuple):
    time_ns: int
    reader: str
    kind: int
    text: str


class WatchModel:
    """The readers table and the activity feed, built from WatchActivity
    responses. `me` is the signed-in consultant (`consultants/{id}`): its
    own read positions reset unread counts."""

    def __init__(self, me: str = "", feed_size: int = FEED_LINES, feed_heartbeats: bool = False) -> None:
        self.me = me
        self.feed_heartbeats = feed_heartbeats
        self.readers: dict[str, ReaderRow] = {}
        self.feed: deque[FeedLine] = deque(maxlen=feed_size)
        # Where the stream stands; empty before the first cursor.
        self.cursor = ""
        self.snapshot_complete = False
        self.last_event_id = 0
        self.events_applied = 0
        self.duplicates = 0
        self.responses = 0
        self.last_response_ns = 0
        self._staging: dict[str, ReaderRow] | None = None
        self._unresolved: set[str] = set()

    # --- stream responses ----------------------------------------------------

    def begin_snapshot(self) -> None:
        """A stream with a snapshot is opening: its readers replace the table
        when it completes (the old table stays on screen until then), and
        event ids count again from there."""
        self._staging = {}
        self.snapshot_complete = False
        self.last_event_id = 0

    def apply(self, response: cpb.WatchActivityResponse) -> None:
        self.responses += 1
        self.last_response_ns = time.time_ns()
        if response.snapshot_readers:
            target = self._staging if self._staging is not None else self.readers
            for reader in response.snapshot_readers:
                row = target.get(reader.name)
                if row is None:
                    row = target[reader.name] = ReaderRow(reader.name)
                self._apply_reader(row, reader, from_event_order=True)
        for event in response.events:
            self.apply_event(event)
        if response.snapshot_complete:
            self._finish_snapshot()
        if response.cursor:
            self.cursor = response.cursor

    def _finish_snapshot(self) -> None:
        staged, self._staging = self._staging, None
        if staged is not None:
            for name, old in self.readers.items():
                row = staged.get(name)
                if row is not None:
                    row.unread_base, row.unread_seqs = old.unread_base, old.unread_seqs
                elif old.unread:
                    staged[name] = old
            self.readers = staged
            self._unresolved = {name for name, row in staged.items() if not row.resolved}
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
            row = self._new_row(name)
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
                row.last_type = type_
            summary = interaction.summary or event.summary
            text = f"{type_}: {summary}" if summary else type_
        elif kind == pb.EVENT_KIND_READER_STATE_CHANGED:
            self._apply_state(row, event.state)
            text = f"state: {event.summary}"
        elif kind == pb.EVENT_KIND_PRESENCE_CHANGED:
            change = event.presence
            row.presence = change.presence
            text = f"{PRESENCE_NAMES.get(change.presence, '?')} (was {PRESENCE_NAMES.get(change.previous, '?')})"
        elif kind == pb.EVENT_KIND_MESSAGE_SENT:
            message = event.message
            if message.direction == pb.MESSAGE_DIRECTION_FROM_READER:
                if message.sequence not in row.unread_seqs:
                    row.unread_seqs.append(message.sequence)
                text = f"message from reader: {event.summary}"
            elif message.direction == pb.MESSAGE_DIRECTION_TO_READER:
                text = f"message to reader: {event.summary}"
            else:
                text = f"notice: {event.summary}"
        elif kind == pb.EVENT_KIND_MESSAGE_READ:
            read = event.message_read
            if read.participant == self.me:
                # Read "up to" a position: what the stream brought after it
                # stays unread; what the last count held was older than
                # anything the stream brought, so it is read.
                row.unread_base = 0
                row.unread_seqs = [s for s in row.unread_seqs if s > read.last_read_sequence]
                text = "you read the conversation"
            elif read.participant == name:
                text = "reader read your messages"
            else:
                text = f"read by {read.participant}"
        else:
            text = event.summary or "event"
        self.feed.append(FeedLine(when, name, kind, text))

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

    def _new_row(self, name: str) -> ReaderRow:
        row = self.readers[name] = ReaderRow(name)
        self._unresolved.add(name)
        return row

    # --- other sources -------------------------------------------------------

    def set_unread_counts(self, counts: Iterable[tuple[str, int]]) -> None:
        """Replace every unread count with ListUnreadCounts' answer."""
        given = dict(counts)
        for name, row in self.readers.items():
            row.unread_base = given.pop(name, 0)
            row.unread_seqs = []
        for name, unread in given.items():
            self._new_row(name).unread_base = unread

    def take_unresolved(self, most: int) -> list[str]:
        """Readers whose profile to look up (each handed out once)."""
        names: list[str] = []
        while self._unresolved and len(names) < most:
            name = self._unresolved.pop()
            row = self.readers.get(name)
            if row is not None and not row.resolved:
                names.append(name)
        return names

    def apply_profile(self, reader: pb.Reader) -> None:
        """A looked-up reader (GetReader)."""
        row = self.readers.get(reader.name)
        if row is not None:
            self._apply_reader(row, reader, from_event_order=False)

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

    def label(self, name: str) -> str:
        row = self.readers.get(name)
        return row.display_name if row is not None and row.display_name else name


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


class WatchError(Exception):
    """The view cannot go on; the message says why, for a person."""


def open_channel(target: str, tls: bool = False, ca_file: Path | None = None) -> aio.Channel:
    if tls or ca_file is not None:
        roots = ca_file.read_bytes() if ca_file is not None else None
        return aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots), CHANNEL_OPTIONS)
    return aio.insecure_channel(target, CHANNEL_OPTIONS)


def _details(error: aio.AioRpcError) -> str:
    return f"{error.code().name}: {error.details() or 'no details'}"


class WatchClient:
    """Keeps `model` up to date until cancelled or until `fatal` is set."""

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
        self.token = ""
        self.account = ""
        self.status = "connecting"
        self.fatal: str | None = None
        self.connected = False
        # Counters for the header and for tests.
        self.logins = 0
        self.streams = 0
        self.snapshots = 0
        self.fresh_starts = 0
        self.resume_cursors: deque[str] = deque(maxlen=100)
        self.synced = asyncio.Event()
        self._progressed = False
        self._opened_at: float | None = None
        self._channel: aio.Channel | None = None
        self._auth: auth_service_pb2_grpc.AuthServiceAsyncStub | None = None
        self._consultant: consultant_service_pb2_grpc.ConsultantServiceAsyncStub | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.token}"),)

    async def run(self) -> None:
        """Watch until cancelled; returns when the view cannot go on, with
        `fatal` saying why."""
        channel = self._channel = open_channel(self.target, self.tls, self.ca_file)
        self._auth = auth_service_pb2_grpc.AuthServiceStub(channel)
        self._consultant = consultant_service_pb2_grpc.ConsultantServiceStub(channel)
        resolver = asyncio.create_task(self._resolve_forever()) if self.resolve_profiles else None
        try:
            await self._watch_forever()
        except WatchError as error:
            self.fatal = str(error)
            self.status = f"stopped: {error}"
        finally:
            self.connected = False
            if resolver is not None:
                resolver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await resolver
            await channel.close(grace=None)

    async def _login(self) -> None:
        assert self._auth is not None
        self.status = f"signing in as {self.email}"
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

    async def _watch_forever(self) -> None:
        attempt = 0
        signed_in_again = False
        while True:
            self._progressed = False
            self._opened_at = None
            try:
                if not self.token:
                    await self._login()
                await self._stream_once()
                reason = "the server ended the stream"
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
                    self.token = ""
                    self.status = f"session refused ({_details(error)}); signing in again"
                    continue
                if code == grpc.StatusCode.OUT_OF_RANGE or (
                    code == grpc.StatusCode.INVALID_ARGUMENT and self.model.cursor
                ):
                    # The cursor belongs to another history or is too old:
                    # start over with a fresh snapshot, right away.
                    self.model.cursor = ""
                    self.fresh_starts += 1
                    self.status = f"starting over with a fresh snapshot ({_details(error)})"
                    continue
                if code not in RETRY_CODES:
                    raise WatchError(_details(error)) from None
                reason = _details(error)
            if self._worked():
                attempt, signed_in_again = 0, False
            delay = min(self.max_backoff, self.initial_backoff * 2 ** attempt) * random.uniform(0.8, 1.0)
            attempt = min(attempt + 1, 30)
            self.status = f"disconnected ({reason}); reconnecting in {delay:.1f} s"
            log.debug("watch stream lost (%s); reconnecting in %.1f s", reason, delay)
            await asyncio.sleep(delay)

    async def _settled(self) -> None:
        assert self._channel is not None
        await self._channel.channel_ready()
        await asyncio.sleep(SETTLE_SECONDS)

    def _worked(self) -> bool:
        """Whether the stream that just ended got anywhere: a message, or
        a few quiet seconds open. Backoff and the one new sign-in start
        afresh after such a stream."""
        opened = self._opened_at
        return self._progressed or (opened is not None and time.monotonic() - opened >= 5.0)

    async def _stream_once(self) -> None:
        assert self._consultant is not None
        model = self.model
        fresh = not model.cursor
        if fresh:
            model.begin_snapshot()
            request = cpb.WatchActivityRequest(include_snapshot=True)
        else:
            self.resume_cursors.append(model.cursor)
            request = cpb.WatchActivityRequest(after=model.cursor)
        self.status = "connecting" if fresh else f"resuming after {model.cursor}"
        call = self._consultant.WatchActivity(request, metadata=self.metadata)
        try:
            # A resumed stream with nothing to catch up on carries nothing
            # until the next heartbeat, so "connected" means: the transport
            # is up and the server has not refused the stream at once.
            ended = asyncio.Event()
            call.add_done_callback(lambda _call: ended.set())
            waits = {asyncio.create_task(ended.wait()), asyncio.create_task(self._settled())}
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
            self.status = "loading snapshot" if fresh else "live"
            async for response in call:
                self._progressed = True
                model.apply(response)
                if response.snapshot_complete:
                    self.snapshots += 1
                    await self._refresh_unread()
                    self.status = "live"
                    self.synced.set()
        finally:
            self.connected = False
            call.cancel()

    async def _refresh_unread(self) -> None:
        assert self._consultant is not None
        answer = await self._consultant.ListUnreadCounts(
            cpb.ListUnreadCountsRequest(), metadata=self.metadata, timeout=30
        )
        self.model.set_unread_counts((c.reader, c.unread) for c in answer.counts)

    async def _resolve_forever(self) -> None:
        """Look up the names of readers first met in an event."""
        while True:
            await asyncio.sleep(0.2)
            if not self.connected:
                continue
            names = self.model.take_unresolved(64)
            if names:
                await asyncio.gather(*(self._resolve(name) for name in names))

    async def _resolve(self, name: str) -> None:
        assert self._consultant is not None
        try:
            answer = await self._consultant.GetReader(
                cpb.GetReaderRequest(name=name), metadata=self.metadata, timeout=10
            )
        except aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
                                grpc.StatusCode.INVALID_ARGUMENT):
                self.model.give_up_profile(name)
            else:
                self.model.retry_profile(name)
            return
        self.model.apply_profile(answer.reader)


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


def progress_bar(progress: float, width: int = 10) -> Text:
    progress = min(max(progress, 0.0), 1.0)
    filled = round(progress * width)
    bar = Text("█" * filled, style="green")
    bar.append("░" * (width - filled), style="dim")
    bar.append(f" {progress:4.0%}")
    return bar


class WatchView:
    """Renders a model (and the client's status) to a frame of a given size."""

    # The status line at the top.
    HEADER_LINES = 1

    def __init__(self, model: WatchModel, client: WatchClient | None = None, title: str = "") -> None:
        self.model = model
        self.client = client
        self.title = title

    def feed_height(self, height: int) -> int:
        return max(4, min(14, height // 3))

    def render(self, height: int, now_ns: int | None = None) -> RenderableType:
        now_ns = time.time_ns() if now_ns is None else now_ns
        feed_height = self.feed_height(height)
        table_height = max(4, height - self.HEADER_LINES - feed_height)
        layout = Layout()
        layout.split_column(
            Layout(self.header(), name="header", size=self.HEADER_LINES),
            # Rows: the panel less its two borders and the column header.
            Layout(self.table(table_height - 3, now_ns), name="readers", size=table_height),
            Layout(self.feed(feed_height - 2), name="feed", size=feed_height),
        )
        return layout

    def frame(self, console: Console, now_ns: int | None = None) -> RenderableType:
        return self.render(console.size.height, now_ns)

    def header(self) -> Text:
        model = self.model
        status = self.client.status if self.client is not None else ("live" if model.snapshot_complete else "")
        style = "bold green" if status == "live" else "bold yellow"
        if self.client is not None and self.client.fatal:
            style = "bold red"
        text = Text(f"Cursor watch {clean(self.title)} ", style="bold")
        text.append(f"[{clean(status)}]", style=style)
        counts = model.presence_counts()
        text.append(
            f"  readers {len(model.readers)}: {counts.get(pb.PRESENCE_READING, 0)} reading, "
            f"{counts.get(pb.PRESENCE_ONLINE, 0)} online, {counts.get(pb.PRESENCE_IDLE, 0)} idle"
            f"  unread {model.total_unread()}  events {model.events_applied}"
        )
        text.no_wrap = True
        text.overflow = "ellipsis"
        return text

    def table(self, rows: int, now_ns: int) -> Panel:
        """At most `rows` lines of readers, the most recently seen first;
        a last line counts the ones that do not fit."""
        model = self.model
        total = len(model.readers)
        shown = model.most_recent(rows if total <= rows else rows - 1)
        table = Table(expand=True, box=None, pad_edge=False, show_edge=False, header_style="bold")
        table.add_column("Reader", ratio=3, no_wrap=True, overflow="ellipsis")
        table.add_column("Progress", width=15, no_wrap=True)
        table.add_column("Step", justify="right", width=5, no_wrap=True)
        table.add_column("Status", width=9, no_wrap=True)
        table.add_column("Presence", width=8, no_wrap=True)
        table.add_column("Last seen", justify="right", width=9, no_wrap=True)
        table.add_column("Activity", ratio=1, no_wrap=True, overflow="ellipsis")
        table.add_column("Unread", justify="right", width=6, no_wrap=True)
        for row in shown:
            seen = ago((now_ns - row.last_seen_ns) / NS) if row.last_seen_ns else "-"
            unread = row.unread
            table.add_row(
                Text(clean(row.display_name or row.name)),
                progress_bar(row.progress),
                str(row.step),
                STATUS_NAMES.get(row.status, ""),
                Text(PRESENCE_NAMES.get(row.presence, "?"), style=PRESENCE_STYLES.get(row.presence, "")),
                seen,
                Text(clean(row.last_type)),
                Text(str(unread), style="bold magenta") if unread else Text("0", style="dim"),
            )
        if total > len(shown):
            table.add_row(Text(f"+{total - len(shown)} more", style="dim italic"))
        return Panel(table, title=f"Active readers ({total}), last seen first", title_align="left")

    def feed(self, lines: int) -> Panel:
        model = self.model
        recent = list(itertools.islice(reversed(model.feed), max(lines, 0)))[::-1]
        out = Text(no_wrap=True, overflow="ellipsis")
        for i, line in enumerate(recent):
            if i:
                out.append("\n")
            stamp = time.strftime("%H:%M:%S", time.localtime(line.time_ns / NS))
            out.append(f"{stamp}  ", style="dim")
            out.append(clean(model.label(line.reader)), style="bold")
            out.append("  ")
            out.append(clean(line.text), style=FEED_STYLES.get(line.kind, ""))
        return Panel(out, title="Activity", title_align="left")


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


async def watch_live(client: WatchClient, view: WatchView, console: Console, fps: float = FPS) -> None:
    """Full-screen view, redrawn `fps` times a second whatever the event rate."""
    task = asyncio.create_task(client.run())
    period = 1.0 / fps
    try:
        with Live(console=console, screen=True, auto_refresh=False, redirect_stderr=False) as live:
            next_frame = time.monotonic()
            while not task.done():
                live.update(view.frame(console), refresh=True)
                next_frame = max(next_frame + period, time.monotonic())
                await asyncio.wait({task}, timeout=next_frame - time.monotonic())
    finally:
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
    client = WatchClient(model, args.server, args.email, password, tls=bool(args.tls), ca_file=args.ca_file)
    view = WatchView(model, client, title=f"{args.email} @ {args.server}")
    try:
        if to_file:
            # --once alone still gives up some time: a script should not hang.
            asyncio.run(watch_for(client, once, duration if duration is not None else 30.0))
            console = Console(file=sys.stdout, width=args.width, height=args.height, force_terminal=False)
            console.print(view.render(args.height))
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

