"""Every RPC declares who may call it, and the declaration is enforced.

Discovery is by introspection (servicer classes in cursor_grpc/services/,
service descriptors of the generated cursor.v1 modules), so a method added
later without `@rpc(...)` fails here."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory

import cursor.v1
import cursor_grpc.services
from cursor_grpc import server
from cursor_grpc.auth.access import Access, check_access
from cursor_grpc.auth.sessions import Principal
from cursor_grpc.errors import PermissionDenied
from tests.conftest import Harness
from tests.helpers import error_reason, rpc_error

# --- Discovery ------------------------------------------------------------------------------------------------------


def service_descriptors() -> dict[str, Any]:
    """Full name -> ServiceDescriptor of every service in the generated cursor.v1 package."""
    found: dict[str, Any] = {}
    for info in pkgutil.iter_modules(cursor.v1.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"cursor.v1.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            found[service.full_name] = service
    return found


def servicer_classes() -> dict[str, type]:
    """Full service name -> the class in cursor_grpc/services/*.py implementing it."""
    found: dict[str, type] = {}
    for info in pkgutil.iter_modules(cursor_grpc.services.__path__):
        module = importlib.import_module(f"cursor_grpc.services.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__:
                continue
            for base in cls.__mro__[1:]:
                if base.__module__.startswith("cursor.v1.") and base.__name__.endswith("Servicer"):
                    full_name = f"cursor.v1.{base.__name__.removesuffix('Servicer')}"
                    assert full_name not in found, f"two servicers implement {full_name}"
                    found[full_name] = cls
    return found


def all_methods() -> Iterator[tuple[str, Any, type]]:
    servicers = servicer_classes()
    for name, service in sorted(service_descriptors().items()):
        for method in service.methods:
            yield name, method, servicers[name]


def declared() -> Iterator[tuple[str, Any, Access]]:
    """(service, method, access) of every RPC that has a declaration; the
    ones without are reported by test_every_rpc_method_declares_its_access."""
    for service, method, cls in all_methods():
        access = getattr(cls.__dict__.get(method.name), "__cursor_access__", None)
        if isinstance(access, Access):
            yield service, method, access


def test_discovery_finds_the_four_services() -> None:
    services = service_descriptors()
    assert {"cursor.v1.AuthService", "cursor.v1.ReaderService", "cursor.v1.ConsultantService",
            "cursor.v1.AdminService"} <= set(services)
    # Every service of the API is implemented, and the server registers each.
    assert set(servicer_classes()) == set(services)
    assert set(server.SERVICE_NAMES) == set(services)


def test_every_rpc_method_declares_its_access() -> None:
    missing = []
    for service, method, cls in all_methods():
        implementation = cls.__dict__.get(method.name)
        if implementation is None or not isinstance(getattr(implementation, "__cursor_access__", None), Access):
            missing.append(f"{service}.{method.name}")
    assert not missing, f"RPC methods without @rpc(Access...): {missing}"


def test_no_decorated_method_is_outside_the_api() -> None:
    """A declared method that no RPC routes to is a typo or a leftover."""
    descriptors = service_descriptors()
    for service, cls in servicer_classes().items():
        rpcs = {m.name for m in descriptors[service].methods}
        declared = {name for name, value in vars(cls).items() if hasattr(value, "__cursor_access__")}
        assert declared <= rpcs, (service, declared - rpcs)


def test_declared_access_matches_each_service() -> None:
    for service, method, access in declared():
        where = f"{service}.{method.name}"
        if service == "cursor.v1.AuthService":
            expected = Access.PUBLIC if method.name in {"RegisterReader", "Login"} else Access.SIGNED_IN
            assert access is expected, where
        elif service == "cursor.v1.ReaderService":
            assert access is Access.READER, where
        elif service == "cursor.v1.ConsultantService":
            assert access in {Access.CONSULTANT, Access.SUPERVISOR, Access.ADMIN}, where
        elif service == "cursor.v1.AdminService":
            # Assignment is a supervisor's job too (the service comment says so); the rest is admin's.
            expected = Access.SUPERVISOR if method.name in {"AssignReader", "UnassignReader"} else Access.ADMIN
            assert access is expected, where
        else:
            assert access is not Access.PUBLIC, f"{where}: a new service should not start out public"


# --- Enforcement on the running server --------------------------------------------------------------------------------


def call(h: Harness, service: str, method: Any, metadata: tuple[tuple[str, str], ...]) -> None:
    """Call any RPC generically with an empty request (or an empty stream)."""
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    path = f"/{service}/{method.name}"
    kwargs: dict[str, Any] = {"request_serializer": request_cls.SerializeToString,
                              "response_deserializer": response_cls.FromString}
    if method.client_streaming and method.server_streaming:
        for _ in h.channel.stream_stream(path, **kwargs)(iter([request_cls()]), metadata=metadata, timeout=10):
            pass
    elif method.client_streaming:
        h.channel.stream_unary(path, **kwargs)(iter([request_cls()]), metadata=metadata, timeout=10)
    elif method.server_streaming:
        for _ in h.channel.unary_stream(path, **kwargs)(request_cls(), metadata=metadata, timeout=10):
            pass
    else:
        h.channel.unary_unary(path, **kwargs)(request_cls(), metadata=metadata, timeout=10)


def test_server_enforces_every_declaration(h: Harness) -> None:
    reader = h.new_reader()
    consultant = h.new_consultant()
    admin = h.admin()
    callers = {"reader": reader.md, "consultant": consultant.md, "admin": admin.md}
    principals = {
        "reader": principal("reader", "reader"),
        "consultant": principal("consultant", "consultant"),
        "admin": principal("consultant", "admin"),
    }
    checked = 0
    for service, method, access in declared():
        where = f"{service}.{method.name}"
        if access is Access.PUBLIC:
            continue
        error = rpc_error(lambda s=service, m=method: call(h, s, m, ()))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (where, error.code())
        assert error_reason(error) == "MISSING_TOKEN", where
        error = rpc_error(lambda s=service, m=method: call(  # type: ignore[misc]
            h, s, m, (("authorization", "Bearer not-a-real-token"),)))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, where
        for who, metadata in callers.items():
            try:
                check_access(principals[who], access)
            except PermissionDenied:
                error = rpc_error(lambda s=service, m=method, md=metadata: call(h, s, m, md))  # type: ignore[misc]
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (where, who, error.code())
                checked += 1
    assert checked >= 10


def test_public_rpcs_need_no_token(h: Harness) -> None:
    for service, method, access in declared():
        if access is not Access.PUBLIC:
            continue
        # An empty request is invalid, but it gets past authentication.
        error = rpc_error(lambda s=service, m=method: call(h, s, m, ()))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method.name, error.code())


# --- check_access ---------------------------------------------------------------------------------------------------


def principal(kind: str, role: str) -> Principal:
    return Principal("session", kind, "account", role, b"\0" * 32, 0, 0, 0, 0, 0)


ALLOWED: dict[tuple[str, str], set[Access]] = {
    ("reader", "reader"): {Access.PUBLIC, Access.SIGNED_IN, Access.READER},
    ("consultant", "consultant"): {Access.PUBLIC, Access.SIGNED_IN, Access.CONSULTANT},
    ("consultant", "supervisor"): {Access.PUBLIC, Access.SIGNED_IN, Access.CONSULTANT, Access.SUPERVISOR},
    ("consultant", "admin"): {Access.PUBLIC, Access.SIGNED_IN, Access.CONSULTANT, Access.SUPERVISOR, Access.ADMIN},
}


@pytest.mark.parametrize(("kind", "role"), list(ALLOWED), ids=[role for _, role in ALLOWED])
@pytest.mark.parametrize("access", list(Access), ids=[a.name for a in Access])
def test_check_access(kind: str, role: str, access: Access) -> None:
    who = principal(kind, role)
    if access in ALLOWED[(kind, role)]:
        check_access(who, access)
        return
    with pytest.raises(PermissionDenied) as denied:
        check_access(who, access)
    expected = "READER_ONLY" if access is Access.READER else "CONSULTANT_ONLY" if kind == "reader" else "ROLE_TOO_LOW"
    assert denied.value.reason == expected
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
    if expected == "ROLE_TOO_LOW":
        assert role in denied.value.message, "the message tells the caller their role"
