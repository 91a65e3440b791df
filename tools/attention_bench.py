"""How long after its trigger an attention signal reaches a watcher.

    python tools/attention_bench.py                 # 100 readers
    python tools/attention_bench.py --readers 20 --check

The real server in a subprocess (tools/bench.py starts it, on a fresh SQLite
file), with thresholds short enough to wait out: stuck after 2 s without
progress, idle after 3 s of silence; the presence sweep keeps its default
period (1 s), since that is what a time-based signal waits for. Every
reader, started at a random moment within the first 2 s:

1. sends a progress step (the stuck clock starts);
2. answers wrong three times (struggling is due at the third answer);
3. writes to the consultants (asked for help is due at the message);
4. stays present without progress past the stuck threshold (stuck is due
   2 s after step 1), then goes silent (stalled is due 3 s after its last
   interaction, when the sweep finds it idle).

One consultant watches the attention events, and a second stream watches
the answers themselves: the answer's own delivery latency is the baseline
the struggling signal (raised in the answer's transaction) is compared to.
For the time-based rules the baseline is the sweep period: a signal is due
at a moment, and the sweep that notices runs once a period. With `--check`,
exit 1 unless every reader got each signal raised exactly once and stuck
was cleared when the reader went idle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

import bench  # noqa: E402 - after the path set-up above
import bench_db  # noqa: E402

from cursor.v1 import auth_service_pb2 as apb  # noqa: E402
from cursor.v1 import auth_service_pb2_grpc as apb_grpc  # noqa: E402
from cursor.v1 import consultant_service_pb2 as cpb  # noqa: E402
from cursor.v1 import consultant_service_pb2_grpc as cpb_grpc  # noqa: E402
from cursor.v1 import reader_service_pb2 as rpb  # noqa: E402
from cursor.v1 import reader_service_pb2_grpc as rpb_grpc  # noqa: E402
from cursor.v1 import resources_pb2 as pb  # noqa: E402

STUCK_S = 2.0
IDLE_S = 3.0
SWEEP_S = 1.0
START_SPREAD_S = 2.0
RULES = {pb.ATTENTION_RULE_STRUGGLING: "struggling", pb.ATTENTION_RULE_ASKED_FOR_HELP: "asked for help",
         pb.ATTENTION_RULE_STUCK: "stuck", pb.ATTENTION_RULE_STALLED: "stalled"}


class AttentionBench(bench.Bench):
    def server_env(self) -> dict[str, str]:
        env = super().server_env()
        env.update({
            "CURSOR_ATTENTION_STUCK_SECONDS": str(STUCK_S), "CURSOR_ATTENTION_STUCK_MIN_SECONDS": str(STUCK_S),
            "CURSOR_PRESENCE_IDLE_SECONDS": str(IDLE_S), "CURSOR_PRESENCE_GRACE_SECONDS": "0",
            "CURSOR_PRESENCE_SWEEP_SECONDS": str(SWEEP_S),
        })
        return env


def ns(stamp: Any) -> int:
    return int(stamp.seconds) * 1_000_000_000 + int(stamp.nanos)


@dataclass
class Observed:
    """Due times (when each rule's condition was met) and arrivals, per reader."""

    due: dict[tuple[str, int], int] = field(default_factory=dict)
    raised: dict[tuple[str, int], list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    cleared: dict[tuple[str, int], list[str]] = field(default_factory=lambda: defaultdict(list))
    # The third wrong answer's commit and arrival, per reader (the baseline).
    answer_due: dict[str, int] = field(default_factory=dict)
    answer_arrived: dict[str, int] = field(default_factory=dict)
    # Set once `expected` readers have their stalled signal (it comes last).
    expected: int = 0
    all_stalled: asyncio.Event = field(default_factory=asyncio.Event)


async def reader_run(channel: aio.Channel, token: str, reader: str, start_in: float, seen: Observed) -> None:
    stub = rpb_grpc.ReaderServiceStub(channel)
    md = (("authorization", f"Bearer {token}"),)

    async def record(type_: str, payload: dict[str, Any]) -> rpb.RecordInteractionResponse:
        return await stub.RecordInteraction(rpb.RecordInteractionRequest(interaction=rpb.NewInteraction(
            type=type_, payload_json=json.dumps(payload), summary=type_)), metadata=md)

    await asyncio.sleep(start_in)
    moved = await record("progress", {"percent": 0.2, "step": 4})
    seen.due[reader, pb.ATTENTION_RULE_STUCK] = ns(moved.interaction.create_time) + int(STUCK_S * 1e9)
    for question in ("q1", "q2", "q3"):
        answered = await record("answer", {"question_id": question, "answer": "b", "time_ms": 900, "correct": False})
    seen.due[reader, pb.ATTENTION_RULE_STRUGGLING] = seen.answer_due[reader] = ns(answered.interaction.create_time)
    sent = await stub.SendMyMessage(rpb.SendMyMessageRequest(body="I am lost on question 3"), metadata=md)
    seen.due[reader, pb.ATTENTION_RULE_ASKED_FOR_HELP] = ns(sent.message.create_time)
    until = time.monotonic() + STUCK_S + 1.0
    last = answered
    while time.monotonic() < until:
        last = await record("open_page", {"page": 12})
        await asyncio.sleep(0.25)
    seen.due[reader, pb.ATTENTION_RULE_STALLED] = ns(last.interaction.create_time) + int(IDLE_S * 1e9)


async def watch_signals(stub: Any, md: Any, seen: Observed, ready: asyncio.Event) -> None:
    call = stub.WatchActivity(cpb.WatchActivityRequest(kinds=[pb.EVENT_KIND_ATTENTION_CHANGED],
                                                       include_snapshot=True), metadata=md)
    async for response in call:
        if response.snapshot_complete:
            ready.set()
        now = time.time_ns()
        for event in response.events:
            signal = event.attention
            if signal.state == pb.ATTENTION_STATE_OPEN and not signal.acknowledged_by:
                seen.raised[signal.reader, signal.rule].append((now, ns(signal.raise_time)))
                stalled = sum(1 for _, rule in seen.raised if rule == pb.ATTENTION_RULE_STALLED)
                if stalled >= seen.expected:
                    seen.all_stalled.set()
            elif signal.state == pb.ATTENTION_STATE_CLEARED:
                seen.cleared[signal.reader, signal.rule].append(signal.clear_reason)


async def watch_answers(stub: Any, md: Any, seen: Observed, ready: asyncio.Event) -> None:
    call = stub.WatchActivity(cpb.WatchActivityRequest(kinds=[pb.EVENT_KIND_INTERACTION_RECORDED],
                                                       interaction_types=["answer"], include_snapshot=True),
                              metadata=md)
    async for response in call:
        if response.snapshot_complete:
            ready.set()
        now = time.time_ns()
        for event in response.events:
            # The last answer of each reader is its third: keep the latest arrival.
            seen.answer_arrived[event.reader] = now


def stats(samples_ns: list[int]) -> dict[str, float]:
    us = [max(0, s) // 1000 for s in samples_ns]
    return {"n": len(us), "p50_ms": bench.percentile(us, 0.5), "p99_ms": bench.percentile(us, 0.99)}


async def run(address: str, tokens: dict[str, str], seed: int) -> Observed:
    seen = Observed(expected=len(tokens))
    rng = random.Random(seed)
    async with aio.insecure_channel(address) as channel:
        session = (await apb_grpc.AuthServiceStub(channel).Login(apb.LoginRequest(
            email=bench.ADMIN_EMAIL, password=bench_db.BENCH_PASSWORD,
            account_kind=pb.ACCOUNT_KIND_CONSULTANT))).session
        md = (("authorization", f"Bearer {session.token}"),)
        consultant = cpb_grpc.ConsultantServiceStub(channel)
        ready_signals, ready_answers = asyncio.Event(), asyncio.Event()
        watchers = [asyncio.create_task(watch_signals(consultant, md, seen, ready_signals)),
                    asyncio.create_task(watch_answers(consultant, md, seen, ready_answers))]
        await asyncio.wait_for(asyncio.gather(ready_signals.wait(), ready_answers.wait()), 30)
        await asyncio.gather(*(reader_run(channel, token, reader, rng.uniform(0, START_SPREAD_S), seen)
                               for reader, token in tokens.items()))
        # Stalled comes last: silence for the idle time, then the next sweep.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(seen.all_stalled.wait(), IDLE_S + 3 * SWEEP_S + 5)
        await asyncio.sleep(0.5)  # anything raised twice would be in by now
        for task in watchers:
            task.cancel()
        for task in watchers:
            with contextlib.suppress(asyncio.CancelledError, grpc.RpcError):
                await task
    return seen


def report(seen: Observed, readers: list[str]) -> tuple[dict[str, Any], list[tuple[str, bool, str]]]:
    figures: dict[str, Any] = {}
    checks: list[tuple[str, bool, str]] = []
    baseline = stats([seen.answer_arrived[r] - seen.answer_due[r] for r in readers if r in seen.answer_arrived])
    figures["baseline: the third answer's own event"] = baseline
    for rule, name in RULES.items():
        reach = [seen.raised[r, rule][0][0] - seen.due[r, rule] for r in readers if seen.raised.get((r, rule))]
        decide = [seen.raised[r, rule][0][1] - seen.due[r, rule] for r in readers if seen.raised.get((r, rule))]
        figures[name] = {"due to watcher": stats(reach), "due to raise": stats(decide)}
        once = sum(1 for r in readers if len(seen.raised.get((r, rule), [])) == 1)
        checks.append((f"{name} raised exactly once for every reader", once == len(readers),
                       f"{once} of {len(readers)}"))
    went_idle = sum(1 for r in readers if seen.cleared.get((r, pb.ATTENTION_RULE_STUCK)) == ["went idle"])
    checks.append(("stuck cleared once, when the reader went idle", went_idle == len(readers),
                   f"{went_idle} of {len(readers)}"))
    struggling = figures["struggling"]["due to watcher"]
    figures["struggling p50 / answer p50"] = struggling["p50_ms"] / max(baseline["p50_ms"], 0.001)
    for name in ("stuck", "stalled"):
        figures[f"{name} p99 / sweep period"] = figures[name]["due to watcher"]["p99_ms"] / (SWEEP_S * 1000)
        checks.append((f"{name} reached the watcher within two sweep periods of being due (p99)",
                       figures[f"{name} p99 / sweep period"] <= 2.0, f"{figures[f'{name} p99 / sweep period']:.2f}"))
    return figures, checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=100)
    parser.add_argument("--check", action="store_true", help="exit 1 when a correctness check fails")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="attention-bench-") as tmp:
        work = Path(tmp)
        runner = AttentionBench(bench.Plan("attention"), work, work, bench.Progress(0, False))
        db = runner.new_database("attention")
        prefilled = bench_db.prefill_readers(db, args.readers, args.readers)
        server = runner.start_server(db, "server")
        try:
            tokens = {f"readers/{r}": token for r, token in zip(prefilled.ids, prefilled.tokens, strict=True)}
            seen = asyncio.run(run(server.address, tokens, args.seed))
        finally:
            server.stop()
    readers = list(tokens)
    figures, checks = report(seen, readers)
    print(f"attention signals, {args.readers} readers; stuck after {STUCK_S:g} s, idle after {IDLE_S:g} s, "
          f"sweep every {SWEEP_S:g} s")
    print(f"{'signal':<44}{'p50 ms':>10}{'p99 ms':>10}")
    for name, value in figures.items():
        if isinstance(value, dict) and "p50_ms" in value:
            print(f"{name:<44}{value['p50_ms']:>10.1f}{value['p99_ms']:>10.1f}")
        elif isinstance(value, dict):
            for part, numbers in value.items():
                print(f"{name + ', ' + part:<44}{numbers['p50_ms']:>10.1f}{numbers['p99_ms']:>10.1f}")
        else:
            print(f"{name:<44}{value:>10.2f}x")
    failed = [c for c in checks if not c[1]]
    for name, ok, detail in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if args.json:
        args.json.write_text(json.dumps({"figures": figures, "checks": checks}, indent=2))
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
