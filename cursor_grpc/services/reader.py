"""`cursor.v1.ReaderService`: what a reader app records and reads back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from cursor.v1 import reader_service_pb2 as pb
from cursor.v1 import reader_service_pb2_grpc as pb_grpc
from cursor_grpc import paging, validation, wire
from cursor_grpc.app import App
from cursor_grpc.auth.access import Access, rpc
from cursor_grpc.auth.sessions import Principal
from cursor_grpc.clock import new_id
from cursor_grpc.errors import AlreadyExists, CursorError, InvalidArgument, PermissionDenied
from cursor_grpc.services.common import (
    Context,
    PageRequest,
    list_interactions_page,
    list_messages_page,
    open_stream,
    profile_update,
)
from cursor_grpc.storage import (
    KIND_INTERACTION,
    KIND_PRESENCE,
    KIND_STATE,
    Actor,
    ConsentRecord,
    EventFilter,
    NewInteractionData,
    RecordOutcome,
)

# Chunks of one upload written concurrently: reading the next chunk overlaps
# the commit of the previous one, and memory stays bounded.
UPLOAD_CHUNKS_IN_FLIGHT = 4


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
        item = validation.new_interaction(0, given, self.app.settings.limits, "interaction.")
        outcome = await self.app.store.record_interactions(
            caller.account_id, [item], self._reading_window_ns, self.app.settings.attention)
        if outcome.conflicts:
            raise AlreadyExists(
                f"interaction id {item.id} is already used by another reader; choose a new id",
                field="interaction.id", reason="ID_TAKEN",
            )
        if outcome.stored:
            return pb.RecordInteractionResponse(
                interaction=wire.interaction(outcome.stored[0]), duplicate=False,
                state=wire.reader_state(outcome.state) if outcome.state else None,
            )
        state = await self.app.store.get_reader_state(caller.account_id)
        return pb.RecordInteractionResponse(
            interaction=wire.interaction(outcome.duplicates[0]), duplicate=True, state=wire.reader_state(state)
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
                without_id = sum(1 for given in chunk.interactions if not given.id)
                make_id = iter(new_id.many(without_id)).__next__ if without_id else new_id
                for given in chunk.interactions:
                    try:
                        items.append(validation.new_interaction(
                            index, given, limits, f"interactions[{index}].", make_id))
                    except CursorError as error:
                        response.rejected.add(index=index, id=given.id, reason=error.reason, message=error.message)
                    index += 1
                if items:
                    in_flight.append(asyncio.ensure_future(
                        self.app.store.record_interactions(
                            caller.account_id, items, self._reading_window_ns, self.app.settings.attention)))
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
        response.state.CopyFrom(wire.reader_state(last_state))
        return response

    @rpc(Access.READER)
    async def GetMyState(self, request: pb.GetMyStateRequest, context: Context,
                         caller: Principal) -> pb.GetMyStateResponse:
        state = await self.app.store.get_reader_state(caller.account_id)
        return pb.GetMyStateResponse(state=wire.reader_state(state))

    @rpc(Access.READER)
    async def ListMyInteractions(self, request: pb.ListMyInteractionsRequest, context: Context,
                                 caller: Principal) -> pb.ListMyInteractionsResponse:
        items, token, archived = await list_interactions_page(
            self.app, caller.account_id, request.type, request.page_size, request.page_token
        )
        return pb.ListMyInteractionsResponse(interactions=items, next_page_token=token, includes_archived=archived)

    @rpc(Access.READER)
    async def SendMyMessage(self, request: pb.SendMyMessageRequest, context: Context,
                            caller: Principal) -> pb.SendMyMessageResponse:
        body = validation.message_body(request.body)
        record = await self.app.store.send_message(Actor("reader", caller.account_id), caller.account_id,
                                                   "user_to_consultant", body)
        return pb.SendMyMessageResponse(message=wire.message(record))

    @rpc(Access.READER)
    async def ListMyMessages(self, request: pb.ListMyMessagesRequest, context: Context,
                             caller: Principal) -> pb.ListMyMessagesResponse:
        records, token = await list_messages_page(self.app, caller.account_id, request.page_size, request.page_token)
        return pb.ListMyMessagesResponse(messages=[wire.message(r) for r in records], next_page_token=token)

    @rpc(Access.READER)
    async def MarkMyMessagesRead(self, request: pb.MarkMyMessagesReadRequest, context: Context,
                                 caller: Principal) -> pb.MarkMyMessagesReadResponse:
        if request.up_to_sequence < 0:
            raise InvalidArgument("up_to_sequence must not be negative", field="up_to_sequence")
        position = await self.app.store.mark_read(Actor("reader", caller.account_id), caller.account_id,
                                                  request.up_to_sequence)
        return pb.MarkMyMessagesReadResponse(read=wire.message_read(position))

    @rpc(Access.READER)
    async def WatchMyMessages(self, request: pb.WatchMyMessagesRequest, context: Context, caller: Principal) -> None:
        wanted = EventFilter(reader_ids=frozenset({caller.account_id}), kinds=frozenset({"message", "message_read"}))
        await open_stream(self.app, context, caller, wanted, request.after, _my_messages_tail)

    # --- the reader's own restricted fields ----------------------------------------

    @rpc(Access.READER)
    async def GetMyProfile(self, request: pb.GetMyProfileRequest, context: Context,
                           caller: Principal) -> pb.GetMyProfileResponse:
        profile = await self.app.store.get_reader_profile(caller.account_id)
        return pb.GetMyProfileResponse(reader=wire.reader_profile(*profile))

    @rpc(Access.READER)
    async def UpdateMyProfile(self, request: pb.UpdateMyProfileRequest, context: Context,
                              caller: Principal) -> pb.UpdateMyProfileResponse:
        given = request.reader
        if given.name and validation.resource_id(given.name, "readers", "reader.name") != caller.account_id:
            raise PermissionDenied("a reader can only update its own profile; leave reader.name empty",
                                   reason="NOT_OWN_PROFILE")
        update = profile_update(given, request.update_mask if request.HasField("update_mask") else None)
        record, metadata, _ = await self.app.store.update_reader_profile(
            Actor("reader", caller.account_id), caller.account_id, update.display_name, update.email, update.metadata
        )
        return pb.UpdateMyProfileResponse(reader=wire.reader_profile(record, metadata))

    # --- consent: sharing with another reader ----------------------------------------

    @rpc(Access.READER)
    async def GrantConsent(self, request: pb.GrantConsentRequest, context: Context,
                           caller: Principal) -> pb.GrantConsentResponse:
        grantee_id = validation.resource_id(request.grantee, "readers", "grantee")
        scope = wire.SCOPE_NAME.get(request.scope)
        if scope is None:
            raise InvalidArgument("scope must be CONSENT_SCOPE_STATE or CONSENT_SCOPE_STATE_AND_INTERACTIONS",
                                  field="scope")
        outcome = await self.app.store.grant_consent(caller.account_id, grantee_id, scope)
        replaced = outcome.replaced
        if replaced is not None and replaced.shares_interactions and not outcome.consent.shares_interactions:
            # Narrowed: open streams still carry interactions; end them.
            self.app.broadcaster.close_shared(caller.account_id, grantee_id, PermissionDenied(
                "the consent was changed to state only; open the stream again", reason="CONSENT_CHANGED"))
            self.app.shared_check.changed()
        return pb.GrantConsentResponse(consent=wire.consent(outcome.consent))

    @rpc(Access.READER)
    async def RevokeConsent(self, request: pb.RevokeConsentRequest, context: Context,
                            caller: Principal) -> pb.RevokeConsentResponse:
        grantee_id = validation.resource_id(request.grantee, "readers", "grantee")
        error = PermissionDenied("consent revoked", reason="CONSENT_REVOKED")
        # Before the write, so an open stream sends nothing committed after
        # the revocation; after it, for a stream that opened meanwhile.
        self.app.broadcaster.close_shared(caller.account_id, grantee_id, error)
        revoked = await self.app.store.revoke_consent(caller.account_id, grantee_id)
        self.app.broadcaster.close_shared(caller.account_id, grantee_id, error)
        self.app.shared_check.changed()
        return pb.RevokeConsentResponse(consent=wire.consent(revoked))

    @rpc(Access.READER)
    async def ListConsents(self, request: pb.ListConsentsRequest, context: Context,
                           caller: Principal) -> pb.ListConsentsResponse:
        page = PageRequest.parse(request.page_size, request.page_token, self.app.settings.limits,
                                 ("consents", caller.account_id, request.received, request.show_revoked),
                                 paging.ROW_ID)
        records, token = await page.read(
            lambda key, how_many: self.app.store.list_consents(
                caller.account_id, request.received, request.show_revoked, key[0] if key else None, how_many
            ),
            lambda r: [r.id],
        )
        return pb.ListConsentsResponse(consents=[wire.consent(r) for r in records], next_page_token=token)

    @rpc(Access.READER)
    async def GetSharedState(self, request: pb.GetSharedStateRequest, context: Context,
                             caller: Principal) -> pb.GetSharedStateResponse:
        granter_id = validation.resource_id(request.reader, "readers", "reader")
        state = await self.app.store.shared_state(granter_id, caller.account_id)
        return pb.GetSharedStateResponse(state=wire.reader_state(state))

    @rpc(Access.READER)
    async def ListSharedInteractions(self, request: pb.ListSharedInteractionsRequest, context: Context,
                                     caller: Principal) -> pb.ListSharedInteractionsResponse:
        granter_id = validation.resource_id(request.parent, "readers", "parent")
        await self.app.store.require_consent(granter_id, caller.account_id, interactions=True)
        items, token, archived = await list_interactions_page(
            self.app, granter_id, request.type, request.page_size, request.page_token
        )
        # Checked again after the read: a revocation that committed before the
        # read's snapshot is seen here, so nothing read is returned after it.
        await self.app.store.require_consent(granter_id, caller.account_id, interactions=True)
        return pb.ListSharedInteractionsResponse(
            interactions=items, next_page_token=token, includes_archived=archived
        )

    @rpc(Access.READER)
    async def WatchSharedActivity(self, request: pb.WatchSharedActivityRequest, context: Context,
                                  caller: Principal) -> None:
        granter_id = validation.resource_id(request.reader, "readers", "reader")
        consent = await self.app.store.require_consent(granter_id, caller.account_id)

        async def recheck() -> list[bytes]:
            # Runs once subscribed: a revocation that committed before this
            # read is seen here; one after it closes the subscription.
            again = await self.app.store.require_consent(granter_id, caller.account_id)
            if again.id != consent.id:
                raise PermissionDenied("the consent changed while the stream opened; open it again",
                                       reason="CONSENT_CHANGED")
            return []

        await open_stream(self.app, context, caller, shared_filter(consent), request.after, _shared_tail, recheck)


def _my_messages_tail(cursor: str, heartbeat: bool) -> bytes:
    return pb.WatchMyMessagesResponse(cursor=cursor, heartbeat=heartbeat).SerializeToString()


# --- consent helpers ---------------------------------------------------------------------


def _shared_tail(cursor: str, heartbeat: bool) -> bytes:
    return pb.WatchSharedActivityResponse(cursor=cursor, heartbeat=heartbeat).SerializeToString()


def shared_filter(consent: ConsentRecord) -> EventFilter:
    """What a grantee's stream carries: the granter's state and presence, and
    its interactions when the consent covers them. Never its messages."""
    kinds = {KIND_STATE, KIND_PRESENCE}
    if consent.shares_interactions:
        kinds.add(KIND_INTERACTION)
    return EventFilter(reader_ids=frozenset({consent.granter_id}), kinds=frozenset(kinds))
