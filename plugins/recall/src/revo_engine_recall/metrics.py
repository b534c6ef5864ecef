"""Perfect Recall's Prometheus metrics, declared on ``runtime.metrics`` and served on the
node's ``/metrics`` (``node.metrics_address``), each with the node's ``node`` label:

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

from collections.abc import Callable, Iterable

from mesh.observability.metrics import EngineMetrics, Incrementer, Observer
from revo_engine_recall.replica import IndexReplica
from revo_engine_recall.v1 import recall_pb2 as pb

__all__ = ["RecallMetrics"]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_OUTCOMES = {pb.OUTCOME_STORED: "stored", pb.OUTCOME_DUPLICATE: "duplicate",
             pb.OUTCOME_MERGED: "merged", pb.OUTCOME_UNCHANGED: "unchanged"}
_QUERIES = ("text", "vector")
_INDEXES = ("exact", "hnsw")


class RecallMetrics:
    """One engine's metrics (children bound once; gauges read at each scrape)."""

    def __init__(self, metrics: EngineMetrics, replica: IndexReplica,
                 purged: Callable[[], int]) -> None:
        retrieval = metrics.histogram(
            "perfect_recall_retrieval_duration_seconds",
            "Search on the node, arrival to answer (embedding included for text queries)",
            ("query", "index"), _BUCKETS)
        self._retrieval_family = retrieval
        self._retrieval: dict[tuple[str, str], Observer] = {
            (query, index): retrieval.labels(query, index)
            for query in _QUERIES for index in _INDEXES}
        writes = metrics.counter("perfect_recall_writes_total", "Remembered items by outcome",
                                 ("outcome",))
        self._writes: dict[int, Incrementer] = {
            outcome: writes.labels(name) for outcome, name in _OUTCOMES.items()}

        def memories() -> float:
            index = replica.index
            return len(index) if index is not None else 0

        def scopes() -> float:
            index = replica.index
            return len(index.scopes()) if index is not None else 0

        metrics.gauge_callback("perfect_recall_memories", "Live memories in the node's index",
                               memories)
        metrics.gauge_callback("perfect_recall_scopes", "Scopes holding memories", scopes)
        metrics.counter_callback("perfect_recall_expired_purged_total",
                                 "Expired memories deleted by this node",
                                 purged)

    def searched(self, query: str, index: str, seconds: float) -> None:
        child = self._retrieval.get((query, index))
        if child is None:
            child = self._retrieval[query, index] = self._retrieval_family.labels(query, index)
        child.observe(seconds)

    def remembered(self, results: Iterable[pb.Remembered]) -> None:
        for result in results:
            counter = self._writes.get(result.outcome)
            if counter is not None:
                counter.inc()
