"""Login throttling, in memory (one process owns the database).

* Per account: after `free_login_failures` failures in a row, each further
  attempt must wait 1 s, 2 s, 4 s … capped at `max_login_delay_seconds`, so
  guessing is slow but nobody is locked out for long. A peer that has signed
  in to the account before is exempt, so an attacker elsewhere cannot keep
  the account's owner out. Unknown emails are counted the same way, so the
  answer never tells whether an email exists.
* Per peer address: a token bucket over all accounts.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TypeVar

from cursor_grpc.config import AuthSettings
from cursor_grpc.errors import ResourceExhausted

V = TypeVar("V")

MAX_TRACKED = 100_000
KNOWN_PEERS_PER_ACCOUNT = 8


@dataclass(slots=True)
class _AccountRecord:
    failures: int = 0
    blocked_until: float = 0.0
    known_peers: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


def peer_address(peer: str) -> str:
    """`ipv4:127.0.0.1:5123` -> `ipv4:127.0.0.1`: the port changes per connection."""
    head, _, tail = peer.rpartition(":")
    return head if head and tail.isdigit() else peer


class LoginThrottle:
    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._accounts: OrderedDict[str, _AccountRecord] = OrderedDict()
        self._peers: OrderedDict[str, _Bucket] = OrderedDict()

    @staticmethod
    def _now() -> float:
        return time.monotonic()

    def check(self, email: str, peer: str) -> None:
        """Raise RESOURCE_EXHAUSTED if this attempt must wait."""
        now = self._now()
        bucket = self._peers.get(peer)
        per_second = self._settings.peer_login_per_minute / 60.0
        if bucket is None:
            bucket = _Bucket(float(self._settings.peer_login_burst), now)
            self._remember(self._peers, peer, bucket)
        bucket.tokens = min(float(self._settings.peer_login_burst), bucket.tokens + (now - bucket.updated) * per_second)
        bucket.updated = now
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / per_second
            raise ResourceExhausted(
                f"too many login attempts from this address; retry in {wait:.0f} s",
                reason="LOGIN_RATE_LIMITED", retry_after=wait,
            )
        bucket.tokens -= 1.0
        record = self._accounts.get(email)
        if record is not None and now < record.blocked_until and peer not in record.known_peers:
            wait = record.blocked_until - now
            raise ResourceExhausted(
                f"too many failed logins for this account; retry in {wait:.1f} s",
                reason="LOGIN_THROTTLED", retry_after=wait,
            )

    def failed(self, email: str, peer: str) -> None:
        record = self._accounts.get(email)
        if record is None:
            record = _AccountRecord()
            self._remember(self._accounts, email, record)
        record.failures += 1
        # The attempt after the last free failure waits 1 s, the next 2 s, …
        # (the exponent is capped: a known peer is never blocked, so its
        # failures can pile up far past the point where 2.0 ** n overflows).
        excess = record.failures - self._settings.free_login_failures
        if excess >= 0:
            delay = min(2.0 ** min(excess, 62), self._settings.max_login_delay_seconds)
            record.blocked_until = self._now() + delay

    def succeeded(self, email: str, peer: str) -> None:
        record = self._accounts.get(email)
        if record is None:
            record = _AccountRecord()
            self._remember(self._accounts, email, record)
        record.failures = 0
        record.blocked_until = 0.0
        if peer not in record.known_peers:
            record.known_peers.append(peer)
            del record.known_peers[:-KNOWN_PEERS_PER_ACCOUNT]

    @staticmethod
    def _remember(table: OrderedDict[str, V], key: str, value: V) -> None:
        table[key] = value
        if len(table) > MAX_TRACKED:
            table.popitem(last=False)
