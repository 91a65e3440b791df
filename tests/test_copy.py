"""`cursor-grpc copy --from PATH --to postgresql://…`: a SQLite deployment
(made by a real server, with archived interactions) moves to PostgreSQL in
one transaction; a server on PostgreSQL then answers as the SQLite one did,
consultant cursors taken before the move resume after it, and every refusal
leaves both sides as they were."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import apsw
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from cursor.v1 import admin_service_pb2 as apb
from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2 as pb
from cursor_grpc import cli
from cursor_grpc.auth.passwords import Passwords
from cursor_grpc.clock import iso_from_ns
from cursor_grpc.config import AuthSettings, StorageSettings
from cursor_grpc.ops import copy as copy_module
from cursor_grpc.storage.sql import accounts
from cursor_grpc.storage.sqlite.connection import open_connection
from cursor_grpc.storage.sqlite.store import SQLiteStore, apply_migrations
from tests.conftest import PASSWORD, Client, Harness
from tests.databases import PostgresDatabase, SQLiteDatabase
from tests.streams import StreamReader

pytestmark = pytest.mark.sqlite_only  # the source is a SQLite file; the target the suite's PostgreSQL

DAY_NS = 86_400 * 1_000_000_000
# What a fresh, migrated target holds before anything is copied (and the copy must leave as is on refusal).
TABLES = ("users", "consultants", "sessions", "interactions", "reader_states", "messages", "audit_logs", "events",
          "message_reads", "cursor_meta", "consents", "archive_index", "event_sequence")


def copy_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`cursor-grpc copy ARGS` in this process: (status, stdout, stderr)."""
    capsys.readouterr()
    status = cli.main(["--log-level", "WARNING", "copy", *args])
    out, err = capsys.readouterr()
    return status, out, err


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_of(db: Path) -> dict[str, str]:
    """Checksums of the source: the database file and every archive file."""
    return {p.name: sha256(p) for p in [db, *sorted((db.parent / "archive").glob("*.db"))]}


def seed_old(db: Path, readers: int, per_quarter: int, days_ago: tuple[int, ...]) -> dict[str, Any]:
    """A migrated database with `readers` readers (password PASSWORD) and
    `per_quarter` old interactions per reader around each of `days_ago`,
    seq ascending with time (what a server would have written long ago)."""
    apply_migrations(StorageSettings(path=db))
    password_hash = Passwords(AuthSettings(argon2_memory_kib=1024, argon2_time_cost=1), workers=1).hash_sync(PASSWORD)
    conn = open_connection(StorageSettings(path=db))
    now = time.time_ns()
    emails, ids, seq = [], [], 0
    conn.execute("BEGIN IMMEDIATE")
    for n in range(readers):
        email = f"old{n}-{db.stem}@example.com"
        ids.append(accounts.create_reader(conn, email, password_hash, f"Old {n}").id)
        emails.append(email)
    for days in days_ago:
        for i in range(per_quarter * readers):
            seq += 1
            conn.execute(
                "INSERT INTO interactions(seq, id, reader_id, type, payload, summary, created_at) "
                "VALUES (?, lower(hex(randomblob(16))), ?, ?, ?, 'old', ?)",
                (seq, ids[i % readers], "progress" if i % 2 else "answer",
                 json.dumps({"percent": round(i / (per_quarter * readers), 3), "days": days}),
                 iso_from_ns(now - days * DAY_NS + i * 60 * 1_000_000_000)),
            )
    conn.execute("COMMIT")
    conn.close()
    return {"emails": emails, "ids": ids, "old_max": seq}


def small_source(tmp_path: Path) -> tuple[Path, int]:
    """Without a server: old interactions archived into two quarter files,
    and recent ones in the main database. Returns the file and its rows in
    interactions, main and archived."""
    db = tmp_path / "small.db"
    seeded = seed_old(db, readers=2, per_quarter=15, days_ago=(400, 200))
    conn = open_connection(StorageSettings(path=db))
    conn.execute("BEGIN IMMEDIATE")
    for n in range(10):
        conn.execute(
            "INSERT INTO interactions(seq, id, reader_id, type, payload, created_at) VALUES (?, ?, ?, 'answer', ?, ?)",
            (seeded["old_max"] + 1 + n, f"recent-{n}", seeded["ids"][n % 2], json.dumps({"n": n}),
             iso_from_ns(time.time_ns())),
        )
    conn.execute("COMMIT")
    conn.close()
    store = SQLiteStore(StorageSettings(path=db))
    try:
        moved = store.archive(db.parent / "archive", retention_days=90, chunk_rows=25)
    finally:
        store.close()
    assert moved.rows_moved == seeded["old_max"] == 60
    return db, 70


def target_state(url: str) -> dict[str, Any]:
    """Every row count of the target, its counter and its epoch ({} before it is migrated)."""
    pg = PostgresDatabase(url)
    if not pg.rows("SELECT to_regclass('users') IS NOT NULL")[0][0]:
        return {}
    state: dict[str, Any] = {table: pg.count(table) for table in TABLES}
    state["last_seq"] = pg.rows("SELECT last_seq FROM event_sequence")[0][0]
    state["meta"] = sorted(pg.rows("SELECT key, value FROM cursor_meta"))
    return state


def walk(call: Any, request: Any, items: str, md: Any) -> list[Any]:
    """Every item of every page of a list RPC."""
    found: list[Any] = []
    token = ""
    while True:
        request.page_token = token
        response = call(request, metadata=md)
        found += list(getattr(response, items))
        token = response.next_page_token
        if not token:
            return found


def watcher(client: Client, after: str = "") -> StreamReader:
    return StreamReader(client.consultant.WatchActivity(cpb.WatchActivityRequest(after=after), metadata=client.md))


def record(client: Client, type_: str = "progress", **payload: Any) -> int:
    return int(client.reader.RecordInteraction(rpb.RecordInteractionRequest(interaction=rpb.NewInteraction(
        type=type_, payload_json=json.dumps(payload))), metadata=client.md).interaction.sequence)


def what_a_consultant_sees(consultant: Client, readers: list[str]) -> dict[str, Any]:
    everyone = walk(consultant.consultant.ListInteractions,
                    cpb.ListInteractionsRequest(parent="readers/-", page_size=40), "interactions", consultant.md)
    return {
        "readers": walk(consultant.consultant.ListReaders, cpb.ListReadersRequest(page_size=3), "readers",
                        consultant.md),
        "interactions": everyone,
        "messages": {r: walk(consultant.consultant.ListMessages, cpb.ListMessagesRequest(parent=r, page_size=2),
                             "messages", consultant.md) for r in readers},
    }


def test_copy_moves_a_served_sqlite_deployment_with_archives_to_postgresql(
    make_harness: Any, tmp_path: Path, postgres_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres_database_url
    db = tmp_path / "cursor.db"
    seeded = seed_old(db, readers=2, per_quarter=20, days_ago=(400, 200))  # 80 old interactions, two quarters
    h: Harness = make_harness(SQLiteDatabase(db))
    consultant = h.new_consultant()
    old = [h.anonymous.login(email, kind=pb.ACCOUNT_KIND_READER) for email in seeded["emails"]]
    ann, bob, cid = h.new_reader("ann"), h.new_reader("bob"), h.new_reader("cid")
    live = watcher(consultant)
    live.wait_for(lambda: bool(live.responses))
    for n in range(4):
        record(ann, percent=0.1 * (n + 1), step=n)
        record(bob, "answer", choice=n)
    record(old[0], percent=0.5)
    consultant.consultant.SendMessage(cpb.SendMessageRequest(reader=ann.account, body="hello ann"),
                                      metadata=consultant.md)
    ann.reader.SendMyMessage(rpb.SendMyMessageRequest(body="hi there"), metadata=ann.md)
    ann.reader.GrantConsent(rpb.GrantConsentRequest(grantee=bob.account, scope=pb.CONSENT_SCOPE_STATE_AND_INTERACTIONS),
                            metadata=ann.md)
    h.admin().admin.UpdateReader(apb.UpdateReaderRequest(
        reader=pb.Reader(name=cid.account, display_name="Cid Renamed", metadata_json='{"team": "b"}'),
        update_mask=FieldMask(paths=["display_name", "metadata_json"])), metadata=h.admin_md())
    last_before = record(cid, percent=0.9)
    live.wait_for(lambda: any(e.event_id == last_before for e in live.events))
    time.sleep(0.2)
    cursor = live.cursor()  # taken on SQLite, before the move
    live.cancel()
    # After the cursor: what a consultant resuming from it must get, on SQLite and then on PostgreSQL.
    after = [record(ann, percent=1.0, step=9), record(cid, "answer", choice=7)]
    consultant.consultant.SendMessage(cpb.SendMessageRequest(reader=cid.account, body="hi cid"), metadata=consultant.md)
    consultant.consultant.MarkMessagesRead(cpb.MarkMessagesReadRequest(reader=ann.account), metadata=consultant.md)
    after.append(record(bob, percent=0.3))
    resumed = watcher(consultant, cursor)
    resumed.wait_for(lambda: any(e.event_id == after[-1] for e in resumed.events))
    time.sleep(0.3)
    expected_events = list(resumed.events)
    last_cursor = resumed.cursor()
    resumed.cancel()
    assert len(expected_events) >= len(after) + 2
    readers = [c.account for c in (ann, bob, cid, *old)]
    before = what_a_consultant_sees(consultant, readers)

    # A running server holds the source: refused at once, the target untouched.
    status, out, err = copy_cli(capsys, "--from", str(db), "--to", url)
    assert status == 2, (out, err)
    [line] = err.splitlines()
    assert "is held by a running server" in line
    assert target_state(url) == {}

    h.server.stop()
    assert cli.main(["--log-level", "WARNING", "archive", "--db", str(db)]) == 0
    archived = SQLiteDatabase(db).rows("SELECT count(*), sum(row_count) FROM archive_index")[0]
    assert archived == (2, 80)
    main_rows = SQLiteDatabase(db).count("interactions")
    checksums = files_of(db)
    assert len(checksums) == 3

    status, out, err = copy_cli(capsys, "--from", str(db), "--to", url)
    assert status == 0, err
    assert files_of(db) == checksums, "the source (database and archive files) is unchanged"
    lines = out.splitlines()
    assert lines[0].startswith(f"copied {db} to postgresql://")
    assert lines[0].endswith(" s")
    assert "password" not in out
    rows = {parts[0]: int(parts[1]) for parts in (line.split() for line in lines[2:]) if len(parts) >= 2
            and parts[1].isdigit()}
    assert rows["interactions"] == main_rows + 80
    assert any(line.split()[0] == "interactions" and "(80 from 2 archive files)" in line for line in lines[2:])
    assert "archive_index" not in rows, "the archived interactions are in interactions now"
    for table in ("users", "consultants", "sessions", "messages", "consents", "audit_logs", "events",
                  "reader_states", "message_reads"):
        assert rows[table] == SQLiteDatabase(db).count(table) > 0, table
    assert lines[-1] == f"  last cursor {last_cursor}"
    pg = PostgresDatabase(url)
    assert pg.count("archive_index") == 0
    assert pg.rows("SELECT key FROM cursor_meta ORDER BY key") == [("event_epoch",)], "no history floor"
    assert pg.rows("SELECT encode(token_hash, 'hex') FROM sessions ORDER BY id") == \
        SQLiteDatabase(db).rows("SELECT lower(hex(token_hash)) FROM sessions ORDER BY id")

    # A second copy into it is refused and changes nothing.
    state = target_state(url)
    status, out, err = copy_cli(capsys, "--from", str(db), "--to", url)
    assert status == 2
    [line] = err.splitlines()
    assert "is not empty" in line
    assert "users" in line
    assert target_state(url) == state

    # A server on PostgreSQL: the same answers, the same sessions, the same history.
    h2: Harness = make_harness(PostgresDatabase(url))
    consultant2 = Client(h2.channel, consultant.token, consultant.account)  # the session made on SQLite
    after_move = what_a_consultant_sees(consultant2, readers)
    assert after_move == before
    assert len(before["interactions"]) == main_rows + 80
    assert [m.body for m in before["messages"][ann.account]] == ["hi there", "hello ann"]
    granted = Client(h2.channel, ann.token, ann.account).reader.ListConsents(rpb.ListConsentsRequest(),
                                                                             metadata=ann.md).consents
    assert [c.grantee for c in granted] == [bob.account]

    again = watcher(consultant2, cursor)
    again.wait_for(lambda: len(again.events) >= len(expected_events))
    time.sleep(0.3)
    assert list(again.events) == expected_events, "exactly the events after the cursor, as SQLite gave them"
    newer = record(Client(h2.channel, bob.token, bob.account), percent=0.4)
    assert newer > int(last_cursor.rpartition("-")[2])
    again.wait_for(lambda: any(e.event_id == newer for e in again.events))
    assert [e.event_id for e in again.events][len(expected_events)] == newer
    assert again.cursor().partition("-")[0] == cursor.partition("-")[0], "the same history (epoch)"
    again.cancel()


def test_missing_archive_file_is_refused_then_found_with_archives_dir(
    tmp_path: Path, postgres_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres_database_url
    db, interactions = small_source(tmp_path)
    files = sorted((tmp_path / "archive").glob("*.db"))
    assert len(files) == 2
    # A file made before migration 0006 names the reader column user_id.
    conn = apsw.Connection(str(files[0]))
    conn.execute("ALTER TABLE interactions RENAME COLUMN reader_id TO user_id")
    conn.close()
    # A crash between an archive run's copy and its delete leaves a row in both places.
    conn = apsw.Connection(str(files[1]))
    conn.execute("ATTACH ? AS main_db", (str(db),))
    conn.execute("INSERT INTO interactions SELECT * FROM main_db.interactions ORDER BY seq LIMIT 1")
    conn.close()
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for path in files:
        path.rename(moved / path.name)

    status, out, err = copy_cli(capsys, "--from", str(db), "--to", url)
    assert status == 2, out
    [line] = err.splitlines()
    assert f"archive/{files[0].name}" in line
    assert f"archive/{files[1].name}" in line
    assert "--archives DIR" in line
    assert "--no-archives" in line
    assert target_state(url) == {}, "refused before the target was touched"

    checksums = {p.name: sha256(p) for p in [db, *moved.glob("*.db")]}
    status, out, err = copy_cli(capsys, "--from", str(db), "--to", url, "--archives", str(moved))
    assert status == 0, err
    assert {p.name: sha256(p) for p in [db, *moved.glob("*.db")]} == checksums
    assert "1 archived interactions were also in the main database, copied once" in out
    pg = PostgresDatabase(url)
    assert pg.count("interactions") == interactions
    assert pg.rows("SELECT count(DISTINCT reader_id) FROM interactions") == [(2,)]
    assert pg.rows("SELECT min(seq), max(seq), count(DISTINCT seq) FROM interactions") == [(1, 70, 70)]
    source = SQLiteDatabase(db)
    assert pg.rows("SELECT last_seq FROM event_sequence") == [(70,)]
    assert pg.rows("SELECT value FROM cursor_meta WHERE key = 'event_epoch'") == \
        source.rows("SELECT value FROM cursor_meta WHERE key = 'event_epoch'")
    # Timestamps and JSON text arrive as the service reads them.
    [(created, payload)] = source.rows("SELECT created_at, payload FROM interactions WHERE seq = 70")
    with pg_connection(url) as raw:
        assert raw.execute("SELECT created_at, payload FROM interactions WHERE seq = 70").fetchall() == \
            [(created, payload)]


def pg_connection(url: str) -> Any:
    from cursor_grpc.storage.postgres.connection import connect_raw

    return connect_raw(url)


def test_no_archives_keeps_the_index_and_the_history_floor(
    tmp_path: Path, postgres_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres_database_url
    db, _ = small_source(tmp_path)
    for path in (tmp_path / "archive").glob("*.db"):
        path.unlink()  # not needed without archives
    status, out, err = copy_cli(capsys, "--from", str(db), "--to", url, "--no-archives")
    assert status == 0, err
    assert "history floor seq 60 kept" in out
    pg, source = PostgresDatabase(url), SQLiteDatabase(db)
    assert pg.count("interactions") == source.count("interactions") == 10
    assert pg.rows("SELECT value FROM cursor_meta WHERE key = 'history_floor_seq'") == [("60",)]
    assert pg.rows("SELECT file, period, min_seq, max_seq, row_count FROM archive_index ORDER BY file") == \
        source.rows("SELECT file, period, min_seq, max_seq, row_count FROM archive_index ORDER BY file")
    assert pg.rows("SELECT last_seq FROM event_sequence") == [(70,)]


def test_a_failure_midway_leaves_the_target_empty(
    tmp_path: Path, postgres_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An archived payload PostgreSQL refuses (not a JSON object) stops the
    copy after the other tables went in: all of it is rolled back."""
    url = postgres_database_url
    db, _ = small_source(tmp_path)
    [newest, *_] = sorted((tmp_path / "archive").glob("*.db"), reverse=True)
    conn = apsw.Connection(str(newest))
    conn.execute("PRAGMA ignore_check_constraints = ON")
    conn.execute("CREATE TEMP TABLE last AS SELECT * FROM interactions WHERE seq = (SELECT max(seq) FROM interactions)")
    conn.execute("DELETE FROM interactions WHERE seq = (SELECT seq FROM last)")  # append-only forbids UPDATE
    conn.execute("INSERT INTO interactions SELECT seq, id, reader_id, type, '[1, 2]', summary, processed, created_at "
                 "FROM last")
    conn.close()
    status, out, err = copy_cli(capsys, "--from", str(db), "--to", url)
    assert status == 1, out
    [line] = err.splitlines()
    assert "rolled back" in line
    state = target_state(url)
    assert state["meta"][0][0] == "event_epoch"
    assert len(state["meta"]) == 1
    assert state["last_seq"] == 0
    assert {table: state[table] for table in TABLES} == {**dict.fromkeys(TABLES, 0), "cursor_meta": 1,
                                                         "event_sequence": 1}


def test_refusals_name_the_problem_in_one_line(
    tmp_path: Path, postgres_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres_database_url
    unmigrated = tmp_path / "empty.db"
    conn = apsw.Connection(str(unmigrated))
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    for args, says in [
        (["--from", str(unmigrated), "--to", url], "has no schema yet"),
        (["--from", str(tmp_path / "nothing.db"), "--to", url], "does not exist"),
        (["--from", str(unmigrated), "--to", str(tmp_path / "other.db")], "--to must name a PostgreSQL database"),
    ]:
        status, out, err = copy_cli(capsys, *args)
        assert status == 2, (args, out, err)
        [line] = err.splitlines()
        assert says in line, line
    assert target_state(url) == {}
    # A server that does not answer: named without the URL's password.
    db, _ = small_source(tmp_path)
    status, out, err = copy_cli(capsys, "--from", str(db), "--to", "postgresql://cursor:s3cret-pw@127.0.0.1:1/nowhere")
    assert status == 2, out
    [line] = err.splitlines()
    assert "postgresql://127.0.0.1:1/nowhere" in line
    assert "s3cret-pw" not in line


def test_progress_goes_to_stderr_for_big_copies(
    tmp_path: Path, postgres_database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(copy_module, "PROGRESS_MIN_ROWS", 10)
    monkeypatch.setattr(copy_module, "PROGRESS_EVERY", 7)
    db, _ = small_source(tmp_path)
    status, out, err = copy_cli(capsys, "--from", str(db), "--to", postgres_database_url)
    assert status == 0, err
    progress = err.splitlines()
    assert all(line.startswith("copy: ") and line.endswith("%)") for line in progress), progress
    assert progress[0].startswith("copy: 0/")
    assert progress[-1] == "copy: 75/75 rows (100%)", "2 users, 2 reader_states, 1 cursor_meta, 70 interactions"
    assert len(progress) > 5
    assert "copy:" not in out


def test_a_failed_verification_rolls_back(
    tmp_path: Path, postgres_database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counts are compared before COMMIT: a difference (here a source
    that says it holds one more reader than it sent) commits nothing."""
    db, _ = small_source(tmp_path)
    count = copy_module._Source.count
    monkeypatch.setattr(copy_module._Source, "count",
                        lambda self, table: count(self, table) + (table == "users"))
    status, out, err = copy_cli(capsys, "--from", str(db), "--to", postgres_database_url)
    assert status == 1, out
    [line] = err.splitlines()
    assert "verification failed" in line
    assert "users: 3 rows in the source, 2 sent, 2 in postgresql://" in line
    state = target_state(postgres_database_url)
    assert state["users"] == state["interactions"] == state["last_seq"] == 0
