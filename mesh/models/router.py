"""The model router: which model answers, what it may cost, and what happens when it fails.

For each request the router orders the catalog (a named model, ``force_local``, or
``auto`` by priority), drops models that lack what the request needs (tool calling,
structured output: :func:`mesh.models.tools.lacks`; a named model that lacks it is refused
``FAILED_PRECONDITION`` rather than replaced), models whose context window cannot hold the
prompt and those
whose estimated cost exceeds ``cost_limit_usd`` (none left: ``FAILED_PRECONDITION``
saying why), skips models cooling down after repeated failures, and then, model by model:

1. reserves the estimated cost in the user's budget (paid models only; over budget:
   ``RESOURCE_EXHAUSTED``, while free local models stay allowed);
2. streams the answer; retryable failures (429, 5xx, timeouts, cut connections) are
   retried with exponential backoff and jitter, honouring ``retry-after``;
3. when a model fails *after it has streamed text*, the next model continues from that
   text, given as an assistant prefix: the caller sees one stream, and the final
   :class:`Outcome` records the switch. A request with tools or a JSON format is not
   continued (half a tool call or half a JSON value cannot be): it fails ``UNAVAILABLE``;
   before anything streamed it falls back like any other;
4. settles the reservation to the provider's own usage report and appends the call to
   the ledger (:mod:`mesh.models.ledger`) before the stream ends.

Closing the stream (the caller went away) closes the provider's HTTP stream and settles
what was spent so far.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from opentelemetry.trace import Span

from mesh.config import CatalogModel, ModelSettings
from mesh.errors import (
    FailedPrecondition,
    InvalidArgument,
    Reason,
    ResourceExhausted,
    Unavailable,
)
from mesh.models.budget import Budgets, Reservation
from mesh.models.health import ModelHealth
from mesh.models.ledger import Entry, Ledger
from mesh.models.metrics import CHAT, ModelMeters
from mesh.models.providers import (
    NO_TOOLING,
    Chunk,
    Provider,
    ProviderError,
    ProviderUsage,
    Turn,
)
from mesh.models.tools import ToolCallDelta, Tooling, check_turns, lacks
from mesh.observability import tracing

__all__ = ["Outcome", "Request", "Router", "Switch", "estimate_tokens"]

log = logging.getLogger(__name__)

_ROLES = frozenset({"system", "user", "assistant", "tool"})


def estimate_tokens(text: str) -> int:
    """A cautious token estimate (about four characters per token, rounded up)."""
    return max(1, math.ceil(len(text) / 3.5))


@dataclass(frozen=True)
class Request:
    turns: Sequence[Turn]
    max_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 0.0
    stop: Sequence[str] = ()
    force_local: bool = False
    model: str = ""
    cost_limit_usd: float = 0.0
    no_fallback: bool = False
    seed: int | None = None
    tooling: Tooling = NO_TOOLING


def prompt_tokens(turns: Sequence[Turn], tooling: Tooling = NO_TOOLING) -> int:
    """The estimated prompt: each turn's text and tool calls, and the tools' schemas (each
    estimated on its own, as the budget's holds have always been)."""
    tokens = sum(estimate_tokens(t.content + "".join(c.name + c.arguments
                                                     for c in t.tool_calls))
                 for t in turns)
    hint = tooling.size_hint()
    return tokens + (estimate_tokens(hint) if hint else 0)


@dataclass(frozen=True)
class Switch:
    from_model: str
    to_model: str
    reason: str
    tokens_before: int


@dataclass
class Outcome:
    """What the final message of a stream reports."""

    model: str = ""
    provider: str = ""
    usage: ProviderUsage = field(default_factory=ProviderUsage)
    cost_usd: float = 0.0
    savings_usd: float = 0.0
    latency_ms: float = 0.0
    finish_reason: str = ""
    switches: list[Switch] = field(default_factory=list)


def cost_usd(model: CatalogModel, usage: ProviderUsage) -> float:
    cached_price = (model.cached_usd_per_million if model.cached_usd_per_million is not None
                    else model.input_usd_per_million)
    fresh = max(0, usage.prompt_tokens - usage.cached_tokens)
    return (fresh * model.input_usd_per_million + usage.cached_tokens * cached_price
            + usage.completion_tokens * model.output_usd_per_million) / 1e6


class Router:
    """Routes generation requests over a catalog of providers."""

    def __init__(self, settings: ModelSettings, providers: Mapping[str, Provider],
                 budgets: Budgets, ledger: Ledger | None = None,
                 meters: ModelMeters | None = None) -> None:
        """``providers`` maps each catalog model's name to the provider serving it."""
        self.meters = meters or ModelMeters.off()
        self.settings = settings
        self.catalog = {m.name: m for m in settings.catalog}
        self.providers = providers
        self.budgets = budgets
        self.ledger = ledger
        self._health = {name: ModelHealth(settings.cooldown_after, settings.cooldown_s)
                        for name in self.catalog}
        self._reference = self._reference_model()

    def _reference_model(self) -> CatalogModel | None:
        if self.settings.reference_model:
            return self.catalog.get(self.settings.reference_model)
        cloud = [m for m in self.catalog.values() if m.paid]
        return max(cloud, key=lambda m: m.output_usd_per_million, default=None)

    # -- choosing ---------------------------------------------------------------------

    def validate(self, request: Request) -> None:
        if not request.turns or not any(t.content.strip() or t.tool_calls
                                        for t in request.turns):
            raise InvalidArgument("the prompt is empty: send at least one message with text")
        for turn in request.turns:
            if turn.role not in _ROLES:
                raise InvalidArgument(f"message role {turn.role[:20]!r} is not one of "
                                      "system, user, assistant, tool")
        check_turns(request.turns)
        request.tooling.check()
        if request.max_tokens < 0:
            raise InvalidArgument(f"max_tokens must be 0 (model default) or more, got "
                                  f"{request.max_tokens}")
        if request.model and request.model != "auto" and request.model not in self.catalog:
            raise InvalidArgument(f"unknown model {request.model[:80]!r}; models: "
                                  f"{', '.join(self.catalog) or 'none configured'}",
                                  reason=Reason.UNKNOWN_MODEL,
                                  metadata={"model": request.model[:80]})

    def candidates(self, request: Request) -> list[CatalogModel]:
        """The models to try, in order; FAILED_PRECONDITION when none can serve."""
        self.validate(request)
        prompt = prompt_tokens(request.turns, request.tooling)
        models = sorted(self.catalog.values(), key=lambda m: (m.priority, m.name))
        reasons: list[str] = []
        if request.model and request.model != "auto":
            chosen = self.catalog[request.model]
            if lack := lacks(chosen, request.tooling, request.turns):
                raise FailedPrecondition(
                    f"model {chosen.name!r} cannot take this request: it has {lack}. Choose "
                    "a model that can (ListModels: supports_tools, "
                    "supports_structured_output) or leave policy.model unset")
            models = [chosen] + ([] if request.no_fallback else
                                 [m for m in models if m is not chosen])
        capable = []
        for model in models:
            if lack := lacks(model, request.tooling, request.turns):
                reasons.append(f"{model.name}: {lack}")
            else:
                capable.append(model)
        lacking = bool(reasons)
        models = capable
        if request.no_fallback and not (request.model and request.model != "auto"):
            models = models[:1]
        fitting = []
        for model in models:
            completion = request.max_tokens or model.max_output_tokens
            if request.force_local and not model.local:
                reasons.append(f"{model.name}: not local")
            elif prompt + completion > model.context_window:
                reasons.append(f"{model.name}: about {prompt} prompt + {completion} completion "
                               f"tokens exceed its context window of {model.context_window}")
            elif request.cost_limit_usd and (
                    estimate := self._estimate(model, prompt, completion)) > \
                    request.cost_limit_usd:
                reasons.append(f"{model.name}: about ${estimate:.4f} is over the cost limit "
                               f"of ${request.cost_limit_usd:.4f}")
            else:
                fitting.append(model)
        if not fitting:
            eligible = [m for m in models if m.local or not request.force_local]
            largest = max((m.context_window for m in eligible), default=0)
            if eligible and prompt >= largest:
                raise InvalidArgument(
                    f"the prompt is about {prompt} tokens, more than the largest context "
                    f"window of the models that could take it ({largest} tokens); "
                    "shorten it")
            if lacking and (request.tooling.tools or request.tooling.json):
                reasons.insert(0, "it needs " + " and ".join(
                    need for need, wanted in (("tool calling", bool(request.tooling.tools)),
                                              ("structured output", request.tooling.json))
                    if wanted))
            raise FailedPrecondition("no model can take this request: " + "; ".join(reasons))
        return fitting

    @staticmethod
    def _estimate(model: CatalogModel, prompt: int, completion: int) -> float:
        return cost_usd(model, ProviderUsage(prompt, completion))

    def _cooling(self, model: CatalogModel, now: float) -> bool:
        return not self._health[model.name].healthy(now)

    def _failed(self, model: CatalogModel) -> None:
        health = self._health[model.name]
        if health.failed():
            log.warning("model %s cools down for %.0f s after %d failures", model.name,
                        self.settings.cooldown_s, health.failures)

    def _succeeded(self, model: CatalogModel) -> None:
        self._health[model.name].succeeded()

    def record(self, name: str, ok: bool) -> None:
        """Record a call to model ``name`` made outside :meth:`generate` (a health probe)."""
        if ok:
            self._succeeded(self.catalog[name])
        else:
            self._failed(self.catalog[name])

    def failing(self, name: str) -> bool:
        """Whether ``name``'s recent calls failed enough to cool it (worth a probe)."""
        return self._health[name].failing

    def set_ready(self, name: str, ready: bool) -> None:
        """Record a local model's readiness (from its server's health check)."""
        health = self._health[name]
        if health.ready != ready:
            log.log(logging.INFO if ready else logging.WARNING, "model %s is %s", name,
                    "ready" if ready else "not ready; it is skipped until it is")
        health.ready = ready

    def healthy(self, name: str) -> bool:
        return not self._cooling(self.catalog[name], time.monotonic())

    # -- generating -------------------------------------------------------------------

    async def generate(self, user: str, request: Request,
                       outcome: Outcome) -> AsyncIterator[str | ToolCallDelta]:
        """Text deltas and tool-call pieces; ``outcome`` is filled in when the stream ends."""
        started = time.perf_counter()
        sent = ""
        called = False  # a piece of a tool call was streamed
        continuable = not request.tooling  # text alone can be continued by another model
        last_error = "no model tried"
        models = self.candidates(request)
        now = time.monotonic()
        ready = [m for m in models if not self._cooling(m, now)] or models[:1]
        previous: CatalogModel | None = None
        for model in ready:
            if previous is not None:
                outcome.switches.append(Switch(previous.name, model.name, last_error,
                                               estimate_tokens(sent) if sent else 0))
                self.meters.switched(previous.name, model.name, midstream=bool(sent))
            previous = model
            meter = self.meters.call(CHAT, model.provider, model.name)
            for attempt in range(self.settings.retries + 1):
                turns = list(request.turns) + ([Turn("assistant", sent)] if sent else [])
                prompt = prompt_tokens(turns, request.tooling)
                completion = request.max_tokens or model.max_output_tokens
                reservation: Reservation | None = None
                if model.paid:
                    try:
                        reservation = await self.budgets.reserve(
                            user, self._estimate(model, prompt, completion))
                    except ResourceExhausted:
                        self.meters.budget_refused(model.name)
                        raise
                streamed = ""
                usage: ProviderUsage | None = None
                finish = ""
                began = time.perf_counter()
                try:
                    async for chunk in self._stream(model, turns, request, completion):
                        if chunk.tool_call is not None:
                            if not streamed and not called:
                                meter.first_token(began)
                            called = True
                            yield chunk.tool_call
                        if chunk.text:
                            if not streamed:
                                meter.first_token(began)
                            streamed += chunk.text
                            sent += chunk.text
                            yield chunk.text
                        if chunk.usage is not None:
                            usage, finish = chunk.usage, chunk.finish_reason
                except ProviderError as error:
                    meter.failed(began, error.kind)
                    last_error = f"{model.name}: {error}"
                    self._failed(model)
                    spent = ProviderUsage(prompt, estimate_tokens(streamed) if streamed else 0)
                    if reservation is not None:
                        await self.budgets.settle(reservation, cost_usd(model, spent))
                    if (sent or called) and not continuable:
                        raise Unavailable(
                            f"{model.name} failed after it had streamed part of an answer "
                            "with tools or a JSON format, which another model cannot "
                            f"continue; send the request again ({error})") from error
                    if streamed or not error.retryable or attempt == self.settings.retries:
                        break  # to the next model, from what was already sent
                    await asyncio.sleep(self._backoff(attempt, error.retry_after_s))
                    continue
                except BaseException:  # the caller went away: settle what it cost so far
                    meter.failed(began, "cancelled")
                    if reservation is not None:
                        spent = ProviderUsage(prompt, estimate_tokens(streamed) if streamed
                                              else 0)
                        await asyncio.shield(self.budgets.settle(reservation,
                                                                 cost_usd(model, spent)))
                    raise
                assert usage is not None
                meter.succeeded(began, usage)
                self._succeeded(model)
                paid = cost_usd(model, usage)
                if reservation is not None:
                    await self.budgets.settle(reservation, paid)
                reference = cost_usd(self._reference, usage) if self._reference else paid
                outcome.model, outcome.provider = model.name, model.provider
                outcome.usage, outcome.finish_reason = usage, finish
                outcome.cost_usd, outcome.savings_usd = paid, max(0.0, reference - paid)
                self.meters.paid(model.provider, model.name, paid, outcome.savings_usd)
                outcome.latency_ms = (time.perf_counter() - started) * 1000
                if self.ledger is not None:  # stored before the caller hears it is done
                    await self.ledger.record(Entry(
                        time=time.time(), user=user, model=model.name,
                        provider=model.provider, local=model.local,
                        prompt_tokens=usage.prompt_tokens,
                        completion_tokens=usage.completion_tokens,
                        cached_tokens=usage.cached_tokens, cost_usd=paid,
                        savings_usd=outcome.savings_usd, latency_ms=outcome.latency_ms,
                        switches=len(outcome.switches)))
                return
            if request.no_fallback:
                break
        raise Unavailable(f"no model could answer; last failure: {last_error}")

    async def _stream(self, model: CatalogModel, turns: Sequence[Turn], request: Request,
                      completion: int) -> AsyncIterator[Chunk]:
        provider = self.providers.get(model.name)
        if provider is None:
            raise ProviderError("connection", f"no provider configured for {model.name}")
        stream = provider.stream(model.upstream or model.name, turns, max_tokens=completion,
                                 temperature=request.temperature, top_p=request.top_p,
                                 stop=request.stop, timeout_s=self.settings.timeout_s,
                                 seed=request.seed, tooling=request.tooling)
        span = (_chat_span(model, turns, request, completion)
                if tracing.active() else None)
        text: list[str] | None = [] if span is not None and tracing.capture_content() else None
        error: BaseException | str | None = None
        try:
            async for chunk in stream:
                if span is not None:
                    _observe(span, model, chunk, text)
                yield chunk
        except ProviderError as failed:
            error = failed.kind
            raise
        except BaseException:  # the caller went away
            error = "cancelled"
            raise
        finally:
            await stream.aclose()  # type: ignore[attr-defined]  # closes the HTTP stream
            if span is not None:
                tracing.end_client(span, error)

    def _backoff(self, attempt: int, retry_after_s: float | None) -> float:
        delay: float = min(self.settings.backoff_max_s,
                           self.settings.backoff_s * float(2 ** attempt))
        delay *= 0.5 + random.random()  # jitter: retries from many callers spread out
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.settings.backoff_max_s))
        return delay


def _chat_span(model: CatalogModel, turns: Sequence[Turn], request: Request,
               completion: int) -> Span:
    """The GenAI CLIENT span of one provider call (semconv ``chat {model}``)."""
    span = tracing.genai_span("chat", model.provider, model.upstream or model.name)
    if span.is_recording():
        span.set_attribute("gen_ai.request.max_tokens", completion)
        span.set_attribute("gen_ai.request.temperature", request.temperature)
        if request.top_p:
            span.set_attribute("gen_ai.request.top_p", request.top_p)
        if request.seed is not None:
            span.set_attribute("gen_ai.request.seed", request.seed)
        if tracing.capture_content():
            span.set_attribute(tracing.GEN_AI_INPUT_MESSAGES,
                               tracing.messages_json([(t.role, t.content) for t in turns]))
    return span


def _observe(span: Span, model: CatalogModel, chunk: Chunk, text: list[str] | None) -> None:
    """Add what a stream's chunk tells to its span: the completion's text when content is
    captured, the usage and finish reason at the end."""
    if text is not None and chunk.text:
        text.append(chunk.text)
    if chunk.usage is None or not span.is_recording():
        return
    span.set_attributes({
        tracing.GEN_AI_RESPONSE_MODEL: model.upstream or model.name,
        tracing.GEN_AI_INPUT_TOKENS: chunk.usage.prompt_tokens,
        tracing.GEN_AI_OUTPUT_TOKENS: chunk.usage.completion_tokens,
        tracing.GEN_AI_FINISH_REASONS: (chunk.finish_reason or "stop",)})
    if text is not None:
        span.set_attribute(tracing.GEN_AI_OUTPUT_MESSAGES,
                           tracing.output_json("".join(text), chunk.finish_reason))
