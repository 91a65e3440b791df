"""The one exception tree of the service, and its one mapping to gRPC.

Services and storage raise `CursorError` subclasses; `to_status_details`
turns one into a gRPC status with a `google.rpc.ErrorInfo` (and `RetryInfo` or
`BadRequest` where they help a client decide what to do next).
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "cursor.v1"


class CursorError(Exception):
    """A failure the caller can act on. `reason` is an UPPER_SNAKE code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        field: str | None = None,
        retry_after: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.field = field
        self.retry_after = retry_after
        self.metadata = metadata or {}


class InvalidArgument(CursorError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class Unauthenticated(CursorError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(CursorError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class NotFound(CursorError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(CursorError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(CursorError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(CursorError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class OutOfRange(CursorError):
    code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = "OUT_OF_RANGE"


class Unavailable(CursorError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


QUOTE_CHARS = 40


def quoted(value: object) -> str:
    """`repr` of a value a caller sent, cut to its first `QUOTE_CHARS`
    characters: a status message travels in metadata, twice with its
    BadRequest, and a whole oversized input would exceed what clients accept
    (they then see RESOURCE_EXHAUSTED instead of the error)."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= QUOTE_CHARS:
        return repr(value)
    shown = repr(text[:QUOTE_CHARS]) if isinstance(value, str) else text[:QUOTE_CHARS]
    return f"{shown}… ({len(text)} characters)"


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status_details(error: CursorError) -> bytes:
    """Serialized `google.rpc.Status` for the `grpc-status-details-bin` trailer."""
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata)
    details = [_pack(info)]
    if error.field is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.message)
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=details)
    serialized: bytes = status.SerializeToString()
    return serialized
