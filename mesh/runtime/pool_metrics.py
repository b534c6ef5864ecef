"""Metrics of every engine pool, taken at the pool's boundary: engines write none of it.

A pool measures each call from its arrival to its outcome through the :class:`MethodMeter`
of its method, made once when the node starts (its children are bound then, so a call
costs two increments and one observation, with no label lookups). Queue depth, busy and
alive workers, restarts and health are read from the pools at each scrape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from mesh.engine import MethodBinding
from mesh.errors import RpcError
from mesh.observability import metrics as m

__all__ = ["MeteredPool", "MethodMeter", "PoolMeters", "watch_pools"]

Respond = Callable[[bytes | None, "RpcError | None"], None]


class MethodMeter:
    """Counts and times the calls of one method of one engine."""

    __slots__ = ("_calls", "_duration", "_errors", "_labels")

    def __init__(self, calls: m.Incrementer, duration: m.Observer,
                 errors: m.Family[m.Incrementer], labels: tuple[str, str, str]) -> None:
        self._calls = calls
        self._duration = duration
        self._errors = errors
        self._labels = labels

    def finished(self, started: float, error: RpcError | None) -> None:
        """A call that arrived at ``started`` (``time.perf_counter()``) ended."""
        self._calls.inc()
        self._duration.observe(time.perf_counter() - started)
        if error is not None:
            self._errors.labels(*self._labels, error.code.name).inc()

    def wrap(self, respond: Respond, started: float) -> Respond:
        """``respond``, measuring the outcome it is given first."""
        def measured(result: bytes | None, error: RpcError | None) -> None:
            self.finished(started, error)
            respond(result, error)
        return measured


class PoolMeters:
    """The node's families of per-method pool metrics; hands out bound meters."""

    def __init__(self, metrics: m.EngineMetrics) -> None:
        self._calls: m.Family[m.Incrementer] = metrics.declare_on_loop(m.ENGINE_CALLS)
        self._errors: m.Family[m.Incrementer] = metrics.declare(m.ENGINE_ERRORS)
        self._duration: m.Family[m.Observer] = metrics.declare_on_loop(m.ENGINE_DURATION)

    def meters(self, engine: str,
               bindings: Iterable[MethodBinding]) -> dict[str, MethodMeter]:
        """A meter per method path of ``engine`` (its announced methods: the allow-list)."""
        meters = {}
        for binding in bindings:
            labels = (engine, binding.service, binding.descriptor.name)
            meters[binding.path] = MethodMeter(self._calls.labels(*labels),
                                               self._duration.labels(*labels),
                                               self._errors, labels)
        return meters


class MeteredPool(Protocol):
    """What :func:`watch_pools` reads from a pool."""

    @property
    def pending(self) -> int: ...
    @property
    def busy(self) -> int: ...
    @property
    def alive(self) -> int: ...
    @property
    def healthy(self) -> bool: ...
    @property
    def restarts(self) -> int: ...


def watch_pools(metrics: m.EngineMetrics, pools: Mapping[str, MeteredPool]) -> None:
    """Read every pool's gauges (and restarts) at each scrape; ``pools`` by engine name."""
    def each(read: Callable[[MeteredPool], float]) -> Callable[[], dict[tuple[str, ...],
                                                                        float]]:
        return lambda: {(name,): read(pool) for name, pool in list(pools.items())}

    metrics.callback(m.ENGINE_QUEUE_DEPTH, each(lambda pool: pool.pending))
    metrics.callback(m.ENGINE_WORKERS_BUSY, each(lambda pool: pool.busy))
    metrics.callback(m.ENGINE_WORKERS_ALIVE, each(lambda pool: pool.alive))
    metrics.callback(m.ENGINE_RESTARTS, each(lambda pool: pool.restarts))
    metrics.callback(m.ENGINE_HEALTH, each(lambda pool: 1.0 if pool.healthy else 0.0))
