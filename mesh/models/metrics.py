"""The models engine's metrics: OpenTelemetry GenAI conventions under Prometheus names.

One :class:`CallMeter` per (operation, provider, model) holds its bound children; the
router takes one per model it tries. Model labels come from the catalog (plus the
embedder); any other name is :data:`~mesh.observability.metrics.OTHER`, so a flood of
made-up model names adds no series.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from mesh.config import CatalogModel
from mesh.models.providers import ProviderUsage
from mesh.observability import metrics as m

__all__ = ["CHAT", "EMBEDDINGS", "CallMeter", "ModelMeters"]

CHAT = "chat"
"""``gen_ai.operation.name`` of Generate."""
EMBEDDINGS = "embeddings"
"""``gen_ai.operation.name`` of Embed."""


class CallMeter:
    """Children of one (operation, provider, model), bound once."""

    __slots__ = ("_duration", "_errors", "_input", "_labels", "_meters", "_ok", "_output",
                 "_ttft")

    def __init__(self, meters: ModelMeters, labels: tuple[str, str, str]) -> None:
        self._meters = meters
        self._labels = labels
        self._ok = meters.duration.labels(*labels, "")
        self._errors: dict[str, m.Observer] = {}
        self._ttft = meters.ttft.labels(*labels)
        self._input = meters.tokens.labels(*labels, "input")
        self._output = meters.tokens.labels(*labels, "output")

    def first_token(self, started: float) -> None:
        """The first token of a call begun at ``started`` (``time.perf_counter()``)."""
        self._ttft.observe(time.perf_counter() - started)

    def succeeded(self, started: float, usage: ProviderUsage | None = None) -> None:
        self._ok.observe(time.perf_counter() - started)
        if usage is not None:
            self._input.observe(usage.prompt_tokens)
            self._output.observe(usage.completion_tokens)

    def failed(self, started: float, error_type: str) -> None:
        """``error_type``: a short, bounded kind (a provider error kind, a status code)."""
        child = self._errors.get(error_type)
        if child is None:
            child = self._errors[error_type] = self._meters.duration.labels(*self._labels,
                                                                             error_type)
        child.observe(time.perf_counter() - started)


class ModelMeters:
    """The models engine's families, on its ``runtime.metrics``."""

    def __init__(self, metrics: m.EngineMetrics, catalog: Iterable[CatalogModel],
                 extra_models: Iterable[str] = ()) -> None:
        self._metrics = metrics
        models = [model.name for model in catalog]
        self.model = m.Bounded([*models, *extra_models])
        """A model name, or ``other`` when it is not in the catalog."""
        self.tokens: m.Family[m.Observer] = metrics.declare(m.GENAI_TOKEN_USAGE)
        self.duration: m.Family[m.Observer] = metrics.declare(m.GENAI_DURATION)
        self.ttft: m.Family[m.Observer] = metrics.declare(m.GENAI_TTFT)
        self._cost: m.Family[m.Incrementer] = metrics.declare(m.MODELS_COST)
        self._savings: m.Family[m.Incrementer] = metrics.declare(m.MODELS_SAVINGS)
        self._fallbacks: m.Family[m.Incrementer] = metrics.declare(m.MODELS_FALLBACKS)
        self._switches: m.Family[m.Incrementer] = metrics.declare(m.MODELS_SWITCHES)
        self._refusals: m.Family[m.Incrementer] = metrics.declare(m.MODELS_BUDGET_REFUSALS)
        self._calls: dict[tuple[str, str, str], CallMeter] = {}

    @classmethod
    def off(cls) -> ModelMeters:
        """Meters that record nothing (a router built without metrics)."""
        return cls(m.EngineMetrics(None, ""), ())

    def call(self, operation: str, provider: str, model: str) -> CallMeter:
        labels = (operation, provider, self.model(model))
        meter = self._calls.get(labels)
        if meter is None:
            meter = self._calls[labels] = CallMeter(self, labels)
        return meter

    def paid(self, provider: str, model: str, cost_usd: float, savings_usd: float) -> None:
        name = self.model(model)
        if cost_usd > 0:
            self._cost.labels(provider, name).inc(cost_usd)
        if savings_usd > 0:
            self._savings.labels(name).inc(savings_usd)

    def switched(self, from_model: str, to_model: str, *, midstream: bool) -> None:
        """Another model takes over: before any text (a fallback) or mid-answer."""
        family = self._switches if midstream else self._fallbacks
        family.labels(self.model(from_model), self.model(to_model)).inc()

    def budget_refused(self, model: str) -> None:
        self._refusals.labels(self.model(model)).inc()

    def watch_budgets(self, max_used_ratio: Callable[[], float]) -> None:
        """Serve ``revo_models_budget_max_used_ratio``, read from ``max_used_ratio`` at each
        scrape (:meth:`~mesh.models.budget.Budgets.max_used_ratio`)."""
        self._metrics.callback(m.MODELS_BUDGET_USED, max_used_ratio)
