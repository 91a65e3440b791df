"""Caps on open streams: per session, per account and in the whole server.

Every open stream costs memory (gRPC's call state, a buffer) and fan-out
time on every flush, so one caller opening thousands would slow every other
watcher and grow the process without bound. Counting is O(1) per open and
close; the caps are read from `LiveSettings` on every open.

Several instances on one database share the per-session and per-account
caps: each announces what it holds (`snapshot_notes`, every
`SHARE_SECONDS` while anything changed, and as a keep-alive), the others
add it to their own counts (`apply`) and forget an instance they have not
heard from for `FORGET_SECONDS` (it stopped, or was killed). The server cap
stays per process: it bounds what one process holds.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Callable, KeysView
from typing import TypeVar

import orjson

from cursor_grpc.config import ConfigError, LiveSettings
from cursor_grpc.errors import ResourceExhausted

K = TypeVar("K")
# Bounds that must be at least 1: 0 would refuse every stream or send nothing.
# How often the counts are shared while they change, how often they are
# repeated unchanged (a keep-alive), and when a silent instance's go.
SHARE_SECONDS = 0.5
KEEPALIVE_SECONDS = 2.0
FORGET_SECONDS = 6.0
# Entries per announcement (each well under the doorbell's 1 KiB a note).
_PER_NOTE = 18
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
        # The other instances' counts, by the id they announce with.
        self.me = secrets.token_hex(8)
        self._remote: dict[str, _Remote] = {}
        self._changed = True
        self._shared_at = 0.0
        self._generation = 0

    def admit(self, session_id: str, account: tuple[str, str]) -> None:
        """Count one more stream, or refuse it with RESOURCE_EXHAUSTED
        (TOO_MANY_STREAMS) naming the cap it would pass."""
        s = self._settings
        self._forget_silent()
        elsewhere_session = sum(r.sessions.get(session_id, 0) for r in self._remote.values())
        elsewhere_account = sum(r.accounts.get(_account_text(account), 0) for r in self._remote.values())
        for scope, open_now, cap in (
            ("session", self._sessions[session_id] + elsewhere_session, s.max_streams_per_session),
            ("account", self._accounts[account] + elsewhere_account, s.max_streams_per_account),
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
        self._changed = True

    def release(self, session_id: str, account: tuple[str, str]) -> None:
        _decrement(self._sessions, session_id)
        _decrement(self._accounts, account)
        self.total -= 1
        self._changed = True

    # --- sharing with other instances ---------------------------------------

    def snapshot_notes(self, now: float | None = None) -> list[str]:
        """What to announce now: this instance's counts, in numbered parts,
        when they changed since the last share (at most every SHARE_SECONDS)
        or as a keep-alive; else nothing."""
        now = time.monotonic() if now is None else now
        due = SHARE_SECONDS if self._changed else KEEPALIVE_SECONDS
        if now - self._shared_at < due:
            return []
        self._shared_at, self._changed = now, False
        entries = [("s", key, n) for key, n in self._sessions.items()]
        entries += [("a", _account_text(key), n) for key, n in self._accounts.items()]
        parts = [entries[i:i + _PER_NOTE] for i in range(0, len(entries), _PER_NOTE)] or [[]]
        self._generation += 1
        return [orjson.dumps({"streams": {"from": self.me, "gen": self._generation, "part": i, "of": len(parts),
                                          "s": {k: n for t, k, n in part if t == "s"},
                                          "a": {k: n for t, k, n in part if t == "a"}}}).decode()
                for i, part in enumerate(parts)]

    def apply(self, note: str, now: float | None = None) -> None:
        """Another instance's counts (one part of its snapshot); a snapshot
        counts once all its parts are in. Anything else is ignored."""
        if not note.startswith('{"streams"'):
            return
        try:
            doc = orjson.loads(note)["streams"]
            sender, generation, part, parts = str(doc["from"]), int(doc["gen"]), int(doc["part"]), int(doc["of"])
            sessions = {str(k): int(v) for k, v in doc["s"].items()}
            accounts = {str(k): int(v) for k, v in doc["a"].items()}
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return
        if sender == self.me or not 0 <= part < parts <= 10_000:
            return
        now = time.monotonic() if now is None else now
        remote = self._remote.setdefault(sender, _Remote())
        if generation != remote.generation:  # a new snapshot begins
            remote.generation, remote.parts_seen = generation, set()
            remote.next_sessions, remote.next_accounts = {}, {}
        remote.next_sessions.update(sessions)
        remote.next_accounts.update(accounts)
        remote.parts_seen.add(part)
        remote.heard_at = now
        if len(remote.parts_seen) == parts:
            remote.sessions, remote.accounts = remote.next_sessions, remote.next_accounts

    def _forget_silent(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for sender in [k for k, r in self._remote.items() if now - r.heard_at > FORGET_SECONDS]:
            del self._remote[sender]

    def sessions(self) -> KeysView[str]:
        """The sessions that have at least one open stream."""
        return self._sessions.keys()


async def share_counts(limits: StreamLimits, announce: Callable[[str], None]) -> None:
    """Announce `limits`' counts to the other instances, as `snapshot_notes`
    says when; runs until cancelled."""
    while True:
        await asyncio.sleep(SHARE_SECONDS / 2)
        for note in limits.snapshot_notes():
            announce(note)


class _Remote:
    """One other instance's counts: the last whole snapshot, and the one arriving."""

    def __init__(self) -> None:
        self.sessions: dict[str, int] = {}
        self.accounts: dict[str, int] = {}
        self.heard_at = 0.0
        self.generation = -1
        self.next_sessions: dict[str, int] = {}
        self.next_accounts: dict[str, int] = {}
        self.parts_seen: set[int] = set()


def _account_text(account: tuple[str, str]) -> str:
    return f"{account[0]}/{account[1]}"


def _decrement(counter: Counter[K], key: K) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
