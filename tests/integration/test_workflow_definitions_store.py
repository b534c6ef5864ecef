"""Workflow definitions in real JetStream KV: immutable versions, identical creates,
concurrent creates of one name."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from mesh.config import MeshConfig
from mesh.transport.connection import MeshConnection, connect
from revo_engine_workflows.definitions_store import DefinitionStore
from revo_engine_workflows.v1 import workflows_pb2 as pb


@pytest.fixture
async def store(mesh_config: Callable[..., MeshConfig]) -> AsyncIterator[DefinitionStore]:
    nc: MeshConnection = await connect(mesh_config().nats, "test-workflow-definitions")
    store = DefinitionStore(nc)
    await store.start()
    try:
        yield store
    finally:
        await nc.close()


def _name() -> str:
    return f"wf-{uuid.uuid4().hex[:12]}"


def _workflow(name: str, description: str = "", method: str = "/a.B/C") -> pb.Workflow:
    workflow = pb.Workflow(name=name, description=description)
    step = workflow.steps.add(id="a")
    step.call.method = method
    step.call.request.update({"text": "hello", "k": 3, "nested": {"x": [1, 2]}})
    return workflow


async def test_versions_are_numbered_stored_and_immutable(store: DefinitionStore) -> None:
    name = _name()
    assert await store.get(name) is None
    first, created = await store.create(_workflow(name, "one"), "alice")
    assert created
    assert first.version == 1
    assert first.created_by == "alice"
    assert first.created_at.seconds > 0
    second, created = await store.create(_workflow(name, "two"), "bob")
    assert created
    assert second.version == 2
    assert second.created_by == "bob"
    assert await store.get(name) == second  # 0: the latest
    assert await store.get(name, 1) == first  # an old version stays as it was
    assert await store.get(name, 2) == second
    assert await store.get(name, 3) is None


async def test_an_identical_definition_returns_the_latest_and_stores_nothing(
        store: DefinitionStore) -> None:
    name = _name()
    first, _ = await store.create(_workflow(name, "one"), "alice")
    again = _workflow(name, "one")
    again.version, again.created_by = 7, "someone"  # ignored on input
    again.created_at.GetCurrentTime()
    same, created = await store.create(again, "bob")
    assert not created
    assert same == first
    assert await store.get(name, 2) is None
    # identical to an older version but not to the latest: a new version
    await store.create(_workflow(name, "two"), "alice")
    third, created = await store.create(_workflow(name, "one"), "alice")
    assert created
    assert third.version == 3


async def test_concurrent_creates_of_one_name_each_get_their_own_version(
        store: DefinitionStore) -> None:
    name = _name()
    results = await asyncio.gather(
        *(store.create(_workflow(name, f"definition {i}"), f"user{i}") for i in range(5)))
    assert all(created for _, created in results)
    assert sorted(w.version for w, _ in results) == [1, 2, 3, 4, 5]
    for workflow, _ in results:  # each stored version is the one its create returned
        assert await store.get(name, workflow.version) == workflow
    latest = await store.get(name)
    assert latest is not None
    assert latest.version == 5
    assert await store.get(name, 6) is None


async def test_concurrent_identical_creates_store_one_version(store: DefinitionStore) -> None:
    name = _name()
    results = await asyncio.gather(*(store.create(_workflow(name), "alice") for _ in range(4)))
    assert [created for _, created in results].count(True) == 1
    assert {w.version for w, _ in results} == {1}
    assert await store.get(name, 2) is None


async def test_names_with_dots_are_kept_apart(store: DefinitionStore) -> None:
    base = _name()
    names = [base, f"{base}.v1", f"{base}.latest", f"{base}..x", f"{base}."]
    for i, name in enumerate(names):
        stored, created = await store.create(_workflow(name, f"d{i}"), "alice")
        assert created
        assert stored.version == 1
    for i, name in enumerate(names):
        got = await store.get(name)
        assert got is not None
        assert (got.name, got.description) == (name, f"d{i}")


async def test_list_latest_gives_each_workflows_latest_version(store: DefinitionStore) -> None:
    first, second = sorted([_name(), _name()])
    await store.create(_workflow(first, "one"), "alice")
    await store.create(_workflow(first, "two"), "alice")
    await store.create(_workflow(second, "only"), "alice")
    listed = {w.name: w for w in await store.list_latest()}
    assert (listed[first].version, listed[first].description) == (2, "two")
    assert (listed[second].version, listed[second].description) == (1, "only")


async def test_a_version_whose_creator_died_before_the_pointer_is_kept(
        store: DefinitionStore) -> None:
    name = _name()
    await store.create(_workflow(name, "one"), "alice")
    orphan = _workflow(name, "two")
    orphan.version = 2
    # the creator wrote version 2 and died before moving the pointer
    await store._bucket.update(f"{name}.v2", orphan.SerializeToString(), last=0)
    third, created = await store.create(_workflow(name, "three"), "bob")
    assert created
    assert third.version == 3
    assert await store.get(name, 2) == orphan
    assert await store.get(name) == third
