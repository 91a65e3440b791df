"""Login throttling, in memory (one process owns the database). Every limit
is checked before any password work; the design is in docs/security.md.

* Per (account, address): after `free_login_failures` failures in a row from
  one address, each further attempt on the account from there waits 1 s, 2 s,
  4 s … capped at `max_login_delay_seconds`. Failures from one address never
  delay another, so an attacker cannot keep the owner out.
* Per account, over all addresses: a bucket of failures that one delayed
  address cannot empty (it refills faster than that address may fail), so
  distributed guessing is bounded without handing one attacker the owner's
  lock. While it is empty, addresses that never signed in to the account wait.
* Per address, over all accounts: a token bucket of login and sign-up attempts.

Unknown emails are counted the same way, so the answer never tells whether
an email exists.

Several instances on one database share their throttles: each failure,
success and address attempt is announced to the others (`announce`, through
the store's doorbell) and applied there (`apply`), so guesses spread over
instances count as if they reached one. Accounts are named in announcements
and in memory by a hash of the email, never the email itself.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TypeVar

import orjson

from cursor_grpc.config import AuthSettings
from cursor_grpc.errors import ResourceExhausted

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

MAX_TRACKED = 100_000
KNOWN_PEERS_PER_ACCOUNT = 8


@dataclass(slots=True)
class _Backoff:
    """Failures in a row on one account from one address."""

    failures: int = 0
    blocked_until: float = 0.0


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float

    def refill(self, now: float, capacity: float, per_second: float) -> None:
        self.tokens = min(capacity, self.tokens + (now - self.updated) * per_second)
        self.updated = now

    def wait(self, per_second: float) -> float:
        """Seconds until a whole token is there."""
        return max(0.0, (1.0 - self.tokens) / per_second)


@dataclass(slots=True)
class _Account:
    failures: _Bucket
    # Addresses that signed in to the account: exempt from its bucket.
    known_peers: list[str] = field(default_factory=list)


def peer_address(peer: str) -> str:
    """`ipv4:127.0.0.1:5123` -> `ipv4:127.0.0.1`: the port changes per connection."""
    head, _, tail = peer.rpartition(":")
    return head if head and tail.isdigit() else peer


def account_key(name: str) -> str:
    """What the throttles call an account: a hash of its email (or name)."""
    return hashlib.blake2b(name.encode(), digest_size=16).hexdigest()


def whole_seconds(wait: float) -> int:
    """A wait as the message says it: rounded up, so never `retry in 0 s`."""
    return max(1, math.ceil(wait))


class LoginThrottle:
    def __init__(self, settings: AuthSettings, clock: Callable[[], float] = time.monotonic,
                 announce: Callable[[str], None] | None = None) -> None:
        self._settings = settings
        self._clock = clock
        # Tells the other instances what happened here (None: alone).
        self.announce = announce
        self._peers: OrderedDict[str, _Bucket] = OrderedDict()
        self._pairs: OrderedDict[tuple[str, str], _Backoff] = OrderedDict()
        self._accounts: OrderedDict[str, _Account] = OrderedDict()

    def check(self, email: str, peer: str) -> None:
        """Raise RESOURCE_EXHAUSTED if this login attempt must wait."""
        now = self._clock()
        self._take_peer_token(peer, now, "login", "LOGIN_RATE_LIMITED")
        email = account_key(email)
        pair = self._pairs.get((email, peer))
        if pair is not None and now < pair.blocked_until:
            self._refuse_login(pair.blocked_until - now, "too many failed logins for this account from this address")
        account = self._accounts.get(email)
        if account is not None and peer not in account.known_peers:
            per_second = self._settings.account_login_failures_per_minute / 60.0
            account.failures.refill(now, float(self._settings.account_login_failure_burst), per_second)
            if account.failures.tokens < 1.0:
                self._refuse_login(account.failures.wait(per_second), "too many failed logins for this account")

    def check_registration(self, peer: str) -> None:
        """Raise RESOURCE_EXHAUSTED if this address must wait before signing up
        again: an `EMAIL_TAKEN` answer tells whether an email has an account."""
        self._take_peer_token(peer, self._clock(), "sign-up", "REGISTRATION_RATE_LIMITED")

    def failed(self, email: str, peer: str) -> None:
        key = account_key(email)
        self._failed(key, peer)
        self._share("failed", key, peer)

    def succeeded(self, email: str, peer: str) -> None:
        """Only this address's count restarts: another address's delay stays."""
        key = account_key(email)
        self._succeeded(key, peer)
        self._share("succeeded", key, peer)

    def apply(self, note: str) -> None:
        """Another instance's announcement; anything that is not one of ours is ignored."""
        try:
            doc = orjson.loads(note)
        except orjson.JSONDecodeError:
            return
        if not isinstance(doc, dict):
            return
        event, key, peer = doc.get("throttle"), doc.get("key", ""), doc.get("peer")
        if not isinstance(key, str) or not isinstance(peer, str) or len(key) > 64 or len(peer) > 200:
            return
        if event == "failed":
            self._failed(key, peer)
        elif event == "succeeded":
            self._succeeded(key, peer)
        elif event == "attempt":
            self._spend_peer_token(peer, self._clock())

    def _share(self, event: str, key: str, peer: str) -> None:
        if self.announce is not None:
            self.announce(orjson.dumps({"throttle": event, "key": key, "peer": peer}).decode())

    def _failed(self, email: str, peer: str) -> None:
        now = self._clock()
        pair = self._pairs.get((email, peer)) or self._remember(self._pairs, (email, peer), _Backoff())
        pair.failures += 1
        # The attempt after the last free failure waits 1 s, the next 2 s, …
        # (the exponent is capped: failures go on counting, one per delay,
        # far past the point where 2.0 ** n overflows).
        excess = pair.failures - self._settings.free_login_failures
        if excess >= 0:
            pair.blocked_until = now + min(2.0 ** min(excess, 62), self._settings.max_login_delay_seconds)
        bucket = self._account(email, now).failures
        bucket.refill(now, float(self._settings.account_login_failure_burst),
                      self._settings.account_login_failures_per_minute / 60.0)
        bucket.tokens = max(0.0, bucket.tokens - 1.0)

    def _succeeded(self, email: str, peer: str) -> None:
        self._pairs.pop((email, peer), None)
        known = self._account(email, self._clock()).known_peers
        if peer not in known:
            known.append(peer)
            del known[:-KNOWN_PEERS_PER_ACCOUNT]

    def _account(self, email: str, now: float) -> _Account:
        account = self._accounts.get(email)
        if account is None:
            full = _Bucket(float(self._settings.account_login_failure_burst), now)
            account = self._remember(self._accounts, email, _Account(full))
        return account

    def _take_peer_token(self, peer: str, now: float, attempts: str, reason: str) -> None:
        capacity = float(self._settings.peer_login_burst)
        per_second = self._settings.peer_login_per_minute / 60.0
        bucket = self._peers.get(peer) or self._remember(self._peers, peer, _Bucket(capacity, now))
        bucket.refill(now, capacity, per_second)
        if bucket.tokens < 1.0:
            wait = bucket.wait(per_second)
            raise ResourceExhausted(
                f"too many {attempts} attempts from this address; retry in {whole_seconds(wait)} s",
                reason=reason, retry_after=wait,
            )
        bucket.tokens -= 1.0
        self._share("attempt", "", peer)

    def _spend_peer_token(self, peer: str, now: float) -> None:
        """An attempt from `peer` made on another instance: it spends the same bucket, never below empty."""
        capacity = float(self._settings.peer_login_burst)
        bucket = self._peers.get(peer) or self._remember(self._peers, peer, _Bucket(capacity, now))
        bucket.refill(now, capacity, self._settings.peer_login_per_minute / 60.0)
        bucket.tokens = max(0.0, bucket.tokens - 1.0)

    @staticmethod
    def _refuse_login(wait: float, why: str) -> None:
        raise ResourceExhausted(f"{why}; retry in {whole_seconds(wait)} s", reason="LOGIN_THROTTLED",
                                retry_after=wait)

    @staticmethod
    def _remember(table: OrderedDict[K, V], key: K, value: V) -> V:
        table[key] = value
        if len(table) > MAX_TRACKED:
            table.popitem(last=False)
        return value
