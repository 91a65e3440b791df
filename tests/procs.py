"""The server as a separate process, for tests that need its own RSS,
signals, or a restart on the same port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

_SERVING = re.compile(r"serving on 127\.0\.0\.1:(\d+)")


class ServerProcess:
    def __init__(self, db_path: Path, listen: str = "127.0.0.1:0", env: dict[str, str] | None = None) -> None:
        full_env = {
            **os.environ,
            "CURSOR_PEER_LOGIN_BURST": "1000000",
            "CURSOR_PEER_LOGIN_PER_MINUTE": "100000000",
            **(env or {}),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cursor_grpc", "serve", "--migrate", "--listen", listen, "--db", str(db_path)],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=full_env, text=True,
        )
        self.log: list[str] = []
        self._port: int | None = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        if not self._ready.wait(30) or self._port is None:
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.log))
        self.address = f"127.0.0.1:{self._port}"

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            match = _SERVING.search(line)
            if match and self._port is None:
                self._port = int(match.group(1))
                self._ready.set()
        self._ready.set()

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def wait_log(self, text: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.log):
                return True
            time.sleep(0.05)
        return False
