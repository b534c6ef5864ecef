"""Unit tests open no sockets and start no servers; pykka actors must not outlive a test."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pykka
import pytest


@pytest.fixture(autouse=True)
def no_leftover_actors() -> Iterator[None]:
    yield
    # Actors stopped with block=False may take a moment to unregister.
    deadline = time.monotonic() + 2.0
    while pykka.ActorRegistry.get_all() and time.monotonic() < deadline:
        time.sleep(0.01)
    leftover = pykka.ActorRegistry.get_all()
    if leftover:
        pykka.ActorRegistry.stop_all(block=True, timeout=5)
        pytest.fail(f"{len(leftover)} pykka actors outlived the test: {leftover}")
