"""Metrics of a running mesh (real nats-server, gateway and node): every family of the
framework appears on a scrape after the calls that produce it, promtool finds the scrape
clean, and callers cannot grow the series with made-up names."""

from __future__ import annotations

import asyncio
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from mesh.observability.metrics import FRAMEWORK_METRICS, OTHER
from mesh.testing import MeshHarness
from mesh.testing.llm import FakeLLMServer, answer, fail_after, status
from mesh.v1 import models_pb2 as pb
from mesh.v1 import models_pb2_grpc
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc
from tests.integration.test_auth import AUTH, PASSWORD, add_user, bearer, login
from tests.promtool import promtool

KEY, KEY_ENV = "sk-metrics", "REVO_TEST_METRICS_KEY"
ECHO = "/revo.echo.v1.EchoService/Echo"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMServer]:
    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeLLMServer(api_key=KEY) as server:
        yield server


def _catalog(fake: FakeLLMServer) -> list[dict[str, Any]]:
    return [
        {"name": "cheap", "provider": "openai", "base_url": fake.openai_base_url,
         "api_key_env": KEY_ENV, "priority": 1, "input_usd_per_million": 1.0,
         "output_usd_per_million": 2.0},
        {"name": "claude", "provider": "anthropic", "base_url": fake.base_url,
         "api_key_env": KEY_ENV, "priority": 2, "input_usd_per_million": 3.0,
         "output_usd_per_million": 15.0},
    ]


def _scrape(url: str) -> str:
    assert url, "metrics are not served"
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())


def _ask(model: str, **policy: Any) -> pb.GenerateRequest:
    return pb.GenerateRequest(messages=[pb.Message(role="user", content="three primes")],
                              policy=pb.Policy(model=model, **policy))


async def _drain(stub: Any, request: pb.GenerateRequest, metadata: Any) -> None:
    async for _ in stub.Generate(request, metadata=metadata, timeout=20):
        pass


async def _produce_every_family(mesh: MeshHarness, fake: FakeLLMServer, broke: str) -> None:
    user = await add_user(mesh, "developer")
    metadata = bearer((await login(mesh.channel, user)).access_token)
    echo = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    await echo.Echo(echo_pb2.EchoRequest(payload=b"a"), metadata=metadata, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as limited:  # the method's limit: one a minute
        await echo.Echo(echo_pb2.EchoRequest(payload=b"b"), metadata=metadata, timeout=10)
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.aio.AioRpcError) as denied:  # no token: an auth denial
        await echo.Echo(echo_pb2.EchoRequest(payload=b"c"), timeout=10)
    assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED

    models = models_pb2_grpc.ModelServiceStub(mesh.channel)
    fake.script(answer("two three five"))  # cheap answers: paid, and saved against claude
    await _drain(models, _ask("cheap"), metadata)
    fake.script(status(500), answer("two three five"))  # cheap fails first: a fallback
    await _drain(models, _ask("cheap"), metadata)
    fake.script(fail_after(2, "alpha beta gamma delta"), answer("gamma delta"))  # mid-stream
    await _drain(models, _ask("cheap"), metadata)
    with pytest.raises(grpc.aio.AioRpcError) as invalid:  # an engine error, by method
        await _drain(models, _ask("no-such-model"), metadata)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    poor = bearer((await login(mesh.channel, broke)).access_token)
    with pytest.raises(grpc.aio.AioRpcError) as spent:
        await _drain(models, _ask("claude", no_fallback=True), poor)
    assert spent.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def _mesh(mesh_harness: Any, fake: FakeLLMServer, broke: str) -> MeshHarness:
    mesh: MeshHarness = await mesh_harness(
        plugins={"only": ["echo", "models"]},
        auth={**AUTH, "audit": {"enabled": True},
              "rate_limits": {"methods": {ECHO: {"rate": 1 / 60, "burst": 1}}}},
        models={"catalog": _catalog(fake), "retries": 0, "backoff_s": 0.01,
                "timeout_s": 5.0, "user_budgets_usd": {broke: 0.0}})
    assert mesh.gateway.guard is not None
    await mesh.gateway.guard.users.create(broke, "developer", PASSWORD)
    return mesh


async def test_a_scrape_of_a_running_mesh_has_every_family_and_promtool_finds_it_clean(
        mesh_harness: Any, fake: FakeLLMServer, tmp_path: Any) -> None:
    broke = f"broke-{uuid.uuid4().hex[:8]}"
    mesh = await _mesh(mesh_harness, fake, broke)
    await _produce_every_family(mesh, fake, broke)

    gateway = _scrape(mesh.gateway.metrics.url)
    node = _scrape(mesh.nodes[0].metrics.url)
    served = {"gateway": gateway, "node": node}
    for spec in FRAMEWORK_METRICS:
        sample = spec.name + ("_count" if spec.kind == "histogram" else "")
        assert f"\n{sample}{{" in served[spec.where] or f"\n{sample} " in served[spec.where], \
            f"{spec.name} is missing from the {spec.where}'s scrape"
    assert 'revo_gateway_requests_total{code="RESOURCE_EXHAUSTED"' in gateway
    assert 'revo_gateway_auth_denials_total{reason="token_missing"}' in gateway
    assert 'revo_models_midstream_switches_total{from_model="cheap"' in node
    assert 'engine_health_status{engine="echo"' in node

    checker = promtool()
    for where, text in served.items():
        checked = await asyncio.to_thread(
            subprocess.run, [checker, "check", "metrics"], input=text, capture_output=True,
            text=True, timeout=60)
        said = f"promtool on the {where}'s scrape:\n{checked.stdout}{checked.stderr}"
        assert checked.returncode == 0, said
        assert not (checked.stdout + checked.stderr).strip(), said


async def test_made_up_method_and_model_names_add_no_series(
        mesh_harness: Any, fake: FakeLLMServer) -> None:
    broke = f"broke-{uuid.uuid4().hex[:8]}"
    mesh = await _mesh(mesh_harness, fake, broke)
    user = await add_user(mesh, "developer")
    metadata = bearer((await login(mesh.channel, user)).access_token)
    models = models_pb2_grpc.ModelServiceStub(mesh.channel)

    def series() -> int:
        text = _scrape(mesh.gateway.metrics.url) + _scrape(mesh.nodes[0].metrics.url)
        return sum(1 for line in text.splitlines()
                   if line.startswith(("revo_", "gen_ai_", "engine_")))

    async def flood(start: int) -> None:
        for i in range(start, start + 40):
            unknown = mesh.channel.unary_unary(f"/made.up.v{i}.Service/Method{i}", None, None)
            with pytest.raises(grpc.aio.AioRpcError):
                await unknown(b"", metadata=metadata, timeout=10)
            with pytest.raises(grpc.aio.AioRpcError):
                await _drain(models, _ask(f"made-up-model-{i}"), metadata)

    await flood(0)  # the first flood may add the 'other' series once
    before = series()
    await flood(1000)
    assert series() == before
    assert f'method="{OTHER}"' in _scrape(mesh.gateway.metrics.url)
