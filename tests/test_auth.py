"""AuthService through a real server: registration, login, sessions and their
ends, password changes, deactivation, login throttling, token storage."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from cursor.v1 import admin_service_pb2 as apb
from cursor.v1 import auth_service_pb2 as pb
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2
from tests import conftest
from tests.conftest import PASSWORD, Client, Harness, bearer
from tests.databases import Backend, TestDatabase
from tests.helpers import error_details, error_reason, retry_delay, rpc_error

READER = resources_pb2.ACCOUNT_KIND_READER
CONSULTANT = resources_pb2.ACCOUNT_KIND_CONSULTANT
BAD_LOGIN = "email or password is incorrect"
TABLES = ("users", "reader_states", "consultants", "sessions", "audit_logs")
OTHER_PASSWORD = "a different long password"


def counts(h: Harness) -> dict[str, int]:
    return {table: h.database.count(table) for table in TABLES}


def register(h: Harness, email: str, password: str = PASSWORD, display_name: str = "Ann") -> Any:
    return h.anonymous.auth.RegisterReader(
        pb.RegisterReaderRequest(email=email, password=password, display_name=display_name)
    ).reader


def login(h: Harness, email: str, password: str = PASSWORD, kind: Any = 0) -> Any:
    return h.anonymous.auth.Login(pb.LoginRequest(email=email, password=password, account_kind=kind)).session


def state_call(h: Harness, token: str) -> Callable[[], Any]:
    """A cheap authenticated RPC with `token`, to see whether it still works."""
    return lambda: h.anonymous.reader.GetMyState(rpb.GetMyStateRequest(), metadata=bearer(token))


def works(h: Harness, token: str) -> bool:
    try:
        state_call(h, token)()
    except grpc.RpcError as error:
        code = error.code()
    else:
        return True
    assert code == grpc.StatusCode.UNAUTHENTICATED, code
    return False


def rejected(h: Harness, token: str) -> str:
    """The reason `token` is refused; fails the test unless UNAUTHENTICATED."""
    error = rpc_error(state_call(h, token))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
    return error_reason(error)


def field_violations(error: grpc.RpcError) -> list[str]:
    return [
        violation.field
        for detail in error_details(error) if isinstance(detail, error_details_pb2.BadRequest)
        for violation in detail.field_violations
    ]


# --- RegisterReader -----------------------------------------------------------------------------------------


def test_register_reader_creates_account_state_and_audit_row(h: Harness) -> None:
    before = counts(h)
    reader = register(h, "  Ann.Lee@Example.COM ", display_name=" Ann Lee ")
    assert reader.name.startswith("readers/")
    assert reader.email == "ann.lee@example.com"
    assert reader.display_name == "Ann Lee"
    assert reader.active
    assert reader.create_time.seconds > 0
    assert reader.state.reader == reader.name
    assert reader.state.status == resources_pb2.READER_STATUS_ACTIVE
    assert not reader.state.HasField("last_seen_time")
    after = counts(h)
    assert after == {**before, "users": before["users"] + 1, "reader_states": before["reader_states"] + 1,
                     "audit_logs": before["audit_logs"] + 1}
    reader_id = reader.name.split("/")[1]
    [(password_hash,)] = h.database.rows("SELECT password_hash FROM users WHERE id = ?", (reader_id,))
    assert password_hash.startswith("$argon2id$")
    assert PASSWORD not in password_hash
    assert h.database.rows("SELECT actor_type, actor_id, action FROM audit_logs WHERE target_id = ?", (reader_id,)) == [
        ("reader", reader_id, "reader.register")
    ]
    # The email is compared case-insensitively at login too.
    session = login(h, "ANN.LEE@example.com")
    assert session.account == reader.name


@pytest.mark.parametrize(
    ("email", "password", "display_name", "field"),
    [
        ("not-an-email", PASSWORD, "Ann", "email"),
        ("", PASSWORD, "Ann", "email"),
        ("ann@nodot", PASSWORD, "Ann", "email"),
        ("two@at@example.com", PASSWORD, "Ann", "email"),
        ("ann@example.com", "short", "Ann", "password"),
        ("ann@example.com", "123456789", "Ann", "password"),
        ("ann@example.com", "x" * 257, "Ann", "password"),
        ("ann@example.com", PASSWORD, "", "display_name"),
        ("ann@example.com", PASSWORD, "   ", "display_name"),
        ("ann@example.com", PASSWORD, "x" * 101, "display_name"),
        ("ann@example.com", PASSWORD, "Ann\nLee", "display_name"),
    ],
)
def test_register_reader_refuses_bad_input_and_writes_nothing(
    h: Harness, email: str, password: str, display_name: str, field: str
) -> None:
    before = counts(h)
    error = rpc_error(lambda: register(h, email, password, display_name))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == [field]
    assert field in (error.details() or "")
    assert counts(h) == before


def test_register_reader_accepts_the_limits(h: Harness) -> None:
    register(h, "limits@example.com", "p" * 10, "d" * 100)
    register(h, "limits2@example.com", "p" * 256, "D")
    assert h.database.count("users") == 2


def test_register_duplicate_email_is_already_exists(h: Harness) -> None:
    register(h, "dup@example.com")
    before = counts(h)
    for email in ("dup@example.com", "DUP@Example.com "):
        error = rpc_error(lambda e=email: register(h, e, display_name="Someone else"))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        assert error_reason(error) == "EMAIL_TAKEN"
    assert counts(h) == before


def test_register_reader_starts_a_session_only_when_asked(h: Harness) -> None:
    """One round trip for a new app: `start_session` returns what Login would."""
    plain = h.anonymous.auth.RegisterReader(
        pb.RegisterReaderRequest(email="plain@example.com", password=PASSWORD, display_name="Plain"))
    assert not plain.HasField("session"), "the default starts no session"
    sessions = h.database.count("sessions")
    started = time.time()
    signed_in = h.anonymous.auth.RegisterReader(pb.RegisterReaderRequest(
        email="quick@example.com", password=PASSWORD, display_name="Quick", start_session=True))
    session = signed_in.session
    assert session.account == signed_in.reader.name
    assert (session.account_kind, session.role) == (READER, resources_pb2.CONSULTANT_ROLE_UNSPECIFIED)
    assert session.idle_timeout_seconds == 30 * 24 * 3600
    assert session.expire_time.seconds == pytest.approx(started + 365 * 24 * 3600, abs=5)
    assert h.database.count("sessions") == sessions + 1
    assert works(h, session.token)
    me = h.anonymous.reader.GetMyProfile(rpb.GetMyProfileRequest(), metadata=bearer(session.token))
    assert me.reader.name == signed_in.reader.name
    # The password it was registered with signs in as usual, to another session.
    assert login(h, "quick@example.com").token != session.token


# --- Login ----------------------------------------------------------------------------------------------------


def test_login_returns_a_session(h: Harness) -> None:
    reader = register(h, "session@example.com")
    started = time.time()
    session = login(h, "session@example.com")
    assert session.account == reader.name
    assert session.account_kind == READER
    assert session.role == resources_pb2.CONSULTANT_ROLE_UNSPECIFIED
    assert session.idle_timeout_seconds == 30 * 24 * 3600
    assert session.expire_time.seconds == pytest.approx(started + 365 * 24 * 3600, abs=5)
    assert works(h, session.token)
    admin = login(h, conftest.ADMIN_EMAIL, kind=CONSULTANT)
    assert admin.account.startswith("consultants/")
    assert admin.account_kind == CONSULTANT
    assert admin.role == resources_pb2.CONSULTANT_ROLE_ADMIN
    assert admin.idle_timeout_seconds == 30 * 60
    assert admin.expire_time.seconds == pytest.approx(time.time() + 12 * 3600, abs=5)


def test_an_unspecified_kind_signs_a_promoted_person_in_to_the_reader(h: Harness) -> None:
    """docs/security.md: unspecified picks the reader account, the lesser
    privilege, also once the reader was promoted, here to admin."""
    reader = register(h, "promoted@example.com")
    consultant = h.anonymous.admin.PromoteReader(
        apb.PromoteReaderRequest(reader=reader.name, role=resources_pb2.CONSULTANT_ROLE_ADMIN), metadata=h.admin_md(),
    ).consultant
    unspecified = login(h, "promoted@example.com")
    assert (unspecified.account, unspecified.account_kind) == (reader.name, READER)
    assert unspecified.role == resources_pb2.CONSULTANT_ROLE_UNSPECIFIED
    refused = rpc_error(lambda: h.anonymous.admin.ListAuditLogs(apb.ListAuditLogsRequest(),
                                                                 metadata=bearer(unspecified.token)))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED, "a reader session has no admin rights"
    as_reader = login(h, "promoted@example.com", kind=READER)
    assert (as_reader.account, as_reader.account_kind) == (reader.name, READER)
    as_consultant = login(h, "promoted@example.com", kind=CONSULTANT)
    assert (as_consultant.account, as_consultant.account_kind) == (consultant.name, CONSULTANT)
    assert as_consultant.role == resources_pb2.CONSULTANT_ROLE_ADMIN
    h.anonymous.admin.ListAuditLogs(apb.ListAuditLogsRequest(), metadata=bearer(as_consultant.token))


def test_wrong_password_and_unknown_email_look_the_same(h: Harness) -> None:
    register(h, "known@example.com")
    failures = [
        rpc_error(lambda: login(h, "known@example.com", "wrong password here")),
        rpc_error(lambda: login(h, "nobody@example.com", "wrong password here")),
        rpc_error(lambda: login(h, "nobody@example.com", PASSWORD)),
        # The email holds no consultant account: the same answer again.
        rpc_error(lambda: login(h, "known@example.com", PASSWORD, kind=CONSULTANT)),
    ]
    for error in failures:
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error.details() == BAD_LOGIN
        assert error_reason(error) == "BAD_CREDENTIALS"
    assert len({repr(error_details(e)) for e in failures}) == 1


def test_unknown_email_costs_as_much_as_a_wrong_password(h: Harness) -> None:
    """An unknown email still runs an argon2 verify, so timing doesn't tell
    whether an email has an account."""
    reader = h.new_reader()  # five wrong passwords below: all within the free failures
    reader_email = h.database.rows("SELECT email FROM users WHERE id = ?", (reader.account.split("/")[1],))[0][0]
    wrong: list[float] = []
    unknown: list[float] = []
    for i in range(5):
        for sink, address in ((wrong, reader_email), (unknown, f"ghost{i}@example.com")):
            started = time.perf_counter()
            error = rpc_error(lambda a=address: login(h, a, "not the password at all"))  # type: ignore[misc]
            sink.append(time.perf_counter() - started)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert statistics.median(unknown) >= 0.5 * statistics.median(wrong), (wrong, unknown)


def test_login_input_checks(h: Harness) -> None:
    for request, field in [
        (pb.LoginRequest(email="", password=PASSWORD), "email"),
        (pb.LoginRequest(email="a@example.com", password=""), "password"),
        (pb.LoginRequest(email="a@example.com", password=PASSWORD, account_kind=7), "account_kind"),  # type: ignore[arg-type]
    ]:
        error = rpc_error(lambda r=request: h.anonymous.auth.Login(r))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(error) == [field]


# --- Password length cap ----------------------------------------------------------------------------------------

# Four times the cap. (A request far larger, like a 15 MB password, is refused
# for its size before any handler runs: see cursor_grpc/request_guard.py.)
HUGE_PASSWORD = "x" * 4096
# 513 two-byte characters: 1,026 bytes of UTF-8, past the 1,024-byte cap.
OVER_CAP_PASSWORD = "é" * 513


class CountingHasher:
    """Stands in for the server's argon2 hasher and counts the passwords that reach it."""

    def __init__(self, hasher: Any) -> None:
        self.hasher = hasher
        self.calls = 0

    def hash(self, password: str) -> str:
        self.calls += 1
        return str(self.hasher.hash(password))

    def verify(self, password_hash: str, password: str) -> bool:
        self.calls += 1
        return bool(self.hasher.verify(password_hash, password))

    def check_needs_rehash(self, password_hash: str) -> bool:
        return bool(self.hasher.check_needs_rehash(password_hash))


@pytest.fixture
def hashing(h: Harness, monkeypatch: pytest.MonkeyPatch) -> CountingHasher:
    counter = CountingHasher(h.server.app.passwords._hasher)
    monkeypatch.setattr(h.server.app.passwords, "_hasher", counter)
    return counter


def assert_too_long(error: grpc.RpcError, field: str) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert error_reason(error) == "PASSWORD_TOO_LONG"
    assert field_violations(error) == [field]


def test_register_refuses_an_overlong_password_before_hashing(h: Harness, hashing: CountingHasher) -> None:
    for password in (HUGE_PASSWORD, OVER_CAP_PASSWORD, "x" * 257):
        assert_too_long(rpc_error(lambda p=password: register(h, "long@example.com", p)), "password")  # type: ignore[misc]
    assert hashing.calls == 0
    assert h.database.count("users") == 0


def test_login_refuses_an_overlong_password_before_hashing_whoever_it_names(
    h: Harness, hashing: CountingHasher
) -> None:
    register(h, "long@example.com")
    hashed = hashing.calls
    for password in (HUGE_PASSWORD, OVER_CAP_PASSWORD):
        known = rpc_error(lambda p=password: login(h, "long@example.com", p))  # type: ignore[misc]
        unknown = rpc_error(lambda p=password: login(h, "nobody@example.com", p))  # type: ignore[misc]
        assert_too_long(known, "password")
        assert (known.code(), known.details(), error_details(known)) == \
            (unknown.code(), unknown.details(), error_details(unknown)), "the answer names no account"
    assert hashing.calls == hashed
    # 1,024 bytes exactly is a password like any other: verified, and wrong.
    assert rpc_error(lambda: login(h, "long@example.com", "é" * 512)).code() == grpc.StatusCode.UNAUTHENTICATED
    assert hashing.calls == hashed + 1
    assert works(h, login(h, "long@example.com").token), "refused passwords are not failures that delay the account"


def test_change_password_refuses_overlong_passwords_before_hashing(h: Harness, hashing: CountingHasher) -> None:
    reader = h.new_reader()
    hashed = hashing.calls
    for current, new, field in ((HUGE_PASSWORD, OTHER_PASSWORD, "current_password"),
                                (PASSWORD, HUGE_PASSWORD, "new_password"),
                                (OVER_CAP_PASSWORD, OTHER_PASSWORD, "current_password")):
        error = rpc_error(lambda c=current, n=new: reader.auth.ChangePassword(  # type: ignore[misc]
            pb.ChangePasswordRequest(current_password=c, new_password=n), metadata=reader.md))
        assert_too_long(error, field)
    assert hashing.calls == hashed
    assert works(h, reader.token)


def test_create_consultant_refuses_an_overlong_password_before_hashing(h: Harness, hashing: CountingHasher) -> None:
    admin_md = h.admin_md()
    hashed = hashing.calls
    error = rpc_error(lambda: h.anonymous.admin.CreateConsultant(apb.CreateConsultantRequest(
        email="long@example.com", password=HUGE_PASSWORD, display_name="Long",
        role=resources_pb2.CONSULTANT_ROLE_CONSULTANT), metadata=admin_md))
    assert_too_long(error, "password")
    assert hashing.calls == hashed
    assert h.database.count("consultants") == 1


def test_create_admin_refuses_an_overlong_password_before_hashing(
    database: TestDatabase, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cursor_grpc import cli
    from cursor_grpc.auth.passwords import Passwords

    database.migrate()
    hashed: list[str] = []
    monkeypatch.setattr(Passwords, "hash_sync", lambda self, password: hashed.append(password) or "")
    monkeypatch.setenv("CURSOR_ADMIN_PASSWORD", "é" * 600)
    command = ["--log-level", "WARNING", "create-admin", "--db", database.url, "--email", "root@example.com"]
    assert cli.main(command) == 2
    assert "1024 bytes" in capsys.readouterr().err
    assert not hashed
    assert database.count("consultants") == 0


# --- Authentication failures ------------------------------------------------------------------------------------


def test_missing_malformed_and_unknown_tokens(h: Harness) -> None:
    reader = h.new_reader()
    cases: list[tuple[tuple[tuple[str, str], ...], str]] = [
        ((), "MISSING_TOKEN"),
        ((("authorization", reader.token),), "MALFORMED_AUTHORIZATION"),
        ((("authorization", f"Token {reader.token}"),), "MALFORMED_AUTHORIZATION"),
        ((("authorization", "Bearer"),), "MALFORMED_AUTHORIZATION"),
        ((("authorization", "Bearer    "),), "MALFORMED_AUTHORIZATION"),
        ((("authorization", "Bearer not-a-token-this-server-issued"),), "INVALID_TOKEN"),
        ((("authorization", f"Bearer {reader.token}x"),), "INVALID_TOKEN"),
    ]
    for metadata, reason in cases:
        error = rpc_error(
            lambda m=metadata: reader.reader.GetMyState(rpb.GetMyStateRequest(), metadata=m)  # type: ignore[misc]
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        assert error_reason(error) == reason, metadata
    # The scheme is case-insensitive, as HTTP's is.
    reader.reader.GetMyState(rpb.GetMyStateRequest(), metadata=(("authorization", f"bearer {reader.token}"),))
    # Logout and the other session RPCs need a session too.
    auth = h.anonymous.auth
    for call in (
        lambda: auth.Logout(pb.LogoutRequest()),
        lambda: auth.RotateSession(pb.RotateSessionRequest()),
        lambda: auth.ChangePassword(pb.ChangePasswordRequest(current_password=PASSWORD, new_password=OTHER_PASSWORD)),
    ):
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_reason(error) == "MISSING_TOKEN"


def test_session_expires_at_its_absolute_lifetime(make_harness: Any) -> None:
    h = make_harness(reader_absolute_seconds=2)
    register(h, "brief@example.com")
    session = login(h, "brief@example.com")
    assert session.expire_time.ToNanoseconds() == pytest.approx(time.time_ns() + 2e9, abs=0.5e9)
    assert works(h, session.token)
    time.sleep(1.0)
    assert works(h, session.token), "activity does not move the end"
    time.sleep(1.3)
    assert rejected(h, session.token) == "SESSION_EXPIRED"
    # A new login gives a fresh session.
    assert works(h, login(h, "brief@example.com").token)


def test_session_expires_after_idling(make_harness: Any) -> None:
    h = make_harness(reader_idle_seconds=2)
    register(h, "idle@example.com")
    session = login(h, "idle@example.com")
    assert session.idle_timeout_seconds == 2
    for _ in range(4):  # activity keeps it alive well past one idle period
        time.sleep(0.8)
        assert works(h, session.token)
    time.sleep(2.5)
    assert rejected(h, session.token) == "SESSION_IDLE_EXPIRED"
    assert rejected(h, session.token) == "SESSION_IDLE_EXPIRED"


def test_rotate_session_retires_the_old_token(h: Harness) -> None:
    reader = h.new_reader()
    rotated = reader.auth.RotateSession(pb.RotateSessionRequest(), metadata=reader.md).session
    assert rotated.token != reader.token
    assert rotated.account == reader.account
    assert rejected(h, reader.token) == "SESSION_REVOKED"
    assert works(h, rotated.token)
    rows = h.database.rows("SELECT revoke_reason FROM sessions WHERE token_hash = ?",
                           (hashlib.sha256(reader.token.encode()).digest(),))
    assert rows == [("rotated",)]
    # The old token cannot rotate (or do anything) any more.
    error = rpc_error(lambda: reader.auth.RotateSession(pb.RotateSessionRequest(), metadata=reader.md))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_logout_ends_only_the_calling_session(h: Harness) -> None:
    reader = h.new_reader()
    email = h.database.rows("SELECT email FROM users WHERE id = ?", (reader.account.split("/")[1],))[0][0]
    other = h.anonymous.login(email)
    reader.auth.Logout(pb.LogoutRequest(), metadata=reader.md)
    assert rejected(h, reader.token) == "SESSION_REVOKED"
    assert works(h, other.token)
    error = rpc_error(lambda: reader.auth.Logout(pb.LogoutRequest(), metadata=reader.md))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_change_password(h: Harness) -> None:
    register(h, "changer@example.com")
    first = h.anonymous.login("changer@example.com")
    second = h.anonymous.login("changer@example.com")

    error = rpc_error(lambda: first.auth.ChangePassword(
        pb.ChangePasswordRequest(current_password="not my password", new_password=OTHER_PASSWORD), metadata=first.md))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    error = rpc_error(lambda: first.auth.ChangePassword(
        pb.ChangePasswordRequest(current_password=PASSWORD, new_password="short"), metadata=first.md))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == ["new_password"]
    assert works(h, first.token), "failed attempts change nothing"
    assert works(h, second.token)
    assert works(h, login(h, "changer@example.com").token)

    changed = first.auth.ChangePassword(
        pb.ChangePasswordRequest(current_password=PASSWORD, new_password=OTHER_PASSWORD), metadata=first.md
    ).session
    assert changed.account == first.account
    assert works(h, changed.token)
    assert rejected(h, first.token) == "SESSION_REVOKED"
    assert rejected(h, second.token) == "SESSION_REVOKED"
    error = rpc_error(lambda: login(h, "changer@example.com", PASSWORD))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == BAD_LOGIN
    assert works(h, login(h, "changer@example.com", OTHER_PASSWORD).token)
    assert works(h, changed.token), "the new login does not end the changed session"


def test_deactivation_ends_sessions_at_once_and_blocks_login(h: Harness) -> None:
    reader = h.new_reader()
    email = h.database.rows("SELECT email FROM users WHERE id = ?", (reader.account.split("/")[1],))[0][0]
    assert works(h, reader.token)  # cached in the server now
    response = h.admin().admin.SetAccountActive(
        apb.SetAccountActiveRequest(account=reader.account, active=False), metadata=h.admin_md()
    )
    assert response.revoked_session_count == 1
    assert rejected(h, reader.token) in {"SESSION_REVOKED", "ACCOUNT_INACTIVE"}
    error = rpc_error(lambda: login(h, email))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(error) == "ACCOUNT_INACTIVE"
    # A wrong password tells nothing about the account's state.
    error = rpc_error(lambda: login(h, email, "not the password at all"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    h.admin().admin.SetAccountActive(
        apb.SetAccountActiveRequest(account=reader.account, active=True), metadata=h.admin_md()
    )
    assert works(h, login(h, email).token)
    assert rejected(h, reader.token) == "SESSION_REVOKED", "reactivation does not revive old sessions"


# --- Throttling ---------------------------------------------------------------------------------------------------


def test_failed_logins_delay_the_account(h: Harness) -> None:
    register(h, "target@example.com")  # never signed in from here
    for _ in range(5):
        error = rpc_error(lambda: login(h, "target@example.com", "guess guess guess"))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    error = rpc_error(lambda: login(h, "target@example.com"))  # even the right password waits
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(error) == "LOGIN_THROTTLED"
    delay = retry_delay(error)
    assert delay is not None
    assert 0 < delay <= 1.0
    time.sleep(delay + 0.05)
    assert works(h, login(h, "target@example.com").token)
    # Success resets the count.
    for _ in range(5):
        assert rpc_error(lambda: login(h, "target@example.com", "guess guess guess")).code() == \
            grpc.StatusCode.UNAUTHENTICATED


def test_unknown_emails_are_throttled_alike(h: Harness) -> None:
    for _ in range(5):
        assert rpc_error(lambda: login(h, "ghost@example.com", "guess guess guess")).code() == \
            grpc.StatusCode.UNAUTHENTICATED
    error = rpc_error(lambda: login(h, "ghost@example.com", "guess guess guess"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(error) == "LOGIN_THROTTLED"


def test_delay_grows_with_further_failures(h: Harness) -> None:
    register(h, "growing@example.com")
    delays: list[float] = []
    for _ in range(2):
        for _ in range(5 if not delays else 1):
            assert rpc_error(lambda: login(h, "growing@example.com", "guess guess guess")).code() == \
                grpc.StatusCode.UNAUTHENTICATED
        error = rpc_error(lambda: login(h, "growing@example.com", "guess guess guess"))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        delay = retry_delay(error)
        assert delay is not None
        delays.append(delay)
        time.sleep(delay + 0.05)
    assert 0.2 < delays[0] <= 1.0
    assert 1.2 < delays[1] <= 2.0


@pytest.fixture
def two_addresses(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., tuple[Harness, Client]]]:
    """Factory: a server listening on `localhost`, so that it is reachable from
    two peer addresses: the harness talks from 127.0.0.1, the returned client
    from [::1]."""
    started: list[tuple[Harness, grpc.Channel]] = []

    def make(**auth: Any) -> tuple[Harness, Client]:
        database = conftest.migrate_with_admin(backend.fresh_database(tmp_path, f"two{len(started)}"), monkeypatch)
        settings = dataclasses.replace(conftest.test_settings(database, **auth), listen="localhost:0")
        harness = Harness(conftest.ServerThread(settings), database)
        assert harness.server.running is not None
        channel = grpc.insecure_channel(f"[::1]:{harness.server.running.port}")
        started.append((harness, channel))
        return harness, Client(channel)

    yield make
    for harness, channel in started:
        channel.close()
        harness.close()
        harness.server.stop()


WRONG_PASSWORD = "guess guess guess"


def guess(client: Client, email: str, password: str = WRONG_PASSWORD) -> grpc.RpcError:
    return rpc_error(lambda: client.auth.Login(pb.LoginRequest(email=email, password=password)))


def test_an_attackers_failures_do_not_keep_the_owner_out_of_a_new_address(
    two_addresses: Callable[..., tuple[Harness, Client]]
) -> None:
    owner, attacker = two_addresses()
    register(owner, "victim@example.com")  # and never signed in, from anywhere
    for _ in range(5):
        assert guess(attacker, "victim@example.com").code() == grpc.StatusCode.UNAUTHENTICATED
    # The attacker's address waits, longer with each failure ...
    error = guess(attacker, "victim@example.com")
    assert error_reason(error) == "LOGIN_THROTTLED"
    time.sleep(retry_delay(error) or 0.0)
    assert guess(attacker, "victim@example.com").code() == grpc.StatusCode.UNAUTHENTICATED
    error = guess(attacker, "victim@example.com", PASSWORD)
    assert error_reason(error) == "LOGIN_THROTTLED", "even the right password waits there"
    # ... while the owner, from an address the account has never seen, signs in at once.
    assert works(owner, login(owner, "victim@example.com").token)
    assert error_reason(guess(attacker, "victim@example.com")) == "LOGIN_THROTTLED", \
        "the owner's sign-in does not lift the attacker's delay"


def test_the_account_wide_cap_spares_addresses_that_signed_in_before(
    two_addresses: Callable[..., tuple[Harness, Client]]
) -> None:
    # Per address, failures are free here; across addresses the account takes 3, then one a minute.
    owner, attacker = two_addresses(free_login_failures=1000, account_login_failure_burst=3,
                                    account_login_failures_per_minute=1.0)
    register(owner, "owner@example.com")
    login(owner, "owner@example.com")  # 127.0.0.1 is now known to the account
    for _ in range(3):
        assert guess(attacker, "owner@example.com").code() == grpc.StatusCode.UNAUTHENTICATED
    error = guess(attacker, "owner@example.com", PASSWORD)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(error) == "LOGIN_THROTTLED"
    assert 30 < (retry_delay(error) or 0.0) <= 60
    assert works(owner, login(owner, "owner@example.com").token)


@pytest.fixture
def limited_peer(make_harness: Any) -> Harness:
    """A server whose per-peer bucket holds 3 attempts and refills one a minute."""
    return make_harness(peer_login_burst=3, peer_login_per_minute=1.0)  # type: ignore[no-any-return]


def test_peer_token_bucket_limits_attempts(limited_peer: Harness) -> None:
    h = limited_peer
    register(h, "bucket@example.com")
    assert works(h, login(h, "bucket@example.com").token)
    error = rpc_error(lambda: login(h, "other@example.com", "guess guess guess"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    error = rpc_error(lambda: login(h, "bucket@example.com"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(error) == "LOGIN_RATE_LIMITED"
    delay = retry_delay(error)
    assert delay is not None
    assert 30 < delay <= 60


def test_registration_is_throttled_per_address_like_login(limited_peer: Harness) -> None:
    """EMAIL_TAKEN tells whether an email has an account: registrations draw on
    the address's bucket too, so that cannot be asked at full speed."""
    h = limited_peer
    register(h, "taken@example.com")
    error = rpc_error(lambda: register(h, "taken@example.com"))
    assert error_reason(error) == "EMAIL_TAKEN"
    assert rpc_error(lambda: login(h, "taken@example.com", "guess guess guess")).code() == \
        grpc.StatusCode.UNAUTHENTICATED
    for email in ("taken@example.com", "fresh@example.com"):  # the same answer, taken or not
        error = rpc_error(lambda e=email: register(h, e))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reason(error) == "REGISTRATION_RATE_LIMITED"
        assert 30 < (retry_delay(error) or 0.0) <= 60
    assert h.database.count("users") == 1


def test_a_short_wait_is_never_announced_as_zero_seconds(make_harness: Any) -> None:
    h = make_harness(peer_login_burst=1, peer_login_per_minute=120.0)  # a token every 0.5 s
    request = pb.LoginRequest(email="ghost@example.com", password="guess guess guess")
    attempts = [h.anonymous.auth.Login.future(request) for _ in range(3)]  # at once: the first takes the token
    refused = [error for error in (rpc_error(a.result) for a in attempts)
               if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert refused
    for error in refused:
        assert 0 < (retry_delay(error) or 0.0) <= 0.5
        assert (error.details() or "").endswith("retry in 1 s"), error.details()


# --- Token storage ------------------------------------------------------------------------------------------------


def test_only_a_hash_of_the_token_is_stored(h: Harness) -> None:
    reader: Client = h.new_reader()
    token = reader.token
    assert len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) == 32, "256 random bits"
    rows = h.database.rows("SELECT * FROM sessions")
    assert rows
    for row in rows:
        for value in row:
            if isinstance(value, bytes):
                assert token.encode() not in value
            else:
                assert token not in str(value)
    digest = hashlib.sha256(token.encode()).digest()
    [(token_hash,)] = h.database.rows("SELECT token_hash FROM sessions WHERE actor_id = ?",
                                      (reader.account.split("/")[1],))
    assert isinstance(token_hash, bytes)
    assert len(token_hash) == 32
    assert token_hash == digest


@pytest.mark.sqlite_only
def test_the_token_appears_in_no_database_file(h: Harness) -> None:
    token = h.new_reader().token
    for path in h.db_path.parent.glob(h.db_path.name + "*"):
        assert token.encode() not in path.read_bytes(), path.name


def test_rotation_keeps_the_absolute_expiry(h: Harness) -> None:
    reader = h.new_reader()
    first = reader.auth.RotateSession(pb.RotateSessionRequest(), metadata=reader.md).session
    time.sleep(0.05)
    second = reader.auth.RotateSession(pb.RotateSessionRequest(), metadata=bearer(first.token)).session
    assert second.token != first.token
    assert second.expire_time == first.expire_time, "rotating must not extend a session's life"


def test_change_password_guesses_are_throttled(h: Harness) -> None:
    reader = h.new_reader()
    wrong = pb.ChangePasswordRequest(current_password="not the password", new_password="another long password")
    for _ in range(5):
        error = rpc_error(lambda: reader.auth.ChangePassword(wrong, metadata=reader.md))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    error = rpc_error(lambda: reader.auth.ChangePassword(wrong, metadata=reader.md))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(error) == "LOGIN_THROTTLED"
    assert retry_delay(error) is not None


def test_a_login_with_a_control_character_in_the_email_is_an_unknown_email(h: Harness) -> None:
    """No account can have such an email (every write refuses it), and
    PostgreSQL cannot even compare text holding NUL: the answer is the one
    for any unknown email, never INTERNAL. (Found by tests/test_fuzz.py on
    PostgreSQL.)"""
    for email in ("\x00@example.com", "ann\x1f@example.com", "\x7f"):
        with pytest.raises(grpc.RpcError) as refused:
            h.anonymous.auth.Login(pb.LoginRequest(email=email, password="whatever it is"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value.details()
