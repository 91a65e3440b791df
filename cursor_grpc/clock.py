"""Time and identifiers, each made in exactly one way.

Timestamps are ISO-8601 UTC text with milliseconds, `YYYY-MM-DDTHH:MM:SS.sssZ`:
the same 24-character form SQLite's `strftime('%Y-%m-%dT%H:%M:%fZ', ...)`
produces, so text comparison in SQL is chronological comparison, and SQL-side
arithmetic compares like with like.
"""

from __future__ import annotations

import calendar
import os
import threading
import time
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

ISO_FORMAT = "%Y-%m-%dT%H:%M:%S"


# Recently formatted seconds: most calls fall in a second formatted just
# before ("now", and the same few cut-offs such as now minus a window), and
# strftime + gmtime are most of the cost. Small, and emptied when full.
_SECOND_TEXT: dict[int, str] = {}


def iso_from_ns(ns: int) -> str:
    """Format nanoseconds since the epoch as the canonical timestamp text."""
    seconds, rest = divmod(ns, 1_000_000_000)
    prefix = _SECOND_TEXT.get(seconds)
    if prefix is None:
        if len(_SECOND_TEXT) >= 64:
            _SECOND_TEXT.clear()
        prefix = _SECOND_TEXT[seconds] = time.strftime(ISO_FORMAT, time.gmtime(seconds))
    return f"{prefix}.{rest // 1_000_000:03d}Z"


def now_ns() -> int:
    return time.time_ns()


def now_iso() -> str:
    return iso_from_ns(time.time_ns())


_DAY_SECONDS: dict[str, int] = {}


def iso_to_ns(text: str) -> int:
    """Parse the canonical timestamp text back to nanoseconds.

    Our own fixed-width form is parsed by slicing (with the day's epoch
    seconds cached): it runs on every response that carries a time, and
    strptime costs ten times as much."""
    if len(text) == 24 and text[10] == "T" and text[19] == "." and text[23] == "Z":
        day = text[:10]
        base = _DAY_SECONDS.get(day)
        if base is None:
            base = calendar.timegm((int(text[0:4]), int(text[5:7]), int(text[8:10]), 0, 0, 0))
            if len(_DAY_SECONDS) > 4096:
                _DAY_SECONDS.clear()
            _DAY_SECONDS[day] = base
        seconds = base + int(text[11:13]) * 3600 + int(text[14:16]) * 60 + int(text[17:19])
        return seconds * 1_000_000_000 + int(text[20:23]) * 1_000_000
    parsed = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return int(parsed.timestamp()) * 1_000_000_000 + parsed.microsecond * 1000


def timestamp_from_iso(text: str | None) -> Timestamp | None:
    """A protobuf Timestamp for stored text; None stays None."""
    if not text:
        return None
    seconds, nanos = divmod(iso_to_ns(text), 1_000_000_000)
    return Timestamp(seconds=seconds, nanos=nanos)


class _UUIDv7:
    """RFC 9562 UUIDv7: 48-bit Unix milliseconds, then a 12-bit counter, then
    62 random bits. The counter keeps ids made within one millisecond (and
    across a clock step backwards) strictly increasing, so inserts stay
    append-like in the primary key index."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._counter = 0

    def _stamp(self, now_ms: int) -> tuple[int, int]:
        """The next (milliseconds, counter); called under the lock."""
        if now_ms > self._last_ms:
            self._last_ms = now_ms
            self._counter = int.from_bytes(os.urandom(2), "big") & 0x3FF
        else:
            self._counter += 1
            if self._counter > 0xFFF:
                self._last_ms += 1
                self._counter = 0
        return self._last_ms, self._counter

    def __call__(self) -> str:
        with self._lock:
            ms, counter = self._stamp(time.time_ns() // 1_000_000)
        return _uuid7_text(ms, counter, os.urandom(8))

    def many(self, count: int) -> list[str]:
        """`count` increasing ids with one lock and one read of randomness
        (an upload of 500 interactions without ids takes them at once)."""
        with self._lock:
            now_ms = time.time_ns() // 1_000_000
            stamps = [self._stamp(now_ms) for _ in range(count)]
        randomness = os.urandom(8 * count)
        return [_uuid7_text(ms, counter, randomness[8 * at:8 * at + 8])
                for at, (ms, counter) in enumerate(stamps)]


def _uuid7_text(ms: int, counter: int, random8: bytes) -> str:
    value = ((ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62)
             | (int.from_bytes(random8, "big") & 0x3FFF_FFFF_FFFF_FFFF))
    # str(uuid.UUID(int=value)), without building the object (a third of the cost).
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


new_id = _UUIDv7()
