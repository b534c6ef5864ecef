"""Cloud model APIs behind one interface: a stream of text and tool-call deltas, then the usage.

:class:`OpenAIProvider` (OpenAI and any OpenAI-compatible URL) and
:class:`AnthropicProvider` drive the official SDKs with streaming on, and turn every
failure into a :class:`ProviderError` whose ``kind`` tells the router what to do:
``rate_limited`` and ``server`` and ``timeout`` and ``connection`` are worth a retry or
another model; ``auth`` and ``bad_request`` are not; ``malformed`` means the provider
answered something the SDK could not read. SDK retries are off: the router retries, with
its own backoff, budget and cooldown. Keys come from the environment or a file and are
never logged.

Tools and structured output (:mod:`mesh.models.tools`) map onto each API here:
``openai_*`` and ``anthropic_*`` build the request fields, and each provider's stream
turns the API's own tool-call events into :class:`~mesh.models.tools.ToolCallDelta`
pieces in OpenAI's shape (docs/models.md, "Tools and structured output").
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anthropic
import openai
from anthropic import types

from mesh.models.tools import ToolCall, ToolCallDelta, ToolChoice, Tooling

__all__ = ["NO_TOOLING", "AnthropicProvider", "Chunk", "OpenAIProvider", "Provider",
           "ProviderError", "ProviderUsage", "Turn", "anthropic_messages",
           "anthropic_tool_options", "openai_messages", "openai_tool_options", "read_key"]

NO_TOOLING = Tooling()

RETRYABLE = frozenset({"rate_limited", "server", "timeout", "connection", "malformed"})


@dataclass(frozen=True)
class Turn:
    """One turn of the conversation: ``system``, ``user``, ``assistant`` (maybe with the
    tool calls it made) or ``tool`` (the result of call ``tool_call_id``)."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""


@dataclass(frozen=True)
class ProviderUsage:
    """Tokens as the provider itself reported them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True)
class Chunk:
    """One event of a stream: a text delta, a piece of a tool call, or (last) the usage
    and finish reason."""

    text: str = ""
    tool_call: ToolCallDelta | None = None
    usage: ProviderUsage | None = None
    finish_reason: str = ""


@dataclass
class ProviderError(Exception):
    """A failed provider call; ``kind`` says whether retrying or falling back can help."""

    kind: str
    message: str
    status: int = 0
    retry_after_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE


class Provider(Protocol):
    name: str

    def stream(self, model: str, turns: Sequence[Turn], *, max_tokens: int,
               temperature: float, top_p: float, stop: Sequence[str],
               timeout_s: float, seed: int | None = None,
               tooling: Tooling = NO_TOOLING) -> AsyncIterator[Chunk]:
        """Text deltas and tool-call pieces, then one chunk with the provider's usage and
        finish reason. ``seed`` makes sampling repeatable where the provider supports it;
        ``tooling`` gives tools and the answer's format (only to a provider whose model
        supports them: the router checks)."""
        ...


def read_key(env_name: str, file: Path | None = None) -> str:
    """An API key from ``$env_name``, else from ``file``; '' when neither has one."""
    value = os.environ.get(env_name, "")
    if not value and file is not None and file.exists():
        value = file.read_text().strip()
    return value


def _retry_after(error: Any) -> float | None:
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None) or {}
    value = headers.get("retry-after") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _classify(error: Exception, sdk: Any) -> ProviderError:
    """The SDK's exception as a ProviderError (both SDKs share these class names)."""
    status = int(getattr(error, "status_code", 0) or 0)
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    if isinstance(error, sdk.RateLimitError):
        return ProviderError("rate_limited", text, status, _retry_after(error))
    if isinstance(error, sdk.AuthenticationError | sdk.PermissionDeniedError):
        return ProviderError("auth", text, status)
    if isinstance(error, sdk.APITimeoutError):
        return ProviderError("timeout", text)
    if isinstance(error, sdk.APIConnectionError):
        return ProviderError("connection", text)
    if isinstance(error, sdk.APIStatusError):
        kind = "server" if status >= 500 or status in (408, 409) else "bad_request"
        return ProviderError(kind, text, status, _retry_after(error))
    if isinstance(error, sdk.APIResponseValidationError | ValueError):
        return ProviderError("malformed", text, status)
    return ProviderError("connection", f"{type(error).__name__}: {text}")


class OpenAIProvider:
    """OpenAI's chat completions API, or any server that speaks it."""

    def __init__(self, name: str, api_key: str, base_url: str | None = None) -> None:
        self.name = name
        self._client = openai.AsyncOpenAI(api_key=api_key or "unset", base_url=base_url,
                                          max_retries=0)

    async def stream(self, model: str, turns: Sequence[Turn], *, max_tokens: int,
                     temperature: float, top_p: float, stop: Sequence[str],
                     timeout_s: float, seed: int | None = None,
                     tooling: Tooling = NO_TOOLING) -> AsyncIterator[Chunk]:
        options: dict[str, Any] = {"temperature": temperature, **openai_tool_options(tooling)}
        if max_tokens:
            options["max_tokens"] = max_tokens
        if seed is not None:
            options["seed"] = seed
        if top_p:
            options["top_p"] = top_p
        if stop:
            options["stop"] = list(stop)
        finish = ""
        try:
            create: Any = self._client.chat.completions.create  # options are built per call
            response = await create(
                model=model, messages=openai_messages(turns),
                stream=True, stream_options={"include_usage": True}, timeout=timeout_s,
                **options)
            async with response as events:
                async for event in events:
                    for choice in event.choices or ():
                        delta = choice.delta
                        if delta and delta.content:
                            yield Chunk(text=delta.content)
                        for call in (delta.tool_calls if delta else None) or ():
                            function = call.function
                            yield Chunk(tool_call=ToolCallDelta(
                                call.index, call.id or "",
                                (function.name if function else None) or "",
                                (function.arguments if function else None) or ""))
                        if choice.finish_reason:
                            finish = choice.finish_reason
                    if event.usage is not None:
                        details = event.usage.prompt_tokens_details
                        yield Chunk(usage=ProviderUsage(
                            event.usage.prompt_tokens, event.usage.completion_tokens,
                            (details.cached_tokens or 0) if details else 0),
                            finish_reason=finish or "stop")
                        return
        except Exception as exc:  # SDK errors, bodies that are not JSON, cut connections
            raise _classify(exc, openai) from exc
        raise ProviderError("malformed", "the stream ended without a usage report")


class AnthropicProvider:
    """Anthropic's messages API."""

    def __init__(self, name: str, api_key: str, base_url: str | None = None) -> None:
        self.name = name
        self._client = anthropic.AsyncAnthropic(api_key=api_key or "unset",
                                                base_url=base_url, max_retries=0)

    async def stream(self, model: str, turns: Sequence[Turn], *, max_tokens: int,
                     temperature: float, top_p: float, stop: Sequence[str],
                     timeout_s: float, seed: int | None = None,
                     tooling: Tooling = NO_TOOLING) -> AsyncIterator[Chunk]:
        # Anthropic's API has no seed: sampling with temperature > 0 is not repeatable
        system, messages = anthropic_messages(turns)
        sampling: dict[str, Any] = {"temperature": temperature}  # wire fields; the SDK
        if top_p:                                                  # takes them in extra_body
            sampling["top_p"] = top_p
        options: dict[str, Any] = {"extra_body": sampling, **anthropic_tool_options(tooling)}
        if system:
            options["system"] = system
        if stop:
            options["stop_sequences"] = list(stop)
        prompt = cached = completion = 0
        finish = ""
        calls: dict[int, int] = {}  # content block index -> tool call index
        argued: set[int] = set()  # blocks whose input streamed at least one piece
        try:
            create: Any = self._client.messages.create  # options are built per call
            events = await create(model=model, messages=messages,
                                  max_tokens=max_tokens or 1024, stream=True,
                                  timeout=timeout_s, **options)
            async for event in events:
                if isinstance(event, types.RawMessageStartEvent):
                    usage = event.message.usage
                    prompt = usage.input_tokens or 0
                    cached = usage.cache_read_input_tokens or 0
                    completion = usage.output_tokens or 0
                elif isinstance(event, types.RawContentBlockStartEvent):
                    block = event.content_block
                    if isinstance(block, types.ToolUseBlock):
                        calls[event.index] = len(calls)
                        yield Chunk(tool_call=ToolCallDelta(calls[event.index], block.id,
                                                            block.name))
                elif isinstance(event, types.RawContentBlockDeltaEvent):
                    if isinstance(event.delta, types.TextDelta) and event.delta.text:
                        yield Chunk(text=event.delta.text)
                    elif isinstance(event.delta, types.InputJSONDelta) \
                            and event.index in calls and event.delta.partial_json:
                        argued.add(event.index)
                        yield Chunk(tool_call=ToolCallDelta(
                            calls[event.index], arguments=event.delta.partial_json))
                elif isinstance(event, types.RawContentBlockStopEvent):
                    if event.index in calls and event.index not in argued:
                        # a call without arguments streams none; OpenAI's shape has "{}"
                        yield Chunk(tool_call=ToolCallDelta(calls[event.index],
                                                            arguments="{}"))
                elif isinstance(event, types.RawMessageDeltaEvent):
                    completion = event.usage.output_tokens or completion
                    finish = event.delta.stop_reason or finish
                elif isinstance(event, types.RawMessageStopEvent):
                    yield Chunk(usage=ProviderUsage(prompt, completion, cached),
                                finish_reason=_anthropic_finish(finish))
                    return
        except Exception as exc:
            raise _classify(exc, anthropic) from exc
        raise ProviderError("malformed", "the stream ended without message_stop")


def _anthropic_finish(reason: str) -> str:
    return {"end_turn": "stop", "max_tokens": "length", "stop_sequence": "stop",
            "tool_use": "tool_calls", "refusal": "content_filter"}.get(reason, reason or "stop")


# -- request fields -------------------------------------------------------------------


def openai_messages(turns: Sequence[Turn]) -> list[dict[str, Any]]:
    """The turns as chat completions messages: calls as ``tool_calls`` of the assistant
    message, results as ``tool`` messages."""
    messages: list[dict[str, Any]] = []
    for turn in turns:
        if turn.role == "tool":
            messages.append({"role": "tool", "tool_call_id": turn.tool_call_id,
                             "content": turn.content})
        elif turn.tool_calls:
            messages.append({"role": "assistant", "content": turn.content or None,
                             "tool_calls": [{"id": c.id, "type": "function",
                                             "function": {"name": c.name,
                                                          "arguments": c.arguments}}
                                            for c in turn.tool_calls]})
        else:
            messages.append({"role": turn.role, "content": turn.content})
    return messages


def openai_tool_options(tooling: Tooling) -> dict[str, Any]:
    """``tools``, ``tool_choice``, ``parallel_tool_calls`` and ``response_format`` for
    chat completions (none of them when ``tooling`` asks nothing)."""
    options: dict[str, Any] = {}
    if tooling.tools:
        options["tools"] = [{"type": "function", "function": {
            "name": tool.name, "parameters": tool.schema,
            **({"description": tool.description} if tool.description else {}),
            **({"strict": True} if tool.strict else {})}} for tool in tooling.tools]
        choice = tooling.choice
        if choice is not None:
            options["tool_choice"] = ({"type": "function", "function": {"name": choice.function}}
                                      if choice.mode == "function" else choice.mode)
        if tooling.parallel_tool_calls is not None:
            options["parallel_tool_calls"] = tooling.parallel_tool_calls
    form = tooling.response_format
    if form is not None and form.kind == "json_schema":
        spec: dict[str, Any] = {"name": form.name, "schema": form.schema or {}}
        if form.description:
            spec["description"] = form.description
        if form.strict:
            spec["strict"] = True
        options["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif form is not None:
        options["response_format"] = {"type": form.kind}
    return options


def anthropic_messages(turns: Sequence[Turn]) -> tuple[str, list[dict[str, Any]]]:
    """The system prompt and the Messages API's turns: calls as ``tool_use`` blocks of
    the assistant turn, results as ``tool_result`` blocks opening the next user turn
    (results of one answer's calls, and the user's text after them, share that turn)."""
    system = "\n\n".join(t.content for t in turns if t.role == "system")
    messages: list[dict[str, Any]] = []
    for turn in turns:
        if turn.role == "system":
            continue
        if turn.role == "tool":
            result = {"type": "tool_result", "tool_use_id": turn.tool_call_id,
                      "content": turn.content}
            if messages and _holds_results(messages[-1]):
                messages[-1]["content"].append(result)
            else:
                messages.append({"role": "user", "content": [result]})
        elif turn.tool_calls:
            blocks: list[dict[str, Any]] = ([{"type": "text", "text": turn.content}]
                                            if turn.content else [])
            blocks += [{"type": "tool_use", "id": c.id, "name": c.name,
                        "input": json.loads(c.arguments or "{}")} for c in turn.tool_calls]
            messages.append({"role": "assistant", "content": blocks})
        elif turn.role == "user" and messages and _holds_results(messages[-1]):
            messages[-1]["content"].append({"type": "text", "text": turn.content})
        else:
            messages.append({"role": turn.role, "content": turn.content})
    return system, messages


def _holds_results(message: dict[str, Any]) -> bool:
    content = message["content"]
    return message["role"] == "user" and isinstance(content, list) and any(
        block.get("type") == "tool_result" for block in content)


_ANTHROPIC_CHOICE = {"auto": "auto", "none": "none", "required": "any", "function": "tool"}


def anthropic_tool_options(tooling: Tooling) -> dict[str, Any]:
    """``tools``, ``tool_choice`` and ``output_config`` for the Messages API. A JSON schema
    answer is Anthropic's structured output (``output_config.format``); JSON without a
    schema has no equivalent there and is refused ``bad_request`` (the router never
    sends it: :func:`mesh.models.tools.lacks`)."""
    options: dict[str, Any] = {}
    if tooling.tools:
        options["tools"] = [{
            "name": tool.name, "input_schema": tool.schema,
            **({"description": tool.description} if tool.description else {}),
            **({"strict": True} if tool.strict else {})} for tool in tooling.tools]
        choice = tooling.choice
        if choice is not None or tooling.parallel_tool_calls is False:
            choice = choice or ToolChoice()
            param: dict[str, Any] = {"type": _ANTHROPIC_CHOICE[choice.mode]}
            if choice.mode == "function":
                param["name"] = choice.function
            if tooling.parallel_tool_calls is False and choice.mode != "none":
                param["disable_parallel_tool_use"] = True
            options["tool_choice"] = param
    form = tooling.response_format
    if form is not None and form.kind == "json_schema":
        options["output_config"] = {"format": {"type": "json_schema",
                                               "schema": form.schema or {}}}
    elif form is not None and form.kind == "json_object":
        raise ProviderError("bad_request", "Anthropic's API has no JSON mode without a "
                            "schema; send response_format json_schema")
    return options
