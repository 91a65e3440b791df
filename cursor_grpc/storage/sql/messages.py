"""SQL for conversations: messages, read positions, unread counts, and the
consultant-set reader status. Every change commits with its event."""

from __future__ import annotations

from cursor_grpc.clock import new_id, now_iso
from cursor_grpc.errors import NotFound
from cursor_grpc.storage.records import (
    KIND_MESSAGE,
    KIND_MESSAGE_READ,
    KIND_STATE,
    Evented,
    MessageRecord,
    ReaderStateRecord,
    ReadPosition,
)
from cursor_grpc.storage.sql.accounts import STATE_COLUMNS
from cursor_grpc.storage.sql.connection import Connection, fetch_all
from cursor_grpc.storage.sql.events import SequenceAllocator, insert_event, state_data
from cursor_grpc.storage.sql.keyset import Where, newest_first

MESSAGE_COLUMNS = "id, reader_id, consultant_id, direction, body, created_at, read_at, seq"


def _require_reader(conn: Connection, reader_id: str) -> None:
    if not fetch_all(conn, "SELECT 1 FROM users WHERE id = ?", (reader_id,)):
        raise NotFound(f"reader readers/{reader_id} does not exist", reason="READER_NOT_FOUND")


def send_message(
    conn: Connection, seqs: SequenceAllocator, reader_id: str, direction: str, consultant_id: str | None,
    body: str,
) -> Evented[MessageRecord]:
    _require_reader(conn, reader_id)
    seq, message_id, now = seqs.next(), new_id(), now_iso()
    conn.execute(
        "INSERT INTO messages(id, reader_id, consultant_id, direction, body, created_at, seq) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (message_id, reader_id, consultant_id, direction, body, now, seq),
    )
    record = MessageRecord(message_id, reader_id, consultant_id, direction, body, now, None, seq)
    event = insert_event(conn, seq, KIND_MESSAGE, reader_id, message_id, body[:80], record.data(), now)
    return Evented(record, [event])


def list_messages(conn: Connection, reader_id: str, before_seq: int | None, limit: int) -> list[MessageRecord]:
    _require_reader(conn, reader_id)
    sql, params = newest_first(
        f"SELECT {MESSAGE_COLUMNS} FROM messages", Where().add("reader_id = ?", reader_id), ("seq",),
        None if before_seq is None else (before_seq,), limit,
    )
    return [MessageRecord(*row) for row in fetch_all(conn, sql, params)]


def read_positions(conn: Connection, reader_id: str) -> list[ReadPosition]:
    return [
        ReadPosition(reader_id, *row)
        for row in fetch_all(
            conn,
            "SELECT participant_type, participant_id, last_read_seq FROM message_reads WHERE reader_id = ? "
            "ORDER BY participant_type, participant_id",
            (reader_id,),
        )
    ]


def mark_read(
    conn: Connection, seqs: SequenceAllocator, reader_id: str, participant_type: str, participant_id: str,
    up_to: int,
) -> Evented[ReadPosition]:
    """Move a participant's read position forward (never back). The reader
    reading also stamps `read_at` on the messages written to it."""
    _require_reader(conn, reader_id)
    newest = int(fetch_all(conn, "SELECT coalesce(max(seq), 0) FROM messages WHERE reader_id = ?", (reader_id,))[0][0])
    target = newest if up_to <= 0 else min(up_to, newest)
    found = fetch_all(
        conn,
        "SELECT last_read_seq FROM message_reads WHERE reader_id = ? AND participant_type = ? AND participant_id = ?",
        (reader_id, participant_type, participant_id),
    )
    before = int(found[0][0]) if found else 0
    position = ReadPosition(reader_id, participant_type, participant_id, max(before, target))
    if position.last_read_seq <= before:
        return Evented(position, [])
    now = now_iso()
    conn.execute(
        "INSERT INTO message_reads(reader_id, participant_type, participant_id, last_read_seq, updated_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT(reader_id, participant_type, participant_id) "
        "DO UPDATE SET last_read_seq = excluded.last_read_seq, updated_at = excluded.updated_at",
        (reader_id, participant_type, participant_id, position.last_read_seq, now),
    )
    if participant_type == "reader":
        conn.execute(
            "UPDATE messages SET read_at = ? WHERE reader_id = ? AND direction != 'user_to_consultant' "
            "AND seq <= ? AND read_at IS NULL",
            (now, reader_id, position.last_read_seq),
        )
    data = {"participant": f"{participant_type}s/{participant_id}", "last_read_seq": position.last_read_seq}
    event = insert_event(conn, seqs.next(), KIND_MESSAGE_READ, reader_id, None, "read", data, now)
    return Evented(position, [event])


def unread_counts(conn: Connection, consultant_id: str, limit: int = 1000) -> list[tuple[str, int]]:
    """(reader_id, unread) for conversations with messages from the reader
    after this consultant's read position."""
    return [
        (str(reader_id), int(count))
        for reader_id, count in fetch_all(
            conn,
            """SELECT m.reader_id, count(*) FROM messages m
               LEFT JOIN message_reads r ON r.reader_id = m.reader_id
                    AND r.participant_type = 'consultant' AND r.participant_id = ?
               WHERE m.direction = 'user_to_consultant' AND m.seq > coalesce(r.last_read_seq, 0)
               GROUP BY m.reader_id ORDER BY 2 DESC, 1 LIMIT ?""",
            (consultant_id, limit),
        )
    ]


def set_reader_status(
    conn: Connection, seqs: SequenceAllocator, reader_id: str, status: str
) -> Evented[ReaderStateRecord]:
    """Pause or resume a reader; a state event when it changes."""
    rows = fetch_all(conn, f"SELECT {STATE_COLUMNS} FROM reader_states WHERE reader_id = ?", (reader_id,))
    if not rows:
        raise NotFound(f"reader readers/{reader_id} does not exist", reason="READER_NOT_FOUND")
    state = ReaderStateRecord(*rows[0])
    if state.status == status:
        return Evented(state, [])
    now = now_iso()
    updated = ReaderStateRecord(*fetch_all(
        conn,
        f"UPDATE reader_states SET status = ?, updated_at = ? WHERE reader_id = ? RETURNING {STATE_COLUMNS}",
        (status, now, reader_id),
    )[0])
    event = insert_event(
        conn, seqs.next(), KIND_STATE, reader_id, None, f"status {status}", state_data(updated), now
    )
    return Evented(updated, [event])
