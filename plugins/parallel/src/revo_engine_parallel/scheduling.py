"""Which queue a free worker serves next: priority first, no starvation, owners fairly.

Every (priority, owner) pair with waiting tasks is a queue. Stride scheduling picks among
them in two steps:

1. **Priority.** Level ``p`` (1 to 9) has weight ``2 ** (p - 1)``: while levels 9 and 1 both
   wait, level 9 gets 256 turns for each turn of level 1. So higher priority runs first,
   and lower priority still progresses.
2. **Owner.** Within a level, owners with waiting tasks take equal turns, so one owner's
   flood of tasks delays another owner's tasks by at most one task per turn.

A queue that starts waiting joins at the current pass, not at zero: time spent idle earns
no burst of turns later. A priority level that starts waiting joins one of its strides
after the current pass, so that the levels above it, already waiting, go first.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Scheduler"]

Queue = tuple[int, str]
"""(priority, owner token)."""


class _Stride:
    """Stride scheduling over a changing set of members.

    A member that starts waiting joins at the lowest current pass; with ``wait_a_stride``
    it joins one of its own strides later, so that a newly waiting low priority does not
    take a turn before the higher priorities already waiting have had theirs.
    """

    def __init__(self, wait_a_stride: bool = False) -> None:
        self._pass: dict[object, float] = {}
        self._wait_a_stride = wait_a_stride

    def pick(self, members: Iterable[tuple[object, float]]) -> object | None:
        """The member (with its weight) whose pass is lowest; advances its pass."""
        chosen: object | None = None
        chosen_weight = 1.0
        floor = min(self._pass.values(), default=0.0)
        best = 0.0
        for member, weight in members:
            current = self._pass.setdefault(
                member, floor + (1.0 / weight if self._wait_a_stride else 0.0))
            if chosen is None or current < best:
                chosen, chosen_weight, best = member, weight, current
        if chosen is not None:
            self._pass[chosen] = best + 1.0 / chosen_weight
        return chosen

    def forget(self, keep: set[object]) -> None:
        for member in [m for m in self._pass if m not in keep]:
            del self._pass[member]


class Scheduler:
    """Picks the next queue to take a task from."""

    def __init__(self) -> None:
        self._levels = _Stride(wait_a_stride=True)
        self._owners: dict[int, _Stride] = {}

    def next(self, waiting: Iterable[Queue]) -> Queue | None:
        """The queue to serve next among those with ``waiting`` tasks."""
        by_level: dict[int, list[str]] = {}
        for priority, owner in waiting:
            by_level.setdefault(priority, []).append(owner)
        if not by_level:
            return None
        # highest first, so that a tie goes to the higher priority
        level = self._levels.pick((p, float(2 ** (p - 1)))
                                  for p in sorted(by_level, reverse=True))
        assert isinstance(level, int)
        owners = self._owners.setdefault(level, _Stride())
        chosen = owners.pick((o, 1.0) for o in sorted(by_level[level]))
        assert isinstance(chosen, str)
        self._levels.forget(set(by_level))
        owners.forget(set(by_level[level]))
        return level, chosen
