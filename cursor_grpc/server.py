"""Building, starting and stopping the grpc.aio server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import grpc
from grpc import aio
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cursor.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    auth_service_pb2,
    auth_service_pb2_grpc,
    consultant_service_pb2,
    consultant_service_pb2_grpc,
    reader_service_pb2,
    reader_service_pb2_grpc,
)
from cursor_grpc import metrics, reflection
from cursor_grpc.app import App
from cursor_grpc.config import ConfigError, Settings
from cursor_grpc.errors import Unavailable
from cursor_grpc.request_guard import RequestGuard
from cursor_grpc.services.admin import AdminService
from cursor_grpc.services.auth import AuthService
from cursor_grpc.services.consultant import ConsultantService
from cursor_grpc.services.reader import ReaderService

log = logging.getLogger("cursor.server")

SERVICE_NAMES = (
    auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
    reader_service_pb2.DESCRIPTOR.services_by_name["ReaderService"].full_name,
    consultant_service_pb2.DESCRIPTOR.services_by_name["ConsultantService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Message size and keepalive, chosen rather than defaulted: the largest
    request is an upload chunk of 500 interactions (gRPC buffers a whole
    message before any code of ours sees it, so no more than that), and dead
    peers of long streams must be noticed."""
    limits = settings.limits
    return [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_send_message_length", limits.max_response_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", 0),
    ]


def _serialize(message: Any) -> bytes:
    """Stream messages arrive as bytes already assembled from events that
    were serialized once for every watcher; anything else is a message."""
    if isinstance(message, bytes):
        return message
    serialized: bytes = message.SerializeToString()
    return serialized


class _GuardedServices:
    """Stands in for the server while generated code registers a service
    (the four of cursor.v1, and health): every request passes the request
    guard (size cap, decoding that never raises), and server-streaming
    methods accept pre-encoded bytes. Reflection registers itself on the
    server, and is not guarded."""

    def __init__(self, server: aio.Server, guard: RequestGuard) -> None:
        self._server = server
        self._guard = guard

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: `add_registered_method_handlers` registers both."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        patched = {}
        for name, handler in handlers.items():
            guarded = self._guard.wrap(service, name, handler)
            if guarded.response_streaming and not guarded.request_streaming:
                guarded = guarded._replace(response_serializer=_serialize)
            patched[name] = guarded
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, patched),))
        self._server.add_registered_method_handlers(service, patched)  # type: ignore[attr-defined]


@dataclass
class RunningServer:
    server: aio.Server
    app: App
    health: health_aio.HealthServicer
    port: int

    # The drain before grpc shuts down: until no RPC has finished for the
    # quiet interval, for at most `drain_seconds` (and never past the grace).
    drain_seconds: ClassVar[float] = 2.0
    drain_quiet_seconds: ClassVar[float] = 0.1

    async def stop(self, grace: float) -> None:
        """NOT_SERVING first, then a drain while calls are still served; then
        open streams end with UNAVAILABLE naming their resume cursor,
        in-flight RPCs finish and storage closes. What a client sees, and
        what it may retry: docs/operations.md ("Shutdown")."""
        await self.health.enter_graceful_shutdown()
        await self._drain(min(self.drain_seconds, grace))
        self.app.broadcaster.close_where(
            lambda s: True,
            Unavailable("the server is shutting down; reconnect to another or retry shortly", reason="SHUTTING_DOWN"),
        )
        await self.server.stop(grace)
        await self.app.close()

    async def _drain(self, longest: float) -> None:
        """grpc core ends every call still queued, not yet in a handler, when
        it shuts down with CANCELLED (grpc/grpc#41785), which a client cannot
        tell from its own cancellation. Clients and balancers that watch
        health stop sending at NOT_SERVING; serving on until the calls stop
        finishing lets what they queued end with a real answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + longest
        finished = self._rpcs_finished()
        while loop.time() < deadline:
            await asyncio.sleep(min(self.drain_quiet_seconds, max(0.0, deadline - loop.time())))
            before, finished = finished, self._rpcs_finished()
            if finished == before:
                return

    @staticmethod
    def _rpcs_finished() -> float:
        """cursor.v1 RPCs finished so far, in this process."""
        return metrics.rpcs_finished()


async def start_server(settings: Settings) -> RunningServer:
    """Start serving `settings.listen` (port 0 picks a free port)."""
    app = App(settings)
    server = aio.server(options=server_options(settings))
    guarded = cast(aio.Server, _GuardedServices(server, RequestGuard(settings.limits)))
    auth_service_pb2_grpc.add_AuthServiceServicer_to_server(AuthService(app), guarded)
    reader_service_pb2_grpc.add_ReaderServiceServicer_to_server(ReaderService(app), guarded)
    consultant_service_pb2_grpc.add_ConsultantServiceServicer_to_server(ConsultantService(app), guarded)
    admin_service_pb2_grpc.add_AdminServiceServicer_to_server(AdminService(app), guarded)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, guarded)
    reflection.enable(server, (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name))
    try:
        if settings.tls_cert and settings.tls_key:
            credentials = grpc.ssl_server_credentials(
                [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
            )
            port = server.add_secure_port(settings.listen, credentials)
        else:
            port = server.add_insecure_port(settings.listen)
    except RuntimeError as error:
        await app.close()
        raise ConfigError(f"cannot listen on {settings.listen}: {error}") from error
    try:
        # Before the port serves: a refused metrics endpoint ends start-up
        # with nothing left running (a started grpc server outliving its loop
        # says "Event loop is closed").
        await app.start()
    except BaseException:
        await app.close()
        raise
    await server.start()
    # The store refused to open unless every migration is applied, so SERVING is honest.
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    _report_writer_failure(app, health_servicer)
    host = settings.listen.rsplit(":", 1)[0]
    log.info("cursor-grpc serving on %s:%d (%s); password hashing: %d threads at priority %s; "
             "GIL switch interval %g ms", host, port, "TLS" if settings.tls_cert else "plaintext",
             settings.auth.argon2_threads, app.passwords.priority, sys.getswitchinterval() * 1000)
    return RunningServer(server, app, health_servicer, port)


def _report_writer_failure(app: App, health: health_aio.HealthServicer) -> None:
    """A writer that stops can store nothing: say NOT_SERVING, so load
    balancers and orchestrators move traffic away and restart us."""
    loop = asyncio.get_running_loop()

    async def not_serving() -> None:
        for name in ("", *SERVICE_NAMES):
            await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    def stopped(error: BaseException) -> None:  # on the writer thread
        with contextlib.suppress(RuntimeError):  # loop closed: the process is ending anyway
            asyncio.run_coroutine_threadsafe(not_serving(), loop)

    app.store.on_failure(stopped)


async def wait_for_stop_signal() -> None:
    """Return once SIGTERM or SIGINT arrives."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def set_switch_interval(seconds: float) -> None:
    """Process-wide, so only the command line's server sets it (not a server
    embedded in another program, such as the tests')."""
    if not 0 < seconds <= 0.1:
        raise ConfigError(f"CURSOR_SWITCH_INTERVAL_SECONDS must be above 0 and at most 0.1, not {seconds:g}")
    sys.setswitchinterval(seconds)


async def serve_forever(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    set_switch_interval(settings.switch_interval_seconds)
    running = await start_server(settings)
    # What start-up made (modules, protobuf descriptors, the app) lives as
    # long as the process: freezing it keeps the collector's full passes,
    # which ingest triggers often, from walking it again and again
    # (they were a fifth of the batched upload's GIL time).
    gc.freeze()
    await wait_for_stop_signal()
    log.info("shutting down (grace %.1f s)", settings.grace_seconds)
    await running.stop(settings.grace_seconds)
    log.info("stopped; database closed")
