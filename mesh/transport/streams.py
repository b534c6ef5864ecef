"""JetStream streams created the same way everywhere: with the cluster's replica count.

Every stream and bucket of the mesh and its engines (KV buckets through
:func:`mesh.transport.kv.open_bucket`, counters, the audit and ledger streams, the engines'
queues and histories) is created through :func:`ensure_stream` or takes its replica count
from :func:`replicas_of`. The count is one setting, ``nats.replicas``, carried by the
connection that :func:`mesh.transport.connection.connect` made from it, so no part of the
mesh has a replicas setting of its own. A stream that exists with fewer replicas (made
before the cluster grew) is raised to the configured count by an update, which JetStream
allows; one with more is left alone (lowering is an operator's decision).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig, StreamInfo
from nats.js.errors import NotFoundError

__all__ = ["ensure_replicas", "ensure_stream", "replicas_of"]

log = logging.getLogger(__name__)


def replicas_of(nc: NATS) -> int:
    """The replica count for streams made over ``nc``: ``nats.replicas`` of the settings
    it was connected with (1 for a connection made without them)."""
    return int(getattr(nc, "replicas", 1))


async def _raise_replicas(nc: NATS, info: StreamInfo, replicas: int) -> StreamInfo:
    current = info.config
    if (current.num_replicas or 1) >= replicas:
        return info
    log.info("stream %s: raising replicas from %s to %s (nats.replicas)", current.name,
             current.num_replicas or 1, replicas)
    current.num_replicas = replicas
    return await nc.jetstream().update_stream(current)


async def ensure_replicas(nc: NATS, stream: str) -> StreamInfo:
    """Raise existing ``stream``'s replicas to :func:`replicas_of` ``nc`` when it has fewer
    (for streams made by nats-py's own helpers: KV buckets, object stores)."""
    info = await nc.jetstream().stream_info(stream)
    return await _raise_replicas(nc, info, replicas_of(nc))


async def ensure_stream(nc: NATS, config: StreamConfig, *,
                        update: Callable[[StreamConfig], bool] | None = None) -> StreamInfo:
    """Stream ``config.name`` with :func:`replicas_of` ``nc`` replicas: created with
    ``config`` when it does not exist; else its replicas raised to that count when it has
    fewer, and ``update(current_config)`` applied (it edits the current configuration in
    place and returns whether it changed anything; the stream is updated when it did).
    Another process creating the stream at the same moment is not an error."""
    assert config.name is not None
    replicas = replicas_of(nc)
    config.num_replicas = replicas
    js = nc.jetstream()
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        try:
            return await js.add_stream(config)
        except Exception as exc:  # another process created it first, or a real refusal
            try:
                info = await js.stream_info(config.name)
            except NotFoundError:
                raise exc from None
    if update is not None and update(info.config):
        info.config.num_replicas = max(info.config.num_replicas or 1, replicas)
        return await js.update_stream(info.config)
    return await _raise_replicas(nc, info, replicas)
