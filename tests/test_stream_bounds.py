"""What one caller's streams may cost the server: a cap on open streams per
session, per account and in all, and slow consumers that hold a bounded few
MiB each instead of everything written while they lag."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

import grpc
import pytest

from cursor.v1 import auth_service_pb2 as apb
from cursor.v1 import auth_service_pb2_grpc, consultant_service_pb2_grpc, reader_service_pb2_grpc
from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2 as pb
from cursor_grpc.config import LiveSettings
from cursor_grpc.storage.records import EventFilter
from tests.conftest import ADMIN_EMAIL, PASSWORD, Client, Harness, bearer, migrate_with_admin
from tests.databases import TestDatabase
from tests.helpers import error_details, error_reason
from tests.procs import ServerProcess
from tests.streams import StreamReader

RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def watch_messages(client: Client) -> StreamReader:
    return StreamReader(client.reader.WatchMyMessages(rpb.WatchMyMessagesRequest(), metadata=client.md))


def opened(stream: StreamReader) -> bool:
    """Wait until the stream sent its first message or ended; True if open."""
    stream.wait_for(lambda: bool(stream.responses) or stream.ended_at is not None, timeout=30)
    return bool(stream.responses)


def assert_refused(stream: StreamReader, scope: str, limit: int) -> None:
    assert not opened(stream), "the stream was expected to be refused"
    assert stream.error is not None
    assert stream.error.code() == RESOURCE_EXHAUSTED, stream.error
    assert error_reason(stream.error) == "TOO_MANY_STREAMS"
    info = next(d for d in error_details(stream.error) if hasattr(d, "metadata"))
    assert dict(info.metadata) == {"scope": scope, "limit": str(limit)}
    assert f"{limit} open streams" in (stream.error.details() or "")


def wait_stream_count(h: Harness, count: int) -> None:
    deadline = time.monotonic() + 10
    while h.server.app.broadcaster.stream_count != count:
        assert time.monotonic() < deadline, f"{h.server.app.broadcaster.stream_count} streams open, not {count}"
        time.sleep(0.01)


def email_of(h: Harness, client: Client) -> str:
    return str(h.database.rows("SELECT email FROM users WHERE id = ?", (client.account.split("/")[1],))[0][0])


# --- caps on open streams ---------------------------------------------------------------------------------------


def test_a_session_and_an_account_open_only_so_many_streams(h: Harness) -> None:
    per_session, per_account = LiveSettings.max_streams_per_session, LiveSettings.max_streams_per_account
    assert per_account == 2 * per_session  # the steps below rely on it
    first = h.new_reader()
    streams = [watch_messages(first) for _ in range(per_session)]
    assert all(opened(s) for s in streams)
    assert_refused(watch_messages(first), "session", per_session)
    # Another session of the same account has its own allowance, up to the account's.
    second = h.anonymous.login(email_of(h, first))
    streams += [watch_messages(second) for _ in range(per_account - per_session)]
    assert all(opened(s) for s in streams)
    third = h.anonymous.login(email_of(h, first))
    assert_refused(watch_messages(third), "account", per_account)
    # Other accounts are not affected, and a closed stream makes room again.
    assert opened(watch_messages(h.new_reader()))
    streams[0].cancel()
    wait_stream_count(h, per_account)
    assert opened(watch_messages(third))
    for stream in streams:
        stream.cancel()


def test_a_consultant_is_capped_too_and_a_refused_watch_is_not_audited(h: Harness) -> None:
    consultant = h.new_consultant()
    cap = LiveSettings.max_streams_per_session

    def watch() -> StreamReader:
        return StreamReader(consultant.consultant.WatchActivity(cpb.WatchActivityRequest(), metadata=consultant.md))

    streams = [watch() for _ in range(cap)]
    assert all(opened(s) for s in streams)
    assert_refused(watch(), "session", cap)
    rows = h.database.rows("SELECT count(*) FROM audit_logs WHERE action = 'watch.open' AND actor_id = ?",
                           (consultant.account.split("/")[1],))
    assert rows == [(cap,)]
    for stream in streams:
        stream.cancel()


def _server(database: TestDatabase, monkeypatch: pytest.MonkeyPatch, **env: str) -> ServerProcess:
    return ServerProcess(migrate_with_admin(database, monkeypatch).url, env=env)


def test_the_server_caps_its_open_streams_in_all(database: TestDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    server = _server(database, monkeypatch, CURSOR_MAX_STREAMS_TOTAL="12")
    channel = grpc.insecure_channel(server.address)
    try:
        anonymous = Client(channel)
        readers = []
        for n in range(4):
            email = f"total{n}@example.com"
            anonymous.auth.RegisterReader(apb.RegisterReaderRequest(email=email, password=PASSWORD, display_name="R"))
            readers.append(anonymous.login(email))
        streams = [watch_messages(readers[n % 4]) for n in range(12)]
        assert all(opened(s) for s in streams)
        assert_refused(watch_messages(readers[0]), "server", 12)
        streams[0].cancel()
        deadline = time.monotonic() + 10
        while True:  # the server sees the cancel a moment later
            again = watch_messages(readers[1])
            if opened(again):
                break
            assert time.monotonic() < deadline, "no room after a stream closed"
            time.sleep(0.05)
        for stream in [*streams, again]:
            stream.cancel()
    finally:
        channel.close()
        server.kill()


def test_a_cap_of_zero_is_refused_at_start(database: TestDatabase) -> None:
    database.migrate()
    server = ServerProcess(database.url, env={"CURSOR_MAX_STREAMS_PER_SESSION": "0"}, wait=False)
    assert server.exit_code(timeout=60) == 2
    assert "CURSOR_MAX_STREAMS_PER_SESSION must be at least 1, not 0" in server.stderr


# --- slow consumers hold a bounded amount of memory -------------------------------------------------------------


def test_replay_reads_a_page_by_bytes_and_says_how_far_it_got(h: Harness) -> None:
    reader = h.new_reader()
    store = h.server.app.store
    start = h.server.app.broadcaster.head
    seqs = [reader.reader.RecordInteraction(rpb.RecordInteractionRequest(interaction=rpb.NewInteraction(
        type="answer", payload_json=json.dumps({"n": n, "pad": "x" * 1000}))), metadata=reader.md).interaction.sequence
        for n in range(6)]
    wanted = EventFilter(kinds=frozenset({"interaction"}))
    events, reached = h.server.call(store.replay(start, seqs[-1], wanted, 2500))
    assert [e.seq for e in events] == seqs[:3]
    assert reached == seqs[2]
    # Paging on from there reads the rest once; without a budget, all at once.
    events, reached = h.server.call(store.replay(reached, seqs[-1], wanted, 2500))
    assert ([e.seq for e in events], reached) == (seqs[3:], seqs[-1])
    events, reached = h.server.call(store.replay(start, seqs[-1], wanted))
    assert ([e.seq for e in events], reached) == (seqs, seqs[-1])

SLOW_STREAMS = 10
EVENTS = 6000
PER_REQUEST = 100
PAD = "x" * 16_000  # the payload is just under the 16 KiB cap


async def _login(channel: grpc.aio.Channel, email: str, kind: int) -> str:
    response = await auth_service_pb2_grpc.AuthServiceStub(channel).Login(
        apb.LoginRequest(email=email, password=PASSWORD, account_kind=kind))
    return str(response.session.token)


def _interaction_seqs(database: TestDatabase, after: int) -> list[int]:
    return [int(seq) for (seq,) in database.rows("SELECT seq FROM interactions WHERE seq > ? ORDER BY seq", (after,))]


class RssSampler:
    """The server's peak RSS, sampled from /proc on a thread."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.peak = server.rss_kib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.server.rss_kib())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


def test_slow_consumers_cost_bounded_memory_and_lose_nothing(
    database: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 1 MiB page cache keeps SQLite's own memory out of the measurement.
    server = _server(database, monkeypatch, CURSOR_CACHE_SIZE_KIB="1024", CURSOR_HEARTBEAT_SECONDS="1")
    wanted = cpb.WatchActivityRequest(kinds=[pb.EVENT_KIND_INTERACTION_RECORDED])

    async def main() -> tuple[int, int, int, int, list[list[int]]]:
        channels = [grpc.aio.insecure_channel(server.address) for _ in range(SLOW_STREAMS + 1)]
        try:
            control = channels[0]
            admin = await _login(control, ADMIN_EMAIL, pb.ACCOUNT_KIND_CONSULTANT)
            await auth_service_pb2_grpc.AuthServiceStub(control).RegisterReader(
                apb.RegisterReaderRequest(email="writer@example.com", password=PASSWORD, display_name="W"))
            writer = await _login(control, "writer@example.com", pb.ACCOUNT_KIND_READER)
            # Two sessions: the slow streams stay within the per-session cap.
            tokens = [admin, await _login(control, ADMIN_EMAIL, pb.ACCOUNT_KIND_CONSULTANT)]
            calls = [consultant_service_pb2_grpc.ConsultantServiceStub(channel).WatchActivity(
                wanted, metadata=bearer(tokens[n % 2])) for n, channel in enumerate(channels[1:])]
            starts = {int((await call.read()).cursor.rsplit("-", 1)[1]) for call in calls}
            assert len(starts) == 1, starts
            stub = reader_service_pb2_grpc.ReaderServiceStub(control)

            async def write(count: int, first: int) -> None:
                for start in range(0, count, PER_REQUEST):
                    chunk = rpb.RecordInteractionsRequest(interactions=[
                        rpb.NewInteraction(type="answer", payload_json=json.dumps({"n": first + start + i, "pad": PAD}))
                        for i in range(PER_REQUEST)])
                    await stub.RecordInteractions(iter([chunk]), metadata=bearer(writer))

            received: list[list[int]] = [[] for _ in calls]

            async def read(n: int, until: int, written: asyncio.Event | None = None) -> None:
                """Read up to `until` events; one message a second until `written` is set."""
                while len(received[n]) < until:
                    response = await asyncio.wait_for(calls[n].read(), 120)
                    received[n].extend(e.event_id for e in response.events)
                    if written is not None and not written.is_set():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(written.wait(), 1.0)

            # Warm up every path once (live, replay, gRPC buffers), then measure.
            warm = 4 * PER_REQUEST
            await write(warm, 0)
            await asyncio.gather(*(read(n, warm) for n in range(len(calls))))
            await asyncio.sleep(1.0)
            baseline = server.rss_kib()
            sampler = RssSampler(server)
            # The slow streams read one message a second while everything is
            # written, then catch up as fast as they can.
            written = asyncio.Event()
            slow = asyncio.gather(*(read(n, warm + EVENTS, written) for n in range(len(calls))))
            await write(EVENTS, warm)
            written_peak = sampler.peak
            written.set()
            await slow
            peak = sampler.stop()
            for call in calls:
                call.cancel()
            return starts.pop(), baseline, written_peak, peak, received
        finally:
            for channel in channels:
                await channel.close()

    try:
        start, baseline, written_peak, peak, received = asyncio.run(main())
        expected = _interaction_seqs(database, start)
    finally:
        server.kill()
    assert len(expected) == 4 * PER_REQUEST + EVENTS
    for events in received:
        assert events == expected, "every event once, in commit order"
    growth_mib = (peak - baseline) / 1024
    print(f"\n{SLOW_STREAMS} slow streams, {EVENTS} x 16 KiB: RSS {baseline / 1024:.0f} MiB before, "
          f"peak {written_peak / 1024:.0f} MiB while writing, {peak / 1024:.0f} MiB catching up "
          f"(+{growth_mib:.0f} MiB)")
    assert growth_mib < 10 * SLOW_STREAMS, "a slow stream may cost the server a few MiB, not what it lags behind"
