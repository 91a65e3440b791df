"""A bare grpc.aio server: the baseline of the unary benchmark.

It serves one unary method, `/bench.v1.Echo/Echo`, that takes any bytes and
answers with a fixed reply (by default the bytes it was given). The bench
passes a real serialized `RecordInteractionResponse` as the reply, so the
client (the same one that drives the real server) sends and parses exactly the
same messages; only the server's work differs. Same event loop (uvloop when
installed) and the same channel options as the real server.

    python tools/echo_server.py --listen 127.0.0.1:0 [--reply-hex HEX]

Prints `serving on HOST:PORT` on stderr once it accepts calls; stops on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import grpc
from grpc import aio

from cursor_grpc.config import Settings
from cursor_grpc.server import server_options

SERVICE = "bench.v1.Echo"
METHOD = f"/{SERVICE}/Echo"


def _handler(reply: bytes | None) -> grpc.GenericRpcHandler:
    async def echo(request: bytes, context: aio.ServicerContext) -> bytes:  # type: ignore[type-arg]
        return request if reply is None else reply

    # No (de)serializers: bytes in, bytes out.
    return grpc.method_handlers_generic_handler(SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(echo)})


async def serve(listen: str, reply: bytes | None) -> None:
    server = aio.server(options=server_options(Settings()))
    server.add_generic_rpc_handlers((_handler(reply),))
    port = server.add_insecure_port(listen)
    await server.start()
    host = listen.rsplit(":", 1)[0]
    print(f"echo serving on {host}:{port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--reply-hex", default="", help="fixed reply (hex); default: echo the request")
    args = parser.parse_args(argv)
    reply = bytes.fromhex(args.reply_hex) if args.reply_hex else None
    try:
        import uvloop
    except ImportError:  # pragma: no cover - same fallback as the real server
        asyncio.run(serve(args.listen, reply))
    else:
        uvloop.run(serve(args.listen, reply))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
