"""Chat completion chunks as OpenAI streams them: server-sent events of ``data: {json}``.

Every chunk of one answer has the same ``id``, ``created`` and ``model``; the first one's
delta has ``role: assistant``; text and tool-call deltas follow; then a chunk with the
``finish_reason`` and an empty delta, one chunk with ``choices: []`` and ``usage`` only
when ``stream_options.include_usage`` asked for it, and ``data: [DONE]``. An error after
the first chunk is one ``data: {"error": {...}}`` event, and the stream ends there (no
``[DONE]``: the openai SDK raises ``APIError`` on such an event).

The text chunk is the hot path (one per Generate message): its bytes are a prebuilt prefix,
the JSON of the text alone, and a prebuilt suffix.
"""

from __future__ import annotations

import json
from typing import Any

from mesh.v1 import models_pb2 as pb

__all__ = ["DONE", "Chunks", "error_event", "usage"]

DONE = b"data: [DONE]\n\n"
_OPEN_CHOICE = b',"choices":[{"index":0,"delta":'
_RUNNING = b',"finish_reason":null,"logprobs":null}]}\n\n'


def usage(done: pb.Done) -> dict[str, Any]:
    """OpenAI's usage object from the Generate stream's account."""
    counted = done.usage
    return {"prompt_tokens": counted.prompt_tokens,
            "completion_tokens": counted.completion_tokens,
            "total_tokens": counted.prompt_tokens + counted.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": counted.cached_tokens}}


def error_event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class Chunks:
    """The SSE bytes of one streamed answer."""

    __slots__ = ("_envelope", "_head", "_text_head")

    def __init__(self, ident: str, created: int, model: str) -> None:
        self._envelope = {"id": ident, "object": "chat.completion.chunk", "created": created,
                          "model": model}
        self._head = b"data: " + json.dumps(self._envelope).encode()[:-1] + _OPEN_CHOICE
        self._text_head = self._head + b'{"content":'

    def role(self) -> bytes:
        return self._head + b'{"role":"assistant","content":""}' + _RUNNING

    def text(self, text: str) -> bytes:
        return self._text_head + json.dumps(text).encode() + b"}" + _RUNNING

    def tool_call(self, piece: pb.ToolCallDelta) -> bytes:
        call: dict[str, Any] = {"index": piece.index}
        if piece.id or piece.name:  # the call's first piece
            call.update(id=piece.id, type="function",
                        function={"name": piece.name, "arguments": piece.arguments_delta})
        else:
            call["function"] = {"arguments": piece.arguments_delta}
        return self._head + json.dumps({"tool_calls": [call]}).encode() + _RUNNING

    def finish(self, reason: str, extras: dict[str, Any]) -> bytes:
        chunk = {**self._envelope,
                 "choices": [{"index": 0, "delta": {}, "finish_reason": reason,
                              "logprobs": None}],
                 "revo": extras}
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    def usage(self, done: pb.Done) -> bytes:
        chunk = {**self._envelope, "choices": [], "usage": usage(done)}
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"
