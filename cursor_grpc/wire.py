"""Records to protos, in one place: the codec below both the services and
the live engine, so neither imports the other to put an event on the wire."""

from __future__ import annotations

from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import resources_pb2 as pb
from cursor_grpc.clock import timestamp_from_iso
from cursor_grpc.storage import (
    AssignmentRecord,
    AttentionRecord,
    AuditRecord,
    ConsentRecord,
    ConsultantRecord,
    Event,
    InteractionRecord,
    MessageRecord,
    ReaderRecord,
    ReaderStateRecord,
    ReaderUpdateRecord,
    ReadPosition,
)

READER_STATUS = {
    "active": pb.READER_STATUS_ACTIVE,
    "completed": pb.READER_STATUS_COMPLETED,
    "paused": pb.READER_STATUS_PAUSED,
}
STATUS_NAME = {v: k for k, v in READER_STATUS.items()}
CONSULTANT_ROLE = {
    "consultant": pb.CONSULTANT_ROLE_CONSULTANT,
    "supervisor": pb.CONSULTANT_ROLE_SUPERVISOR,
    "admin": pb.CONSULTANT_ROLE_ADMIN,
}
ROLE_NAME = {v: k for k, v in CONSULTANT_ROLE.items()}
ACCOUNT_KIND = {"reader": pb.ACCOUNT_KIND_READER, "consultant": pb.ACCOUNT_KIND_CONSULTANT}


def reader_state(record: ReaderStateRecord) -> pb.ReaderState:
    reader = f"readers/{record.user_id}"
    return pb.ReaderState(
        reader=reader,
        status=READER_STATUS[record.status],
        progress=record.progress,
        current_step=record.current_step,
        last_interaction=f"{reader}/interactions/{record.last_interaction_id}" if record.last_interaction_id else "",
        last_seen_time=timestamp_from_iso(record.last_seen_at),
        update_time=timestamp_from_iso(record.updated_at),
        presence=PRESENCE[record.presence],
    )


def reader(record: ReaderRecord) -> pb.Reader:
    return pb.Reader(
        name=f"readers/{record.id}",
        email=record.email,
        display_name=record.display_name,
        active=record.active,
        create_time=timestamp_from_iso(record.created_at),
        state=reader_state(record.state) if record.state else None,
    )


def interaction(record: InteractionRecord) -> pb.Interaction:
    return pb.Interaction(
        name=f"readers/{record.user_id}/interactions/{record.id}",
        type=record.type,
        payload_json=record.payload,
        summary=record.summary,
        create_time=timestamp_from_iso(record.created_at),
        sequence=record.seq,
    )


def consultant(record: ConsultantRecord) -> pb.Consultant:
    return pb.Consultant(
        name=f"consultants/{record.id}",
        email=record.email,
        display_name=record.display_name,
        role=CONSULTANT_ROLE[record.role],
        active=record.active,
        promoted_from=f"readers/{record.user_id}" if record.user_id else "",
        create_time=timestamp_from_iso(record.created_at),
    )


PRESENCE = {"reading": pb.PRESENCE_READING, "online": pb.PRESENCE_ONLINE, "idle": pb.PRESENCE_IDLE}
MESSAGE_DIRECTION = {
    "consultant_to_user": pb.MESSAGE_DIRECTION_TO_READER,
    "user_to_consultant": pb.MESSAGE_DIRECTION_FROM_READER,
    "system": pb.MESSAGE_DIRECTION_SYSTEM,
}
EVENT_KIND = {
    "interaction": pb.EVENT_KIND_INTERACTION_RECORDED,
    "state": pb.EVENT_KIND_READER_STATE_CHANGED,
    "message": pb.EVENT_KIND_MESSAGE_SENT,
    "message_read": pb.EVENT_KIND_MESSAGE_READ,
    "presence": pb.EVENT_KIND_PRESENCE_CHANGED,
    "attention": pb.EVENT_KIND_ATTENTION_CHANGED,
}
KIND_NAME = {v: k for k, v in EVENT_KIND.items()}


def message(record: MessageRecord) -> pb.Message:
    if record.direction == "consultant_to_user":
        author = f"consultants/{record.consultant_id}"
    elif record.direction == "user_to_consultant":
        author = f"readers/{record.reader_id}"
    else:
        author = ""
    return pb.Message(
        name=f"readers/{record.reader_id}/messages/{record.id}",
        direction=MESSAGE_DIRECTION[record.direction],
        author=author,
        body=record.body,
        create_time=timestamp_from_iso(record.created_at),
        read_time=timestamp_from_iso(record.read_at),
        sequence=record.seq,
    )


def message_read(position: ReadPosition) -> pb.MessageRead:
    return pb.MessageRead(
        reader=f"readers/{position.reader_id}",
        participant=f"{position.participant_type}s/{position.participant_id}",
        last_read_sequence=position.last_read_seq,
    )


ATTENTION_RULE = {
    "stuck": pb.ATTENTION_RULE_STUCK,
    "struggling": pb.ATTENTION_RULE_STRUGGLING,
    "stalled": pb.ATTENTION_RULE_STALLED,
    "asked_for_help": pb.ATTENTION_RULE_ASKED_FOR_HELP,
}
RULE_NAME = {v: k for k, v in ATTENTION_RULE.items()}


def attention_signal(record: AttentionRecord, epoch: str) -> pb.AttentionSignal:
    """A signal; `epoch` names the history its evidence cursors point into."""
    reader = f"readers/{record.reader_id}"
    return pb.AttentionSignal(
        name=f"{reader}/attentionSignals/{record.id}",
        reader=reader,
        rule=ATTENTION_RULE[record.rule],
        state=pb.ATTENTION_STATE_OPEN if record.cleared_at is None else pb.ATTENTION_STATE_CLEARED,
        summary=record.summary,
        evidence_cursors=[f"{epoch}-{seq}" for seq in record.evidence],
        raise_time=timestamp_from_iso(record.raised_at),
        acknowledged_by=f"consultants/{record.acknowledged_by}" if record.acknowledged_by else "",
        acknowledge_time=timestamp_from_iso(record.acknowledged_at),
        clear_time=timestamp_from_iso(record.cleared_at),
        clear_reason=record.clear_reason or "",
        assignee=f"consultants/{record.assignee}" if record.assignee else "",
    )


def field_entry(tag: bytes, body: bytes) -> bytes:
    """One length-delimited field entry (`tag`, then the length as a varint,
    then `body`): a repeated field's element, ready to join with others into
    a message without encoding them again."""
    out = bytearray(tag)
    size = len(body)
    while size > 0x7F:
        out.append((size & 0x7F) | 0x80)
        size >>= 7
    out.append(size)
    return bytes(out) + body


def reader_update(record: ReaderUpdateRecord, epoch: str) -> cpb.ReaderUpdate:
    """A dashboard row: the reader's latest, as WatchReaders sends it."""
    found = record.reader
    return cpb.ReaderUpdate(
        reader=f"readers/{found.id}",
        display_name=found.display_name,
        state=reader_state(found.state) if found.state else None,
        last_activity_type=record.activity_type or "",
        last_activity_summary=record.activity_summary or "",
        last_activity_time=timestamp_from_iso(record.activity_at),
        attention=[attention_signal(s, epoch) for s in record.attention],
    )


def activity_event(event: Event, cursor: str) -> pb.ActivityEvent:
    """The wire form of an event; built once per event for every watcher."""
    out = pb.ActivityEvent(
        cursor=cursor,
        event_id=event.seq,
        kind=EVENT_KIND[event.kind],
        reader=f"readers/{event.reader_id}",
        create_time=timestamp_from_iso(event.created_at),
        summary=event.summary,
    )
    data = event.data
    if event.interaction is not None:
        out.interaction.CopyFrom(interaction(event.interaction))
    elif event.kind == "state":
        out.state.CopyFrom(reader_state(ReaderStateRecord(
            event.reader_id, data["status"], data["progress"], data["current_step"], data["last_interaction_id"],
            data["last_seen_at"], data["updated_at"], data.get("presence", "idle"),
        )))
    elif event.kind == "message":
        out.message.CopyFrom(message(MessageRecord.from_data(event.reader_id, data)))
    elif event.kind == "message_read":
        out.message_read.CopyFrom(pb.MessageRead(
            reader=f"readers/{event.reader_id}", participant=data["participant"],
            last_read_sequence=data["last_read_seq"],
        ))
    elif event.kind == "presence":
        out.presence.CopyFrom(
            pb.PresenceChange(presence=PRESENCE[data["presence"]], previous=PRESENCE[data["previous"]])
        )
    elif event.kind == "attention":
        # A cursor is `epoch-seq`: the evidence lives in the same history.
        epoch = cursor.rpartition("-")[0]
        out.attention.CopyFrom(attention_signal(AttentionRecord.from_data(event.reader_id, data), epoch))
    return out


def reader_profile(record: ReaderRecord, metadata: str) -> pb.Reader:
    """A reader with its restricted metadata (only where the full profile is asked for)."""
    out = reader(record)
    out.metadata_json = metadata
    return out


CONSENT_SCOPE = {
    "state": pb.CONSENT_SCOPE_STATE,
    "state_and_interactions": pb.CONSENT_SCOPE_STATE_AND_INTERACTIONS,
}
SCOPE_NAME = {v: k for k, v in CONSENT_SCOPE.items()}


def consent(record: ConsentRecord) -> pb.Consent:
    return pb.Consent(
        name=f"readers/{record.granter_id}/consents/{record.id}",
        granter=f"readers/{record.granter_id}",
        grantee=f"readers/{record.grantee_id}",
        scope=CONSENT_SCOPE[record.scope],
        create_time=timestamp_from_iso(record.created_at),
        revoke_time=timestamp_from_iso(record.revoked_at),
    )


def assignment(record: AssignmentRecord) -> pb.ReaderAssignment:
    return pb.ReaderAssignment(
        name=f"readers/{record.reader_id}/assignment",
        reader=f"readers/{record.reader_id}",
        consultant=f"consultants/{record.consultant_id}",
        assigned_by=f"consultants/{record.assigned_by}" if record.assigned_by else "",
        assign_time=timestamp_from_iso(record.assigned_at),
    )


# Audit target types whose row names no id, and how they are shown.
AUDIT_TARGET_WITHOUT_ID = {"all_readers": "readers/-"}


def audit_actor(actor_type: str, actor_id: str | None) -> str:
    return f"{actor_type}s/{actor_id}" if actor_id else actor_type


def audit_target(target_type: str | None, target_id: str | None) -> str:
    if target_type is None:
        return ""
    if target_id is None:
        return AUDIT_TARGET_WITHOUT_ID.get(target_type, target_type)
    return f"{target_type}s/{target_id}"


def audit_log(record: AuditRecord) -> pb.AuditLog:
    return pb.AuditLog(
        name=f"auditLogs/{record.id}",
        actor=audit_actor(record.actor_type, record.actor_id),
        action=record.action,
        target=audit_target(record.target_type, record.target_id),
        details_json=record.details,
        create_time=timestamp_from_iso(record.created_at),
    )
