"""The registry of live nodes, kept in JetStream KV.

A node writes its :class:`NodeAnnouncement` (engines, statuses, and the descriptors of the
services it serves) under ``nodes.<id>`` when it starts and on every heartbeat, and deletes
it when it stops. Gateways watch the bucket, forget a node after three missed heartbeats
(while other nodes' heartbeats come: when every node falls silent at once, the registry
stalled, and they are kept for up to ``REGISTRY_STALL_S``), and build their routes and
reflection from the descriptors alone, with no generated code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor, ServiceDescriptor
from nats.aio.client import Client as NATS

from mesh._gen.revo.mesh.v1 import mesh_pb2, registry_pb2
from mesh.transport import subjects
from mesh.transport.kv import KeyValue, Mirror, open_bucket

log = logging.getLogger(__name__)

# KV keeps an entry this long after its last write, so a crashed node's entry is also
# removed from storage; gateways stop routing to it much earlier (three heartbeats).
ENTRY_TTL_S = 60.0
MISSED_HEARTBEATS = 3
REGISTRY_STALL_S = 15.0
"""The longest the registry may go without any heartbeat before gateways forget every node
(longer than a JetStream leader election, 4 to 9 s after a server dies)."""


async def open_registry(nc: NATS) -> KeyValue:
    """The registry bucket, created on first use."""
    return await open_bucket(nc, subjects.REGISTRY_BUCKET, ttl=ENTRY_TTL_S,
                             description="revo mesh: live nodes and their services")


def file_set(services: Iterable[ServiceDescriptor]) -> descriptor_pb2.FileDescriptorSet:
    """Every file the services need, dependencies before dependents."""
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()

    def visit(file: FileDescriptor) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dep in file.dependencies:
            visit(dep)
        ordered.append(file)

    for service in services:
        visit(service.file)
    result = descriptor_pb2.FileDescriptorSet()
    for file in ordered:
        proto = result.file.add()
        file.CopyToProto(proto)
    return result


class RegistryWriter:
    """Announces one node and keeps its entry fresh."""

    def __init__(self, nc: NATS, node_id: str, heartbeat_s: float,
                 announce: Callable[[], registry_pb2.NodeAnnouncement]) -> None:
        self._nc = nc
        self._key = subjects.registry_key(node_id)
        self._heartbeat_s = heartbeat_s
        self._announce = announce
        self._task: asyncio.Task[None] | None = None
        self._kv: KeyValue | None = None
        self._stopping = False

    async def start(self) -> None:
        self._kv = await open_registry(self._nc)
        await self.publish()
        self._task = asyncio.get_running_loop().create_task(self._beat())

    async def publish(self) -> None:
        announcement = self._announce()
        announcement.heartbeat_ms = int(self._heartbeat_s * 1000)
        assert self._kv is not None
        await self._kv.put(self._key, announcement.SerializeToString())

    async def _beat(self) -> None:
        # The flag, not only the cancellation, ends the loop: nats-py can turn a cancel
        # that lands inside a request into its own TimeoutError, which is caught below.
        while not self._stopping:
            await asyncio.sleep(self._heartbeat_s)
            try:
                await self.publish()
            except Exception as exc:  # NATS reconnecting: try again next beat
                if not self._stopping:
                    log.warning("registry heartbeat failed: %s", exc)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._kv is not None:
            try:
                await self._kv.delete(self._key)
            except Exception as exc:
                log.warning("could not remove %s from the registry: %s", self._key, exc)


@dataclass(frozen=True)
class Route:
    """How the gateway reaches one method."""

    path: str
    service: str
    method: MethodDescriptor
    subject: str

    @property
    def server_streaming(self) -> bool:
        return self.method.server_streaming


def _only_heartbeat_changed(old: registry_pb2.NodeAnnouncement,
                            new: registry_pb2.NodeAnnouncement) -> bool:
    if old.files != new.files or old.heartbeat_ms != new.heartbeat_ms:
        return False
    stamp = old.node.heartbeat_at
    probe = registry_pb2.NodeAnnouncement()
    probe.node.CopyFrom(new.node)
    probe.node.heartbeat_at.CopyFrom(stamp)
    return bool(probe.node == old.node)


@dataclass
class _Seen:
    announcement: registry_pb2.NodeAnnouncement
    at: float


def _fresh(seen: _Seen, now: float, newest: float) -> bool:
    """Whether the node's last heartbeat is recent enough to route to it. ``newest`` is when
    the latest heartbeat of any node was made.

    A node that missed :data:`MISSED_HEARTBEATS` heartbeats is stale once the registry went
    on without it: another node's heartbeat came after its time was up. When every node
    falls silent together, it is the registry that stalled (its bucket electing a leader
    after a nats-server died, say), not the nodes: they stay routed for up to
    :data:`REGISTRY_STALL_S`, as forgetting them all would fail every call at once."""
    window = MISSED_HEARTBEATS * max(seen.announcement.heartbeat_ms, 100) / 1000
    if now - seen.at <= window:
        return True
    return newest - seen.at <= window and now - seen.at <= REGISTRY_STALL_S


@dataclass
class Snapshot:
    """The mesh as one gateway sees it at one moment."""

    nodes: list[registry_pb2.NodeAnnouncement] = field(default_factory=list)
    routes: dict[str, Route] = field(default_factory=dict)
    services: dict[str, ServiceDescriptor] = field(default_factory=dict)
    service_nodes: dict[str, list[str]] = field(default_factory=dict)
    service_engine: dict[str, str] = field(default_factory=dict)
    pool: descriptor_pool.DescriptorPool = field(default_factory=descriptor_pool.DescriptorPool)


def build_snapshot(announcements: Iterable[registry_pb2.NodeAnnouncement],
                   base_files: descriptor_pb2.FileDescriptorSet | None = None) -> Snapshot:
    """Routes and a descriptor pool for the given nodes (first definition of a file wins).

    ``base_files`` go into the pool first (the gateway's own services, for reflection).
    """
    snap = Snapshot()
    added: set[str] = set()
    for file in base_files.file if base_files is not None else ():
        snap.pool.Add(file)
        added.add(file.name)
    for announcement in sorted(announcements, key=lambda a: a.node.id):
        snap.nodes.append(announcement)
        for file in announcement.files.file:
            if file.name in added:
                continue
            try:
                snap.pool.Add(file)
                added.add(file.name)
            except Exception as exc:  # a conflicting definition from another node
                log.error("node %s: cannot add %s to the descriptor pool: %s",
                          announcement.node.id, file.name, exc)
        for engine in announcement.node.engines:
            # a loading engine takes calls too: it answers what it cannot serve yet with
            # UNAVAILABLE, which callers retry (and an engine's Stats-like reads work)
            if engine.status not in (mesh_pb2.ENGINE_STATUS_RUNNING,
                                     mesh_pb2.ENGINE_STATUS_DEGRADED,
                                     mesh_pb2.ENGINE_STATUS_LOADING):
                continue
            for service_name in engine.services:
                snap.service_nodes.setdefault(service_name, []).append(announcement.node.id)
                snap.service_engine.setdefault(service_name, engine.name)
    for service_name in snap.service_nodes:
        try:
            service = snap.pool.FindServiceByName(service_name)
        except KeyError:
            log.error("service %s is announced without its descriptor", service_name)
            continue
        snap.services[service_name] = service
        for method in service.methods:
            path = subjects.grpc_path(service_name, method.name)
            snap.routes[path] = Route(path, service_name, method,
                                      subjects.method_subject(service_name, method.name))
    return snap


class RegistryView:
    """A gateway's live view of the registry; calls ``on_change`` with each new snapshot."""

    def __init__(self, nc: NATS, on_change: Callable[[Snapshot], None] | None = None, *,
                 base_files: descriptor_pb2.FileDescriptorSet | None = None) -> None:
        self._nc = nc
        self._base_files = base_files
        self._on_change = on_change
        self._seen: dict[str, _Seen] = {}
        self.snapshot = build_snapshot((), base_files)
        self._routed: set[str] = set()
        """The nodes in :attr:`snapshot`."""
        self._expirer: asyncio.Task[None] | None = None
        self._mirror: Mirror | None = None
        self._ready = False

    async def start(self, timeout: float = 5.0) -> None:
        self._mirror = Mirror(await open_registry(self._nc), self._put, self._delete,
                              nc=self._nc)
        self._expirer = asyncio.get_running_loop().create_task(self._expire())
        with contextlib.suppress(TimeoutError):
            await self._mirror.start(timeout)
        self._ready = True  # the bucket's contents are in (or the wait gave up)
        self._rebuild()

    async def stop(self) -> None:
        if self._expirer is not None:
            self._expirer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expirer
        if self._mirror is not None:
            await self._mirror.stop()

    def _delete(self, key: str) -> None:
        self._seen.pop(key.removeprefix(subjects.REGISTRY_NODE_PREFIX), None)
        if self._ready:
            self._rebuild()

    def _put(self, key: str, value: bytes) -> None:
        node_id = key.removeprefix(subjects.REGISTRY_NODE_PREFIX)
        try:
            announcement = registry_pb2.NodeAnnouncement.FromString(value)
        except Exception as exc:
            log.error("ignoring malformed registry entry %s: %s", key, exc)
            return
        # Age by the node's own heartbeat time, so an entry left behind by a node that died
        # long ago is not taken as fresh when a gateway starts.
        age = max(0.0, time.time() - announcement.node.heartbeat_at.ToNanoseconds() / 1e9)
        seen = self._seen.get(node_id)
        if seen is not None and _only_heartbeat_changed(seen.announcement, announcement):
            # the common case: keep routes and descriptors, refresh liveness only...
            seen.announcement.node.heartbeat_at.CopyFrom(announcement.node.heartbeat_at)
            seen.at = time.monotonic() - age
            # ...unless the node had been left out as stale (this gateway saw no heartbeat
            # for a while: its loop was busy, say) and is fresh again: route to it at once
            if self._ready and node_id not in self._routed and _fresh(
                    seen, time.monotonic(), seen.at):
                self._rebuild()
            return
        self._seen[node_id] = _Seen(announcement, time.monotonic() - age)
        if self._ready:
            self._rebuild()

    def _fresh(self) -> list[registry_pb2.NodeAnnouncement]:
        now = time.monotonic()
        newest = max((seen.at for seen in self._seen.values()), default=now)
        return [seen.announcement for seen in self._seen.values()
                if _fresh(seen, now, newest)]

    async def _expire(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            fresh = {a.node.id for a in self._fresh()}
            if fresh != {a.node.id for a in self.snapshot.nodes}:
                self._rebuild()

    def _rebuild(self) -> None:
        self.snapshot = build_snapshot(self._fresh(), self._base_files)
        self._routed = {a.node.id for a in self.snapshot.nodes}
        if self._on_change is not None:
            self._on_change(self.snapshot)
