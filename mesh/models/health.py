"""One model's health, as ``ListModels`` reports it and the router and Embed use it.

A model is healthy when its server says it is ready *and* its calls work: ``cooldown_after``
failed calls in a row (``models.cooldown_after``) cool it for ``cooldown_s``, during which the
router skips it (falling back to the next model) and Embed refuses at once. A server's
readiness alone is not enough: Triton keeps reporting a Python model ready while its stub
crashes on every request. A success ends the cooldown; the engine's health watch sends a
tiny probe call to a failing local model, so it recovers without waiting for a user's call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["ModelHealth"]


@dataclass
class ModelHealth:
    cooldown_after: int
    cooldown_s: float
    failures: int = 0
    """Failed calls in a row."""
    cool_until: float = 0.0
    ready: bool = True
    """False while a local model's server says it is not ready."""

    def failed(self) -> bool:
        """Record a failed call; True when this failure starts (or extends) a cooldown."""
        self.failures += 1
        if self.failures >= self.cooldown_after:
            self.cool_until = time.monotonic() + self.cooldown_s
            return True
        return False

    def succeeded(self) -> None:
        """Record a call that worked: the failures and any cooldown are over."""
        self.failures, self.cool_until = 0, 0.0

    @property
    def failing(self) -> bool:
        """Enough failures in a row to cool the model (a probe may end it)."""
        return self.failures >= self.cooldown_after

    def cooling(self, now: float | None = None) -> bool:
        return self.cool_until > (time.monotonic() if now is None else now)

    def healthy(self, now: float | None = None) -> bool:
        return self.ready and not self.cooling(now)
