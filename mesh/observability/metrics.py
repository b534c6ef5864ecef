"""Every Prometheus metric of the framework, defined once, and the API engines measure with.

The mesh serves metrics from two kinds of process:

- the **gateway**, at ``gateway.metrics_address`` (``127.0.0.1:9464`` by default): the
  ``revo_gateway_*`` families, measured once in the gateway's handler wrappers;
- each **node**, at ``node.metrics_address`` (a free loopback port by default), which the
  node announces in the registry (``revo status`` and ``revo up`` show it): the
  ``revo_engine_*`` families and ``engine_health_status``, measured at the boundary of
  every engine pool, the models engine's ``gen_ai_*`` and ``revo_models_*`` families, and
  whatever engines declare through ``runtime.metrics`` (:class:`EngineMetrics`).

An empty address turns metrics off in that process: nothing is measured and nothing is
served (the observability benchmark compares this with the default).

Each gateway and each node has a registry of its own, so two nodes in one process (tests,
``gateway.colocate``) never share a series; every series a node serves carries its
``node`` label all the same, so that series stay apart once aggregated.

Labels are bounded: method labels come from the methods that nodes announce, model labels
from the model catalog; any other value is reported as :data:`OTHER`.

:data:`FRAMEWORK_METRICS` lists every family; :func:`reference_table` renders the table in
``docs/operators.md`` (a test checks that the page shows it).
"""

from __future__ import annotations

import logging
import socket
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar, cast
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from mesh.errors import ConfigError

__all__ = [
    "FRAMEWORK_METRICS",
    "OTHER",
    "Bounded",
    "EngineMetrics",
    "Family",
    "MetricSpec",
    "MetricsEndpoint",
    "reference_table",
]

log = logging.getLogger(__name__)

OTHER = "other"
"""The label value for anything outside a label's allow-list."""

Kind = Literal["counter", "gauge", "histogram"]
Where = Literal["gateway", "node"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric family: its exposition name, type, help text and labels.

    ``labels`` leaves out ``node``: every family a node serves gets it first."""

    name: str
    kind: Kind
    doc: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    where: Where = "node"

    @property
    def all_labels(self) -> tuple[str, ...]:
        return ("node", *self.labels) if self.where == "node" else self.labels


# -- buckets ----------------------------------------------------------------------------

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Calls through the mesh: sub-millisecond hops to five-minute streams."""

# OpenTelemetry GenAI semantic conventions, the boundaries each metric SHOULD use.
GENAI_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576,
                       4194304, 16777216, 67108864)
GENAI_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24,
                          20.48, 40.96, 81.92)
GENAI_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                      2.5, 5.0, 7.5, 10.0)

# -- the gateway ------------------------------------------------------------------------

GATEWAY_REQUESTS = MetricSpec(
    "revo_gateway_requests_total", "counter",
    "Calls the gateway finished, by service, method and gRPC status code",
    ("service", "method", "code"), where="gateway")
GATEWAY_DURATION = MetricSpec(
    "revo_gateway_request_duration_seconds", "histogram",
    "Time from a call's arrival at the gateway to its last message (streams included)",
    ("service", "method"), LATENCY_BUCKETS, where="gateway")
GATEWAY_IN_FLIGHT = MetricSpec(
    "revo_gateway_requests_in_flight", "gauge", "Calls the gateway is serving now",
    where="gateway")
GATEWAY_AUTH_DENIALS = MetricSpec(
    "revo_gateway_auth_denials_total", "counter",
    "Calls the guard refused before they ran, by reason (unauthenticated, "
    "permission_denied, ...; rate limits are counted apart)", ("reason",), where="gateway")
GATEWAY_RATE_LIMITED = MetricSpec(
    "revo_gateway_rate_limited_total", "counter",
    "Calls refused RESOURCE_EXHAUSTED by the callers' rate limits, by service and method",
    ("service", "method"), where="gateway")
GATEWAY_AUDIT_DROPPED = MetricSpec(
    "revo_gateway_audit_dropped_total", "counter",
    "Audit records dropped because JetStream acknowledged none of the last 100000",
    where="gateway")
GATEWAY_AUDIT_PENDING = MetricSpec(
    "revo_gateway_audit_pending_records", "gauge",
    "Audit records queued or sent and not yet acknowledged by JetStream", where="gateway")

# -- every engine pool, at its boundary -------------------------------------------------

ENGINE_CALLS = MetricSpec(
    "revo_engine_calls_total", "counter", "Calls an engine pool finished, by method",
    ("engine", "service", "method"))
ENGINE_ERRORS = MetricSpec(
    "revo_engine_errors_total", "counter",
    "Calls an engine pool answered with an error (or refused), by method and gRPC code",
    ("engine", "service", "method", "code"))
ENGINE_DURATION = MetricSpec(
    "revo_engine_call_duration_seconds", "histogram",
    "Time from a call's arrival at the pool to its outcome (queueing included)",
    ("engine", "service", "method"), LATENCY_BUCKETS)
ENGINE_QUEUE_DEPTH = MetricSpec(
    "revo_engine_queue_depth", "gauge",
    "Calls waiting for a free actor (async engines: calls in flight)", ("engine",))
ENGINE_WORKERS_BUSY = MetricSpec(
    "revo_engine_workers_busy", "gauge",
    "Actors serving a call (async engines: calls in flight)", ("engine",))
ENGINE_WORKERS_ALIVE = MetricSpec(
    "revo_engine_workers_alive", "gauge", "Actors alive (async engines: 1 while started)",
    ("engine",))
ENGINE_RESTARTS = MetricSpec(
    "revo_engine_restarts_total", "counter", "Actors restarted after a crash", ("engine",))
ENGINE_HEALTH = MetricSpec(
    "engine_health_status", "gauge",
    "1 while every actor of the engine is alive and it takes calls, else 0", ("engine",))

# -- the models engine: OpenTelemetry GenAI conventions, Prometheus names ---------------

_GENAI = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")
GENAI_TOKEN_USAGE = MetricSpec(
    "gen_ai_client_token_usage", "histogram",
    "Tokens per model call as the provider billed them (gen_ai.client.token.usage), "
    "by token type (input, output)", (*_GENAI, "gen_ai_token_type"), GENAI_TOKEN_BUCKETS)
GENAI_DURATION = MetricSpec(
    "gen_ai_client_operation_duration_seconds", "histogram",
    "Duration of one model call, from the request to its last token "
    "(gen_ai.client.operation.duration); error_type is empty on success",
    (*_GENAI, "error_type"), GENAI_DURATION_BUCKETS)
GENAI_TTFT = MetricSpec(
    "gen_ai_server_time_to_first_token_seconds", "histogram",
    "Time from a generation request to its first token (gen_ai.server.time_to_first_token)",
    _GENAI, GENAI_TTFT_BUCKETS)
MODELS_COST = MetricSpec(
    "revo_models_cost_usd_total", "counter", "US dollars paid for model calls",
    ("gen_ai_provider_name", "gen_ai_request_model"))
MODELS_SAVINGS = MetricSpec(
    "revo_models_savings_usd_total", "counter",
    "US dollars saved against the reference cloud model", ("gen_ai_request_model",))
MODELS_FALLBACKS = MetricSpec(
    "revo_models_fallbacks_total", "counter",
    "Requests that moved to another model before any text was sent",
    ("from_model", "to_model"))
MODELS_SWITCHES = MetricSpec(
    "revo_models_midstream_switches_total", "counter",
    "Streams that another model continued after the first one failed mid-answer",
    ("from_model", "to_model"))
MODELS_BUDGET_REFUSALS = MetricSpec(
    "revo_models_budget_refusals_total", "counter",
    "Calls to a paid model refused RESOURCE_EXHAUSTED because the user's budget is spent",
    ("gen_ai_request_model",))
MODELS_BUDGET_USED = MetricSpec(
    "revo_models_budget_max_used_ratio", "gauge",
    "The largest share of a user's paid-model budget spent or reserved this period (0 to "
    "1), among the users this node's router reserved for")

FRAMEWORK_METRICS: tuple[MetricSpec, ...] = (
    GATEWAY_REQUESTS, GATEWAY_DURATION, GATEWAY_IN_FLIGHT, GATEWAY_AUTH_DENIALS,
    GATEWAY_RATE_LIMITED, GATEWAY_AUDIT_DROPPED, GATEWAY_AUDIT_PENDING,
    ENGINE_CALLS, ENGINE_ERRORS, ENGINE_DURATION, ENGINE_QUEUE_DEPTH, ENGINE_WORKERS_BUSY,
    ENGINE_WORKERS_ALIVE, ENGINE_RESTARTS, ENGINE_HEALTH,
    GENAI_TOKEN_USAGE, GENAI_DURATION, GENAI_TTFT, MODELS_COST, MODELS_SAVINGS,
    MODELS_FALLBACKS, MODELS_SWITCHES, MODELS_BUDGET_REFUSALS, MODELS_BUDGET_USED,
)
"""Every family the framework serves, in the order of the reference table."""


def reference_table() -> str:
    """The metrics reference of ``docs/operators.md``, as a Markdown table."""
    rows = ["| metric | type | labels | served by | what |", "| --- | --- | --- | --- | --- |"]
    for spec in FRAMEWORK_METRICS:
        labels = ", ".join(f"`{label}`" for label in spec.all_labels) or "-"
        rows.append(f"| `{spec.name}` | {spec.kind} | {labels} | {spec.where} | {spec.doc} |")
    return "\n".join(rows) + "\n"


# -- bounded labels -------------------------------------------------------------------------


class Bounded:
    """Maps a label value to itself when allowed, else to :data:`OTHER`."""

    __slots__ = ("_allowed",)

    def __init__(self, allowed: Iterable[str]) -> None:
        self._allowed = frozenset(allowed)

    def __call__(self, value: str) -> str:
        return value if value in self._allowed else OTHER


# -- what engines (and the framework's own recorders) get -----------------------------------


class Observer(Protocol):
    def observe(self, amount: float) -> None: ...


class Incrementer(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Setter(Protocol):
    def inc(self, amount: float = 1) -> None: ...
    def dec(self, amount: float = 1) -> None: ...
    def set(self, value: float) -> None: ...


class _Nothing:
    """Stands for every child when metrics are off."""

    def observe(self, amount: float) -> None:
        pass

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass


_NOTHING = _Nothing()

C = TypeVar("C", Observer, Incrementer, Setter)


# -- families owned by the event loop -------------------------------------------------------


class _LoopValue:
    """A counter's or gauge's value, changed only on the event loop (no lock)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class _LoopHistogram:
    """A histogram's buckets, changed only on the event loop (no lock)."""

    __slots__ = ("_bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self._bounds, amount)] += 1  # le: the first bound >= it
        self.total += amount


class _LoopFamily(Collector):
    """A family whose children change only on one event loop: each call costs an addition
    (a bisect for a histogram), where prometheus-client's children take a lock for every
    change. The scrape's thread reads the plain numbers; it may see one observation in a
    histogram's sum and not yet in its buckets, never a count going back."""

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self.children: dict[tuple[str, ...], _LoopValue | _LoopHistogram] = {}
        self._bounds = tuple(sorted(spec.buckets or LATENCY_BUCKETS))

    def labels(self, *values: str) -> _LoopValue | _LoopHistogram:
        child = self.children.get(values)
        if child is None:
            child = (_LoopHistogram(self._bounds) if self.spec.kind == "histogram"
                     else _LoopValue())
            self.children[values] = child
        return child

    def _family(self) -> Metric:
        labels = list(self.spec.all_labels)
        if self.spec.kind == "counter":
            return CounterMetricFamily(self.spec.name, self.spec.doc, labels=labels)
        if self.spec.kind == "gauge":
            return GaugeMetricFamily(self.spec.name, self.spec.doc, labels=labels)
        return HistogramMetricFamily(self.spec.name, self.spec.doc, labels=labels)

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, child in list(self.children.items()):  # one step: safe beside the loop
            if isinstance(child, _LoopHistogram):
                counts, running, buckets = list(child.counts), 0, []
                for bound, count in zip((*self._bounds, float("inf")), counts, strict=True):
                    running += count
                    buckets.append((_le(bound), running))
                assert isinstance(family, HistogramMetricFamily)
                family.add_metric(list(values), buckets, child.total)
            else:
                assert isinstance(family, CounterMetricFamily | GaugeMetricFamily)
                family.add_metric(list(values), child.value)
        yield family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class Family(Generic[C]):
    """A metric family bound to its node: ``.labels(*values)`` gives the child for the
    other labels (no values for a family without labels), created once and cached."""

    __slots__ = ("_bound", "_children", "_metric")

    def __init__(self, metric: Counter | Gauge | Histogram | _LoopFamily | None,
                 bound: tuple[str, ...]) -> None:
        self._metric = metric
        self._bound = bound
        self._children: dict[tuple[str, ...], C] = {}

    def labels(self, *values: str) -> C:
        child = self._children.get(values)
        if child is None:
            made: object = _NOTHING
            if self._metric is not None:
                names = self._bound + values
                made = (self._metric.labels(*names)
                        if names or isinstance(self._metric, _LoopFamily) else self._metric)
            child = self._children[values] = cast(C, made)
        return child


class _Callback(Collector):
    """A family read at scrape time from ``read``."""

    def __init__(self, spec: MetricSpec, bound: tuple[str, ...],
                 read: Callable[[], float | Mapping[tuple[str, ...], float]]) -> None:
        self.spec = spec
        self._bound = bound
        self._read = read

    def _family(self) -> CounterMetricFamily | GaugeMetricFamily:
        cls = CounterMetricFamily if self.spec.kind == "counter" else GaugeMetricFamily
        return cls(self.spec.name, self.spec.doc, labels=list(self.spec.all_labels))

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        try:
            values = self._read()
        except Exception:  # a scrape must not fail for one family
            log.exception("metric %s: reading it failed", self.spec.name)
            values = {}
        if isinstance(values, Mapping):
            for labels, value in values.items():
                family.add_metric([*self._bound, *labels], value)
        else:
            family.add_metric(list(self._bound), values)
        yield family


class EngineMetrics:
    """``runtime.metrics``: metrics an engine (or the framework for it) declares, served on
    its node's ``/metrics``, bound to the node's ``node`` label and unregistered when the
    engine stops. With metrics off every method returns do-nothing children.

    ::

        self.searched = runtime.metrics.histogram(
            "perfect_recall_retrieval_duration_seconds", "Search, arrival to answer",
            ("query", "index"), buckets=(0.001, 0.01, 0.1, 1.0))
        ...
        self.searched.labels("text", "exact").observe(seconds)

    Keep label values bounded (a fixed set, or :class:`Bounded`): each value makes a series.
    """

    def __init__(self, registry: CollectorRegistry | None, node: str) -> None:
        self._registry = registry
        self._node = node
        self._owned: list[Collector] = []

    @property
    def enabled(self) -> bool:
        return self._registry is not None

    def counter(self, name: str, doc: str,
                labels: Sequence[str] = ()) -> Family[Incrementer]:
        return self._family(MetricSpec(name, "counter", doc, tuple(labels)))

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Family[Setter]:
        return self._family(MetricSpec(name, "gauge", doc, tuple(labels)))

    def histogram(self, name: str, doc: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = LATENCY_BUCKETS) -> Family[Observer]:
        return self._family(MetricSpec(name, "histogram", doc, tuple(labels),
                                       tuple(buckets)))

    def declare(self, spec: MetricSpec) -> Family[C]:
        """A family the framework defines (``mesh.observability.metrics``)."""
        return self._family(spec)

    def declare_on_loop(self, spec: MetricSpec) -> Family[C]:
        """A framework family whose children change only on the process's event loop (the
        gateway's handlers, a pool's outcomes): no lock per change. Never change one of
        its children from another thread."""
        if self._registry is None:
            return Family(None, ())
        family = _LoopFamily(spec)
        self._registry.register(family)
        self._owned.append(family)
        return Family(family, self._bound(spec))

    def gauge_callback(self, name: str, doc: str,
                       read: Callable[[], float | Mapping[tuple[str, ...], float]],
                       labels: Sequence[str] = ()) -> None:
        """A gauge read from ``read`` at each scrape: a number, or (with ``labels``) a
        mapping from label values to numbers. ``read`` runs on the scrape's thread."""
        self._callback(MetricSpec(name, "gauge", doc, tuple(labels)), read)

    def counter_callback(self, name: str, doc: str,
                         read: Callable[[], float | Mapping[tuple[str, ...], float]],
                         labels: Sequence[str] = ()) -> None:
        """A counter (``name`` ends in ``_total``) read from ``read`` at each scrape."""
        self._callback(MetricSpec(name, "counter", doc, tuple(labels)), read)

    def callback(self, spec: MetricSpec,
                 read: Callable[[], float | Mapping[tuple[str, ...], float]]) -> None:
        """A framework-defined family read at each scrape."""
        self._callback(spec, read)

    def close(self) -> None:
        """Unregister every family declared here (the engine stopped)."""
        if self._registry is not None:
            for collector in self._owned:
                self._registry.unregister(collector)
        self._owned.clear()

    def _bound(self, spec: MetricSpec) -> tuple[str, ...]:
        return (self._node,) if spec.where == "node" else ()

    def _family(self, spec: MetricSpec) -> Family[C]:
        if self._registry is None:
            return Family(None, ())
        metric = _create(spec, self._registry)
        self._owned.append(metric)
        return Family(metric, self._bound(spec))

    def _callback(self, spec: MetricSpec,
                  read: Callable[[], float | Mapping[tuple[str, ...], float]]) -> None:
        if self._registry is None:
            return
        collector = _Callback(spec, self._bound(spec), read)
        self._registry.register(collector)
        self._owned.append(collector)


def _create(spec: MetricSpec, registry: CollectorRegistry) -> Counter | Gauge | Histogram:
    labels = spec.all_labels
    if spec.kind == "counter":
        return Counter(spec.name, spec.doc, labels, registry=registry)
    if spec.kind == "gauge":
        return Gauge(spec.name, spec.doc, labels, registry=registry)
    return Histogram(spec.name, spec.doc, labels, registry=registry,
                     buckets=spec.buckets or LATENCY_BUCKETS)


class MetricsEndpoint:
    """One process part's registry (a gateway's or a node's) and the HTTP server that
    serves it at ``/metrics``. ``address`` empty: metrics off, :attr:`registry` is None."""

    def __init__(self, address: str, setting: str) -> None:
        self.address = address
        self.setting = setting
        """The configuration key of ``address``, for error messages."""
        self.registry: CollectorRegistry | None = None
        if address:
            # no ``*_created`` series: they double a scrape and no query of ours reads them
            disable_created_metrics()  # type: ignore[no-untyped-call]
            self.registry = CollectorRegistry(auto_describe=True)
            ProcessCollector(registry=self.registry)
            self.registry.register(GC_COLLECTOR)
        self.url = ""
        """``http://host:port/metrics`` once serving."""
        self._server: WSGIServer | None = None

    @property
    def enabled(self) -> bool:
        return self.registry is not None

    def metrics(self, node: str = "") -> EngineMetrics:
        """The API over this registry (families bound to ``node``)."""
        return EngineMetrics(self.registry, node)

    def start(self) -> str:
        """Serve the registry; returns its URL ('' when off). Raises ConfigError naming the
        setting when the address cannot be served."""
        if self.registry is None:
            return ""
        host, _, port = self.address.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        try:
            self._server, _thread = start_http_server(int(port), addr=host,
                                                      registry=self.registry)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"{self.setting} {self.address!r}: cannot serve metrics there "
                              f"({exc})") from exc
        bound = self._server.server_address[1]
        shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
        if ":" in shown:
            shown = f"[{shown}]"
        self.url = f"http://{shown}:{bound}/metrics"
        log.info("metrics at %s", self.url)
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
