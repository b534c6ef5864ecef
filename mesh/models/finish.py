"""Why an answer ended: the contract's ``revo.models.v1.FinishReason``, and the OpenAI word
for each, which providers speak and the OpenAI-compatible HTTP layer must answer with."""

from __future__ import annotations

from mesh.v1 import models_pb2 as pb

__all__ = ["finish_reason", "openai_finish_reason"]

_BY_WORD: dict[str, pb.FinishReason.ValueType] = {
    "stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH,
    "tool_calls": pb.FINISH_REASON_TOOL_CALLS, "content_filter": pb.FINISH_REASON_CONTENT_FILTER}
_WORDS: dict[int, str] = {value: word for word, value in _BY_WORD.items()}


def finish_reason(word: str) -> pb.FinishReason.ValueType:
    """The enum value of a provider's (OpenAI-worded) finish reason; a word the contract has
    no value for, or none, is a normal end (STOP)."""
    return _BY_WORD.get(word, pb.FINISH_REASON_STOP)


def openai_finish_reason(value: int) -> str:
    """OpenAI's word for a FinishReason: ``stop``, ``length``, ``tool_calls`` or
    ``content_filter`` (``stop`` for UNSPECIFIED)."""
    return _WORDS.get(value, "stop")
