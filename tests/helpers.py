"""Small helpers shared by tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from tests.databases import SQLiteDatabase


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    """The RpcError a call raises; fails the test if it succeeds."""
    try:
        call()
    except grpc.RpcError as error:
        return error
    raise AssertionError("the call was expected to fail")


def error_details(error: grpc.RpcError) -> list[Any]:
    for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            found = []
            for detail in status.details:
                for cls in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo, error_details_pb2.BadRequest):
                    if detail.Is(cls.DESCRIPTOR):
                        message = cls()
                        detail.Unpack(message)
                        found.append(message)
            return found
    return []


def error_reason(error: grpc.RpcError) -> str:
    for detail in error_details(error):
        if isinstance(detail, error_details_pb2.ErrorInfo):
            return str(detail.reason)
    return ""


def retry_delay(error: grpc.RpcError) -> float | None:
    for detail in error_details(error):
        if isinstance(detail, error_details_pb2.RetryInfo):
            return float(detail.retry_delay.ToNanoseconds() / 1e9)
    return None


def db_rows(db_path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """All rows of one query on a SQLite file, for tests about SQLite itself;
    the others read through their `TestDatabase` (tests/databases.py)."""
    return SQLiteDatabase(db_path).rows(sql, params)


def table_count(db_path: Path, table: str) -> int:
    return SQLiteDatabase(db_path).count(table)
