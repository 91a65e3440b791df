"""Progress of the long commands (cursor_grpc/ops/progress.py): plain lines
when the output is not a terminal, a rich bar on one (a real pty here)."""

from __future__ import annotations

import io
import os
import select
from collections.abc import Iterator

import pytest

from cursor_grpc.ops.progress import BYTES, plain_progress, progress, use_bar


@pytest.fixture
def pty() -> Iterator[tuple[int, io.TextIOWrapper]]:
    """A pseudo-terminal: what the command writes to, and the side that reads it."""
    reader, writer = os.openpty()
    terminal = io.TextIOWrapper(os.fdopen(writer, "wb", buffering=0), encoding="utf-8", write_through=True)
    try:
        yield reader, terminal
    finally:
        terminal.close()
        os.close(reader)


def drain(fd: int) -> str:
    """Everything the terminal received so far."""
    out = b""
    while select.select([fd], [], [], 0.2)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out += chunk
    return out.decode("utf-8", "replace")


def test_plain_lines_at_every_tenth_and_at_the_end() -> None:
    out = io.StringIO()
    report = plain_progress("archive", "rows", out)
    for done in range(0, 1001, 7):
        report(done, 1000)
    report(1000, 1000)
    report(1000, 1000)
    assert out.getvalue().splitlines() == [
        f"archive: {n}/1000 rows ({n // 10}%)" for n in (0, 105, 203, 301, 406, 504, 602, 700, 805, 903, 1000)
    ]


def test_plain_bytes_are_shown_in_mib_and_empty_work_prints_nothing() -> None:
    out = io.StringIO()
    report = plain_progress("restore", BYTES, out)
    report(0, 0)
    report(3 << 20, 6 << 20)
    assert out.getvalue() == "restore: 3.0/6.0 MiB (50%)\n"


def test_a_bar_only_on_a_terminal_outside_ci(pty: tuple[int, io.TextIOWrapper]) -> None:
    _, terminal = pty
    assert use_bar(terminal, {"TERM": "xterm"})
    assert not use_bar(terminal, {"TERM": "xterm", "CI": "true"}), "CI logs are files, even on a pty"
    assert use_bar(terminal, {"TERM": "xterm", "CI": "false"})
    assert not use_bar(terminal, {"TERM": "dumb"})
    assert not use_bar(io.StringIO(), {"TERM": "xterm"})


def test_a_terminal_gets_a_rich_bar_with_counts(pty: tuple[int, io.TextIOWrapper],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    reader, terminal = pty
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    with progress("backup", "pages", terminal) as report:
        for done in range(0, 41, 8):
            report(done, 40)
    drawn = drain(reader)
    assert "backup" in drawn
    assert "40/40" in drawn, "rich's count column"
    assert "━" in drawn, "a bar, not a plain line"
    assert "backup: 40/40 pages (100%)" not in drawn
