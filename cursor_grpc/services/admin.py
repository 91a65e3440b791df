"""`cursor.v1.AdminService`: account management; every action is audited
in the same transaction."""

from __future__ import annotations

import logging
from typing import Any

from grpc import aio

from cursor.v1 import admin_service_pb2 as pb
from cursor.v1 import admin_service_pb2_grpc as pb_grpc
from cursor.v1 import resources_pb2
from cursor_grpc import validation
from cursor_grpc.app import App
from cursor_grpc.auth.access import Access, rpc
from cursor_grpc.auth.passwords import check_password_rules
from cursor_grpc.auth.sessions import Principal
from cursor_grpc.errors import FailedPrecondition, InvalidArgument
from cursor_grpc.services import convert
from cursor_grpc.storage.store import Actor

log = logging.getLogger("cursor.admin")
Context = aio.ServicerContext[Any, Any]


def _role(value: int, *, required: bool) -> str:
    if value == resources_pb2.CONSULTANT_ROLE_UNSPECIFIED and not required:
        return "consultant"
    role = convert.ROLE_NAME.get(value)  # type: ignore[call-overload]
    if role is None:
        raise InvalidArgument("role must be CONSULTANT_ROLE_CONSULTANT, _SUPERVISOR or _ADMIN", field="role")
    return str(role)


class AdminService(pb_grpc.AdminServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app
        self.sessions = app.sessions

    @rpc(Access.ADMIN)
    async def CreateConsultant(self, request: pb.CreateConsultantRequest, context: Context,
                               caller: Principal) -> pb.CreateConsultantResponse:
        email = validation.email(request.email)
        check_password_rules(request.password)
        name = validation.display_name(request.display_name)
        role = _role(request.role, required=True)
        password_hash = await self.app.passwords.hash(request.password)
        record = await self.app.store.create_consultant(
            Actor("consultant", caller.account_id), email, password_hash, name, role
        )
        log.info("%s created consultants/%s (%s)", caller.name, record.id, role)
        return pb.CreateConsultantResponse(consultant=convert.consultant(record))

    @rpc(Access.ADMIN)
    async def PromoteReader(self, request: pb.PromoteReaderRequest, context: Context,
                            caller: Principal) -> pb.PromoteReaderResponse:
        reader_id = validation.resource_id(request.reader, "readers", "reader")
        role = _role(request.role, required=False)
        record = await self.app.store.promote_reader(Actor("consultant", caller.account_id), reader_id, role)
        log.info("%s promoted readers/%s to consultants/%s (%s)", caller.name, reader_id, record.id, role)
        return pb.PromoteReaderResponse(consultant=convert.consultant(record))

    @rpc(Access.ADMIN)
    async def SetAccountActive(self, request: pb.SetAccountActiveRequest, context: Context,
                               caller: Principal) -> pb.SetAccountActiveResponse:
        kind, account_id = validation.account_name(request.account, "account")
        if not request.active and kind == caller.kind and account_id == caller.account_id:
            raise FailedPrecondition("an admin cannot deactivate their own account", reason="SELF_DEACTIVATION")
        revoked = await self.app.store.set_account_active(
            Actor("consultant", caller.account_id), kind, account_id, request.active
        )
        if not request.active:
            self.sessions.forget_account(kind, account_id)
        name = f"{kind}s/{account_id}"  # canonical, whatever case the caller's id was in
        log.info("%s set %s active=%s (%d sessions ended)", caller.name, name, request.active, revoked)
        return pb.SetAccountActiveResponse(account=name, active=request.active, revoked_session_count=revoked)
