"""`cursor-grpc`: serve, migrate, create-admin, backup, restore, archive, watch.

Every setting has a default, an environment variable (`CURSOR_LISTEN`,
`CURSOR_DB`, `CURSOR_<FIELD>`) and, for the common ones, a flag; flags win.
Every command that opens the database takes it from `--db`, else
`CURSOR_DB`, else var/cursor.db, and `--help` says so for every option.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import importlib.metadata
import logging
import os
import sys
from pathlib import Path

from cursor_grpc.config import (
    DEFAULT_DB,
    DEFAULT_LISTEN,
    Settings,
    StorageSettings,
    database_fields,
    settings_from_env,
)


def _configure_logging(level: str, fmt: str = "text") -> None:
    from cursor_grpc.logging_setup import configure

    configure(level, fmt)


def _settings(args: argparse.Namespace) -> Settings:
    from cursor_grpc.storage import resolved

    settings = settings_from_env()
    storage = settings.storage
    if args.db is not None:
        storage = dataclasses.replace(storage, **database_fields(args.db))  # type: ignore[arg-type]
    # Every command sees the database as its backend opens it (a plain path for SQLite).
    storage = resolved(storage)
    if getattr(args, "synchronous", None):
        storage = dataclasses.replace(storage, synchronous=args.synchronous)
    if getattr(args, "cache_size_kib", None):
        storage = dataclasses.replace(storage, cache_size_kib=args.cache_size_kib)
    settings = dataclasses.replace(settings, storage=storage)
    if getattr(args, "listen", None):
        settings = dataclasses.replace(settings, listen=args.listen)
    if getattr(args, "tls_cert", None):
        settings = dataclasses.replace(settings, tls_cert=args.tls_cert, tls_key=args.tls_key)
    if getattr(args, "grace", None) is not None:
        settings = dataclasses.replace(settings, grace_seconds=args.grace)
    from cursor_grpc.ops.commands import apply_flags

    return apply_flags(settings, args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from cursor_grpc import storage
    from cursor_grpc.server import serve_forever

    settings = _settings(args)
    if bool(settings.tls_cert) != bool(settings.tls_key):
        print("--tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if settings.ops.metrics_listen:
        from cursor_grpc.metrics import parse_listen

        # A refused address stops the command before anything opens or listens.
        parse_listen(settings.ops.metrics_listen)
    if args.migrate:
        for name in storage.migrate(settings.storage, purpose="serve"):
            logging.getLogger("cursor.migrate").info("applied %s", name)
    else:
        # Before anything opens (and so creates) the database for writing.
        storage.require_current_schema(settings.storage)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - optional speed-up
        asyncio.run(serve_forever(settings))
    else:
        uvloop.run(serve_forever(settings))
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from cursor_grpc import storage
    from cursor_grpc.ops.commands import cmd_migrate

    settings = _settings(args)
    # --status / --dry-run change nothing; applying takes a verified backup
    # of a non-empty database first unless --no-backup, and refuses while a
    # server holds the database.
    return cmd_migrate(settings, args, lambda progress: storage.migrate(settings.storage, progress=progress))


def _admin_password() -> str:
    from_env = os.environ.get("CURSOR_ADMIN_PASSWORD")
    if from_env:
        return from_env
    if not sys.stdin.isatty():
        raise SystemExit("set CURSOR_ADMIN_PASSWORD or run in a terminal to be asked for the password")
    first = getpass.getpass("Password for the new admin: ")
    if first != getpass.getpass("Repeat it: "):
        raise SystemExit("the passwords differ")
    return first


def _cmd_create_admin(args: argparse.Namespace) -> int:
    from cursor_grpc import storage, validation
    from cursor_grpc.auth.passwords import Passwords, check_password_rules
    from cursor_grpc.errors import CursorError

    settings = _settings(args)
    storage.require_current_schema(settings.storage)
    try:
        email = validation.email(args.email)
        name = validation.display_name(args.display_name)
        password = _admin_password()
        check_password_rules(password)
    except CursorError as error:
        print(error.message, file=sys.stderr)
        return 2
    passwords = Passwords(settings.auth, workers=1)
    password_hash = passwords.hash_sync(password)
    passwords.close()
    store = storage.open_store(settings.storage)
    try:
        admin = asyncio.run(store.create_admin(email, password_hash, name, additional=args.additional))
    except CursorError as error:
        if error.reason == "ADMIN_EXISTS":
            print(f"{error.message}; use AdminService.CreateConsultant, or pass --additional", file=sys.stderr)
        else:
            print(error.message, file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"created admin consultants/{admin.id} <{email}>")
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    from cursor_grpc.watch_view import run_watch_command

    return run_watch_command(args)


def _version() -> str:
    try:
        return importlib.metadata.version("cursor-grpc")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a tree never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    from cursor_grpc.ops.commands import add_commands, add_migrate_flags, add_serve_flags, described

    parser = argparse.ArgumentParser(prog="cursor-grpc", description="Cursor gRPC service")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--log-level", metavar="LEVEL", default=os.environ.get("CURSOR_LOG_LEVEL", "INFO"),
                        help=described("DEBUG, INFO, WARNING or ERROR", "INFO", "CURSOR_LOG_LEVEL"))
    log_format = "text, or json: one JSON object per line"
    parser.add_argument("--log-format", choices=["text", "json"], default=os.environ.get("CURSOR_LOG_FORMAT", "text"),
                        help=described(log_format, "text", "CURSOR_LOG_FORMAT"))
    commands = parser.add_subparsers(dest="command", required=True)

    def with_db(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--db", metavar="PATH|URL", help=described(
            "the SQLite file, or postgresql://… for PostgreSQL", DEFAULT_DB, "CURSOR_DB"))
        return sub

    defaults = StorageSettings()
    serve = with_db(commands.add_parser("serve", help="run the gRPC server"))
    serve.add_argument("--listen", metavar="HOST:PORT",
                       help=described("where to serve; port 0 picks one", DEFAULT_LISTEN, "CURSOR_LISTEN"))
    serve.add_argument("--synchronous", choices=["NORMAL", "FULL"],
                       help=described("SQLite synchronous level", defaults.synchronous, "CURSOR_SYNCHRONOUS"))
    serve.add_argument("--cache-size-kib", type=int, metavar="KIB",
                       help=described("SQLite page cache per connection, KiB", defaults.cache_size_kib,
                                      "CURSOR_CACHE_SIZE_KIB"))
    serve.add_argument("--tls-cert", type=Path, metavar="PEM",
                       help=described("certificate chain; needs --tls-key", "off: plaintext", "CURSOR_TLS_CERT"))
    serve.add_argument("--tls-key", type=Path, metavar="PEM",
                       help=described("private key; needs --tls-cert", "off: plaintext", "CURSOR_TLS_KEY"))
    serve.add_argument("--grace", type=float, metavar="SECONDS",
                       help=described("seconds in-flight RPCs get at shutdown", f"{Settings().grace_seconds:g}"))
    serve.add_argument("--migrate", action="store_true", help="apply pending migrations before serving")
    serve.add_argument("--log-format", choices=["text", "json"], default=argparse.SUPPRESS,
                       help=described(f"{log_format}; also accepted before the command", "text", "CURSOR_LOG_FORMAT"))

    add_serve_flags(serve)
    serve.set_defaults(func=_cmd_serve)

    migrate = with_db(commands.add_parser("migrate", help="apply pending schema migrations"))
    add_migrate_flags(migrate)
    migrate.set_defaults(func=_cmd_migrate)

    admin = with_db(commands.add_parser(
        "create-admin", help="create the first admin (password from CURSOR_ADMIN_PASSWORD or a prompt)",
        description="Create the first admin consultant in the database. The password comes from "
                    "CURSOR_ADMIN_PASSWORD, else a prompt on a terminal; never from a flag.",
    ))
    admin.add_argument("--email", required=True, help="the admin's sign-in email (required)")
    admin.add_argument("--display-name", default="Administrator", metavar="NAME",
                       help=described("the name others see", "Administrator"))
    admin.add_argument("--additional", action="store_true", help="allow it when an admin exists already")
    admin.set_defaults(func=_cmd_create_admin)

    add_commands(commands, with_db, _settings)

    watch = commands.add_parser(
        "watch", help="the consultant terminal: readers needing attention first, reply, mark read, take signals "
                      "(password from CURSOR_PASSWORD or a prompt; keys: docs/terminal.md)"
    )
    watch.add_argument("--server", default=os.environ.get("CURSOR_SERVER", DEFAULT_LISTEN), metavar="HOST:PORT",
                       help=described("the server", DEFAULT_LISTEN, "CURSOR_SERVER"))
    watch.add_argument("--email", required=True, help="the consultant's sign-in email (required)")
    watch.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --ca-file)")
    watch.add_argument("--ca-file", type=Path, metavar="PEM",
                       help=described("CA certificates to trust; implies --tls", "the system's roots"))
    watch.add_argument("--mine", action="store_true",
                       help="start with only the readers assigned to me (the f key toggles it)")
    watch.add_argument("--once", action="store_true", help="print one frame once the snapshot is in, then exit")
    watch.add_argument("--duration", type=float, metavar="SECONDS",
                       help=described("watch this long, print the last frame, exit", "full screen until Ctrl-C"))
    watch.add_argument("--width", type=int, default=120, metavar="COLUMNS",
                       help=described("columns of the frame --once and --duration print", 120))
    watch.add_argument("--height", type=int, default=40, metavar="LINES",
                       help=described("lines of the frame --once and --duration print", 40))
    watch.set_defaults(func=_cmd_watch)
    return parser


def _default_db_note(args: argparse.Namespace) -> str:
    """When a command fell back on the default database, say so: the one a
    server uses may be another (`CURSOR_DB=… make serve`)."""
    if "db" not in args or args.db is not None or "CURSOR_DB" in os.environ:
        return ""
    return f" ({DEFAULT_DB} is the default: for the database a server uses, pass its --db or set CURSOR_DB)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level, args.log_format)
    from cursor_grpc.config import ConfigError
    from cursor_grpc.storage import DatabaseInUse, DatabaseUnreachable, MigrationError

    try:
        return int(args.func(args))
    except MigrationError as error:
        print(f"cursor-grpc: {error}{_default_db_note(args)}", file=sys.stderr)
        return 3
    except (ConfigError, DatabaseInUse, DatabaseUnreachable) as error:
        print(f"cursor-grpc: {error}", file=sys.stderr)
        return 2
