"""Backups and restore: real servers, real files, the real CLI.

The stall bound: a backup never takes the write lock (it reads one WAL
snapshot on its own connection), so what writers feel is only CPU and disk
competition. WRITE_STALL_BOUND is the longest any single write may take, and
the longest time no write may complete, while a backup runs under 20
continuous writers; docs/operations.md states it and the measured values.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import apsw
import grpc
import pytest

from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2
from cursor_grpc import cli
from cursor_grpc.storage.sqlite.backup import inspect_database, list_backups, manifest_path_for, verify_backup
from cursor_grpc.storage.sqlite.files import sha256_file
from cursor_grpc.storage.sqlite.migrations import load_migrations
from tests.conftest import PASSWORD, Harness
from tests.helpers import table_count
from tests.ops_support import WriteLoad, bulk_record, new_reader, record, run_cli, start_server

pytestmark = pytest.mark.sqlite_only  # backups and restores are copies of SQLite files

WRITE_STALL_BOUND = 0.5  # seconds


def _epoch(db: Path) -> str:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return str(conn.execute("SELECT value FROM cursor_meta WHERE key = 'event_epoch'").fetchall()[0][0])
    finally:
        conn.close()


def _independent_facts(path: Path) -> dict[str, Any]:
    """What the copy holds, read by the test itself, not by the code under test."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        counts = {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchall()[0][0] for n in names}
        top = conn.execute(
            "SELECT max(coalesce((SELECT max(seq) FROM interactions), 0), coalesce((SELECT max(seq) FROM events), 0),"
            " coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'interactions'), 0))").fetchall()[0][0]
        epoch = conn.execute("SELECT value FROM cursor_meta WHERE key = 'event_epoch'").fetchall()[0][0]
        schema = conn.execute("SELECT max(name) FROM schema_migrations").fetchall()[0][0]
        mode = conn.execute("PRAGMA journal_mode").fetchall()[0][0]
    finally:
        conn.close()
    return {"tables": counts, "seq": top, "epoch": epoch, "schema": schema, "journal_mode": mode}


def _check_backup(path: Path) -> dict[str, Any]:
    manifest = json.loads(manifest_path_for(path).read_text())
    facts = _independent_facts(path)
    assert manifest["integrity_check"] == "ok"
    assert manifest["tables"] == facts["tables"]
    assert manifest["event_cursor"] == {"epoch": facts["epoch"], "seq": facts["seq"]}
    assert manifest["schema_version"] == facts["schema"] == load_migrations()[-1].name
    assert manifest["size_bytes"] == path.stat().st_size
    assert manifest["sha256"] == sha256_file(path)
    assert facts["journal_mode"] == "delete", "a backup is one self-contained file"
    assert not Path(str(path) + "-wal").exists()
    return manifest


def test_backup_while_20_writers_write(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    server = start_server(db)
    load: WriteLoad | None = None
    try:
        channel = grpc.insecure_channel(server.address)
        seeder = new_reader(channel, "seed")
        bulk_record(seeder, 60_000, payload_bytes=900)  # ~80 MB, so the online backup takes many steps
        load = WriteLoad(server.address, writers=20).start()
        time.sleep(1.5)
        measured = {}
        for method, extra in (("online", ["--step-pages", "256"]), ("vacuum", [])):
            before = load.completed()
            start = time.monotonic()
            done = run_cli("backup", "--db", str(db), "--backup-dir", str(tmp_path / method), "--method", method,
                           *extra)
            end = time.monotonic()
            assert done.returncode == 0, done.stderr
            time.sleep(0.5)
            longest, gap, completed = load.stall(start, end)
            measured[method] = (longest, gap, completed, end - start)
            assert load.completed() - before > 100, "the writers kept writing during the backup"
            [copy] = list_backups(tmp_path / method, "live")
            manifest = _check_backup(copy)
            assert manifest["method"] == method
            assert manifest["tables"]["interactions"] >= 60_000
            verify_backup(copy)
            if method == "online":
                assert manifest["steps"] > 10, "the online backup copies in steps"
            assert longest < WRITE_STALL_BOUND, f"{method}: a write took {longest * 1000:.0f} ms during the backup"
            assert gap < WRITE_STALL_BOUND, f"{method}: no write completed for {gap * 1000:.0f} ms during the backup"
        # Baseline over the same load without a backup, for the report.
        start = time.monotonic()
        time.sleep(2.0)
        measured["none"] = (*load.stall(start, time.monotonic()), 2.0)
        print("\nwrite stall during backup (longest write s, longest gap s, writes, window s):",
              json.dumps(measured), "; WAL truncations by housekeeping:",
              sum("checkpointed and truncated" in line for line in server.log))
        assert not load.errors, load.errors[:5]
    finally:
        if load is not None:
            load.stop()
        server.terminate()


def test_restore_into_fresh_path_then_serve(make_harness: Any, tmp_path: Path) -> None:
    h: Harness = make_harness()
    readers = [h.new_reader() for _ in range(3)]
    sequences = [record(r, {"n": i}) for i, r in enumerate(readers * 5)]
    admin = h.admin()
    h.new_consultant()
    assert cli.main(["backup", "--db", str(h.db_path), "--backup-dir", str(tmp_path / "b")]) == 0
    [backup] = list_backups(tmp_path / "b", h.db_path.stem)
    manifest = _check_backup(backup)
    original_epoch = _epoch(h.db_path)
    record(readers[0], {"after": "backup"})  # not in the backup

    # Refused while a server holds the database; nothing changes.
    refused = run_cli("restore", str(backup), "--db", str(h.db_path))
    assert refused.returncode == 1
    assert "running server" in refused.stderr
    assert _epoch(h.db_path) == original_epoch

    fresh = tmp_path / "restored" / "cursor.db"
    done = run_cli("restore", str(backup), "--db", str(fresh))
    assert done.returncode == 0, done.stderr
    restored_epoch = _epoch(fresh)
    assert restored_epoch != original_epoch, "restore gives the database a new event epoch"
    assert original_epoch in done.stdout
    assert restored_epoch in done.stdout

    h2: Harness = make_harness(fresh)
    counts = {t: table_count(fresh, t) for t in ("users", "consultants", "interactions")}
    assert counts == {t: manifest["tables"][t] for t in counts}
    # Readers sign in with their old passwords; every interaction is there.
    for reader in readers:
        again = h2.anonymous.login(
            _email_of(h.db_path, reader.account), PASSWORD, kind=resources_pb2.ACCOUNT_KIND_READER)
        page = again.reader.ListMyInteractions(rpb.ListMyInteractionsRequest(page_size=100), metadata=again.md)
        assert len(page.interactions) == 5
    consultant = h2.anonymous.login("admin@example.com", kind=resources_pb2.ACCOUNT_KIND_CONSULTANT)
    every = consultant.consultant.ListInteractions(
        cpb.ListInteractionsRequest(parent="readers/-", page_size=1000), metadata=consultant.md)
    assert sorted(i.sequence for i in every.interactions) == sorted(sequences)
    assert admin.token  # the old server's sessions stay with the old database
    conn = apsw.Connection(str(fresh), flags=apsw.SQLITE_OPEN_READONLY)
    meta = dict(conn.execute("SELECT key, value FROM cursor_meta").fetchall())
    conn.close()
    assert meta["restored_from"] == backup.name
    assert meta["restored_from_epoch"] == original_epoch


def _email_of(db: Path, account: str) -> str:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return str(conn.execute("SELECT email FROM users WHERE id = ?", (account.split("/")[1],)).fetchall()[0][0])
    finally:
        conn.close()


def test_restore_checks_the_manifest_and_keeps_the_replaced_database(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    assert run_cli("migrate", "--db", str(db)).returncode == 0
    done = run_cli("backup", "--db", str(db), "--backup-dir", str(tmp_path / "b"))
    assert done.returncode == 0, done.stderr
    [backup] = list_backups(tmp_path / "b", "c")

    # A damaged copy is refused before anything is touched.
    damaged = tmp_path / "damaged.db"
    shutil.copyfile(backup, damaged)
    shutil.copyfile(manifest_path_for(backup), manifest_path_for(damaged))
    with open(damaged, "r+b") as f:
        f.seek(4096 + 100)
        f.write(b"\xff\xff\xff\xff")
    refused = run_cli("restore", str(damaged), "--db", str(db))
    assert refused.returncode == 1
    assert "SHA-256" in refused.stderr
    # Without a manifest it is not a verified backup.
    bare = tmp_path / "bare.db"
    shutil.copyfile(backup, bare)
    refused = run_cli("restore", str(bare), "--db", str(db))
    assert refused.returncode == 1
    assert "manifest" in refused.stderr
    # A manifest whose counts do not match the file.
    lying = tmp_path / "lying.db"
    shutil.copyfile(backup, lying)
    manifest = json.loads(manifest_path_for(backup).read_text())
    manifest["tables"]["users"] = 99
    manifest_path_for(lying).write_text(json.dumps(manifest))
    refused = run_cli("restore", str(lying), "--db", str(db))
    assert refused.returncode == 1
    assert "row counts" in refused.stderr

    old_epoch = _epoch(db)
    done = run_cli("restore", str(backup), "--db", str(db))
    assert done.returncode == 0, done.stderr
    kept = list(tmp_path.glob("c.db.pre-restore-*"))
    assert len(kept) == 1
    assert _epoch(kept[0]) == old_epoch
    assert _epoch(db) != old_epoch
    assert inspect_database(db)["integrity_check"] == "ok"


def test_scheduled_backups_with_retention(tmp_path: Path) -> None:
    db = tmp_path / "sched.db"
    backups = tmp_path / "backups"
    server = start_server(db, CURSOR_BACKUP_EVERY="300ms", CURSOR_BACKUP_DIR=str(backups), CURSOR_BACKUP_KEEP="2")
    try:
        channel = grpc.insecure_channel(server.address)
        writer = new_reader(channel)
        deadline = time.monotonic() + 20
        while sum("verified" in line and "backup sched-" in line for line in server.log) < 4:
            assert time.monotonic() < deadline, "".join(server.log[-20:])
            record(writer)
            time.sleep(0.05)
        # Retention runs after each backup, and the next one may be under way: wait for both to settle.
        while not (1 <= len(kept := list_backups(backups, "sched")) <= 2 and not list(backups.glob("*.partial"))):
            assert time.monotonic() < deadline + 20, [p.name for p in backups.iterdir()]
            time.sleep(0.02)
        for path in kept:
            verify_backup(path)
        channel.close()
    finally:
        assert server.terminate() == 0


@pytest.mark.parametrize("method", ["online", "vacuum"])
def test_backup_cli_verifies_and_prunes(tmp_path: Path, method: str) -> None:
    db = tmp_path / "p.db"
    assert run_cli("migrate", "--db", str(db)).returncode == 0
    for _ in range(3):
        done = run_cli("backup", "--db", str(db), "--backup-dir", str(tmp_path / "b"), "--method", method,
                       "--keep", "2")
        assert done.returncode == 0, done.stderr
        assert "verified" in done.stdout
    kept = list_backups(tmp_path / "b", "p")
    assert len(kept) == 2
    for path in kept:
        _check_backup(path)
    missing = run_cli("backup", "--db", str(tmp_path / "nope.db"), "--backup-dir", str(tmp_path / "b"))
    assert missing.returncode == 3
    assert f"{tmp_path / 'nope.db'} does not exist" in missing.stderr
    assert not (tmp_path / "nope.db").exists()


def test_backup_and_restore_show_progress_then_one_summary(tmp_path: Path) -> None:
    """Not a terminal: plain progress lines, then the summary once on stdout,
    and not again as a log line on stderr. restore takes CURSOR_DB like
    every other command."""
    db = tmp_path / "one.db"
    assert run_cli("migrate", "--db", str(db)).returncode == 0
    done = run_cli("backup", "--db", str(db), "--step-pages", "8")
    assert done.returncode == 0, done.stderr
    pages = inspect_database(db)["page_count"]
    progress = [line for line in done.stdout.splitlines() if line.startswith("backup: ")]
    assert progress[-1] == f"backup: {pages}/{pages} pages (100%)"
    assert 2 <= len(progress) <= 11, "a line at each tenth, no more"
    assert done.stdout.count("verified") == 1
    assert "verified" not in done.stderr
    [backup] = list_backups(tmp_path / "backups", "one")

    target = tmp_path / "restored.db"
    restored = run_cli("restore", str(backup), env={"CURSOR_DB": str(target)})
    assert restored.returncode == 0, restored.stderr
    lines = restored.stdout.splitlines()
    assert re.fullmatch(r"restore: [0-9.]+/[0-9.]+ MiB \(50%\)", lines[0]), "the checksum is the first half"
    assert re.fullmatch(r"restore: [0-9.]+/[0-9.]+ MiB \(100%\)", lines[1]), "then the copy"
    assert lines[2] == f"restored {backup} into {target}"
    assert restored.stdout.count("restored ") == 1
    assert "restored" not in restored.stderr
    assert table_count(target, "schema_migrations") == len(load_migrations())
