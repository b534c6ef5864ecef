"""The index of runs in JetStream KV: a small summary per run, and idempotency keys.

A run's history (:mod:`revo_engine_workflows.history`) is its truth; the index is a
summary derived from it, for what the history cannot answer without reading every run:
which runs exist (``ListRuns``) and which are still active (the takeover sweep).

- Bucket ``revo_workflow_runs``: key = run id, value = a serialized :class:`Run` without
  ``steps``, ``input`` or ``output``. A write never takes the summary back: one older than
  the stored one (lower ``last_sequence``), or unfinished over a finished one, is dropped,
  so a node that lost a run cannot undo what the run's new owner wrote.
- Bucket ``revo_workflow_keys``: key = a hash of the starter and the idempotency key,
  value = the run id; the first :meth:`RunIndex.claim_key` wins.

Limits: :meth:`RunIndex.active` and :meth:`RunIndex.page` read every summary (one KV watch,
no second index), so they cost O(runs kept) each: fine for thousands of runs, not for
millions. Both buckets forget entries ``keep_s`` after their last write (30 days by
default, as the history stream), so a run must be written again within that time to stay
listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from mesh.errors import Reason, Unavailable
from mesh.pagination import decode_page_token, encode_page_token, take_page
from mesh.pagination import page_size as checked_page_size
from mesh.transport.connection import MeshConnection
from mesh.transport.kv import KeyValue, claim, latest, open_bucket, snapshot
from revo_engine_workflows.v1 import workflows_pb2 as pb

__all__ = ["ACTIVE", "FINISHED", "KEYS_BUCKET", "RUNS_BUCKET", "RunIndex", "summary"]

RUNS_BUCKET = "revo_workflow_runs"
KEYS_BUCKET = "revo_workflow_keys"
ACTIVE = frozenset({pb.RUN_STATE_RUNNING, pb.RUN_STATE_WAITING})
FINISHED = frozenset({pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED})
_RUN_ID = re.compile(r"^[a-z0-9]{8,64}$")
_ATTEMPTS = 16
"""Conditional writes one :meth:`RunIndex.put` tries before giving up (each failure means
another write to the same run landed in between)."""
_ERROR_CHARS = 2000


def summary(run: pb.Run) -> pb.Run:
    """The part of ``run`` that the index keeps (ListRuns' answer: no steps, input or
    output; the error cut to 2000 characters)."""
    kept = pb.Run(id=run.id, workflow=run.workflow, version=run.version, state=run.state,
                  error=run.error[:_ERROR_CHARS], started_by=run.started_by,
                  idempotency_key=run.idempotency_key, last_sequence=run.last_sequence)
    if run.HasField("created_at"):
        kept.created_at.CopyFrom(run.created_at)
    if run.HasField("finished_at"):
        kept.finished_at.CopyFrom(run.finished_at)
    return kept


def _order(run: pb.Run) -> tuple[int, str]:
    """A run's place in ListRuns, compared descending: newest first, then by id."""
    return run.created_at.seconds * 1_000_000_000 + run.created_at.nanos, run.id


def _key_name(started_by: str, key: str) -> str:
    # the starter's length first, so ("ab", "c") and ("a", "bc") differ
    digest = hashlib.sha256(f"{len(started_by)}:{started_by}{key}".encode()).hexdigest()
    return f"k.{digest[:48]}"


class RunIndex:
    """Writes and reads run summaries and idempotency keys; :meth:`start` before use."""

    def __init__(self, nc: MeshConnection, *, keep_s: float = 30 * 86_400.0) -> None:
        self._nc = nc
        self._keep_s = keep_s
        self._runs: KeyValue | None = None
        self._keys: KeyValue | None = None

    async def start(self) -> None:
        """Open both buckets, creating them when they do not exist."""
        self._runs = await open_bucket(self._nc, RUNS_BUCKET,
                                       ttl=self._keep_s,
                                       description="revo Coordinator: a summary of each run")
        self._keys = await open_bucket(self._nc, KEYS_BUCKET,
                                       ttl=self._keep_s,
                                       description="revo Coordinator: runs' idempotency keys")

    def _buckets(self) -> tuple[KeyValue, KeyValue]:
        if self._runs is None or self._keys is None:
            raise RuntimeError("RunIndex.start() was not called")
        return self._runs, self._keys

    async def put(self, run: pb.Run, *, fresh: bool = False) -> bool:
        """Write ``run``'s summary; False when the stored one is newer (a higher
        ``last_sequence``, or finished where ``run`` is not) and was kept instead.
        ``fresh``: the run most likely has no summary yet (one write, no read first)."""
        runs, _ = self._buckets()
        new = summary(run)
        data = new.SerializeToString(deterministic=True)
        if fresh:
            # it has one: compare (KeyNotFoundError: nats-py's create re-reads the key after
            # a wrong-last-sequence answer, and a replica that has not caught up yet says
            # it has none)
            with contextlib.suppress(KeyWrongLastSequenceError, KeyNotFoundError):
                await runs.create(run.id, data)
                return True
        for _ in range(_ATTEMPTS):
            found = await latest(self._nc, RUNS_BUCKET, run.id)
            try:
                if found is None:  # none, or removed (create takes a removed key too)
                    await runs.create(run.id, data)
                    return True
                stored = pb.Run.FromString(found[0])
                if stored.last_sequence > new.last_sequence or (
                        stored.state in FINISHED and new.state not in FINISHED):
                    return False
                await runs.update(run.id, data, last=found[1])
                return True
            except (KeyWrongLastSequenceError, KeyNotFoundError):
                # another write landed in between, or the read came from a replica that
                # is behind (direct gets may be answered by any replica): read again
                await asyncio.sleep(0.01)
                continue
        raise Unavailable(f"run {run.id}: its index entry could not be written after "
                          f"{_ATTEMPTS} tries (it kept changing, or the replicas disagreed); "
                          "retry", reason=Reason.STORE_UNAVAILABLE,
                          metadata={"engine": "workflows"})

    async def remove(self, run_id: str) -> None:
        """Take the run's summary out of the index (a run that was never recorded)."""
        runs, _ = self._buckets()
        await runs.delete(run_id)

    async def get(self, run_id: str) -> pb.Run | None:
        """The run's summary; None when the index has none (or ``run_id`` cannot be one)."""
        if not _RUN_ID.fullmatch(run_id):
            return None
        found = await latest(self._nc, RUNS_BUCKET, run_id)
        return None if found is None else pb.Run.FromString(found[0])

    async def _all(self) -> list[pb.Run]:
        runs, _ = self._buckets()
        return [pb.Run.FromString(value) for _, value in await snapshot(runs)]

    async def active(self) -> list[pb.Run]:
        """The summaries of the runs that are running or waiting: the runs the takeover
        sweep must find an owner for. Reads every summary."""
        return [run for run in await self._all() if run.state in ACTIVE]

    async def page(self, workflow: str = "", state: int = pb.RUN_STATE_UNSPECIFIED,
                   page_size: int = 0, page_token: str = "", started_by: str | None = None
                   ) -> tuple[list[pb.Run], str]:
        """One page of ListRuns: runs of ``workflow`` (empty: any) in ``state``
        (unspecified: any) started by ``started_by`` (None: anyone), newest first, and
        the next page's token (empty on the last).

        ``page_size`` and ``page_token`` follow :mod:`mesh.pagination` (0: 100, at most 1000;
        a negative size or a token this method did not return for the same filters is
        INVALID_ARGUMENT). The token names the last run returned, so runs started
        meanwhile (newer: on earlier pages) neither shift nor repeat later pages.
        Reads every summary.
        """
        count = checked_page_size(page_size)
        query = [workflow, state, started_by]
        after = decode_page_token(page_token, query, (int, str))
        chosen = [run for run in await self._all()
                  if (not workflow or run.workflow == workflow)
                  and (state == pb.RUN_STATE_UNSPECIFIED or run.state == state)
                  and (started_by is None or run.started_by == started_by)]
        runs, last = take_page(chosen, _order, count, after, descending=True)
        return runs, encode_page_token(last, query) if last else ""

    async def claim_key(self, started_by: str, key: str, run_id: str) -> str:
        """Claim idempotency key ``key`` of ``started_by`` for ``run_id``: the run id the
        key belongs to, ``run_id`` when this call claimed it, the first claimer's
        otherwise (the first claim wins, whoever asks afterwards). Keys are forgotten
        ``keep_s`` after their claim."""
        _, keys = self._buckets()
        name = _key_name(started_by, key)
        found = await claim(self._nc, keys, KEYS_BUCKET, name, run_id.encode())
        return run_id if found is None else found.decode()
