"""Records to protos, in one place."""

from __future__ import annotations

from cursor.v1 import resources_pb2 as pb
from cursor_grpc.clock import timestamp_from_iso
from cursor_grpc.storage.records import ConsultantRecord, InteractionRecord, ReaderRecord, ReaderStateRecord

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
