"""The recall engine's in-process index, filters and scopes, without servers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from google.protobuf.struct_pb2 import Value

from mesh.errors import InvalidArgument, PermissionDenied
from revo_engine_recall.filters import predicate
from revo_engine_recall.index import IndexSettings, MemoryIndex, Row, unit
from revo_engine_recall.scopes import Access, scope_key
from revo_engine_recall.v1 import recall_pb2 as pb

DIM = 32


def _data(count: int, seed: int = 0) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, DIM))
    points = centers[rng.integers(0, 20, count)] + 0.5 * rng.standard_normal((count, DIM))
    return unit(points)


def _rows(count: int, scope: Any = lambda i: "project:p") -> list[Row]:
    return [Row(id=f"m{i}", scope=scope(i), owner="a", text=f"t{i}", text_hash=f"h{i}",
                metadata={"n": i}, updated_ms=1) for i in range(count)]


def _exact_top(data: np.ndarray[Any, Any], query: np.ndarray[Any, Any],
               allowed: np.ndarray[Any, Any], k: int) -> set[str]:
    scores = data @ query
    scores[~allowed] = -9
    return {f"m{i}" for i in np.argsort(-scores)[:k]}


@pytest.mark.parametrize("exact_max", [10_000, 100])  # exact only; HNSW above 100
def test_search_matches_brute_force_within_scopes(exact_max: int) -> None:
    data, queries = _data(3000), _data(40, seed=1)
    rows = _rows(3000, scope=lambda i: "project:p" if i % 3 else "user:a")
    index = MemoryIndex.build(IndexSettings(dim=DIM, exact_max=exact_max), rows, data)
    assert index.kind == ("exact" if exact_max > 3000 else "hnsw")
    in_project = np.array([i % 3 != 0 for i in range(3000)])
    recall = []
    for query in queries:
        hits, _path = index.search(query, 10, ["project:p"])
        assert all(h.row.scope == "project:p" for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        recall.append(len({h.row.id for h in hits} & _exact_top(data, query, in_project, 10)))
    assert np.mean(recall) / 10 >= (1.0 if exact_max > 3000 else 0.9)


def test_writes_outside_the_graph_are_searched_exactly_until_it_takes_them() -> None:
    data, queries = _data(3000), _data(40, seed=1)
    rows = _rows(3000, scope=lambda i: "project:p" if i % 3 else "user:a")
    index = MemoryIndex.build(IndexSettings(dim=DIM, exact_max=100), rows[:2000], data[:2000])
    index.apply(list(zip(rows[2000:], data[2000:], strict=True)), ["m2001"])
    assert index.graph_debt == 1000  # the write did not wait for the graph
    in_project = np.array([i % 3 != 0 and i != 2001 for i in range(3000)])

    def recall() -> float:
        found = []
        for query in queries:
            hits, path = index.search(query, 10, ["project:p"])
            assert path == "hnsw"
            assert all(h.row.scope == "project:p" for h in hits)
            assert "m2001" not in {h.row.id for h in hits}
            found.append(len({h.row.id for h in hits}
                             & _exact_top(data, query, in_project, 10)))
        return float(np.mean(found)) / 10

    assert recall() >= 0.9
    # a write's own memory is found at once, from the tail
    assert index.search(data[2999], 1, ["project:p"])[0][0].row.id == "m2999"
    assert [r.id if r else None for r, _ in index.nearest(data[2998:3000], "project:p")] == [
        "m2998", "m2999"]
    assert index.grow_graph(400) == 600
    assert recall() >= 0.9
    while index.grow_graph(256):
        pass
    assert index.graph_debt == 0
    assert recall() >= 0.9


def test_updates_deletes_and_expiry_are_seen_at_once_and_rebuilds_keep_them() -> None:
    data = _data(1200)
    index = MemoryIndex.build(IndexSettings(dim=DIM, exact_max=100), _rows(1200), data)
    index.apply([], ["m0"])
    hits, _ = index.search(data[0], 1, ["project:p"])
    assert hits[0].row.id != "m0"
    moved = Row(id="m1", scope="project:p", owner="a", text="new", text_hash="x",
                updated_ms=2)
    index.apply([(moved, data[5])], [])
    assert index.get("m1") == moved
    stale = Row(id="m1", scope="project:p", owner="a", text="old", text_hash="y", updated_ms=1)
    index.apply([(stale, data[9])], [])  # an older version arriving late changes nothing
    assert index.get("m1") == moved
    expired = Row(id="m2", scope="project:p", owner="a", text="gone", text_hash="h2",
                  updated_ms=2, expires_ms=5)
    index.apply([(expired, data[2])], [])
    hits, _ = index.search(data[2], 3, ["project:p"], now_ms=10)
    assert "m2" not in {h.row.id for h in hits}
    assert index.expired(10, 10) == ["m2"]
    index.apply([], [f"m{i}" for i in range(3, 400)])
    assert index.needs_rebuild()
    rows, vectors = index.snapshot()
    rebuilt = MemoryIndex.build(index.settings, rows, vectors)
    assert len(rebuilt) == len(index) == 1200 - 398
    assert rebuilt.get("m1") == moved
    assert rebuilt.search(data[5], 1, ["project:p"])[0][0].row.id in {"m1", "m5"}


def test_a_narrow_filter_still_finds_its_matches() -> None:
    data = _data(2000)
    index = MemoryIndex.build(IndexSettings(dim=DIM, exact_max=100), _rows(2000), data)
    test = predicate([pb.Condition(key="n", op=pb.OPERATOR_LESS, value=Value(number_value=5))])
    hits, _ = index.search(data[1500], 10, ["project:p"], predicate=test)
    assert {h.row.id for h in hits} == {f"m{i}" for i in range(5)}


def test_nearest_per_scope_is_batched_and_scoped() -> None:
    data = _data(300)
    index = MemoryIndex.build(IndexSettings(dim=DIM), _rows(300, lambda i: f"project:{i % 2}"),
                              data)
    found = index.nearest(data[:4], "project:1")
    assert [row.id if row else None for row, _ in found][1::2] == ["m1", "m3"]
    assert all(row is not None and row.scope == "project:1" for row, _ in found)
    assert index.nearest(data[:2], "project:none") == [(None, -2.0)] * 2


@pytest.mark.parametrize(("condition", "says"), [
    (pb.Condition(key="a", value=Value(string_value='x" or "1"=="1')), "quotes"),
    (pb.Condition(key="a", value=Value(string_value="x\\")), "backslashes"),
    (pb.Condition(key="a or b", value=Value(string_value="x")), "filter key"),
    (pb.Condition(key="a", op=pb.OPERATOR_IN, value=Value(string_value="x")), "values"),
    (pb.Condition(key="a", op=pb.OPERATOR_LESS, value=Value(bool_value=True)), "compares"),
    (pb.Condition(key="a"), "one value"),
])
def test_unsafe_or_malformed_filters_are_refused(condition: pb.Condition, says: str) -> None:
    with pytest.raises(InvalidArgument, match=says):
        predicate([condition])


def test_filters_compare_by_type() -> None:
    equal_one = predicate([pb.Condition(key="n", value=Value(number_value=1))])
    assert equal_one is not None
    assert equal_one({"n": 1})
    assert equal_one({"n": 1.0})
    assert not equal_one({"n": True})
    assert not equal_one({"n": "1"})
    assert not equal_one({})


def test_scopes_belong_to_their_user_and_projects_to_members() -> None:
    session = pb.Scope(kind=pb.SCOPE_KIND_SESSION, id="s1")
    assert scope_key(session, "alice") == "session:alice/s1"
    assert scope_key(pb.Scope(kind=pb.SCOPE_KIND_USER), "alice") == "user:alice"
    bob = Access("bob", "developer", True, {"secret": ["alice"]})
    assert not bob.allows("session:alice/s1")
    assert bob.allows("session:bob/s1")
    assert bob.allows("project:open")
    assert not bob.allows("project:secret")
    with pytest.raises(PermissionDenied):
        bob.resolve([pb.Scope(kind=pb.SCOPE_KIND_USER, user="alice")], [])
    assert Access("root", "admin", True, {}).allows("user:alice")
    assert bob.resolve([], ["user:bob", "user:alice", "project:open"]) == [
        "user:bob", "project:open"]
    with pytest.raises(InvalidArgument, match="unknown scope kind"):
        scope_key(pb.Scope(kind=7), "bob")  # type: ignore[arg-type]
