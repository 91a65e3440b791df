"""`cursor-grpc`: serve, migrate, create-admin, backup, restore, archive.

Every setting has a default, an environment variable (`CURSOR_LISTEN`,
`CURSOR_DB`, `CURSOR_<FIELD>`) and, for the common ones, a flag; flags win.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import logging
import os
import sys
from pathlib import Path

from cursor_grpc.config import Settings, settings_from_env


def _configure_logging(level: str, fmt: str = "text") -> None:
    from cursor_grpc.logging_setup import configure

    configure(level, fmt)


def _settings(args: argparse.Namespace) -> Settings:
    from cursor_grpc.storage import resolved

    settings = settings_from_env()
    storage = settings.storage
    if args.db is not None:
        storage = dataclasses.replace(storage, path=args.db)
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
    return cmd_migrate(settings, args, lambda: storage.migrate(settings.storage))


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cursor-grpc", description="Cursor gRPC service")
    parser.add_argument("--log-level", default=os.environ.get("CURSOR_LOG_LEVEL", "INFO"))
    parser.add_argument("--log-format", choices=["text", "json"], default=os.environ.get("CURSOR_LOG_FORMAT", "text"),
                        help="text (default) or json: one JSON object per line (env CURSOR_LOG_FORMAT)")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_db(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--db", type=Path, help="SQLite file (env CURSOR_DB, default var/cursor.db)")
        return sub

    serve = with_db(commands.add_parser("serve", help="run the gRPC server"))
    serve.add_argument("--listen", help="host:port (env CURSOR_LISTEN, default 127.0.0.1:50051; port 0 picks one)")
    serve.add_argument("--synchronous", choices=["NORMAL", "FULL"], help="SQLite synchronous level")
    serve.add_argument("--cache-size-kib", type=int, help="SQLite page cache per connection, KiB")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain (with --tls-key)")
    serve.add_argument("--tls-key", type=Path, help="PEM private key")
    serve.add_argument("--grace", type=float, help="seconds in-flight RPCs get at shutdown (default 10)")
    serve.add_argument("--migrate", action="store_true", help="apply pending migrations before serving")
    serve.add_argument("--log-format", choices=["text", "json"], default=argparse.SUPPRESS,
                       help="text or json (also accepted before the command)")
    from cursor_grpc.ops.commands import add_commands, add_migrate_flags, add_serve_flags

    add_serve_flags(serve)
    serve.set_defaults(func=_cmd_serve)

    migrate = with_db(commands.add_parser("migrate", help="apply pending schema migrations"))
    add_migrate_flags(migrate)
    migrate.set_defaults(func=_cmd_migrate)

    admin = with_db(commands.add_parser(
        "create-admin", help="create the first admin (password from CURSOR_ADMIN_PASSWORD or a prompt)"
    ))
    admin.add_argument("--email", required=True)
    admin.add_argument("--display-name", default="Administrator")
    admin.add_argument("--additional", action="store_true", help="allow it when an admin exists already")
    admin.set_defaults(func=_cmd_create_admin)

    add_commands(commands, with_db, _settings)

    watch = commands.add_parser(
        "watch", help="live view of active readers for a consultant (password from CURSOR_PASSWORD or a prompt)"
    )
    watch.add_argument("--server", default=os.environ.get("CURSOR_SERVER", "127.0.0.1:50051"), help="host:port")
    watch.add_argument("--email", required=True, help="the consultant's sign-in email")
    watch.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --ca-file)")
    watch.add_argument("--ca-file", type=Path, help="PEM CA certificates to trust (implies --tls)")
    watch.add_argument("--once", action="store_true", help="print one frame once the snapshot is in, then exit")
    watch.add_argument("--duration", type=float, metavar="SECONDS", help="watch this long, print the last frame, exit")
    watch.add_argument("--width", type=int, default=120, help="columns of the printed frame (--once/--duration)")
    watch.add_argument("--height", type=int, default=40, help="lines of the printed frame (--once/--duration)")
    watch.set_defaults(func=_cmd_watch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level, args.log_format)
    from cursor_grpc.config import ConfigError
    from cursor_grpc.storage import DatabaseInUse, MigrationError

    try:
        return int(args.func(args))
    except MigrationError as error:
        print(f"cursor-grpc: {error}", file=sys.stderr)
        return 3
    except (ConfigError, DatabaseInUse) as error:
        print(f"cursor-grpc: {error}", file=sys.stderr)
        return 2
