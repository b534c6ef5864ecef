"""The in-process index: every live memory of the collection, searched without a round trip.

Milvus is the source of truth; this is a copy the engine keeps consistent with it (the
engine applies every change it writes, and every change other nodes write, through
:meth:`MemoryIndex.apply`; docs/recall.md says what is guaranteed). It holds:

- the unit-length vectors in one float32 matrix, one *slot* per memory version (an update
  takes a new slot, a delete leaves a tombstone until the next rebuild);
- each slot's scope as a small integer code, and its expiry;
- each memory's row (text, metadata...) for answers and metadata filters;
- above ``exact_max`` memories, a faiss HNSW graph over the slots. A write does not wait
  for the graph: its slots are searched exactly (the *tail*) until :meth:`grow_graph`,
  which the engine calls in small steps between searches, has added them.

A search resolves the caller's scopes to codes, counts the candidates, and takes the exact
path (a matrix product over those slots) when there are at most ``exact_max`` of them, else
the HNSW graph restricted by a bitmap of the allowed slots. It is not thread-safe: the
engine runs every call on one thread.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

__all__ = ["IndexSettings", "MemoryIndex", "Row", "SearchHit", "Vector", "unit"]

Vector = npt.NDArray[Any]
"""float32 vectors (one or a matrix of rows)."""

Predicate = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True)
class Row:
    """A memory as stored in Milvus, without its vector."""

    id: str
    scope: str
    owner: str
    text: str
    text_hash: str
    metadata: dict[str, Any] = field(default_factory=dict)
    client_id: str = ""
    created_ms: int = 0
    updated_ms: int = 0
    expires_ms: int = 0
    """0: never."""
    merged: int = 0

    def expired(self, now_ms: int) -> bool:
        return 0 < self.expires_ms <= now_ms

    def metadata_json(self) -> str:
        return json.dumps(self.metadata, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class SearchHit:
    row: Row
    score: float


@dataclass(frozen=True)
class IndexSettings:
    dim: int = 384
    exact_max: int = 20_000
    """Candidates up to this many are searched exactly; a collection above it gets HNSW."""
    hnsw_m: int = 32
    ef_construction: int = 64
    ef_search: int = 96
    bitmaps: int = 32
    """Allowed-slot bitmaps kept for repeated scope sets (each is n/8 bytes)."""


def _best(slots: Vector, scores: Vector, count: int) -> list[tuple[int, float]]:
    """The ``count`` best (slot, score) pairs, best first."""
    if count < len(scores):
        part = np.argpartition(-scores, count)[:count]
        order = part[np.argsort(-scores[part], kind="stable")]
    else:
        order = np.argsort(-scores, kind="stable")
    return [(int(slots[i]), float(scores[i])) for i in order]


def unit(vectors: Vector) -> Vector:
    """Rows scaled to length 1 (zero rows stay zero), as float32."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


class MemoryIndex:
    def __init__(self, settings: IndexSettings, capacity: int = 1024) -> None:
        self.settings = settings
        self._vectors = np.zeros((capacity, settings.dim), dtype=np.float32)
        self._codes = np.full(capacity, -1, dtype=np.int32)
        """Scope code per slot; -1 for a tombstone."""
        self._rows: list[Row | None] = []
        self._slot_of: dict[str, int] = {}
        self._scope_code: dict[str, int] = {}
        self._scope_slots: list[dict[int, None]] = []
        """Live slots per scope code, in insertion order."""
        self._scope_arrays: dict[int, Vector] = {}
        self._by_text: dict[tuple[int, str], str] = {}
        self._bitmaps: OrderedDict[frozenset[int], Vector] = OrderedDict()
        self._hnsw: faiss.IndexHNSWFlat | None = None
        self._hnsw_count = 0
        self.dead = 0

    # -- reading ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._slot_of)

    @property
    def kind(self) -> str:
        return "hnsw" if self._hnsw is not None else "exact"

    @property
    def slots(self) -> int:
        return len(self._rows)

    @property
    def graph_debt(self) -> int:
        """Slots written since the graph last grew (searched exactly until it takes them)."""
        return len(self._rows) - self._hnsw_count if self._hnsw is not None else 0

    def get(self, memory_id: str) -> Row | None:
        slot = self._slot_of.get(memory_id)
        return None if slot is None else self._rows[slot]

    def vector(self, memory_id: str) -> Vector | None:
        slot = self._slot_of.get(memory_id)
        return None if slot is None else self._vectors[slot].copy()

    def by_text(self, scope: str, text_hash: str) -> Row | None:
        code = self._scope_code.get(scope)
        found = None if code is None else self._by_text.get((code, text_hash))
        return None if found is None else self.get(found)

    def count(self, scope: str) -> int:
        code = self._scope_code.get(scope)
        return 0 if code is None else len(self._scope_slots[code])

    def scopes(self) -> dict[str, int]:
        """Every scope with live memories, and how many."""
        return {s: len(self._scope_slots[c]) for s, c in self._scope_code.items()
                if self._scope_slots[c]}

    def rows(self, scopes: Iterable[str] | None = None) -> Iterable[Row]:
        """Live rows, of ``scopes`` only when given."""
        if scopes is None:
            return (r for r in self._rows if r is not None)
        codes = [self._scope_code[s] for s in scopes if s in self._scope_code]
        return (r for c in codes for s in list(self._scope_slots[c])
                if (r := self._rows[s]) is not None)

    def expired(self, now_ms: int, limit: int) -> list[str]:
        """Ids of up to ``limit`` expired memories."""
        out: list[str] = []
        for row in self._rows:
            if row is not None and row.expired(now_ms):
                out.append(row.id)
                if len(out) >= limit:
                    break
        return out

    # -- writing ----------------------------------------------------------------------

    def apply(self, upserts: Sequence[tuple[Row, Vector]], deletes: Iterable[str]) -> None:
        """Make the index hold ``upserts`` (rows with unit vectors) and not ``deletes``.

        Idempotent, and ordered: a row older than the one held (``updated_ms``) is ignored,
        so a change applied twice, or late, changes nothing.
        """
        for memory_id in deletes:
            self._remove(memory_id)
        if not upserts:
            return
        fresh: list[tuple[Row, Vector]] = []
        for row, vector in upserts:
            held = self.get(row.id)
            if held is not None:
                if held.updated_ms > row.updated_ms:
                    continue
                if held.updated_ms == row.updated_ms and held == row:
                    continue
                old = self._slot_of[row.id]
                if held.text_hash == row.text_hash and np.array_equal(
                        self._vectors[old], vector):
                    self._replace_row(old, held, row)  # metadata or expiry: same slot
                    continue
                self._remove(row.id)
            fresh.append((row, vector))
        if fresh:
            self._append(fresh)

    def _replace_row(self, slot: int, held: Row, row: Row) -> None:
        self._rows[slot] = row
        code = self._codes[slot]
        if held.text_hash != row.text_hash:
            self._by_text.pop((int(code), held.text_hash), None)
            self._by_text[(int(code), row.text_hash)] = row.id

    def _append(self, items: Sequence[tuple[Row, Vector]]) -> None:
        start = len(self._rows)
        self._reserve(start + len(items))
        for offset, (row, vector) in enumerate(items):
            slot = start + offset
            code = self._code(row.scope)
            self._vectors[slot] = vector
            self._codes[slot] = code
            self._rows.append(row)
            self._slot_of[row.id] = slot
            self._scope_slots[code][slot] = None
            self._scope_arrays.pop(code, None)
            self._by_text[(code, row.text_hash)] = row.id
            for key, bitmap in self._bitmaps.items():
                if code in key:
                    bitmap[slot >> 3] |= np.uint8(1 << (slot & 7))

    def _remove(self, memory_id: str) -> None:
        slot = self._slot_of.pop(memory_id, None)
        if slot is None:
            return
        row = self._rows[slot]
        code = int(self._codes[slot])
        self._rows[slot] = None
        self._codes[slot] = -1
        self._scope_slots[code].pop(slot, None)
        self._scope_arrays.pop(code, None)
        if row is not None and self._by_text.get((code, row.text_hash)) == memory_id:
            del self._by_text[(code, row.text_hash)]
        for key, bitmap in self._bitmaps.items():
            if code in key:
                bitmap[slot >> 3] &= np.uint8(~(1 << (slot & 7)) & 0xFF)
        self.dead += 1

    def _code(self, scope: str) -> int:
        code = self._scope_code.get(scope)
        if code is None:
            code = self._scope_code[scope] = len(self._scope_slots)
            self._scope_slots.append({})
        return code

    def _reserve(self, size: int) -> None:
        capacity = len(self._codes)
        if size <= capacity:
            return
        while capacity < size:
            capacity *= 2
        vectors = np.zeros((capacity, self.settings.dim), dtype=np.float32)
        vectors[:len(self._rows)] = self._vectors[:len(self._rows)]
        codes = np.full(capacity, -1, dtype=np.int32)
        codes[:len(self._rows)] = self._codes[:len(self._rows)]
        self._vectors, self._codes = vectors, codes
        self._bitmaps.clear()

    def grow_graph(self, limit: int) -> int:
        """Add up to ``limit`` of the slots written since to the graph; returns the debt
        left. Writes do not wait for the graph (adding to it is the slow part of a write):
        the newest slots are searched exactly until it has them."""
        if self._hnsw is not None:
            end = min(len(self._rows), self._hnsw_count + max(1, limit))
            if end > self._hnsw_count:
                self._hnsw.add(self._vectors[self._hnsw_count:end])
                self._hnsw_count = end
        return self.graph_debt

    # -- rebuilding -------------------------------------------------------------------

    def needs_rebuild(self) -> bool:
        """True when tombstones are over a quarter of the slots, or the collection has
        grown past ``exact_max`` without a graph."""
        slots = len(self._rows)
        if slots >= 1024 and self.dead > slots // 4:
            return True
        return self._hnsw is None and len(self) > self.settings.exact_max

    def snapshot(self) -> tuple[list[Row], Vector]:
        """The live rows and a copy of their vectors, for a rebuild on another thread."""
        slots = sorted(self._slot_of.values())
        rows = [r for s in slots if (r := self._rows[s]) is not None]
        return rows, self._vectors[np.asarray(slots, dtype=np.int64)].copy()

    @classmethod
    def build(cls, settings: IndexSettings, rows: Sequence[Row],
              vectors: Vector) -> MemoryIndex:
        """A new index of ``rows``; with more than ``exact_max`` of them, with a graph
        (minutes for millions: call it off the engine's thread)."""
        index = cls(settings, capacity=max(1024, len(rows) + len(rows) // 4))
        index._append(list(zip(rows, vectors, strict=True)))
        if len(rows) > settings.exact_max:
            graph = faiss.IndexHNSWFlat(settings.dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = settings.ef_construction
            graph.add(index._vectors[:len(rows)])
            index._hnsw, index._hnsw_count = graph, len(rows)
        return index

    # -- searching --------------------------------------------------------------------

    def search(self, query: Vector, top_k: int, scopes: Iterable[str],
               *, predicate: Predicate | None = None, min_score: float = -1.0,
               now_ms: int | None = None) -> tuple[list[SearchHit], str]:
        """The ``top_k`` nearest live, unexpired memories of ``scopes`` that pass
        ``predicate`` (on metadata), best first; and which path answered."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        codes = frozenset(c for s in scopes if (c := self._scope_code.get(s)) is not None)
        candidates = sum(len(self._scope_slots[c]) for c in codes)
        if candidates == 0:
            return [], "exact"
        query = query.astype(np.float32, copy=False)

        def keep(slot: int, score: float) -> Row | None:
            row = self._rows[slot]
            if row is None or score < min_score or row.expired(now_ms):
                return None
            if predicate is not None and not predicate(row.metadata):
                return None
            return row

        if self._hnsw is None or candidates <= self.settings.exact_max:
            return self._exact(query, top_k, codes, keep), "exact"
        tail = self._tail(codes)
        tail_scores = self._vectors[tail] @ query
        in_graph = candidates - len(tail)
        want = top_k if predicate is None else top_k * 4 + 16
        while True:
            asked = min(want, in_graph)
            slots, scores = (self._graph(query, asked, codes, in_graph) if asked > 0
                             else (tail[:0], tail_scores[:0]))
            near = _best(np.concatenate([slots, tail]), np.concatenate([scores, tail_scores]),
                         want)
            hits = [SearchHit(row, float(score)) for slot, score in near
                    if (row := keep(slot, score)) is not None]
            if len(hits) >= top_k or len(slots) < asked or want >= candidates:
                return hits[:top_k], "hnsw"
            if want >= 4096:  # the filter rejects nearly everything near: scan them all
                return self._exact(query, top_k, codes, keep), "exact"
            want *= 4

    def nearest(self, queries: Vector, scope: str) -> list[tuple[Row | None, float]]:
        """Each query's nearest live memory in ``scope`` (one batched search), for dedup."""
        code = self._scope_code.get(scope)
        if code is None or not self._scope_slots[code]:
            return [(None, -2.0)] * len(queries)
        codes = frozenset({code})
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        count = len(self._scope_slots[code])
        if self._hnsw is None or count <= self.settings.exact_max:
            slots = self._candidate_slots(codes)
            used = len(self._rows)
            if len(slots) * 4 >= used:
                scores = (queries @ self._vectors[:used].T)[:, slots]
            else:
                scores = queries @ self._vectors[slots].T
            best = np.argmax(scores, axis=1)
            found = [(int(slots[b]), float(scores[i, b])) for i, b in enumerate(best)]
        else:
            params = self._graph_params(codes, 1, count)
            top, nearest = self._hnsw.search(queries, 1, params=params)
            found = [(int(n[0]), float(t[0])) for t, n in zip(top, nearest, strict=True)]
            tail = self._tail(codes)
            if len(tail):
                scores = queries @ self._vectors[tail].T
                best = np.argmax(scores, axis=1)
                found = [(int(tail[b]), float(scores[i, b])) if scores[i, b] > score
                         else (slot, score)
                         for i, (b, (slot, score)) in enumerate(zip(best, found, strict=True))]
        return [(self._rows[slot] if slot >= 0 else None, score) for slot, score in found]

    def _exact(self, query: Vector, top_k: int, codes: frozenset[int],
               keep: Callable[[int, float], Row | None]) -> list[SearchHit]:
        slots = self._candidate_slots(codes)
        used = len(self._rows)
        if len(slots) * 4 >= used:
            # Most slots are candidates: one product over the contiguous matrix, then pick
            # the candidates' scores (copying their vectors first costs ten times more).
            scores = (self._vectors[:used] @ query)[slots]
        else:
            scores = self._vectors[slots] @ query
        hits: list[SearchHit] = []
        want = top_k
        while True:
            if want < len(slots):
                part = np.argpartition(-scores, want)[:want]
                order = part[np.argsort(-scores[part], kind="stable")]
            else:
                order = np.argsort(-scores, kind="stable")
            hits = [SearchHit(row, float(scores[i])) for i in order
                    if (row := keep(int(slots[i]), float(scores[i]))) is not None]
            if len(hits) >= top_k or want >= len(slots):
                return hits[:top_k]
            want *= 4

    def _candidate_slots(self, codes: frozenset[int]) -> Vector:
        parts = []
        for code in codes:
            array = self._scope_arrays.get(code)
            if array is None:
                array = self._scope_arrays[code] = np.fromiter(
                    self._scope_slots[code], dtype=np.int64, count=len(self._scope_slots[code]))
            parts.append(array)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _tail(self, codes: frozenset[int]) -> Vector:
        """The live slots of ``codes`` not in the graph yet."""
        start = self._hnsw_count
        tail_codes = self._codes[start:len(self._rows)]
        if len(codes) == 1:
            (code,) = codes
            return np.flatnonzero(tail_codes == code) + start
        return np.flatnonzero(np.isin(tail_codes, np.fromiter(codes, np.int32))) + start

    def _graph(self, query: Vector, want: int, codes: frozenset[int],
               candidates: int) -> tuple[Vector, Vector]:
        assert self._hnsw is not None
        params = self._graph_params(codes, want, candidates)
        scores, slots = self._hnsw.search(query[None, :], want, params=params)
        found = slots[0] >= 0
        return slots[0][found], scores[0][found]

    def _graph_params(self, codes: frozenset[int], want: int,
                      candidates: int) -> Any:
        bitmap = self._bitmap(codes)
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        params.sel = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))  # n: bytes
        params.sel.referenced = bitmap  # type: ignore[attr-defined]  # keep it alive
        # A narrow filter leaves few allowed nodes near the query: look further.
        widen = max(1.0, len(self) / candidates)
        params.efSearch = int(min(2048, max(want, self.settings.ef_search * widen)))
        return params

    def _bitmap(self, codes: frozenset[int]) -> Vector:
        bitmap = self._bitmaps.get(codes)
        if bitmap is not None:
            self._bitmaps.move_to_end(codes)
            return bitmap
        bits = np.zeros(len(self._codes), dtype=bool)
        bits[self._candidate_slots(codes)] = True
        bitmap = np.packbits(bits, bitorder="little")
        self._bitmaps[codes] = bitmap
        while len(self._bitmaps) > self.settings.bitmaps:
            self._bitmaps.popitem(last=False)
        return bitmap
