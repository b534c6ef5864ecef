"""The Coordinator's Prometheus metrics, declared on ``runtime.metrics`` and served on the
node's ``/metrics`` with its ``node`` label:

- ``engine_coordination_latency_seconds{node, kind}`` (histogram): the Coordinator's own
  time per step: from the step becoming ready to its outcome recorded, minus the time its
  work took (the call, task, sleep or wait). Recording the step's events in JetStream and
  evaluating its expressions is what it measures;
- ``coordinator_steps_total{node, kind, outcome}``: steps finished on this node, by kind
  (call, task, group, sleep, wait_signal) and outcome (succeeded, failed, skipped);
- ``coordinator_runs_total{node, outcome}``: runs this node finished (succeeded, failed,
  cancelled);
- ``coordinator_runs_active{node}``: runs this node is running now;
- ``coordinator_unavailable_retries_total{node, kind}``: calls and tasks of steps tried
  again within their attempt because the mesh answered UNAVAILABLE (no node served the
  method, or its node was lost: a NATS leader election, a node restarting). A steady rise
  means a step waits on a service that is down.
"""

from __future__ import annotations

from collections.abc import Callable

from mesh.observability.metrics import EngineMetrics

__all__ = ["CoordinatorMeters"]

KINDS = ("call", "task", "group", "sleep", "wait_signal")
_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class CoordinatorMeters:
    def __init__(self, metrics: EngineMetrics, active: Callable[[], float]) -> None:
        latency = metrics.histogram("engine_coordination_latency_seconds",
                                    "The Coordinator's own time per step (its work excluded)",
                                    ("kind",), _BUCKETS)
        self._latency = {kind: latency.labels(kind) for kind in KINDS}
        steps = metrics.counter("coordinator_steps_total", "Steps finished on this node",
                                ("kind", "outcome"))
        self._steps = {(k, o): steps.labels(k, o) for k in KINDS
                       for o in ("succeeded", "failed", "skipped")}
        runs = metrics.counter("coordinator_runs_total", "Runs this node finished",
                               ("outcome",))
        self._runs = {o: runs.labels(o) for o in ("succeeded", "failed", "cancelled")}
        metrics.gauge_callback("coordinator_runs_active", "Runs this node is running now",
                               active)
        unavailable = metrics.counter(
            "coordinator_unavailable_retries_total",
            "Step calls and tasks tried again within their attempt after UNAVAILABLE",
            ("kind",))
        self._unavailable = {kind: unavailable.labels(kind) for kind in ("call", "task")}

    def step(self, kind: str, outcome: str, coordination_s: float) -> None:
        if kind in self._latency:
            self._latency[kind].observe(max(0.0, coordination_s))
        counter = self._steps.get((kind, outcome))
        if counter is not None:
            counter.inc()

    def unavailable_retry(self, kind: str) -> None:
        counter = self._unavailable.get(kind)
        if counter is not None:
            counter.inc()

    def run(self, outcome: str) -> None:
        counter = self._runs.get(outcome)
        if counter is not None:
            counter.inc()
