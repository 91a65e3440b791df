"""The README's grpcurl session, run as pasted: the ```sh block under "Try it
with grpcurl", in bash, against a real server on a free port and a temporary
database. The session reaches them the way a user's shell would, through the
CURSOR_LISTEN and CURSOR_DB the README has `make serve` take, from a folder
whose `.venv` is the environment running the tests."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.procs import ServerProcess
from tests.test_cli import BIN, SERVICES, clean_env, cli_command

ROOT = Path(__file__).resolve().parents[1]


def readme_session() -> str:
    section = (ROOT / "README.md").read_text().split("\n## Try it with grpcurl\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"^```sh\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)
    assert found, 'README.md has no ```sh block under "Try it with grpcurl"'
    return found.group(1)


def json_documents(text: str) -> list[object]:
    """The JSON objects grpcurl printed, in order, skipping the lines that are not JSON."""
    decoder = json.JSONDecoder()
    found, at = [], 0
    while (start := text.find("{", at)) != -1:
        try:
            document, at = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            at = start + 1
            continue
        found.append(document)
    return found


@pytest.mark.parametrize("deployment", ["sqlite", "postgresql+nats"])
def test_the_readme_grpcurl_session_works_as_pasted(tmp_path: Path, deployment: str,
                                                    request: pytest.FixtureRequest) -> None:
    """On the embedded default, and unchanged on PostgreSQL with NATS, as
    docs/scaling.md runs it (`CURSOR_DB=postgresql://… CURSOR_BROKER=nats://…`)."""
    session = readme_session()
    assert '"payload":{"percent":0.5,"step":3}' in session, "the README shows the natural payload form"
    db: Path | str = tmp_path / "cursor.db"
    served_env: dict[str, str] = {}
    if deployment != "sqlite":
        db = request.getfixturevalue("postgres_database_url")
        served_env = {"CURSOR_BROKER": request.getfixturevalue("nats_url")}
    server = ServerProcess(db, command=cli_command(), cwd=tmp_path, base_env=clean_env(), env=served_env)
    try:
        user = tmp_path / "checkout"
        user.mkdir()
        (user / ".venv").symlink_to(BIN.parent, target_is_directory=True)
        # -e: the first step that fails (pipes and command substitutions too, with pipefail) stops it there;
        # -x: stderr shows which step that was.
        done = subprocess.run(
            ["bash", "-euxo", "pipefail", "-c", session], cwd=user, capture_output=True, text=True, timeout=120,
            env=clean_env(CURSOR_LISTEN=server.address, CURSOR_DB=str(db)), check=False,
        )
    finally:
        server.kill()
    assert done.returncode == 0, f"a step failed:\n{done.stderr}"
    out = done.stdout
    listed = out.split()
    for service in (*SERVICES, "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"):
        assert service in listed
    assert "// Stores one interaction" in out, "describe shows the RPC's comment"
    documents = json_documents(out)
    health, registered, recorded, *_, active, listed_attention, acknowledged = documents
    assert health == {"status": "SERVING"}
    assert registered["reader"]["displayName"] == "Ann"
    assert recorded["interaction"]["payloadJson"] == '{"percent":0.5,"step":3}'
    assert (recorded["state"]["progress"], recorded["state"]["currentStep"]) == (0.5, "3")
    assert [r["name"] for r in active["readers"]] == [registered["reader"]["name"]]
    [struggling] = listed_attention["signals"]
    assert struggling["rule"] == "ATTENTION_RULE_STRUGGLING"
    assert struggling["summary"] == "3 wrong answers in a row (last: q3)"
    assert len(struggling["evidenceCursors"]) == 3
    assert acknowledged["signal"]["name"] == struggling["name"]
    assert acknowledged["signal"]["acknowledgedBy"].startswith("consultants/")
    # create-admin wrote to the server's database (CURSOR_DB), not to a var/cursor.db of its own.
    assert not (user / "var").exists()
