"""The dashboard stream's engine (WatchReaders): who changed, conflated.

Every committed event marks its reader changed (a heartbeat does not: it
only moves "last seen", which the next update carries). At most once per
interval the readers changed since the last round are read from the
database in one read, each is encoded once as one `updates` entry with its
latest, and every dashboard stream that watches it gets that entry: the
work of a round is per changed reader, and per stream one buffer append.
An isolated change goes out at once; under load each reader goes out at
most once per interval, with its latest, never with what it superseded.

The streams run the same loop as event streams (live/streams.py): this
hub is their source, so resuming, falling behind, session checks and stream
caps work alike. A stream that resumes or falls behind gets the latest of
every reader that changed after its cursor, in one read.

Unread counts differ per consultant: they are read per consultant whose
streams need them, only for readers whose conversation moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from cursor.v1 import consultant_service_pb2 as pb
from cursor_grpc import wire
from cursor_grpc.clock import iso_from_ns
from cursor_grpc.config import LiveSettings
from cursor_grpc.live.broadcaster import Broadcaster, Encoded, Subscription
from cursor_grpc.storage import (
    KIND_INTERACTION,
    KIND_MESSAGE,
    KIND_MESSAGE_READ,
    Event,
    EventFilter,
    ReaderRecord,
    ReaderUpdateRecord,
    Store,
)

log = logging.getLogger("cursor.live.dashboard")

# Fields of WatchReadersResponse, wire type 2: `updates` (1), `unread_counts` (5).
UPDATES_TAG = b"\x0a"
UNREAD_TAG = b"\x2a"
SNAPSHOT_UPDATES_PER_MESSAGE = 200
SNAPSHOT_MOST_READERS = 5000


class DashboardHub:
    """One per process, fed by the broadcaster (`Broadcaster.tap`)."""

    # A catch-up reads the whole range at once: the readers that changed in
    # it, each once (the events stream reads pages instead).
    replay_range = 2**62

    def __init__(self, store: Store, broadcaster: Broadcaster, settings: LiveSettings,
                 active_window_seconds: int) -> None:
        self._store = store
        self._broadcaster = broadcaster
        # Dashboard writes are fan-out too: they count against the same budget.
        self.pacer = broadcaster.pacer
        # Between rounds: at least the setting, longer while fan-out since the
        # last round took more of the loop than its budget, at most the maximum.
        self.min_interval = settings.dashboard_interval_seconds
        self.max_interval = max(settings.dashboard_max_interval_seconds, self.min_interval)
        # Fan-out's loop seconds (`FanoutPacer.spent_total`) when the last round began.
        self._round_spent = 0.0
        self._active_window_ns = active_window_seconds * 1_000_000_000
        # Every change at or below `head` is in what the streams were given;
        # `_folded` is the highest seq seen.
        self.head = broadcaster.head
        self._folded = broadcaster.head
        self._changed: dict[str, None] = {}
        # reader -> the consultant whose read position moved, or None when
        # the reader wrote (every consultant's count moved).
        self._conversations: dict[str, str | None] = {}
        self._subscriptions: set[Subscription] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_round = 0.0
        self.rounds = 0
        broadcaster.tap(self._fold)

    # --- what the stream loop needs of a source --------------------------------

    def cursor(self, seq: int) -> str:
        return self._broadcaster.cursor(seq)

    def subscribe(self, wanted: EventFilter, limit: int, session_id: str, account: tuple[str, str]) -> Subscription:
        subscription = self._broadcaster.subscribe(wanted, limit, session_id, account, passive=True)
        self._subscriptions.add(subscription)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._broadcaster.unsubscribe(subscription)
        self._subscriptions.discard(subscription)
        self._wake.set()

    async def replay(self, subscription: Subscription, after: int, upto: int,
                     max_bytes: int | None = None) -> tuple[list[Encoded], int]:
        """The latest of every reader the stream watches that changed in
        after < seq <= upto, with the caller's unread counts for them."""
        changed = await self._store.changed_readers(after, upto)
        wanted = subscription.wanted.reader_ids
        if wanted:
            changed = [r for r in changed if r in wanted]
        items = [self._encode(record, upto) for record in await self._store.reader_updates(changed)]
        kind, account_id = subscription.account
        if kind == "consultant" and changed:
            items += await self._unread(account_id, changed, upto)
        return items, upto

    # --- folding events in -------------------------------------------------------

    def _fold(self, events: list[Event]) -> None:
        """Loop, for every commit in order: mark who changed."""
        if not self._subscriptions:
            # Nobody watches: a new stream starts from a snapshot of the record.
            self.head = self._folded = events[-1].seq
            return
        for event in events:
            if event.kind == KIND_INTERACTION and event.interaction_type == "heartbeat":
                continue
            self._changed[event.reader_id] = None
            if event.kind == KIND_MESSAGE and event.data.get("direction") == "user_to_consultant":
                self._conversations[event.reader_id] = None
            elif event.kind == KIND_MESSAGE_READ:
                kind, _, who = str(event.data.get("participant", "")).partition("/")
                if kind == "consultants" and self._conversations.get(event.reader_id, "") is not None:
                    self._conversations[event.reader_id] = who
        self._folded = events[-1].seq
        if not self._changed:
            self.head = self._folded  # only heartbeats: nothing to send, nothing missed
        else:
            self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._subscriptions:
            if not self._changed:
                self._wake.clear()
                await self._wake.wait()
                continue
            # Polled, not awaited on an event: what ends the wait is the loop's
            # time spent falling behind the time passed, which nothing signals.
            while (wait := self.wait_left(loop.time())) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
            self._last_round = loop.time()
            self._round_spent = self.pacer.spent_total
            try:
                await self._round()
            except Exception:
                log.exception("dashboard round failed; the readers go out in the next one")
        self._task = None

    def wait_left(self, now: float) -> float:
        """How long the next round should still wait: until `min_interval`
        has passed since the last one, and then until fan-out's loop time
        since it (the round, its writes, and the event streams' flushes and
        writes: one pacer meters them all) is within budget for the time
        passed, at most `max_interval`. A round costs per stream, whatever
        it carries, so waiting longer is what gives the loop back; each
        reader still goes out with its latest. Re-asked in steps of
        `min_interval`, so the wait ends soon after the load goes."""
        since = now - self._last_round
        if since >= self.max_interval:
            return 0.0
        if since < self.min_interval:
            return self.min_interval - since
        spent = self.pacer.spent_total - self._round_spent
        if spent <= self.pacer.share * since:
            return 0.0
        # At this rate of nothing more spent, the share is within budget after spent / share.
        return min(self.min_interval, spent / self.pacer.share - since, self.max_interval - since)

    async def _round(self) -> None:
        """Read the changed readers once, encode each once, hand them out."""
        upto = self._folded
        changed, self._changed = list(self._changed), {}
        conversations, self._conversations = self._conversations, {}
        try:
            records = await self._store.reader_updates(changed)
        except Exception:
            for reader_id in changed:  # not lost: again next round
                self._changed.setdefault(reader_id)
            for reader_id, who in conversations.items():
                self._conversations.setdefault(reader_id, who)
            raise
        encoded = [self._encode(record, upto) for record in records]
        # Read before anything is offered: a stream sends what it is offered
        # at once, and what comes later with the same seq would be behind it.
        unread = await self._unread_by_consultant(conversations, upto) if conversations else {}
        by_reader = {item.reader_id: item for item in encoded}
        size = sum(len(item.chunk) for item in encoded)
        for subscription in self._subscriptions:
            wanted = subscription.wanted.reader_ids
            kind, account_id = subscription.account
            counts = unread.get(account_id, []) if kind == "consultant" else []
            if not wanted:
                if counts:
                    subscription.offer(encoded + counts)
                else:
                    subscription.offer(encoded, size)
            elif len(wanted) < len(by_reader):
                subscription.offer([by_reader[r] for r in wanted if r in by_reader] + counts)
            else:
                subscription.offer(encoded + counts)
        self.head = max(self.head, upto)
        self.rounds += 1

    async def _unread_by_consultant(self, conversations: dict[str, str | None],
                                    upto: int) -> dict[str, list[Encoded]]:
        """For each consultant with a dashboard open, its counts for the
        conversations that moved for it."""
        found: dict[str, list[Encoded]] = {}
        consultants = {s.account[1] for s in self._subscriptions if s.account[0] == "consultant"}
        for consultant_id in sorted(consultants):
            moved = [r for r, who in conversations.items() if who is None or who == consultant_id]
            if moved:
                found[consultant_id] = await self._unread(consultant_id, moved, upto)
        return found

    async def _unread(self, consultant_id: str, reader_ids: list[str], upto: int) -> list[Encoded]:
        """The consultant's unread count of each reader (0 included: a count
        that went to zero is news too)."""
        counts = dict(await self._store.unread_counts(consultant_id))
        items = []
        for reader_id in reader_ids:
            body = pb.UnreadCount(reader=f"readers/{reader_id}", unread=counts.get(reader_id, 0)).SerializeToString()
            items.append(Encoded(upto, reader_id, "unread", None, wire.field_entry(UNREAD_TAG, body)))
        return items

    def _encode(self, record: ReaderUpdateRecord, upto: int) -> Encoded:
        body = wire.reader_update(record, self._broadcaster.epoch).SerializeToString()
        return Encoded(upto, record.reader.id, "reader", None, wire.field_entry(UPDATES_TAG, body))

    # --- the first messages of a stream -----------------------------------------------

    async def snapshot(self, wanted: EventFilter, consultant_id: str) -> list[bytes]:
        """The latest of every reader the stream watches (named or assigned
        ones; otherwise the active ones and those with open signals), the
        caller's unread counts for them, then the end-of-snapshot marker
        with the cursor everything in it is at least as new as."""
        head = self.head
        if wanted.reader_ids:
            reader_ids = sorted(wanted.reader_ids)
        else:
            since = iso_from_ns(time.time_ns() - self._active_window_ns)
            reader_ids = [r.id for r in await active_readers(self._store, since, SNAPSHOT_MOST_READERS)]
            known = set(reader_ids)
            reader_ids += [r for r in await self._store.readers_with_attention(SNAPSHOT_MOST_READERS)
                           if r not in known]
        records = await self._store.reader_updates(reader_ids)
        epoch = self._broadcaster.epoch
        messages = [
            pb.WatchReadersResponse(updates=[wire.reader_update(r, epoch) for r in
                                             records[i:i + SNAPSHOT_UPDATES_PER_MESSAGE]]).SerializeToString()
            for i in range(0, len(records), SNAPSHOT_UPDATES_PER_MESSAGE)
        ]
        shown = {r.reader.id for r in records}
        unread = [pb.UnreadCount(reader=f"readers/{reader_id}", unread=n)
                  for reader_id, n in await self._store.unread_counts(consultant_id) if reader_id in shown and n]
        messages.append(pb.WatchReadersResponse(unread_counts=unread, snapshot_complete=True,
                                                cursor=self.cursor(head)).SerializeToString())
        return messages

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def active_readers(store: Store, since: str, most: int | None = None) -> list[ReaderRecord]:
    """Every reader seen at or after `since` (at most `most`), most recently
    seen first, read a page at a time: what a snapshot starts from."""
    found: list[ReaderRecord] = []
    after = None
    while most is None or len(found) < most:
        page = await store.list_active_readers(since, after, 1000)
        found += page
        if len(page) < 1000:
            break
        last = page[-1]
        assert last.state is not None
        assert last.state.last_seen_at is not None
        after = (last.state.last_seen_at, last.id)
    return found if most is None else found[:most]
