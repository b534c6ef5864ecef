"""The generator's decoding loop, apart from Triton so that it can be tested without a server.

Imports only torch at module level; ``model.py`` wires it to Triton's Python backend.

- :func:`parse_messages` / :func:`parse_sampling` check the request and raise
  :class:`BadRequest` with a message a caller can act on.
- :func:`render_prompt` applies the tokenizer's chat template, or :func:`plain_prompt`.
- :func:`generate` runs one request token by token (a KV cache, its own seeded RNG so that
  concurrent requests do not disturb each other's sampling) and yields text deltas, then one
  :class:`Final` with exact token counts.
- :class:`StopScanner` holds back text that could be the start of a stop sequence, so a stop
  that spans token boundaries is found and never emitted.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BadRequest", "Final", "Sampling", "StopScanner", "generate", "parse_messages",
           "parse_sampling", "plain_prompt", "render_prompt"]

ROLES = ("system", "user", "assistant")
MAX_STOP_SEQUENCES = 16
DEFAULT_MAX_TOKENS = 256


class BadRequest(ValueError):
    """The request cannot be served as sent; the message says what to change."""


@dataclass(frozen=True)
class Sampling:
    """What ``sampling_parameters`` asked for. ``temperature`` 0 is greedy decoding."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Final:
    """The end of one generation: exact token counts and why it ended."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of sequence or a stop sequence), "length", "cancelled"


def _json(raw: bytes | str, name: str) -> Any:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text)
    except (UnicodeDecodeError, ValueError) as error:
        raise BadRequest(f"{name} is not UTF-8 JSON: {error}") from None


def parse_messages(raw: bytes | str) -> list[dict[str, str]]:
    """``messages``: a JSON list of ``{"role": ..., "content": ...}``, roles system, user or
    assistant, at least one message with text."""
    value = _json(raw, "messages")
    if not isinstance(value, list) or not value:
        raise BadRequest('messages must be a non-empty JSON list of {"role", "content"} objects')
    messages: list[dict[str, str]] = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("role"), str) \
                or not isinstance(item.get("content"), str):
            raise BadRequest(f'messages[{index}] must be an object with string "role" and '
                             '"content"')
        if item["role"] not in ROLES:
            raise BadRequest(f"messages[{index}].role is {item['role'][:20]!r}; use one of "
                             f"{', '.join(ROLES)}")
        messages.append({"role": item["role"], "content": item["content"]})
    if not any(m["content"].strip() for m in messages):
        raise BadRequest("messages have no text: send at least one message with text")
    return messages


def _number(values: dict[str, Any], key: str, default: float) -> float:
    value = values.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"sampling_parameters.{key} must be a number, got {value!r}")
    return float(value)


def parse_sampling(raw: bytes | str | None, default_max_tokens: int = DEFAULT_MAX_TOKENS
                   ) -> Sampling:
    """``sampling_parameters``: a JSON object with optional ``max_tokens`` (>= 1),
    ``temperature`` (>= 0; 0 is greedy), ``top_p`` (0 < p <= 1; 0 or absent means 1),
    ``stop`` (a string or a list of up to 16 non-empty strings) and ``seed`` (an integer)."""
    values = {} if raw is None or raw in (b"", "") else _json(raw, "sampling_parameters")
    if not isinstance(values, dict):
        raise BadRequest("sampling_parameters must be a JSON object")
    known = {"max_tokens", "temperature", "top_p", "stop", "seed"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise BadRequest(f"sampling_parameters has unknown keys {unknown}; known: "
                         f"{', '.join(sorted(known))}")
    max_tokens = values.get("max_tokens", default_max_tokens)
    if max_tokens is None:
        max_tokens = default_max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest(f"sampling_parameters.max_tokens must be an integer of 1 or more, "
                         f"got {max_tokens!r}")
    temperature = _number(values, "temperature", 1.0)
    if temperature < 0:
        raise BadRequest(f"sampling_parameters.temperature must be 0 or more, got {temperature}")
    top_p = _number(values, "top_p", 1.0) or 1.0
    if not 0 < top_p <= 1:
        raise BadRequest(f"sampling_parameters.top_p must be in (0, 1], got {top_p}")
    stop = values.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("sampling_parameters.stop must be a string or a list of non-empty "
                         "strings")
    if len(stop) > MAX_STOP_SEQUENCES:
        raise BadRequest(f"sampling_parameters.stop has {len(stop)} sequences; at most "
                         f"{MAX_STOP_SEQUENCES}")
    seed = values.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest(f"sampling_parameters.seed must be an integer, got {seed!r}")
    return Sampling(max_tokens, temperature, top_p, tuple(stop), seed)


def plain_prompt(messages: Sequence[dict[str, str]]) -> str:
    """The prompt for a tokenizer without a chat template: one ``role: content`` line per
    message, then ``assistant:`` for the model to continue."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of the prompt: the tokenizer's chat template when it has one (its special
    tokens are part of the template, so none are added), else :func:`plain_prompt` with the
    tokenizer's usual special tokens."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(list(messages), tokenize=False,
                                             add_generation_prompt=True)
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(plain_prompt(messages)))


@dataclass
class StopScanner:
    """Finds stop sequences in a growing completion and says what text is safe to send.

    :meth:`push` takes the whole completion decoded so far and returns the new text that can
    be sent and whether a stop sequence was found (the text before it is returned, the stop
    itself never). Text that could be the start of a stop sequence is held back until the
    next token settles it; :meth:`flush` releases it when generation ends otherwise.
    """

    stops: Sequence[str] = ()
    sent: int = 0
    """Characters of the completion already returned."""
    text: str = field(default="", repr=False)

    def push(self, text: str) -> tuple[str, bool]:
        # The decoder shows an incomplete UTF-8 sequence as U+FFFD; wait for the rest.
        self.text = text.rstrip("\ufffd") if text.endswith("\ufffd") else text
        found = [i for i in (self.text.find(s, self.sent) for s in self.stops) if i >= 0]
        if found:
            end = min(found)
            delta, self.sent = self.text[self.sent:end], end
            return delta, True
        end = len(self.text) - self._held_back()
        delta = self.text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return delta, False

    def flush(self, text: str) -> str:
        """Everything not yet sent of the final ``text``."""
        delta = text[self.sent:] if len(text) > self.sent else ""
        self.sent = len(text)
        return delta

    def _held_back(self) -> int:
        """Length of the longest end of the text that is the start of a stop sequence."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.text) - self.sent), longest, -1):
                if self.text.endswith(stop[:size]):
                    longest = size
                    break
        return longest


def choose_token(logits: Any, sampling: Sampling, generator: Any) -> int:
    """The next token: the most likely one at temperature 0, else a sample from the
    temperature-scaled distribution cut to the smallest set of tokens whose probability
    reaches ``top_p``."""
    import torch

    if sampling.temperature == 0:
        return int(torch.argmax(logits).item())
    probabilities = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        ordered, indices = torch.sort(probabilities, descending=True)
        before = torch.cumsum(ordered, dim=-1) - ordered  # mass of the more likely tokens
        ordered = ordered.masked_fill(before >= sampling.top_p, 0.0)
        choice = torch.multinomial(ordered / ordered.sum(), 1, generator=generator)
        return int(indices[choice].item())
    return int(torch.multinomial(probabilities, 1, generator=generator).item())


def generate(model: Any, tokenizer: Any, prompt: Sequence[int], sampling: Sampling, *,
             cancelled: Callable[[], bool] = lambda: False,
             context_window: int | None = None) -> Iterator[str | Final]:
    """Text deltas of one completion, then its :class:`Final`.

    ``completion_tokens`` counts every token the model generated: those of a stop sequence
    and the end-of-sequence token included (they were computed), none beyond. ``cancelled``
    is asked before each token; when it says yes the loop ends with finish reason
    ``cancelled``. A prompt that leaves no room in ``context_window`` is a :class:`BadRequest`;
    otherwise ``max_tokens`` is cut to the room left.
    """
    import torch

    if context_window is not None and len(prompt) >= context_window:
        raise BadRequest(f"the prompt is {len(prompt)} tokens; the model's context window is "
                         f"{context_window}: shorten the conversation")
    limit = sampling.max_tokens
    if context_window is not None:
        limit = min(limit, context_window - len(prompt))
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    if sampling.seed is not None:
        generator.manual_seed(sampling.seed)
    else:
        generator.seed()
    end_ids = _end_ids(model, tokenizer)
    scanner = StopScanner(sampling.stop)
    generated: list[int] = []
    finish = "length"
    stopped = False  # by a stop sequence
    # transformers 5 names the KV cache argument ``cache``; earlier versions ``past_key_values``
    cache_name = ("cache" if "cache" in inspect.signature(model.forward).parameters
                  else "past_key_values")
    with torch.inference_mode():
        step_input = torch.tensor([list(prompt)], dtype=torch.long, device=device)
        cache: Any = None
        while len(generated) < limit:
            if cancelled():
                finish = "cancelled"
                break
            output = model(input_ids=step_input, use_cache=True, **{cache_name: cache})
            cache = output[cache_name]
            token = choose_token(output.logits[0, -1, :], sampling, generator)
            generated.append(token)
            if token in end_ids:
                finish = "stop"
                break
            delta, stopped = scanner.push(tokenizer.decode(generated, skip_special_tokens=True))
            if delta:
                yield delta
            if stopped:
                finish = "stop"
                break
            step_input = torch.tensor([[token]], dtype=torch.long, device=device)
    if not stopped and finish != "cancelled":  # release what was held back for a stop
        rest = scanner.flush(tokenizer.decode(generated, skip_special_tokens=True))
        if rest:
            yield rest
    yield Final(len(prompt), len(generated), finish)


def _end_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end a completion: the generation config's, else the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is None:
        configured = tokenizer.eos_token_id
    if configured is None:
        return set()
    return set(configured) if isinstance(configured, list | tuple) else {int(configured)}
