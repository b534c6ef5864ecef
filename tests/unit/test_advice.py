"""Recommendations from the ledger (no sockets)."""

from __future__ import annotations

import pytest

from mesh.config import ModelSettings
from mesh.models.advice import recommend
from mesh.models.ledger import Entry

DAY = 86400.0
CATALOG = ModelSettings.model_validate({"catalog": [
    {"name": "local", "provider": "triton", "context_window": 4096},
    {"name": "gpt", "provider": "openai", "input_usd_per_million": 1.0,
     "output_usd_per_million": 2.0, "context_window": 128000},
    {"name": "claude", "provider": "anthropic", "input_usd_per_million": 3.0,
     "output_usd_per_million": 15.0, "context_window": 200000},
]}).catalog


def _entry(model: str, prompt: int, cost: float, when: float, local: bool = False) -> Entry:
    return Entry(time=when, user="alice", model=model, provider="x", local=local,
                 prompt_tokens=prompt, completion_tokens=100, cached_tokens=0, cost_usd=cost,
                 savings_usd=0.0, latency_ms=1.0)


def test_calls_that_fit_a_local_model_are_recommended_with_monthly_savings() -> None:
    now = 10 * DAY
    entries = [_entry("claude", 1000, 0.10, 0.0), _entry("claude", 1000, 0.10, 5 * DAY),
               _entry("claude", 50_000, 1.00, 6 * DAY),  # too long for the local window
               _entry("gpt", 500, 0.01, 9 * DAY), _entry("local", 300, 0.0, 9 * DAY, True)]
    advice = recommend(entries, CATALOG, now)
    assert [(r.from_model, r.to_model) for r in advice] == [("claude", "local"),
                                                            ("gpt", "local")]
    claude = advice[0]
    assert claude.monthly_savings_usd == pytest.approx(0.20 * 30 / 10)  # 10 days recorded
    assert claude.traffic_share == pytest.approx(2 / 5)
    assert "2 of 3 calls to claude" in claude.summary


def test_no_local_model_or_no_history_gives_no_advice() -> None:
    cloud_only = [m for m in CATALOG if not m.local]
    assert recommend([_entry("gpt", 10, 0.01, 0.0)], cloud_only, DAY) == []
    assert recommend([], CATALOG, DAY) == []
