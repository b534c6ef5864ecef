"""Run leases in real JetStream KV: one holder at a time, expiry after the TTL, renewals that
keep a lease past many TTLs, losses reported to the node that had it."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from unittest import mock

import pytest
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from mesh.config import MeshConfig
from mesh.testing import wait_for
from mesh.transport.connection import MeshConnection, connect
from revo_engine_workflows.leases import Leases

TTL_S = 1.0  # the bucket's TTL when these tests create it (another test may have first)

NodeFactory = Callable[..., Awaitable[Leases]]


@pytest.fixture
async def node(mesh_config: Callable[..., MeshConfig]) -> AsyncIterator[NodeFactory]:
    made: list[tuple[MeshConnection, Leases]] = []

    async def make(name: str, *, keeper: bool = True,
                   on_lost: Callable[[str], None] | None = None) -> Leases:
        nc: MeshConnection = await connect(mesh_config().nats, f"test-leases-{name}")
        leases = Leases(nc, name, ttl_s=TTL_S, on_lost=on_lost)
        await leases.start()
        if not keeper:
            await leases.stop()  # the bucket stays open; nothing renews on its own
        made.append((nc, leases))
        return leases

    try:
        yield make
    finally:
        for nc, leases in made:
            await leases.stop()
            await nc.close()


def _run() -> str:
    return uuid.uuid4().hex


async def test_one_node_holds_a_lease_at_a_time(node: NodeFactory) -> None:
    a, b = await node("a"), await node("b")
    run = _run()
    assert await a.acquire(run)
    assert not await b.acquire(run)
    assert await a.acquire(run)  # already its own
    assert await a.holder(run) == "a"
    assert a.held() == [run]
    assert b.held() == []


async def test_a_held_lease_read_from_a_replica_behind_is_still_held(
        node: NodeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Taking a held lease conflicts, and nats-py then reads the key to see whether it was
    deleted; on a replicated bucket a replica behind its leader may answer "no such key".
    That is a held lease (False), not an error: StartRun answered INTERNAL with it under
    a partition in the cluster benchmark."""
    a, b = await node("a"), await node("b")
    run = _run()
    assert await a.acquire(run)
    bucket = b._bucket  # its _get is the read nats-py makes inside create
    replica_behind = mock.AsyncMock(side_effect=KeyNotFoundError())
    monkeypatch.setattr(bucket, "_get", replica_behind)
    assert not await b.acquire(run)
    assert replica_behind.await_count == 1  # the conflict's read happened, and said none
    assert await a.holder(run) == "a"


async def test_a_released_lease_is_free_at_once(node: NodeFactory) -> None:
    a, b = await node("a"), await node("b")
    run = _run()
    assert await a.acquire(run)
    await a.release(run)
    assert await a.holder(run) is None
    assert a.held() == []
    assert await b.acquire(run)
    await a.release(run)  # no longer a's: b's lease is left alone
    assert await a.holder(run) == "b"


async def test_a_lease_nobody_renews_expires_after_the_ttl(node: NodeFactory) -> None:
    a = await node("a", keeper=False)  # a node that died: nothing renews its leases
    b = await node("b", keeper=False)
    run = _run()
    assert await a.acquire(run)
    acquired = time.monotonic()
    assert not await b.acquire(run)
    await wait_for(lambda: b.acquire(run), timeout=a.ttl_s + 10, what="the lease to expire")
    assert time.monotonic() - acquired >= a.ttl_s  # not before its TTL
    assert await b.holder(run) == "b"
    assert not await a.renew(run)  # a finds out: it must stop working on the run
    assert a.held() == []


async def test_an_expired_lease_is_lost_even_when_nobody_took_it(node: NodeFactory) -> None:
    a = await node("a", keeper=False)
    run = _run()
    assert await a.acquire(run)
    await wait_for(lambda: _gone(a, run), timeout=a.ttl_s + 10, what="the lease to expire")
    assert not await a.renew(run)
    assert await a.acquire(run)  # taking it again is acquiring it anew


async def _gone(leases: Leases, run: str) -> bool:
    return await leases.holder(run) is None


async def test_renewals_keep_a_lease_past_several_ttls(node: NodeFactory) -> None:
    lost: list[str] = []
    a = await node("a", on_lost=lost.append)
    b = await node("b", keeper=False)
    run = _run()
    assert await a.acquire(run)
    start = time.monotonic()

    async def three_ttls_held() -> bool:
        assert await b.holder(run) == "a", "the lease lapsed although its node renews it"
        assert not await b.acquire(run)
        return time.monotonic() - start > 3 * a.ttl_s

    await wait_for(three_ttls_held, timeout=3 * a.ttl_s + 10, what="three TTLs to pass")
    assert lost == []
    assert a.held() == [run]


async def test_a_lease_taken_from_outside_is_reported_lost(node: NodeFactory) -> None:
    lost: list[str] = []
    a = await node("a", on_lost=lost.append)
    b = await node("b", keeper=False)
    run, kept = _run(), _run()
    assert await a.acquire(run)
    assert await a.acquire(kept)
    await b._bucket.delete(run)  # an operator, or a partition that let it expire
    assert await b.acquire(run)
    await wait_for(lambda: lost == [run], timeout=a.ttl_s + 10, what="the loss reported")
    assert a.held() == [kept]
    assert not await a.renew(run)
    assert await a.holder(run) == "b"


async def test_renew_says_when_another_node_took_the_lease(node: NodeFactory) -> None:
    a = await node("a", keeper=False)
    b = await node("b", keeper=False)
    run = _run()
    assert await a.acquire(run)
    assert await a.renew(run)
    await b._bucket.delete(run)
    assert await b.acquire(run)
    assert not await a.renew(run)
    assert not await a.renew(run)  # and keeps saying so
    with pytest.raises(KeyWrongLastSequenceError):  # b's lease is intact
        await b._bucket.create(run, b"x")


async def test_a_renewal_stored_without_its_acknowledgement_is_recognised(
        node: NodeFactory) -> None:
    a = await node("a", keeper=False)
    run = _run()
    assert await a.acquire(run)
    # a's renewal reached the server but its acknowledgement did not reach a
    await a._bucket.update(run, a._value, last=a._held[run])
    assert await a.renew(run)
    assert a.held() == [run]


async def test_a_node_restarted_under_the_same_id_is_not_its_former_self(
        node: NodeFactory) -> None:
    old = await node("a", keeper=False)
    new = await node("a", keeper=False)
    run = _run()
    assert await old.acquire(run)
    assert not await new.acquire(run)
    await new._bucket.delete(run)  # old's lease lapsed while it was paused, say
    assert await new.acquire(run)
    assert not await old.renew(run)  # same node id, but not the lease old wrote


def test_a_ttl_under_the_servers_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match=r"at least 0\.1 s"):
        Leases(None, "a", ttl_s=0.05)  # type: ignore[arg-type]

