"""ModelService through a real gateway and node: the router, budgets and ledger on NATS,
cloud models served by loopback OpenAI/Anthropic servers driven through the real SDKs."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from mesh.testing import MeshHarness, wait_for
from mesh.testing.llm import FakeLLMServer, answer, fail_after, hang, split_tokens
from mesh.v1 import models_pb2 as pb
from mesh.v1 import models_pb2_grpc
from tests.integration.test_auth import AUTH, add_user, bearer, login, remove_users_since

KEY = "sk-model-service"
KEY_ENV = "REVO_TEST_MODEL_SERVICE_KEY"
PROMPT = "List three primes please"


def _catalog(fake: FakeLLMServer) -> list[dict[str, Any]]:
    return [
        # served by Triton in production; with no triton_url here it is listed, unhealthy
        {"name": "local", "provider": "triton", "priority": 0, "context_window": 4096},
        {"name": "cheap", "provider": "openai", "base_url": fake.openai_base_url,
         "api_key_env": KEY_ENV, "priority": 1, "input_usd_per_million": 1.0,
         "output_usd_per_million": 2.0, "context_window": 16000},
        {"name": "claude", "provider": "anthropic", "base_url": fake.base_url,
         "api_key_env": KEY_ENV, "priority": 2, "input_usd_per_million": 3.0,
         "output_usd_per_million": 15.0, "cached_usd_per_million": 0.3,
         "context_window": 32000},
    ]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMServer]:
    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeLLMServer(api_key=KEY) as server:
        yield server


@pytest.fixture
async def start(mesh_harness: Any, fake: FakeLLMServer) -> AsyncIterator[Any]:
    since = time.time()
    started: list[MeshHarness] = []

    async def make(**models: Any) -> MeshHarness:
        settings = {"catalog": _catalog(fake), "retries": 0, "backoff_s": 0.01,
                    "timeout_s": 5.0, **models}
        harness: MeshHarness = await mesh_harness(plugins={"only": ["models"]}, auth=AUTH,
                                                  models=settings)
        started.append(harness)
        return harness

    yield make
    for harness in started:
        await remove_users_since(harness, since)


async def _client(mesh: MeshHarness, role: str = "developer") -> tuple[str, Any, Any]:
    """A new user of ``role``: its name, a ModelService stub, and its call metadata."""
    user = await add_user(mesh, role)
    metadata = bearer((await login(mesh.channel, user)).access_token)
    return user, models_pb2_grpc.ModelServiceStub(mesh.channel), metadata


def _ask(text: str = PROMPT, **policy: Any) -> pb.GenerateRequest:
    max_tokens = policy.pop("max_tokens", 0)
    return pb.GenerateRequest(messages=[pb.Message(role="user", content=text)],
                              sampling=pb.Sampling(max_tokens=max_tokens),
                              policy=pb.Policy(**policy))


async def _generate(stub: Any, request: pb.GenerateRequest, metadata: Any
                    ) -> tuple[list[str], pb.Done]:
    deltas: list[str] = []
    done = None
    async for reply in stub.Generate(request, metadata=metadata, timeout=20):
        if reply.HasField("done"):
            done = reply.done
        else:
            assert done is None, "a delta after the final message"
            deltas.append(reply.delta)
    assert done is not None, "the stream ended without its final message"
    return deltas, done


async def test_generate_streams_deltas_then_an_exact_account(start: Any,
                                                             fake: FakeLLMServer) -> None:
    mesh = await start()
    _, stub, metadata = await _client(mesh)
    fake.script(answer("two three five"))
    request = _ask(model="cheap")
    request.sampling.seed = 7
    deltas, done = await _generate(stub, request, metadata)
    assert "".join(deltas) == "two three five"  # a burst may arrive as fewer deltas
    assert fake.requests[0].body["seed"] == 7  # sampling reaches the provider
    prompt_words = len(PROMPT.split())
    assert (done.model, done.provider, done.finish_reason) == ("cheap", "openai",
                                                               pb.FINISH_REASON_STOP)
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (prompt_words, 3)
    assert done.cost_usd == pytest.approx((prompt_words * 1.0 + 3 * 2.0) / 1e6)
    # savings: what the reference (dearest cloud) model charges for the same tokens
    assert done.savings_usd == pytest.approx((prompt_words * 3.0 + 3 * 15.0) / 1e6
                                             - done.cost_usd)
    assert done.latency_ms > 0
    assert not done.switches


async def test_usage_and_recommendations_come_from_the_ledger(start: Any,
                                                              fake: FakeLLMServer) -> None:
    mesh = await start()
    user, stub, metadata = await _client(mesh)
    for _ in range(2):
        await _generate(stub, _ask(model="claude"), metadata)
    usage = await stub.GetUsage(pb.GetUsageRequest(period=pb.PERIOD_DAY), metadata=metadata,
                                timeout=10)
    assert [(r.user, r.model, r.requests) for r in usage.rows] == [(user, "claude", 2)]
    row = usage.rows[0]
    assert row.period == time.strftime("%Y-%m-%d", time.gmtime())
    assert row.usage.completion_tokens == 2 * len(split_tokens("Hello from the fake model."))
    assert usage.total_cost_usd == pytest.approx(row.cost_usd)
    assert usage.local_share == 0.0
    advice = await stub.Recommend(pb.RecommendRequest(), metadata=metadata, timeout=10)
    assert [(r.from_model, r.to_model) for r in advice.recommendations] == [("claude", "local")]
    assert advice.recommendations[0].monthly_savings_usd > 0

    await _generate(stub, _ask(model="cheap"), metadata)  # a second row
    whole = await stub.GetUsage(pb.GetUsageRequest(), metadata=metadata, timeout=10)
    rows, token, totals = [], "", set()
    while True:  # a row per page; the totals are the whole listing's on every page
        page = await stub.GetUsage(pb.GetUsageRequest(page_size=1, page_token=token),
                                   metadata=metadata, timeout=10)
        rows += [(r.model, r.requests) for r in page.rows]
        totals.add((page.total_cost_usd, page.local_share))
        if not (token := page.next_page_token):
            break
    assert rows == [("cheap", 1), ("claude", 2)] == [(r.model, r.requests) for r in whole.rows]
    assert totals == {(whole.total_cost_usd, whole.local_share)}
    assert {r.period for r in whole.rows} == {time.strftime("%Y-%m", time.gmtime())}  # month
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetUsage(pb.GetUsageRequest(period=pb.Period.ValueType(7)),
                            metadata=metadata, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "period must be PERIOD_DAY or PERIOD_MONTH" in (refused.value.details() or "")


async def test_reading_another_users_usage_needs_manage(start: Any) -> None:
    mesh = await start()
    _, stub, developer = await _client(mesh)
    other, other_stub, other_metadata = await _client(mesh)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetUsage(pb.GetUsageRequest(user=other), metadata=developer, timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "manage" in (refused.value.details() or "")
    await _generate(other_stub, _ask(model="claude"), other_metadata)
    _, _, admin = await _client(mesh, "admin")
    everyone = await stub.GetUsage(pb.GetUsageRequest(user="*"), metadata=admin, timeout=10)
    # the admin sees the other user's spending, not just its own (empty) account
    assert [(r.user, r.requests) for r in everyone.rows if r.user == other] == [(other, 1)]
    assert everyone.total_cost_usd == pytest.approx(sum(r.cost_usd for r in everyone.rows))
    assert everyone.total_cost_usd > 0


async def test_list_models_shows_tier_health_prices_and_windows(start: Any) -> None:
    mesh = await start()
    _, stub, metadata = await _client(mesh, "viewer")
    listed = await stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=10)
    by_name = {m.name: m for m in listed.models}
    assert [m.name for m in listed.models] == ["local", "cheap", "claude"]
    assert by_name["local"].tier == pb.TIER_LOCAL
    assert not by_name["local"].healthy
    assert by_name["claude"].tier == pb.TIER_CLOUD
    assert by_name["claude"].healthy
    assert by_name["claude"].output_usd_per_million == 15.0
    assert by_name["cheap"].context_window == 16000
    assert by_name["cheap"].generates


@pytest.mark.parametrize(("request_", "match"), [
    (pb.GenerateRequest(), "prompt is empty"),
    (_ask(max_tokens=-1), "max_tokens"),
    (_ask(model="gpt-99"), "unknown model"),
    (pb.GenerateRequest(messages=[pb.Message(role="user", content="hi")],
                        sampling=pb.Sampling(temperature=3)), "temperature"),
    (_ask("word " * 40_000), "largest context window"),
])
async def test_bad_input_is_invalid_argument(start: Any, fake: FakeLLMServer,
                                             request_: pb.GenerateRequest, match: str) -> None:
    mesh = await start()
    _, stub, metadata = await _client(mesh)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _generate(stub, request_, metadata)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert match in (refused.value.details() or "")
    assert not fake.requests  # nothing reached a provider


async def test_cost_limit_is_a_failed_precondition_saying_why(start: Any) -> None:
    mesh = await start()
    _, stub, metadata = await _client(mesh)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _generate(stub, _ask(model="claude", no_fallback=True, cost_limit_usd=0.0001),
                        metadata)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "over the cost limit" in (refused.value.details() or "")


async def test_fifty_concurrent_requests_cannot_overspend_a_budget(
        start: Any, fake: FakeLLMServer) -> None:
    # each call reserves its worst case (prompt + 1000 completion tokens at claude's price)
    estimate = (math.ceil(len(PROMPT) / 3.5) * 3.0 + 1000 * 15.0) / 1e6
    fits = 7
    mesh = await start(budget_usd=round(estimate * (fits + 0.5), 6))
    _, stub, metadata = await _client(mesh)
    # every admitted call is held at the provider until all 50 have been decided, so no
    # settlement frees budget while calls are still being admitted
    release = threading.Event()
    fake.default = hang(30, until=release)
    finished: list[grpc.StatusCode] = []

    async def one() -> grpc.StatusCode:
        try:
            await _generate(stub, _ask(model="claude", no_fallback=True, max_tokens=1000),
                            metadata)
        except grpc.aio.AioRpcError as error:
            finished.append(error.code())
            return error.code()
        finished.append(grpc.StatusCode.OK)
        return grpc.StatusCode.OK

    calls = [asyncio.ensure_future(one()) for _ in range(50)]
    try:
        # decided: refused (finished) or admitted (held at the provider)
        await wait_for(lambda: len(finished) + len(fake.requests) == 50, 15,
                       "every call to be refused or to reach the provider")
        assert grpc.StatusCode.OK not in finished  # nothing admitted ended before release
    finally:
        release.set()
    codes = await asyncio.gather(*calls)
    assert codes.count(grpc.StatusCode.OK) == fits
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 50 - fits
    assert len(fake.requests) == fits  # refused calls never reached the provider
    usage = await stub.GetUsage(pb.GetUsageRequest(), metadata=metadata, timeout=10)
    assert sum(r.requests for r in usage.rows) == fits


async def test_a_stream_fails_over_mid_way_as_one_stream(start: Any,
                                                         fake: FakeLLMServer) -> None:
    mesh = await start()
    _, stub, metadata = await _client(mesh)
    fake.script(fail_after(2, "alpha beta gamma delta"), answer("gamma delta"))
    deltas, done = await _generate(stub, _ask(model="cheap"), metadata)
    assert "".join(deltas) == "alpha beta gamma delta"
    assert done.model == "claude"
    assert [(s.from_model, s.to_model, s.tokens_before) for s in done.switches] == [
        ("cheap", "claude", math.ceil(len("alpha beta ") / 3.5))]
    continued = fake.requests[1].body["messages"]
    assert continued[-1] == {"role": "assistant", "content": "alpha beta "}


async def test_cancelling_the_call_cancels_the_upstream_request(
        start: Any, fake: FakeLLMServer) -> None:
    mesh = await start()
    _, stub, metadata = await _client(mesh)
    fake.script(hang(20))
    call = stub.Generate(_ask(model="cheap", no_fallback=True), metadata=metadata, timeout=30)
    reading = asyncio.ensure_future(call.read())
    await wait_for(lambda: len(fake.requests) == 1, what="the upstream request")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    await wait_for(lambda: fake.hung_up == 1, what="the upstream connection to close")


async def test_embed_without_triton_says_how_to_get_one(start: Any) -> None:
    mesh = await start()
    _, stub, metadata = await _client(mesh)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Embed(pb.EmbedRequest(texts=["hello"]), metadata=metadata, timeout=10)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "triton_url" in (refused.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stub.Embed(pb.EmbedRequest(texts=["x"], model="ada"), metadata=metadata,
                         timeout=10)
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_gateway_hosting_the_engine_itself_serves_it_the_same(
        mesh_harness: Any, fake: FakeLLMServer) -> None:
    since = time.time()
    mesh: MeshHarness = await mesh_harness(
        plugins={"only": ["models"]}, auth=AUTH, colocate=True,
        models={"catalog": _catalog(fake), "retries": 0, "timeout_s": 5.0})
    _, stub, metadata = await _client(mesh)
    fake.script(answer("one two"))
    deltas, done = await _generate(stub, _ask(model="cheap"), metadata)
    assert ("".join(deltas), done.model) == ("one two", "cheap")
    listed = await stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=10)
    assert len(listed.models) == 3
    await remove_users_since(mesh, since)
