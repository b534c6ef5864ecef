"""Perfect Recall through a real gateway and nodes, on milvus-lite and the real Milvus server.

Each test runs against both backends (``backend`` param): a milvus-lite file under the
test's REVO_HOME, and the Milvus standalone server from the ``milvus`` wheel (one per
session, a fresh collection per test).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import grpc
import nats
import numpy as np
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Value

from mesh.engine import Context
from mesh.errors import Unavailable
from mesh.runtime.node import Node
from mesh.testing import MeshHarness, wait_for
from revo_engine_recall.changes import STREAM as CHANGES_STREAM
from revo_engine_recall.v1 import recall_pb2 as pb
from revo_engine_recall.v1 import recall_pb2_grpc
from tests.integration.recall_support import (
    MINE,
    PROJECT,
    collection,
    memory,
    milvus_server_uri,
    near,
    vectors,
)
from tests.integration.test_auth import AUTH, add_user, bearer, login, remove_users_since

__all__ = ["milvus_server_uri"]  # the fixture, re-exported for pytest

SERVICE = "revo.recall.v1.RecallService"
PLUGINS = {"only": ["recall"]}
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def seconds(value: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


@pytest.fixture(params=["lite", "server"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Engine settings for one backend: its Milvus and a collection of its own."""
    settings: dict[str, Any] = {"collection": collection(), "purge_interval_s": 0.3}
    if request.param == "server":
        settings["milvus_uri"] = request.getfixturevalue("milvus_server_uri")
    return settings


@pytest.fixture
async def start(mesh_harness: Any, backend: dict[str, Any]) -> Any:
    async def make(nodes: int = 1, auth: dict[str, Any] | None = None,
                   **settings: Any) -> MeshHarness:
        harness: MeshHarness = await mesh_harness(
            plugins=PLUGINS, nodes=nodes, engines={"recall": {**backend, **settings}},
            **({"auth": auth} if auth else {}))
        await harness.wait_for_service(SERVICE, nodes=nodes)
        await wait_for(lambda: all(_engine(n).replica.index is not None for n in harness.nodes),
                       30, "the memory index loaded")
        return harness

    return make


def _engine(node: Any) -> Any:
    return node.pools["recall"].engine


def stub(mesh: MeshHarness) -> Any:
    return recall_pb2_grpc.RecallServiceStub(mesh.channel)


async def _search(recall: Any, vector: np.ndarray[Any, Any], **fields: Any) -> pb.SearchResponse:
    request = pb.SearchRequest(**fields)
    request.vector.extend(vector.tolist())
    found: pb.SearchResponse = await recall.Search(request, timeout=10)
    return found


async def test_remember_search_get_update_forget_round_trip(start: Any) -> None:
    recall = stub(await start())
    v = vectors(3)
    stored = await recall.Remember(pb.RememberRequest(memories=[
        memory("the build uses uv", v[0], metadata={"kind": "fact", "n": 1}),
        memory("tests need nats-server", v[1], metadata={"kind": "fact", "n": 2}),
        memory("alice prefers tabs", v[2], scope=MINE, metadata={"kind": "pref"}),
    ]), timeout=10)
    assert [r.outcome for r in stored.results] == [pb.OUTCOME_STORED] * 3
    assert stored.sequence > 0
    ids = [r.id for r in stored.results]

    found = await _search(recall, v[1], top_k=2)
    assert found.hits[0].memory.id == ids[1]
    assert found.hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert found.hits[0].memory.metadata["kind"] == "fact"
    only_mine = await _search(recall, v[1], top_k=5, scopes=[MINE])
    assert [h.memory.id for h in only_mine.hits] == [ids[2]]

    got = await recall.Get(pb.GetRequest(ids=[ids[0], "f" * 32]), timeout=10)
    assert [m.text for m in got.memories] == ["the build uses uv"]
    assert list(got.missing) == ["f" * 32]

    moved = near(v[2], 0.1)
    update = pb.UpdateRequest(id=ids[0], text="the build uses uv and ruff")
    update.vector.extend(moved.tolist())
    update.metadata.update({"n": 3})
    updated = await recall.Update(update, timeout=10)
    assert updated.memory.text == "the build uses uv and ruff"
    assert dict(updated.memory.metadata) == {"kind": "fact", "n": 3}
    nearest = await _search(recall, moved, top_k=1, scopes=[PROJECT])
    assert nearest.hits[0].memory.id == ids[0]  # re-embedded: found by its new vector

    forgot = await recall.Forget(pb.ForgetRequest(ids=[ids[0], ids[1]]), timeout=10)
    assert forgot.forgotten == 2
    stats = await recall.Stats(pb.StatsRequest(), timeout=10)
    assert stats.memories == 1
    assert (await recall.Get(pb.GetRequest(ids=ids[:2]), timeout=10)).missing == ids[:2]


async def test_metadata_filters_and_min_score(start: Any) -> None:
    recall = stub(await start())
    v = vectors(6, seed=3)
    await recall.Remember(pb.RememberRequest(memories=[
        memory(f"note {i}", v[i], metadata={"lang": "py" if i % 2 else "go", "n": i,
                                            "draft": i == 5})
        for i in range(6)]), timeout=10)

    def condition(key: str, op: Any = 0, value: Any = None, values: Any = ()) -> pb.Condition:
        c = pb.Condition(key=key, op=op, values=[_value(x) for x in values])
        if value is not None:
            c.value.CopyFrom(_value(value))
        return c

    async def texts(*conditions: pb.Condition, **fields: Any) -> set[str]:
        found = await _search(recall, v[0], top_k=10, filters=list(conditions), **fields)
        return {h.memory.text for h in found.hits}

    assert await texts(condition("lang", value="py")) == {"note 1", "note 3", "note 5"}
    assert await texts(condition("n", pb.OPERATOR_GREATER_EQUAL, 4)) == {"note 4", "note 5"}
    assert await texts(condition("n", pb.OPERATOR_IN, values=[0, 2]),
                       condition("lang", pb.OPERATOR_NOT_EQUAL, "py")) == {"note 0", "note 2"}
    assert await texts(condition("draft", value=True)) == {"note 5"}
    assert await texts(condition("missing", pb.OPERATOR_EXISTS)) == set()
    assert await texts(min_score=0.99) == {"note 0"}  # random others are near 0
    forgot = await recall.Forget(pb.ForgetRequest(
        scopes=[PROJECT], filters=[condition("lang", value="go")]), timeout=10)
    assert forgot.forgotten == 3
    assert await texts() == {"note 1", "note 3", "note 5"}


def _value(x: Any) -> Value:
    value = Value()
    if isinstance(x, bool):
        value.bool_value = x
    elif isinstance(x, int | float):
        value.number_value = x
    else:
        value.string_value = x
    return value


TTL_S = 3.0


async def test_expired_memories_are_not_returned_and_are_purged(start: Any) -> None:
    mesh = await start()
    recall = stub(mesh)
    v = vectors(2, seed=5)
    stored = await recall.Remember(pb.RememberRequest(memories=[
        memory("short lived", v[0], ttl=seconds(TTL_S)), memory("kept", v[1])]), timeout=10)
    short = stored.results[0].id
    found = await _search(recall, v[0], top_k=2)
    assert found.hits[0].memory.id == short  # (a 1 s TTL had expired here on a busy CI box)
    assert found.hits[0].memory.HasField("expires_at")
    expires_ms = found.hits[0].memory.expires_at.ToMilliseconds()
    # the node compares expires_at with the same clock (the test runs it in-process)
    await wait_for(lambda: time.time() * 1000 > expires_ms, TTL_S + 10, "the memory to expire")
    assert [h.memory.text for h in (await _search(recall, v[0], top_k=2)).hits] == ["kept"]
    assert list((await recall.Get(pb.GetRequest(ids=[short]), timeout=10)).missing) == [short]
    engine = _engine(mesh.nodes[0])
    await wait_for(lambda: engine.purged >= 1, 10, "the purge")
    remaining = await engine._on_milvus(engine.store.get, [short])
    assert remaining == []  # gone from Milvus too


async def test_identical_memories_dedupe_and_near_duplicates_merge(start: Any) -> None:
    recall = stub(await start(dedup_threshold=0.95))
    v = vectors(2, seed=7)
    first = await recall.Remember(pb.RememberRequest(memories=[
        memory("deploys go out on Tuesdays", v[0], metadata={"a": 1})]), timeout=10)
    again = await recall.Remember(pb.RememberRequest(memories=[
        memory("  deploys go out   on Tuesdays ", v[0], metadata={"b": 2}),
        memory("Deploys ship on Tuesdays", near(v[0], 0.2), metadata={"c": 3}),
        memory("the cache is redis", v[1]),
        memory("the cache is Redis 7", near(v[1], 0.1)),  # near one earlier in the batch
    ]), timeout=10)
    one = first.results[0].id
    assert [(r.outcome, r.id) for r in again.results[:2]] == [
        (pb.OUTCOME_DUPLICATE, one), (pb.OUTCOME_MERGED, one)]
    assert again.results[1].similarity > 0.95
    assert again.results[2].outcome == pb.OUTCOME_STORED
    assert (again.results[3].outcome, again.results[3].id) == (pb.OUTCOME_MERGED,
                                                               again.results[2].id)
    (kept,) = (await recall.Get(pb.GetRequest(ids=[one]), timeout=10)).memories
    assert (kept.text, kept.merged) == ("deploys go out on Tuesdays", 1)
    assert dict(kept.metadata) == {"a": 1, "b": 2, "c": 3}
    assert (await recall.Stats(pb.StatsRequest(), timeout=10)).memories == 2


async def test_a_retried_write_with_a_client_id_stores_once(start: Any) -> None:
    recall = stub(await start())
    v = vectors(1, seed=9)[0]
    request = pb.RememberRequest(memories=[memory("ran the migration", v, client_id="op-42")])
    replies = await asyncio.gather(*(recall.Remember(request, timeout=10) for _ in range(5)))
    ids = {r.results[0].id for r in replies}
    assert len(ids) == 1
    assert sorted(r.results[0].outcome for r in replies) == [pb.OUTCOME_STORED] + [
        pb.OUTCOME_UNCHANGED] * 4
    other = near(v, 2.0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await recall.Remember(pb.RememberRequest(memories=[
            memory("a different text", other, client_id="op-42")]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "op-42" in str(caught.value.details())
    assert (await recall.Stats(pb.StatsRequest(), timeout=10)).memories == 1


async def test_a_call_with_an_idempotency_key_stores_each_memory_once(start: Any) -> None:
    recall = stub(await start())
    first, second = vectors(2, seed=12)
    request = pb.RememberRequest(memories=[memory("wrote the release notes", first),
                                           memory("tagged v2.1", second)])
    key = (("idempotency-key", f"run-{time.time_ns()}/remember"),)
    stored = await recall.Remember(request, timeout=10, metadata=key)
    again = await recall.Remember(request, timeout=10, metadata=key)
    assert [r.outcome for r in stored.results] == [pb.OUTCOME_STORED] * 2
    assert [r.outcome for r in again.results] == [pb.OUTCOME_UNCHANGED] * 2
    assert [r.id for r in again.results] == [r.id for r in stored.results]
    (kept,) = (await recall.Get(pb.GetRequest(ids=[stored.results[1].id]),
                                timeout=10)).memories
    assert kept.client_id == f"{key[0][1]}#1", "each memory's client_id comes from the key"
    assert (await recall.Stats(pb.StatsRequest(), timeout=10)).memories == 2


async def test_concurrent_writers_on_two_nodes_lose_nothing(start: Any) -> None:
    mesh = await start(nodes=2)
    recall = stub(mesh)
    writers, batches, per_batch = 6, 4, 25
    data = vectors(writers * batches * per_batch, seed=11)

    async def writer(w: int) -> int:
        last = 0
        for b in range(batches):
            base = (w * batches + b) * per_batch
            reply = await recall.Remember(pb.RememberRequest(memories=[
                memory(f"w{w} b{b} m{i}", data[base + i]) for i in range(per_batch)]),
                timeout=20)
            assert {r.outcome for r in reply.results} == {pb.OUTCOME_STORED}
            last = max(last, reply.sequence)
        return last

    last = max(await asyncio.gather(*(writer(w) for w in range(writers))))
    total = writers * batches * per_batch
    wrote_last = await _writer_of(mesh, last)
    (other,) = [n.id for n in mesh.nodes if n.id != wrote_last]
    answered: Counter[str] = Counter()
    for _ in range(60):  # NATS gives each search to either node: until the other answered
        before = {n.id: _searches(n) for n in mesh.nodes}
        found = await _search(recall, data[-1], top_k=1, after_sequence=last)
        assert found.hits[0].memory.text == f"w{writers - 1} b{batches - 1} m{per_batch - 1}"
        (by,) = [n.id for n in mesh.nodes if _searches(n) > before[n.id]]
        answered[by] += 1
        if answered[other]:
            break
    assert answered[other], f"only {wrote_last}, which wrote change {last}, answered"
    for node in mesh.nodes:
        index_of = _engine(node)

        def holds_all(engine: Any = index_of) -> bool:
            return bool(len(engine.replica.index) == total)

        await wait_for(holds_all, 10, f"{total} memories in {node.id}'s index")


def _searches(node: Node) -> float:
    """Vector searches the node answered (its retrieval histogram's count)."""
    registry = node.metrics.registry
    assert registry is not None
    return sum(registry.get_sample_value(
        "perfect_recall_retrieval_duration_seconds_count",
        {"node": node.id, "query": "vector", "index": index}) or 0.0
        for index in ("exact", "hnsw"))


async def _writer_of(mesh: MeshHarness, sequence: int) -> str:
    """The node that wrote change ``sequence``, as the change feed records it."""
    nc = await nats.connect(mesh.config.nats.url)
    try:
        message = await nc.jetstream().get_msg(CHANGES_STREAM, sequence)
        return pb.Change.FromString(message.data or b"").node
    finally:
        await nc.close()


REMEMBER = f"/{SERVICE}/Remember"
SEARCH = f"/{SERVICE}/Search"


async def _call_node(node: Any, path: str, request: Any, response: Any,
                     timeout: float = 30.0) -> Any:
    """``request`` served by this node's engine (the path a co-located gateway takes)."""
    ctx = Context(method=path, request_id=f"test-{time.monotonic_ns()}",
                  deadline=time.monotonic() + timeout, node_id=node.id)
    return response.FromString(await node.call(path, request.SerializeToString(), ctx))


@pytest.mark.parametrize("backend", ["lite"], indirect=True)
async def test_a_read_after_a_write_waits_on_a_node_that_has_not_applied_it(
        start: Any) -> None:
    """Read-your-writes on any node: the write goes to one node and the read, with its
    sequence, to the other while that one is held behind the change feed."""
    mesh = await start(nodes=2)
    writer, reader = mesh.nodes
    behind = _engine(reader)
    v = vectors(1, seed=37)[0]
    # the reader applies changes under this lock: holding it keeps the reader behind
    await behind.replica._swapping.acquire()
    try:
        stored = await _call_node(writer, REMEMBER, pb.RememberRequest(
            memories=[memory("written on the other node", v)]), pb.RememberResponse)
        sequence = stored.sequence
        assert await _writer_of(mesh, sequence) == writer.id
        assert behind.feed.applied < sequence
        search = pb.SearchRequest(top_k=1, after_sequence=sequence, vector=v.tolist())
        with pytest.raises(Unavailable, match=f"not yet {sequence}"):  # not a stale answer
            await _call_node(reader, SEARCH, search, pb.SearchResponse)
        assert behind.feed.applied < sequence
        answered = _searches(reader)
        reading = asyncio.ensure_future(_call_node(reader, SEARCH, search,
                                                   pb.SearchResponse))
        await wait_for(lambda: reader.pools["recall"].pending == 1, 10,
                       "the reader to be serving the search")
        assert not reading.done()
    finally:
        behind.replica._swapping.release()
    found = await reading
    assert [h.memory.id for h in found.hits] == [stored.results[0].id]
    assert behind.feed.applied >= sequence
    assert _searches(reader) == answered + 1


async def test_memories_survive_a_node_restart(start: Any, mesh_harness: Any,
                                               backend: dict[str, Any]) -> None:
    mesh = await start()
    recall = stub(mesh)
    v = vectors(5, seed=13)
    stored = await recall.Remember(pb.RememberRequest(memories=[
        memory(f"durable {i}", v[i]) for i in range(5)]), timeout=10)
    await mesh.nodes[0].stop()
    mesh.nodes.clear()
    again = await start()  # a new node on the same home (milvus-lite file) or server
    # it reported its load as it went: 5 of the 5 memories, then loaded
    progress = again.nodes[0].pools["recall"].progress
    assert (progress.done, progress.total, progress.unit) == (5, 5, "memories")
    assert not progress.loading
    recall = stub(again)
    found = await _search(recall, v[3], top_k=1)
    assert found.hits[0].memory.id == stored.results[3].id
    assert (await recall.Stats(pb.StatsRequest(), timeout=10)).memories == 5


BAD: list[tuple[str, Any, str]] = [
    ("empty text", lambda v: pb.RememberRequest(memories=[memory("  ", v)]), "text is empty"),
    ("wrong dimension", lambda v: pb.RememberRequest(memories=[memory("x", v[:100])]),
     "100 dimensions"),
    ("unknown scope", lambda v: pb.RememberRequest(memories=[
        memory("x", v, scope=pb.Scope(kind=9, id="x"))]),  # type: ignore[arg-type]
     "unknown scope kind"),
    ("bad scope id", lambda v: pb.RememberRequest(memories=[
        memory("x", v, scope=pb.Scope(kind=pb.SCOPE_KIND_PROJECT, id='a" or 1'))]),
     "letters, digits"),
    ("bad metadata key", lambda v: pb.RememberRequest(memories=[
        memory("x", v, metadata={"a b": 1})]), "metadata key"),
    ("one bad item spoils the batch", lambda v: pb.RememberRequest(memories=[
        memory("fine", v), memory("", v)]), "memories[1]: text is empty"),
    ("no memories", lambda v: pb.RememberRequest(), "at least one"),
    ("zero ttl", lambda v: pb.RememberRequest(memories=[memory("x", v, ttl=seconds(0))]),
     "ttl must be more than 0"),
]

BAD_SEARCH: list[tuple[str, dict[str, Any], str]] = [
    ("top_k of 10000", {"top_k": 10_000}, "top_k must be 1 to 1000"),
    ("quote in a filter value", {"filters": [pb.Condition(
        key="lang", value=Value(string_value='py" or lang != "x'))]}, "quotes"),
    ("operator in a filter key", {"filters": [pb.Condition(
        key="lang == 'x' or 1", value=Value(string_value="py"))]}, "filter key"),
    ("unknown operator", {"filters": [pb.Condition(key="n", op=42,  # type: ignore[arg-type]
                                                   value=Value(number_value=1))]},
     "unknown operator"),
    ("min_score out of range", {"min_score": 2.0}, "min_score"),
]


async def test_bad_input_is_invalid_argument_and_stores_nothing(start: Any) -> None:
    recall = stub(await start())
    v = vectors(1, seed=17)[0]
    for name, make, says in BAD:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await recall.Remember(make(v), timeout=10)
        assert caught.value.code() == INVALID, name
        assert says in str(caught.value.details()), (name, caught.value.details())
    for name, fields, says in BAD_SEARCH:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _search(recall, v, **fields)
        assert caught.value.code() == INVALID, name
        assert says in str(caught.value.details()), (name, caught.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # top_k 0 means 10; both: one only
        await recall.Search(pb.SearchRequest(text="x", vector=v.tolist()), timeout=10)
    assert caught.value.code() == INVALID
    assert (await recall.Stats(pb.StatsRequest(), timeout=10)).memories == 0


@pytest.mark.parametrize("backend", ["lite"], indirect=True)
async def test_listing_a_scope_while_others_write_returns_each_memory_once(
        start: Any) -> None:
    """ListMemories pages through a scope (two nodes answer the pages in turn) while a
    write lands beside every page: each memory there at the start comes exactly once, in
    creation order, and nothing of another scope or outside the filters comes at all."""
    recall = stub(await start(nodes=2))
    v = vectors(200, seed=23)
    present = await recall.Remember(pb.RememberRequest(memories=[
        memory(f"kept {i}", v[i], metadata={"even": i % 2 == 0}) for i in range(40)]
        + [memory("another scope", v[40], scope=MINE)]), timeout=20)
    at_start = {r.id for r in present.results[:40]}
    first = pb.ListMemoriesRequest(scope=PROJECT, page_size=6,
                                   after_sequence=present.sequence)
    listed: list[pb.Memory] = []
    token, written = "", 41
    while True:
        request = pb.ListMemoriesRequest()
        request.CopyFrom(first)
        request.page_token = token
        # beside each page: new memories, and one already listed forgotten (an offset
        # would then skip a memory)
        write = recall.Remember(pb.RememberRequest(memories=[
            memory(f"written while paging {written + i}", v[written + i]) for i in range(3)]),
            timeout=20)
        forget = (recall.Forget(pb.ForgetRequest(ids=[listed[-1].id]), timeout=20)
                  if listed else asyncio.sleep(0))
        _, _, page = await asyncio.gather(write, forget, recall.ListMemories(request,
                                                                             timeout=10))
        written += 3
        assert len(page.memories) <= 6
        listed += page.memories
        if not (token := page.next_page_token):
            break
    ids = [m.id for m in listed]
    assert len(ids) == len(set(ids)), "a memory was listed twice"
    assert at_start <= set(ids)
    assert {m.scope.kind for m in listed} == {pb.SCOPE_KIND_PROJECT}
    order = [(m.created_at.ToMilliseconds(), m.id) for m in listed]
    assert order == sorted(order)

    evens = pb.ListMemoriesRequest(scope=PROJECT, page_size=1000, filters=[pb.Condition(
        key="even", value=Value(bool_value=True))])
    found = await recall.ListMemories(evens, timeout=10)
    forgotten = {m.text for m in listed} - {m.text for m in (await recall.ListMemories(
        pb.ListMemoriesRequest(scope=PROJECT, page_size=1000), timeout=10)).memories}
    assert forgotten
    assert {m.text for m in found.memories} == {f"kept {i}" for i in range(0, 40, 2)
                                                } - forgotten
    one = await recall.ListMemories(pb.ListMemoriesRequest(scope=PROJECT, page_size=1),
                                    timeout=10)
    for bad, says in [
            (pb.ListMemoriesRequest(), "scope"),
            (pb.ListMemoriesRequest(scope=PROJECT, page_size=-1), "page_size"),
            (pb.ListMemoriesRequest(scope=PROJECT, page_token="??"), "page_token is not one"),
            (pb.ListMemoriesRequest(scope=MINE, page_token=one.next_page_token),
             "other filters")]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await recall.ListMemories(bad, timeout=10)
        assert caught.value.code() == INVALID, says
        assert says in str(caught.value.details())


async def test_a_scope_quota_refuses_the_whole_batch(start: Any) -> None:
    recall = stub(await start(scope_quota=3))
    v = vectors(5, seed=19)
    await recall.Remember(pb.RememberRequest(memories=[memory("a", v[0])]), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await recall.Remember(pb.RememberRequest(memories=[
            memory(t, v[i + 1]) for i, t in enumerate("bcd")]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "quota of 3" in str(caught.value.details())
    assert (await recall.Stats(pb.StatsRequest(), timeout=10)).memories == 1


@pytest.mark.parametrize("backend", ["lite"], indirect=True)
async def test_callers_see_only_scopes_they_may(start: Any) -> None:
    since = time.time()
    mesh = await start(auth=AUTH, projects={"apollo": ["*"], "secret": []})
    try:
        recall = stub(mesh)
        alice, bob, admin = [await add_user(mesh, r) for r in ("developer", "developer",
                                                                "admin")]
        as_alice, as_bob, as_admin = [bearer((await login(mesh.channel, u)).access_token)
                                      for u in (alice, bob, admin)]
        v = vectors(3, seed=23)
        await recall.Remember(pb.RememberRequest(memories=[
            memory("alice's own", v[0], scope=MINE),
            memory("alice's session", v[1], scope=pb.Scope(kind=pb.SCOPE_KIND_SESSION,
                                                           id="s1")),
            memory("shared", v[2])]), metadata=as_alice, timeout=10)
        request = pb.SearchRequest(top_k=10, vector=v[0].tolist())
        seen = await recall.Search(request, metadata=as_bob, timeout=10)
        assert [h.memory.text for h in seen.hits] == ["shared"]
        seen = await recall.Search(request, metadata=as_alice, timeout=10)
        assert {h.memory.text for h in seen.hits} == {"alice's own", "alice's session",
                                                       "shared"}
        theirs = pb.Scope(kind=pb.SCOPE_KIND_USER, user=alice)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await recall.Search(pb.SearchRequest(top_k=3, vector=v[0].tolist(),
                                                 scopes=[theirs]), metadata=as_bob,
                                timeout=10)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await recall.Remember(pb.RememberRequest(memories=[memory(
                "x", v[0], scope=pb.Scope(kind=pb.SCOPE_KIND_PROJECT, id="secret"))]),
                metadata=as_bob, timeout=10)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        found = await recall.Search(pb.SearchRequest(top_k=3, vector=v[0].tolist(),
                                                     scopes=[theirs]), metadata=as_admin,
                                    timeout=10)
        assert [h.memory.text for h in found.hits] == ["alice's own"]
        ids = [h.memory.id for h in found.hits]
        assert list((await recall.Get(pb.GetRequest(ids=ids), metadata=as_bob,
                                      timeout=10)).missing) == ids
        forgot = await recall.Forget(pb.ForgetRequest(ids=ids), metadata=as_bob, timeout=10)
        assert forgot.forgotten == 0
        stats = await recall.Stats(pb.StatsRequest(), metadata=as_bob, timeout=10)
        assert stats.memories == 1
    finally:
        await remove_users_since(mesh, since)


@pytest.mark.parametrize("backend", ["lite"], indirect=True)
async def test_searches_are_timed_in_the_retrieval_histogram(start: Any) -> None:
    mesh = await start()
    recall = stub(mesh)
    v = vectors(1, seed=29)[0]
    node = mesh.nodes[0].id
    registry = mesh.nodes[0].metrics.registry
    assert registry is not None

    def count() -> float:
        return registry.get_sample_value(
            "perfect_recall_retrieval_duration_seconds_count",
            {"node": node, "query": "vector", "index": "exact"}) or 0.0

    before = count()
    await recall.Remember(pb.RememberRequest(memories=[memory("timed", v)]), timeout=10)
    for _ in range(3):
        await _search(recall, v)
    assert count() == before + 3
    assert registry.get_sample_value("perfect_recall_memories", {"node": node}) == 1
    assert registry.get_sample_value("perfect_recall_writes_total",
                                     {"node": node, "outcome": "stored"}) == 1


@pytest.mark.parametrize("backend", ["lite"], indirect=True)
async def test_the_index_grows_a_graph_and_rebuilds_without_losing_writes(start: Any) -> None:
    mesh = await start(exact_max=300)
    recall = stub(mesh)
    engine = _engine(mesh.nodes[0])
    replica = engine.replica
    data = vectors(1200, seed=31)
    ids: list[str] = []
    for b in range(12):  # past exact_max: a graph is built while writes go on
        reply = await recall.Remember(pb.RememberRequest(memories=[
            memory(f"m{i}", data[i]) for i in range(b * 100, b * 100 + 100)]), timeout=30)
        ids.extend(r.id for r in reply.results)
    await wait_for(lambda: replica.index.kind == "hnsw" and not replica.rebuilding, 30,
                   "the graph")
    assert engine.replica.rebuilds >= 1
    assert len(engine.replica.index) == 1200

    async def found(i: int) -> bool:
        hits = (await _search(recall, data[i], top_k=1)).hits
        return bool(hits) and hits[0].memory.id == ids[i]

    assert sum([await found(i) for i in range(0, 1200, 20)]) >= 58  # of 60
    # The rebuild thread is held until the write below has landed, so the write lands
    # during the rebuild however fast the machine builds the new index.
    gate = threading.Event()
    replica._builder.submit(gate.wait, 60)
    try:
        rebuilds = engine.replica.rebuilds
        forgot = await recall.Forget(pb.ForgetRequest(ids=ids[:400]), timeout=30)
        assert forgot.forgotten == 400
        assert engine.replica.rebuilding  # 400 tombstones of 1200: a rebuild began
        extra = await recall.Remember(pb.RememberRequest(memories=[
            memory("late", near(data[0], 3.0))]), timeout=30)
        assert engine.replica.rebuilding  # the write was applied while the rebuild ran
        assert engine.replica.rebuilds == rebuilds
    finally:
        gate.set()
    await wait_for(lambda: replica.rebuilds == rebuilds + 1 and not replica.rebuilding, 30,
                   "the rebuild after 400 deletes to take over")
    assert engine.replica.index.dead == 0  # the rebuilt index serves, not the old one
    assert len(engine.replica.index) == 801
    assert engine.replica.index.get(extra.results[0].id) is not None
    assert not any([await found(i) for i in range(0, 400, 40)])
    assert sum([await found(i) for i in range(400, 1200, 20)]) >= 39  # of 40
    late = await _search(recall, near(data[0], 3.0), top_k=1)
    assert late.hits[0].memory.id == extra.results[0].id
