"""Plain rows the store hands to services; services turn them into protos."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

T = TypeVar("T")


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
    # From an `answer` payload: its `correct` flag and `question_id`, when given.
    correct: bool | None = None
    question: str | None = None


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """What one write of interactions did, and the events it committed."""

    stored: list[InteractionRecord]
    duplicates: list[InteractionRecord]
    # (index, id) of interactions whose id belongs to another reader.
    conflicts: list[tuple[int, str]]
    state: ReaderStateRecord | None
    events: list[Event]


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


# --- messages --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: str
    reader_id: str
    consultant_id: str | None
    direction: str  # as stored: 'consultant_to_user' | 'user_to_consultant' | 'system'
    body: str
    created_at: str
    read_at: str | None
    seq: int

    def data(self) -> dict[str, Any]:
        return {
            "id": self.id, "consultant_id": self.consultant_id, "direction": self.direction, "body": self.body,
            "created_at": self.created_at, "read_at": self.read_at, "seq": self.seq,
        }

    @classmethod
    def from_data(cls, reader_id: str, data: dict[str, Any]) -> MessageRecord:
        return cls(data["id"], reader_id, data["consultant_id"], data["direction"], data["body"],
                   data["created_at"], data["read_at"], data["seq"])


@dataclass(frozen=True, slots=True)
class ReadPosition:
    reader_id: str
    participant_type: str
    participant_id: str
    last_read_seq: int


# --- consents --------------------------------------------------------------


SCOPE_STATE = "state"


SCOPE_INTERACTIONS = "state_and_interactions"


SCOPES = (SCOPE_STATE, SCOPE_INTERACTIONS)


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    id: str
    granter_id: str
    grantee_id: str
    scope: str  # 'state' | 'state_and_interactions'
    created_at: str
    revoked_at: str | None

    @property
    def shares_interactions(self) -> bool:
        return self.scope == SCOPE_INTERACTIONS


@dataclass(frozen=True, slots=True)
class AssignmentRecord:
    """A reader's consultant: at most one per reader."""

    reader_id: str
    consultant_id: str
    assigned_by: str | None
    assigned_at: str


@dataclass(frozen=True, slots=True)
class GrantOutcome:
    """What GrantConsent did: the live consent, and the one it replaced."""

    consent: ConsentRecord
    replaced: ConsentRecord | None
    changed: bool


# --- audit -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: str
    actor_type: str  # 'reader' | 'consultant' | 'system'
    actor_id: str | None
    action: str
    target_type: str | None
    target_id: str | None
    details: str
    created_at: str


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters of ListAuditLogs; None means any. `target_id` is matched only
    when `target_type` is set; a target_type with target_id None matches rows
    that name no id (e.g. a watch of all readers)."""

    actor_type: str | None = None
    actor_id: str | None = None
    action: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    start: str | None = None  # created_at >= start
    end: str | None = None  # created_at < end


# --- events ----------------------------------------------------------------


KIND_INTERACTION = "interaction"


KIND_STATE = "state"


KIND_MESSAGE = "message"


KIND_MESSAGE_READ = "message_read"


KIND_PRESENCE = "presence"


KIND_ATTENTION = "attention"


ALL_KINDS = frozenset({KIND_INTERACTION, KIND_STATE, KIND_MESSAGE, KIND_MESSAGE_READ, KIND_PRESENCE, KIND_ATTENTION})


@dataclass(slots=True)
class ReaderUpdateRecord:
    """The latest of one reader for a dashboard: account and state, its last
    interaction other than a heartbeat, its open attention signals."""

    reader: ReaderRecord
    activity_type: str | None
    activity_summary: str | None
    activity_at: str | None
    attention: list[AttentionRecord]


# --- attention -------------------------------------------------------------


RULE_STUCK = "stuck"
RULE_STRUGGLING = "struggling"
RULE_STALLED = "stalled"
RULE_HELP = "asked_for_help"
ALL_RULES = (RULE_STUCK, RULE_STRUGGLING, RULE_STALLED, RULE_HELP)


@dataclass(frozen=True, slots=True)
class AttentionRecord:
    """One attention signal as stored; `evidence` holds event seqs and
    `assignee` the reader's consultant when it was read or last changed."""

    id: str
    reader_id: str
    rule: str
    summary: str
    evidence: list[int]
    raised_seq: int
    raised_at: str
    acknowledged_by: str | None
    acknowledged_at: str | None
    cleared_at: str | None
    clear_reason: str | None
    assignee: str | None

    def data(self) -> dict[str, Any]:
        return {
            "id": self.id, "rule": self.rule, "summary": self.summary, "evidence": self.evidence,
            "raised_seq": self.raised_seq, "raised_at": self.raised_at, "acknowledged_by": self.acknowledged_by,
            "acknowledged_at": self.acknowledged_at, "cleared_at": self.cleared_at,
            "clear_reason": self.clear_reason, "assignee": self.assignee,
        }

    @classmethod
    def from_data(cls, reader_id: str, data: dict[str, Any]) -> AttentionRecord:
        return cls(data["id"], reader_id, data["rule"], data["summary"], data["evidence"], data["raised_seq"],
                   data["raised_at"], data["acknowledged_by"], data["acknowledged_at"], data["cleared_at"],
                   data["clear_reason"], data["assignee"])


@dataclass(slots=True)
class Event:
    """One committed event. `interaction` is set for interaction events;
    `data` holds the stored object of every other kind."""

    seq: int
    kind: str
    reader_id: str
    created_at: str
    summary: str = ""
    interaction: InteractionRecord | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def interaction_type(self) -> str | None:
        return self.interaction.type if self.interaction is not None else None


@dataclass(slots=True)
class Evented(Generic[T]):
    """A write result and the events its transaction stores: the backend
    publishes `events` after the commit and hands the caller `value`, so a
    write that produces events says so in its type."""

    value: T
    events: list[Event]


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a stream wants. Empty sets mean everything."""

    reader_ids: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()
    interaction_types: frozenset[str] = frozenset()

    def matches(self, event: Event) -> bool:
        if self.reader_ids and event.reader_id not in self.reader_ids:
            return False
        if self.kinds and event.kind not in self.kinds:
            return False
        return not (
            self.interaction_types
            and event.kind == KIND_INTERACTION
            and event.interaction_type not in self.interaction_types
        )

    @property
    def everything(self) -> bool:
        return not (self.reader_ids or self.kinds or self.interaction_types)


# --- store -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Actor:
    """Who does a write, for the audit log."""

    type: str  # 'reader' | 'consultant' | 'system'
    id: str | None


SYSTEM = Actor("system", None)


# --- history ---------------------------------------------------------------


@dataclass
class HistoryPage:
    records: list[InteractionRecord]
    # seqs of the returned records that came from archive files
    archived: set[int]

    @property
    def includes_archived(self) -> bool:
        return bool(self.archived)
