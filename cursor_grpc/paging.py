"""AIP-158 paging: `page_size` and opaque keyset `page_token`s.

A token carries the last key of its page and a fingerprint of the request's
other parameters, so a token used with different filters is refused rather
than silently giving a wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from typing import Any, TypeVar

from cursor_grpc.config import LimitSettings
from cursor_grpc.errors import InvalidArgument

T = TypeVar("T")


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


def decode_token(token: str, request_fingerprint: str, *shape: type) -> list[Any] | None:
    """The key of the previous page's last item; None for the first page.
    `shape` gives the type of each key part, checked so a forged token is
    an INVALID_ARGUMENT rather than a wrong query."""
    if not token:
        return None
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
    if not isinstance(key, list) or (
        shape and (len(key) != len(shape) or not all(isinstance(k, t) for k, t in zip(key, shape, strict=True)))
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
