"""PostgreSQL dropping the server's connections (a restart, a failover, an
administrator's pg_terminate_backend): what was in flight fails visibly
and retryably, nothing half-written stays, and the server carries on by
itself: the writer reopens its connection, the read pool replaces its
connections, the follower and the doorbell reconnect, and a watching
consultant still gets every event once, in order."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import grpc
import pytest

from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from tests.databases import PostgresDatabase
from tests.ops_support import record
from tests.streams import StreamReader

pytestmark = [pytest.mark.postgres, pytest.mark.postgres_only]

RETRYABLE = {grpc.StatusCode.UNAVAILABLE}


def terminate_server_connections(database: PostgresDatabase) -> int:
    """End every connection to the database but the one asking."""
    (ended,), = database.rows(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    return int(ended)


def until_stored(reader: Any, payload: dict[str, Any], attempts: int = 20) -> tuple[int, list[str]]:
    """RecordInteraction with one id, retried while the answer is retryable;
    returns its seq and the statuses seen before it succeeded."""
    seen: list[str] = []
    request = rpb.RecordInteractionRequest(interaction=rpb.NewInteraction(
        id=str(uuid.uuid4()), type="answer", payload_json=json.dumps(payload), summary="s"))
    for _ in range(attempts):
        try:
            return int(reader.reader.RecordInteraction(request, metadata=reader.md).interaction.sequence), seen
        except grpc.RpcError as error:
            seen.append(retryable(error))
            time.sleep(0.05)
    raise AssertionError(f"never stored: {seen}")


def retryable(error: grpc.RpcError) -> str:
    """What the caller was told, which must be a retryable status."""
    if error.code() not in RETRYABLE:
        raise AssertionError(f"not retryable: {error.code().name}: {error.details()}") from None
    return f"{error.code().name}: {error.details()}"


def test_dropped_connections_fail_retryably_and_the_server_recovers_by_itself(h: Any) -> None:
    database = h.database
    assert isinstance(database, PostgresDatabase)
    reader = h.new_reader("faults")
    consultant = h.new_consultant()
    watcher = StreamReader(consultant.consultant.WatchActivity(cpb.WatchActivityRequest(), metadata=consultant.md))
    watcher.wait_for(lambda: bool(watcher.responses))  # subscribed: everything from here on reaches it
    before = [record(reader, {"n": n}) for n in range(5)]
    watcher.wait_for(lambda: any(e.event_id == before[-1] for e in watcher.events))

    statuses: list[str] = []
    after: list[int] = []
    for round_ in range(3):
        assert terminate_server_connections(database) >= 1
        seq, seen = until_stored(reader, {"n": 100 + round_})
        after.append(seq)
        statuses += seen
        # Reads recover too (a pool connection that was dropped is replaced).
        for _ in range(20):
            try:
                consultant.consultant.ListActiveReaders(cpb.ListActiveReadersRequest(), metadata=consultant.md)
                break
            except grpc.RpcError as error:
                statuses.append(retryable(error))
                time.sleep(0.05)
        else:
            raise AssertionError("reads never recovered")
    print(f"\nstatuses seen while PostgreSQL dropped the connections: {sorted(set(statuses))}")
    for status in statuses:
        assert "could not" in status, status
        assert "retry" in status, status

    watcher.wait_for(lambda: any(e.event_id == after[-1] for e in watcher.events), timeout=10)
    assert watcher.error is None, watcher.error
    seen_seqs = [e.event_id for e in watcher.events]
    assert seen_seqs == sorted(set(seen_seqs)), "every event once, in order"
    stored = [seq for (seq,) in database.rows("SELECT seq FROM interactions ORDER BY seq")]
    assert stored == before + after, "exactly what was acknowledged, nothing half-written"
    assert set(stored) <= set(seen_seqs)
    assert database.integrity_errors() == []
    watcher.cancel()
