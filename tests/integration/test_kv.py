"""Opening JetStream key-value buckets (``mesh.transport.kv.open_bucket``) on a real server."""

from __future__ import annotations

import time

import nats
from nats.js.api import KeyValueConfig

from mesh.embedded.nats_server import NatsServer
from mesh.transport.kv import open_bucket


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
