"""Per-user budgets for paid models that hold under concurrency and across replicas.

A call's estimated cost is *reserved* before the call by adding it to the user's spend
counter for the period (an atomic JetStream counter, file storage, so it survives
restarts). The counter's new total says whether the reservation fits: if not, it is taken
back and the call is refused ``RESOURCE_EXHAUSTED``. After the call the reservation is
*settled* to the actual cost (or released when nothing was spent). Because every
reservation is an atomic add that sees all the others, fifty concurrent calls cannot
overspend a budget: at most the ones whose add still fit are admitted. Free (local)
models reserve nothing and are always allowed.

Amounts are kept in micro-dollars (integers).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from nats.aio.client import Client as NATS

from mesh.config import ModelSettings
from mesh.errors import BudgetExhausted, Unavailable
from mesh.transport import counters, subjects

__all__ = ["Budgets", "Reservation", "period_of"]

_MICROS = 1_000_000
_KEEP_S = 400 * 86400  # a counter outlives its month, for GetUsage


def period_of(period: str, now: float | None = None) -> str:
    """The period's name at ``now`` (UTC): ``2026-11`` or ``2026-11-24``."""
    stamp = time.gmtime(time.time() if now is None else now)
    return time.strftime("%Y-%m-%d" if period == "day" else "%Y-%m", stamp)


@dataclass(frozen=True)
class Reservation:
    """Money set aside for one call; settle or release it exactly once."""

    user: str
    period: str
    micros: int

    @property
    def usd(self) -> float:
        return self.micros / _MICROS


class Budgets:
    def __init__(self, nc: NATS, settings: ModelSettings) -> None:
        self._nc = nc
        self._settings = settings
        self._used: dict[str, float] = {}
        """Share of each user's budget spent or reserved, as this process last saw it."""
        self._used_period = ""

    async def start(self) -> None:
        await counters.ensure_counter_stream(
            self._nc, subjects.SPEND_STREAM, [f"{subjects.SPEND_PREFIX}.>"], max_age=_KEEP_S,
            memory=False,
            description="revo: spend on paid models per user and period (micro-USD)")

    def limit_usd(self, user: str) -> float:
        return self._settings.user_budgets_usd.get(user, self._settings.budget_usd)

    def _subject(self, user: str, period: str) -> str:
        return f"{subjects.SPEND_PREFIX}.{subjects.subject_token(user) if user else '-'}.{period}"

    async def reserve(self, user: str, estimate_usd: float,
                      now: float | None = None) -> Reservation:
        """Set ``estimate_usd`` aside for ``user``, or raise :class:`BudgetExhausted`."""
        period = period_of(self._settings.budget_period, now)
        micros = math.ceil(max(0.0, estimate_usd) * _MICROS)
        if micros == 0:
            return Reservation(user, period, 0)
        limit = round(self.limit_usd(user) * _MICROS)
        subject = self._subject(user, period)
        total = await self._add(subject, micros)
        if total > limit:
            await self._add(subject, -micros)
            self._saw(user, period, total - micros)
            raise BudgetExhausted(
                f"budget reached: {user or 'anonymous'} may spend ${limit / _MICROS:.2f} on "
                f"paid models per {self._settings.budget_period} and has "
                f"${(total - micros) / _MICROS:.4f} spent or reserved; this call needs about "
                f"${micros / _MICROS:.4f}. Local models stay available.",
                metadata={"user": user, "period": period,
                          "limit_usd": f"{limit / _MICROS:.2f}"})
        self._saw(user, period, total)
        return Reservation(user, period, micros)

    async def settle(self, reservation: Reservation, actual_usd: float) -> None:
        """Replace the reservation by what the call really cost."""
        actual = math.ceil(max(0.0, actual_usd) * _MICROS)
        if actual != reservation.micros:
            total = await self._add(self._subject(reservation.user, reservation.period),
                                    actual - reservation.micros)
            self._saw(reservation.user, reservation.period, total)

    async def release(self, reservation: Reservation) -> None:
        """Give the reservation back (the call spent nothing)."""
        await self.settle(reservation, 0.0)

    async def spent_usd(self, user: str, now: float | None = None) -> float:
        """Spent and reserved in the current period."""
        period = period_of(self._settings.budget_period, now)
        return await self._add(self._subject(user, period), 0) / _MICROS

    def max_used_ratio(self, now: float | None = None) -> float:
        """The largest share of a budget (0 to 1, a little above while refusals are taken
        back) spent or reserved in the current period, among the users this process
        reserved for: ``revo_models_budget_max_used_ratio``. Read from any thread."""
        if self._used_period != period_of(self._settings.budget_period, now):
            return 0.0
        return max(list(self._used.values()), default=0.0)

    def _saw(self, user: str, period: str, total_micros: int) -> None:
        limit = round(self.limit_usd(user) * _MICROS)
        if limit <= 0 or period < self._used_period:  # no paid budget, or a past period
            return
        if period != self._used_period:
            self._used = {}
            self._used_period = period
        self._used[user] = total_micros / limit

    async def _add(self, subject: str, delta: int) -> int:
        try:
            return await counters.add(self._nc, subject, delta, timeout=2.0)
        except counters.CounterError as exc:
            raise Unavailable(f"budgets cannot be checked right now ({exc}); retry shortly"
                              ) from exc
