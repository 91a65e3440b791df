"""Fan-out with a CPU budget (docs/live.md, "Pacing"): the pure pacing logic
with injected clocks, the metering of a stream's writes, and a real server
whose flush interval widens under load and narrows again, while every
watcher still gets every event once, in order."""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import consultant_service_pb2_grpc, reader_service_pb2_grpc
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2 as pb
from cursor_grpc.config import ConfigError
from cursor_grpc.live.broadcaster import FanoutPacer
from tests.conftest import ADMIN_EMAIL, bearer, migrate_with_admin
from tests.databases import TestDatabase
from tests.procs import ServerProcess
from tests.test_live_load import _all_event_ids, _login, _readers

MIN, MAX = 0.005, 1.0


class FakeClock:
    """A clock the test moves by hand (the pacer's wall clock, or its CPU clock)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def pacer(share: float = 0.25, clock: Callable[[], float] | None = None,
          cpu: Callable[[], float] | None = None) -> FanoutPacer:
    return FanoutPacer(share, MIN, MAX, clock=clock or FakeClock(), cpu=cpu or FakeClock())


def run(p: FanoutPacer, cost: Callable[[float], float], seconds: float, start: float = 0.0) -> list[float]:
    """Flushes back to back for `seconds` from `start` (the load never lets
    the broadcaster wait longer than the interval), each costing
    `cost(window)` CPU seconds, where `window` is the time since the last
    flush; the intervals chosen after each flush."""
    now, chosen = start, []
    while now < start + seconds:
        p.flushing(now)
        interval = p.interval()
        chosen.append(interval)
        p.charge(cost(interval))
        now += interval
    p.flushing(now)
    return chosen


# --- the pacing logic ---------------------------------------------------------------


def test_cheap_flushes_keep_the_shortest_interval() -> None:
    p = pacer()
    run(p, lambda _: 0.0002, 2.0)  # 0.2 ms a flush: 4% of the loop at 5 ms
    assert p.interval() == MIN


def test_the_interval_widens_until_fan_out_is_within_its_share() -> None:
    """A flush costing 10 ms of loop CPU, at most 25% of the loop: one flush
    every 40 ms, and the share measured is the budget."""
    p = pacer(share=0.25)
    chosen = run(p, lambda _: 0.010, 3.0)
    assert chosen[0] == MIN  # nothing measured yet
    assert p.interval() == pytest.approx(0.040, rel=0.02)
    assert p.measured_share(p._opened) == pytest.approx(0.25, rel=0.05)


def test_a_cost_that_grows_with_the_window_settles_where_it_fits_the_share() -> None:
    """Per flush: 5 ms for the streams' messages plus 20 us per event at
    5,000 events/s. A longer interval carries more events per flush, so
    the pacer settles at 5 ms / (0.25 - 0.1) = 33 ms, not at 5 ms / 0.25."""
    p = pacer(share=0.25)
    run(p, lambda window: 0.005 + 20e-6 * 5000 * window, 5.0)
    assert p.interval() == pytest.approx(0.005 / (0.25 - 0.1), rel=0.05)


def test_the_interval_stops_at_its_maximum_and_the_minimum_wins_when_they_cross() -> None:
    p = pacer(share=0.25)
    run(p, lambda window: 0.5 + window, 20.0)  # no interval can keep this under 25%
    assert p.interval() == MAX
    p.min_interval = 2.0  # a test's long minimum, above the maximum
    assert p.interval() == 2.0


def test_it_narrows_again_when_the_load_falls_more_slowly_than_it_widened() -> None:
    p = pacer(share=0.25)
    up = run(p, lambda _: 0.010, 0.3)
    widened_in = next(i for i, value in enumerate(up) if value >= 0.03)
    assert sum(up[:widened_in]) < 0.3, "widened within a fraction of a second"
    run(p, lambda _: 0.010, 2.0, start=0.3)
    loaded = p.interval()
    down = run(p, lambda _: 0.0002, 0.2, start=2.3)
    assert loaded * 0.5 < down[-1] < loaded, "narrowing, not dropping at the first cheap flush"
    run(p, lambda _: 0.0002, 5.0, start=2.5)
    assert p.interval() == MIN


def test_noisy_flushes_do_not_make_it_oscillate() -> None:
    """Alternating cheap and dear flushes (a 2.3x spread): the interval
    moves far less than the raw cost does, and never below what the mean
    cost needs."""
    p = pacer(share=0.25)
    flip = [False]

    def noisy(_: float) -> float:
        flip[0] = not flip[0]
        return 0.006 if flip[0] else 0.014

    chosen = run(p, noisy, 5.0)
    settled = chosen[len(chosen) // 2:]
    assert max(settled) / min(settled) < 1.3
    assert min(settled) >= 0.040 * 0.95


def test_a_quiet_spell_resets_the_cost() -> None:
    """After a heavy spell, a lone flush minutes later that costs little
    is taken almost as it is: the next burst starts at the short interval."""
    p = pacer(share=0.25)
    run(p, lambda _: 0.010, 2.0)
    assert p.interval() > 0.03
    p.flushing(120.0)  # the window of the last heavy flush closes, a lone event
    p.charge(0.0002)
    p.flushing(125.0)
    assert p.interval() == MIN


def test_the_measured_share_falls_when_flushes_stop() -> None:
    p = pacer(share=0.25)
    run(p, lambda _: 0.010, 2.0)
    opened = p._opened
    assert opened is not None
    busy = p.measured_share(opened + 0.01)
    assert busy == pytest.approx(0.25, rel=0.1)
    assert p.measured_share(opened + 10.0) < busy / 100


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5])
def test_a_share_outside_0_to_1_is_refused(share: float) -> None:
    with pytest.raises(ConfigError, match="CURSOR_FANOUT_CPU_SHARE"):
        FanoutPacer(share, MIN, MAX)


# --- metering a stream's writes ----------------------------------------------------------


def test_metering_charges_the_steps_not_the_waiting() -> None:
    """Only what runs inside the metered awaitable counts, from `began`:
    the CPU clock moving while it is suspended (other tasks running) is
    not charged. Values, results and exceptions pass through."""
    cpu = FakeClock()
    p = pacer(cpu=cpu)

    async def write(data: str) -> str:
        cpu.now += 0.001  # the synchronous part of a write
        got = await asyncio.sleep(0.01, "resumed")
        cpu.now += 0.002  # after resuming
        return f"{data} {got}"

    async def others() -> None:
        await asyncio.sleep(0.005)
        cpu.now += 1.0  # another task, while the write waits

    async def scenario() -> str:
        other = asyncio.ensure_future(others())
        began = cpu()
        cpu.now += 0.0005  # taking from the buffer, before the write starts
        result = await p.metered(write("sent"), began)
        await other
        return result

    assert asyncio.run(scenario()) == "sent resumed"
    assert p._spent == pytest.approx(0.0035)
    assert p.spent_total == pytest.approx(0.0035)


def test_metering_passes_cancellation_and_errors_through() -> None:
    cpu = FakeClock()
    p = pacer(cpu=cpu)
    cleaned: list[str] = []

    async def blocked() -> None:
        cpu.now += 0.001
        try:
            await asyncio.sleep(10)
        finally:
            cpu.now += 0.001
            cleaned.append("finally")

    async def failing() -> None:
        await asyncio.sleep(0)
        raise ValueError("write failed")

    async def scenario() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await p.metered(blocked())
        with pytest.raises(ValueError, match="write failed"):
            await p.metered(failing())

    asyncio.run(scenario())
    assert cleaned == ["finally"]
    assert p._spent == pytest.approx(0.002)


# --- a real server ---------------------------------------------------------------------------

WATCHERS = 50
WRITERS, PER_WRITER = 16, 40
# A small budget, so the widening under load is unmistakable on any machine:
# 50 stream messages cost at least about a millisecond of loop CPU.
SHARE = 0.04


def _metrics_port(server: ServerProcess) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for line in server.log:
            match = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", line)
            if match:
                return int(match.group(1))
        time.sleep(0.05)
    raise AssertionError("no metrics address in the log:\n" + "".join(server.log[-20:]))


def _fanout(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {sample.name: float(sample.value) for family in text_string_to_metric_families(text)
            if family.name.startswith("cursor_fanout") for sample in family.samples}


@pytest.fixture
def server(database: TestDatabase, monkeypatch: pytest.MonkeyPatch) -> Any:
    migrate_with_admin(database, monkeypatch)
    process = ServerProcess(database.url, env={
        "CURSOR_HEARTBEAT_SECONDS": "1", "CURSOR_MAX_STREAMS_PER_SESSION": "1000",
        "CURSOR_MAX_STREAMS_PER_ACCOUNT": "1000", "CURSOR_METRICS_LISTEN": "127.0.0.1:0",
        "CURSOR_FANOUT_CPU_SHARE": str(SHARE),
    })
    yield process
    process.kill()


def test_under_load_the_interval_widens_and_every_watcher_gets_every_event_once_in_order(
    server: ServerProcess, database: TestDatabase
) -> None:
    """Lone events first (light traffic), then 16 writers back to back with
    50 watchers, then lone events again with 2 watchers. Relative checks
    only: under load the interval is several times the shortest, fan-out
    stays about within its share of the loop, and each watcher's messages
    carry several events each; a lone event reaches all
    watchers in less time than one loaded interval; the interval narrows
    again once the load (here, the number of streams) falls."""
    port = _metrics_port(server)
    assert _fanout(port)["cursor_fanout_loop_share_budget"] == SHARE

    async def main() -> dict[str, Any]:
        async with grpc.aio.insecure_channel(server.address) as channel:
            admin = await _login(channel, ADMIN_EMAIL, pb.ACCOUNT_KIND_CONSULTANT)
            tokens = await _readers(channel, WRITERS, "budget")
            consultant = consultant_service_pb2_grpc.ConsultantServiceStub(channel)
            calls = [consultant.WatchActivity(cpb.WatchActivityRequest(), metadata=bearer(admin))
                     for _ in range(WATCHERS)]
            starts = [int((await call.read()).cursor.rsplit("-", 1)[1]) for call in calls]
            start = min(starts)
            assert all(s == start for s in starts), starts
            stub = reader_service_pb2_grpc.ReaderServiceStub(channel)
            received: list[list[int]] = [[] for _ in calls]
            messages = [0] * len(calls)
            arrived: dict[int, list[float]] = {}
            news = asyncio.Event()

            async def read(n: int, call: Any) -> None:
                try:
                    while (response := await call.read()) is not grpc.aio.EOF:
                        now = time.monotonic()
                        if response.events:
                            messages[n] += 1
                        for event in response.events:
                            received[n].append(event.event_id)
                            arrived.setdefault(event.event_id, []).append(now)
                        news.set()
                except asyncio.CancelledError:
                    pass
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.CANCELLED:
                        raise

            async def until(done: Callable[[], bool], within: float) -> None:
                async with asyncio.timeout(within):
                    while not done():
                        news.clear()
                        await news.wait()

            readers = [asyncio.ensure_future(read(n, call)) for n, call in enumerate(calls)]

            async def record(token: str, i: int) -> int:
                item = rpb.NewInteraction(type="progress", payload_json=json.dumps({"percent": i / PER_WRITER}))
                response = await stub.RecordInteraction(rpb.RecordInteractionRequest(interaction=item),
                                                        metadata=bearer(token))
                return int(response.interaction.sequence)

            async def lone_events(count: int, watching: int) -> list[float]:
                """Send to the last watcher's receipt of each of `count` lone events."""
                took = []
                for i in range(count):
                    await asyncio.sleep(0.3)
                    sent = time.monotonic()
                    seq = await record(tokens[0], i)
                    await until(lambda: len(arrived.get(seq, ())) >= watching, 20)  # noqa: B023 -- awaited here
                    took.append(max(arrived[seq]) - sent)
                return took

            light = await lone_events(8, WATCHERS)

            sampled: list[dict[str, float]] = []
            loading = True

            async def sample() -> None:
                while loading:
                    sampled.append(_fanout(port))
                    await asyncio.sleep(0.05)

            async def write(token: str) -> None:
                for i in range(PER_WRITER):
                    await record(token, i)

            sampler = asyncio.ensure_future(sample())
            await asyncio.gather(*(write(t) for t in tokens))
            expected = _all_event_ids(database, start)
            await until(lambda: all(len(r) >= len(expected) for r in received), 60)
            loading = False
            await sampler
            loaded_messages = list(messages)

            for call in calls[2:]:
                call.cancel()
            light_after = await lone_events(8, 2)
            narrowed = _fanout(port)
            for call in calls[:2]:
                call.cancel()
            await asyncio.gather(*readers)
            return {"received": received, "expected": expected, "light": light, "light_after": light_after,
                    "sampled": sampled, "narrowed": narrowed, "messages": loaded_messages}

    result = asyncio.run(main())
    expected = [seq for seq, _ in result["expected"]]
    for events in result["received"]:
        assert events[:len(expected)] == expected, "every event once, in commit order"
    intervals = [s["cursor_fanout_interval_seconds"] for s in result["sampled"]]
    widest = max(intervals)
    shares = [s["cursor_fanout_loop_share"] for s in result["sampled"]]
    narrowed = result["narrowed"]["cursor_fanout_interval_seconds"]
    light = statistics.median(result["light"])
    print(f"\nfan-out budget {SHARE:.0%}: interval under load up to {widest * 1000:.1f} ms "
          f"(median {statistics.median(intervals) * 1000:.1f} ms), loop share sampled median "
          f"{statistics.median(shares):.1%} max {max(shares):.1%}; {len(expected)} events, at most "
          f"{max(result['messages'])} messages per watcher; lone event to {WATCHERS} watchers p50 "
          f"{light * 1000:.1f} ms, to 2 after the load {statistics.median(result['light_after']) * 1000:.1f} ms; "
          f"interval then {narrowed * 1000:.1f} ms")
    assert widest >= 3 * MIN, "the interval widened under load"
    assert statistics.median(shares) <= 1.5 * SHARE, "fan-out kept to about its share of the loop"
    assert max(result["messages"]) < len(expected) / 2, "messages under load carried several events each"
    assert light < widest, "a lone event goes out at once, not after a loaded interval"
    assert narrowed <= widest / 3, "the interval narrowed again once the load fell"
