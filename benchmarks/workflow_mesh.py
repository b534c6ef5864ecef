"""The workflows benchmark's mesh path: the Coordinator (engine ``workflows``) through a gateway.

Layout (every server its own process, on 127.0.0.1): a nats-server with JetStream (file
storage, the mesh's own settings: :class:`mesh.embedded.nats_server.NatsServer`), one node
process ``python -m mesh node`` hosting the engines ``echo`` and ``workflows``, and a
gateway process ``python -m mesh gateway``. The load generator is the benchmark's client
process, as for the peers; it speaks gRPC to the gateway only. The node is a process of its
own, not in the client, because that is how the mesh runs (the Temporal path has its server
in a process of its own too; DBOS is a library and runs in its client).

The steps are ``/revo.echo.v1.EchoService/Echo`` with an empty payload (the mesh's no-op
call); the fan-out's steps are Echo with ``delay_ms``. :class:`MeshDriver` is the
:class:`benchmarks.workflow_peers.Driver` of the ``mesh`` path:

* ``seq(n)``: a workflow of ``n`` Echo steps, each needing the one before; ``StartRun``,
  then ``WatchRun`` to ``RunFinished`` (the Coordinator's public way to wait for a run).
  It returns the time each step's Echo ran (the payload of the step's output: the node's
  echo service is :mod:`benchmarks.clock_engine`, which answers with its body's
  ``time.time()``, as the peers' no-op returns it) and keeps the first step's
  ``StepStarted`` time (recorded just before the call is sent) in
  :attr:`MeshDriver.first_step_started`;
* ``direct(n)``: the same ``n`` Echo calls made one after another through the gateway;
* ``one()``: a one-step workflow;
* ``fanout(n, sleep_s, parallel)``: a ``map`` group of ``n`` Echo(``delay_ms``) with
  concurrency ``n``, or ``n`` such steps one after another.

:func:`resume_trial` measures the takeover: two node processes host ``workflows``; a run's
owner (its lease holder) is SIGKILLed while a step's call is in flight; the figure is the
kill to that step's ``StepSucceeded``, recorded by the other node.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from benchmarks.clock_engine import served_at
from benchmarks.mesh_hop import SECURITY_OFF, Fleet, Target, _child_env, _tail
from mesh.client import probe_mesh
from mesh.embedded.nats_server import free_port
from mesh.embedded.processes import spawn, stop_process
from revo_engine_echo.v1 import echo_pb2

__all__ = ["ECHO", "MeshDriver", "MeshFleet", "ResumeResult", "node_settings",
           "resume_trial", "start_fleet"]

ECHO = "/revo.echo.v1.EchoService/Echo"
SERVICE = "revo.workflows.v1.WorkflowService"
READY_TIMEOUT_S = 90.0
RUN_TIMEOUT_S = 120.0
"""The longest a benchmark run may take before it counts as an error."""
ECHO_POOL = 100
"""Actors of the echo engine: Echo is a synchronous engine whose ``delay_ms`` holds its
actor, so the fan-out's 100 parallel 50 ms calls need 100 actors (the peers' steps are
asyncio sleeps with 200 concurrent activities allowed)."""
RESUME_STEP_DELAY_MS = 500
"""The in-flight step of a resume trial: Echo with this delay (run again by the new owner,
so it is part of the figure)."""
RESUME_TRIAL_TIMEOUT_S = 60.0


def node_settings(node_id: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``REVO_*`` settings of a benchmark node: engines clock (Echo answering with its
    body's time: :mod:`benchmarks.clock_engine`) and workflows, security off (as the peers
    have none), the echo pool sized for the fan-out; everything else at its defaults
    (lease TTL 3 s, sweep every 1 s, metrics on)."""
    return SECURITY_OFF | {
        "REVO_PLUGINS__ONLY": "clock,workflows",
        "REVO_PLUGINS__EXTRA__CLOCK": "benchmarks.clock_engine",
        "REVO_ENGINES__CLOCK__POOL_SIZE": str(ECHO_POOL),
        "REVO_NODE__ID": node_id,
    } | dict(extra or {})


# -- the servers ------------------------------------------------------------------------


@dataclass
class MeshFleet:
    """nats-server, node processes and a gateway for the mesh path."""

    target: Target
    home: Path
    nats_url: str
    nodes: dict[str, Any] = field(default_factory=dict)
    """node id -> its process (``subprocess.Popen``)."""
    logs: dict[str, Path] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)
    spawned: int = 0

    @property
    def address(self) -> str:
        return self.target.address

    def pids(self) -> list[int]:
        """The servers' pids: nodes, gateway and nats-server (whose CPU is the server's)."""
        pids = [p.pid for p in self.nodes.values() if p.poll() is None]
        pids += [p.pid for p in self.target.processes.values()]
        if self.target.nats_pid is not None:
            pids.append(self.target.nats_pid)
        return pids

    def add_node(self) -> str:
        """Start one more node process; its id."""
        self.spawned += 1
        node_id = f"{self.target.name}-node-{self.spawned}"
        log = self.home.parent / f"{node_id}.log"
        env = _child_env(self.home, self.nats_url, node_settings(node_id, self.extra))
        self.nodes[node_id] = spawn([sys.executable, "-m", "mesh", "node"], log_file=log,
                                    env=env)
        self.logs[node_id] = log
        return node_id

    def kill(self, node_id: str) -> float:
        """SIGKILL node ``node_id``; the time (``time.time()``) the signal was sent."""
        process = self.nodes.pop(node_id)
        killed = time.time()
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        return killed

    def wait_serving(self, count: int, timeout: float = READY_TIMEOUT_S) -> None:
        """Until the gateway lists exactly the live nodes, each serving workflows and echo."""
        deadline = time.monotonic() + timeout
        live = set(self.nodes)
        while time.monotonic() < deadline:
            for node_id, process in self.nodes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"node {node_id} exited with {process.returncode}: "
                                       f"{_tail(self.logs[node_id])}")
            listed = probe_mesh(self.address, timeout=1.0) or []
            serving = {n.id for n in listed
                       if {"clock", "workflows"} <= {e.name for e in n.engines if e.services}}
            if len(live) == count and serving == live and {n.id for n in listed} == live:
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.target.name}: the gateway did not list the nodes "
                           f"{sorted(live)} serving clock and workflows within {timeout:g} s; "
                           f"logs: {', '.join(str(p) for p in self.logs.values())}")

    def stop(self) -> list[str]:
        problems = []
        for node_id, process in reversed(list(self.nodes.items())):
            try:
                code = stop_process(process, 15.0)
            except Exception as exc:  # keep stopping the rest
                problems.append(f"{node_id}: {exc}")
                continue
            if code not in (0, -15):
                problems.append(f"{node_id} exited with code {code}")
        self.nodes.clear()
        return problems


def start_fleet(fleet: Fleet, name: str, nodes: int,
                extra: Mapping[str, str] | None = None) -> MeshFleet:
    """nats-server, ``nodes`` node processes (echo + workflows) and a gateway, ready: the
    gateway lists the nodes serving both engines. ``fleet`` stops the gateway and the
    nats-server; the caller stops the nodes (:meth:`MeshFleet.stop`)."""
    target = Target(name, f"127.0.0.1:{free_port()}", loop="?")
    started = time.monotonic()
    nats = fleet.nats(f"{name}-nats")
    target.nats_pid = nats.process.pid if nats.process else None
    target.nats_url = nats.url
    home = fleet.workdir / f"{name}-home"
    mesh = MeshFleet(target, home, nats.url, extra=dict(extra or {}))
    for _ in range(nodes):
        mesh.add_node()
    fleet.spawn(target, "gateway",
                [sys.executable, "-m", "mesh", "gateway", "--address", target.address],
                _child_env(home, nats.url, SECURITY_OFF
                           | {"REVO_GATEWAY__METRICS_ADDRESS": f"127.0.0.1:{free_port()}"}))
    try:
        mesh.wait_serving(nodes)
    except BaseException:
        mesh.stop()
        raise
    target.startup_s = round(time.monotonic() - started, 2)
    return mesh


# -- the driver -------------------------------------------------------------------------


def _stubs() -> tuple[Any, Any]:
    from revo_engine_workflows.v1 import workflows_pb2, workflows_pb2_grpc

    return workflows_pb2, workflows_pb2_grpc


def _echo_step(step_id: str, delay_ms: int = 0, needs: list[str] | None = None
               ) -> dict[str, Any]:
    request = {"delayMs": delay_ms} if delay_ms else {}
    step: dict[str, Any] = {"id": step_id, "call": {"method": ECHO, "request": request}}
    if needs:
        step["needs"] = needs
    return step


def seq_definition(name: str, n: int, delay_ms: int = 0) -> dict[str, Any]:
    """``n`` Echo steps, each needing the one before."""
    return {"name": name, "steps": [_echo_step(f"s{i}", delay_ms, [f"s{i - 1}"] if i else None)
                                    for i in range(n)]}


def map_definition(name: str, n: int, delay_ms: int) -> dict[str, Any]:
    """A map group of ``n`` Echo(``delay_ms``) calls, all at once (concurrency ``n``)."""
    return {"name": name, "steps": [{"id": "fan", "group": {
        "strategy": "STRATEGY_MAP", "items": "input.items",
        "concurrency": n, "each": _echo_step("one", delay_ms)}}]}


class RunFailed(Exception):
    """A benchmark run ended other than succeeded."""


class MeshDriver:
    """The Coordinator through the gateway at ``address``."""

    def __init__(self, address: str) -> None:
        self.name = "mesh"
        self.address = address
        self.pb, self.grpc_stubs = _stubs()
        self.channel: grpc.aio.Channel | None = None
        self.stub: Any = None
        self.echo: Any = None
        self._workflows: dict[str, int] = {}
        self.first_step_started: float | None = None
        """The last ``seq`` run's first ``StepStarted`` time (``time.time()``)."""

    async def open(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.address)
        self.stub = self.grpc_stubs.WorkflowServiceStub(self.channel)
        self.echo = self.channel.unary_unary(
            ECHO, request_serializer=echo_pb2.EchoRequest.SerializeToString,
            response_deserializer=echo_pb2.EchoResponse.FromString)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close(None)

    async def _workflow(self, definition: dict[str, Any]) -> tuple[str, int]:
        name = definition["name"]
        if name not in self._workflows:
            workflow = json_format.ParseDict(definition, self.pb.Workflow())
            created = await self.stub.CreateWorkflow(
                self.pb.CreateWorkflowRequest(workflow=workflow), timeout=30)
            self._workflows[name] = created.workflow.version
        return name, self._workflows[name]

    async def run(self, definition: dict[str, Any], run_input: Any = None) -> list[Any]:
        """Start a run of ``definition`` (created once) and watch it to its end; its
        events. Raises :class:`RunFailed` unless it succeeded."""
        name, version = await self._workflow(definition)
        request = self.pb.StartRunRequest(workflow=name, version=version)
        if run_input is not None:
            json_format.ParseDict(run_input, request.input)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        started = await self.stub.StartRun(request, timeout=RUN_TIMEOUT_S)
        events = []
        watch = self.stub.WatchRun(self.pb.WatchRunRequest(run_id=started.run.id),
                                   timeout=max(1.0, deadline - time.monotonic()))
        async for reply in watch:
            events.append(reply.event)
        if not events or events[-1].WhichOneof("event") != "run_finished":
            raise RunFailed(f"run {started.run.id}: the watch ended before RunFinished")
        finished = events[-1].run_finished
        if finished.state != self.pb.RUN_STATE_SUCCEEDED:
            raise RunFailed(f"run {started.run.id}: "
                            f"{self.pb.RunState.Name(finished.state)} {finished.error}")
        return events

    async def direct(self, n: int) -> list[float]:
        request = echo_pb2.EchoRequest()
        out = []
        for _ in range(n):
            await self.echo(request, timeout=30)
            out.append(time.time())
        return out

    async def seq(self, n: int) -> list[float]:
        events = await self.run(seq_definition(f"bench-seq-{n}", n))
        started = {e.step_id: e.time.ToNanoseconds() / 1e9 for e in events
                   if e.WhichOneof("event") == "step_started"}
        served = {e.step_id: _served_at(e.step_succeeded.output) for e in events
                  if e.WhichOneof("event") == "step_succeeded"}
        self.first_step_started = started.get("s0")
        return [served[f"s{i}"] for i in range(n)]

    async def one(self) -> None:
        await self.run(seq_definition("bench-seq-1", 1))

    async def fanout(self, n: int, sleep_s: float, parallel: bool) -> None:
        delay_ms = max(1, round(sleep_s * 1000))
        if parallel:
            await self.run(map_definition(f"bench-map-{n}-{delay_ms}", n, delay_ms),
                           {"items": list(range(n))})
        else:
            await self.run(seq_definition(f"bench-seq-{n}-{delay_ms}", n, delay_ms))

    def settings(self) -> dict[str, Any]:
        return {"layout": "nats-server (JetStream, file storage, sync_interval 1 s) + one "
                          "node process (`python -m mesh node`, engines clock (echo "
                          "answering with its time) and workflows) "
                          "+ a gateway process; the client calls the gateway",
                "steps": f"{ECHO} with an empty payload (the fan-out: delay_ms)",
                "wait": "StartRun, then WatchRun to RunFinished",
                "engine": "[engines.workflows] defaults (lease_ttl_s 3, sweep_interval_s 1, "
                          "map_concurrency 16, the map group sets its own 100)",
                "clock": f"pool_size {ECHO_POOL} (Echo's delay_ms holds an actor)",
                "security": "auth, rate limits and audit off (the peers have none)",
                "observability": "metrics on (the default), traces off (the default)"}


# -- resume after SIGKILL ---------------------------------------------------------------


@dataclass
class ResumeResult:
    resume_s: float | None
    owner: str = ""
    error: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


async def _lease_owner(nats_url: str, run_id: str, timeout: float) -> str:
    """The node id holding run ``run_id``'s lease (JetStream KV ``revo_workflow_leases``)."""
    import nats

    from revo_engine_workflows.leases import BUCKET

    nc = await nats.connect(nats_url, connect_timeout=5)
    try:
        kv = await nc.jetstream().key_value(BUCKET)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                entry = await kv.get(run_id)
                if entry.value:
                    return bytes(entry.value).decode().split(" ", 1)[0]
            await asyncio.sleep(0.01)
    finally:
        await nc.close()
    raise TimeoutError(f"no lease on run {run_id} within {timeout:g} s")


async def _resume(mesh: MeshFleet) -> ResumeResult:
    pb, stubs = _stubs()
    async with grpc.aio.insecure_channel(mesh.address) as channel:
        stub = stubs.WorkflowServiceStub(channel)
        definition = {"name": "bench-resume", "steps": [
            _echo_step("a"), _echo_step("b", RESUME_STEP_DELAY_MS, ["a"]),
            _echo_step("c", 0, ["b"])]}
        workflow = json_format.ParseDict(definition, pb.Workflow())
        await stub.CreateWorkflow(pb.CreateWorkflowRequest(workflow=workflow), timeout=30)
        run = (await stub.StartRun(pb.StartRunRequest(workflow="bench-resume"),
                                   timeout=30)).run
        owner = await _lease_owner(mesh.nats_url, run.id, 10.0)
        events: list[Any] = []
        killed: float | None = None
        while not events or events[-1].WhichOneof("event") != "run_finished":
            after = events[-1].sequence if events else 0
            try:  # a watch served by the killed node breaks: resume it after what we saw
                async for reply in stub.WatchRun(pb.WatchRunRequest(
                        run_id=run.id, after_sequence=after), timeout=RESUME_TRIAL_TIMEOUT_S):
                    events.append(reply.event)
                    if killed is None and reply.event.step_id == "b" and \
                            reply.event.WhichOneof("event") == "step_started":
                        killed = mesh.kill(owner)
            except grpc.aio.AioRpcError as error:
                if error.code() not in (grpc.StatusCode.UNAVAILABLE,
                                        grpc.StatusCode.CANCELLED,
                                        grpc.StatusCode.INTERNAL,
                                        grpc.StatusCode.DEADLINE_EXCEEDED) or killed is None:
                    raise
                await asyncio.sleep(0.05)
        final = (await stub.GetRun(pb.GetRunRequest(run_id=run.id), timeout=30)).run
    times = {(e.step_id, e.WhichOneof("event")): e.time.ToNanoseconds() / 1e9 for e in events}
    if killed is None:
        return ResumeResult(None, owner, error="step b never started")
    b_done = times.get(("b", "step_succeeded"))
    if final.state != pb.RUN_STATE_SUCCEEDED or b_done is None:
        return ResumeResult(None, owner, error=f"the run ended {pb.RunState.Name(final.state)}"
                                               f" {final.error}")
    if b_done < killed:
        return ResumeResult(None, owner, error="step b finished before its node was killed")
    b_output = json_format.MessageToDict(next(s for s in final.steps if s.id == "b").output)
    return ResumeResult(round(b_done - killed, 3), owner, detail={
        "run_id": run.id, "step_started_to_kill_ms": round(
            (killed - times[("b", "step_started")]) * 1e3, 2),
        "kill_to_run_finished_s": round(times[("", "run_finished")] - killed, 3),
        "b_answered_by": b_output.get("nodeId", ""),
        "b_idempotency_key": b_output.get("idempotencyKey", ""),
        "events": len(events)})


def resume_trial(mesh: MeshFleet) -> ResumeResult:
    """One trial: a run whose step ``b`` (Echo, :data:`RESUME_STEP_DELAY_MS`) is in flight
    when its owner is SIGKILLed; the kill to ``b``'s ``StepSucceeded`` recorded by the
    other node. Then a fresh node replaces the killed one. Bounded by
    :data:`RESUME_TRIAL_TIMEOUT_S`; a failure is returned, not raised."""
    try:
        result = asyncio.run(asyncio.wait_for(_resume(mesh), RESUME_TRIAL_TIMEOUT_S))
    except Exception as exc:
        result = ResumeResult(None, error=f"{type(exc).__name__}: {exc}"[:500])
    live = len(mesh.nodes)
    for _ in range(2 - live):
        mesh.add_node()
    mesh.wait_serving(max(2, live))
    return result


def _served_at(output: Any) -> float:
    """The time an Echo step's body ran, from its output (proto3 JSON: base64 payload)."""
    return served_at(base64.b64decode(json_format.MessageToDict(output)["payload"]))
