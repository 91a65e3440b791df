"""Consent: a reader shares its state (and maybe its interactions) with another
reader, who can read them only while the grant lasts; revocation is immediate,
also for an open WatchSharedActivity stream."""

from __future__ import annotations

import json
import time
from typing import Any

import grpc

from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2 as pb
from tests.conftest import Client, Harness
from tests.helpers import error_reason, rpc_error
from tests.streams import StreamReader
from tests.test_audit import audit_rows, details

STATE = pb.CONSENT_SCOPE_STATE
ALL = pb.CONSENT_SCOPE_STATE_AND_INTERACTIONS


def record(client: Client, type_: str = "progress", **payload: Any) -> rpb.RecordInteractionResponse:
    return client.reader.RecordInteraction(
        rpb.RecordInteractionRequest(interaction=rpb.NewInteraction(type=type_, payload_json=json.dumps(payload))),
        metadata=client.md,
    )


def grant(granter: Client, grantee: Client, scope: int = ALL) -> pb.Consent:
    return granter.reader.GrantConsent(  # type: ignore[no-any-return]
        rpb.GrantConsentRequest(grantee=grantee.account, scope=scope), metadata=granter.md
    ).consent


def revoke(granter: Client, grantee: Client) -> pb.Consent:
    return granter.reader.RevokeConsent(  # type: ignore[no-any-return]
        rpb.RevokeConsentRequest(grantee=grantee.account), metadata=granter.md
    ).consent


def shared_state(grantee: Client, granter: Client) -> pb.ReaderState:
    return grantee.reader.GetSharedState(  # type: ignore[no-any-return]
        rpb.GetSharedStateRequest(reader=granter.account), metadata=grantee.md
    ).state


def shared_interactions(grantee: Client, granter: Client, **kw: Any) -> rpb.ListSharedInteractionsResponse:
    return grantee.reader.ListSharedInteractions(  # type: ignore[no-any-return]
        rpb.ListSharedInteractionsRequest(parent=granter.account, **kw), metadata=grantee.md
    )


def denied(call: Any) -> str:
    """The reason of the PERMISSION_DENIED a call must end with."""
    error = rpc_error(call)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (error.code(), error.details())
    return error_reason(error)


Stream = StreamReader


def watch_shared(grantee: Client, granter: Client, after: str = "") -> Stream:
    return Stream(grantee.reader.WatchSharedActivity(
        rpb.WatchSharedActivityRequest(reader=granter.account, after=after), metadata=grantee.md
    ))


def wait_until_subscribed(h: Harness, count: int) -> None:
    deadline = time.monotonic() + 5
    while h.server.app.broadcaster.stream_count < count:
        assert time.monotonic() < deadline, "the stream did not open"
        time.sleep(0.01)


def test_without_a_grant_nothing_is_shared(h: Harness) -> None:
    ann, bob = h.new_reader(), h.new_reader()
    record(ann, percent=0.3, step=2)
    assert denied(lambda: shared_state(bob, ann)) == "NO_CONSENT"
    assert denied(lambda: shared_interactions(bob, ann)) == "NO_CONSENT"
    stream = watch_shared(bob, ann)
    stream.wait_for(lambda: stream.error is not None)
    assert stream.error is not None
    assert stream.error.code() == grpc.StatusCode.PERMISSION_DENIED
    # An unknown reader gets the same answer: nothing about other accounts leaks.
    unknown = "readers/00000000-0000-7000-8000-000000000000"
    error = rpc_error(lambda: bob.reader.GetSharedState(rpb.GetSharedStateRequest(reader=unknown), metadata=bob.md))
    assert (error.code(), error_reason(error)) == (grpc.StatusCode.PERMISSION_DENIED, "NO_CONSENT")


def test_grantee_reads_state_and_interactions_of_the_granter_only(h: Harness) -> None:
    ann, bob, carl = h.new_reader(), h.new_reader(), h.new_reader()
    for i in range(5):
        record(ann, "answer", q=i)
    record(ann, percent=0.4, step=3)
    consent = grant(ann, bob, ALL)
    assert consent.granter == ann.account
    assert consent.grantee == bob.account
    assert consent.scope == ALL
    assert consent.name.startswith(f"{ann.account}/consents/")
    assert consent.HasField("create_time")
    assert not consent.HasField("revoke_time")

    state = shared_state(bob, ann)
    mine = ann.reader.GetMyState(rpb.GetMyStateRequest(), metadata=ann.md).state
    assert state == mine
    assert (state.progress, state.current_step) == (0.4, 3)

    theirs = ann.reader.ListMyInteractions(rpb.ListMyInteractionsRequest(), metadata=ann.md).interactions
    assert list(shared_interactions(bob, ann).interactions) == list(theirs)
    # Paged, and filtered by type.
    walked, token = [], ""
    while True:
        page = shared_interactions(bob, ann, page_size=2, page_token=token, type="answer")
        walked += page.interactions
        token = page.next_page_token
        if not token:
            break
    assert walked == [i for i in theirs if i.type == "answer"]
    assert len(walked) == 5

    # One-way and between these two readers only.
    assert denied(lambda: shared_state(ann, bob)) == "NO_CONSENT"
    assert denied(lambda: shared_state(carl, ann)) == "NO_CONSENT"
    assert denied(lambda: shared_interactions(carl, ann)) == "NO_CONSENT"

    # Both sides see the consent in ListConsents.
    given = ann.reader.ListConsents(rpb.ListConsentsRequest(), metadata=ann.md).consents
    received = bob.reader.ListConsents(rpb.ListConsentsRequest(received=True), metadata=bob.md).consents
    assert list(given) == list(received) == [consent]
    assert not bob.reader.ListConsents(rpb.ListConsentsRequest(), metadata=bob.md).consents


def test_scope_state_shares_no_interactions(h: Harness) -> None:
    ann, bob = h.new_reader(), h.new_reader()
    record(ann, percent=0.2)
    grant(ann, bob, STATE)
    assert shared_state(bob, ann).progress == 0.2
    assert denied(lambda: shared_interactions(bob, ann)) == "CONSENT_SCOPE"

    stream = watch_shared(bob, ann)
    wait_until_subscribed(h, 1)
    record(ann, "answer", q=1)
    record(ann, percent=0.6)
    stream.wait_for(lambda: any(e.kind == pb.EVENT_KIND_READER_STATE_CHANGED for e in stream.events))
    time.sleep(0.2)
    kinds = {e.kind for e in stream.events}
    assert pb.EVENT_KIND_INTERACTION_RECORDED not in kinds
    assert kinds <= {pb.EVENT_KIND_READER_STATE_CHANGED, pb.EVENT_KIND_PRESENCE_CHANGED}
    assert all(e.reader == ann.account for e in stream.events)
    stream.cancel()


def test_shared_stream_carries_interactions_and_never_messages(h: Harness) -> None:
    ann, bob, other = h.new_reader(), h.new_reader(), h.new_reader()
    consultant = h.new_consultant()
    grant(ann, bob, ALL)
    stream = watch_shared(bob, ann)
    wait_until_subscribed(h, 1)
    from cursor.v1 import consultant_service_pb2 as cpb

    consultant.consultant.SendMessage(cpb.SendMessageRequest(reader=ann.account, body="private"),
                                      metadata=consultant.md)
    ann.reader.SendMyMessage(rpb.SendMyMessageRequest(body="also private"), metadata=ann.md)
    record(other, "answer", q=0)
    sent = record(ann, "answer", q=1)
    stream.wait_for(lambda: any(e.kind == pb.EVENT_KIND_INTERACTION_RECORDED for e in stream.events))
    time.sleep(0.2)
    interactions = [e for e in stream.events if e.kind == pb.EVENT_KIND_INTERACTION_RECORDED]
    assert [e.interaction for e in interactions] == [sent.interaction]
    assert {e.kind for e in stream.events} <= {pb.EVENT_KIND_INTERACTION_RECORDED,
                                               pb.EVENT_KIND_PRESENCE_CHANGED, pb.EVENT_KIND_READER_STATE_CHANGED}
    assert all(e.reader == ann.account for e in stream.events)
    cursor = stream.events[-1].cursor
    stream.cancel()
    # Resumable behind a cursor, like every stream.
    later = record(ann, "answer", q=2)
    resumed = watch_shared(bob, ann, after=cursor)
    resumed.wait_for(lambda: any(e.kind == pb.EVENT_KIND_INTERACTION_RECORDED for e in resumed.events))
    assert [e.interaction for e in resumed.events if e.HasField("interaction")] == [later.interaction]
    resumed.cancel()


def test_revocation_is_immediate_for_calls_and_open_streams(h: Harness) -> None:
    ann, bob = h.new_reader(), h.new_reader()
    grant(ann, bob, ALL)
    own = Stream(bob.reader.WatchMyMessages(rpb.WatchMyMessagesRequest(), metadata=bob.md))
    stream = watch_shared(bob, ann)
    wait_until_subscribed(h, 2)
    record(ann, "answer", q=1)
    stream.wait_for(lambda: any(e.kind == pb.EVENT_KIND_INTERACTION_RECORDED for e in stream.events))
    assert shared_state(bob, ann).reader == ann.account

    started = time.monotonic()
    revoked = revoke(ann, bob)
    # Unary calls are refused from the next call on.
    assert denied(lambda: shared_state(bob, ann)) == "NO_CONSENT"
    assert denied(lambda: shared_interactions(bob, ann)) == "NO_CONSENT"
    # The open stream ends within a second, with PERMISSION_DENIED.
    stream.wait_for(lambda: stream.error is not None, timeout=1.0)
    assert stream.ended_at is not None
    assert stream.ended_at - started < 1.0
    assert stream.error is not None
    assert stream.error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "consent revoked" in (stream.error.details() or "")
    assert error_reason(stream.error) == "CONSENT_REVOKED"
    # Nothing the granter does afterwards reaches the grantee.
    seen = len(stream.events)
    record(ann, "answer", q=2)
    time.sleep(0.2)
    assert len(stream.events) == seen
    # The grantee's other streams stay open.
    time.sleep(0.1)
    assert own.error is None
    assert own.ended_at is None
    own.cancel()
    # A new stream is refused as well.
    again = watch_shared(bob, ann)
    again.wait_for(lambda: again.error is not None)
    assert again.error is not None
    assert again.error.code() == grpc.StatusCode.PERMISSION_DENIED

    assert revoked.HasField("revoke_time")
    assert not ann.reader.ListConsents(rpb.ListConsentsRequest(), metadata=ann.md).consents
    history = ann.reader.ListConsents(rpb.ListConsentsRequest(show_revoked=True), metadata=ann.md).consents
    assert list(history) == [revoked]
    # Granting again restores access.
    grant(ann, bob, STATE)
    assert shared_state(bob, ann).reader == ann.account


def test_a_deactivated_granter_shares_nothing_until_reactivated(h: Harness) -> None:
    from cursor.v1 import admin_service_pb2 as apb

    def set_active(reader: Client, active: bool) -> None:
        h.anonymous.admin.SetAccountActive(apb.SetAccountActiveRequest(account=reader.account, active=active),
                                           metadata=h.admin_md())

    ann, bob, cy = h.new_reader(), h.new_reader(), h.new_reader()
    grant(ann, bob, ALL)
    grant(cy, bob, STATE)
    on_ann, on_cy = watch_shared(bob, ann), watch_shared(bob, cy)
    wait_until_subscribed(h, 2)
    record(ann, "answer", q=1)
    on_ann.wait_for(lambda: any(e.kind == pb.EVENT_KIND_INTERACTION_RECORDED for e in on_ann.events))

    started = time.monotonic()
    set_active(ann, False)
    # The grantee's stream on ann ends within a second; the one on cy stays.
    on_ann.wait_for(lambda: on_ann.error is not None, timeout=1.0)
    assert on_ann.ended_at is not None
    assert on_ann.ended_at - started < 1.0
    assert on_ann.error is not None
    assert on_ann.error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(on_ann.error) == "GRANTER_INACTIVE"
    assert denied(lambda: shared_state(bob, ann)) == "GRANTER_INACTIVE"
    assert denied(lambda: shared_interactions(bob, ann)) == "GRANTER_INACTIVE"
    again = watch_shared(bob, ann)
    again.wait_for(lambda: again.error is not None)
    assert again.error is not None
    assert error_reason(again.error) == "GRANTER_INACTIVE"
    time.sleep(0.1)
    assert on_cy.error is None
    assert shared_state(bob, cy).reader == cy.account
    on_cy.cancel()

    # The grant was never revoked: reactivation shares again.
    set_active(ann, True)
    assert shared_state(bob, ann).reader == ann.account
    assert len(shared_interactions(bob, ann).interactions) == 1


def test_narrowing_the_scope_ends_streams_that_carry_interactions(h: Harness) -> None:
    ann, bob = h.new_reader(), h.new_reader()
    first = grant(ann, bob, ALL)
    assert grant(ann, bob, ALL) == first, "granting the same scope again changes nothing"
    stream = watch_shared(bob, ann)
    wait_until_subscribed(h, 1)
    narrowed = grant(ann, bob, STATE)
    assert narrowed.name != first.name
    stream.wait_for(lambda: stream.error is not None, timeout=1.0)
    assert stream.error is not None
    assert stream.error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(stream.error) == "CONSENT_CHANGED"
    assert denied(lambda: shared_interactions(bob, ann)) == "CONSENT_SCOPE"
    history = ann.reader.ListConsents(rpb.ListConsentsRequest(show_revoked=True), metadata=ann.md).consents
    assert [c.scope for c in history] == [STATE, ALL]
    assert [c.HasField("revoke_time") for c in history] == [False, True]
    # Widening leaves a state-only stream open (it carries less than allowed).
    state_stream = watch_shared(bob, ann)
    wait_until_subscribed(h, 1)
    grant(ann, bob, ALL)
    time.sleep(0.3)
    assert state_stream.error is None
    state_stream.cancel()


def test_bad_requests(h: Harness) -> None:
    ann, bob = h.new_reader(), h.new_reader()
    consultant = h.new_consultant()
    cases = [
        (rpb.GrantConsentRequest(grantee=ann.account, scope=ALL), grpc.StatusCode.INVALID_ARGUMENT),
        (rpb.GrantConsentRequest(grantee=bob.account), grpc.StatusCode.INVALID_ARGUMENT),
        (rpb.GrantConsentRequest(grantee="bob@example.com", scope=ALL), grpc.StatusCode.INVALID_ARGUMENT),
        (rpb.GrantConsentRequest(grantee="readers/00000000-0000-7000-8000-000000000000", scope=ALL),
         grpc.StatusCode.NOT_FOUND),
    ]
    for request, code in cases:
        error = rpc_error(lambda r=request: ann.reader.GrantConsent(r, metadata=ann.md))  # type: ignore[misc]
        assert error.code() == code, request
    error = rpc_error(lambda: revoke(ann, bob))
    assert (error.code(), error_reason(error)) == (grpc.StatusCode.NOT_FOUND, "CONSENT_NOT_FOUND")
    error = rpc_error(lambda: bob.reader.GetSharedState(rpb.GetSharedStateRequest(reader="ann"), metadata=bob.md))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Consent RPCs are for readers: a consultant's session is refused.
    error = rpc_error(lambda: consultant.reader.GrantConsent(
        rpb.GrantConsentRequest(grantee=bob.account, scope=ALL), metadata=consultant.md))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_grant_and_revoke_are_audited(h: Harness) -> None:
    admin = h.admin()
    ann, bob = h.new_reader(), h.new_reader()
    first = grant(ann, bob, ALL)
    grant(ann, bob, ALL)  # no change, no row
    second = grant(ann, bob, STATE)
    revoked = revoke(ann, bob)
    rows = audit_rows(admin, actor=ann.account)
    consent_rows = [r for r in rows if r.action.startswith("consent.")]
    assert [(r.action, r.target) for r in consent_rows] == [
        ("consent.revoke", bob.account), ("consent.grant", bob.account), ("consent.grant", bob.account),
    ]
    first_id, second_id = first.name.rsplit("/", 1)[1], second.name.rsplit("/", 1)[1]
    assert details(consent_rows[2]) == {"consent_id": first_id, "scope": "state_and_interactions"}
    assert details(consent_rows[1]) == {"consent_id": second_id, "scope": "state", "replaced_consent_id": first_id,
                                        "previous_scope": "state_and_interactions"}
    assert details(consent_rows[0]) == {"consent_id": revoked.name.rsplit("/", 1)[1], "scope": "state"}
