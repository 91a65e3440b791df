"""Several `cursor-grpc serve` instances on one PostgreSQL database and one
NATS server, as docs/scaling.md deploys them.

Readers write through a round_robin channel over instances A and B (unary
calls and uploads, with ids they choose, retried until acknowledged);
consultants watch on C, and on A with resumes behind their cursor; B is
killed with SIGKILL mid-load. Afterwards: every acknowledged interaction
is stored once, each watcher saw every committed interaction exactly once
and in commit order, a logout on A ends a stream on C within a second,
and each reader's presence went idle exactly once, whichever instance
swept it.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from cursor.v1 import auth_service_pb2 as apb
from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2
from tests.conftest import Client, migrate_with_admin
from tests.databases import PostgresDatabase
from tests.ops_support import FAST_AUTH_ENV, new_reader, record
from tests.procs import ServerProcess
from tests.streams import StreamReader
from tests.test_chaos import FAST_RECONNECT, Cluster, Ledger, LedgerWriter, ResumingWatcher

pytestmark = pytest.mark.postgres

WRITERS = 4
IDLE_SECONDS = 2.0
ACCOUNT_FAILURE_BURST = 3
STREAMS_PER_SESSION = 4


def round_robin(*servers: ServerProcess) -> grpc.Channel:
    """One channel over several instances, as a client behind DNS would have."""
    addresses = ",".join(server.address for server in servers)
    config = {"loadBalancingConfig": [{"round_robin": {}}]}
    return grpc.insecure_channel(f"ipv4:{addresses}", options=[
        *FAST_RECONNECT, ("grpc.service_config", json.dumps(config)), ("grpc.enable_retries", 0)])


@pytest.fixture(params=["nats"])
def instances(request: pytest.FixtureRequest, postgres_database_url: str,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Three instances on one database; the doorbell is NATS unless a test
    asks for Redis or PostgreSQL's LISTEN/NOTIFY (`postgres`)."""
    doorbell = request.param
    broker = None if doorbell == "postgres" else request.getfixturevalue(f"{doorbell}_url")
    database = PostgresDatabase(postgres_database_url, broker=broker)
    migrate_with_admin(database, monkeypatch)
    env = {
        **FAST_AUTH_ENV, **({"CURSOR_BROKER": broker} if broker else {}),
        "CURSOR_PRESENCE_IDLE_SECONDS": str(IDLE_SECONDS), "CURSOR_PRESENCE_GRACE_SECONDS": "0",
        "CURSOR_PRESENCE_SWEEP_SECONDS": "0.2",
        "CURSOR_ACCOUNT_LOGIN_FAILURE_BURST": str(ACCOUNT_FAILURE_BURST),
        "CURSOR_ACCOUNT_LOGIN_FAILURES_PER_MINUTE": "1",
        "CURSOR_MAX_STREAMS_PER_SESSION": str(STREAMS_PER_SESSION),
    }
    servers: list[ServerProcess] = []
    try:
        for _ in range(3):
            servers.append(ServerProcess(database.url, env=env, args=()))
        for server in servers:  # hints sent before an instance subscribed would be lost (they are advisory)
            assert server.wait_log(f"doorbell {doorbell} connected", timeout=15), server.stderr
        yield database, servers
    finally:
        for server in servers:
            server.kill()


def presence_runs(database: PostgresDatabase, reader_id: str) -> list[str]:
    """The reader's presence events, in commit order."""
    return [json.loads(data)["presence"] for (data,) in database.rows(
        "SELECT data FROM events WHERE kind = 'presence' AND reader_id = ? ORDER BY seq", (reader_id,))]


def test_three_instances_keep_every_guarantee_through_a_kill(instances: Any) -> None:
    database, (a, b, c) = instances
    channel_c = grpc.insecure_channel(c.address, options=FAST_RECONNECT)
    channel_a = grpc.insecure_channel(a.address, options=FAST_RECONNECT)
    writers_channel = round_robin(a, b)
    # C's watcher starts from a snapshot of the readers, then goes live.
    watcher_c = ResumingWatcher(Cluster._consultant(Client(channel_c)), snapshot=True)
    watcher_a = ResumingWatcher(Cluster._consultant(Client(channel_a)))
    ledger, stopping = Ledger(), threading.Event()
    writers: list[LedgerWriter] = []
    try:
        for watcher in (watcher_c, watcher_a):
            watcher.start()
            assert watcher.opened.wait(30), "a watcher's stream did not open"
        writers = [LedgerWriter(new_reader(writers_channel, "cluster"), ledger, stopping, n, in_flight=4)
                   for n in range(WRITERS)]
        reader_ids = [w.client.account.rsplit("/", 1)[-1] for w in writers]
        for writer in writers:
            writer.start()

        # Load on A and B; A's watcher is cut three times and resumes behind its cursor.
        for cut in range(1, 4):
            ledger.wait_beyond(ledger.count() + 150, timeout=60)
            cancelled = watcher_a._call
            assert cancelled is not None
            cancelled.cancel()
            deadline = time.monotonic() + 10
            while watcher_a.reconnects < cut or watcher_a._call is cancelled:
                assert time.monotonic() < deadline, f"A's watcher did not resume after cut {cut}"
                time.sleep(0.01)
        before_kill = ledger.count()
        b.process.kill()
        b.process.wait(10)
        ledger.wait_beyond(before_kill + 300, timeout=60)  # A carries on alone
        stopping.set()
        for writer in writers:
            writer.join(200)
        assert not ledger.errors, ledger.errors[:5]

        db_seqs = [seq for (seq,) in database.rows("SELECT seq FROM interactions ORDER BY seq")]
        stored = dict(database.rows("SELECT id, count(*) FROM interactions GROUP BY id"))
        for watcher in (watcher_c, watcher_a):
            watcher.wait_until_seen(db_seqs[-1], timeout=30)
        figures = {"interactions": len(db_seqs), "acknowledged": len(ledger.acknowledged),
                   "instances": 3, "kills": 1, "resumes_on_a": watcher_a.reconnects}
        for name, watcher in (("c", watcher_c), ("a", watcher_a)):
            seen = watcher.seqs
            figures[f"gaps_{name}"] = len(set(db_seqs) - set(seen))
            figures[f"repeated_{name}"] = len(seen) - len(set(seen))
            figures[f"out_of_order_{name}"] = sum(1 for x, y in itertools.pairwise(seen) if y <= x)
            figures[f"not_committed_{name}"] = len(set(seen) - set(db_seqs))
        figures["lost"] = len(ledger.acknowledged - stored.keys())
        figures["duplicated"] = sum(1 for n in stored.values() if n > 1)
        figures["not_sent"] = len(stored.keys() - ledger.attempted)
        print(f"\ncluster figures: {figures}")
        assert figures["acknowledged"] > 600
        assert watcher_a.reconnects >= 3
        for name in ("gaps_c", "repeated_c", "out_of_order_c", "not_committed_c", "gaps_a", "repeated_a",
                     "out_of_order_a", "not_committed_a", "lost", "duplicated", "not_sent"):
            assert figures[name] == 0, (name, figures)
        assert not watcher_c.errors
        assert watcher_c.snapshot_complete
        assert not watcher_a.errors
        assert watcher_c.reconnects == 0, "C stayed up: its watcher never had to reconnect"
        assert database.integrity_errors() == []

        # Presence: silent readers go idle once, though A and C both sweep.
        deadline = time.monotonic() + IDLE_SECONDS + 10
        while time.monotonic() < deadline and not all(
                presence_runs(database, r)[-1:] == ["idle"] for r in reader_ids):
            time.sleep(0.2)
        time.sleep(1.0)  # a second sweep round on each instance, which must change nothing
        for reader_id in reader_ids:
            runs = presence_runs(database, reader_id)
            assert runs[-1:] == ["idle"], runs
            assert runs.count("idle") == 1, runs
            assert all(x != y for x, y in itertools.pairwise(runs)), f"a presence was announced twice: {runs}"
    finally:
        stopping.set()
        for watcher in (watcher_c, watcher_a):
            watcher.close()
        for channel in (channel_a, channel_c, writers_channel):
            channel.close()


@pytest.mark.parametrize("instances", ["nats", "redis", "postgres"], indirect=True)
def test_a_logout_on_one_instance_ends_a_stream_on_another_within_a_second(instances: Any) -> None:
    _, (a, _, c) = instances
    with grpc.insecure_channel(a.address) as on_a, grpc.insecure_channel(c.address) as on_c:
        consultant = Cluster._consultant(Client(on_a))
        watcher = StreamReader(Client(on_c, token=consultant.token).consultant.WatchActivity(
            cpb.WatchActivityRequest(), metadata=consultant.md))
        try:
            time.sleep(0.5)
            assert watcher.error is None
            assert watcher.ended_at is None
            consultant.auth.Logout(apb.LogoutRequest(), metadata=consultant.md)
            logged_out = time.monotonic()
            watcher.wait_for(lambda: watcher.ended_at is not None, timeout=5)
            assert watcher.ended_at is not None
            assert watcher.error is not None
            took = watcher.ended_at - logged_out
            print(f"\nlogout on A ended the stream on C after {took * 1000:.0f} ms")
            assert watcher.error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert took < 1.0
        finally:
            watcher.cancel()


def test_a_cursor_from_one_instance_resumes_on_another_at_once(instances: Any) -> None:
    """A consultant that reconnects to another instance with a cursor that
    instance has not read yet is caught up, not refused as ahead."""
    _, (a, b, _) = instances
    with grpc.insecure_channel(a.address) as on_a, grpc.insecure_channel(b.address) as on_b:
        writer = new_reader(on_a, "resume")
        consultant = Cluster._consultant(Client(on_a))
        for round_ in range(20):
            stream = StreamReader(consultant.consultant.WatchActivity(
                cpb.WatchActivityRequest(), metadata=consultant.md))
            seq = record(writer, {"round": round_})
            stream.wait_for(lambda seq=seq, stream=stream: any(e.event_id >= seq for e in stream.events))
            cursor = stream.cursor()
            stream.cancel()
            resumed = StreamReader(Client(on_b, token=consultant.token).consultant.WatchActivity(
                cpb.WatchActivityRequest(after=cursor), metadata=consultant.md))
            time.sleep(0.05)
            assert resumed.error is None, resumed.error
            resumed.cancel()


@pytest.mark.parametrize("instances", ["nats", "redis", "postgres"], indirect=True)
def test_a_consent_revoked_on_one_instance_ends_the_shared_stream_on_another_within_a_second(
        instances: Any) -> None:
    _, (a, _, c) = instances
    with grpc.insecure_channel(a.address) as on_a, grpc.insecure_channel(c.address) as on_c:
        granter = new_reader(on_a, "granter")
        grantee = new_reader(on_a, "grantee")
        granter.reader.GrantConsent(rpb.GrantConsentRequest(
            grantee=grantee.account, scope=resources_pb2.CONSENT_SCOPE_STATE_AND_INTERACTIONS), metadata=granter.md)
        shared = StreamReader(Client(on_c, token=grantee.token).reader.WatchSharedActivity(
            rpb.WatchSharedActivityRequest(reader=granter.account), metadata=grantee.md))
        try:
            seq = record(granter, {"shared": True})
            shared.wait_for(lambda: any(e.event_id >= seq for e in shared.events))
            granter.reader.RevokeConsent(rpb.RevokeConsentRequest(grantee=grantee.account), metadata=granter.md)
            revoked = time.monotonic()
            shared.wait_for(lambda: shared.ended_at is not None, timeout=5)
            assert shared.ended_at is not None
            took = shared.ended_at - revoked
            print(f"\nconsent revoked on A ended the shared stream on C after {took * 1000:.0f} ms")
            assert shared.error is not None
            assert shared.error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert took < 1.0
        finally:
            shared.cancel()


def test_login_failures_on_several_instances_count_together(instances: Any) -> None:
    """The throttles are shared: failures on C empty the account's bucket on
    A too, which saw none of them itself. (The fixture sets the bucket to 3
    failures, refilled once a minute.)"""
    _, (a, _, c) = instances
    with grpc.insecure_channel(a.address) as on_a, grpc.insecure_channel(c.address) as on_c:
        # Unknown emails are throttled like real ones (the answer never tells which).
        wrong = apb.LoginRequest(email=f"guessed-{time.monotonic_ns()}@example.com", password="not the password")
        for _ in range(ACCOUNT_FAILURE_BURST):
            with pytest.raises(grpc.RpcError) as failed:
                Client(on_c).auth.Login(wrong)
            assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
        time.sleep(0.5)  # announcements travel in milliseconds; the bucket stays empty for a minute
        with pytest.raises(grpc.RpcError) as throttled:
            Client(on_a).auth.Login(wrong)
        assert throttled.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, throttled.value.details()
        assert "too many failed logins for this account" in (throttled.value.details() or "")


def test_a_session_s_stream_cap_holds_across_instances(instances: Any) -> None:
    """Streams of one session on A and on C count together against its cap
    (4 here); closing one elsewhere frees a place within a second or so."""
    _, (a, _, c) = instances
    with grpc.insecure_channel(a.address) as on_a, grpc.insecure_channel(c.address) as on_c:
        consultant = Cluster._consultant(Client(on_a))
        on = {"a": Client(on_a, token=consultant.token), "c": Client(on_c, token=consultant.token)}

        def watch(where: str) -> StreamReader:
            stream = StreamReader(on[where].consultant.WatchActivity(
                cpb.WatchActivityRequest(), metadata=consultant.md))
            stream.wait_for(lambda: bool(stream.responses) or stream.error is not None)
            return stream

        streams = [watch("a"), watch("a"), watch("c"), watch("c")]
        try:
            assert all(s.error is None for s in streams)
            time.sleep(1.5)  # each instance shares its counts every half second
            refused = watch("a")
            assert refused.error is not None, "a fifth stream of the session was admitted"
            assert refused.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "session already has 4 open streams" in (refused.error.details() or "")
            streams.pop().cancel()  # one of C's
            time.sleep(1.5)
            admitted = watch("a")
            assert admitted.error is None, admitted.error
            streams.append(admitted)
        finally:
            for stream in streams:
                stream.cancel()
