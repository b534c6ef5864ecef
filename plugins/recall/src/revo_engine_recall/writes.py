"""What a Remember does to the collection: new memories, refreshed duplicates, merges.

Pure decisions over the in-process index (run on the engine's index thread); the engine
then writes the planned records to Milvus and the change feed.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mesh.errors import AlreadyExists, ResourceExhausted
from revo_engine_recall.index import MemoryIndex, Row, Vector
from revo_engine_recall.v1 import recall_pb2 as pb

__all__ = ["Item", "Plan", "memory_id", "normalized", "plan", "text_hash"]


def normalized(text: str) -> str:
    """The text that dedup compares: Unicode NFC, whitespace runs as one space, stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def text_hash(text: str) -> str:
    return hashlib.sha256(normalized(text).encode()).hexdigest()


def memory_id(scope: str, *, client_id: str = "", digest: str = "") -> str:
    """A memory's id: from the scope and the writer's client id, or the text's digest, so a
    retried write names the same memory on any node."""
    source = f"c\0{scope}\0{client_id}" if client_id else f"t\0{scope}\0{digest}"
    return hashlib.sha256(source.encode()).hexdigest()[:32]


@dataclass
class Item:
    """One checked MemoryInput."""

    scope: str
    text: str
    metadata: dict[str, Any]
    ttl_ms: int
    client_id: str
    vector: Vector
    """Unit length."""
    digest: str = ""

    def __post_init__(self) -> None:
        self.digest = text_hash(self.text)


@dataclass
class Plan:
    results: list[pb.Remembered] = field(default_factory=list)
    writes: dict[str, tuple[Row, Vector]] = field(default_factory=dict)
    stored: dict[tuple[str, str], str] = field(default_factory=dict)
    """(scope, text digest) -> id of the memories this batch stores as new."""


def _expiry(now_ms: int, ttl_ms: int) -> int:
    return now_ms + ttl_ms if ttl_ms > 0 else 0


def _later(a: int, b: int) -> int:
    """The later of two expiries (0 is never)."""
    return 0 if a == 0 or b == 0 else max(a, b)


def plan(index: MemoryIndex, items: list[Item], owner: str, now_ms: int,
         threshold: float, quota: int) -> Plan:
    """Decide every item before anything is written; AlreadyExists or ResourceExhausted
    fail the whole batch."""
    out = Plan()
    added: dict[str, int] = {}
    nearest = _nearest_held(index, items, now_ms)
    vectors = np.stack([item.vector for item in items]) if items else np.zeros((0, 1))
    similar = vectors @ vectors.T
    """Cosine of every pair of the batch's items (one product, for near-duplicates within
    it: a dot product per pair in Python took a sixth of the node's time while loading)."""
    stored: dict[str, list[int]] = {}
    """Items of this batch stored as new, by scope (for near-duplicates within it)."""

    def current(memory_id: str) -> tuple[Row, Vector] | None:
        if memory_id in out.writes:
            return out.writes[memory_id]
        row = index.get(memory_id)
        vector = index.vector(memory_id)
        return None if row is None or vector is None else (row, vector)

    def refresh(held: tuple[Row, Vector], item: Item, merged: int) -> None:
        row, vector = held
        out.writes[row.id] = (replace(
            row, metadata={**row.metadata, **item.metadata}, updated_ms=max(
                now_ms, row.updated_ms + 1),
            expires_ms=_later(row.expires_ms, _expiry(now_ms, item.ttl_ms)),
            merged=row.merged + merged), vector)

    for i, item in enumerate(items):
        where = f"memories[{i}]"
        if item.client_id:
            mid = memory_id(item.scope, client_id=item.client_id)
            held = current(mid)
            if held is not None:
                if held[0].text_hash != item.digest:
                    raise AlreadyExists(
                        f"{where}: client_id {item.client_id!r} already names a memory with "
                        "another text in this scope; Update changes a memory")
                out.results.append(pb.Remembered(id=mid, outcome=pb.OUTCOME_UNCHANGED))
                continue
        else:
            mid = memory_id(item.scope, digest=item.digest)
        same = _same_text(index, out, item)
        if same is not None:
            refresh(same, item, 0)
            out.results.append(pb.Remembered(id=same[0].id, outcome=pb.OUTCOME_DUPLICATE))
            continue
        near_id, score = nearest[i]
        earlier = stored.get(item.scope)
        if earlier:
            scores = similar[i, earlier]
            best = int(np.argmax(scores))
            if scores[best] > score:
                near_id, score = out.results[earlier[best]].id, float(scores[best])
        near = current(near_id) if near_id else None
        if near is not None and score >= threshold:
            refresh(near, item, 1)
            out.results.append(pb.Remembered(id=near[0].id, outcome=pb.OUTCOME_MERGED,
                                             similarity=score))
            continue
        added[item.scope] = added.get(item.scope, 0) + 1
        if index.count(item.scope) + added[item.scope] > quota:
            raise ResourceExhausted(
                f"{where}: scope {item.scope!r} holds {index.count(item.scope)} memories; "
                f"this batch would pass its quota of {quota}. Forget some first")
        row = Row(id=mid, scope=item.scope, owner=owner, text=item.text,
                  text_hash=item.digest, metadata=item.metadata, client_id=item.client_id,
                  created_ms=now_ms, updated_ms=now_ms,
                  expires_ms=_expiry(now_ms, item.ttl_ms))
        out.writes[mid] = (row, item.vector)
        out.stored[(item.scope, item.digest)] = mid
        stored.setdefault(item.scope, []).append(i)
        out.results.append(pb.Remembered(id=mid, outcome=pb.OUTCOME_STORED))
    return out


def _same_text(index: MemoryIndex, out: Plan, item: Item) -> tuple[Row, Vector] | None:
    pending = out.stored.get((item.scope, item.digest))
    if pending is not None:
        return out.writes[pending]
    held = index.by_text(item.scope, item.digest)
    if held is None:
        return None
    if held.id in out.writes:
        return out.writes[held.id]
    vector = index.vector(held.id)
    return None if vector is None else (held, vector)


def _nearest_held(index: MemoryIndex, items: list[Item],
                  now_ms: int) -> list[tuple[str, float]]:
    """Each item's nearest unexpired memory already in its scope (one batched search per
    scope), as (id, cosine); ("", -2) when the scope is empty."""
    found: list[tuple[str, float]] = [("", -2.0)] * len(items)
    by_scope: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_scope.setdefault(item.scope, []).append(i)
    for scope, positions in by_scope.items():
        queries = np.stack([items[i].vector for i in positions])
        for i, (row, score) in zip(positions, index.nearest(queries, scope), strict=True):
            if row is not None and not row.expired(now_ms):
                found[i] = (row.id, score)
    return found
