"""A run's history in real JetStream: ordered, conditional appends, replay and live follow."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from mesh.config import MeshConfig, NatsSettings
from mesh.embedded.nats_server import NatsServer
from mesh.errors import Reason
from mesh.testing import wait_for
from mesh.transport.connection import MeshConnection, connect
from revo_engine_workflows.history import (
    RUNS_STREAM,
    EventTooLarge,
    History,
    HistoryConflict,
    HistoryUnavailable,
    Recorded,
    run_subject,
)
from revo_engine_workflows.v1 import workflows_pb2 as pb


@pytest.fixture
async def history(mesh_config: Callable[..., MeshConfig]) -> AsyncIterator[History]:
    nc: MeshConnection = await connect(mesh_config().nats, "test-workflow-history")
    history = History(nc)
    await history.start()
    try:
        yield history
    finally:
        await nc.close()


def _event(run_id: str, sequence: int, step: str = "", **kind: Any) -> pb.RunEvent:
    event = pb.RunEvent(run_id=run_id, sequence=sequence, step_id=step, **kind)
    event.time.GetCurrentTime()
    return event


def _run_id() -> str:
    return uuid.uuid4().hex


async def test_events_are_stored_in_order_and_read_back(history: History) -> None:
    run = _run_id()
    assert await history.read(run) == []
    assert await history.last(run) is None
    after = 0
    events = [_event(run, 1, run_started=pb.RunStarted(workflow="w", version=1)),
              _event(run, 2, "a", step_started=pb.StepStarted(attempt=1)),
              _event(run, 3, "a", step_succeeded=pb.StepSucceeded())]
    for event in events:
        after = await history.append(event, after)
    read = await history.read(run)
    assert [r.event for r in read] == events
    last = await history.last(run)
    assert last is not None
    assert (last.event, last.stream_sequence) == (events[-1], after)


async def test_only_one_of_two_writers_records_the_next_event(history: History) -> None:
    run = _run_id()
    first = await history.append(_event(run, 1), 0)
    outcomes = await asyncio.gather(
        history.append(_event(run, 2, "mine"), first),
        history.append(_event(run, 2, "theirs"), first), return_exceptions=True)
    assert sum(isinstance(o, int) for o in outcomes) == 1
    assert sum(isinstance(o, HistoryConflict) for o in outcomes) == 1
    assert [r.event.sequence for r in await history.read(run)] == [1, 2]
    with pytest.raises(HistoryConflict):
        await history.append(_event(run, 3), first)  # a writer that missed event 2


async def test_a_retried_append_is_not_stored_twice(history: History) -> None:
    run = _run_id()
    event = _event(run, 1)
    stored = await history.append(event, 0)
    assert await history.append(event, 0) == stored  # the acknowledgement was lost, say
    assert len(await history.read(run)) == 1


async def test_a_follower_gets_new_events_live_and_resumes_after_a_sequence(
        history: History) -> None:
    run = _run_id()
    after = await history.append(_event(run, 1), 0)
    seen: list[int] = []

    async def follow() -> None:
        async for recorded in history.follow(run, 0):
            seen.append(recorded.event.sequence)
            if recorded.event.sequence == 3:
                return

    following = asyncio.get_running_loop().create_task(follow())
    after = await history.append(_event(run, 2), after)
    await history.append(_event(run, 3), after)
    await asyncio.wait_for(following, 10)
    assert seen == [1, 2, 3]
    resumed = []
    async for recorded in history.follow(run, 2):
        resumed.append(recorded.event.sequence)
        break
    assert resumed == [3]


class _PurgedAfterLast(History):
    """A history whose run is purged on the server right after :meth:`last` answers: the
    read's consumer then delivers nothing, as one lost in a nats-server restart does."""

    purged = 0

    async def last(self, run_id: str) -> Recorded | None:
        found = await super().last(run_id)
        await self._js.purge_stream(RUNS_STREAM, subject=run_subject(run_id))
        self.purged += 1
        return found


async def test_a_read_whose_events_stop_coming_is_unavailable_not_stuck(
        history: History) -> None:
    run = _run_id()
    after = await history.append(_event(run, 1), 0)
    await history.append(_event(run, 2), after)
    cut = _PurgedAfterLast(history._nc, read_idle_s=0.5)
    with pytest.raises(HistoryUnavailable) as caught:
        await asyncio.wait_for(cut.read(run), 30)  # the bound under test is 0.5 s
    assert cut.purged == 1
    assert await history.last(run) is None  # the fault happened: nothing left to deliver
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "stopped coming after 0" in str(caught.value)


async def test_an_event_over_the_payload_limit_is_refused_before_it_is_sent(
        history: History) -> None:
    run = _run_id()
    limit = history._nc.max_payload
    big = pb.StepSucceeded()
    big.output.string_value = "x" * limit
    with pytest.raises(EventTooLarge) as caught:
        await history.append(_event(run, 1, "a", step_succeeded=big), 0)
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.reason == Reason.MESSAGE_TOO_LARGE
    assert caught.value.size > caught.value.limit
    assert await history.read(run) == []
    assert history._nc.is_connected  # nothing went out to make the server close it


async def test_an_append_while_nats_is_down_is_unavailable_and_stored_once_when_retried(
        tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    nc: MeshConnection = await connect(NatsSettings(url=server.url), "test-history-restart")
    try:
        history = History(nc)
        await history.start()
        run = _run_id()
        first = await history.append(_event(run, 1), 0)
        port = server.port
        server.kill()
        await wait_for(lambda: not nc.is_connected, 10, "the client to notice")
        event = _event(run, 2, "a", step_started=pb.StepStarted(attempt=1))
        with pytest.raises(HistoryUnavailable) as caught:
            await history.append(event, first)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert caught.value.reason == Reason.STORE_UNAVAILABLE
        with pytest.raises(HistoryUnavailable):
            await history.read(run)
        server = NatsServer(tmp_path / "nats", port=port).start()
        await wait_for(lambda: nc.is_connected, 15, "the client to reconnect")

        async def stored() -> bool:
            try:
                await history.append(event, first)
            except HistoryUnavailable:
                return False  # JetStream may need a moment after the restart
            return True

        await wait_for(stored, 15, "the append to go through after the restart")
        assert await history.append(event, first) > first  # tried once more: still once
        assert [r.event for r in await history.read(run)][1:] == [event]
    finally:
        await nc.close()
        server.stop()
