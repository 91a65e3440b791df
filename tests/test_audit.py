"""The audit log: every audited action has its row, written with the action;
AdminService.ListAuditLogs filters and pages newest first over (created_at, id)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from cursor.v1 import admin_service_pb2 as apb
from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2 as pb
from tests.conftest import Client, Harness
from tests.helpers import error_details, error_reason, rpc_error


def audit_rows(admin: Client, page_size: int = 1000, **filters: Any) -> list[pb.AuditLog]:
    """Every row that matches, walking all pages."""
    rows: list[pb.AuditLog] = []
    token = ""
    while True:
        page = admin.admin.ListAuditLogs(
            apb.ListAuditLogsRequest(page_size=page_size, page_token=token, **filters), metadata=admin.md
        )
        rows += page.audit_logs
        token = page.next_page_token
        if not token:
            return rows


def one_row(admin: Client, **filters: Any) -> pb.AuditLog:
    rows = audit_rows(admin, **filters)
    assert len(rows) == 1, (filters, rows)
    return rows[0]


def details(row: pb.AuditLog) -> dict[str, Any]:
    value = json.loads(row.details_json)
    assert isinstance(value, dict)
    return value


def test_every_audited_action_has_its_row(h: Harness) -> None:
    admin = h.admin()
    reader, other = h.new_reader(), h.new_reader()
    consultant = h.new_consultant()
    consultant_name = consultant.account
    admin_name = admin.account

    # A reader registering, a consultant being created and logging in.
    row = one_row(admin, action="reader.register", target=reader.account)
    assert row.actor == reader.account
    row = one_row(admin, action="consultant.create", target=consultant_name)
    assert row.actor == admin_name
    assert details(row) == {"role": "consultant"}
    assert audit_rows(admin, action="session.login", actor=consultant_name)

    # Watching: one row per watched reader, one for "all readers".
    for request, target in ((cpb.WatchActivityRequest(readers=[reader.account]), reader.account),
                            (cpb.WatchActivityRequest(), "readers/-")):
        call = consultant.consultant.WatchActivity(request, metadata=consultant.md)
        wait_for(lambda t=target: audit_rows(admin, action="watch.open", target=t))  # type: ignore[misc]
        call.cancel()
        row = one_row(admin, action="watch.open", target=target)
        assert row.actor == consultant_name
        assert details(row)["resume"] is False

    # Writing to a reader and pausing it.
    sent = consultant.consultant.SendMessage(cpb.SendMessageRequest(reader=reader.account, body="hi"),
                                             metadata=consultant.md).message
    row = one_row(admin, action="message.send", target=reader.account)
    assert row.actor == consultant_name
    assert details(row) == {"message_id": sent.name.rsplit("/", 1)[1]}
    consultant.consultant.SetReaderStatus(
        cpb.SetReaderStatusRequest(reader=reader.account, status=pb.READER_STATUS_PAUSED), metadata=consultant.md
    )
    row = one_row(admin, action="reader.set_status", target=reader.account)
    assert (row.actor, details(row)) == (consultant_name, {"status": "paused"})

    # Consent, given and taken back: the granter is the actor.
    reader.reader.GrantConsent(rpb.GrantConsentRequest(grantee=other.account, scope=pb.CONSENT_SCOPE_STATE),
                               metadata=reader.md)
    reader.reader.RevokeConsent(rpb.RevokeConsentRequest(grantee=other.account), metadata=reader.md)
    assert one_row(admin, action="consent.grant", actor=reader.account).target == other.account
    assert one_row(admin, action="consent.revoke", actor=reader.account).target == other.account

    # Profile updates by the reader and by an admin.
    reader.reader.UpdateMyProfile(
        rpb.UpdateMyProfileRequest(reader=pb.Reader(display_name="Me"), update_mask=FieldMask(paths=["display_name"])),
        metadata=reader.md,
    )
    admin.admin.UpdateReader(
        apb.UpdateReaderRequest(reader=pb.Reader(name=reader.account, metadata_json='{"team": "a"}'),
                                update_mask=FieldMask(paths=["metadata_json"])),
        metadata=admin.md,
    )
    rows = audit_rows(admin, action="reader.update_profile", target=reader.account)
    assert [(r.actor, details(r)["changed"]) for r in rows] == [
        (admin_name, ["metadata_json"]), (reader.account, ["display_name"]),
    ]

    # Admin actions.
    admin.admin.PromoteReader(apb.PromoteReaderRequest(reader=other.account), metadata=admin.md)
    assert one_row(admin, action="reader.promote", target=other.account).actor == admin_name
    admin.admin.SetAccountActive(apb.SetAccountActiveRequest(account=other.account, active=False), metadata=admin.md)
    admin.admin.SetAccountActive(apb.SetAccountActiveRequest(account=other.account, active=True), metadata=admin.md)
    assert details(one_row(admin, action="account.deactivate", target=other.account))["changed"] is True
    assert details(one_row(admin, action="account.activate", target=other.account))["changed"] is True


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_failed_action_leaves_no_audit_row(h: Harness) -> None:
    admin = h.admin()
    reader, taken = h.new_reader(), h.new_reader()
    before = audit_rows(admin, actor=reader.account)
    error = rpc_error(lambda: admin.admin.UpdateReader(
        apb.UpdateReaderRequest(reader=pb.Reader(name=reader.account, email=_email_of(admin, taken)),
                                update_mask=FieldMask(paths=["email"])),
        metadata=admin.md,
    ))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert not audit_rows(admin, action="reader.update_profile")
    assert audit_rows(admin, actor=reader.account) == before


def _email_of(admin: Client, reader: Client) -> str:
    return str(admin.consultant.GetReader(cpb.GetReaderRequest(name=reader.account), metadata=admin.md).reader.email)


def _make_rows(h: Harness, pairs: int) -> tuple[Client, Client]:
    """2 * pairs consent rows by one reader, many within one millisecond."""
    granter, grantee = h.new_reader(), h.new_reader()
    for _ in range(pairs):
        granter.reader.GrantConsent(
            rpb.GrantConsentRequest(grantee=grantee.account, scope=pb.CONSENT_SCOPE_STATE), metadata=granter.md
        )
        granter.reader.RevokeConsent(rpb.RevokeConsentRequest(grantee=grantee.account), metadata=granter.md)
    return granter, grantee


def test_paging_walks_every_row_exactly_once_newest_first(h: Harness) -> None:
    admin = h.admin()
    _make_rows(h, 20)
    _insert_same_millisecond_rows(h, 12)
    # Rows written concurrently, so several may share a created_at.
    readers = [h.new_reader() for _ in range(4)]
    threads = [threading.Thread(target=_grant_many, args=(r, readers[(i + 1) % 4], 5)) for i, r in enumerate(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = audit_rows(admin)
    assert len(everything) == len({r.name for r in everything})
    for page_size in (1, 7, 50):
        walked = audit_rows(admin, page_size=page_size)
        # Rows written after the walk started (none here) would only be newer.
        assert [r.name for r in walked] == [r.name for r in everything], page_size
    keys = [(r.create_time.ToNanoseconds(), r.name) for r in everything]
    assert keys == sorted(keys, reverse=True), "newest first, ties broken by id"
    same_ms = [r.name for r in everything if r.create_time.ToJsonString() == "2030-01-01T00:00:00.123Z"]
    assert len(same_ms) == 12
    assert same_ms == sorted(same_ms, reverse=True)
    # With a filter, the walk is exactly the filtered rows.
    grants = audit_rows(admin, action="consent.grant", page_size=3)
    assert [r.name for r in grants] == [r.name for r in everything if r.action == "consent.grant"]
    assert len(grants) == 20 + 4 * 5


def _insert_same_millisecond_rows(h: Harness, n: int) -> None:
    """Rows that share one created_at, written beside the running server,
    so the (created_at, id) tie-break is exercised whatever the clock does."""
    for i in range(n):
        h.database.execute(
            "INSERT INTO audit_logs(id, actor_type, actor_id, action, created_at) VALUES (?, 'system', NULL, "
            "'test.tie', '2030-01-01T00:00:00.123Z')",
            (f"00000000-0000-7000-8000-{i:012d}",),
        )


def _grant_many(granter: Client, grantee: Client, n: int) -> None:
    for _ in range(n):
        granter.reader.GrantConsent(rpb.GrantConsentRequest(grantee=grantee.account, scope=pb.CONSENT_SCOPE_STATE),
                                    metadata=granter.md)
        granter.reader.RevokeConsent(rpb.RevokeConsentRequest(grantee=grantee.account), metadata=granter.md)


def test_filters_by_actor_action_target_and_time(h: Harness) -> None:
    admin = h.admin()
    granter, grantee = _make_rows(h, 3)
    mine = audit_rows(admin, actor=granter.account)
    assert {r.action for r in mine} == {"reader.register", "consent.grant", "consent.revoke"}
    assert all(r.actor == granter.account for r in mine)
    about = audit_rows(admin, target=grantee.account)
    assert {(r.actor, r.action) for r in about} == {
        (grantee.account, "reader.register"), (granter.account, "consent.grant"),
        (granter.account, "consent.revoke"),
    }
    both = audit_rows(admin, actor=granter.account, action="consent.revoke", target=grantee.account)
    assert len(both) == 3
    assert all(r.name.startswith("auditLogs/") and r.create_time.seconds > 0 for r in both)
    assert audit_rows(admin, actor="system", action="consultant.create")  # the admin made by the CLI

    # [start_time, end_time): a row's own time includes it as a start, excludes it as an end.
    oldest, newest = both[-1], both[0]
    window = audit_rows(admin, actor=granter.account, action="consent.revoke",
                        start_time=oldest.create_time, end_time=newest.create_time)
    assert oldest.name in [r.name for r in window]
    assert newest.name not in [r.name for r in window]
    after = audit_rows(admin, actor=granter.account, start_time=newest.create_time)
    assert all(r.create_time.ToNanoseconds() >= newest.create_time.ToNanoseconds() for r in after)
    assert newest.name in [r.name for r in after]
    later = Timestamp()
    later.FromNanoseconds(time.time_ns() + 3600 * 10**9)
    assert not audit_rows(admin, start_time=later)
    assert audit_rows(admin, actor=granter.account, end_time=later) == mine


def test_bad_filters_and_tokens_are_invalid_arguments(h: Harness) -> None:
    admin = h.admin()
    _make_rows(h, 2)
    start, end = Timestamp(seconds=2000), Timestamp(seconds=1000)
    for request, field in [
        (apb.ListAuditLogsRequest(actor="people/1"), "actor"),
        (apb.ListAuditLogsRequest(actor="readers/not-a-uuid"), "actor"),
        (apb.ListAuditLogsRequest(target="readers/not-a-uuid"), "target"),
        (apb.ListAuditLogsRequest(target="a b/c"), "target"),
        (apb.ListAuditLogsRequest(start_time=start, end_time=end), "start_time"),
        (apb.ListAuditLogsRequest(start_time=Timestamp(seconds=1, nanos=-1)), "start_time"),
        (apb.ListAuditLogsRequest(action="x" * 101), "action"),
        (apb.ListAuditLogsRequest(page_size=-1), "page_size"),
        (apb.ListAuditLogsRequest(page_token="garbage"), "page_token"),
    ]:
        error = rpc_error(lambda r=request: admin.admin.ListAuditLogs(r, metadata=admin.md))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert [v.field for d in error_details(error) if hasattr(d, "field_violations")
                for v in d.field_violations] == [field]
    first = admin.admin.ListAuditLogs(apb.ListAuditLogsRequest(page_size=1), metadata=admin.md)
    assert first.next_page_token
    other_filter = apb.ListAuditLogsRequest(page_size=1, page_token=first.next_page_token, action="consent.grant")
    error = rpc_error(lambda: admin.admin.ListAuditLogs(other_filter, metadata=admin.md))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_only_admins_read_the_audit_log(h: Harness) -> None:
    for client in (h.new_reader(), h.new_consultant(), h.new_consultant(pb.CONSULTANT_ROLE_SUPERVISOR)):
        error = rpc_error(lambda c=client: c.admin.ListAuditLogs(  # type: ignore[misc]
            apb.ListAuditLogsRequest(), metadata=c.md))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_reason(error) in {"CONSULTANT_ONLY", "ROLE_TOO_LOW"}
