"""Parallel Mind under load: priority order, owners sharing workers, the pool growing and
shrinking as its gauge shows. Real gateway, node and nats-server; auth on for owners."""

from __future__ import annotations

import re
import time
import urllib.request
from typing import Any

import grpc
import pytest

from mesh.embedded.nats_server import free_port
from mesh.testing import MeshHarness, wait_for
from revo_engine_parallel.v1 import tasks_pb2 as pb
from revo_engine_parallel.v1 import tasks_pb2_grpc
from tests.integration.test_auth import AUTH, add_user, bearer, login, remove_users_since
from tests.integration.test_tasks import PLUGINS, finished, seconds, typed

LIMITS = {**AUTH, "rate_limits": {"roles": {"developer": {"rate": 10_000, "burst": 10_000}}}}


async def _owner(mesh: MeshHarness) -> tuple[Any, Any]:
    user = await add_user(mesh, "developer")
    return (tasks_pb2_grpc.TaskServiceStub(mesh.channel),
            bearer((await login(mesh.channel, user)).access_token))


async def _all_done(tasks: Any, metadata: Any, ids: list[str]) -> list[pb.Task]:
    done = []
    for task_id in ids:
        seen = [t async for t in tasks.Watch(pb.WatchRequest(id=task_id), metadata=metadata,
                                             timeout=60)]
        done.append(seen[-1])
    return done


async def test_higher_priority_runs_first_under_load(mesh_harness: Any) -> None:
    since = time.time()
    mesh: MeshHarness = await mesh_harness(plugins=PLUGINS, auth=LIMITS, engines={
        "parallel": {"workers_min": 1, "workers_max": 1}})
    tasks, metadata = await _owner(mesh)
    # the blocker holds the only worker until the test cancels it
    blocker = (await tasks.Submit(pb.SubmitRequest(tasks=[
        typed("sleep", b"3600000", timeout=seconds(3600))]), metadata=metadata,
        timeout=10)).tasks[0]

    async def blocked() -> bool:
        got = await tasks.Get(pb.GetRequest(id=blocker.id), metadata=metadata, timeout=5)
        return bool(got.state == pb.TASK_STATE_RUNNING)

    await wait_for(blocked, 20, "the blocker to hold the only worker")
    mixed = [typed("sleep", b"10", priority=1 if i % 2 else 9) for i in range(20)]
    submitted = (await tasks.Submit(pb.SubmitRequest(tasks=mixed), metadata=metadata,
                                    timeout=10)).tasks

    async def all_waiting() -> bool:
        # Stats recounts the queue first: the node then knows of both levels' tasks
        stats = await tasks.Stats(pb.StatsRequest(), metadata=metadata, timeout=10)
        depth: dict[int, int] = {d.priority: d.tasks for d in stats.depth}
        return bool(stats.busy_workers == 1 and depth.get(9, 0) >= 10
                    and depth.get(1, 0) >= 10)

    await wait_for(all_waiting, 20, "the 20 tasks to wait in the node's queue count")
    waiting = (await tasks.List(pb.ListRequest(state=pb.TASK_STATE_QUEUED, page_size=1000),
                                metadata=metadata, timeout=10)).tasks
    assert {t.id for t in submitted} <= {t.id for t in waiting}  # none ran yet
    cancelled = await tasks.Cancel(pb.CancelRequest(id=blocker.id), metadata=metadata,
                                   timeout=10)
    assert cancelled.state == pb.TASK_STATE_CANCELLED
    done = await _all_done(tasks, metadata, [t.id for t in submitted])
    assert {t.state for t in done} == {pb.TASK_STATE_SUCCEEDED}
    order = [t.spec.priority for t in sorted(done, key=lambda t: t.finished_at.ToNanoseconds())]
    assert order == [9] * 10 + [1] * 10
    await remove_users_since(mesh, since)


async def test_one_owners_flood_does_not_starve_another(mesh_harness: Any) -> None:
    since = time.time()
    mesh: MeshHarness = await mesh_harness(plugins=PLUGINS, auth=LIMITS, engines={
        "parallel": {"workers_min": 2, "workers_max": 2}})
    flood_tasks, flooder = await _owner(mesh)
    other_tasks, other = await _owner(mesh)
    flood = (await flood_tasks.Submit(pb.SubmitRequest(
        tasks=[typed("sleep", b"20")] * 200), metadata=flooder, timeout=20)).tasks
    mine = (await other_tasks.Submit(pb.SubmitRequest(tasks=[typed("sleep", b"20")] * 5),
                                     metadata=other, timeout=10)).tasks
    done = await _all_done(other_tasks, other, [t.id for t in mine])
    assert {t.state for t in done} == {pb.TASK_STATE_SUCCEEDED}
    last_mine = max(t.finished_at.ToNanoseconds() for t in done)
    listed = await flood_tasks.List(pb.ListRequest(page_size=1000), metadata=flooder, timeout=10)
    flood_before = sum(1 for t in listed.tasks if t.state == pb.TASK_STATE_SUCCEEDED
                       and t.finished_at.ToNanoseconds() <= last_mine)
    # turns alternate: the flood got about as many tasks through as the other owner's five
    assert flood_before <= 20, f"{flood_before} flood tasks ran before the other owner's 5"
    for task in flood:
        await flood_tasks.Cancel(pb.CancelRequest(id=task.id), metadata=flooder, timeout=10)
    await remove_users_since(mesh, since)


def _gauge(address: str, name: str, **labels: str) -> float:
    """The sample of ``name`` whose labels include ``labels``, from the node's /metrics."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    for found in re.finditer(rf"^{name}\{{([^}}]*)\}} ([0-9.e+]+)$", text, re.MULTILINE):
        have = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1)))
        if labels.items() <= have.items():
            return float(found.group(2))
    raise AssertionError(f"{name}{labels} is not exported")


async def test_the_pool_grows_with_work_and_shrinks_when_idle(mesh_harness: Any) -> None:
    address = f"127.0.0.1:{free_port()}"
    mesh: MeshHarness = await mesh_harness(
        plugins=PLUGINS, node={"metrics_address": address},
        engines={"parallel": {"workers_min": 1, "workers_max": 6, "idle_s": 0.5}})
    tasks = tasks_pb2_grpc.TaskServiceStub(mesh.channel)
    assert _gauge(address, "parallel_mind_active_workers") == 1
    submitted = (await tasks.Submit(pb.SubmitRequest(tasks=[typed("sleep", b"300")] * 30),
                                    timeout=10)).tasks
    peak, peak_depth = 0.0, 0.0

    def grown() -> bool:
        nonlocal peak, peak_depth
        peak = max(peak, _gauge(address, "parallel_mind_active_workers"))
        peak_depth = max(peak_depth, _gauge(address, "parallel_mind_queue_depth",
                                            priority="5"))
        return peak == 6

    await wait_for(grown, timeout=20, what="the pool to grow to workers_max")
    assert peak_depth >= 1  # the gauge showed the work that made the pool grow
    for task in submitted:
        assert (await finished(tasks, task.id)).state == pb.TASK_STATE_SUCCEEDED
    await wait_for(lambda: _gauge(address, "parallel_mind_active_workers") == 1, timeout=20,
                   what="the pool to shrink back to workers_min")


async def test_a_task_is_visible_to_its_owner_and_to_managers_only(mesh_harness: Any) -> None:
    since = time.time()
    mesh: MeshHarness = await mesh_harness(plugins=PLUGINS, auth=LIMITS)
    tasks, owner = await _owner(mesh)
    _, stranger = await _owner(mesh)
    admin = bearer((await login(mesh.channel, await add_user(mesh, "admin"))).access_token)
    (task,) = (await tasks.Submit(pb.SubmitRequest(tasks=[typed("noop")]), metadata=owner,
                                  timeout=10)).tasks
    for call in (tasks.Get(pb.GetRequest(id=task.id), metadata=stranger, timeout=5),
                 tasks.Cancel(pb.CancelRequest(id=task.id), metadata=stranger, timeout=5)):
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await call
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await tasks.List(pb.ListRequest(owner="*"), metadata=stranger, timeout=5)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await tasks.Get(pb.GetRequest(id=task.id), metadata=admin, timeout=5)).id == task.id
    everyone = await tasks.List(pb.ListRequest(owner="*", page_size=1000), metadata=admin,
                                timeout=10)
    assert task.id in {t.id for t in everyone.tasks}
    await remove_users_since(mesh, since)
