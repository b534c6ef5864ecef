"""Recommendations from recorded usage: what could move to a local model, and what it saves.

For each cloud model a user called, the calls whose prompt and completion would fit a
local model's context window are counted; their cost is what moving them would save (local
models cost nothing per token), scaled to a month at the recorded rate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mesh.config import CatalogModel
from mesh.models.ledger import Entry

__all__ = ["Recommendation", "recommend"]

_MONTH_S = 30 * 86400


@dataclass(frozen=True)
class Recommendation:
    summary: str
    from_model: str
    to_model: str
    monthly_savings_usd: float
    traffic_share: float


def recommend(entries: Iterable[Entry], catalog: Sequence[CatalogModel],
              now: float) -> list[Recommendation]:
    """Largest savings first; nothing when no local model exists or nothing would fit."""
    local = sorted((m for m in catalog if m.local), key=lambda m: (m.priority, m.name))
    if not local:
        return []
    target = max(local, key=lambda m: m.context_window)
    recorded = list(entries)
    if not recorded:
        return []
    span = max(now - min(e.time for e in recorded), 86400.0)  # at least a day of history
    total = len(recorded)
    advice = []
    for model in sorted({e.model for e in recorded if not e.local}):
        calls = [e for e in recorded if e.model == model]
        movable = [e for e in calls
                   if e.prompt_tokens + e.completion_tokens <= target.context_window]
        if not movable:
            continue
        saved = sum(e.cost_usd for e in movable) * _MONTH_S / span
        share = len(movable) / total
        advice.append(Recommendation(
            summary=(f"{len(movable)} of {len(calls)} calls to {model} would fit "
                     f"{target.name}'s context window of {target.context_window} tokens; "
                     f"sending them there would save about ${saved:.2f} a month"),
            from_model=model, to_model=target.name, monthly_savings_usd=saved,
            traffic_share=share))
    return sorted(advice, key=lambda r: -r.monthly_savings_usd)
