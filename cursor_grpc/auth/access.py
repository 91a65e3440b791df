"""Who may call each RPC, checked in one place.

Every servicer method is declared with `@rpc(Access.X)`; the wrapper
authenticates the caller, checks the role, passes the `Principal` on, and
maps `CursorError` (and anything unexpected) to a gRPC status. A test checks
that no method of a registered service lacks a declaration.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
from grpc import aio

from cursor_grpc import metrics
from cursor_grpc.auth.sessions import Principal, SessionManager
from cursor_grpc.errors import CursorError, PermissionDenied, Unauthenticated, to_status_details

log = logging.getLogger("cursor.auth")

ROLE_RANK = {"reader": 0, "consultant": 1, "supervisor": 2, "admin": 3}


class Access(enum.Enum):
    """Who may call an RPC."""

    PUBLIC = "anyone, without a session"
    SIGNED_IN = "any signed-in account"
    READER = "a reader"
    CONSULTANT = "a consultant of any role"
    SUPERVISOR = "a consultant with role supervisor or admin"
    ADMIN = "a consultant with role admin"


_MIN_CONSULTANT_RANK = {Access.CONSULTANT: 1, Access.SUPERVISOR: 2, Access.ADMIN: 3}


def check_access(principal: Principal, access: Access) -> None:
    if access in (Access.PUBLIC, Access.SIGNED_IN):
        return
    if access is Access.READER:
        if principal.kind != "reader":
            raise PermissionDenied("this RPC is for reader accounts; sign in as a reader", reason="READER_ONLY")
        return
    if principal.kind != "consultant":
        raise PermissionDenied(f"this RPC needs {access.value}", reason="CONSULTANT_ONLY")
    if ROLE_RANK[principal.role] < _MIN_CONSULTANT_RANK[access]:
        raise PermissionDenied(f"this RPC needs {access.value}; your role is {principal.role}", reason="ROLE_TOO_LOW")


class HasSessions(Protocol):
    sessions: SessionManager


S = TypeVar("S", bound=HasSessions)
UnaryMethod = Callable[[S, Any, aio.ServicerContext[Any, Any], Any], Awaitable[Any]]
StreamMethod = Callable[[S, Any, aio.ServicerContext[Any, Any], Any], AsyncIterator[Any]]


async def abort_with(context: aio.ServicerContext[Any, Any], error: CursorError) -> None:
    """End the RPC with the error's status and its google.rpc details."""
    await context.abort(
        error.code, error.message, trailing_metadata=(("grpc-status-details-bin", to_status_details(error)),)
    )


async def _authorize(service: HasSessions, context: aio.ServicerContext[Any, Any], access: Access,
                     method: str) -> Principal | None:
    if access is Access.PUBLIC:
        return None
    try:
        principal = await service.sessions.authenticate(context.invocation_metadata())  # type: ignore[arg-type]
        check_access(principal, access)
    except (Unauthenticated, PermissionDenied) as denied:
        log.warning("denied %s from %s: %s (%s)", method, context.peer(), denied.reason, denied.message)
        raise
    return principal


async def _internal(context: aio.ServicerContext[Any, Any], method: str, error: Exception) -> None:
    ref = uuid.uuid4().hex[:12]
    log.error("internal error in %s (ref %s)", method, ref, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error; quote ref {ref} when reporting it")


_CODES_BY_NUMBER: dict[object, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def _aborted_code(context: aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    """The code a method aborted with itself (grpc.aio reports its number)."""
    code: object = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return _CODES_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)


def rpc(access: Access, *, failures: Callable[[str], None] | None = None) -> Callable[[Any], Any]:
    """Declare who may call a servicer method; see the module docstring.

    The same wrapper counts and times the RPC for the metrics endpoint: one
    layer per call instead of an interceptor that rebuilds handlers on every
    call. `failures(reason)` hears of every refusal (a CursorError), for a
    metric such as failed logins. Streaming methods write with
    `context.write()`, so every method is a coroutine."""

    def decorate(method: Any) -> Any:
        if not inspect.iscoroutinefunction(method):
            raise TypeError(f"{method.__qualname__}: servicer methods are coroutines (stream with context.write)")
        name = method.__qualname__
        counted = metrics.rpc_method("/cursor.v1." + name.replace(".", "/"))

        @functools.wraps(method)
        async def wrapper(self: HasSessions, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            counted.started.inc()
            code = grpc.StatusCode.OK
            try:
                caller = await _authorize(self, context, access, name)
                return await method(self, request, context, caller)
            except CursorError as error:
                code = error.code
                if failures is not None:
                    failures(error.reason)
                await abort_with(context, error)
            except aio.AbortError:
                code = _aborted_code(context)
                raise
            except asyncio.CancelledError:
                # grpc.aio cancels the method when the client leaves, and when the deadline passes.
                remaining = context.time_remaining()
                expired = remaining is not None and remaining <= 0
                code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
                raise
            except Exception as error:
                code = grpc.StatusCode.INTERNAL
                await _internal(context, name, error)
            finally:
                counted.finished(code, started)

        wrapper.__cursor_access__ = access  # type: ignore[attr-defined]
        return wrapper

    return decorate
