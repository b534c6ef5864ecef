"""The cloud providers behind the router, against loopback servers through the real SDKs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mesh.models.providers import (
    AnthropicProvider,
    Chunk,
    OpenAIProvider,
    Provider,
    ProviderError,
    ProviderUsage,
    Turn,
)
from mesh.testing.llm import FakeLLMServer, answer, fail_after, hang, malformed, status

KEY = "sk-provider-test"
TURNS = [Turn("system", "Be brief."), Turn("user", "Say the first three primes")]


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(api_key=KEY) as fake:
        yield fake


def _providers(server: FakeLLMServer) -> dict[str, Provider]:
    return {"openai": OpenAIProvider("openai", KEY, server.openai_base_url),
            "anthropic": AnthropicProvider("anthropic", KEY, server.base_url)}


async def _collect(provider: Provider, timeout_s: float = 5.0) -> tuple[str, Chunk]:
    text, last = "", Chunk()
    async for chunk in provider.stream("test-model", TURNS, max_tokens=64, temperature=0.0,
                                       top_p=0.0, stop=(), timeout_s=timeout_s):
        text += chunk.text
        last = chunk
    return text, last


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_streams_text_then_the_providers_own_usage(server: FakeLLMServer,
                                                         api: str) -> None:
    server.script(answer("two three five", prompt_tokens=17, completion_tokens=3,
                         cached_tokens=4))
    text, last = await _collect(_providers(server)[api])
    assert text.split() == ["two", "three", "five"]
    assert last.usage == ProviderUsage(prompt_tokens=17, completion_tokens=3, cached_tokens=4)
    assert last.finish_reason == "stop"
    sent = server.requests[-1].body
    assert sent["stream"] is True
    if api == "anthropic":
        assert sent["system"] == "Be brief."  # system turns go where the API wants them


@pytest.mark.parametrize("api", ["openai", "anthropic"])
@pytest.mark.parametrize(("behaviour", "kind", "retryable"), [
    (status(429, retry_after=2), "rate_limited", True),
    (status(500), "server", True),
    (status(400), "bad_request", False),
    (malformed(), "malformed", True),
])
async def test_failures_say_whether_to_retry(server: FakeLLMServer, api: str, behaviour: object,
                                             kind: str, retryable: bool) -> None:
    server.script(behaviour)  # type: ignore[arg-type]
    with pytest.raises(ProviderError) as failed:
        await _collect(_providers(server)[api])
    assert failed.value.kind == kind, failed.value
    assert failed.value.retryable is retryable
    if kind == "rate_limited":
        assert failed.value.retry_after_s == 2


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_hung_provider_times_out(server: FakeLLMServer, api: str) -> None:
    server.script(hang(5))
    with pytest.raises(ProviderError) as failed:
        await _collect(_providers(server)[api], timeout_s=0.3)
    assert failed.value.kind == "timeout"


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_stream_cut_midway_fails_after_its_deltas(server: FakeLLMServer,
                                                          api: str) -> None:
    server.script(fail_after(2, "one two three four"))
    seen: list[str] = []

    async def read() -> None:
        async for chunk in _providers(server)[api].stream(
                "test-model", TURNS, max_tokens=64, temperature=0.0, top_p=0.0, stop=(),
                timeout_s=5):
            seen.append(chunk.text)

    with pytest.raises(ProviderError) as failed:
        await read()
    assert "".join(seen).split() == ["one", "two"]
    assert failed.value.retryable


async def test_a_wrong_key_is_not_retried(server: FakeLLMServer) -> None:
    server.script(answer())
    with pytest.raises(ProviderError) as failed:
        await _collect(OpenAIProvider("openai", "wrong-key", server.openai_base_url))
    assert failed.value.kind == "auth"
    assert not failed.value.retryable
    assert "wrong-key" not in str(failed.value)
