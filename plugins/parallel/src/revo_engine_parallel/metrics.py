"""Parallel Mind's Prometheus metrics, declared on ``runtime.metrics`` and read from the live
pool and dispatcher at each scrape; served on the node's ``/metrics``
(``node.metrics_address``), each with the node's ``node`` label:

- ``parallel_mind_active_workers{node}``: worker actors alive on the node (the pool's size,
  between ``workers_min`` and ``workers_max``);
- ``parallel_mind_busy_workers{node}``: of those, the ones running a task;
- ``parallel_mind_queue_depth{node, priority}``: tasks queued or running, mesh-wide, as the
  node last counted them (about a second old; every node reports the same queue, so
  aggregate with ``max``);
- ``parallel_mind_tasks_finished_total{node, outcome}``: tasks this node finished, by
  outcome (succeeded, failed, dead_lettered, cancelled).
"""

from __future__ import annotations

from mesh.observability.metrics import EngineMetrics
from mesh.runtime.workers import WorkerPool
from revo_engine_parallel.dispatch import Dispatcher

__all__ = ["declare_metrics"]


def declare_metrics(metrics: EngineMetrics, pool: WorkerPool, dispatcher: Dispatcher) -> None:
    """Declare the engine's families, read from ``pool`` and ``dispatcher`` at each scrape."""
    metrics.gauge_callback("parallel_mind_active_workers", "Worker actors alive on the node",
                           lambda: pool.size)
    metrics.gauge_callback("parallel_mind_busy_workers", "Worker actors running a task",
                           lambda: pool.busy)

    def depth() -> dict[tuple[str, ...], float]:
        by_priority = dispatcher.depth_by_priority()
        return {(str(priority),): by_priority.get(priority, 0) for priority in range(1, 10)}

    metrics.gauge_callback("parallel_mind_queue_depth",
                           "Tasks queued or running, mesh-wide, by priority", depth,
                           ("priority",))

    def finished() -> dict[tuple[str, ...], float]:
        stats = dispatcher.stats
        return {("succeeded",): stats.succeeded, ("failed",): stats.failed,
                ("dead_lettered",): stats.dead_lettered, ("cancelled",): stats.cancelled}

    metrics.counter_callback("parallel_mind_tasks_finished_total",
                             "Tasks finished on the node, by outcome", finished, ("outcome",))
