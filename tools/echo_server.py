"""A bare grpc.aio server: the baseline of the unary benchmark.

It serves one unary method, `/bench.v1.Echo/Echo`, that takes any bytes and
answers with a fixed reply (by default the bytes it was given). The bench
passes a real serialized `RecordInteractionResponse` as the reply, so the
client (the same one that drives the real server) sends and parses exactly the
same messages; only the server's work differs. Same event loop (uvloop when
installed) and the same channel options as the real server.

    python tools/echo_server.py --listen 127.0.0.1:0 [--reply-hex HEX] [--handoff]

Prints `serving on HOST:PORT` on stderr once it accepts calls; stops on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import sys
import threading
from typing import Any

import grpc
from grpc import aio

from cursor_grpc.config import Settings
from cursor_grpc.server import server_options, wait_for_stop_signal

SERVICE = "bench.v1.Echo"
METHOD = f"/{SERVICE}/Echo"


def _handoff_worker(jobs: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None]) -> None:
    """Resolve each future from this thread, as the store's writer thread does."""
    while (job := jobs.get()) is not None:
        loop, future = job
        loop.call_soon_threadsafe(future.set_result, None)


def _handler(reply: bytes | None, handoff: bool) -> grpc.GenericRpcHandler[Any, Any]:
    jobs: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None] = queue.SimpleQueue()
    if handoff:
        threading.Thread(target=_handoff_worker, args=(jobs,), name="echo-handoff", daemon=True).start()

    async def echo(request: bytes, context: aio.ServicerContext) -> bytes:  # type: ignore[type-arg]
        if handoff:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            jobs.put((loop, future))
            await future
        return request if reply is None else reply

    # No (de)serializers: bytes in, bytes out.
    return grpc.method_handlers_generic_handler(SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(echo)})


async def serve(listen: str, reply: bytes | None, handoff: bool = False) -> None:
    server = aio.server(options=server_options(Settings()))
    server.add_generic_rpc_handlers((_handler(reply, handoff),))
    port = server.add_insecure_port(listen)
    await server.start()
    host = listen.rsplit(":", 1)[0]
    print(f"echo serving on {host}:{port}", file=sys.stderr, flush=True)
    await wait_for_stop_signal()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--reply-hex", default="", help="fixed reply (hex); default: echo the request")
    parser.add_argument("--handoff", action="store_true",
                        help="await a future resolved by another thread before answering (the store's writer "
                             "hand-off, without the database): what the suspension alone costs")
    args = parser.parse_args(argv)
    reply = bytes.fromhex(args.reply_hex) if args.reply_hex else None
    try:
        import uvloop
    except ImportError:  # pragma: no cover - same fallback as the real server
        asyncio.run(serve(args.listen, reply, args.handoff))
    else:
        uvloop.run(serve(args.listen, reply, args.handoff))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
