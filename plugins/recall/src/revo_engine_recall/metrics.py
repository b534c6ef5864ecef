"""Perfect Recall's Prometheus metrics, served on the node's ``node.metrics_address``:

- ``perfect_recall_retrieval_duration_seconds{node, query, index}`` (histogram): a Search
  on the node, from its arrival to its answer (embedding included for ``query="text"``);
  ``index`` is the path that answered (``exact`` or ``hnsw``);
- ``perfect_recall_memories{node}``: live memories in the node's index (the collection);
- ``perfect_recall_scopes{node}``: scopes holding memories;
- ``perfect_recall_writes_total{node, outcome}``: Remember items by outcome (stored,
  duplicate, merged, unchanged);
- ``perfect_recall_expired_purged_total{node}``: expired memories this node deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from revo_engine_recall._gen.revo.recall.v1 import recall_pb2 as pb

if TYPE_CHECKING:
    from revo_engine_recall.engine import RecallEngine

__all__ = ["RETRIEVAL", "RecallMetrics"]

RETRIEVAL = Histogram(
    "perfect_recall_retrieval_duration_seconds",
    "Search on the node, arrival to answer (embedding included for text queries)",
    labelnames=["node", "query", "index"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))

_OUTCOMES = {pb.OUTCOME_STORED: "stored", pb.OUTCOME_DUPLICATE: "duplicate",
             pb.OUTCOME_MERGED: "merged", pb.OUTCOME_UNCHANGED: "unchanged"}


class RecallMetrics:
    """One engine's counts; every engine in the process is read by one collector."""

    def __init__(self, node: str, engine: RecallEngine) -> None:
        self.node = node
        self.engine = engine
        self.writes = dict.fromkeys(_OUTCOMES.values(), 0)

    def register(self) -> None:
        _COLLECTOR.add(self)

    def unregister(self) -> None:
        _COLLECTOR.remove(self)

    def searched(self, query: str, index: str, seconds: float) -> None:
        RETRIEVAL.labels(self.node, query, index).observe(seconds)

    def remembered(self, results: Iterable[pb.Remembered]) -> None:
        for result in results:
            name = _OUTCOMES.get(result.outcome)
            if name is not None:
                self.writes[name] += 1


class _Collector(Collector):
    def __init__(self) -> None:
        self._engines: list[RecallMetrics] = []
        self._registered = False

    def add(self, metrics: RecallMetrics) -> None:
        self._engines.append(metrics)
        if not self._registered:
            REGISTRY.register(self)
            self._registered = True

    def remove(self, metrics: RecallMetrics) -> None:
        if metrics in self._engines:
            self._engines.remove(metrics)

    def collect(self) -> Iterator[Metric]:
        memories = GaugeMetricFamily("perfect_recall_memories",
                                     "Live memories in the node's index", labels=["node"])
        scopes = GaugeMetricFamily("perfect_recall_scopes", "Scopes holding memories",
                                   labels=["node"])
        writes = CounterMetricFamily("perfect_recall_writes", "Remembered items by outcome",
                                     labels=["node", "outcome"])
        purged = CounterMetricFamily("perfect_recall_expired_purged",
                                     "Expired memories deleted by this node", labels=["node"])
        for metrics in list(self._engines):
            node, index = metrics.node, metrics.engine.replica.index
            memories.add_metric([node], len(index) if index is not None else 0)
            scopes.add_metric([node], len(index.scopes()) if index is not None else 0)
            for outcome, count in metrics.writes.items():
                writes.add_metric([node, outcome], count)
            purged.add_metric([node], metrics.engine.purged)
        yield from (memories, scopes, writes, purged)


_COLLECTOR = _Collector()
