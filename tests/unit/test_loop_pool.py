"""AsyncEngine calls as tasks on the loop: outcomes, streams with credit, deadlines,
cancellation, capacity and failures. No sockets."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from typing import Any

import nats.js.errors
import pytest

from mesh.config import MeshConfig
from mesh.engine import (
    AsyncEngine,
    Context,
    EngineRuntime,
    EngineSpec,
    bind_methods,
)
from mesh.errors import (
    Cancelled,
    ConfigError,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    Reason,
    ResourceExhausted,
    Unavailable,
)
from mesh.runtime.loop_pool import LoopPool
from mesh.runtime.pool import PoolState
from mesh.testing import wait_for
from revo_engine_echo.v1 import echo_pb2

SERVICE = echo_pb2.DESCRIPTOR.services_by_name["EchoService"]
ECHO, COUNT, STATS = (f"/revo.echo.v1.EchoService/{m}" for m in ("Echo", "Count", "Stats"))


GATED = b"gated"


class AsyncEcho(AsyncEngine):
    """Echo on the loop; records what happened for the assertions.

    A call with the payload ``GATED`` waits until ``gate_size`` such calls are in flight at
    once: calls served one at a time never get past it (they end at their deadline)."""

    services = (SERVICE,)
    events: list[str]

    async def start(self) -> None:
        self.events = ["started"]
        self.produced = 0
        self.gate_size = 0
        self.gated = 0
        self.gate = asyncio.Event()

    async def stop(self) -> None:
        self.events.append("stopped")

    async def echo(self, request: echo_pb2.EchoRequest, ctx: Context) -> echo_pb2.EchoResponse:
        if request.payload == b"crash":
            raise ValueError("boom")
        if request.payload == b"bad":
            raise InvalidArgument("bad payload")
        if request.payload == b"nats away":
            raise nats.js.errors.NoStreamResponseError
        if request.payload == GATED:
            self.gated += 1
            if self.gated >= self.gate_size:
                self.gate.set()
            await self.gate.wait()
        await asyncio.sleep(request.delay_ms / 1000)
        return echo_pb2.EchoResponse(payload=request.payload, node_id=self.runtime.node_id)

    async def count(self, request: echo_pb2.CountRequest,
                    ctx: Context) -> AsyncIterator[echo_pb2.CountResponse]:
        try:
            for index in range(request.count):
                self.produced += 1
                yield echo_pb2.CountResponse(index=index)
                await asyncio.sleep(request.interval_ms / 1000)
        finally:
            self.events.append("stream closed")

    async def stats(self, request: echo_pb2.StatsRequest,
                    ctx: Context) -> echo_pb2.StatsResponse:
        return echo_pb2.StatsRequest()  # type: ignore[return-value]  # the wrong type


SPEC = EngineSpec(name="async-echo", engine=AsyncEcho)
METHODS = bind_methods(SPEC)


def context(path: str, timeout: float = 5.0) -> Context:
    return Context(method=path, request_id="t", deadline=time.monotonic() + timeout)


@pytest.fixture
async def pool() -> AsyncIterator[LoopPool]:
    runtime = EngineRuntime("node-1", MeshConfig())
    started = LoopPool(SPEC, None, runtime, loop=asyncio.get_running_loop(), max_pending=4)
    await started.start()
    yield started
    await started.stop(timeout=5.0)


def engine(pool: LoopPool) -> AsyncEcho:
    assert isinstance(pool.engine, AsyncEcho)
    return pool.engine


def _produced_at_least(pool: LoopPool, count: int) -> bool:
    return engine(pool).produced >= count


async def echo(pool: LoopPool, payload: bytes, delay_ms: int = 0, timeout: float = 5.0) -> bytes:
    request = echo_pb2.EchoRequest(payload=payload, delay_ms=delay_ms)
    data = await pool.call(METHODS[ECHO], request.SerializeToString(), context(ECHO, timeout))
    return data


async def test_unary_calls_run_concurrently_on_the_loop(pool: LoopPool) -> None:
    assert pool.state is PoolState.RUNNING
    assert pool.alive == 1
    engine(pool).gate_size = 4
    # each call waits until all four are in the engine at once: served one at a time, the
    # first would wait for the others until its deadline (DeadlineExceeded fails the test)
    replies = await asyncio.gather(*(echo(pool, GATED, timeout=10) for _ in range(4)))
    decoded = [echo_pb2.EchoResponse.FromString(r) for r in replies]
    assert [r.payload for r in decoded] == [GATED] * 4
    assert {r.node_id for r in decoded} == {"node-1"}  # the runtime reached the engine
    assert engine(pool).gated == 4
    assert pool.stats.served == 4


async def test_errors_keep_their_status_and_failures_are_internal(pool: LoopPool) -> None:
    with pytest.raises(InvalidArgument, match="bad payload"):
        await echo(pool, b"bad")
    with pytest.raises(Internal, match="ValueError: boom"):
        await echo(pool, b"crash")
    with pytest.raises(Internal, match=r"expected revo\.echo\.v1\.StatsResponse"):
        await pool.call(METHODS[STATS], b"", context(STATS))
    with pytest.raises(InvalidArgument, match=r"not a valid revo\.echo\.v1\.EchoRequest"):
        await pool.call(METHODS[ECHO], b"\xff\xff", context(ECHO))
    assert pool.stats.crashed == 2
    assert pool.state is PoolState.RUNNING
    assert await echo(pool, b"still here")


async def test_nats_not_answering_in_an_engine_is_unavailable_and_worth_a_retry(
        pool: LoopPool) -> None:
    with pytest.raises(Unavailable, match="could not reach NATS") as caught:
        await echo(pool, b"nats away")

    assert caught.value.reason == Reason.STORE_UNAVAILABLE
    assert caught.value.retry_after_s == 1.0
    assert "NoStreamResponseError" in caught.value.message


async def test_a_call_past_its_deadline_is_cancelled(pool: LoopPool) -> None:
    with pytest.raises(DeadlineExceeded):
        await echo(pool, b"slow", delay_ms=10**7, timeout=0.1)
    # the task ends just after its caller heard; left running, it would sleep for hours
    await wait_for(lambda: pool.pending == 0, 5, "the call's task to end")


async def test_calls_beyond_max_pending_are_refused(pool: LoopPool) -> None:
    engine(pool).gate_size = 5  # the four below stay in flight: the fifth is refused
    running = [asyncio.ensure_future(echo(pool, GATED)) for _ in range(4)]
    await wait_for(lambda: pool.pending == 4, 5, "four calls in flight")
    with pytest.raises(ResourceExhausted, match="at capacity") as refused:
        await echo(pool, b"one too many")
    assert refused.value.reason == "POOL_FULL"
    assert refused.value.retry_after_s is not None
    assert engine(pool).gated == 4
    engine(pool).gate.set()
    assert len(await asyncio.gather(*running)) == 4
    room = echo_pb2.EchoResponse.FromString(await echo(pool, b"room again"))
    assert room.payload == b"room again"  # the pool admits calls again


async def test_a_stream_produces_only_what_its_consumer_grants(pool: LoopPool) -> None:
    request = echo_pb2.CountRequest(count=100).SerializeToString()
    stream = pool.stream(METHODS[COUNT], request, context(COUNT), window=3)
    received: list[int] = []
    async for item in stream.messages():
        received.append(echo_pb2.CountResponse.FromString(item).index)
        if len(received) == 5:
            break
        # credit so far: the window (3) and one grant per message before this one; the
        # producer fills it and stops there (without credit it would run on to 100)
        credit = 3 + len(received) - 1
        await wait_for(functools.partial(_produced_at_least, pool, credit), 5,
                       "the window to fill")
        assert engine(pool).produced == credit
        stream.grant(1)
    stream.cancel()
    assert received == [0, 1, 2, 3, 4]
    await wait_for(lambda: "stream closed" in engine(pool).events, 5,
                   "the generator to close")


async def test_cancelling_a_stream_closes_the_generator_and_says_so(pool: LoopPool) -> None:
    request = echo_pb2.CountRequest(count=1000, interval_ms=50).SerializeToString()
    ctx = context(COUNT)
    stream = pool.stream(METHODS[COUNT], request, ctx, window=1000)
    messages = stream.messages()
    await anext(messages)
    stream.cancel()
    with pytest.raises(Cancelled):
        async for _ in messages:
            pass
    assert ctx.cancelled.is_set()
    assert "stream closed" in engine(pool).events


async def test_a_stream_past_its_deadline_ends_deadline_exceeded(pool: LoopPool) -> None:
    request = echo_pb2.CountRequest(count=1000, interval_ms=50).SerializeToString()
    stream = pool.stream(METHODS[COUNT], request, context(COUNT, timeout=0.2), window=1000)
    with pytest.raises(DeadlineExceeded):
        async for _ in stream.messages():
            pass


async def test_stop_cancels_calls_in_flight_then_stops_the_engine(pool: LoopPool) -> None:
    events = engine(pool).events
    running = asyncio.ensure_future(echo(pool, b"x", delay_ms=10**7))
    await wait_for(lambda: pool.pending == 1, 5, "the call in flight")
    await pool.stop(timeout=5.0)
    with pytest.raises(Unavailable, match="stopped during the call"):
        await running
    assert events[-1] == "stopped"
    with pytest.raises(Unavailable, match="stopping"):
        await echo(pool, b"late")


def test_an_async_engine_needs_async_methods() -> None:
    class Blocking(AsyncEcho):
        def echo(self, request: Any, ctx: Context) -> Any:  # type: ignore[override]
            return request

    with pytest.raises(ConfigError, match="must be 'async def'"):
        bind_methods(EngineSpec(name="blocking", engine=Blocking))

    class NotAGenerator(AsyncEcho):
        async def count(self, request: Any, ctx: Context) -> Any:  # type: ignore[override]
            return []

    with pytest.raises(ConfigError, match="async generator"):
        bind_methods(EngineSpec(name="plain", engine=NotAGenerator))


def test_the_runtime_says_when_there_is_no_nats() -> None:
    with pytest.raises(Unavailable, match="no NATS connection"):
        _ = EngineRuntime("n", MeshConfig()).nc


async def test_a_unary_call_its_caller_cancels_stops_the_engine_and_is_cancelled(
        pool: LoopPool) -> None:
    ctx = context(ECHO, timeout=60.0)
    request = echo_pb2.EchoRequest(payload=b"long", delay_ms=30_000).SerializeToString()
    call = asyncio.ensure_future(pool.call(METHODS[ECHO], request, ctx))
    await wait_for(lambda: pool.busy == 1, 5, "the call running")
    ctx.cancel()  # what the responder does when the caller sends a cancel
    with pytest.raises(Cancelled, match="the caller cancelled the call"):
        await asyncio.wait_for(call, 5)
    await wait_for(lambda: pool.busy == 0, 5, "the engine's task gone")
