"""The operations side of `cursor-grpc`: `backup`, `restore`, `archive`,
`copy` (SQLite to PostgreSQL, cursor_grpc/ops/copy.py),
`migrate --status/--dry-run` (with the automatic pre-migration backup), and
the scheduling flags of `serve`. cli.py wires them in. Each long run shows
its progress (cursor_grpc/ops/progress.py), then prints one summary."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

from cursor_grpc.config import OpsSettings, Settings, parse_duration
from cursor_grpc.ops.progress import BYTES, progress
from cursor_grpc.storage import MigrationError, Progress

OPS = OpsSettings()
METHODS_HINT = "online: SQLite's backup API in steps from one read snapshot; vacuum: VACUUM INTO, a compacted copy"
BESIDE = "beside the database"


def described(text: str, default: object, env: str | None = None) -> str:
    """`text (env X; default D)`: every option's help says where its value
    comes from when the flag is not given."""
    where = f"env {env}; " if env else ""
    return f"{text} ({where}default {default})".replace("%", "%%")


def require_sqlite(settings: Settings, command: str) -> None:
    """Backups, restores and archives are of SQLite files; a PostgreSQL
    database has its own tools for them, and says so in one line."""
    from cursor_grpc.config import ConfigError
    from cursor_grpc.storage import backend_name

    if backend_name(settings.storage) != "sqlite":
        raise ConfigError(
            f"`cursor-grpc {command}` works on a SQLite file; back up and maintain a PostgreSQL database with "
            "its own tools (pg_dump, base backups, autovacuum): docs/scaling.md"
        )


def require_database(settings: Settings, verb: str) -> None:
    """The database file a command reads must exist: naming the path it
    looked at tells a wrong --db or CURSOR_DB at once."""
    require_sqlite(settings, {"back up": "backup"}.get(verb, verb))
    path = Path(settings.storage.path)
    if not path.exists():
        raise MigrationError(f"{path} does not exist; there is no database there to {verb}")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_serve_flags(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("operations (docs/operations.md)")
    group.add_argument("--metrics-listen", metavar="HOST:PORT",
                       help=described("Prometheus metrics on this loopback address", "off", "CURSOR_METRICS_LISTEN"))
    group.add_argument("--backup-every", type=_duration, metavar="DURATION",
                       help=described("take a verified backup this often, e.g. 1h", "off", "CURSOR_BACKUP_EVERY"))
    group.add_argument("--backup-dir", type=Path, metavar="DIR",
                       help=described("where backups go", f"backups/ {BESIDE}", "CURSOR_BACKUP_DIR"))
    group.add_argument("--keep", type=int, metavar="N",
                       help=described("verified backups to keep", OPS.backup_keep, "CURSOR_BACKUP_KEEP"))
    group.add_argument("--backup-method", choices=["online", "vacuum"],
                       help=described(METHODS_HINT, OPS.backup_method, "CURSOR_BACKUP_METHOD"))
    group.add_argument("--archive-every", type=_duration, metavar="DURATION",
                       help=described("move old interactions to archive files this often, e.g. 1d", "off",
                                      "CURSOR_ARCHIVE_EVERY"))
    group.add_argument("--archive-dir", type=Path, metavar="DIR",
                       help=described("archive files", f"archive/ {BESIDE}", "CURSOR_ARCHIVE_DIR"))
    group.add_argument("--retention-days", type=float, metavar="DAYS",
                       help=described("interactions older than this are archived", f"{OPS.archive_retention_days:g}",
                                      "CURSOR_ARCHIVE_RETENTION_DAYS"))


def apply_flags(settings: Settings, args: argparse.Namespace) -> Settings:
    """Flags of `serve`, `backup`, `archive` and `migrate` over env and defaults."""
    mapping = {
        "metrics_listen": "metrics_listen",
        "backup_every": "backup_every",
        "backup_dir": "backup_dir",
        "keep": "backup_keep",
        "backup_method": "backup_method",
        "archive_every": "archive_every",
        "archive_dir": "archive_dir",
        "retention_days": "archive_retention_days",
        "chunk_rows": "archive_chunk_rows",
        "step_pages": "backup_step_pages",
    }
    changes = {field: getattr(args, flag) for flag, field in mapping.items() if getattr(args, flag, None) is not None}
    if not changes:
        return settings
    return dataclasses.replace(settings, ops=dataclasses.replace(settings.ops, **changes))


def _backup_dir(settings: Settings) -> Path:
    from cursor_grpc.storage.sqlite.files import default_dir

    return default_dir(Path(settings.storage.path), settings.ops.backup_dir, "backups")


def cmd_backup(settings: Settings) -> int:
    from cursor_grpc import metrics
    from cursor_grpc.storage.sqlite.backup import BackupError, prune_backups, take_backup

    require_database(settings, "back up")
    metrics.BACKUP_RUNS.inc()
    target = _backup_dir(settings)
    try:
        with progress("backup", "pages") as report:
            result = take_backup(settings.storage, target, method=settings.ops.backup_method,
                                 step_pages=settings.ops.backup_step_pages, progress=report)
    except BackupError as error:
        metrics.BACKUP_FAILURES.inc()
        print(f"cursor-grpc backup: {error}", file=sys.stderr)
        return 1
    m = result.manifest
    print(f"backup {result.path}")
    print(f"  verified: integrity_check ok, {sum(m['tables'].values())} rows in {len(m['tables'])} tables, "
          f"schema {m['schema_version']}, event cursor {m['event_cursor']['epoch']}:{m['event_cursor']['seq']}")
    print(f"  {m['size_bytes']} bytes, sha256 {m['sha256']}")
    print(f"  {result.seconds:.2f} s, {result.steps} step(s), longest step {result.longest_step_seconds * 1000:.1f} ms "
          "(the writer is never blocked by a step; see docs/operations.md)")
    print(f"  manifest {result.manifest_path}")
    if settings.ops.backup_keep > 0:
        removed = prune_backups(target, Path(settings.storage.path).stem, max(1, settings.ops.backup_keep))
        for path in removed:
            print(f"  removed old backup {path.name} (keep {settings.ops.backup_keep})")
    return 0


def cmd_restore(backup: Path, settings: Settings) -> int:
    from cursor_grpc.storage import DatabaseInUse
    from cursor_grpc.storage.sqlite.backup import BackupError, restore_backup
    from cursor_grpc.storage.sqlite.migrations import load_migrations, migrate_hint

    require_sqlite(settings, "restore")
    try:
        with progress("restore", BYTES) as report:
            result = restore_backup(backup, Path(settings.storage.path), progress=report)
    except (BackupError, DatabaseInUse) as error:
        print(f"cursor-grpc restore: {error}", file=sys.stderr)
        return 1
    print(f"restored {backup} into {result.db_path}")
    print(f"  verified against its manifest: {sum(result.manifest['tables'].values())} rows, "
          f"schema {result.manifest['schema_version']}")
    print(f"  event epoch {result.old_epoch} -> {result.new_epoch} "
          "(consultant cursors from before the restore are recognised as another history)")
    if result.previous_kept_at is not None:
        print(f"  the database that was there is kept as {result.previous_kept_at}")
    latest = load_migrations()[-1].name
    if result.manifest.get("schema_version") != latest:
        print(f"  schema {result.manifest.get('schema_version')} is older than {latest}: "
              f"{migrate_hint(result.db_path)}")
    return 0


def cmd_archive(settings: Settings) -> int:
    from cursor_grpc import metrics
    from cursor_grpc.storage.sqlite.archive import ArchiveError
    from cursor_grpc.storage.sqlite.files import default_dir
    from cursor_grpc.storage.sqlite.store import SQLiteStore

    require_database(settings, "archive")
    target = default_dir(Path(settings.storage.path), settings.ops.archive_dir, "archive")
    days = settings.ops.archive_retention_days
    metrics.ARCHIVE_RUNS.inc()
    store = SQLiteStore(settings.storage)
    try:
        with progress("archive", "rows") as report:
            stats = store.archive(target, retention_days=days, chunk_rows=settings.ops.archive_chunk_rows,
                                  progress=report)
    except (ArchiveError, OSError) as error:
        metrics.ARCHIVE_FAILURES.inc()
        print(f"cursor-grpc archive: {error}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if not stats.rows_moved:
        print(f"nothing to archive: no interactions older than {days:g} days")
        return 0
    print(f"archived {stats.rows_moved} interactions older than {days:g} days "
          f"in {stats.chunks} chunk(s) into {', '.join(sorted(stats.files))}")
    print(f"  {stats.seconds:.2f} s; longest write task {stats.longest_write_seconds * 1000:.1f} ms "
          f"(the writer is blocked for one chunk at a time)")
    return 0


def cmd_migrate(settings: Settings, args: argparse.Namespace,
                apply: Callable[[Progress], list[str]]) -> int:
    """`apply(progress)` migrates the database (cli.py passes the storage
    contract's `migrate`)."""
    from cursor_grpc.storage import backend_name

    if backend_name(settings.storage) == "postgresql":
        return _migrate_postgres(settings, args, apply)
    from cursor_grpc.storage.sqlite.migrations import has_tables, load_migrations, pending_of, status_of

    path = Path(settings.storage.path)
    known = load_migrations()
    if args.status or args.dry_run:
        report = status_of(settings.storage, known)
        if args.status:
            return _print_status(str(path), report)
        by_name = {m.name: m for m in known}
        if report["unknown"] or report["modified"]:
            print(f"{path}: the ledger does not match this version; `migrate --status` shows how", file=sys.stderr)
            return 3
        if not report["pending"]:
            print(f"{path}: schema is up to date; nothing would run")
            return 0
        print(f"{path}: would apply {len(report['pending'])} migration(s), in this order"
              f"{' after a verified backup' if has_tables(path) and not args.no_backup else ''}:")
        for name, _ in report["pending"]:
            print(f"\n== {name}\n{by_name[name].describe()}")
        return 0
    # Apply, with a verified backup first when there is something to lose.
    if not args.no_backup and has_tables(path) and pending_of(settings.storage, known):
        from cursor_grpc.storage.sqlite.backup import BackupError, take_backup

        try:
            with progress("backup", "pages") as shown:
                result = take_backup(settings.storage, _backup_dir(settings), method=settings.ops.backup_method,
                                     reason="pre-migration", progress=shown)
        except BackupError as error:
            print(f"cursor-grpc migrate: no verified backup, so nothing was migrated: {error} "
                  "(pass --no-backup to migrate without one)", file=sys.stderr)
            return 1
        print(f"backup before migrating: {result.path} (verified)")
    with progress("migrate", "migrations") as shown:
        applied = apply(shown)
    if applied:
        for name in applied:
            print(f"applied {name}")
    else:
        print(f"{path}: schema is up to date")
    return 0


def _print_status(where: str, report: dict[str, list[tuple[str, str]]]) -> int:
    """`migrate --status`: the ledger against this version's files."""
    print(f"{where}: {len(report['applied'])} applied, {len(report['pending'])} pending")
    for name, at in report["applied"]:
        print(f"  applied  {name}  {at}")
    for name, _ in report["pending"]:
        print(f"  pending  {name}")
    for name, at in report["unknown"]:
        print(f"  UNKNOWN  {name}  {at}  (applied by a newer version)")
    for name, at in report["modified"]:
        print(f"  MODIFIED {name}  {at}  (file changed after it was applied)")
    return 0


def _migrate_postgres(settings: Settings, args: argparse.Namespace,
                      apply: Callable[[Progress], list[str]]) -> int:
    """`migrate` on PostgreSQL: the same ledger, `--status` and `--dry-run`;
    no automatic backup (that is pg_dump's, before you migrate)."""
    from cursor_grpc.storage.postgres import migrations
    from cursor_grpc.storage.postgres.store import connect_command

    url = settings.storage.url or ""
    where = migrations.describe_url(url)
    if args.status or args.dry_run:
        known = migrations.load_migrations()
        with connect_command(url) as conn:
            report = migrations.status(conn, known)
        if args.status:
            return _print_status(where, report)
        if report["unknown"] or report["modified"]:
            print(f"{where}: the ledger does not match this version; `migrate --status` shows how", file=sys.stderr)
            return 3
        by_name = {m.name: m for m in known}
        if not report["pending"]:
            print(f"{where}: schema is up to date; nothing would run")
            return 0
        print(f"{where}: would apply {len(report['pending'])} migration(s), in this order:")
        for name, _ in report["pending"]:
            print(f"\n== {name}\n{by_name[name].describe()}")
        return 0
    with progress("migrate", "migrations") as shown:
        applied = apply(shown)
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print(f"{where}: schema is up to date")
    return 0


def add_commands(commands: argparse._SubParsersAction,  # type: ignore[type-arg]
                 with_db: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
                 settings_of: Callable[[argparse.Namespace], Settings]) -> None:
    """`backup`, `restore`, `archive`, `copy`."""
    backup = with_db(commands.add_parser("backup", help="take a verified online backup of the database"))
    backup.add_argument("--backup-dir", type=Path, metavar="DIR",
                        help=described("where it goes", f"backups/ {BESIDE}", "CURSOR_BACKUP_DIR"))
    backup.add_argument("--method", dest="backup_method", choices=["online", "vacuum"],
                        help=described(METHODS_HINT, OPS.backup_method, "CURSOR_BACKUP_METHOD"))
    backup.add_argument("--keep", type=int, metavar="N",
                        help=described("then delete all but the newest N verified backups", "keep them all",
                                       "CURSOR_BACKUP_KEEP"))
    backup.add_argument("--step-pages", type=int, metavar="N",
                        help=described("pages copied per backup step", OPS.backup_step_pages,
                                       "CURSOR_BACKUP_STEP_PAGES"))
    backup.set_defaults(func=lambda args: cmd_backup(_without_default_keep(settings_of(args), args)))

    restore = with_db(commands.add_parser(
        "restore", help="restore a verified backup into the database (refused while a server holds it)"))
    restore.add_argument("backup", type=Path, help="the backup file (its .manifest.json must be beside it)")
    restore.set_defaults(func=lambda args: cmd_restore(args.backup, settings_of(args)))

    archive = with_db(commands.add_parser("archive", help="move old interactions into quarterly archive files"))
    archive.add_argument("--archive-dir", type=Path, metavar="DIR",
                         help=described("archive files", f"archive/ {BESIDE}", "CURSOR_ARCHIVE_DIR"))
    archive.add_argument("--retention-days", type=float, metavar="DAYS",
                         help=described("archive interactions older than this", f"{OPS.archive_retention_days:g}",
                                        "CURSOR_ARCHIVE_RETENTION_DAYS"))
    archive.add_argument("--chunk-rows", type=int, metavar="N",
                         help=described("rows moved per write task", OPS.archive_chunk_rows,
                                        "CURSOR_ARCHIVE_CHUNK_ROWS"))
    archive.set_defaults(func=lambda args: cmd_archive(settings_of(args)))

    copy = commands.add_parser(
        "copy", help="copy a SQLite deployment into an empty PostgreSQL database (the source is only read)",
        description="Copy every table of a SQLite database, and by default its archived interactions, into an "
                    "empty PostgreSQL database in one transaction, verified before it commits. Consultant cursors "
                    "taken before the move resume after it. Stop the server on the SQLite file first.")
    copy.add_argument("--from", dest="source", required=True, metavar="PATH",
                      help="the SQLite database file to copy, opened read-only and never changed (required)")
    copy.add_argument("--to", dest="target", required=True, metavar="URL",
                      help="the PostgreSQL database, postgresql://…: migrated here if it is not yet, "
                           "and it must hold no data (required)")
    where = copy.add_mutually_exclusive_group()
    where.add_argument("--archives", type=Path, metavar="DIR",
                       help=described("where the archive files are", f"where archive_index says: archive/ {BESIDE}",
                                      "CURSOR_ARCHIVE_DIR"))
    where.add_argument("--no-archives", action="store_true",
                       help="copy only the main database: the archived interactions stay in their files, "
                            "archive_index and the history floor are kept")
    copy.set_defaults(func=_copy)


def _copy(args: argparse.Namespace) -> int:
    from cursor_grpc.ops.copy import cmd_copy

    return cmd_copy(args)


def _without_default_keep(settings: Settings, args: argparse.Namespace) -> Settings:
    """`backup` prunes only when --keep (or CURSOR_BACKUP_KEEP) is given."""
    import os

    if args.keep is None and "CURSOR_BACKUP_KEEP" not in os.environ:
        return dataclasses.replace(settings, ops=dataclasses.replace(settings.ops, backup_keep=0))
    return settings


def add_migrate_flags(migrate: argparse.ArgumentParser) -> None:
    mode = migrate.add_mutually_exclusive_group()
    mode.add_argument("--status", action="store_true", help="list applied and pending migrations, change nothing")
    mode.add_argument("--dry-run", action="store_true", help="show what would run, change nothing")
    migrate.add_argument("--no-backup", action="store_true",
                         help="skip the verified backup otherwise taken before migrating a non-empty database")
    migrate.add_argument("--backup-dir", type=Path, metavar="DIR",
                         help=described("where that backup goes", f"backups/ {BESIDE}", "CURSOR_BACKUP_DIR"))
