"""Prometheus metrics: what they are, how they are fed, and the loopback
HTTP endpoint that serves them (`serve --metrics-listen 127.0.0.1:9464`).

Everything lives in one process-wide registry (`REGISTRY`). Counters and
histograms are fed where things happen (the RPC interceptor, the writer's
batch observer, the backup/archive jobs, the live streams through the small
API below); gauges about the database (queue depth, file sizes, busy
retries) are read when Prometheus scrapes, from the store bound with
`bind_store`.

Label values are bounded: RPC method names come from the registered
services (unknown methods are not counted), status codes from grpc. Nothing
per-reader or per-stream is ever a label.

The live-stream API, for the WatchActivity implementation:

    metrics.stream_opened()        # a stream started
    metrics.stream_closed()        # it ended (any way)
    metrics.events_delivered(n)    # n events sent on a stream
    metrics.stream_lag(value)      # head seq minus that stream's last delivered seq, when sampled
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cursor_grpc.config import ConfigError

if TYPE_CHECKING:
    from cursor_grpc.storage import Store

log = logging.getLogger("cursor.metrics")

REGISTRY = CollectorRegistry(auto_describe=False)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# --- RPCs ------------------------------------------------------------------------
RPC_REQUESTS = Counter(
    "cursor_rpc_requests", "RPCs finished, by full method name and gRPC status code.",
    ["method", "code"], registry=REGISTRY,
)
RPC_SECONDS = Histogram(
    "cursor_rpc_duration_seconds", "Time from the start of an RPC to its end (streams: the whole stream).",
    ["method"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)

# --- the writer ------------------------------------------------------------------
WRITER_BATCH_TASKS = Histogram(
    "cursor_writer_batch_tasks", "Write tasks committed together in one group commit.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=REGISTRY,
)
WRITER_COMMIT_SECONDS = Histogram(
    "cursor_writer_commit_seconds", "One group commit, from BEGIN IMMEDIATE until COMMIT returned.",
    buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)

# --- live streams (fed by the live-stream engine) --------------------------------
STREAMS_OPEN = Gauge("cursor_streams_open", "Live event streams open now.", registry=REGISTRY)
EVENTS_DELIVERED = Counter(
    "cursor_stream_events_delivered", "Events sent to consultants on live streams.", registry=REGISTRY
)
STREAM_LAG = Histogram(
    "cursor_stream_lag_events",
    "Per-stream lag when sampled: the head event seq minus the last seq delivered on that stream.",
    buckets=(0, 1, 5, 10, 50, 100, 500, 1000, 5000, 10000, 100000), registry=REGISTRY,
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


def stream_opened() -> None:
    STREAMS_OPEN.inc()


def stream_closed() -> None:
    STREAMS_OPEN.dec()


def events_delivered(n: int) -> None:
    if n > 0:
        EVENTS_DELIVERED.inc(n)


def stream_lag(value: int | float) -> None:
    STREAM_LAG.observe(max(0.0, float(value)))


def observe_batch(tasks: int, seconds: float) -> None:
    """The store's `observe_commits` observer (runs on the backend's thread)."""
    WRITER_BATCH_TASKS.observe(tasks)
    WRITER_COMMIT_SECONDS.observe(seconds)


# --- gauges read at scrape time ----------------------------------------------------


class StorageCollector(Collector):
    """Writer queue depth, busy/locked retries, database and WAL file sizes of
    the bound store (the last one bound: one per process outside tests)."""

    def __init__(self) -> None:
        self._store: Store | None = None
        self._lock = threading.Lock()

    def bind(self, store: Store) -> None:
        with self._lock:
            self._store = store

    def unbind(self, store: Store) -> None:
        with self._lock:
            if self._store is store:
                self._store = None

    def describe(self) -> Iterable[Metric]:
        return []

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
        if store is not None:
            stats = store.stats()
            depth.add_metric([], stats.queue_depth)
            retries.add_metric([], stats.busy_retries)
            for reason, count in sorted(stats.refused_writes.items()):
                refused.add_metric([reason], count)
            db_size.add_metric([], stats.size_bytes)
            wal_size.add_metric([], stats.log_bytes)
        return [depth, retries, refused, db_size, wal_size]


STORAGE = StorageCollector()
REGISTRY.register(STORAGE)


def bind_store(store: Store) -> None:
    """Feed the writer histograms from this store and report its gauges."""
    store.observe_commits(observe_batch)
    STORAGE.bind(store)


def unbind_store(store: Store) -> None:
    STORAGE.unbind(store)


# --- RPC interceptor ----------------------------------------------------------------


_REQUEST_CHILDREN: dict[tuple[str, str], Any] = {}
_SECONDS_CHILDREN: dict[str, Any] = {}


def rpc_finished(method: str, code: str, started: float) -> None:
    """Count and time one RPC of a cursor.v1 service (called by the `@rpc`
    wrapper). Labelled children are cached: `labels()` takes a lock and
    builds a key on every call."""
    key = (method, code)
    requests = _REQUEST_CHILDREN.get(key)
    if requests is None:
        requests = _REQUEST_CHILDREN[key] = RPC_REQUESTS.labels(*key)
    requests.inc()
    seconds = _SECONDS_CHILDREN.get(method)
    if seconds is None:
        seconds = _SECONDS_CHILDREN[method] = RPC_SECONDS.labels(method)
    seconds.observe(time.perf_counter() - started)


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
