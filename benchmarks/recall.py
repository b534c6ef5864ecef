"""recall: Perfect Recall's search through the mesh, against ChromaDB (the peer), faiss's
HNSW alone at the same recall@10 (the peer of the index), numpy brute force (the baseline)
and Milvus searched directly (the design without an in-process index), at 10k, 100k and 1M
memories of 384 dimensions.

For each size N, in one run:

* **data**: N synthetic unit vectors with the low intrinsic dimension of real sentence
  embeddings (:func:`make_queries`, :func:`make_data`: a random 48-dimensional latent point
  near one of 2000 centres, projected to 384 dimensions, plus isotropic noise), and 3,000
  fresh queries from the same distribution (and 300 more to warm up); exact top-10 by numpy
  (the ground truth);
* **ours**: ``RecallService.Remember`` of every vector (batches of 500, ``vector`` given)
  into ONE project scope through ``python -m mesh gateway`` -> nats-server -> one
  ``python -m mesh node`` with the engines ``recall`` and ``models`` (security off), then
  ``Search`` with the vector (``p50/p99_ms_search``, ``recall_at_10``) and with a text that
  the engine embeds through ``ModelService.Embed`` on Triton (``p50/p99_ms_end_to_end``);
* **index**: ``MemoryIndex.search`` in this process on ``MemoryIndex.build`` of the same
  data: the index without the gRPC hops;
* **hnsw**: ``faiss.IndexHNSWFlat`` alone (inner product on the unit vectors, the index's
  M and efConstruction) in this process, at the smallest ``efSearch`` of a sweep whose
  recall@10 is within 0.002 of the index's: the index's peer at matched recall;
* **chroma**: ChromaDB ``PersistentClient`` (in this process), cosine space;
* **numpy**: ``data @ query`` and a partial sort, per query;
* **milvus-lite**: pymilvus ``MilvusClient`` on a milvus-lite file, HNSW COSINE, searched
  with the scope filter the engine would need without its own index.

Queries go one at a time (concurrency 1). The query loops of ours, the index, faiss's HNSW,
ChromaDB and numpy are interleaved: the queries are split into rounds, and in each round
every path
answers that round's share, the order rotating; Milvus-lite (up to half a second a query at
1M) is measured on its own, in a process of its own, before the others load. Sizes run one
after the other, each with fresh servers, and everything of a size is freed before the next.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks._report import (
    RESULTS_DIR,
    machine_info,
    markdown_table,
    percentile,
    revision,
    write_results,
)
from benchmarks.embedder import threads_env
from benchmarks.mesh_hop import (
    SECURITY_OFF,
    Fleet,
    Target,
    _child_env,
    _new_findings,
    _workdir,
    python_env,
)
from mesh.client import probe_mesh
from mesh.embedded.nats_server import free_port

NAME = "recall"
REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO_ROOT / "triton_models"
EMBEDDER = "embedder"

Vectors = npt.NDArray[np.float32]

# -- the data ---------------------------------------------------------------------------

DIM = 384
LATENT_DIM = 48
CENTRES = 2000
CENTRE_SPREAD = 1.0
"""Standard deviation of a latent point around its centre."""
NOISE = 2.0
"""Standard deviation of the isotropic noise added in 384 dimensions."""
DATA_SEED = 20240611
DATA_CHUNK = 50_000
"""Vectors generated (and brute-forced) at a time: bounds the temporaries."""
SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000,)
QUERIES = 3_000
"""Measured queries per path and size (600 a round in 5 rounds): a p99 rests on 30 samples."""
WARMUP = 300
"""Queries every path answers, unmeasured, before the rounds."""
QUICK_QUERIES = 300
QUICK_WARMUP = 60
GROUND_TRUTH_QUERIES = 1_000
"""Queries brute-forced at a time: bounds the score matrix (1,000 x 50,000 floats)."""
TOP_K = 10

# -- the mesh ---------------------------------------------------------------------------

SCOPE_ID = "bench"
SCOPE_KEY = f"project:{SCOPE_ID}"
"""The engine's key of the one project scope every memory goes into."""
REMEMBER_BATCH = 500
SCOPE_QUOTA = 2_000_000
DEDUP_THRESHOLD = 0.95
"""The engine's default: near-duplicate merges are counted and reported (the data's nearest
neighbours are far below it, so none are expected)."""
CALL_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 120.0
STATS_EVERY = 4
LOADING_SEARCH_EVERY_S = 0.2
"""While ours loads, one vector search this often (how searches fare while writes go on)."""
"""Remember batches between two ``Stats`` calls during the load (to see the index change)."""
PROGRESS_EVERY = 20
"""Remember batches between two progress lines."""
TORCH_THREADS = min(2, os.cpu_count() or 1)
SETTLE_S = 0.3
"""Pause before each path's share of a round: OpenBLAS's threads keep spinning for a while
after a matrix product (numpy's, the index's), and would slow whichever path came next."""

# -- Milvus-lite ------------------------------------------------------------------------

MILVUS_INSERT_BATCH = 5_000
MILVUS_FEW_QUERIES_ABOVE = 100_000
"""Above this size Milvus-lite answers only :data:`MILVUS_FEW_QUERIES` (each takes ~0.5 s
at 1M)."""
MILVUS_FEW_QUERIES = 30
MILVUS_LITE_MAX = 100_000
"""Milvus-lite is measured up to this size unless ``--milvus-lite-max`` says otherwise:
loading and indexing a million rows takes it longer than the rest of the 1M run, and it
already misses the targets by far at 100k."""
HNSW_M = 32
EF_CONSTRUCTION = 64
EF_SEARCH = 96
"""Milvus-lite's HNSW parameters: the in-process index's defaults (``IndexSettings``)."""

# -- faiss's HNSW alone -----------------------------------------------------------------

PEER_EFS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
"""The ``efSearch`` values swept for the bare HNSW peer, smallest first."""
RECALL_MATCH = 0.002
"""The bare HNSW peer runs at the smallest swept ``efSearch`` whose recall@10 is at least
the index's minus this."""
SWEEP_PAST_MATCH = 2
"""Swept values measured after the first one whose recall@10 reaches the index's."""
SWEEP_WARMUP = 100
CHROMA_EFS = (100, 128, 192, 256, 384, 512, 768, 1024)
"""ChromaDB's ``ef_search`` values swept (100, its default, first) up to the index's
recall@10: ChromaDB tuned to the same recall."""
CHROMA_DEFAULT_EF = 100
SWEEP_TIMEOUT_S = 300.0
"""The longest the whole sweep may take at one size."""

# name, size, field, comparison, threshold
TARGETS: tuple[tuple[str, int, str, str, float], ...] = (
    ("search p99 at 100k", 100_000, "p99_ms_search", "<=", 10.0),
    ("end-to-end p99 at 100k", 100_000, "p99_ms_end_to_end", "<=", 25.0),
    ("recall@10 at 100k", 100_000, "recall_at_10", ">=", 0.95),
    ("search p99 at 1M", 1_000_000, "p99_ms_search", "<=", 25.0),
)
"""Absolute targets; besides these, ours must be faster than ChromaDB (p50 and p99) at
every size: :data:`PEER_TARGETS`."""

# title, our field, ChromaDB's field, ratio field ({q}: p50 or p99)
PEER_TARGETS: tuple[tuple[str, str, str, str], ...] = (
    ("faster than ChromaDB's server at {size} (ours through the mesh; both over the network)",
     "{q}_ms_search", "chroma_server_{q}_ms_search", "ratio_{q}_search_to_chroma_server"),
    ("faster than ChromaDB in process at {size} (our index in process)",
     "{q}_ms_index", "chroma_{q}_ms_search", "ratio_{q}_index_to_chroma"),
)
"""Like against like: a service called over the network against ChromaDB's own server, a
library in the caller's process against ChromaDB in the caller's process. (Ours through the
mesh against ChromaDB in process is reported too, as a ratio, not as a target.)"""

QUERY_PATHS = ("search", "end_to_end", "index", "hnsw", "chroma", "chroma_server", "numpy")
"""The interleaved query loops (Milvus-lite is measured on its own)."""


@dataclass(frozen=True)
class Settings:
    """What one run measures."""

    mode: str
    sizes: tuple[int, ...]
    rounds: int
    queries: int = QUERIES
    warmup: int = WARMUP
    loop_timeout_s: float = 300.0
    """The longest one path's share of one round may take."""
    milvus_lite_max: int = MILVUS_LITE_MAX

    @classmethod
    def for_mode(cls, quick: bool, sizes: Sequence[int] | None = None,
                 milvus_lite_max: int = MILVUS_LITE_MAX) -> Settings:
        chosen = tuple(sizes) if sizes else (QUICK_SIZES if quick else SIZES)
        if quick:
            return cls("quick", chosen, rounds=3, queries=QUICK_QUERIES, warmup=QUICK_WARMUP,
                       loop_timeout_s=120.0, milvus_lite_max=milvus_lite_max)
        return cls("full", chosen, rounds=5, milvus_lite_max=milvus_lite_max)

    def load_timeout_s(self, size: int) -> float:
        """The longest loading ``size`` memories into one system may take."""
        return max(600.0, size / 100)


def order(round_index: int) -> tuple[str, ...]:
    """The query paths in round ``round_index``: rotated, so none is always first."""
    shift = round_index % len(QUERY_PATHS)
    return QUERY_PATHS[shift:] + QUERY_PATHS[:shift]


def unit_rows(vectors: npt.NDArray[Any]) -> Vectors:
    """Rows scaled to length 1, as float32."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / norms, dtype=np.float32)


class Generator:
    """The synthetic embedding distribution: ``unit(z @ W + NOISE * e)``, ``z`` a centre of
    :data:`CENTRES` plus ``CENTRE_SPREAD * e'`` in :data:`LATENT_DIM` dimensions."""

    def __init__(self, seed: int = DATA_SEED) -> None:
        self.rng = np.random.default_rng(seed)
        self.projection = self.rng.standard_normal((LATENT_DIM, DIM))
        self.centres = self.rng.standard_normal((CENTRES, LATENT_DIM))

    def points(self, count: int) -> Vectors:
        latent = (self.centres[self.rng.integers(0, CENTRES, count)]
                  + CENTRE_SPREAD * self.rng.standard_normal((count, LATENT_DIM)))
        return unit_rows(latent @ self.projection
                         + NOISE * self.rng.standard_normal((count, DIM)))


def make_queries(count: int, seed: int = DATA_SEED) -> Vectors:
    """``count`` query vectors: the first points of the seeded stream, the same at every size
    (the data of every size is drawn after them, so no query is in the data)."""
    return Generator(seed).points(count)


def make_data(size: int, queries: int, seed: int = DATA_SEED) -> Vectors:
    """``size`` data vectors, drawn after the ``queries`` query vectors, in chunks."""
    generator = Generator(seed)
    generator.points(queries)
    data = np.empty((size, DIM), dtype=np.float32)
    for start in range(0, size, DATA_CHUNK):
        end = min(size, start + DATA_CHUNK)
        data[start:end] = generator.points(end - start)
    return data


def ground_truth(data: Vectors, queries: Vectors, k: int = TOP_K
                 ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Exact top-``k`` ids and cosines of every query, best first (chunked matmul)."""
    parts = [_ground_truth(data, queries[start:start + GROUND_TRUTH_QUERIES], k)
             for start in range(0, len(queries), GROUND_TRUTH_QUERIES)]
    return (np.concatenate([ids for ids, _ in parts]),
            np.concatenate([scores for _, scores in parts]))


def _ground_truth(data: Vectors, queries: Vectors, k: int
                  ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    best_scores = np.zeros((len(queries), 0), dtype=np.float32)
    for start in range(0, len(data), DATA_CHUNK):
        scores = queries @ data[start:start + DATA_CHUNK].T
        take = min(k, scores.shape[1])
        part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        ids = np.concatenate([best_ids, part + start], axis=1)
        merged = np.concatenate([best_scores, np.take_along_axis(scores, part, axis=1)],
                                axis=1)
        keep = np.argsort(-merged, axis=1, kind="stable")[:, :k]
        best_ids = np.take_along_axis(ids, keep, axis=1)
        best_scores = np.take_along_axis(merged, keep, axis=1)
    return best_ids, best_scores


def recall_at_k(found: dict[int, list[int]], truth: npt.NDArray[np.int64],
                k: int = TOP_K) -> float | None:
    """Mean share of each answered query's true top-``k`` among its first ``k`` answers."""
    if not found:
        return None
    shares = [len(set(ids[:k]) & set(truth[q, :k].tolist())) / k for q, ids in found.items()]
    return round(float(np.mean(shares)), 4)


def sentences(count: int, seed: int = DATA_SEED) -> list[str]:
    """``count`` distinct short English sentences (the end-to-end queries)."""
    subjects = ["the cat", "my neighbour", "our new intern", "the central bank",
                "a storm front", "the compiler", "my grandmother", "the orchestra",
                "a delivery drone", "the city council", "the night nurse", "the team lead"]
    verbs = ["forgot", "ignores", "rewrote", "raised", "approached", "optimized", "baked",
             "rehearsed", "dropped", "debated", "watched", "rebuilt"]
    objects = ["the spare key", "interest rates", "the harbour", "a loop nest", "apple pie",
               "a symphony", "parcels on the roof", "the parking budget", "the old ferry",
               "stale shards", "the quarterly report", "a rusty bicycle"]
    tails = ["yesterday", "before dawn", "again", "last spring", "on Friday",
             "without telling anyone", "for the third time", "after lunch"]
    combos = list(itertools.product(subjects, verbs, objects, tails))
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(combos), size=count, replace=False)
    out = []
    for index in picked:
        subject, verb, obj, tail = combos[int(index)]
        out.append(f"{subject[0].upper()}{subject[1:]} {verb} {obj} {tail}.")
    return out


# -- measuring --------------------------------------------------------------------------


Search = Callable[[int], list[int] | None]
"""One query (by index): the data ids answered, best first (None: not checkable)."""


@dataclass
class QueryLoop:
    """One path's answers and latencies over the run."""

    name: str
    search: Search
    latencies_ms: list[float] = field(default_factory=list)
    found: dict[int, list[int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    timed_out: int = 0
    """Queries left unasked because the loop ran out of time."""

    def ask(self, queries: Sequence[int], timeout_s: float, measure: bool = True) -> None:
        """Ask ``queries`` one at a time, until ``timeout_s`` has passed."""
        deadline = time.monotonic() + timeout_s
        for position, query in enumerate(queries):
            if time.monotonic() > deadline:
                self.timed_out += len(queries) - position
                return
            started = time.perf_counter()
            try:
                ids = self.search(query)
            except Exception as exc:  # counted; the first few kept
                self.error_count += 1
                if len(self.errors) < 3:
                    self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            elapsed_ms = (time.perf_counter() - started) * 1e3
            if measure:
                self.latencies_ms.append(elapsed_ms)
                if ids is not None:
                    self.found[query] = ids

    def summary(self, prefix: str, truth: npt.NDArray[np.int64] | None) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)
        out: dict[str, Any] = {
            f"{prefix}p50": round(percentile(ordered, 50), 3) if ordered else None,
            f"{prefix}p99": round(percentile(ordered, 99), 3) if ordered else None,
            f"{prefix}queries": len(ordered),
            f"{prefix}errors": self.error_count,
        }
        if self.timed_out:
            out[f"{prefix}queries_not_asked"] = self.timed_out
        if self.errors:
            out[f"{prefix}error_samples"] = self.errors
        if truth is not None:
            out[f"{prefix}recall"] = recall_at_k(self.found, truth)
        return out


def numpy_search(data: Vectors, queries: Vectors) -> Search:
    """The baseline: every cosine (``data @ query``, BLAS), then a partial sort."""
    def search(query: int) -> list[int]:
        scores = data @ queries[query]
        top = np.argpartition(-scores, TOP_K - 1)[:TOP_K]
        ids: list[int] = top[np.argsort(-scores[top], kind="stable")].tolist()
        return ids

    return search


# -- ours: the mesh ---------------------------------------------------------------------


def recall_unavailable() -> str | None:
    """Why the mesh paths cannot run here (the ``recall`` engine missing or unfinished)."""
    engines = {ep.name: ep for ep in metadata.entry_points(group="revo.engines")}
    if "recall" not in engines:
        return ("the `recall` engine is not installed (pip install -e plugins/recall; "
                "./dev bench installs every plugin)")
    if find_spec("revo_engine_recall.v1") is None:
        return "the `recall` engine has no generated stubs"
    try:
        plugin = engines["recall"].load()
    except Exception as exc:
        return f"the `recall` engine does not load: {type(exc).__name__}: {exc}"
    if not any(name.startswith("revo_") for name in dir(plugin)):
        return ("the `recall` engine is not finished: its plugin module "
                f"({engines['recall'].value}) implements no revo_* hook")
    return None


def mesh_config(triton_url: str | None) -> str:
    """The node's revo.toml: the recall engine's bounds, and Triton's address."""
    lines = ["[engines.recall]", f"scope_quota = {SCOPE_QUOTA}",
             f"dedup_threshold = {DEDUP_THRESHOLD}", ""]
    if triton_url:
        lines += ["[models]", f'triton_url = "{triton_url}"', ""]
    return "\n".join(lines)


class Mesh:
    """A gateway, a node (``recall`` and ``models``) and a nats-server, and a channel."""

    def __init__(self, fleet: Fleet, triton_url: str | None) -> None:
        import grpc

        from revo_engine_recall.v1 import recall_pb2, recall_pb2_grpc

        self.pb: Any = recall_pb2
        self.target = Target("mesh", f"127.0.0.1:{free_port()}",
                             loop="uvloop" if find_spec("uvloop") else "asyncio")
        started = time.monotonic()
        nats = fleet.nats("mesh-nats")
        self.target.nats_pid = nats.process.pid if nats.process else None
        self.target.nats_url = nats.url
        self.home = fleet.workdir / "mesh-home"
        env = _child_env(self.home, nats.url,
                         SECURITY_OFF | {"REVO_PLUGINS__ONLY": "recall,models"})
        (self.home / "revo.toml").write_text(mesh_config(triton_url))
        python = sys.executable
        fleet.spawn(self.target, "node", [python, "-m", "mesh", "node"], env)
        fleet.spawn(self.target, "gateway", [python, "-m", "mesh", "gateway", "--address",
                                             self.target.address], env)
        limit = 64 * 1024 * 1024
        self.channel = grpc.insecure_channel(self.target.address, options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit)])
        self.stub: Any = recall_pb2_grpc.RecallServiceStub(self.channel)
        self.scope = recall_pb2.Scope(kind=recall_pb2.SCOPE_KIND_PROJECT, id=SCOPE_ID)
        self.answered_by: Counter[str] = Counter()
        """``SearchResponse.index`` of every search: which path of the engine answered."""
        self._wait_ready(started)

    def _wait_ready(self, started: float) -> None:
        while True:
            self.target.check_alive()
            nodes = probe_mesh(self.target.address, timeout=1.0) or []
            served = {e.name for n in nodes for e in n.engines if e.services}
            if {"recall", "models"} <= served:
                with contextlib.suppress(Exception):
                    self.stats()
                    break
            if time.monotonic() > started + READY_TIMEOUT_S:
                raise TimeoutError(f"the mesh did not serve recall and models within "
                                   f"{READY_TIMEOUT_S:g} s (serving: {sorted(served)}); logs: "
                                   + ", ".join(str(p) for p in self.target.logs.values()))
            time.sleep(0.2)
        self.target.startup_s = round(time.monotonic() - started, 2)

    def close(self) -> None:
        self.channel.close()

    def stats(self) -> Any:
        return self.stub.Stats(self.pb.StatsRequest(scopes=[self.scope]), timeout=30.0)

    def index_kind(self) -> str:
        """``Stats.index`` ("exact", "hnsw", "loading"), or why Stats failed."""
        import grpc

        try:
            return str(self.stats().index)
        except grpc.RpcError as exc:
            return f"Stats failed: {exc.code().name}"

    def remember(self, data: Vectors, start: int, end: int) -> Any:
        memories = [self.pb.MemoryInput(scope=self.scope, text=f"memory {i}",
                                        vector=data[i].tolist()) for i in range(start, end)]
        return self.stub.Remember(self.pb.RememberRequest(memories=memories),
                                  timeout=CALL_TIMEOUT_S)

    def _ids(self, reply: Any) -> list[int]:
        self.answered_by[reply.index] += 1
        return [int(hit.memory.text.rsplit(" ", 1)[1]) for hit in reply.hits]

    def vector_search(self, queries: Vectors) -> Search:
        def search(query: int) -> list[int]:
            return self._ids(self.stub.Search(self.pb.SearchRequest(
                vector=queries[query].tolist(), top_k=TOP_K, scopes=[self.scope]),
                timeout=CALL_TIMEOUT_S))

        return search

    def text_search(self, texts: Sequence[str]) -> Search:
        def search(query: int) -> None:
            self._ids(self.stub.Search(self.pb.SearchRequest(
                text=texts[query], top_k=TOP_K, scopes=[self.scope]), timeout=CALL_TIMEOUT_S))

        return search


def search_meanwhile(mesh: Mesh, queries: Vectors, stop: threading.Event,
                     deadline: float) -> tuple[threading.Thread, list[float], list[str]]:
    """A thread that asks one vector search every :data:`LOADING_SEARCH_EVERY_S` until
    ``stop`` (or ``deadline``): how searches fare while writes go on. Its latencies (ms) and
    errors fill the returned lists."""
    latencies: list[float] = []
    errors: list[str] = []
    search = mesh.vector_search(queries)

    def ask() -> None:
        for i in itertools.count():
            if stop.wait(LOADING_SEARCH_EVERY_S) or time.monotonic() > deadline:
                return
            sent = time.perf_counter()
            try:
                search(i % len(queries))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
            else:
                latencies.append((time.perf_counter() - sent) * 1e3)

    thread = threading.Thread(target=ask, name="search-while-loading", daemon=True)
    thread.start()
    return thread, latencies, errors


def load_mesh(mesh: Mesh, data: Vectors, queries: Vectors, timeout_s: float,
              progress: Callable[[str], None]) -> dict[str, Any]:
    """Remember every vector in batches, with a search now and then meanwhile; the rate,
    the outcomes, those searches' latency, and when the engine's index became a graph."""
    from revo_engine_recall.index import IndexSettings

    outcomes: Counter[str] = Counter()
    batch_ms: list[float] = []
    kinds: list[tuple[float, str]] = []
    deadline = time.monotonic() + timeout_s
    started = time.perf_counter()
    stop = threading.Event()
    searcher, during, search_errors = search_meanwhile(mesh, queries, stop, deadline)
    try:
        loaded_s = _load_batches(mesh, data, deadline, timeout_s, outcomes, batch_ms, kinds,
                                 progress)
    finally:
        stop.set()
        searcher.join(CALL_TIMEOUT_S)
    hnsw_at = next((at for at, kind in kinds if kind == "hnsw"), None)
    # A collection above exact_max gets a graph, built off the engine's thread: wait for it.
    expected = "hnsw" if len(data) > IndexSettings().exact_max else "exact"
    wait_until = time.monotonic() + max(300.0, len(data) / 500)
    kind = mesh.index_kind()
    while kind != expected and time.monotonic() < wait_until:
        time.sleep(0.5)
        kind = mesh.index_kind()
    if kind == "hnsw" and hnsw_at is None:
        hnsw_at = time.perf_counter() - started
    stats = mesh.stats()
    batches = sorted(batch_ms)
    during.sort()
    return {
        "insert_per_s": round(len(data) / loaded_s, 1),
        "insert_s": round(loaded_s, 2),
        "remember_batch_p50_ms": round(percentile(batches, 50), 2),
        "remember_batch_p99_ms": round(percentile(batches, 99), 2),
        "p50_ms_search_during_load": round(percentile(during, 50), 2) if during else None,
        "p99_ms_search_during_load": round(percentile(during, 99), 2) if during else None,
        "max_ms_search_during_load": round(during[-1], 2) if during else None,
        "searches_during_load": len(during),
        "search_errors_during_load": search_errors[:5],
        "outcomes": dict(outcomes),
        "memories_stored": outcomes.get("OUTCOME_STORED", 0),
        "memories_merged": outcomes.get("OUTCOME_MERGED", 0),
        "stats_memories": stats.memories,
        "index_after_load": stats.index,
        "index_expected": expected,
        "hnsw_after_s": round(hnsw_at, 2) if hnsw_at is not None else None,
        "hnsw_after_load_s": round(max(0.0, hnsw_at - loaded_s), 2)
        if hnsw_at is not None else None,
        "index_during_load": kinds,
    }


def _load_batches(mesh: Mesh, data: Vectors, deadline: float, timeout_s: float,
                  outcomes: Counter[str], batch_ms: list[float], kinds: list[tuple[float, str]],
                  progress: Callable[[str], None]) -> float:
    """Remember ``data`` a batch at a time (filling the other arguments); seconds taken."""
    started = time.perf_counter()
    for number, start in enumerate(range(0, len(data), REMEMBER_BATCH)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Remember: {start:,} of {len(data):,} memories loaded in "
                               f"{timeout_s:g} s")
        sent = time.perf_counter()
        reply = mesh.remember(data, start, min(len(data), start + REMEMBER_BATCH))
        batch_ms.append((time.perf_counter() - sent) * 1e3)
        outcomes.update(mesh.pb.Outcome.Name(r.outcome) for r in reply.results)
        if number % STATS_EVERY == STATS_EVERY - 1:
            kind = mesh.index_kind()
            if not kinds or kinds[-1][1] != kind:
                kinds.append((round(time.perf_counter() - started, 2), kind))
            if number % PROGRESS_EVERY == PROGRESS_EVERY - 1:
                progress(f"  loaded {start + REMEMBER_BATCH:,} memories, index {kind}")
    return time.perf_counter() - started


# -- the peers --------------------------------------------------------------------------


def _persistent(path: Path, create: bool) -> tuple[Any, Any]:
    """A ChromaDB persistent client on ``path`` and its collection ``bench`` (made in
    cosine space when ``create``); no embedding function: every vector is given."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    client = chromadb.PersistentClient(path=str(path),
                                       settings=ChromaSettings(anonymized_telemetry=False))
    if create:
        return client, client.create_collection(
            "bench", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None)
    return client, client.get_collection("bench", embedding_function=None)


class Chroma:
    """ChromaDB in this process: a persistent client, one collection in cosine space."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.client, self.collection = _persistent(path, create=True)

    def load(self, data: Vectors, timeout_s: float) -> dict[str, Any]:
        batch = int(self.client.get_max_batch_size())
        deadline = time.monotonic() + timeout_s
        started = time.perf_counter()
        for start in range(0, len(data), batch):
            if time.monotonic() > deadline:
                raise TimeoutError(f"ChromaDB add: {start:,} of {len(data):,} in "
                                   f"{timeout_s:g} s")
            end = min(len(data), start + batch)
            self.collection.add(ids=[str(i) for i in range(start, end)],
                                embeddings=data[start:end],
                                documents=[f"memory {i}" for i in range(start, end)])
        loaded_s = time.perf_counter() - started
        return {"chroma_insert_per_s": round(len(data) / loaded_s, 1),
                "chroma_insert_s": round(loaded_s, 2), "chroma_add_batch": batch,
                "chroma_configuration": _jsonable(self.collection.configuration)}

    def search(self, queries: Vectors) -> Search:
        def search(query: int) -> list[int]:  # the collection as it is now (reopened)
            return _ask_chroma(self.collection, queries, query)

        return search

    def set_ef_search(self, ef: int) -> None:
        """``hnsw`` ``ef_search`` of the collection, then the client reopened: an open one
        keeps searching with the ``ef_search`` it loaded the index with (ChromaDB 1.5)."""
        self.collection.modify(configuration={"hnsw": {"ef_search": ef}})
        self.client.clear_system_cache()
        self.client, self.collection = _persistent(self.path, create=False)

    def copy_to(self, dest: Path) -> float:
        """Copy the store to ``dest`` (closed first, so all of it is on disk); seconds."""
        started = time.perf_counter()
        self.client.clear_system_cache()
        shutil.copytree(self.path, dest)
        self.client, self.collection = _persistent(self.path, create=False)
        return time.perf_counter() - started

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.clear_system_cache()


class ChromaServer:
    """ChromaDB's own server (``chroma run``, its Rust HTTP server) on the store at ``path``
    (a copy of the in-process one), queried with ``chromadb.HttpClient``: the peer that, like
    ours through the mesh, answers over the network. Removes ``path`` when closed."""

    def __init__(self, path: Path, log: Path, timeout_s: float = 120.0) -> None:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        self.path = path
        started = time.perf_counter()
        self.port = free_port()
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("chroma")), "run", "--path", str(self.path),
             "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, env=python_env())
        deadline = time.monotonic() + timeout_s
        client: Any = None
        while client is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chroma run exited with {self.proc.returncode} "
                                   f"(log: {self.log.name})")
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError(f"chroma run not answering after {timeout_s:g} s")
            try:
                client = chromadb.HttpClient(host="127.0.0.1", port=self.port,
                                             settings=ChromaSettings(
                                                 anonymized_telemetry=False))
                client.heartbeat()
            except Exception:
                client = None
                time.sleep(0.2)
        self.client: Any = client
        self.collection: Any = client.get_collection("bench", embedding_function=None)
        self.ready_s = round(time.perf_counter() - started, 2)

    def search(self, queries: Vectors) -> Search:
        return _chroma_search(self.collection, queries)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.path, ignore_errors=True)


def _chroma_search(collection: Any, queries: Vectors) -> Search:
    def search(query: int) -> list[int]:
        return _ask_chroma(collection, queries, query)

    return search


def _ask_chroma(collection: Any, queries: Vectors, query: int) -> list[int]:
    reply = collection.query(query_embeddings=queries[query:query + 1], n_results=TOP_K,
                             include=["documents", "distances"])
    return [int(i) for i in reply["ids"][0]]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def measure_milvus_lite(path: Path, data: Vectors, queries: Vectors,
                        truth: npt.NDArray[np.int64],
                        settings: Settings, progress: Callable[[str], None]
                        ) -> dict[str, Any]:
    """Milvus-lite searched directly: insert, index, flush, reload, then timed searches."""
    from pymilvus import DataType, MilvusClient

    path.mkdir(parents=True, exist_ok=True)
    client: Any = MilvusClient(str(path / "milvus.db"))
    try:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("scope", DataType.VARCHAR, max_length=256)
        schema.add_field("text", DataType.VARCHAR, max_length=256)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
        index = client.prepare_index_params()
        index.add_index(field_name="vector", index_type="HNSW", metric_type="COSINE",
                        params={"M": HNSW_M, "efConstruction": EF_CONSTRUCTION})
        client.create_collection("bench", schema=schema, index_params=index)
        deadline = time.monotonic() + settings.load_timeout_s(len(data))
        started = time.perf_counter()
        for start in range(0, len(data), MILVUS_INSERT_BATCH):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Milvus-lite insert: {start:,} of {len(data):,}")
            end = min(len(data), start + MILVUS_INSERT_BATCH)
            client.insert("bench", [{"id": i, "scope": SCOPE_KEY, "text": f"memory {i}",
                                     "vector": data[i].tolist()} for i in range(start, end)])
        inserted_s = time.perf_counter() - started
        # Searches on growing segments are very slow: seal, index and reload them first.
        client.flush("bench")
        client.release_collection("bench")
        client.load_collection("bench")
        ready_s = time.perf_counter() - started
        described = _jsonable(client.describe_index("bench", "vector"))
        progress(f"  milvus-lite: {len(data):,} inserted in {inserted_s:.1f} s, loaded "
                 f"after {ready_s:.1f} s; index {described.get('index_type')}")

        def search(query: int) -> list[int]:
            reply = client.search("bench", data=[queries[query].tolist()], limit=TOP_K,
                                  filter=f'scope == "{SCOPE_KEY}"', output_fields=["text"],
                                  search_params={"metric_type": "COSINE",
                                                 "params": {"ef": EF_SEARCH}})
            return [int(hit["id"]) for hit in reply[0]]

        few = len(data) > MILVUS_FEW_QUERIES_ABOVE
        count, warmup = ((MILVUS_FEW_QUERIES, 5) if few
                         else (settings.queries, settings.warmup))
        loop = QueryLoop("milvus_lite", search)
        loop.ask(range(settings.queries, settings.queries + warmup), settings.loop_timeout_s,
                 measure=False)
        loop.ask(range(count), settings.loop_timeout_s)
        out = loop.summary("milvus_lite_", truth)
        return {
            "milvus_lite_p50_ms_search": out.pop("milvus_lite_p50"),
            "milvus_lite_p99_ms_search": out.pop("milvus_lite_p99"),
            "milvus_lite_recall_at_10": out.pop("milvus_lite_recall"),
            **out,
            "milvus_lite_insert_per_s": round(len(data) / inserted_s, 1),
            "milvus_lite_ready_s": round(ready_s, 2),
            "milvus_lite_index": described,
        }
    finally:
        with contextlib.suppress(Exception):
            client.close()


def milvus_lite_process(path: Path, size: int, settings: Settings) -> dict[str, Any]:
    """:func:`measure_milvus_lite` in a child process (``python -m benchmarks.recall
    milvus-lite``) on the same data, made again from the seed: whatever milvus-lite keeps in
    memory goes with the process, before the others load."""
    argv = [sys.executable, "-m", "benchmarks.recall", "milvus-lite", "--size", str(size),
            "--dir", str(path), "--queries", str(settings.queries),
            "--warmup", str(settings.warmup), "--loop-timeout", str(settings.loop_timeout_s)]
    # The insert, the index build and reload, and both query loops, each bounded.
    limit = settings.load_timeout_s(size) * 2 + 2 * settings.loop_timeout_s + 300
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=limit,
                          check=False, cwd=REPO_ROOT, env=python_env())
    if done.returncode != 0:
        raise RuntimeError(f"the milvus-lite process exited with {done.returncode} (its "
                           "output is above)")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def build_index(data: Vectors) -> tuple[Any, float]:
    """``MemoryIndex.build`` of the data, all in the bench scope, and how long it took."""
    from revo_engine_recall.index import IndexSettings, MemoryIndex, Row

    started = time.perf_counter()
    rows = []
    for i in range(len(data)):
        text = f"memory {i}"
        rows.append(Row(id=str(i), scope=SCOPE_KEY, owner="anonymous", text=text,
                        text_hash=hashlib.sha256(text.encode()).hexdigest(),
                        created_ms=1, updated_ms=1))
    index = MemoryIndex.build(IndexSettings(), rows, data)
    return index, time.perf_counter() - started


def index_search(index: Any, queries: Vectors, answered_by: Counter[str]) -> Search:
    def search(query: int) -> list[int]:
        hits, kind = index.search(queries[query], TOP_K, [SCOPE_KEY])
        answered_by[kind] += 1
        return [int(hit.row.id) for hit in hits]

    return search


# -- faiss's HNSW alone -----------------------------------------------------------------


def build_bare_hnsw(data: Vectors) -> tuple[Any, float]:
    """``faiss.IndexHNSWFlat`` of ``data`` with the index's M and efConstruction, inner
    product (cosine on these unit vectors), as a faiss user would build it; and seconds."""
    import faiss

    from revo_engine_recall.index import IndexSettings

    settings = IndexSettings()
    started = time.perf_counter()
    graph = faiss.IndexHNSWFlat(DIM, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = settings.ef_construction
    graph.add(data)
    return graph, time.perf_counter() - started


def hnsw_search(graph: Any, queries: Vectors, ef: int) -> Search:
    """One query to the bare graph at ``efSearch`` ``ef``: no scope filter, no rows."""
    import faiss

    params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
    params.efSearch = ef

    def search(query: int) -> list[int]:
        _, ids = graph.search(queries[query:query + 1], TOP_K, params=params)
        return [int(i) for i in ids[0] if i >= 0]

    return search


def sweep_ef(at_ef: Callable[[int], Search], efs: Sequence[int], queries: range,
             truth: npt.NDArray[np.int64], target: float, past_match: int,
             progress: Callable[[str], None], label: str
             ) -> tuple[list[dict[str, Any]], int | None]:
    """Recall@10 and latency of ``at_ef(ef)`` (a search at that ``ef``) for each of
    ``efs`` over the measured ``queries``, one at a time (not interleaved), after
    :data:`SWEEP_WARMUP` others; and the smallest ``ef`` whose recall@10 is within
    :data:`RECALL_MATCH` of ``target`` (None: none is). Stops ``past_match`` values after
    the first whose recall@10 reaches ``target`` itself, and at :data:`SWEEP_TIMEOUT_S`."""
    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    warmup = range(queries.stop, queries.stop + SWEEP_WARMUP)
    rows: list[dict[str, Any]] = []
    matched: int | None = None
    past = 0
    for ef in efs:
        if time.monotonic() > deadline:
            progress(f"{label}: sweep stopped at its time limit before ef {ef}")
            break
        loop = QueryLoop(f"{label} ef {ef}", at_ef(ef))
        loop.ask(warmup, max(0.0, deadline - time.monotonic()), measure=False)
        loop.ask(queries, max(0.0, deadline - time.monotonic()))
        out = loop.summary("", truth)
        recall = out["recall"]
        rows.append({"ef": ef, "recall_at_10": recall, "p50_ms": out["p50"],
                     "p99_ms": out["p99"], "queries": out["queries"],
                     "errors": out["errors"]})
        progress(f"{label} ef {ef}: recall@10 {_num(recall, 4)}, p50 {_num(out['p50'], 3)} "
                 f"ms ({out['queries']} queries)")
        if recall is None or out["queries"] < len(queries):
            continue  # a partial pass matches nothing
        if matched is None and recall >= target - RECALL_MATCH:
            matched = ef
        if recall >= target:
            past += 1
            if past > past_match:
                break
    return rows, matched


# -- Triton -----------------------------------------------------------------------------


@contextlib.contextmanager
def triton_server(workdir: Path, progress: Callable[[str], None]
                  ) -> Iterator[tuple[str | None, str | None]]:
    """The embedder on Triton for the end-to-end path: (its gRPC address, None), or (None,
    why not)."""
    if find_spec("tritonclient") is None or find_spec("pytriton") is None:
        yield None, "needs the models extra (nvidia-pytriton, tritonclient): ./dev bench"
        return
    from mesh.embedded.triton import TritonServer

    server = TritonServer(MODEL_REPOSITORY, workdir / "triton", models=[EMBEDDER])
    started = time.monotonic()
    try:
        with threads_env():
            server.start(timeout=180.0)
    except Exception as exc:
        server.stop()
        yield None, f"Triton did not start: {type(exc).__name__}: {exc}"[:300]
        return
    progress(f"Triton (embedder) ready in {time.monotonic() - started:.1f} s")
    try:
        yield server.grpc_url, None
    finally:
        server.stop()


# -- one size ---------------------------------------------------------------------------


def measure_size(size: int, queries: Vectors, texts: Sequence[str], settings: Settings,
                 workdir: Path, triton_url: str | None, mesh_problem: str | None,
                 text_problem: str | None, progress: Callable[[str], None]
                 ) -> dict[str, Any]:
    """Everything at ``size``; frees what it built before returning."""
    result: dict[str, Any] = {"size": size, "revision": revision("mesh", "plugins/recall")}
    not_measured: dict[str, str] = {}
    started = time.perf_counter()
    data = make_data(size, len(queries))
    truth_ids, truth_scores = ground_truth(data, queries[:settings.queries])
    top1 = truth_scores[:, 0]
    result["data"] = {
        "generate_and_truth_s": round(time.perf_counter() - started, 2),
        "top1_cosine_median": round(float(np.median(top1)), 3),
        "top1_cosine_p10": round(float(np.percentile(top1, 10)), 3),
        "top10_cosine_median": round(float(np.median(truth_scores[:, -1])), 3),
    }
    progress(f"{size:,}: data and ground truth in {result['data']['generate_and_truth_s']} s;"
             f" top-1 cosine median {result['data']['top1_cosine_median']}, 10th percentile "
             f"{result['data']['top1_cosine_p10']}")
    here = workdir / f"n{size}"
    here.mkdir()
    loops: dict[str, QueryLoop] = {"numpy": QueryLoop("numpy", numpy_search(data, queries))}
    fleet = Fleet(here)
    mesh: Mesh | None = None
    chroma: Chroma | None = None
    chroma_server: ChromaServer | None = None
    index: Any = None
    graph: Any = None
    index_answers: Counter[str] = Counter()
    try:
        if size > settings.milvus_lite_max:
            not_measured["milvus_lite"] = (
                f"skipped above {settings.milvus_lite_max:,} (`--milvus-lite-max`): loading "
                "and indexing this many rows in milvus-lite takes longer than the rest of the "
                "size's run")
        else:
            try:
                result |= milvus_lite_process(here / "milvus-lite", size, settings)
            except Exception as exc:  # a peer's failure is reported, not fatal
                not_measured["milvus_lite"] = f"{type(exc).__name__}: {exc}"[:500]
                progress(f"{size:,}: milvus-lite not measured: "
                         f"{not_measured['milvus_lite']}")
        shutil.rmtree(here / "milvus-lite", ignore_errors=True)
        gc.collect()
        if mesh_problem is None:
            try:
                mesh = Mesh(fleet, triton_url)
                progress(f"{size:,}: mesh ready in {mesh.target.startup_s:g} s; loading")
                result |= load_mesh(mesh, data, queries, settings.load_timeout_s(size),
                                    progress)
            except Exception as exc:  # ours failed: say so, and still measure the peers
                mesh_problem = f"{type(exc).__name__}: {exc}"[:500]
                progress(f"{size:,}: ours not measured: {mesh_problem}")
            else:
                progress(f"{size:,}: ours loaded at {result['insert_per_s']:,.0f} memories/s,"
                         f" outcomes {result['outcomes']}, index {result['index_after_load']}")
                loops["search"] = QueryLoop("search", mesh.vector_search(queries))
                if text_problem is None:
                    loops["end_to_end"] = QueryLoop("end_to_end", mesh.text_search(texts))
        if mesh_problem is not None:
            not_measured["search"] = mesh_problem
        if mesh_problem or text_problem:
            not_measured["end_to_end"] = mesh_problem or text_problem or ""
        chroma = Chroma(here / "chroma")
        result |= chroma.load(data, settings.load_timeout_s(size))
        progress(f"{size:,}: ChromaDB loaded at {result['chroma_insert_per_s']:,.0f} "
                 "vectors/s")
        loops["chroma"] = QueryLoop("chroma", chroma.search(queries))
        try:
            copy_s = chroma.copy_to(here / "chroma-server")
            chroma_server = ChromaServer(here / "chroma-server", here / "chroma-server.log")
        except Exception as exc:  # a peer's failure is reported, not fatal
            not_measured["chroma_server"] = f"{type(exc).__name__}: {exc}"[:500]
            progress(f"{size:,}: ChromaDB server not measured: "
                     f"{not_measured['chroma_server']}")
        else:
            result["chroma_server_copy_s"] = round(copy_s, 2)
            result["chroma_server_ready_s"] = chroma_server.ready_s
            loops["chroma_server"] = QueryLoop("chroma_server", chroma_server.search(queries))
            progress(f"{size:,}: ChromaDB server on a copy of the store, ready in "
                     f"{chroma_server.ready_s:g} s")
        index, build_s = build_index(data)
        result["index_build_s"] = round(build_s, 2)
        result["index_kind"] = index.kind
        loops["index"] = QueryLoop("index", index_search(index, queries, index_answers))
        progress(f"{size:,}: in-process index ({index.kind}) built in {build_s:.1f} s")
        graph, graph_s = build_bare_hnsw(data)
        result["hnsw_build_s"] = round(graph_s, 2)
        progress(f"{size:,}: faiss HNSW alone built in {graph_s:.1f} s")
        result |= match_bare_hnsw(loops, graph, index, queries, truth_ids, settings, progress,
                                  size)
        try:
            result |= match_chroma(chroma, queries, truth_ids, result.get("hnsw_matched_to"),
                                   settings, progress, size)
        except Exception as exc:  # a peer's failure is reported, not fatal
            not_measured["chroma_sweep"] = f"{type(exc).__name__}: {exc}"[:500]
            progress(f"{size:,}: ChromaDB ef_search sweep failed: "
                     f"{not_measured['chroma_sweep']}")
        rounds = measure_queries(loops, settings, progress, size)
        result |= summarize_loops(loops, truth_ids)
        result |= round_figures(rounds)
        result["index_answered_by"] = dict(index_answers)
        if mesh is not None:
            mesh.target.check_alive()
            result["mesh_answered_by"] = dict(mesh.answered_by)
            result["stats_memories_after"] = mesh.stats().memories
    finally:
        loops.clear()  # the searches hold the data, the index and the clients
        if mesh is not None:
            mesh.close()
            result["mesh_startup_s"] = mesh.target.startup_s
        findings = fleet.log_findings()
        stop_problems = fleet.stop()
        at_stop = _new_findings(findings, fleet.log_findings())
        if chroma is not None:
            chroma.close()
        if chroma_server is not None:
            chroma_server.close()
        del chroma, chroma_server, index, graph, data
        for name in ("mesh-home", "mesh-nats", "chroma", "chroma-server", "milvus-lite"):
            shutil.rmtree(here / name, ignore_errors=True)  # the logs stay
        gc.collect()
    for problem in stop_problems:
        progress(f"{size:,}: on stop: {problem}")
    result["not_measured"] = not_measured
    result["log_findings"] = {"run": findings, "stop": at_stop}
    result["stop_problems"] = stop_problems
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    result["measured_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return result


def match_bare_hnsw(loops: dict[str, QueryLoop], graph: Any, index: Any, queries: Vectors,
                    truth: npt.NDArray[np.int64], settings: Settings,
                    progress: Callable[[str], None], size: int) -> dict[str, Any]:
    """The index's recall@10 over the measured queries (a pass before the rounds: its
    answers do not depend on timing), the bare graph's ``ef`` sweep, and the bare HNSW
    query loop at the matched ``ef`` added to ``loops``."""
    before = QueryLoop("index", index_search(index, queries, Counter()))
    before.ask(range(settings.queries, settings.queries + SWEEP_WARMUP),
               settings.loop_timeout_s, measure=False)
    before.ask(range(settings.queries), settings.loop_timeout_s)
    target = recall_at_k(before.found, truth)
    sequential = before.summary("", None)
    alone = {"index_sequential_p50_ms": sequential["p50"],
             "index_sequential_p99_ms": sequential["p99"]}
    if target is None or len(before.found) < settings.queries:
        progress(f"{size:,}: the index answered {len(before.found)} of {settings.queries} "
                 "queries before the rounds: faiss HNSW alone not matched")
        return {**alone, "hnsw_sweep": [], "hnsw_ef": None, "hnsw_matched_to": target}
    sweep, matched = sweep_ef(lambda ef: hnsw_search(graph, queries, ef), PEER_EFS,
                              range(settings.queries), truth, target, SWEEP_PAST_MATCH,
                              progress, f"{size:,}: faiss HNSW")
    at_or_above = next((row["ef"] for row in sweep if row["recall_at_10"] is not None
                        and row["queries"] == settings.queries
                        and row["recall_at_10"] >= target), None)
    ef = matched if matched is not None else (sweep[-1]["ef"] if sweep else PEER_EFS[-1])
    loops["hnsw"] = QueryLoop("hnsw", hnsw_search(graph, queries, ef))
    progress(f"{size:,}: the index's recall@10 {target:.4f}; faiss HNSW alone runs at ef "
             f"{ef}" + ("" if matched is not None else " (no swept ef matched)"))
    return {**alone, "hnsw_sweep": sweep, "hnsw_ef": ef, "hnsw_matched": matched is not None,
            "hnsw_ef_at_or_above_index": at_or_above, "hnsw_matched_to": target,
            "hnsw_m": graph.hnsw.nb_neighbors(1),
            "hnsw_ef_construction": graph.hnsw.efConstruction}


def match_chroma(chroma: Chroma, queries: Vectors, truth: npt.NDArray[np.int64],
                 target: float | None, settings: Settings, progress: Callable[[str], None],
                 size: int) -> dict[str, Any]:
    """ChromaDB in process with ``ef_search`` swept from its default up to the index's
    recall@10 ``target`` (its form tuned to the same recall), before the rounds, one query
    at a time; then back to its default for the rounds."""
    if target is None:
        return {"chroma_sweep": [], "chroma_matched_ef": None}

    def at_ef(ef: int) -> Search:
        chroma.set_ef_search(ef)
        return chroma.search(queries)

    try:
        sweep, matched = sweep_ef(at_ef, CHROMA_EFS, range(settings.queries), truth, target,
                                  0, progress, f"{size:,}: ChromaDB")
    finally:
        chroma.set_ef_search(CHROMA_DEFAULT_EF)
    return {"chroma_sweep": sweep, "chroma_matched_ef": matched}


def measure_queries(loops: dict[str, QueryLoop], settings: Settings,
                    progress: Callable[[str], None], size: int) -> dict[str, list[float]]:
    """Warm every path up, then ask the queries in rounds, the paths interleaved; each
    path's p50 (ms) in each round."""
    warmup = range(settings.queries, settings.queries + settings.warmup)
    for loop in loops.values():
        loop.ask(warmup, settings.loop_timeout_s, measure=False)
    rounds: dict[str, list[float]] = {name: [] for name in loops}
    shares = np.array_split(np.arange(settings.queries), settings.rounds)
    for index, share in enumerate(shares):
        for name in order(index):
            if name in loops:
                time.sleep(SETTLE_S)
                done = len(loops[name].latencies_ms)
                loops[name].ask(share.tolist(), settings.loop_timeout_s)
                mine = sorted(loops[name].latencies_ms[done:])
                rounds[name].append(round(percentile(mine, 50), 3) if mine else float("nan"))
        progress(f"{size:,}: round {index + 1}/{settings.rounds}: " + "  ".join(
            f"{name} p50 {p50s[-1]:.2f} ms" for name, p50s in rounds.items() if p50s))
    return rounds


ROUND_RATIOS = (("search", "chroma_server"), ("index", "chroma"), ("search", "chroma"),
                ("index", "hnsw"))
"""Pairs whose p50 ratio is also given round by round (the spread of the headline ratios)."""


def round_figures(rounds: dict[str, list[float]]) -> dict[str, Any]:
    """Each path's p50 per round, and the per-round p50 ratios of :data:`ROUND_RATIOS`."""
    ratios = {}
    for ours, theirs in ROUND_RATIOS:
        a, b = rounds.get(ours, []), rounds.get(theirs, [])
        if a and len(a) == len(b):
            ratios[f"{ours}_to_{theirs}"] = [_ratio(x, y) for x, y in zip(a, b, strict=True)]
    return {"round_p50_ms": rounds, "round_ratio_p50": ratios}


def summarize_loops(loops: dict[str, QueryLoop], truth: npt.NDArray[np.int64]
                    ) -> dict[str, Any]:
    """The per-size fields of the query paths (``None`` where a path did not run)."""
    names = {"search": ("", "_ms_search", "recall_at_10"),
             "end_to_end": ("", "_ms_end_to_end", None),
             "index": ("", "_ms_index", "index_recall_at_10"),
             "chroma": ("chroma_", "_ms_search", "chroma_recall_at_10"),
             "chroma_server": ("chroma_server_", "_ms_search", "chroma_server_recall_at_10"),
             "hnsw": ("hnsw_", "_ms", "hnsw_recall_at_10"),
             "numpy": ("numpy_", "_ms", "numpy_recall_at_10")}
    out: dict[str, Any] = {}
    for path, (prefix, suffix, recall_key) in names.items():
        loop = loops.get(path)
        summary = loop.summary("", truth if recall_key else None) if loop else {}
        out[f"{prefix}p50{suffix}"] = summary.get("p50")
        out[f"{prefix}p99{suffix}"] = summary.get("p99")
        if recall_key:
            out[recall_key] = summary.get("recall")
        out[f"{path}_queries"] = summary.get("queries", 0)
        out[f"{path}_errors"] = summary.get("errors", 0)
        for extra in ("queries_not_asked", "error_samples"):
            if extra in summary:
                out[f"{path}_{extra}"] = summary[extra]
    for stat in ("p50", "p99"):
        out[f"ratio_{stat}_search_to_chroma"] = _ratio(out[f"{stat}_ms_search"],
                                                       out[f"chroma_{stat}_ms_search"])
        out[f"ratio_{stat}_search_to_chroma_server"] = _ratio(
            out[f"{stat}_ms_search"], out[f"chroma_server_{stat}_ms_search"])
        out[f"ratio_{stat}_index_to_chroma"] = _ratio(out[f"{stat}_ms_index"],
                                                      out[f"chroma_{stat}_ms_search"])
        out[f"ratio_{stat}_search_to_numpy"] = _ratio(out[f"{stat}_ms_search"],
                                                      out[f"numpy_{stat}_ms"])
        out[f"ratio_{stat}_index_to_hnsw"] = _ratio(out[f"{stat}_ms_index"],
                                                    out[f"hnsw_{stat}_ms"])
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return (round(a / b, 3) if a is not None and b is not None and b > 0
            and not np.isnan(a) and not np.isnan(b) else None)


# -- results ----------------------------------------------------------------------------


def check_targets(sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every target with its verdict: met, missed, or not measured (and why)."""
    by_size = {s["size"]: s for s in sizes}
    checks = []
    for name, size, key, comparison, threshold in TARGETS:
        value = by_size.get(size, {}).get(key)
        if value is None:
            verdict = "not measured"
        elif comparison == "<=":
            verdict = "met" if value <= threshold else "missed"
        else:
            verdict = "met" if value >= threshold else "missed"
        checks.append({"target": name, "size": size, "field": key,
                       "threshold": f"{comparison} {threshold:g}", "value": value,
                       "verdict": verdict, **_kept(by_size.get(size))})
    for size in sorted(set(SIZES) | set(by_size)):
        cell = by_size.get(size, {})
        for title, ours, theirs, ratio in PEER_TARGETS:
            pairs: list[tuple[float | None, float | None]] = [
                (cell.get(ours.format(q=q)), cell.get(theirs.format(q=q)))
                for q in ("p50", "p99")]
            known = [(a, b) for a, b in pairs if a is not None and b is not None]
            if len(known) < len(pairs):
                verdict = "not measured"
            else:
                verdict = "met" if all(a < b for a, b in known) else "missed"
            checks.append({"target": title.format(size=_size_label(size)), "size": size,
                           "field": ", ".join(ours.format(q=q) for q in ("p50", "p99")),
                           "threshold": "< " + ", ".join(theirs.format(q=q)
                                                         for q in ("p50", "p99")),
                           "value": [cell.get(ratio.format(q=q)) for q in ("p50", "p99")],
                           "verdict": verdict, **_kept(cell)})
    return checks


def _kept(cell: dict[str, Any] | None) -> dict[str, Any]:
    """For a size kept from an earlier run (``--merge``): where its figures come from."""
    if not cell or not cell.get("kept_from"):
        return {}
    return {"kept_from_commit": cell.get("revision", {}).get("commit"),
            "kept_queries": cell.get("search_queries")}


def overall(checks: list[dict[str, Any]]) -> str:
    verdicts = {c["verdict"] for c in checks}
    if "missed" in verdicts:
        return "miss"
    return "pass" if verdicts == {"met"} else "partial (no target missed; some not measured)"


def _size_label(size: int) -> str:
    return f"{size // 1_000_000}M" if size >= 1_000_000 and size % 1_000_000 == 0 \
        else f"{size // 1000}k" if size % 1000 == 0 else str(size)




def build_results(sizes: list[dict[str, Any]], settings: Settings, command: str,
                  facts: dict[str, Any]) -> dict[str, Any]:
    checks = check_targets(sizes)
    return {
        "benchmark": NAME,
        "mode": settings.mode,
        "pass": overall(checks),
        "targets": checks,
        "sizes": sizes,
        "settings": {
            "sizes": list(settings.sizes), "queries": settings.queries,
            "warmup": settings.warmup, "rounds": settings.rounds, "top_k": TOP_K,
            "loop_timeout_s": settings.loop_timeout_s, "remember_batch": REMEMBER_BATCH,
            "scope": SCOPE_KEY, "scope_quota": SCOPE_QUOTA,
            "dedup_threshold": DEDUP_THRESHOLD, "milvus_lite": {
                "index": "HNSW", "metric": "COSINE", "M": HNSW_M,
                "efConstruction": EF_CONSTRUCTION, "ef": EF_SEARCH,
                "insert_batch": MILVUS_INSERT_BATCH,
                "queries_above_100k": MILVUS_FEW_QUERIES},
            "hnsw_alone": {
                "index": "faiss.IndexHNSWFlat", "metric": "inner product (unit vectors)",
                "M": HNSW_M, "efConstruction": EF_CONSTRUCTION, "efs_swept": list(PEER_EFS),
                "match": f"smallest swept efSearch with recall@10 >= the index's - "
                         f"{RECALL_MATCH:g}", "sweep_warmup": SWEEP_WARMUP,
                "sweep_timeout_s": SWEEP_TIMEOUT_S},
            "order": "per round: " + ", ".join(QUERY_PATHS) + ", rotated by the round",
        },
        "data": {"dim": DIM, "latent_dim": LATENT_DIM, "centres": CENTRES,
                 "centre_spread": CENTRE_SPREAD, "noise": NOISE, "seed": DATA_SEED,
                 "generator": "unit(z @ W + noise * N(0, I_384)), z = C[random centre] + "
                              "spread * N(0, I_48), W ~ N(0,1)^(48x384), C ~ "
                              f"N(0,1)^(2000x48); queries: the first "
                              f"{settings.queries + settings.warmup} points of the stream "
                              f"({settings.queries} measured, {settings.warmup} warm-up), "
                              "data after them"},
        "machine": machine_info("chromadb", "pymilvus", "milvus-lite", "faiss-cpu", "numpy",
                                "grpcio", "nats-py", "protobuf", "tritonclient",
                                "nvidia-pytriton", "revo-mesh", "revo-engine-recall"),
        "command": command,
        "revision": revision("mesh", "plugins/recall"),
        **facts,
    }


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _range(values: Sequence[float | None] | None) -> str:
    known = [v for v in values or [] if v is not None]
    return f"{min(known):.2f}-{max(known):.2f}x" if known else "-"


def render_markdown(results: dict[str, Any]) -> str:
    sizes = results["sizes"]
    labels = [_size_label(s["size"]) for s in sizes]
    paths = (("ours, Search by vector (mesh)", "p50_ms_search", "p99_ms_search",
              "recall_at_10"),
             ("ours, Search by text, end to end (mesh + Triton)", "p50_ms_end_to_end",
              "p99_ms_end_to_end", None),
             ("ours, MemoryIndex.search in-process", "p50_ms_index", "p99_ms_index",
              "index_recall_at_10"),
             ("faiss HNSW alone in-process, efSearch matched to the index's recall",
              "hnsw_p50_ms", "hnsw_p99_ms", "hnsw_recall_at_10"),
             ("ChromaDB, in-process", "chroma_p50_ms_search", "chroma_p99_ms_search",
              "chroma_recall_at_10"),
             ("ChromaDB server (`chroma run`, HttpClient)", "chroma_server_p50_ms_search",
              "chroma_server_p99_ms_search", "chroma_server_recall_at_10"),
             ("numpy brute force (baseline)", "numpy_p50_ms", "numpy_p99_ms",
              "numpy_recall_at_10"),
             ("Milvus-lite, direct", "milvus_lite_p50_ms_search", "milvus_lite_p99_ms_search",
              "milvus_lite_recall_at_10"))
    rows = []
    for title, p50, p99, recall in paths:
        row = [title]
        for cell in sizes:
            row += [_num(cell.get(p50)), _num(cell.get(p99)),
                    _num(cell.get(recall), 3) if recall else "n/a"]
        rows.append(row)
    header = ["path"] + [f"{label} {what}" for label in labels
                         for what in ("p50 ms", "p99 ms", "recall@10")]
    latency = markdown_table(header, rows, [False] + [True] * (3 * len(sizes)))
    load_rows = [[_size_label(c["size"]), _num(c.get("insert_per_s"), 0),
                  f"{c.get('memories_stored', '-')} / {c.get('memories_merged', '-')}",
                  f"{c.get('index_after_load', '-')}"
                  + (f" ({_num(c.get('hnsw_after_s'), 1)} s)" if c.get("hnsw_after_s")
                     else ""),
                  f"{_num(c.get('p50_ms_search_during_load'))} / "
                  f"{_num(c.get('p99_ms_search_during_load'))}",
                  _num(c.get("chroma_insert_per_s"), 0),
                  _num(c.get("milvus_lite_insert_per_s"), 0), _num(c.get("index_build_s"), 1),
                  _num(c.get("hnsw_build_s"), 1)]
                 for c in sizes]
    load = markdown_table(
        ["size", "ours memories/s", "stored / merged", "engine index (graph after)",
         "ours search while loading p50 / p99 ms", "ChromaDB vectors/s",
         "Milvus-lite rows/s", "MemoryIndex.build s", "faiss HNSW alone build s"], load_rows,
        [False, True, True, False, True, True, True, True, True])
    ratio_rows = [[_size_label(c["size"])] + [
        f"{_x(c.get(f'ratio_p50_{ours}_to_{theirs}'))} "
        f"({_range(c.get('round_ratio_p50', {}).get(f'{ours}_to_{theirs}'))}) / "
        f"{_x(c.get(f'ratio_p99_{ours}_to_{theirs}'))}"
        for ours, theirs in ROUND_RATIOS] for c in sizes]
    ratios = markdown_table(
        ["size", "mesh / Chroma server", "index / Chroma in-process",
         "mesh / Chroma in-process", "index / faiss HNSW alone (matched recall)"],
        ratio_rows, [False, True, True, True, True])
    sweep_rows = []
    for c in sizes:
        if c.get("index_sequential_p50_ms") is None:
            continue
        sweep_rows.append([_size_label(c["size"]), "ours, MemoryIndex.search",
                           "exact" if c.get("index_kind") == "exact" else
                           f"{c.get('index_kind')}, {EF_SEARCH}",
                           _num(c.get("hnsw_matched_to"), 4),
                           _num(c.get("index_sequential_p50_ms"), 3),
                           _num(c.get("index_sequential_p99_ms"), 3), "the recall to match"])
        for peer, key, used in (("faiss HNSW alone", "hnsw_sweep", c.get("hnsw_ef")),
                                ("ChromaDB in-process", "chroma_sweep",
                                 c.get("chroma_matched_ef"))):
            for row in c.get(key, []):
                notes = [note for note, on in (
                    ("**matched**" + (" (used in the rounds)" if peer.startswith("faiss")
                                      else ""), row["ef"] == used),
                    ("ChromaDB's default (the rounds)",
                     peer.startswith("Chroma") and row["ef"] == CHROMA_DEFAULT_EF))
                    if on]
                sweep_rows.append([_size_label(c["size"]), peer, str(row["ef"]),
                                   _num(row["recall_at_10"], 4), _num(row["p50_ms"], 3),
                                   _num(row["p99_ms"], 3), ", ".join(notes)])
    sweep = markdown_table(["size", "path", "ef (search)", "recall@10", "p50 ms", "p99 ms",
                            ""], sweep_rows, [False, False, True, True, True, True, False])
    matched_to = "; ".join(
        f"{_size_label(c['size'])}: the index's {_num(c.get('hnsw_matched_to'), 4)}"
        for c in sizes if c.get("hnsw_sweep"))
    target_rows = [[c["target"], c["threshold"].replace("<", "&lt;").replace(">", "&gt;"),
                    (f"p50 {_x(c['value'][0])}, p99 {_x(c['value'][1])}"
                     if isinstance(c["value"], list) else _num(c["value"], 3)),
                    f"**{c['verdict']}**" + (
                        f" (stale: kept from commit `{c['kept_from_commit']}`, "
                        f"{c['kept_queries']} queries)" if c.get("kept_from_commit") else "")]
                   for c in results["targets"]]
    targets = markdown_table(["target", "threshold", "value", "verdict"], target_rows,
                             [False, False, True, False])
    machine = results["machine"]
    packages = machine["packages"]
    s = results["settings"]
    d = results["data"]
    data_lines = [f"{_size_label(c['size'])}: top-1 cosine median "
                  f"{c['data']['top1_cosine_median']}, 10th percentile "
                  f"{c['data']['top1_cosine_p10']}, 10th neighbour median "
                  f"{c['data']['top10_cosine_median']}" for c in sizes]
    not_measured = [f"- **{_size_label(c['size'])} {path}: not measured**: {why}."
                    for c in sizes for path, why in c["not_measured"].items()]
    errors = [f"- {_size_label(c['size'])} {path}: {c[f'{path}_errors']} errors, e.g. "
              f"{c.get(f'{path}_error_samples', [''])[0]}"
              for c in sizes for path in QUERY_PATHS if c.get(f"{path}_errors")]
    findings = [f"{_size_label(c['size'])} {name}: {f['warnings']} warnings, "
                f"{f['errors']} errors" for c in sizes
                for name, f in c["log_findings"]["run"].items()]
    kept = [f"- **{_size_label(c['size'])} is kept from an earlier run** (`--merge`): "
            f"measured at commit `{c.get('revision', {}).get('commit')}` on "
            f"{c.get('measured_at')} with {c.get('search_queries')} queries per path (its "
            "data drawn after that many queries and their warm-up, so other vectors of the "
            "same distribution), before faiss's HNSW alone and the matched-recall sweeps "
            "were measured: **stale** until re-run." for c in sizes
            if c.get("kept_from")]
    lines = [
        "# recall: Perfect Recall against ChromaDB, faiss HNSW, numpy brute force and "
        "Milvus-lite",
        "",
        f"Mode **{results['mode']}**, {machine['date']}, {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}, {machine['platform']}; chromadb "
        f"{packages['chromadb']}, pymilvus {packages['pymilvus']}, milvus-lite "
        f"{packages['milvus-lite']}, faiss-cpu {packages['faiss-cpu']}, numpy "
        f"{packages['numpy']}.",
        "",
        f"Targets (overall: **{results['pass']}**):",
        "",
        targets,
        "",
        f"Search latency, one query at a time, top {TOP_K}, {s['queries']:,} queries per "
        f"path after {s['warmup']} to warm up (Milvus-lite above 100k: "
        f"{MILVUS_FEW_QUERIES}); recall@10 against exact top 10:",
        "",
        latency,
        "",
        *kept,
        *([""] if kept else []),
        "Ratios of p50 (the per-round range of p50 ratios) / p99, below 1 where ours is "
        "faster:",
        "",
        ratios,
        "",
        "Matched recall: before the rounds, one query at a time and not interleaved, the "
        "index answers every measured query (its recall@10 is the one to match: "
        f"{matched_to or 'none'}), then faiss's HNSW alone and ChromaDB in process answer "
        "them at each swept ef (efSearch; ChromaDB's `hnsw` `ef_search`):",
        "",
        sweep,
        "",
        "Loading:",
        "",
        load,
        "",
    ]
    lines += not_measured + errors + ([""] if not_measured or errors else [])
    lines += [
        "How it was measured:",
        "",
        f"- **Data**: {DIM}-dimensional unit vectors with a low intrinsic dimension, like "
        f"real sentence embeddings: `unit(z @ W + {NOISE:g} * noise)` with `z` one of "
        f"{CENTRES} random centres in {LATENT_DIM} dimensions plus `{CENTRE_SPREAD:g} * "
        f"noise`, `W` a random {LATENT_DIM}x{DIM} projection, seed {d['seed']}. Queries: "
        f"{s['queries']} fresh points of the same distribution (not in the data; the same "
        "at every size), after a warm-up of "
        f"{s['warmup']} others. Nearest neighbours: " + "; ".join(data_lines)
        + " (neighbours as close as related sentences, not near-copies). Ground truth: "
        "exact top 10 by numpy (chunked matmul, float32).",
        f"- **Ours, Search by vector**: `RecallService.Search` (`vector`, `top_k` {TOP_K}, "
        f"`scopes` = [project `{SCOPE_ID}`]) through `python -m mesh gateway` -> "
        "nats-server -> `python -m mesh node` (engines `recall` and `models`, security off), "
        "from a blocking gRPC channel in the benchmark's process. Every memory is in that "
        "one project scope: the worst case, the whole collection is the candidate set. "
        "Recall is read from the answers' texts (`memory <i>`).",
        "- **Ours, end to end**: the same with `text` (short distinct sentences): the engine "
        "embeds it with `ModelService.Embed` on Triton (the shipped `embedder`, "
        "all-MiniLM-L6-v2 on the CPU, Python backend, "
        f"{TORCH_THREADS} intra-op threads: `EMBEDDER_THREADS` and `OMP_NUM_THREADS`). "
        "The data is synthetic, so only latency means anything here.",
        f"- **Loading ours**: `Remember` in batches of {REMEMBER_BATCH} `MemoryInput` with "
        "`vector` given (nothing embedded) and unique texts, one batch at a time; "
        "memories/s over the whole load. `[engines.recall]` `scope_quota` = "
        f"{SCOPE_QUOTA:,}, `dedup_threshold` = {DEDUP_THRESHOLD} (the default; stored / "
        "merged counts the outcomes), storage: milvus-lite at `<REVO_HOME>/recall.db` (the "
        "default). Above `exact_max` (20k) the engine builds an HNSW graph off its thread; "
        f"searches wait until `Stats.index` says `hnsw` (the table's time: from the first "
        f"batch until a `Stats` call, made every {STATS_EVERY} batches, first said so). "
        f"Meanwhile another thread asks one vector search every "
        f"{LOADING_SEARCH_EVERY_S:g} s: *search while loading* (the first batches included).",
        "- **MemoryIndex.search in-process**: `MemoryIndex.build(IndexSettings(), rows, "
        "vectors)` of the same data (defaults: exact up to 20k candidates, else faiss HNSW "
        "M 32, efConstruction 64, efSearch 96) searched in the benchmark's process: the "
        "index without the gRPC and NATS hops.",
        "- **faiss HNSW alone** (the index's peer at matched recall, as BENCHMARKING.md "
        "asks): `faiss.IndexHNSWFlat(384, M 32, METRIC_INNER_PRODUCT)`, efConstruction 64 "
        "(the index's; faiss's default is 40), `add` of the same data, searched in the "
        "benchmark's process with `search(q, 10, params=SearchParametersHNSW(efSearch=ef))`"
        " and no scope filter (the index searches with a bitmap of the scope's slots and "
        "builds rows). Before the rounds the index answers every measured query once "
        "(its answers do not depend on timing: its recall@10), then efSearch is swept over "
        f"{', '.join(map(str, PEER_EFS))} (each over all measured queries after "
        f"{SWEEP_WARMUP} to warm up), stopping {SWEEP_PAST_MATCH} values after the first "
        "that reaches the index's recall@10; the rounds use the smallest efSearch whose "
        f"recall@10 is at least the index's minus {RECALL_MATCH:g}.",
        "- **ChromaDB at the index's recall** (its tuned form): before the rounds, "
        "`collection.modify(configuration={'hnsw': {'ef_search': ef}})` and the client "
        "reopened (an open client keeps the ef_search it loaded with) for ef "
        f"{', '.join(map(str, CHROMA_EFS))}, each over all measured queries, until recall@10 "
        "reaches the index's; then back to its default (100) for the rounds. The sweep's "
        "latencies are one query at a time but not interleaved: compare them with the "
        "index's own pass before the rounds (the sweep table's first row per size).",
        "- **ChromaDB** (the peer): `chromadb.PersistentClient` in the benchmark's process "
        "(no network hop), `configuration={'hnsw': {'space': 'cosine'}}` and Chroma's other "
        "defaults (M 16, ef_construction 100, ef_search 100), `add` in batches of "
        "`get_max_batch_size()` with ids and texts, `query(query_embeddings=[q], "
        f"n_results={TOP_K}, include=['documents', 'distances'])`.",
        "- **ChromaDB server** (the peer over the network, like ours through the mesh): "
        "`chroma run --host 127.0.0.1` (ChromaDB's Rust server, same package) on a copy of "
        "the in-process store, made after the load with the in-process client closed; the "
        "same `query` through `chromadb.HttpClient` from the benchmark's process.",
        "- **numpy brute force** (the baseline): `data @ q` (BLAS) and `argpartition`, per "
        "query, in the benchmark's process.",
        "- **Milvus-lite, direct**: the design without an in-process index: pymilvus "
        "`MilvusClient(file)`, fields id, scope, text, vector; index HNSW COSINE (M "
        f"{HNSW_M}, efConstruction {EF_CONSTRUCTION}), inserted in batches of "
        f"{MILVUS_INSERT_BATCH:,}, then flush, release, load (searches on growing segments "
        f"are very slow); `search(limit={TOP_K}, filter='scope == \"{SCOPE_KEY}\"', ef "
        f"{EF_SEARCH})` with a literal filter (milvus-lite has no filter templates). "
        "Measured alone, before the others load, in a process of its own (`python -m "
        "benchmarks.recall milvus-lite`, the same data made again from the seed) so that "
        "what it keeps in memory goes with it; the index as milvus-lite describes it is "
        "in the JSON.",
        f"- **Interleaving**: every path answers {s['warmup']} warm-up queries (others than "
        f"the measured ones); then the {s['queries']:,} queries are split into "
        f"{s['rounds']} rounds ({s['queries'] // max(1, s['rounds']):,} each); in each round "
        "every path answers that round's share, the order rotating, so a noisy spell of "
        "the machine falls on every path. p50/p99 are over all of a path's queries (a p99 "
        f"over {s['queries']:,} rests on its {max(1, s['queries'] // 100)} slowest); the "
        "ratios' ranges are of the per-round p50s. Every loop is bounded in queries and time "
        f"({s['loop_timeout_s']:g} s per path and round), with a {SETTLE_S:g} s pause "
        "before each path's share (OpenBLAS threads keep spinning for a while after a matrix "
        "product, and would slow the next path's first queries).",
        "- Everything shares the machine's "
        f"{machine['cpu_count']} CPUs: Triton, nats-server, the gateway and the node idle "
        "while the in-process paths run, and ChromaDB, the index and numpy pay no hop. "
        "Compare within the run.",
        "- Warnings or errors in the servers' logs: " + ("; ".join(findings) if findings
                                                         else "none") + ".",
        "- Code measured: " + _code_measured(results) + ".",
        "",
        f"Reproduce: `{results['command']}` (results in `benchmarks/results/{NAME}.json`).",
    ]
    return "\n".join(lines)


# -- the run ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default=None,
                        help="comma-separated collection sizes (default: 10000,100000,1000000;"
                             " with --quick: 10000)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the sizes of the existing results that this run does not "
                             "measure (each with the commit it was measured at)")
    parser.add_argument("--milvus-lite-max", type=int, default=MILVUS_LITE_MAX,
                        help="measure Milvus-lite directly up to this size (default: "
                             f"{MILVUS_LITE_MAX})")


def parse_sizes(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    sizes = tuple(int(part.replace("_", "")) for part in text.split(",") if part.strip())
    if not sizes or min(sizes) < 100:
        raise ValueError(f"sizes must be at least 100: {text!r}")
    return sizes


def run(quick: bool = False, results_dir: Path | None = None, sizes: str | None = None,
        milvus_lite_max: int = MILVUS_LITE_MAX, merge: bool = False) -> int:
    """Run the benchmark; write its JSON and markdown; return an exit code."""
    try:
        chosen = parse_sizes(sizes)
    except ValueError as exc:
        print(f"{NAME}: {exc}", file=sys.stderr)
        return 2
    for module, extra in (("chromadb", "bench"), ("pymilvus", "recall engine's")):
        if find_spec(module) is None:
            print(f"{NAME}: {module} is not installed (pip install -e '.[{extra}]' or the "
                  "recall plugin; ./dev bench)", file=sys.stderr)
            return 2
    settings = Settings.for_mode(quick, chosen, milvus_lite_max)
    earlier_path = (results_dir or RESULTS_DIR) / f"{NAME}.json"
    earlier = (json.loads(earlier_path.read_text())  # read now: this run rewrites it
               if merge and earlier_path.exists() else None)
    command = f"python -m benchmarks {NAME}" + (" --quick" if quick else "") + (
        f" --sizes {','.join(map(str, settings.sizes))}" if chosen else "") + (
        f" --milvus-lite-max {milvus_lite_max}" if milvus_lite_max != MILVUS_LITE_MAX else ""
    ) + (" --merge" if merge else "")

    def progress(line: str) -> None:
        print(f"{NAME}: {line}", flush=True)

    mesh_problem = recall_unavailable()
    if mesh_problem:
        progress(f"ours through the mesh not measured: {mesh_problem}")
    queries = make_queries(settings.queries + settings.warmup)
    texts = sentences(settings.queries + settings.warmup)
    measured: list[dict[str, Any]] = []
    loadavg = [round(v, 2) for v in os.getloadavg()]
    with _workdir(NAME) as workdir, triton_server(workdir, progress) as (triton_url,
                                                                           triton_problem):
        if triton_problem:
            progress(f"end to end not measured: {triton_problem}")
        for size in settings.sizes:
            measured.append(measure_size(size, queries, texts, settings, workdir, triton_url,
                                         mesh_problem, triton_problem, progress))
            cell = measured[-1]
            progress(f"{size:,}: search p99 {_num(cell['p99_ms_search'])} ms (recall "
                     f"{_num(cell['recall_at_10'], 3)}), end to end p99 "
                     f"{_num(cell['p99_ms_end_to_end'])} ms, ChromaDB p99 "
                     f"{_num(cell['chroma_p99_ms_search'])} ms, numpy p99 "
                     f"{_num(cell['numpy_p99_ms'])} ms")
            if size != settings.sizes[-1]:  # what is measured so far, should a size fail
                _write(merge_earlier(measured, earlier), settings, command, loadavg,
                       results_dir, partial=True)
    json_path, md_path, markdown = _write(merge_earlier(measured, earlier), settings, command,
                                          loadavg, results_dir)
    print(markdown)
    print(f"\nwrote {json_path} and {md_path}")
    return 0


def _code_measured(results: dict[str, Any]) -> str:
    """Which commit each size measured (sizes kept from an earlier run may differ)."""
    def described(revision: dict[str, Any]) -> str:
        dirty = (revision.get("uncommitted")
                 or revision.get("uncommitted_in_mesh_or_engine") or [])
        return f"commit `{revision.get('commit')}`" + (
            ", with uncommitted changes in " + ", ".join(f"`{p}`" for p in dirty)
            if dirty else "")

    by_revision: dict[str, list[str]] = {}
    for cell in results["sizes"]:
        text = described(cell.get("revision", results["revision"]))
        if cell.get("kept_from"):
            text += f" (kept from the run of {cell['measured_at']})"
        by_revision.setdefault(text, []).append(_size_label(cell["size"]))
    if len(by_revision) <= 1:
        return next(iter(by_revision), described(results["revision"]))
    return "; ".join(f"{', '.join(sizes)}: {text}" for text, sizes in by_revision.items())


def merge_earlier(measured: list[dict[str, Any]], earlier: dict[str, Any] | None
                  ) -> list[dict[str, Any]]:
    """``measured`` plus the sizes of the ``earlier`` results that this run did not measure
    (each keeps the commit and date it was measured at), in size order."""
    if earlier is None:
        return measured
    sizes = {cell["size"] for cell in measured}
    kept = []
    for cell in earlier.get("sizes", []):
        if cell["size"] in sizes:
            continue
        cell = {**cell, "revision": cell.get("revision", earlier.get("revision", {})),
                "measured_at": cell.get("measured_at", earlier.get("machine", {}).get("date")),
                "kept_from": cell.get("kept_from", earlier.get("command", "an earlier run"))}
        kept.append(cell)
    return sorted([*measured, *kept], key=lambda cell: cell["size"])


def _write(measured: list[dict[str, Any]], settings: Settings, command: str,
           loadavg: list[float], results_dir: Path | None, partial: bool = False
           ) -> tuple[Path, Path, str]:
    """Write the results; ``partial``: a run's sizes so far (kept should a later size fail,
    but not archived in ``history/`` as a run of its own: the mode says partial)."""
    facts = {"loadavg_before": loadavg,
             "loadavg_after": [round(v, 2) for v in os.getloadavg()]}
    results = build_results(measured, settings, command, facts)
    if partial:
        results["mode"] = f"{settings.mode} (partial: sizes measured so far)"
    markdown = render_markdown(results)
    json_path, md_path = write_results(NAME, results, markdown, results_dir or RESULTS_DIR)
    return json_path, md_path, markdown


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.recall",
        description="The recall benchmark's Milvus-lite process (run the benchmark with "
                    "`python -m benchmarks recall`).")
    commands = parser.add_subparsers(dest="command", required=True)
    child = commands.add_parser("milvus-lite", help="load and search Milvus-lite directly; "
                                "prints its results as one JSON line")
    child.add_argument("--size", type=int, required=True)
    child.add_argument("--dir", type=Path, required=True, help="for the milvus-lite file")
    child.add_argument("--queries", type=int, default=QUERIES)
    child.add_argument("--warmup", type=int, default=WARMUP)
    child.add_argument("--loop-timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    settings = Settings("child", (args.size,), rounds=1, queries=args.queries,
                        warmup=args.warmup, loop_timeout_s=args.loop_timeout)
    queries = make_queries(args.queries + args.warmup)
    data = make_data(args.size, len(queries))
    truth, _ = ground_truth(data, queries[:args.queries])
    result = measure_milvus_lite(args.dir, data, queries, truth, settings,
                                 lambda line: print(f"{NAME}: {line}", file=sys.stderr,
                                                    flush=True))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
