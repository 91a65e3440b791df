"""Readers assigned to consultants: admins and supervisors assign, move and
unassign them (audited); a consultant's "my readers" filter narrows
ListReaders, ListActiveReaders, ListUnreadCounts and WatchActivity to them.
On every backend."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from cursor.v1 import admin_service_pb2 as apb
from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2
from cursor_grpc.config import AttentionSettings, ConfigError
from tests.conftest import Client, Harness
from tests.helpers import error_reason, rpc_error
from tests.ops_support import record
from tests.streams import StreamReader


def consultant_id(client: Client) -> str:
    return client.account.rsplit("/", 1)[-1]


def assign(by: Client, reader: Client, consultant: Client) -> apb.AssignReaderResponse:
    return by.admin.AssignReader(apb.AssignReaderRequest(reader=reader.account, consultant=consultant.account),
                                 metadata=by.md)


def test_assigned_readers_are_what_my_readers_filters_show(h: Harness) -> None:
    supervisor = h.new_consultant(resources_pb2.CONSULTANT_ROLE_SUPERVISOR)
    mine, theirs = h.new_consultant(), h.new_consultant()
    r1, r2, r3 = h.new_reader("one"), h.new_reader("two"), h.new_reader("three")
    done = assign(supervisor, r1, mine)
    assert done.assignment.reader == r1.account
    assert done.assignment.consultant == mine.account
    assert done.assignment.assigned_by == supervisor.account
    assert done.assignment.name == f"{r1.account}/assignment"
    assign(h.admin(), r2, mine)
    assign(h.admin(), r3, theirs)
    for reader in (r1, r2, r3):
        record(reader)

    def names(response: cpb.ListReadersResponse | cpb.ListActiveReadersResponse) -> set[str]:
        return {r.name for r in response.readers}

    assert names(mine.consultant.ListReaders(cpb.ListReadersRequest(only_my_readers=True),
                                             metadata=mine.md)) == {r1.account, r2.account}
    assert names(mine.consultant.ListActiveReaders(cpb.ListActiveReadersRequest(only_my_readers=True),
                                                   metadata=mine.md)) == {r1.account, r2.account}
    assert names(theirs.consultant.ListReaders(cpb.ListReadersRequest(only_my_readers=True),
                                               metadata=theirs.md)) == {r3.account}
    everyone = names(mine.consultant.ListReaders(cpb.ListReadersRequest(), metadata=mine.md))
    assert {r1.account, r2.account, r3.account} <= everyone, "without the filter, everyone"
    # Pages walk only the assigned readers.
    first = mine.consultant.ListReaders(cpb.ListReadersRequest(only_my_readers=True, page_size=1), metadata=mine.md)
    second = mine.consultant.ListReaders(cpb.ListReadersRequest(
        only_my_readers=True, page_size=1, page_token=first.next_page_token), metadata=mine.md)
    assert names(first) | names(second) == {r1.account, r2.account}
    assert not second.next_page_token

    # Unread counts follow the assignee.
    for reader in (r1, r3):
        reader.reader.SendMyMessage(rpb.SendMyMessageRequest(body="help please"), metadata=reader.md)
    counts = mine.consultant.ListUnreadCounts(cpb.ListUnreadCountsRequest(only_my_readers=True), metadata=mine.md)
    assert [c.reader for c in counts.counts] == [r1.account]

    # Moving r2 to the other consultant moves it between the filters, audited with where it came from.
    assign(supervisor, r2, theirs)
    assert names(mine.consultant.ListReaders(cpb.ListReadersRequest(only_my_readers=True),
                                             metadata=mine.md)) == {r1.account}
    [moved] = [row for row in h.database.rows(
        "SELECT details FROM audit_logs WHERE action = 'reader.assign' AND target_id = ?",
        (r2.account.rsplit("/", 1)[-1],)) if json.loads(row[0])["consultant_id"] == consultant_id(theirs)]
    assert json.loads(moved[0])["previous_consultant_id"] == consultant_id(mine)

    removed = supervisor.admin.UnassignReader(apb.UnassignReaderRequest(reader=r1.account), metadata=supervisor.md)
    assert removed.removed.consultant == mine.account
    assert not mine.consultant.ListReaders(cpb.ListReadersRequest(only_my_readers=True), metadata=mine.md).readers
    again = rpc_error(lambda: supervisor.admin.UnassignReader(apb.UnassignReaderRequest(reader=r1.account),
                                                              metadata=supervisor.md))
    assert again.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(again) == "NOT_ASSIGNED"
    assert h.database.count("audit_logs") >= 5


def test_watch_my_readers_carries_only_theirs(h: Harness) -> None:
    mine = h.new_consultant()
    lonely = h.new_consultant()
    r1, r2 = h.new_reader("watched"), h.new_reader("other")
    assign(h.admin(), r1, mine)
    stream = StreamReader(mine.consultant.WatchActivity(cpb.WatchActivityRequest(
        only_my_readers=True, kinds=[resources_pb2.EVENT_KIND_INTERACTION_RECORDED]), metadata=mine.md))
    nobody = StreamReader(lonely.consultant.WatchActivity(cpb.WatchActivityRequest(
        only_my_readers=True, kinds=[resources_pb2.EVENT_KIND_INTERACTION_RECORDED]), metadata=lonely.md))
    try:
        stream.wait_for(lambda: bool(stream.responses))
        nobody.wait_for(lambda: bool(nobody.responses))
        other = record(r2)
        watched = record(r1)
        stream.wait_for(lambda: any(e.event_id == watched for e in stream.events))
        seen = {e.event_id for e in stream.events}
        assert watched in seen
        assert other not in seen
        assert all(e.reader == r1.account for e in stream.events)
        assert nobody.error is None
        assert not nobody.events, "a consultant with no assigned reader watches no one"
    finally:
        stream.cancel()
        nobody.cancel()


@pytest.mark.parametrize("case", ["plain consultant", "unknown reader", "unknown consultant",
                                  "deactivated consultant", "bad name"])
def test_assignment_refusals(h: Harness, case: str) -> None:
    plain, target, reader = h.new_consultant(), h.new_consultant(), h.new_reader()
    admin = h.admin()
    request = apb.AssignReaderRequest(reader=reader.account, consultant=target.account)
    caller, expected, reason = admin, grpc.StatusCode.NOT_FOUND, ""
    if case == "plain consultant":
        caller, expected = plain, grpc.StatusCode.PERMISSION_DENIED
    elif case == "unknown reader":
        request.reader, reason = "readers/00000000-0000-4000-8000-000000000000", "READER_NOT_FOUND"
    elif case == "unknown consultant":
        request.consultant, reason = "consultants/00000000-0000-4000-8000-000000000000", "CONSULTANT_NOT_FOUND"
    elif case == "deactivated consultant":
        admin.admin.SetAccountActive(apb.SetAccountActiveRequest(account=target.account, active=False),
                                     metadata=admin.md)
        expected, reason = grpc.StatusCode.FAILED_PRECONDITION, "CONSULTANT_INACTIVE"
    else:
        request.reader, expected = "users/x", grpc.StatusCode.INVALID_ARGUMENT
    refused = rpc_error(lambda: caller.admin.AssignReader(request, metadata=caller.md))
    assert refused.code() == expected, refused.details()
    if reason:
        assert error_reason(refused) == reason
    assert h.database.count("reader_assignments") == 0, "nothing half-written"


def test_round_robin_spreads_new_readers_over_active_consultants(make_harness: Any) -> None:
    h = make_harness(attention=AttentionSettings(assign_new_readers="round_robin"))
    nobody_yet = h.new_reader("early")  # only the admin exists: admins are not given readers
    first, second, gone = h.new_consultant(), h.new_consultant(), h.new_consultant()
    h.admin().admin.SetAccountActive(apb.SetAccountActiveRequest(account=gone.account, active=False),
                                     metadata=h.admin_md())
    readers = [h.new_reader(f"rr{n}") for n in range(5)]

    def mine(consultant: Client) -> set[str]:
        return {r.name for r in consultant.consultant.ListReaders(
            cpb.ListReadersRequest(only_my_readers=True), metadata=consultant.md).readers}

    got_first, got_second = mine(first), mine(second)
    assert got_first | got_second == {r.account for r in readers}
    assert sorted([len(got_first), len(got_second)]) == [2, 3], "even, within one"
    assert nobody_yet.account not in got_first | got_second
    rows = h.database.rows("SELECT actor_type, details FROM audit_logs WHERE action = 'reader.assign'")
    assert len(rows) == 5
    assert {row[0] for row in rows} == {"system"}
    assert {json.loads(row[1])["via"] for row in rows} == {"round_robin"}


def test_an_unknown_assignment_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="round_robin"):
        AttentionSettings(assign_new_readers="random")
