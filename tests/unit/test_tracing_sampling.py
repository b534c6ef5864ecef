"""The gateway's sampling decision: made once, before any span, and kept by the SDK."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mesh.config import TracingSettings
from mesh.observability import tracing


class _Context:
    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    tracing.shutdown()
    exporter = InMemorySpanExporter()
    tracing.configure(TracingSettings(enabled=True, sample_ratio=0.001), exporter=exporter)
    yield exporter
    tracing.shutdown()


async def _served(handler: Any, calls: int, context: _Context | None = None) -> None:
    for _ in range(calls):
        assert await handler(b"", context or _Context()) == b"ok"


async def test_a_call_the_gateway_samples_is_recorded_whatever_the_ratio(
        exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    async def answer(request: bytes, context: Any) -> bytes:
        return b"ok"

    handler = tracing.traced_unary("/revo.echo.v1.EchoService/Echo", answer)
    monkeypatch.setattr(random, "random", lambda: 0.0)  # under any ratio: sampled
    await _served(handler, 20)
    # a second sampler applying the ratio (0.1 %) again would drop nearly all of them
    assert len(exporter.get_finished_spans()) == 20
    monkeypatch.setattr(random, "random", lambda: 0.5)  # over 0.1 %: not sampled
    await _served(handler, 20)
    assert len(exporter.get_finished_spans()) == 20


async def test_a_caller_s_decision_wins_over_the_ratio(
        exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    async def answer(request: bytes, context: Any) -> bytes:
        return b"ok"

    handler = tracing.traced_unary("/revo.echo.v1.EchoService/Echo", answer)
    monkeypatch.setattr(random, "random", lambda: 0.5)  # the gateway would not
    parent = "00-" + "ab" * 16 + "-" + "cd" * 8
    await _served(handler, 3, _Context((("traceparent", parent + "-01"),)))
    await _served(handler, 3, _Context((("traceparent", parent + "-00"),)))
    spans = exporter.get_finished_spans()
    assert len(spans) == 3
    assert {f"{s.context.trace_id:032x}" for s in spans} == {"ab" * 16}
