"""Budgets for paid models: reserved atomically before a call, settled after, durable."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from mesh.config import ModelSettings
from mesh.embedded.nats_server import NatsServer
from mesh.errors import ResourceExhausted
from mesh.models.budget import Budgets


def _user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


async def _budgets(url: str, **settings: object) -> tuple[NATS, Budgets]:
    nc = await nats.connect(url)
    budgets = Budgets(nc, ModelSettings.model_validate(settings))
    await budgets.start()
    return nc, budgets


async def test_fifty_concurrent_calls_cannot_overspend(nats_server: NatsServer) -> None:
    nc, budgets = await _budgets(nats_server.url, budget_usd=1.0)
    user = _user()
    try:
        outcomes = await asyncio.gather(*(budgets.reserve(user, 0.05) for _ in range(50)),
                                        return_exceptions=True)
        admitted = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, ResourceExhausted)]
        assert len(admitted) + len(refused) == 50, outcomes
        assert len(admitted) == 20  # exactly what fits: $1.00 / $0.05
        assert await budgets.spent_usd(user) == pytest.approx(1.0)
        assert "budget reached" in refused[0].message
        assert "Local models stay available" in refused[0].message
    finally:
        await nc.close()


async def test_settling_below_the_estimate_frees_room(nats_server: NatsServer) -> None:
    nc, budgets = await _budgets(nats_server.url, budget_usd=0.10)
    user = _user()
    try:
        first = await budgets.reserve(user, 0.06)
        with pytest.raises(ResourceExhausted):
            await budgets.reserve(user, 0.06)
        await budgets.settle(first, 0.01)  # the call cost less than estimated
        second = await budgets.reserve(user, 0.06)
        await budgets.release(second)  # the call failed before spending
        assert await budgets.spent_usd(user) == pytest.approx(0.01)
    finally:
        await nc.close()


async def test_free_models_stay_allowed_and_users_are_separate(nats_server: NatsServer) -> None:
    alice, bob = _user(), _user()
    nc, budgets = await _budgets(nats_server.url, budget_usd=0.0,
                                 user_budgets_usd={bob: 0.5})
    try:
        with pytest.raises(ResourceExhausted):
            await budgets.reserve(alice, 0.01)  # no budget for paid models
        free = await budgets.reserve(alice, 0.0)  # a local model
        assert free.micros == 0
        await budgets.reserve(bob, 0.4)
        assert await budgets.spent_usd(alice) == 0.0
        assert await budgets.spent_usd(bob) == pytest.approx(0.4)
    finally:
        await nc.close()


async def test_the_largest_share_spent_is_what_the_budget_gauge_reads(
        nats_server: NatsServer) -> None:
    alice, bob = _user(), _user()
    nc, budgets = await _budgets(nats_server.url, budget_usd=1.0, user_budgets_usd={bob: 0.1})
    try:
        assert budgets.max_used_ratio() == 0.0  # nobody reserved yet
        await budgets.reserve(alice, 0.5)
        assert budgets.max_used_ratio() == pytest.approx(0.5)
        held = await budgets.reserve(bob, 0.095)  # bob's own, smaller budget: 95% of it
        assert budgets.max_used_ratio() == pytest.approx(0.95)
        with pytest.raises(ResourceExhausted):
            await budgets.reserve(bob, 0.02)  # refused: what he has spent still counts
        assert budgets.max_used_ratio() == pytest.approx(0.95)
        await budgets.settle(held, 0.01)  # the call cost less: the share falls with it
        assert budgets.max_used_ratio() == pytest.approx(0.5)
        next_month = time.time() + 32 * 86400
        assert budgets.max_used_ratio(now=next_month) == 0.0  # a new period starts at 0
    finally:
        await nc.close()


async def test_spend_survives_a_nats_restart(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    user = _user()
    try:
        nc, budgets = await _budgets(server.url, budget_usd=1.0)
        await budgets.reserve(user, 0.25)
        await nc.close()
        port = server.port
        server.stop()
        server.port = port
        server.start()
        nc, budgets = await _budgets(server.url, budget_usd=1.0)
        assert await budgets.spent_usd(user) == pytest.approx(0.25)
        await nc.close()
    finally:
        server.stop()
