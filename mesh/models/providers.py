"""Cloud model APIs behind one interface: a stream of text deltas, then the usage.

:class:`OpenAIProvider` (OpenAI and any OpenAI-compatible URL) and
:class:`AnthropicProvider` drive the official SDKs with streaming on, and turn every
failure into a :class:`ProviderError` whose ``kind`` tells the router what to do:
``rate_limited`` and ``server`` and ``timeout`` and ``connection`` are worth a retry or
another model; ``auth`` and ``bad_request`` are not; ``malformed`` means the provider
answered something the SDK could not read. SDK retries are off: the router retries, with
its own backoff, budget and cooldown. Keys come from the environment or a file and are
never logged.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anthropic
import openai
from anthropic import types

__all__ = ["AnthropicProvider", "Chunk", "OpenAIProvider", "Provider", "ProviderError",
           "ProviderUsage", "Turn", "read_key"]

RETRYABLE = frozenset({"rate_limited", "server", "timeout", "connection", "malformed"})


@dataclass(frozen=True)
class Turn:
    role: str
    content: str


@dataclass(frozen=True)
class ProviderUsage:
    """Tokens as the provider itself reported them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True)
class Chunk:
    """One event of a stream: a text delta, or (last) the usage and finish reason."""

    text: str = ""
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
               timeout_s: float, seed: int | None = None) -> AsyncIterator[Chunk]:
        """Text deltas, then one chunk with the provider's usage and finish reason.
        ``seed`` makes sampling repeatable where the provider supports it."""
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
                     timeout_s: float, seed: int | None = None) -> AsyncIterator[Chunk]:
        options: dict[str, Any] = {"temperature": temperature}
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
                model=model, messages=[{"role": t.role, "content": t.content} for t in turns],
                stream=True, stream_options={"include_usage": True}, timeout=timeout_s,
                **options)
            async with response as events:
                async for event in events:
                    for choice in event.choices or ():
                        if choice.delta and choice.delta.content:
                            yield Chunk(text=choice.delta.content)
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
                     timeout_s: float, seed: int | None = None) -> AsyncIterator[Chunk]:
        # Anthropic's API has no seed: sampling with temperature > 0 is not repeatable
        system = "\n\n".join(t.content for t in turns if t.role == "system")
        messages = [{"role": t.role, "content": t.content} for t in turns
                    if t.role != "system"]
        sampling: dict[str, Any] = {"temperature": temperature}  # wire fields; the SDK
        if top_p:                                                  # takes them in extra_body
            sampling["top_p"] = top_p
        options: dict[str, Any] = {"extra_body": sampling}
        if system:
            options["system"] = system
        if stop:
            options["stop_sequences"] = list(stop)
        prompt = cached = completion = 0
        finish = ""
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
                elif isinstance(event, types.RawContentBlockDeltaEvent):
                    if isinstance(event.delta, types.TextDelta) and event.delta.text:
                        yield Chunk(text=event.delta.text)
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
    return {"end_turn": "stop", "max_tokens": "length", "stop_sequence": "stop"}.get(
        reason, reason or "stop")
