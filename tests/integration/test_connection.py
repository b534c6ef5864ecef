"""The mesh's direct NATS path against a real server, through a server restart, a hung
server, and JetStream lookups left unanswered."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.api import StreamConfig

from mesh.config import NatsSettings
from mesh.embedded.nats_server import NatsServer
from mesh.testing import wait_for
from mesh.transport.connection import connect, encode_headers
from mesh.transport.streams import ensure_stream, find_stream


async def test_direct_subscription_and_publish_survive_a_server_restart(tmp_path):
    server = NatsServer(tmp_path / "nats").start()
    try:
        settings = NatsSettings(url=server.url)
        nc = await connect(settings, "test")
        got: list[tuple[str, bytes, dict[str, str] | None]] = []
        await nc.subscribe_direct("t.direct", lambda s, r, d, hd: got.append((r, d, hd)))

        nc.publish_nowait("t.direct", b"one", "re.ply", encode_headers({"A": "1"}))
        nc.publish_nowait("t.direct", b"two")
        await wait_for(lambda: len(got) == 2, 5, "both messages")
        assert got == [("re.ply", b"one", {"A": "1"}), ("", b"two", None)]

        port = server.port
        server.kill()
        await wait_for(lambda: not nc.is_connected, 10, "the client to notice")
        nc.publish_nowait("t.direct", b"while away")  # kept until reconnected
        server = NatsServer(tmp_path / "nats", port=port).start()
        await wait_for(lambda: nc.is_connected, 15, "the client to reconnect")
        nc.publish_nowait("t.direct", b"after")
        await wait_for(lambda: len(got) == 4, 10, "the messages sent around the restart")
        assert [d for _, d, _ in got[2:]] == [b"while away", b"after"]
        await nc.close()
    finally:
        server.stop()


async def test_publish_larger_than_the_server_allows_is_refused_locally(nats_server):
    import nats.errors

    nc = await connect(NatsSettings(url=nats_server.url), "test")
    try:
        with pytest.raises(nats.errors.MaxPayloadError):
            nc.publish_nowait("t.big", b"x" * (nc.max_payload + 1))
        # a round trip after it: had the message gone out, the server would have closed
        # the connection before answering (it handles a client's commands in order)
        await nc.flush(timeout=5)
        assert nc.is_connected  # the connection was not sacrificed
    finally:
        await nc.close()


async def test_a_connection_whose_server_hangs_moves_to_another_member(tmp_path):
    """A nats-server that stops answering but keeps its sockets open (SIGSTOP: a hung
    process, or a partition) is noticed by pings (``nats.ping_interval_s``) and left for
    another member of the cluster; nats-py's own default would take four minutes."""
    from mesh.embedded.nats_cluster import NatsCluster

    cluster = NatsCluster(tmp_path / "cluster", size=3).start()
    nc = None
    try:
        nc = await connect(NatsSettings(url=cluster.url, ping_interval_s=0.5), "test-hang")
        def port() -> int | None:
            return nc.connected_url.port if nc.connected_url is not None else None

        hung = next(s for s in cluster.servers if s.port == port())
        hung.pause()
        try:
            await wait_for(lambda: nc.is_connected and port() != hung.port,
                           30, "the connection to leave the hung server")
            await nc.flush(timeout=5)  # and it works on its new server
        finally:
            hung.resume()
    finally:
        if nc is not None:
            await nc.close()
        cluster.stop()


async def test_a_stream_lookup_jetstream_leaves_unanswered_is_asked_again(tmp_path, caplog):
    """A process's first question to JetStream (does my stream or bucket exist?) left
    unanswered, as by a busy meta leader, is asked again instead of failing the process
    (a gateway exited so at start in a CI run of the cluster profile)."""
    server = NatsServer(tmp_path / "nats").start()
    # pings far apart: the connection stays up while the server does not answer
    nc = await connect(NatsSettings(url=server.url, ping_interval_s=30), "test-lookup")
    try:
        await ensure_stream(nc, StreamConfig(name="LOOKED_UP", subjects=["looked.up"]))
        server.pause()
        try:
            lookup = asyncio.create_task(find_stream(nc, "LOOKED_UP", attempt_s=0.3))
            await wait_for(lambda: "left a lookup unanswered" in caplog.text, 10,
                           "a lookup left unanswered")
        finally:
            server.resume()
        info = await lookup
        assert info is not None
        assert info.config.name == "LOOKED_UP"
        assert await find_stream(nc, "NOT_THERE") is None
    finally:
        await nc.close()
        server.stop()
