"""The gateway's metrics, measured once around every handler (never per route).

:meth:`GatewayMeters.unary` and :meth:`GatewayMeters.stream` wrap a handler when it is
built, binding its children then (one ``service``/``method`` pair per announced method,
:data:`~mesh.observability.metrics.OTHER` for paths nobody announced), so that a call costs
a gauge up and down, one increment and one observation. The status code comes from the
call's context after the handler aborted (or ``CANCELLED`` when the caller left).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from mesh.errors import Reason, RpcError
from mesh.observability import metrics as m

if TYPE_CHECKING:
    from mesh.auth.audit import AuditLog

__all__ = ["GatewayMeters", "split_path"]

Handler = Callable[[Any, Any], Awaitable[Any]]
StreamHandler = Callable[[Any, Any], AsyncIterator[Any]]

_CODES = {code.value[0]: code.name for code in grpc.StatusCode}
_REASONS = frozenset(reason.value for reason in Reason)


def split_path(path: str) -> tuple[str, str]:
    """``/package.Service/Method`` as (``package.Service``, ``Method``)."""
    service, _, method = path.strip("/").partition("/")
    return service, method


def _code(context: Any, error: BaseException | None) -> str:
    if error is None:
        return "OK"
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    code = context.code()  # set by abort(); None when the handler raised a bug
    if isinstance(code, grpc.StatusCode):
        return code.name
    return _CODES.get(code, "UNKNOWN") if isinstance(code, int) else "UNKNOWN"


class _Meter:
    """The children of one method, bound once."""

    __slots__ = ("duration", "labels", "ok", "requests")

    def __init__(self, meters: GatewayMeters, labels: tuple[str, str]) -> None:
        self.labels = labels
        self.requests = meters.requests
        self.ok = meters.requests.labels(*labels, "OK")
        self.duration = meters.duration.labels(*labels)

    def done(self, started: float, code: str) -> None:
        self.duration.observe(time.perf_counter() - started)
        (self.ok if code == "OK" else self.requests.labels(*self.labels, code)).inc()


class GatewayMeters:
    """The ``revo_gateway_*`` families of one gateway, over its registry."""

    def __init__(self, metrics: m.EngineMetrics) -> None:
        self.requests: m.Family[m.Incrementer] = metrics.declare_on_loop(m.GATEWAY_REQUESTS)
        self.duration: m.Family[m.Observer] = metrics.declare_on_loop(m.GATEWAY_DURATION)
        in_flight: m.Family[m.Setter] = metrics.declare_on_loop(m.GATEWAY_IN_FLIGHT)
        self.in_flight = in_flight.labels()
        self._denials: m.Family[m.Incrementer] = metrics.declare(m.GATEWAY_AUTH_DENIALS)
        self._limited: m.Family[m.Incrementer] = metrics.declare(m.GATEWAY_RATE_LIMITED)
        self._metrics = metrics
        self._meters: dict[tuple[str, str], _Meter] = {}

    def watch_audit(self, audit: AuditLog) -> None:
        """Read the audit log's dropped and pending records at each scrape."""
        self._metrics.callback(m.GATEWAY_AUDIT_DROPPED, lambda: float(audit.dropped))
        self._metrics.callback(m.GATEWAY_AUDIT_PENDING, lambda: float(audit.pending))

    def _meter(self, path: str, known: bool) -> _Meter:
        labels = split_path(path) if known else (m.OTHER, m.OTHER)
        meter = self._meters.get(labels)
        if meter is None:
            meter = self._meters[labels] = _Meter(self, labels)
        return meter

    def refused(self, path: str, error: RpcError, known: bool = True) -> None:
        """The guard refused a call to ``path`` before it ran."""
        if error.reason == Reason.RATE_LIMITED:
            labels = split_path(path) if known else (m.OTHER, m.OTHER)
            self._limited.labels(*labels).inc()
            return
        reason = error.reason if error.reason in _REASONS else error.code.name
        self._denials.labels(reason.lower()).inc()

    def unary(self, path: str, handler: Handler, *, known: bool = True) -> Handler:
        """``handler`` measured; ``known`` False labels it ``other`` (nobody announced it)."""
        meter = self._meter(path, known)
        in_flight = self.in_flight

        async def measured(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            in_flight.inc()
            try:
                response = await handler(request, context)
            except BaseException as error:
                meter.done(started, _code(context, error))
                raise
            finally:
                in_flight.dec()
            meter.done(started, "OK")
            return response

        return measured

    def stream(self, path: str, handler: StreamHandler, *, known: bool = True
               ) -> StreamHandler:
        """``handler`` (server streaming) measured until its last message."""
        meter = self._meter(path, known)
        in_flight = self.in_flight

        async def measured(request: Any, context: Any) -> AsyncIterator[Any]:
            started = time.perf_counter()
            in_flight.inc()
            messages = handler(request, context)
            error: BaseException | None = None
            try:
                async for item in messages:
                    yield item
            except BaseException as exc:
                error = exc
                raise
            finally:
                in_flight.dec()
                await messages.aclose()  # type: ignore[attr-defined]
                meter.done(started, _code(context, error))

        return measured
