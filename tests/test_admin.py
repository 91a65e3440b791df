"""AdminService through a real server: creating and promoting consultants,
(de)activating accounts, who may do it, and the audit log it leaves."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import grpc
import pytest

from cursor.v1 import admin_service_pb2 as apb
from cursor.v1 import auth_service_pb2 as pb
from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2
from tests.conftest import ADMIN_EMAIL, PASSWORD, Client, Harness
from tests.helpers import error_reason, rpc_error

READER = resources_pb2.ACCOUNT_KIND_READER
CONSULTANT = resources_pb2.ACCOUNT_KIND_CONSULTANT
ROLE = resources_pb2
WRITTEN = ("users", "consultants", "sessions", "audit_logs")


def counts(h: Harness) -> dict[str, int]:
    return {table: h.database.count(table) for table in WRITTEN}


def audit(h: Harness) -> list[tuple[Any, ...]]:
    """(actor_type, actor_id, action, target_type, target_id, details) in order."""
    return [
        (*row[:5], json.loads(row[5]))
        for row in h.database.rows("SELECT actor_type, actor_id, action, target_type, target_id, details "
                                   "FROM audit_logs ORDER BY created_at, id")
    ]


def last_audit(h: Harness) -> tuple[Any, ...]:
    return audit(h)[-1]


def admin_id(h: Harness) -> str:
    return str(h.database.rows("SELECT id FROM consultants WHERE email = ?", (ADMIN_EMAIL,))[0][0])


def register(h: Harness, email: str, name: str = "Rita Reader") -> str:
    reader = h.anonymous.auth.RegisterReader(
        pb.RegisterReaderRequest(email=email, password=PASSWORD, display_name=name)
    ).reader
    return str(reader.name)


def login(h: Harness, email: str, kind: Any = 0, password: str = PASSWORD) -> Any:
    return h.anonymous.auth.Login(pb.LoginRequest(email=email, password=password, account_kind=kind)).session


def create(h: Harness, email: str, role: Any = ROLE.CONSULTANT_ROLE_CONSULTANT, md: Any = None,
           password: str = PASSWORD, name: str = "Carl Consultant") -> Any:
    return h.anonymous.admin.CreateConsultant(
        apb.CreateConsultantRequest(email=email, password=password, display_name=name, role=role),
        metadata=md if md is not None else h.admin_md(),
    ).consultant


def promote(h: Harness, reader: str, role: Any = 0, md: Any = None) -> Any:
    return h.anonymous.admin.PromoteReader(
        apb.PromoteReaderRequest(reader=reader, role=role), metadata=md if md is not None else h.admin_md()
    ).consultant


def set_active(h: Harness, account: str, active: bool, md: Any = None) -> Any:
    return h.anonymous.admin.SetAccountActive(
        apb.SetAccountActiveRequest(account=account, active=active), metadata=md if md is not None else h.admin_md()
    )


def can_list_readers(h: Harness, token: str) -> bool:
    try:
        h.anonymous.consultant.ListReaders(cpb.ListReadersRequest(), metadata=(("authorization", f"Bearer {token}"),))
    except grpc.RpcError as error:
        code = error.code()
    else:
        return True
    assert code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), code
    return False


# --- CreateConsultant ---------------------------------------------------------------------------------------------


def test_create_consultant(h: Harness) -> None:
    consultant = create(h, " Carl@Example.com ", ROLE.CONSULTANT_ROLE_SUPERVISOR)
    assert consultant.name.startswith("consultants/")
    assert consultant.email == "carl@example.com"
    assert consultant.display_name == "Carl Consultant"
    assert consultant.role == ROLE.CONSULTANT_ROLE_SUPERVISOR
    assert consultant.active
    assert consultant.promoted_from == ""
    assert consultant.create_time.seconds > 0
    cid = consultant.name.split("/")[1]
    assert last_audit(h) == ("consultant", admin_id(h), "consultant.create", "consultant", cid,
                             {"role": "supervisor"})
    session = login(h, "carl@example.com", CONSULTANT)
    assert session.account == consultant.name
    assert session.role == ROLE.CONSULTANT_ROLE_SUPERVISOR
    assert can_list_readers(h, session.token)
    # A consultant-only email picks the consultant account when unspecified.
    assert login(h, "carl@example.com").account == consultant.name
    # Only a hash of the password is stored.
    [(password_hash,)] = h.database.rows("SELECT password_hash FROM consultants WHERE id = ?", (cid,))
    assert password_hash.startswith("$argon2id$")


@pytest.mark.parametrize(
    ("email", "password", "name", "role", "field"),
    [
        ("c@example.com", PASSWORD, "C", ROLE.CONSULTANT_ROLE_UNSPECIFIED, "role"),
        ("c@example.com", PASSWORD, "C", 9, "role"),
        ("not an email", PASSWORD, "C", ROLE.CONSULTANT_ROLE_CONSULTANT, "email"),
        ("c@example.com", "short", "C", ROLE.CONSULTANT_ROLE_CONSULTANT, "password"),
        ("c@example.com", PASSWORD, "", ROLE.CONSULTANT_ROLE_CONSULTANT, "display_name"),
        ("c@example.com", PASSWORD, "x" * 101, ROLE.CONSULTANT_ROLE_CONSULTANT, "display_name"),
    ],
)
def test_create_consultant_bad_input(h: Harness, email: str, password: str, name: str, role: int,
                                     field: str) -> None:
    md = h.admin_md()
    before = counts(h)
    error = rpc_error(lambda: create(h, email, role, md=md, password=password, name=name))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (error.details() or "")
    assert counts(h) == before


def test_create_consultant_duplicate_email(h: Harness) -> None:
    create(h, "twice@example.com")
    before = counts(h)
    for email in ("twice@example.com", "TWICE@example.com", ADMIN_EMAIL):
        error = rpc_error(lambda e=email: create(h, e))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        assert error_reason(error) == "EMAIL_TAKEN"
    assert counts(h) == before


def test_only_admins_may_call_admin_rpcs(h: Harness) -> None:
    consultant = h.new_consultant(ROLE.CONSULTANT_ROLE_CONSULTANT)
    supervisor = h.new_consultant(ROLE.CONSULTANT_ROLE_SUPERVISOR)
    reader = h.new_reader()
    victim = register(h, "victim@example.com")
    before = counts(h)
    for caller, reason in ((consultant, "ROLE_TOO_LOW"), (supervisor, "ROLE_TOO_LOW"), (reader, "CONSULTANT_ONLY")):
        for call in (
            lambda c=caller: create(h, "sneaky@example.com", ROLE.CONSULTANT_ROLE_ADMIN, md=c.md),
            lambda c=caller: promote(h, victim, ROLE.CONSULTANT_ROLE_ADMIN, md=c.md),
            lambda c=caller: set_active(h, victim, False, md=c.md),
            lambda c=caller: set_active(h, consultant.account, False, md=c.md),
        ):
            error = rpc_error(call)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert error_reason(error) == reason
    assert counts(h) == before
    # Without a session at all it is UNAUTHENTICATED, not PERMISSION_DENIED.
    error = rpc_error(lambda: create(h, "sneaky@example.com", md=()))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


# --- PromoteReader ------------------------------------------------------------------------------------------------


def test_promote_reader_gives_the_same_person_a_consultant_account(h: Harness) -> None:
    reader_name = register(h, "Promo@example.com", "Pat Promoted")
    reader_id = reader_name.split("/")[1]
    reader_session = login(h, "promo@example.com", READER)
    consultant = promote(h, reader_name, ROLE.CONSULTANT_ROLE_SUPERVISOR)
    cid = consultant.name.split("/")[1]
    assert consultant.email == "promo@example.com"
    assert consultant.display_name == "Pat Promoted"
    assert consultant.role == ROLE.CONSULTANT_ROLE_SUPERVISOR
    assert consultant.promoted_from == reader_name
    assert consultant.active
    # Same password hash, linked by user_id.
    [(user_hash,)] = h.database.rows("SELECT password_hash FROM users WHERE id = ?", (reader_id,))
    assert h.database.rows("SELECT password_hash, user_id FROM consultants WHERE id = ?", (cid,)) == \
        [(user_hash, reader_id)]
    assert last_audit(h) == ("consultant", admin_id(h), "reader.promote", "reader", reader_id,
                             {"consultant_id": cid, "role": "supervisor"})

    as_reader = login(h, "promo@example.com", READER)
    assert as_reader.account == reader_name
    assert as_reader.account_kind == READER
    as_consultant = login(h, "promo@example.com", CONSULTANT)
    assert as_consultant.account == consultant.name
    assert as_consultant.account_kind == CONSULTANT
    assert as_consultant.role == ROLE.CONSULTANT_ROLE_SUPERVISOR
    unspecified = login(h, "promo@example.com")
    assert unspecified.account == reader_name, "the least privilege is the default"
    # Each session does what its account may; the reader account is unchanged.
    assert can_list_readers(h, as_consultant.token)
    assert not can_list_readers(h, as_reader.token)
    reader = Client(h.channel, reader_session.token, reader_name)
    reader.reader.GetMyState(rpb.GetMyStateRequest(), metadata=reader.md)
    # A consultant session of a promoted reader is stored (sessions.actor_id
    # does not reference users, so foreign keys don't refuse it).
    assert h.database.rows("SELECT actor_type FROM sessions WHERE actor_id = ?", (cid,))[0] == ("consultant",)


def test_promote_with_unspecified_role_makes_a_consultant(h: Harness) -> None:
    consultant = promote(h, register(h, "plain@example.com"))
    assert consultant.role == ROLE.CONSULTANT_ROLE_CONSULTANT
    assert login(h, "plain@example.com", CONSULTANT).role == ROLE.CONSULTANT_ROLE_CONSULTANT


def test_promote_refusals(h: Harness) -> None:
    twice = register(h, "twice@example.com")
    promote(h, twice)
    taken = register(h, "taken@example.com")
    create(h, "taken@example.com")
    inactive = register(h, "inactive@example.com")
    set_active(h, inactive, False)
    before = counts(h)
    cases = [
        (twice, grpc.StatusCode.ALREADY_EXISTS, "ALREADY_PROMOTED"),
        (taken, grpc.StatusCode.ALREADY_EXISTS, "EMAIL_TAKEN"),
        (inactive, grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_INACTIVE"),
        (f"readers/{uuid.uuid4()}", grpc.StatusCode.NOT_FOUND, "READER_NOT_FOUND"),
        ("readers/not-a-uuid", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        (twice.replace("readers/", "consultants/"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        ("", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    ]
    for name, code, reason in cases:
        error = rpc_error(lambda n=name: promote(h, n))  # type: ignore[misc]
        assert error.code() == code, name
        assert error_reason(error) == reason, name
    error = rpc_error(lambda: promote(h, register(h, "badrole@example.com"), role=42))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert counts(h) == {**before, "users": before["users"] + 1, "audit_logs": before["audit_logs"] + 1}


# --- SetAccountActive ---------------------------------------------------------------------------------------------


def test_set_account_active_for_readers_and_consultants(h: Harness) -> None:
    reader = h.new_reader()
    consultant = h.new_consultant()
    for client in (reader, consultant):
        account_id = client.account.split("/")[1]
        # An upper-case id is the same account; the answer names it canonically.
        response = set_active(h, client.account.upper().replace("READERS/", "readers/")
                              .replace("CONSULTANTS/", "consultants/"), False)
        assert response.account == client.account
        assert not response.active
        assert response.revoked_session_count == 1
        kind = client.account.split("/")[0][:-1]
        assert last_audit(h)[:5] == ("consultant", admin_id(h), "account.deactivate", kind, account_id)
        assert last_audit(h)[5] == {"changed": True, "revoked_sessions": 1}
        table = "users" if kind == "reader" else "consultants"
        assert h.database.rows(f"SELECT is_active FROM {table} WHERE id = ?", (account_id,)) == [(0,)]
        # Deactivating again changes nothing but is still audited.
        again = set_active(h, client.account, False)
        assert again.revoked_session_count == 0
        assert last_audit(h)[2:] == ("account.deactivate", kind, account_id, {"changed": False, "revoked_sessions": 0})
        back = set_active(h, client.account, True)
        assert back.active
        assert back.account == client.account
        assert back.revoked_session_count == 0
        assert last_audit(h)[2:] == ("account.activate", kind, account_id, {"changed": True, "revoked_sessions": 0})
        assert h.database.rows(f"SELECT is_active FROM {table} WHERE id = ?", (account_id,)) == [(1,)]
    # The consultant's old session died and a new login works again.
    assert not can_list_readers(h, consultant.token)
    email = h.database.rows("SELECT email FROM consultants WHERE id = ?", (consultant.account.split("/")[1],))[0][0]
    assert can_list_readers(h, login(h, email, CONSULTANT).token)


def test_deactivated_consultant_cannot_log_in(h: Harness) -> None:
    consultant = create(h, "gone@example.com")
    set_active(h, consultant.name, False)
    error = rpc_error(lambda: login(h, "gone@example.com", CONSULTANT))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(error) == "ACCOUNT_INACTIVE"


def test_set_account_active_refusals(h: Harness) -> None:
    admin: Client = h.admin()
    before = counts(h)
    cases = [
        (f"readers/{uuid.uuid4()}", False, grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND"),
        (f"consultants/{uuid.uuid4()}", True, grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND"),
        (admin.account, False, grpc.StatusCode.FAILED_PRECONDITION, "SELF_DEACTIVATION"),
        ("users/whatever", False, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        ("readers/123", False, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        ("", False, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    ]
    for account, active, code, reason in cases:
        error = rpc_error(lambda a=account, x=active: set_active(h, a, x, md=admin.md))  # type: ignore[misc]
        assert error.code() == code, account
        assert error_reason(error) == reason, account
    assert counts(h) == before
    assert can_list_readers(h, admin.token), "the admin is still signed in"


# --- The audit log --------------------------------------------------------------------------------------------------


def test_every_admin_action_is_audited(h: Harness) -> None:
    admin = admin_id(h)
    start = len(audit(h))
    created = create(h, "audited@example.com", ROLE.CONSULTANT_ROLE_ADMIN).name.split("/")[1]
    reader = register(h, "audited-reader@example.com")
    promoted = promote(h, reader).name.split("/")[1]
    set_active(h, f"consultants/{created}", False)
    set_active(h, f"consultants/{created}", True)
    set_active(h, reader, False)
    reader_id = reader.split("/")[1]
    found = [row[:5] for row in audit(h)[start:] if row[0] == "consultant" and row[2] != "session.login"]
    assert found == [
        ("consultant", admin, "consultant.create", "consultant", created),
        ("consultant", admin, "reader.promote", "reader", reader_id),
        ("consultant", admin, "account.deactivate", "consultant", created),
        ("consultant", admin, "account.activate", "consultant", created),
        ("consultant", admin, "account.deactivate", "reader", reader_id),
    ]
    assert {"consultant_id": promoted, "role": "consultant"} in [row[5] for row in audit(h)]
    # Every row carries a timestamp in the canonical form.
    for (created_at,) in h.database.rows("SELECT created_at FROM audit_logs"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", created_at), created_at
