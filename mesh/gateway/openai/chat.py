"""``POST /v1/chat/completions`` requests as ``ModelService.Generate`` requests, and the
non-streaming answer assembled from the Generate stream.

``model`` is the catalog model to use (``auto``: the router's choice); the rest maps onto
``GenerateRequest`` field by field (docs/http-api.md has the table). Fields this API does
not serve are refused by name unless they change nothing in the answer
(:mod:`mesh.gateway.openai.fields`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mesh.gateway.openai.errors import bad_request
from mesh.gateway.openai.fields import Fields
from mesh.models.finish import openai_finish_reason
from mesh.v1 import models_pb2 as pb

__all__ = ["Answer", "ChatRequest", "chat_request", "finish_reason"]

_ROLES = {"system": "system", "developer": "system", "user": "user",
          "assistant": "assistant", "tool": "tool"}
_MAX_STOP = 4  # OpenAI's limit
_INT32 = 2**31 - 1
_INT64 = 2**63 - 1
_CHOICE_MODES = {"auto": pb.ToolChoice.MODE_AUTO, "none": pb.ToolChoice.MODE_NONE,
                 "required": pb.ToolChoice.MODE_REQUIRED}


@dataclass(frozen=True)
class ChatRequest:
    generate: pb.GenerateRequest
    model: str
    """The model as asked (``auto``, or a catalog name)."""
    stream: bool
    include_usage: bool


def chat_request(body: Fields) -> ChatRequest:
    """The request's fields as a Generate request; 400 naming the first wrong field."""
    model = body.string("model", required=True) or ""
    request = pb.GenerateRequest(policy=pb.Policy(model="" if model == "auto" else model))
    messages = body.array("messages", required=True) or []
    if not messages:
        raise bad_request("messages must hold at least one message", "messages")
    request.messages.extend(_message(body.element(messages, i, "messages"))
                            for i in range(len(messages)))
    _sampling(body, request.sampling)
    stream = bool(body.boolean("stream"))
    include_usage = False
    options = body.object("stream_options")
    if options is not None:
        if not stream:
            raise bad_request("stream_options is only allowed with stream: true",
                              "stream_options")
        include_usage = bool(options.boolean("include_usage"))
        options.ignore("include_obfuscation")  # no obfuscation padding is sent
        options.done()
    tools = body.array("tools")
    for index in range(len(tools or [])):
        request.tools.append(_tool(body.element(tools or [], index, "tools")))
    _tool_choice(body, request)
    parallel = body.boolean("parallel_tool_calls")
    if parallel is not None:
        request.parallel_tool_calls = parallel
    response_format = body.object("response_format")
    if response_format is not None:
        _response_format(response_format, request.response_format)
    extension = body.object("revo")
    if extension is not None:
        _policy(extension, request.policy)
    _unserved(body)
    body.done()
    return ChatRequest(request, model, stream, include_usage)


def _unserved(body: Fields) -> None:
    # Bookkeeping for OpenAI's own platform: it changes nothing in the answer.
    body.ignore("user", "metadata", "store", "safety_identifier", "prompt_cache_key",
                "service_tier")
    body.neutral("n", 1, why="one answer per request: send several requests for several")
    body.neutral("logprobs", False, why="the mesh does not return log probabilities")
    body.neutral("top_logprobs", 0, why="the mesh does not return log probabilities")
    body.neutral("presence_penalty", 0, why="not carried to the models")
    body.neutral("frequency_penalty", 0, why="not carried to the models")
    body.neutral("logit_bias", {}, why="not carried to the models")
    body.neutral("modalities", ["text"], why="the mesh answers text only")
    for name in ("audio", "prediction", "reasoning_effort", "verbosity",
                 "web_search_options"):
        body.neutral(name, why="not carried to the models")
    for name in ("functions", "function_call"):
        body.neutral(name, why="the deprecated function calling: send tools and "
                               "tool_choice instead")


def _sampling(body: Fields, sampling: pb.Sampling) -> None:
    # OpenAI's default temperature is 1; Generate's 0 would be greedy, so absent is 1.
    temperature = body.number("temperature", 0.0, 2.0)
    sampling.temperature = 1.0 if temperature is None else temperature
    top_p = body.number("top_p", 0.0, 1.0)
    if top_p is not None:
        sampling.top_p = top_p
    max_tokens = body.integer("max_tokens", 1, _INT32)
    most = body.integer("max_completion_tokens", 1, _INT32)
    if max_tokens is not None and most is not None and max_tokens != most:
        raise bad_request(f"max_tokens ({max_tokens}) and max_completion_tokens ({most}) "
                          "disagree: send one of them", "max_completion_tokens")
    sampling.max_tokens = most or max_tokens or 0
    stop = body.take("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise bad_request("stop must be a string or an array of non-empty strings",
                              "stop", "invalid_type")
        if len(stop) > _MAX_STOP:
            raise bad_request(f"stop holds at most {_MAX_STOP} sequences, got {len(stop)}",
                              "stop")
        sampling.stop.extend(stop)
    seed = body.integer("seed", 0, _INT64)
    if seed is not None:
        sampling.seed = seed


def _text(fields: Fields, name: str, *, required: bool) -> str:
    """A message's content: a string, or an array of text parts (joined)."""
    value = fields.take(name)
    if value is None:
        if required:
            raise bad_request(f"{fields.param(name)} is required", fields.param(name),
                              "missing_required_parameter")
        return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise bad_request(f"{fields.param(name)} must be a string or an array of text "
                          "parts", fields.param(name), "invalid_type")
    texts = []
    for index in range(len(value)):
        part = fields.element(value, index, name)
        kind = part.string("type", required=True)
        if kind != "text":
            raise bad_request(f"{part.param('type')} {kind!r} is not supported: the mesh "
                              "takes text parts only", part.param("type"),
                              "unsupported_content")
        texts.append(part.string("text", required=True) or "")
        part.ignore("cache_control")  # a hint for Anthropic's prompt cache, as sent by some
        part.done()
    return "".join(texts)


def _message(fields: Fields) -> pb.Message:
    role = fields.string("role", required=True) or ""
    if role not in _ROLES:
        raise bad_request(f"{fields.param('role')} must be one of system, developer, user, "
                          f"assistant, tool; got {role[:20]!r}", fields.param("role"))
    message = pb.Message(role=_ROLES[role])
    fields.ignore("name")  # a participant's name: the models get the text alone
    if role == "assistant":
        fields.ignore("refusal")
        calls = fields.array("tool_calls") or []
        for index in range(len(calls)):
            message.tool_calls.append(_tool_call(fields.element(calls, index, "tool_calls")))
        message.content = _text(fields, "content", required=not calls)
        fields.neutral("function_call", why="deprecated: send tool_calls")
        fields.neutral("audio", why="the mesh answers text only")
    else:
        message.content = _text(fields, "content", required=True)
    if role == "tool":
        message.tool_call_id = fields.string("tool_call_id", required=True) or ""
    fields.done()
    return message


def _tool_call(fields: Fields) -> pb.ToolCall:
    kind = fields.string("type")
    if kind not in (None, "function"):
        raise bad_request(f"{fields.param('type')} must be 'function', got {kind!r}",
                          fields.param("type"))
    function = fields.object("function", required=True)
    assert function is not None
    call = pb.ToolCall(id=fields.string("id", required=True) or "",
                       name=function.string("name", required=True) or "",
                       arguments_json=function.string("arguments") or "")
    function.done()
    fields.done()
    return call


def _tool(fields: Fields) -> pb.Tool:
    kind = fields.string("type", required=True)
    if kind != "function":
        raise bad_request(f"{fields.param('type')} must be 'function' (the only kind of tool "
                          f"served), got {kind!r}", fields.param("type"))
    function = fields.object("function", required=True)
    assert function is not None
    tool = pb.Tool(name=function.string("name", required=True) or "",
                   description=function.string("description") or "",
                   strict=bool(function.boolean("strict")))
    parameters = function.object("parameters")
    if parameters is not None:
        tool.parameters_json = json.dumps(function.take("parameters"))
    function.done()
    fields.done()
    return tool


def _tool_choice(body: Fields, request: pb.GenerateRequest) -> None:
    choice = body.take("tool_choice")
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in _CHOICE_MODES:
            raise bad_request(f"tool_choice must be 'auto', 'none', 'required' or "
                              f"{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, "
                              f"got {choice[:40]!r}", "tool_choice")
        request.tool_choice.mode = _CHOICE_MODES[choice]
        return
    fields = body.object("tool_choice")
    assert fields is not None
    kind = fields.string("type", required=True)
    if kind != "function":
        raise bad_request(f"tool_choice.type must be 'function', got {kind!r}",
                          "tool_choice.type")
    function = fields.object("function", required=True)
    assert function is not None
    request.tool_choice.function_name = function.string("name", required=True) or ""
    function.done()
    fields.done()


def _response_format(fields: Fields, out: pb.ResponseFormat) -> None:
    kind = fields.string("type", required=True)
    if kind == "text":
        out.text.SetInParent()
    elif kind == "json_object":
        out.json_object.SetInParent()
    elif kind == "json_schema":
        spec = fields.object("json_schema", required=True)
        assert spec is not None
        out.json_schema.name = spec.string("name") or ""
        out.json_schema.description = spec.string("description") or ""
        out.json_schema.strict = bool(spec.boolean("strict"))
        if spec.object("schema") is not None:
            out.json_schema.schema_json = json.dumps(spec.take("schema"))
        spec.done()
    else:
        raise bad_request(f"response_format.type must be text, json_object or json_schema, "
                          f"got {kind!r}", "response_format.type")
    fields.done()


def _policy(fields: Fields, policy: pb.Policy) -> None:
    """The mesh's own routing choices (the ``revo`` object, e.g. the SDK's extra_body)."""
    policy.force_local = bool(fields.boolean("force_local"))
    policy.no_fallback = bool(fields.boolean("no_fallback"))
    limit = fields.number("cost_limit_usd", 0.0, 1e9)
    policy.cost_limit_usd = limit or 0.0
    fields.done()


def finish_reason(done: pb.Done) -> str:
    """OpenAI's word for why the answer ended (the contract's enum, mapped back)."""
    return openai_finish_reason(done.finish_reason)


class Answer:
    """The whole answer of a non-streaming request, gathered from the Generate stream."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self.done: pb.Done | None = None

    def add(self, event: pb.GenerateResponse) -> None:
        kind = event.WhichOneof("event")
        if kind == "delta":
            self.text.append(event.delta)
        elif kind == "tool_call":
            piece = event.tool_call
            while len(self.calls) <= piece.index:
                self.calls.append({"id": "", "type": "function",
                                   "function": {"name": "", "arguments": ""}})
            call = self.calls[piece.index]
            call["id"] = call["id"] or piece.id
            function = call["function"]
            function["name"] = function["name"] or piece.name
            function["arguments"] += piece.arguments_delta
        elif kind == "done":
            self.done = event.done

    def message(self) -> dict[str, Any]:
        text = "".join(self.text)
        message: dict[str, Any] = {"role": "assistant",
                                   "content": text if text or not self.calls else None,
                                   "refusal": None}
        if self.calls:
            message["tool_calls"] = self.calls
        return message
