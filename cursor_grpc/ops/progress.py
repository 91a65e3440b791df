"""Progress of the long commands (backup, restore, archive, migrate).

On a terminal: a rich bar with counts and the time left. Otherwise (a pipe,
a file, CI, whose logs are files even when a pty runs the job): plain lines
at every tenth of the way, so a captured log stays short and readable.

The work reports through a `Progress` callback, `(done, total)`; the storage
code that calls it knows nothing about how it is shown.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TextIO

from cursor_grpc.storage import Progress

BYTES = "bytes"


def use_bar(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """A bar only on a terminal that draws one: never in CI (`CI` set, as CI
    services do) or on a dumb terminal."""
    in_ci = environ.get("CI", "").lower() not in ("", "0", "false")
    return stream.isatty() and not in_ci and environ.get("TERM") != "dumb"


def _amount(value: int, unit: str) -> str:
    return f"{value / (1 << 20):.1f}" if unit == BYTES else str(value)


def plain_progress(what: str, unit: str, stream: TextIO) -> Progress:
    """`what: done/total unit (p%)` when the work passes each tenth, and at the end."""
    shown = -1

    def report(done: int, total: int) -> None:
        nonlocal shown
        if total <= 0:
            return
        tenth = min(10, done * 10 // total)
        if tenth <= shown:
            return
        shown = tenth
        label = "MiB" if unit == BYTES else unit
        print(f"{what}: {_amount(done, unit)}/{_amount(total, unit)} {label} ({done * 100 // total}%)",
              file=stream, flush=True)

    return report


@contextmanager
def progress(what: str, unit: str, stream: TextIO | None = None) -> Iterator[Progress]:
    """A `Progress` for one command, drawn as `use_bar` decides for `stream`
    (stdout by default)."""
    out = stream or sys.stdout
    if not use_bar(out):
        yield plain_progress(what, unit, out)
        return
    from rich import progress as bars
    from rich.console import Console

    count = bars.DownloadColumn(binary_units=True) if unit == BYTES else bars.MofNCompleteColumn()
    columns = [bars.TextColumn("{task.description}"), bars.BarColumn(), count,
               *([] if unit == BYTES else [bars.TextColumn(unit)]), bars.TaskProgressColumn(),
               bars.TimeRemainingColumn()]
    with bars.Progress(*columns, console=Console(file=out)) as bar:
        task = bar.add_task(what, total=None)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield report
