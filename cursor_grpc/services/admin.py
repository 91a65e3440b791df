"""`cursor.v1.AdminService`: account management; every action is audited
in the same transaction."""

from __future__ import annotations

import contextlib
import logging

from google.protobuf.timestamp_pb2 import Timestamp

from cursor.v1 import admin_service_pb2 as pb
from cursor.v1 import admin_service_pb2_grpc as pb_grpc
from cursor.v1 import resources_pb2
from cursor_grpc import paging, validation, wire
from cursor_grpc.app import App
from cursor_grpc.auth.access import Access, rpc
from cursor_grpc.auth.passwords import check_password_rules
from cursor_grpc.auth.sessions import Principal, session_ended
from cursor_grpc.clock import iso_from_ns
from cursor_grpc.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, quoted
from cursor_grpc.services.common import Context, PageRequest, profile_update
from cursor_grpc.storage import Actor, AuditQuery

log = logging.getLogger("cursor.admin")


def _role(value: int, *, required: bool) -> str:
    if value == resources_pb2.CONSULTANT_ROLE_UNSPECIFIED and not required:
        return "consultant"
    role = wire.ROLE_NAME.get(value)  # type: ignore[call-overload]
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
        return pb.CreateConsultantResponse(consultant=wire.consultant(record))

    @rpc(Access.ADMIN)
    async def PromoteReader(self, request: pb.PromoteReaderRequest, context: Context,
                            caller: Principal) -> pb.PromoteReaderResponse:
        reader_id = validation.resource_id(request.reader, "readers", "reader")
        role = _role(request.role, required=False)
        record = await self.app.store.promote_reader(Actor("consultant", caller.account_id), reader_id, role)
        log.info("%s promoted readers/%s to consultants/%s (%s)", caller.name, reader_id, record.id, role)
        return pb.PromoteReaderResponse(consultant=wire.consultant(record))

    @rpc(Access.ADMIN)
    async def SetAccountActive(self, request: pb.SetAccountActiveRequest, context: Context,
                               caller: Principal) -> pb.SetAccountActiveResponse:
        kind, account_id = validation.account_name(request.account, "account")
        if not request.active and kind == caller.kind and account_id == caller.account_id:
            raise FailedPrecondition("an admin cannot deactivate their own account", reason="SELF_DEACTIVATION")
        if kind == "reader" and request.active:
            # Re-activation also tells the reader, with a system message.
            await self.app.store.activate_reader(Actor("consultant", caller.account_id), account_id, REACTIVATED)
            revoked = 0
        else:
            # Deactivating: the account's sessions are refused and its streams end from here on.
            ending = (contextlib.nullcontext() if request.active
                      else self.sessions.ending(account=(kind, account_id), error=session_ended("inactive")))
            async with ending:
                revoked = await self.app.store.set_account_active(
                    Actor("consultant", caller.account_id), kind, account_id, request.active
                )
        if not request.active and kind == "reader":
            # What the reader shared with other readers is hidden while it is deactivated.
            self.app.broadcaster.close_shared(account_id, None, PermissionDenied(
                f"readers/{account_id} was deactivated; what it shares is hidden until it is active again",
                reason="GRANTER_INACTIVE"))
            self.app.shared_check.changed()
        name = f"{kind}s/{account_id}"  # canonical, whatever case the caller's id was in
        log.info("%s set %s active=%s (%d sessions ended)", caller.name, name, request.active, revoked)
        return pb.SetAccountActiveResponse(account=name, active=request.active, revoked_session_count=revoked)

    @rpc(Access.ADMIN)
    async def UpdateReader(self, request: pb.UpdateReaderRequest, context: Context,
                           caller: Principal) -> pb.UpdateReaderResponse:
        reader_id = validation.resource_id(request.reader.name, "readers", "reader.name")
        update = profile_update(request.reader, request.update_mask if request.HasField("update_mask") else None)
        record, metadata, changed = await self.app.store.update_reader_profile(
            Actor("consultant", caller.account_id), reader_id, update.display_name, update.email, update.metadata,
            notice=_profile_notice,
        )
        log.info("%s updated readers/%s (%s)", caller.name, reader_id, ", ".join(changed) or "no change")
        return pb.UpdateReaderResponse(reader=wire.reader_profile(record, metadata))

    @rpc(Access.SUPERVISOR)
    async def AssignReader(self, request: pb.AssignReaderRequest, context: Context,
                           caller: Principal) -> pb.AssignReaderResponse:
        reader_id = validation.resource_id(request.reader, "readers", "reader")
        consultant_id = validation.resource_id(request.consultant, "consultants", "consultant")
        assigned = await self.app.store.assign_reader(Actor("consultant", caller.account_id), reader_id, consultant_id)
        log.info("%s assigned readers/%s to consultants/%s", caller.name, reader_id, consultant_id)
        return pb.AssignReaderResponse(assignment=wire.assignment(assigned))

    @rpc(Access.SUPERVISOR)
    async def UnassignReader(self, request: pb.UnassignReaderRequest, context: Context,
                             caller: Principal) -> pb.UnassignReaderResponse:
        reader_id = validation.resource_id(request.reader, "readers", "reader")
        removed = await self.app.store.unassign_reader(Actor("consultant", caller.account_id), reader_id)
        if removed is None:
            raise NotFound(f"readers/{reader_id} is not assigned to anyone", reason="NOT_ASSIGNED")
        log.info("%s unassigned readers/%s", caller.name, reader_id)
        return pb.UnassignReaderResponse(removed=wire.assignment(removed))

    @rpc(Access.ADMIN)
    async def ListAuditLogs(self, request: pb.ListAuditLogsRequest, context: Context,
                            caller: Principal) -> pb.ListAuditLogsResponse:
        query = _audit_query(request)
        page = PageRequest.parse(request.page_size, request.page_token, self.app.settings.limits,
                                 ("audit", query.actor_type, query.actor_id, query.action, query.target_type,
                                  query.target_id, query.start, query.end),
                                 paging.TIMESTAMP, paging.ROW_ID)
        records, token = await page.read(
            lambda key, how_many: self.app.store.list_audit_logs(query, (key[0], key[1]) if key else None, how_many),
            lambda r: [r.created_at, r.id],
        )
        return pb.ListAuditLogsResponse(audit_logs=[wire.audit_log(r) for r in records], next_page_token=token)


REACTIVATED = "Your account has been re-activated by an administrator."
_FIELD_LABEL = {"display_name": "display name", "email": "email", "metadata_json": "metadata"}


def _profile_notice(changed: list[str]) -> str:
    return f"An administrator changed your profile: {', '.join(_FIELD_LABEL.get(f, f) for f in changed)}."


# Timestamp range accepted as a filter bound: 1970 to the end of year 9999.
_MAX_SECONDS = 253402300799
MAX_ACTION_CHARS = 100


def _time_bound(ts: Timestamp, field: str) -> str:
    if not 0 <= ts.nanos < 1_000_000_000 or ts.seconds > _MAX_SECONDS:
        raise InvalidArgument(f"{field} is not a valid timestamp", field=field)
    # Nothing is older than 1970; an earlier bound means "from the start".
    return iso_from_ns(max(ts.seconds, 0) * 1_000_000_000 + (ts.nanos if ts.seconds >= 0 else 0))


def _audit_query(request: pb.ListAuditLogsRequest) -> AuditQuery:
    actor_type = actor_id = target_type = target_id = None
    if request.actor == "system":
        actor_type = "system"
    elif request.actor:
        actor_type, actor_id = validation.account_name(request.actor, "actor")
    if request.target == "readers/-":
        target_type = "all_readers"
    elif request.target:
        collection, slash, rest = request.target.partition("/")
        if not collection.isalpha() or (slash and (not collection.endswith("s") or not rest)):
            raise InvalidArgument(
                f"target must look like readers/{{id}}, consultants/{{id}} or readers/-, not {quoted(request.target)}",
                field="target",
            )
        if slash:
            target_type = collection[:-1]
            target_id = validation.uuid_text(rest, "target")
        else:
            target_type = collection
    if len(request.action) > MAX_ACTION_CHARS:
        raise InvalidArgument(f"action must be at most {MAX_ACTION_CHARS} characters", field="action")
    validation.single_line(request.action, "action")
    start = _time_bound(request.start_time, "start_time") if request.HasField("start_time") else None
    end = _time_bound(request.end_time, "end_time") if request.HasField("end_time") else None
    if start is not None and end is not None and start >= end:
        raise InvalidArgument("start_time must be before end_time", field="start_time")
    return AuditQuery(actor_type, actor_id, request.action or None, target_type, target_id, start, end)
