"""creative: how different the Creative engine's candidates are, and what its strategy costs
in time, against n plain concurrent samples of the same model (the baseline every framework
offers), in one run.

**The simulated model.** The upstream is a scripted OpenAI-compatible server
(:class:`mesh.testing.llm.FakeLLMServer` with the responder :class:`HivemindModel`) that
answers from the "hivemind" corpus of :mod:`benchmarks.creative_corpus`: five
software-engineering problems, each with one dominant approach written as six paraphrases
and one distinct approach per perspective of the engine's catalog (two paraphrases each).
What it assumes, so that a skeptic sees it all:

* it finds the problem in the user message (the engine's starts with ``Problem:`` and a
  line break, then the problem; the naive baseline sends the problem alone): the corpus
  problem whose text the message contains;
* a plain prompt (no perspective) is answered from the hivemind distribution:
  :data:`DOMINANT_SHARE` (60 %) a paraphrase of the dominant approach, otherwise a
  uniformly random distinct approach (one of the ten perspectives');
* a prompt with a perspective (a line ``Perspective: <name>: <description>`` in the
  engine's system message) follows it with probability *q*, the persona adherence
  (:data:`ADHERENCE`, 0.5 in the headline row, 0 in the persona-blind worst case): the
  answer is that perspective's approach; otherwise the hivemind distribution as above;
* a regeneration (the engine's user message contains "too close to it") is answered like
  any prompt with the same perspective: the instruction to differ is ignored (conservative);
* a judge request (a system message with ``Rubric:``) is answered "Score: 7/10" (not
  used: the benchmark turns judging off);
* the sampling temperature is ignored; paraphrases are dealt from a shuffled deck per
  (problem, approach), so two draws of the same approach in a row are different
  paraphrases (real samples are rarely verbatim copies), for both paths alike;
* every call lasts a latency drawn uniformly from :data:`LATENCY_S` (200-800 ms, seeded
  RNG): the reply is streamed word by word (one SSE event a word), word *k* of *w* sent
  *k* / *w* of the latency after the response headers.

The server records every call: its kind, problem, perspective, the approach it answered
with, the drawn latency, when it started, when its last word was written (server clock)
and whether it was: a call is *complete* when its whole text reached the client (a client
that hangs up first, as the engine does when it cancels a spare, breaks the stream).

**The paths**, interleaved in every trial (same problem, order rotating):

* **engine**: ``CreativeService.Generate`` through the gateway with the generated stub,
  ``n`` = :data:`N`, options ``judging = JUDGING_NONE`` (judging excluded, as the target
  says) and ``skip_history`` (no Perfect Recall): the time to the summary;
* **naive**: ``n`` concurrent streamed chat completions of the plain problem with the
  OpenAI SDK (``AsyncOpenAI``) straight to the upstream: the time until all ``n`` ended;
* **naive-mesh**: the same ``n`` concurrent samples through the mesh's
  ``ModelService.Generate`` (the same gateway, node and router the engine calls).

Every path's texts are embedded afterwards by the same embedder (``ModelService.Embed`` on
the Triton ``embedder`` model, all-MiniLM-L6-v2), and the set's Vendi score and mean
pairwise cosine come from ``revo_engine_creative.diversity`` (the engine's own figures are
kept beside them).

**The figures** (headline: the *q* = 0.5 row):

* ``ratio_wall_to_slowest_call``: per trial, the engine's wall time over the slowest single
  upstream call of the trial that completed (server-measured); the median over trials
  (target <= 1.15). Trials with regenerations wait for more than one call in a row, so the
  ratio is also given over the trials without, and against the longest chain (below).
* ``vendi_ratio_to_naive``: the median Vendi score of the engine's sets over that of the
  naive sets (target >= 1.5), and the engine sets' median ``mean_pairwise_cosine``
  (target <= 0.6).
* ``overhead_ms_p50``: per trial, (engine wall - the longest chain of upstream calls it
  waited for) - (naive wall - the slowest naive call); the median over trials. A chain is
  one candidate's calls in a row (its first generation and its regenerations, matched by
  perspective), so regenerations, added on purpose, are not counted as overhead; without
  regenerations the chain is the slowest call. Everything else is: planning, the mesh hops,
  embedding the candidates, any wait between calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from benchmarks._report import (
    RESULTS_DIR,
    machine_info,
    markdown_table,
    median,
    percentile,
    write_results,
)
from benchmarks.creative_corpus import PERSPECTIVES, PROBLEMS, Problem
from mesh.testing.llm import Behaviour, FakeLLMServer, Reply, answer, split_tokens

NAME = "creative"
N = 5
"""Candidates per set, and samples per naive set."""
DOMINANT_SHARE = 0.6
"""Share of hivemind answers that paraphrase the dominant approach."""
ADHERENCE = 0.5
"""Probability that a prompt with a perspective is answered from that perspective (q)."""
ROWS: tuple[float, ...] = (ADHERENCE, 0.0)
"""The adherences measured, the headline first; 0 is the persona-blind worst case."""
LATENCY_S = (0.2, 0.8)
"""Each call's duration is drawn uniformly from this range."""
SEED = 20251202
MODEL = "hive"
"""The catalog name of the simulated model."""
API_KEY = "bench-creative-key"
API_KEY_ENV = "BENCH_CREATIVE_UPSTREAM_KEY"
PRICES_PER_MILLION = (0.15, 0.6)
"""Input and output US dollars per million tokens of the simulated model (a cheap cloud
model): budgets are reserved and settled as in production."""
BUDGET_USD = 1_000_000.0
MAX_TOKENS = 512
CALL_TIMEOUT_S = 20.0
"""Per call and per set (a set of 200-800 ms calls takes a few seconds at most)."""
START_TIMEOUT_S = 240.0
JUDGE_REPLY = "Score: 7/10"
REGENERATION_MARKER = "too close to it"
PROBLEM_PREFIX = "Problem:\n"
PATHS = ("engine", "naive", "naive-mesh")
TARGETS = {"ratio_wall_to_slowest_call": 1.15, "vendi_ratio_to_naive": 1.5,
           "mean_pairwise_cosine": 0.6}
REPO_ROOT = Path(__file__).resolve().parent.parent
TRITON_REPOSITORY = REPO_ROOT / "triton_models"

"""What the finish chunk of an OpenAI stream from FakeLLMServer contains."""
_PERSPECTIVE_LINE = re.compile(r"^\s*Perspective:\s*([A-Za-z][\w-]*)\s*:", re.MULTILINE)


# -- the simulated model -----------------------------------------------------------------


@dataclass
class Call:
    """One chat completion the simulated model served."""

    index: int
    label: str | None
    """The trial it belongs to (set by :meth:`HivemindModel.trial`), None between trials."""
    kind: str
    """plain, perspective, regeneration, judge or unknown (no corpus problem found)."""
    problem: str | None
    perspective: str | None
    approach: str
    """``dominant``, a perspective's name (whose approach it answered with), or ``-``."""
    text: str
    latency_s: float
    """The drawn duration of the stream."""
    started: float
    """``time.monotonic()`` when the server chose the answer (request read)."""
    ended: float | None = None
    """When the stream's last word was written (with the finish chunk), or it broke."""
    complete: bool | None = None
    """True: the whole text was written; False: the client hung up first; None: running."""
    closed: bool = False
    """The server is done with the request (the stream ended or broke)."""

    @property
    def duration_s(self) -> float | None:
        return None if self.ended is None else self.ended - self.started


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


class HivemindModel:
    """The responder of the simulated model (module docstring): chooses each request's
    answer and latency from its body, and records the call. Thread-safe."""

    def __init__(self, problems: Sequence[Problem] = PROBLEMS, *, adherence: float = ADHERENCE,
                 dominant_share: float = DOMINANT_SHARE,
                 latency_s: tuple[float, float] = LATENCY_S, seed: int = SEED) -> None:
        if not 0.0 <= adherence <= 1.0 or not 0.0 <= dominant_share <= 1.0:
            raise ValueError("adherence and dominant_share must be within 0..1")
        self.problems = list(problems)
        self.adherence = adherence
        self.dominant_share = dominant_share
        self.latency_s = latency_s
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._ended = threading.Condition(self._lock)
        self._decks: dict[tuple[str, str], list[str]] = {}
        self._calls: list[Call] = []
        self._by_behaviour: dict[int, Call] = {}
        self._label: str | None = None

    # trials and records

    @contextlib.contextmanager
    def trial(self, label: str) -> Any:
        """Label the calls that start inside the block with ``label``."""
        with self._lock:
            self._label = label
        try:
            yield
        finally:
            with self._lock:
                self._label = None

    def set_adherence(self, adherence: float) -> None:
        if not 0.0 <= adherence <= 1.0:
            raise ValueError("adherence must be within 0..1")
        with self._lock:
            self.adherence = adherence

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def calls_of(self, label: str) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if c.label == label]

    def replied(self, reply: Reply) -> None:
        """The server is done with a request (``FakeLLMServer(on_reply=...)``): its call
        ended when its last word was written, complete, even if the client left before the
        trailing events; otherwise when the server was done with it, cut short."""
        with self._lock:
            call = self._by_behaviour.pop(id(reply.behaviour), None)
            if call is not None:
                done = reply.text_done is not None
                call.ended = reply.text_done if done else reply.ended
                call.complete = done
                call.closed = True
            self._ended.notify_all()

    def wait_ended(self, label: str, timeout: float) -> bool:
        """Wait until every call labelled ``label`` has ended; False after ``timeout``."""
        with self._ended:
            return self._ended.wait_for(
                lambda: all(c.closed for c in self._calls if c.label == label),
                timeout)

    # answering

    def find_problem(self, text: str) -> Problem | None:
        """The corpus problem ``text`` asks about (its text contained in it)."""
        body = text[len(PROBLEM_PREFIX):] if text.startswith(PROBLEM_PREFIX) else text
        for problem in self.problems:
            if problem.text in body:
                return problem
        return None

    def _deal(self, problem: Problem, approach: str) -> str:
        """The next paraphrase of ``approach`` from its shuffled deck (lock held)."""
        deck = self._decks.setdefault((problem.key, approach), [])
        if not deck:
            texts = (problem.dominant if approach == "dominant"
                     else problem.approaches[approach])
            deck.extend(self._random.sample(list(texts), len(texts)))
        return deck.pop()

    def _hivemind(self) -> str:
        """An approach of the plain distribution (lock held)."""
        if self._random.random() < self.dominant_share:
            return "dominant"
        return self._random.choice(PERSPECTIVES)

    def choose(self, body: dict[str, Any]) -> tuple[Call, Behaviour]:
        """The call record and the behaviour for one request body."""
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        system = "\n".join(_text_of(m.get("content")) for m in messages
                           if m.get("role") in ("system", "developer"))
        users = [_text_of(m.get("content")) for m in messages if m.get("role") == "user"]
        user = users[-1] if users else ""
        everything = system + "\n" + "\n".join(users)
        named = _PERSPECTIVE_LINE.search(everything)
        perspective = named.group(1).lower() if named else None
        problem = self.find_problem(user) or self.find_problem(everything)
        with self._lock:
            latency = self._random.uniform(*self.latency_s)
            if "Rubric:" in system:
                kind, approach, text = "judge", "-", JUDGE_REPLY
            elif problem is None:
                kind, approach = "unknown", "-"
                text = "I could not tell which problem this is about."
            else:
                kind = ("regeneration" if REGENERATION_MARKER in user
                        else "perspective" if perspective else "plain")
                if (perspective in problem.approaches
                        and self._random.random() < self.adherence):
                    approach = str(perspective)
                else:
                    approach = self._hivemind()
                text = self._deal(problem, approach)
            behaviour = answer(text, interval_s=latency / max(1, len(split_tokens(text))))
            call = Call(index=len(self._calls), label=self._label, kind=kind,
                        problem=problem.key if problem else None, perspective=perspective,
                        approach=approach, text=text, latency_s=latency,
                        started=time.monotonic())
            self._calls.append(call)
            self._by_behaviour[id(behaviour)] = call
        return call, behaviour

    def __call__(self, body: dict[str, Any]) -> Behaviour:
        return self.choose(body)[1]

    def approach_of(self, text: str) -> str:
        """Which approach a text is (``dominant``, a perspective, or ``?``)."""
        for problem in self.problems:
            for approach, known in problem.all_answers():
                if known.strip() and known.strip() in text:
                    return approach
        return "?"


# -- settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    mode: str
    trials: int
    """Trials per adherence row (the problems in turn)."""
    warmup: int = 1
    """Discarded trials (every path) before each row."""

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls("quick", trials=len(PROBLEMS))
        return cls("full", trials=6 * len(PROBLEMS))


# -- the mesh ----------------------------------------------------------------------------


@dataclass
class Mesh:
    """The servers of one run and the stubs to call them."""

    channel: grpc.aio.Channel
    models: Any
    creative: Any
    openai: Any
    upstream: FakeLLMServer
    startup_s: dict[str, float] = field(default_factory=dict)


def mesh_config(home: Path, nats_url: str, triton_url: str, base_url: str,
                engines: Sequence[str] = ("models", "creative")) -> Any:
    """The node's and gateway's configuration: engines models and creative, security off,
    the simulated model as an ``openai_compatible`` catalog model."""
    from mesh.config import load_config

    catalog = [{"name": MODEL, "provider": "openai_compatible", "base_url": base_url,
                "api_key_env": API_KEY_ENV, "priority": 1,
                "input_usd_per_million": PRICES_PER_MILLION[0],
                "output_usd_per_million": PRICES_PER_MILLION[1], "context_window": 16000}]
    return load_config(
        environ={}, read_file=False, home=str(home), nats={"url": nats_url},
        gateway={"address": "127.0.0.1:0", "metrics_address": "127.0.0.1:0"},
        node={"metrics_address": "127.0.0.1:0"},
        auth={"enabled": False, "audit": {"enabled": False}},
        plugins={"only": list(engines)},
        models={"triton_url": triton_url, "catalog": catalog, "budget_usd": BUDGET_USD})


async def _until(what: str, attempt: Any, timeout: float = START_TIMEOUT_S) -> None:
    """Call ``attempt()`` until it returns without raising, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await attempt()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{NAME}: {what} not ready after {timeout:g} s: {exc}") \
                    from exc
            await asyncio.sleep(0.25)


@contextlib.asynccontextmanager
async def running_mesh(workdir: Path, model: HivemindModel,
                       need_engine: bool = True) -> AsyncIterator[Mesh]:
    """nats-server, Triton (the embedder), the simulated model, a node and a gateway."""
    import openai

    from mesh.embedded.nats_server import NatsServer
    from mesh.embedded.triton import TritonServer
    from mesh.gateway import Gateway
    from mesh.runtime.node import Node
    from mesh.v1 import models_pb2 as mpb
    from mesh.v1 import models_pb2_grpc

    startup: dict[str, float] = {}
    os.environ[API_KEY_ENV] = API_KEY
    with contextlib.ExitStack() as stack:
        began = time.monotonic()
        nats = NatsServer(workdir / "nats").start()
        stack.callback(nats.stop)
        startup["nats_s"] = round(time.monotonic() - began, 2)
        began = time.monotonic()
        triton = TritonServer(TRITON_REPOSITORY, workdir / "triton", models=["embedder"])
        triton.start(timeout=START_TIMEOUT_S)
        stack.callback(triton.stop)
        startup["triton_s"] = round(time.monotonic() - began, 2)
        upstream = FakeLLMServer(api_key=API_KEY, on_reply=model.replied)
        upstream.respond_with(model)
        upstream.start()
        stack.callback(upstream.stop)
        config = mesh_config(workdir / "home", nats.url, triton.grpc_url,
                             upstream.openai_base_url,
                             ("models", "creative") if need_engine else ("models",))
        began = time.monotonic()
        node = Node(config)
        await node.start()
        gateway = Gateway(config)
        try:
            await gateway.start()
            channel = grpc.aio.insecure_channel(gateway.address)
            models = models_pb2_grpc.ModelServiceStub(channel)
            creative = None
            await _until("ModelService.Embed", lambda: models.Embed(
                mpb.EmbedRequest(texts=["ready?"]), timeout=10))
            if need_engine:
                from revo_engine_creative.v1 import creative_pb2 as cpb
                from revo_engine_creative.v1 import creative_pb2_grpc

                creative = creative_pb2_grpc.CreativeServiceStub(channel)
                await _until("CreativeService", lambda: creative.ListStrategies(
                    cpb.ListStrategiesRequest(), timeout=10))
            startup["mesh_s"] = round(time.monotonic() - began, 2)
            client = openai.AsyncOpenAI(base_url=upstream.openai_base_url, api_key=API_KEY,
                                        max_retries=0, timeout=CALL_TIMEOUT_S)
            try:
                yield Mesh(channel, models, creative, client, upstream, startup)
            finally:
                await client.close()
                await channel.close(None)
        finally:
            await gateway.stop(grace=1.0)
            await node.stop()


# -- one trial of each path --------------------------------------------------------------


async def embed(mesh: Mesh, texts: Sequence[str]) -> npt.NDArray[np.float64]:
    """The texts' vectors from the mesh's embedder (the one the engine uses)."""
    from mesh.v1 import models_pb2 as mpb

    if not texts:
        return np.zeros((0, 0))
    reply = await mesh.models.Embed(mpb.EmbedRequest(texts=list(texts)),
                                    timeout=CALL_TIMEOUT_S)
    return np.array([list(e.values) for e in reply.embeddings], dtype=np.float64)


def diversity(vectors: npt.NDArray[np.float64]) -> dict[str, float | None]:
    from revo_engine_creative.diversity import mean_pairwise_cosine, vendi_score

    if len(vectors) < 2:
        return {"vendi": None, "mean_cosine": None}
    return {"vendi": round(vendi_score(vectors), 4),
            "mean_cosine": round(mean_pairwise_cosine(vectors), 4)}


async def engine_trial(mesh: Mesh, problem: Problem) -> dict[str, Any]:
    """One ``Generate`` of ``N`` candidates, judging off, no history."""
    from revo_engine_creative.v1 import creative_pb2 as cpb

    request = cpb.GenerateRequest(problem=problem.text, n=N, options=cpb.Options(
        judging=cpb.JUDGING_NONE, skip_history=True))
    candidates: list[Any] = []
    summary: Any = None
    first: float | None = None
    began = time.monotonic()
    async for event in mesh.creative.Generate(request, timeout=CALL_TIMEOUT_S):
        which = event.WhichOneof("event")
        if which == "candidate":
            if first is None:
                first = time.monotonic() - began
            candidates.append(event.candidate)
        elif which == "summary":
            summary = event.summary
    wall = time.monotonic() - began
    return {"wall_s": wall, "first_candidate_s": first,
            "texts": [c.text for c in candidates],
            "perspectives": [c.strategy.perspective for c in candidates],
            "regenerations": [int(c.regenerations) for c in candidates],
            "summary": None if summary is None else {
                "vendi_score": round(summary.vendi_score, 4),
                "mean_pairwise_cosine": round(summary.mean_pairwise_cosine, 4),
                "rejected": int(summary.rejected), "failures": len(summary.failures),
                "wall_ms": round(summary.wall_ms, 1),
                "generation_ms": round(summary.generation_ms, 1)}}


async def naive_trial(mesh: Mesh, problem: Problem) -> dict[str, Any]:
    """``N`` concurrent streamed chat completions of the plain problem, the OpenAI SDK
    straight to the upstream."""

    async def one() -> str:
        stream = await mesh.openai.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": problem.text}],
            max_tokens=MAX_TOKENS, temperature=1.0, stream=True,
            stream_options={"include_usage": True})
        parts = []
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        return "".join(parts)

    began = time.monotonic()
    texts = await asyncio.gather(*(one() for _ in range(N)))
    return {"wall_s": time.monotonic() - began, "texts": list(texts)}


async def naive_mesh_trial(mesh: Mesh, problem: Problem) -> dict[str, Any]:
    """The same samples through ``ModelService.Generate``."""
    from mesh.v1 import models_pb2 as mpb

    request = mpb.GenerateRequest(
        messages=[mpb.Message(role="user", content=problem.text)],
        sampling=mpb.Sampling(temperature=1.0, max_tokens=MAX_TOKENS),
        policy=mpb.Policy(model=MODEL))

    async def one() -> str:
        parts = []
        async for event in mesh.models.Generate(request, timeout=CALL_TIMEOUT_S):
            if event.WhichOneof("event") == "delta":
                parts.append(event.delta)
        return "".join(parts)

    began = time.monotonic()
    texts = await asyncio.gather(*(one() for _ in range(N)))
    return {"wall_s": time.monotonic() - began, "texts": list(texts)}


TRIALS = {"engine": engine_trial, "naive": naive_trial, "naive-mesh": naive_mesh_trial}


def upstream_figures(calls: Sequence[Call]) -> dict[str, Any]:
    """What the upstream's record says about one trial's generation calls."""
    generation = [c for c in calls if c.kind in ("plain", "perspective", "regeneration")]
    done = [c for c in generation if c.complete and c.duration_s is not None]
    chains: dict[str, float] = {}
    for c in done:
        key = c.perspective or f"#{c.index}"
        chains[key] = chains.get(key, 0.0) + float(c.duration_s or 0.0)
    return {
        "calls": len(calls),
        "generation_calls": len(generation),
        "regenerations": sum(c.kind == "regeneration" for c in generation),
        "judge_calls": sum(c.kind == "judge" for c in calls),
        "unknown_calls": sum(c.kind == "unknown" for c in calls),
        "incomplete": sum(not c.complete for c in generation),
        "slowest_call_s": max((float(c.duration_s or 0.0) for c in done), default=None),
        "slowest_drawn_s": max((c.latency_s for c in done), default=None),
        "longest_chain_s": max(chains.values(), default=None),
        "approaches": [c.approach for c in generation],
    }


async def run_trial(mesh: Mesh, model: HivemindModel, path: str, problem: Problem,
                    label: str) -> dict[str, Any]:
    """One path's trial: its calls, its timing, the diversity of its texts."""
    error: str | None = None
    result: dict[str, Any] = {}
    with model.trial(label):
        try:
            result = await asyncio.wait_for(TRIALS[path](mesh, problem), CALL_TIMEOUT_S * 2)
        except Exception as exc:  # every error is counted and reported, not raised
            error = f"{type(exc).__name__}: {exc}"[:300]
    # a stream the client did not read to the end is recorded as it breaks: wait for every
    # call of the trial to end (bounded), so the record is whole
    await asyncio.to_thread(model.wait_ended, label, 5.0)
    calls = model.calls_of(label)
    texts = result.pop("texts", [])
    vectors = await embed(mesh, texts) if len(texts) >= 2 else np.zeros((0, 0))
    return {"label": label, "path": path, "problem": problem.key, "error": error,
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()},
            "n": len(texts), **diversity(vectors),
            "text_approaches": [model.approach_of(t) for t in texts],
            "upstream": upstream_figures(calls)}


# -- the corpus check --------------------------------------------------------------------


def _spread(values: Sequence[float]) -> dict[str, float | int | None]:
    ordered = sorted(values)
    if not ordered:
        return {"pairs": 0, "min": None, "p10": None, "median": None, "p90": None,
                "max": None, "share_ge_0_8": None}
    return {"pairs": len(ordered), "min": round(ordered[0], 3),
            "p10": round(percentile(ordered, 10), 3),
            "median": round(percentile(ordered, 50), 3),
            "p90": round(percentile(ordered, 90), 3), "max": round(ordered[-1], 3),
            "share_ge_0_8": round(sum(v >= 0.8 for v in ordered) / len(ordered), 3)}


def corpus_distributions(labels: Sequence[str], vectors: npt.NDArray[np.float64]) -> dict[str, Any]:
    """Cosines between one problem's answers: dominant paraphrases among themselves,
    paraphrases of one perspective's approach, and answers of different approaches."""
    from revo_engine_creative.diversity import cosine_matrix

    k = cosine_matrix(vectors)
    groups: dict[str, list[float]] = {"dominant": [], "same_perspective": [], "distinct": [],
                                      "dominant_vs_distinct": []}
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            value = float(k[i, j])
            if labels[i] == labels[j]:
                groups["dominant" if labels[i] == "dominant" else "same_perspective"].append(
                    value)
            else:
                groups["distinct"].append(value)
                if "dominant" in (labels[i], labels[j]):
                    groups["dominant_vs_distinct"].append(value)
    return {name: _spread(values) for name, values in groups.items()}


CEILING_DRAWS = 400
"""Random sets per problem that :func:`vendi_ceiling` scores."""


def vendi_ceiling(labels: Sequence[str], vectors: npt.NDArray[np.float64],
                  rng: random.Random) -> list[float]:
    """Vendi scores of sets of ``N`` answers of ``N`` *different* approaches (one paraphrase
    each, drawn at random): the most diverse set this corpus can give, which bounds what
    any way of sampling reaches."""
    from revo_engine_creative.diversity import vendi_score

    by_approach: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        by_approach.setdefault(label, []).append(index)
    names = sorted(by_approach)
    scores = []
    for _ in range(CEILING_DRAWS):
        rows = [rng.choice(by_approach[name]) for name in rng.sample(names, N)]
        scores.append(vendi_score(vectors[rows]))
    return scores


async def check_corpus(mesh: Mesh) -> dict[str, Any]:
    by_problem: dict[str, Any] = {}
    pooled: dict[str, list[float]] = {}
    ceiling: list[float] = []
    rng = random.Random(SEED)
    from revo_engine_creative.diversity import cosine_matrix

    for problem in PROBLEMS:
        answers = problem.all_answers()
        labels = [a for a, _ in answers]
        vectors = await embed(mesh, [t for _, t in answers])
        by_problem[problem.key] = corpus_distributions(labels, vectors)
        ceiling += vendi_ceiling(labels, vectors, rng)
        k = cosine_matrix(vectors)
        for i in range(len(labels)):
            for j in range(i + 1, len(labels)):
                group = ("dominant" if labels[i] == labels[j] == "dominant" else
                         "same_perspective" if labels[i] == labels[j] else "distinct")
                pooled.setdefault(group, []).append(float(k[i, j]))
    return {"by_problem": by_problem,
            "all": {name: _spread(values) for name, values in pooled.items()},
            "vendi_ceiling": _spread(ceiling)}


# -- the run -----------------------------------------------------------------------------


def order(index: int, paths: Sequence[str]) -> list[str]:
    """The paths of trial ``index``, rotated by one each trial."""
    shift = index % len(paths)
    return [*paths[shift:], *paths[:shift]]


async def measure(workdir: Path, settings: Settings, rows: Sequence[float],
                  paths: Sequence[str]) -> dict[str, Any]:
    model = HivemindModel()
    trials: list[dict[str, Any]] = []
    async with running_mesh(workdir, model, need_engine="engine" in paths) as mesh:
        print(f"{NAME}: ready ({mesh.startup_s})", flush=True)
        corpus = await check_corpus(mesh)
        for adherence in rows:
            model.set_adherence(adherence)
            for index in range(-settings.warmup, settings.trials):
                problem = PROBLEMS[index % len(PROBLEMS)]
                for path in order(index, paths):
                    label = f"q{adherence:g}-t{index}-{path}"
                    trial = await run_trial(mesh, model, path, problem, label)
                    if index < 0:
                        continue  # warm-up
                    trials.append({"adherence": adherence, "trial": index, **trial})
                    up = trial["upstream"]
                    print(f"{NAME}: q={adherence:g} trial {index + 1}/{settings.trials} "
                          f"{problem.key:<14} {path:<10} wall {trial.get('wall_s', '-')} s "
                          f"slowest {_f(up['slowest_call_s'])} s vendi {trial['vendi']} "
                          f"cos {trial['mean_cosine']} regen {up['regenerations']}"
                          + (f" ERROR {trial['error']}" if trial["error"] else ""),
                          flush=True)
        calls = model.calls
    return {"trials": trials, "corpus": corpus, "startup_s": mesh.startup_s,
            "calls": {"total": len(calls),
                      "outside_trials": sum(c.label is None for c in calls),
                      "by_kind": dict(Counter(c.kind for c in calls)),
                      "incomplete": sum(not c.complete for c in calls)}}


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _med(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return median(known) if known else None


def _range(values: Sequence[float | None], digits: int = 3) -> list[float] | None:
    known = sorted(v for v in values if v is not None)
    return [round(known[0], digits), round(known[-1], digits)] if known else None


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def row_figures(trials: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The figures of one adherence row from its trials."""
    by_path: dict[str, list[dict[str, Any]]] = {}
    for t in trials:
        by_path.setdefault(t["path"], []).append(t)
    paths: dict[str, Any] = {}
    for path, rows in by_path.items():
        ok = [t for t in rows if t["error"] is None]
        approaches = Counter(a for t in ok for a in t["text_approaches"])
        paths[path] = {
            "trials": len(rows), "errors": len(rows) - len(ok),
            "wall_s_p50": _rounded(_med([t.get("wall_s") for t in ok])),
            "slowest_call_s_p50": _rounded(_med([t["upstream"]["slowest_call_s"]
                                                 for t in ok])),
            "vendi_p50": _rounded(_med([t["vendi"] for t in ok])),
            "vendi_range": _range([t["vendi"] for t in ok]),
            "mean_cosine_p50": _rounded(_med([t["mean_cosine"] for t in ok])),
            "mean_cosine_range": _range([t["mean_cosine"] for t in ok]),
            "dominant_share": _rounded(approaches["dominant"] / max(1, sum(
                approaches.values()))),
            "calls_per_set_p50": _rounded(_med([t["upstream"]["generation_calls"]
                                                for t in ok]), 1),
            "regenerations": sum(t["upstream"]["regenerations"] for t in ok),
            "incomplete_calls": sum(t["upstream"]["incomplete"] for t in ok),
        }
    engine = [t for t in by_path.get("engine", []) if t["error"] is None]
    naive = {t["trial"]: t for t in by_path.get("naive", []) if t["error"] is None}
    naive_mesh = {t["trial"]: t for t in by_path.get("naive-mesh", []) if t["error"] is None}
    ratios = [_ratio(t["wall_s"], t["upstream"]["slowest_call_s"]) for t in engine]
    no_regen = [_ratio(t["wall_s"], t["upstream"]["slowest_call_s"]) for t in engine
                if t["upstream"]["regenerations"] == 0]
    chain = [_ratio(t["wall_s"], t["upstream"]["longest_chain_s"]) for t in engine]

    def added(t: dict[str, Any]) -> float | None:
        chain_s = t["upstream"]["longest_chain_s"]
        return None if chain_s is None else t["wall_s"] - chain_s

    def naive_added(t: dict[str, Any] | None) -> float | None:
        if t is None or t["upstream"]["slowest_call_s"] is None:
            return None
        return float(t["wall_s"] - t["upstream"]["slowest_call_s"])

    overhead = [None if (a := added(t)) is None or (b := naive_added(naive.get(t["trial"])))
                is None else (a - b) * 1000 for t in engine]
    overhead_mesh = [None if (a := added(t)) is None or (b := naive_added(naive_mesh.get(
        t["trial"]))) is None else (a - b) * 1000 for t in engine]
    vendi_ratio = _ratio(paths.get("engine", {}).get("vendi_p50"),
                         paths.get("naive", {}).get("vendi_p50"))
    paired = [_ratio(t["vendi"], naive[t["trial"]]["vendi"]) for t in engine
              if t["trial"] in naive]
    figures = {
        "ratio_wall_to_slowest_call": _rounded(_med(ratios)),
        "ratio_wall_to_slowest_call_range": _range(ratios),
        "ratio_wall_to_slowest_call_no_regeneration": _rounded(_med(no_regen)),
        "trials_without_regeneration": len(no_regen),
        "ratio_wall_to_longest_chain": _rounded(_med(chain)),
        "vendi_ratio_to_naive": _rounded(vendi_ratio),
        "vendi_ratio_paired_p50": _rounded(_med(paired)),
        "vendi_ratio_paired_range": _range(paired),
        "mean_pairwise_cosine": paths.get("engine", {}).get("mean_cosine_p50"),
        "overhead_ms_p50": _rounded(_med(overhead), 1),
        "overhead_ms_range": _range(overhead, 1),
        "overhead_vs_naive_mesh_ms_p50": _rounded(_med(overhead_mesh), 1),
        "engine_reported_vendi_p50": _rounded(_med([
            t["summary"]["vendi_score"] for t in engine if t.get("summary")])),
        "engine_reported_rejected": sum(t["summary"]["rejected"] for t in engine
                                        if t.get("summary")),
    }
    return {"paths": paths, "figures": figures}


def verdicts(figures: dict[str, Any]) -> dict[str, str]:
    def check(name: str, ok: Any) -> str:
        value = figures.get(name)
        return "not measured" if value is None else ("pass" if ok(value) else "miss")

    return {
        "ratio_wall_to_slowest_call": check(
            "ratio_wall_to_slowest_call",
            lambda v: v <= TARGETS["ratio_wall_to_slowest_call"]),
        "vendi_ratio_to_naive": check(
            "vendi_ratio_to_naive", lambda v: v >= TARGETS["vendi_ratio_to_naive"]),
        "mean_pairwise_cosine": check(
            "mean_pairwise_cosine", lambda v: v <= TARGETS["mean_pairwise_cosine"]),
    }


def build_results(measured: dict[str, Any], settings: Settings, rows: Sequence[float],
                  paths: Sequence[str], command: str) -> dict[str, Any]:
    by_row = []
    ceiling = measured["corpus"].get("vendi_ceiling", {}).get("median")
    for adherence in rows:
        row = row_figures([t for t in measured["trials"] if t["adherence"] == adherence])
        figures = row["figures"]
        naive_vendi = row["paths"].get("naive", {}).get("vendi_p50")
        engine_vendi = row["paths"].get("engine", {}).get("vendi_p50")
        figures["vendi_ceiling_p50"] = _rounded(ceiling)
        figures["vendi_ratio_ceiling_to_naive"] = _rounded(_ratio(ceiling, naive_vendi))
        figures["engine_vendi_share_of_ceiling"] = _rounded(_ratio(engine_vendi, ceiling))
        by_row.append({"adherence": adherence, **row, "verdicts": verdicts(row["figures"])})
    headline = by_row[0] if by_row else {"figures": {}, "verdicts": {}}
    return {
        "benchmark": NAME, "mode": settings.mode, "command": command,
        "machine": machine_info("grpcio", "openai", "numpy", "tritonclient"),
        "settings": {**asdict(settings), "n": N, "paths": list(paths),
                     "adherence_rows": list(rows)},
        "model": {"dominant_share": DOMINANT_SHARE, "latency_s": list(LATENCY_S),
                  "seed": SEED, "perspectives": list(PERSPECTIVES),
                  "problems": [p.key for p in PROBLEMS],
                  "markers": {"problem_prefix": PROBLEM_PREFIX,
                              "perspective_line": _PERSPECTIVE_LINE.pattern,
                              "regeneration": REGENERATION_MARKER, "judge": "Rubric:"},
                  "prices_usd_per_million": list(PRICES_PER_MILLION)},
        "targets": TARGETS,
        "headline": {"adherence": rows[0] if rows else None, **headline["figures"],
                     "verdicts": headline["verdicts"]},
        "rows": by_row,
        "corpus": measured["corpus"],
        "calls": measured["calls"],
        "startup_s": measured["startup_s"],
        "trials": measured["trials"],
    }


def render_markdown(results: dict[str, Any]) -> str:
    h = results["headline"]
    v = h.get("verdicts", {})
    lines = [
        f"# creative ({results['mode']})",
        "",
        f"The Creative engine's sets of n = {results['settings']['n']} (judging off, no "
        "history) against n plain concurrent samples of the same simulated model, per "
        f"persona adherence q; headline q = {h.get('adherence')}.",
        "",
        markdown_table(
            ["figure", "value", "target", "verdict"],
            [["`ratio_wall_to_slowest_call` (p50 over trials)",
              _f(h.get("ratio_wall_to_slowest_call")), "<= 1.15",
              v.get("ratio_wall_to_slowest_call", "-")],
             ["`vendi_ratio_to_naive` (p50 engine / p50 naive)",
              _f(h.get("vendi_ratio_to_naive")), ">= 1.5", v.get("vendi_ratio_to_naive", "-")],
             ["`mean_pairwise_cosine` of the engine's sets (p50)",
              _f(h.get("mean_pairwise_cosine")), "<= 0.6", v.get("mean_pairwise_cosine", "-")],
             ["`overhead_ms_p50` (vs the SDK's samples)", _f(h.get("overhead_ms_p50"), 1),
              "reported", "-"],
             ["the corpus's ceiling: Vendi of 5 answers of 5 different approaches (p50)",
              _f(h.get("vendi_ceiling_p50")), "-", "-"],
             ["ceiling / naive: the largest `vendi_ratio_to_naive` any sampler can reach",
              _f(h.get("vendi_ratio_ceiling_to_naive")), "-", "-"],
             ["engine / ceiling", _f(h.get("engine_vendi_share_of_ceiling")), "-", "-"]],
            align_right=[False, True, False, False]),
        "",
        "Cosines between different approaches to the same problem are not 0 (they share its "
        "words and topic; median 0.35 here), so even five answers of five different "
        "approaches have a Vendi score well under 5: the ceiling above, measured on the "
        "corpus. `vendi_ratio_to_naive` cannot exceed ceiling / naive.",
        "",
        "## By adherence row",
        "",
    ]
    row_lines = []
    for row in results["rows"]:
        f = row["figures"]
        row_lines.append([
            f"{row['adherence']:g}", _f(f["ratio_wall_to_slowest_call"]),
            _f(f["ratio_wall_to_slowest_call_no_regeneration"])
            + f" ({f['trials_without_regeneration']})",
            _f(f["ratio_wall_to_longest_chain"]), _f(f["vendi_ratio_to_naive"]),
            _f(f["vendi_ratio_paired_p50"]), _f(f["mean_pairwise_cosine"]),
            _f(f["overhead_ms_p50"], 1), _f(f["overhead_vs_naive_mesh_ms_p50"], 1),
            str(f["engine_reported_rejected"])])
    lines.append(markdown_table(
        ["q", "wall / slowest call", "same, trials without regeneration (count)",
         "wall / longest chain", "Vendi ratio", "Vendi ratio, paired p50",
         "engine mean cosine", "overhead ms vs SDK", "overhead ms vs mesh samples",
         "rejected (engine)"], row_lines, align_right=[True] * 10))
    lines += ["", "## By path", ""]
    path_lines = []
    for row in results["rows"]:
        for path, p in row["paths"].items():
            path_lines.append([
                f"{row['adherence']:g}", path, str(p["trials"]), str(p["errors"]),
                _f(p["wall_s_p50"]), _f(p["slowest_call_s_p50"]), _f(p["vendi_p50"]),
                "-" if not p["vendi_range"] else f"{p['vendi_range'][0]:.2f}-"
                f"{p['vendi_range'][1]:.2f}", _f(p["mean_cosine_p50"]),
                _f(p["dominant_share"], 2), _f(p["calls_per_set_p50"], 1),
                str(p["regenerations"]), str(p["incomplete_calls"])])
    lines.append(markdown_table(
        ["q", "path", "trials", "errors", "wall s p50", "slowest call s p50", "Vendi p50",
         "Vendi range", "mean cosine p50", "dominant share", "upstream calls per set p50",
         "regenerations", "calls cut before their text ended"], path_lines,
        align_right=[True, False] + [True] * 11))
    corpus = results["corpus"]["all"]
    lines += [
        "", "## The corpus, embedded by the real embedder", "",
        "Cosine similarity between answers of the same problem (all-MiniLM-L6-v2 on the "
        "Triton `embedder`), over all five problems:", "",
        markdown_table(
            ["pairs", "count", "min", "p10", "median", "p90", "max", "share >= 0.8"],
            [[name, str(s["pairs"]), _f(s["min"]), _f(s["p10"]), _f(s["median"]),
              _f(s["p90"]), _f(s["max"]), _f(s["share_ge_0_8"], 2)]
             for name, s in corpus.items()],
            align_right=[False] + [True] * 7),
        "",
        "`dominant`: two paraphrases of the dominant approach; `same_perspective`: the two "
        "paraphrases of one perspective's approach; `distinct`: answers of two different "
        "approaches. Per problem in the JSON (`corpus.by_problem`).",
        "",
        "## The simulated model (what is assumed)",
        "",
        "- It finds the problem in the user message (the engine's begins `Problem:` and a "
        "line break; the naive paths send the problem alone).",
        f"- A plain prompt is answered from the hivemind distribution: "
        f"{DOMINANT_SHARE:.0%} a paraphrase of the problem's dominant approach, otherwise "
        "a uniformly random one of the ten perspectives' approaches.",
        "- A prompt with a perspective (a line `Perspective: <name>: <description>`) "
        "follows it with probability q (the row): that perspective's approach; otherwise "
        "the hivemind distribution.",
        f"- A regeneration (the user message contains \"{REGENERATION_MARKER}\") is "
        "answered like any prompt with the same perspective: the instruction to differ is "
        "ignored (conservative).",
        f"- A judge request (`Rubric:` in the system message) gets \"{JUDGE_REPLY}\" "
        "(judging is off here).",
        "- Temperature is ignored. Paraphrases are dealt from a shuffled deck per (problem, "
        "approach), so the same approach twice in a row is two different paraphrases.",
        f"- Every call lasts a latency drawn uniformly from {LATENCY_S[0] * 1000:.0f}-"
        f"{LATENCY_S[1] * 1000:.0f} ms (seed {SEED}); the reply streams one word per SSE "
        "event, word k of w at k/w of the latency.",
        "",
        "## How it was measured",
        "",
        "- In one process: nats-server and Triton (the embedder) as child processes; the "
        "node (engines `models` and `creative`) and the gateway in this process's event "
        "loop; the simulated model (`FakeLLMServer`, threads) in this process on 127.0.0.1, "
        f"an `openai_compatible` catalog model priced ${PRICES_PER_MILLION[0]:g} / "
        f"${PRICES_PER_MILLION[1]:g} per million tokens (budgets reserved and settled as in "
        "production); security off.",
        "- **engine**: `CreativeService.Generate(problem, n=5, options: judging = "
        "JUDGING_NONE, skip_history)` through the gateway; wall time to the summary. "
        "**naive**: 5 concurrent streamed completions of the plain problem with "
        "`openai.AsyncOpenAI` straight to the model; wall time until all ended. "
        "**naive-mesh**: the same 5 samples through `ModelService.Generate`.",
        f"- {results['settings']['trials']} trials per row (the problems in turn), after "
        f"{results['settings']['warmup']} warm-up trial(s); in each trial every path once, "
        "the order rotating. Texts are embedded afterwards with `ModelService.Embed`; "
        "Vendi score and mean pairwise cosine from `revo_engine_creative.diversity`.",
        "- The engine generates n + spares (its `spares` setting, 2 by default) at once, "
        "replaces near-duplicates (cosine >= its threshold) by spares or regenerates them, "
        "and cancels the spares still running once n are accepted: `upstream calls per "
        "set` counts every call it started, cancelled spares included (the naive paths "
        "make n).",
        "- Upstream times are the server's (from choosing the answer to writing the last "
        "word), of calls whose whole text was written. `wall / slowest call`: per trial, the "
        "engine's wall time over its slowest such call. `wall / longest chain`: over the "
        "longest sum of one candidate's calls (first generation and its regenerations, by "
        "perspective). `overhead`: per trial, (engine wall - longest chain) - (naive wall - "
        "slowest naive call); p50 over trials. Regenerations are calls the engine adds on "
        "purpose, so they count in the chain, not in the overhead.",
        f"- Calls: {results['calls']['total']} in all, {results['calls']['by_kind']}; "
        f"{results['calls']['outside_trials']} outside a trial, "
        f"{results['calls']['incomplete']} cut before their text ended.",
        f"- Start-up: {results['startup_s']}.",
        "",
        f"Reproduce: `{results['command']}` (every trial in "
        f"`benchmarks/results/{NAME}.json`).",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's own options for ``python -m benchmarks creative``."""
    parser.add_argument("--adherence", default=",".join(f"{q:g}" for q in ROWS),
                        help="comma-separated persona adherences q to measure, the headline "
                             "first (default: 0.5,0)")
    parser.add_argument("--paths", default=",".join(PATHS),
                        help=f"comma-separated paths (default: {','.join(PATHS)}; without "
                             "engine, the engine need not be installed)")


def run(quick: bool = False, results_dir: Path | None = None, adherence: str | None = None,
        paths: str | None = None) -> int:
    """Run the benchmark; write its JSON and markdown; return an exit code."""
    settings = Settings.for_mode(quick)
    try:
        rows = [float(q) for q in (adherence or ",".join(f"{q:g}" for q in ROWS)).split(",")
                if q.strip()]
    except ValueError:
        print(f"{NAME}: --adherence takes numbers within 0..1", file=sys.stderr)
        return 2
    chosen = [p for p in (paths or ",".join(PATHS)).split(",") if p]
    if not rows or any(not 0 <= q <= 1 for q in rows) or not set(chosen) <= set(PATHS) \
            or not chosen:
        print(f"{NAME}: bad --adherence {adherence!r} or --paths {paths!r}", file=sys.stderr)
        return 2
    command = f"python -m benchmarks {NAME}" + (" --quick" if quick else "") + (
        f" --adherence {adherence}" if adherence else "") + (f" --paths {paths}"
                                                             if paths else "")
    with tempfile.TemporaryDirectory(prefix="revo-bench-creative-") as tmp:
        measured = asyncio.run(measure(Path(tmp), settings, rows, chosen))
    results = build_results(measured, settings, rows, chosen, command)
    markdown = render_markdown(results)
    json_path, md_path = write_results(NAME, results, markdown, results_dir or RESULTS_DIR)
    print(markdown)
    print(f"\nwrote {json_path} and {md_path}")
    return 0
