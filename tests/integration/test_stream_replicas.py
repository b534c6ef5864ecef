"""``nats.replicas``: every stream and bucket is made with it, and an existing one with
fewer replicas is raised to it (on a real three-server JetStream cluster)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.js.api import StreamConfig
from nats.js.errors import APIError

from mesh.config import NatsSettings
from mesh.embedded.nats_cluster import NatsCluster
from mesh.embedded.nats_server import NatsServer
from mesh.transport import counters
from mesh.transport.connection import connect
from mesh.transport.kv import open_bucket
from mesh.transport.streams import ensure_stream


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    cluster = NatsCluster(Path(tmp_path_factory.mktemp("cluster"))).start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_streams_and_buckets_take_nats_replicas_and_older_ones_are_raised(
        nats_cluster: NatsCluster) -> None:
    suffix = time.time_ns()
    one = await connect(NatsSettings(url=nats_cluster.url, replicas=1), "before")
    three = await connect(NatsSettings(url=nats_cluster.url, replicas=3), "after")
    try:
        # made while the mesh ran with one replica
        await ensure_stream(one, StreamConfig(name=f"OLD_{suffix}",
                                              subjects=[f"old{suffix}.>"]))
        bucket = await open_bucket(one, f"old_{suffix}", description="test")
        await bucket.put("k", b"kept")
        assert (await one.jetstream().stream_info(f"OLD_{suffix}")).config.num_replicas == 1

        await ensure_stream(three, StreamConfig(name=f"OLD_{suffix}",
                                                subjects=[f"old{suffix}.>"]))
        bucket = await open_bucket(three, f"old_{suffix}", description="test")
        await ensure_stream(three, StreamConfig(name=f"NEW_{suffix}",
                                                subjects=[f"new{suffix}.>"]))
        await counters.ensure_counter_stream(three, f"COUNT_{suffix}", [f"count{suffix}.>"],
                                             max_age=60, memory=True)
        fresh = await open_bucket(three, f"fresh_{suffix}", description="test")
        await fresh.put("k", b"first")

        for stream in (f"OLD_{suffix}", f"KV_old_{suffix}", f"NEW_{suffix}",
                       f"COUNT_{suffix}", f"KV_fresh_{suffix}"):
            info = nats_cluster.wait_replicated(stream, timeout=30)
            assert info["config"]["num_replicas"] == 3, stream
        assert (await bucket.get("k")).value == b"kept"
    finally:
        await one.close()
        await three.close()


async def test_a_new_stream_or_bucket_takes_a_publish_at_once_and_the_probe_stores_nothing(
        nats_cluster: NatsCluster) -> None:
    """In CI, a one-replica bucket just made on the cluster refused its first put with "no
    responders": the create was answered before the server the client is on could route
    the bucket's subjects. ensure_stream and open_bucket now return only once a publish
    from the connection reaches the stream; their probe must store nothing."""
    nc = await connect(NatsSettings(url=nats_cluster.url, replicas=1), "at once")
    try:
        js = nc.jetstream()
        for i in range(8):  # bounded
            suffix = f"{time.time_ns()}_{i}"
            await ensure_stream(nc, StreamConfig(name=f"AT_ONCE_{suffix}",
                                                 subjects=[f"atonce{suffix}.>"]))
            await js.publish(f"atonce{suffix}.x", b"one")
            bucket = await open_bucket(nc, f"at_once_{suffix}", description="test")
            await bucket.put("k", b"one")
            for stream in (f"AT_ONCE_{suffix}", f"KV_at_once_{suffix}"):
                assert (await js.stream_info(stream)).state.messages == 1, stream
    finally:
        await nc.close()


async def test_more_replicas_than_servers_is_refused_with_nats_reason(
        nats_server: NatsServer) -> None:
    nc = await connect(NatsSettings(url=nats_server.url, replicas=3), "too many")
    try:
        with pytest.raises(APIError, match=r"insufficient resources|replicas"):
            await ensure_stream(nc, StreamConfig(name=f"R3_{time.time_ns()}",
                                                 subjects=[f"r3{time.time_ns()}.>"]))
    finally:
        await nc.close()


async def test_cluster_handles_name_leaders_and_a_lost_leader_is_replaced(
        nats_cluster: NatsCluster) -> None:
    nc = await connect(NatsSettings(url=nats_cluster.url, replicas=3), "leaders")
    try:
        name = f"LEAD_{time.time_ns()}"
        await ensure_stream(nc, StreamConfig(name=name, subjects=[f"{name.lower()}.>"]))
        nats_cluster.wait_replicated(name)
        assert nats_cluster.stream_leader(name) in nats_cluster.servers
    finally:
        await nc.close()
    first = nats_cluster.wait_formed()
    assert nats_cluster.meta_leader() is first

    first.kill()
    second = nats_cluster.wait_formed()
    assert second is not first
    first.start()  # same ports and store
    nats_cluster.wait_formed(all_running=True)

    leader = nats_cluster.wait_formed()
    follower = next(s for s in nats_cluster.servers if s is not leader)
    follower.pause()  # a partition: the process lives, answers nothing
    try:
        assert not follower.serving
        assert nats_cluster.wait_formed() is leader  # the others carry on
    finally:
        follower.resume()
    nats_cluster.wait_formed(all_running=True)
