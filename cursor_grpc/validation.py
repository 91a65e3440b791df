"""Input checks shared by the services. Each raises InvalidArgument naming
the field and what would be accepted."""

from __future__ import annotations

import json
import math
import re
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from cursor_grpc.clock import new_id
from cursor_grpc.config import LimitSettings
from cursor_grpc.errors import InvalidArgument, quoted
from cursor_grpc.storage.records import NewInteractionData

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
_TYPE = re.compile(r"^[a-z_]{1,32}$")
MAX_EMAIL = 254
MAX_DISPLAY_NAME = 100

# Unicode's control characters (C0, DEL, C1). SQLite's length() stops at a
# NUL, terminals act on the others; free text keeps tab and line breaks.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_IN_FREE_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _no_control(value: str, field: str, pattern: re.Pattern[str]) -> str:
    found = pattern.search(value)
    if found is not None:
        raise InvalidArgument(
            f"{field} must not contain control characters (U+{ord(found.group()):04X} at character {found.start()})",
            field=field,
        )
    return value


def single_line(value: str, field: str) -> str:
    """Text without any control character: names, emails, filters."""
    return _no_control(value, field, _CONTROL)


def free_text(value: str, field: str) -> str:
    """Text a person writes: tab, line feed and carriage return are kept,
    every other control character is refused."""
    return _no_control(value, field, _CONTROL_IN_FREE_TEXT)


def email(value: str, field: str = "email") -> str:
    normalized = value.strip().lower()
    if not normalized:
        raise InvalidArgument(f"{field} is required", field=field)
    single_line(normalized, field)
    if len(normalized) > MAX_EMAIL or not _EMAIL.match(normalized):
        raise InvalidArgument(f"{field} {quoted(value)} is not an email address", field=field)
    return normalized


def display_name(value: str, field: str = "display_name") -> str:
    cleaned = value.strip()
    if not cleaned:
        raise InvalidArgument(f"{field} is required", field=field)
    if len(cleaned) > MAX_DISPLAY_NAME:
        raise InvalidArgument(f"{field} must be at most {MAX_DISPLAY_NAME} characters", field=field)
    return single_line(cleaned, field)


def uuid_text(value: str, field: str) -> str:
    """Canonical lower-case UUID text, or INVALID_ARGUMENT."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument(f"{field} {quoted(value)} is not a UUID", field=field) from None


def resource_id(name: str, collection: str, field: str) -> str:
    """The id in `{collection}/{uuid}`."""
    prefix = collection + "/"
    if not name.startswith(prefix):
        raise InvalidArgument(f"{field} must look like {collection}/{{id}}, not {quoted(name)}", field=field)
    return uuid_text(name[len(prefix):], field)


def account_name(name: str, field: str) -> tuple[str, str]:
    """('reader'|'consultant', id) from `readers/{id}` or `consultants/{id}`."""
    for kind in ("reader", "consultant"):
        if name.startswith(kind + "s/"):
            return kind, resource_id(name, kind + "s", field)
    raise InvalidArgument(f"{field} must be readers/{{id}} or consultants/{{id}}, not {quoted(name)}",
                          field=field)


def interaction_type(value: str, field: str = "type") -> str:
    if not _TYPE.match(value):
        raise InvalidArgument(
            f"{field} {quoted(value)} must be 1 to 32 characters of a-z and _ (e.g. progress, answer, heartbeat)",
            field=field,
        )
    return value


def new_interaction(
    index: int, id_: str, type_: str, payload_json: str, summary: str, limits: LimitSettings, prefix: str,
    make_id: Callable[[], str] = new_id,
) -> NewInteractionData:
    """Validate one interaction a reader sent. `prefix` names it in errors
    (`interaction.` or `interactions[7].`); `make_id` gives the id of one
    sent without (an upload hands out ids made in bulk)."""
    interaction_id = uuid_text(id_, prefix + "id") if id_ else make_id()
    interaction_type(type_, prefix + "type")
    if len(payload_json) > limits.max_payload_bytes and len(payload_json.encode()) > limits.max_payload_bytes:
        raise InvalidArgument(
            f"{prefix}payload_json is larger than {limits.max_payload_bytes} bytes", field=prefix + "payload_json",
            reason="PAYLOAD_TOO_LARGE",
        )
    if not payload_json:
        payload_json = "{}"
    payload = json_object(payload_json, prefix + "payload_json", "INVALID_PAYLOAD")
    if len(summary) > limits.max_summary_chars:
        raise InvalidArgument(
            f"{prefix}summary must be at most {limits.max_summary_chars} characters", field=prefix + "summary"
        )
    free_text(summary, prefix + "summary")
    percent = step = None
    if type_ == "progress":
        percent, step = _progress(payload, prefix)
    return NewInteractionData(index, interaction_id, type_, payload_json, summary, percent, step)


def _progress(payload: dict[str, object], prefix: str) -> tuple[float | None, int | None]:
    field = prefix + "payload_json"
    percent = payload.get("percent")
    if percent is not None:
        if isinstance(percent, bool) or not isinstance(percent, int | float) or not math.isfinite(percent) \
                or not 0.0 <= percent <= 1.0:
            raise InvalidArgument(
                f"{field}: percent must be a number from 0 to 1, not {quoted(percent)}", field=field,
                reason="INVALID_PROGRESS",
            )
        percent = float(percent)
    step = payload.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 2**53):
        raise InvalidArgument(
            f"{field}: step must be a whole number from 0, not {quoted(step)}", field=field, reason="INVALID_PROGRESS"
        )
    return percent, step


MAX_MESSAGE_CHARS = 4000


def message_body(value: str, field: str = "body") -> str:
    if not value.strip():
        raise InvalidArgument(f"{field} must not be empty", field=field)
    if len(value) > MAX_MESSAGE_CHARS:
        raise InvalidArgument(f"{field} must be at most {MAX_MESSAGE_CHARS} characters", field=field,
                              reason="MESSAGE_TOO_LONG")
    return free_text(value, field)


# --- JSON text ---------------------------------------------------------------------


class _NotPortableJSON(ValueError):
    """JSON Python parses but SQLite's json_valid, or another client's
    parser, would not read the same way."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    parsed = dict(pairs)
    if len(parsed) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        duplicate = next(key for key, count in counts.items() if count > 1)
        raise _NotPortableJSON(f"has the key {quoted(duplicate)} more than once")
    return parsed


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _NotPortableJSON(f"has a number too large for a 64-bit float ({quoted(text)})")
    return number


def _no_constant(name: str) -> Any:
    raise _NotPortableJSON(f"has {name}, which is not a JSON number")


_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_float=_finite, parse_constant=_no_constant)
# A \uD800-\uDFFF escape; whether it is half of a pair is settled on the parsed value.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_lone_surrogate(value: object) -> bool:
    """The parser joins escaped pairs, so a surrogate left in a string is alone."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def json_object(text: str, field: str, reason: str) -> dict[str, Any]:
    """Parse a JSON object a caller sent, refusing what Python's parser takes
    but SQLite's `json_valid` CHECK or other clients would not: NaN and
    Infinity, numbers beyond a 64-bit float, duplicate keys, and escaped
    lone surrogates (which no UTF-8 text can hold)."""
    try:
        parsed = _STRICT_JSON.decode(text)
    except _NotPortableJSON as error:
        raise InvalidArgument(f"{field} {error}", field=field, reason=reason) from None
    except json.JSONDecodeError as error:
        raise InvalidArgument(f"{field} is not valid JSON ({error.msg} at character {error.pos})", field=field,
                              reason=reason) from None
    except (ValueError, RecursionError):
        raise InvalidArgument(f"{field} is not valid JSON", field=field, reason=reason) from None
    if not isinstance(parsed, dict):
        raise InvalidArgument(f"{field} must be a JSON object", field=field, reason=reason)
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(parsed):
        raise InvalidArgument(f"{field} has an escaped lone surrogate (\\uD800-\\uDFFF without its pair)",
                              field=field, reason=reason)
    return parsed
