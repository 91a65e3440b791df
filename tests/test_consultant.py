"""ConsultantService through a real server: looking readers up, and that
readers can only ever see their own data."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2
from cursor_grpc.clock import iso_from_ns, now_ns
from tests.conftest import Client, Harness
from tests.helpers import error_reason, rpc_error

ACTIVE = resources_pb2.READER_STATUS_ACTIVE
COMPLETED = resources_pb2.READER_STATUS_COMPLETED
PAUSED = resources_pb2.READER_STATUS_PAUSED


def record(client: Client, type_: str = "heartbeat", payload: dict[str, Any] | None = None,
           summary: str = "") -> Any:
    return client.reader.RecordInteraction(
        rpb.RecordInteractionRequest(
            interaction=rpb.NewInteraction(type=type_, payload_json=json.dumps(payload or {}), summary=summary)
        ),
        metadata=client.md,
    )


def walk(fetch: Callable[[str], Any], items: str, page_size_seen: int) -> list[Any]:
    """Every item of a paged list, following next_page_token to the end."""
    seen: list[Any] = []
    token = ""
    for _ in range(1000):
        page = fetch(token)
        got = list(getattr(page, items))
        assert len(got) <= page_size_seen
        seen += got
        token = page.next_page_token
        if not token:
            return seen
        assert got, "a page with a next token must not be empty"
    raise AssertionError("paging did not end")


def set_last_seen_minutes_ago(h: Harness, reader: Client, minutes: int) -> None:
    """Move a reader's last_seen_at back through a connection of our own."""
    seen = iso_from_ns(now_ns() - minutes * 60 * 10**9)
    changed = h.database.execute("UPDATE reader_states SET last_seen_at = ? WHERE reader_id = ?",
                                 (seen, reader.account.split("/")[1]))
    assert changed == 1


def email_of(h: Harness, client: Client) -> tuple[str, str]:
    [(email, display_name)] = h.database.rows("SELECT email, display_name FROM users WHERE id = ?",
                                              (client.account.split("/")[1],))
    return str(email), str(display_name)


# --- ListActiveReaders --------------------------------------------------------------------------------------------


def test_list_active_readers_most_recent_first(h: Harness) -> None:
    consultant = h.new_consultant()
    a, b, c = h.new_reader("ann"), h.new_reader("bob"), h.new_reader("cid")
    h.new_reader("never")  # registered, never did anything
    stale = h.new_reader("stale")
    record(stale)
    set_last_seen_minutes_ago(h, stale, 10)
    last = {}
    for client in (a, b, c):
        last[client.account] = record(client, "progress", {"percent": 0.5, "step": 4}, "half")
    response = consultant.consultant.ListActiveReaders(cpb.ListActiveReadersRequest(), metadata=consultant.md)
    assert [r.name for r in response.readers] == [c.account, b.account, a.account]
    assert response.next_page_token == ""
    for reader in response.readers:
        client = next(x for x in (a, b, c) if x.account == reader.name)
        assert (reader.email, reader.display_name) == email_of(h, client)
        assert reader.active
        recorded = last[reader.name]
        assert reader.state == recorded.state
        assert reader.state.last_interaction == recorded.interaction.name
        assert reader.state.progress == 0.5
        assert reader.state.current_step == 4
    # Activity moves a reader to the top.
    record(a)
    response = consultant.consultant.ListActiveReaders(cpb.ListActiveReadersRequest(), metadata=consultant.md)
    assert [r.name for r in response.readers] == [a.account, c.account, b.account]
    # A wider window reaches the stale reader (ten minutes back), last.
    wide = consultant.consultant.ListActiveReaders(
        cpb.ListActiveReadersRequest(window_seconds=3600), metadata=consultant.md
    )
    assert [r.name for r in wide.readers] == [a.account, c.account, b.account, stale.account]
    narrow = consultant.consultant.ListActiveReaders(
        cpb.ListActiveReadersRequest(window_seconds=540), metadata=consultant.md
    )
    assert stale.account not in [r.name for r in narrow.readers]


def test_list_active_readers_pages_walk_every_reader_once(h: Harness) -> None:
    consultant = h.new_consultant()
    readers = [h.new_reader() for _ in range(7)]
    for client in readers:
        record(client)
    for size in (1, 2, 3):
        seen = walk(
            lambda token, s=size: consultant.consultant.ListActiveReaders(  # type: ignore[misc]
                cpb.ListActiveReadersRequest(page_size=s, page_token=token), metadata=consultant.md),
            "readers", size,
        )
        assert [r.name for r in seen] == [c.account for c in reversed(readers)]


def test_list_active_readers_checks_its_inputs(h: Harness) -> None:
    consultant = h.new_consultant()
    record(h.new_reader())
    record(h.new_reader())
    page = consultant.consultant.ListActiveReaders(cpb.ListActiveReadersRequest(page_size=1), metadata=consultant.md)
    assert page.next_page_token
    for request, field in [
        (cpb.ListActiveReadersRequest(window_seconds=-1), "window_seconds"),
        (cpb.ListActiveReadersRequest(window_seconds=7 * 24 * 3600 + 1), "window_seconds"),
        (cpb.ListActiveReadersRequest(page_size=-5), "page_size"),
        (cpb.ListActiveReadersRequest(page_token="bm9wZQ"), "page_token"),
        (cpb.ListActiveReadersRequest(page_token=page.next_page_token, window_seconds=60), "page_token"),
    ]:
        error = rpc_error(lambda r=request: consultant.consultant.ListActiveReaders(  # type: ignore[misc]
            r, metadata=consultant.md))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert field in (error.details() or ""), request


# --- ListReaders and GetReader ------------------------------------------------------------------------------------


def test_list_readers_newest_first_pages_and_status_filter(h: Harness) -> None:
    consultant = h.new_consultant()
    readers = [h.new_reader() for _ in range(5)]
    done = readers[1]
    record(done, "progress", {"percent": 1.0})
    record(readers[2], "progress", {"percent": 0.3})
    seen = walk(
        lambda token: consultant.consultant.ListReaders(
            cpb.ListReadersRequest(page_size=2, page_token=token), metadata=consultant.md),
        "readers", 2,
    )
    assert [r.name for r in seen] == [c.account for c in reversed(readers)]
    assert all(r.email and r.display_name and r.state.reader == r.name for r in seen)
    completed = consultant.consultant.ListReaders(cpb.ListReadersRequest(status=COMPLETED), metadata=consultant.md)
    assert [r.name for r in completed.readers] == [done.account]
    assert completed.readers[0].state.status == COMPLETED
    assert completed.readers[0].state.progress == 1.0
    active = consultant.consultant.ListReaders(cpb.ListReadersRequest(status=ACTIVE), metadata=consultant.md)
    assert [r.name for r in active.readers] == [c.account for c in reversed(readers) if c is not done]
    paused = consultant.consultant.ListReaders(cpb.ListReadersRequest(status=PAUSED), metadata=consultant.md)
    assert list(paused.readers) == []
    # A token is bound to its filter.
    first = consultant.consultant.ListReaders(cpb.ListReadersRequest(page_size=1), metadata=consultant.md)
    for request in (cpb.ListReadersRequest(page_token=first.next_page_token, status=ACTIVE),
                    cpb.ListReadersRequest(status=9)):  # type: ignore[arg-type]
        error = rpc_error(lambda r=request: consultant.consultant.ListReaders(r, metadata=consultant.md))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_get_reader(h: Harness) -> None:
    consultant = h.new_consultant()
    reader = h.new_reader("gina")
    recorded = record(reader, "progress", {"percent": 0.75, "step": 9}, "three quarters")
    got = consultant.consultant.GetReader(cpb.GetReaderRequest(name=reader.account), metadata=consultant.md).reader
    assert got.name == reader.account
    assert (got.email, got.display_name) == email_of(h, reader)
    assert got.active
    assert got.state == recorded.state
    # Upper-case ids name the same reader.
    upper = "readers/" + reader.account.split("/")[1].upper()
    assert consultant.consultant.GetReader(cpb.GetReaderRequest(name=upper), metadata=consultant.md).reader == got
    for name, code in [
        (f"readers/{uuid.uuid4()}", grpc.StatusCode.NOT_FOUND),
        ("readers/gina", grpc.StatusCode.INVALID_ARGUMENT),
        ("consultants/" + reader.account.split("/")[1], grpc.StatusCode.INVALID_ARGUMENT),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        ("readers/-", grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        error = rpc_error(lambda n=name: consultant.consultant.GetReader(  # type: ignore[misc]
            cpb.GetReaderRequest(name=n), metadata=consultant.md))
        assert error.code() == code, name
    assert error_reason(rpc_error(lambda: consultant.consultant.GetReader(
        cpb.GetReaderRequest(name=f"readers/{uuid.uuid4()}"), metadata=consultant.md))) == "READER_NOT_FOUND"


# --- ListInteractions ---------------------------------------------------------------------------------------------


def test_list_interactions_global_and_per_reader(h: Harness) -> None:
    consultant = h.new_consultant()
    ann, bob = h.new_reader(), h.new_reader()
    made: list[tuple[str, str, str]] = []  # (reader, type, name) in commit order
    for i in range(12):
        client = ann if i % 3 else bob
        type_ = "answer" if i % 4 == 0 else "heartbeat"
        made.append((client.account, type_, record(client, type_, {"i": i}).interaction.name))
    newest_first = made[::-1]

    def list_all(parent: str, size: int, type_: str = "") -> list[Any]:
        return walk(
            lambda token: consultant.consultant.ListInteractions(
                cpb.ListInteractionsRequest(parent=parent, page_size=size, page_token=token, type=type_),
                metadata=consultant.md),
            "interactions", size,
        )

    everything = list_all("readers/-", 50)
    assert [i.name for i in everything] == [n for _, _, n in newest_first]
    sequences = [i.sequence for i in everything]
    assert sequences == sorted(sequences, reverse=True)
    assert len(set(sequences)) == len(sequences)
    assert [i.name for i in list_all("readers/-", 5)] == [n for _, _, n in newest_first]
    for client in (ann, bob):
        mine = [n for r, _, n in newest_first if r == client.account]
        assert [i.name for i in list_all(client.account, 50)] == mine
        assert [i.name for i in list_all(client.account, 2)] == mine
    assert [i.name for i in list_all("readers/-", 3, "answer")] == [n for _, t, n in newest_first if t == "answer"]
    assert [i.name for i in list_all(ann.account, 50, "answer")] == [
        n for r, t, n in newest_first if t == "answer" and r == ann.account
    ]
    assert list_all(ann.account, 50, "progress") == []
    # Payload and type come back as stored.
    assert json.loads(everything[-1].payload_json) == {"i": 0}
    assert everything[-1].type == "answer"


def test_list_interactions_refusals(h: Harness) -> None:
    consultant = h.new_consultant()
    reader = h.new_reader()
    for _ in range(3):
        record(reader)
    page = consultant.consultant.ListInteractions(
        cpb.ListInteractionsRequest(parent="readers/-", page_size=1), metadata=consultant.md)
    cases = [
        (cpb.ListInteractionsRequest(parent=f"readers/{uuid.uuid4()}"), grpc.StatusCode.NOT_FOUND),
        (cpb.ListInteractionsRequest(parent=""), grpc.StatusCode.INVALID_ARGUMENT),
        (cpb.ListInteractionsRequest(parent="readers/*"), grpc.StatusCode.INVALID_ARGUMENT),
        (cpb.ListInteractionsRequest(parent="readers/-", type="Not A Type"), grpc.StatusCode.INVALID_ARGUMENT),
        # A token of the global list is refused for one reader's list.
        (cpb.ListInteractionsRequest(parent=reader.account, page_token=page.next_page_token),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for request, code in cases:
        error = rpc_error(lambda r=request: consultant.consultant.ListInteractions(  # type: ignore[misc]
            r, metadata=consultant.md))
        assert error.code() == code, request


# --- Who may look ---------------------------------------------------------------------------------------------------


CONSULTANT_CALLS: list[tuple[str, Callable[[Client, str], Any]]] = [
    ("ListActiveReaders", lambda c, _: c.consultant.ListActiveReaders(cpb.ListActiveReadersRequest(), metadata=c.md)),
    ("ListReaders", lambda c, _: c.consultant.ListReaders(cpb.ListReadersRequest(), metadata=c.md)),
    ("GetReader", lambda c, name: c.consultant.GetReader(cpb.GetReaderRequest(name=name), metadata=c.md)),
    ("ListInteractions", lambda c, name: c.consultant.ListInteractions(
        cpb.ListInteractionsRequest(parent=name), metadata=c.md)),
    ("ListInteractions-all", lambda c, _: c.consultant.ListInteractions(
        cpb.ListInteractionsRequest(parent="readers/-"), metadata=c.md)),
]


@pytest.mark.parametrize(("label", "call"), CONSULTANT_CALLS, ids=[label for label, _ in CONSULTANT_CALLS])
def test_readers_may_not_call_consultant_rpcs(h: Harness, label: str, call: Callable[[Client, str], Any]) -> None:
    reader = h.new_reader()
    other = h.new_reader()
    record(other)
    for target in (reader.account, other.account):
        error = rpc_error(lambda t=target: call(reader, t))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_reason(error) == "CONSULTANT_ONLY"
    # Every consultant role may.
    for role in (resources_pb2.CONSULTANT_ROLE_CONSULTANT, resources_pb2.CONSULTANT_ROLE_SUPERVISOR):
        call(h.new_consultant(role), other.account)
    call(h.admin(), other.account)


def test_a_reader_only_ever_sees_its_own_interactions(h: Harness) -> None:
    ann, bob = h.new_reader(), h.new_reader()
    mine = [record(ann, "answer", {"n": i}).interaction.name for i in range(3)]
    theirs = [record(bob, "answer", {"secret": i}).interaction.name for i in range(4)]
    listed = ann.reader.ListMyInteractions(rpb.ListMyInteractionsRequest(page_size=100), metadata=ann.md)
    assert [i.name for i in listed.interactions] == mine[::-1]
    assert not set(theirs) & {i.name for i in listed.interactions}
    assert all(i.name.startswith(ann.account + "/") for i in listed.interactions)
    state = ann.reader.GetMyState(rpb.GetMyStateRequest(), metadata=ann.md).state
    assert state.reader == ann.account
    assert state.last_interaction == mine[-1]


def test_core_reader_rpcs_cannot_name_another_reader() -> None:
    """The reader's own RPCs take no reader, parent, account or resource name
    (nor does any message inside their requests), so the caller's session is
    their only subject. (Reading another reader's data needs that reader's
    consent and goes through separate RPCs.)"""
    service = rpb.DESCRIPTOR.services_by_name["ReaderService"]
    core = {"RecordInteraction", "RecordInteractions", "GetMyState", "ListMyInteractions"}
    naming = {"reader", "readers", "parent", "name", "account", "user_id", "reader_id", "user", "owner"}

    def names(message: Any, seen: set[str]) -> set[str]:
        if message.full_name in seen:
            return set()
        seen.add(message.full_name)
        found = {f.name for f in message.fields}
        for f in message.fields:
            if f.message_type is not None:
                found |= names(f.message_type, seen)
        return found

    methods = {m.name: m for m in service.methods}
    assert core <= set(methods)
    for name in sorted(core):
        fields = names(methods[name].input_type, set())
        assert not fields & naming, (name, fields & naming)
