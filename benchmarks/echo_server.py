"""The baseline: a plain ``grpc.aio`` server for ``revo.echo.v1.EchoService/Echo``, no mesh.

Run as ``python -m benchmarks.echo_server --address 127.0.0.1:PORT``. It prints one line,
``echo server listening on HOST:PORT loop=<loop>``, and serves until SIGTERM or SIGINT.
It runs on uvloop when uvloop imports, as the mesh's processes do (``mesh.runtime.process``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

import grpc

from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc


class PlainEcho(echo_pb2_grpc.EchoServiceServicer):
    """Answers Echo with the request's payload; the other methods are not part of the baseline."""

    async def Echo(self, request: echo_pb2.EchoRequest,
                   context: Any) -> echo_pb2.EchoResponse:
        return echo_pb2.EchoResponse(payload=request.payload)

    async def Count(self, request: echo_pb2.CountRequest,
                    context: Any) -> AsyncIterator[echo_pb2.CountResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the baseline serves Echo only")
        yield echo_pb2.CountResponse()  # unreachable: makes this an async generator

    async def Stats(self, request: echo_pb2.StatsRequest,
                    context: Any) -> echo_pb2.StatsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the baseline serves Echo only")
        raise AssertionError("unreachable: abort raises")


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: which event loop implementation runs."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run_loop(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on uvloop when it imports, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(main())
    else:
        uvloop.run(main())


async def serve_until_signal(server: grpc.aio.Server, address: str, label: str) -> None:
    """Listen on ``address``, print ``<label> listening on HOST:PORT loop=<loop>``, and serve
    until SIGTERM or SIGINT."""
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    loop = asyncio.get_running_loop()
    host = address.rsplit(":", 1)[0]
    print(f"{label} listening on {host}:{port} loop={loop_name(loop)}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop(0.5)


async def serve(address: str) -> None:
    # Same server options as the gateway's, so the baseline differs only by the mesh.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    echo_pb2_grpc.add_EchoServiceServicer_to_server(PlainEcho(), server)
    await serve_until_signal(server, address, "echo server")


def serve_main(module: str, doc: str | None,
               serve: Callable[[str], Coroutine[Any, Any, None]],
               argv: Sequence[str] | None = None) -> int:
    """The command line of a loopback server module: ``python -m <module> --address
    HOST:PORT`` runs ``serve(address)`` on :func:`run_loop`."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}",
                                     description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--address", default="127.0.0.1:0", help="host:port to listen on")
    args = parser.parse_args(argv)
    run_loop(lambda: serve(args.address))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return serve_main("benchmarks.echo_server", __doc__, serve, argv)


if __name__ == "__main__":
    raise SystemExit(main())
