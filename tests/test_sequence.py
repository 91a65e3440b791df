"""The event sequence comes from the database inside the write transaction,
so two writers on one file (which the lock file normally prevents) still
never hand out the same seq, and seq order is commit order."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cursor_grpc.clock import new_id
from cursor_grpc.config import StorageSettings
from cursor_grpc.storage.records import NewInteractionData
from cursor_grpc.storage.sqlite.store import SQLiteStore, apply_migrations

pytestmark = pytest.mark.sqlite_only  # two SQLite writers on one file


def item(n: int) -> NewInteractionData:
    return NewInteractionData(0, new_id(), "answer", f'{{"n": {n}}}', "", None, None)


def test_two_writers_on_one_file_never_share_a_seq(tmp_path: Path) -> None:
    settings = StorageSettings(path=tmp_path / "two.db")
    apply_migrations(settings)
    first, second = SQLiteStore(settings), SQLiteStore(settings)

    async def go() -> list[int]:
        reader = await first.create_reader("ann@example.com", "x", "Ann")
        seqs: list[int] = []
        for n in range(40):
            store = first if n % 2 else second
            outcome = await store.record_interactions(reader.id, [item(n), item(n)], 60 * 10**9)
            seqs += [event.seq for event in outcome.events]
        return seqs

    try:
        seqs = asyncio.run(go())
    finally:
        first.close()
        second.close()
    assert len(seqs) == len(set(seqs)), "a seq was handed out twice"
    assert seqs == sorted(seqs), "seq order is commit order"
