"""Caps on open streams: per session, per account and in the whole server.

Every open stream costs memory (gRPC's call state, a buffer) and fan-out
time on every flush, so one caller opening thousands would slow every other
watcher and grow the process without bound. Counting is O(1) per open and
close; the caps are read from `LiveSettings` on every open.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import KeysView
from typing import TypeVar

from cursor_grpc.config import ConfigError, LiveSettings
from cursor_grpc.errors import ResourceExhausted

K = TypeVar("K")
# Bounds that must be at least 1: 0 would refuse every stream or send nothing.
_POSITIVE = ("stream_buffer_bytes", "max_stream_message_bytes", "replay_page_bytes",
             "max_streams_per_session", "max_streams_per_account", "max_streams_total")


class StreamLimits:
    def __init__(self, settings: LiveSettings) -> None:
        for name in _POSITIVE:
            if getattr(settings, name) < 1:
                raise ConfigError(f"CURSOR_{name.upper()} must be at least 1, not {getattr(settings, name)}")
        self._settings = settings
        self._sessions: Counter[str] = Counter()
        self._accounts: Counter[tuple[str, str]] = Counter()
        self.total = 0

    def admit(self, session_id: str, account: tuple[str, str]) -> None:
        """Count one more stream, or refuse it with RESOURCE_EXHAUSTED
        (TOO_MANY_STREAMS) naming the cap it would pass."""
        s = self._settings
        for scope, open_now, cap in (
            ("session", self._sessions[session_id], s.max_streams_per_session),
            ("account", self._accounts[account], s.max_streams_per_account),
            ("server", self.total, s.max_streams_total),
        ):
            if open_now >= cap:
                advice = ("try again later" if scope == "server"
                          else "close one (or let a stream you no longer read end) before opening another")
                raise ResourceExhausted(
                    f"this {scope} already has {cap} open streams, the most allowed; {advice}",
                    reason="TOO_MANY_STREAMS", metadata={"scope": scope, "limit": str(cap)},
                )
        self._sessions[session_id] += 1
        self._accounts[account] += 1
        self.total += 1

    def release(self, session_id: str, account: tuple[str, str]) -> None:
        _decrement(self._sessions, session_id)
        _decrement(self._accounts, account)
        self.total -= 1

    def sessions(self) -> KeysView[str]:
        """The sessions that have at least one open stream."""
        return self._sessions.keys()


def _decrement(counter: Counter[K], key: K) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
