"""Raw APSW work for the benchmark: pre-filling a database through the store's
own schema, the raw-insert baseline of the batched-ingest scenario, and row
counts for the correctness checks.

Everything here writes with plain APSW connections while no server is running
on the same file (pre-fill), or on a file no server uses (baseline); counts
read through a read-only connection, which WAL lets run beside the server.

Run as a script it is the raw-insert baseline (`bench_db.py raw SPEC_JSON`), so
the baseline runs in a process of its own like every other load generator.
"""

from __future__ import annotations

import json
import random
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from cursor_grpc.auth.passwords import Passwords
from cursor_grpc.auth.sessions import hash_token
from cursor_grpc.clock import iso_from_ns, new_id, now_iso
from cursor_grpc.config import AuthSettings, StorageSettings
from cursor_grpc.storage.sqlite.connection import open_connection
from cursor_grpc.storage.sqlite.store import apply_migrations

# The same password for every bench account; never used outside a temp database.
BENCH_PASSWORD = "bench password, temp databases only"  # noqa: S105

INTERACTION_TYPES = ("progress", "answer", "heartbeat", "open_page")

_INSERT_USER = (
    "INSERT INTO users(id, email, password_hash, display_name, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_STATE = (
    "INSERT INTO reader_states(reader_id, status, progress, current_step, last_interaction_id, last_seen_at,"
    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_SESSION = (
    "INSERT INTO sessions(id, token_hash, actor_type, actor_id, created_at, last_active_at, expires_at)"
    " VALUES (?, ?, 'reader', ?, ?, ?, ?)"
)
# seq is INTEGER PRIMARY KEY: left out, SQLite assigns the next one.
_INSERT_INTERACTION = (
    "INSERT INTO interactions(id, reader_id, type, payload, summary, created_at) VALUES (?, ?, ?, ?, ?, ?)"
)
# The baseline's per-event state change: what the server's state upsert does,
# reduced to plain column updates.
_UPSERT_STATE = """
INSERT INTO reader_states(reader_id, status, progress, current_step, last_interaction_id, last_seen_at, updated_at)
VALUES (?1, 'active', coalesce(?2, 0), coalesce(?3, 0), ?4, ?5, ?5)
ON CONFLICT(reader_id) DO UPDATE SET
    progress = coalesce(?2, reader_states.progress),
    current_step = coalesce(?3, reader_states.current_step),
    last_interaction_id = ?4,
    last_seen_at = ?5,
    updated_at = ?5
"""


def payload_for(kind: str, n: int) -> tuple[str, float | None, int | None]:
    """A small realistic payload for an interaction type: (json, percent, step)."""
    if kind == "progress":
        percent = (n % 100) / 100.0
        step = n % 40
        return json.dumps({"percent": percent, "step": step}), percent, step
    if kind == "answer":
        return json.dumps({"question": n % 50, "answer": "b"}), None, None
    if kind == "open_page":
        return json.dumps({"page": n % 300}), None, None
    return "{}", None, None


def bulk_connection(path: Path) -> apsw.Connection:
    """A connection for bulk loading: the store's own setup (WAL, foreign keys),
    then durability off and a large cache, since a crash only loses a bench file."""
    conn = open_connection(StorageSettings(path=path))
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1048576")
    conn.set_profile(None)
    return conn


def create_database(path: Path) -> None:
    """A fresh database with every migration applied."""
    apply_migrations(StorageSettings(path=path))


def password_hash() -> str:
    """One real argon2id hash of BENCH_PASSWORD with the server's parameters, so
    pre-filled readers can log in like registered ones."""
    passwords = Passwords(AuthSettings(), workers=1)
    try:
        return passwords.hash_sync(BENCH_PASSWORD)
    finally:
        passwords.close()


@dataclass
class PrefillReaders:
    ids: list[str]
    tokens: list[str]  # session tokens of the first readers, for the ingest clients


def prefill_readers(path: Path, count: int, sessions: int, seed: int = 7) -> PrefillReaders:
    """`count` readers with states, and live sessions for the first `sessions`
    of them (only the SHA-256 of each token is stored, as Login does)."""
    rng = random.Random(seed)
    hashed = password_hash()
    now_ns = time.time_ns()
    now = iso_from_ns(now_ns)
    expires = iso_from_ns(now_ns + 365 * 24 * 3600 * 1_000_000_000)
    ids = [new_id() for _ in range(count)]
    tokens = [secrets.token_urlsafe(32) for _ in range(min(sessions, count))]
    conn = bulk_connection(path)
    try:
        with conn:
            conn.executemany(_INSERT_USER, [
                (reader_id, f"prefill-{i}@example.com", hashed, f"Prefill reader {i}", now, now)
                for i, reader_id in enumerate(ids)
            ])
            # Last seen some time in the past week, so "active" lists stay short
            # until the ingest load touches readers.
            conn.executemany(_INSERT_STATE, [
                (reader_id, "active", 0.0, 0, None,
                 iso_from_ns(now_ns - rng.randrange(600, 7 * 24 * 3600) * 1_000_000_000), now)
                for reader_id in ids
            ])
            conn.executemany(_INSERT_SESSION, [
                (new_id(), hash_token(token), ids[i], now, now, expires) for i, token in enumerate(tokens)
            ])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return PrefillReaders(ids, tokens)


def prefill_interactions(path: Path, reader_ids: list[str], add: int, seed: int = 11,
                         batch: int = 250_000, progress: Any = None) -> int:
    """Append `add` interactions spread over `reader_ids`, in big transactions,
    and point each touched reader's state at its newest one. Returns rows added."""
    rng = random.Random(seed)
    done = 0
    last_for: dict[str, str] = {}
    payloads = {kind: [payload_for(kind, n)[0] for n in range(100)] for kind in INTERACTION_TYPES}
    summaries = ("", "", "chapter done", "page turned")
    conn = bulk_connection(path)
    try:
        while done < add:
            size = min(batch, add - done)
            created = now_iso()
            rows = []
            for _ in range(size):
                reader_id = reader_ids[rng.randrange(len(reader_ids))]
                kind = INTERACTION_TYPES[rng.randrange(4)]
                interaction_id = new_id()
                last_for[reader_id] = interaction_id
                rows.append((interaction_id, reader_id, kind, payloads[kind][rng.randrange(100)],
                             summaries[rng.randrange(4)], created))
            with conn:
                conn.executemany(_INSERT_INTERACTION, rows)
            done += size
            if progress is not None:
                progress(size)
        with conn:
            conn.executemany(
                "UPDATE reader_states SET last_interaction_id = ? WHERE reader_id = ?",
                [(interaction_id, reader_id) for reader_id, interaction_id in last_for.items()],
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return done


def count_rows(path: Path, table: str, where: str = "", params: tuple[Any, ...] = ()) -> int:
    """count(*) through a read-only connection (safe beside a running server)."""
    if table not in {"interactions", "users", "reader_states", "sessions", "consultants"}:
        raise ValueError(f"unexpected table {table}")
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.set_busy_timeout(5000)
        sql = f"SELECT count(*) FROM {table} {where}"  # noqa: S608 - table from a fixed set
        (count,) = conn.execute(sql, params).fetchall()[0]
        assert isinstance(count, int)
        return count
    finally:
        conn.close()


def reader_ids(path: Path, limit: int) -> list[str]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [row[0] for row in conn.execute("SELECT id FROM users ORDER BY id LIMIT ?", (limit,))]
    finally:
        conn.close()


def latest_activity(path: Path, reader_ids: list[str]) -> dict[str, str]:
    """Per reader, the summary of its last interaction other than a heartbeat
    ("" when it has only heartbeats): what a dashboard stream must end with."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.set_busy_timeout(5000)
        found = {}
        for reader_id in reader_ids:
            rows = conn.execute(
                "SELECT summary FROM interactions WHERE reader_id = ? AND type != 'heartbeat' "
                "ORDER BY seq DESC LIMIT 1", (reader_id,)).fetchall()
            found[reader_id] = str(rows[0][0]) if rows else ""
        return found
    finally:
        conn.close()


def readers_written_since(path: Path, seq: int) -> set[str]:
    """Readers with an interaction after `seq`."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.set_busy_timeout(5000)
        return {str(r[0]) for r in conn.execute("SELECT DISTINCT reader_id FROM interactions WHERE seq > ?", (seq,))}
    finally:
        conn.close()


def highest_seq(path: Path) -> int:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.set_busy_timeout(5000)
        return int(conn.execute("SELECT max(seq) FROM (SELECT max(seq) AS seq FROM interactions "
                                "UNION ALL SELECT max(seq) FROM events)").fetchall()[0][0] or 0)
    finally:
        conn.close()


# --- the raw-insert baseline of scenario 2 -----------------------------------


def raw_insert(path: Path, readers: int, batch: int, seconds: float, max_events: int) -> dict[str, Any]:
    """Insert rows exactly as the batched scenario sends them, `batch` events per
    transaction, each event an interaction INSERT plus a reader_states UPSERT,
    on the store's own connection setup (WAL, synchronous NORMAL). Rows are
    made outside the timed part: this is the database's ceiling.

    Runs batches until `seconds` pass or `max_events` are written."""
    create_database(path)
    conn = open_connection(StorageSettings(path=path))
    conn.set_profile(None)
    users = [new_id() for _ in range(readers)]
    now = now_iso()
    with conn:
        conn.executemany(_INSERT_USER, [
            (user_id, f"raw-{i}@example.com", "not a hash", f"Raw {i}", now, now) for i, user_id in enumerate(users)
        ])
    batches_max = max(1, max_events // batch)
    stored = 0
    busy_ns = 0
    batch_ns: list[int] = []
    wall_deadline = time.perf_counter() + seconds * 4 + 10
    for b in range(batches_max):
        # Rows are made outside the timed part: this measures the database alone.
        user_id = users[b % readers]
        rows = []
        for n in range(batch):
            kind = INTERACTION_TYPES[n % 4]
            payload, percent, step = payload_for(kind, n)
            rows.append((new_id(), user_id, kind, payload, "", percent, step))
        t0 = time.perf_counter_ns()
        created = now_iso()
        with conn:
            for interaction_id, uid, kind, payload, summary, percent, step in rows:
                conn.execute(_INSERT_INTERACTION, (interaction_id, uid, kind, payload, summary, created))
                conn.execute(_UPSERT_STATE, (uid, percent, step, interaction_id, created))
        spent = time.perf_counter_ns() - t0
        batch_ns.append(spent)
        busy_ns += spent
        stored += len(rows)
        if busy_ns >= seconds * 1e9 or time.perf_counter() >= wall_deadline:
            break
    elapsed = busy_ns / 1e9
    conn.close()
    return {"events": stored, "seconds": elapsed, "events_per_s": stored / elapsed if elapsed else 0.0,
            "batch_ns": batch_ns, "db_count": count_rows(path, "interactions")}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] != "raw":
        print("usage: bench_db.py raw SPEC_JSON", file=sys.stderr)
        return 2
    spec = json.loads(argv[2])
    result = raw_insert(Path(spec["path"]), spec["readers"], spec["batch"], spec["seconds"], spec["max_events"])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
