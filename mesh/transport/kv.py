"""JetStream key-value buckets: open (creating on first use) and mirror into memory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

__all__ = ["KeyValue", "Mirror", "open_bucket"]

log = logging.getLogger(__name__)


async def open_bucket(nc: NATS, name: str, *, description: str, history: int = 1,
                      ttl: float | None = None, memory: bool = False,
                      replicas: int = 1) -> KeyValue:
    """Bucket ``name``, created with this configuration when it does not exist yet."""
    js = nc.jetstream()
    try:
        return await js.key_value(name)
    except (BucketNotFoundError, NotFoundError):
        pass
    config = KeyValueConfig(bucket=name, description=description, history=history, ttl=ttl,
                            storage=StorageType.MEMORY if memory else StorageType.FILE,
                            replicas=replicas)
    try:
        return await js.create_key_value(config)
    except Exception:  # another process created it first
        with contextlib.suppress(Exception):
            return await js.key_value(name)
        raise


class Mirror:
    """Every key of a bucket, kept current by a watch.

    ``on_put(key, value)`` and ``on_delete(key)`` run on the loop for each change;
    :meth:`start` returns once the bucket's current contents have been delivered.
    """

    def __init__(self, bucket: KeyValue, on_put: Callable[[str, bytes], None],
                 on_delete: Callable[[str], None]) -> None:
        self._bucket = bucket
        self._on_put = on_put
        self._on_delete = on_delete
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self, timeout: float = 5.0) -> None:
        self._watcher = await self._bucket.watchall()
        self._task = asyncio.get_running_loop().create_task(self._watch())
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()

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
