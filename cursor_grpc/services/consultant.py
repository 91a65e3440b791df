"""`cursor.v1.ConsultantService`: looking readers up."""

from __future__ import annotations

import time
from typing import Any

from grpc import aio

from cursor.v1 import consultant_service_pb2 as pb
from cursor.v1 import consultant_service_pb2_grpc as pb_grpc
from cursor.v1 import resources_pb2
from cursor_grpc import paging, validation
from cursor_grpc.app import App
from cursor_grpc.auth.access import Access, rpc
from cursor_grpc.auth.sessions import Principal
from cursor_grpc.clock import iso_from_ns
from cursor_grpc.errors import InvalidArgument
from cursor_grpc.services import convert
from cursor_grpc.services.reader import list_interactions_page

Context = aio.ServicerContext[Any, Any]
MAX_WINDOW_SECONDS = 7 * 24 * 3600


def _bad_token() -> InvalidArgument:
    return InvalidArgument("page_token is not a token this server issued", field="page_token")


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
        limit = paging.page_size(request.page_size, self.app.settings.limits)
        request_fingerprint = paging.fingerprint("active", window)
        key = paging.decode_token(request.page_token, request_fingerprint)
        if key is None:
            # The window is fixed at the first page, so later pages don't shift.
            since = iso_from_ns(time.time_ns() - window * 1_000_000_000)
            after = None
        else:
            if len(key) != 3 or not all(isinstance(k, str) for k in key):
                raise _bad_token()
            since, after = key[0], (key[1], key[2])
        records = await self.app.store.list_active_readers(since, after, limit + 1)
        token = ""
        if len(records) > limit:
            records = records[:limit]
            last = records[-1]
            assert last.state is not None
            assert last.state.last_seen_at is not None
            token = paging.encode_token([since, last.state.last_seen_at, last.id], request_fingerprint)
        return pb.ListActiveReadersResponse(readers=[convert.reader(r) for r in records], next_page_token=token)

    @rpc(Access.CONSULTANT)
    async def ListReaders(self, request: pb.ListReadersRequest, context: Context,
                          caller: Principal) -> pb.ListReadersResponse:
        if request.status not in resources_pb2.ReaderStatus.values():
            raise InvalidArgument(f"status {request.status} is not known", field="status")
        status = convert.STATUS_NAME.get(request.status)
        limit = paging.page_size(request.page_size, self.app.settings.limits)
        request_fingerprint = paging.fingerprint("readers", status)
        key = paging.decode_token(request.page_token, request_fingerprint)
        if key is not None and (len(key) != 1 or not isinstance(key[0], str)):
            raise _bad_token()
        records = await self.app.store.list_readers(status, key[0] if key else None, limit + 1)
        token = ""
        if len(records) > limit:
            records = records[:limit]
            token = paging.encode_token([records[-1].id], request_fingerprint)
        return pb.ListReadersResponse(readers=[convert.reader(r) for r in records], next_page_token=token)

    @rpc(Access.CONSULTANT)
    async def GetReader(self, request: pb.GetReaderRequest, context: Context,
                        caller: Principal) -> pb.GetReaderResponse:
        reader_id = validation.resource_id(request.name, "readers", "name")
        return pb.GetReaderResponse(reader=convert.reader(await self.app.store.get_reader(reader_id)))

    @rpc(Access.CONSULTANT)
    async def ListInteractions(self, request: pb.ListInteractionsRequest, context: Context,
                               caller: Principal) -> pb.ListInteractionsResponse:
        if request.parent == "readers/-":
            reader_id = None
        else:
            reader_id = validation.resource_id(request.parent, "readers", "parent")
            await self.app.store.get_reader(reader_id)  # NOT_FOUND for an unknown reader
        items, token = await list_interactions_page(
            self.app, reader_id, request.type, request.page_size, request.page_token
        )
        return pb.ListInteractionsResponse(interactions=items, next_page_token=token)
