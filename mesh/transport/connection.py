"""Connecting to NATS the same way everywhere."""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client as NATS

from mesh.config import NatsSettings

log = logging.getLogger(__name__)


async def connect(settings: NatsSettings, name: str) -> NATS:
    """Connect to the configured NATS servers; reconnect forever once connected."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats (%s): %s", name, exc)

    async def on_disconnected() -> None:
        log.warning("nats (%s): disconnected", name)

    async def on_reconnected() -> None:
        log.info("nats (%s): reconnected", name)

    servers = [url.strip() for url in settings.url.split(",") if url.strip()]
    return await nats.connect(
        servers=servers,
        name=name,
        connect_timeout=settings.connect_timeout_s,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )
