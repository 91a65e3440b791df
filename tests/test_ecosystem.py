"""What tools and clients in other languages rely on (issue 14, docs/clients.md):
the payload as an object beside payload_json, reflection v1 and v1alpha with
the protos' comments (through the grpcurl `make setup` installs, too), and
the buf checks `make test` runs, in scratch git repositories."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, struct_pb2
from grpc_reflection.v1alpha import reflection_pb2 as reflection

from cursor.v1 import reader_service_pb2 as rpb
from tests.conftest import Harness
from tests.helpers import error_details, rpc_error
from tests.test_cli import GRPCURL
from tests.test_input_hardening import INVALID, failures, record

ROOT = Path(__file__).resolve().parents[1]
READER_SERVICE_PROTO = ROOT / "protos" / "cursor" / "v1" / "reader_service.proto"


def with_payload(payload: dict[str, Any] | struct_pb2.Struct, type_: str = "progress",
                 payload_json: str = "") -> rpb.NewInteraction:
    interaction = rpb.NewInteraction(type=type_, payload_json=payload_json)
    if isinstance(payload, struct_pb2.Struct):
        interaction.payload.CopyFrom(payload)
    else:
        interaction.payload.update(payload)
    return interaction


def bad_request_field(error: grpc.RpcError) -> str:
    return next(str(d.field_violations[0].field) for d in error_details(error) if hasattr(d, "field_violations"))


# --- the payload as an object --------------------------------------------------------------------------------------


def test_a_payload_object_is_stored_as_the_same_canonical_text_as_payload_json(h: Harness) -> None:
    reader = h.new_reader()
    payload = {"step": 3, "percent": 0.5, "note": "é\n", "big": 1e20, "nested": {"b": [1, 2.5, None, True], "a": {}}}
    canonical = ('{"big":1e+20,"nested":{"a":{},"b":[1,2.5,null,true]},"note":"é\\n","percent":0.5,"step":3}')
    as_object = record(reader, with_payload(payload))
    as_text = record(reader, rpb.NewInteraction(type="progress", payload_json=json.dumps(payload, indent=2)))
    assert as_object.interaction.payload_json == as_text.interaction.payload_json == canonical
    # Struct numbers are doubles: the whole one stayed an integer, so the step moved the state.
    assert as_object.state.current_step == 3
    assert as_object.state.progress == 0.5
    listed = reader.reader.ListMyInteractions(rpb.ListMyInteractionsRequest(), metadata=reader.md).interactions
    assert [i.payload_json for i in listed] == [canonical, canonical]


def test_both_payload_forms_at_once_are_refused_naming_both_fields(h: Harness) -> None:
    reader = h.new_reader()
    both = with_payload({"percent": 0.5}, payload_json='{"percent": 0.5}')
    error = rpc_error(lambda: record(reader, both))
    assert error.code() == INVALID
    assert "interaction.payload and interaction.payload_json are both set" in (error.details() or "")
    assert bad_request_field(error) == "interaction.payload"
    chunk = rpb.RecordInteractionsRequest(interactions=[with_payload({"n": 1}, "note"), both])
    response = reader.reader.RecordInteractions(iter([chunk]), metadata=reader.md)
    assert response.stored_count == 1
    assert [(r.index, r.reason) for r in response.rejected] == [(1, "INVALID_ARGUMENT")]
    assert "interactions[1].payload_json" in response.rejected[0].message
    assert h.database.count("interactions") == 1


def test_a_payload_object_gets_the_checks_payload_json_gets(h: Harness) -> None:
    reader = h.new_reader()

    def number(value: float) -> struct_pb2.Struct:
        struct = struct_pb2.Struct()
        struct.fields["n"].number_value = value
        return struct

    no_kind = struct_pb2.Struct()
    no_kind.fields["n"].SetInParent()
    invalid = {
        "NaN": number(math.nan), "Infinity": number(math.inf), "-Infinity in a list": struct_pb2.Struct(),
        "a value with no kind": no_kind,
    }
    invalid["-Infinity in a list"].get_or_create_list("l").values.add().number_value = -math.inf
    cases = {name: (lambda p=payload: record(reader, with_payload(p, "note"))) for name, payload in invalid.items()}
    assert failures(cases, INVALID, "INVALID_PAYLOAD") == []
    progress = {"percent 2": {"percent": 2}, "step 3.5": {"step": 3.5}, "step -1": {"step": -1},
                "step 2**53": {"step": 2.0**53}}
    cases = {name: (lambda p=payload: record(reader, with_payload(p))) for name, payload in progress.items()}
    assert failures(cases, INVALID, "INVALID_PROGRESS") == []
    too_large = rpc_error(lambda: record(reader, with_payload({"x": "y" * 17000}, "note")))
    assert (too_large.code(), bad_request_field(too_large)) == (INVALID, "interaction.payload")
    assert "larger than 16384 bytes" in (too_large.details() or "")
    assert h.database.count("interactions") == 0


# --- reflection --------------------------------------------------------------------------------------------------

REFLECTION_SERVICES = ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection")


@pytest.fixture(params=REFLECTION_SERVICES)
def ask(request: pytest.FixtureRequest, h: Harness) -> Any:
    """One reflection request to the server, through one version of the service."""
    call = h.channel.stream_stream(
        f"/{request.param}/ServerReflectionInfo",
        request_serializer=reflection.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection.ServerReflectionResponse.FromString,
    )

    def one(**fields: Any) -> reflection.ServerReflectionResponse:
        return next(iter(call(iter([reflection.ServerReflectionRequest(**fields)]), timeout=10)))

    return one


def files_of(response: reflection.ServerReflectionResponse) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    protos = (descriptor_pb2.FileDescriptorProto.FromString(b)
              for b in response.file_descriptor_response.file_descriptor_proto)
    return {proto.name: proto for proto in protos}


def comment_above(proto: Path, line_start: str) -> list[str]:
    """The lines of the `//` comment right above the line starting with `line_start`, as written."""
    lines = [line.strip() for line in proto.read_text().splitlines()]
    at = next(n for n, line in enumerate(lines) if line.startswith(line_start))
    start = at
    while lines[start - 1].startswith("//"):
        start -= 1
    return lines[start:at]


RECORD_INTERACTION_COMMENT = comment_above(READER_SERVICE_PROTO, "rpc RecordInteraction(")


def test_reflection_lists_both_versions_and_the_api(ask: Any) -> None:
    listed = [s.name for s in ask(list_services="").list_services_response.service]
    for service in (*REFLECTION_SERVICES, "grpc.health.v1.Health", "cursor.v1.ReaderService", "cursor.v1.AuthService",
                    "cursor.v1.ConsultantService", "cursor.v1.AdminService"):
        assert service in listed


def test_reflection_serves_the_protos_comments(ask: Any) -> None:
    expected = [line.removeprefix("//").strip() for line in RECORD_INTERACTION_COMMENT]
    assert expected[0].startswith("Stores one interaction")
    for symbol in ("cursor.v1.ReaderService", "cursor.v1.ReaderService.RecordInteraction"):
        file = files_of(ask(file_containing_symbol=symbol))["cursor/v1/reader_service.proto"]
        comments = [location.leading_comments for location in file.source_code_info.location]
        assert any([line.strip() for line in comment.splitlines()] == expected for comment in comments)
    # The imports come along, so a client resolves every type.
    assert {"cursor/v1/resources.proto", "google/protobuf/struct.proto"} <= set(
        files_of(ask(file_containing_symbol="cursor.v1.NewInteraction")))


def test_reflection_describes_v1_itself_and_the_error_details(ask: Any) -> None:
    v1 = files_of(ask(file_containing_symbol="grpc.reflection.v1.ServerReflection"))
    file = v1["grpc/reflection/v1/reflection.proto"]
    assert file.package == "grpc.reflection.v1"
    method = file.service[0].method[0]
    assert (method.input_type, method.output_type) == (
        ".grpc.reflection.v1.ServerReflectionRequest", ".grpc.reflection.v1.ServerReflectionResponse")
    assert "google/rpc/error_details.proto" in files_of(ask(file_containing_symbol="google.rpc.ErrorInfo"))


def test_reflection_answers_an_unknown_symbol_with_not_found(ask: Any) -> None:
    for symbol in ("cursor.v1.Nothing", "cursor.v1.ReaderService.Nothing"):
        response = ask(file_containing_symbol=symbol)
        assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
        assert response.original_request.file_containing_symbol == symbol


def grpcurl(h: Harness, *args: str, data: str | None = None) -> subprocess.CompletedProcess[str]:
    flags = ["-d", data] if data is not None else []
    return subprocess.run([str(GRPCURL), "-plaintext", "-max-time", "10", *flags, h.server.address, *args],
                          capture_output=True, text=True, timeout=30, check=False)


def test_grpcurl_describe_shows_the_comment_and_errors_show_their_details(h: Harness) -> None:
    described = grpcurl(h, "describe", "cursor.v1.ReaderService.RecordInteraction")
    assert described.returncode == 0, described.stderr
    assert "\n".join(RECORD_INTERACTION_COMMENT) in described.stdout
    refused = grpcurl(h, "cursor.v1.AuthService/Login", data='{"email": "nobody@example.com", "password": "not it"}')
    assert refused.returncode != 0
    assert '{"@type":"type.googleapis.com/google.rpc.ErrorInfo","domain":"cursor.v1","reason":"BAD_CREDENTIALS"}' \
        in refused.stderr.replace(" ", "")


# --- buf, as `make test` runs it ------------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false",
                    *args], cwd=repo, check=True, capture_output=True, env=_git_env())


def _git_env() -> dict[str, str]:
    """No setting of the machine's git (hooks, signing, templates) reaches the scratch repositories."""
    return {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A scratch repository holding this one's protos and buf.yaml in one commit."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "protos", repo / "protos")
    shutil.copy(ROOT / "buf.yaml", repo)
    git(repo, "init", "--quiet")
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "--message", "protos")
    return repo


def buf_check(repo: Path) -> subprocess.CompletedProcess[str]:
    env = {**_git_env(), "BUF_CACHE_DIR": str(repo.parent / "buf-cache")}
    return subprocess.run([sys.executable, str(ROOT / "tools" / "buf_check.py"), "--root", str(repo)],
                          capture_output=True, text=True, timeout=120, check=False, env=env)


def test_buf_check_passes_without_a_previous_commit_and_says_it_skipped(checkout: Path) -> None:
    done = buf_check(checkout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "buf lint: passed" in done.stdout
    assert "buf breaking: skipped, this checkout has no HEAD~1" in done.stdout


def test_buf_check_fails_on_a_breaking_change_since_the_previous_commit(checkout: Path) -> None:
    proto = checkout / READER_SERVICE_PROTO.relative_to(ROOT)
    text = proto.read_text()
    assert text.count("  string summary = 4;\n") == 1
    proto.write_text(text.replace("  string summary = 4;\n", "  reserved 4;\n"))
    git(checkout, "commit", "--quiet", "--all", "--message", "drop a field")
    done = buf_check(checkout)
    assert done.returncode == 1
    assert 'field "4" with name "summary" on message "NewInteraction" was deleted' in done.stdout
    assert "buf breaking: breaking changes since HEAD~1" in done.stdout


def test_buf_check_fails_on_a_lint_finding(checkout: Path) -> None:
    proto = checkout / READER_SERVICE_PROTO.relative_to(ROOT)
    proto.write_text(proto.read_text() + "\nmessage undocumented_message {}\n")
    done = buf_check(checkout)
    assert done.returncode == 1
    assert "buf lint: failed" in done.stdout
    assert "undocumented_message" in done.stdout + done.stderr
