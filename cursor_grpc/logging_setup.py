"""Logging: readable text by default, one JSON object per line with
`--log-format json` (env `CURSOR_LOG_FORMAT`).

What never reaches a log: passwords, session tokens and interaction or
message bodies. The code does not log them in the first place (the slow-query
log prints SQL without bound values; RPC errors log reasons, not requests);
`RedactingFilter` is the second line of defence and masks anything that looks
like a bearer token or a `password=`/`token=` value that slipped into a
message or an exception text.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from datetime import UTC, datetime
from typing import Any, TextIO

from cursor_grpc.config import ConfigError

FORMATS = ("text", "json")

_REDACTIONS = (
    # Authorization metadata and bearer tokens in any form.
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+"), r"\1 [redacted]"),
    # key=value / key: value / "key": "value" for secret-looking keys.
    (re.compile(r"""(?i)(["']?\b(?:password|passwd|token|secret|authorization|payload(?:_json)?|body)\b["']?"""
                r"""\s*[:=]\s*)("[^"]*"|'[^']*'|[^\s,;)}\]]+)"""), r"\1[redacted]"),
    # A session token on its own: 43 url-safe base64 characters (secrets.token_urlsafe(32)).
    (re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])"), "[redacted-token]"),
)

# LogRecord attributes that are not "extra" fields.
_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime", "taskName"}


def redact(text: str) -> str:
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Formats the message once, masks secrets in it and in exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep what there is
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip())
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus extras."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
            + f"{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.threadName and record.threadName != "MainThread":
            data["thread"] = record.threadName
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value if isinstance(value, str | int | float | bool | type(None)) else repr(value)
        if record.exc_text:
            data["exc"] = record.exc_text
        elif record.exc_info and record.exc_info[0] is not None:
            data["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(data, ensure_ascii=False)


def configure(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None, force: bool = False) -> None:
    """Install one stderr handler on the root logger. Like `basicConfig`, it
    leaves a root logger alone that someone else configured already (a test
    runner, an embedding application) unless `force`."""
    if fmt not in FORMATS:
        raise ConfigError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    root = logging.getLogger()
    if not force and any(not getattr(h, "_cursor_handler", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._cursor_handler = True  # type: ignore[attr-defined]
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
