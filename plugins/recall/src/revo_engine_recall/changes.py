"""The change feed: JetStream stream ``REVO_RECALL``, one entry per write to Milvus.

A node writes Milvus first, then the change; every node (the writer included) applies the
feed to its in-process index in stream order. A change carries whole records (vectors
included), so applying one needs no Milvus round trip. Sequences are the feed's: a write
answers with its sequence, and a read given ``after_sequence`` waits until its node has
applied that far (read-your-writes on any node).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from mesh.errors import Unavailable
from mesh.transport.connection import MeshConnection
from mesh.transport.streams import ensure_stream
from revo_engine_recall.v1 import recall_pb2 as pb

__all__ = ["ChangeFeed"]

log = logging.getLogger(__name__)

FEED_HEARTBEAT_S = 1.0
"""Idle heartbeat of each node's feed consumer. nats-py rebuilds an ordered consumer after
two missed heartbeats: with its default of 5 s, a feed whose consumer was on a nats-server
that died stayed silent for 10 s or more, and every write (which answers once this node has
applied it) waited with it (the cluster benchmark's memory writes: 13 to 17 s)."""

STREAM = "REVO_RECALL"
_PART_BYTES = 512 * 1024
"""A change larger than this is published in parts (NATS bounds a message)."""


def _split(change: pb.Change) -> list[pb.Change]:
    if change.ByteSize() <= _PART_BYTES:
        return [change]
    parts: list[pb.Change] = []
    part = pb.Change(node=change.node)
    for record in change.upserts:
        if part.upserts and part.ByteSize() + record.ByteSize() > _PART_BYTES:
            parts.append(part)
            part = pb.Change(node=change.node)
        part.upserts.append(record)
    for start in range(0, len(change.deletes), 4096):
        part.deletes.extend(change.deletes[start:start + 4096])
        parts.append(part)
        part = pb.Change(node=change.node)
    if part.upserts or part.deletes:
        parts.append(part)
    return parts


class ChangeFeed:
    def __init__(self, nc: MeshConnection, collection: str, max_age_s: float) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.subject = f"revo.recall.changes.{collection}"
        self._max_age_s = max_age_s
        self.applied = 0
        """The last sequence this node applied."""
        self._advanced = asyncio.Condition()
        self._sub: object | None = None

    async def open(self) -> int:
        """Create the stream if needed; the last sequence in it now."""
        info = await ensure_stream(self.nc, StreamConfig(
            name=STREAM, subjects=["revo.recall.changes.>"], storage=StorageType.FILE,
            max_age=self._max_age_s,
            description="revo Perfect Recall: changes to apply to each node's index"))
        return int(info.state.last_seq)

    async def publish(self, change: pb.Change) -> int:
        """Append ``change``; its (last part's) sequence."""
        sequence = 0
        for part in _split(change):
            ack = await self.js.publish(self.subject, part.SerializeToString(), timeout=5.0)
            sequence = int(ack.seq)
        return sequence

    async def follow(self, after: int,
                     apply: Callable[[pb.Change, int], Awaitable[None]]) -> None:
        """Await ``apply(change, sequence)`` for every change after ``after``, in order."""
        self.applied = max(self.applied, after)

        async def deliver(msg: object) -> None:
            sequence = int(msg.metadata.sequence.stream)  # type: ignore[attr-defined]
            if sequence <= self.applied:
                return
            try:
                await apply(pb.Change.FromString(msg.data),  # type: ignore[attr-defined]
                            sequence)
            except Exception:
                log.exception("change %d could not be applied; the index may be stale "
                              "until the node restarts", sequence)
            async with self._advanced:
                self.applied = sequence
                self._advanced.notify_all()

        self._sub = await self.js.subscribe(
            self.subject, cb=deliver, ordered_consumer=True, idle_heartbeat=FEED_HEARTBEAT_S,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                  opt_start_seq=after + 1))

    async def reached(self, sequence: int, timeout: float) -> None:
        """Wait until this node has applied ``sequence``, or Unavailable."""
        if sequence <= self.applied:
            return
        try:
            async with self._advanced:
                await asyncio.wait_for(
                    self._advanced.wait_for(lambda: self.applied >= sequence), timeout)
        except TimeoutError:
            raise Unavailable(f"this node has applied changes up to {self.applied}, not yet "
                              f"{sequence}; retry (the change feed may be behind)") from None

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()  # type: ignore[attr-defined]
            self._sub = None
