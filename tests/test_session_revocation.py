"""However a session ends, its token and its open streams stop with it:
logout, rotation, password change and deactivation at once (also while other
calls with the token are in flight), expiry on a timer, and a revocation
written into the database by another process within a second."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from cursor.v1 import admin_service_pb2 as apb
from cursor.v1 import auth_service_pb2 as pb
from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor_grpc.auth import sessions as session_module
from cursor_grpc.clock import iso_to_ns, now_iso
from tests.conftest import PASSWORD, Client, Harness
from tests.helpers import error_reason
from tests.streams import StreamReader

# The contract: a stream ends within this long of the revoke returning.
CONTRACT_SECONDS = 1.0
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
IN_PROCESS_ENDINGS = ["logout", "rotation", "password change", "deactivation"]


def end_session(h: Harness, client: Client, ending: str) -> None:
    """End `client`'s session through the API, the way `ending` names."""
    if ending == "logout":
        client.auth.Logout(pb.LogoutRequest(), metadata=client.md)
    elif ending == "rotation":
        client.auth.RotateSession(pb.RotateSessionRequest(), metadata=client.md)
    elif ending == "password change":
        client.auth.ChangePassword(
            pb.ChangePasswordRequest(current_password=PASSWORD, new_password="another long password"),
            metadata=client.md,
        )
    else:
        h.admin().admin.SetAccountActive(apb.SetAccountActiveRequest(account=client.account, active=False),
                                         metadata=h.admin_md())


def write_to_db(h: Harness, sql: str, params: tuple[Any, ...]) -> None:
    """A change made behind the server's back, by a connection of our own."""
    h.database.execute(sql, params)


def token_hash(client: Client) -> bytes:
    return hashlib.sha256(client.token.encode()).digest()


def works(client: Client) -> bool:
    """Whether a cheap call with the client's token is accepted."""
    try:
        if client.account.startswith("readers/"):
            client.reader.GetMyState(rpb.GetMyStateRequest(), metadata=client.md)
        else:
            client.consultant.ListUnreadCounts(cpb.ListUnreadCountsRequest(), metadata=client.md)
    except grpc.RpcError as error:
        code = error.code()
    else:
        return True
    assert code == UNAUTHENTICATED, code
    return False


def record(client: Client) -> int:
    item = rpb.NewInteraction(type="answer", payload_json=json.dumps({"n": 1}))
    return int(client.reader.RecordInteraction(rpb.RecordInteractionRequest(interaction=item),
                                               metadata=client.md).interaction.sequence)


def open_streams(consultant: Client, reader: Client) -> list[StreamReader]:
    """A consultant's WatchActivity and a reader's WatchMyMessages, both open."""
    streams = [
        StreamReader(consultant.consultant.WatchActivity(cpb.WatchActivityRequest(), metadata=consultant.md)),
        StreamReader(reader.reader.WatchMyMessages(rpb.WatchMyMessagesRequest(), metadata=reader.md)),
    ]
    for stream in streams:
        stream.wait_for(lambda s=stream: bool(s.responses))
    return streams


def assert_ended_within(streams: list[StreamReader], since: float, seconds: float, reason: str | None = None) -> None:
    """Each stream ended UNAUTHENTICATED within `seconds` of `since` (monotonic)."""
    deadline = since + seconds + 5.0  # only to stop waiting; the bound is asserted below
    slowest = 0.0
    for stream in streams:
        while stream.ended_at is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert stream.ended_at is not None, "the stream is still open"
        assert stream.error is not None
        assert stream.error.code() == UNAUTHENTICATED, stream.error
        if reason is not None:
            assert error_reason(stream.error) == reason
        assert stream.ended_at - since < seconds, f"ended {stream.ended_at - since:.3f} s after the revoke"
        slowest = max(slowest, stream.ended_at - since)
    print(f"\n{len(streams)} streams ended at most {slowest * 1000:.0f} ms after the revoke")


# --- in-flight calls do not keep an ended session alive ----------------------------------------------------


def _call_repeatedly(client: Client, stop: threading.Event, calls: list[tuple[float, bool]]) -> None:
    while not stop.is_set():
        started = time.monotonic()
        try:
            client.reader.GetMyState(rpb.GetMyStateRequest(), metadata=client.md)
            calls.append((started, True))
        except grpc.RpcError:
            calls.append((started, False))


def test_a_token_stops_when_logout_returns_even_with_calls_in_flight(h: Harness) -> None:
    for round_number in range(8):
        reader = h.new_reader()
        stop, calls = threading.Event(), []  # type: ignore[var-annotated]
        threads = [threading.Thread(target=_call_repeatedly, args=(reader, stop, calls), daemon=True)
                   for _ in range(6)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(calls) < 30 and time.monotonic() < deadline:
            time.sleep(0.005)
        reader.auth.Logout(pb.LogoutRequest(), metadata=reader.md)
        returned = time.monotonic()
        while sum(1 for started, _ in list(calls) if started > returned) < 60 and time.monotonic() < deadline:
            time.sleep(0.005)
        stop.set()
        for thread in threads:
            thread.join(10)
        later = [ok for started, ok in calls if started > returned]
        assert later, "no call started after the logout"
        assert not any(later), f"round {round_number}: {sum(later)} of {len(later)} calls after logout succeeded"


def _keep_opening(client: Client, stop: threading.Event, kept: list[StreamReader], cancelled: set[int]) -> None:
    """Open WatchActivity streams one after another, keeping the last two open."""
    mine: list[StreamReader] = []
    while not stop.is_set():
        stream = StreamReader(client.consultant.WatchActivity(cpb.WatchActivityRequest(), metadata=client.md))
        give_up = time.monotonic() + 10
        while not stream.responses and stream.ended_at is None and time.monotonic() < give_up:
            time.sleep(0.001)
        kept.append(stream)
        mine.append(stream)
        if len(mine) > 2:
            old = mine.pop(0)
            cancelled.add(id(old))
            old.cancel()


@pytest.mark.parametrize("ending", IN_PROCESS_ENDINGS)
def test_streams_that_open_while_the_session_ends_are_ended_too(h: Harness, ending: str) -> None:
    writer = h.new_reader()
    for round_number in range(4):
        consultant = h.new_consultant()
        stop = threading.Event()
        kept: list[StreamReader] = []
        cancelled: set[int] = set()
        threads = [threading.Thread(target=_keep_opening, args=(consultant, stop, kept, cancelled), daemon=True)
                   for _ in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while sum(1 for s in list(kept) if s.responses) < 8 and time.monotonic() < deadline:
            time.sleep(0.005)
        end_session(h, consultant, ending)
        returned = time.monotonic()
        after_end = record(writer)
        stop.set()
        for thread in threads:
            thread.join(10)
        left_open = [s for s in kept if id(s) not in cancelled]
        assert_ended_within(left_open, returned, CONTRACT_SECONDS)
        late = [e.event_id for s in kept for e in s.events if e.event_id >= after_end]
        assert not late, f"round {round_number}: events committed after the {ending} were delivered: {late}"


# --- every way a session ends closes its streams within a second --------------------------------------------


def _revoke_elsewhere(h: Harness, client: Client) -> None:
    write_to_db(h, "UPDATE sessions SET revoked_at = ?, revoke_reason = 'operator' WHERE token_hash = ?",
                (now_iso(), token_hash(client)))


def _deactivate_elsewhere(h: Harness, client: Client) -> None:
    kind, account_id = client.account.split("/")
    table = "users" if kind == "readers" else "consultants"
    write_to_db(h, f"UPDATE {table} SET is_active = 0 WHERE id = ?", (account_id,))


def _delete_elsewhere(h: Harness, client: Client) -> None:
    write_to_db(h, "DELETE FROM sessions WHERE token_hash = ?", (token_hash(client),))


ELSEWHERE: dict[str, tuple[Callable[[Harness, Client], None], str]] = {
    "revoked": (_revoke_elsewhere, "SESSION_REVOKED"),
    "account deactivated": (_deactivate_elsewhere, "ACCOUNT_INACTIVE"),
    "deleted": (_delete_elsewhere, "INVALID_TOKEN"),
}


@pytest.mark.parametrize("ending", IN_PROCESS_ENDINGS)
def test_ending_a_session_here_closes_its_streams_within_a_second(h: Harness, ending: str) -> None:
    consultant, reader = h.new_consultant(), h.new_reader()
    streams = open_streams(consultant, reader)
    started = time.monotonic()
    end_session(h, consultant, ending)
    end_session(h, reader, ending)
    assert_ended_within(streams, started, CONTRACT_SECONDS)


@pytest.mark.parametrize("change", sorted(ELSEWHERE))
def test_a_revocation_by_another_process_closes_streams_and_stops_calls_within_a_second(
    h: Harness, change: str
) -> None:
    consultant, reader = h.new_consultant(), h.new_reader()
    streams = open_streams(consultant, reader)
    assert works(consultant)
    assert works(reader)
    apply, reason = ELSEWHERE[change]
    apply(h, consultant)
    apply(h, reader)
    returned = time.monotonic()
    assert_ended_within(streams, returned, CONTRACT_SECONDS, reason)
    # Unary calls stop as soon: the same check drops the sessions from the cache.
    while time.monotonic() - returned < CONTRACT_SECONDS and (works(consultant) or works(reader)):
        time.sleep(0.01)
    assert not works(consultant)
    assert not works(reader)


def test_a_stream_ends_when_its_session_expires(make_harness: Any) -> None:
    h = make_harness(reader_absolute_seconds=4, consultant_absolute_seconds=4)
    consultant, reader = h.new_consultant(), h.new_reader()
    streams = open_streams(consultant, reader)
    expires_ns = max(iso_to_ns(h.database.rows("SELECT expires_at FROM sessions WHERE token_hash = ?",
                                               (token_hash(client),))[0][0]) for client in (consultant, reader))
    # The later expiry, on the monotonic clock the streams' end times use.
    expire_at = time.monotonic() + (expires_ns / 1e9 - time.time())
    assert expire_at > time.monotonic(), "the sessions expired before the streams opened; the machine is very slow"
    assert_ended_within(streams, expire_at, CONTRACT_SECONDS, "SESSION_EXPIRED")
    for stream in streams:
        assert stream.ended_at is not None
        assert stream.ended_at > expire_at - 1.0, "ended long before the session expired"


def test_a_stream_rechecks_its_session_on_every_heartbeat(make_harness: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the periodic check off and no cache, the heartbeat's own check
    is what notices a session revoked behind the server's back."""
    h = make_harness(session_check_seconds=3600.0)
    monkeypatch.setattr(session_module, "CACHE_SECONDS", 0)
    object.__setattr__(h.server.app.settings.live, "heartbeat_seconds", 0.2)
    consultant, reader = h.new_consultant(), h.new_reader()
    streams = open_streams(consultant, reader)
    _revoke_elsewhere(h, consultant)
    _revoke_elsewhere(h, reader)
    returned = time.monotonic()
    assert_ended_within(streams, returned, 0.2 + CONTRACT_SECONDS, "SESSION_REVOKED")


def test_a_stream_that_cannot_write_is_released_when_its_session_ends(h: Harness) -> None:
    """A consumer that stopped reading leaves its stream blocked in a write;
    ending the session still ends it on the server within the second."""
    consultant, reader = h.new_consultant(), h.new_reader()
    # No BDP probing: the flow-control window stays small, so a few MiB fill it.
    channel = grpc.insecure_channel(h.server.address, options=[("grpc.http2.bdp_probe", 0)])
    try:
        call = Client(channel, consultant.token, consultant.account).consultant.WatchActivity(
            cpb.WatchActivityRequest(), metadata=consultant.md)
        next(iter(call))  # open; from now on nothing is read
        broadcaster = h.server.app.broadcaster
        assert broadcaster.stream_count == 1
        pad = "x" * 15_000
        for n in range(10):
            reader.reader.RecordInteractions(iter([rpb.RecordInteractionsRequest(interactions=[
                rpb.NewInteraction(type="answer", payload_json=json.dumps({"n": n * 50 + i, "pad": pad}))
                for i in range(50)
            ])]), metadata=reader.md)
        time.sleep(0.3)  # the stream has written what the window takes and waits
        end_session(h, consultant, "logout")
        returned = time.monotonic()
        while broadcaster.stream_count and time.monotonic() - returned < CONTRACT_SECONDS + 5:
            time.sleep(0.005)
        assert broadcaster.stream_count == 0
        assert time.monotonic() - returned < CONTRACT_SECONDS
        call.cancel()
    finally:
        channel.close()
