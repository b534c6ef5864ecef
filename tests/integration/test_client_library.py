"""The client library (``mesh.client``) against a running mesh: facades with typed results
and typed errors, the blocking client, access tokens refreshed across their expiry,
watches resumed after the gateway's maximum call time, and retries of refused calls."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from mesh.client import AsyncClient, Client, RetryPolicy, rpc_error
from mesh.client.session import token_lifetime_s
from mesh.client.streams import read
from mesh.errors import DeadlineExceeded, InvalidArgument, NotFound, RateLimited
from mesh.testing import MeshHarness, wait_for
from mesh.v1 import auth_pb2, auth_pb2_grpc
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc
from revo_engine_parallel.v1 import tasks_pb2
from revo_engine_workflows.v1 import workflows_pb2
from tests.integration.test_auth import unique

PASSWORD = "correct horse battery"
ROOT = Path(__file__).resolve().parents[2]
ECHO = "/revo.echo.v1.EchoService/Echo"


async def _mesh(mesh_harness: Any, **sections: Any) -> tuple[MeshHarness, str]:
    """A mesh with auth on and a developer of its own; the developer's name."""
    auth = {"enabled": True, **sections.pop("auth", {})}
    mesh = await mesh_harness(auth=auth, **sections)
    assert mesh.gateway.guard is not None
    user = unique("dev")
    await mesh.gateway.guard.users.create(user, "developer", PASSWORD)
    return mesh, user


async def test_facades_answer_typed_results_and_raise_typed_errors(mesh_harness) -> None:
    mesh, user = await _mesh(mesh_harness, plugins={"only": ["parallel", "workflows"]})
    # The NATS server is shared by the whole session: names and keys are this test's own.
    key, run_key, workflow = unique("k1"), unique("g1"), unique("greet")
    async with AsyncClient(mesh.target, username=user, password=PASSWORD) as client:
        task = await client.tasks.submit("noop", b"hello", idempotency_key=key)
        done = await client.tasks.wait(task.id)
        assert done.state == tasks_pb2.TASK_STATE_SUCCEEDED
        assert done.result == b"hello"
        again = await client.tasks.submit("noop", b"hello", idempotency_key=key)
        assert again.id == task.id
        assert again.deduplicated

        with pytest.raises(NotFound) as missing:
            await client.tasks.get("no-such-task")
        assert "no-such-task" in missing.value.message
        with pytest.raises(InvalidArgument) as bad:
            await client.tasks.submit("noop", timeout_s=-1)
        assert "timeout" in bad.value.message

        await client.workflows.create({"name": workflow, "steps": [
            {"id": "hello", "task": {"type": "noop", "payload": "hi"}}]})
        run = await client.workflows.start(workflow, {"who": "you"},
                                           idempotency_key=run_key)
        finished = await client.workflows.wait(run.id)
        assert finished.id == run.id
        assert finished.state == workflows_pb2.RUN_STATE_SUCCEEDED
        assert (await client.workflows.start(workflow, idempotency_key=run_key)).id == run.id


async def test_the_blocking_client_has_the_same_facades(mesh_harness) -> None:
    mesh, user = await _mesh(mesh_harness, plugins={"only": ["parallel"]})

    def use() -> tuple[int, bytes, str]:
        with Client(mesh.target, username=user, password=PASSWORD) as client:
            task = client.tasks.submit("noop", {"n": 1})
            states = [t.state for t in client.tasks.watch(task.id)]
            try:
                client.tasks.cancel("no-such-task")
            except NotFound as exc:
                refused = type(exc).__name__
            return states[-1], client.tasks.get(task.id).result, refused

    state, result, refused = await asyncio.to_thread(use)  # the mesh runs on this loop
    assert state == tasks_pb2.TASK_STATE_SUCCEEDED
    assert result == b'{"n": 1}'
    assert refused == "NotFound"


async def test_access_tokens_are_refreshed_across_their_expiry(mesh_harness) -> None:
    mesh, user = await _mesh(mesh_harness, plugins={"only": ["echo"]},
                             auth={"access_ttl_s": 3, "leeway_s": 0})
    async with AsyncClient(mesh.target, username=user, password=PASSWORD) as client:
        echo = echo_pb2_grpc.EchoServiceStub(client.channel)
        assert (await echo.Echo(echo_pb2.EchoRequest(payload=b"1"))).caller == user
        first = client.session.current
        assert token_lifetime_s(first) == 3
        raw = auth_pb2_grpc.AuthServiceStub(mesh.channel)

        async def first_expired() -> bool:
            """The gateway refuses the first token now (and the client still calls)."""
            assert (await echo.Echo(echo_pb2.EchoRequest(payload=b"2"))).caller == user
            try:
                await raw.WhoAmI(auth_pb2.WhoAmIRequest(), timeout=5,
                                 metadata=(("authorization", f"Bearer {first}"),))
            except grpc.aio.AioRpcError as exc:
                refusals.append(exc.details() or "")
                return True
            return False

        refusals: list[str] = []
        await wait_for(first_expired, 10, "the first access token to expire")
        assert "expired" in refusals[0], refusals
        assert (await echo.Echo(echo_pb2.EchoRequest(payload=b"3"))).caller == user
        assert client.session.refreshes >= 1
        assert client.session.current != first


async def test_a_watch_outlives_the_gateways_maximum_call_time(mesh_harness) -> None:
    mesh, user = await _mesh(mesh_harness, plugins={"only": ["parallel", "workflows"]},
                             gateway={"max_timeout_s": 1.0})
    async with AsyncClient(mesh.target, username=user, password=PASSWORD) as client:
        workflow = unique("approve")  # the NATS server is the session's
        await client.workflows.create({"name": workflow, "steps": [
            {"id": "ask", "waitSignal": {"name": "go"}},
            {"id": "after", "needs": ["ask"], "task": {"type": "noop", "payload": "done"}}]})
        run = await client.workflows.start(workflow)
        events: list[Any] = []

        async def watch() -> None:
            async for event in client.workflows.watch(run.id):
                events.append(event)

        watching = asyncio.ensure_future(watch())
        try:
            # each stream is cut at max_timeout_s (1 s): the client opened it again twice
            await wait_for(lambda: client.resumes >= 2, 20, "two resumed watches")
            assert not watching.done()
            await client.workflows.signal(run.id, "go", {"ok": True})
            await asyncio.wait_for(watching, 30)
        finally:
            watching.cancel()
    sequences = [e.sequence for e in events]
    assert sequences == list(range(1, len(events) + 1)), sequences  # no gap, no repeat
    assert events[-1].WhichOneof("event") == "run_finished"


async def test_a_rate_limited_call_is_tried_again_after_the_wait_it_names(
        mesh_harness) -> None:
    rate, burst = 4.0, 1  # one call, then one more every 0.25 s
    mesh, user = await _mesh(mesh_harness, plugins={"only": ["echo"]}, auth={
        "rate_limits": {"methods": {ECHO: {"rate": rate, "burst": burst}}}},
        engines={"echo": {"pool_size": 1}})  # one actor: Stats counts every Echo
    async with AsyncClient(mesh.target, username=user, password=PASSWORD,
                           retry=None) as plain:
        echo = echo_pb2_grpc.EchoServiceStub(plain.channel)
        await echo.Echo(echo_pb2.EchoRequest(payload=b"a"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await echo.Echo(echo_pb2.EchoRequest(payload=b"b"))
        error = rpc_error(refused.value)  # what the facades raise
        assert isinstance(error, RateLimited)
        assert error.retry_after is not None
        assert 0 < error.retry_after <= 1

    async with AsyncClient(mesh.target, username=user, password=PASSWORD,
                           retry=RetryPolicy(max_attempts=10)) as patient:
        echo = echo_pb2_grpc.EchoServiceStub(patient.channel)
        before = (await echo.Stats(echo_pb2.StatsRequest())).answered
        refused_before = _rate_limited(mesh)
        for payload in (b"c", b"d", b"e"):  # back to back: refused, then tried again
            await echo.Echo(echo_pb2.EchoRequest(payload=payload))
        after = (await echo.Stats(echo_pb2.StatsRequest())).answered
    assert _rate_limited(mesh) > refused_before  # the limiter did refuse some attempts
    assert after - before == 3  # each call ran once: a refused attempt never ran


def _rate_limited(mesh: MeshHarness) -> float:
    """The gateway's count of calls to Echo refused by a rate limit, from its /metrics."""
    with urllib.request.urlopen(mesh.gateway.metrics.url, timeout=5) as reply:
        text = reply.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("revo_gateway_rate_limited_total{")
               and 'method="Echo"' in line)


async def test_a_stream_has_no_deadline_but_an_idle_timeout(mesh_harness) -> None:
    mesh, user = await _mesh(mesh_harness, plugins={"only": ["echo"]})
    async with AsyncClient(mesh.target, username=user, password=PASSWORD,
                           timeout=0.5) as client:
        count = echo_pb2_grpc.EchoServiceStub(client.channel).Count
        # 4 messages 0.3 s apart: longer than the unary timeout, which streams do not get
        every = [r.index async for r in count(echo_pb2.CountRequest(count=4, interval_ms=300))]
        assert every == [0, 1, 2, 3]
        quiet = count(echo_pb2.CountRequest(count=2, interval_ms=5000))
        seen: list[int] = []

        async def drain() -> None:
            async for message in read(quiet, 0.5, "Count"):
                seen.append(message.index)

        with pytest.raises(DeadlineExceeded) as idle:
            await drain()
        assert seen == [0]
        assert "no message for 0.5 s" in idle.value.message
        assert quiet.cancelled() or quiet.done()


async def test_the_recall_facade_reads_its_own_writes_and_pages_a_scope(
        mesh_harness) -> None:
    mesh, user = await _mesh(mesh_harness, plugins={"only": ["recall"]}, engines={
        "recall": {"collection": f"t_{uuid.uuid4().hex[:12]}"}})
    pool: Any = mesh.nodes[0].pools["recall"]
    await wait_for(lambda: pool.engine.replica.index is not None, 30, "the memory index")
    rng = np.random.default_rng(7)
    unit = rng.standard_normal((3, 384)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    texts = ["the cache is in S3", "deploys are on Tuesday", "tests never sleep"]
    async with AsyncClient(mesh.target, username=user, password=PASSWORD) as client:
        stored = [await client.recall.remember(text, scope="project:facade", vector=v.tolist(),
                                               metadata={"n": i})
                  for i, (text, v) in enumerate(zip(texts, unit, strict=True))]
        assert len({r.id for r in stored}) == 3
        hits = await client.recall.search(vector=unit[1].tolist(), scopes=["project:facade"],
                                          top_k=1)
        assert [h.memory.text for h in hits] == [texts[1]]
        assert [m.text for m in await client.recall.get(stored[2].id)] == [texts[2]]
        listed = [m.text async for m in client.recall.memories("project:facade", page_size=2)]
        assert listed == texts  # oldest first, across two pages
        assert await client.recall.forget(stored[0].id) == 1
        listed = [m.text async for m in client.recall.memories("project:facade", page_size=2)]
        assert listed == texts[1:]
        with pytest.raises(ValueError, match="start with one of"):
            await client.recall.search("x", scopes=["team:red"])


async def test_the_client_tour_example_runs(mesh_harness) -> None:
    mesh, user = await _mesh(mesh_harness, plugins={"only": ["parallel", "workflows"]})
    env = {**os.environ, "REVO_URL": mesh.target, "REVO_USERNAME": user,
           "REVO_PASSWORD": PASSWORD}
    done = await asyncio.to_thread(  # the mesh runs on this loop: wait off it
        subprocess.run, [sys.executable, str(ROOT / "examples" / "client_tour.py")],
        env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sum("TASK_STATE_SUCCEEDED" in line for line in lines) == 3, lines
    assert any("run_finished" in line for line in lines), lines
    assert any(line.startswith("recall skipped:") for line in lines), lines  # not loaded
