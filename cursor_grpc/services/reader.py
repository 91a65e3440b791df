"""`cursor.v1.ReaderService`: what a reader app records and reads back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from grpc import aio

from cursor.v1 import reader_service_pb2 as pb
from cursor.v1 import reader_service_pb2_grpc as pb_grpc
from cursor_grpc import paging, validation
from cursor_grpc.app import App
from cursor_grpc.auth.access import Access, rpc
from cursor_grpc.auth.sessions import Principal
from cursor_grpc.errors import AlreadyExists, CursorError, InvalidArgument
from cursor_grpc.live.streams import Tail, run_stream
from cursor_grpc.services import convert
from cursor_grpc.storage.events import EventFilter
from cursor_grpc.storage.records import NewInteractionData, RecordOutcome
from cursor_grpc.storage.store import Actor

Context = aio.ServicerContext[Any, Any]

# Chunks of one upload written concurrently: reading the next chunk overlaps
# the commit of the previous one, and memory stays bounded.
UPLOAD_CHUNKS_IN_FLIGHT = 4


async def list_interactions_page(
    app: App, reader_id: str | None, type_filter: str, page_size: int, page_token: str
) -> tuple[list[Any], str]:
    """One newest-first page of interactions; shared by readers and consultants."""
    type_ = validation.interaction_type(type_filter) if type_filter else None
    limit = paging.page_size(page_size, app.settings.limits)
    request_fingerprint = paging.fingerprint("interactions", reader_id, type_)
    key = paging.decode_token(page_token, request_fingerprint)
    before = None
    if key is not None:
        if len(key) != 1 or not isinstance(key[0], int):
            raise InvalidArgument("page_token is not a token this server issued", field="page_token")
        before = key[0]
    records = await app.store.list_interactions(reader_id, type_, before, limit + 1)
    next_token = ""
    if len(records) > limit:
        records = records[:limit]
        next_token = paging.encode_token([records[-1].seq], request_fingerprint)
    return [convert.interaction(r) for r in records], next_token


class ReaderService(pb_grpc.ReaderServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app
        self.sessions = app.sessions
        self._reading_window_ns = int(app.settings.live.presence_reading_seconds * 1e9)

    @rpc(Access.READER)
    async def RecordInteraction(self, request: pb.RecordInteractionRequest, context: Context,
                                caller: Principal) -> pb.RecordInteractionResponse:
        if not request.HasField("interaction"):
            raise InvalidArgument("interaction is required", field="interaction")
        given = request.interaction
        item = validation.new_interaction(
            0, given.id, given.type, given.payload_json, given.summary, self.app.settings.limits, "interaction."
        )
        outcome = await self.app.store.record_interactions(caller.account_id, [item], self._reading_window_ns)
        if outcome.conflicts:
            raise AlreadyExists(
                f"interaction id {item.id} is already used by another reader; choose a new id",
                field="interaction.id", reason="ID_TAKEN",
            )
        if outcome.stored:
            return pb.RecordInteractionResponse(
                interaction=convert.interaction(outcome.stored[0]), duplicate=False,
                state=convert.reader_state(outcome.state) if outcome.state else None,
            )
        state = await self.app.store.get_reader_state(caller.account_id)
        return pb.RecordInteractionResponse(
            interaction=convert.interaction(outcome.duplicates[0]), duplicate=True, state=convert.reader_state(state)
        )

    @rpc(Access.READER)
    async def RecordInteractions(self, request_iterator: AsyncIterator[pb.RecordInteractionsRequest],
                                 context: Context, caller: Principal) -> pb.RecordInteractionsResponse:
        limits = self.app.settings.limits
        response = pb.RecordInteractionsResponse()
        in_flight: list[asyncio.Future[RecordOutcome]] = []
        last_state = None
        index = 0

        def settle(outcome: RecordOutcome) -> None:
            nonlocal last_state
            response.stored_count += len(outcome.stored)
            response.duplicate_count += len(outcome.duplicates)
            for at, item_id in outcome.conflicts:
                response.rejected.add(index=at, id=item_id, reason="ID_TAKEN",
                                      message="id is already used by another reader")
            if outcome.state is not None:
                last_state = outcome.state

        try:
            async for chunk in request_iterator:
                if len(chunk.interactions) > limits.max_chunk_interactions:
                    raise InvalidArgument(
                        f"a chunk holds {len(chunk.interactions)} interactions; at most "
                        f"{limits.max_chunk_interactions} per message", field="interactions",
                        reason="CHUNK_TOO_LARGE",
                    )
                items: list[NewInteractionData] = []
                for given in chunk.interactions:
                    try:
                        items.append(validation.new_interaction(
                            index, given.id, given.type, given.payload_json, given.summary, limits,
                            f"interactions[{index}].",
                        ))
                    except CursorError as error:
                        response.rejected.add(index=index, id=given.id, reason=error.reason, message=error.message)
                    index += 1
                if items:
                    in_flight.append(asyncio.ensure_future(
                        self.app.store.record_interactions(caller.account_id, items, self._reading_window_ns)))
                while len(in_flight) >= UPLOAD_CHUNKS_IN_FLIGHT or (in_flight and in_flight[0].done()):
                    settle(await in_flight.pop(0))
            while in_flight:
                settle(await in_flight.pop(0))
        finally:
            # Chunks already queued commit regardless; don't leave their futures unobserved.
            for pending in in_flight:
                pending.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
        if last_state is None:
            last_state = await self.app.store.get_reader_state(caller.account_id)
        response.state.CopyFrom(convert.reader_state(last_state))
        return response

    @rpc(Access.READER)
    async def GetMyState(self, request: pb.GetMyStateRequest, context: Context,
                         caller: Principal) -> pb.GetMyStateResponse:
        state = await self.app.store.get_reader_state(caller.account_id)
        return pb.GetMyStateResponse(state=convert.reader_state(state))

    @rpc(Access.READER)
    async def ListMyInteractions(self, request: pb.ListMyInteractionsRequest, context: Context,
                                 caller: Principal) -> pb.ListMyInteractionsResponse:
        items, token = await list_interactions_page(
            self.app, caller.account_id, request.type, request.page_size, request.page_token
        )
        return pb.ListMyInteractionsResponse(interactions=items, next_page_token=token)

    @rpc(Access.READER)
    async def SendMyMessage(self, request: pb.SendMyMessageRequest, context: Context,
                            caller: Principal) -> pb.SendMyMessageResponse:
        body = validation.message_body(request.body)
        record = await self.app.store.send_message(Actor("reader", caller.account_id), caller.account_id,
                                                   "from_reader", body)
        return pb.SendMyMessageResponse(message=convert.message(record))

    @rpc(Access.READER)
    async def ListMyMessages(self, request: pb.ListMyMessagesRequest, context: Context,
                             caller: Principal) -> pb.ListMyMessagesResponse:
        records, token = await list_messages_page(self.app, caller.account_id, request.page_size, request.page_token)
        return pb.ListMyMessagesResponse(messages=[convert.message(r) for r in records], next_page_token=token)

    @rpc(Access.READER)
    async def MarkMyMessagesRead(self, request: pb.MarkMyMessagesReadRequest, context: Context,
                                 caller: Principal) -> pb.MarkMyMessagesReadResponse:
        if request.up_to_sequence < 0:
            raise InvalidArgument("up_to_sequence must not be negative", field="up_to_sequence")
        position = await self.app.store.mark_read(Actor("reader", caller.account_id), caller.account_id,
                                                  request.up_to_sequence)
        return pb.MarkMyMessagesReadResponse(read=convert.message_read(position))

    @rpc(Access.READER)
    async def WatchMyMessages(self, request: pb.WatchMyMessagesRequest, context: Context, caller: Principal) -> None:
        wanted = EventFilter(reader_ids=frozenset({caller.account_id}), kinds=frozenset({"message", "message_read"}))
        await open_stream(self.app, context, caller, wanted, request.after, _my_messages_tail)


def _my_messages_tail(cursor: str, heartbeat: bool) -> bytes:
    return pb.WatchMyMessagesResponse(cursor=cursor, heartbeat=heartbeat).SerializeToString()


async def list_messages_page(app: App, reader_id: str, page_size: int, page_token: str) -> tuple[list[Any], str]:
    """One newest-first page of a conversation; shared by both sides."""
    limit = paging.page_size(page_size, app.settings.limits)
    request_fingerprint = paging.fingerprint("messages", reader_id)
    key = paging.decode_token(page_token, request_fingerprint)
    if key is not None and (len(key) != 1 or not isinstance(key[0], int)):
        raise InvalidArgument("page_token is not a token this server issued", field="page_token")
    records = await app.store.list_messages(reader_id, key[0] if key else None, limit + 1)
    token = ""
    if len(records) > limit:
        records = records[:limit]
        token = paging.encode_token([records[-1].seq], request_fingerprint)
    return records, token


async def open_stream(
    app: App, context: Context, caller: Principal, wanted: EventFilter, after_text: str,
    tail: Tail, first: Callable[[], Awaitable[list[bytes]]] | None = None,
) -> None:
    """Subscribe, check the resume cursor, and run the stream; shared by
    every streaming RPC so there is one mechanism."""
    broadcaster = app.broadcaster
    live = app.settings.live
    subscription = broadcaster.subscribe(
        wanted, live.stream_buffer_events, caller.session_id, (caller.kind, caller.account_id)
    )
    try:
        after = None
        if after_text:
            after = broadcaster.parse_cursor(after_text, await app.store.history_floor())
        opening = await first() if first is not None else None
    except BaseException:
        broadcaster.unsubscribe(subscription)
        raise
    await run_stream(context, caller, broadcaster, app.store, subscription, after, live, tail, opening)
