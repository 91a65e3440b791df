"""Migration 0006 (the design's names) on a database with data.

A database at the previous schema (0005), written as the previous version
wrote it: readers and their states, interactions in four periods, messages in
both directions and from the system with their events and read positions, a
consultant, and two archive files made before the migration (`user_id`).
`cursor-grpc migrate` then applies 0006; every row is checked against what it
was, every read goes through a real server, archives are written into again
after the migration (the old file is renamed in place, the untouched one keeps
`user_id` and is still read), and new writes store the new names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import apsw
import pytest

from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2 as pb
from cursor_grpc.auth.passwords import Passwords
from cursor_grpc.clock import iso_from_ns, iso_to_ns, new_id, now_iso, timestamp_from_iso
from cursor_grpc.config import AuthSettings, StorageSettings
from cursor_grpc.storage.sqlite.archive import ArchiveError, open_archive, run_archive
from cursor_grpc.storage.sqlite.connection import open_connection
from cursor_grpc.storage.sqlite.files import sha256_file
from cursor_grpc.storage.sqlite.migrations import load_migrations, migrate
from tests.conftest import PASSWORD, Client, Harness, create_admin
from tests.helpers import db_rows
from tests.ops_support import run_cli
from tests.streams import StreamReader

pytestmark = pytest.mark.sqlite_only  # SQLite's migrations and archive files

BEFORE = "0005_interactions_payload_object.py"
NAMES = "0006_design_names.sql"
DIRECTIONS = {"to_reader": "consultant_to_user", "from_reader": "user_to_consultant", "system": "system"}
API_DIRECTION = {"to_reader": pb.MESSAGE_DIRECTION_TO_READER, "from_reader": pb.MESSAGE_DIRECTION_FROM_READER,
                 "system": pb.MESSAGE_DIRECTION_SYSTEM}
# Interactions of four periods, oldest first: 2019-Q4 and early 2020-Q1 are
# archived before the migration; late 2020-Q1 (into the old Q1 file) and
# 2020-Q2 (a new file) after it; the recent ones stay in the database.
PERIODS = {"2019q4": "2019-11-10T08:00:00.000Z", "2020q1_early": "2020-01-10T08:00:00.000Z",
           "2020q1_late": "2020-02-20T08:00:00.000Z", "2020q2": "2020-05-10T08:00:00.000Z"}
PER_PERIOD = 12  # per reader
READERS = 3

INTERACTIONS_COLUMNS = "seq, id, {reader}, type, payload, summary, processed, created_at"
STATES_COLUMNS = ("{reader}, status, progress, current_step, last_interaction_id, last_seen_at, updated_at, presence, "
                  "last_active_at")
MESSAGES_COLUMNS = "id, reader_id, consultant_id, direction, body, created_at, read_at, seq"
UNCHANGED = ("users", "consultants", "sessions", "message_reads", "archive_index", "cursor_meta", "sqlite_sequence",
             "audit_logs", "consents")


def _old_database(db: Path, archives: Path) -> dict[str, Any]:
    """The previous version's database, written with its SQL (user_id,
    to_reader/from_reader), and archived as it archived."""
    settings = StorageSettings(path=db)
    conn = open_connection(settings)
    known = load_migrations()
    migrate(conn, known[: [m.name for m in known].index(BEFORE) + 1])
    password_hash = Passwords(AuthSettings(argon2_memory_kib=1024, argon2_time_cost=1), workers=1).hash_sync(PASSWORD)
    now = now_iso()
    seen = iso_from_ns(iso_to_ns(now) - 10 * 60 * 1_000_000_000)
    readers = [new_id() for _ in range(READERS)]
    consultant = new_id()
    seq = 0
    interactions: dict[str, list[int]] = {r: [] for r in readers}
    progress_seqs: dict[str, list[int]] = {r: [] for r in readers}
    conn.execute("BEGIN IMMEDIATE")
    for n, reader in enumerate(readers):
        conn.execute("INSERT INTO users(id, email, password_hash, display_name, created_at, updated_at) "
                     "VALUES (?, ?, ?, ?, ?, ?)", (reader, f"old{n}@example.com", password_hash, f"Old {n}", now, now))
    conn.execute("INSERT INTO consultants(id, email, password_hash, display_name, role, created_at, updated_at) "
                 "VALUES (?, 'old-consultant@example.com', ?, 'Old consultant', 'consultant', ?, ?)",
                 (consultant, password_hash, now, now))

    def interaction(reader: str, created_at: str, i: int) -> str:
        nonlocal seq
        seq += 1
        type_ = "progress" if i % 3 == 0 else "answer"
        interaction_id = new_id()
        conn.execute(
            "INSERT INTO interactions(seq, id, user_id, type, payload, summary, processed, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, interaction_id, reader, type_, json.dumps({"i": i, "at": created_at}), f"s{i}", i % 2, created_at),
        )
        interactions[reader].append(seq)
        if type_ == "progress":
            progress_seqs[reader].append(seq)
        return interaction_id

    for start in PERIODS.values():
        for i in range(PER_PERIOD * READERS):
            interaction(readers[i % READERS], iso_from_ns(iso_to_ns(start) + i * 60_000_000_000), i)
    # Messages in both directions and from the system, with the events the
    # previous version stored for them.
    messages: dict[str, list[tuple[str, int]]] = {r: [] for r in readers}
    for n, reader in enumerate(readers):
        for m, direction in enumerate(["to_reader", "from_reader", "from_reader", "system", "to_reader"]):
            seq += 1
            message_id = new_id()
            read_at = now if (n == 0 and m == 0) else None
            body = f"{direction} {m} to {n}"
            consultant_id = consultant if direction == "to_reader" else None
            conn.execute(
                f"INSERT INTO messages({MESSAGES_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (message_id, reader, consultant_id, direction, body, now, read_at, seq),
            )
            data = {"id": message_id, "consultant_id": consultant_id, "direction": direction, "body": body,
                    "created_at": now, "read_at": None, "seq": seq}
            conn.execute("INSERT INTO events(seq, kind, reader_id, ref_id, summary, data, created_at) "
                         "VALUES (?, 'message', ?, ?, ?, ?, ?)",
                         (seq, reader, message_id, body[:80], json.dumps(data, separators=(",", ":")), now))
            messages[reader].append((direction, seq))
    # The consultant has read reader 0's conversation up to its first message from the reader.
    first_from = next(s for d, s in messages[readers[0]] if d == "from_reader")
    conn.execute("INSERT INTO message_reads VALUES (?, 'consultant', ?, ?, ?)",
                 (readers[0], consultant, first_from, now))
    seq += 1
    conn.execute("INSERT INTO events(seq, kind, reader_id, ref_id, summary, data, created_at) "
                 "VALUES (?, 'message_read', ?, NULL, 'read', ?, ?)",
                 (seq, readers[0],
                  json.dumps({"participant": f"consultants/{consultant}", "last_read_seq": first_from}), now))
    # Recent interactions, then each reader's state (the last recent one).
    last: dict[str, str] = {}
    for i in range(2 * READERS):
        last[readers[i % READERS]] = interaction(readers[i % READERS], now, 100 + i)
    states = [
        (readers[0], "active", 0.25, 3, last[readers[0]], now, now, "reading", now),
        (readers[1], "completed", 1.0, 9, last[readers[1]], now, now, "online", seen),
        (readers[2], "paused", 0.5, 4, last[readers[2]], seen, seen, "idle", seen),
    ]
    conn.executemany(f"INSERT INTO reader_states({STATES_COLUMNS.format(reader='user_id')}) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", states)
    seq += 1
    conn.execute("INSERT INTO events(seq, kind, reader_id, ref_id, summary, data, created_at) "
                 "VALUES (?, 'presence', ?, NULL, 'reading', '{\"presence\":\"reading\",\"previous\":\"idle\"}', ?)",
                 (seq, readers[0], now))
    conn.execute("COMMIT")
    conn.close()

    # The previous version's archive run: 2019-Q4 and early 2020-Q1 (cutoff 2020-02-01).
    def submit_sync(task: Any) -> Any:
        writer = open_connection(settings)
        try:
            writer.execute("BEGIN IMMEDIATE")
            result = task(writer)
            writer.execute("COMMIT")
            return result
        finally:
            writer.close()

    stats = run_archive(settings, submit_sync, archives, retention_days=0, chunk_rows=10,
                        now_ns=iso_to_ns("2020-02-01T00:00:00.000Z"))
    assert stats.rows_moved == 2 * PER_PERIOD * READERS
    assert sorted(p.name for p in archives.glob("*.db")) == ["archive_2019_Q4.db", "archive_2020_Q1.db"]
    return {"readers": readers, "consultant": consultant, "interactions": interactions, "progress": progress_seqs,
            "messages": messages, "states": states, "first_from": first_from}


def _columns(path: Path, table: str = "interactions") -> list[str]:
    return [str(r[1]) for r in db_rows(path, f"PRAGMA table_info({table})")]


def _rows(path: Path, table: str, columns: str = "*") -> list[Any]:
    return db_rows(path, f"SELECT {columns} FROM {table} ORDER BY rowid")


def _archived(archives: Path) -> dict[str, list[int]]:
    found = {}
    for path in sorted(archives.glob("archive_*.db")):
        conn = apsw.Connection(str(path))
        found[path.name] = [r[0] for r in conn.execute("SELECT seq FROM interactions ORDER BY seq")]
        conn.close()
    return found


def _walk(call: Any, request: Any, md: Any) -> tuple[list[int], bool]:
    seqs: list[int] = []
    archived = False
    while True:
        response = call(request, metadata=md)
        seqs += [i.sequence for i in response.interactions]
        archived = archived or response.includes_archived
        if not response.next_page_token:
            return seqs, archived
        request.page_token = response.next_page_token


def _check_history(h: Harness, seeded: dict[str, Any], admin: Client) -> None:
    """Every interaction once, newest first, across the database and every
    archive file whatever its column is named; per reader, and filtered."""
    everything = sorted((s for seqs in seeded["interactions"].values() for s in seqs), reverse=True)
    seqs, archived = _walk(admin.consultant.ListInteractions, cpb.ListInteractionsRequest(parent="readers/-",
                           page_size=25), admin.md)
    assert seqs == everything
    assert archived
    for n, reader_id in enumerate(seeded["readers"]):
        reader = h.anonymous.login(f"old{n}@example.com", kind=pb.ACCOUNT_KIND_READER)
        mine, archived = _walk(reader.reader.ListMyInteractions, rpb.ListMyInteractionsRequest(page_size=7),
                               reader.md)
        assert mine == sorted(seeded["interactions"][reader_id], reverse=True)
        assert archived
        progress, _ = _walk(admin.consultant.ListInteractions, cpb.ListInteractionsRequest(
            parent=f"readers/{reader_id}", type="progress", page_size=5), admin.md)
        assert progress == sorted(seeded["progress"][reader_id], reverse=True)


def test_migration_keeps_every_row_and_every_read(
    make_harness: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "old.db"
    archives = tmp_path / "archive"
    seeded = _old_database(db, archives)
    readers = seeded["readers"]
    old_q4, old_q1 = archives / "archive_2019_Q4.db", archives / "archive_2020_Q1.db"
    assert "user_id" in _columns(old_q4)
    assert "user_id" in _columns(old_q1)
    archive_sums = {p: sha256_file(p) for p in (old_q4, old_q1)}

    before = {table: _rows(db, table) for table in UNCHANGED}
    interactions = _rows(db, "interactions", INTERACTIONS_COLUMNS.format(reader="user_id"))
    states = _rows(db, "reader_states", STATES_COLUMNS.format(reader="user_id"))
    messages = _rows(db, "messages", MESSAGES_COLUMNS)
    events = _rows(db, "events", "seq, kind, reader_id, ref_id, summary, data, created_at")
    assert {m[3] for m in messages} == set(DIRECTIONS)

    # migrate --status and --dry-run name it and change nothing.
    status = run_cli("migrate", "--status", "--db", str(db))
    assert status.returncode == 0, status.stderr
    assert f"pending  {NAMES}" in status.stdout
    dry = run_cli("migrate", "--dry-run", "--db", str(db))
    assert dry.returncode == 0, dry.stderr
    assert f"== {NAMES}" in dry.stdout
    assert "ALTER TABLE interactions RENAME COLUMN user_id TO reader_id" in dry.stdout
    assert _rows(db, "messages", MESSAGES_COLUMNS) == messages

    done = run_cli("migrate", "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert f"applied {NAMES}" in done.stdout

    # Every row: renamed columns hold the same values, directions are the
    # design's, metadata is '{}', everything else is as it was.
    assert "user_id" not in _columns(db)
    assert "user_id" not in _columns(db, "reader_states")
    assert _rows(db, "interactions", INTERACTIONS_COLUMNS.format(reader="reader_id")) == interactions
    assert _rows(db, "reader_states", STATES_COLUMNS.format(reader="reader_id")) == states
    assert _rows(db, "reader_states", "metadata") == [("{}",)] * len(states)
    assert _rows(db, "messages", MESSAGES_COLUMNS) == [
        (*m[:3], DIRECTIONS[m[3]], *m[4:]) for m in messages]
    assert _rows(db, "messages", "metadata") == [("{}",)] * len(messages)
    after_events = _rows(db, "events", "seq, kind, reader_id, ref_id, summary, data, created_at")
    assert len(after_events) == len(events)
    for old, new in zip(events, after_events, strict=True):
        assert (new[:5], new[6]) == (old[:5], old[6])
        data = json.loads(old[5])
        if old[1] == "message":
            data["direction"] = DIRECTIONS[data["direction"]]
        assert json.loads(new[5]) == data
        assert list(json.loads(new[5])) == list(json.loads(old[5])), "keys in the same order"
    for table, rows in before.items():
        assert _rows(db, table) == rows, table
    assert db_rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert db_rows(db, "PRAGMA foreign_key_check") == []

    # The schema around the renamed columns: index, trigger, constraints.
    assert [r[2] for r in db_rows(db, "PRAGMA index_info(idx_interactions_user_seq)")] == ["reader_id", "seq"]
    assert [r[2] for r in db_rows(db, "PRAGMA index_info(idx_reader_states_last_seen)")] == ["last_seen_at",
                                                                                              "reader_id"]
    assert {r[0] for r in db_rows(db, "SELECT name FROM sqlite_master WHERE tbl_name = 'messages'")} >= {
        "idx_messages_reader_created", "idx_messages_reader_seq"}
    assert db_rows(db, "SELECT name FROM sqlite_master WHERE sql LIKE '%user_id%'") == [("consultants",)], \
        "only consultants.user_id (the reader a consultant was promoted from) keeps the name"
    assert not db_rows(db, "SELECT name FROM sqlite_master WHERE name LIKE '%0006%'")
    conn = apsw.Connection(str(db))
    conn.execute("PRAGMA foreign_keys=ON")
    with pytest.raises(apsw.ConstraintError, match="append-only"):
        conn.execute("UPDATE interactions SET reader_id = ? WHERE seq = (SELECT max(seq) FROM interactions)",
                     (readers[1],))
    with pytest.raises(apsw.ConstraintError, match="CHECK"):
        conn.execute("INSERT INTO messages(id, reader_id, direction, body, created_at, seq) "
                     "VALUES ('x', ?, 'to_reader', 'old text', ?, 999999)", (readers[0], now_iso()))
    with pytest.raises(apsw.ConstraintError, match="CHECK"):
        conn.execute("UPDATE reader_states SET metadata = 'not json' WHERE reader_id = ?", (readers[0],))
    conn.close()
    # The migration leaves archive files alone.
    assert {p: sha256_file(p) for p in archive_sums} == archive_sums

    # Every read through a real server.
    create_admin(db, monkeypatch)
    h: Harness = make_harness(db)
    admin = h.admin()
    consultant = h.anonymous.login("old-consultant@example.com", kind=pb.ACCOUNT_KIND_CONSULTANT)
    _check_history(h, seeded, admin)
    for n, (reader_id, status_, progress, step, last, seen, _, _, _) in enumerate(seeded["states"]):
        reader = h.anonymous.login(f"old{n}@example.com", kind=pb.ACCOUNT_KIND_READER)
        state = reader.reader.GetMyState(rpb.GetMyStateRequest(), metadata=reader.md).state
        assert (state.reader, state.progress, state.current_step) == (f"readers/{reader_id}", progress, step)
        assert state.status == {"active": pb.READER_STATUS_ACTIVE, "completed": pb.READER_STATUS_COMPLETED,
                                "paused": pb.READER_STATUS_PAUSED}[status_]
        assert state.last_interaction == f"readers/{reader_id}/interactions/{last}"
        assert state.last_seen_time == timestamp_from_iso(seen)
        # The conversation, from both sides: directions and authors as the API always gave them.
        expected = [(API_DIRECTION[d], s) for d, s in reversed(seeded["messages"][reader_id])]
        mine = reader.reader.ListMyMessages(rpb.ListMyMessagesRequest(page_size=100), metadata=reader.md).messages
        assert [(m.direction, m.sequence) for m in mine] == expected
        theirs = consultant.consultant.ListMessages(cpb.ListMessagesRequest(parent=f"readers/{reader_id}",
                                                                            page_size=100), metadata=consultant.md)
        assert [(m.direction, m.sequence) for m in theirs.messages] == expected
        authors = {m.direction: m.author for m in mine}
        assert authors[pb.MESSAGE_DIRECTION_TO_READER] == f"consultants/{seeded['consultant']}"
        assert authors[pb.MESSAGE_DIRECTION_FROM_READER] == f"readers/{reader_id}"
        assert authors[pb.MESSAGE_DIRECTION_SYSTEM] == ""
        assert [m.HasField("read_time") for m in mine] == [n == 0 and s == expected[-1][1] for _, s in expected]
    # Unread: messages from the reader after the consultant's read position.
    unread = consultant.consultant.ListUnreadCounts(cpb.ListUnreadCountsRequest(), metadata=consultant.md)
    assert {c.reader: c.unread for c in unread.counts} == {f"readers/{r}": 1 if r == readers[0] else 2
                                                          for r in readers}
    active = admin.consultant.ListActiveReaders(cpb.ListActiveReadersRequest(window_seconds=300), metadata=admin.md)
    assert {r.name for r in active.readers} == {f"readers/{readers[0]}", f"readers/{readers[1]}"}
    # Replayed history: the stored message events, with the same directions.
    epoch, floor = db_rows(db, "SELECT (SELECT value FROM cursor_meta WHERE key = 'event_epoch'), "
                               "(SELECT value FROM cursor_meta WHERE key = 'history_floor_seq')")[0]
    reader0 = h.anonymous.login("old0@example.com", kind=pb.ACCOUNT_KIND_READER)
    replay = StreamReader(reader0.reader.WatchMyMessages(rpb.WatchMyMessagesRequest(after=f"{epoch}-{floor}"),
                                                         metadata=reader0.md))
    wanted = {s for _, s in seeded["messages"][readers[0]]}
    replay.wait_for(lambda: wanted <= {e.event_id for e in replay.events if e.HasField("message")})
    replay.cancel()
    assert sorted((e.message.direction, e.message.sequence) for e in replay.events if e.HasField("message")) == \
        sorted((API_DIRECTION[d], s) for d, s in seeded["messages"][readers[0]])

    # New writes store the design's names.
    sent = reader0.reader.SendMyMessage(rpb.SendMyMessageRequest(body="after the migration"), metadata=reader0.md)
    answer = consultant.consultant.SendMessage(cpb.SendMessageRequest(reader=f"readers/{readers[0]}", body="ok"),
                                               metadata=consultant.md)
    assert sent.message.direction == pb.MESSAGE_DIRECTION_FROM_READER
    assert answer.message.direction == pb.MESSAGE_DIRECTION_TO_READER
    assert db_rows(db, "SELECT direction FROM messages WHERE seq IN (?, ?) ORDER BY seq",
                   (sent.message.sequence, answer.message.sequence)) == [("user_to_consultant",),
                                                                        ("consultant_to_user",)]
    assert db_rows(db, "SELECT json_extract(data, '$.direction') FROM events WHERE seq = ?",
                   (sent.message.sequence,)) == [("user_to_consultant",)]
    unread = consultant.consultant.ListUnreadCounts(cpb.ListUnreadCountsRequest(), metadata=consultant.md)
    assert {c.reader: c.unread for c in unread.counts}[f"readers/{readers[0]}"] == 2
    reader0.reader.MarkMyMessagesRead(rpb.MarkMyMessagesReadRequest(), metadata=reader0.md)
    assert db_rows(db, "SELECT direction, count(*) FROM messages WHERE reader_id = ? AND read_at IS NULL "
                       "GROUP BY direction", (readers[0],)) == [("user_to_consultant", 3)], \
        "reading stamps the messages written to the reader only"
    recorded = reader0.reader.RecordInteraction(rpb.RecordInteractionRequest(interaction=rpb.NewInteraction(
        type="answer", payload_json="{}")), metadata=reader0.md).interaction.sequence
    assert db_rows(db, "SELECT reader_id FROM interactions WHERE seq = ?", (recorded,)) == [(readers[0],)]
    seeded["interactions"][readers[0]].append(recorded)

    # Archiving after the migration: late 2020-Q1 into the old Q1 file (its
    # column renamed in place), 2020-Q2 into a new file; the 2019-Q4 file is
    # not written and keeps user_id, and history reads all three.
    moved = run_cli("archive", "--db", str(db), "--archive-dir", str(archives), "--retention-days", "30",
                    "--chunk-rows", "10")
    assert moved.returncode == 0, moved.stderr
    assert _columns(old_q1) == _columns(db) == _columns(archives / "archive_2020_Q2.db")
    assert "user_id" in _columns(old_q4)
    assert sha256_file(old_q4) == archive_sums[old_q4]
    for path in (old_q1, archives / "archive_2020_Q2.db"):
        arch = apsw.Connection(str(path))
        assert arch.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        trigger = arch.execute("SELECT sql FROM sqlite_master WHERE name = 'interactions_append_only'").fetchall()
        assert "NEW.reader_id IS NOT OLD.reader_id" in str(trigger[0][0])
        arch.close()
    in_files = _archived(archives)
    main = [r[0] for r in db_rows(db, "SELECT seq FROM interactions ORDER BY seq")]
    union = sorted([*main, *(s for seqs in in_files.values() for s in seqs)])
    assert union == sorted(s for seqs in seeded["interactions"].values() for s in seqs), "each row exactly once"
    assert len(in_files["archive_2020_Q1.db"]) == 2 * PER_PERIOD * READERS
    assert len(main) == 2 * READERS + 1
    _check_history(h, seeded, admin)
    again = run_cli("archive", "--db", str(db), "--archive-dir", str(archives), "--retention-days", "30")
    assert again.returncode == 0, again.stderr
    assert _archived(archives) == in_files


def test_renaming_an_old_archive_file_is_idempotent(tmp_path: Path) -> None:
    """open_archive on a file made before 0006 renames its column once; a
    second open finds nothing to do; a file with other columns is refused."""
    old = tmp_path / "archive_2020_Q1.db"
    ddl = ["CREATE TABLE interactions (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, user_id TEXT NOT NULL, "
           "type TEXT NOT NULL)",
           "CREATE INDEX idx_interactions_user_seq ON interactions(user_id, seq)"]
    conn = open_archive(old, ["seq", "id", "user_id", "type"], ddl, "2020-Q1")
    conn.execute("INSERT INTO interactions VALUES (1, 'a', 'r1', 'answer')")
    conn.close()
    new_columns = ["seq", "id", "reader_id", "type"]
    for _ in range(2):
        conn = open_archive(old, new_columns, [], "2020-Q1")
        assert conn.execute("SELECT seq, id, reader_id, type FROM interactions").fetchall() == [(1, "a", "r1",
                                                                                               "answer")]
        assert [r[2] for r in conn.execute("PRAGMA index_info(idx_interactions_user_seq)")] == ["reader_id", "seq"]
        conn.close()
    with pytest.raises(ArchiveError, match="migrate the archive file"):
        open_archive(old, ["seq", "id", "reader_id", "kind"], [], "2020-Q1")
