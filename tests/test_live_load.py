"""Live push under load, slow consumers, stream churn and shutdown, against
a server in its own process (so its memory can be measured)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

import grpc
import pytest

from cursor.v1 import auth_service_pb2 as apb
from cursor.v1 import auth_service_pb2_grpc, consultant_service_pb2_grpc, reader_service_pb2_grpc
from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2 as pb
from tests.conftest import ADMIN_EMAIL, PASSWORD, bearer, migrate_with_admin
from tests.databases import TestDatabase
from tests.helpers import error_details
from tests.procs import ServerProcess


def _start(database: TestDatabase, monkeypatch: pytest.MonkeyPatch, **env: str) -> ServerProcess:
    migrate_with_admin(database, monkeypatch)
    # These tests watch with one consultant session many times over: lift
    # the per-session and per-account stream caps (tests/test_stream_bounds.py
    # tests them).
    caps = {"CURSOR_MAX_STREAMS_PER_SESSION": "1000", "CURSOR_MAX_STREAMS_PER_ACCOUNT": "1000"}
    return ServerProcess(database.url, env={"CURSOR_HEARTBEAT_SECONDS": "1", **caps, **env})


@pytest.fixture
def server(database: TestDatabase, monkeypatch: pytest.MonkeyPatch) -> Any:
    process = _start(database, monkeypatch)
    yield process
    process.kill()


@pytest.fixture
def small_cache_server(database: TestDatabase, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Every opened watch writes an audit row, so the database grows during
    churn and SQLite's page cache (64 MiB per connection by default) fills
    with it: real memory, but not what churn measures. A 1 MiB cache keeps
    SQLite flat, so what is left is gRPC's and the streams' own memory."""
    process = _start(database, monkeypatch, CURSOR_CACHE_SIZE_KIB="1024")
    yield process
    process.kill()


async def _login(channel: grpc.aio.Channel, email: str, kind: int) -> str:
    auth = auth_service_pb2_grpc.AuthServiceStub(channel)
    response = await auth.Login(apb.LoginRequest(email=email, password=PASSWORD, account_kind=kind))
    return str(response.session.token)


async def _readers(channel: grpc.aio.Channel, count: int, prefix: str) -> list[str]:
    auth = auth_service_pb2_grpc.AuthServiceStub(channel)

    async def one(n: int) -> str:
        email = f"{prefix}{n}@example.com"
        await auth.RegisterReader(apb.RegisterReaderRequest(email=email, password=PASSWORD, display_name=f"R{n}"))
        return await _login(channel, email, pb.ACCOUNT_KIND_READER)

    return list(await asyncio.gather(*(one(n) for n in range(count))))


def _all_event_ids(database: TestDatabase, after: int) -> list[tuple[int, str]]:
    return [(int(seq), str(reader)) for seq, reader in database.rows(
        "SELECT seq, reader_id FROM interactions WHERE seq > ? UNION ALL "
        "SELECT seq, reader_id FROM events WHERE seq > ? ORDER BY 1", (after, after))]


def test_twenty_watchers_fifty_writers_every_event_once_in_commit_order(
    server: ServerProcess, database: TestDatabase
) -> None:
    watchers, writers, per_writer = 20, 50, 40

    async def main() -> tuple[list[list[pb.ActivityEvent]], int]:
        async with grpc.aio.insecure_channel(server.address) as channel:
            admin = await _login(channel, ADMIN_EMAIL, pb.ACCOUNT_KIND_CONSULTANT)
            tokens = await _readers(channel, writers, "load")
            consultant = consultant_service_pb2_grpc.ConsultantServiceStub(channel)
            calls = [consultant.WatchActivity(cpb.WatchActivityRequest(), metadata=bearer(admin))
                     for _ in range(watchers)]
            # The first heartbeat tells where each stream starts.
            starts = []
            for call in calls:
                first = await call.read()
                starts.append(int(first.cursor.rsplit("-", 1)[1]))
            start = min(starts)
            assert all(s == start for s in starts), starts
            stub = reader_service_pb2_grpc.ReaderServiceStub(channel)

            async def write(token: str) -> None:
                for i in range(per_writer):
                    item = rpb.NewInteraction(type="progress", payload_json=json.dumps({"percent": i / per_writer}))
                    await stub.RecordInteraction(rpb.RecordInteractionRequest(interaction=item),
                                                 metadata=bearer(token))

            received: list[list[pb.ActivityEvent]] = [[] for _ in calls]

            async def read(n: int, call: Any, expected: int) -> None:
                while len(received[n]) < expected:
                    response = await asyncio.wait_for(call.read(), 20)
                    received[n].extend(response.events)

            await asyncio.gather(*(write(t) for t in tokens))
            expected = len(_all_event_ids(database, start))
            await asyncio.gather(*(read(n, c, expected) for n, c in enumerate(calls)))
            for call in calls:
                call.cancel()
            return received, start

    received, start = asyncio.run(main())
    in_db = _all_event_ids(database, start)
    assert len([1 for _, r in in_db]) >= writers * per_writer
    for events in received:
        ids = [e.event_id for e in events]
        assert ids == [seq for seq, _ in in_db], "every event once, in commit order"
        assert [e.reader.split("/")[1] for e in events] == [r for _, r in in_db]


def test_slow_consumer_catches_up_without_loss_and_bounded_memory(server: ServerProcess) -> None:
    total = 50_000

    async def main() -> dict[str, Any]:
        async with grpc.aio.insecure_channel(server.address) as fast_channel, \
                grpc.aio.insecure_channel(server.address) as slow_channel:
            admin = await _login(fast_channel, ADMIN_EMAIL, pb.ACCOUNT_KIND_CONSULTANT)
            (token,) = await _readers(fast_channel, 1, "slow")
            wanted = cpb.WatchActivityRequest(kinds=[pb.EVENT_KIND_INTERACTION_RECORDED])
            slow = consultant_service_pb2_grpc.ConsultantServiceStub(slow_channel).WatchActivity(
                wanted, metadata=bearer(admin))
            fast = consultant_service_pb2_grpc.ConsultantServiceStub(fast_channel).WatchActivity(
                wanted, metadata=bearer(admin))
            await slow.read()  # first heartbeat: subscribed
            await fast.read()
            stub = reader_service_pb2_grpc.ReaderServiceStub(fast_channel)
            latencies: list[float] = []
            fast_count = 0

            async def read_fast(until: int) -> None:
                nonlocal fast_count
                while fast_count < until:
                    response = await asyncio.wait_for(fast.read(), 30)
                    now = time.time()
                    for event in response.events:
                        latencies.append(now - json.loads(event.interaction.payload_json)["t"])
                    fast_count += len(response.events)

            def chunk(n: int) -> rpb.RecordInteractionsRequest:
                return rpb.RecordInteractionsRequest(interactions=[
                    rpb.NewInteraction(type="answer", payload_json=json.dumps({"t": time.time(), "n": n * 500 + i}))
                    for i in range(500)
                ])

            rss_before = server.rss_kib()
            # The slow stream reads nothing while all 50,000 are written.
            reader = asyncio.ensure_future(read_fast(total))
            for n in range(total // 500):
                await stub.RecordInteractions(iter([chunk(n)]), metadata=bearer(token))
            await reader
            rss_peak = server.rss_kib()
            got: list[int] = []
            while len(got) < total:
                response = await asyncio.wait_for(slow.read(), 30)
                got.extend(e.event_id for e in response.events)
            slow.cancel()
            fast.cancel()
            return {"got": got, "latencies": latencies, "rss_growth_kib": rss_peak - rss_before}

    result = asyncio.run(main())
    got = result["got"]
    assert len(got) == total
    assert got == sorted(set(got)), "in order, no duplicates"
    growth_mib = result["rss_growth_kib"] / 1024
    print(f"\nslow consumer: RSS growth during the stall {growth_mib:.1f} MiB; fast stream latency "
          f"p50 {statistics.median(result['latencies']) * 1000:.1f} ms")
    # Bound: the per-stream buffer (4096 events) plus what gRPC holds; far below holding 50,000 events.
    assert growth_mib < 120
    # The other stream was served throughout: it got every event, promptly.
    assert len(result["latencies"]) == total
    assert statistics.median(result["latencies"]) < 1.0


def test_graceful_shutdown_ends_streams_with_unavailable_and_cursor(server: ServerProcess) -> None:
    async def main() -> grpc.aio.AioRpcError:
        async with grpc.aio.insecure_channel(server.address) as channel:
            admin = await _login(channel, ADMIN_EMAIL, pb.ACCOUNT_KIND_CONSULTANT)
            call = consultant_service_pb2_grpc.ConsultantServiceStub(channel).WatchActivity(
                cpb.WatchActivityRequest(), metadata=bearer(admin))
            await call.read()
            started = time.monotonic()
            server.process.send_signal(15)
            try:
                while True:
                    await asyncio.wait_for(call.read(), 10)
            except grpc.aio.AioRpcError as error:
                assert time.monotonic() - started < 5
                return error
            raise AssertionError("stream did not end")

    error = asyncio.run(main())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    infos = [d for d in error_details(error) if hasattr(d, "metadata")]
    assert infos
    assert infos[0].metadata["cursor"]
    assert server.process.wait(15) == 0
    assert server.wait_log("database closed")


@pytest.mark.slow
def test_stream_churn_leaves_memory_flat(small_cache_server: ServerProcess) -> None:
    server = small_cache_server
    cycles, parallel = 20_000, 20

    async def main() -> tuple[int, int]:
        async with grpc.aio.insecure_channel(server.address) as channel:
            admin = await _login(channel, ADMIN_EMAIL, pb.ACCOUNT_KIND_CONSULTANT)
            stub = consultant_service_pb2_grpc.ConsultantServiceStub(channel)

            async def cycle() -> None:
                call = stub.WatchActivity(cpb.WatchActivityRequest(), metadata=bearer(admin))
                await call.read()
                call.cancel()

            async def worker(n: int) -> None:
                for _ in range(n):
                    await cycle()

            warm = 2_000
            await asyncio.gather(*(worker(warm // parallel) for _ in range(parallel)))
            await asyncio.sleep(0.5)
            baseline = server.rss_kib()
            await asyncio.gather(*(worker((cycles - warm) // parallel) for _ in range(parallel)))
            await asyncio.sleep(0.5)
            return baseline, server.rss_kib()

    baseline, after = asyncio.run(main())
    print(f"\nchurn: RSS {baseline / 1024:.1f} MiB after warm-up, {after / 1024:.1f} MiB after {cycles} cycles")
    assert after <= baseline * 1.10
