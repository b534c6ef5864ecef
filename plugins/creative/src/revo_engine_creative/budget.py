"""The set's money: estimated before any call, reserved at once, handed to calls one by one.

The model router reserves each call's estimate in the caller's budget itself. A set of
calls must not start unless the whole set fits, so Creative first reserves the sum of its
planned calls' estimates (refused: ``RESOURCE_EXHAUSTED`` before any model is called), then,
just before each call, gives that call's share back so that the router's own reservation
of the same amount finds room. Whatever is still held when the set ends (spares cancelled,
calls never made) is released. A set of local (free) models reserves nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from mesh.errors import FailedPrecondition
from mesh.models.budget import Budgets, Reservation
from mesh.models.router import estimate_tokens
from mesh.v1 import models_pb2

__all__ = ["Prices", "SetBudget", "no_generating_model"]

_MICROS = 1_000_000


@dataclass(frozen=True)
class Prices:
    """What one model call may cost, from the catalog ``ListModels`` returned."""

    models: dict[str, models_pb2.Model]
    default: str
    """The model "auto" starts with: the healthy generating model of lowest priority."""

    @classmethod
    def of(cls, catalog: Sequence[models_pb2.Model], force_local: bool) -> Prices:
        generating = [m for m in catalog if m.generates
                      and (m.tier == models_pb2.TIER_LOCAL or not force_local)]
        ordered = sorted(generating, key=lambda m: (not m.healthy, m.priority, m.name))
        return cls({m.name: m for m in generating}, ordered[0].name if ordered else "")

    def estimate(self, model: str, messages: Sequence[tuple[str, str]],
                 max_tokens: int) -> float:
        """The router's estimate for a call asking ``model`` ("auto": :attr:`default`)."""
        found = self.models.get(self.default if model in ("", "auto") else model)
        if found is None or found.tier == models_pb2.TIER_LOCAL:
            return 0.0
        prompt = sum(estimate_tokens(text) for _, text in messages)
        return (prompt * found.input_usd_per_million
                + max_tokens * found.output_usd_per_million) / 1e6

    def cheapest(self, allowed: Sequence[str]) -> str:
        """The cheapest of ``allowed`` (every generating model when empty), healthy first."""
        names = [n for n in allowed if n in self.models] or list(self.models)
        return min(names, key=lambda n: (not self.models[n].healthy,
                                         self.models[n].input_usd_per_million
                                         + self.models[n].output_usd_per_million,
                                         self.models[n].priority, n))


def no_generating_model(force_local: bool) -> FailedPrecondition:
    """The error when no model can generate (with ``force_local``: no local one), saying
    what to configure."""
    if force_local:
        return FailedPrecondition("no local (Triton) model can generate: set "
                                  "models.generator_checkpoint for a local generator, or "
                                  "drop force_local")
    return FailedPrecondition("no model can generate: add a [[models.catalog]] entry (a cloud "
                              "model with its API key, or set models.generator_checkpoint "
                              "for a local one)")


class SetBudget:
    """One set's reservation in ``user``'s budget (``budgets`` None: nothing is paid)."""

    def __init__(self, budgets: Budgets | None, user: str) -> None:
        self._budgets = budgets
        self._user = user
        self._period = ""
        self._held = 0

    @property
    def held_usd(self) -> float:
        return self._held / _MICROS

    async def reserve(self, estimates: Sequence[float]) -> None:
        """Reserve the sum of ``estimates``, or raise ``BudgetExhausted`` naming the amounts."""
        total = sum(estimates)
        if self._budgets is None or total <= 0:
            return
        reservation = await self._budgets.reserve(self._user, total)
        self._period, self._held = reservation.period, reservation.micros

    async def hand_over(self, estimate: float) -> None:
        """Give back ``estimate`` (or what is left of the hold) for a call about to reserve
        it itself."""
        micros = min(self._held, math.ceil(max(0.0, estimate) * _MICROS))
        if self._budgets is None or micros <= 0:
            return
        self._held -= micros  # before the await: concurrent hand-overs never overdraw
        await self._budgets.release(Reservation(self._user, self._period, micros))

    async def close(self) -> None:
        """Release what is still held."""
        await self.hand_over(self._held / _MICROS)
