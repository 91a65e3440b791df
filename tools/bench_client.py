"""A load-generating client process of the benchmark (started by tools/bench.py).

It reads one JSON spec line on stdin, connects and warms up, prints `READY`,
waits for a `GO` line, runs for the spec's warm-up plus measuring time, and
prints `RESULT {json}`. Setup modes (`accounts`) skip READY/GO.

Every mode uses grpc.aio with requests serialized once up front (the
multi-callable's serializer is the identity), so the client's per-call cost is
the same whichever server it drives; the bare echo server and the real one are
measured with this very code. Latencies come from time.perf_counter_ns around
each awaited call. Every loop ends by its deadline or its count.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from grpc import aio

from cursor.v1 import auth_service_pb2, resources_pb2

_NS = 1_000_000_000
MAX_ERRORS = 1000
MAX_IN_FLIGHT_LOGINS = 64


def _identity(data: bytes) -> bytes:
    return data


def response_parser(path: str) -> Callable[[bytes], Any]:
    """`FromString` of the response message of `/pkg.Service/Method` (any
    cursor.v1 method; the echo method answers with RecordInteractionResponse)."""
    from google.protobuf import descriptor_pool

    # Importing the service modules registers them in the default pool.
    from cursor.v1 import (  # noqa: F401
        admin_service_pb2,
        consultant_service_pb2,
        reader_service_pb2,
    )

    if path.startswith("/bench.v1.Echo/"):
        return reader_service_pb2.RecordInteractionResponse.FromString
    service, method = path.strip("/").split("/")
    desc = descriptor_pool.Default().FindServiceByName(service).methods_by_name[method]
    return message_factory.GetMessageClass(desc.output_type).FromString


def make_channel(address: str) -> aio.Channel:
    # A pool of its own per channel: each channel is its own TCP connection,
    # as each reader's device would be.
    return aio.insecure_channel(address, options=[
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ])


async def open_channels(address: str, count: int) -> list[aio.Channel]:
    """`count` channels, each connected (or TimeoutError after 20 s)."""
    channels = [make_channel(address) for _ in range(count)]
    await asyncio.gather(*(asyncio.wait_for(ch.channel_ready(), 20) for ch in channels))
    return channels


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class Recorder:
    """Counts every outcome; keeps latencies of calls inside the window."""

    def __init__(self, window_start_ns: int, window_end_ns: int) -> None:
        self.window_start_ns = window_start_ns
        self.window_end_ns = window_end_ns
        self.ok_total = 0
        self.ok_window = 0
        self.units_total = 0
        self.units_window = 0
        self.errors: Counter[str] = Counter()
        self.error_samples: list[str] = []
        self.latencies_us: dict[str, list[int]] = {}

    def ok(self, key: str, started_ns: int, ended_ns: int, units: int = 1) -> None:
        self.ok_total += 1
        self.units_total += units
        if started_ns >= self.window_start_ns and ended_ns <= self.window_end_ns:
            self.ok_window += 1
            self.units_window += units
            self.latencies_us.setdefault(key, []).append((ended_ns - started_ns) // 1000)

    def error(self, error: BaseException) -> None:
        code = error.code().name if isinstance(error, aio.AioRpcError) else type(error).__name__
        self.errors[code] += 1
        if len(self.error_samples) < 5:
            details = error.details() if isinstance(error, aio.AioRpcError) else str(error)
            self.error_samples.append(f"{code}: {details}")

    @property
    def failed(self) -> bool:
        return sum(self.errors.values()) >= MAX_ERRORS


_cpu_at_go = 0.0


async def wait_for_go() -> None:
    global _cpu_at_go
    print("READY", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != "GO":
        raise SystemExit(f"expected GO, got {line!r}")
    _cpu_at_go = time.process_time()


def window(spec: dict[str, Any]) -> tuple[int, int, int]:
    """(start, window start, end) in perf_counter_ns, from now."""
    start = time.perf_counter_ns()
    warm_end = start + int(spec["warmup_s"] * _NS)
    return start, warm_end, warm_end + int(spec["measure_s"] * _NS)


class StreamEnded(Exception):
    """A stream ended (status OK) before the message the client waited for."""


async def paced_or_closed(worker: int, workers: int, rate: float | None, end_ns: int, rec: Recorder,
                          call: Callable[[int], Awaitable[tuple[str, int]]], count: int | None = None) -> None:
    """One worker's loop: back to back when `rate` is None, else this worker's
    share of `rate` calls per second (workers are spread evenly in phase).
    Ends at `end_ns`, or after `count` calls when given."""
    interval = int(workers / rate * _NS) if rate else 0
    next_ns = time.perf_counter_ns() + (interval * worker) // max(1, workers)
    n = 0
    while not rec.failed and (count is None or n < count):
        if interval:
            now = time.perf_counter_ns()
            # Behind schedule the worker sends at once, but never past the end.
            if next_ns >= end_ns or now >= end_ns:
                break
            if next_ns > now:
                await asyncio.sleep((next_ns - now) / _NS)
            next_ns += interval
        elif time.perf_counter_ns() >= end_ns:
            break
        started = time.perf_counter_ns()
        try:
            key, units = await call(n)
        except (TimeoutError, aio.AioRpcError, StreamEnded) as error:
            rec.error(error)
        else:
            rec.ok(key, started, time.perf_counter_ns(), units)
        n += 1


def result_of(rec: Recorder, spec: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "ok_total": rec.ok_total,
        "ok_window": rec.ok_window,
        "units_total": rec.units_total,
        "units_window": rec.units_window,
        "measure_s": spec.get("measure_s", 0.0),
        "errors": dict(rec.errors),
        "error_samples": rec.error_samples,
        "latencies_us": rec.latencies_us,
        # CPU this client process used from GO on (all threads).
        "cpu_s": time.process_time() - _cpu_at_go,
        **(extra or {}),
    }


STAMP = "bench:"


def stamp_request(request: bytes) -> bytes:
    """The request with its summary set to the wall-clock time of sending, so a
    watcher can tell how long the event took to reach it."""
    from cursor.v1 import reader_service_pb2

    message = reader_service_pb2.RecordInteractionRequest.FromString(request)
    message.interaction.summary = f"{STAMP}{time.time_ns()}"
    return message.SerializeToString()


WATCH_PATH = "/cursor.v1.ConsultantService/WatchActivity"
# The server sends a stream's first message at once; this only bounds a hang.
FIRST_MESSAGE_TIMEOUT_S = 30.0


def watch_stubs(channels: list[aio.Channel]) -> list[Any]:
    """A WatchActivity multi-callable per channel (requests pre-serialized)."""
    from cursor.v1 import consultant_service_pb2

    parse = consultant_service_pb2.WatchActivityResponse.FromString
    return [ch.unary_stream(WATCH_PATH, request_serializer=_identity, response_deserializer=parse) for ch in channels]


async def first_message(call: Any) -> None:
    """Wait (bounded) until a WatchActivity stream has sent its first message."""
    from cursor.v1 import consultant_service_pb2

    message = await asyncio.wait_for(call.read(), FIRST_MESSAGE_TIMEOUT_S)
    if not isinstance(message, consultant_service_pb2.WatchActivityResponse):  # grpc.aio.EOF
        raise StreamEnded("the stream ended before its first message")


def share(total: int, worker: int, workers: int) -> int:
    """Worker `worker`'s part of `total` items split over `workers`."""
    return total // workers + (1 if worker < total % workers else 0)


# --- modes -------------------------------------------------------------------


async def run_unary(spec: dict[str, Any]) -> dict[str, Any]:
    """Workers calling one unary method with pre-serialized requests; each
    worker cycles through its own list of bearer tokens (empty: none)."""
    path = spec["path"]
    requests = [bytes.fromhex(h) for h in spec["requests_hex"]]
    parse = response_parser(path)
    channels = await open_channels(spec["address"], spec["channels"])
    stubs = [ch.unary_unary(path, request_serializer=_identity, response_deserializer=parse) for ch in channels]
    worker_tokens: list[list[str]] = spec["tokens"]
    workers = len(worker_tokens)
    timeout = spec.get("timeout_s", 30.0)
    key = spec.get("key", "rpc")

    stamped = bool(spec.get("stamp"))
    live = [False]  # stamps only from GO on; warm-up calls carry none

    def caller(worker: int) -> Callable[[int], Awaitable[tuple[str, int]]]:
        stub = stubs[worker % len(stubs)]
        metadata = [bearer(t) for t in worker_tokens[worker]] or [()]

        async def call(n: int) -> tuple[str, int]:
            request = requests[(n + worker) % len(requests)]
            if stamped and live[0]:
                request = stamp_request(request)
            await stub(request, metadata=metadata[n % len(metadata)], timeout=timeout)
            return key, 1

        return call

    calls = [caller(w) for w in range(workers)]
    warm = Recorder(0, 0)
    # Every token once (its first call reads the session from the database).
    for w in range(workers):
        for n in range(max(1, len(worker_tokens[w]))):
            try:
                await calls[w](n)
            except aio.AioRpcError as error:
                warm.error(error)
            else:
                warm.ok("warm", 0, 0)
    await wait_for_go()
    live[0] = True
    _, warm_end, end = window(spec)
    rec = Recorder(warm_end, end)
    rate = spec.get("rate")
    await asyncio.gather(*(paced_or_closed(w, workers, rate, end, rec, calls[w]) for w in range(workers)))
    for ch in channels:
        await ch.close(None)
    result = result_of(rec, spec, {"warm_ok": warm.ok_total, "warm_errors": dict(warm.errors)})
    result["errors"] = dict(rec.errors + warm.errors)
    result["error_samples"] = rec.error_samples + warm.error_samples
    return result


async def run_stream(spec: dict[str, Any]) -> dict[str, Any]:
    """Workers uploading RecordInteractions calls of `chunks_per_call` chunks
    each, one call after another, until the deadline; whole calls only."""
    from cursor.v1 import reader_service_pb2

    path = "/cursor.v1.ReaderService/RecordInteractions"
    chunk = bytes.fromhex(spec["chunk_hex"])
    chunk_events = spec["chunk_events"]
    per_call = spec["chunks_per_call"]
    parse = reader_service_pb2.RecordInteractionsResponse.FromString
    tokens: list[str] = spec["tokens"]
    channels = await open_channels(spec["address"], len(tokens))
    stubs = [ch.stream_unary(path, request_serializer=_identity, response_deserializer=parse) for ch in channels]
    sent = 0
    stored = 0
    rejected = 0
    duplicates = 0

    async def upload(worker: int, chunks: int) -> None:
        nonlocal sent, stored, rejected, duplicates

        async def chunk_source() -> Any:
            for _ in range(chunks):
                yield chunk

        sent += chunks * chunk_events
        response = await stubs[worker](chunk_source(), metadata=bearer(tokens[worker]), timeout=120)
        stored += response.stored_count
        rejected += len(response.rejected)
        duplicates += response.duplicate_count

    warm = Recorder(0, 0)
    for w in range(len(tokens)):
        try:
            await upload(w, 1)
        except aio.AioRpcError as error:
            warm.error(error)
    warm_sent = sent
    await wait_for_go()
    started_wall = time.time()
    start = time.perf_counter_ns()
    end = start + int(spec["measure_s"] * _NS)
    rec = Recorder(start, 2**63)
    max_calls = spec.get("max_calls_per_worker", 10_000)

    async def worker_loop(w: int) -> None:
        for _ in range(max_calls):
            if time.perf_counter_ns() >= end or rec.failed:
                return
            t0 = time.perf_counter_ns()
            try:
                await upload(w, per_call)
            except aio.AioRpcError as error:
                rec.error(error)
            else:
                rec.ok("call", t0, time.perf_counter_ns(), per_call * chunk_events)

    await asyncio.gather(*(worker_loop(w) for w in range(len(tokens))))
    ended_wall = time.time()
    for ch in channels:
        await ch.close(None)
    return result_of(rec, spec, {
        "events_sent": sent, "events_stored": stored, "events_rejected": rejected, "duplicates": duplicates,
        "warm_events": warm_sent, "measured_events": sent - warm_sent,
        "start_wall": started_wall, "end_wall": ended_wall, "warm_errors": dict(warm.errors),
    })


async def run_queries(spec: dict[str, Any]) -> dict[str, Any]:
    """One consultant cycling through a list of queries at a paced rate."""
    channel = make_channel(spec["address"])
    md = bearer(spec["token"])
    queries = []
    for q in spec["queries"]:
        stub = channel.unary_unary(q["path"], request_serializer=_identity, response_deserializer=response_parser(
            q["path"]))
        queries.append((q["name"], stub, [bytes.fromhex(h) for h in q["requests_hex"]]))

    async def call(n: int) -> tuple[str, int]:
        name, stub, requests = queries[n % len(queries)]
        await stub(requests[(n // len(queries)) % len(requests)], metadata=md, timeout=30)
        return name, 1

    await asyncio.wait_for(channel.channel_ready(), 20)
    for n in range(len(queries)):
        await call(n)
    await wait_for_go()
    _, warm_end, end = window(spec)
    rec = Recorder(warm_end, end)
    await paced_or_closed(0, 1, spec.get("rate"), end, rec, call)
    await channel.close(None)
    return result_of(rec, spec)


async def run_logins(spec: dict[str, Any]) -> dict[str, Any]:
    """Logins at a fixed rate (open loop: a login is started on every tick,
    whether or not the ones before it have finished)."""
    channel = make_channel(spec["address"])
    stub = channel.unary_unary("/cursor.v1.AuthService/Login", request_serializer=_identity,
                               response_deserializer=auth_service_pb2.LoginResponse.FromString)
    requests = [
        auth_service_pb2.LoginRequest(email=e, password=spec["password"],
                                      account_kind=resources_pb2.ACCOUNT_KIND_READER).SerializeToString()
        for e in spec["emails"]
    ]
    await asyncio.wait_for(channel.channel_ready(), 20)
    await wait_for_go()
    _, warm_end, end = window(spec)
    rec = Recorder(warm_end, end)
    interval = int(_NS / spec["rate"])
    in_flight: set[asyncio.Task[None]] = set()

    async def login(n: int) -> None:
        started = time.perf_counter_ns()
        try:
            await stub(requests[n % len(requests)], timeout=30)
        except aio.AioRpcError as error:
            rec.error(error)
        else:
            rec.ok("login", started, time.perf_counter_ns())

    next_ns = time.perf_counter_ns()
    n = 0
    while next_ns < end and not rec.failed:
        now = time.perf_counter_ns()
        if next_ns > now:
            await asyncio.sleep((next_ns - now) / _NS)
        next_ns += interval
        if len(in_flight) >= MAX_IN_FLIGHT_LOGINS:
            rec.errors["CLIENT_BACKLOG"] += 1
            continue
        task = asyncio.create_task(login(n))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        n += 1
    if in_flight:
        await asyncio.wait(in_flight, timeout=60)
    await channel.close(None)
    return result_of(rec, spec, {"started": n})


async def run_accounts(spec: dict[str, Any]) -> dict[str, Any]:
    """RegisterReader + Login for each email, `parallel` at a time; returns tokens."""
    channel = make_channel(spec["address"])
    register = channel.unary_unary(
        "/cursor.v1.AuthService/RegisterReader", request_serializer=_identity,
        response_deserializer=auth_service_pb2.RegisterReaderResponse.FromString)
    login = channel.unary_unary("/cursor.v1.AuthService/Login", request_serializer=_identity,
                                response_deserializer=auth_service_pb2.LoginResponse.FromString)
    gate = asyncio.Semaphore(spec["parallel"])
    password = spec["password"]
    accounts: list[dict[str, str]] = []

    async def one(email: str, n: int) -> None:
        async with gate:
            if spec.get("register", True):
                await register(auth_service_pb2.RegisterReaderRequest(
                    email=email, password=password, display_name=f"Bench reader {n}").SerializeToString(), timeout=60)
            response = await login(auth_service_pb2.LoginRequest(
                email=email, password=password, account_kind=resources_pb2.ACCOUNT_KIND_READER
            ).SerializeToString(), timeout=60)
            accounts.append({"email": email, "token": response.session.token, "account": response.session.account})

    await asyncio.wait_for(channel.channel_ready(), 20)
    await asyncio.gather(*(one(email, n) for n, email in enumerate(spec["emails"])))
    await channel.close(None)
    accounts.sort(key=lambda a: spec["emails"].index(a["email"]))
    return {"accounts": accounts}


async def run_consultant_login(spec: dict[str, Any]) -> dict[str, Any]:
    channel = make_channel(spec["address"])
    login = channel.unary_unary("/cursor.v1.AuthService/Login", request_serializer=_identity,
                                response_deserializer=auth_service_pb2.LoginResponse.FromString)
    response = await login(auth_service_pb2.LoginRequest(
        email=spec["email"], password=spec["password"], account_kind=resources_pb2.ACCOUNT_KIND_CONSULTANT
    ).SerializeToString(), timeout=60)
    await channel.close(None)
    return {"token": response.session.token}


async def cancel_when_quiet(calls: list[Any], end_ns: int, drain_s: float, last_seen: list[int],
                            stopped: list[bool]) -> None:
    """After the load's time (`end_ns`), go on until the streams have been
    quiet for `drain_s` (`last_seen[0]`: the latest message on any of them;
    a loaded server delivers late), at most 60 s more; then say so in
    `stopped` and cancel them."""
    await asyncio.sleep(max(0.0, (end_ns - time.perf_counter_ns()) / _NS))
    quiet = int(drain_s * _NS)
    give_up = time.perf_counter_ns() + 60 * _NS
    for _ in range(1200):  # bounded: 60 s in 50 ms steps
        now = time.perf_counter_ns()
        if now >= give_up or now - last_seen[0] >= quiet:
            break
        await asyncio.sleep(0.05)
    stopped[0] = True
    for call in calls:
        call.cancel()


async def run_watch(spec: dict[str, Any]) -> dict[str, Any]:
    """`streams` WatchActivity streams (all readers, all kinds, with snapshot).
    READY once every stream has finished its snapshot (from then on nothing
    is missed); after GO each reads until the deadline. Counts the interaction
    events that carry a send stamp, and their delivery latency (send on the
    ingest client to receipt here, both on this machine's wall clock)."""
    from cursor.v1 import consultant_service_pb2, resources_pb2

    request = consultant_service_pb2.WatchActivityRequest(include_snapshot=True).SerializeToString()
    recorded = resources_pb2.EVENT_KIND_INTERACTION_RECORDED
    channels = await open_channels(spec["address"], spec["channels"])
    stubs = watch_stubs(channels)
    md = bearer(spec["token"])
    count = spec["streams"]
    sample_every = max(1, spec.get("sample_every", 1))
    calls = [stubs[i % len(stubs)](request, metadata=md) for i in range(count)]
    seen: list[set[int]] = [set() for _ in range(count)]
    duplicates = [0] * count
    events_total = [0] * count
    messages = [0] * count
    latencies: list[int] = []
    errors: Counter[str] = Counter()

    async def until_live(i: int) -> None:
        async for response in calls[i]:
            if response.snapshot_complete:
                return
        raise RuntimeError("stream ended before its snapshot did")

    await asyncio.wait_for(asyncio.gather(*(until_live(i) for i in range(count))), 60)
    await wait_for_go()
    end = time.perf_counter_ns() + int((spec["warmup_s"] + spec["measure_s"]) * _NS)

    last_stamped = [time.perf_counter_ns()]

    async def read(i: int) -> None:
        n = 0
        try:
            async for response in calls[i]:
                now = time.time_ns()
                last_stamped[0] = time.perf_counter_ns()
                messages[i] += 1
                for event in response.events:
                    events_total[i] += 1
                    if event.kind != recorded or not event.summary.startswith(STAMP):
                        continue
                    if event.event_id in seen[i]:
                        duplicates[i] += 1
                        continue
                    seen[i].add(event.event_id)
                    n += 1
                    if n % sample_every == 0:
                        latencies.append((now - int(event.summary[len(STAMP):])) // 1000)
        except aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                errors[error.code().name] += 1
        except asyncio.CancelledError:
            # grpc.aio raises this in the reader when the call is cancelled;
            # only the deadline below cancels calls.
            if not stopped[0]:
                raise

    stopped = [False]

    stopper = asyncio.create_task(cancel_when_quiet(calls, end, spec["drain_s"], last_stamped, stopped))
    await asyncio.gather(*(read(i) for i in range(count)))
    await stopper
    for ch in channels:
        await ch.close(None)
    return {
        "stamped_per_stream": [len(s) for s in seen], "duplicates": sum(duplicates),
        "events_total": sum(events_total), "messages_total": sum(messages), "errors": dict(errors),
        "error_samples": [],
        "latencies_us": {"delivery": latencies}, "ok_total": 0, "ok_window": 0, "measure_s": spec["measure_s"],
        "cpu_s": time.process_time() - _cpu_at_go,
    }


async def run_poll(spec: dict[str, Any]) -> dict[str, Any]:
    """The fallback to WatchActivity: `pollers` consultants, each listing
    `ListInteractions(parent="readers/-")` newest first every `interval_s`
    (poller `first + i` of `pollers_total`, spread evenly in phase over every
    client process), following `next_page_token` down to the newest
    interaction an earlier poll saw (sequence is commit order). Before READY
    each poller notes the newest interaction, so only what is written from
    then on counts; after the ingest's time polls go on for `drain_s`, and one
    last poll follows, so an interaction committed at the very end is seen.
    Counts the interactions that carry a send stamp, and their latency (send
    on the ingest client to receipt of the page here, on one wall clock)."""
    from cursor.v1 import consultant_service_pb2 as cpb

    path = "/cursor.v1.ConsultantService/ListInteractions"
    parse = cpb.ListInteractionsResponse.FromString
    count = spec["pollers"]
    channels = await open_channels(spec["address"], count)
    stubs = [ch.unary_unary(path, request_serializer=_identity, response_deserializer=parse) for ch in channels]
    md = bearer(spec["token"])
    page_size = spec["page_size"]
    max_pages = spec.get("max_pages", 1000)
    newest = [0] * count
    seen: list[set[str]] = [set() for _ in range(count)]
    duplicates = [0] * count
    listed = [0] * count
    latencies: list[int] = []

    async def page(i: int, size: int, token: str) -> Any:
        request = cpb.ListInteractionsRequest(parent="readers/-", page_size=size, page_token=token)
        return await stubs[i](request.SerializeToString(), metadata=md, timeout=30)

    async def poll(i: int) -> int:
        """One poll: every interaction newer than the last poll's newest.
        Returns the pages it took."""
        token, top = "", newest[i]
        for pages in range(1, max_pages + 1):
            response = await page(i, page_size, token)
            now = time.time_ns()
            for item in response.interactions:
                if item.sequence <= newest[i]:
                    break  # reached what an earlier poll saw
                top = max(top, item.sequence)
                listed[i] += 1
                if not item.summary.startswith(STAMP):
                    continue
                if item.name in seen[i]:
                    duplicates[i] += 1
                    continue
                seen[i].add(item.name)
                latencies.append((now - int(item.summary[len(STAMP):])) // 1000)
            else:
                if response.next_page_token:
                    token = response.next_page_token
                    continue
            newest[i] = top
            return pages
        raise RuntimeError(f"a poll took more than {max_pages} pages")

    for i in range(count):
        first = await page(i, 1, "")
        newest[i] = first.interactions[0].sequence if first.interactions else 0
    await wait_for_go()
    _, warm_end, end = window(spec)
    stop = end + int(spec["drain_s"] * _NS)
    rec = Recorder(warm_end, end)
    interval = spec["interval_s"]
    total = spec["pollers_total"]

    def poller(i: int) -> Callable[[int], Awaitable[tuple[str, int]]]:
        async def call(n: int) -> tuple[str, int]:
            return "poll", await poll(i)

        return call

    await asyncio.gather(*(paced_or_closed(spec["first"] + i, total, total / interval, stop, rec, poller(i))
                           for i in range(count)))
    for i in range(count):  # the last poll, after the ingest and the drain
        try:
            await poll(i)
        except aio.AioRpcError as error:
            rec.error(error)
    for ch in channels:
        await ch.close(None)
    return result_of(rec, spec, {
        "stamped_per_stream": [len(s) for s in seen], "duplicates": sum(duplicates),
        "events_total": sum(listed), "messages_total": rec.units_total,
        "latencies_us": {**rec.latencies_us, "delivery": latencies},
    })


async def run_hold(spec: dict[str, Any]) -> dict[str, Any]:
    """`streams` WatchActivity streams (request `request_hex`, chosen by the
    harness to carry nothing), `per_channel` to a connection. READY once every
    stream has its first message (the server sends one at once); after GO they
    are held `measure_s` seconds, then cancelled."""
    count = spec["streams"]
    per_channel = spec["per_channel"]
    channels = await open_channels(spec["address"], math.ceil(count / per_channel))
    stubs = watch_stubs(channels)
    request = bytes.fromhex(spec["request_hex"])
    md = bearer(spec["token"])
    rec = Recorder(0, 2**63)
    calls = [stubs[i // per_channel](request, metadata=md) for i in range(count)]

    async def opened(call: Any) -> None:
        started = time.perf_counter_ns()
        try:
            await first_message(call)
        except (TimeoutError, aio.AioRpcError, StreamEnded) as error:
            rec.error(error)
        else:
            rec.ok("open", started, time.perf_counter_ns())

    await asyncio.gather(*(opened(call) for call in calls))
    await wait_for_go()
    await asyncio.sleep(spec["measure_s"])
    for call in calls:
        call.cancel()
    for ch in channels:
        await ch.close(None)
    return result_of(rec, spec)


async def run_churn(spec: dict[str, Any]) -> dict[str, Any]:
    """`cycles` WatchActivity streams (request `request_hex`), each opened,
    read to its first message and cancelled, by `workers` loops at once over
    `channels` connections; at most `measure_s` seconds. Latency: open to
    first message."""
    channels = await open_channels(spec["address"], spec["channels"])
    stubs = watch_stubs(channels)
    request = bytes.fromhex(spec["request_hex"])
    md = bearer(spec["token"])
    workers = spec["workers"]
    cycles = spec["cycles"]

    def cycler(worker: int) -> Callable[[int], Awaitable[tuple[str, int]]]:
        stub = stubs[worker % len(stubs)]

        async def cycle(n: int) -> tuple[str, int]:
            call = stub(request, metadata=md, timeout=FIRST_MESSAGE_TIMEOUT_S)
            try:
                await first_message(call)
            finally:
                call.cancel()
            return "cycle", 1

        return cycle

    await wait_for_go()
    start = time.perf_counter_ns()
    end = start + int(spec["measure_s"] * _NS)
    rec = Recorder(start, end)
    await asyncio.gather(*(paced_or_closed(w, workers, None, end, rec, cycler(w), share(cycles, w, workers))
                           for w in range(workers)))
    elapsed = (time.perf_counter_ns() - start) / _NS
    for ch in channels:
        await ch.close(None)
    return result_of(rec, spec, {"elapsed_s": elapsed})


async def run_dashboard(spec: dict[str, Any]) -> dict[str, Any]:
    """`streams` WatchReaders streams (all readers). READY once every stream
    has its snapshot; after GO each reads until the deadline and then until
    quiet. Each stream keeps the latest activity summary per reader (the
    ingest stamps it with its send time); its digest of them at the end must
    equal the database's, and every stream's must be the same. One stream
    in `sample_every` is parsed (its view, digest and the staleness of its
    updates: receipt minus the stamp's send time); the others are read and
    counted by bytes, so the client's parsing does not take the CPU the
    server is measured on."""
    import hashlib

    from cursor.v1 import consultant_service_pb2

    path = "/cursor.v1.ConsultantService/WatchReaders"
    request = consultant_service_pb2.WatchReadersRequest().SerializeToString()
    parse = consultant_service_pb2.WatchReadersResponse.FromString
    channels = await open_channels(spec["address"], spec["channels"])
    stubs = [ch.unary_stream(path, request_serializer=_identity, response_deserializer=_identity) for ch in channels]
    md = bearer(spec["token"])
    count = spec["streams"]
    sample_every = max(1, spec.get("sample_every", 1))
    calls = [stubs[i % len(stubs)](request, metadata=md) for i in range(count)]
    latest: list[dict[str, str]] = [{} for _ in range(count)]
    updates = [0] * count
    messages = [0] * count
    received_bytes = [0] * count
    latencies: list[int] = []
    errors: Counter[str] = Counter()

    watched = set(spec["readers"])

    def take(i: int, raw: bytes) -> bool:
        """Fold one message into stream i's view; whether it ended the snapshot."""
        response = parse(raw)
        for update in response.updates:
            if update.reader in watched:
                latest[i][update.reader] = update.last_activity_summary
        return bool(response.snapshot_complete)

    async def until_live(i: int) -> None:
        async for raw in calls[i]:
            if take(i, raw):
                return
        raise RuntimeError("stream ended before its snapshot did")

    await asyncio.wait_for(asyncio.gather(*(until_live(i) for i in range(count))), 120)
    await wait_for_go()
    went_ns = time.time_ns()  # activities written before GO (earlier cases) have no staleness here
    end = time.perf_counter_ns() + int((spec["warmup_s"] + spec["measure_s"]) * _NS)
    last_seen = [time.perf_counter_ns()]
    stopped = [False]

    async def read(i: int) -> None:
        try:
            async for raw in calls[i]:
                now = time.time_ns()
                last_seen[0] = time.perf_counter_ns()
                messages[i] += 1
                received_bytes[i] += len(raw)
                if i % sample_every:
                    continue
                response = parse(raw)
                updates[i] += len(response.updates)
                for update in response.updates:
                    summary = update.last_activity_summary
                    # Only an activity written in this case, and new to this stream, has a
                    # staleness: an update a presence change caused carries an older one.
                    fresh = summary != latest[i].get(update.reader) and summary.startswith(STAMP) \
                        and int(summary[len(STAMP):]) >= went_ns
                    if update.reader in watched:
                        latest[i][update.reader] = summary
                    if fresh:
                        latencies.append((now - int(summary[len(STAMP):])) // 1000)
        except aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                errors[error.code().name] += 1
        except asyncio.CancelledError:
            if not stopped[0]:
                raise

    stopper = asyncio.create_task(cancel_when_quiet(calls, end, spec["drain_s"], last_seen, stopped))
    await asyncio.gather(*(read(i) for i in range(count)))
    await stopper
    for ch in channels:
        await ch.close(None)

    def digest(view: dict[str, str]) -> str:
        return hashlib.sha256(json.dumps(sorted(view.items())).encode()).hexdigest()

    return {
        "digests": sorted({digest(view) for i, view in enumerate(latest) if i % sample_every == 0}),
        "view": latest[0] if latest else {}, "parsed_streams": len(range(0, count, sample_every)),
        "updates_total": sum(updates), "messages_total": sum(messages), "bytes_total": sum(received_bytes),
        "errors": dict(errors), "error_samples": [], "latencies_us": {"staleness": latencies}, "ok_total": 0,
        "ok_window": 0, "measure_s": spec["measure_s"], "cpu_s": time.process_time() - _cpu_at_go,
    }


MODES = {
    "dashboard": run_dashboard,
    "unary": run_unary,
    "stream": run_stream,
    "queries": run_queries,
    "logins": run_logins,
    "accounts": run_accounts,
    "consultant_login": run_consultant_login,
    "watch": run_watch,
    "poll": run_poll,
    "hold": run_hold,
    "churn": run_churn,
}


async def amain() -> None:
    spec = json.loads(sys.stdin.readline())
    try:
        result = await MODES[spec["mode"]](spec)
    except grpc.RpcError as error:
        result = {"fatal": f"{error.code().name}: {error.details()}"}
    print("RESULT " + json.dumps(result), flush=True)


def main() -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(amain())
    else:
        uvloop.run(amain())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
