"""Fan-out of committed events to open streams.

The event log calls `Broadcaster.committed` after each commit (it is the
`EventLog.on_commit` listener, on the backend's thread); the events cross
to the event loop with one `call_soon_threadsafe` per commit and wait there
for the next flush (paced by `FanoutPacer`: as often as keeps fan-out
under `LiveSettings.fanout_cpu_share` of the loop), so one stream message
carries what several commits wrote instead of one message per commit per
stream. Each event is converted and serialized once, as the
bytes of one `events` entry, and shared by every stream that wants it.
Each stream has a buffer bounded in events and in bytes; a stream whose
buffer would overflow drops it and catches up from the database instead,
so memory stays bounded and nothing is lost. How many streams may be open
is capped too (`StreamLimits`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator, KeysView
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from cursor_grpc import metrics, wire
from cursor_grpc.config import ConfigError, LiveSettings
from cursor_grpc.errors import CursorError, InvalidArgument, OutOfRange
from cursor_grpc.live.stream_limits import StreamLimits
from cursor_grpc.storage import KIND_INTERACTION, Event, EventFilter, EventLog

log = logging.getLogger("cursor.live")

T = TypeVar("T")

# Field 1 (`events`) of both stream responses, wire type 2 (length-delimited).
_EVENTS_TAG = b"\x0a"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


@dataclass(slots=True, frozen=True)
class Encoded:
    """An event ready for the wire: `chunk` is a whole `events` field entry."""

    seq: int
    reader_id: str
    kind: str
    interaction_type: str | None
    chunk: bytes


class Subscription:
    """One open stream's view of the live events."""

    def __init__(self, wanted: EventFilter, limit: int, session_id: str, account: tuple[str, str],
                 byte_limit: int = LiveSettings.stream_buffer_bytes) -> None:
        self.wanted = wanted
        self.limit = limit
        self.byte_limit = byte_limit
        self.session_id = session_id
        self.account = account
        self.buffer: deque[Encoded] = deque()
        self.buffered_bytes = 0
        self.overflowed = False
        self.closed: CursorError | None = None
        # The stall timeout of the write in progress: closing cuts it short,
        # so a stream whose client stopped reading ends at once too.
        self.write_deadline: asyncio.Timeout | None = None
        self._wake = asyncio.Event()

    def _matches(self, item: Encoded) -> bool:
        wanted = self.wanted
        if wanted.reader_ids and item.reader_id not in wanted.reader_ids:
            return False
        if wanted.kinds and item.kind not in wanted.kinds:
            return False
        return not (wanted.interaction_types and item.kind == "interaction"
                    and item.interaction_type not in wanted.interaction_types)

    def offer(self, items: list[Encoded], items_bytes: int | None = None) -> None:
        """Buffer what this stream wants of a flush; `items_bytes`, the size
        of all `items`, saves summing them again for every stream."""
        if self.overflowed or self.closed is not None:
            return
        if self.wanted.everything:
            matching = items
            size = items_bytes if items_bytes is not None else sum(len(i.chunk) for i in items)
        else:
            matching = [i for i in items if self._matches(i)]
            size = sum(len(i.chunk) for i in matching)
        if not matching:
            return
        if len(self.buffer) + len(matching) > self.limit or self.buffered_bytes + size > self.byte_limit:
            # Too far behind: forget the buffer, catch up from the database.
            self.overflowed = True
            self.buffer.clear()
            self.buffered_bytes = 0
        else:
            self.buffer.extend(matching)
            self.buffered_bytes += size
        self._wake.set()

    def take(self, most: int, most_bytes: int | None = None) -> list[Encoded]:
        """Up to `most` events and `most_bytes` bytes of them (at least one)."""
        buffer = self.buffer
        taken: list[Encoded] = []
        size = 0
        while buffer and len(taken) < most:
            chunk = len(buffer[0].chunk)
            if taken and most_bytes is not None and size + chunk > most_bytes:
                break
            taken.append(buffer.popleft())
            size += chunk
        self.buffered_bytes -= size
        return taken

    def restart(self) -> None:
        """Start buffering afresh (after catching up from the database)."""
        self.overflowed = False
        self.buffer.clear()
        self.buffered_bytes = 0

    def close(self, error: CursorError) -> None:
        if self.closed is None:
            self.closed = error
            self.buffer.clear()
            self.buffered_bytes = 0
            self._wake.set()
            if self.write_deadline is not None:
                self.write_deadline.reschedule(asyncio.get_running_loop().time())

    @property
    def has_news(self) -> bool:
        return bool(self.buffer) or self.overflowed or self.closed is not None

    async def wait(self, seconds: float) -> bool:
        """Wait for news; False only if there is none when the wait ends.

        A timeout can fire in the same loop iteration as a flush, just
        before it: the state is read again rather than trusted to the
        exception, because the caller's heartbeat takes "quiet" to mean
        every event up to the head has been delivered."""
        if self.has_news:
            return True
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        return self.has_news


class FanoutPacer:
    """How long the broadcaster waits between flushes, from what fan-out
    costs the event loop.

    Everything the loop does for fan-out is `charge`d here, in CPU seconds
    of the loop's thread (`cpu`, the thread's own CPU clock, so neither a
    write waiting for its client nor the loop waiting for the GIL counts):
    a flush's encoding and offering (`Broadcaster.flush`) and the stream
    writes it causes (`metered`, in `run_stream`: taking from the buffer,
    joining the chunks, `write` up to its suspension and after it). Each
    flush closes a window: its cost is what was charged since the previous
    flush began (that flush and, mostly, its writes). The cost per flush is
    smoothed over time rather than over flushes, with the time constant
    `rise` while it grows and `fall` while it shrinks: the interval widens
    within a fraction of a second of more load, narrows over about a second
    when the load goes, and does not chase every noisy flush. A window that
    spans a quiet spell is taken almost as it is.

    The interval is the smoothed cost divided by `share`: a flush at most
    every `cost / share` seconds keeps fan-out under `share` of the loop.
    It stays within [`min_interval`, `max_interval`] (`min_interval` wins if
    they cross: a test may set a long minimum). Pure: both clocks (`clock`
    for the windows, `cpu` for the charges) can be injected, and nothing
    here touches the loop."""

    __slots__ = ("__weakref__", "_opened", "_spent", "clock", "cost", "cpu", "fall", "flushes", "load",
                 "max_interval", "min_interval", "rise", "share", "spent_total")

    def __init__(self, share: float, min_interval: float, max_interval: float,
                 clock: Callable[[], float] = time.perf_counter, cpu: Callable[[], float] = time.thread_time,
                 rise: float = 0.1, fall: float = 1.0) -> None:
        if not 0 < share <= 1:
            raise ConfigError(f"CURSOR_FANOUT_CPU_SHARE must be above 0 and at most 1, not {share:g}")
        if min_interval < 0 or max_interval <= 0:
            raise ConfigError("CURSOR_FANOUT_INTERVAL_SECONDS and CURSOR_FANOUT_MAX_INTERVAL_SECONDS must be "
                              f"at least 0 and above 0, not {min_interval:g} and {max_interval:g}")
        self.share = share
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.clock = clock
        self.cpu = cpu
        self.rise = rise
        self.fall = fall
        # Smoothed loop CPU seconds one flush costs, and the smoothed share
        # of the loop (CPU seconds per second) that fan-out took.
        self.cost = 0.0
        self.load = 0.0
        # Totals since start (metrics).
        self.spent_total = 0.0
        self.flushes = 0
        self._spent = 0.0  # charged in the window open now
        self._opened: float | None = None  # when it opened (the last flush began)

    def charge(self, seconds: float) -> None:
        """Loop CPU seconds spent on fan-out."""
        self._spent += seconds
        self.spent_total += seconds

    def flushing(self, now: float) -> None:
        """A flush begins at `now`: the window of the previous one closes."""
        opened = self._opened
        if opened is not None:
            elapsed = now - opened
            if elapsed > 0:
                cost = self._spent
                tau = self.rise if cost > self.cost else self.fall
                self.cost += (1.0 - math.exp(-elapsed / tau)) * (cost - self.cost)
                self.load += (1.0 - math.exp(-elapsed / self.fall)) * (cost / elapsed - self.load)
        self._spent = 0.0
        self._opened = now
        self.flushes += 1

    def interval(self) -> float:
        """How long to wait after a flush before the next one."""
        return max(self.min_interval, min(self.max_interval, self.cost / self.share))

    def measured_share(self, now: float | None = None) -> float:
        """The share of the loop fan-out took lately, the open window
        included (so it falls when the flushes stop)."""
        if self._opened is None:
            return 0.0
        elapsed = (self.clock() if now is None else now) - self._opened
        if elapsed <= 0:
            return self.load
        return self.load + (1.0 - math.exp(-elapsed / self.fall)) * (self._spent / elapsed - self.load)

    def metered(self, awaitable: Awaitable[T], began: float | None = None) -> Awaitable[T]:
        """`awaitable`, with the CPU time its steps take charged here (from
        `began`, a `cpu()` reading when given, to its first suspension, then
        each resumption to the next suspension); the time it waits is not."""
        return _Metered(awaitable, self, self.cpu() if began is None else began)


class _Metered(Generic[T]):
    """See `FanoutPacer.metered`: steps the wrapped awaitable itself, timing
    each step, and passes every suspension, value and exception through."""

    __slots__ = ("_awaitable", "_began", "_pacer")

    def __init__(self, awaitable: Awaitable[T], pacer: FanoutPacer, began: float) -> None:
        self._awaitable = awaitable
        self._pacer = pacer
        self._began = began

    def __await__(self) -> Generator[Any, Any, T]:
        pacer, clock, began = self._pacer, self._pacer.cpu, self._began
        inner = self._awaitable.__await__()
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                signal = inner.send(value) if error is None else inner.throw(error)
            except StopIteration as done:
                return cast(T, done.value)
            finally:
                pacer.charge(clock() - began)
            value, error = None, None
            try:
                value = yield signal
            except GeneratorExit:
                inner.close()
                raise
            except BaseException as thrown:  # cancellation, a timeout: the inner awaitable handles it
                error = thrown
            began = clock()


class Broadcaster:
    """Hands what `history` commits to the open streams; it only reads the
    log, so any backend's `EventLog` will do."""

    # A catch-up reads at most this many sequence numbers per query (it also
    # stops at `LiveSettings.replay_page_bytes`).
    replay_range = 4096

    def __init__(self, history: EventLog, loop: asyncio.AbstractEventLoop, settings: LiveSettings) -> None:
        self._loop = loop
        self._history = history
        self.epoch = history.epoch
        # Highest seq handed to the streams; everything at or below it is
        # committed, and every stream has it in its buffer or has caught up
        # past it. Committed events waiting for the flush are above it.
        self.head = history.head
        # Set whenever the head moves (`reach` waits on it).
        self._moved = asyncio.Event()
        self._settings = settings
        self._subscriptions: set[Subscription] = set()
        # The subscriptions flushes offer events to: all but the passive ones
        # (dashboard streams, which their hub feeds).
        self._offered: set[Subscription] = set()
        # Called on the loop with every commit's events, in order (`tap`).
        self._taps: list[Callable[[list[Event]], None]] = []
        self.limits = StreamLimits(settings)
        self.published = 0
        self._pending: list[Event] = []
        self._flush_at: asyncio.Handle | None = None
        self._last_flush = 0.0
        # Pacing (see LiveSettings and FanoutPacer); its bounds can be tuned live.
        self.pacer = FanoutPacer(settings.fanout_cpu_share, settings.fanout_interval_seconds,
                                 settings.fanout_max_interval_seconds)
        metrics.bind_fanout(self.pacer)
        history.on_commit(self.committed)

    @property
    def min_interval(self) -> float:
        """The shortest flush interval (`fanout_interval_seconds`)."""
        return self.pacer.min_interval

    @min_interval.setter
    def min_interval(self, seconds: float) -> None:
        self.pacer.min_interval = seconds

    # --- cursors -----------------------------------------------------------

    def cursor(self, seq: int) -> str:
        return f"{self.epoch}-{seq}"

    def parse_cursor(self, text: str, floor: int, field: str = "after") -> int:
        """The seq of a cursor `epoch-seq`: ASCII letters and digits, then
        ASCII digits of a signed 64-bit seq. Strict on purpose: alone,
        `str.isdigit` takes digits `int` refuses (², ①), and SQLite cannot
        bind a larger number."""
        epoch, _, seq_text = text.rpartition("-")
        if not (0 < len(epoch) <= 64 and epoch.isascii() and epoch.isalnum()
                and 0 < len(seq_text) <= 19 and seq_text.isascii() and seq_text.isdigit()
                and int(seq_text) < 2**63):
            raise InvalidArgument(f"{field} is not a cursor this server issued", field=field, reason="BAD_CURSOR")
        oldest = {"oldest_cursor": self.cursor(floor)}
        if epoch != self.epoch:
            raise OutOfRange(
                f"{field} belongs to another history of this database (it was restored from a backup); "
                f"start again without a cursor, or from {self.cursor(floor)}",
                reason="CURSOR_OTHER_HISTORY", metadata=oldest,
            )
        seq = int(seq_text)
        if seq > self.head:
            raise OutOfRange(f"{field} is ahead of this server's history", reason="CURSOR_AHEAD", metadata=oldest)
        if seq < floor:
            raise OutOfRange(
                f"{field} is older than the history still held (archived); the oldest cursor is {self.cursor(floor)}",
                reason="CURSOR_EXPIRED", metadata=oldest,
            )
        return seq

    async def reach(self, seq: int, within: float = 1.0) -> None:
        """Return once the head is at `seq` (events handed over by the
        backend are on their way to `publish`), or after `within` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while self.head < seq:
                    self._moved.clear()
                    await self._moved.wait()

    # --- publishing ----------------------------------------------------------

    def committed(self, events: list[Event]) -> None:
        """Backend thread, after COMMIT: hand the events to the loop, in order."""
        with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
            self._loop.call_soon_threadsafe(self.publish, events)

    def encode(self, event: Event) -> Encoded:
        body = wire.activity_event(event, self.cursor(event.seq)).SerializeToString()
        return Encoded(event.seq, event.reader_id, event.kind, event.interaction_type,
                       _EVENTS_TAG + _varint(len(body)) + body)

    def publish(self, events: list[Event]) -> None:
        """Loop: queue one commit's events for the next flush."""
        self.published += len(events)
        for tap in self._taps:
            tap(events)
        if not self._offered and not self._pending:
            self.head = max(self.head, events[-1].seq)
            self._moved.set()
            return
        self._pending.extend(events)
        if self._flush_at is None:
            wait = self.flush_interval() - (self._loop.time() - self._last_flush)
            self._flush_at = (self._loop.call_later(wait, self.flush) if wait > 0
                              else self._loop.call_soon(self.flush))

    def flush_interval(self) -> float:
        return self.pacer.interval()

    def flush(self) -> None:
        """Hand everything committed since the last flush to the streams;
        the loop time it takes is charged to the pacer, as are the writes
        it causes (`run_stream`)."""
        self._flush_at = None
        self._last_flush = self._loop.time()
        events, self._pending = self._pending, []
        if not events:
            return
        self.head = max(self.head, events[-1].seq)
        self._moved.set()
        if not self._offered:
            return
        pacer = self.pacer
        began = pacer.cpu()
        pacer.flushing(pacer.clock())
        encoded = [self.encode(event) for event in events]
        size = sum(len(e.chunk) for e in encoded)
        for subscription in self._offered:
            subscription.offer(encoded, size)
        pacer.charge(pacer.cpu() - began)

    # --- subscriptions ---------------------------------------------------------

    def subscribe(self, wanted: EventFilter, limit: int, session_id: str, account: tuple[str, str],
                  passive: bool = False) -> Subscription:
        """A new stream's subscription; RESOURCE_EXHAUSTED past a stream cap.
        A `passive` one is counted, capped and closed like the others but
        offered nothing by flushes: its feeder offers to it."""
        self.limits.admit(session_id, account)
        subscription = Subscription(wanted, limit, session_id, account, self._settings.stream_buffer_bytes)
        self._subscriptions.add(subscription)
        if not passive:
            self._offered.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
            self._offered.discard(subscription)
            self.limits.release(subscription.session_id, subscription.account)

    def tap(self, listener: Callable[[list[Event]], None]) -> None:
        """Have `listener` called on the loop with every commit's events, in
        commit order, before they wait for a flush."""
        self._taps.append(listener)

    async def replay(self, subscription: Subscription, after: int, upto: int,
                     max_bytes: int | None = None) -> tuple[list[Encoded], int]:
        """Committed events after < seq <= upto that `subscription` wants,
        encoded, and how far they reach (see `EventLog.replay`)."""
        events, reached = await self._history.replay(after, upto, subscription.wanted, max_bytes)
        return [self.encode(event) for event in events], reached

    @property
    def stream_count(self) -> int:
        return len(self._subscriptions)

    def streaming_sessions(self) -> KeysView[str]:
        """The sessions with at least one open stream."""
        return self.limits.sessions()

    def shared_streams(self) -> dict[tuple[str, str], bool]:
        """(granter, grantee) of every open WatchSharedActivity stream, and
        whether it carries interactions."""
        found: dict[tuple[str, str], bool] = {}
        for s in self._subscriptions:
            kind, owner_id = s.account
            granters = s.wanted.reader_ids - {owner_id}
            if kind == "reader" and len(granters) == 1:
                pair = (next(iter(granters)), owner_id)
                found[pair] = found.get(pair, False) or KIND_INTERACTION in s.wanted.kinds
        return found

    def close_shared(self, granter_id: str, grantee_id: str | None, error: CursorError) -> int:
        """End WatchSharedActivity streams on `granter_id`: one grantee's, or
        (None) every grantee's. A reader's only streams on another reader are
        those, so the subscription's owner and filter identify them."""
        def shared(s: Subscription) -> bool:
            kind, owner_id = s.account
            return (kind == "reader" and owner_id != granter_id and granter_id in s.wanted.reader_ids
                    and (grantee_id is None or owner_id == grantee_id))

        return self.close_where(shared, error)

    def close_where(self, condition: Callable[[Subscription], bool], error: CursorError) -> int:
        closed = 0
        for subscription in list(self._subscriptions):
            if condition(subscription):
                subscription.close(error)
                closed += 1
        return closed
