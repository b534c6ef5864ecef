"""Tools and structured output: what a request asks beyond text, checked once, SDK-free.

A request may give the model functions to call (:class:`Tool`), say whether and which it
must call (:class:`ToolChoice`), and constrain its answer to JSON
(:class:`ResponseFormat`). The model answers with text and/or tool calls, streamed as
:class:`ToolCallDelta` pieces in OpenAI's shape whatever the provider. Which catalog
models can take such a request is :func:`lacks`; the providers map these types onto
their APIs (:mod:`mesh.models.providers`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mesh.config import CatalogModel
from mesh.errors import InvalidArgument

__all__ = [
    "ChoiceMode",
    "ResponseFormat",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "Tooling",
    "check_turns",
    "lacks",
    "parse_object",
]

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
ChoiceMode = Literal["auto", "none", "required", "function"]
FormatKind = Literal["text", "json_object", "json_schema"]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None
    """JSON Schema of the arguments; None takes no arguments."""
    strict: bool = False

    @property
    def schema(self) -> dict[str, Any]:
        return self.parameters if self.parameters is not None else dict(EMPTY_PARAMETERS)


@dataclass(frozen=True)
class ToolCall:
    """A complete call, as an assistant turn of the conversation sends it back."""

    id: str
    name: str
    arguments: str = "{}"
    """A JSON object as text."""


@dataclass(frozen=True)
class ToolCallDelta:
    """The next piece of call ``index`` (from 0): ``id`` and ``name`` on its first piece."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True)
class ToolChoice:
    mode: ChoiceMode = "auto"
    function: str = ""
    """The tool to call when ``mode`` is ``function``."""


@dataclass(frozen=True)
class ResponseFormat:
    kind: FormatKind = "text"
    name: str = "response"
    description: str = ""
    schema: dict[str, Any] | None = None
    strict: bool = False

    @property
    def json(self) -> bool:
        return self.kind != "text"


@dataclass(frozen=True)
class Tooling:
    """What a request asks beyond text: tools the model may call, how, and the answer's
    format. The default asks nothing."""

    tools: tuple[Tool, ...] = ()
    choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None
    parallel_tool_calls: bool | None = None

    @property
    def json(self) -> bool:
        """The answer must be JSON."""
        return self.response_format is not None and self.response_format.json

    def __bool__(self) -> bool:
        return bool(self.tools) or self.json

    def check(self) -> None:
        """INVALID_ARGUMENT naming the field when names or the choice do not fit."""
        names = [tool.name for tool in self.tools]
        for i, name in enumerate(names):
            if not _NAME.match(name):
                raise InvalidArgument(f"tools[{i}].name {name[:80]!r} must be 1 to 64 of "
                                      "a-z, A-Z, 0-9, _ and -")
            if name in names[:i]:
                raise InvalidArgument(f"tools[{i}].name {name!r} is given twice; tool "
                                      "names must be unique")
        choice = self.choice
        if choice is not None and choice.mode in ("required", "function") and not names:
            raise InvalidArgument(f"tool_choice {choice.mode!r} needs tools; send tools or "
                                  "leave tool_choice unset")
        if choice is not None and choice.mode == "function" and choice.function not in names:
            raise InvalidArgument(f"tool_choice.function_name {choice.function[:80]!r} is "
                                  f"not one of the tools: {', '.join(names)}")
        form = self.response_format
        if form is not None and form.kind == "json_schema" and not _NAME.match(form.name):
            raise InvalidArgument(f"response_format.json_schema.name {form.name[:80]!r} "
                                  "must be 1 to 64 of a-z, A-Z, 0-9, _ and -")

    def size_hint(self) -> str:
        """Text as long as what the tools and schema add to the prompt (for estimates)."""
        parts = [json.dumps(tool.schema) + tool.name + tool.description
                 for tool in self.tools]
        if self.response_format is not None and self.response_format.schema is not None:
            parts.append(json.dumps(self.response_format.schema))
        return "".join(parts)


def parse_object(text: str, field: str, *, empty: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """``text`` parsed as a JSON object; ``empty`` (a copy) when blank; INVALID_ARGUMENT
    naming ``field`` otherwise."""
    if not text.strip():
        return dict(empty or {})
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"{field} is not valid JSON ({exc}); send a JSON object "
                              "as text") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field} must be a JSON object, got "
                              f"{type(value).__name__}")
    return value


def check_turns(turns: Sequence[Any]) -> None:
    """INVALID_ARGUMENT when tool turns and calls do not pair up: every role "tool" turn
    answers a call id of an earlier assistant turn, and only assistant turns make calls."""
    called: set[str] = set()
    for i, turn in enumerate(turns):
        if turn.tool_calls and turn.role != "assistant":
            raise InvalidArgument(f"messages[{i}] has tool_calls but role {turn.role!r}; "
                                  "only assistant turns call tools")
        for j, call in enumerate(turn.tool_calls):
            if not call.id or not _NAME.match(call.name):
                raise InvalidArgument(f"messages[{i}].tool_calls[{j}] needs an id and a "
                                      "tool name (1 to 64 of a-z, A-Z, 0-9, _ and -)")
            called.add(call.id)
        if turn.role == "tool":
            if not turn.tool_call_id:
                raise InvalidArgument(f"messages[{i}] is a tool result without "
                                      "tool_call_id; set it to the call's id")
            if turn.tool_call_id not in called:
                raise InvalidArgument(
                    f"messages[{i}].tool_call_id {turn.tool_call_id[:80]!r} answers no "
                    "tool call of an earlier assistant turn; send that turn first")
        elif turn.tool_call_id:
            raise InvalidArgument(f"messages[{i}] has tool_call_id but role "
                                  f"{turn.role!r}; only tool turns carry it")


def lacks(model: CatalogModel, tooling: Tooling, turns: Sequence[Any] = ()) -> str:
    """What ``model`` lacks to take a request with ``tooling`` (and these turns), in words
    for a refusal; '' when it can take it. A conversation holding tool calls or results
    needs tool support too, even when this request gives no tools."""
    if (tooling.tools or any(t.tool_calls or t.role == "tool" for t in turns)) \
            and not model.tools_supported:
        return ("no tool calling (its catalog entry has supports_tools = false"
                + (", and Triton models have none)" if model.local else ")"))
    form = tooling.response_format
    if form is not None and form.json:
        if not model.structured_output_supported:
            return ("no structured output (its catalog entry has "
                    "supports_structured_output = false"
                    + (", and Triton models have none)" if model.local else ")"))
        if form.kind == "json_object" and model.provider == "anthropic":
            return ("no json_object mode (Anthropic's API takes a JSON schema only; send "
                    "response_format json_schema)")
    return ""
