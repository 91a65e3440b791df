"""Many readers writing at once through unary calls and upload streams."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import grpc

from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import reader_service_pb2_grpc
from tests.conftest import Harness, bearer

READERS = 50
PER_READER = 200


async def _write(address: str, token: str, n: int) -> dict[str, Any]:
    """Half unary (one of them retried with the same id), half in upload chunks."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reader_service_pb2_grpc.ReaderServiceStub(channel)
        md = bearer(token)
        ids = [str(uuid.uuid4()) for _ in range(PER_READER)]
        half = PER_READER // 2
        unary_started = time.perf_counter()
        for i in range(half):
            item = rpb.NewInteraction(
                id=ids[i], type="progress", payload_json=json.dumps({"percent": i / PER_READER, "step": i})
            )
            await stub.RecordInteraction(rpb.RecordInteractionRequest(interaction=item), metadata=md)
        # A retry of an id already stored must store nothing.
        retry = await stub.RecordInteraction(
            rpb.RecordInteractionRequest(interaction=rpb.NewInteraction(id=ids[0], type="progress")), metadata=md
        )
        assert retry.duplicate
        unary_seconds = time.perf_counter() - unary_started

        def chunks() -> Any:
            for start in range(half, PER_READER, 25):
                yield rpb.RecordInteractionsRequest(interactions=[
                    rpb.NewInteraction(
                        id=ids[i], type="progress", payload_json=json.dumps({"percent": i / PER_READER, "step": i})
                    )
                    for i in range(start, start + 25)
                ])

        stream_started = time.perf_counter()
        response = await stub.RecordInteractions(chunks(), metadata=md)
        stream_seconds = time.perf_counter() - stream_started
        assert response.stored_count == half, (n, response)
        return {"ids": ids, "unary_s": unary_seconds, "stream_s": stream_seconds}


def test_fifty_readers_two_hundred_each_store_exactly_ten_thousand(h: Harness) -> None:
    readers = [h.new_reader() for _ in range(READERS)]

    async def main() -> list[dict[str, Any]]:
        return await asyncio.gather(*(_write(h.server.address, r.token, n) for n, r in enumerate(readers)))

    started = time.perf_counter()
    results = asyncio.run(main())
    elapsed = time.perf_counter() - started
    total = READERS * PER_READER
    half = total / 2
    unary_rate = half / max(r["unary_s"] for r in results)
    stream_rate = half / max(r["stream_s"] for r in results)
    print(f"\n{total} interactions from {READERS} concurrent readers in {elapsed:.2f} s "
          f"({total / elapsed:.0f}/s mixed); unary ~{unary_rate:.0f}/s, streamed ~{stream_rate:.0f}/s")

    db = h.database
    assert db.rows("SELECT count(*), count(DISTINCT id), count(DISTINCT seq) FROM interactions") \
        == [(total, total, total)]
    expected = {i for r in results for i in r["ids"]}
    stored = {row[0] for row in db.rows("SELECT id FROM interactions")}
    assert stored == expected
    for reader in readers:
        reader_id = reader.account.split("/")[1]
        [last] = db.rows("SELECT id, payload FROM interactions WHERE reader_id = ? ORDER BY seq DESC LIMIT 1",
                         (reader_id,))
        [state] = db.rows("SELECT last_interaction_id, progress, current_step FROM reader_states WHERE reader_id = ?",
                          (reader_id,))
        payload = json.loads(last[1])
        assert state == (last[0], payload["percent"], payload["step"])
        assert db.rows("SELECT count(*) FROM interactions WHERE reader_id = ?", (reader_id,)) == [(PER_READER,)]
