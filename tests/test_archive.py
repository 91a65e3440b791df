"""Archival: old interactions move to quarterly files, crash-safely, and
history pages walk into them. Real servers, real files, the real CLI in a
subprocess that is killed (os._exit) at named points."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import apsw
import pytest

from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2
from cursor_grpc.auth.passwords import Passwords
from cursor_grpc.clock import iso_from_ns
from cursor_grpc.config import AuthSettings, StorageSettings
from cursor_grpc.storage.sql import accounts
from cursor_grpc.storage.sqlite.archive import archive_file_name, quarter_of
from cursor_grpc.storage.sqlite.connection import open_connection
from cursor_grpc.storage.sqlite.store import apply_migrations
from tests.conftest import PASSWORD, Harness, create_admin
from tests.ops_support import WriteLoad, run_cli, start_server

pytestmark = pytest.mark.sqlite_only  # archive files are SQLite files

DAY_NS = 86_400 * 1_000_000_000
# Same bound as for backups: a chunk's write task is milliseconds; this is the
# longest a single write, or a time without any completed write, may take.
WRITE_STALL_BOUND = 0.5


def seed(db: Path, readers: int, per_quarter: int, days_ago: tuple[int, ...] = (400, 300, 200)) -> dict[str, Any]:
    """A migrated database with `readers` readers (password PASSWORD) and
    `per_quarter` old interactions per reader around each of `days_ago`,
    seq ascending with time, alternating readers and two types."""
    apply_migrations(StorageSettings(path=db))
    password_hash = Passwords(AuthSettings(argon2_memory_kib=1024, argon2_time_cost=1), workers=1).hash_sync(PASSWORD)
    conn = open_connection(StorageSettings(path=db))
    now = time.time_ns()
    ids: list[str] = []
    emails: list[str] = []
    by_reader: dict[str, list[int]] = {}
    seq = 0
    conn.execute("BEGIN IMMEDIATE")
    for n in range(readers):
        email = f"old{n}-{db.stem}@example.com"
        reader = accounts.create_reader(conn, email, password_hash, f"Old {n}")
        ids.append(reader.id)
        emails.append(email)
        by_reader[reader.id] = []
    for days in days_ago:
        base = now - days * DAY_NS
        for i in range(per_quarter * readers):
            seq += 1
            reader_id = ids[i % readers]
            conn.execute(
                "INSERT INTO interactions(seq, id, reader_id, type, payload, summary, created_at) "
                "VALUES (?, lower(hex(randomblob(16))), ?, ?, ?, 'old', ?)",
                (seq, reader_id, "answer" if i % 3 else "progress", json.dumps({"i": i, "days": days}),
                 iso_from_ns(base + i * 60 * 1_000_000_000)),
            )
            by_reader[reader_id].append(seq)
    conn.execute("COMMIT")
    conn.close()
    return {"ids": ids, "emails": emails, "old": by_reader, "old_max": seq}


def test_archive_shows_progress_then_one_summary(tmp_path: Path) -> None:
    """Not a terminal: plain progress lines at every tenth, then the summary
    once (the run's own log line is DEBUG, not a second summary on stderr)."""
    db = tmp_path / "p.db"
    seed(db, readers=1, per_quarter=50, days_ago=(400,))
    done = run_cli("archive", "--db", str(db), "--chunk-rows", "10")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:6] == [f"archive: {n}/50 rows ({n * 2}%)" for n in range(0, 51, 10)]
    assert lines[6].startswith("archived 50 interactions older than 90 days in 5 chunk(s) into archive/")
    assert len(lines) == 8
    assert "archived" not in done.stderr


def all_seqs(db: Path, archive_dir: Path) -> dict[str, list[int]]:
    """seq values in the main database and in each archive file (read by the test)."""
    found: dict[str, list[int]] = {}
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    found["main"] = [r[0] for r in conn.execute("SELECT seq FROM interactions ORDER BY seq")]
    conn.close()
    for path in sorted(archive_dir.glob("archive_*.db")):
        arch = apsw.Connection(str(path))  # read-write: rolls back what a crash left half done
        found[path.name] = [r[0] for r in arch.execute("SELECT seq FROM interactions ORDER BY seq")]
        arch.close()
    return found


def walk(pages: Any, request: Any, **kwargs: Any) -> tuple[list[int], list[bool]]:
    """Every page of a list RPC: the sequences in order and each page's includes_archived."""
    seqs: list[int] = []
    flags: list[bool] = []
    token = ""
    while True:
        request.page_token = token
        response = pages(request, **kwargs)
        seqs += [i.sequence for i in response.interactions]
        flags.append(response.includes_archived)
        token = response.next_page_token
        if not token:
            return seqs, flags


def test_archive_survives_crashes_and_history_walks_into_archives(
    make_harness: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "arch.db"
    archives = tmp_path / "archive"
    seeded = seed(db, readers=2, per_quarter=150)  # 900 old rows in 3 quarters, chunks of 100 below
    create_admin(db, monkeypatch)
    h: Harness = make_harness(db)
    reader = h.anonymous.login(seeded["emails"][0], kind=resources_pb2.ACCOUNT_KIND_READER)
    recent = [reader.reader.RecordInteraction(rpb.RecordInteractionRequest(interaction=rpb.NewInteraction(
        type="answer", payload_json=json.dumps({"recent": i}))), metadata=reader.md).interaction.sequence
        for i in range(30)]
    assert min(recent) > seeded["old_max"]
    consultant = h.admin()
    everything = sorted([*recent, *(s for seqs in seeded["old"].values() for s in seqs)], reverse=True)

    def check_history() -> None:
        seqs, _ = walk(consultant.consultant.ListInteractions,
                       cpb.ListInteractionsRequest(parent="readers/-", page_size=70), metadata=consultant.md)
        assert seqs == everything, "every interaction once, newest first, whatever state the archive is in"

    archive_args = ["archive", "--db", str(db), "--archive-dir", str(archives), "--chunk-rows", "100"]
    seen_files: set[str] = set()
    for point in ("after_copy:2", "mid_copy:3", "mid_delete:2", "after_delete:4", "mid_copy:1"):
        crashed = run_cli(*archive_args, env={"CURSOR_ARCHIVE_CRASH_AT": point})
        assert crashed.returncode == 86, (point, crashed.stdout, crashed.stderr)
        check_history()  # first: the server itself copes with what the crash left
        state = all_seqs(db, archives)
        union = [s for seqs in state.values() for s in seqs]
        assert set(union) >= set(everything), f"nothing lost after a crash at {point}"
        seen_files |= set(state) - {"main"}
        duplicated = set(state["main"]) & {s for name, seqs in state.items() if name != "main" for s in seqs}
        if point.startswith("after_copy"):
            assert duplicated, "between copy and delete a chunk is in both places (and read once)"

    done = run_cli(*archive_args)
    assert done.returncode == 0, done.stderr
    state = all_seqs(db, archives)
    union = [s for seqs in state.values() for s in seqs]
    assert sorted(union) == sorted(everything), "every interaction exactly once across main + archives"
    assert state["main"] == sorted(recent)
    now = time.time_ns()
    expected_files = {archive_file_name(*quarter_of(iso_from_ns(now - d * DAY_NS))) for d in (400, 300, 200)}
    assert set(state) - {"main"} == expected_files
    again = run_cli(*archive_args)
    assert again.returncode == 0
    assert again.stdout.strip() == "nothing to archive: no interactions older than 90 days"
    assert all_seqs(db, archives) == state

    # The index says which file holds what, and agrees with the files.
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    index = {r[0]: r[1:] for r in conn.execute("SELECT file, min_seq, max_seq, row_count FROM archive_index")}
    floor = conn.execute("SELECT value FROM cursor_meta WHERE key = 'history_floor_seq'").fetchall()[0][0]
    conn.close()
    assert {Path(f).name for f in index} == expected_files
    for file, (low, high, count) in index.items():
        seqs = state[Path(file).name]
        assert (low, high, count) == (min(seqs), max(seqs), len(seqs))
    assert int(floor) == seeded["old_max"]

    # Paging walks across the boundary in order and says when it did.
    mine = sorted([*recent, *seeded["old"][seeded["ids"][0]]], reverse=True)
    seqs, flags = walk(reader.reader.ListMyInteractions, rpb.ListMyInteractionsRequest(page_size=25),
                       metadata=reader.md)
    assert seqs == mine
    assert flags[0] is False, "the first page is all recent"
    assert flags[1] is True, "the second page crosses into the archive"
    assert all(flags[1:])
    check_history()
    _, consultant_flags = walk(consultant.consultant.ListInteractions,
                               cpb.ListInteractionsRequest(parent="readers/-", page_size=70), metadata=consultant.md)
    assert consultant_flags[0] is True, "30 recent + 40 archived on the first page"
    assert all(consultant_flags)
    # Filters apply inside archives too.
    progress, _ = walk(consultant.consultant.ListInteractions, cpb.ListInteractionsRequest(
        parent=f"readers/{seeded['ids'][1]}", type="progress", page_size=40), metadata=consultant.md)
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    for path in sorted(archives.glob("*.db")):
        conn.execute("ATTACH ? AS a", (str(path),))
        expected = [r[0] for r in conn.execute(
            "SELECT seq FROM a.interactions WHERE reader_id = ? AND type = 'progress'", (seeded["ids"][1],))]
        assert set(expected) <= set(progress)
        conn.execute("DETACH a")
    conn.close()
    assert progress == sorted(progress, reverse=True)
    assert len(progress) == 3 * 50


def test_archive_while_20_writers_write(tmp_path: Path) -> None:
    """The CLI in its own process moves 20 000 rows in chunks of 500 while a
    server takes 20 continuous writers; then the server's own schedule does
    the same for another 10 000. Writes never stall past the bound."""
    db = tmp_path / "busy.db"
    seed(db, readers=4, per_quarter=2500, days_ago=(400, 300, 200))  # 30 000 old rows
    server = start_server(db)
    load: WriteLoad | None = None
    measured: dict[str, Any] = {}
    try:
        load = WriteLoad(server.address, writers=20).start()
        time.sleep(1.5)
        start = time.monotonic()
        done = run_cli("archive", "--db", str(db), "--archive-dir", str(tmp_path / "a"), "--chunk-rows", "500",
                       "--retention-days", "250")
        end = time.monotonic()
        assert done.returncode == 0, done.stderr
        assert "archived 20000 interactions" in done.stdout
        measured["cli"] = (*load.stall(start, end), end - start, done.stdout.splitlines()[-1].strip())
        longest, gap, completed, _, _ = measured["cli"]
        assert completed > 100
        assert longest < WRITE_STALL_BOUND, measured
        assert gap < WRITE_STALL_BOUND, measured
        assert not load.errors, load.errors[:5]
    finally:
        if load is not None:
            load.stop()
        server.terminate()

    # The same through the server's schedule: the chunks go through its own writer.
    server = start_server(db, CURSOR_ARCHIVE_EVERY="1s", CURSOR_ARCHIVE_DIR=str(tmp_path / "a"),
                          CURSOR_ARCHIVE_RETENTION_DAYS="150")
    load = None
    try:
        load = WriteLoad(server.address, writers=20).start()
        start = time.monotonic()
        assert server.wait_log("archived 10000 interactions", timeout=60), "".join(server.log[-20:])
        end = time.monotonic()
        line = next(x for x in server.log if "archived 10000 interactions" in x)
        measured["scheduled"] = (*load.stall(start, end), end - start, line.strip()[-60:])
        longest, gap, completed, _, _ = measured["scheduled"]
        assert longest < WRITE_STALL_BOUND, measured
        assert gap < WRITE_STALL_BOUND, measured
        assert not load.errors, load.errors[:5]
    finally:
        if load is not None:
            load.stop()
        server.terminate()
    print("\nwrite stall during archival (longest write s, longest gap s, writes, window s, summary):",
          json.dumps(measured))
    state = all_seqs(db, tmp_path / "a")
    assert sum(len(v) for k, v in state.items() if k != "main") == 30_000
