"""What a task's work knows about its run: the ``ctx`` every task-type handler receives."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["TaskContext"]


@dataclass
class TaskContext:
    """What a task's work knows about its run (given to task-type handlers)."""

    task_id: str
    owner: str
    attempt: int
    deadline: float
    """``time.monotonic()`` after which the attempt has timed out."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    report: Callable[[float, str], None] = lambda fraction, message: None

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress (0 to 1); watchers see it."""
        self.report(max(0.0, min(1.0, fraction)), message)

    def time_remaining(self) -> float:
        return self.deadline - time.monotonic()
