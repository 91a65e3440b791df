"""Reading a server stream on a background thread, for tests."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc


def collect(call: Any, into: list[Any]) -> None:
    """Append every response of `call` to `into` until it ends (any status)."""
    try:
        for response in call:
            into.append(response)
    except grpc.RpcError:
        pass


class StreamReader:
    """A server stream read on a background thread: its responses, events,
    how it ended, and when."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.responses: list[Any] = []
        self.error: grpc.RpcError | None = None
        self.ended_at: float | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self.responses.append(response)
        except grpc.RpcError as error:
            self.error = error
        self.ended_at = time.monotonic()

    @property
    def events(self) -> list[Any]:
        return [e for r in list(self.responses) for e in r.events]

    def wait_for(self, condition: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; have {len(self.events)} events, error={self.error}")
            time.sleep(0.01)

    def cursor(self) -> str:
        return str(next(r.cursor for r in reversed(list(self.responses)) if r.cursor))

    def cancel(self) -> None:
        self.call.cancel()
        self._thread.join(5)
