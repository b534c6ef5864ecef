"""Engine ``models``: ``revo.models.v1.ModelService`` on the mesh, through the router.

An :class:`~mesh.engine.AsyncEngine` (its work is waiting on Triton and cloud APIs), so
one router per node serves every call concurrently from the node's event loop: cooldowns
and local readiness are shared by all calls on the node, while budgets and the ledger live
in JetStream and are shared by every node. Configured by ``[models]`` in ``revo.toml``
(:class:`~mesh.config.ModelSettings`), not by ``[engines.models]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from mesh.auth.roles import MANAGE, grants
from mesh.config import CatalogModel, ModelSettings
from mesh.engine import AsyncEngine, Context, EngineSpec, hookimpl
from mesh.errors import (
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Reason,
    RpcError,
    Unavailable,
)
from mesh.models.advice import recommend
from mesh.models.budget import Budgets
from mesh.models.finish import finish_reason
from mesh.models.health import ModelHealth
from mesh.models.ledger import Ledger, summarize
from mesh.models.metrics import EMBEDDINGS, ModelMeters
from mesh.models.providers import NO_TOOLING, Provider, Turn
from mesh.models.router import Outcome, Request, Router
from mesh.models.tools import (
    EMPTY_PARAMETERS,
    ChoiceMode,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Tooling,
    parse_object,
)
from mesh.pagination import decode_page_token, encode_page_token, page_size, take_page
from mesh.v1 import models_pb2 as pb

__all__ = ["ModelEngine", "build_providers", "with_local_generator"]

log = logging.getLogger(__name__)

HEALTH_INTERVAL_S = 5.0
"""How often local models' readiness is asked of Triton (and a failing one probed)."""
EMBEDDER = "embedder"
"""The Triton embedding model's name (``triton_models/embedder``)."""
GENERATOR = "generator"
"""The Triton generation model's name (``triton_models/generator``)."""
_EMBEDDER_CONTEXT = 256  # all-MiniLM-L6-v2's max_seq_length
_DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


def with_local_generator(settings: ModelSettings) -> ModelSettings:
    """``settings``, plus a catalog entry ``local`` for Triton's ``generator`` when a
    checkpoint is configured and no catalog entry is served by Triton already."""
    checkpoint = settings.generator_checkpoint
    if checkpoint is None or any(m.local for m in settings.catalog):
        return settings
    window = 2048
    with contextlib.suppress(OSError, ValueError, TypeError):  # another machine's path
        config = json.loads((checkpoint / "config.json").read_text())
        window = int(config.get("max_position_embeddings") or window)
    local = CatalogModel(name="local", provider="triton", upstream=GENERATOR,
                         context_window=window, max_output_tokens=min(1024, window // 2),
                         priority=min((m.priority for m in settings.catalog), default=0) - 1)
    return settings.model_copy(update={"catalog": [local, *settings.catalog]})


def build_providers(settings: ModelSettings) -> dict[str, Provider]:
    """One provider per catalog model, by its name; raises ConfigError naming the fix."""
    from mesh.models.providers import AnthropicProvider, OpenAIProvider, read_key

    providers: dict[str, Provider] = {}
    for model in settings.catalog:
        if model.local and (model.supports_tools or model.supports_structured_output):
            raise ConfigError(f"models.catalog '{model.name}': Triton models have no tool "
                              "calling and no structured output; remove supports_tools and "
                              "supports_structured_output")
        env = model.api_key_env or _DEFAULT_KEY_ENV.get(model.provider, "")
        key = read_key(env, model.api_key_file) if env or model.api_key_file else ""
        if model.provider == "triton":
            provider = _triton_provider(settings, model)
            if provider is not None:
                providers[model.name] = provider
        elif model.provider == "anthropic":
            providers[model.name] = AnthropicProvider("anthropic", key, model.base_url or None)
        elif model.provider == "openai":
            providers[model.name] = OpenAIProvider("openai", key, model.base_url or None)
        else:
            if not model.base_url:
                raise ConfigError(f"models.catalog '{model.name}': an openai_compatible "
                                  "model needs base_url")
            providers[model.name] = OpenAIProvider(model.name, key, model.base_url)
    return providers


def _triton_provider(settings: ModelSettings, model: CatalogModel) -> Provider | None:
    if not settings.triton_url:
        log.warning("models.catalog '%s' is served by Triton, but models.triton_url is not "
                    "set (revo up sets it): the model is skipped", model.name)
        return None
    from mesh.models.local import TritonGenerator

    # the router asks for model.upstream or model.name: readiness is checked on the same
    return TritonGenerator(settings.triton_url, model=model.upstream or model.name)


FIRST_SEND_S = 0.0005
"""How long :func:`coalesced` waits after the first delta before reading on: the loop runs
every callback that is ready meanwhile, the first message's send among them
(docs/performance.md)."""


async def coalesced(deltas: AsyncIterator[Piece]) -> AsyncGenerator[Piece, None]:
    """``deltas``, read by a task of its own, with those that arrived while the previous
    one was on its way joined into one: when the upstream is faster than the caller (a
    burst of tokens already received), the mesh sends one message instead of one per token.
    Text joins text; a tool call's argument pieces join the piece of the same call before
    them; order is kept.
    The first delta goes alone: the reader lets the loop send it before it parses what came
    with it, which would otherwise hold up the time to first token by the whole burst.
    Closing this generator cancels the reader, which closes ``deltas``."""
    queue: asyncio.Queue[Piece | BaseException | None] = asyncio.Queue()

    async def read() -> None:
        try:
            async with contextlib.aclosing(deltas):  # type: ignore[type-var]
                first = True
                async for delta in deltas:
                    queue.put_nowait(delta)
                    if first:
                        first = False
                        await asyncio.sleep(FIRST_SEND_S)
        except Exception as error:
            queue.put_nowait(error)
        else:
            queue.put_nowait(None)

    reader = asyncio.get_running_loop().create_task(read())
    try:
        while True:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            for piece in _joined(items):
                yield piece
            end = items[-1]  # the end or an error is always the last item queued
            if end is None:
                return
            if isinstance(end, BaseException):
                raise end
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


Piece = str | ToolCallDelta
"""What a Generate stream carries before its end: text, or a piece of a tool call."""


def _joined(items: list[Piece | BaseException | None]) -> list[Piece]:
    """The pieces of ``items`` in order, neighbours joined where one message can carry
    both: text with text, a call's argument pieces onto the piece of that call before."""
    if all(isinstance(item, str) or item is None or isinstance(item, BaseException)
           for item in items):  # text only: the common case, kept cheap
        text = "".join(item for item in items if isinstance(item, str))
        return [text] if text else []
    out: list[Piece] = []
    for item in items:
        last = out[-1] if out else None
        if isinstance(item, str):
            if isinstance(last, str):
                out[-1] = last + item
            elif item:
                out.append(item)
        elif isinstance(item, ToolCallDelta):
            if isinstance(last, ToolCallDelta) and last.index == item.index \
                    and not item.id and not item.name:
                out[-1] = ToolCallDelta(last.index, last.id, last.name,
                                        last.arguments + item.arguments)
            else:
                out.append(item)
    return out


def _tooling(message: pb.GenerateRequest) -> Tooling:
    """The request's tools, choice and format, their JSON parsed (INVALID_ARGUMENT naming
    the field that is not a JSON object)."""
    tools = tuple(Tool(t.name, t.description,
                       parse_object(t.parameters_json, f"tools[{i}].parameters_json",
                                    empty=EMPTY_PARAMETERS), t.strict)
                  for i, t in enumerate(message.tools))
    choice = None
    if message.HasField("tool_choice"):
        which = message.tool_choice.WhichOneof("choice")
        if which == "function_name":
            choice = ToolChoice("function", message.tool_choice.function_name)
        elif which == "mode" and message.tool_choice.mode != pb.ToolChoice.MODE_UNSPECIFIED:
            choice = ToolChoice(_MODES[message.tool_choice.mode])
    form = None
    if message.HasField("response_format"):
        kind = message.response_format.WhichOneof("format")
        if kind == "json_schema":
            spec = message.response_format.json_schema
            if not spec.schema_json.strip():
                raise InvalidArgument("response_format.json_schema.schema_json is empty; "
                                      "send the JSON Schema the answer must match")
            form = ResponseFormat("json_schema", spec.name or "response", spec.description,
                                  parse_object(spec.schema_json,
                                               "response_format.json_schema.schema_json"),
                                  spec.strict)
        elif kind == "json_object":
            form = ResponseFormat("json_object")
    if not tools and not (form and form.json) and choice is None \
            and not message.HasField("parallel_tool_calls"):
        return NO_TOOLING
    return Tooling(tools, choice, form, message.parallel_tool_calls
                   if message.HasField("parallel_tool_calls") else None)


_MODES: dict[int, ChoiceMode] = {pb.ToolChoice.MODE_AUTO: "auto", pb.ToolChoice.MODE_NONE: "none",
          pb.ToolChoice.MODE_REQUIRED: "required"}


def _turn(message: pb.Message, i: int) -> Turn:
    calls = tuple(ToolCall(c.id, c.name, c.arguments_json or "{}") for c in message.tool_calls)
    for j, call in enumerate(calls):
        parse_object(call.arguments, f"messages[{i}].tool_calls[{j}].arguments_json")
    return Turn(message.role, message.content, calls, message.tool_call_id)


def _request(message: pb.GenerateRequest) -> Request:
    sampling, policy = message.sampling, message.policy
    if not 0.0 <= sampling.temperature <= 2.0:
        raise InvalidArgument(f"sampling.temperature must be between 0 and 2, got "
                              f"{sampling.temperature:g}")
    if not 0.0 <= sampling.top_p <= 1.0:
        raise InvalidArgument(f"sampling.top_p must be between 0 and 1, got "
                              f"{sampling.top_p:g}")
    if policy.cost_limit_usd < 0:
        raise InvalidArgument(f"policy.cost_limit_usd must be 0 (no limit) or more, got "
                              f"{policy.cost_limit_usd:g}")
    return Request(
        turns=[_turn(m, i) for i, m in enumerate(message.messages)],
        max_tokens=sampling.max_tokens, temperature=sampling.temperature,
        top_p=sampling.top_p, stop=tuple(sampling.stop), force_local=policy.force_local,
        model=policy.model, cost_limit_usd=policy.cost_limit_usd,
        no_fallback=policy.no_fallback,
        seed=sampling.seed if sampling.HasField("seed") else None,
        tooling=_tooling(message))


_PERIODS = {pb.PERIOD_UNSPECIFIED: "month", pb.PERIOD_DAY: "day", pb.PERIOD_MONTH: "month"}
"""GetUsageRequest.period: the ledger's name of each."""


def _done(outcome: Outcome) -> pb.Done:
    usage = outcome.usage
    return pb.Done(
        model=outcome.model, provider=outcome.provider,
        usage=pb.Usage(prompt_tokens=usage.prompt_tokens,
                       completion_tokens=usage.completion_tokens,
                       cached_tokens=usage.cached_tokens),
        cost_usd=outcome.cost_usd, savings_usd=outcome.savings_usd,
        latency_ms=outcome.latency_ms, finish_reason=finish_reason(outcome.finish_reason),
        switches=[pb.Switch(from_model=s.from_model, to_model=s.to_model, reason=s.reason,
                            tokens_before=s.tokens_before) for s in outcome.switches])


class ModelEngine(AsyncEngine):
    services = (pb.DESCRIPTOR.services_by_name["ModelService"],)

    async def start(self) -> None:
        settings = self.models = with_local_generator(self.runtime.config.models)
        nc = self.runtime.nc
        self.budgets = Budgets(nc, settings)
        self.ledger = Ledger(nc)
        await asyncio.gather(self.budgets.start(), self.ledger.start())
        self.providers = build_providers(settings)
        self.meters = ModelMeters(self.runtime.metrics, settings.catalog, (EMBEDDER,))
        self.meters.watch_budgets(self.budgets.max_used_ratio)
        self.router = Router(settings, self.providers, self.budgets, self.ledger, self.meters)
        self.embedder: Any = None
        self.embedder_health = ModelHealth(settings.cooldown_after, settings.cooldown_s)
        if settings.triton_url:
            from mesh.models.local import TritonEmbedder

            self.embedder = TritonEmbedder(settings.triton_url, EMBEDDER, settings.timeout_s)
        self._local = {m.name for m in settings.catalog if m.local and m.name in self.providers}
        for name in {m.name for m in settings.catalog if m.local} - self._local:
            self.router.set_ready(name, False)
        self._watch = (asyncio.get_running_loop().create_task(self._watch_health())
                       if self._local or self.embedder is not None else None)

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for closable in [self.embedder, *self.providers.values()]:
            close = getattr(closable, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    async def _ready(self, name: str) -> bool:
        ready = getattr(self.providers[name], "ready", None)
        return bool(await ready()) if ready is not None else True

    async def _probe(self, name: str) -> bool:
        model = self.router.catalog[name]
        probe = getattr(self.providers[name], "probe", None)
        return bool(await probe(model.upstream or name)) if probe is not None else True

    async def _watch_health(self) -> None:
        """Each local model's readiness from its server and, for one whose calls have been
        failing, a tiny real call: its success ends the cooldown, its failure extends it
        (mesh.models.health)."""
        while True:
            for name in sorted(self._local):
                ready = await self._ready(name)
                self.router.set_ready(name, ready)
                if ready and self.router.failing(name):
                    self.router.record(name, await self._probe(name))
            if self.embedder is not None:
                health = self.embedder_health
                health.ready = await self.embedder.ready()
                if health.ready and health.failing:
                    self._embedded(await self.embedder.probe())
            await asyncio.sleep(HEALTH_INTERVAL_S)

    def _embedded(self, ok: bool) -> None:
        """Record an embedder call in its health."""
        if ok:
            if self.embedder_health.failing:
                log.info("model %s works again", EMBEDDER)
            self.embedder_health.succeeded()
        elif self.embedder_health.failed():
            log.warning("model %s is unhealthy after %d failed calls in a row; Embed "
                        "refuses for %.0f s or until a probe works", EMBEDDER,
                        self.embedder_health.failures, self.embedder_health.cooldown_s)

    # -- ModelService -----------------------------------------------------------------

    async def generate(self, request: pb.GenerateRequest,
                       ctx: Context) -> AsyncIterator[pb.GenerateResponse]:
        outcome = Outcome()
        deltas = self.router.generate(ctx.caller, _request(request), outcome)
        async for piece in coalesced(deltas):
            if isinstance(piece, str):
                yield pb.GenerateResponse(delta=piece)
            else:
                yield pb.GenerateResponse(tool_call=pb.ToolCallDelta(
                    index=piece.index, id=piece.id, name=piece.name,
                    arguments_delta=piece.arguments))
        yield pb.GenerateResponse(done=_done(outcome))

    async def embed(self, request: pb.EmbedRequest, ctx: Context) -> pb.EmbedResponse:
        if request.model not in ("", EMBEDDER):
            raise InvalidArgument(f"unknown embedding model {request.model[:80]!r}; "
                                  f"models: {EMBEDDER}", reason=Reason.UNKNOWN_MODEL,
                                  metadata={"model": request.model[:80]})
        if self.embedder is None:
            raise FailedPrecondition("no embedding model: set models.triton_url to a Triton "
                                     "serving 'embedder' (revo up does this)")
        health = self.embedder_health
        if health.cooling():
            raise Unavailable(f"the local embedding model {EMBEDDER!r} is unhealthy: its "
                              f"last {health.failures} calls failed (see Triton's log); "
                              f"retry in {max(1, round(health.cool_until - time.monotonic()))} "
                              "s")
        meter = self.meters.call(EMBEDDINGS, "triton", EMBEDDER)
        started = time.perf_counter()
        try:
            vectors = await self.embedder.embed(list(request.texts))
        except RpcError as error:
            meter.failed(started, error.code.name)
            if isinstance(error, Unavailable):  # the model failed, not the request
                self._embedded(False)
            raise
        meter.succeeded(started)
        self._embedded(True)
        return pb.EmbedResponse(embeddings=[pb.Embedding(values=v) for v in vectors],
                                model=EMBEDDER)

    async def list_models(self, request: pb.ListModelsRequest,
                          ctx: Context) -> pb.ListModelsResponse:
        models = []
        for model in sorted(self.router.catalog.values(), key=lambda m: (m.priority, m.name)):
            models.append(pb.Model(
                name=model.name, provider=model.provider,
                tier=pb.TIER_LOCAL if model.local else pb.TIER_CLOUD,
                healthy=self.router.healthy(model.name),
                input_usd_per_million=model.input_usd_per_million,
                output_usd_per_million=model.output_usd_per_million,
                context_window=model.context_window, priority=model.priority,
                generates=True, supports_tools=model.tools_supported,
                supports_structured_output=model.structured_output_supported))
        if self.embedder is not None:
            models.append(pb.Model(name=EMBEDDER, provider="triton", tier=pb.TIER_LOCAL,
                                   healthy=self.embedder_health.healthy()
                                   and await self.embedder.ready(),
                                   context_window=_EMBEDDER_CONTEXT, embeds=True))
        return pb.ListModelsResponse(models=models)

    def _whose(self, asked: str, ctx: Context) -> str:
        """The ledger user a caller may read: themself, or anyone with ``manage``."""
        user = asked or ctx.caller
        if user != ctx.caller and self.runtime.config.auth.enabled \
                and not grants(ctx.role, MANAGE):
            raise PermissionDenied(f"reading the usage of {user!r} needs the manage "
                                   f"permission; role {ctx.role!r} lacks it")
        return user

    async def get_usage(self, request: pb.GetUsageRequest,
                        ctx: Context) -> pb.GetUsageResponse:
        period = _PERIODS.get(request.period)
        if period is None:
            raise InvalidArgument(violations=[("period", "must be PERIOD_DAY or PERIOD_MONTH "
                                                         f"(unspecified: month), got "
                                                         f"{request.period}")])
        user = self._whose(request.user, ctx)
        since = request.since.ToSeconds() if request.HasField("since") else 0.0
        size = page_size(request.page_size)
        query = [user, period, request.since.ToNanoseconds()]
        after = decode_page_token(request.page_token, query, (str, str, str))
        entries = await self.ledger.entries(user, since)
        rows = summarize(entries, period)
        completion = sum(e.completion_tokens for e in entries)
        local = sum(e.completion_tokens for e in entries if e.local)
        page, last = take_page(rows, lambda r: (r.user, r.model, r.period), size, after)
        return pb.GetUsageResponse(
            rows=[pb.UsageRow(user=r.user, model=r.model, period=r.period,
                              requests=r.requests,
                              usage=pb.Usage(prompt_tokens=r.prompt_tokens,
                                             completion_tokens=r.completion_tokens,
                                             cached_tokens=r.cached_tokens),
                              cost_usd=r.cost_usd, savings_usd=r.savings_usd) for r in page],
            total_cost_usd=sum(r.cost_usd for r in rows),
            total_savings_usd=sum(r.savings_usd for r in rows),
            local_share=local / completion if completion else 0.0,
            next_page_token=encode_page_token(last, query) if last else "")

    async def recommend(self, request: pb.RecommendRequest,
                        ctx: Context) -> pb.RecommendResponse:
        user = self._whose(request.user, ctx)
        advice = recommend(await self.ledger.entries(user), self.models.catalog, time.time())
        return pb.RecommendResponse(recommendations=[
            pb.Recommendation(summary=r.summary, from_model=r.from_model, to_model=r.to_model,
                              monthly_savings_usd=r.monthly_savings_usd,
                              traffic_share=r.traffic_share) for r in advice])


@hookimpl
def revo_engine() -> EngineSpec:
    return EngineSpec(name="models", engine=ModelEngine)
