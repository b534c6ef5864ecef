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

import asyncio
import logging
import time
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig, StreamInfo
from nats.js.errors import NotFoundError

__all__ = ["created_elsewhere", "ensure_replicas", "ensure_stream", "find_stream",
           "replicas_of", "wait_for_leader"]

log = logging.getLogger(__name__)

LEADER_TIMEOUT_S = 10.0
LOOKUP_TIMEOUT_S = 20.0
LOOKUP_ATTEMPT_S = 5.0
CREATE_TIMEOUT_S = 1.0
"""How long a create request waits for its answer. In a cluster, the meta leader answers
only the first of identical create requests in flight (measured: three nodes creating the
same stream at once, two waited out nats-py's 5 s and failed); the others find the stream
made by polling (:func:`created_elsewhere`)."""


async def created_elsewhere(nc: NATS, stream: str, error: Exception,
                            timeout: float = LEADER_TIMEOUT_S) -> StreamInfo:
    """After creating ``stream`` failed with ``error``: its info when another process made
    it (waiting up to ``timeout`` when the request went unanswered), else ``error``."""
    unanswered = isinstance(error, TimeoutError)  # nats-py's timeout is one too
    deadline = time.monotonic() + (timeout if unanswered else 0.0)
    js = nc.jetstream()
    while True:
        try:
            return await js.stream_info(stream)
        except NotFoundError:
            if time.monotonic() >= deadline:
                raise error from None
        await asyncio.sleep(0.05)


async def find_stream(nc: NATS, stream: str, *, timeout: float = LOOKUP_TIMEOUT_S,
                      attempt_s: float = LOOKUP_ATTEMPT_S) -> StreamInfo | None:
    """``stream``'s info, or None when it does not exist.

    A lookup that JetStream leaves unanswered for ``attempt_s`` is asked again, until
    ``timeout``: a cluster's meta leader busy or being elected answers late, and a process
    starting then (seen: a gateway asking for the registry bucket while the nodes created
    theirs) would otherwise exit on its first question. TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await nc.jetstream(timeout=attempt_s).stream_info(stream)
        except NotFoundError:
            return None
        except TimeoutError:  # nats-py's timeout is one too
            if time.monotonic() + attempt_s > deadline:
                raise
            log.warning("stream %s: JetStream left a lookup unanswered for %g s; asking "
                        "again", stream, attempt_s)


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


async def wait_for_leader(nc: NATS, stream: str,
                          timeout: float = LEADER_TIMEOUT_S) -> StreamInfo:
    """``stream``'s info once it has a leader. A replicated stream just created elects
    its leader a moment later, and until then a publish to it finds no responders; a
    stream of one replica has none to wait for. TimeoutError after ``timeout``."""
    js = nc.jetstream()
    deadline = time.monotonic() + timeout
    while True:
        info = await js.stream_info(stream)
        if _led(info):
            return info
        if time.monotonic() >= deadline:
            raise TimeoutError(f"stream {stream} has no leader after {timeout:g} s")
        await asyncio.sleep(0.05)


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
    info = await find_stream(nc, config.name)
    if info is None:
        try:
            await nc.jetstream(timeout=CREATE_TIMEOUT_S).add_stream(config)
            return await wait_for_leader(nc, config.name)
        except Exception as exc:  # another process created it first, or a real refusal
            info = await created_elsewhere(nc, config.name, exc)
    if update is not None and update(info.config):
        info.config.num_replicas = max(info.config.num_replicas or 1, replicas)
        info = await js.update_stream(info.config)
    else:
        info = await _raise_replicas(nc, info, replicas)
    if not _led(info):  # another process created it a moment ago
        info = await wait_for_leader(nc, config.name)
    return info


def _led(info: StreamInfo) -> bool:
    return (info.config.num_replicas or 1) <= 1 or bool(info.cluster and info.cluster.leader)
