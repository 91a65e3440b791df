"""ReaderService through a real server and a real database."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest

from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2
from tests.conftest import Harness
from tests.helpers import error_reason, rpc_error


def record(client, type_="progress", payload=None, summary="", id_=""):  # type: ignore[no-untyped-def]
    return client.reader.RecordInteraction(
        rpb.RecordInteractionRequest(
            interaction=rpb.NewInteraction(
                id=id_, type=type_, payload_json=json.dumps(payload or {}), summary=summary
            )
        ),
        metadata=client.md,
    )


def test_record_moves_state_in_the_same_transaction(h: Harness) -> None:
    reader = h.new_reader()
    first = record(reader, payload={"percent": 0.25, "step": 2}, summary="chapter 1")
    assert first.interaction.name.startswith(reader.account + "/interactions/")
    assert first.interaction.sequence > 0
    assert not first.duplicate
    assert first.state.progress == 0.25
    assert first.state.current_step == 2
    assert first.state.status == resources_pb2.READER_STATUS_ACTIVE
    assert first.state.last_interaction == first.interaction.name
    beat = record(reader, type_="heartbeat")
    assert beat.state.progress == 0.25, "a heartbeat keeps progress"
    assert beat.state.last_interaction == beat.interaction.name
    done = record(reader, payload={"percent": 1.0})
    assert done.state.status == resources_pb2.READER_STATUS_COMPLETED
    state = reader.reader.GetMyState(rpb.GetMyStateRequest(), metadata=reader.md).state
    assert state == done.state
    # The row in the database agrees with what the API said.
    [row] = h.database.rows(
        "SELECT status, progress, current_step, last_interaction_id FROM reader_states WHERE reader_id = ?",
        (reader.account.split("/")[1],),
    )
    assert row == ("completed", 1.0, 2, done.interaction.name.rsplit("/", 1)[1])


def test_retry_with_same_id_stores_once(h: Harness) -> None:
    reader = h.new_reader()
    chosen = str(uuid.uuid4())
    first = record(reader, type_="answer", payload={"q": 1, "a": "b"}, id_=chosen)
    again = record(reader, type_="answer", payload={"q": 1, "a": "b"}, id_=chosen.upper())
    assert not first.duplicate
    assert again.duplicate
    assert again.interaction == first.interaction
    assert h.database.count("interactions") == 1


def test_id_of_another_reader_is_refused(h: Harness) -> None:
    ann, bob = h.new_reader(), h.new_reader()
    chosen = str(uuid.uuid4())
    record(ann, id_=chosen, type_="heartbeat")
    error = rpc_error(lambda: record(bob, id_=chosen, type_="heartbeat"))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(error) == "ID_TAKEN"
    assert h.database.count("interactions") == 1


@pytest.mark.parametrize(
    ("type_", "payload_json", "summary", "id_", "field"),
    [
        ("Progress", "{}", "", "", "interaction.type"),
        ("", "{}", "", "", "interaction.type"),
        ("a" * 33, "{}", "", "", "interaction.type"),
        ("progress", "[1, 2]", "", "", "interaction.payload_json"),
        ("progress", "{not json", "", "", "interaction.payload_json"),
        ("progress", '{"percent": 1.5}', "", "", "interaction.payload_json"),
        ("progress", '{"percent": "half"}', "", "", "interaction.payload_json"),
        ("progress", '{"step": -1}', "", "", "interaction.payload_json"),
        ("answer", json.dumps({"x": "y" * 17000}), "", "", "interaction.payload_json"),
        ("answer", "{}", "s" * 201, "", "interaction.summary"),
        ("answer", "{}", "", "not-a-uuid", "interaction.id"),
    ],
)
def test_bad_interactions_are_refused_and_nothing_is_written(
    h: Harness, type_: str, payload_json: str, summary: str, id_: str, field: str
) -> None:
    reader = h.new_reader()
    request = rpb.RecordInteractionRequest(
        interaction=rpb.NewInteraction(id=id_, type=type_, payload_json=payload_json, summary=summary)
    )
    error = rpc_error(lambda: reader.reader.RecordInteraction(request, metadata=reader.md))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in error.details() or field.split(".")[-1] in error.details()
    assert h.database.count("interactions") == 0


def test_missing_interaction_is_invalid(h: Harness) -> None:
    reader = h.new_reader()
    error = rpc_error(lambda: reader.reader.RecordInteraction(rpb.RecordInteractionRequest(), metadata=reader.md))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_streaming_upload_counts_stored_duplicates_and_rejects(h: Harness) -> None:
    reader = h.new_reader()
    known = str(uuid.uuid4())
    record(reader, id_=known, type_="heartbeat")
    chunks = []
    for c in range(4):
        items = [
            rpb.NewInteraction(type="progress", payload_json=json.dumps({"percent": (c * 100 + i) / 1000, "step": c}))
            for i in range(100)
        ]
        chunks.append(rpb.RecordInteractionsRequest(interactions=items))
    chunks.append(rpb.RecordInteractionsRequest(interactions=[
        rpb.NewInteraction(id=known, type="heartbeat"),
        rpb.NewInteraction(type="BAD"),
        rpb.NewInteraction(type="open_page", payload_json='{"page": 7}'),
    ]))
    response = reader.reader.RecordInteractions(iter(chunks), metadata=reader.md)
    assert response.stored_count == 401
    assert response.duplicate_count == 1
    assert [(r.index, r.reason) for r in response.rejected] == [(401, "INVALID_ARGUMENT")]
    assert "type" in response.rejected[0].message
    assert response.state.progress == pytest.approx(0.399)
    assert response.state.current_step == 3
    assert h.database.count("interactions") == 402


def test_upload_chunk_mixing_new_duplicate_and_taken_ids_stores_only_the_new(h: Harness) -> None:
    """One chunk: new ids, this reader's stored id, another reader's id, and
    an id repeated inside the chunk. Only the new ones are stored, in order,
    and the events and state follow the stored ones alone."""
    reader, other = h.new_reader(), h.new_reader()
    mine, theirs, repeated = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    record(reader, id_=mine, type_="heartbeat")
    record(other, id_=theirs, type_="heartbeat")
    fresh = [str(uuid.uuid4()) for _ in range(3)]
    chunk = rpb.RecordInteractionsRequest(interactions=[
        rpb.NewInteraction(id=fresh[0], type="progress", payload_json='{"percent": 0.2, "step": 1}'),
        rpb.NewInteraction(id=mine, type="progress", payload_json='{"percent": 0.9, "step": 9}'),
        rpb.NewInteraction(id=theirs, type="answer"),
        rpb.NewInteraction(id=repeated, type="progress", payload_json='{"percent": 0.3, "step": 2}'),
        rpb.NewInteraction(id=repeated, type="progress", payload_json='{"percent": 0.8, "step": 8}'),
        rpb.NewInteraction(id=fresh[1], type="answer"),
        rpb.NewInteraction(type="open_page"),
    ])
    response = reader.reader.RecordInteractions(iter([chunk]), metadata=reader.md)
    assert response.stored_count == 4
    assert response.duplicate_count == 2
    assert [(r.index, r.id, r.reason) for r in response.rejected] == [(2, theirs, "ID_TAKEN")]
    assert response.state.progress == pytest.approx(0.3)
    assert response.state.current_step == 2
    rows = h.database.rows("SELECT id, reader_id FROM interactions ORDER BY seq")
    assert [r[0] for r in rows[2:5]] == [fresh[0], repeated, fresh[1]]
    assert len(rows) == 6
    assert all(r[1] == reader.account.removeprefix("readers/") for r in rows[2:])


def test_oversized_chunk_is_refused(h: Harness) -> None:
    reader = h.new_reader()
    chunk = rpb.RecordInteractionsRequest(interactions=[rpb.NewInteraction(type="heartbeat")] * 501)
    error = rpc_error(lambda: reader.reader.RecordInteractions(iter([chunk]), metadata=reader.md))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(error) == "CHUNK_TOO_LARGE"


def test_list_my_interactions_pages_newest_first_with_type_filter(h: Harness) -> None:
    reader, other = h.new_reader(), h.new_reader()
    names = [record(reader, type_="answer" if i % 3 == 0 else "heartbeat").interaction.name for i in range(25)]
    record(other, type_="answer")
    seen, token = [], ""
    while True:
        page = reader.reader.ListMyInteractions(
            rpb.ListMyInteractionsRequest(page_size=4, page_token=token), metadata=reader.md
        )
        assert len(page.interactions) <= 4
        seen += [i.name for i in page.interactions]
        token = page.next_page_token
        if not token:
            break
    assert seen == names[::-1]
    answers = reader.reader.ListMyInteractions(
        rpb.ListMyInteractionsRequest(type="answer", page_size=100), metadata=reader.md
    )
    assert [i.name for i in answers.interactions] == [n for i, n in enumerate(names) if i % 3 == 0][::-1]
    assert answers.next_page_token == ""


def test_paging_inputs_are_checked(h: Harness) -> None:
    reader = h.new_reader()
    for _ in range(3):
        record(reader, type_="heartbeat")
    page = reader.reader.ListMyInteractions(rpb.ListMyInteractionsRequest(page_size=1), metadata=reader.md)
    for request, reason_field in [
        (rpb.ListMyInteractionsRequest(page_size=-1), "page_size"),
        (rpb.ListMyInteractionsRequest(page_token="garbage!"), "page_token"),
        # A token is bound to the filters it was made with.
        (rpb.ListMyInteractionsRequest(page_token=page.next_page_token, type="answer"), "page_token"),
    ]:
        error = rpc_error(lambda r=request: reader.reader.ListMyInteractions(r, metadata=reader.md))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason_field in error.details()
    big = reader.reader.ListMyInteractions(rpb.ListMyInteractionsRequest(page_size=10**6), metadata=reader.md)
    assert len(big.interactions) == 3


def test_consultant_cannot_call_reader_rpcs(h: Harness) -> None:
    consultant = h.new_consultant()
    error = rpc_error(lambda: record(consultant, type_="heartbeat"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
