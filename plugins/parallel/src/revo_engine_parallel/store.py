"""Where tasks live in JetStream, and every name for it (one place for each name).

- Stream ``REVO_TASKS`` (work queue, file storage, at most ``queue_limit`` messages, new
  ones refused when full): one message per queued task on
  ``revo.tasks.q.<priority>.<owner>``, removed when the task is acknowledged.
- Bucket ``revo_tasks``: each task's record (:class:`Task`) under ``t.<owner>.<id>``.
- Bucket ``revo_task_keys``: ``<owner>.<hash of idempotency key>`` -> task id, created
  atomically, so two Submits of one key make one task.
- Object store ``revo_task_results``: results over ``inline_result_bytes``.
- Stream ``REVO_TASKS_DEAD`` on ``revo.tasks.dead.<owner>``: one record per dead letter.
- ``revo.tasks.cancel.<id>`` (core NATS): tells the node running a task to stop it.
- ``revo.tasks.kick`` (core NATS): a Submit's hint to every node that work is waiting
  (:func:`kick_message`): a ``<priority>.<owner>`` line per queue, and a
  ``~<id>:<revision>`` line per task whose record the Submit wrote, so that the node that
  takes the task can compare-and-set the record without reading it first.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from mesh.transport.connection import MeshConnection
from mesh.transport.kv import claim, latest, open_bucket, snapshot
from mesh.transport.streams import ensure_replicas, ensure_stream, replicas_of
from mesh.transport.subjects import subject_token
from revo_engine_parallel.settings import ParallelSettings
from revo_engine_parallel.v1 import tasks_pb2 as pb

__all__ = ["TaskStore", "idempotency_key_name", "kick_message", "new_task_id", "now_timestamp",
           "parse_kick", "queue_subject"]

STREAM = "REVO_TASKS"
QUEUE_PREFIX = "revo.tasks.q"
DEAD_STREAM = "REVO_TASKS_DEAD"
DEAD_PREFIX = "revo.tasks.dead"
TASKS_BUCKET = "revo_tasks"
KEYS_BUCKET = "revo_task_keys"
RESULTS_BUCKET = "revo_task_results"
CANCEL_PREFIX = "revo.tasks.cancel"
KICK_SUBJECT = "revo.tasks.kick"
ROLE_HEADER = "Revo-Task-Role"
"""The owner's role when the task was submitted (queue messages only)."""
DUPLICATE_WINDOW_S = 120.0
"""The task stream drops a second message with the same ``Nats-Msg-Id`` (the task's id)
published within this time, so queueing a task again is safe within it."""

_WATCH_RETRY_S = 0.002
"""How soon a watch reads the record again after a change that it did not find stored."""
_WATCH_AGAIN_S = 0.05
"""How soon a watch reads the record again after a read, unless told of a change (then at
once); the wait grows to :data:`_WATCH_POLL_S`."""
_WATCH_POLL_S = 1.0
"""A watch reads the record at least this often, whatever it was told."""

FINISHED = frozenset({pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED,
                      pb.TASK_STATE_CANCELLED, pb.TASK_STATE_DEAD_LETTERED})


def new_task_id() -> str:
    """Time-ordered and unique: 16 hex digits of nanoseconds, 8 of randomness."""
    return f"{time.time_ns():016x}{os.urandom(4).hex()}"


def owner_token(owner: str) -> str:
    return subject_token(owner or "-")


def queue_subject(priority: int, owner: str) -> str:
    return f"{QUEUE_PREFIX}.{priority}.{owner_token(owner)}"


def kick_message(queued: list[tuple[pb.Task, int | None]]) -> bytes:
    """The kick for tasks just queued, each with its record's revision (None: unknown)."""
    queues = sorted({f"{t.spec.priority}.{owner_token(t.owner)}" for t, _ in queued})
    hints = [f"~{t.id}:{revision}" for t, revision in queued if revision]
    return "\n".join(queues + hints).encode()


def parse_kick(data: bytes) -> tuple[list[tuple[int, str]], list[tuple[str, int]]]:
    """A kick's queues ``(priority, owner token)`` and revision hints ``(task id,
    revision)``; lines it does not know are skipped (a newer node's additions)."""
    queues: list[tuple[int, str]] = []
    hints: list[tuple[str, int]] = []
    for line in data.decode(errors="replace").split():
        if line.startswith("~"):
            task_id, _, revision = line[1:].partition(":")
            if revision.isdigit():
                hints.append((task_id, int(revision)))
            continue
        priority, _, owner = line.partition(".")
        if priority.isdigit():
            queues.append((int(priority), owner))
    return queues, hints


def task_key(owner: str, task_id: str) -> str:
    return f"t.{owner_token(owner)}.{task_id}"


def idempotency_key_name(owner: str, key: str) -> str:
    """The key's name in the keys bucket: the owner, and a hash of the caller's key."""
    return f"{owner_token(owner)}.{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def now_timestamp() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


class TaskStore:
    """The streams and buckets of Parallel Mind, opened (and created) by :meth:`open`."""

    def __init__(self, nc: MeshConnection, settings: ParallelSettings) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.settings = settings
        self.tasks: KeyValue
        self.keys: KeyValue
        self._results_store: Any = None

    async def open(self) -> None:
        s = self.settings
        await self._stream(StreamConfig(
            name=STREAM, subjects=[f"{QUEUE_PREFIX}.>"], retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE, max_msgs=s.queue_limit, discard=DiscardPolicy.NEW,
            duplicate_window=DUPLICATE_WINDOW_S,
            description="revo Parallel Mind: queued tasks"))
        await self._stream(StreamConfig(
            name=DEAD_STREAM, subjects=[f"{DEAD_PREFIX}.>"], storage=StorageType.FILE,
            max_age=s.keep_s,
            description="revo Parallel Mind: dead-lettered tasks and why"))
        self.tasks = await open_bucket(self.nc, TASKS_BUCKET, ttl=s.keep_s,
                                       description="revo Parallel Mind: tasks")
        self.keys = await open_bucket(self.nc, KEYS_BUCKET, ttl=s.keep_s,
                                      description="revo Parallel Mind: idempotency keys")

    async def _stream(self, config: StreamConfig) -> None:
        """Create the stream, or bring an existing one's limits to this configuration
        (and its replicas to ``nats.replicas``)."""

        def limits(current: StreamConfig) -> bool:
            # unset reads back as -1 and 0: only a real change updates (in a cluster,
            # identical updates from several nodes at once go unanswered)
            wanted = (config.max_msgs or -1, config.max_age or 0.0)
            if (current.max_msgs or -1, current.max_age or 0.0) == wanted:
                return False
            current.max_msgs, current.max_age = config.max_msgs, config.max_age
            return True

        await ensure_stream(self.nc, config, update=limits)

    # -- records ----------------------------------------------------------------------

    async def put(self, task: pb.Task) -> int:
        return int(await self.tasks.put(task_key(task.owner, task.id), task.SerializeToString()))

    async def create(self, task: pb.Task) -> int:
        """Write a new task's record; KeyWrongLastSequenceError if it exists.

        Records are never deleted (they expire whole with the bucket's age limit), so this
        is a compare-and-set against "no message yet", without the read that nats-py's
        ``create`` makes after a conflict to tell a deleted key from a live one."""
        return int(await self.tasks.update(task_key(task.owner, task.id),
                                           task.SerializeToString(), last=0))

    async def get(self, owner: str, task_id: str) -> tuple[pb.Task, int] | None:
        """The record and its revision; None when there is none (NATS errors propagate)."""
        found = await latest(self.nc, TASKS_BUCKET, task_key(owner, task_id))
        if found is None or not found[0]:
            return None
        return pb.Task.FromString(found[0]), found[1]

    async def find(self, task_id: str) -> pb.Task | None:
        """A task of any owner (for callers with manage)."""
        for task in await self.scan(f"t.*.{task_id}"):
            return task
        return None

    async def scan(self, pattern: str) -> list[pb.Task]:
        """Every task whose key matches ``pattern`` (``t.<owner>.*``, ``t.*.*``)."""
        try:
            entries = await snapshot(self.tasks, pattern)
        except NotFoundError:
            return []
        return [pb.Task.FromString(value) for _, value in entries]

    async def watch(self, owner: str, task_id: str, *,
                    must_exist: bool = False) -> AsyncIterator[pb.Task]:
        """The task's record now, then each change (forever: the caller stops reading);
        with ``must_exist``, nothing when the task has no record yet.

        A plain subscription to the record's subject says that it changed, and the record is
        then read back (a direct get), so only what the bucket stored is reported (a
        compare-and-set that lost can reach the subject too), each revision once, in order.
        A change can be announced a moment before it is stored, or (rarely) before the
        subscription took effect while stored after the first read: the record is read
        again soon after a change that brought nothing new, and at least every second while
        waiting.
        This costs a subscription and a read or two per watch, where a KV watcher creates
        and deletes a JetStream consumer for each.
        """
        key = task_key(owner, task_id)
        changed = asyncio.Event()
        sub = await self.nc.subscribe_direct(f"$KV.{TASKS_BUCKET}.{key}",
                                             lambda *_: changed.set())
        try:
            last, wait = 0, _WATCH_AGAIN_S
            while True:
                changed.clear()
                found = await latest(self.nc, TASKS_BUCKET, key)
                if must_exist and not last and (found is None or not found[0]):
                    return
                if found is not None and found[1] > last:
                    last, wait = found[1], _WATCH_AGAIN_S
                    if found[0]:
                        yield pb.Task.FromString(found[0])
                try:
                    await asyncio.wait_for(changed.wait(), wait)
                    wait = _WATCH_RETRY_S  # if the read finds nothing new, again soon
                except TimeoutError:
                    wait = min(_WATCH_POLL_S, wait * 4)
        finally:
            await self.nc.unsubscribe_direct(sub)

    # -- idempotency ------------------------------------------------------------------

    async def claim_key(self, owner: str, key: str, task_id: str) -> str | None:
        """Bind ``key`` to ``task_id``; the task id it already has, if any."""
        name = idempotency_key_name(owner, key)
        found = await claim(self.nc, self.keys, KEYS_BUCKET, name, task_id.encode())
        return found.decode() if found is not None else None

    # -- dead letters -----------------------------------------------------------------

    async def dead_letter(self, task: pb.Task) -> None:
        await self.js.publish(f"{DEAD_PREFIX}.{owner_token(task.owner)}",
                              task.SerializeToString())

    # -- results ----------------------------------------------------------------------

    async def store_result(self, task: pb.Task, result: bytes) -> None:
        """Inline, or in the object store when large."""
        if len(result) <= self.settings.inline_result_bytes:
            task.result = result
            return
        store = await self._results()
        name = f"{owner_token(task.owner)}/{task.id}"
        await store.put(name, result)
        task.result_object = name

    async def read_result(self, name: str) -> bytes:
        store = await self._results()
        return bytes((await store.get(name)).data or b"")

    async def _results(self) -> Any:
        """The results object store, opened (or created) on first use and then kept."""
        if self._results_store is not None:
            return self._results_store
        try:
            store = await self.js.object_store(RESULTS_BUCKET)
        except Exception:
            from nats.js.api import ObjectStoreConfig

            try:
                store = await self.js.create_object_store(RESULTS_BUCKET, config=ObjectStoreConfig(
                    bucket=RESULTS_BUCKET, ttl=self.settings.keep_s,
                    storage=StorageType.FILE, replicas=replicas_of(self.nc)))
            except Exception:  # another node created it first
                store = await self.js.object_store(RESULTS_BUCKET)
        else:
            await ensure_replicas(self.nc, f"OBJ_{RESULTS_BUCKET}")
        self._results_store = store
        return store
