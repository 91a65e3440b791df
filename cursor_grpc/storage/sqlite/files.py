"""Small file helpers shared by backups, restore and archival."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cursor_grpc.storage.contract import Progress

CHUNK = 1 << 20


def summary_level(progress: Progress | None) -> int:
    """The level of a run's summary log line: a caller that follows progress
    is a command that prints its own summary, so the log's is DEBUG and the
    summary shows once."""
    return logging.DEBUG if progress is not None else logging.INFO


def sha256_file(path: Path, chunk: int = CHUNK, on_bytes: Callable[[int], None] | None = None) -> str:
    """`on_bytes` hears of every block read (a progress bar)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return digest.hexdigest()


def copy_file(src: Path, dest: Path, on_bytes: Callable[[int], None] | None = None) -> None:
    """`shutil.copyfile`, in blocks that `on_bytes` hears of when given."""
    if on_bytes is None:
        shutil.copyfile(src, dest)
        return
    with open(src, "rb") as source, open(dest, "wb") as target:
        while block := source.read(CHUNK):
            target.write(block)
            on_bytes(len(block))


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (no-op where directories can't be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write, fsync, rename: a reader sees the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def sqlite_side_files(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal")]


def default_dir(db_path: Path, configured: Path | None, name: str) -> Path:
    """`configured`, or the folder `name` beside the database."""
    return configured if configured is not None else Path(db_path).resolve().parent / name
