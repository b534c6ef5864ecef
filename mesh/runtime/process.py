"""Running a node or a gateway as a process: one event loop, stopped cleanly by SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from mesh.config import MeshConfig

log = logging.getLogger(__name__)


def _run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(main())
    else:
        uvloop.run(main())


async def _until_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("stopping on signal")


def run_node(config: MeshConfig) -> int:
    """Run a node until SIGTERM/SIGINT; then drain and return 0."""
    from mesh.runtime.node import Node

    async def main() -> None:
        node = Node(config)
        try:
            await node.start()
        except BaseException:  # e.g. NATS unreachable: stop the actors, or they keep us alive
            await node.stop()
            raise
        try:
            await _until_signal()
        finally:
            await node.stop()

    _run(main)
    return 0


def run_gateway(config: MeshConfig) -> int:
    """Run a gateway (with co-located engines if ``gateway.colocate``) until SIGTERM/SIGINT."""
    from mesh.gateway import Gateway
    from mesh.runtime.node import Node

    async def main() -> None:
        gateway = Gateway(config, node=Node(config) if config.gateway.colocate else None)
        try:
            await gateway.start()
        except BaseException:
            await gateway.stop(grace=0)
            raise
        print(f"gateway listening on {gateway.address}", flush=True)
        try:
            await _until_signal()
        finally:
            await gateway.stop()

    _run(main)
    return 0
