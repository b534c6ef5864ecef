"""What the Creative tests share: a scripted model that answers by perspective, and a mesh.

The fake model (a :class:`~mesh.testing.llm.FakeLLMServer` behind an ``openai_compatible``
catalog entry) reads each request as the engine sends it: a generation's system message
names its perspective (``Perspective: <name>:``), a regeneration's user message says the
first answer was "too close to it", and a judge's system message carries the rubric.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mesh.testing.llm import Behaviour, FakeLLMServer, answer

KEY = "sk-creative"
KEY_ENV = "REVO_TEST_CREATIVE_KEY"
SERVICE = "revo.creative.v1.CreativeService"
PROBLEM = "Our nightly reporting job now takes six hours and often misses the 7am deadline."

SOLUTIONS = {
    "pragmatist": "Run the three slowest report queries in parallel on the existing worker "
                  "pool and add the missing index on orders.created_at.",
    "minimalist": "Stop generating the eleven reports nobody has opened in a year; the job "
                  "then only builds the four that finance actually reads.",
    "architect": "Replace the nightly batch with incremental materialized views that are "
                 "updated as each order is written, so there is no nightly job at all.",
    "performance": "Profile the job, then rewrite the row-by-row Python aggregation as one "
                   "set-based SQL query, which moves the work into the database engine.",
    "reliability": "Split the job into idempotent per-region chunks with checkpoints, so a "
                   "failure restarts one chunk and an alert fires before the deadline.",
    "security": "Move reporting to a read-only replica with a least-privilege role, which "
                "also stops the job from competing with production writes for locks.",
    "contrarian": "The deadline is the problem: ask finance whether a 10am delivery works, "
                  "and publish yesterday's numbers at 7am with a clear freshness label.",
    "analogist": "Borrow from video streaming: precompute small summary tiles every hour "
                 "and let the morning report stitch the tiles together in minutes.",
    "user": "Interview the report readers; they mostly need three headline numbers, which "
            "a simple dashboard query can show live without any batch job.",
    "data": "Store daily pre-aggregated rollups per customer and product in a columnar "
            "table, so reports scan thousands of rows instead of hundreds of millions.",
}
"""One distinct solution per built-in perspective (all-MiniLM-L6-v2 cosines at most 0.52
between any two, median 0.28)."""

DIFFERENT = ("Hire an external contractor to audit the reporting stack and hand back a "
             "written plan within two weeks, while the team freezes report changes.")
"""What a regeneration answers: unlike every solution above."""

PERSPECTIVE = re.compile(r"^Perspective: ([a-z0-9_-]+):", re.MULTILINE)


def messages(body: dict[str, Any]) -> tuple[str, str]:
    """A chat request's system and last user message."""
    system = user = ""
    for message in body.get("messages") or []:
        if message.get("role") == "system":
            system = str(message.get("content", ""))
        elif message.get("role") == "user":
            user = str(message.get("content", ""))
    return system, user


@dataclass
class ScriptedModel:
    """Answers by perspective; tests override answers, or hold or fail perspectives."""

    answers: dict[str, str] = field(default_factory=lambda: dict(SOLUTIONS))
    regenerated: str = DIFFERENT
    judge: Callable[[str, str], str] = lambda system, user: "Sound plan.\nScore: 8/10"
    judge_by_model: dict[str, str] = field(default_factory=dict)
    """A judge's verdict by the upstream model asked (``body["model"]``), before ``judge``."""
    special: dict[str, Behaviour] = field(default_factory=dict)
    """A perspective's behaviour instead of its answer (hang, status...)."""
    seen: list[tuple[str, str]] = field(default_factory=list)
    """(kind, perspective or '') of every request, in arrival order."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    interval_s: float = 0.0

    def __call__(self, body: dict[str, Any]) -> Behaviour | None:
        system, user = messages(body)
        if "Rubric:" in system:
            with self.lock:
                self.seen.append(("judge", ""))
            verdict = self.judge_by_model.get(str(body.get("model")))
            return answer(verdict if verdict is not None else self.judge(system, user))
        found = PERSPECTIVE.search(system)
        if found is None:
            return None
        name = found.group(1)
        regeneration = "too close to it" in user
        with self.lock:
            self.seen.append(("regenerate" if regeneration else "generate", name))
        if name in self.special and not regeneration:
            return self.special[name]
        if regeneration:
            return answer(self.regenerated, interval_s=self.interval_s)
        return answer(self.answers.get(name, SOLUTIONS.get(name, DIFFERENT)),
                      interval_s=self.interval_s)

    def count(self, kind: str) -> int:
        with self.lock:
            return sum(1 for k, _ in self.seen if k == kind)


def catalog(fake: FakeLLMServer, *, paid: bool = False,
            second: bool = False) -> list[dict[str, Any]]:
    """The fake model as catalog model ``fake``; with ``second``, also as ``fake2`` (the
    same server, asked for upstream model ``fake-b``)."""
    prices = {"input_usd_per_million": 1.0, "output_usd_per_million": 2.0} if paid else {}
    models = [{"name": "fake", "provider": "openai_compatible",
               "base_url": fake.openai_base_url, "api_key_env": KEY_ENV, "priority": 1,
               "context_window": 16000, **prices}]
    if second:
        models.append({**models[0], "name": "fake2", "upstream": "fake-b", "priority": 2})
    return models
