"""WAL housekeeping: under continuous writes and a reader that always has a
read transaction open, SQLite's own PASSIVE checkpoints never reach the end of
the WAL and it grows without bound. The server's policy (check every
`wal_check_every`, above `wal_truncate_bytes` checkpoint and truncate on the
writer, waiting at most `wal_reset_wait_ms` for readers) keeps it bounded.

The bound asserted, WAL_BOUND = 48 MiB: the threshold (4 MiB here) plus what
20 writers add (up to ~40 MB/s on the test machine) during one check interval
(0.1 s here) and the wait (0.2 s), with room for a couple of busy attempts in a
row on a loaded machine. The control test shows that the same load without the
policy passes the bound, so the bound is a real one.

Both run on what the machine does, not on a clock: the control until its WAL
passes the bound (about 2 s on the test machine; it fails only if the WAL
stops growing, or after a deadline dozens of times that), the bounded test
for its duration and then until the policy has truncated the WAL a few times."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import pytest

from tests.ops_support import WriteLoad, start_server

pytestmark = pytest.mark.sqlite_only  # the WAL itself and its housekeeping

THRESHOLD = 4 * 1024 * 1024
WAL_BOUND = 48 * 1024 * 1024
POLICY = {
    "CURSOR_WAL_CHECK_EVERY": "100ms",
    "CURSOR_WAL_TRUNCATE_BYTES": str(THRESHOLD),
    "CURSOR_WAL_RESET_WAIT_MS": "200",
}
# The bounded test goes on until the policy has cut the WAL back this often,
# so that the bound is held over several cycles however fast the machine writes.
MIN_TRUNCATIONS = 3
# Deadlines for slow machines. The control passes the bound in about 2 s on
# the test machine; it gives up early once its WAL has not grown for
# CONTROL_STALL seconds.
CONTROL_DEADLINE = 180.0
CONTROL_STALL = 20.0
BOUNDED_EXTRA = 120.0


READER_SCRIPT = r"""
import json, signal, sys, time
import apsw
db, seconds = sys.argv[1], float(sys.argv[2])
stopped = []
signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
conns = [apsw.Connection(db, flags=apsw.SQLITE_OPEN_READONLY) for _ in range(2)]
for c in conns:
    c.set_busy_timeout(5000)
reads, longest, k = 0, 0.0, 0
previous, opened = None, 0.0
end = time.monotonic() + seconds
while time.monotonic() < end and not stopped:
    conn = conns[k % 2]
    k += 1
    conn.execute("BEGIN")
    conn.execute("SELECT max(seq) FROM interactions").fetchall()  # the snapshot is taken here
    now = time.monotonic()
    if previous is not None:  # the older transaction ends only once the newer one is open
        previous.execute("COMMIT")
        longest = max(longest, time.monotonic() - opened)
    previous, opened = conn, now
    reads += 1
    time.sleep(0.01)
previous.execute("COMMIT")
print(json.dumps({"reads": reads, "longest": longest}))
"""


class ContinuousReader:
    """A separate process with two connections taking turns: each read
    transaction (about 10 ms) ends only after the next one has taken its
    snapshot, so at every moment a read transaction is open on the database.
    Its own process, so the test's writer threads cannot stretch its
    transactions by holding the GIL. It reads for at most `seconds`, or
    until `result` asks it to stop."""

    def __init__(self, db: Path, seconds: float) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", READER_SCRIPT, str(db), str(seconds)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self) -> dict[str, Any]:
        self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=120)
        assert self.process.returncode == 0, err
        return json.loads(out)  # type: ignore[no-any-return]


def wal_size(db: Path) -> int:
    try:
        return os.path.getsize(f"{db}-wal")
    except FileNotFoundError:
        return 0


def truncations(server: Any) -> int:
    return sum("checkpointed and truncated" in line for line in server.log)


def run_load(db: Path, env: dict[str, str], *, at_least: float, deadline: float,
             done: Callable[[list[int], Any], bool], stall: float | None = None) -> dict[str, Any]:
    """20 writers and a continuous reader against a server with `env`: for at
    least `at_least` seconds and then until `done(WAL sizes so far, server)`,
    for at most `deadline` seconds; with `stall`, it ends early once the WAL
    has not grown for that long."""
    server = start_server(db, **env)
    load = None
    sizes: list[int] = []
    try:
        load = WriteLoad(server.address, writers=20, payload_bytes=600).start()
        reader = ContinuousReader(db, deadline + 30)
        time.sleep(0.3)
        started = grew_at = time.monotonic()
        while True:
            sizes.append(wal_size(db))
            now = time.monotonic()
            if len(sizes) == 1 or sizes[-1] > max(sizes[:-1]):
                grew_at = now
            if now - started >= at_least and done(sizes, server):
                break
            if now - started >= deadline or (stall is not None and now - grew_at >= stall):
                break
            time.sleep(0.1)
        ended = time.monotonic()
        longest, gap, writes = load.stall(started, ended)
        result = {
            "seconds": round(ended - started, 1), "max_wal": max(sizes), "samples": len(sizes), "writes": writes,
            "reader": reader.result(), "longest_write": longest, "longest_gap": gap,
            "truncations": truncations(server),
            "busy": sum("readers kept it busy" in line for line in server.log),
            "longest_pause_ms": max((float(m.group(1)) for line in server.log
                                     if (m := re.search(r"writer paused ([\d.]+) ms", line))), default=0.0),
            "errors": list(load.errors),
        }
    finally:
        if load is not None:
            load.stop()
        server.terminate()
    return result


def test_without_housekeeping_the_wal_passes_the_bound(tmp_path: Path) -> None:
    """The control: same load, WAL checks off. If this ever stops growing,
    the bounded test below proves nothing and needs a heavier load."""
    result = run_load(tmp_path / "control.db", {"CURSOR_WAL_CHECK_EVERY": "0"}, at_least=0.0,
                      deadline=CONTROL_DEADLINE, stall=CONTROL_STALL, done=lambda sizes, _: sizes[-1] > WAL_BOUND)
    print("\nWAL without housekeeping:", result)
    assert result["max_wal"] > WAL_BOUND, f"the WAL stopped at {result['max_wal']} bytes after {result['seconds']} s"


@pytest.mark.parametrize("seconds", [15, pytest.param(60, marks=pytest.mark.slow)])
def test_wal_stays_bounded_under_load_with_a_continuous_reader(tmp_path: Path, seconds: int) -> None:
    db = tmp_path / "wal.db"
    result = run_load(db, POLICY, at_least=seconds, deadline=seconds + BOUNDED_EXTRA,
                      done=lambda _, server: truncations(server) >= MIN_TRUNCATIONS)
    print(f"\nWAL with housekeeping ({seconds} s or more):", result)
    # About 100 a second on the test machine; one a second shows it kept a snapshot open throughout.
    assert result["reader"]["reads"] >= result["seconds"], "the reader kept reading"
    assert result["truncations"] >= MIN_TRUNCATIONS, "the policy did the work, several times"
    assert result["max_wal"] < WAL_BOUND, f"WAL reached {result['max_wal']} bytes"
    assert not result["errors"], result["errors"][:5]
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()


def test_optimize_and_vacuum_on_schedule(tmp_path: Path) -> None:
    """PRAGMA optimize runs on its period; a scheduled VACUUM runs only when
    enough of the file is free pages, and then gives them back."""
    from cursor_grpc import metrics
    from cursor_grpc.config import OpsSettings, StorageSettings
    from cursor_grpc.storage.sqlite.store import apply_migrations
    from tests.conftest import ServerThread, test_settings

    db = tmp_path / "vac.db"
    apply_migrations(StorageSettings(path=db))
    conn = apsw.Connection(str(db))
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO audit_logs(id, actor_type, action, details, created_at) VALUES (?, 'system', "
                     "'test', ?, '2026-01-01T00:00:00.000Z')", [(f"a{n}", '{"x": "' + "y" * 900 + '"}')
                                                                 for n in range(20_000)])
    conn.execute("COMMIT")
    conn.execute("DELETE FROM audit_logs WHERE action = 'test'")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    free_before = conn.execute("PRAGMA freelist_count").fetchall()[0][0]
    conn.close()
    size_before = db.stat().st_size
    assert free_before > 1000

    def runs(task: str) -> float:
        return metrics.REGISTRY.get_sample_value("cursor_maintenance_runs_total",
                                                 {"task": task, "result": "ok"}) or 0.0

    optimized, vacuumed = runs("optimize"), runs("vacuum")
    ops = OpsSettings(optimize_every=0.2, vacuum_every=0.3, vacuum_min_free_fraction=0.2)
    server = ServerThread(dataclasses.replace(test_settings(db), ops=ops))
    try:
        deadline = time.monotonic() + 20
        while runs("vacuum") <= vacuumed or runs("optimize") <= optimized:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.7)  # a second VACUUM check finds too few free pages and skips
        assert runs("vacuum") == vacuumed + 1
    finally:
        server.stop()
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    assert conn.execute("PRAGMA freelist_count").fetchall()[0][0] < free_before / 10
    assert conn.execute("SELECT count(*) FROM sqlite_stat1").fetchall()[0][0] > 0, "optimize analysed tables"
    conn.close()
    assert db.stat().st_size < size_before / 2
