"""argon2id password hashing, always off the event loop.

argon2-cffi releases the GIL while hashing, so a small dedicated pool lets
logins use the spare core without queueing behind reads or the writer.
The pool's threads run at a lower OS priority (`AuthSettings.argon2_priority`)
so that a login storm makes logins slower, not every other RPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from cursor_grpc.config import AuthSettings, ConfigError
from cursor_grpc.errors import InvalidArgument

MIN_PASSWORD = 10
MAX_PASSWORD = 256
# Every password an account can have fits: 256 characters are at most 1,024
# bytes of UTF-8. So the cap is not a setting: a lower one would lock out
# accounts whose password is longer, and a higher one admits nothing new.
MAX_PASSWORD_BYTES = 4 * MAX_PASSWORD


def check_password_size(password: str, field: str = "password") -> None:
    """Refuse what no account can have before it reaches argon2 (which
    would hash megabytes), for every password received, old or new."""
    if len(password) > MAX_PASSWORD_BYTES or len(password.encode()) > MAX_PASSWORD_BYTES:
        raise InvalidArgument(f"{field} must be at most {MAX_PASSWORD_BYTES} bytes (UTF-8)", field=field,
                              reason="PASSWORD_TOO_LONG")


def check_password_rules(password: str, field: str = "password") -> None:
    """What a new password must be: 10 to 256 characters."""
    check_password_size(password, field)
    if len(password) < MIN_PASSWORD:
        raise InvalidArgument(
            f"{field} must be at least {MIN_PASSWORD} characters", field=field, reason="WEAK_PASSWORD"
        )
    if len(password) > MAX_PASSWORD:
        raise InvalidArgument(f"{field} must be at most {MAX_PASSWORD} characters", field=field,
                              reason="PASSWORD_TOO_LONG")


PRIORITIES = ("auto", "idle", "low", "normal")
LOW_NICE = 10
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus() -> float:
    """CPUs this process may use: its CPU affinity, capped by a cgroup v2 quota."""
    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    with contextlib.suppress(OSError, ValueError):
        quota, period = _CGROUP_CPU_MAX.read_text().split()
        if quota != "max":
            cpus = min(cpus, int(quota) / int(period))
    return cpus


def resolve_priority(priority: str, cpus: float | None = None) -> str:
    """`auto` is `idle` when the process has at least two CPUs, else `low`:
    an idle-class thread runs only on a CPU nothing else wants, so on one
    busy CPU it could wait indefinitely, while with two the event loop (one
    GIL's worth of work) leaves the other one to hashing."""
    if priority not in PRIORITIES:
        raise ConfigError(f"CURSOR_ARGON2_PRIORITY must be one of {', '.join(PRIORITIES)}, not {priority!r}")
    if priority != "auto":
        return priority
    return "idle" if (usable_cpus() if cpus is None else cpus) >= 2 else "low"


def _apply_priority(priority: str) -> None:
    """Thread initializer: `idle` is Linux's SCHED_IDLE (nice 10 where that
    is not available), `low` is nice 10, `normal` leaves the thread as is."""
    if priority == "idle":
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: this thread
            return
    if priority in ("idle", "low"):
        with contextlib.suppress(OSError, AttributeError):  # not Linux, or not allowed
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOW_NICE)


class Passwords:
    def __init__(self, settings: AuthSettings, workers: int = 2) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=Type.ID,
        )
        self.priority = resolve_priority(settings.argon2_priority)
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="cursor-argon2", initializer=_apply_priority,
            initargs=(self.priority,),
        )
        # Verified against when an email is unknown, so that case costs the
        # same time as a wrong password.
        self._dummy_hash = self._hasher.hash("not a real password, only here to spend time")

    # Each entry point refuses an oversized password itself too (callers check
    # first, with the field's name), so nothing can send one to argon2.
    def hash_sync(self, password: str) -> str:
        check_password_size(password)
        return self._hasher.hash(password)

    async def hash(self, password: str) -> str:
        check_password_size(password)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._hasher.hash, password)

    def _verify(self, password_hash: str | None, password: str) -> tuple[bool, bool]:
        """(matches, needs rehash)."""
        try:
            self._hasher.verify(password_hash or self._dummy_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False, False
        if password_hash is None:
            return False, False
        return True, self._hasher.check_needs_rehash(password_hash)

    async def verify(self, password_hash: str | None, password: str) -> tuple[bool, bool]:
        """Check `password`; `password_hash=None` spends the same time and fails."""
        check_password_size(password)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._verify, password_hash, password)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
