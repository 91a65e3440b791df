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

import orjson
from google.protobuf import struct_pb2

from cursor.v1.reader_service_pb2 import NewInteraction
from cursor_grpc.clock import new_id
from cursor_grpc.config import LimitSettings
from cursor_grpc.errors import InvalidArgument, quoted
from cursor_grpc.storage import NewInteractionData

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


def could_be_stored(value: str) -> bool:
    """Whether `value` could be a stored single-line field (an email on
    login): one with a control character never is, since every write
    refuses those, and PostgreSQL cannot even compare text holding NUL."""
    return _CONTROL.search(value) is None


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


def child_resource_id(name: str, parent: str, collection: str, field: str) -> tuple[str, str]:
    """The two ids in `{parent}/{uuid}/{collection}/{uuid}`."""
    head, slash, child = name.rpartition(f"/{collection}/")
    if not slash:
        raise InvalidArgument(f"{field} must look like {parent}/{{id}}/{collection}/{{id}}, not {quoted(name)}",
                              field=field)
    return resource_id(head, parent, field), uuid_text(child, field)


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
    index: int, given: NewInteraction, limits: LimitSettings, prefix: str, make_id: Callable[[], str] = new_id,
) -> NewInteractionData:
    """Validate one interaction a reader sent. `prefix` names it in errors
    (`interaction.` or `interactions[7].`); `make_id` gives the id of one
    sent without (an upload hands out ids made in bulk)."""
    interaction_id = uuid_text(given.id, prefix + "id") if given.id else make_id()
    interaction_type(given.type, prefix + "type")
    payload, text, field = _payload(given, limits, prefix)
    if len(given.summary) > limits.max_summary_chars:
        raise InvalidArgument(
            f"{prefix}summary must be at most {limits.max_summary_chars} characters", field=prefix + "summary"
        )
    free_text(given.summary, prefix + "summary")
    percent = step = None
    correct = question = None
    if given.type == "progress":
        percent, step = _progress(payload, field)
    elif given.type == "answer":
        correct, question = _answer(payload, field)
    return NewInteractionData(index, interaction_id, given.type, text, given.summary, percent, step,
                              correct, question)


def _payload(given: NewInteraction, limits: LimitSettings, prefix: str) -> tuple[dict[str, Any], str, str]:
    """The payload from whichever form carried it, its stored text, and that
    form's field (for errors)."""
    if given.HasField("payload"):
        field = prefix + "payload"
        if given.payload_json:
            raise InvalidArgument(
                f"{prefix}payload and {prefix}payload_json are both set; send the payload in one of them",
                field=field,
            )
        payload = struct_object(given.payload, field, "INVALID_PAYLOAD")
    else:
        field = prefix + "payload_json"
        # Refused before parsing: the parse of an oversized text is the cost the cap avoids.
        _payload_within_cap(given.payload_json, field, limits)
        payload = json_object(given.payload_json or "{}", field, "INVALID_PAYLOAD")
    text = canonical_json(payload)
    _payload_within_cap(text, field, limits)
    return payload, text, field


def _payload_within_cap(text: str, field: str, limits: LimitSettings) -> None:
    if len(text) > limits.max_payload_bytes and len(text.encode()) > limits.max_payload_bytes:
        raise InvalidArgument(
            f"{field} is larger than {limits.max_payload_bytes} bytes", field=field, reason="PAYLOAD_TOO_LARGE",
        )


def _answer(payload: dict[str, object], field: str) -> tuple[bool | None, str | None]:
    """The `correct` flag and `question_id` of an answer (the struggling
    rule counts wrong answers in a row); both may be left out."""
    correct = payload.get("correct")
    if correct is not None and not isinstance(correct, bool):
        raise InvalidArgument(
            f"{field}: correct must be true or false, not {quoted(correct)}", field=field, reason="INVALID_ANSWER"
        )
    question = payload.get("question_id")
    if question is not None and (isinstance(question, bool) or not isinstance(question, str | int)):
        raise InvalidArgument(
            f"{field}: question_id must be a string or a whole number, not {quoted(question)}", field=field,
            reason="INVALID_ANSWER",
        )
    return correct, None if question is None else str(question)[:64]


def _progress(payload: dict[str, object], field: str) -> tuple[float | None, int | None]:
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


# Whole doubles below this magnitude are exact integers, and are written as such.
_SAFE_INTEGER = 2**53
_CANONICAL_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"))


def canonical_json(value: dict[str, Any]) -> str:
    """The one text a JSON object is stored as, whichever form it came in (a
    Struct's keys have no order): keys sorted, no spaces, UTF-8 unescaped.
    orjson writes it in a tenth of the standard encoder's time (it runs for
    every interaction stored); integers beyond 64 bits, which orjson refuses,
    go through the standard encoder."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError:
        return _CANONICAL_JSON.encode(value)


def struct_object(struct: struct_pb2.Struct, field: str, reason: str) -> dict[str, Any]:
    """A Struct as the JSON object it stands for, refusing what JSON cannot
    hold (NaN, infinities) and a value with no kind set. Struct numbers are
    doubles, so a whole one becomes an int: `"step": 3` stays an integer."""

    def plain(value: struct_pb2.Value) -> Any:
        kind = value.WhichOneof("kind")
        if kind == "struct_value":
            return {key: plain(item) for key, item in value.struct_value.fields.items()}
        if kind == "list_value":
            return [plain(item) for item in value.list_value.values]
        if kind == "number_value":
            number = value.number_value
            if not math.isfinite(number):
                raise InvalidArgument(f"{field} has {number}, which is not a JSON number", field=field, reason=reason)
            return int(number) if number.is_integer() and abs(number) < _SAFE_INTEGER else number
        if kind == "string_value":
            return value.string_value
        if kind == "bool_value":
            return value.bool_value
        if kind == "null_value":
            return None
        raise InvalidArgument(f"{field} has a value with none of its kinds set", field=field, reason=reason)

    return {key: plain(item) for key, item in struct.fields.items()}
