"""The OpenAI-compatible API on the gateway's HTTP door, driven by the official openai SDK
(sync and async) against a real gateway and node whose cloud models are the loopback
scripted server: answers, streams byte for byte, errors in OpenAI's shape and codes, and
the same limits, budgets and ledger as gRPC."""

from __future__ import annotations

import array
import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import nats
import openai
import pytest

from mesh.auth.audit import read_audit
from mesh.embedded.triton import TritonServer
from mesh.testing import MeshHarness, wait_for
from mesh.testing.llm import (
    FakeLLMServer,
    ScriptedCall,
    answer,
    call_tools,
    fail_after,
    json_answer,
    split_tokens,
)
from mesh.v1 import auth_pb2, auth_pb2_grpc, models_pb2_grpc
from mesh.v1 import models_pb2 as pb
from tests.integration.test_auth import AUTH, add_user, bearer, login, remove_users_since

KEY = "sk-openai-api"
KEY_ENV = "REVO_TEST_OPENAI_API_KEY"
PROMPT = "Name three primes"
TEXT = "two three five seven"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}},
           "required": ["city"]}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER,
                                         "description": "The weather in a city"}}


def _catalog(fake: FakeLLMServer) -> list[dict[str, Any]]:
    return [
        {"name": "local", "provider": "triton", "priority": 0, "context_window": 4096},
        {"name": "cheap", "provider": "openai", "base_url": fake.openai_base_url,
         "api_key_env": KEY_ENV, "priority": 1, "input_usd_per_million": 1.0,
         "output_usd_per_million": 2.0, "context_window": 16000, "supports_tools": True,
         "supports_structured_output": True},
        {"name": "claude", "provider": "anthropic", "base_url": fake.base_url,
         "api_key_env": KEY_ENV, "priority": 2, "input_usd_per_million": 3.0,
         "output_usd_per_million": 15.0, "context_window": 32000, "supports_tools": True,
         "supports_structured_output": True},
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

    async def make(auth: dict[str, Any] | None = None, **models: Any) -> MeshHarness:
        settings = {"catalog": _catalog(fake), "retries": 0, "backoff_s": 0.01,
                    "timeout_s": 5.0, **models}
        harness: MeshHarness = await mesh_harness(plugins={"only": ["models"]},
                                                  auth=auth or AUTH, models=settings)
        started.append(harness)
        return harness

    yield make
    for harness in started:
        await remove_users_since(harness, since)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def base_url(mesh: MeshHarness) -> str:
    assert mesh.gateway.http is not None
    return mesh.gateway.http.url + "/v1"


async def token(mesh: MeshHarness, role: str = "developer") -> tuple[str, str]:
    """A new user of ``role`` and an access token for it."""
    user = await add_user(mesh, role)
    return user, (await login(mesh.channel, user)).access_token


@pytest.fixture
async def sdk() -> AsyncIterator[Any]:
    """Makes AsyncOpenAI clients of a mesh (closed at the end): ``await sdk(mesh, role)``
    for a new user's, ``sdk(mesh, api_key=...)`` for a given key's."""
    opened: list[openai.AsyncOpenAI] = []

    async def make(mesh: MeshHarness, role: str = "developer",
                   api_key: str = "") -> openai.AsyncOpenAI:
        api = openai.AsyncOpenAI(base_url=base_url(mesh), max_retries=0,
                                 api_key=api_key or (await token(mesh, role))[1])
        opened.append(api)
        return api

    yield make
    for api in opened:
        await api.close()


def ask(text: str = PROMPT) -> list[Any]:
    return [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "text", "text": text}]}]


async def post(http: aiohttp.ClientSession, mesh: MeshHarness, path: str, body: Any,
               access: str = "") -> tuple[int, dict[str, str], Any]:
    headers = {"authorization": f"Bearer {access}"} if access else {}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(base_url(mesh) + path, data=data,
                         headers={"content-type": "application/json", **headers}) as response:
        return response.status, dict(response.headers), await response.json(content_type=None)


def openai_error(body: Any) -> dict[str, Any]:
    """The error object of an OpenAI-shaped refusal (its four fields all present)."""
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]  # type: ignore[no-any-return]


# -- models ---------------------------------------------------------------------------


async def test_models_are_listed_in_openai_shape(start: Any, sdk: Any) -> None:
    mesh = await start()
    api = await sdk(mesh, "viewer")
    listed = await api.models.list()
    assert [m.id for m in listed.data] == ["auto", "local", "cheap", "claude"]
    assert {m.object for m in listed.data} == {"model"}
    cheap = await api.models.retrieve("cheap")
    assert (cheap.id, cheap.owned_by) == ("cheap", "openai")
    assert cheap.model_extra is not None
    assert cheap.model_extra["revo"]["supports_tools"] is True  # the mesh's extras
    with pytest.raises(openai.NotFoundError) as missing:
        await api.models.retrieve("gpt-99")
    assert missing.value.code == "model_not_found"


# -- chat --------------------------------------------------------------------------------


async def test_a_chat_answer_comes_whole_with_usage_and_who_served_it(
        start: Any, fake: FakeLLMServer) -> None:
    mesh = await start()
    _, access = await token(mesh)
    fake.script(answer(TEXT))
    sync = openai.OpenAI(base_url=base_url(mesh), api_key=access, max_retries=0)
    with sync:
        raw = await asyncio.to_thread(
            sync.chat.completions.with_raw_response.create, model="cheap", messages=ask(),
            max_tokens=50, temperature=0.2, top_p=0.9, stop=["eleven"], seed=3,
            user="someone")
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == "cheap"
    choice = completion.choices[0]
    assert (choice.message.role, choice.message.content) == ("assistant", TEXT)
    assert choice.finish_reason == "stop"
    prompt_words = len(PROMPT.split()) + 2
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens,
            completion.usage.total_tokens) == (prompt_words, 4, prompt_words + 4)
    assert raw.headers["x-revo-model"] == "cheap"
    assert float(raw.headers["x-revo-cost-usd"]) == pytest.approx(
        (prompt_words * 1.0 + 4 * 2.0) / 1e6)
    sent = fake.requests[0].body  # the sampling reached the provider
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["stop"],
            sent["seed"]) == (50, pytest.approx(0.2), pytest.approx(0.9), ["eleven"], 3)


async def test_a_chat_stream_arrives_in_openai_chunks(start: Any, fake: FakeLLMServer,
                                                      sdk: Any) -> None:
    mesh = await start()
    api = await sdk(mesh)
    fake.script(answer(TEXT), answer(TEXT))
    chunks = [c async for c in await api.chat.completions.create(
        model="claude", messages=ask(), stream=True)]
    assert len({(c.id, c.created, c.model) for c in chunks}) == 1
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == TEXT
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [
        "stop"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # usage only when asked for
    with_usage = [c async for c in await api.chat.completions.create(
        model="claude", messages=ask(), stream=True,
        stream_options={"include_usage": True})]
    usage = [c for c in with_usage if c.usage is not None]
    assert len(usage) == 1
    assert usage[0] is with_usage[-1]
    assert usage[0].choices == []
    assert usage[0].usage is not None
    assert usage[0].usage.completion_tokens == len(split_tokens(TEXT))


async def test_the_stream_is_server_sent_events_byte_for_byte(
        start: Any, fake: FakeLLMServer, http: aiohttp.ClientSession) -> None:
    mesh = await start()
    _, access = await token(mesh)
    fake.script(answer(TEXT))
    body = {"model": "cheap", "messages": ask(), "stream": True,
            "stream_options": {"include_usage": True}}
    async with http.post(base_url(mesh) + "/chat/completions", json=body,
                         headers={"authorization": f"Bearer {access}"}) as response:
        assert response.status == 200
        assert response.headers["content-type"] == "text/event-stream"
        raw = await response.read()
    events = raw.split(b"\n\n")
    assert events[-1] == b""
    assert events[-2] == b"data: [DONE]"
    assert all(e.startswith(b"data: ") and b"\n" not in e for e in events[:-1])
    chunks = [json.loads(e[6:]) for e in events[:-2]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-2]["choices"][0]["delta"] == {}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-2]["revo"]["model"] == "cheap"  # the mesh's extras
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] > 0
    assert "".join(c["choices"][0]["delta"].get("content", "")
                   for c in chunks[:-1]) == TEXT


async def test_a_failure_mid_stream_raises_in_the_sdk(start: Any, fake: FakeLLMServer,
                                                     sdk: Any) -> None:
    mesh = await start()
    api = await sdk(mesh)
    fake.script(fail_after(2, TEXT))
    stream = await api.chat.completions.create(model="cheap", messages=ask(), stream=True,
                                               extra_body={"revo": {"no_fallback": True}})
    received: list[str] = []

    async def read() -> None:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as failed:
        await read()
    assert "".join(received) == "".join(split_tokens(TEXT)[:2])
    assert "no model could answer" in failed.value.message


# -- tools and structured output -----------------------------------------------------------


@pytest.mark.parametrize("model", ["cheap", "claude"])
async def test_a_tool_call_streams_and_its_result_goes_back(
        start: Any, fake: FakeLLMServer, sdk: Any, model: str) -> None:
    mesh = await start()
    api = await sdk(mesh)
    fake.script(call_tools(ScriptedCall("get_weather", {"city": "Paris"}, id="call_1"),
                           ScriptedCall("get_weather", {"city": "Rome"}, id="call_2")),
                answer("Sunny in Paris, rainy in Rome."))
    chunks = [c async for c in await api.chat.completions.create(
        model=model, messages=ask("Weather?"), tools=[TOOL], tool_choice="required",
        stream=True)]
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for piece in chunk.choices[0].delta.tool_calls or []:
            if piece.index not in calls:  # a call's first piece names it
                assert piece.id
                assert piece.type == "function"
                assert piece.function is not None
                calls[piece.index] = {"id": piece.id, "name": piece.function.name or "",
                                      "arguments": ""}
            assert piece.function is not None
            calls[piece.index]["arguments"] += piece.function.arguments or ""
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("call_1", "get_weather", {"city": "Paris"}),
        ("call_2", "get_weather", {"city": "Rome"})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    sent = fake.requests[-1].body
    assert sent["tool_choice"] in ("required", {"type": "any"})  # OpenAI's, Anthropic's
    # the second turn, not streamed: the calls and their results
    second = await api.chat.completions.create(model=model, tools=[TOOL], messages=[
        *ask("Weather?"),
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": c["id"], "type": "function",
             "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in calls.values()]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text",
                                                                "text": "rainy"}]}])
    assert second.choices[0].message.content == "Sunny in Paris, rainy in Rome."
    assert second.choices[0].finish_reason == "stop"
    assert "sunny" in json.dumps(fake.requests[-1].body["messages"])


async def test_a_tool_call_comes_whole_without_streaming(start: Any, fake: FakeLLMServer,
                                                         sdk: Any) -> None:
    mesh = await start()
    api = await sdk(mesh)
    fake.script(call_tools(ScriptedCall("get_weather", {"city": "Oslo"}, id="call_7"),
                           text="Let me look."))
    completion = await api.chat.completions.create(
        model="cheap", messages=ask("Weather in Oslo?"), tools=[TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False)
    message = completion.choices[0].message
    assert message.content == "Let me look."
    assert message.tool_calls is not None
    [call] = message.tool_calls
    assert (call.id, call.type, call.function.name) == ("call_7", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    assert completion.choices[0].finish_reason == "tool_calls"
    sent = fake.requests[-1].body
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False


async def test_a_json_schema_response_format_reaches_the_model(
        start: Any, fake: FakeLLMServer, sdk: Any) -> None:
    mesh = await start()
    api = await sdk(mesh)
    schema = {"type": "object", "properties": {"primes": {"type": "array"}},
              "required": ["primes"], "additionalProperties": False}
    fake.script(json_answer({"primes": [2, 3, 5]}))
    completion = await api.chat.completions.create(
        model="cheap", messages=ask(), response_format={
            "type": "json_schema",
            "json_schema": {"name": "primes", "schema": schema, "strict": True}})
    assert json.loads(completion.choices[0].message.content or "") == {"primes": [2, 3, 5]}
    assert fake.requests[-1].body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "primes", "schema": schema,
                                               "strict": True}}


# -- errors ------------------------------------------------------------------------------


async def test_a_bad_or_missing_key_is_401(start: Any, sdk: Any,
                                           http: aiohttp.ClientSession) -> None:
    mesh = await start()
    api = await sdk(mesh, api_key="not-a-token")
    with pytest.raises(openai.AuthenticationError) as refused:
        await api.chat.completions.create(model="cheap", messages=ask())
    assert refused.value.status_code == 401
    status, _, body = await post(http, mesh, "/chat/completions",
                                 {"model": "cheap", "messages": ask()})
    assert status == 401
    assert openai_error(body)["type"] == "authentication_error"
    assert openai_error(body)["code"] == "token_missing"


@pytest.mark.parametrize(("body", "status", "param", "words"), [
    ({"messages": ask()}, 400, "model", "model is required"),
    ({"model": "cheap"}, 400, "messages", "messages is required"),
    ({"model": "cheap", "messages": "hi"}, 400, "messages", "must be an array"),
    ({"model": "cheap", "messages": ask(), "temperature": "hot"}, 400, "temperature",
     "must be a number"),
    ({"model": "cheap", "messages": ask(), "n": 2}, 400, "n", "one answer per request"),
    ({"model": "cheap", "messages": ask(), "colour": "red"}, 400, "colour", "colour"),
    ({"model": "cheap", "messages": [{"role": "user", "content": "hi", "mood": 1}]}, 400,
     "messages[0].mood", "messages[0].mood"),
    ({"model": "cheap", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}, 400,
     "messages[0].content[0].type", "text parts only"),
    ({"model": "gpt-99", "messages": ask()}, 404, "model", "unknown model"),
    ({"model": "local", "messages": ask(), "tools": [TOOL]}, 400, None,
     "cannot take this request"),
])
async def test_bad_requests_are_refused_naming_the_field(
        start: Any, fake: FakeLLMServer, http: aiohttp.ClientSession, body: dict[str, Any],
        status: int, param: str | None, words: str) -> None:
    mesh = await start()
    _, access = await token(mesh)
    got, _, reply = await post(http, mesh, "/chat/completions", body, access)
    error = openai_error(reply)
    assert (got, error["param"]) == (status, param), reply
    assert words in error["message"]
    assert not fake.requests  # nothing reached a provider


async def test_malformed_json_and_unknown_routes_answer_in_openai_shape(
        start: Any, http: aiohttp.ClientSession) -> None:
    mesh = await start()
    _, access = await token(mesh)
    status, _, body = await post(http, mesh, "/chat/completions", b"{not json", access)
    assert (status, openai_error(body)["code"]) == (400, "invalid_json")
    status, _, body = await post(http, mesh, "/completions", {"prompt": "x"}, access)
    assert (status, openai_error(body)["code"]) == (404, "unknown_url")


async def test_a_rate_limit_is_429_with_retry_after(start: Any, sdk: Any) -> None:
    mesh = await start(auth={**AUTH, "rate_limits": {
        "roles": {"developer": {"rate": 0.01, "burst": 1}}}})
    api = await sdk(mesh)
    await api.models.list()
    with pytest.raises(openai.RateLimitError) as limited:
        await api.models.list()
    assert limited.value.code == "rate_limit_exceeded"
    assert int(limited.value.response.headers["retry-after"]) >= 1


async def test_a_spent_budget_is_429_insufficient_quota(start: Any, fake: FakeLLMServer,
                                                        sdk: Any) -> None:
    mesh = await start(budget_usd=0.0)
    api = await sdk(mesh)
    with pytest.raises(openai.RateLimitError) as refused:
        await api.chat.completions.create(model="cheap", messages=ask())
    assert refused.value.code == "insufficient_quota"
    assert "budget reached" in refused.value.message
    assert int(refused.value.response.headers["retry-after"]) >= 1  # the next period
    assert not fake.requests


async def test_http_calls_are_in_the_ledger_like_grpc_ones(start: Any, sdk: Any) -> None:
    mesh = await start()
    user, access = await token(mesh)
    api = await sdk(mesh, api_key=access)
    await api.chat.completions.create(model="claude", messages=ask())
    async for _ in await api.chat.completions.create(model="claude", messages=ask(),
                                                     stream=True):
        pass
    usage = await models_pb2_grpc.ModelServiceStub(mesh.channel).GetUsage(
        pb.GetUsageRequest(period=pb.PERIOD_DAY), metadata=bearer(access), timeout=10)
    assert [(r.user, r.model, r.requests) for r in usage.rows] == [(user, "claude", 2)]


async def test_an_api_key_calls_the_api_and_the_audit_names_it(start: Any, sdk: Any) -> None:
    mesh = await start(auth={**AUTH, "audit": {"enabled": True}})
    user, access = await token(mesh)
    created = await auth_pb2_grpc.UserServiceStub(mesh.channel).CreateApiKey(
        auth_pb2.CreateApiKeyRequest(name="editor", expires_in_s=600),
        metadata=bearer(access), timeout=10)
    assert created.secret.startswith("revo_")
    api = await sdk(mesh, api_key=created.secret)
    request_id = f"openai-{created.key.id}"
    completion = await api.chat.completions.create(
        model="cheap", messages=ask(), extra_headers={"x-request-id": request_id})
    assert completion.choices[0].message.content
    nc = await nats.connect(mesh.config.nats.url)
    found: list[dict[str, Any]] = []
    try:
        async def recorded() -> bool:
            found[:] = [r async for r in read_audit(nc, user=user, idle_s=1.0)
                        if r["request_id"] == request_id]
            return bool(found)

        # generous bounds: on a loaded machine the session's audit stream is long and busy
        await wait_for(recorded, 30, "the audit record of the HTTP call")
    finally:
        await nc.close()
    [record] = found
    assert (record["method"], record["decision"], record["status"]) == (
        "/revo.models.v1.ModelService/Generate", "allow", "OK")
    assert record["key"] == created.key.id
    assert record["peer"].startswith("http:")


# -- embeddings (a real Triton embedder) --------------------------------------------------


async def test_embeddings_come_as_floats_or_base64(mesh_harness: Any, sdk: Any,
                                                   triton: TritonServer) -> None:
    mesh: MeshHarness = await mesh_harness(plugins={"only": ["models"]},
                                           models={"triton_url": triton.grpc_url})
    api = await sdk(mesh, api_key="anonymous")  # auth off: any key is the anonymous caller
    listed = await api.models.list()
    assert "embedder" in [m.id for m in listed.data]
    one = await api.embeddings.create(model="embedder", input="a cat sits on the mat")
    assert one.object == "list"
    assert len(one.data) == 1
    assert len(one.data[0].embedding) == 384  # all-MiniLM-L6-v2
    both = await api.embeddings.create(model="embedder",
                                       input=["a cat sits on the mat", "stock prices fell"])
    assert [d.index for d in both.data] == [0, 1]
    assert both.data[0].embedding == pytest.approx(one.data[0].embedding, abs=1e-5)
    # the SDK asks for base64 by default when numpy is there, and decodes it; ask by hand
    raw = await api.embeddings.with_raw_response.create(
        model="embedder", input="a cat sits on the mat", encoding_format="base64")
    encoded = json.loads(raw.content)["data"][0]["embedding"]
    decoded = array.array("f", base64.b64decode(encoded))
    assert list(decoded) == pytest.approx(one.data[0].embedding, abs=1e-6)
    with pytest.raises(openai.NotFoundError):
        await api.embeddings.create(model="ada", input="x")
    with pytest.raises(openai.BadRequestError) as refused:
        await api.embeddings.create(model="embedder", input="x", dimensions=64)
    assert refused.value.param == "dimensions"
