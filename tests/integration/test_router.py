"""The model router against loopback OpenAI/Anthropic servers, with real budgets in NATS."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import pytest

from mesh.config import ModelSettings
from mesh.embedded.nats_server import NatsServer
from mesh.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from mesh.models.budget import Budgets
from mesh.models.ledger import Ledger, summarize
from mesh.models.providers import (
    AnthropicProvider,
    OpenAIProvider,
    Provider,
    ProviderUsage,
    Turn,
)
from mesh.models.router import Outcome, Request, Router, cost_usd
from mesh.testing import wait_for
from mesh.testing.llm import FakeLLMServer, answer, fail_after, hang, status

KEY = "sk-router"
PROMPT = [Turn("user", "List three primes")]

CATALOG: list[dict[str, Any]] = [
    {"name": "local", "provider": "triton", "priority": 0, "context_window": 4096},
    {"name": "cheap", "provider": "openai", "priority": 1, "input_usd_per_million": 1.0,
     "output_usd_per_million": 2.0},
    {"name": "claude", "provider": "anthropic", "priority": 2, "input_usd_per_million": 3.0,
     "output_usd_per_million": 15.0, "cached_usd_per_million": 0.3},
]


@pytest.fixture
def fake() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(api_key=KEY) as server:
        yield server


@pytest.fixture
async def make_router(nats_server: NatsServer, fake: FakeLLMServer
                      ) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_server.url)

    async def make(**settings: Any) -> Router:
        merged = {"catalog": CATALOG, "retries": 1, "backoff_s": 0.01, "backoff_max_s": 0.05,
                  "timeout_s": 2.0, "budget_usd": 1.0, **settings}
        config = ModelSettings.model_validate(merged)
        budgets = Budgets(nc, config)
        await budgets.start()
        # the "local" model is an OpenAI-compatible server here (Triton is tested apart)
        providers: dict[str, Provider] = {
            "local": OpenAIProvider("triton", KEY, fake.openai_base_url),
            "cheap": OpenAIProvider("openai", KEY, fake.openai_base_url),
            "claude": AnthropicProvider("anthropic", KEY, fake.base_url)}
        ledger = Ledger(nc)
        await ledger.start()
        return Router(config, providers, budgets, ledger)

    yield make
    await nc.close()


def _user() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


async def _run(router: Router, request: Request, user: str = "") -> tuple[str, Outcome]:
    outcome = Outcome()
    text = "".join([d async for d in router.generate(user or _user(), request, outcome)
                    if isinstance(d, str)])  # text requests: no tool-call pieces
    return text, outcome


async def test_auto_uses_the_local_model_first_and_accounts_exactly(make_router: Any,
                                                                    fake: FakeLLMServer) -> None:
    router = await make_router()
    fake.script(answer("two three five", prompt_tokens=11, completion_tokens=3))
    text, outcome = await _run(router, Request(PROMPT))
    assert text.split() == ["two", "three", "five"]
    assert (outcome.model, outcome.provider) == ("local", "triton")
    assert outcome.usage == ProviderUsage(11, 3, 0)
    assert outcome.cost_usd == 0.0
    # savings: what the dearest cloud model would have charged for the same tokens
    assert outcome.savings_usd == pytest.approx((11 * 3.0 + 3 * 15.0) / 1e6)


async def test_cloud_cost_counts_cached_tokens_at_their_price(make_router: Any,
                                                              fake: FakeLLMServer) -> None:
    router = await make_router()
    fake.script(answer("ok", prompt_tokens=1000, completion_tokens=10, cached_tokens=800))
    user = _user()
    _, outcome = await _run(router, Request(PROMPT, model="claude", no_fallback=True), user)
    expected = (200 * 3.0 + 800 * 0.3 + 10 * 15.0) / 1e6
    assert outcome.cost_usd == pytest.approx(expected)
    assert await router.budgets.spent_usd(user) == pytest.approx(expected, abs=2e-6)
    assert router.ledger is not None
    [row] = summarize(await router.ledger.entries(user))
    assert (row.model, row.requests, row.prompt_tokens, row.completion_tokens,
            row.cached_tokens) == ("claude", 1, 1000, 10, 800)
    assert row.cost_usd == pytest.approx(expected)


async def test_fallback_order_after_retries(make_router: Any, fake: FakeLLMServer) -> None:
    router = await make_router()
    fake.script(status(500), status(503), status(429, retry_after=0.01), status(500),
                answer("from claude"))
    text, outcome = await _run(router, Request(PROMPT))
    assert text == "from claude"
    assert outcome.model == "claude"
    assert [(s.from_model, s.to_model) for s in outcome.switches] == [
        ("local", "cheap"), ("cheap", "claude")]
    paths = [r.path for r in fake.requests]
    assert paths == ["/v1/chat/completions"] * 4 + ["/v1/messages"]


async def test_cooldown_skips_a_failing_model_then_it_recovers(make_router: Any,
                                                               fake: FakeLLMServer) -> None:
    router = await make_router(retries=0, cooldown_after=2, cooldown_s=0.3)
    for _ in range(2):
        fake.script(status(500), answer("fallback"))
        _, outcome = await _run(router, Request(PROMPT, model="auto"))
        assert outcome.model == "cheap"
    assert not router.healthy("local")
    fake.script(answer("skipped local"))
    _, outcome = await _run(router, Request(PROMPT))
    assert outcome.model == "cheap"
    assert not outcome.switches
    # the cooldown is 0.3 s of real time: wait for it to pass, not for a fixed sleep
    await wait_for(lambda: router.healthy("local"), 10, "the cooldown to end")
    fake.script(answer("local again"))
    _, outcome = await _run(router, Request(PROMPT))
    assert outcome.model == "local"
    assert router.healthy("local")


async def test_mid_stream_failover_continues_the_same_answer(make_router: Any,
                                                             fake: FakeLLMServer) -> None:
    router = await make_router(retries=0)
    fake.script(fail_after(2, "one two three four"), answer("three four"))
    text, outcome = await _run(router, Request(PROMPT))
    assert text.split() == ["one", "two", "three", "four"]  # one uninterrupted stream
    assert outcome.model == "cheap"
    [switch] = outcome.switches
    assert (switch.from_model, switch.to_model) == ("local", "cheap")
    assert switch.tokens_before > 0
    continued = fake.requests[-1].body["messages"]
    assert continued[-1]["role"] == "assistant"  # the next model got what was sent
    assert continued[-1]["content"].split() == ["one", "two"]


async def test_budget_holds_with_fifty_concurrent_requests(make_router: Any,
                                                           fake: FakeLLMServer) -> None:
    # each request reserves 1024 completion tokens at $15/M (+ prompt): ~$0.0154
    router = await make_router(budget_usd=0.2)
    fake.script(*[answer("ok", prompt_tokens=5, completion_tokens=1000) for _ in range(50)])
    user = _user()
    request = Request(PROMPT, model="claude", no_fallback=True)
    outcomes = await asyncio.gather(*(_run(router, request, user) for _ in range(50)),
                                    return_exceptions=True)
    served = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, ResourceExhausted)]
    assert len(served) + len(refused) == 50, [o for o in outcomes if isinstance(o, Exception)
                                              and not isinstance(o, ResourceExhausted)]
    assert served
    assert refused
    spent = await router.budgets.spent_usd(user)
    assert spent <= 0.2
    assert spent == pytest.approx(sum(o[1].cost_usd for o in served), abs=1e-5)


async def test_free_local_model_stays_allowed_without_budget(make_router: Any,
                                                             fake: FakeLLMServer) -> None:
    router = await make_router(budget_usd=0.0)
    fake.script(answer("free"))
    _, outcome = await _run(router, Request(PROMPT, force_local=True))
    assert outcome.model == "local"
    with pytest.raises(ResourceExhausted, match="budget reached"):
        await _run(router, Request(PROMPT, model="cheap", no_fallback=True))


async def test_cost_limit_refuses_with_the_reason(make_router: Any) -> None:
    router = await make_router()
    with pytest.raises(FailedPrecondition) as refused:
        await _run(router, Request(PROMPT, model="claude", no_fallback=True,
                                   cost_limit_usd=0.0001))
    assert "cost limit" in refused.value.message


@pytest.mark.parametrize(("request_", "match"), [
    (Request([]), "prompt is empty"),
    (Request([Turn("user", "  ")]), "prompt is empty"),
    (Request(PROMPT, model="gpt-99"), "unknown model"),
    (Request(PROMPT, max_tokens=-5), "max_tokens"),
    (Request([Turn("robot", "hi")]), "role"),
])
async def test_bad_input_is_invalid_argument(make_router: Any, request_: Request,
                                             match: str) -> None:
    router = await make_router()
    with pytest.raises(InvalidArgument, match=match):
        await _run(router, request_)


async def test_a_prompt_over_every_context_window_is_refused(make_router: Any) -> None:
    router = await make_router()
    huge = [Turn("user", "word " * 40_000)]
    with pytest.raises(InvalidArgument, match="largest context window"):
        await _run(router, Request(huge))


async def test_a_completion_cap_over_the_context_window_is_a_precondition(
        make_router: Any) -> None:
    router = await make_router()
    with pytest.raises(FailedPrecondition, match="exceed its context window"):
        await _run(router, Request(PROMPT, model="local", no_fallback=True,
                                   max_tokens=5000))


async def test_all_models_failing_is_unavailable(make_router: Any,
                                                 fake: FakeLLMServer) -> None:
    router = await make_router(retries=0)
    fake.script(status(500), status(500), status(500))
    with pytest.raises(Unavailable, match="no model could answer"):
        await _run(router, Request(PROMPT))


async def test_cancelling_closes_the_upstream_call(make_router: Any,
                                                   fake: FakeLLMServer) -> None:
    # the router's own timeout is far off: only the cancel can end the upstream call
    router = await make_router(timeout_s=60.0)
    fake.script(hang(30))
    user = _user()
    task = asyncio.ensure_future(_run(router, Request(PROMPT, model="cheap",
                                                      no_fallback=True), user))
    await wait_for(lambda: len(fake.requests) == 1, 10, "the upstream request")
    assert fake.hung_up == 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the upstream saw the client hang up while it held the request (not at its 30 s end)
    await wait_for(lambda: fake.hung_up == 1, 5, "the upstream connection to close")
    assert len(fake.requests) == 1  # and no retry or fallback followed the cancel
    assert await router.budgets.spent_usd(user) < 0.001  # the reservation was settled


def test_cost_of_usage() -> None:
    model = ModelSettings.model_validate({"catalog": CATALOG}).catalog[2]
    assert cost_usd(model, ProviderUsage(1_000_000, 0, 0)) == pytest.approx(3.0)
    assert cost_usd(model, ProviderUsage(0, 1_000_000, 0)) == pytest.approx(15.0)
