"""`cursor.v1.ConsultantService`: looking readers up."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from cursor.v1 import consultant_service_pb2 as pb
from cursor.v1 import consultant_service_pb2_grpc as pb_grpc
from cursor.v1 import resources_pb2
from cursor_grpc import paging, validation, wire
from cursor_grpc.app import App
from cursor_grpc.auth.access import Access, rpc
from cursor_grpc.auth.sessions import Principal
from cursor_grpc.clock import iso_from_ns
from cursor_grpc.errors import InvalidArgument
from cursor_grpc.live.dashboard import active_readers
from cursor_grpc.services.common import Context, PageRequest, list_interactions_page, list_messages_page, open_stream
from cursor_grpc.storage import KIND_ATTENTION, Actor, EventFilter

MAX_WINDOW_SECONDS = 7 * 24 * 3600
MAX_WATCHED_READERS = 1000
SNAPSHOT_READERS_PER_MESSAGE = 200
SETTABLE_STATUS = {resources_pb2.READER_STATUS_ACTIVE: "active", resources_pb2.READER_STATUS_PAUSED: "paused"}


class ConsultantService(pb_grpc.ConsultantServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app
        self.sessions = app.sessions

    @rpc(Access.CONSULTANT)
    async def ListActiveReaders(self, request: pb.ListActiveReadersRequest, context: Context,
                                caller: Principal) -> pb.ListActiveReadersResponse:
        if request.window_seconds < 0 or request.window_seconds > MAX_WINDOW_SECONDS:
            raise InvalidArgument(f"window_seconds must be 0 to {MAX_WINDOW_SECONDS}", field="window_seconds")
        window = request.window_seconds or self.app.settings.limits.active_window_seconds
        page = PageRequest.parse(request.page_size, request.page_token, self.app.settings.limits,
                                 ("active", window, request.only_my_readers), paging.TIMESTAMP, paging.TIMESTAMP,
                                 paging.ROW_ID)
        # The window is fixed at the first page, so later pages don't shift.
        since = page.key[0] if page.key else iso_from_ns(time.time_ns() - window * 1_000_000_000)
        assignee = caller.account_id if request.only_my_readers else None
        records, token = await page.read(
            lambda key, how_many: self.app.store.list_active_readers(
                since, (key[1], key[2]) if key else None, how_many, assignee
            ),
            lambda r: [since, r.state.last_seen_at if r.state else "", r.id],
        )
        return pb.ListActiveReadersResponse(readers=[wire.reader(r) for r in records], next_page_token=token)

    @rpc(Access.CONSULTANT)
    async def ListReaders(self, request: pb.ListReadersRequest, context: Context,
                          caller: Principal) -> pb.ListReadersResponse:
        if request.status not in resources_pb2.ReaderStatus.values():
            raise InvalidArgument(f"status {request.status} is not known", field="status")
        status = wire.STATUS_NAME.get(request.status)
        assignee = caller.account_id if request.only_my_readers else None
        page = PageRequest.parse(request.page_size, request.page_token, self.app.settings.limits,
                                 ("readers", status, assignee is not None), paging.ROW_ID)
        records, token = await page.read(
            lambda key, how_many: self.app.store.list_readers(status, key[0] if key else None, how_many, assignee),
            lambda r: [r.id],
        )
        return pb.ListReadersResponse(readers=[wire.reader(r) for r in records], next_page_token=token)

    @rpc(Access.CONSULTANT)
    async def GetReader(self, request: pb.GetReaderRequest, context: Context,
                        caller: Principal) -> pb.GetReaderResponse:
        reader_id = validation.resource_id(request.name, "readers", "name")
        # Get returns the whole resource (AIP-131), metadata included; lists leave it out.
        record, metadata, signals = await self.app.store.reader_with_attention(reader_id)
        epoch = self.app.broadcaster.epoch
        return pb.GetReaderResponse(reader=wire.reader_profile(record, metadata),
                                    attention=[wire.attention_signal(s, epoch) for s in signals])

    @rpc(Access.CONSULTANT)
    async def ListInteractions(self, request: pb.ListInteractionsRequest, context: Context,
                               caller: Principal) -> pb.ListInteractionsResponse:
        if request.parent == "readers/-":
            reader_id = None
        else:
            reader_id = validation.resource_id(request.parent, "readers", "parent")
            await self.app.store.get_reader(reader_id)  # NOT_FOUND for an unknown reader
        items, token, archived = await list_interactions_page(
            self.app, reader_id, request.type, request.page_size, request.page_token
        )
        return pb.ListInteractionsResponse(interactions=items, next_page_token=token, includes_archived=archived)

    @rpc(Access.CONSULTANT)
    async def WatchActivity(self, request: pb.WatchActivityRequest, context: Context, caller: Principal) -> None:
        reader_ids = await self._watched(request.readers, request.only_my_readers, caller)
        kinds = set()
        for kind in request.kinds:
            if kind not in wire.KIND_NAME:
                raise InvalidArgument(f"kinds has an unknown or unspecified value {kind}", field="kinds")
            kinds.add(wire.KIND_NAME[kind])
        types = frozenset(validation.interaction_type(t, "interaction_types") for t in request.interaction_types)
        wanted = EventFilter(reader_ids, frozenset(kinds), types)
        details = {"kinds": sorted(kinds), "interaction_types": sorted(types), "resume": bool(request.after),
                   "only_my_readers": request.only_my_readers}
        snapshot = (lambda: self._snapshot(wanted)) if request.include_snapshot else None
        # Nothing awaits before open_stream subscribes.
        await open_stream(self.app, context, caller, wanted, request.after, _activity_tail, snapshot,
                          lambda: self._audit_watch(caller, reader_ids, details))

    @rpc(Access.CONSULTANT)
    async def WatchReaders(self, request: pb.WatchReadersRequest, context: Context, caller: Principal) -> None:
        reader_ids = await self._watched(request.readers, request.only_my_readers, caller)
        wanted = EventFilter(reader_ids)
        details = {"dashboard": True, "resume": bool(request.after), "only_my_readers": request.only_my_readers}
        dashboard = self.app.dashboard
        # A resume gets the latest of the readers changed after its cursor instead of a snapshot.
        snapshot = None if request.after else (lambda: dashboard.snapshot(wanted, caller.account_id))
        await open_stream(self.app, context, caller, wanted, request.after, _readers_tail, snapshot,
                          lambda: self._audit_watch(caller, reader_ids, details), source=dashboard)

    async def _watched(self, names: Sequence[str], only_mine: bool, caller: Principal) -> frozenset[str]:
        """The readers a watch names, narrowed to the caller's if asked;
        empty for all readers."""
        if len(names) > MAX_WATCHED_READERS:
            raise InvalidArgument(f"watch at most {MAX_WATCHED_READERS} readers per stream", field="readers")
        reader_ids = frozenset(validation.resource_id(name, "readers", "readers") for name in names)
        if only_mine:
            mine = await self.app.store.assigned_readers(caller.account_id)
            # None assigned (or none of those asked for): a stream that carries no reader's events.
            reader_ids = (reader_ids & mine if reader_ids else mine) or NO_READER
        return reader_ids

    async def _audit_watch(self, caller: Principal, reader_ids: frozenset[str], details: dict[str, Any]) -> None:
        """Only once the watch is accepted: a refused one observed nobody, nor one of no reader."""
        actor = Actor("consultant", caller.account_id)
        if reader_ids == NO_READER:
            return
        if reader_ids:
            for reader_id in sorted(reader_ids):
                await self.app.store.audit(actor, "watch.open", "reader", reader_id, details)
        else:
            await self.app.store.audit(actor, "watch.open", "all_readers", None, details)

    async def _snapshot(self, wanted: EventFilter) -> list[bytes]:
        """Every active reader that matches, the open attention signals of
        the readers that match, then the end-of-snapshot marker."""
        since = iso_from_ns(time.time_ns() - self.app.settings.limits.active_window_seconds * 1_000_000_000)
        head = self.app.broadcaster.head
        readers = [r for r in await active_readers(self.app.store, since)
                   if not wanted.reader_ids or r.id in wanted.reader_ids]
        messages = [
            pb.WatchActivityResponse(
                snapshot_readers=[wire.reader(r) for r in readers[i:i + SNAPSHOT_READERS_PER_MESSAGE]]
            ).SerializeToString()
            for i in range(0, len(readers), SNAPSHOT_READERS_PER_MESSAGE)
        ]
        if not wanted.kinds or KIND_ATTENTION in wanted.kinds:
            epoch, after_seq = self.app.broadcaster.epoch, None
            while True:
                signals = await self.app.store.list_attention(frozenset(), None, wanted.reader_ids or None,
                                                              after_seq, SNAPSHOT_READERS_PER_MESSAGE)
                if signals:
                    messages.append(pb.WatchActivityResponse(
                        snapshot_attention=[wire.attention_signal(s, epoch) for s in signals]).SerializeToString())
                if len(signals) < SNAPSHOT_READERS_PER_MESSAGE:
                    break
                after_seq = signals[-1].raised_seq
        cursor = self.app.broadcaster.cursor(head)
        messages.append(pb.WatchActivityResponse(snapshot_complete=True, cursor=cursor).SerializeToString())
        return messages

    @rpc(Access.CONSULTANT)
    async def SendMessage(self, request: pb.SendMessageRequest, context: Context,
                          caller: Principal) -> pb.SendMessageResponse:
        reader_id = validation.resource_id(request.reader, "readers", "reader")
        body = validation.message_body(request.body)
        record = await self.app.store.send_message(Actor("consultant", caller.account_id), reader_id,
                                                   "consultant_to_user", body)
        return pb.SendMessageResponse(message=wire.message(record))

    @rpc(Access.CONSULTANT)
    async def ListMessages(self, request: pb.ListMessagesRequest, context: Context,
                           caller: Principal) -> pb.ListMessagesResponse:
        reader_id = validation.resource_id(request.parent, "readers", "parent")
        records, token = await list_messages_page(self.app, reader_id, request.page_size, request.page_token)
        reads = await self.app.store.read_positions(reader_id)
        return pb.ListMessagesResponse(
            messages=[wire.message(r) for r in records], next_page_token=token,
            reads=[wire.message_read(p) for p in reads],
        )

    @rpc(Access.CONSULTANT)
    async def MarkMessagesRead(self, request: pb.MarkMessagesReadRequest, context: Context,
                               caller: Principal) -> pb.MarkMessagesReadResponse:
        reader_id = validation.resource_id(request.reader, "readers", "reader")
        if request.up_to_sequence < 0:
            raise InvalidArgument("up_to_sequence must not be negative", field="up_to_sequence")
        position = await self.app.store.mark_read(Actor("consultant", caller.account_id), reader_id,
                                                  request.up_to_sequence)
        return pb.MarkMessagesReadResponse(read=wire.message_read(position))

    @rpc(Access.CONSULTANT)
    async def ListUnreadCounts(self, request: pb.ListUnreadCountsRequest, context: Context,
                               caller: Principal) -> pb.ListUnreadCountsResponse:
        counts = await self.app.store.unread_counts(caller.account_id)
        if request.only_my_readers:
            mine = await self.app.store.assigned_readers(caller.account_id)
            counts = [(reader_id, n) for reader_id, n in counts if reader_id in mine]
        return pb.ListUnreadCountsResponse(
            counts=[pb.UnreadCount(reader=f"readers/{reader_id}", unread=n) for reader_id, n in counts]
        )

    @rpc(Access.CONSULTANT)
    async def SetReaderStatus(self, request: pb.SetReaderStatusRequest, context: Context,
                              caller: Principal) -> pb.SetReaderStatusResponse:
        reader_id = validation.resource_id(request.reader, "readers", "reader")
        status = SETTABLE_STATUS.get(request.status)
        if status is None:
            raise InvalidArgument("status must be READER_STATUS_PAUSED or READER_STATUS_ACTIVE", field="status")
        state = await self.app.store.set_reader_status(Actor("consultant", caller.account_id), reader_id, status)
        return pb.SetReaderStatusResponse(state=wire.reader_state(state))


    @rpc(Access.CONSULTANT)
    async def ListAttention(self, request: pb.ListAttentionRequest, context: Context,
                            caller: Principal) -> pb.ListAttentionResponse:
        rules = set()
        for rule in request.rules:
            if rule not in wire.RULE_NAME:
                raise InvalidArgument(f"rules has an unknown or unspecified value {rule}", field="rules")
            rules.add(wire.RULE_NAME[rule])
        if request.only_my_readers and request.assignee:
            raise InvalidArgument("set only_my_readers or assignee, not both", field="assignee")
        assignee: str | None = None
        if request.only_my_readers:
            assignee = caller.account_id
        elif request.assignee == "consultants/-":
            assignee = "-"
        elif request.assignee:
            assignee = validation.resource_id(request.assignee, "consultants", "assignee")
        page = PageRequest.parse(request.page_size, request.page_token, self.app.settings.limits,
                                 ("attention", sorted(rules), assignee), paging.SEQ)
        records, token = await page.read(
            lambda key, how_many: self.app.store.list_attention(
                frozenset(rules), assignee, None, key[0] if key else None, how_many),
            lambda r: [r.raised_seq],
        )
        epoch = self.app.broadcaster.epoch
        return pb.ListAttentionResponse(signals=[wire.attention_signal(r, epoch) for r in records],
                                        next_page_token=token)

    @rpc(Access.CONSULTANT)
    async def AcknowledgeAttention(self, request: pb.AcknowledgeAttentionRequest, context: Context,
                                   caller: Principal) -> pb.AcknowledgeAttentionResponse:
        reader_id, signal_id = validation.child_resource_id(request.name, "readers", "attentionSignals", "name")
        record = await self.app.store.acknowledge_attention(Actor("consultant", caller.account_id), reader_id,
                                                            signal_id)
        return pb.AcknowledgeAttentionResponse(signal=wire.attention_signal(record, self.app.broadcaster.epoch))


# A reader filter that no reader matches (ids are UUIDs): "only my readers"
# for a consultant with none assigned.
NO_READER = frozenset({"-"})


def _activity_tail(cursor: str, heartbeat: bool) -> bytes:
    return pb.WatchActivityResponse(cursor=cursor, heartbeat=heartbeat).SerializeToString()


def _readers_tail(cursor: str, heartbeat: bool) -> bytes:
    return pb.WatchReadersResponse(cursor=cursor, heartbeat=heartbeat).SerializeToString()
