"""Input that fuzzing found reaching INTERNAL, UNKNOWN or a metadata overflow,
each answered with a status a client can act on (docs/security.md, "Input
validation and request size bounds"). Real server, real gRPC channels."""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from cursor.v1 import admin_service_pb2 as apb
from cursor.v1 import auth_service_pb2 as aupb
from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2
from cursor_grpc.config import LimitSettings
from tests.conftest import PASSWORD, Client, Harness
from tests.databases import TestDatabase
from tests.helpers import error_details, error_reason, rpc_error
from tests.procs import ServerProcess
from tests.test_access import service_descriptors

INVALID = grpc.StatusCode.INVALID_ARGUMENT
TOO_LARGE = grpc.StatusCode.RESOURCE_EXHAUSTED


def new_interaction(payload: str = "{}", summary: str = "", type_: str = "note") -> rpb.NewInteraction:
    return rpb.NewInteraction(type=type_, payload_json=payload, summary=summary)


def record(reader: Client, interaction: rpb.NewInteraction) -> Any:
    return reader.reader.RecordInteraction(rpb.RecordInteractionRequest(interaction=interaction), metadata=reader.md)


def failures(cases: dict[str, Callable[[], Any]], code: grpc.StatusCode, reason: str | None = None) -> list[str]:
    """Every case that did not end with `code` (and `reason`), described."""
    wrong = []
    for name, call in cases.items():
        try:
            call()
        except grpc.RpcError as error:
            if error.code() != code or (reason is not None and error_reason(error) != reason):
                wrong.append(f"{name}: {error.code().name} {error_reason(error)} {error.details()[:120]!r}")
            continue
        wrong.append(f"{name}: succeeded")
    return wrong


# --- JSON the database (or a client) cannot hold -------------------------------------------------------------------

BAD_JSON = {
    "NaN": '{"a": NaN}',
    "Infinity": '{"a": Infinity}',
    "-Infinity": '{"a": [-Infinity]}',
    "1e999 (parses to inf)": '{"a": 1e999}',
    "-1e400": '{"a": {"b": -1e400}}',
    "duplicate key": '{"a": 1, "a": 2}',
    "nested duplicate key": '{"b": [{"a": 1, "a": 1}]}',
    "lone high surrogate": '{"a": "\\ud800"}',
    "lone low surrogate in a key": '{"\\udc00": 1}',
    "surrogate pair reversed": '{"a": ["\\ude00\\ud83d"]}',
}
GOOD_JSON = '{"emoji": "\\ud83d\\ude00", "big": 1e308, "int": 123456789012345678901234567890, "s": "a\\u0000b"}'


def test_payload_json_refuses_non_finite_numbers_duplicate_keys_and_lone_surrogates(h: Harness) -> None:
    reader = h.new_reader()
    cases = {name: (lambda p=payload: record(reader, new_interaction(p))) for name, payload in BAD_JSON.items()}
    assert failures(cases, INVALID, "INVALID_PAYLOAD") == []
    assert h.database.count("interactions") == 0
    assert not record(reader, new_interaction(GOOD_JSON)).duplicate


def test_metadata_json_is_checked_by_the_same_rules(h: Harness) -> None:
    reader = h.new_reader()
    mask = field_mask_pb2.FieldMask(paths=["metadata_json"])

    def update(metadata: str) -> Any:
        return reader.reader.UpdateMyProfile(
            rpb.UpdateMyProfileRequest(reader=resources_pb2.Reader(metadata_json=metadata), update_mask=mask),
            metadata=reader.md,
        )

    cases = {name: (lambda m=metadata: update(m)) for name, metadata in BAD_JSON.items()}
    assert failures(cases, INVALID, "INVALID_METADATA") == []
    assert update(GOOD_JSON).reader.metadata_json == GOOD_JSON


def test_a_bad_item_in_an_upload_chunk_is_rejected_alone(h: Harness) -> None:
    reader = h.new_reader()
    chunk = rpb.RecordInteractionsRequest(interactions=[
        new_interaction('{"n": 1}'), new_interaction('{"n": NaN}'), new_interaction('{"n": 3}', summary="bad\x00"),
        new_interaction('{"n": 4}'),
    ])
    response = reader.reader.RecordInteractions(iter([chunk]), metadata=reader.md)
    assert response.stored_count == 2
    assert [(r.index, r.reason) for r in response.rejected] == [(1, "INVALID_PAYLOAD"), (2, "INVALID_ARGUMENT")]
    stored = reader.reader.ListMyInteractions(rpb.ListMyInteractionsRequest(), metadata=reader.md).interactions
    assert sorted(json.loads(i.payload_json)["n"] for i in stored) == [1, 4]


# --- NUL and control characters in text fields ---------------------------------------------------------------------

def test_nul_and_control_characters_are_refused_in_every_text_field(h: Harness) -> None:
    reader = h.new_reader()
    consultant = h.admin()
    anonymous = h.anonymous
    mask = field_mask_pb2.FieldMask

    def register(email: str = "", name: str = "New") -> Any:
        return anonymous.auth.RegisterReader(aupb.RegisterReaderRequest(
            email=email or f"{uuid.uuid4().hex}@example.com", password=PASSWORD, display_name=name))

    def profile(**fields: str) -> Any:
        return reader.reader.UpdateMyProfile(rpb.UpdateMyProfileRequest(
            reader=resources_pb2.Reader(**fields), update_mask=mask(paths=list(fields))), metadata=reader.md)

    messages_before = h.database.count("messages")
    cases = {
        "reader message body NUL": lambda: reader.reader.SendMyMessage(
            rpb.SendMyMessageRequest(body="\u0000hello"), metadata=reader.md),
        "reader message body ESC": lambda: reader.reader.SendMyMessage(
            rpb.SendMyMessageRequest(body="\x1b[2Jhello"), metadata=reader.md),
        "consultant message body NUL": lambda: consultant.consultant.SendMessage(
            cpb.SendMessageRequest(reader=reader.account, body="hi\x00"), metadata=consultant.md),
        "summary NUL": lambda: record(reader, new_interaction(summary="half\x00way")),
        "summary C1 control": lambda: record(reader, new_interaction(summary="half\x85way")),
        "register email NUL": lambda: register(email="ann\x00@example.com"),
        "register display name DEL": lambda: register(name="Ann\x7f"),
        "register display name C1": lambda: register(name="Ann\u009b"),
        "profile display name NUL": lambda: profile(display_name="A\x00"),
        "profile email NUL": lambda: profile(email="b\x00b@example.com"),
        "consultant email NUL": lambda: consultant.admin.CreateConsultant(apb.CreateConsultantRequest(
            email="c\x00@example.com", password=PASSWORD, display_name="C",
            role=resources_pb2.CONSULTANT_ROLE_CONSULTANT), metadata=consultant.md),
        "audit action filter NUL": lambda: consultant.admin.ListAuditLogs(
            apb.ListAuditLogsRequest(action="reader.register\x00"), metadata=consultant.md),
    }
    assert failures(cases, INVALID) == []
    assert h.database.count("messages") == messages_before
    assert h.database.count("interactions") == 0
    # Free text keeps its line breaks and tabs.
    sent = reader.reader.SendMyMessage(rpb.SendMyMessageRequest(body="line one\nline two\r\n\tend"), metadata=reader.md)
    assert sent.message.body == "line one\nline two\r\n\tend"
    assert record(reader, new_interaction(summary="über\tsumma")).interaction.summary == "über\tsumma"


# --- resume cursors --------------------------------------------------------------------------------------------------

def test_cursors_take_ascii_digits_of_a_64_bit_seq_only(h: Harness) -> None:
    reader = h.new_reader()
    opened = reader.reader.WatchMyMessages(rpb.WatchMyMessagesRequest(), metadata=reader.md, timeout=10)
    epoch = next(iter(opened)).cursor.rsplit("-", 1)[0]
    opened.cancel()

    def watch(after: str) -> Any:
        return next(iter(reader.reader.WatchMyMessages(
            rpb.WatchMyMessagesRequest(after=after), metadata=reader.md, timeout=10)))

    cases = {after[:40]: (lambda a=after: watch(a)) for after in [
        f"{epoch}-²", f"{epoch}-①", f"{epoch}-٣", f"{epoch}-" + "9" * 5000, f"{epoch}-{2**63}", f"{epoch}--1",
        f"{epoch}-+1", f"{epoch}-", "x" * 5000 + "-1",
    ]}
    assert failures(cases, INVALID, "BAD_CURSOR") == []
    assert watch(f"{epoch}-0").cursor


# --- forged page tokens ----------------------------------------------------------------------------------------------

def forge(token: str, key: list[Any]) -> str:
    """A token with the real one's fingerprint and another key."""
    data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw = json.dumps({"k": key, "f": data["f"]}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_forged_page_tokens_are_invalid_arguments(h: Harness) -> None:
    reader = h.new_reader()
    record(h.new_reader(), new_interaction())
    admin = h.admin()
    for _ in range(2):
        record(reader, new_interaction())
        reader.reader.SendMyMessage(rpb.SendMyMessageRequest(body="hello"), metadata=reader.md)
    tokens = {
        "interactions": reader.reader.ListMyInteractions(
            rpb.ListMyInteractionsRequest(page_size=1), metadata=reader.md).next_page_token,
        "messages": reader.reader.ListMyMessages(
            rpb.ListMyMessagesRequest(page_size=1), metadata=reader.md).next_page_token,
        "readers": admin.consultant.ListReaders(
            cpb.ListReadersRequest(page_size=1), metadata=admin.md).next_page_token,
        "active": admin.consultant.ListActiveReaders(
            cpb.ListActiveReadersRequest(page_size=1), metadata=admin.md).next_page_token,
        "audit": admin.admin.ListAuditLogs(apb.ListAuditLogsRequest(page_size=1), metadata=admin.md).next_page_token,
    }
    assert all(tokens.values()), tokens
    some_id = str(uuid.uuid4())
    now = "2030-01-01T00:00:00.000Z"
    calls: dict[str, Callable[[str], Any]] = {
        "interactions": lambda t: reader.reader.ListMyInteractions(
            rpb.ListMyInteractionsRequest(page_size=1, page_token=t), metadata=reader.md),
        "messages": lambda t: reader.reader.ListMyMessages(
            rpb.ListMyMessagesRequest(page_size=1, page_token=t), metadata=reader.md),
        "readers": lambda t: admin.consultant.ListReaders(
            cpb.ListReadersRequest(page_size=1, page_token=t), metadata=admin.md),
        "active": lambda t: admin.consultant.ListActiveReaders(
            cpb.ListActiveReadersRequest(page_size=1, page_token=t), metadata=admin.md),
        "audit": lambda t: admin.admin.ListAuditLogs(
            apb.ListAuditLogsRequest(page_size=1, page_token=t), metadata=admin.md),
    }
    forged_keys: dict[str, list[list[Any]]] = {
        "interactions": [[2**70], [-(2**70)], [True], [1.5], [-1]],
        "messages": [[2**63], [False]],
        "readers": [["\ud800"], ["x" * 1000], [some_id.upper() + "x"], [7]],
        "active": [[now, now, "\udfff"], ["\ud800", now, some_id], [now, 2**70, some_id], [now, now, "not-an-id"]],
        "audit": [["\ud800", some_id], [now, "x" * 1000], [2**70, some_id], [now, None]],
    }
    forged = {f"{name} {key!r}"[:60]: (calls[name], forge(tokens[name], key))
              for name, keys in forged_keys.items() for key in keys}
    cases = {label: (lambda c=list_page, t=token: c(t)) for label, (list_page, token) in forged.items()}
    assert failures(cases, INVALID) == []
    for name, call in calls.items():
        assert call(tokens[name]) is not None, f"the real {name} token still works"


# --- undecodable bodies ----------------------------------------------------------------------------------------------

def unary_methods() -> Iterator[tuple[str, Any]]:
    """(path, method descriptor) of every RPC whose request is a single message."""
    for service_name, service in sorted(service_descriptors().items()):
        for method in service.methods:
            if not method.client_streaming:
                yield f"/{service_name}/{method.name}", method


def send_raw(channel: grpc.Channel, path: str, body: bytes, server_streaming: bool, **kwargs: Any) -> Any:
    if server_streaming:
        return next(iter(channel.unary_stream(path)(body, timeout=10, **kwargs)))
    return channel.unary_unary(path)(body, timeout=10, **kwargs)


def test_undecodable_bodies_are_invalid_arguments_on_every_rpc(h: Harness) -> None:
    methods = list(unary_methods())
    assert len(methods) >= 35
    cases = {path: (lambda p=path, m=method: send_raw(h.channel, p, b"\xff", m.server_streaming))
             for path, method in methods}
    # Health is answered before authentication too.
    cases["/grpc.health.v1.Health/Check"] = lambda: send_raw(h.channel, "/grpc.health.v1.Health/Check", b"\xff", False)
    cases["/grpc.health.v1.Health/Watch"] = lambda: send_raw(h.channel, "/grpc.health.v1.Health/Watch", b"\xff", True)
    assert failures(cases, INVALID, "MALFORMED_REQUEST") == []
    error = rpc_error(lambda: send_raw(h.channel, "/cursor.v1.AuthService/Login", b"\x0a\x05ab", False))
    assert error.code() == INVALID
    assert "Unexpected" not in (error.details() or "")


def test_a_raw_bytes_upload_chunk_is_an_invalid_argument(h: Harness) -> None:
    reader = h.new_reader()
    upload = h.channel.stream_unary("/cursor.v1.ReaderService/RecordInteractions")
    error = rpc_error(lambda: upload(iter([b"\xff\xff\xff"]), metadata=reader.md, timeout=10))
    assert error.code() == INVALID
    assert error_reason(error) == "MALFORMED_REQUEST"
    assert h.database.count("interactions") == 0


def test_undecodable_bodies_log_one_line_without_a_traceback(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(300):
        with pytest.raises(grpc.RpcError):
            send_raw(h.channel, "/cursor.v1.AuthService/Login", b"\xff", False)
    about = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(about) <= 2, [r.getMessage()[:200] for r in about]
    assert all(r.exc_info is None for r in about)
    assert sum(len(r.getMessage()) for r in about) < 1000


def test_the_malformed_request_log_counts_what_it_suppressed() -> None:
    from cursor_grpc.request_guard import RateLimitedLog

    now = [100.0]
    lines: list[str] = []
    limited = RateLimitedLog(10.0, lines.append, clock=lambda: now[0])
    for _ in range(5):
        limited.emit("bad body for /x")
    now[0] += 9.9
    limited.emit("bad body for /y")
    assert lines == ["bad body for /x"]
    now[0] += 0.2
    limited.emit("bad body for /z")
    assert lines == ["bad body for /x", "bad body for /z (5 more like it since the last such line)"]


# --- errors quote a short excerpt of the input -----------------------------------------------------------------------

def test_errors_quote_a_short_excerpt_of_the_input(h: Harness) -> None:
    admin = h.admin()
    reader = h.new_reader()
    long = "é" * 5000
    calls = {
        "GetReader name": lambda: admin.consultant.GetReader(
            cpb.GetReaderRequest(name="readers/" + long), metadata=admin.md),
        "RegisterReader email": lambda: h.anonymous.auth.RegisterReader(
            aupb.RegisterReaderRequest(email="x" * 50_000, password=PASSWORD, display_name="X")),
        "interaction type": lambda: record(reader, new_interaction(type_="T" * 5000)),
        "update_mask path": lambda: reader.reader.UpdateMyProfile(rpb.UpdateMyProfileRequest(
            reader=resources_pb2.Reader(display_name="A"), update_mask=field_mask_pb2.FieldMask(paths=[long])),
            metadata=reader.md),
        "audit target": lambda: admin.admin.ListAuditLogs(
            apb.ListAuditLogsRequest(target="readers/" + long), metadata=admin.md),
        "progress percent": lambda: record(reader, new_interaction(
            '{"percent": "' + "9" * 5000 + '"}', type_="progress")),
    }
    assert failures(calls, INVALID) == []
    for name, call in calls.items():
        error = rpc_error(call)
        described = [v.description for d in error_details(error) for v in getattr(d, "field_violations", [])]
        assert len(error.details()) < 200, name
        assert all(len(d) < 200 for d in described), name


# --- request size caps -----------------------------------------------------------------------------------------------

def test_requests_over_their_rpc_cap_are_refused_naming_the_limit(h: Harness) -> None:
    cap = 64 * 1024
    register = rpc_error(lambda: h.anonymous.auth.RegisterReader(
        aupb.RegisterReaderRequest(email="a@example.com", password=PASSWORD, display_name="x" * (cap + 1))))
    assert register.code() == TOO_LARGE
    assert error_reason(register) == "REQUEST_TOO_LARGE"
    assert str(cap) in register.details()
    reader = h.new_reader()
    one = rpc_error(lambda: record(reader, new_interaction(summary="s" * (cap + 1))))
    assert (one.code(), error_reason(one)) == (TOO_LARGE, "REQUEST_TOO_LARGE")
    assert LimitSettings().max_request_bytes == cap


def test_the_largest_legitimate_chunk_is_accepted_and_a_larger_one_refused(h: Harness) -> None:
    limits = LimitSettings()
    reader = h.new_reader()
    payload = json.dumps({"p": "x" * (limits.max_payload_bytes - 9)})
    assert len(payload) == limits.max_payload_bytes
    # Every field at its cap: the longest id form uuid.UUID takes, 4-byte characters in the summary.
    biggest = rpb.RecordInteractionsRequest(interactions=[
        rpb.NewInteraction(id=f"urn:uuid:{uuid.uuid4()}", type="t" * 32, payload_json=payload,
                           summary="😀" * limits.max_summary_chars)
        for _ in range(limits.max_chunk_interactions)
    ])
    assert biggest.ByteSize() <= limits.max_message_bytes
    response = reader.reader.RecordInteractions(iter([biggest]), metadata=reader.md, timeout=60)
    assert response.stored_count == limits.max_chunk_interactions
    too_big = rpb.RecordInteractionsRequest(interactions=[
        rpb.NewInteraction(type="note", payload_json=payload + " " * 4096) for _ in range(limits.max_chunk_interactions)
    ])
    assert too_big.ByteSize() > limits.max_message_bytes
    error = rpc_error(lambda: reader.reader.RecordInteractions(iter([too_big]), metadata=reader.md, timeout=60))
    assert error.code() == TOO_LARGE
    assert str(limits.max_message_bytes) in (error.details() or "")
    assert h.database.count("interactions") == limits.max_chunk_interactions


OVERSIZED = 15 * 1024 * 1024
SERVER_CAP = LimitSettings().max_message_bytes
CONCURRENT = 20


def _flood(address: str, size: int, count: int = CONCURRENT) -> list[grpc.StatusCode]:
    """`count` concurrent unauthenticated requests of `size` bytes, each on its own connection."""
    login = aupb.LoginRequest(email="a@example.com", password="p" * size).SerializeToString()
    record_one = rpb.RecordInteractionRequest(
        interaction=rpb.NewInteraction(type="note", payload_json="x" * size)).SerializeToString()

    def one(n: int) -> grpc.StatusCode:
        with grpc.insecure_channel(address) as channel:
            path, body = (("/cursor.v1.AuthService/Login", login) if n % 2 else
                          ("/cursor.v1.ReaderService/RecordInteraction", record_one))
            try:
                channel.unary_unary(path)(body, timeout=120)
            except grpc.RpcError as error:
                return error.code()  # type: ignore[no-any-return]
            return grpc.StatusCode.OK

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_oversized_unauthenticated_requests_do_not_grow_the_server(database: TestDatabase) -> None:
    """Before the caps, each flood of 20 such requests added 250-650 MiB that
    stayed (1.0-1.5 GiB after these four). Now gRPC refuses what is over the
    server-wide cap and the guard what is over an RPC's own, and what stays
    after four floods is less than one flood can hold in flight (20 requests
    at the server-wide cap, each held three times on the way to the guard:
    gRPC's buffer, the bytes grpc.aio assembles, their copy): freed memory is
    reused, not added to. Measured: 100-230 MiB."""
    server = ServerProcess(database.url)
    try:
        # A round of small ones first, so the measured rounds start from a process that has served.
        _flood(server.address, 64 * 1024, count=4)
        before = server.rss_kib()
        codes = []
        for size in (OVERSIZED, OVERSIZED, SERVER_CAP - 1024, SERVER_CAP - 1024):
            codes += _flood(server.address, size)
        time.sleep(1)
        after = server.rss_kib()
        print(f"\nRSS before {before / 1024:.0f} MiB, after 4 x {CONCURRENT} oversized requests {after / 1024:.0f} MiB")
        in_flight_kib = 3 * CONCURRENT * SERVER_CAP // 1024
        assert after - before < in_flight_kib, f"RSS grew by {(after - before) / 1024:.0f} MiB"
        assert set(codes) == {TOO_LARGE}, codes
        assert "Traceback" not in server.stderr
    finally:
        server.terminate()
