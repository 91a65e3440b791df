"""Input checks shared by the services. Each raises InvalidArgument naming
the field and what would be accepted."""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable

from cursor_grpc.clock import new_id
from cursor_grpc.config import LimitSettings
from cursor_grpc.errors import InvalidArgument
from cursor_grpc.storage.records import NewInteractionData

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
_TYPE = re.compile(r"^[a-z_]{1,32}$")
MAX_EMAIL = 254
MAX_DISPLAY_NAME = 100


def email(value: str, field: str = "email") -> str:
    normalized = value.strip().lower()
    if not normalized:
        raise InvalidArgument(f"{field} is required", field=field)
    if len(normalized) > MAX_EMAIL or not _EMAIL.match(normalized):
        raise InvalidArgument(f"{field} {value!r} is not an email address", field=field)
    return normalized


def display_name(value: str, field: str = "display_name") -> str:
    cleaned = value.strip()
    if not cleaned:
        raise InvalidArgument(f"{field} is required", field=field)
    if len(cleaned) > MAX_DISPLAY_NAME:
        raise InvalidArgument(f"{field} must be at most {MAX_DISPLAY_NAME} characters", field=field)
    if any(ord(c) < 32 for c in cleaned):
        raise InvalidArgument(f"{field} must not contain control characters", field=field)
    return cleaned


def uuid_text(value: str, field: str) -> str:
    """Canonical lower-case UUID text, or INVALID_ARGUMENT."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument(f"{field} {value!r} is not a UUID", field=field) from None


def resource_id(name: str, collection: str, field: str) -> str:
    """The id in `{collection}/{uuid}`."""
    prefix = collection + "/"
    if not name.startswith(prefix):
        raise InvalidArgument(f"{field} must look like {collection}/{{id}}, not {name!r}", field=field)
    return uuid_text(name[len(prefix):], field)


def account_name(name: str, field: str) -> tuple[str, str]:
    """('reader'|'consultant', id) from `readers/{id}` or `consultants/{id}`."""
    for kind in ("reader", "consultant"):
        if name.startswith(kind + "s/"):
            return kind, resource_id(name, kind + "s", field)
    raise InvalidArgument(f"{field} must be readers/{{id}} or consultants/{{id}}, not {name!r}", field=field)


def interaction_type(value: str, field: str = "type") -> str:
    if not _TYPE.match(value):
        raise InvalidArgument(
            f"{field} {value!r} must be 1 to 32 characters of a-z and _ (e.g. progress, answer, heartbeat)",
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
    try:
        payload = json.loads(payload_json)
    except (ValueError, RecursionError):
        raise InvalidArgument(
            f"{prefix}payload_json is not valid JSON", field=prefix + "payload_json", reason="INVALID_PAYLOAD"
        ) from None
    if not isinstance(payload, dict):
        raise InvalidArgument(
            f"{prefix}payload_json must be a JSON object", field=prefix + "payload_json", reason="INVALID_PAYLOAD"
        )
    if len(summary) > limits.max_summary_chars:
        raise InvalidArgument(
            f"{prefix}summary must be at most {limits.max_summary_chars} characters", field=prefix + "summary"
        )
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
                f"{field}: percent must be a number from 0 to 1, not {percent!r}", field=field,
                reason="INVALID_PROGRESS",
            )
        percent = float(percent)
    step = payload.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 2**53):
        raise InvalidArgument(
            f"{field}: step must be a whole number from 0, not {step!r}", field=field, reason="INVALID_PROGRESS"
        )
    return percent, step


MAX_MESSAGE_CHARS = 4000


def message_body(value: str, field: str = "body") -> str:
    if not value.strip():
        raise InvalidArgument(f"{field} must not be empty", field=field)
    if len(value) > MAX_MESSAGE_CHARS:
        raise InvalidArgument(f"{field} must be at most {MAX_MESSAGE_CHARS} characters", field=field,
                              reason="MESSAGE_TOO_LONG")
    return value
