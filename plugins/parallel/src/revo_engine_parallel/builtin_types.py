"""The task types Parallel Mind offers itself: ``noop`` and ``sleep``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mesh.errors import InvalidArgument
from revo_engine_parallel.context import TaskContext

__all__ = ["builtin_types"]


def _noop(payload: bytes, ctx: TaskContext) -> bytes:
    return payload


def _sleep(payload: bytes, ctx: TaskContext) -> bytes:
    """Wait ``payload`` milliseconds (ASCII digits), or until cancelled."""
    try:
        ms = int(payload.decode() or "0")
    except ValueError:
        raise InvalidArgument(f"sleep takes milliseconds as ASCII digits, got "
                              f"{payload[:20]!r}") from None
    interrupted = ctx.cancelled.wait(max(0, ms) / 1000)
    return b"interrupted" if interrupted else b""


def builtin_types() -> Mapping[str, Any]:
    """``noop`` (answers its payload) and ``sleep`` (waits its payload's milliseconds)."""
    return {"noop": _noop, "sleep": _sleep}
