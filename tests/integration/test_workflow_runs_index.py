"""The index of runs in real JetStream KV: summaries that never go back, the active runs,
ListRuns pages that hold still while runs are added, first-claim-wins idempotency keys."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from mesh.config import MeshConfig
from mesh.errors import InvalidArgument
from mesh.testing import wait_for
from mesh.transport.connection import MeshConnection, connect
from revo_engine_workflows.runs_index import RUNS_BUCKET, RunIndex
from revo_engine_workflows.v1 import workflows_pb2 as pb


@pytest.fixture
async def index(mesh_config: Callable[..., MeshConfig]) -> AsyncIterator[RunIndex]:
    nc: MeshConnection = await connect(mesh_config().nats, "test-workflow-runs-index")
    index = RunIndex(nc)
    await index.start()
    try:
        yield index
    finally:
        await nc.close()


def _run(workflow: str, state: pb.RunState.ValueType = pb.RUN_STATE_RUNNING, created_s: int = 1_000,
         sequence: int = 1) -> pb.Run:
    run = pb.Run(id=uuid.uuid4().hex, workflow=workflow, version=1, state=state,
                 started_by="alice", last_sequence=sequence)
    run.created_at.seconds = created_s
    run.steps.add(id="a", state=pb.STEP_STATE_RUNNING)
    run.input.string_value = "big input"
    return run


def _workflow() -> str:
    return f"wf-{uuid.uuid4().hex[:12]}"


async def test_a_summary_is_stored_without_steps_input_or_output(index: RunIndex) -> None:
    run = _run(_workflow())
    assert await index.get(run.id) is None
    assert await index.get("not a run id") is None
    assert await index.put(run)
    stored = await index.get(run.id)
    assert stored is not None
    assert (stored.id, stored.workflow, stored.state, stored.started_by) == (
        run.id, run.workflow, run.state, "alice")
    assert stored.created_at == run.created_at
    assert not stored.steps
    assert not stored.HasField("input")


async def test_a_summary_never_goes_back(index: RunIndex) -> None:
    run = _run(_workflow(), sequence=5)
    assert await index.put(run)
    older = pb.Run()
    older.CopyFrom(run)
    older.last_sequence, older.state = 3, pb.RUN_STATE_WAITING
    assert not await index.put(older)  # a node that lost the run, writing late
    finished = pb.Run()
    finished.CopyFrom(run)
    finished.last_sequence, finished.state = 9, pb.RUN_STATE_SUCCEEDED
    assert await index.put(finished)
    again = pb.Run()
    again.CopyFrom(run)
    again.last_sequence = 9  # as new, but unfinished
    assert not await index.put(again)
    stored = await index.get(run.id)
    assert stored is not None
    assert (stored.state, stored.last_sequence) == (pb.RUN_STATE_SUCCEEDED, 9)


async def test_active_lists_running_and_waiting_runs_only(index: RunIndex) -> None:
    workflow = _workflow()
    runs = {state: _run(workflow, state) for state in (
        pb.RUN_STATE_RUNNING, pb.RUN_STATE_WAITING, pb.RUN_STATE_SUCCEEDED,
        pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED)}
    for run in runs.values():
        await index.put(run)
    mine = {run.id for run in runs.values()}
    active = {run.id for run in await index.active()} & mine
    assert active == {runs[pb.RUN_STATE_RUNNING].id, runs[pb.RUN_STATE_WAITING].id}
    finished = pb.Run()
    finished.CopyFrom(runs[pb.RUN_STATE_RUNNING])
    finished.state, finished.last_sequence = pb.RUN_STATE_SUCCEEDED, 2
    await index.put(finished)
    assert {run.id for run in await index.active()} & mine == {runs[pb.RUN_STATE_WAITING].id}


async def test_pages_are_newest_first_filtered_and_hold_still_while_runs_are_added(
        index: RunIndex) -> None:
    workflow = _workflow()
    runs = [_run(workflow, pb.RUN_STATE_SUCCEEDED if i % 2 else pb.RUN_STATE_RUNNING,
                 created_s=1_000 + i) for i in range(7)]
    runs.append(_run(workflow, created_s=1_003))  # same time as runs[3]: ordered by id
    runs.append(_run(_workflow(), created_s=2_000))  # another workflow
    for run in runs:
        await index.put(run)
    ours = [r for r in runs if r.workflow == workflow]
    expected = [r.id for r in sorted(
        ours, key=lambda r: (r.created_at.seconds, r.id), reverse=True)]
    first, token = await index.page(workflow, page_size=3)
    assert [r.id for r in first] == expected[:3]
    assert token
    newer = _run(workflow, created_s=5_000)  # started between two pages
    await index.put(newer)
    seen = [r.id for r in first]
    for _ in range(10):
        page, token = await index.page(workflow, page_size=3, page_token=token)
        seen += [r.id for r in page]
        if not token:
            break
    assert seen == expected
    running, _ = await index.page(workflow, pb.RUN_STATE_RUNNING)
    assert [r.id for r in running] == [newer.id] + [
        i for i in expected if i in {r.id for r in ours if r.state == pb.RUN_STATE_RUNNING}]
    everything, token = await index.page(workflow)
    assert (len(everything), token) == (len(ours) + 1, "")


async def test_bad_page_arguments_are_refused_with_a_reason(index: RunIndex) -> None:
    with pytest.raises(InvalidArgument, match="next_page_token"):
        await index.page(page_token="garbage!")
    with pytest.raises(InvalidArgument, match="page_size must not be negative"):
        await index.page(page_size=-1)
    workflow = _workflow()
    for created_s in (1, 2):
        await index.put(_run(workflow, created_s=created_s))
    _, token = await index.page(workflow, page_size=1)
    with pytest.raises(InvalidArgument, match="other filters"):
        await index.page(_workflow(), page_size=1, page_token=token)
    # more than the most (1000) is the most, not an error
    assert len((await index.page(workflow, page_size=5000))[0]) == 2


async def test_the_first_claim_of_an_idempotency_key_wins(index: RunIndex) -> None:
    key = uuid.uuid4().hex
    contenders = [uuid.uuid4().hex for _ in range(5)]
    claimed = await asyncio.gather(*(index.claim_key("alice", key, c) for c in contenders))
    assert len(set(claimed)) == 1
    assert claimed[0] in contenders
    assert await index.claim_key("alice", key, uuid.uuid4().hex) == claimed[0]
    # the key is the starter's own: another starter's same key is another claim
    other = uuid.uuid4().hex
    assert await index.claim_key("bob", key, other) == other
    split = uuid.uuid4().hex
    assert await index.claim_key("alic", "e" + key, split) == split


async def test_reading_every_summary_leaves_no_consumer_behind(index: RunIndex) -> None:
    """The takeover sweep reads every summary several times a second on every node;
    nats-server refuses a stream's 1001st consumer, so each read's consumer must go soon
    after the read (nats-py's default keeps it 5 minutes)."""
    js = index._nc.jetstream()

    async def consumers() -> int:
        return int((await js.stream_info(f"KV_{RUNS_BUCKET}")).state.consumer_count)

    before = await consumers()
    await index.put(_run(_workflow()))
    for _ in range(60):
        await index.active()
        await index.page()
    assert await consumers() > before, "each read has a consumer while it reads"

    async def gone() -> bool:
        return await consumers() <= before

    await wait_for(gone, 30, "the reads' consumers to be removed")
