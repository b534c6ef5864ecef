"""A local model whose calls fail shows as unhealthy, though Triton still reports it ready;
the router falls back, Embed refuses at once, and both recover when calls work again.

A real Triton serves a small model repository made here: an ``embedder`` and a
``generator`` with the real models' inputs and outputs that raise while a ``FAIL`` file
sits beside their ``model.py`` (what a stub broken by NumPy 2 looks like from outside:
every call fails, the model stays ready).
"""

from __future__ import annotations

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
from mesh.v1 import models_pb2 as pb
from mesh.v1 import models_pb2_grpc
from tests.integration.test_auth import AUTH, add_user, bearer, login, remove_users_since

REPOSITORY = Path(__file__).resolve().parents[2] / "triton_models"
KEY = "sk-model-health"
KEY_ENV = "REVO_TEST_MODEL_HEALTH_KEY"

_EMBEDDER = '''
import os
import numpy as np
import triton_python_backend_utils as pb_utils

FAIL = os.path.join(os.path.dirname(__file__), "FAIL")


class TritonPythonModel:
    def execute(self, requests):
        if os.path.exists(FAIL):
            raise RuntimeError("the embedder is broken (FAIL file)")
        responses = []
        for request in requests:
            count = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().shape[0]
            vectors = np.zeros((count, 384), dtype=np.float32)
            vectors[:, 0] = 1.0
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("EMBEDDING", vectors)]))
        return responses
'''

_GENERATOR = '''
import os
import numpy as np
import triton_python_backend_utils as pb_utils

FAIL = os.path.join(os.path.dirname(__file__), "FAIL")


def _text(name, value):
    return pb_utils.Tensor(name, np.array([value.encode()], dtype=np.object_))


def _count(name, value):
    return pb_utils.Tensor(name, np.array([value], dtype=np.int32))


class TritonPythonModel:
    def execute(self, requests):
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        for request in requests:
            sender = request.get_response_sender()
            if os.path.exists(FAIL):
                sender.send(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError("the generator is broken")),
                    flags=final)
                continue
            sender.send(pb_utils.InferenceResponse(output_tensors=[_text("text_output", "local")]))
            sender.send(pb_utils.InferenceResponse(output_tensors=[
                _text("text_output", ""), _count("num_input_tokens", 3),
                _count("num_output_tokens", 1), _text("finish_reason", "stop")]), flags=final)
        return None
'''


def _failing_repository(root: Path) -> Path:
    for name, code in (("embedder", _EMBEDDER), ("generator", _GENERATOR)):
        (root / name / "1").mkdir(parents=True)
        config = (REPOSITORY / name / "config.pbtxt").read_text()
        if name == "embedder":  # one instance, no batching delay: the test's calls are few
            config = config.replace("max_queue_delay_microseconds: 2000",
                                    "max_queue_delay_microseconds: 0")
        (root / name / "config.pbtxt").write_text(config)
        (root / name / "1" / "model.py").write_text(code)
    return root


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory, models_env: Path) -> Iterator[TritonServer]:
    repository = _failing_repository(tmp_path_factory.mktemp("failing-models"))
    server = TritonServer(repository, tmp_path_factory.mktemp("triton"),
                          models=["embedder", "generator"], python_env=models_env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _breaking(triton: TritonServer, model: str, broken: bool) -> None:
    flag = triton.model_repository / model / "1" / "FAIL"
    if broken:
        flag.write_text("")
    else:
        flag.unlink(missing_ok=True)


def _triton_says_ready(triton: TritonServer, model: str) -> bool:
    with urllib.request.urlopen(f"{triton.http_url}/v2/models/{model}/ready",
                                timeout=5) as reply:
        return bool(reply.status == 200)


@pytest.fixture
async def mesh(mesh_harness: Any, triton: TritonServer,
               monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[MeshHarness,
                                                                      FakeLLMServer]]:
    monkeypatch.setenv(KEY_ENV, KEY)
    since = time.time()
    with FakeLLMServer(api_key=KEY) as fake:
        catalog = [
            {"name": "local", "provider": "triton", "upstream": "generator", "priority": 0,
             "context_window": 2048, "max_output_tokens": 16},
            {"name": "cloud", "provider": "openai_compatible", "base_url": fake.openai_base_url,
             "api_key_env": KEY_ENV, "priority": 1, "input_usd_per_million": 2.0,
             "output_usd_per_million": 8.0},
        ]
        harness: MeshHarness = await mesh_harness(
            plugins={"only": ["models"]}, auth=AUTH,
            models={"catalog": catalog, "triton_url": triton.grpc_url, "retries": 0,
                    "cooldown_after": 2, "cooldown_s": 600})
        yield harness, fake
        await remove_users_since(harness, since)
    for model in ("embedder", "generator"):
        _breaking(triton, model, False)


async def _client(mesh: MeshHarness) -> tuple[Any, Any]:
    user = await add_user(mesh, "developer")
    return (models_pb2_grpc.ModelServiceStub(mesh.channel),
            bearer((await login(mesh.channel, user)).access_token))


async def _healthy(stub: Any, metadata: Any, name: str) -> bool:
    listed = await stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=10)
    return bool({m.name: m.healthy for m in listed.models}[name])


async def _unhealthy(stub: Any, metadata: Any, name: str) -> bool:
    return not await _healthy(stub, metadata, name)


async def test_an_embedder_whose_calls_fail_is_unhealthy_then_recovers(
        mesh: tuple[MeshHarness, FakeLLMServer], triton: TritonServer) -> None:
    stub, metadata = await _client(mesh[0])
    request = pb.EmbedRequest(texts=["a sentence"])
    assert len((await stub.Embed(request, metadata=metadata, timeout=30)).embeddings) == 1
    assert await _healthy(stub, metadata, "embedder")

    _breaking(triton, "embedder", True)
    for _ in range(2):  # cooldown_after
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Embed(request, metadata=metadata, timeout=30)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE

    assert _triton_says_ready(triton, "embedder")  # Triton alone would call it healthy
    assert not await _healthy(stub, metadata, "embedder")
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # refused without calling Triton
        await stub.Embed(request, metadata=metadata, timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "unhealthy" in (refused.value.details() or "")

    _breaking(triton, "embedder", False)
    # no user call is needed: the health watch probes the failing model
    await wait_for(lambda: _healthy(stub, metadata, "embedder"),
                   timeout=HEALTH_INTERVAL_S * 4, what="the embedder to recover")
    assert len((await stub.Embed(request, metadata=metadata, timeout=30)).embeddings) == 1


async def test_a_generator_whose_calls_fail_is_unhealthy_falls_back_then_recovers(
        mesh: tuple[MeshHarness, FakeLLMServer], triton: TritonServer) -> None:
    harness, fake = mesh
    stub, metadata = await _client(harness)
    prompt = pb.GenerateRequest(messages=[pb.Message(role="user", content="hello")])
    assert await _healthy(stub, metadata, "local")

    _breaking(triton, "generator", True)
    for _ in range(2):
        fake.script(answer("from the cloud"))
        text, done = await _generate(stub, metadata, prompt)
        assert (text, done.model) == ("from the cloud", "cloud")
        assert [s.from_model for s in done.switches] == ["local"]

    assert _triton_says_ready(triton, "generator")
    assert await _unhealthy(stub, metadata, "local")
    fake.script(answer("from the cloud"))
    text, done = await _generate(stub, metadata, prompt)  # skipped: no local attempt
    assert (text, done.model, list(done.switches)) == ("from the cloud", "cloud", [])

    _breaking(triton, "generator", False)
    await wait_for(lambda: _healthy(stub, metadata, "local"),
                   timeout=HEALTH_INTERVAL_S * 4, what="the local generator to recover")
    text, done = await _generate(stub, metadata, prompt)
    assert (text, done.model) == ("local", "local")


async def _generate(stub: Any, metadata: Any, request: pb.GenerateRequest) -> tuple[str, Any]:
    text, done = "", pb.Done()
    async for reply in stub.Generate(request, metadata=metadata, timeout=60):
        if reply.HasField("done"):
            done = reply.done
        else:
            text += reply.delta
    return text, done
