"""Atomic shared counters: JetStream streams with ``allow_msg_counter`` (nats-server 2.12+).

One subject is one counter. :func:`add` sends ``Nats-Incr: <delta>`` and gets the new total
back in the acknowledgement, atomically across every client, which is what makes limits
and budgets hold between gateway replicas and under concurrency.
"""

from __future__ import annotations

import json

from nats.aio.client import Client as NATS
from nats.js.api import StorageType, StreamConfig

from mesh.transport.streams import ensure_stream

__all__ = ["CounterError", "add", "ensure_counter_stream"]

INCREMENT = "Nats-Incr"


class CounterError(Exception):
    """A counter could not be read or changed; the message says why."""


async def ensure_counter_stream(nc: NATS, name: str, subjects: list[str], *, max_age: float,
                                memory: bool, description: str = "") -> None:
    """Create counter stream ``name`` (``nats.replicas`` replicas, see
    :mod:`mesh.transport.streams`), or raise its ``max_age`` to at least this one."""
    config = StreamConfig(name=name, subjects=subjects, allow_msg_counter=True,
                          storage=StorageType.MEMORY if memory else StorageType.FILE,
                          max_msgs_per_subject=1, max_age=max_age, description=description)

    def longer(current: StreamConfig) -> bool:
        if (current.max_age or 0) >= max_age:
            return False
        current.max_age = max_age
        return True

    await ensure_stream(nc, config, update=longer)


async def add(nc: NATS, subject: str, delta: int, timeout: float = 0.5) -> int:
    """Add ``delta`` (0 reads; negative subtracts) to the counter; its new total."""
    try:
        reply = await nc.request(subject, b"", timeout=timeout,
                                 headers={INCREMENT: f"{delta:+d}"})
        answer = json.loads(reply.data)
    except Exception as exc:
        raise CounterError(f"counter {subject} unreachable: {exc or type(exc).__name__}"
                           ) from exc
    if "error" in answer:
        raise CounterError(f"counter {subject} refused: {answer['error']}")
    if "val" not in answer:
        raise CounterError("counters need nats-server 2.12 or later (atomic counters); "
                           "this server acknowledged without a counter value")
    return int(answer["val"])
