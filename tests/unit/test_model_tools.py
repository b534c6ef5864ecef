"""Tools and structured output, without sockets: the checks, what a model lacks, the
mapping onto the OpenAI and Anthropic request fields, and how a stream's pieces join."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.config import CatalogModel
from mesh.errors import InvalidArgument
from mesh.models.engine import _joined, _request
from mesh.models.providers import (
    ProviderError,
    Turn,
    anthropic_messages,
    anthropic_tool_options,
    openai_messages,
    openai_tool_options,
)
from mesh.models.tools import (
    ResponseFormat,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Tooling,
    check_turns,
    lacks,
)
from mesh.v1 import models_pb2 as pb

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}},
           "required": ["city"]}
TOOL = Tool("get_weather", "The weather in a city", WEATHER, strict=True)
SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}}
CONVERSATION = [
    Turn("system", "Be brief."),
    Turn("user", "Weather in Paris and Rome?"),
    Turn("assistant", "Looking.", (ToolCall("c1", "get_weather", '{"city": "Paris"}'),
                                   ToolCall("c2", "get_weather", '{"city": "Rome"}'))),
    Turn("tool", "sunny", tool_call_id="c1"),
    Turn("tool", "rain", tool_call_id="c2"),
    Turn("user", "Which is warmer?"),
]


def _model(provider: str, **fields: object) -> CatalogModel:
    return CatalogModel.model_validate({"name": "m", "provider": provider, **fields})


def test_openai_gets_calls_on_the_assistant_message_and_results_as_tool_messages() -> None:
    assert openai_messages(CONVERSATION) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Looking.", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "c2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
        {"role": "user", "content": "Which is warmer?"},
    ]


def test_anthropic_gets_tool_use_blocks_and_results_opening_one_user_turn() -> None:
    system, messages = anthropic_messages(CONVERSATION)
    assert system == "Be brief."
    assert messages == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Looking."},
            {"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "c2", "name": "get_weather", "input": {"city": "Rome"}}]},
        # both results and the user's next words in the one user turn, results first
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "c1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "c2", "content": "rain"},
            {"type": "text", "text": "Which is warmer?"}]},
    ]


@pytest.mark.parametrize(("choice", "parallel", "openai_choice", "anthropic_choice"), [
    (None, None, None, None),
    (ToolChoice("auto"), None, "auto", {"type": "auto"}),
    (ToolChoice("none"), False, "none", {"type": "none"}),
    (ToolChoice("required"), False, "required",
     {"type": "any", "disable_parallel_tool_use": True}),
    (ToolChoice("function", "get_weather"), None,
     {"type": "function", "function": {"name": "get_weather"}},
     {"type": "tool", "name": "get_weather"}),
    (None, False, None, {"type": "auto", "disable_parallel_tool_use": True}),
])
def test_tools_and_choices_map_onto_both_apis(choice: ToolChoice | None, parallel: bool | None,
                                              openai_choice: object,
                                              anthropic_choice: object) -> None:
    tooling = Tooling((TOOL, Tool("now")), choice, parallel_tool_calls=parallel)
    openai = openai_tool_options(tooling)
    assert openai["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER,
                                          "description": "The weather in a city",
                                          "strict": True}},
        {"type": "function", "function": {"name": "now", "parameters": {
            "type": "object", "properties": {}}}}]
    assert openai.get("tool_choice") == openai_choice
    assert openai.get("parallel_tool_calls") == parallel
    anthropic = anthropic_tool_options(tooling)
    assert anthropic["tools"] == [
        {"name": "get_weather", "input_schema": WEATHER, "description": "The weather in a city",
         "strict": True},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}}]
    assert anthropic.get("tool_choice") == anthropic_choice


def test_response_formats_map_onto_both_apis() -> None:
    schema = Tooling(response_format=ResponseFormat("json_schema", "result", "the sum",
                                                    SCHEMA, strict=True))
    assert openai_tool_options(schema) == {"response_format": {
        "type": "json_schema",
        "json_schema": {"name": "result", "schema": SCHEMA, "description": "the sum",
                        "strict": True}}}
    assert anthropic_tool_options(schema) == {
        "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}}
    json_mode = Tooling(response_format=ResponseFormat("json_object"))
    assert openai_tool_options(json_mode) == {"response_format": {"type": "json_object"}}
    with pytest.raises(ProviderError) as refused:
        anthropic_tool_options(json_mode)
    assert refused.value.kind == "bad_request"
    assert openai_tool_options(Tooling()) == anthropic_tool_options(Tooling()) == {}


@pytest.mark.parametrize(("model", "tooling", "lack"), [
    (_model("triton"), Tooling((TOOL,)), "no tool calling"),
    (_model("openai_compatible", base_url="http://x"), Tooling((TOOL,)), "no tool calling"),
    (_model("openai_compatible", base_url="http://x", supports_tools=True),
     Tooling((TOOL,)), ""),
    (_model("openai", supports_tools=False), Tooling((TOOL,)), "supports_tools = false"),
    (_model("openai"), Tooling((TOOL,)), ""),
    (_model("triton"), Tooling(response_format=ResponseFormat("json_schema", schema=SCHEMA)),
     "no structured output"),
    (_model("anthropic"), Tooling(response_format=ResponseFormat("json_schema",
                                                                 schema=SCHEMA)), ""),
    (_model("anthropic"), Tooling(response_format=ResponseFormat("json_object")),
     "no json_object mode"),
    (_model("triton"), Tooling(response_format=ResponseFormat("text")), ""),
])
def test_what_a_model_lacks(model: CatalogModel, tooling: Tooling, lack: str) -> None:
    found = lacks(model, tooling)
    assert (lack in found) if lack else found == ""


def test_a_conversation_with_tool_turns_needs_tools_even_without_tools_given() -> None:
    assert "no tool calling" in lacks(_model("triton"), Tooling(), CONVERSATION)
    assert lacks(_model("openai"), Tooling(), CONVERSATION) == ""


@pytest.mark.parametrize(("tooling", "match"), [
    (Tooling((Tool("get weather"),)), "tools[0].name"),
    (Tooling((TOOL, TOOL)), "given twice"),
    (Tooling(choice=ToolChoice("required")), "needs tools"),
    (Tooling((TOOL,), ToolChoice("function", "nope")), "not one of the tools: get_weather"),
    (Tooling(response_format=ResponseFormat("json_schema", "a b", schema=SCHEMA)),
     "json_schema.name"),
])
def test_bad_tooling_is_invalid_argument(tooling: Tooling, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match.replace("[", r"\[").replace("]", r"\]")):
        tooling.check()


@pytest.mark.parametrize(("turns", "match"), [
    ([Turn("tool", "sunny", tool_call_id="c9")], "answers no tool call"),
    ([Turn("tool", "sunny")], "without tool_call_id"),
    ([Turn("user", "hi", (ToolCall("c1", "get_weather"),))], "only assistant turns"),
    ([Turn("user", "hi", tool_call_id="c1")], "only tool turns"),
    ([Turn("assistant", "", (ToolCall("", "get_weather"),))], "needs an id"),
])
def test_tool_turns_that_do_not_pair_up_are_invalid_argument(turns: list[Turn],
                                                             match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        check_turns(turns)


def _generate_request(**fields: Any) -> pb.GenerateRequest:
    return pb.GenerateRequest(messages=[pb.Message(role="user", content="hi")], **fields)


def test_the_request_is_read_with_its_json_parsed() -> None:
    request = _request(_generate_request(
        tools=[pb.Tool(name="get_weather", parameters_json='{"type": "object"}'),
               pb.Tool(name="now")],
        tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_REQUIRED),
        response_format=pb.ResponseFormat(json_schema=pb.ResponseFormat.JsonSchema(
            schema_json='{"type": "object"}', strict=True)),
        parallel_tool_calls=False))
    tooling = request.tooling
    assert [t.schema for t in tooling.tools] == [{"type": "object"},
                                                 {"type": "object", "properties": {}}]
    assert tooling.choice == ToolChoice("required")
    assert tooling.response_format == ResponseFormat("json_schema", "response", "",
                                                     {"type": "object"}, True)
    assert tooling.parallel_tool_calls is False
    assert not _request(_generate_request()).tooling  # asks nothing: plain text


@pytest.mark.parametrize(("fields", "match"), [
    ({"tools": [pb.Tool(name="f", parameters_json="{not json")]},
     "tools[0].parameters_json is not valid JSON"),
    ({"tools": [pb.Tool(name="f", parameters_json="[1]")]}, "must be a JSON object"),
    ({"response_format": pb.ResponseFormat(json_schema=pb.ResponseFormat.JsonSchema())},
     "schema_json is empty"),
])
def test_json_that_is_not_an_object_is_invalid_argument(fields: dict[str, Any],
                                                        match: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        _request(_generate_request(**fields))
    assert match in str(refused.value)


def test_a_call_with_bad_arguments_in_the_conversation_is_invalid_argument() -> None:
    message = pb.Message(role="assistant", tool_calls=[
        pb.ToolCall(id="c1", name="f", arguments_json="{broken")])
    with pytest.raises(InvalidArgument, match=r"messages\[0\]\.tool_calls\[0\]"):
        _request(pb.GenerateRequest(messages=[message]))


def test_a_burst_joins_text_with_text_and_a_calls_pieces_with_that_call() -> None:
    items: list[object] = [
        "Let me ", "look.", ToolCallDelta(0, "c1", "get_weather"),
        ToolCallDelta(0, arguments='{"ci'), ToolCallDelta(0, arguments='ty": 1}'),
        ToolCallDelta(1, "c2", "now", "{"), ToolCallDelta(1, arguments="}"), None]
    assert _joined(items) == [  # type: ignore[arg-type]
        "Let me look.", ToolCallDelta(0, "c1", "get_weather", '{"city": 1}'),
        ToolCallDelta(1, "c2", "now", "{}")]
    assert _joined(["a", "b", None]) == ["ab"]
