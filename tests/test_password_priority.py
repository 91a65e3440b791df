"""Pure logic: the OS priority of the password-hashing threads."""

from __future__ import annotations

import os
import sys

import pytest

from cursor_grpc.auth.passwords import LOW_NICE, Passwords, resolve_priority
from cursor_grpc.config import AuthSettings

CHEAP = {"argon2_memory_kib": 1024, "argon2_time_cost": 1}


def test_auto_takes_the_idle_class_only_with_a_second_cpu() -> None:
    assert resolve_priority("auto", cpus=2) == "idle"
    assert resolve_priority("auto", cpus=8) == "idle"
    assert resolve_priority("auto", cpus=1) == "low"
    assert resolve_priority("auto", cpus=1.5) == "low"  # a cgroup quota of 1.5 CPUs
    assert resolve_priority("normal", cpus=1) == "normal"


def test_an_unknown_priority_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="CURSOR_ARGON2_PRIORITY must be one of auto, idle, low, normal, not 'high'"):
        Passwords(AuthSettings(argon2_priority="high", **CHEAP), workers=1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="scheduling classes are Linux's")
@pytest.mark.parametrize(("priority", "policy", "nice"), [
    ("idle", "SCHED_IDLE", None),
    ("low", "SCHED_OTHER", LOW_NICE),
    ("normal", "SCHED_OTHER", "inherited"),
])
def test_hashing_threads_run_at_the_chosen_priority(priority: str, policy: str, nice: int | str | None) -> None:
    passwords = Passwords(AuthSettings(argon2_priority=priority, **CHEAP), workers=1)
    stored = passwords.hash_sync("a long enough password")

    def on_the_hashing_thread() -> tuple[int, int, bool]:
        # PRIO_PROCESS with 0 reads the calling thread's nice value on Linux.
        matches, _ = passwords._verify(stored, "a long enough password")
        return os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0), matches

    try:
        seen_policy, seen_nice, matches = passwords._executor.submit(on_the_hashing_thread).result()
    finally:
        passwords.close()
    assert matches
    assert seen_policy == getattr(os, policy)
    if nice == "inherited":
        assert seen_nice == os.getpriority(os.PRIO_PROCESS, 0)
    elif nice is not None:
        assert seen_nice == nice
