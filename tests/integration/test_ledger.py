"""The ledger of model calls: durable, summed by user, model and period."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import nats
import pytest

from mesh.embedded.nats_server import NatsServer
from mesh.models.ledger import Entry, Ledger, summarize


def _entry(user: str, model: str, cost: float, when: float, local: bool = False) -> Entry:
    return Entry(time=when, user=user, model=model, provider="triton" if local else "openai",
                 local=local, prompt_tokens=10, completion_tokens=5, cached_tokens=2,
                 cost_usd=cost, savings_usd=0.01 if local else 0.0, latency_ms=3.0)


async def test_entries_survive_a_restart_and_sum_by_user_model_period(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    alice, bob = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    now = time.time()
    try:
        nc = await nats.connect(server.url)
        ledger = Ledger(nc)
        await ledger.start()
        for entry in (_entry(alice, "cheap", 0.002, now), _entry(alice, "cheap", 0.003, now),
                      _entry(alice, "local", 0.0, now, local=True),
                      _entry(bob, "cheap", 0.5, now)):
            await ledger.record(entry)
        await nc.close()
        port = server.port
        server.stop()
        server.port = port
        server.start()
        nc = await nats.connect(server.url)
        ledger = Ledger(nc)
        await ledger.start()
        mine = await ledger.entries(alice)
        everyone = await ledger.entries("*")
        await nc.close()
    finally:
        server.stop()
    assert len(mine) == 3
    assert len(everyone) == 4
    rows = summarize(mine)
    assert [(r.model, r.requests) for r in rows] == [("cheap", 2), ("local", 1)]
    assert rows[0].cost_usd == pytest.approx(0.005)
    assert rows[0].prompt_tokens == 20
    assert rows[0].cached_tokens == 4
    assert rows[1].local
    assert rows[1].savings_usd == pytest.approx(0.01)


async def test_an_empty_ledger_reads_as_nothing(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        ledger = Ledger(nc)
        await ledger.start()
        assert await ledger.entries(f"nobody-{uuid.uuid4().hex[:6]}") == []
    finally:
        await nc.close()
