"""Prometheus metrics: what they are, how they are fed, and the loopback
HTTP endpoint that serves them (`serve --metrics-listen 127.0.0.1:9464`).

Everything lives in one process-wide registry (`REGISTRY`), with the
process, platform and GC collectors beside ours and no `_created` series.
RPCs are counted in the families and labels of grpc-prometheus
(`grpc_server_started_total{grpc_type,grpc_service,grpc_method}`, ...), so
its dashboards work unchanged; every label set of every cursor.v1 method
exists from the start, at zero. Counters and histograms are fed where
things happen (the `@rpc` wrapper, the request guard, the writer's batch
observer, the maintenance jobs, the live streams through `stream_opened`);
gauges about the database (queue depth, file sizes, readers by presence)
are read when Prometheus scrapes, from the store bound with `bind_store`.

Label values are bounded: method names come from the registered services,
codes from grpc, reasons from the code. Nothing per-reader or per-stream is
ever a label. docs/operations.md lists every metric.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast
from wsgiref.simple_server import WSGIServer

import grpc
from google.protobuf import __version__ as protobuf_version
from google.protobuf import descriptor_pool
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cursor_grpc import __version__
from cursor_grpc.config import ConfigError

if TYPE_CHECKING:
    from cursor_grpc.live.broadcaster import FanoutPacer
    from cursor_grpc.storage import Store

log = logging.getLogger("cursor.metrics")

# A `_created` series per counter and histogram doubles what Prometheus
# stores for nothing it uses (a process-wide switch of prometheus_client,
# which declares no types for it).
cast(Callable[[], None], disable_created_metrics)()

REGISTRY = CollectorRegistry(auto_describe=False)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

BUILD_INFO = Info("cursor_build", "The running build: its version and those of gRPC and protobuf.", registry=REGISTRY)
BUILD_INFO.info({"version": __version__, "grpc_version": grpc.__version__, "protobuf_version": protobuf_version})

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# --- RPCs: grpc-prometheus's families and labels -----------------------------------

RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")

# `grpc_code` holds grpc-go's names of the codes (`codes.Code.String()`), as
# grpc-prometheus and go-grpc-middleware write them: OK, Canceled, InvalidArgument, ...
GRPC_CODE_NAMES: dict[grpc.StatusCode, str] = {
    code: {"OK": "OK", "CANCELLED": "Canceled"}.get(code.name, code.name.title().replace("_", ""))
    for code in grpc.StatusCode
}

RPC_STARTED = Counter("grpc_server_started", "RPCs started, by type, service and method.", RPC_LABELS,
                      registry=REGISTRY)
RPC_HANDLED = Counter(
    "grpc_server_handled", "RPCs finished, by type, service, method and status code (whatever the outcome).",
    (*RPC_LABELS, "grpc_code"), registry=REGISTRY,
)
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its end, whatever its outcome (streams: the whole stream).",
    RPC_LABELS, buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
# Messages on the streaming side of streaming RPCs; the other side, and unary
# RPCs, are derived at scrape time (`_MessageCounts`). Not registered.
_STREAM_RECEIVED = Counter("grpc_server_msg_received", "", RPC_LABELS, registry=None)
_STREAM_SENT = Counter("grpc_server_msg_sent", "", RPC_LABELS, registry=None)

# --- live streams ----------------------------------------------------------------
STREAMS_OPEN = Gauge("cursor_streams_open", "Live event streams open now, by streaming RPC.",
                     ["grpc_service", "grpc_method"], registry=REGISTRY)
EVENTS_DELIVERED = Counter(
    "cursor_stream_events_delivered", "Events sent to consultants on live streams.", registry=REGISTRY
)
STREAM_LAG = Histogram(
    "cursor_stream_lag_events",
    "Per-stream lag when sampled: the head event seq minus the last seq delivered on that stream.",
    buckets=(0, 1, 5, 10, 50, 100, 500, 1000, 5000, 10000, 100000), registry=REGISTRY,
)

# --- accounts --------------------------------------------------------------------
LOGIN_FAILURES = Counter(
    "cursor_login_failures", "Login RPCs refused, by the ErrorInfo reason of the answer.", ["reason"],
    registry=REGISTRY,
)
for _reason in ("BAD_CREDENTIALS", "ACCOUNT_INACTIVE", "LOGIN_THROTTLED"):
    LOGIN_FAILURES.labels(_reason)

# --- the writer ------------------------------------------------------------------
WRITER_BATCH_TASKS = Histogram(
    "cursor_writer_batch_tasks", "Write tasks committed together in one group commit.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=REGISTRY,
)
WRITER_COMMIT_SECONDS = Histogram(
    "cursor_writer_commit_seconds", "One group commit, from BEGIN IMMEDIATE until COMMIT returned.",
    buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)

# --- operations ------------------------------------------------------------------
BACKUP_RUNS = Counter("cursor_backup_runs", "Backups attempted (scheduled and on demand).", registry=REGISTRY)
BACKUP_FAILURES = Counter(
    "cursor_backup_failures", "Backups that failed or did not verify (the copy does not count).", registry=REGISTRY
)
BACKUP_LAST_SUCCESS = Gauge(
    "cursor_backup_last_success_timestamp_seconds", "Unix time of the last verified backup.", registry=REGISTRY
)
BACKUP_SECONDS = Gauge("cursor_backup_last_duration_seconds", "How long the last verified backup took.",
                       registry=REGISTRY)
ARCHIVE_RUNS = Counter("cursor_archive_runs", "Archive runs attempted.", registry=REGISTRY)
ARCHIVE_FAILURES = Counter("cursor_archive_failures", "Archive runs that failed.", registry=REGISTRY)
ARCHIVE_ROWS = Counter("cursor_archive_rows_moved", "Interactions moved into archive files.", registry=REGISTRY)
WAL_CHECKPOINTS = Counter(
    "cursor_wal_checkpoints", "Housekeeping WAL checkpoints, by result (truncated, busy, error).",
    ["result"], registry=REGISTRY,
)
MAINTENANCE_RUNS = Counter(
    "cursor_maintenance_runs", "PRAGMA optimize and VACUUM runs, by task and result.",
    ["task", "result"], registry=REGISTRY,
)
for _result in ("truncated", "busy", "error"):
    WAL_CHECKPOINTS.labels(_result)
for _task in ("optimize", "vacuum"):
    for _result in ("ok", "error"):
        MAINTENANCE_RUNS.labels(_task, _result)


def stream_lag(value: int | float) -> None:
    STREAM_LAG.observe(max(0.0, float(value)))


def observe_batch(tasks: int, seconds: float) -> None:
    """The store's `observe_commits` observer (runs on the backend's thread)."""
    WRITER_BATCH_TASKS.observe(tasks)
    WRITER_COMMIT_SECONDS.observe(seconds)


def login_failed(reason: str) -> None:
    """The `failures` hook of Login's `@rpc`: one refused login."""
    LOGIN_FAILURES.labels(reason).inc()


# --- one RPC method ------------------------------------------------------------------


class RpcMetrics:
    """The labelled children of one method, made once with every label set
    (each code too) so they export zeros from the start; the hot path then
    pays two counter increments and one observation, never `labels()`,
    which takes a lock and builds a key."""

    __slots__ = ("handled", "labels", "open_streams", "received", "seconds", "sent", "started")

    def __init__(self, service: str, method: str, client_streaming: bool, server_streaming: bool) -> None:
        kind = {(False, False): "unary", (True, False): "client_stream",
                (False, True): "server_stream", (True, True): "bidi_stream"}[client_streaming, server_streaming]
        self.labels = (kind, service, method)
        self.started = RPC_STARTED.labels(*self.labels)
        self.handled = {code: RPC_HANDLED.labels(*self.labels, name) for code, name in GRPC_CODE_NAMES.items()}
        self.seconds = RPC_SECONDS.labels(*self.labels)
        self.received = _STREAM_RECEIVED.labels(*self.labels) if client_streaming else None
        self.sent = _STREAM_SENT.labels(*self.labels) if server_streaming else None
        self.open_streams = STREAMS_OPEN.labels(service, method) if server_streaming else None

    def finished(self, code: grpc.StatusCode, started: float) -> None:
        """One RPC ended with `code`; `started` is its `time.perf_counter()`."""
        self.handled[code].inc()
        self.seconds.observe(time.perf_counter() - started)

    def refused(self, code: grpc.StatusCode) -> None:
        """One RPC answered before its method ran (the request guard)."""
        self.started.inc()
        self.finished(code, time.perf_counter())


_RPCS: dict[str, RpcMetrics] = {}


def rpc_method(path: str) -> RpcMetrics:
    """The metrics of `/package.Service/Method`, made the first time (by
    the `@rpc` decorator, at import); the method's descriptor says whether
    it streams."""
    rpc = _RPCS.get(path)
    if rpc is None:
        service, _, method = path.lstrip("/").partition("/")
        try:
            found = descriptor_pool.Default().FindMethodByName(f"{service}.{method}")
            streaming = (found.client_streaming, found.server_streaming)
        except KeyError:  # not an RPC of the API: tests/test_access.py reports it
            streaming = (False, False)
        rpc = _RPCS[path] = RpcMetrics(service, method, *streaming)
    return rpc


def rpcs_finished() -> float:
    """RPCs finished so far in this process (the shutdown drain watches it)."""
    return sum(sample.value for family in RPC_HANDLED.collect() for sample in family.samples)


def _values(counter: Counter, **only: str) -> dict[tuple[str, ...], float]:
    """A counter's values by (grpc_type, grpc_service, grpc_method), from its samples."""
    found: dict[tuple[str, ...], float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if all(sample.labels.get(name) == value for name, value in only.items()):
                found[tuple(sample.labels[name] for name in RPC_LABELS)] = sample.value
    return found


class _MessageCounts(Collector):
    """`grpc_server_msg_received_total` and `grpc_server_msg_sent_total`.
    A unary side carries exactly one message: one request per started RPC,
    one response per OK (as grpc-prometheus counts them), so those are
    derived here and the unary path pays for no message counters."""

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        started, ok = _values(RPC_STARTED), _values(RPC_HANDLED, grpc_code="OK")
        streamed_in, streamed_out = _values(_STREAM_RECEIVED), _values(_STREAM_SENT)
        received = CounterMetricFamily(
            "grpc_server_msg_received", "Messages received: every chunk of an upload, the request of any other RPC.",
            labels=RPC_LABELS,
        )
        sent = CounterMetricFamily(
            "grpc_server_msg_sent", "Messages sent: every message of a stream, the response of any other RPC.",
            labels=RPC_LABELS,
        )
        for rpc in list(_RPCS.values()):
            key = rpc.labels
            received.add_metric(key, (streamed_in if rpc.received is not None else started).get(key, 0.0))
            sent.add_metric(key, (streamed_out if rpc.sent is not None else ok).get(key, 0.0))
        return [received, sent]


REGISTRY.register(_MessageCounts())


# --- live streams ------------------------------------------------------------------------

# The streaming RPC being served, set by the request guard around a
# server-streaming method, so the stream engine needs no method name.
SERVING: ContextVar[RpcMetrics | None] = ContextVar("cursor_metrics_serving", default=None)


class OpenStream:
    """What one live stream feeds, from `stream_opened()` to `closed()`."""

    __slots__ = ("_rpc",)

    def __init__(self, rpc: RpcMetrics | None) -> None:
        self._rpc = rpc
        if rpc is not None and rpc.open_streams is not None:
            rpc.open_streams.inc()

    def sent(self, events: int) -> None:
        """One message went out, carrying `events` events (0: a heartbeat or marker)."""
        if self._rpc is not None and self._rpc.sent is not None:
            self._rpc.sent.inc()
        if events > 0:
            EVENTS_DELIVERED.inc(events)

    def closed(self) -> None:
        """The stream ended, any way."""
        if self._rpc is not None and self._rpc.open_streams is not None:
            self._rpc.open_streams.dec()


def stream_opened() -> OpenStream:
    """A live stream started, in the streaming RPC being served."""
    return OpenStream(SERVING.get())


class FanoutCollector(Collector):
    """The broadcaster's pacing, read from its `FanoutPacer` at scrape time
    (the hot path feeds only the pacer's own floats): the flush interval it
    chose, the share of the event loop fan-out took lately, the smoothed
    loop time one flush costs, and the totals behind them. The last pacer
    bound is reported (one per process outside tests); it is held weakly."""

    def __init__(self) -> None:
        self._pacer: weakref.ref[FanoutPacer] | None = None

    def bind(self, pacer: FanoutPacer) -> None:
        self._pacer = weakref.ref(pacer)

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        pacer = self._pacer() if self._pacer is not None else None
        interval = GaugeMetricFamily(
            "cursor_fanout_interval_seconds",
            "The live fan-out's flush interval now: at most one flush (one message per stream) per interval, "
            "widened so fan-out stays under CURSOR_FANOUT_CPU_SHARE of the event loop.",
        )
        share = GaugeMetricFamily(
            "cursor_fanout_loop_share",
            "Share of the event loop's time that live fan-out took lately (encoding, filtering, stream writes; "
            "smoothed over about a second).",
        )
        budget = GaugeMetricFamily("cursor_fanout_loop_share_budget",
                                   "The share of the event loop fan-out may take (CURSOR_FANOUT_CPU_SHARE).")
        cost = GaugeMetricFamily("cursor_fanout_flush_cost_seconds",
                                 "Event loop time one flush costs with the writes it causes (smoothed).")
        spent = CounterMetricFamily("cursor_fanout_loop_seconds",
                                    "Event loop time spent on live fan-out (encoding, filtering, stream writes).")
        flushes = CounterMetricFamily("cursor_fanout_flushes", "Flushes of committed events to the open streams.")
        if pacer is not None:
            interval.add_metric([], pacer.interval())
            share.add_metric([], pacer.measured_share())
            budget.add_metric([], pacer.share)
            cost.add_metric([], pacer.cost)
            spent.add_metric([], pacer.spent_total)
            flushes.add_metric([], pacer.flushes)
        return [interval, share, budget, cost, spent, flushes]


FANOUT = FanoutCollector()
REGISTRY.register(FANOUT)


def bind_fanout(pacer: FanoutPacer) -> None:
    """Report this pacer's figures (the broadcaster binds its own)."""
    FANOUT.bind(pacer)


# --- gauges read at scrape time ----------------------------------------------------

# Readers by presence are counted again at most once per this many seconds,
# and no sooner than 100 times the last count took: at most 1 % of a read
# thread whatever the number of readers, and one count for concurrent scrapes.
PRESENCE_CACHE_SECONDS = 2.0
PRESENCES = ("reading", "online", "idle")


class StorageCollector(Collector):
    """Writer queue depth, busy/locked retries, refused writes, database and
    WAL file sizes, and readers by presence, of the bound store (the last
    one bound: one per process outside tests)."""

    def __init__(self) -> None:
        self._store: Store | None = None
        self._lock = threading.Lock()
        self._presence_lock = threading.Lock()
        self._presence: dict[str, int] = {}
        self._presence_until = 0.0

    def bind(self, store: Store) -> None:
        with self._lock:
            self._store = store
            self._presence_until = 0.0

    def unbind(self, store: Store) -> None:
        with self._lock:
            if self._store is store:
                self._store = None

    def describe(self) -> Iterable[Metric]:
        return []

    def _readers_by_presence(self, store: Store) -> dict[str, int]:
        """The store's counts, cached (see PRESENCE_CACHE_SECONDS)."""
        with self._presence_lock:
            began = time.monotonic()
            if began >= self._presence_until:
                try:
                    self._presence = store.readers_by_presence()
                except Exception as error:  # a closing or failing store: report nothing this time
                    log.warning("could not count readers by presence: %s", error)
                    self._presence = {}
                took = time.monotonic() - began
                self._presence_until = began + took + max(PRESENCE_CACHE_SECONDS, 100 * took)
            return self._presence

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            store = self._store
        depth = GaugeMetricFamily("cursor_writer_queue_depth", "Write tasks waiting for the writer thread.")
        retries = CounterMetricFamily(
            "cursor_db_busy_retries",
            "Times the writer found the database locked by another process past busy_timeout and retried.",
        )
        refused = CounterMetricFamily(
            "cursor_writer_refused_writes",
            "Writes answered UNAVAILABLE because their transaction was lost to a storage error, by reason "
            "(DATABASE_FULL, STORAGE_IO_ERROR, ...).",
            labels=["reason"],
        )
        db_size = GaugeMetricFamily("cursor_db_size_bytes", "Size of the main database file.")
        wal_size = GaugeMetricFamily("cursor_db_wal_size_bytes", "Size of the database's WAL file.")
        readers = GaugeMetricFamily(
            "cursor_readers", "Readers by presence now: reading, online (heartbeats only), idle (all others).",
            labels=["presence"],
        )
        if store is not None:
            stats = store.stats()
            depth.add_metric([], stats.queue_depth)
            retries.add_metric([], stats.busy_retries)
            for reason, count in sorted(stats.refused_writes.items()):
                refused.add_metric([reason], count)
            db_size.add_metric([], stats.size_bytes)
            wal_size.add_metric([], stats.log_bytes)
            counts = self._readers_by_presence(store)
            if counts:
                for presence in PRESENCES:
                    readers.add_metric([presence], counts.get(presence, 0))
        return [depth, retries, refused, db_size, wal_size, readers]


STORAGE = StorageCollector()
REGISTRY.register(STORAGE)


def bind_store(store: Store) -> None:
    """Feed the writer histograms from this store and report its gauges."""
    store.observe_commits(observe_batch)
    STORAGE.bind(store)


def unbind_store(store: Store) -> None:
    STORAGE.unbind(store)


# --- the HTTP endpoint -------------------------------------------------------------------


@dataclass
class MetricsServer:
    httpd: WSGIServer
    thread: threading.Thread
    host: str
    port: int

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port` (port 0 picks one); only loopback hosts are accepted:
    metrics describe the service to anyone who can read them."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"metrics address {listen!r} is not host:port")
    host = host.strip("[]") or "127.0.0.1"
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigError(
                f"metrics address {listen!r} is not a loopback address; serve metrics on 127.0.0.1 or ::1 "
                "and let a local agent or proxy expose them"
            )
    return host, int(port_text)


def start_metrics_server(listen: str) -> MetricsServer:
    host, port = parse_listen(listen)
    httpd, thread = start_http_server(port, addr=host, registry=REGISTRY)
    actual = int(httpd.server_port)
    log.info("metrics on http://%s:%d/metrics", host if ":" not in host else f"[{host}]", actual)
    return MetricsServer(httpd, thread, host, actual)
