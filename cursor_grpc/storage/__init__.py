"""The storage contract: records, the `Store`, `EventLog` and `Maintenance`
protocols, and the entry points that pick the backend from `CURSOR_DB`:
`open_store`, `migrate`, `require_current_schema`.

Everything above storage (services, live, auth, metrics, the app and the
command line) imports storage from here, never from a backend package;
nothing in here imports a backend at module level or anything above
storage. docs/storage.md describes the layers and what a backend must do.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

from cursor_grpc.config import ConfigError, StorageSettings
from cursor_grpc.storage.contract import (
    CommitListener,
    DatabaseInUse,
    DatabaseUnreachable,
    EventLog,
    Maintenance,
    MigrationError,
    Peers,
    Progress,
    StorageStats,
    Store,
)
from cursor_grpc.storage.records import (
    ALL_KINDS,
    ALL_RULES,
    KIND_ATTENTION,
    KIND_INTERACTION,
    KIND_MESSAGE,
    KIND_MESSAGE_READ,
    KIND_PRESENCE,
    KIND_STATE,
    SCOPE_INTERACTIONS,
    SCOPE_STATE,
    SCOPES,
    SYSTEM,
    Actor,
    AssignmentRecord,
    AttentionRecord,
    AuditQuery,
    AuditRecord,
    ConsentRecord,
    ConsultantRecord,
    Credential,
    Event,
    Evented,
    EventFilter,
    GrantOutcome,
    HistoryPage,
    InteractionRecord,
    MessageRecord,
    NewInteractionData,
    ReaderRecord,
    ReaderStateRecord,
    ReaderUpdateRecord,
    ReadPosition,
    RecordOutcome,
    SessionRecord,
)

# `scheme://…` at the start of `CURSOR_DB`. A Path folds `//` into `/`, so
# `scheme:/…` counts too; one-letter schemes would be Windows drives.
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/+(.*)$", re.S)
# Schemes `CURSOR_DB` may name; a plain path is a SQLite file.
_SCHEMES = ("sqlite", "postgresql", "postgres")


def backend_name(settings: StorageSettings) -> str:
    """The backend `settings.path` names: a path is SQLite, `sqlite:///path`
    too; an unknown `scheme://` is refused in one line (ConfigError), which
    names only the scheme: the rest may hold a password."""
    found = _URL.match(settings.url or str(settings.path))
    if found is None:
        return "sqlite"
    scheme = found.group(1).lower()
    if scheme in _SCHEMES:
        return "postgresql" if scheme == "postgres" else scheme
    raise ConfigError(
        f"the database {scheme}://… names an unknown backend {scheme!r}; "
        "give a SQLite file path (e.g. var/cursor.db), sqlite:///path/to/file.db "
        "or postgresql://host/dbname"
    )


def resolved(settings: StorageSettings) -> StorageSettings:
    """`settings` with `CURSOR_DB` as its backend opens it: `sqlite:///srv/c.db`
    becomes the path /srv/c.db, a plain path stays; an unknown scheme is a
    ConfigError."""
    if backend_name(settings) == "postgresql":
        return settings
    found = _URL.match(settings.url or str(settings.path))
    if found is None:
        return settings
    return dataclasses.replace(settings, path=Path("/" + found.group(2)), url=None)


def open_store(settings: StorageSettings, *, owner: bool = False) -> Store:
    """The store for `settings`, from the backend its path names. With
    `owner` (a server), the store holds the database for itself while open:
    a second owner is refused with DatabaseInUse."""
    settings = resolved(settings)
    if backend_name(settings) == "postgresql":
        from cursor_grpc.storage.postgres.store import PostgresStore

        return PostgresStore(settings, owner=owner)
    from cursor_grpc.storage.sqlite.store import SQLiteStore

    if settings.broker:
        logging.getLogger("cursor.storage").warning(
            "CURSOR_BROKER is set, but a SQLite database has one server: the broker is not used")
    return SQLiteStore(settings, owner=owner)


def migrate(settings: StorageSettings, *, purpose: str = "migrate", progress: Progress | None = None) -> list[str]:
    """Apply pending migrations, holding the database for `purpose` ("migrate",
    or "serve" for `serve --migrate`) so they never run beneath a server.
    Returns the names applied; `progress` counts them."""
    settings = resolved(settings)
    if backend_name(settings) == "postgresql":
        from cursor_grpc.storage.postgres.store import migrate_database as migrate_postgres

        return migrate_postgres(settings, purpose, progress)
    from cursor_grpc.storage.sqlite.store import migrate_database

    return migrate_database(settings, purpose, progress)


def require_current_schema(settings: StorageSettings) -> None:
    """Refuse with MigrationError a database that is missing, not migrated,
    or not at this version's schema, without creating or changing it."""
    settings = resolved(settings)
    if backend_name(settings) == "postgresql":
        from cursor_grpc.storage.postgres.store import require_current_schema as require_postgres_schema

        require_postgres_schema(settings)
        return
    from cursor_grpc.storage.sqlite.store import require_current_schema as require_sqlite_schema

    require_sqlite_schema(settings)


__all__ = [
    "ALL_KINDS", "ALL_RULES", "KIND_ATTENTION", "KIND_INTERACTION", "KIND_MESSAGE", "KIND_MESSAGE_READ",
    "KIND_PRESENCE", "KIND_STATE", "SCOPES", "SCOPE_INTERACTIONS", "SCOPE_STATE", "SYSTEM", "Actor",
    "AssignmentRecord", "AttentionRecord", "AuditQuery", "AuditRecord", "CommitListener", "ConsentRecord",
    "ConsultantRecord", "Credential", "DatabaseInUse", "DatabaseUnreachable", "Event", "EventFilter", "EventLog",
    "Evented", "GrantOutcome", "HistoryPage", "InteractionRecord", "Maintenance", "MessageRecord", "MigrationError",
    "NewInteractionData", "Peers", "Progress", "ReadPosition", "ReaderRecord", "ReaderStateRecord",
    "ReaderUpdateRecord", "RecordOutcome", "SessionRecord", "StorageStats", "Store", "backend_name", "migrate",
    "open_store", "require_current_schema", "resolved",
]
