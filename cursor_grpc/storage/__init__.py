"""The storage contract: records, the `Store`, `EventLog` and `Maintenance`
protocols, and `open_store`, which picks the backend from `CURSOR_DB`.

Everything above storage (services, live, auth, metrics, the app and the
command line) imports storage from here, never from a backend package;
nothing in here imports a backend at module level or anything above
storage. docs/storage.md describes the layers and what a backend must do.
"""

from __future__ import annotations

from cursor_grpc.config import ConfigError, StorageSettings
from cursor_grpc.storage.contract import CommitListener, EventLog, Maintenance, StorageStats, Store
from cursor_grpc.storage.records import (
    ALL_KINDS,
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
    ReadPosition,
    RecordOutcome,
    SessionRecord,
)

# Schemes `CURSOR_DB` may name; a plain path is a SQLite file.
_SCHEMES = ("sqlite",)


def backend_name(settings: StorageSettings) -> str:
    """The backend `settings.path` names: a path is SQLite (`sqlite:///path`
    too); an unknown `scheme://` is refused in one line."""
    text = str(settings.path)
    scheme, sep, _ = text.partition("://")
    if not sep:
        return "sqlite"
    if scheme in _SCHEMES:
        return scheme
    raise ConfigError(
        f"CURSOR_DB {text!r} names an unknown backend {scheme!r}; give a SQLite file path (e.g. var/cursor.db)"
    )


def open_store(settings: StorageSettings) -> Store:
    """The store for `settings`, from the backend its path names."""
    backend_name(settings)
    from cursor_grpc.storage.sqlite.store import SQLiteStore

    return SQLiteStore(settings)


__all__ = [
    "ALL_KINDS", "KIND_INTERACTION", "KIND_MESSAGE", "KIND_MESSAGE_READ", "KIND_PRESENCE", "KIND_STATE",
    "SCOPES", "SCOPE_INTERACTIONS", "SCOPE_STATE", "SYSTEM", "Actor", "AuditQuery", "AuditRecord",
    "CommitListener", "ConsentRecord", "ConsultantRecord", "Credential", "Event", "EventFilter", "EventLog",
    "Evented", "GrantOutcome", "HistoryPage", "InteractionRecord", "Maintenance", "MessageRecord",
    "NewInteractionData", "ReadPosition", "ReaderRecord", "ReaderStateRecord", "RecordOutcome", "SessionRecord",
    "StorageStats", "Store", "backend_name", "open_store",
]
