"""AIP-158 paging: `page_size` and opaque keyset `page_token`s.

A token carries the last key of its page and a fingerprint of the request's
other parameters, so a token used with different filters is refused rather
than silently giving a wrong page. Tokens are not signed (so they outlive a
restart); anyone can read and edit one, so every key part is checked against
the kind it must be before it reaches SQL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from cursor_grpc.config import LimitSettings
from cursor_grpc.errors import InvalidArgument

T = TypeVar("T")

# Far longer than any token this server issues (a few hundred characters).
MAX_TOKEN_CHARS = 1024
_UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIMESTAMP_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")


@dataclass(frozen=True, slots=True)
class KeyPart:
    """What one part of a page's key may be."""

    kind: str
    accepts: Callable[[object], bool]


# A row's seq: SQLite binds signed 64-bit integers only (and JSON `true` is a Python int).
SEQ = KeyPart("sequence", lambda part: type(part) is int and 0 <= part < 2**63)
# A row's id: canonical lower-case UUID text, as the server makes and stores them.
ROW_ID = KeyPart("id", lambda part: isinstance(part, str) and _UUID_TEXT.fullmatch(part) is not None)
# Stored time text (cursor_grpc/clock.py), never a lone surrogate SQLite cannot bind.
TIMESTAMP = KeyPart("timestamp", lambda part: isinstance(part, str) and _TIMESTAMP_TEXT.fullmatch(part) is not None)


def page_size(requested: int, limits: LimitSettings) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative", field="page_size")
    if requested == 0:
        return limits.default_page_size
    return min(requested, limits.max_page_size)


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def encode_token(key: list[Any], request_fingerprint: str) -> str:
    raw = json.dumps({"k": key, "f": request_fingerprint}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, request_fingerprint: str, *shape: KeyPart) -> list[Any] | None:
    """The key of the previous page's last item; None for the first page.
    `shape` gives the kind of each key part, checked so a forged token is
    an INVALID_ARGUMENT rather than a wrong query or a failed one."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidArgument("page_token is not a token this server issued", field="page_token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        key, seen = data["k"], data["f"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidArgument("page_token is not a token this server issued", field="page_token") from None
    if seen != request_fingerprint:
        raise InvalidArgument(
            "page_token belongs to a request with other parameters; repeat them exactly, or start without a token",
            field="page_token",
        )
    if not isinstance(key, list) or len(key) != len(shape) or not all(
        part.accepts(k) for k, part in zip(key, shape, strict=True)
    ):
        raise InvalidArgument("page_token is not a token this server issued", field="page_token")
    return key


def cut(
    records: list[T], limit: int, key_of: Callable[[T], list[Any]], request_fingerprint: str
) -> tuple[list[T], str]:
    """Given up to `limit + 1` records, the page and its next token (empty on
    the last page): fetching one more than asked says whether more exist."""
    if len(records) <= limit:
        return records, ""
    page = records[:limit]
    return page, encode_token(key_of(page[-1]), request_fingerprint)
