"""`cursor-grpc serve` as a separate process, for tests that need its own
RSS, signals, exit status or log, or a restart on the same port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

_SERVING = re.compile(r"serving on 127\.0\.0\.1:(\d+)")


class ServerProcess:
    """The server in a subprocess, its stderr collected by a thread.

    `db` is what `--db` takes (a SQLite path, or a `TestDatabase.url`). By
    default it applies migrations (`--migrate`) and waits until it serves;
    `wait=False` is for a serve that is expected to refuse (see `exit_code`)."""

    def __init__(
        self,
        db: Path | str,
        listen: str = "127.0.0.1:0",
        env: dict[str, str] | None = None,
        *,
        args: Sequence[str] = ("--migrate",),
        command: Sequence[str] | None = None,
        cwd: Path | None = None,
        base_env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> None:
        full_env = {
            **(os.environ if base_env is None else base_env),
            # Every test client is 127.0.0.1: lift the per-peer login limit.
            "CURSOR_PEER_LOGIN_BURST": "1000000",
            "CURSOR_PEER_LOGIN_PER_MINUTE": "100000000",
            **(env or {}),
        }
        self.process = subprocess.Popen(
            [*(command or [sys.executable, "-m", "cursor_grpc"]), "serve", *args,
             "--listen", listen, "--db", str(db)],
            cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )
        self.log: list[str] = []
        self.port = 0
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        if wait:
            try:
                self.wait_serving()
            except BaseException:
                self.kill()
                raise

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            match = _SERVING.search(line)
            if match and not self.port:
                self.port = int(match.group(1))
                self._ready.set()
        self._ready.set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def stderr(self) -> str:
        return "".join(self.log)

    def wait_serving(self, timeout: float = 30) -> ServerProcess:
        self._ready.wait(timeout)
        if not self.port:
            status = self.process.poll()
            state = f"exited ({status})" if status is not None else f"did not report its port within {timeout} s"
            raise AssertionError(f"serve {state} before serving:\n{self.stderr}")
        return self

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))

    def exit_code(self, timeout: float = 30) -> int:
        """For a serve that is expected to stop by itself: its exit status."""
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
            self._reader.join(5)
            return code
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._reader.join(5)

    def wait_log(self, text: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.log):
                return True
            time.sleep(0.05)
        return False
