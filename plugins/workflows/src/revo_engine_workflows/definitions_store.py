"""Workflow definitions in JetStream KV: immutable versions, a pointer to the latest.

Bucket ``revo_workflows`` (file storage) holds, per workflow name:

- ``<name>.v<version>``: the version, a serialized :class:`Workflow`. Written once by a
  create conditional on the key having no message (never updated, never deleted).
- ``<name>.latest``: the latest version's number in decimal, advanced by an update
  conditional on the revision read (created the same way for version 1).

A name's ``.`` are written ``=`` in keys (``=`` is not allowed in names, so the keys stay
distinct and one subject token each: names such as ``a..b`` or ``a.`` would not make valid
keys otherwise).

The version keys are the truth; the pointer trails them by at most one version, only for
the moment between a creator's two writes, or until the next create when a creator died
between them. A create that finds the version after the pointer taken advances the
pointer itself and tries again, so a version is never lost, never numbered twice, and the
pointer never moves back. Reads are direct gets: with replicas > 1 a follower may answer a
moment behind the leader; a create that read stale state only retries.
"""

from __future__ import annotations

import contextlib
import logging

from google.protobuf.timestamp_pb2 import Timestamp
from nats.js.errors import KeyWrongLastSequenceError

from mesh.transport.connection import MeshConnection
from mesh.transport.kv import KeyValue, latest, open_bucket, snapshot
from revo_engine_workflows.v1 import workflows_pb2 as pb

__all__ = ["BUCKET", "DefinitionConflict", "DefinitionStore"]

log = logging.getLogger(__name__)

BUCKET = "revo_workflows"
_ATTEMPTS = 64
_CACHED_VERSIONS = 1024
"""Conditional writes tried by one create before it gives up: each failed one means another
create of the same name made progress, so 64 covers 64 creates of one name at once."""


class DefinitionConflict(Exception):
    """Too many creates of one name at the same moment: try again (gRPC ABORTED)."""


def _token(name: str) -> str:
    return name.replace(".", "=")


def _version_key(name: str, version: int) -> str:
    return f"{_token(name)}.v{version}"


def _latest_key(name: str) -> str:
    return f"{_token(name)}.latest"


def _content(workflow: pb.Workflow) -> pb.Workflow:
    """The definition without what CreateWorkflow sets (what "identical" compares)."""
    copy = pb.Workflow()
    copy.CopyFrom(workflow)
    copy.version = 0
    copy.ClearField("created_at")
    copy.created_by = ""
    return copy


class DefinitionStore:
    """Stores and reads workflow definitions; :meth:`start` before use.

    ``create`` does not validate: the caller checks the definition (and its name, against
    ``^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$``) first.
    """

    def __init__(self, nc: MeshConnection) -> None:
        self._nc = nc
        self._kv: KeyValue | None = None
        self._versions: dict[str, bytes] = {}
        """Versions read, by key (at most :data:`_CACHED_VERSIONS`, oldest out first)."""

    async def start(self) -> None:
        """Open the bucket, creating it when it does not exist."""
        self._kv = await open_bucket(self._nc, BUCKET,
                                     description="revo Coordinator: workflow definitions, "
                                                 "immutable versions")

    @property
    def _bucket(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("DefinitionStore.start() was not called")
        return self._kv

    async def _pointer(self, name: str) -> tuple[int, int]:
        """The latest version number and the pointer's revision; (0, 0) when none."""
        found = await latest(self._nc, BUCKET, _latest_key(name))
        if found is None:
            return 0, 0
        data, revision = found
        return int(data.decode()), revision

    async def _advance(self, name: str, version: int, revision: int) -> None:
        """Move the pointer from the value at ``revision`` to ``version``; a conflict means
        another create moved it (to this version or past it), which is as good."""
        with contextlib.suppress(KeyWrongLastSequenceError):
            await self._bucket.update(_latest_key(name), str(version).encode(), last=revision)

    async def create(self, workflow: pb.Workflow,
                     created_by: str) -> tuple[pb.Workflow, bool]:
        """Store ``workflow`` as its name's next version: the stored version (``version``,
        ``created_at``, ``created_by`` set) and True. When it is identical to the latest
        version (those three fields aside), that version and False, storing nothing.

        Concurrent creates of one name each get their own version (1, 2, … without gaps
        or repeats). :class:`DefinitionConflict` after :data:`_ATTEMPTS` lost races.
        """
        name = workflow.name
        content = _content(workflow)
        for _ in range(_ATTEMPTS):
            current, revision = await self._pointer(name)
            if current:
                stored = await self.get(name, current)
                if stored is not None and _content(stored) == content:
                    return stored, False
            candidate = pb.Workflow()
            candidate.CopyFrom(content)
            candidate.version = current + 1
            candidate.created_at.CopyFrom(_now())
            candidate.created_by = created_by
            try:
                # last=0: "the key has no message"; version keys are never deleted, so this
                # is the whole of create, without nats-py's read after a conflict
                await self._bucket.update(_version_key(name, candidate.version),
                                          candidate.SerializeToString(deterministic=True),
                                          last=0)
            except KeyWrongLastSequenceError:
                # another create took this number; make sure the pointer shows it (its
                # creator may have died before moving it), then look again
                await self._advance(name, current + 1, revision)
                continue
            await self._advance(name, candidate.version, revision)
            log.info("workflow %s version %d created by %s", name, candidate.version,
                     created_by)
            return candidate, True
        raise DefinitionConflict(f"workflow {name!r}: {_ATTEMPTS} other creates of it won "
                                 f"the race; try again")

    async def get(self, name: str, version: int = 0) -> pb.Workflow | None:
        """Version ``version`` of workflow ``name`` (0: the latest); None when there is no
        such workflow or version."""
        if version == 0:
            version, _ = await self._pointer(name)
            if version == 0:
                return None
        key = _version_key(name, version)
        data = self._versions.get(key)
        if data is None:
            found = await latest(self._nc, BUCKET, key)
            if found is None:
                return None
            data = found[0]
            if len(self._versions) >= _CACHED_VERSIONS:
                self._versions.pop(next(iter(self._versions)))  # the oldest read
            self._versions[key] = data  # a version never changes once stored
        return pb.Workflow.FromString(data)

    async def list_latest(self) -> list[pb.Workflow]:
        """Every workflow's latest version, by name. Reads every pointer and then each
        latest version: one scan of the names, fine for thousands of workflows."""
        pointers = {key: int(value) for key, value in await snapshot(self._bucket,
                                                                    "*.latest")}
        workflows: list[pb.Workflow] = []
        for key, version in pointers.items():
            token = key.rpartition(".")[0]
            found = await latest(self._nc, BUCKET, f"{token}.v{version}")
            if found is not None:
                workflows.append(pb.Workflow.FromString(found[0]))
        return sorted(workflows, key=lambda w: w.name)


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp
