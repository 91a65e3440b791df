"""Migrations 0008 and 0009 (attention) on a SQLite database with data: the
events table is rebuilt in chunks with the new kind, every event is kept
as it was, a reader without a state row gets one, and a server on the
migrated file replays the old events and raises signals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2 as pb
from cursor_grpc.auth.passwords import Passwords
from cursor_grpc.clock import new_id, now_iso
from cursor_grpc.config import AuthSettings, StorageSettings
from cursor_grpc.storage.sqlite.connection import open_connection
from cursor_grpc.storage.sqlite.migrations import load_migrations, migrate
from tests.conftest import PASSWORD
from tests.streams import StreamReader

pytestmark = pytest.mark.sqlite_only  # SQLite's table rebuild

BEFORE = "0007_reader_assignments.sql"
EVENTS = 12_000  # more than two chunks of the rebuild


def _database_before(db: Path) -> dict[str, Any]:
    conn = open_connection(StorageSettings(path=db))
    known = load_migrations()
    migrate(conn, known[: [m.name for m in known].index(BEFORE) + 1])
    password_hash = Passwords(AuthSettings(argon2_memory_kib=1024, argon2_time_cost=1), workers=1).hash_sync(PASSWORD)
    now = now_iso()
    with_state, without_state = new_id(), new_id()
    conn.execute("BEGIN IMMEDIATE")
    for n, reader in enumerate((with_state, without_state)):
        conn.execute("INSERT INTO users(id, email, password_hash, display_name, created_at, updated_at) "
                     "VALUES (?, ?, ?, ?, ?, ?)", (reader, f"before{n}@example.com", password_hash, f"B{n}", now, now))
    conn.execute("INSERT INTO reader_states(reader_id, updated_at, progress, current_step) VALUES (?, ?, 0.5, 4)",
                 (with_state, now))
    shapes = (("presence", {"presence": "idle", "previous": "reading"}),
              ("message_read", {"participant": f"readers/{with_state}", "last_read_seq": 0}))
    conn.executemany(
        "INSERT INTO events(seq, kind, reader_id, ref_id, summary, data, created_at) VALUES (?, ?, ?, NULL, ?, ?, ?)",
        [(seq, shapes[seq % 2][0], with_state, f"event {seq}", json.dumps(shapes[seq % 2][1]), now)
         for seq in range(1, EVENTS + 1)],
    )
    conn.execute("COMMIT")
    before = list(conn.execute("SELECT * FROM events ORDER BY seq"))
    conn.close()
    return {"events": before, "with_state": with_state, "without_state": without_state}


def test_attention_migrations_keep_every_event_and_serve(tmp_path: Path, make_harness: Any) -> None:
    db = tmp_path / "before.db"
    old = _database_before(db)
    conn = open_connection(StorageSettings(path=db))
    applied = migrate(conn)
    assert applied == ["0008_attention.sql", "0009_attention_events.py"]
    assert list(conn.execute("SELECT * FROM events ORDER BY seq")) == old["events"]
    assert [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'")] == ["idx_events_reader_seq"]
    assert "'attention'" in next(conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events'"))[0]
    assert [r[0] for r in conn.execute("SELECT reader_id FROM reader_states WHERE reader_id = ?",
                                       (old["without_state"],))] == [old["without_state"]]
    assert list(conn.execute("SELECT attention, wrong_streak, wrong_seqs, pace_steps FROM reader_states "
                             "WHERE reader_id = ?", (old["with_state"],))) == [("", 0, "[]", 0)]
    assert not list(conn.execute("PRAGMA foreign_key_check"))
    conn.close()

    h = make_harness(db)
    consultant = h.new_consultant()
    reader = h.anonymous.login("before1@example.com", kind=pb.ACCOUNT_KIND_READER)
    epoch = h.database.rows("SELECT value FROM cursor_meta WHERE key = 'event_epoch'")[0][0]
    stream = StreamReader(consultant.consultant.WatchActivity(cpb.WatchActivityRequest(after=f"{epoch}-0"),
                                                              metadata=consultant.md))
    stream.wait_for(lambda: len(stream.events) >= EVENTS, timeout=30)
    assert [e.event_id for e in stream.events[:EVENTS]] == list(range(1, EVENTS + 1))
    reader.reader.SendMyMessage(rpb.SendMyMessageRequest(body="help"), metadata=reader.md)
    stream.wait_for(lambda: any(e.kind == pb.EVENT_KIND_ATTENTION_CHANGED for e in stream.events))
    [signal] = [e.attention for e in stream.events if e.kind == pb.EVENT_KIND_ATTENTION_CHANGED]
    assert signal.reader == reader.account
    assert signal.rule == pb.ATTENTION_RULE_ASKED_FOR_HELP
    stream.cancel()
