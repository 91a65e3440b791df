"""Pure logic: what keeps a session read before its revocation committed
from being admitted (and cached) again."""

from __future__ import annotations

from cursor_grpc.auth.revocations import Revocations, account_key, session_key

SESSION = [session_key("s1"), account_key("reader", "r1")]


def test_a_read_that_began_before_the_revocation_committed_is_refused() -> None:
    revocations = Revocations()
    before = revocations.begin_read()
    revocations.begin([session_key("s1")])
    assert not revocations.admits(before, SESSION), "refused while the revocation is being written"
    during = revocations.begin_read()
    revocations.committed([session_key("s1")])
    assert not revocations.admits(before, SESSION)
    assert not revocations.admits(during, SESSION), "it began before the commit, so it may have missed it"
    after = revocations.begin_read()
    assert revocations.admits(after, SESSION), "a read that began after the commit sees the database's answer"
    for started in (before, during, after):
        revocations.end_read(started)
    assert len(revocations) == 0, "forgotten once no earlier read is running"


def test_an_account_revocation_covers_every_session_of_the_account() -> None:
    revocations = Revocations()
    started = revocations.begin_read()
    revocations.seen([account_key("reader", "r1")])
    assert not revocations.admits(started, SESSION)
    assert revocations.admits(started, [session_key("s2"), account_key("reader", "r2")])
    revocations.end_read(started)
    assert len(revocations) == 0


def test_a_failed_revocation_changes_nothing() -> None:
    revocations = Revocations()
    revocations.begin([session_key("s1")])
    revocations.abandoned([session_key("s1")])
    assert revocations.admits(revocations.begin_read(), SESSION)
    assert len(revocations) == 0
