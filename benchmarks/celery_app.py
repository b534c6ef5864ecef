"""The Celery app that :mod:`benchmarks.tasks` measures the mesh's tasks against (the peer).

The worker runs ``python -m celery -A benchmarks.celery_app worker`` with the broker and
result backend URLs in :data:`BROKER_ENV` and :data:`RESULTS_ENV` (a Redis server the
benchmark starts); the benchmark's client process imports the same app to submit.

Settings are Celery's defaults except where the mesh's guarantees call for the same:
``task_acks_late`` (a task is acknowledged after it ran, at-least-once like the mesh's
JetStream work queue) and ``task_reject_on_worker_lost`` (a task whose worker died is given
back to the broker), and the worker's prefetch multiplier, which Celery's docs ("Prefetch
Limits") say to raise for many short tasks: :data:`PREFETCH_ENV` sets it (default 4, Celery's).
JSON serialization, so payloads are text. The benchmark routes each workload to its own
queue (``apply_async(queue=...)``) so that worker sets with different pools share one Redis.
"""

from __future__ import annotations

import importlib
import os
import time
from typing import Any

__all__ = ["BROKER_ENV", "NOOP_TASK", "PREFETCH_ENV", "RESULTS_ENV", "SLEEP_TASK", "app", "urls"]

BROKER_ENV = "BENCH_CELERY_BROKER"
RESULTS_ENV = "BENCH_CELERY_RESULTS"
PREFETCH_ENV = "BENCH_CELERY_PREFETCH"
"""``worker_prefetch_multiplier`` of the worker (tasks reserved per pool slot)."""
NOOP_TASK = "bench.noop"
"""Returns its payload."""
SLEEP_TASK = "bench.sleep"
"""Sleeps for its payload's decimal milliseconds, then returns the payload."""


def urls() -> tuple[str, str]:
    """The broker's and the result backend's URLs, from the environment."""
    missing = [name for name in (BROKER_ENV, RESULTS_ENV) if not os.environ.get(name)]
    if missing:
        raise RuntimeError(f"{' and '.join(missing)} not set: benchmarks.celery_app is run "
                           "by `python -m benchmarks tasks`, which points it at its Redis")
    return os.environ[BROKER_ENV], os.environ[RESULTS_ENV]


# Celery has no type hints (no py.typed); imported by name, as benchmarks import LiteLLM,
# so that type-checking passes where the bench extra is not installed.
_celery: Any = importlib.import_module("celery")
_signals: Any = importlib.import_module("celery.signals")

# The URLs are checked when a worker or a client starts (urls()), not at import, so that
# the benchmark's runner can read the names above without a Redis of its own.
app: Any = _celery.Celery("revo_bench_tasks", broker=os.environ.get(BROKER_ENV),
                          backend=os.environ.get(RESULTS_ENV))
app.conf.update(
    task_acks_late=True,  # at-least-once: acknowledged once the task ran, as in the mesh
    task_reject_on_worker_lost=True,  # a task whose worker died goes back to the queue
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=int(os.environ.get(PREFETCH_ENV) or 4),
)


@_signals.worker_init.connect
def _check_urls(**_: Any) -> None:
    urls()


@app.task(name=NOOP_TASK)
def noop(payload: str) -> str:
    return payload


@app.task(name=SLEEP_TASK)
def sleep(milliseconds: str) -> str:
    time.sleep(int(milliseconds) / 1000)
    return milliseconds
