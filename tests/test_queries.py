"""The SQL in docs/queries.md, run against a database the real server wrote
through its RPCs, and checked against what the API says."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import apsw
import grpc
import pytest

from cursor.v1 import admin_service_pb2 as apb
from cursor.v1 import auth_service_pb2 as pb
from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2
from tests.conftest import PASSWORD, Client, Harness
from tests.helpers import rpc_error

pytestmark = pytest.mark.sqlite_only  # docs/queries.md is SQL for the SQLite file

DOC = Path(__file__).resolve().parents[1] / "docs" / "queries.md"
NAMES = {"active_readers", "recent_interactions", "reader_interactions", "promote_reader"}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def doc_queries() -> dict[str, str]:
    """Every ```sql block of the doc, by the name in its first line (`-- query: NAME`)."""
    blocks = re.findall(r"^```sql\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.S | re.M)
    found: dict[str, str] = {}
    for block in blocks:
        label = re.match(r"-- query: (\w+)\n", block)
        assert label, f"a sql block in {DOC.name} does not start with '-- query: NAME':\n{block}"
        assert label.group(1) not in found, f"two blocks are named {label.group(1)}"
        found[label.group(1)] = block
    return found


QUERIES = doc_queries()


def read(h: Harness, name: str, params: dict[str, Any] | None = None) -> list[Any]:
    conn = apsw.Connection(str(h.db_path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute(QUERIES[name], params or {}).fetchall()
    finally:
        conn.close()


def write(h: Harness, sql: str, params: dict[str, Any] | tuple[Any, ...] = ()) -> None:
    """Through a connection of our own, as a person at the sqlite3 shell would,
    with foreign keys enforced as the server enforces them."""
    conn = apsw.Connection(str(h.db_path))
    conn.set_busy_timeout(5000)
    try:
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(sql, params)
        assert conn.getautocommit(), "the statement left a transaction open"
    finally:
        conn.close()


def record(client: Client, type_: str = "heartbeat", payload: dict[str, Any] | None = None) -> Any:
    interaction = rpb.NewInteraction(type=type_, payload_json=json.dumps(payload or {}))
    return client.reader.RecordInteraction(rpb.RecordInteractionRequest(interaction=interaction), metadata=client.md)


def rid(client: Client) -> str:
    return client.account.split("/")[1]


def last_id(name: str) -> str:
    return name.rsplit("/", 1)[1]


def test_the_doc_has_the_four_queries() -> None:
    assert set(QUERIES) == NAMES
    text = DOC.read_text(encoding="utf-8")
    # The doc explains both defects.
    assert "REFERENCES users(id)" in text
    assert "foreign_keys" in text
    assert "datetime('now', '-2 minutes')" in text
    assert "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 minutes')" in QUERIES["active_readers"]
    assert "datetime(" not in "".join(QUERIES.values()), "no query may compare with datetime()"


# --- (1) active readers ----------------------------------------------------------------------------------------------


def test_active_readers_query(h: Harness) -> None:
    consultant = h.new_consultant()
    ann, bob, stale = h.new_reader("ann"), h.new_reader("bob"), h.new_reader("stale")
    h.new_reader("never")
    record(stale)
    write(h, "UPDATE reader_states SET last_seen_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-10 minutes') "
             "WHERE reader_id = ?", (rid(stale),))
    last = {ann.account: record(ann, "progress", {"percent": 0.4, "step": 2})}
    last[bob.account] = record(bob, "answer")

    found = read(h, "active_readers")
    assert [r[0] for r in found] == [rid(bob), rid(ann)], "most recently seen first, stale and idle ones left out"
    emails = dict(h.database.rows("SELECT id, email FROM users"))
    for row in found:
        reader_id, email, display_name, status, progress, step, last_interaction_id, last_seen_at = row
        name = f"readers/{reader_id}"
        assert email == emails[reader_id]
        assert display_name in ("ann", "bob")
        assert status == "active"
        assert last_interaction_id == last_id(last[name].interaction.name)
        assert ISO.match(last_seen_at)
        assert (progress, step) == ((0.4, 2) if name == ann.account else (0.0, 0))
    # The API agrees.
    api = consultant.consultant.ListActiveReaders(cpb.ListActiveReadersRequest(), metadata=consultant.md)
    assert [r.name.split("/")[1] for r in api.readers] == [r[0] for r in found]


def test_timestamps_compare_only_in_the_stored_format() -> None:
    """Defect 2: '…T…Z' text against datetime()'s '… …' text is wrong on the
    same day; against strftime('%Y-%m-%dT%H:%M:%fZ', …) it is right."""
    conn = apsw.Connection(":memory:")
    now = "2025-03-01 17:00:00"
    old, recent = "2025-03-01T08:00:00.000Z", "2025-03-01T16:59:30.000Z"
    design = "SELECT ? > datetime(?, '-2 minutes')"
    fixed = "SELECT ? >= strftime('%Y-%m-%dT%H:%M:%fZ', ?, '-2 minutes')"
    assert conn.execute(design, (old, now)).fetchall() == [(1,)], "the design's comparison calls 08:00 active"
    assert conn.execute(fixed, (old, now)).fetchall() == [(0,)]
    assert conn.execute(fixed, (recent, now)).fetchall() == [(1,)]
    [(cutoff,)] = conn.execute("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', ?, '-2 minutes')", (now,)).fetchall()
    assert cutoff == "2025-03-01T16:58:00.000Z"


def test_server_timestamps_are_in_the_stored_format(h: Harness) -> None:
    record(h.new_reader())
    for table, column in [("users", "created_at"), ("reader_states", "last_seen_at"),
                          ("interactions", "created_at"), ("sessions", "expires_at"), ("audit_logs", "created_at")]:
        values = [v for (v,) in h.database.rows(f"SELECT {column} FROM {table}")]
        assert values
        assert all(ISO.match(v) for v in values), (table, column, values)


# --- (2) and (3) recent interactions ------------------------------------------------------------------------------


def test_recent_interaction_queries(h: Harness) -> None:
    consultant = h.new_consultant()
    ann, bob = h.new_reader("ann"), h.new_reader("bob")
    made = []
    for i in range(9):
        client = bob if i % 3 == 0 else ann
        made.append((rid(client), last_id(record(client, "answer" if i % 2 else "heartbeat", {"i": i})
                                          .interaction.name)))
    newest = made[::-1]

    everyone = read(h, "recent_interactions", {"limit": 100})
    assert [(r[2], r[1]) for r in everyone] == newest
    seqs = [r[0] for r in everyone]
    assert seqs == sorted(seqs, reverse=True)
    assert {r[3] for r in everyone} == {"ann", "bob"}
    assert json.loads(everyone[-1][5]) == {"i": 0}
    top = read(h, "recent_interactions", {"limit": 4})
    api = consultant.consultant.ListInteractions(
        cpb.ListInteractionsRequest(parent="readers/-", page_size=4), metadata=consultant.md)
    assert [r[1] for r in top] == [last_id(i.name) for i in api.interactions]
    assert [r[0] for r in top] == [i.sequence for i in api.interactions]

    for client in (ann, bob):
        own = read(h, "reader_interactions", {"reader_id": rid(client), "limit": 100})
        assert [r[1] for r in own] == [i for u, i in newest if u == rid(client)]
        api_own = consultant.consultant.ListInteractions(
            cpb.ListInteractionsRequest(parent=client.account, page_size=100), metadata=consultant.md)
        assert [r[1] for r in own] == [last_id(i.name) for i in api_own.interactions]
        mine = client.reader.ListMyInteractions(rpb.ListMyInteractionsRequest(page_size=100), metadata=client.md)
        assert [r[1] for r in own] == [last_id(i.name) for i in mine.interactions]
    assert len(read(h, "reader_interactions", {"reader_id": rid(ann), "limit": 2})) == 2
    assert read(h, "reader_interactions", {"reader_id": str(uuid.uuid4()), "limit": 10}) == []


# --- (4) promotion ------------------------------------------------------------------------------------------------


def promote(h: Harness, reader_id: str, role: str) -> str:
    consultant_id = str(uuid.uuid4())
    write(h, QUERIES["promote_reader"],
          {"reader_id": reader_id, "role": role, "consultant_id": consultant_id, "audit_id": str(uuid.uuid4())})
    return consultant_id


def login(h: Harness, email: str, kind: Any) -> Any:
    return h.anonymous.auth.Login(pb.LoginRequest(email=email, password=PASSWORD, account_kind=kind)).session


def test_promote_query(h: Harness) -> None:
    reader = h.new_reader("pat")
    [(email, password_hash, display_name)] = h.database.rows(
        "SELECT email, password_hash, display_name FROM users WHERE id = ?", (rid(reader),))
    consultants, audits = h.database.count("consultants"), h.database.count("audit_logs")

    consultant_id = promote(h, rid(reader), "supervisor")
    assert h.database.rows("SELECT email, password_hash, display_name, role, user_id, is_active FROM consultants "
                           "WHERE id = ?", (consultant_id,)) == [(email, password_hash, display_name, "supervisor",
                                                                  rid(reader), 1)]
    [(created_at, updated_at)] = h.database.rows("SELECT created_at, updated_at FROM consultants WHERE id = ?",
                                                 (consultant_id,))
    assert ISO.match(created_at)
    assert created_at == updated_at
    [audit] = h.database.rows("SELECT actor_type, actor_id, action, target_type, target_id, details FROM audit_logs "
                              "WHERE action = 'reader.promote'")
    assert audit[:5] == ("system", None, "reader.promote", "reader", rid(reader))
    assert json.loads(audit[5]) == {"consultant_id": consultant_id, "role": "supervisor", "via": "sql"}

    # The same email and password now sign in to either account.
    as_consultant = login(h, email, resources_pb2.ACCOUNT_KIND_CONSULTANT)
    assert as_consultant.account == f"consultants/{consultant_id}"
    assert as_consultant.role == resources_pb2.CONSULTANT_ROLE_SUPERVISOR
    assert login(h, email, resources_pb2.ACCOUNT_KIND_READER).account == reader.account
    assert login(h, email, resources_pb2.ACCOUNT_KIND_UNSPECIFIED).account == reader.account
    promoted = Client(h.channel, as_consultant.token, as_consultant.account)
    assert promoted.consultant.GetReader(cpb.GetReaderRequest(name=reader.account), metadata=promoted.md)
    # Defect 1: the consultant's session is stored, and every foreign key holds.
    assert h.database.rows("SELECT actor_type FROM sessions WHERE actor_id = ?", (consultant_id,)) == [("consultant",)]
    assert h.database.rows("PRAGMA foreign_key_list(sessions)") == []
    assert h.database.rows("PRAGMA foreign_key_check") == []

    # A second promotion, of any role, does nothing, and audits nothing; also
    # when the same statement is simply run again.
    promote(h, rid(reader), "admin")
    write(h, QUERIES["promote_reader"], {"reader_id": rid(reader), "role": "admin", "consultant_id": consultant_id,
                                         "audit_id": str(uuid.uuid4())})
    assert h.database.count("consultants") == consultants + 1
    assert h.database.count("audit_logs") == audits + 1 + 1  # + the consultant's login
    # The server agrees that this reader has been promoted.
    error = rpc_error(lambda: h.anonymous.admin.PromoteReader(
        apb.PromoteReaderRequest(reader=reader.account), metadata=h.admin_md()))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize("case", ["unknown", "deactivated", "email_taken"])
def test_promote_query_inserts_nothing_when_it_must_not(h: Harness, case: str) -> None:
    reader = h.new_reader()
    reader_id = rid(reader)
    if case == "unknown":
        reader_id = str(uuid.uuid4())
    elif case == "deactivated":
        h.anonymous.admin.SetAccountActive(apb.SetAccountActiveRequest(account=reader.account, active=False),
                                           metadata=h.admin_md())
    else:
        [(email,)] = h.database.rows("SELECT email FROM users WHERE id = ?", (reader_id,))
        h.anonymous.admin.CreateConsultant(apb.CreateConsultantRequest(
            email=email, password=PASSWORD, display_name="Namesake", role=resources_pb2.CONSULTANT_ROLE_CONSULTANT,
        ), metadata=h.admin_md())
    consultants, audits = h.database.count("consultants"), h.database.count("audit_logs")
    consultant_id = promote(h, reader_id, "consultant")
    assert h.database.rows("SELECT count(*) FROM consultants WHERE id = ?", (consultant_id,)) == [(0,)]
    assert h.database.count("consultants") == consultants
    assert h.database.count("audit_logs") == audits
