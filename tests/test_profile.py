"""Reader-restricted fields (email, display name, metadata): only the reader
(UpdateMyProfile) or an admin (AdminService.UpdateReader) may change them;
consultants read them but have no RPC that changes them."""

from __future__ import annotations

import json
import threading
from typing import Any

import grpc
from google.protobuf import descriptor
from google.protobuf.field_mask_pb2 import FieldMask

from cursor.v1 import admin_service_pb2 as apb
from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2 as pb
from cursor_grpc.auth.access import Access, check_access
from cursor_grpc.errors import PermissionDenied
from tests.conftest import PASSWORD, Client, Harness
from tests.helpers import error_details, error_reason, rpc_error
from tests.streams import collect
from tests.test_access import declared, principal
from tests.test_audit import audit_rows, details

RESTRICTED = {"email", "display_name", "metadata_json", "metadata"}


def update_mine(client: Client, mask: list[str] | None = None, **fields: Any) -> pb.Reader:
    request = rpb.UpdateMyProfileRequest(reader=pb.Reader(**fields))
    if mask is not None:
        request.update_mask.CopyFrom(FieldMask(paths=mask))
    return client.reader.UpdateMyProfile(request, metadata=client.md).reader  # type: ignore[no-any-return]


def admin_update(admin: Client, name: str, mask: list[str] | None = None, **fields: Any) -> pb.Reader:
    request = apb.UpdateReaderRequest(reader=pb.Reader(name=name, **fields))
    if mask is not None:
        request.update_mask.CopyFrom(FieldMask(paths=mask))
    return admin.admin.UpdateReader(request, metadata=admin.md).reader  # type: ignore[no-any-return]


def get_reader(client: Client, name: str) -> pb.Reader:
    return client.consultant.GetReader(  # type: ignore[no-any-return]
        cpb.GetReaderRequest(name=name), metadata=client.md
    ).reader


def my_messages(client: Client) -> list[pb.Message]:
    return list(client.reader.ListMyMessages(rpb.ListMyMessagesRequest(), metadata=client.md).messages)


def bad_field(error: grpc.RpcError) -> str:
    return next(v.field for d in error_details(error) if hasattr(d, "field_violations") for v in d.field_violations)


def test_reader_updates_its_own_profile(h: Harness) -> None:
    reader = h.new_reader()
    consultant = h.new_consultant()
    updated = update_mine(reader, ["display_name", "metadata_json"], display_name="  Ann B.  ",
                          metadata_json='{"lang": "de", "level": 3}')
    assert updated.name == reader.account
    assert updated.display_name == "Ann B."
    assert json.loads(updated.metadata_json) == {"lang": "de", "level": 3}
    assert updated.HasField("state")
    # The mask decides: a value outside it is ignored.
    again = update_mine(reader, ["display_name"], display_name="Ann", email="ignored@example.com")
    assert (again.display_name, again.email) == ("Ann", updated.email)
    assert json.loads(again.metadata_json) == {"lang": "de", "level": 3}
    # No mask: every non-empty field (AIP-134); the name may be the caller's own.
    moved = update_mine(reader, name=reader.account, email="Ann.New@Example.com")
    assert moved.email == "ann.new@example.com"
    assert moved.display_name == "Ann"
    # Consultants see the change; the reader signs in with the new email.
    seen = get_reader(consultant, reader.account)
    assert (seen.email, seen.display_name) == ("ann.new@example.com", "Ann")
    h.anonymous.login("ann.new@example.com", PASSWORD, pb.ACCOUNT_KIND_READER)
    # `*` replaces all three; an empty metadata_json means {}.
    full = update_mine(reader, ["*"], display_name="Ann C", email="ann.c@example.com")
    assert (full.display_name, full.email, full.metadata_json) == ("Ann C", "ann.c@example.com", "{}")
    # A reader's own changes send it no system message.
    assert not my_messages(reader)


def test_admin_updates_a_reader_and_the_reader_is_told(h: Harness) -> None:
    admin = h.admin()
    reader = h.new_reader()
    watch = reader.reader.WatchMyMessages(rpb.WatchMyMessagesRequest(), metadata=reader.md)
    got: list[rpb.WatchMyMessagesResponse] = []
    thread = threading.Thread(target=collect, args=(watch, got), daemon=True)
    thread.start()
    _wait_for_streams(h, 1)
    updated = admin_update(admin, reader.account, ["display_name", "email"], display_name="Renamed",
                           email="renamed@example.com")
    assert (updated.display_name, updated.email) == ("Renamed", "renamed@example.com")
    assert get_reader(admin, reader.account).display_name == "Renamed"

    messages = my_messages(reader)
    assert len(messages) == 1
    notice = messages[0]
    assert notice.direction == pb.MESSAGE_DIRECTION_SYSTEM
    assert notice.author == ""
    assert "display name" in notice.body
    assert "email" in notice.body
    # Pushed live like any message.
    _wait(lambda: any(e.message.name == notice.name for r in got for e in r.events))
    watch.cancel()

    # Nothing changed: no message.
    admin_update(admin, reader.account, ["display_name"], display_name="Renamed")
    assert len(my_messages(reader)) == 1

    rows = audit_rows(admin, action="reader.update_profile", target=reader.account)
    assert [r.actor for r in rows] == [admin.account, admin.account]
    assert details(rows[1]) == {"fields": ["display_name", "email"], "changed": ["display_name", "email"]}
    assert details(rows[0]) == {"fields": ["display_name"], "changed": []}


def test_reactivation_sends_a_system_message(h: Harness) -> None:
    admin = h.admin()
    reader = h.new_reader()
    request = apb.SetAccountActiveRequest(account=reader.account, active=True)
    admin.admin.SetAccountActive(request, metadata=admin.md)  # already active: nothing to tell
    assert not my_messages(reader)
    admin.admin.SetAccountActive(apb.SetAccountActiveRequest(account=reader.account, active=False), metadata=admin.md)
    response = admin.admin.SetAccountActive(request, metadata=admin.md)
    assert (response.account, response.active) == (reader.account, True)
    again = h.anonymous.login(_email(admin, reader), PASSWORD, pb.ACCOUNT_KIND_READER)
    messages = my_messages(again)
    assert [(m.direction, "re-activated" in m.body) for m in messages] == [(pb.MESSAGE_DIRECTION_SYSTEM, True)]
    rows = audit_rows(admin, action="account.activate", target=reader.account)
    assert [details(r)["changed"] for r in rows] == [True, False]


def _email(admin: Client, reader: Client) -> str:
    return str(get_reader(admin, reader.account).email)


def test_a_whole_reader_carries_its_metadata_and_lists_do_not(h: Harness) -> None:
    reader, consultant = h.new_reader(), h.new_consultant()
    update_mine(reader, ["metadata_json"], metadata_json='{"lang": "fr"}')
    mine = reader.reader.GetMyProfile(rpb.GetMyProfileRequest(), metadata=reader.md).reader
    assert mine.name == reader.account
    assert mine.email.endswith("@example.com")
    assert json.loads(mine.metadata_json) == {"lang": "fr"}
    assert mine.HasField("state")
    seen = get_reader(consultant, reader.account)
    assert json.loads(seen.metadata_json) == {"lang": "fr"}
    listed = consultant.consultant.ListReaders(cpb.ListReadersRequest(), metadata=consultant.md).readers
    assert [r.metadata_json for r in listed if r.name == reader.account] == [""]
    # GetMyProfile is a reader's own: a consultant session is refused.
    error = rpc_error(lambda: consultant.reader.GetMyProfile(rpb.GetMyProfileRequest(), metadata=consultant.md))
    assert (error.code(), error_reason(error)) == (grpc.StatusCode.PERMISSION_DENIED, "READER_ONLY")


def test_consultants_cannot_change_restricted_fields(h: Harness) -> None:
    reader = h.new_reader()
    before = get_reader(h.admin(), reader.account)
    for role in (pb.CONSULTANT_ROLE_CONSULTANT, pb.CONSULTANT_ROLE_SUPERVISOR):
        consultant = h.new_consultant(role)
        error = rpc_error(lambda c=consultant: admin_update(  # type: ignore[misc]
            c, reader.account, ["display_name"], display_name="Hijacked"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_reason(error) == "ROLE_TOO_LOW"
        # UpdateMyProfile is for readers; a consultant session cannot use it either.
        error = rpc_error(lambda c=consultant: update_mine(c, ["display_name"], name=reader.account,  # type: ignore[misc]
                                                           display_name="Hijacked"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        # What a consultant may do to a reader leaves these fields alone.
        consultant.consultant.SetReaderStatus(
            cpb.SetReaderStatusRequest(reader=reader.account, status=pb.READER_STATUS_PAUSED), metadata=consultant.md)
        consultant.consultant.SendMessage(cpb.SendMessageRequest(reader=reader.account, body="hello"),
                                          metadata=consultant.md)
    after = get_reader(h.admin(), reader.account)
    assert (after.email, after.display_name) == (before.email, before.display_name)
    assert after.state.status == pb.READER_STATUS_PAUSED
    # Another reader cannot change this reader's profile either.
    other = h.new_reader()
    error = rpc_error(lambda: update_mine(other, ["display_name"], name=reader.account, display_name="X"))
    assert (error.code(), error_reason(error)) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_OWN_PROFILE")
    error = rpc_error(lambda: admin_update(other, reader.account, ["display_name"], display_name="X"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def _fields(message: descriptor.Descriptor, seen: set[str] | None = None) -> set[str]:
    """Every field name a request can carry, nested messages included."""
    seen = seen if seen is not None else set()
    if message.full_name in seen:
        return set()
    seen.add(message.full_name)
    names = set()
    for field in message.fields:
        names.add(field.name)
        if field.message_type is not None:
            names.add(f"<{field.message_type.full_name}>")
            names |= _fields(field.message_type, seen)
    return names


def test_no_rpc_a_non_admin_consultant_may_call_carries_restricted_fields() -> None:
    """By introspection of the API: apart from Login (credentials), no request
    a consultant's session may send names a restricted field, a Reader or a
    FieldMask, so there is nothing a consultant could change them with."""
    checked = []
    for role in ("consultant", "supervisor"):
        who = principal("consultant", role)
        for service, method, access in declared():
            if access is Access.PUBLIC:
                continue
            try:
                check_access(who, access)
            except PermissionDenied:
                continue
            carried = _fields(method.input_type)
            assert not carried & RESTRICTED, (service, method.name, carried & RESTRICTED)
            assert "<cursor.v1.Reader>" not in carried, (service, method.name)
            assert "<google.protobuf.FieldMask>" not in carried, (service, method.name)
            checked.append(f"{service}.{method.name}")
    assert "cursor.v1.ConsultantService.SetReaderStatus" in checked
    # Of AdminService, a supervisor may only assign readers (checked above: no restricted field).
    assert {name for name in checked if name.startswith("cursor.v1.AdminService.")} == {
        "cursor.v1.AdminService.AssignReader", "cursor.v1.AdminService.UnassignReader"}
    assert not any(name.startswith("cursor.v1.ReaderService.") for name in checked)


def test_update_mask_and_values_are_validated(h: Harness) -> None:
    reader = h.new_reader()
    admin = h.admin()
    cases: list[tuple[list[str] | None, dict[str, Any], str]] = [
        (["active"], {"display_name": "X"}, "update_mask"),
        (["name"], {"display_name": "X"}, "update_mask"),
        (["state"], {}, "update_mask"),
        (["display_name", "nickname"], {"display_name": "X"}, "update_mask"),
        (None, {}, "update_mask"),  # nothing to update
        (["display_name"], {}, "reader.display_name"),
        (["display_name"], {"display_name": "x" * 101}, "reader.display_name"),
        (["email"], {"email": "not an email"}, "reader.email"),
        (["email"], {}, "reader.email"),
        (["metadata_json"], {"metadata_json": "[1, 2]"}, "reader.metadata_json"),
        (["metadata_json"], {"metadata_json": "{nope"}, "reader.metadata_json"),
        (["metadata_json"], {"metadata_json": '{"x": NaN}'}, "reader.metadata_json"),
        (["metadata_json"], {"metadata_json": json.dumps({"x": "y" * 16384})}, "reader.metadata_json"),
    ]
    for mask, fields, field in cases:
        error = rpc_error(lambda m=mask, f=fields: update_mine(reader, m, **f))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (mask, fields, error.code())
        assert bad_field(error) == field, (mask, fields)
        error = rpc_error(lambda m=mask, f=fields: admin_update(admin, reader.account, m, **f))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (mask, fields, error.code())
    # Exactly 16 KiB is accepted.
    big = json.dumps({"x": "y" * (16384 - 9)})
    assert len(big.encode()) == 16384
    assert update_mine(reader, ["metadata_json"], metadata_json=big).metadata_json == big
    # The admin must name the reader.
    error = rpc_error(lambda: admin_update(admin, "", ["display_name"], display_name="X"))
    assert (error.code(), bad_field(error)) == (grpc.StatusCode.INVALID_ARGUMENT, "reader.name")
    error = rpc_error(lambda: admin_update(admin, "readers/00000000-0000-7000-8000-000000000000", ["display_name"],
                                           display_name="X"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    # Nothing failed was written.
    assert len(audit_rows(admin, action="reader.update_profile")) == 1


def test_email_stays_unique(h: Harness) -> None:
    admin = h.admin()
    ann, bob = h.new_reader(), h.new_reader()
    bob_email = get_reader(admin, bob.account).email
    for call in (
        lambda: update_mine(ann, ["email"], email=bob_email.upper()),
        lambda: admin_update(admin, ann.account, ["email"], email=bob_email),
        # A consultant's email belongs to that person too.
        lambda: update_mine(ann, ["email"], email="admin@example.com"),
    ):
        error = rpc_error(call)
        assert (error.code(), error_reason(error)) == (grpc.StatusCode.ALREADY_EXISTS, "EMAIL_TAKEN")
        assert bad_field(error) == "email"
    assert not audit_rows(admin, action="reader.update_profile")
    # Keeping one's own email is no conflict; nor is the email of the
    # consultant account a reader was promoted to (the same person).
    own = get_reader(admin, ann.account).email
    assert update_mine(ann, ["email", "display_name"], email=own, display_name="Ann").email == own
    admin.admin.PromoteReader(apb.PromoteReaderRequest(reader=ann.account), metadata=admin.md)
    assert update_mine(ann, ["email"], email="ann.moved@example.com").email == "ann.moved@example.com"
    assert update_mine(ann, ["email"], email=own).email == own
    error = rpc_error(lambda: update_mine(bob, ["email"], email=own))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


def _wait(condition: Any, timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _wait_for_streams(h: Harness, count: int) -> None:
    _wait(lambda: h.server.app.broadcaster.stream_count >= count)
