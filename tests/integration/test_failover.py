"""Nodes as real processes: load sharing, SIGKILL under load, and SIGTERM draining."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

import grpc
import pytest

from mesh.gateway import Gateway
from mesh.testing import spawn_node, wait_for
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc

ECHO_SERVICE = "revo.echo.v1.EchoService"


@pytest.fixture
async def gateway(mesh_config):
    config = mesh_config(gateway={"accept_timeout_s": 1.0})
    gw = Gateway(config)
    await gw.start()
    yield gw
    await gw.stop(grace=1.0)


def _serving(gw: Gateway, *node_ids: str):
    def check() -> bool:
        assert gw._view is not None
        return set(node_ids) <= set(gw._view.snapshot.service_nodes.get(ECHO_SERVICE, []))
    return check


def _node_env(node_id: str) -> dict[str, str]:
    return {"REVO_PLUGINS__ONLY": "echo", "REVO_NODE__ID": node_id}


async def test_sigkill_under_load_loses_nothing_silently(gateway, tmp_path):
    ids = ["kill-a", "kill-b"]
    nodes = [spawn_node(gateway.config, tmp_path / f"{i}.log", extra_env=_node_env(i))
             for i in ids]
    try:
        await wait_for(_serving(gateway, *ids), 30, "two nodes serving echo")
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = echo_pb2_grpc.EchoServiceStub(channel)
            outcomes: list[tuple[int, str, grpc.StatusCode | None, float]] = []
            total, concurrency, kill_after = 1500, 16, 300
            issued = iter(range(total))
            killed = asyncio.Event()
            limit = time.monotonic() + 90  # the whole load is bounded in time as well

            async def worker() -> None:
                for i in issued:
                    if time.monotonic() > limit:
                        return
                    payload = f"call-{i}".encode()
                    started = time.monotonic()
                    try:
                        reply = await stub.Echo(echo_pb2.EchoRequest(payload=payload), timeout=8)
                    except grpc.aio.AioRpcError as exc:
                        outcomes.append((i, "", exc.code(), time.monotonic() - started))
                        continue
                    assert reply.payload == payload, "a reply went to the wrong call"
                    outcomes.append((i, reply.node_id, None, time.monotonic() - started))
                    if len(outcomes) >= kill_after and not killed.is_set():
                        killed.set()
                        nodes[0].send_signal(signal.SIGKILL)

            await asyncio.gather(*(worker() for _ in range(concurrency)))

            ok = [o for o in outcomes if o[2] is None]
            failed = [o for o in outcomes if o[2] is not None]
            served_by = Counter(o[1] for o in ok)
            assert killed.is_set()
            assert len(outcomes) == total
            assert len(served_by) == 2, f"both nodes should share the load: {served_by}"
            assert {o[2] for o in failed} <= {grpc.StatusCode.UNAVAILABLE}, Counter(
                o[2] for o in failed)
            # none hung: a lost call is reported within the accept timeout, far before 8 s
            assert max(o[3] for o in outcomes) < 5.0
            # every failed call succeeds on retry against the surviving node
            for i, _, _, _ in failed:
                payload = f"call-{i}".encode()
                reply = await stub.Echo(echo_pb2.EchoRequest(payload=payload), timeout=8)
                assert reply.payload == payload
    finally:
        for process in nodes:
            if process.poll() is None:
                process.kill()
                process.wait()


async def test_sigterm_finishes_in_flight_calls_then_exits_zero(gateway, tmp_path):
    node = spawn_node(gateway.config, tmp_path / "node.log", extra_env=_node_env("drain"))
    try:
        await wait_for(_serving(gateway, "drain"), 30, "the node serving echo")
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = echo_pb2_grpc.EchoServiceStub(channel)
            slow = [asyncio.ensure_future(stub.Echo(
                echo_pb2.EchoRequest(payload=b"slow%d" % i, delay_ms=800), timeout=10))
                for i in range(4)]
            # the node holds all four (2 running, 2 queued): it has acknowledged each of them
            await wait_for(lambda: len(gateway._requester._by_node.get("drain", ())) == 4,
                           10, "the node to accept the four calls")
            os.kill(node.pid, signal.SIGTERM)
            replies = await asyncio.gather(*slow)
            assert [r.payload for r in replies] == [b"slow%d" % i for i in range(4)]
            code = await asyncio.to_thread(node.wait, 15)  # exits on its own after draining
            assert code == 0
            # a call after it left is refused clearly, not hung
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Echo(echo_pb2.EchoRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
