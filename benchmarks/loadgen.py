"""A closed-loop gRPC load generator for ``revo.echo.v1.EchoService/Echo``.

Run as its own process, so it never shares an event loop (or a core's time slice in that
loop) with the server it measures::

    python -m benchmarks.loadgen --address 127.0.0.1:50051 --concurrency 64 --duration 10

One ``grpc.aio`` channel; ``--concurrency`` coroutines each issue one unary call at a time
with the same pre-serialized request bytes (the channel neither serializes nor parses, so
every target pays the same client cost). ``--metadata KEY=VALUE`` (repeatable, e.g.
``authorization=Bearer <token>``) is sent with every call, built once before the first.
A warm-up phase runs first and is discarded. Every
phase ends at its duration or its call budget, whichever comes first. The result is one
JSON object on stdout: successful calls, errors by status code, req/s, and latency
percentiles measured around each call with ``time.perf_counter_ns``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from benchmarks._report import percentile
from benchmarks.echo_server import loop_name, run_loop
from revo_engine_echo._gen.revo.echo.v1 import echo_pb2

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


async def _worker(call: CallBytes, request: bytes, phase: Phase, end_ns: int, max_calls: int,
                  timeout: float, metadata: grpc.aio.Metadata | None) -> None:
    clock = time.perf_counter_ns
    while phase.issued < max_calls and clock() < end_ns:
        phase.issued += 1
        start = clock()
        try:
            await call(request, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            phase.errors[exc.code().name] += 1
            continue
        phase.latencies_ns.append(clock() - start)


async def run_phase(call: CallBytes, request: bytes, concurrency: int, duration_s: float,
                    max_calls: int, timeout: float,
                    metadata: grpc.aio.Metadata | None = None) -> Phase:
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
                  metadata: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    payload = bytes(range(256)) * (payload_bytes // 256 + 1)
    request = echo_pb2.EchoRequest(payload=payload[:payload_bytes]).SerializeToString()
    # Built once: grpc.aio would otherwise convert a tuple into Metadata on every call.
    sent = grpc.aio.Metadata(*metadata) if metadata else None
    async with grpc.aio.insecure_channel(address) as channel:
        call: CallBytes = channel.unary_unary(ECHO_METHOD, None, None)
        # One checked call: the target really echoes (a wrong target fails here, not silently).
        reply = echo_pb2.EchoResponse.FromString(
            await call(request, timeout=timeout, metadata=sent))
        if reply.payload != payload[:payload_bytes]:
            raise RuntimeError(f"{address} answered Echo with a different payload")
        warmup = await run_phase(call, request, concurrency, warmup_s, max_calls, timeout,
                                 sent)
        cpu_start = time.process_time()
        phase = await run_phase(call, request, concurrency, duration_s, max_calls, timeout,
                                sent)
        cpu_s = time.process_time() - cpu_start
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
    result: dict[str, Any] = {}

    async def run() -> None:
        result.update(await measure(args.address, args.concurrency, args.duration,
                                    args.warmup, args.max_calls, args.payload_bytes,
                                    args.timeout, metadata))

    run_loop(run)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
