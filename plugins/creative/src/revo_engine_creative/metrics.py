"""Creative's Prometheus metrics, declared on ``runtime.metrics`` and served on the node's
``/metrics`` with its ``node`` label:

- ``creative_engine_innovation_score{node}`` (histogram): each candidate's innovation score
  as it is sent (0 to 1);
- ``creative_engine_candidates_total{node, outcome}``: candidates ``accepted``, generations
  ``rejected`` as too close to a sibling, and ``failed`` generations;
- ``creative_engine_set_duration_seconds{node}`` (histogram): a whole set, request to
  summary.

Calls, errors and latency of the RPCs themselves are the framework's (``revo_engine_*``).
"""

from __future__ import annotations

from mesh.observability.metrics import EngineMetrics

__all__ = ["CreativeMeters"]

_SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_SET_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)


class CreativeMeters:
    def __init__(self, metrics: EngineMetrics) -> None:
        self._innovation = metrics.histogram(
            "creative_engine_innovation_score", "Innovation score of each candidate sent",
            buckets=_SCORE_BUCKETS).labels()
        candidates = metrics.counter("creative_engine_candidates_total",
                                     "Candidates accepted, generations rejected as too close "
                                     "to a sibling, and failed generations", ("outcome",))
        self._accepted = candidates.labels("accepted")
        self._rejected = candidates.labels("rejected")
        self._failed = candidates.labels("failed")
        self._sets = metrics.histogram("creative_engine_set_duration_seconds",
                                       "A whole set, request to summary",
                                       buckets=_SET_BUCKETS).labels()

    def innovation(self, score: float) -> None:
        self._innovation.observe(score)

    def rejected(self) -> None:
        self._rejected.inc()

    def finished(self, accepted: int, failed: int, seconds: float) -> None:
        self._accepted.inc(accepted)
        self._failed.inc(failed)
        self._sets.observe(seconds)
