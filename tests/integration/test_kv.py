"""JetStream key-value buckets (``mesh.transport.kv``) on a real server: opening, reading."""

from __future__ import annotations

import asyncio
import time

import nats
import nats.errors
import pytest
from nats.js.api import KeyValueConfig

from mesh.config import NatsSettings
from mesh.embedded.nats_server import NatsServer
from mesh.transport.connection import connect
from mesh.transport.kv import latest, open_bucket, snapshot


async def test_buckets_read_by_direct_get_and_an_older_bucket_is_given_it(
        nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        fresh, older = f"fresh_{time.time_ns()}", f"older_{time.time_ns()}"
        bucket = await open_bucket(nc, fresh, description="test")
        assert (await js.stream_info(f"KV_{fresh}")).config.allow_direct

        # a bucket made before open_bucket asked for direct gets keeps its values
        made = await js.create_key_value(KeyValueConfig(bucket=older, direct=False))
        await made.put("k", b"v")
        assert not (await js.stream_info(f"KV_{older}")).config.allow_direct
        bucket = await open_bucket(nc, older, description="test")
        assert (await js.stream_info(f"KV_{older}")).config.allow_direct
        assert (await bucket.get("k")).value == b"v"
        await bucket.put("k", b"w")
        assert (await bucket.get("k")).value == b"w"
    finally:
        await nc.close()


async def test_latest_reads_a_value_and_its_revision_by_one_direct_get(
        nats_server: NatsServer) -> None:
    nc = await connect(NatsSettings(url=nats_server.url), "test")
    try:
        name = f"latest_{time.time_ns()}"
        bucket = await open_bucket(nc, name, description="test")
        assert await latest(nc, name, "k") is None
        revision = await bucket.put("k", b"one")
        await bucket.put("other", b"x")
        assert await latest(nc, name, "k") == (b"one", revision)
        revision = await bucket.put("k", b"two")
        # many at once, as a node claiming a fetched batch does
        got = await asyncio.gather(*(latest(nc, name, "k") for _ in range(50)))
        assert set(got) == {(b"two", revision)}
        await bucket.delete("k")
        assert await latest(nc, name, "k") is None
        with pytest.raises(nats.errors.Error, match=r"direct get failed: 503"):
            await latest(nc, "no_such_bucket", "k", timeout=2)
    finally:
        await nc.close()


async def test_a_snapshot_is_the_current_values_without_deleted_keys(
        nats_server: NatsServer) -> None:
    nc = await connect(NatsSettings(url=nats_server.url), "test")
    try:
        name = f"snapshot_{time.time_ns()}"
        bucket = await open_bucket(nc, name, description="test", history=3)
        assert await snapshot(bucket) == []
        for key, value in [("a.1", b"old"), ("a.1", b"new"), ("a.2", b"x"), ("b.1", b"y"),
                           ("a.3", b"gone"), ("a.4", b"purged")]:
            await bucket.put(key, value)
        await bucket.delete("a.3")
        await bucket.purge("a.4")
        assert set(await snapshot(bucket)) == {
            ("a.1", b"new"), ("a.2", b"x"), ("b.1", b"y")}
        assert await snapshot(bucket, "b.*") == [("b.1", b"y")]
    finally:
        await nc.close()
