"""`cursor.v1.AuthService`: accounts and sessions."""

from __future__ import annotations

import logging

from google.protobuf.timestamp_pb2 import Timestamp

from cursor.v1 import auth_service_pb2 as pb
from cursor.v1 import auth_service_pb2_grpc as pb_grpc
from cursor.v1 import resources_pb2
from cursor_grpc import metrics, validation, wire
from cursor_grpc.app import App
from cursor_grpc.auth.access import Access, rpc
from cursor_grpc.auth.passwords import check_password_rules, check_password_size
from cursor_grpc.auth.sessions import IssuedSession, Principal
from cursor_grpc.auth.throttle import peer_address
from cursor_grpc.errors import InvalidArgument, PermissionDenied, ResourceExhausted, Unauthenticated
from cursor_grpc.services.common import Context
from cursor_grpc.storage import Credential

log = logging.getLogger("cursor.auth")

BAD_LOGIN = "email or password is incorrect"


def session_message(issued: IssuedSession) -> pb.Session:
    p = issued.principal
    expire = Timestamp()
    expire.FromNanoseconds(p.expires_ns)
    return pb.Session(
        token=issued.token,
        account=p.name,
        account_kind=wire.ACCOUNT_KIND[p.kind],
        role=wire.CONSULTANT_ROLE.get(p.role, resources_pb2.CONSULTANT_ROLE_UNSPECIFIED),
        expire_time=expire,
        idle_timeout_seconds=p.idle_ns // 1_000_000_000,
    )


def _choose(credentials: list[Credential], kind: int) -> Credential | None:
    """The account to sign in to. Unspecified picks the reader account when
    the email holds both: the least privilege is the safe default."""
    by_kind = {c.kind: c for c in credentials}
    if kind == resources_pb2.ACCOUNT_KIND_READER:
        return by_kind.get("reader")
    if kind == resources_pb2.ACCOUNT_KIND_CONSULTANT:
        return by_kind.get("consultant")
    return by_kind.get("reader") or by_kind.get("consultant")


class AuthService(pb_grpc.AuthServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app
        self.sessions = app.sessions

    @rpc(Access.PUBLIC)
    async def RegisterReader(self, request: pb.RegisterReaderRequest, context: Context,
                             caller: None) -> pb.RegisterReaderResponse:
        email = validation.email(request.email)
        check_password_rules(request.password)
        name = validation.display_name(request.display_name)
        # Per address like logins: `EMAIL_TAKEN` tells whether an email has an account.
        peer = peer_address(context.peer())
        try:
            self.app.throttle.check_registration(peer)
        except ResourceExhausted as error:
            log.warning("registration throttled for peer %s: %s", peer, error)
            raise
        password_hash = await self.app.passwords.hash(request.password)
        reader = await self.app.store.create_reader(
            email, password_hash, name, round_robin=self.app.settings.attention.assign_new_readers == "round_robin")
        log.info("reader registered: readers/%s", reader.id)
        response = pb.RegisterReaderResponse(reader=wire.reader(reader))
        if request.start_session:
            # Signed in as by Login: the password was set a moment ago, so
            # there is nothing to verify, and this address counts as known.
            issued = await self.sessions.issue(Credential("reader", reader.id, password_hash, True, "reader"))
            self.app.throttle.succeeded(email, peer)
            response.session.CopyFrom(session_message(issued))
            log.info("login ok: %s from %s (registration)", issued.principal.name, peer)
        return response

    @rpc(Access.PUBLIC, failures=metrics.login_failed)
    async def Login(self, request: pb.LoginRequest, context: Context, caller: None) -> pb.LoginResponse:
        if request.account_kind not in resources_pb2.AccountKind.values():
            raise InvalidArgument(f"account_kind {request.account_kind} is not known", field="account_kind")
        peer = peer_address(context.peer())
        email = request.email.strip().lower()
        if not email or not request.password:
            raise InvalidArgument("email and password are required", field="email" if not email else "password")
        # Before the throttle and the account lookup: the same answer for any
        # email, and no failure counted against anyone.
        check_password_size(request.password)
        throttle = self.app.throttle
        try:
            throttle.check(email, peer)
        except Exception as error:
            log.warning("login throttled for peer %s: %s", peer, error)
            raise
        # An email no account can have is not looked up, and answers like an unknown one.
        found = await self.app.store.credentials_for_email(email) if validation.could_be_stored(email) else []
        credential = _choose(found, request.account_kind)
        matches, needs_rehash = await self.app.passwords.verify(
            credential.password_hash if credential else None, request.password
        )
        if not matches or credential is None:
            throttle.failed(email, peer)
            log.warning("login failed from %s", peer)
            raise Unauthenticated(BAD_LOGIN, reason="BAD_CREDENTIALS")
        if not credential.active:
            log.warning("login refused for deactivated %ss/%s from %s", credential.kind, credential.id, peer)
            raise PermissionDenied("this account is deactivated; contact an administrator", reason="ACCOUNT_INACTIVE")
        throttle.succeeded(email, peer)
        new_hash = await self.app.passwords.hash(request.password) if needs_rehash else None
        issued = await self.sessions.issue(credential, new_hash)
        log.info("login ok: %s from %s", issued.principal.name, peer)
        return pb.LoginResponse(session=session_message(issued))

    @rpc(Access.SIGNED_IN)
    async def Logout(self, request: pb.LogoutRequest, context: Context, caller: Principal) -> pb.LogoutResponse:
        await self.sessions.end(caller, "logout")
        log.info("logout: %s", caller.name)
        return pb.LogoutResponse()

    @rpc(Access.SIGNED_IN)
    async def RotateSession(self, request: pb.RotateSessionRequest, context: Context,
                            caller: Principal) -> pb.RotateSessionResponse:
        issued = await self.sessions.replace(caller, "rotated")
        return pb.RotateSessionResponse(session=session_message(issued))

    @rpc(Access.SIGNED_IN)
    async def ChangePassword(self, request: pb.ChangePasswordRequest, context: Context,
                             caller: Principal) -> pb.ChangePasswordResponse:
        check_password_rules(request.new_password, "new_password")
        check_password_size(request.current_password, "current_password")
        # Guesses of the current password are throttled like logins, keyed by
        # the account name, so a stolen session cannot guess at full speed.
        peer = peer_address(context.peer())
        self.app.throttle.check(caller.name, peer)
        credential = await self.app.store.credential_by_id(caller.kind, caller.account_id)
        matches, _ = await self.app.passwords.verify(credential.password_hash, request.current_password)
        if not matches:
            self.app.throttle.failed(caller.name, peer)
            log.warning("wrong current password for %s from %s", caller.name, peer)
            raise PermissionDenied("current_password is incorrect", reason="BAD_CREDENTIALS")
        self.app.throttle.succeeded(caller.name, peer)
        new_hash = await self.app.passwords.hash(request.new_password)
        issued = await self.sessions.replace(caller, "password changed", new_password_hash=new_hash,
                                             end_other_sessions=True)
        log.info("password changed: %s", caller.name)
        return pb.ChangePasswordResponse(session=session_message(issued))
