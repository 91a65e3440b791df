"""Sessions this process is ending or has just seen end, so that the session
cache cannot admit one again.

A session read from the database before its revocation committed looks
alive. Without a memory of the revocation, the read that finishes after it
would cache the session for another `CACHE_SECONDS`. Each revocation is
marked here (for one session, or for every session of an account) while its
write runs, and numbered once it has committed; a read remembers the number
current when it began, and what it read is not admitted if a mark on its
session or account is pending or newer. Marks are forgotten as soon as no
read that began before them is still running, so this stays small.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

Key = tuple[str, ...]


@dataclass(slots=True)
class _Mark:
    pending: int = 0
    generation: int = 0


def session_key(session_id: str) -> Key:
    return ("session", session_id)


def account_key(kind: str, account_id: str) -> Key:
    return ("account", kind, account_id)


class Revocations:
    def __init__(self) -> None:
        self._generation = 0
        self._marks: dict[Key, _Mark] = {}
        # Reads in flight, by the generation they began in.
        self._reads: Counter[int] = Counter()

    def begin_read(self) -> int:
        """Call before reading a session; pass the result to `admits` and `end_read`."""
        self._reads[self._generation] += 1
        return self._generation

    def end_read(self, started: int) -> None:
        self._reads[started] -= 1
        if not self._reads[started]:
            del self._reads[started]
        self._forget_old()

    def admits(self, started: int, keys: list[Key]) -> bool:
        """Whether a session read since `started` may be trusted: no revocation
        of it is running, and none committed after the read began."""
        for key in keys:
            mark = self._marks.get(key)
            if mark is not None and (mark.pending or mark.generation > started):
                return False
        return True

    def begin(self, keys: list[Key]) -> None:
        """A revocation of these sessions or accounts is about to be written."""
        for key in keys:
            self._marks.setdefault(key, _Mark()).pending += 1

    def committed(self, keys: list[Key]) -> None:
        """The revocation `begin` announced has committed."""
        self._generation += 1
        for key in keys:
            mark = self._marks[key]
            mark.pending -= 1
            mark.generation = self._generation
        self._forget_old()

    def abandoned(self, keys: list[Key]) -> None:
        """The revocation `begin` announced failed: nothing changed."""
        for key in keys:
            mark = self._marks[key]
            mark.pending -= 1
            if not mark.pending and not mark.generation:
                del self._marks[key]
        self._forget_old()

    def seen(self, keys: list[Key]) -> None:
        """A revocation committed elsewhere (another process) was just read."""
        self.begin(keys)
        self.committed(keys)

    def _forget_old(self) -> None:
        if not self._marks:
            return
        oldest = min(self._reads, default=self._generation)
        stale = [key for key, mark in self._marks.items() if not mark.pending and mark.generation <= oldest]
        for key in stale:
            del self._marks[key]

    def __len__(self) -> int:
        return len(self._marks)
