"""What every cursor.v1 request passes before its servicer method: a size
cap per RPC, and decoding that never raises.

grpc.aio decodes a unary request before the method runs, so before
authentication, and answers an exception from the decoder with UNKNOWN
("Unexpected <class 'DecodeError'>…") and a logged traceback; the chunks of
a client stream are decoded inside the method's `async for`, where the
exception looked like an internal error. Here decoding returns a `Refused`
marker instead, and the wrapped method answers it before doing any work:
INVALID_ARGUMENT (MALFORMED_REQUEST) for bytes that are not the request
message, RESOURCE_EXHAUSTED (REQUEST_TOO_LARGE) for a request over its cap.
Refusals are logged in one line each, at most one line per 10 s.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pool
from grpc import aio

from cursor_grpc import metrics
from cursor_grpc.auth.access import abort_with
from cursor_grpc.config import LimitSettings
from cursor_grpc.errors import CursorError, InvalidArgument, ResourceExhausted

log = logging.getLogger("cursor.requests")

LOG_INTERVAL_SECONDS = 10.0

Context = aio.ServicerContext[Any, Any]


class RateLimitedLog:
    """Writes at most one line per `interval` seconds; the first line after
    a suppressed spell says how many were left out, so a flood of bad
    requests costs one line, not a log file."""

    def __init__(self, interval: float, write: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._write = write
        self._clock = clock
        self._next_at = -math.inf
        self._suppressed = 0

    def emit(self, line: str) -> None:
        now = self._clock()
        if now < self._next_at:
            self._suppressed += 1
            return
        if self._suppressed:
            line += f" ({self._suppressed} more like it since the last such line)"
        self._suppressed = 0
        self._next_at = now + self._interval
        self._write(line)


@dataclass(frozen=True, slots=True)
class Refused:
    """Stands in for a request that was not decoded, and says why."""

    error: CursorError
    size: int


def request_cap(handler: Any, limits: LimitSettings) -> int:
    """Bytes one request message of an RPC may have: an upload chunk the
    most, every other request (all decoded before authentication) little."""
    return limits.max_message_bytes if handler.request_streaming else limits.max_request_bytes


def _decoder(parse: Callable[[bytes], Any], limit: int, message_name: str) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        if len(raw) > limit:
            return Refused(ResourceExhausted(
                f"the request is {len(raw)} bytes; a {message_name} may have at most {limit} bytes",
                reason="REQUEST_TOO_LARGE", metadata={"limit_bytes": str(limit)},
            ), len(raw))
        try:
            return parse(raw)
        except Exception:  # whatever the parser raises, the bytes are not this message
            return Refused(InvalidArgument(
                f"the request body could not be decoded as a {message_name}", reason="MALFORMED_REQUEST",
            ), len(raw))

    return decode


class RequestGuard:
    """Wraps the generated handlers of one server's services; one log limit
    for all of them."""

    def __init__(self, limits: LimitSettings, interval: float = LOG_INTERVAL_SECONDS) -> None:
        self.limits = limits
        self.refusals = RateLimitedLog(interval, log.warning)

    def _note(self, method: str, context: Context, refused: Refused) -> None:
        self.refusals.emit(
            f"refused {method} from {context.peer()}: {refused.error.reason} ({refused.size} bytes)"
        )

    def wrap(self, service: str, name: str, handler: Any) -> Any:
        """`handler` with the capped, never-raising decoder, and a behaviour
        that answers what the decoder refused."""
        method = f"/{service}/{name}"
        message_name = descriptor_pool.Default().FindMethodByName(f"{service}.{name}").input_type.full_name
        decode = _decoder(handler.request_deserializer, request_cap(handler, self.limits), message_name)
        # Like the `@rpc` wrapper, the metrics count cursor.v1 RPCs only (refused ones too).
        counted = metrics.rpc_method(method) if service.startswith("cursor.v1.") else None
        if handler.request_streaming:
            if handler.response_streaming:
                raise TypeError(f"{method}: a bidirectional stream needs a guard of its own")
            return handler._replace(request_deserializer=decode,
                                    stream_unary=self._streamed(method, handler.stream_unary, counted))
        if handler.response_streaming:
            return handler._replace(request_deserializer=decode,
                                    unary_stream=_serving(counted, self._single(method, handler.unary_stream, counted)))
        return handler._replace(request_deserializer=decode,
                                unary_unary=self._single(method, handler.unary_unary, counted))

    def _single(self, method: str, behaviour: Callable[[Any, Context], Any],
                counted: metrics.RpcMetrics | None) -> Callable[[Any, Context], Any]:
        async def answer(request: Any, context: Context) -> Any:
            if isinstance(request, Refused):
                self._note(method, context, request)
                if counted is not None:
                    counted.refused(request.error.code)
                await abort_with(context, request.error)
            return await behaviour(request, context)

        return answer

    def _streamed(self, method: str, behaviour: Callable[[Any, Context], Any],
                  counted: metrics.RpcMetrics | None) -> Callable[[Any, Context], Any]:
        received = counted.received if counted is not None else None

        async def checked(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            async for request in requests:
                if received is not None:
                    received.inc()
                if isinstance(request, Refused):
                    self._note(method, context, request)
                    # Raised inside the servicer's `async for`: its `@rpc` wrapper answers it.
                    raise request.error
                yield request

        async def answer(requests: AsyncIterator[Any], context: Context) -> Any:
            return await behaviour(checked(requests, context), context)

        return answer


def _serving(counted: metrics.RpcMetrics | None,
             behaviour: Callable[[Any, Context], Any]) -> Callable[[Any, Context], Any]:
    """A server-streaming behaviour that lets the stream it runs know its
    RPC (`metrics.SERVING`), for the per-RPC stream metrics."""
    if counted is None:
        return behaviour

    async def answer(request: Any, context: Context) -> Any:
        token = metrics.SERVING.set(counted)
        try:
            return await behaviour(request, context)
        finally:
            metrics.SERVING.reset(token)

    return answer
