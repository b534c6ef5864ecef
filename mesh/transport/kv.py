"""JetStream key-value buckets: open (creating on first use) and mirror into memory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from mesh.errors import Reason, Unavailable
from mesh.transport.connection import MeshConnection
from mesh.transport.streams import (
    CREATE_TIMEOUT_S,
    created_elsewhere,
    find_stream,
    has_leader,
    replicas_of,
    wait_until_served,
)

__all__ = ["ONE_SHOT_WATCH_S", "SNAPSHOT_IDLE_S", "KeyValue", "Mirror", "claim", "latest",
           "open_bucket", "snapshot"]

log = logging.getLogger(__name__)


async def open_bucket(nc: NATS, name: str, *, description: str, history: int = 1,
                      ttl: float | None = None, memory: bool = False) -> KeyValue:
    """Bucket ``name``, created with this configuration when it does not exist yet, with
    ``nats.replicas`` replicas (:func:`mesh.transport.streams.replicas_of`); an existing
    bucket with fewer is raised to that count.

    Reads are direct gets (``allow_direct``): any server holding the bucket answers with
    the raw message, where the stream API answers through the stream's leader in JSON with
    the value in base64. A bucket created without it is given it.
    """
    js = nc.jetstream()
    replicas = replicas_of(nc)
    info = await find_stream(nc, f"KV_{name}")  # a bucket's stream (NATS ADR-8)
    if info is not None:
        current = info.config
        if not current.allow_direct or (current.num_replicas or 1) < replicas:
            current.allow_direct = True
            current.num_replicas = max(current.num_replicas or 1, replicas)
            await js.update_stream(current)
        if not has_leader(info):
            await wait_until_served(nc, f"KV_{name}")  # another process created it just now
        return await js.key_value(name)
    config = KeyValueConfig(bucket=name, description=description, history=history, ttl=ttl,
                            storage=StorageType.MEMORY if memory else StorageType.FILE,
                            replicas=replicas, direct=True)
    try:
        bucket = await nc.jetstream(timeout=CREATE_TIMEOUT_S).create_key_value(config)
    except Exception as exc:  # another process created it first, or a real refusal
        await created_elsewhere(nc, f"KV_{name}", exc)
        bucket = await js.key_value(name)
    await wait_until_served(nc, f"KV_{name}")
    return bucket


ONE_SHOT_WATCH_S = 5.0
"""How long the server keeps a one-shot watch's consumer after the watch stops. nats-py's
default is 5 minutes, and nats-server refuses a stream's 1001st consumer: a sweep every
0.2 s on three nodes reached that in about a minute, and every sweep and listing failed."""
SNAPSHOT_IDLE_S = 5.0
"""How long :func:`snapshot` waits for the next entry before it gives up."""


async def snapshot(bucket: KeyValue, pattern: str = ">", *,
                   idle_s: float = SNAPSHOT_IDLE_S) -> list[tuple[str, bytes]]:
    """The current keys and values of ``bucket`` whose keys match ``pattern`` (deleted,
    purged and empty ones left out), read by one watch that stops at the end of the
    current values.

    The entries of a read come back to back; when the next one does not come within
    ``idle_s`` (the watch's consumer lost in a nats-server restart: nats-py's watcher
    would wait for ever), this raises ``Unavailable`` and the caller may try again."""
    watcher: Any = await bucket.watch(pattern, ignore_deletes=True,  # untyped in nats-py
                                      inactive_threshold=ONE_SHOT_WATCH_S)
    found: list[tuple[str, bytes]] = []
    try:
        while True:
            try:
                entry = await watcher.updates(timeout=idle_s)
            except nats.errors.TimeoutError:
                raise Unavailable(
                    f"bucket {bucket._name}: its entries stopped coming after {len(found)} "
                    f"(none for {idle_s:g} s); retry", reason=Reason.STORE_UNAVAILABLE,
                    metadata={"bucket": bucket._name}) from None
            if entry is None:  # the current values are all delivered
                return found
            if entry.operation not in ("DEL", "PURGE") and entry.value:
                found.append((entry.key, entry.value))
    finally:
        await watcher.stop()


async def latest(nc: MeshConnection, bucket: str, key: str,
                 timeout: float = 5.0) -> tuple[bytes, int] | None:
    """``key``'s value and revision in ``bucket`` (one opened by :func:`open_bucket`), by
    one direct get; None when it has none, or was deleted or purged."""
    found = await nc.direct_get(f"KV_{bucket}", f"$KV.{bucket}.{key}", timeout)
    if found is None:
        return None
    data, headers = found
    if headers.get("KV-Operation") in ("DEL", "PURGE"):
        return None
    return data, int(headers["Nats-Sequence"])


CLAIM_ATTEMPTS = 20
CLAIM_PAUSE_S = 0.05


async def claim(nc: MeshConnection, bucket: KeyValue, name: str, key: str,
                value: bytes) -> bytes | None:
    """Write ``value`` under ``key`` of bucket ``name`` only if the key has never been
    written (``last=0``); None when this call wrote it, else the value it already has.

    For keys that are never deleted (aged out whole), such as idempotency keys. Unlike
    nats-py's ``create``, a conflict is followed by this module's own read, and a read
    that finds nothing is tried again: direct gets may be answered by any replica, and one
    that is behind its leader says "no such key" right after another writer's claim won
    (seen under a partition as INTERNAL answers). Raises ``Unavailable`` when the replicas
    keep disagreeing."""
    for _ in range(CLAIM_ATTEMPTS):
        try:
            await bucket.update(key, value, last=0)
            return None
        except KeyWrongLastSequenceError:
            found = await latest(nc, name, key)
            if found is not None:
                return found[0]
            await asyncio.sleep(CLAIM_PAUSE_S)  # a replica behind, or aged out: again
    raise Unavailable(f"key {key!r} of bucket {name} could not be claimed or read: its "
                      "replicas disagree; retry", reason=Reason.STORE_UNAVAILABLE)


class Mirror:
    """Every key of a bucket, kept current by a watch.

    ``on_put(key, value)`` and ``on_delete(key)`` run on the loop for each change;
    :meth:`start` returns once the bucket's current contents have been delivered.

    Given the connection, the watch starts again after each reconnection (the current
    values are delivered again): a restarted nats-server forgets the watch's consumer, and
    nats-py would notice only after missing its heartbeats for many seconds.
    """

    def __init__(self, bucket: KeyValue, on_put: Callable[[str, bytes], None],
                 on_delete: Callable[[str], None], nc: NATS | None = None) -> None:
        self._bucket = bucket
        self._on_put = on_put
        self._on_delete = on_delete
        self._nc = nc
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._restart: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 5.0) -> None:
        await self._begin()
        listeners = getattr(self._nc, "reconnect_listeners", None)
        if listeners is not None:
            listeners.append(self._reconnected)
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def _begin(self) -> None:
        self._watcher = await self._bucket.watchall()
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _end(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()

    def _reconnected(self) -> None:
        if self._restart is None or self._restart.done():
            self._restart = asyncio.get_running_loop().create_task(self._watch_again())

    async def _watch_again(self) -> None:
        await self._end()
        for delay in (0.0, 0.5, 1.0, 2.0, 4.0):  # JetStream may need a moment after a restart
            await asyncio.sleep(delay)
            try:
                await self._begin()
                log.info("watch of bucket %s started again after a reconnection",
                         self._bucket._name)
                return
            except Exception as exc:
                log.warning("watch of bucket %s could not start again yet: %s",
                            self._bucket._name, exc)
        log.error("watch of bucket %s did not start again; nats-py's own recovery is left",
                  self._bucket._name)

    async def stop(self) -> None:
        listeners = getattr(self._nc, "reconnect_listeners", None)
        if listeners is not None and self._reconnected in listeners:
            listeners.remove(self._reconnected)
        if self._restart is not None:
            self._restart.cancel()
        await self._end()

    async def _watch(self) -> None:
        assert self._watcher is not None
        async for entry in self._watcher:
            if entry is None:
                self._ready.set()
                continue
            try:
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    self._on_delete(entry.key)
                else:
                    self._on_put(entry.key, entry.value)
            except Exception:
                log.exception("ignoring bad entry %s in bucket", entry.key)
