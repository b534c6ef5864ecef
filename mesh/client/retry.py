"""Which failed calls the client tries again, and when.

A call is tried again only when repeating it cannot do twice what it did once:
- **any method**, when the mesh refused it before it ran: ``RATE_LIMITED`` (after the
  wait the gateway names, when that is at most ``RetryPolicy.max_retry_after_s``),
  ``POOL_FULL``, ``ENGINE_STOPPING``, ``NO_LIVE_NODE``;
- **methods declared safe**, on any ``UNAVAILABLE`` (a node lost mid-call, NATS away, the
  gateway unreachable): the method's ``.proto`` sets ``idempotency_level`` to
  ``NO_SIDE_EFFECTS`` (reads) or ``IDEMPOTENT``, read from its descriptor.

Everything else (``DEADLINE_EXCEEDED``, ``INTERNAL``, ``UNAVAILABLE`` on a method that
writes, ...) is the caller's to decide, with the error's details in hand. Waits grow
exponentially with full jitter, and never run past the call's deadline.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor_pb2 import MethodOptions
from google.rpc.status_pb2 import Status

from mesh.errors import Reason, RpcError, error_from_status

__all__ = ["RetryPolicy", "failed_call_error", "is_safe", "retry_delay"]

NOT_RUN = frozenset({Reason.RATE_LIMITED, Reason.POOL_FULL, Reason.ENGINE_STOPPING,
                     Reason.NO_LIVE_NODE})
"""Reasons that say the call did not run: safe to repeat for any method."""
_DETAILS = "grpc-status-details-bin"


@dataclass(frozen=True)
class RetryPolicy:
    """How many times, and how patiently, the client tries a call again (see the module's
    documentation for which calls)."""

    max_attempts: int = 4
    """Attempts in all, the first included."""
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    max_retry_after_s: float = 5.0
    """A rate limit that asks for a longer wait is raised to the caller instead."""


@functools.lru_cache(maxsize=1024)
def is_safe(method: str) -> bool:
    """Whether ``/pkg.Service/Method``'s contract declares it safe to repeat
    (``idempotency_level`` ``NO_SIDE_EFFECTS`` or ``IDEMPOTENT``). A method whose
    generated module was never imported here is unknown: not safe."""
    try:
        found = descriptor_pool.Default().FindMethodByName(method.strip("/").replace("/", "."))
    except KeyError:
        return False
    return found.GetOptions().idempotency_level != MethodOptions.IDEMPOTENCY_UNKNOWN


def retry_delay(policy: RetryPolicy | None, method: str, error: RpcError,
                attempt: int) -> float | None:
    """Seconds to wait before attempt ``attempt + 1`` of ``method`` after ``error``;
    None: do not try again."""
    if policy is None or attempt >= policy.max_attempts:
        return None
    backoff = random.uniform(0, min(policy.max_backoff_s, policy.initial_backoff_s
                                    * policy.multiplier ** (attempt - 1)))
    if error.reason in NOT_RUN:
        wait = error.retry_after_s
        if wait is None:
            return backoff
        return wait if wait <= policy.max_retry_after_s else None
    if error.code is grpc.StatusCode.UNAVAILABLE and is_safe(method):
        return max(backoff, error.retry_after_s or 0.0)
    return None


async def failed_call_error(call: Any, code: grpc.StatusCode) -> RpcError:
    """The mesh's error for a finished ``grpc.aio`` call that failed with ``code``."""
    status = None
    for key, value in await call.trailing_metadata() or ():
        if key == _DETAILS and isinstance(value, bytes):
            parsed = Status.FromString(value)
            if parsed.code == code.value[0]:
                status = parsed
    return error_from_status(code, await call.details() or "", status)
