"""Traces: one OpenTelemetry trace per client call, from the gateway to every engine it reaches.

Off by default; ``[tracing]`` in ``revo.toml`` (:class:`~mesh.config.TracingSettings`) turns
it on, picks the OTLP exporter (gRPC or HTTP) and the sampler ratio. A call makes these
spans, each the parent of the next (names as exported; the span kinds follow the
OpenTelemetry RPC, messaging, GenAI and database conventions)::

    SERVER    revo.echo.v1.EchoService/Echo              the gateway (rpc.*)
    PRODUCER  send revo.rpc.revo.echo.v1.EchoService.Echo  its NATS request (messaging.*)
    CONSUMER  process revo.rpc.revo.echo.v1.EchoService.Echo  the node that took it
    INTERNAL  echo/Echo                                   the engine, at its pool
    CLIENT    chat gpt-4o-mini, embeddings embedder, find memories, ...  the engine's calls
    PRODUCER  send revo.rpc....                           a call to another engine (mesh.calls)

A call that brings a W3C ``traceparent`` (and ``tracestate``) in its gRPC metadata
continues that trace, and the sampling decision is the caller's (parent-based); a call
without one starts a trace, recorded with probability ``tracing.sample_ratio``. Only the
gateway decides: below it, spans are made only under a recorded parent (:func:`active`,
:func:`sampled`), so a call that is not recorded costs the other layers one check each. The trace
context travels between processes in the NATS headers ``traceparent`` / ``tracestate``
(:mod:`mesh.transport.headers`). Engines co-located with the gateway skip the NATS spans.

Status: a client or producer span is ``ERROR`` for any status but OK; a server, consumer or
engine span only for the codes that mean the server failed (``UNKNOWN``,
``DEADLINE_EXCEEDED``, ``UNIMPLEMENTED``, ``INTERNAL``, ``UNAVAILABLE``, ``DATA_LOSS``), as
the gRPC conventions say. Every RPC span has ``rpc.grpc.status_code``; errors add
``error.type`` (the code's name) and the status message the caller reads. Exceptions are
not recorded (their text and stack may hold user data). Prompts and completions go on GenAI
spans only with ``tracing.capture_content``.

The mesh keeps its own ``TracerProvider`` (not the process-global one of
``opentelemetry.trace``), set up once per process by :func:`configure`: a gateway and a
node in one process (``revo up``, tests) share it. Code on the hot path reads
:data:`TRACER`, which is None while tracing is off, and does no tracing work then.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry.context import Context as TraceContext
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import (
    Span,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mesh.errors import RpcError
from mesh.transport import headers as h

if TYPE_CHECKING:
    from mesh.config import TracingSettings

__all__ = [
    "TRACER",
    "Scope",
    "active",
    "capture_content",
    "configure",
    "current",
    "db_span",
    "end_client",
    "engine_scope",
    "engine_span",
    "finish",
    "flush",
    "genai_span",
    "in_span",
    "messages_json",
    "output_json",
    "process_scope",
    "sampled",
    "send_span",
    "shutdown",
    "traced_stream",
    "traced_unary",
]

log = logging.getLogger(__name__)

TRACER: Tracer | None = None
"""The mesh's tracer while tracing is on; None while it is off (what hot paths test)."""

INSTRUMENTATION = "revo.mesh"

# -- attribute names (OpenTelemetry semantic conventions) ---------------------------------
# The RPC names are those of the gRPC conventions that opentelemetry-instrumentation-grpc
# and most back ends use; semconv 1.37 renames them (rpc.system.name, rpc.response.status_code).
RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code"
ERROR_TYPE = "error.type"
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_DESTINATION = "messaging.destination.name"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_CONSUMER_GROUP = "messaging.consumer.group.name"
MESSAGING_BODY_SIZE = "messaging.message.body.size"
GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_PROVIDER = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"
DB_SYSTEM = "db.system.name"
DB_OPERATION = "db.operation.name"
DB_COLLECTION = "db.collection.name"
ENGINE = "revo.engine.name"
NODE = "revo.node.id"

TRACE_HEADERS = (h.TRACEPARENT, h.TRACESTATE)
"""The W3C trace context's names, in gRPC metadata and in NATS headers alike (the
propagator writes and reads these same names)."""

_SERVER_FAULTS = frozenset({
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS})
"""Codes that make a server-side span ERROR (the gRPC semantic conventions)."""

_provider: TracerProvider | None = None
_capture_content = False
_sample_ratio = 1.0
_propagator = TraceContextTextMapPropagator()
_T = TypeVar("_T")


# -- set-up --------------------------------------------------------------------------------


def configure(settings: TracingSettings, *, exporter: SpanExporter | None = None) -> bool:
    """Set up this process's tracing from ``settings``, once.

    Does nothing when tracing is off or already set up (a gateway and a node in one
    process share the first set-up). ``exporter`` replaces the OTLP exporter and exports
    each span as it ends (tests pass an ``InMemorySpanExporter``). Returns whether
    tracing is on."""
    global TRACER, _provider, _capture_content, _sample_ratio
    if _provider is not None:
        return True
    if not settings.enabled:
        return False
    provider = TracerProvider(
        # The ratio is applied once, by the gateway before it makes a root span
        # (_starts_trace); the SDK then records every root it is given and follows the
        # parent's decision everywhere else. A ratio sampler here would apply it twice.
        sampler=ParentBased(ALWAYS_ON),
        resource=Resource.create({"service.name": settings.service_name}))
    if exporter is None:
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(settings)))
        log.info("tracing on: OTLP %s to %s, sampling %g of new traces", settings.protocol,
                 settings.endpoint or "the default endpoint", settings.sample_ratio)
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _provider = provider
    _capture_content = settings.capture_content
    _sample_ratio = settings.sample_ratio
    TRACER = provider.get_tracer(INSTRUMENTATION)
    return True


def _otlp_exporter(settings: TracingSettings) -> SpanExporter:
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        endpoint = settings.endpoint or "http://127.0.0.1:4317"
        return GrpcExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter(endpoint=settings.endpoint or "http://127.0.0.1:4318/v1/traces")


def flush(timeout_s: float = 5.0) -> None:
    """Export the spans that have ended and wait for them (a process about to stop)."""
    if _provider is not None:
        _provider.force_flush(int(timeout_s * 1000))


def shutdown() -> None:
    """Flush and turn tracing off in this process (tests; a process's exit does it too)."""
    global TRACER, _provider, _capture_content, _sample_ratio
    provider, _provider, TRACER, _capture_content = _provider, None, None, False
    _sample_ratio = 1.0
    if provider is not None:
        provider.shutdown()


def capture_content() -> bool:
    """Whether GenAI spans may carry prompts and completions (``tracing.capture_content``)."""
    return _capture_content


def active() -> bool:
    """Whether the current call is recorded: tracing is on and the current span records.

    Only the gateway starts traces. Everything below it (the NATS hop, nodes, engines, their
    own calls) makes spans only under a recorded parent, so a call the gateway did not
    sample costs those layers one check and nothing else."""
    return TRACER is not None and get_current_span().is_recording()


def sampled(headers: Mapping[str, str]) -> bool:
    """Whether ``headers`` carry a W3C ``traceparent`` whose sampled flag is set (checked
    without parsing the rest: :func:`process_scope` validates it)."""
    parent = headers.get(h.TRACEPARENT)
    if not parent or len(parent) < 55:
        return False
    try:
        return bool(int(parent[-2:], 16) & 1)
    except ValueError:
        return False


def _starts_trace() -> bool:
    """The gateway's sampling decision for a call that brings no trace context."""
    return _sample_ratio >= 1.0 or random.random() < _sample_ratio


# -- spans and their outcome -------------------------------------------------------------


class Scope:
    """A span, and a ``contextvars.Context`` in which it is the current span: run work in
    it (``scope.context.run(...)``, ``create_task(..., context=scope.context)``) and the
    spans that work starts are its children."""

    __slots__ = ("context", "span")

    def __init__(self, span: Span, parent: TraceContext | None = None) -> None:
        self.span = span
        self.context = contextvars.copy_context()
        self.context.run(otel_context.attach, set_span_in_context(span, parent))

    def responding(self, respond: Callable[[bytes | None, RpcError | None], None]
                   ) -> Callable[[bytes | None, RpcError | None], None]:
        """``respond``, ending the span with the outcome first."""
        def done(result: bytes | None, error: RpcError | None) -> None:
            finish(self.span, error)
            respond(result, error)
        return done


def finish(span: Span, error: BaseException | None = None, *, client: bool = False) -> None:
    """End ``span`` with the outcome of a call: OK, or ``error`` (an :class:`RpcError` keeps
    its code; cancellation is ``CANCELLED``, anything else ``UNKNOWN``). See the module's
    doc for when the status is ERROR."""
    if span.is_recording():
        if error is None:
            span.set_attribute(RPC_GRPC_STATUS_CODE, 0)
        elif isinstance(error, RpcError):
            _failed(span, error.code, error.message, client)
        elif isinstance(error, asyncio.CancelledError | GeneratorExit):
            _failed(span, grpc.StatusCode.CANCELLED, "the caller went away", client)
        else:
            _failed(span, grpc.StatusCode.UNKNOWN, type(error).__qualname__, client)
    span.end()


def _failed(span: Span, code: grpc.StatusCode, message: str, client: bool) -> None:
    span.set_attribute(RPC_GRPC_STATUS_CODE, code.value[0])
    if client or code in _SERVER_FAULTS:
        span.set_attribute(ERROR_TYPE, code.name)
        span.set_status(Status(StatusCode.ERROR, message[:1024]))


def _start(name: str, kind: SpanKind, parent: TraceContext | None = None) -> Span:
    assert TRACER is not None
    return TRACER.start_span(name, parent, kind, record_exception=False,
                             set_status_on_exception=False)


# -- the gateway (gRPC server spans) ----------------------------------------------------

_Handler = Callable[[Any, Any], Awaitable[Any]]
_StreamHandler = Callable[[Any, Any], AsyncIterator[Any]]


def _rpc_attributes(path: str) -> dict[str, str]:
    service, _, method = path.strip("/").partition("/")
    return {RPC_SYSTEM: "grpc", RPC_SERVICE: service, RPC_METHOD: method}


def _incoming(context: grpc.aio.ServicerContext[Any, Any]) -> TraceContext | None:
    """The caller's trace context from gRPC metadata (an empty one: a new trace), or None
    when the call is not to be recorded: its caller did not sample it, or it brings no
    context and this gateway's sampler passes it over (then no span is made anywhere)."""
    carrier: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if key in TRACE_HEADERS:
            carrier[key] = value if isinstance(value, str) else value.decode(errors="replace")
    if h.TRACEPARENT in carrier:
        return _propagator.extract(carrier, TraceContext()) if sampled(carrier) else None
    return TraceContext() if _starts_trace() else None


def _grpc_outcome(span: Span, context: grpc.aio.ServicerContext[Any, Any],
                  error: BaseException | None) -> None:
    if not span.is_recording():
        return
    if error is None:
        span.set_attribute(RPC_GRPC_STATUS_CODE, 0)
        return
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        code, message = grpc.StatusCode.CANCELLED, "the caller cancelled the call"
    else:  # aborted: the handler set the code and details before raising
        code = _status_code(context.code())
        message = str(context.details() or "") if code is not grpc.StatusCode.UNKNOWN \
            else f"{type(error).__name__} in the gateway"
    _failed(span, code, message, client=False)


def _status_code(value: object) -> grpc.StatusCode:
    if isinstance(value, grpc.StatusCode):
        return value
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN


def traced_unary(path: str, handler: _Handler) -> _Handler:
    """``handler`` (a unary gRPC handler for ``path``) inside a SERVER span, or ``handler``
    itself while tracing is off."""
    if TRACER is None:
        return handler
    name, attributes = path.lstrip("/"), _rpc_attributes(path)

    async def handle(request: Any, context: Any) -> Any:
        parent = _incoming(context)
        if parent is None or TRACER is None:
            return await handler(request, context)
        span = TRACER.start_span(name, parent, SpanKind.SERVER, attributes,
                                 record_exception=False, set_status_on_exception=False)
        token = otel_context.attach(set_span_in_context(span))
        error: BaseException | None = None
        try:
            return await handler(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            otel_context.detach(token)
            _grpc_outcome(span, context, error)
            span.end()

    return handle


def traced_stream(path: str, handler: _StreamHandler) -> _StreamHandler:
    """``handler`` (a server-streaming gRPC handler for ``path``) inside a SERVER span, or
    ``handler`` itself while tracing is off. The span is current only while the handler
    runs, not while a message waits for the caller."""
    if TRACER is None:
        return handler
    name, attributes = path.lstrip("/"), _rpc_attributes(path)

    async def handle(request: Any, context: Any) -> AsyncIterator[Any]:
        parent = _incoming(context)
        if parent is None or TRACER is None:
            unrecorded = handler(request, context)
            try:
                async for item in unrecorded:
                    yield item
            finally:
                await unrecorded.aclose()  # type: ignore[attr-defined]
            return
        span = TRACER.start_span(name, parent, SpanKind.SERVER, attributes,
                                 record_exception=False, set_status_on_exception=False)
        current = set_span_in_context(span)
        messages = handler(request, context)
        error: BaseException | None = None
        try:
            while True:
                token = otel_context.attach(current)
                try:
                    item = await anext(messages)
                except StopAsyncIteration:
                    break
                finally:
                    otel_context.detach(token)
                yield item
        except BaseException as exc:
            error = exc
            raise
        finally:
            await messages.aclose()  # type: ignore[attr-defined]
            _grpc_outcome(span, context, error)
            span.end()

    return handle


# -- the NATS hop (messaging spans) ------------------------------------------------------


def send_span(subject: str, size: int, headers: dict[str, str]) -> Span:
    """Start the PRODUCER span of a request on ``subject`` (a child of the current span)
    and put its trace context in ``headers``. Only while tracing is on; end it with
    :func:`finish` (``client=True``)."""
    span = _start("send " + subject, SpanKind.PRODUCER)
    if span.is_recording():
        span.set_attributes({MESSAGING_SYSTEM: "nats", MESSAGING_DESTINATION: subject,
                             MESSAGING_OPERATION_TYPE: "send",
                             MESSAGING_OPERATION_NAME: "request",
                             MESSAGING_BODY_SIZE: size})
    _propagator.inject(headers, set_span_in_context(span))
    return span


def process_scope(subject: str, headers: Mapping[str, str], node_id: str,
                  group: str) -> Scope:
    """The CONSUMER span of a request a node took from ``subject``, a child of the
    requester's span in ``headers``. Only while tracing is on."""
    parent = _propagator.extract(headers, TraceContext())
    span = _start("process " + subject, SpanKind.CONSUMER, parent)
    if span.is_recording():
        span.set_attributes({MESSAGING_SYSTEM: "nats", MESSAGING_DESTINATION: subject,
                             MESSAGING_OPERATION_TYPE: "process",
                             MESSAGING_OPERATION_NAME: "process",
                             MESSAGING_CONSUMER_GROUP: group, NODE: node_id})
    return Scope(span, parent)


# -- engines (at the pool boundary) ------------------------------------------------------


def engine_span(engine: str, service: str, method: str,
                parent: TraceContext | None = None) -> Span:
    """The span of one call served by ``engine`` (a child of ``parent``, default the
    current span). Only while tracing is on."""
    span = _start(f"{engine}/{method}", SpanKind.INTERNAL, parent)
    if span.is_recording():
        span.set_attributes({ENGINE: engine, RPC_SERVICE: service, RPC_METHOD: method})
    return span


def engine_scope(engine: str, service: str, method: str) -> Scope:
    """:func:`engine_span` under the current span, with a context to run the call in."""
    return Scope(engine_span(engine, service, method))


def in_span(span: Span, work: Callable[[], _T]) -> _T:
    """Run ``work`` (in this thread) with ``span`` as the current span."""
    token = otel_context.attach(set_span_in_context(span))
    try:
        return work()
    finally:
        otel_context.detach(token)


def current() -> TraceContext:
    """The current trace context (to carry a span across threads)."""
    return otel_context.get_current()


# -- the engines' own calls ---------------------------------------------------------------


def genai_span(operation: str, provider: str, model: str,
               attributes: Mapping[str, Any] | None = None) -> Span:
    """A CLIENT span of a GenAI call (``chat``, ``embeddings``) to ``model`` of
    ``provider``, under the current span. Only while tracing is on. Add the response's
    attributes (:data:`GEN_AI_OUTPUT_TOKENS`, ...) and end it with :func:`end_client`."""
    span = _start(f"{operation} {model}", SpanKind.CLIENT)
    if span.is_recording():
        span.set_attributes({GEN_AI_OPERATION: operation, GEN_AI_PROVIDER: provider,
                             GEN_AI_REQUEST_MODEL: model, **(attributes or {})})
    return span


def db_span(system: str, operation: str, collection: str) -> Span:
    """A CLIENT span of a database call, under the current span. Only while tracing is on;
    end it with :func:`end_client`."""
    span = _start(f"{operation} {collection}", SpanKind.CLIENT)
    if span.is_recording():
        span.set_attributes({DB_SYSTEM: system, DB_OPERATION: operation,
                             DB_COLLECTION: collection})
    return span


def end_client(span: Span, error: BaseException | str | None = None) -> None:
    """End a client span; with ``error`` (an exception, or its kind as text) it is ERROR,
    with ``error.type`` naming it (the exception's class, not its message)."""
    if error is not None and span.is_recording():
        kind = error if isinstance(error, str) else type(error).__qualname__
        span.set_attribute(ERROR_TYPE, kind)
        span.set_status(Status(StatusCode.ERROR))
    span.end()


def messages_json(turns: Sequence[tuple[str, str]]) -> str:
    """Chat turns (role, text) as the GenAI conventions' ``gen_ai.input.messages``."""
    return json.dumps([{"role": role, "parts": [{"type": "text", "content": text}]}
                       for role, text in turns])


def output_json(text: str, finish_reason: str) -> str:
    """A completion as the GenAI conventions' ``gen_ai.output.messages``."""
    return json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": text}],
                        "finish_reason": finish_reason or "stop"}])
