"""The login throttle's rules on a simulated clock, with the real defaults:
what hours of attack from one or many addresses leave the account's owner.
(tests/test_auth.py checks the same rules through a real server.)"""

from __future__ import annotations

import dataclasses

import pytest

from cursor_grpc.auth.throttle import LoginThrottle
from cursor_grpc.config import AuthSettings
from cursor_grpc.errors import ResourceExhausted

EMAIL = "victim@example.com"
OWNER = "ipv4:198.51.100.7"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(**changes: object) -> AuthSettings:
    """The defaults, with the per-address bucket out of the way: these tests
    are about the per-account rules, and each attacker is one address."""
    return dataclasses.replace(AuthSettings(), peer_login_burst=10**9, peer_login_per_minute=10**9, **changes)


def refusal(throttle: LoginThrottle, email: str, peer: str) -> ResourceExhausted | None:
    try:
        throttle.check(email, peer)
    except ResourceExhausted as error:
        return error
    return None


def attack(throttle: LoginThrottle, clock: Clock, peers: list[str], seconds: float,
           newcomer_refused: list[bool] | None = None) -> int:
    """Every peer guesses as fast as it is let, for `seconds`; the failures
    spent. After each failure, `newcomer_refused` gets whether an address
    new to the account would have been refused just then."""
    next_try = dict.fromkeys(peers, clock.now)
    end = clock.now + seconds
    failures = 0
    while True:
        peer = min(next_try, key=next_try.__getitem__)
        clock.now = max(clock.now, next_try[peer])
        if clock.now >= end:
            return failures
        error = refusal(throttle, EMAIL, peer)
        if error is None:
            throttle.failed(EMAIL, peer)
            failures += 1
            if newcomer_refused is not None:
                newcomer_refused.append(refusal(throttle, EMAIL, f"ipv4:192.0.2.{failures % 250}") is not None)
        else:
            assert error.retry_after is not None
            next_try[peer] = clock.now + error.retry_after + 1e-6


def test_one_address_guessing_all_day_never_delays_the_owner_elsewhere() -> None:
    clock = Clock()
    throttle = LoginThrottle(settings(), clock)
    spent = 0
    for hour in range(24):
        spent += attack(throttle, clock, ["ipv4:203.0.113.9"], 3600)
        assert refusal(throttle, EMAIL, f"ipv4:198.51.100.{hour}") is None, f"owner delayed after {hour + 1} h"
    print(f"\none address, 24 h: {spent} guesses")
    assert spent < 24 * 60 + 20, "about one guess a minute once delayed"


def test_many_addresses_at_once_empty_the_account_bucket_but_not_for_known_addresses() -> None:
    clock = Clock()
    throttle = LoginThrottle(settings(), clock)
    throttle.succeeded(EMAIL, OWNER)
    attackers = [f"ipv4:203.0.113.{n}" for n in range(50)]
    newcomer_refused: list[bool] = []
    spent = attack(throttle, clock, attackers, 600, newcomer_refused)
    print(f"\n50 addresses, 10 min: {spent} guesses (100 at once, then 10 a minute)")
    assert spent <= 100 + 10 * 10 + 1
    assert all(newcomer_refused[100:]), "once the bucket is empty, a new address waits for it"
    assert refusal(throttle, EMAIL, OWNER) is None, "an address that signed in before does not"
    clock.now += 6.1  # one failure's worth of refill
    assert refusal(throttle, EMAIL, "ipv4:192.0.2.1") is None


def test_the_owners_sign_in_does_not_lift_an_attackers_delay() -> None:
    clock = Clock()
    throttle = LoginThrottle(settings(), clock)
    attacker = "ipv4:203.0.113.9"
    for _ in range(5):
        throttle.failed(EMAIL, attacker)
    assert refusal(throttle, EMAIL, attacker) is not None
    throttle.succeeded(EMAIL, OWNER)
    assert refusal(throttle, EMAIL, attacker) is not None
    throttle.succeeded(EMAIL, attacker)
    assert refusal(throttle, EMAIL, attacker) is None, "a sign-in restarts its own address's count"


@pytest.mark.parametrize("limit", ["address", "pair", "account"])
def test_waits_under_a_second_are_announced_as_one_second(limit: str) -> None:
    clock = Clock()
    if limit == "address":
        throttle = LoginThrottle(dataclasses.replace(AuthSettings(), peer_login_burst=1), clock)
        throttle.check(EMAIL, OWNER)
        clock.now += 60 / AuthSettings().peer_login_per_minute - 0.001
    elif limit == "pair":
        throttle = LoginThrottle(settings(), clock)
        for _ in range(5):
            throttle.failed(EMAIL, OWNER)
        clock.now += 0.999
    else:
        throttle = LoginThrottle(settings(account_login_failure_burst=1, free_login_failures=100), clock)
        throttle.failed(EMAIL, "ipv4:203.0.113.9")
        clock.now += 60 / AuthSettings().account_login_failures_per_minute - 0.001
    error = refusal(throttle, EMAIL, OWNER)
    assert error is not None
    assert error.retry_after == pytest.approx(0.001, abs=1e-6)
    assert error.message.endswith("retry in 1 s"), error.message


def test_registrations_share_the_address_bucket_with_logins() -> None:
    clock = Clock()
    throttle = LoginThrottle(dataclasses.replace(AuthSettings(), peer_login_burst=2), clock)
    throttle.check_registration(OWNER)
    throttle.check(EMAIL, OWNER)
    with pytest.raises(ResourceExhausted) as refused:
        throttle.check_registration(OWNER)
    assert refused.value.reason == "REGISTRATION_RATE_LIMITED"
    throttle.check_registration("ipv4:192.0.2.1")  # another address has its own
