"""Online backups, their verification and manifests, retention, restore.

How a backup is taken (`method="online"`, the default):

* A separate read-only connection opens ONE read transaction and keeps it
  for the whole copy. SQLite's backup API then copies the database in steps
  of `step_pages` pages from that snapshot. In WAL mode a reader never blocks
  the writer and the writer never blocks a reader, so the writer is not
  blocked for even one step; the only cost to writers is CPU and disk
  bandwidth, and the WAL cannot be checkpointed past the snapshot until the
  copy ends (it shrinks again at the next WAL housekeeping pass).
* Without that held read transaction, every commit by another connection
  restarts the backup from page 1, so under continuous writes a stepped
  backup from a separate connection never finishes. Stepping on the
  writer's own connection would avoid restarts but blocks the writer for
  every step. Both were measured; see docs/operations.md.

`method="vacuum"` runs `VACUUM INTO` on a separate read-only connection: the
same snapshot guarantee, a compacted copy, one long statement instead of steps
(also non-blocking for the writer in WAL mode).

Copying the database file (cp, rsync, a volume snapshot of the file alone)
while the server runs is never the method: the latest commits live in the
`-wal` file, and a copy of the main file taken mid-checkpoint mixes pages from
different moments, which is a corrupt database.

Every copy is verified before it counts: `PRAGMA integrity_check` on the
copy, then a manifest is written beside it (`<file>.manifest.json`) with row
counts per table, the last event cursor, the schema version, size and
SHA-256. A copy that fails verification is deleted and the run fails.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apsw

from cursor_grpc.clock import now_iso
from cursor_grpc.config import StorageSettings
from cursor_grpc.storage.contract import DatabaseInUse, Progress
from cursor_grpc.storage.sql.connection import fetch_all
from cursor_grpc.storage.sqlite.connection import open_connection
from cursor_grpc.storage.sqlite.dblock import DatabaseLock
from cursor_grpc.storage.sqlite.files import (
    copy_file,
    fsync_dir,
    fsync_file,
    sha256_file,
    sqlite_side_files,
    summary_level,
    write_json_atomic,
)

log = logging.getLogger("cursor.ops.backup")

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = "cursor-backup/1"
METHODS = ("online", "vacuum")
_STAMP = "%Y%m%dT%H%M%S"


class BackupError(RuntimeError):
    """A backup could not be taken or does not verify."""


@dataclass
class BackupResult:
    path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    seconds: float
    steps: int
    longest_step_seconds: float
    step_seconds: list[float] = field(default_factory=list)


def manifest_path_for(backup: Path) -> Path:
    return backup.with_name(backup.name + MANIFEST_SUFFIX)


def _backup_name(db_path: Path, when: datetime) -> str:
    return f"{db_path.stem}-{when.strftime(_STAMP)}{when.microsecond // 1000:03d}Z.db"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _tables(conn: apsw.Connection) -> list[str]:
    rows = fetch_all(conn,
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
    )
    return [str(r[0]) for r in rows]


def event_cursor(conn: apsw.Connection) -> dict[str, Any]:
    """(epoch, seq) of the last event the database holds: the highest seq ever
    given to an interaction or an event. Tolerates older schemas."""
    tables = set(_tables(conn)) | {
        str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE name = 'sqlite_sequence'")
    }
    parts = []
    if "sqlite_sequence" in tables:
        parts.append("(SELECT seq FROM sqlite_sequence WHERE name = 'interactions')")
    if "interactions" in tables:
        parts.append("(SELECT max(seq) FROM interactions)")
    if "events" in tables:
        parts.append("(SELECT max(seq) FROM events)")
    if "cursor_meta" in tables:
        parts.append("(SELECT CAST(value AS INTEGER) FROM cursor_meta WHERE key = 'history_floor_seq')")
    seq = 0
    if parts:
        values = ", ".join(f"coalesce({p}, 0)" for p in parts)
        sql = f"SELECT max({values}, 0)" if len(parts) == 1 else f"SELECT max({values})"
        seq = int(fetch_all(conn, sql)[0][0] or 0)
    epoch = None
    if "cursor_meta" in tables:
        found = fetch_all(conn, "SELECT value FROM cursor_meta WHERE key = 'event_epoch'")
        epoch = str(found[0][0]) if found else None
    return {"epoch": epoch, "seq": seq}


def inspect_database(path: Path) -> dict[str, Any]:
    """Integrity, row counts, schema version and event cursor of a database
    file nobody else writes (a fresh copy). Raises BackupError unless
    integrity_check says ok."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.set_busy_timeout(5000)
        conn.execute("BEGIN")
        problems = [str(r[0]) for r in fetch_all(conn, "PRAGMA integrity_check(20)")]
        if problems != ["ok"]:
            raise BackupError(f"{path.name}: integrity_check failed: {'; '.join(problems)}")
        tables = {name: int(fetch_all(conn, f"SELECT count(*) FROM {_quote(name)}")[0][0])
                  for name in _tables(conn)}
        migrations: list[str] = []
        if "schema_migrations" in tables:
            migrations = [str(r[0]) for r in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]
        cursor = event_cursor(conn)
        page_size = int(fetch_all(conn, "PRAGMA page_size")[0][0])
        page_count = int(fetch_all(conn, "PRAGMA page_count")[0][0])
        conn.execute("COMMIT")
    finally:
        conn.close()
    return {
        "integrity_check": "ok",
        "tables": tables,
        "migrations": migrations,
        "schema_version": migrations[-1] if migrations else None,
        "event_cursor": cursor,
        "page_size": page_size,
        "page_count": page_count,
    }


def _copy_online(settings: StorageSettings, dest: Path, step_pages: int, step_pause: float,
                 stop: threading.Event | None, progress: Progress | None) -> list[float]:
    src = open_connection(settings, readonly=True)
    steps: list[float] = []
    try:
        # One read transaction for the whole copy: the snapshot every step reads.
        src.execute("BEGIN")
        fetch_all(src, "SELECT count(*) FROM sqlite_master")
        dest_conn = apsw.Connection(str(dest))
        try:
            with dest_conn.backup("main", src, "main") as backup:
                while not backup.done:
                    if stop is not None and stop.is_set():
                        raise BackupError("backup stopped: the server is shutting down")
                    started = time.perf_counter()
                    backup.step(step_pages)
                    steps.append(time.perf_counter() - started)
                    if progress is not None:
                        progress(backup.page_count - backup.remaining, backup.page_count)
                    if step_pause > 0 and not backup.done:
                        time.sleep(step_pause)
            # A backup is one self-contained file: no -wal beside it.
            fetch_all(dest_conn, "PRAGMA journal_mode=DELETE")
        finally:
            dest_conn.close()
        src.execute("COMMIT")
    finally:
        src.close()
    return steps


def _copy_vacuum(settings: StorageSettings, dest: Path, progress: Progress | None) -> list[float]:
    src = open_connection(settings, readonly=True)
    try:
        # One statement: the bar shows the pages to copy, then all of them copied.
        pages = int(fetch_all(src, "PRAGMA page_count")[0][0]) if progress is not None else 0
        if progress is not None:
            progress(0, pages)
        started = time.perf_counter()
        src.execute("VACUUM INTO ?", (str(dest),))
        if progress is not None:
            progress(pages, pages)
        return [time.perf_counter() - started]
    finally:
        src.close()


def take_backup(
    settings: StorageSettings,
    dest_dir: Path,
    *,
    method: str = "online",
    step_pages: int = 1024,
    step_pause: float = 0.0,
    stop: threading.Event | None = None,
    reason: str = "manual",
    progress: Progress | None = None,
) -> BackupResult:
    """Copy the database at `settings.path` into `dest_dir`, verify the copy,
    write its manifest. The copy is named `<db stem>-<UTC time>.db`; until it
    is verified it is `<name>.partial` and never counts as a backup.
    `progress` follows the copy in pages."""
    if method not in METHODS:
        raise BackupError(f"unknown backup method {method!r}; use one of {', '.join(METHODS)}")
    db_path = Path(settings.path)
    if not db_path.exists():
        raise BackupError(f"{db_path} does not exist")
    dest_dir = Path(dest_dir)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BackupError(f"cannot put backups in {dest_dir}: {error}") from None
    when = datetime.now(UTC)
    final = dest_dir / _backup_name(db_path, when)
    n = 1
    while final.exists() or manifest_path_for(final).exists():
        final = dest_dir / f"{final.stem.split('~')[0]}~{n}.db"
        n += 1
    partial = final.with_name(final.name + ".partial")
    started = time.perf_counter()
    try:
        if method == "online":
            steps = _copy_online(settings, partial, max(1, step_pages), step_pause, stop, progress)
        else:
            steps = _copy_vacuum(settings, partial, progress)
        facts = inspect_database(partial)
        fsync_file(partial)
        size = partial.stat().st_size
        checksum = sha256_file(partial)
        os.replace(partial, final)
        fsync_dir(dest_dir)
    except BaseException as error:
        for leftover in (partial, *sqlite_side_files(partial)):
            leftover.unlink(missing_ok=True)
        if isinstance(error, BackupError | apsw.Error | OSError):
            raise BackupError(f"backup of {db_path.name} failed: {error}") from error
        raise
    seconds = time.perf_counter() - started
    manifest = {
        "format": MANIFEST_FORMAT,
        "file": final.name,
        "source": db_path.name,
        "created_at": now_iso(),
        "reason": reason,
        "method": method,
        "sqlite_version": apsw.sqlite_lib_version(),
        "size_bytes": size,
        "sha256": checksum,
        "seconds": round(seconds, 4),
        "steps": len(steps),
        "step_pages": step_pages if method == "online" else None,
        "longest_step_seconds": round(max(steps, default=0.0), 6),
        **facts,
    }
    manifest_path = manifest_path_for(final)
    write_json_atomic(manifest_path, manifest)
    log.log(
        summary_level(progress),
        "backup %s verified: %d bytes, %d tables, schema %s, event cursor %s:%s, %.2f s in %d steps (longest %.1f ms)",
        final.name, size, len(facts["tables"]), facts["schema_version"], facts["event_cursor"]["epoch"],
        facts["event_cursor"]["seq"], seconds, len(steps), max(steps, default=0.0) * 1000,
    )
    return BackupResult(final, manifest_path, manifest, seconds, len(steps), max(steps, default=0.0), steps)


def read_manifest(backup: Path) -> dict[str, Any]:
    import json

    path = manifest_path_for(backup)
    if not path.exists():
        raise BackupError(f"{backup.name} has no manifest ({path.name}); it is not a verified backup")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise BackupError(f"{path.name} is not valid JSON: {error}") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise BackupError(f"{path.name} is not a cursor backup manifest")
    return data


def verify_backup(backup: Path, on_bytes: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Check a backup against its manifest: size, SHA-256, integrity_check,
    row counts per table, schema version. Returns the manifest. `on_bytes`
    hears of every block the checksum reads."""
    backup = Path(backup)
    if not backup.is_file():
        raise BackupError(f"{backup} does not exist")
    manifest = read_manifest(backup)
    size = backup.stat().st_size
    if size != manifest.get("size_bytes"):
        raise BackupError(f"{backup.name} is {size} bytes; its manifest says {manifest.get('size_bytes')}")
    checksum = sha256_file(backup, on_bytes=on_bytes)
    if checksum != manifest.get("sha256"):
        raise BackupError(f"{backup.name}: SHA-256 does not match the manifest (file changed or damaged)")
    facts = inspect_database(backup)
    if facts["tables"] != manifest.get("tables"):
        raise BackupError(f"{backup.name}: row counts differ from the manifest")
    if facts["schema_version"] != manifest.get("schema_version"):
        raise BackupError(f"{backup.name}: schema version differs from the manifest")
    return manifest


_BACKUP_NAME = re.compile(r"^(?P<stem>.+)-\d{8}T\d{9}Z(~\d+)?\.db$")


def list_backups(dest_dir: Path, db_stem: str) -> list[Path]:
    """Verified backups (with a manifest) of databases named `db_stem`, oldest first."""
    if not Path(dest_dir).is_dir():
        return []
    found = []
    for path in Path(dest_dir).iterdir():
        match = _BACKUP_NAME.match(path.name)
        if match and match.group("stem") == db_stem and manifest_path_for(path).exists():
            found.append(path)
    return sorted(found, key=lambda p: p.name)


def prune_backups(dest_dir: Path, db_stem: str, keep: int) -> list[Path]:
    """Delete all but the newest `keep` verified backups, and `.partial`
    leftovers of crashed runs older than an hour. Returns what was deleted."""
    removed: list[Path] = []
    if keep < 1:
        raise ValueError("keep must be at least 1")
    backups = list_backups(dest_dir, db_stem)
    for old in backups[: max(0, len(backups) - keep)]:
        manifest_path_for(old).unlink(missing_ok=True)
        old.unlink(missing_ok=True)
        removed.append(old)
    cutoff = time.time() - 3600
    for path in Path(dest_dir).glob(f"{db_stem}-*.db.partial"):
        if path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# --- restore ----------------------------------------------------------------------------


@dataclass
class RestoreResult:
    db_path: Path
    previous_kept_at: Path | None
    old_epoch: str | None
    new_epoch: str
    manifest: dict[str, Any]


def _refuse_if_open(db_path: Path) -> None:
    """Fail unless no connection anywhere has `db_path` open: an
    exclusive-locking-mode transaction needs every other connection gone.
    Also folds any WAL into the file, so what is moved aside is complete."""
    conn = apsw.Connection(str(db_path), flags=apsw.SQLITE_OPEN_READWRITE)
    try:
        conn.set_busy_timeout(200)
        try:
            fetch_all(conn, "PRAGMA wal_checkpoint(TRUNCATE)")
            fetch_all(conn, "PRAGMA locking_mode=EXCLUSIVE")
            conn.execute("BEGIN EXCLUSIVE")
            fetch_all(conn, "SELECT count(*) FROM sqlite_master")
            conn.execute("COMMIT")
        except apsw.BusyError:
            raise DatabaseInUse(
                f"{db_path} is open in another process (a server, an archive run or a shell); stop it first"
            ) from None
    finally:
        conn.close()


def _bytes_read(progress: Progress, total: int) -> Callable[[int], None]:
    done = 0

    def read(n: int) -> None:
        nonlocal done
        done += n
        progress(done, total)

    return read


def restore_backup(backup: Path, db_path: Path, progress: Progress | None = None) -> RestoreResult:
    """Put a verified backup in place at `db_path`.

    Refuses while a server holds `db_path` (its lock file) or any other
    connection has it open. Verifies the backup against its manifest, copies
    it beside the target, gives the copy a NEW event epoch (so consultant
    cursors from before the restore are recognised as another history), and
    swaps it in. An existing database is kept as `<name>.pre-restore-<time>`.
    `progress` follows the bytes read: the checksum, then the copy.
    """
    backup = Path(backup)
    db_path = Path(db_path)
    read = None
    if progress is not None and backup.is_file():
        read = _bytes_read(progress, 2 * backup.stat().st_size)
    manifest = verify_backup(backup, on_bytes=read)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with DatabaseLock(db_path).acquire_exclusive("restore"):
        if db_path.exists():
            _refuse_if_open(db_path)
        staging = db_path.with_name(db_path.name + ".restoring")
        for leftover in (staging, *sqlite_side_files(staging)):
            leftover.unlink(missing_ok=True)
        copy_file(backup, staging, on_bytes=read)
        conn = apsw.Connection(str(staging), flags=apsw.SQLITE_OPEN_READWRITE)
        try:
            conn.execute("BEGIN IMMEDIATE")
            has_meta = bool(fetch_all(conn,
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'cursor_meta'"))
            old_epoch = None
            if has_meta:
                found = fetch_all(conn, "SELECT value FROM cursor_meta WHERE key = 'event_epoch'")
                old_epoch = str(found[0][0]) if found else None
                new_epoch = str(conn.execute("SELECT lower(hex(randomblob(8)))").fetchall()[0][0])
                conn.executemany(
                    "INSERT INTO cursor_meta(key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    [("event_epoch", new_epoch), ("restored_at", now_iso()),
                     ("restored_from", backup.name), ("restored_from_epoch", old_epoch or "")],
                )
            else:
                new_epoch = ""
            conn.execute("COMMIT")
            problems = [str(r[0]) for r in fetch_all(conn, "PRAGMA quick_check")]
            if problems != ["ok"]:
                raise BackupError(f"the restored copy fails quick_check: {'; '.join(problems)}")
            fetch_all(conn, "PRAGMA journal_mode=WAL")
        finally:
            conn.close()
        fsync_file(staging)
        kept: Path | None = None
        if db_path.exists():
            stamp = datetime.now(UTC).strftime(_STAMP) + "Z"
            kept = db_path.with_name(f"{db_path.name}.pre-restore-{stamp}")
            os.replace(db_path, kept)
        # Side files of the old database must never meet the new one (a stale
        # -wal would be replayed into it).
        for side in sqlite_side_files(db_path):
            if side.exists():
                if kept is not None:
                    os.replace(side, kept.with_name(kept.name + side.name[len(db_path.name):]))
                else:
                    side.unlink()
        os.replace(staging, db_path)
        fsync_dir(db_path.parent)
    log.log(summary_level(progress), "restored %s into %s; event epoch %s -> %s", backup.name, db_path, old_epoch,
            new_epoch)
    return RestoreResult(db_path, kept, old_epoch, new_epoch, manifest)


__all__ = [
    "BackupError",
    "BackupResult",
    "DatabaseInUse",
    "RestoreResult",
    "inspect_database",
    "list_backups",
    "prune_backups",
    "read_manifest",
    "restore_backup",
    "take_backup",
    "verify_backup",
]
