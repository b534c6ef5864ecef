"""``revo up --profile cluster`` (mesh.embedded.cluster): the production shape on one machine,
as real processes: three clustered nats-servers, the Milvus server, two gateways behind
Envoy and three nodes. Triton is left out here (it starts as in the default profile; its
own tests cover it) to keep the test to the cluster's own startup."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mesh._gen.revo.mesh.v1 import mesh_pb2
from mesh.client import MeshClient
from mesh.config import MeshConfig
from mesh.embedded.cluster import CLUSTER_REPLICAS, LocalCluster
from mesh.embedded.up import read_state
from mesh.transport.subjects import REGISTRY_BUCKET
from revo_engine_echo._gen.revo.echo.v1 import echo_pb2, echo_pb2_grpc
from revo_engine_parallel._gen.revo.tasks.v1 import tasks_pb2 as pb
from revo_engine_parallel._gen.revo.tasks.v1 import tasks_pb2_grpc
from revo_engine_parallel.store import DEAD_STREAM, KEYS_BUCKET, STREAM, TASKS_BUCKET
from revo_engine_recall.changes import STREAM as RECALL_STREAM

ECHO = "/revo.echo.v1.EchoService/Echo"


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")  # a zombie is gone for our purpose
    return stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z")


@pytest.mark.timeout(300)
async def test_cluster_profile_serves_through_envoy_on_replicated_jetstream(
        mesh_config: Callable[..., MeshConfig]) -> None:
    config = mesh_config(plugins={"only": ["echo", "parallel", "recall"]},
                         models={"triton_embedded": False},
                         envoy={"address": "127.0.0.1:0", "admin_address": "127.0.0.1:0"})
    cluster = LocalCluster.start(config)
    pids: dict[str, int] = {}
    try:
        state = read_state(cluster.launcher.config)
        assert state is not None
        pids = state["processes"]
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

        async with MeshClient(cluster.envoy_address, timeout=10, retry=None) as client:
            nodes = await client.list_nodes()
            assert len(nodes) == 3
            for node in nodes:  # each started its engines (recall on the Milvus server)
                running = {e.name for e in node.engines
                           if e.status == mesh_pb2.ENGINE_STATUS_RUNNING}
                assert running == {"echo", "parallel", "recall"}, node.engines

            echo = echo_pb2_grpc.EchoServiceStub(client.channel)
            reply = await echo.Echo(echo_pb2.EchoRequest(payload=b"through envoy"),
                                    timeout=10)
            assert reply.payload == b"through envoy"

            tasks = tasks_pb2_grpc.TaskServiceStub(client.channel)
            request = echo_pb2.EchoRequest(payload=b"durable").SerializeToString()
            (task,) = (await tasks.Submit(pb.SubmitRequest(tasks=[pb.TaskSpec(
                call=pb.MethodCall(method=ECHO, request=request))]), timeout=10)).tasks
            seen = [t async for t in tasks.Watch(pb.WatchRequest(id=task.id), timeout=30)]
            assert seen[-1].state == pb.TASK_STATE_SUCCEEDED
            assert echo_pb2.EchoResponse.FromString(seen[-1].result).payload == b"durable"
    finally:
        cluster.stop()
    assert [name for name, pid in pids.items() if not _gone(pid)] == []
    assert read_state(cluster.launcher.config) is None
