"""Request ids: unique across processes, cheap enough to make one per call."""

from __future__ import annotations

import itertools
import secrets

_PREFIX = secrets.token_hex(6)
_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A new id: this process's random prefix and a counter (``3f9a0c1b2d4e-42``)."""
    return f"{_PREFIX}-{next(_COUNTER)}"
