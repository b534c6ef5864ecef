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
from nats.errors import NoRespondersError
from nats.js.api import StreamConfig, StreamInfo
from nats.js.errors import NotFoundError

__all__ = ["created_elsewhere", "ensure_replicas", "ensure_stream", "find_stream",
           "has_leader", "replicas_of", "wait_until_served"]

log = logging.getLogger(__name__)

LEADER_TIMEOUT_S = 10.0
LOOKUP_TIMEOUT_S = 20.0
LOOKUP_ATTEMPT_S = 5.0
PROBE_TIMEOUT_S = 1.0
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


async def wait_until_served(nc: NATS, stream: str,
                            timeout: float = LEADER_TIMEOUT_S) -> StreamInfo:
    """``stream``'s info once a publish from ``nc`` reaches it. A replicated stream just
    created elects its leader a moment later, and in a cluster even a one-replica stream
    is set up, and its subjects routed, a moment after its create was answered (seen in
    CI: the first put to a one-replica bucket just made on a three-server cluster found
    "no responders"). Until then, a publish to the stream finds no responders.

    The check is one probe publish to a subject of the stream that expects a last sequence
    no stream has, so JetStream answers it with a refusal and stores nothing; a stream
    without subjects (a mirror) is not probed. TimeoutError after ``timeout``."""
    js = nc.jetstream()
    deadline = time.monotonic() + timeout
    while True:
        info = await js.stream_info(stream)
        if has_leader(info) and await _reached(nc, info):
            return info
        if time.monotonic() >= deadline:
            raise TimeoutError(f"stream {stream} is not served to this connection after "
                               f"{timeout:g} s (no leader yet, or its subjects unknown to "
                               "this server)")
        await asyncio.sleep(0.05)


_PROBE_TOKEN = "_revo_probe"
"""The token that stands for each wildcard of a stream's subject in the probe."""
_NEVER = str(2**63 - 1)
"""A stream's last sequence that no stream reaches: a publish expecting it is refused."""


def _probe_subject(info: StreamInfo) -> str | None:
    """A subject of the stream for :func:`wait_until_served`'s probe; None without any."""
    subjects = info.config.subjects or []
    if not subjects:
        return None
    return ".".join(_PROBE_TOKEN if token in ("*", ">") else token
                    for token in subjects[0].split("."))


async def _reached(nc: NATS, info: StreamInfo) -> bool:
    subject = _probe_subject(info)
    if subject is None:
        return True
    try:
        await nc.request(subject, b"", timeout=PROBE_TIMEOUT_S,
                         headers={"Nats-Expected-Last-Sequence": _NEVER})
    except (NoRespondersError, TimeoutError):  # nats-py's timeout is one too
        return False
    return True  # a refusal (or any answer): the stream heard it


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
            return await wait_until_served(nc, config.name)
        except Exception as exc:  # another process created it first, or a real refusal
            info = await created_elsewhere(nc, config.name, exc)
    if update is not None and update(info.config):
        info.config.num_replicas = max(info.config.num_replicas or 1, replicas)
        info = await js.update_stream(info.config)
    else:
        info = await _raise_replicas(nc, info, replicas)
    if not has_leader(info):  # another process created it a moment ago
        info = await wait_until_served(nc, config.name)
    return info


def has_leader(info: StreamInfo) -> bool:
    """Whether the stream has a leader: in a cluster even a one-replica stream is placed on
    one server, which the info names once it serves the stream."""
    if info.cluster is not None:
        return bool(info.cluster.leader)
    return (info.config.num_replicas or 1) <= 1
