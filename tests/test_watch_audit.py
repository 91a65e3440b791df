"""`watch.open` audit rows record watches that opened, not requests the
server refused."""

from __future__ import annotations

import grpc

from cursor.v1 import consultant_service_pb2 as cpb
from tests.conftest import Client, Harness
from tests.helpers import error_reason, rpc_error
from tests.streams import StreamReader


def watch_open_rows(h: Harness, consultant: Client) -> list[tuple[str, str | None]]:
    return [(str(t), i) for t, i in h.database.rows(
        "SELECT target_type, target_id FROM audit_logs WHERE action = 'watch.open' AND actor_id = ?",
        (consultant.account.split("/")[1],))]


def test_a_refused_watch_leaves_no_audit_row(h: Harness) -> None:
    consultant, reader = h.new_consultant(), h.new_reader()
    for after, reason in (("nonsense", "BAD_CURSOR"), ("0123456789abcdef-1", "CURSOR_OTHER_HISTORY")):
        request = cpb.WatchActivityRequest(readers=[reader.account], after=after)
        call = consultant.consultant.WatchActivity(request, metadata=consultant.md)
        error = rpc_error(lambda c=call: next(iter(c)))  # type: ignore[misc]
        assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE)
        assert error_reason(error) == reason
    assert watch_open_rows(h, consultant) == []
    # A watch that opens is audited once, naming the reader watched.
    stream = StreamReader(consultant.consultant.WatchActivity(
        cpb.WatchActivityRequest(readers=[reader.account]), metadata=consultant.md))
    stream.wait_for(lambda: bool(stream.responses))
    assert watch_open_rows(h, consultant) == [("reader", reader.account.split("/")[1])]
    stream.cancel()
