"""The OpenAI-compatible API's mapping, without a mesh: request bodies onto Generate
requests (and their refusals, each naming its field), mesh errors onto OpenAI's codes."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from mesh.errors import (
    BudgetExhausted,
    InvalidArgument,
    PermissionDenied,
    RateLimited,
    Reason,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from mesh.gateway.openai.chat import ChatRequest, chat_request
from mesh.gateway.openai.errors import ApiError, from_rpc
from mesh.gateway.openai.fields import parse_json
from mesh.gateway.openai.sse import Chunks
from mesh.v1 import models_pb2 as pb

USER = {"role": "user", "content": "hi"}


def parsed(**body: Any) -> ChatRequest:
    return chat_request(parse_json(json.dumps({"model": "auto", "messages": [USER],
                                               **body}).encode()))


def refused(**body: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parsed(**body)
    assert caught.value.status == 400
    return caught.value


def test_sampling_and_policy_map_onto_the_generate_request() -> None:
    chat = parsed(model="cheap", max_completion_tokens=20, temperature=0, top_p=0.5,
                  stop="END", seed=9, revo={"force_local": True, "cost_limit_usd": 0.5})
    sampling, policy = chat.generate.sampling, chat.generate.policy
    assert (sampling.max_tokens, sampling.temperature, sampling.top_p, list(sampling.stop),
            sampling.seed) == (20, 0.0, 0.5, ["END"], 9)
    assert (policy.model, policy.force_local, policy.cost_limit_usd) == ("cheap", True, 0.5)
    assert parsed().generate.sampling.temperature == 1.0  # OpenAI's default, not greedy
    assert parsed().generate.policy.model == ""  # auto: the router's choice


def test_messages_map_roles_parts_and_tool_turns() -> None:
    chat = parsed(messages=[
        {"role": "developer", "content": "be brief"},
        {"role": "user", "name": "ann", "content": [{"type": "text", "text": "a"},
                                                    {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"}])
    assert [(m.role, m.content) for m in chat.generate.messages] == [
        ("system", "be brief"), ("user", "ab"), ("assistant", ""), ("tool", "42")]
    assert chat.generate.messages[2].tool_calls[0] == pb.ToolCall(id="c1", name="f",
                                                                  arguments_json="{}")
    assert chat.generate.messages[3].tool_call_id == "c1"


def test_tools_choice_and_format_map() -> None:
    chat = parsed(tools=[{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object"}, "strict": True}}],
        tool_choice="none", parallel_tool_calls=False,
        response_format={"type": "json_object"})
    request = chat.generate
    assert (request.tools[0].name, json.loads(request.tools[0].parameters_json),
            request.tools[0].strict) == ("f", {"type": "object"}, True)
    assert request.tool_choice.mode == pb.ToolChoice.MODE_NONE
    assert request.HasField("parallel_tool_calls")
    assert not request.parallel_tool_calls
    assert request.response_format.HasField("json_object")


def test_neutral_and_ignored_fields_are_accepted() -> None:
    parsed(n=1, logprobs=False, presence_penalty=0.0, frequency_penalty=0, user="u",
           metadata={"a": "b"}, store=False, logit_bias={}, service_tier="auto",
           stream=True, stream_options={"include_usage": True})


@pytest.mark.parametrize(("body", "param"), [
    ({"n": 3}, "n"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"logprobs": True}, "logprobs"),
    ({"functions": []}, "functions"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
    ({"stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens"),
    ({"seed": -1}, "seed"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"tools": [{"type": "custom", "custom": {}}]}, "tools[0].type"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"revo": {"budget": 1}}, "revo.budget"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": []}, "messages"),
    ({"temperature": 3}, "temperature"),
    ({"model": 5}, "model"),
    ({"colour": "red", "size": 2}, "colour"),
])
def test_wrong_fields_are_refused_by_name(body: dict[str, Any], param: str) -> None:
    error = refused(**body)
    assert error.param == param
    assert param.split(".")[-1].split("[")[0] in error.message


def test_a_body_that_is_not_a_json_object_is_refused() -> None:
    for raw in (b"{nope", b"[1]", b"\xff"):
        with pytest.raises(ApiError) as caught:
            parse_json(raw)
        assert (caught.value.status, caught.value.code) == (400, "invalid_json")


@pytest.mark.parametrize(("error", "status", "kind", "code"), [
    (Unauthenticated("no token", reason=Reason.TOKEN_MISSING), 401, "authentication_error",
     "token_missing"),
    (Unauthenticated("bad"), 401, "authentication_error", "invalid_api_key"),
    (PermissionDenied("no"), 403, "permission_error", "permission_denied"),
    (InvalidArgument("unknown model 'x'; models: a", reason=Reason.UNKNOWN_MODEL), 404,
     "invalid_request_error", "model_not_found"),
    (InvalidArgument("unknown model 'x'; models: a"), 400, "invalid_request_error", None),
    (InvalidArgument(violations=[("max_tokens", "must be more")]), 400,
     "invalid_request_error", None),
    (RateLimited("slow down", 2.5), 429, "rate_limit_error", "rate_limit_exceeded"),
    (Unavailable("none", reason=Reason.NO_LIVE_NODE), 503, "service_unavailable_error",
     "no_live_node"),
    (Unimplemented("no such method", reason=Reason.UNKNOWN_METHOD), 503,
     "service_unavailable_error", "model_service_not_served"),
])
def test_mesh_errors_map_onto_openai_codes(error: Any, status: int, kind: str,
                                           code: str | None) -> None:
    mapped = from_rpc(error)
    assert (mapped.status, mapped.kind, mapped.code) == (status, kind, code)
    assert mapped.message == error.message


def test_a_refusal_names_its_field_and_when_to_retry() -> None:
    assert from_rpc(InvalidArgument(violations=[("max_tokens", "x")])).param == "max_tokens"
    assert from_rpc(RateLimited("slow", 2.5)).retry_after_s == 2.5
    spent = from_rpc(BudgetExhausted("spent", metadata={
        "period": time.strftime("%Y-%m-%d", time.gmtime())}))
    assert (spent.status, spent.code) == (429, "insufficient_quota")
    assert spent.retry_after_s is not None
    assert 0 < spent.retry_after_s <= 86400  # until tomorrow (UTC)


def test_a_text_chunk_is_the_json_openai_sends() -> None:
    chunks = Chunks("chatcmpl-1", 7, "auto")
    event = chunks.text('say "hi"\n')
    assert event.startswith(b"data: ")
    assert event.endswith(b"\n\n")
    assert json.loads(event[6:]) == {
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "auto",
        "choices": [{"index": 0, "delta": {"content": 'say "hi"\n'}, "finish_reason": None,
                     "logprobs": None}]}
    first = json.loads(chunks.tool_call(pb.ToolCallDelta(index=0, id="c", name="f",
                                                         arguments_delta="{"))[6:])
    assert first["choices"][0]["delta"] == {"tool_calls": [
        {"index": 0, "id": "c", "type": "function",
         "function": {"name": "f", "arguments": "{"}}]}
    more = json.loads(chunks.tool_call(pb.ToolCallDelta(index=0, arguments_delta="}"))[6:])
    assert more["choices"][0]["delta"] == {"tool_calls": [
        {"index": 0, "function": {"arguments": "}"}}]}
