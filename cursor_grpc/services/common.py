"""What several servicers share: AIP-158 paging, the lists two sides read,
opening a stream, and profile updates. One place each, so no service
module imports a sibling."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from grpc import aio

from cursor.v1 import resources_pb2
from cursor_grpc import paging, validation, wire
from cursor_grpc.app import App
from cursor_grpc.auth.sessions import Principal
from cursor_grpc.config import LimitSettings
from cursor_grpc.errors import InvalidArgument, OutOfRange, quoted
from cursor_grpc.live.broadcaster import Broadcaster
from cursor_grpc.live.dashboard import DashboardHub
from cursor_grpc.live.streams import Tail, run_stream
from cursor_grpc.storage import EventFilter, InteractionRecord, MessageRecord

Context = aio.ServicerContext[Any, Any]
T = TypeVar("T")


# --- paging (AIP-158) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PageRequest:
    """One list call's paging, checked: how many records, and the key of the
    previous page's last one (None on the first page)."""

    limit: int
    fingerprint: str
    key: list[Any] | None

    @classmethod
    def parse(cls, page_size: int, page_token: str, limits: LimitSettings, parameters: tuple[object, ...],
              *shape: paging.KeyPart) -> PageRequest:
        """`parameters` are the request's other fields (and a name for the
        list): a token only pages on with the same ones. `shape` is the kind
        of each part of the key."""
        limit = paging.page_size(page_size, limits)
        request_fingerprint = paging.fingerprint(*parameters)
        return cls(limit, request_fingerprint, paging.decode_token(page_token, request_fingerprint, *shape))

    async def read(self, fetch: Callable[[list[Any] | None, int], Awaitable[list[T]]],
                   key_of: Callable[[T], list[Any]]) -> tuple[list[T], str]:
        """The page `fetch(key, how_many)` returns and its next token; one
        more than the page is fetched, to know whether more exist."""
        records = await fetch(self.key, self.limit + 1)
        return paging.cut(records, self.limit, key_of, self.fingerprint)


async def list_interactions_page(
    app: App, reader_id: str | None, type_filter: str, page_size: int, page_token: str
) -> tuple[list[resources_pb2.Interaction], str, bool]:
    """One newest-first page of interactions, its next token, and whether it
    reached into archive files; shared by readers and consultants."""
    type_ = validation.interaction_type(type_filter) if type_filter else None
    page = PageRequest.parse(page_size, page_token, app.settings.limits, ("interactions", reader_id, type_),
                             paging.SEQ)
    archived: set[int] = set()

    async def fetch(key: list[Any] | None, how_many: int) -> list[InteractionRecord]:
        # Walks into archive files when the page reaches archived history.
        history = await app.store.list_interaction_history(reader_id, type_, key[0] if key else None, how_many)
        archived.update(history.archived)
        return history.records

    records, next_token = await page.read(fetch, lambda r: [r.seq])
    return [wire.interaction(r) for r in records], next_token, any(r.seq in archived for r in records)


async def list_messages_page(app: App, reader_id: str, page_size: int,
                             page_token: str) -> tuple[list[MessageRecord], str]:
    """One newest-first page of a conversation; shared by both sides."""
    page = PageRequest.parse(page_size, page_token, app.settings.limits, ("messages", reader_id), paging.SEQ)
    return await page.read(
        lambda key, how_many: app.store.list_messages(reader_id, key[0] if key else None, how_many),
        lambda r: [r.seq],
    )


# --- streams -------------------------------------------------------------------------------


async def open_stream(
    app: App, context: Context, caller: Principal, wanted: EventFilter, after_text: str,
    tail: Tail, first: Callable[[], Awaitable[list[bytes]]] | None = None,
    opened: Callable[[], Awaitable[None]] | None = None, source: DashboardHub | None = None,
) -> None:
    """Subscribe, check the session and the resume cursor, and run the
    stream; shared by every streaming RPC so there is one mechanism.
    `opened` runs (the audit row) once everything was accepted. The stream
    carries events, or with `source` the dashboard hub's reader updates.

    Subscribing comes before anything that waits, and the session is
    checked again right after it: a session that ends from then on closes
    the subscription, so no stream outlives it. A snapshot (`first`) reads
    the head first thing, as the seq the stream goes on from."""
    broadcaster = app.broadcaster
    feeder: Broadcaster | DashboardHub = broadcaster if source is None else source
    live = app.settings.live
    subscription = feeder.subscribe(
        wanted, live.stream_buffer_events, caller.session_id, (caller.kind, caller.account_id)
    )
    try:
        await app.sessions.validate(caller.token_hash)
        after = None
        if after_text:
            floor = await app.store.history_floor()
            try:
                after = broadcaster.parse_cursor(after_text, floor)
            except OutOfRange as ahead:
                if ahead.reason != "CURSOR_AHEAD":
                    raise
                # Another instance committed it and this one has not read it
                # yet (milliseconds): catch up once, then judge again.
                await app.store.catch_up()
                await broadcaster.reach(app.store.head)
                after = broadcaster.parse_cursor(after_text, floor)
        start = feeder.head
        opening = await first() if first is not None else None
        if opened is not None and subscription.closed is None:
            await opened()
    except BaseException:
        feeder.unsubscribe(subscription)
        raise
    await run_stream(context, caller, app.sessions, feeder, subscription, after, live, tail, opening,
                     start if first is not None else None)


# --- profile updates (AIP-134 update_mask over the restricted fields) ---------------------

PROFILE_FIELDS = ("display_name", "email", "metadata_json")
MAX_METADATA_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class ProfileUpdate:
    """Validated new values; None leaves a field as it is."""

    display_name: str | None
    email: str | None
    metadata: str | None


def metadata_json(value: str, field: str) -> str:
    """A JSON object as text, at most 16 KiB; empty means `{}`."""
    if not value:
        return "{}"
    if len(value.encode()) > MAX_METADATA_BYTES:
        raise InvalidArgument(f"{field} is larger than {MAX_METADATA_BYTES} bytes", field=field,
                              reason="METADATA_TOO_LARGE")
    validation.json_object(value, field, "INVALID_METADATA")
    return value


def profile_update(given: resources_pb2.Reader, mask: Any | None, prefix: str = "reader.") -> ProfileUpdate:
    """The fields an update names, validated. `mask` is the request's
    FieldMask, or None when absent: then every restricted field with a
    non-empty value is updated (AIP-134). `*` means all three."""
    paths = list(mask.paths) if mask is not None else []
    if not paths:
        chosen = {name for name in PROFILE_FIELDS if getattr(given, name)}
        if not chosen:
            raise InvalidArgument(
                f"nothing to update: set update_mask to some of {', '.join(PROFILE_FIELDS)}", field="update_mask"
            )
    elif paths == ["*"]:
        chosen = set(PROFILE_FIELDS)
    else:
        chosen = set()
        for path in paths:
            if path not in PROFILE_FIELDS:
                raise InvalidArgument(
                    f"update_mask path {quoted(path)} cannot be updated; use {', '.join(PROFILE_FIELDS)} or *",
                    field="update_mask",
                )
            chosen.add(path)
    return ProfileUpdate(
        display_name=validation.display_name(given.display_name, prefix + "display_name")
        if "display_name" in chosen else None,
        email=validation.email(given.email, prefix + "email") if "email" in chosen else None,
        metadata=metadata_json(given.metadata_json, prefix + "metadata_json") if "metadata_json" in chosen else None,
    )
