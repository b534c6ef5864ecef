"""A closed-loop gRPC load generator for ``revo.echo.v1.EchoService/Echo``.

Run as its own process, so it never shares an event loop (or a core's time slice in that
loop) with the server it measures::

    python -m benchmarks.loadgen --address 127.0.0.1:50051 --concurrency 64 --duration 10

One ``grpc.aio`` channel; ``--concurrency`` coroutines each issue one unary call at a time
with the same pre-serialized request bytes (the channel neither serializes nor parses, so
every target pays the same client cost). ``--metadata KEY=VALUE`` (repeatable, e.g.
``authorization=Bearer <token>``) is sent with every call, built once before the first.
``--metadata-file`` instead names a JSON list of metadata sets (one per caller, e.g. one
token per user): the calls take them in turn, call ``i`` of a phase the set ``i mod n``, so
every caller gets an equal share of the load at any concurrency (at concurrency 1 too).
A warm-up phase runs first and is discarded. Every
phase ends at its duration or its call budget, whichever comes first. The result is one
JSON object on stdout: successful calls, errors by status code, req/s, latency
percentiles measured around each call with ``time.perf_counter_ns``, and the generator's
own CPU (user + system of this process, all its threads) over the measured phase.

Several generator processes can share one load (:func:`benchmarks.mesh_hop.run_loadgen`
splits a concurrency between them when one process would be near a full core):
``--start-at`` (a ``time.time()`` instant) makes them begin the warm-up together, and
``--latencies-out`` writes the measured latencies (int64 ns, native byte order) so that
the parent can merge them into one set of percentiles.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from benchmarks._report import percentile
from benchmarks.echo_server import loop_name, run_loop
from revo_engine_echo.v1 import echo_pb2

ECHO_METHOD = "/revo.echo.v1.EchoService/Echo"
if TYPE_CHECKING:  # generic only in the type stubs
    CallBytes: TypeAlias = grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
else:
    CallBytes = grpc.aio.UnaryUnaryMultiCallable


@dataclass
class Phase:
    """What one phase (warm-up or measurement) saw."""

    latencies_ns: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    issued: int = 0
    elapsed_s: float = 0.0
    capped: bool = False


Sent: TypeAlias = "tuple[grpc.aio.Metadata | None, ...]"
"""What a phase sends: the metadata of each caller, taken in turn by the calls (one entry:
the same for every call; ``None``: no metadata)."""

START_AT_MAX_WAIT_S = 30.0
"""The longest ``--start-at`` may make a generator wait."""


async def _worker(call: CallBytes, request: bytes, phase: Phase, end_ns: int, max_calls: int,
                  timeout: float, metadata: Sent) -> None:
    clock = time.perf_counter_ns
    count = len(metadata)
    sent = metadata[0] if count else None
    while phase.issued < max_calls and clock() < end_ns:
        if count > 1:
            sent = metadata[phase.issued % count]
        phase.issued += 1
        start = clock()
        try:
            await call(request, timeout=timeout, metadata=sent)
        except grpc.aio.AioRpcError as exc:
            phase.errors[exc.code().name] += 1
            continue
        phase.latencies_ns.append(clock() - start)


async def run_phase(call: CallBytes, request: bytes, concurrency: int, duration_s: float,
                    max_calls: int, timeout: float, metadata: Sent = (None,)) -> Phase:
    """Run ``concurrency`` callers until ``duration_s`` passes or ``max_calls`` are issued."""
    phase = Phase()
    start = time.perf_counter_ns()
    end_ns = start + int(duration_s * 1e9)
    await asyncio.gather(*(_worker(call, request, phase, end_ns, max_calls, timeout, metadata)
                           for _ in range(concurrency)))
    phase.elapsed_s = (time.perf_counter_ns() - start) / 1e9
    phase.capped = phase.issued >= max_calls
    return phase


async def measure(address: str, concurrency: int, duration_s: float, warmup_s: float,
                  max_calls: int, payload_bytes: int, timeout: float,
                  metadata: Sequence[tuple[str, str]] = (), *,
                  metadata_sets: Sequence[Sequence[tuple[str, str]]] = (),
                  start_at: float | None = None,
                  latencies_out: list[int] | None = None) -> dict[str, Any]:
    """Check the target once, wait for ``start_at`` (if given), warm up, then measure.

    ``metadata`` goes with every call; ``metadata_sets`` (if any) instead are taken in
    turn, one per call. ``latencies_out`` receives the measured latencies (ns)."""
    payload = bytes(range(256)) * (payload_bytes // 256 + 1)
    request = echo_pb2.EchoRequest(payload=payload[:payload_bytes]).SerializeToString()
    # Built once: grpc.aio would otherwise convert a tuple into Metadata on every call.
    sent: Sent = (tuple(grpc.aio.Metadata(*m) for m in metadata_sets) if metadata_sets
                  else (grpc.aio.Metadata(*metadata) if metadata else None,))
    async with grpc.aio.insecure_channel(address) as channel:
        call: CallBytes = channel.unary_unary(ECHO_METHOD, None, None)
        # One checked call: the target really echoes (a wrong target fails here, not silently).
        reply = echo_pb2.EchoResponse.FromString(
            await call(request, timeout=timeout, metadata=sent[0]))
        if reply.payload != payload[:payload_bytes]:
            raise RuntimeError(f"{address} answered Echo with a different payload")
        late_s = 0.0
        if start_at is not None:
            wait = start_at - time.time()
            if wait > 0:
                await asyncio.sleep(min(wait, START_AT_MAX_WAIT_S))
            else:
                late_s = -wait
        warmup = await run_phase(call, request, concurrency, warmup_s, max_calls, timeout,
                                 sent)
        cpu_start = time.process_time()
        phase = await run_phase(call, request, concurrency, duration_s, max_calls, timeout,
                                sent)
        cpu_s = time.process_time() - cpu_start
    if latencies_out is not None:
        latencies_out.extend(phase.latencies_ns)
    ms = sorted(ns / 1e6 for ns in phase.latencies_ns)
    calls = len(ms)
    return {
        "address": address,
        "concurrency": concurrency,
        "payload_bytes": payload_bytes,
        "calls": calls,
        "errors": sum(phase.errors.values()),
        "error_codes": dict(phase.errors),
        "elapsed_s": round(phase.elapsed_s, 4),
        "rps": round(calls / phase.elapsed_s, 1) if phase.elapsed_s > 0 else 0.0,
        "p50_ms": round(percentile(ms, 50), 4),
        "p90_ms": round(percentile(ms, 90), 4),
        "p99_ms": round(percentile(ms, 99), 4),
        "mean_ms": round(sum(ms) / calls, 4) if calls else float("nan"),
        "max_ms": round(ms[-1], 4) if calls else float("nan"),
        "capped": phase.capped,
        # A load generator near 100 % of a core limits req/s, whatever the target.
        "loadgen_cpu_pct": round(100 * cpu_s / phase.elapsed_s, 1) if phase.elapsed_s else 0.0,
        "loadgen_cpu_s": round(cpu_s, 4),
        "loadgen_cpu_us_per_call": round(cpu_s * 1e6 / calls, 1) if calls else None,
        "metadata_sets": len(metadata_sets),
        "late_s": round(late_s, 4),
        "warmup_calls": len(warmup.latencies_ns),
        "warmup_errors": sum(warmup.errors.values()),
        "loop": loop_name(asyncio.get_running_loop()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--address", required=True, help="host:port of the Echo server")
    parser.add_argument("--concurrency", type=int, default=1, help="calls in flight")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds discarded first")
    parser.add_argument("--max-calls", type=int, default=1_000_000,
                        help="call budget of each phase (the measurement stops at it)")
    parser.add_argument("--payload-bytes", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of each call (s)")
    parser.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                        help="metadata sent with every call (repeatable)")
    parser.add_argument("--metadata-file", type=Path, metavar="PATH",
                        help="a JSON list of metadata sets ([[key, value], ...] each), taken "
                        "in turn by the calls; instead of --metadata")
    parser.add_argument("--start-at", type=float, metavar="EPOCH_S",
                        help="begin the warm-up at this time.time() instant (for several "
                        "generators sharing a load)")
    parser.add_argument("--latencies-out", type=Path, metavar="PATH",
                        help="write the measured latencies there (int64 ns)")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.max_calls < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("concurrency and max-calls must be >= 1, duration > 0, warmup >= 0")
    metadata: list[tuple[str, str]] = []
    for item in args.metadata:
        key, sep, value = item.partition("=")
        if not sep or not key or key != key.lower():
            parser.error(f"--metadata {item.split('=')[0]}=...: expected a lower-case "
                         "KEY=VALUE")
        metadata.append((key, value))
    metadata_sets: list[list[tuple[str, str]]] = []
    if args.metadata_file is not None:
        if metadata:
            parser.error("--metadata and --metadata-file exclude each other")
        loaded = json.loads(args.metadata_file.read_text())
        if not isinstance(loaded, list) or not loaded:
            parser.error("--metadata-file: expected a non-empty JSON list of metadata sets")
        for entry in loaded:
            pairs = [(str(k), str(v)) for k, v in entry]
            if any(k != k.lower() for k, _ in pairs):
                parser.error("--metadata-file: keys must be lower-case")
            metadata_sets.append(pairs)
    result: dict[str, Any] = {}
    latencies: list[int] | None = [] if args.latencies_out is not None else None

    async def run() -> None:
        result.update(await measure(args.address, args.concurrency, args.duration,
                                    args.warmup, args.max_calls, args.payload_bytes,
                                    args.timeout, metadata, metadata_sets=metadata_sets,
                                    start_at=args.start_at,
                                    latencies_out=latencies))

    run_loop(run)
    if args.latencies_out is not None and latencies is not None:
        args.latencies_out.write_bytes(array.array("q", latencies).tobytes())
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
