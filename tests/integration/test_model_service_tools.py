"""Tools and structured output through a real gateway and node: tool calls streamed as
ToolCallDelta pieces from both providers (real SDKs against the scripted upstream), a tool
result sent back, JSON answers, and models that cannot do them refused or skipped."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from mesh.testing.llm import (
    Behaviour,
    FakeLLMServer,
    ScriptedCall,
    answer,
    call_tools,
    json_answer,
    split_arguments,
    split_tokens,
    status,
)
from mesh.v1 import models_pb2 as pb
from tests.integration import test_model_service as service

# the ModelService tests' mesh (a catalog of local, cheap on OpenAI, claude on Anthropic,
# both served by the scripted upstream) and users
fake, start, _client = service.fake, service.start, service._client

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}},
           "required": ["city"]}
TOOL = pb.Tool(name="get_weather", description="The weather in a city",
               parameters_json=json.dumps(WEATHER))
SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}},
          "required": ["answer"], "additionalProperties": False}
MODEL = {"openai": "cheap", "anthropic": "claude"}


def _ask(text: str = "Weather in Paris?", **fields: Any) -> pb.GenerateRequest:
    model = fields.pop("model", "")
    return pb.GenerateRequest(messages=[pb.Message(role="user", content=text)],
                              policy=pb.Policy(model=model), **fields)


async def _stream(stub: Any, request: pb.GenerateRequest, metadata: Any
                  ) -> tuple[str, list[pb.ToolCallDelta], pb.Done]:
    text, calls, done = "", [], None
    async for reply in stub.Generate(request, metadata=metadata, timeout=20):
        assert done is None, "an event after the final message"
        event = reply.WhichOneof("event")
        if event == "delta":
            text += reply.delta
        elif event == "tool_call":
            calls.append(reply.tool_call)
        else:
            done = reply.done
    assert done is not None, "the stream ended without its final message"
    return text, calls, done


def _assembled(deltas: list[pb.ToolCallDelta]) -> list[tuple[str, str, str]]:
    """The calls the deltas make, as an OpenAI client joins them: (id, name, arguments)."""
    calls: dict[int, list[str]] = {}
    for delta in deltas:
        if delta.index not in calls:
            assert delta.id, "a call's first delta has its id"
            assert delta.name, "a call's first delta has its name"
            calls[delta.index] = [delta.id, delta.name, ""]
        else:
            assert (delta.id, delta.name) == ("", ""), "only a call's first delta names it"
        calls[delta.index][2] += delta.arguments_delta
    assert sorted(calls) == list(range(len(calls))), "calls are numbered from 0"
    return [(c[0], c[1], c[2]) for _, c in sorted(calls.items())]


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_tool_calls_stream_as_deltas(start: Any, fake: FakeLLMServer, api: str) -> None:
    mesh = await start()
    _, stub, metadata = await _client(mesh)
    fake.script(call_tools(ScriptedCall("get_weather", {"city": "Paris"}, id="call_1"),
                           ScriptedCall("get_weather", {"city": "Rome"}, id="call_2"),
                           text="Checking."))
    request = _ask(model=MODEL[api], tools=[TOOL],
                   tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_REQUIRED))
    text, deltas, done = await _stream(stub, request, metadata)
    assert text == "Checking."
    assert _assembled(deltas) == [("call_1", "get_weather", '{"city": "Paris"}'),
                                  ("call_2", "get_weather", '{"city": "Rome"}')]
    assert done.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    pieces = len(split_tokens("Checking.")) + sum(
        len(split_arguments(a)) for a in ('{"city": "Paris"}', '{"city": "Rome"}'))
    assert done.usage.completion_tokens == pieces  # the provider's own count reached Done
    sent = fake.requests[-1].body
    if api == "openai":
        assert sent["tools"] == [{"type": "function", "function": {
            "name": "get_weather", "parameters": WEATHER,
            "description": "The weather in a city"}}]
        assert sent["tool_choice"] == "required"
    else:
        assert sent["tools"] == [{"name": "get_weather", "input_schema": WEATHER,
                                  "description": "The weather in a city"}]
        assert sent["tool_choice"] == {"type": "any"}


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_tool_result_goes_back_and_the_model_answers(start: Any, fake: FakeLLMServer,
                                                            api: str) -> None:
    mesh = await start()
    _, stub, metadata = await _client(mesh)
    fake.script(call_tools(ScriptedCall("get_weather", {"city": "Paris"}, id="call_9")),
                answer("Sunny in Paris."))
    first = _ask(model=MODEL[api], tools=[TOOL])
    _, deltas, done = await _stream(stub, first, metadata)
    assert done.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    [(call_id, name, arguments)] = _assembled(deltas)
    # the second turn: the conversation so far, the call, and its result
    second = _ask(model=MODEL[api], tools=[TOOL])
    second.messages.extend([
        pb.Message(role="assistant", tool_calls=[
            pb.ToolCall(id=call_id, name=name, arguments_json=arguments)]),
        pb.Message(role="tool", tool_call_id=call_id, content="sunny, 24 C")])
    text, deltas, done = await _stream(stub, second, metadata)
    assert (text, deltas, done.finish_reason) == ("Sunny in Paris.", [], pb.FINISH_REASON_STOP)
    messages = fake.requests[-1].body["messages"]
    if api == "openai":
        assert messages[1:] == [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_9", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_9", "content": "sunny, 24 C"}]
    else:
        assert messages[1:] == [
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_9", "name": "get_weather",
                 "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_9", "content": "sunny, 24 C"}]}]


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_json_schema_answer(start: Any, fake: FakeLLMServer, api: str) -> None:
    mesh = await start()
    _, stub, metadata = await _client(mesh)
    fake.script(json_answer({"answer": 7}))
    request = _ask("What is 3 + 4?", model=MODEL[api], response_format=pb.ResponseFormat(
        json_schema=pb.ResponseFormat.JsonSchema(name="sum", schema_json=json.dumps(SCHEMA),
                                                 strict=True)))
    text, deltas, done = await _stream(stub, request, metadata)
    assert json.loads(text) == {"answer": 7}
    assert (deltas, done.finish_reason) == ([], pb.FINISH_REASON_STOP)
    sent = fake.requests[-1].body
    if api == "openai":
        assert sent["response_format"] == {"type": "json_schema", "json_schema": {
            "name": "sum", "schema": SCHEMA, "strict": True}}
    else:
        assert sent["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}


async def test_auto_routing_skips_models_without_tools_and_fallback_keeps_them(
        start: Any, fake: FakeLLMServer) -> None:
    # first by priority: a healthy OpenAI-compatible server not marked supports_tools
    compat = {"name": "compat", "provider": "openai_compatible", "priority": -1,
              "base_url": fake.openai_base_url, "api_key_env": service.KEY_ENV}
    mesh = await start(catalog=[compat, *service._catalog(fake)])
    _, stub, metadata = await _client(mesh)
    # compat is skipped; cheap fails; claude answers, with the tools
    fake.script(status(500), call_tools(ScriptedCall("get_weather", {"city": "Oslo"})))
    _, deltas, done = await _stream(stub, _ask(tools=[TOOL]), metadata)
    assert [(s.from_model, s.to_model) for s in done.switches] == [("cheap", "claude")]
    assert (done.model, done.finish_reason) == ("claude", pb.FINISH_REASON_TOOL_CALLS)
    assert _assembled(deltas)[0][1:] == ("get_weather", '{"city": "Oslo"}')
    assert [r.body["model"] for r in fake.requests] == ["cheap", "claude"]
    assert all(r.body["tools"] for r in fake.requests)  # the fallback kept the tools
    # without tools, compat is first again
    _, _, done = await _stream(stub, _ask(), metadata)
    assert done.model == "compat"


async def test_a_tool_call_cut_mid_stream_is_not_continued_by_another_model(
        start: Any, fake: FakeLLMServer) -> None:
    mesh = await start()
    _, stub, metadata = await _client(mesh)
    # two argument pieces go out, then the connection drops
    fake.script(Behaviour("fail_after", text="", n_chunks=2,
                          calls=(ScriptedCall("get_weather", {"city": "Paris"}),)))
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await _stream(stub, _ask(model="cheap", tools=[TOOL]), metadata)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "cannot continue" in (failed.value.details() or "")
    assert len(fake.requests) == 1  # claude was not asked to finish half a call


@pytest.mark.parametrize(("request_", "match"), [
    (_ask(model="local", tools=[TOOL]),
     "model 'local' cannot take this request: it has no tool calling"),
    (pb.GenerateRequest(messages=[pb.Message(role="user", content="hi")], tools=[TOOL],
                        policy=pb.Policy(force_local=True)),
     "no model can take this request: it needs tool calling; local: no tool calling"),
    (_ask(model="local", response_format=pb.ResponseFormat(
        json_schema=pb.ResponseFormat.JsonSchema(schema_json=json.dumps(SCHEMA)))),
     "model 'local' cannot take this request: it has no structured output"),
    (_ask(model="claude", response_format=pb.ResponseFormat(
        json_object=pb.ResponseFormat.JsonObject())),
     "model 'claude' cannot take this request: it has no json_object mode"),
])
async def test_a_model_that_cannot_is_refused_saying_what_it_lacks(
        start: Any, fake: FakeLLMServer, request_: pb.GenerateRequest, match: str) -> None:
    mesh = await start()
    _, stub, metadata = await _client(mesh)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _stream(stub, request_, metadata)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert match in (refused.value.details() or "")
    assert not fake.requests  # no model was asked


@pytest.mark.parametrize(("request_", "match"), [
    (_ask(tools=[TOOL], tool_choice=pb.ToolChoice(function_name="get_time")),
     "tool_choice.function_name 'get_time' is not one of the tools"),
    (_ask(tools=[pb.Tool(name="f", parameters_json="{oops")]),
     "tools[0].parameters_json is not valid JSON"),
    (pb.GenerateRequest(messages=[pb.Message(role="user", content="hi"),
                                  pb.Message(role="tool", tool_call_id="c1", content="x")]),
     "answers no tool call of an earlier assistant turn"),
])
async def test_bad_tool_input_is_invalid_argument(start: Any, fake: FakeLLMServer,
                                                  request_: pb.GenerateRequest,
                                                  match: str) -> None:
    mesh = await start()
    _, stub, metadata = await _client(mesh)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _stream(stub, request_, metadata)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert match in (refused.value.details() or "")
    assert not fake.requests


async def test_list_models_says_which_take_tools_and_structured_output(start: Any) -> None:
    mesh = await start()
    _, stub, metadata = await _client(mesh, "viewer")
    listed = await stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=10)
    assert [(m.name, m.supports_tools, m.supports_structured_output)
            for m in listed.models] == [("local", False, False), ("cheap", True, True),
                                         ("claude", True, True)]
