"""``revo up --profile cluster`` (mesh.embedded.cluster): the production shape on one machine,
as real processes: three clustered nats-servers, the Milvus server, two gateways behind
Envoy and three nodes, with auth on as in production. Triton is left out here (it starts
as in the default profile; its own tests cover it) to keep the module to the cluster.

One cluster serves the module: the first test checks what it is made of, the others bring
a fault on it under the mixed load of the cluster benchmark (:mod:`benchmarks.cluster_load`:
durable tasks, memory writes, workflow runs and plain calls at once, each caller retrying
what failed with a retryable code) and check what the caller was promised: nothing it was
told succeeded is lost, nothing has its effect twice, and every call ended OK or with a
code it may retry. How long calls failed is the benchmark's to measure
(``python -m benchmarks cluster``), not asserted here. Stopping the cluster must leave no
process behind (checked when the module's cluster stops)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.cluster import admin_token, cluster_config, one_fault
from benchmarks.cluster_load import KINDS
from mesh.client import MeshClient
from mesh.embedded.cluster import CLUSTER_REPLICAS, LocalCluster
from mesh.embedded.up import read_state
from mesh.testing import wait_for
from mesh.transport.subjects import REGISTRY_BUCKET
from mesh.v1 import mesh_pb2
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc
from revo_engine_parallel.store import DEAD_STREAM, KEYS_BUCKET, STREAM, TASKS_BUCKET
from revo_engine_parallel.v1 import tasks_pb2 as pb
from revo_engine_parallel.v1 import tasks_pb2_grpc
from revo_engine_recall.changes import STREAM as RECALL_STREAM

ECHO = "/revo.echo.v1.EchoService/Echo"


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")  # a zombie is gone for our purpose
    return stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    started = LocalCluster.start(cluster_config(tmp_path_factory.mktemp("cluster") / "home"))
    pids: dict[str, int] = {}
    try:
        state = read_state(started.launcher.config)
        assert state is not None
        pids = dict(state["processes"])
        yield started
        # the parts running now (the faults' restarted ones have new pids)
        pids |= {f"{name} (now)": pid for name in started.parts()
                 if (pid := started.pid(name)) is not None}
    finally:
        started.stop()
    # stopped: every process is gone, and so is the state file
    assert [name for name, pid in pids.items() if not _gone(pid)] == []
    assert read_state(started.launcher.config) is None


@pytest.fixture(scope="module")
def token(cluster: LocalCluster) -> str:
    return asyncio.run(admin_token(cluster))


@pytest.mark.timeout(300)
async def test_cluster_profile_serves_through_envoy_on_replicated_jetstream(
        cluster: LocalCluster, token: str) -> None:
    state = read_state(cluster.launcher.config)
    assert state is not None
    assert {"nats-1", "nats-2", "nats-3", "milvus", "gateway-1", "gateway-2", "node-1",
            "node-2", "node-3", "envoy"} <= set(state["processes"])
    assert len(cluster.nats.url.split(",")) == 3

    # every stream and bucket the gateways and engines made: 3 replicas, a leader
    streams = cluster.nats.streams()
    for stream in (STREAM, DEAD_STREAM, f"KV_{TASKS_BUCKET}", f"KV_{KEYS_BUCKET}",
                   RECALL_STREAM, f"KV_{REGISTRY_BUCKET}"):
        assert stream in streams
    for stream in streams:
        info = cluster.nats.wait_replicated(stream)
        assert info["config"]["num_replicas"] == CLUSTER_REPLICAS, stream
        assert cluster.nats.stream_leader(stream) is not None
    assert cluster.nats.meta_leader() is not None

    async with MeshClient(cluster.envoy_address, timeout=10, retry=None,
                          token=token) as client:
        nodes = await client.list_nodes()
        assert len(nodes) == 3

        async def recall_running() -> bool:  # each node loads its index from Milvus first
            nonlocal nodes
            nodes = await client.list_nodes()
            statuses = [next(e for e in node.engines if e.name == "recall").status
                        for node in nodes]
            assert set(statuses) <= {mesh_pb2.ENGINE_STATUS_LOADING,
                                     mesh_pb2.ENGINE_STATUS_RUNNING}, nodes
            return statuses == [mesh_pb2.ENGINE_STATUS_RUNNING] * 3

        # recall on the Milvus server, on every node
        await wait_for(recall_running, 60, "recall running on every node")

        echo = echo_pb2_grpc.EchoServiceStub(client.channel)
        reply = await echo.Echo(echo_pb2.EchoRequest(payload=b"through envoy"), timeout=10)
        assert reply.payload == b"through envoy"

        tasks = tasks_pb2_grpc.TaskServiceStub(client.channel)
        request = echo_pb2.EchoRequest(payload=b"durable").SerializeToString()
        (task,) = (await tasks.Submit(pb.SubmitRequest(tasks=[pb.TaskSpec(
            call=pb.MethodCall(method=ECHO, request=request))]), timeout=10)).tasks
        seen = [t async for t in tasks.Watch(pb.WatchRequest(id=task.id), timeout=30)]
        assert seen[-1].state == pb.TASK_STATE_SUCCEEDED
        assert echo_pb2.EchoResponse.FromString(seen[-1].result).payload == b"durable"


def _kept_every_promise(report: dict[str, Any]) -> None:
    for kind in ("task", "memory", "run"):
        assert report[kind]["acked"] > 0, f"no {kind} was acknowledged: the load did not run"
    assert report["lost"] == 0, report
    assert report["duplicated"] == 0, report
    assert report["bad_codes"] == {}, report["bad_examples"]
    assert report["gave_up"] == 0, {kind: report[kind] for kind in KINDS}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("fault", ["node", "stream_leader"])
async def test_under_load_a_fault_loses_nothing_acknowledged_and_repeats_nothing(
        cluster: LocalCluster, token: str, fault: str) -> None:
    """A node SIGKILLed, or the nats-server leading Parallel Mind's task stream SIGKILLed
    (its replicas elect a leader; supervision starts the server again), while the load
    runs."""
    report = await one_fault(cluster, token, fault, 0, after_s=5.0, before_s=1.5, lanes=1)
    # the fault happened: the victim died, and for a leader another member leads now
    assert report.get("pid"), report
    if fault == "stream_leader":
        assert report["new_leader_after_s"] > 0
    _kept_every_promise(report)
