"""Plain rows the store hands to services; services turn them into protos."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple


@dataclass(frozen=True, slots=True)
class ReaderStateRecord:
    user_id: str
    status: str
    progress: float
    current_step: int
    last_interaction_id: str | None
    last_seen_at: str | None
    updated_at: str
    presence: str = "idle"


@dataclass(frozen=True, slots=True)
class ReaderRecord:
    id: str
    email: str
    display_name: str
    active: bool
    created_at: str
    state: ReaderStateRecord | None


@dataclass(frozen=True, slots=True)
class ConsultantRecord:
    id: str
    email: str
    display_name: str
    role: str
    active: bool
    user_id: str | None
    created_at: str


class InteractionRecord(NamedTuple):
    """One stored interaction. This and NewInteractionData are NamedTuples,
    not frozen dataclasses like the other records: ingest builds one of
    each per event, and a frozen dataclass's __init__ costs three times as
    much (0.6 us against 0.2 us for seven fields)."""

    seq: int
    id: str
    user_id: str
    type: str
    payload: str
    summary: str
    created_at: str


class NewInteractionData(NamedTuple):
    """A validated interaction ready to store. `position` is its index in
    the caller's upload; `percent`/`step` come from a progress payload."""

    position: int
    id: str
    type: str
    payload: str
    summary: str
    percent: float | None
    step: int | None


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """What one write of interactions did, and the events it committed."""

    stored: list[InteractionRecord]
    duplicates: list[InteractionRecord]
    # (index, id) of interactions whose id belongs to another reader.
    conflicts: list[tuple[int, str]]
    state: ReaderStateRecord | None
    events: list[Any]


@dataclass(frozen=True, slots=True)
class Credential:
    """An account as Login sees it."""

    kind: str  # 'reader' | 'consultant'
    id: str
    password_hash: str
    active: bool
    role: str  # 'reader' or the consultant's role


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: str
    actor_type: str
    actor_id: str
    created_at: str
    last_active_at: str
    expires_at: str
    revoked_at: str | None
    account_active: bool
    role: str
