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
from typing import Any

from cursor_grpc.config import LimitSettings
from cursor_grpc.errors import InvalidArgument


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


def decode_token(token: str, request_fingerprint: str) -> list[Any] | None:
    """The key of the previous page's last item; None for the first page."""
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
    if not isinstance(key, list):
        raise InvalidArgument("page_token is not a token this server issued", field="page_token")
    return key
