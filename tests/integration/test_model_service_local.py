"""ModelService with a local model on a real Triton (a tiny random-weight checkpoint made
here) and a cloud fallback on a loopback server: local first, free, counted; readiness
from Triton steers the router."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mesh.embedded.triton import TritonServer
from mesh.models.engine import HEALTH_INTERVAL_S
from mesh.testing import MeshHarness, wait_for
from mesh.testing.llm import FakeLLMServer, answer
from mesh.testing.models import make_checkpoint
from mesh.v1 import models_pb2 as pb
from mesh.v1 import models_pb2_grpc
from tests.integration.test_auth import AUTH, add_user, bearer, login, remove_users_since

REPOSITORY = Path(__file__).resolve().parents[2] / "triton_models"
KEY = "sk-local-first"
KEY_ENV = "REVO_TEST_LOCAL_FIRST_KEY"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("checkpoint") / "tiny", seed=3)


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path,
           models_env: Path) -> Iterator[TritonServer]:
    server = TritonServer(REPOSITORY, tmp_path_factory.mktemp("triton"), models=[],
                          python_env=models_env)
    server.start()
    try:
        server.load_generator(checkpoint)
        yield server
    finally:
        server.stop()


@pytest.fixture
async def mesh(mesh_harness: Any, triton: TritonServer,
               monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[MeshHarness,
                                                                      FakeLLMServer]]:
    monkeypatch.setenv(KEY_ENV, KEY)
    since = time.time()
    with FakeLLMServer(api_key=KEY) as fake:
        catalog = [
            {"name": "local", "provider": "triton", "upstream": "generator", "priority": 0,
             "context_window": 2048, "max_output_tokens": 64},
            {"name": "cloud", "provider": "openai_compatible", "base_url": fake.openai_base_url,
             "api_key_env": KEY_ENV, "priority": 1, "input_usd_per_million": 2.0,
             "output_usd_per_million": 8.0},
        ]
        harness: MeshHarness = await mesh_harness(
            plugins={"only": ["models"]}, auth=AUTH,
            models={"catalog": catalog, "triton_url": triton.grpc_url, "retries": 0})
        yield harness, fake
        await remove_users_since(harness, since)


async def _client(mesh: MeshHarness) -> tuple[Any, Any]:
    user = await add_user(mesh, "developer")
    return (models_pb2_grpc.ModelServiceStub(mesh.channel),
            bearer((await login(mesh.channel, user)).access_token))


async def _generate(stub: Any, metadata: Any, max_tokens: int = 8) -> tuple[str, pb.Done]:
    request = pb.GenerateRequest(messages=[pb.Message(role="user", content="Sort a list")],
                                 sampling=pb.Sampling(max_tokens=max_tokens))
    text, done = "", pb.Done()
    async for reply in stub.Generate(request, metadata=metadata, timeout=60):
        if reply.HasField("done"):
            done = reply.done
        else:
            text += reply.delta
    return text, done


async def test_auto_answers_locally_for_free_and_counts_the_saving(
        mesh: tuple[MeshHarness, FakeLLMServer]) -> None:
    harness, fake = mesh
    stub, metadata = await _client(harness)
    _, done = await _generate(stub, metadata)
    assert (done.model, done.provider, done.finish_reason) == ("local", "triton",
                                                               pb.FINISH_REASON_LENGTH)
    assert done.usage.completion_tokens == 8  # random weights rarely stop on their own
    assert done.usage.prompt_tokens > 0
    assert done.cost_usd == 0
    # savings: what the only cloud model would have charged for the same tokens
    assert done.savings_usd == pytest.approx(
        (done.usage.prompt_tokens * 2.0 + done.usage.completion_tokens * 8.0) / 1e6)
    assert not fake.requests  # nothing went to the cloud
    usage = await stub.GetUsage(pb.GetUsageRequest(), metadata=metadata, timeout=10)
    assert usage.local_share == 1.0
    assert [(r.model, r.requests) for r in usage.rows] == [("local", 1)]


async def test_a_local_model_that_is_not_ready_is_skipped_until_it_is(
        mesh: tuple[MeshHarness, FakeLLMServer], triton: TritonServer,
        checkpoint: Path) -> None:
    harness, fake = mesh
    stub, metadata = await _client(harness)

    async def local_healthy() -> bool:
        listed = await stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=10)
        return bool({m.name: m.healthy for m in listed.models}["local"])

    assert await local_healthy()
    # blocking calls off the loop: the node and the gateway run on it
    await asyncio.to_thread(_repository_call, triton, "generator/unload")
    try:
        await wait_for(lambda: _not(local_healthy), timeout=HEALTH_INTERVAL_S * 4,
                       what="ListModels to show the unloaded model as unhealthy")
        fake.script(answer("from the cloud"))
        text, done = await _generate(stub, metadata)
        assert (text, done.model) == ("from the cloud", "cloud")
        local_only = pb.GenerateRequest(messages=[pb.Message(role="user", content="hi")],
                                        policy=pb.Policy(force_local=True))
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # force_local: no cloud call
            await _drain(stub.Generate(local_only, metadata=metadata, timeout=30))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert len(fake.requests) == 1
    finally:
        await asyncio.to_thread(triton.load_generator, checkpoint)
    await wait_for(local_healthy, timeout=HEALTH_INTERVAL_S * 4,
                   what="the reloaded model to be healthy again")


async def _not(check: Any) -> bool:
    return not await check()


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


def _repository_call(triton: TritonServer, action: str) -> None:
    request = urllib.request.Request(f"{triton.http_url}/v2/repository/models/{action}",
                                     data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=60) as reply:
        assert reply.status == 200
