"""Settings of one server process: defaults, overridden by environment
variables (`CURSOR_*`), overridden by command-line flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import cast

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DB = "var/cursor.db"


class ConfigError(ValueError):
    """A setting the server cannot run with. The command line prints its
    message in one line (no traceback) and exits with status 2."""


@dataclass(frozen=True)
class StorageSettings:
    """How the database is opened and written: a SQLite file (`path`), or
    the server `url` names (`postgresql://…`), as `CURSOR_DB` or `--db` give it."""

    path: Path = Path(DEFAULT_DB)
    # The database's URL as given, when it is one (a Path would fold its `//`).
    url: str | None = None
    # `CURSOR_BROKER`: `nats://…` or `redis://…` between instances on one
    # PostgreSQL database; unset, PostgreSQL's own LISTEN/NOTIFY.
    broker: str | None = None
    # NORMAL loses at most the last transactions on power loss, never
    # consistency; FULL also fsyncs the WAL on every commit.
    synchronous: str = "NORMAL"
    # Negative: KiB (SQLite's convention). 64 MiB per connection.
    cache_size_kib: int = 65536
    busy_timeout_ms: int = 5000
    # How long a write keeps retrying a lock held by another process.
    lock_wait_seconds: float = 30.0
    read_connections: int = 4
    # Most tasks one group commit takes from the queue.
    max_batch: int = 512
    slow_query_ms: float = 50.0


def database_fields(value: str) -> dict[str, object]:
    """The StorageSettings fields for a `CURSOR_DB`/`--db` value: a path, or
    a URL kept as written."""
    if "://" in value:
        return {"path": Path(value), "url": value}
    return {"path": Path(value), "url": None}


@dataclass(frozen=True)
class AuthSettings:
    """Session lifetimes and login throttling. Reader apps stay signed in for
    long; consultant sessions are short because they see everyone's data."""

    reader_idle_seconds: int = 30 * 24 * 3600
    reader_absolute_seconds: int = 365 * 24 * 3600
    consultant_idle_seconds: int = 30 * 60
    consultant_absolute_seconds: int = 12 * 3600
    # `last_active_at` is written at most this often per session.
    touch_interval_seconds: int = 60
    # How often the sessions in use (cached, or with open streams) are
    # checked against the database in one query, so that a session ended
    # by another process or by hand stops its calls and streams within a
    # second (docs/security.md, "Revocation and open streams").
    session_check_seconds: float = 0.5
    # Per (account, peer address): after this many failures in a row from one
    # address, each next attempt from there waits 1 s, 2 s, 4 s … up to
    # `max_login_delay_seconds`. Other addresses are not delayed by them.
    free_login_failures: int = 5
    max_login_delay_seconds: float = 60.0
    # Per account, over all addresses: a bucket of failures refilled at ten
    # times what one delayed address can spend (one a minute), so only many
    # addresses at once empty it; then addresses that have never signed in
    # to the account wait. See docs/security.md.
    account_login_failure_burst: int = 100
    account_login_failures_per_minute: float = 10.0
    # Per peer address: a token bucket of login and sign-up attempts.
    peer_login_burst: int = 20
    peer_login_per_minute: float = 30.0
    # argon2id cost; OWASP's minimum is 19 MiB, t=2, p=1.
    argon2_memory_kib: int = 19456
    argon2_time_cost: int = 2
    argon2_parallelism: int = 1
    # Threads hashing passwords, and their OS priority: auto, idle
    # (SCHED_IDLE), low (nice 10) or normal; see auth/passwords.py.
    argon2_threads: int = 2
    argon2_priority: str = "auto"


@dataclass(frozen=True)
class LimitSettings:
    """Input size caps (docs/security.md, "Input validation and request size bounds")."""

    max_payload_bytes: int = 16 * 1024
    max_summary_chars: int = 200
    max_chunk_interactions: int = 500
    # Every request but an upload chunk. grpc.aio decodes a unary request
    # before the servicer method runs, so this bounds the work anyone can
    # cause before authentication.
    max_request_bytes: int = 64 * 1024
    # One RecordInteractions chunk, and the server's
    # grpc.max_receive_message_length: 500 interactions at the payload and
    # summary caps take 8.3 MiB.
    max_message_bytes: int = 9 * 1024 * 1024
    # What the server sends in one message (a page of 1000 interactions).
    max_response_bytes: int = 16 * 1024 * 1024
    default_page_size: int = 50
    max_page_size: int = 1000
    active_window_seconds: int = 120


@dataclass(frozen=True)
class LiveSettings:
    """Live event streams and presence."""

    # Keep-alive message on a stream that carried nothing for this long.
    heartbeat_seconds: float = 15.0
    # Live events one stream may hold, in number and in encoded bytes,
    # before it falls back to catching up from the database (memory stays
    # bounded, nothing is lost).
    stream_buffer_events: int = 4096
    stream_buffer_bytes: int = 4 * 1024 * 1024
    # Most events, and most bytes of events, in one stream message (at least
    # one event); 1 MiB stays well under a client's default 4 MiB limit.
    max_events_per_message: int = 500
    max_stream_message_bytes: int = 1024 * 1024
    # Catch-up from the database reads at most this many bytes of events
    # per query, then sends them before it reads on.
    replay_page_bytes: int = 1024 * 1024
    # Open streams (all three stream RPCs together), per session, per
    # account and in the whole server; one more answers RESOURCE_EXHAUSTED
    # (TOO_MANY_STREAMS). See docs/operations.md, "Stream bounds".
    max_streams_per_session: int = 16
    max_streams_per_account: int = 32
    max_streams_total: int = 5000
    # Fan-out pacing: committed events go out to the streams at most once
    # per interval, one message per stream carrying all of them. The
    # broadcaster measures the event loop's time one flush costs (encoding,
    # filtering, and the stream writes it causes) and keeps the interval
    # between these two bounds, as short as keeps that cost under
    # `fanout_cpu_share` of the loop (each stream message costs the loop
    # tens of microseconds whatever it carries, so fewer, bigger messages
    # cost less). A lone event after a quiet spell goes out at once.
    fanout_interval_seconds: float = 0.005
    fanout_max_interval_seconds: float = 1.0
    fanout_cpu_share: float = 0.25
    # A stream whose consumer takes no message for this long is ended.
    stall_seconds: float = 300.0
    # Presence: reading = non-heartbeat activity within this window.
    presence_reading_seconds: float = 60.0
    # Presence: idle after this long without anything, plus the grace below
    # so a phone backgrounded for a moment does not flap.
    presence_idle_seconds: float = 120.0
    presence_grace_seconds: float = 10.0
    presence_sweep_seconds: float = 1.0
    # WatchReaders (the dashboard stream): at most one update per reader
    # per interval, with its latest state; the interval widens up to the
    # maximum while fan-out takes more of the loop than `fanout_cpu_share`.
    dashboard_interval_seconds: float = 0.25
    dashboard_max_interval_seconds: float = 10.0


@dataclass(frozen=True)
class AttentionSettings:
    """Who needs a consultant: the attention rules' thresholds, and how new
    readers get one (docs/attention.md). Every field is `CURSOR_<FIELD>`,
    e.g. `CURSOR_ATTENTION_STUCK_SECONDS`."""

    # stuck: present (reading or online) with no progress on one step for
    # this long; once the reader has a pace (`attention_pace_steps` steps
    # timed), `attention_pace_factor` times its usual time per step instead,
    # kept between the minimum and the maximum.
    attention_stuck_seconds: float = 300.0
    attention_pace_steps: int = 5
    attention_pace_factor: float = 4.0
    attention_stuck_min_seconds: float = 120.0
    attention_stuck_max_seconds: float = 1800.0
    # struggling: this many wrong answers in a row.
    attention_wrong_answers: int = 3
    # stalled: went idle before finishing, having done more than heartbeats
    # within this long before going idle.
    attention_stalled_active_seconds: float = 600.0
    # `round_robin`: a new reader is assigned to the active consultant
    # (role consultant) with the fewest readers; `off`: admins and
    # supervisors assign by hand.
    assign_new_readers: str = "off"

    def __post_init__(self) -> None:
        if self.assign_new_readers not in ("off", "round_robin"):
            raise ConfigError(f"CURSOR_ASSIGN_NEW_READERS must be off or round_robin, not {self.assign_new_readers!r}")

    def stuck_after(self, pace_seconds: float | None, pace_steps: int) -> float:
        """Seconds without progress after which this reader counts as stuck."""
        if pace_seconds is None or pace_steps < self.attention_pace_steps:
            return self.attention_stuck_seconds
        return min(max(self.attention_pace_factor * pace_seconds, self.attention_stuck_min_seconds),
                   self.attention_stuck_max_seconds)


@dataclass(frozen=True)
class OpsSettings:
    """Backups, archival, WAL housekeeping and metrics (docs/operations.md).
    Periods are seconds; 0 turns a job off."""

    # host:port of the Prometheus endpoint (loopback only); empty = off.
    metrics_listen: str = ""
    backup_every: float = 0.0
    # None: `backups/` beside the database.
    backup_dir: Path | None = None
    backup_keep: int = 7
    backup_method: str = "online"  # 'online' (backup API, in steps) or 'vacuum' (VACUUM INTO)
    backup_step_pages: int = 1024
    archive_every: float = 0.0
    # None: `archive/` beside the database.
    archive_dir: Path | None = None
    archive_retention_days: float = 90.0
    archive_chunk_rows: int = 500
    # WAL policy: every `wal_check_every` s, a WAL larger than
    # `wal_truncate_bytes` is checkpointed and truncated; the writer waits at
    # most `wal_reset_wait_ms` for readers while doing so.
    wal_check_every: float = 1.0
    wal_truncate_bytes: int = 64 * 1024 * 1024
    wal_reset_wait_ms: int = 200
    optimize_every: float = 3600.0
    vacuum_every: float = 0.0
    vacuum_min_free_fraction: float = 0.25


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """Seconds in `90`, `45s`, `30m`, `1h`, `1d`, `2w`, `250ms` or `1h30m`."""
    raw = text.strip().lower()
    if not raw:
        raise ConfigError("empty duration")
    try:
        return float(raw)
    except ValueError:
        pass
    total = 0.0
    number = ""
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = "ms" if raw.startswith("ms", i) else ch
        if unit not in _DURATION_UNITS or not number:
            raise ConfigError(f"not a duration: {text!r} (use e.g. 45s, 30m, 1h, 1d)")
        total += float(number) * _DURATION_UNITS[unit]
        number = ""
        i += len(unit)
    if number:
        raise ConfigError(f"not a duration: {text!r} (a number needs a unit after another unit)")
    return total


def _env_value(name: str, raw: str, default: object) -> object:
    """One environment value, typed like the field's default."""
    try:
        if isinstance(default, bool):
            return raw.lower() in {"1", "true", "yes", "on"}
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        kind = "a whole number" if isinstance(default, int) else "a number"
        raise ConfigError(f"{name} must be {kind}, not {raw!r}") from None
    if isinstance(default, Path):
        return Path(raw)
    return raw


def ops_settings_from_env() -> OpsSettings:
    """`CURSOR_<FIELD>` for every OpsSettings field; `*_every` take durations."""
    found: dict[str, object] = {}
    defaults = OpsSettings()
    for f in fields(OpsSettings):
        name = f"CURSOR_{f.name.upper()}"
        raw = os.environ.get(name)
        if raw is None:
            continue
        if f.name.endswith("_every"):
            try:
                found[f.name] = parse_duration(raw)
            except ConfigError as error:
                raise ConfigError(f"{name}: {error}") from None
        elif f.name.endswith("_dir"):
            found[f.name] = Path(raw) if raw else None
        else:
            found[f.name] = _env_value(name, raw, getattr(defaults, f.name))
    return OpsSettings(**found)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Settings:
    listen: str = DEFAULT_LISTEN
    storage: StorageSettings = field(default_factory=StorageSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    live: LiveSettings = field(default_factory=LiveSettings)
    attention: AttentionSettings = field(default_factory=AttentionSettings)
    ops: OpsSettings = field(default_factory=OpsSettings)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    grace_seconds: float = 10.0
    # How long a thread may hold the GIL while another waits for it
    # (`sys.setswitchinterval`; Python's default is 5 ms). A read thread
    # takes the GIL back after every SQLite step, so under ingest a query
    # can wait this long several times; see docs/performance.md.
    switch_interval_seconds: float = 0.001


def _env_overrides(prefix: str, cls: type) -> dict[str, object]:
    """`CURSOR_<FIELD>` values for the simple fields of a settings class."""
    found: dict[str, object] = {}
    defaults = cls()
    for f in fields(cls):
        name = f"{prefix}{f.name.upper()}"
        raw = os.environ.get(name)
        if raw is not None:
            found[f.name] = _env_value(name, raw, getattr(defaults, f.name))
    return found


def settings_from_env() -> Settings:
    """Settings with every `CURSOR_*` environment variable applied.

    `CURSOR_LISTEN` and `CURSOR_DB` are the two most used; every other field is
    `CURSOR_<FIELD>` (for example `CURSOR_CONSULTANT_IDLE_SECONDS`).
    """
    storage = _env_overrides("CURSOR_", StorageSettings)
    if "CURSOR_DB" in os.environ:
        storage.update(database_fields(os.environ["CURSOR_DB"]))
    storage["broker"] = os.environ.get("CURSOR_BROKER") or None
    tls_cert = os.environ.get("CURSOR_TLS_CERT")
    tls_key = os.environ.get("CURSOR_TLS_KEY")
    switch = os.environ.get("CURSOR_SWITCH_INTERVAL_SECONDS")
    switch_interval = (Settings.switch_interval_seconds if switch is None
                       else cast(float, _env_value("CURSOR_SWITCH_INTERVAL_SECONDS", switch, 0.0)))
    return Settings(
        listen=os.environ.get("CURSOR_LISTEN", DEFAULT_LISTEN),
        storage=StorageSettings(**storage),  # type: ignore[arg-type]
        auth=AuthSettings(**_env_overrides("CURSOR_", AuthSettings)),  # type: ignore[arg-type]
        limits=LimitSettings(**_env_overrides("CURSOR_", LimitSettings)),  # type: ignore[arg-type]
        live=LiveSettings(**_env_overrides("CURSOR_", LiveSettings)),  # type: ignore[arg-type]
        attention=AttentionSettings(**_env_overrides("CURSOR_", AttentionSettings)),  # type: ignore[arg-type]
        ops=ops_settings_from_env(),
        tls_cert=Path(tls_cert) if tls_cert else None,
        tls_key=Path(tls_key) if tls_key else None,
        switch_interval_seconds=switch_interval,
    )
