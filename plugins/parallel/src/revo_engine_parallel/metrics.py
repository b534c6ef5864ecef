"""Parallel Mind's Prometheus metrics, read from the live pool and dispatcher at each scrape.

Served on the node's ``node.metrics_address`` (``/metrics``):

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

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from mesh.runtime.workers import WorkerPool
from revo_engine_parallel.dispatch import Dispatcher

__all__ = ["TaskMetrics"]


class TaskMetrics(Collector):
    def __init__(self, node: str, pool: WorkerPool, dispatcher: Dispatcher) -> None:
        self._node = node
        self._pool = pool
        self._dispatcher = dispatcher

    def register(self) -> None:
        REGISTRY.register(self)

    def unregister(self) -> None:
        REGISTRY.unregister(self)

    def collect(self) -> Iterator[Metric]:
        node = self._node
        active = GaugeMetricFamily("parallel_mind_active_workers",
                                   "Worker actors alive on the node", labels=["node"])
        active.add_metric([node], self._pool.size)
        yield active
        busy = GaugeMetricFamily("parallel_mind_busy_workers",
                                 "Worker actors running a task", labels=["node"])
        busy.add_metric([node], self._pool.busy)
        yield busy
        depth = GaugeMetricFamily("parallel_mind_queue_depth",
                                  "Tasks queued or running, mesh-wide, by priority",
                                  labels=["node", "priority"])
        by_priority = self._dispatcher.depth_by_priority()
        for priority in range(1, 10):
            depth.add_metric([node, str(priority)], by_priority.get(priority, 0))
        yield depth
        finished = CounterMetricFamily("parallel_mind_tasks_finished",
                                       "Tasks finished on the node, by outcome",
                                       labels=["node", "outcome"])
        stats = self._dispatcher.stats
        for outcome, count in (("succeeded", stats.succeeded), ("failed", stats.failed),
                               ("dead_lettered", stats.dead_lettered),
                               ("cancelled", stats.cancelled)):
            finished.add_metric([node, outcome], count)
        yield finished
