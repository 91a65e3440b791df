"""Property test over every RPC of the four cursor.v1 services.

Requests are generated from the protobuf descriptors (random field values,
odd strings, numbers at and past their limits, JSON edge cases in `*_json`
fields, real and forged names, cursors and page tokens), plus raw bytes as
bodies, and sent through real gRPC channels to one real server as anonymous,
as a reader and as an admin. Whatever comes in: no INTERNAL, UNKNOWN or
DATA_LOSS, an answer before the deadline, nothing written by a call that
was refused, and a healthy server at the end.

`CURSOR_FUZZ_EXAMPLES` sets the number of inputs (default 3000, well under a
minute); `pytest -s` prints what they got.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from cursor.v1 import admin_service_pb2, auth_service_pb2, consultant_service_pb2, reader_service_pb2, resources_pb2
from cursor_grpc.config import AuthSettings
from tests import conftest
from tests.conftest import ADMIN_EMAIL, PASSWORD, Client, ServerThread, bearer, migrate_with_admin
from tests.databases import Backend, TestDatabase
from tests.test_access import service_descriptors

EXAMPLES = int(os.environ.get("CURSOR_FUZZ_EXAMPLES", "3000"))
# Generous: a hang is a call with no answer at all, not a slow one.
DEADLINE_SECONDS = 30.0
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
# Tables a refused call must leave as they were. Presence events are
# written by a background sweep, so events count without them.
COUNTED = {
    "users": "SELECT count(*) FROM users",
    "consultants": "SELECT count(*) FROM consultants",
    "sessions": "SELECT count(*) FROM sessions",
    "interactions": "SELECT count(*) FROM interactions",
    "messages": "SELECT count(*) FROM messages",
    "message_reads": "SELECT count(*) FROM message_reads",
    "consents": "SELECT count(*) FROM consents",
    "audit_logs": "SELECT count(*) FROM audit_logs",
    "events": "SELECT count(*) FROM events WHERE kind != 'presence'",
}
COUNT_ALL = "SELECT " + ", ".join(f"({sql})" for sql in COUNTED.values())


# --- the server and who calls it -----------------------------------------------------------------------------------

@dataclass
class Identity:
    name: str
    token: str = ""
    account: str = ""
    email: str = ""
    kind: int = 0

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return bearer(self.token) if self.token else ()


@dataclass
class Target:
    """The server under fuzz, its callers, and values worth sending."""

    server: ServerThread
    database: TestDatabase
    channel: grpc.Channel
    identities: dict[str, Identity]
    names: list[str]
    cursors: list[str]
    tokens: list[str]
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    by_method: collections.Counter[str] = field(default_factory=collections.Counter)
    raw_inputs: int = 0
    log_errors: list[str] = field(default_factory=list)

    def table_counts(self) -> tuple[int, ...]:
        return tuple(self.database.rows(COUNT_ALL)[0])

    def login(self, identity: Identity) -> None:
        """Sign in again (after a fuzzed Logout, RotateSession or deactivation)."""
        table = "consultants" if identity.account.startswith("consultants/") else "users"
        [(email,)] = self.database.rows(f"SELECT email FROM {table} WHERE id = ?", (identity.account.split("/")[1],))
        session = Client(self.channel).login(str(email), PASSWORD, identity.kind)
        identity.token, identity.email = session.token, str(email)


class ErrorLog(logging.Handler):
    """Collects what the server logs at ERROR (internal errors, tracebacks)."""

    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(f"{record.name}: {record.getMessage()[:300]}")


def _forged_tokens(real: list[str]) -> Iterator[str]:
    """Real fingerprints with keys no server issued."""
    for token in real:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        for key in ([2**70], [-1], [True], ["\ud800"], ["x" * 300], [None], [], [1, 2, 3, 4], {"a": 1},
                    ["2030-01-01T00:00:00.000Z", "\udfff", str(uuid.uuid4())]):
            raw = json.dumps({"k": key, "f": data["f"]}).encode()
            yield base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.fixture(scope="module")
def target(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    database = backend.fresh_database(tmp_path_factory.mktemp("fuzz"), "fuzz")
    with pytest.MonkeyPatch.context() as patch:
        migrate_with_admin(database, patch)
    # Cheap hashing, so valid registrations and logins do not dominate the run;
    # failed logins of the callers' own emails must not lock them out.
    auth = {"argon2_memory_kib": 1024, "argon2_time_cost": 1, "free_login_failures": 10**9}
    assert set(auth) <= {f.name for f in dataclasses.fields(AuthSettings)}
    server = ServerThread(conftest.test_settings(database, **auth))
    channel = grpc.insecure_channel(server.address)
    client = Client(channel)
    errors: list[str] = []
    handler = ErrorLog(errors)
    logging.getLogger().addHandler(handler)
    try:
        email = f"fuzz-{uuid.uuid4().hex[:8]}@example.com"
        client.auth.RegisterReader(auth_service_pb2.RegisterReaderRequest(email=email, password=PASSWORD,
                                                                          display_name="Fuzz"))
        reader = client.login(email, kind=resources_pb2.ACCOUNT_KIND_READER)
        client.auth.RegisterReader(auth_service_pb2.RegisterReaderRequest(
            email="granter-" + email, password=PASSWORD, display_name="Granter"))
        granter = client.login("granter-" + email, kind=resources_pb2.ACCOUNT_KIND_READER)
        admin = client.login(ADMIN_EMAIL, kind=resources_pb2.ACCOUNT_KIND_CONSULTANT)
        granter.reader.GrantConsent(reader_service_pb2.GrantConsentRequest(
            grantee=reader.account, scope=resources_pb2.CONSENT_SCOPE_STATE_AND_INTERACTIONS), metadata=granter.md)
        for who in (reader, granter, reader):
            who.reader.RecordInteraction(reader_service_pb2.RecordInteractionRequest(
                interaction=reader_service_pb2.NewInteraction(type="progress", payload_json='{"percent":0.5}')),
                metadata=who.md)
            who.reader.SendMyMessage(reader_service_pb2.SendMyMessageRequest(body="hello"), metadata=who.md)
        opened = reader.reader.WatchMyMessages(reader_service_pb2.WatchMyMessagesRequest(), metadata=reader.md,
                                               timeout=10)
        cursor = next(iter(opened)).cursor
        opened.cancel()
        epoch, _, seq = cursor.rpartition("-")
        real_tokens = [
            reader.reader.ListMyInteractions(reader_service_pb2.ListMyInteractionsRequest(page_size=1),
                                             metadata=reader.md).next_page_token,
            admin.consultant.ListReaders(consultant_service_pb2.ListReadersRequest(page_size=1),
                                         metadata=admin.md).next_page_token,
            admin.consultant.ListActiveReaders(consultant_service_pb2.ListActiveReadersRequest(page_size=1),
                                               metadata=admin.md).next_page_token,
        ]
        assert all(real_tokens)
        identities = {
            "anonymous": Identity("anonymous"),
            "reader": Identity("reader", reader.token, reader.account, email, resources_pb2.ACCOUNT_KIND_READER),
            "admin": Identity("admin", admin.token, admin.account, ADMIN_EMAIL,
                              resources_pb2.ACCOUNT_KIND_CONSULTANT),
        }
        some_id = str(uuid.uuid4())
        names = [reader.account, granter.account, admin.account, f"readers/{some_id}", f"consultants/{some_id}",
                 "readers/-", "readers/", "readers/" + some_id.upper(), "readers/{" + some_id + "}",
                 "readers/urn:uuid:" + some_id, "readers/" + some_id.replace("-", "_"), "system", "readers/²" * 20]
        cursors = [cursor, f"{epoch}-0", f"{epoch}-{int(seq) + 1000}", f"{epoch}-²", f"{epoch}-①",
                   f"{epoch}-" + "9" * 5000, f"{epoch}-{2**63}", f"{epoch}--1", f"0123456789abcdef-{seq}", "-", "x-1"]
        tokens = real_tokens + list(_forged_tokens(real_tokens))
        yield Target(server, database, channel, identities, names, cursors, tokens, log_errors=errors)
    finally:
        logging.getLogger().removeHandler(handler)
        channel.close()
        server.stop()


# --- requests from the descriptors --------------------------------------------------------------------------------

def _methods() -> list[tuple[str, Any]]:
    return [(f"/{name}/{method.name}", method) for name, service in sorted(service_descriptors().items())
            for method in service.methods]


METHODS = _methods()

TEXT = st.characters(exclude_categories=("Cs",))  # proto strings are UTF-8: surrogates cannot travel
ODD_STRINGS = ["", " ", "\x00", "\u0000hello", "a\x00b", "\x1b[2J", "\t\n\r", "\x7f", "\x85", "\u202e", "\ufeff",
               "é", "😀", "²", "①", "٣", "-", "/", "*", "readers/-", "null", "{}", "[]"]
JSON_EDGES = [
    "", "{}", "[]", "null", "1", '"x"', "{", '{"a":', '{"a": NaN}', '{"a": Infinity}', '{"a": -Infinity}',
    '{"a": 1e999}', '{"a": -1e400}', '{"a": 1, "a": 2}', '{"a": "\\ud800"}', '{"\\udc00": 1}',
    '{"a": "\\ud83d\\ude00"}', '{"a": "\\u0000"}', '{"a": 1' + "0" * 5000 + "}", "[" * 5000 + "]" * 5000,
    '{"a":' * 3000 + "1" + "}" * 3000, '{"percent": 1.5}', '{"percent": -0.0, "step": -1}', '{"step": 1e20}',
    '{"percent": true}', '{"percent": "0.5"}', '{"step": 9007199254740993}', '{} x', ' {"a": 1} ', "\ufeff{}",
    '{"a": "' + "x" * 20000 + '"}',
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(TEXT, max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(TEXT, max_size=5), children, max_size=3),
    max_leaves=12,
)
json_texts = st.one_of(
    st.dictionaries(st.text(TEXT, max_size=6), json_values, max_size=4).map(json.dumps),
    json_values.map(json.dumps),
    st.sampled_from(JSON_EDGES),
    st.fixed_dictionaries({}, optional={
        "percent": st.floats(allow_nan=False, allow_infinity=False) | st.integers() | st.sampled_from([0, 1, 0.5]),
        "step": st.integers() | st.floats(allow_nan=False, allow_infinity=False),
    }).map(json.dumps),
)
long_strings = st.integers(min_value=300, max_value=100_000).flatmap(
    lambda n: st.sampled_from(["x", "é", "😀", "\x00"]).map(lambda c, n=n: c * n))
any_text = st.one_of(st.text(TEXT, max_size=40), st.sampled_from(ODD_STRINGS), long_strings)


def string_strategy(target: Target, field_name: str) -> st.SearchStrategy[str]:
    """Values for a string field, by what its name says it holds."""
    if field_name.endswith("_json"):
        return json_texts | any_text
    if field_name in {"name", "parent", "reader", "readers", "grantee", "account", "actor", "target"}:
        return st.sampled_from(target.names) | st.text(TEXT, max_size=12).map(lambda s: "readers/" + s) | any_text
    if field_name == "page_token":
        return st.sampled_from(target.tokens) | any_text
    if field_name == "after":
        return st.sampled_from(target.cursors) | any_text
    if field_name == "email":
        return (st.text(TEXT, min_size=1, max_size=12).map(lambda s: f"{s}@example.com")
                | st.sampled_from([i.email for i in target.identities.values() if i.email]) | any_text)
    if field_name in {"type", "interaction_types"}:
        return st.sampled_from(["progress", "heartbeat", "answer", "open_page", "a" * 33, "Progress"]) | any_text
    if field_name == "paths":
        return st.sampled_from(["display_name", "email", "metadata_json", "*", "name", ""]) | any_text
    if field_name == "id":
        return st.uuids().map(str) | any_text
    if "password" in field_name:
        # Never the callers' real password: a fuzzed ChangePassword must not succeed.
        return st.text(TEXT, min_size=10, max_size=40) | any_text
    return any_text


INT_RANGES = {
    pb_descriptor.FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    pb_descriptor.FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    pb_descriptor.FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    pb_descriptor.FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}


def value_strategy(target: Target, fd: Any, depth: int) -> st.SearchStrategy[Any]:
    cpp = fd.cpp_type
    if cpp == fd.CPPTYPE_STRING:
        return st.binary(max_size=64) if fd.type == fd.TYPE_BYTES else string_strategy(target, fd.name)
    if cpp in INT_RANGES:
        low, high = INT_RANGES[cpp]
        edges = [low, high, 0, 1, -1, 50, 1000, 1001, 604800, 604801] if low < 0 else [0, 1, high]
        return st.integers(low, high) | st.sampled_from([e for e in edges if low <= e <= high])
    if cpp == fd.CPPTYPE_ENUM:
        return st.sampled_from([v.number for v in fd.enum_type.values]) | st.integers(-(2**31), 2**31 - 1)
    if cpp == fd.CPPTYPE_BOOL:
        return st.booleans()
    if cpp in (fd.CPPTYPE_DOUBLE, fd.CPPTYPE_FLOAT):
        return st.floats(width=32 if cpp == fd.CPPTYPE_FLOAT else 64)
    return message_strategy(target, fd.message_type, depth + 1)


def message_strategy(target: Target, descriptor: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Messages of `descriptor`'s type with any subset of fields set."""
    cls = message_factory.GetMessageClass(descriptor)
    if depth > 3:
        return st.just(cls())
    optional = {}
    for fd in descriptor.fields:
        values = value_strategy(target, fd, depth)
        optional[fd.name] = st.lists(values, max_size=4) if fd.is_repeated else values

    def build(chosen: dict[str, Any]) -> Any:
        message = cls()
        for name, value in chosen.items():
            fd = descriptor.fields_by_name[name]
            if fd.is_repeated and fd.cpp_type == fd.CPPTYPE_MESSAGE and fd.message_type.GetOptions().map_entry:
                # A map (Struct.fields): its generated entries set keys, messages copied in.
                entries = getattr(message, name)
                for entry in value:
                    if entry.DESCRIPTOR.fields_by_name["value"].cpp_type == fd.CPPTYPE_MESSAGE:
                        entries[entry.key].CopyFrom(entry.value)
                    else:
                        entries[entry.key] = entry.value
            elif fd.is_repeated and fd.cpp_type == fd.CPPTYPE_MESSAGE:
                for item in value:
                    getattr(message, name).add().CopyFrom(item)
            elif fd.is_repeated:
                getattr(message, name).extend(value)
            elif fd.cpp_type == fd.CPPTYPE_MESSAGE:
                getattr(message, name).CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries({}, optional=optional).map(build)


def bodies(target: Target, method: Any) -> st.SearchStrategy[tuple[bool, bytes]]:
    """(raw, body): a serialized generated message, or bytes that may not be one."""
    serialized = message_strategy(target, method.input_type).map(lambda m: m.SerializeToString())
    mangled = st.tuples(serialized, st.integers(0, 64), st.binary(min_size=1, max_size=4)).map(
        lambda t: t[0][:t[1]] + t[2] + t[0][t[1]:])
    raw = st.binary(max_size=64) | mangled | st.sampled_from([b"\xff", b"\x0a\x05ab", b"\x08"])
    # About one body in six is raw.
    return st.sampled_from([False] * 5 + [True]).flatmap(
        lambda is_raw: st.tuples(st.just(is_raw), raw if is_raw else serialized))


# --- one call ----------------------------------------------------------------------------------------------------

def call(target: Target, path: str, method: Any, identity: Identity, chunks: list[bytes]) -> tuple[str, bytes]:
    """(status name, response bytes) of one call, whatever its shape."""
    options: dict[str, Any] = {"metadata": identity.metadata, "timeout": DEADLINE_SECONDS}
    channel = target.channel
    try:
        if method.client_streaming:
            return "OK", channel.stream_unary(path)(iter(chunks), **options)
        if method.server_streaming:
            stream = channel.unary_stream(path)(chunks[0], **options)
            try:
                # A stream that opens answers at once with its cursor; then leave.
                first = next(stream, b"")
            finally:
                stream.cancel()
            return "OK", first
        return "OK", channel.unary_unary(path)(chunks[0], **options)
    except grpc.RpcError as error:
        return error.code().name, b""


RESTORES_CALLERS = {"Logout", "RotateSession", "ChangePassword", "SetAccountActive", "UpdateReader"}


def usable(client: Client, who: Identity) -> bool:
    try:
        if who.kind == resources_pb2.ACCOUNT_KIND_CONSULTANT:
            client.consultant.ListUnreadCounts(consultant_service_pb2.ListUnreadCountsRequest(),
                                               metadata=who.metadata, timeout=DEADLINE_SECONDS)
        else:
            client.reader.GetMyState(reader_service_pb2.GetMyStateRequest(), metadata=who.metadata,
                                     timeout=DEADLINE_SECONDS)
    except grpc.RpcError as error:
        if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return False
        raise
    return True


def restore_callers(target: Target) -> None:
    """After a fuzzed call that may have ended a caller's session, deactivated
    or renamed it: make every caller usable again (outside the counted calls)."""
    client = Client(target.channel)
    admin, reader = target.identities["admin"], target.identities["reader"]
    if not usable(client, admin):
        target.login(admin)
    if not usable(client, reader):
        client.admin.SetAccountActive(admin_service_pb2.SetAccountActiveRequest(account=reader.account, active=True),
                                      metadata=admin.metadata, timeout=DEADLINE_SECONDS)
        target.login(reader)


# --- the property ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Input:
    path: str
    identity: str
    raw: bool
    chunks: tuple[bytes, ...]

    def describe(self) -> str:
        shown = [c[:200] for c in self.chunks[:3]]
        return f"{self.path} as {self.identity}, {'raw ' if self.raw else ''}body {shown!r}"


SERVICE_CALLER = {"AuthService": "anonymous", "ReaderService": "reader", "ConsultantService": "admin",
                  "AdminService": "admin"}


def inputs(target: Target) -> st.SearchStrategy[Input]:
    @st.composite
    def draw_input(draw: st.DrawFn) -> Input:
        path, method = draw(st.sampled_from(METHODS))
        # Half the calls come from the caller the service is for, so they get past authorization.
        entitled = SERVICE_CALLER[method.containing_service.name]
        identity = draw(st.sampled_from([*sorted(target.identities), *[entitled] * 3]))
        if method.client_streaming:
            drawn = draw(st.lists(bodies(target, method), min_size=1, max_size=3))
            return Input(path, identity, any(raw for raw, _ in drawn), tuple(body for _, body in drawn))
        raw, body = draw(bodies(target, method))
        return Input(path, identity, raw, (body,))

    return draw_input()


def check(target: Target, given_input: Input) -> None:
    path, method = next(m for m in METHODS if m[0] == given_input.path)
    identity = target.identities[given_input.identity]
    before = target.table_counts()
    status, _ = call(target, path, method, identity, list(given_input.chunks))
    target.counts[status] += 1
    target.by_method[path] += 1
    target.raw_inputs += given_input.raw
    assert status not in {code.name for code in FORBIDDEN}, f"{status} for {given_input.describe()}"
    assert status != "DEADLINE_EXCEEDED", f"no answer within {DEADLINE_SECONDS} s: {given_input.describe()}"
    assert status != "UNAVAILABLE", f"the server went away after {given_input.describe()}"
    if status != "OK":
        after = target.table_counts()
        # Earlier chunks of an upload are stored even when a later one is refused.
        uploaded = method.client_streaming and len(given_input.chunks) > 1
        changed = [name for name, b, a in zip(COUNTED, before, after, strict=True)
                   if b != a and not (uploaded and name in {"interactions", "events"})]
        assert not changed, f"{status} yet {changed} changed: {given_input.describe()}"
    elif identity.token and path.rsplit("/", 1)[1] in RESTORES_CALLERS:
        restore_callers(target)


def test_every_rpc_survives_generated_and_malformed_requests(target: Target) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(inputs(target))
    def every_input(given_input: Input) -> None:
        check(target, given_input)

    every_input()
    total = sum(target.counts.values())
    print(f"\nfuzz: {total} inputs ({target.raw_inputs} with raw bodies) over {len(target.by_method)} RPCs; "
          f"statuses: {dict(target.counts.most_common())}")
    assert target.log_errors == [], target.log_errors[:5]
    health = health_pb2_grpc.HealthStub(target.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    reader = target.identities["reader"]
    Client(target.channel).reader.GetMyState(reader_service_pb2.GetMyStateRequest(), metadata=reader.metadata,
                                             timeout=10)
    assert total >= EXAMPLES
    # The inputs reached past the front door as well as being turned away at it.
    for status in ("OK", "INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED"):
        assert target.counts[status] > 0, status
    if EXAMPLES >= 1000:
        assert len(target.by_method) == len(METHODS), sorted(set(m for m, _ in METHODS) - set(target.by_method))
