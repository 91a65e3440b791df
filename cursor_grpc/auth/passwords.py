"""argon2id password hashing, always off the event loop.

argon2-cffi releases the GIL while hashing, so a small dedicated pool lets
logins use the spare core without queueing behind reads or the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from cursor_grpc.config import AuthSettings
from cursor_grpc.errors import InvalidArgument

MIN_PASSWORD = 10
MAX_PASSWORD = 256


def check_password_rules(password: str, field: str = "password") -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidArgument(
            f"{field} must be at least {MIN_PASSWORD} characters", field=field, reason="WEAK_PASSWORD"
        )
    if len(password) > MAX_PASSWORD:
        raise InvalidArgument(f"{field} must be at most {MAX_PASSWORD} characters", field=field)


def _lower_priority() -> None:
    """Hashing threads yield the CPU to the event loop and the writer: a
    login storm makes logins slower, not every other RPC."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux, or not allowed
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class Passwords:
    def __init__(self, settings: AuthSettings, workers: int = 2) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=Type.ID,
        )
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="cursor-argon2", initializer=_lower_priority
        )
        # Verified against when an email is unknown, so that case costs the
        # same time as a wrong password.
        self._dummy_hash = self._hasher.hash("not a real password, only here to spend time")

    def hash_sync(self, password: str) -> str:
        return self._hasher.hash(password)

    async def hash(self, password: str) -> str:
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
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._verify, password_hash, password)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
