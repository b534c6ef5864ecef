"""The engine pool on a real event loop: pykka threads, no sockets."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pykka
import pytest
from google.protobuf.message import Message

from mesh.engine import Context, EngineSpec, MethodBinding, bind_methods
from mesh.errors import (
    Cancelled,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    RpcError,
    Unavailable,
)
from mesh.runtime.pool import Call, EnginePool, PoolState, StreamSink
from revo_engine_echo import EchoEngine, EchoSettings
from revo_engine_echo.v1 import echo_pb2
from tests.plugins import bad_start, crashy

SERVICE = "/revo.echo.v1.EchoService"
ECHO, COUNT, STATS = f"{SERVICE}/Echo", f"{SERVICE}/Count", f"{SERVICE}/Stats"

CRASHY = crashy.revo_engine()
CRASHY_METHODS = bind_methods(CRASHY)
ECHO_SPEC = EngineSpec(name="echo", engine=EchoEngine)
ECHO_METHODS = bind_methods(ECHO_SPEC)


GATED = b"gated"


class Gate:
    """An engine whose ``Echo`` of ``GATED`` holds its actor until the test opens the gate
    (ignoring the call's deadline, like a hung engine)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.open = threading.Event()

        gate = self

        class Gated(crashy.CrashyEngine):
            def echo(self, request: echo_pb2.EchoRequest,
                     ctx: Context) -> echo_pb2.EchoResponse:
                if request.payload == GATED:
                    gate.entered.set()
                    if not gate.open.wait(30):
                        raise RuntimeError("the test never opened the gate")
                return super().echo(request, ctx)

        self.spec = EngineSpec(name="gated", engine=Gated)
        self.methods = bind_methods(self.spec)


@pytest.fixture
def gate() -> Iterator[Gate]:
    made = Gate()
    yield made
    made.open.set()  # before the pools stop: no actor stays held


def context(path: str, timeout: float = 5.0) -> Context:
    return Context(method=path, request_id="t", deadline=time.monotonic() + timeout)


PoolFactory = Callable[..., Awaitable[EnginePool]]


@pytest.fixture
async def start_pool() -> AsyncIterator[PoolFactory]:
    """Start pools on the test's loop; stop them all when the test ends."""
    pools: list[EnginePool] = []

    async def start(spec: EngineSpec = CRASHY, settings: Any = None, *, size: int = 1,
                    max_pending: int = 16, backoff_s: float = 0.01) -> EnginePool:
        pool = EnginePool(spec, settings, loop=asyncio.get_running_loop(), size=size,
                          max_pending=max_pending, backoff_s=backoff_s, backoff_max_s=0.5,
                          start_timeout_s=5.0)
        await pool.start()
        pools.append(pool)
        return pool

    yield start
    for pool in pools:
        await pool.stop(timeout=5.0)


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:.1f} s")
        await asyncio.sleep(0.01)


async def echo(pool: EnginePool, payload: bytes, *, delay_ms: int = 0, timeout: float = 5.0,
               methods: dict[str, MethodBinding] = CRASHY_METHODS) -> bytes:
    request = echo_pb2.EchoRequest(payload=payload, delay_ms=delay_ms)
    data = await pool.call(methods[ECHO], request.SerializeToString(), context(ECHO, timeout))
    return echo_pb2.EchoResponse.FromString(data).payload


async def answered(pool: EnginePool, methods: dict[str, MethodBinding] = CRASHY_METHODS) -> int:
    data = await pool.call(methods[STATS], b"", context(STATS))
    return echo_pb2.StatsResponse.FromString(data).answered


def state_of(pool: EnginePool) -> PoolState:
    return pool.state  # read afresh (mypy would keep a narrowed property)


def encode(message: Message) -> bytes:
    return message.SerializeToString()


# -- unary calls --------------------------------------------------------------------------

async def test_unary_call_returns_the_encoded_response(start_pool: PoolFactory) -> None:
    pool = await start_pool(size=2)

    assert pool.state is PoolState.RUNNING
    assert pool.alive == 2
    assert await echo(pool, b"hello") == b"hello"
    assert pool.stats.served == 1


async def test_settings_reach_every_engine(start_pool: PoolFactory) -> None:
    pool = await start_pool(ECHO_SPEC, EchoSettings(prefix=b"> "), size=2)

    replies = await asyncio.gather(*(echo(pool, b"%d" % i, methods=ECHO_METHODS)
                                     for i in range(4)))

    assert replies == [b"> 0", b"> 1", b"> 2", b"> 3"]


async def test_malformed_request_is_invalid_argument(start_pool: PoolFactory) -> None:
    pool = await start_pool()

    with pytest.raises(InvalidArgument) as caught:
        await pool.call(CRASHY_METHODS[ECHO], b"\xff\xff\xff", context(ECHO))

    assert "revo.echo.v1.EchoRequest" in caught.value.message
    assert pool.stats.restarts == 0
    assert await echo(pool, b"still here") == b"still here"


async def test_engine_crash_is_internal_and_the_actor_is_restarted(
        start_pool: PoolFactory) -> None:
    pool = await start_pool(backoff_s=0.2)
    assert await echo(pool, b"before") == b"before"
    assert await answered(pool) == 1

    with pytest.raises(Internal) as caught:
        await echo(pool, crashy.CRASH)

    assert "RuntimeError" in caught.value.message
    assert "boom" in caught.value.message
    assert state_of(pool) is PoolState.DEGRADED
    assert pool.alive == 0
    await eventually(lambda: pool.alive == pool.size and pool.stats.restarts == 1)
    assert state_of(pool) is PoolState.RUNNING
    assert pool.stats.crashed == 1
    assert "boom" in pool.stats.last_error
    assert await echo(pool, b"after") == b"after"
    # A fresh engine instance: the crashed one's count is gone.
    assert await answered(pool) == 1


async def test_calls_queued_during_a_restart_are_served_by_the_new_actor(
        start_pool: PoolFactory) -> None:
    pool = await start_pool(backoff_s=0.1)
    crash = asyncio.ensure_future(echo(pool, crashy.CRASH))
    waiting = asyncio.ensure_future(echo(pool, b"patient"))

    with pytest.raises(Internal):
        await crash

    assert await waiting == b"patient"
    assert pool.stats.restarts == 1


async def test_engine_rpc_error_keeps_its_code_and_does_not_restart(
        start_pool: PoolFactory) -> None:
    pool = await start_pool()
    assert await echo(pool, b"one") == b"one"

    with pytest.raises(InvalidArgument) as caught:
        await echo(pool, crashy.INVALID)

    assert "crashy refuses" in caught.value.message
    assert pool.stats.restarts == 0
    assert pool.stats.crashed == 0
    assert pool.alive == 1
    assert await answered(pool) == 1  # the same engine instance kept its state


async def test_wrong_response_type_is_internal(start_pool: PoolFactory) -> None:
    class WrongType(crashy.CrashyEngine):
        def stats(self, request: Any, ctx: Context) -> Any:
            return echo_pb2.EchoResponse()

    spec = EngineSpec(name="wrong", engine=WrongType)
    pool = await start_pool(spec)

    with pytest.raises(Internal, match=r"revo\.echo\.v1\.StatsResponse"):
        await pool.call(bind_methods(spec)[STATS], b"", context(STATS))


# -- capacity and deadlines ---------------------------------------------------------------

async def test_full_queue_is_resource_exhausted(start_pool: PoolFactory, gate: Gate) -> None:
    pool = await start_pool(gate.spec, max_pending=0)
    busy = asyncio.ensure_future(echo(pool, GATED, methods=gate.methods))
    await eventually(gate.entered.is_set)  # the only actor holds it

    with pytest.raises(ResourceExhausted) as caught:
        await echo(pool, b"one too many", methods=gate.methods)

    assert "capacity" in caught.value.message
    # a program reads why, and that a retry soon may land (another node, a free actor)
    assert (caught.value.reason, caught.value.metadata) == ("POOL_FULL", {"engine": pool.name})
    assert caught.value.retry_after_s is not None
    gate.open.set()
    assert await busy == GATED
    assert await echo(pool, b"room again", methods=gate.methods) == b"room again"


async def test_deadline_passing_while_queued_is_deadline_exceeded(
        start_pool: PoolFactory, gate: Gate) -> None:
    pool = await start_pool(gate.spec)
    busy = asyncio.ensure_future(echo(pool, GATED, methods=gate.methods))
    await eventually(gate.entered.is_set)

    with pytest.raises(DeadlineExceeded):
        await echo(pool, b"late", timeout=0.05, methods=gate.methods)

    gate.open.set()  # only now can the busy actor finish: the caller did not wait for it
    assert await busy == GATED
    assert await answered(pool, gate.methods) == 1  # the expired call never ran


async def test_expired_call_left_in_the_queue_is_failed_not_run(
        start_pool: PoolFactory, gate: Gate) -> None:
    pool = await start_pool(gate.spec)
    busy = asyncio.ensure_future(echo(pool, GATED, methods=gate.methods))
    await eventually(gate.entered.is_set)
    # Submitted without pool.call's own timer: the queue itself must notice the deadline.
    outcomes: asyncio.Queue[tuple[bytes | None, Exception | None]] = asyncio.Queue()
    ctx = context(ECHO, timeout=0.05)
    pool.submit(Call(gate.methods[ECHO], encode(echo_pb2.EchoRequest(payload=b"x")), ctx,
                     respond=lambda result, error: outcomes.put_nowait((result, error))))
    await eventually(lambda: ctx.expired)  # while the actor is still held
    gate.open.set()

    result, error = await outcomes.get()
    assert result is None
    assert isinstance(error, DeadlineExceeded)
    assert "waited for a free actor" in error.message

    assert await busy == GATED
    assert await answered(pool, gate.methods) == 1


async def test_hung_engine_is_cut_off_at_the_deadline(start_pool: PoolFactory,
                                                      gate: Gate) -> None:
    pool = await start_pool(gate.spec)

    with pytest.raises(DeadlineExceeded):
        await echo(pool, GATED, timeout=0.1, methods=gate.methods)

    # the engine holds its actor until the gate opens: the caller did not wait for it
    assert gate.entered.is_set()


async def test_an_engine_told_of_the_deadline_frees_its_actor(start_pool: PoolFactory) -> None:
    pool = await start_pool(ECHO_SPEC, EchoSettings())
    ctx = context(ECHO, timeout=0.1)
    hang = echo_pb2.EchoRequest(payload=b"hang", delay_ms=60_000)

    with pytest.raises(DeadlineExceeded):
        await pool.call(ECHO_METHODS[ECHO], encode(hang), ctx)

    assert ctx.cancelled.is_set()
    # The engine saw ctx.cancelled and gave up its minute's wait: the only actor serves the
    # next call well within that call's own deadline.
    assert await echo(pool, b"next", timeout=30, methods=ECHO_METHODS) == b"next"
    assert await answered(pool, ECHO_METHODS) == 2  # the hung call ended, then this one


# -- streams ------------------------------------------------------------------------------

def count_stream(pool: EnginePool, count: int, *, window: int, interval_ms: int = 0,
                 timeout: float = 5.0) -> tuple[StreamSink, Context]:
    ctx = context(COUNT, timeout)
    request = echo_pb2.CountRequest(count=count, interval_ms=interval_ms)
    return pool.stream(CRASHY_METHODS[COUNT], encode(request), ctx, window), ctx


def index_of(data: bytes) -> int:
    return echo_pb2.CountResponse.FromString(data).index


async def test_stream_delivers_every_item_in_order_as_credit_is_granted(
        start_pool: PoolFactory) -> None:
    pool = await start_pool()
    sink, _ = count_stream(pool, 6, window=2)
    messages = sink.messages()

    items = [index_of(await anext(messages)) for _ in range(2)]  # the window's worth
    sink.grant(2)  # each message passed on gives its credit back, as the gateway does
    async for item in messages:
        items.append(index_of(item))
        sink.grant(1)

    assert items == [0, 1, 2, 3, 4, 5]
    assert await answered(pool) == 6


async def test_stream_error_from_engine_ends_the_stream_with_its_code(
        start_pool: PoolFactory) -> None:
    pool = await start_pool(ECHO_SPEC, EchoSettings())
    ctx = context(COUNT)
    sink = pool.stream(ECHO_METHODS[COUNT], encode(echo_pb2.CountRequest(count=0)), ctx, 4)

    with pytest.raises(InvalidArgument, match="count must be between"):
        async for _ in sink.messages():
            pass


async def test_cancel_stops_the_producer(start_pool: PoolFactory) -> None:
    pool = await start_pool()
    sink, ctx = count_stream(pool, 1000, window=2, interval_ms=10)
    messages = sink.messages()
    assert [index_of(await anext(messages)) for _ in range(2)] == [0, 1]

    sink.cancel()

    # Either the engine saw ctx.cancelled and returned, or the pool stopped it at its next
    # message; both end the stream, and nothing else may come of it.
    rest: list[int] = []
    ending: RpcError | None = None
    try:
        async for item in messages:
            rest.append(index_of(item))
    except RpcError as exc:
        ending = exc
    assert ending is None or isinstance(ending, Cancelled), ending
    assert rest == []
    assert ctx.cancelled.is_set()
    # The actor is free again (this call runs on it once the stream ended): the engine
    # stopped at the cancel, after the two items read and at most the one waiting for credit
    assert await answered(pool) in (2, 3)


async def test_stream_cancelled_while_queued_never_starts(start_pool: PoolFactory,
                                                          gate: Gate) -> None:
    pool = await start_pool(gate.spec)
    busy = asyncio.ensure_future(echo(pool, GATED, methods=gate.methods))
    await eventually(gate.entered.is_set)  # the only actor holds it
    ctx = context(COUNT)
    sink = pool.stream(gate.methods[COUNT], encode(echo_pb2.CountRequest(count=5)), ctx, 5)

    sink.cancel()
    gate.open.set()
    assert await busy == GATED
    with pytest.raises(Cancelled):
        async for _ in sink.messages():
            pass

    assert await answered(pool, gate.methods) == 1  # only the echo; the stream produced nothing


async def test_stream_deadline_stops_a_stalled_stream(start_pool: PoolFactory) -> None:
    """The producer waits for credit: with none granted, the stream's second item never
    comes, and the stream ends at its deadline."""
    pool = await start_pool()
    sink, _ = count_stream(pool, 10, window=1, timeout=1.0)
    messages = sink.messages()
    assert index_of(await anext(messages)) == 0

    with pytest.raises(DeadlineExceeded):
        await anext(messages)  # no credit granted: the producer waits until the deadline
    assert await answered(pool) == 2  # item 0, and item 1 that waited for credit


# -- stop ---------------------------------------------------------------------------------

async def test_stop_fails_queued_calls_and_leaves_no_actors(gate: Gate) -> None:
    pool = EnginePool(gate.spec, None, loop=asyncio.get_running_loop(), size=1,
                      max_pending=8, start_timeout_s=5.0)
    await pool.start()
    assert len(pykka.ActorRegistry.get_all()) == 1
    running = asyncio.ensure_future(echo(pool, GATED, methods=gate.methods))
    await eventually(gate.entered.is_set)  # the only actor holds it
    queued = [asyncio.ensure_future(echo(pool, b"q%d" % i, methods=gate.methods))
              for i in range(3)]
    await eventually(lambda: pool.pending == 3)

    stopping = asyncio.ensure_future(pool.stop(timeout=5.0))
    for call in queued:
        with pytest.raises(Unavailable):
            await call
    gate.open.set()
    await stopping

    assert await running == GATED  # the call in progress finished
    assert pykka.ActorRegistry.get_all() == []
    assert pool.state is PoolState.STOPPING
    with pytest.raises(Unavailable, match="stopping"):
        await echo(pool, b"after stop", methods=gate.methods)


async def test_failed_start_raises_and_leaves_no_actors() -> None:
    pool = EnginePool(bad_start.revo_engine(), None, loop=asyncio.get_running_loop(), size=2,
                      max_pending=8, start_timeout_s=5.0)

    with pytest.raises(RuntimeError, match="cannot open its model file"):
        await pool.start()

    await eventually(lambda: pykka.ActorRegistry.get_all() == [], timeout=2.0)
    assert pool.alive == 0


async def test_engine_stop_runs_in_every_actor_on_pool_stop() -> None:
    stopped: list[str] = []

    class Tracked(crashy.CrashyEngine):
        def stop(self) -> None:
            stopped.append(threading.current_thread().name)

    pool = EnginePool(EngineSpec(name="tracked", engine=Tracked), None,
                      loop=asyncio.get_running_loop(), size=3, max_pending=8,
                      start_timeout_s=5.0)
    await pool.start()

    await pool.stop(timeout=5.0)

    assert len(stopped) == 3
    assert len(set(stopped)) == 3  # each in its own actor's thread


async def test_stop_during_a_restart_leaves_no_actors() -> None:
    gate = threading.Event()
    instances: list[object] = []
    started: list[object] = []

    class SlowRestart(crashy.CrashyEngine):
        def start(self) -> None:
            instances.append(self)
            if len(instances) > 1:  # the replacement starts only once the test says so
                gate.wait(30)
            started.append(self)

    pool = EnginePool(EngineSpec(name="slow", engine=SlowRestart), None,
                      loop=asyncio.get_running_loop(), size=1, max_pending=8,
                      backoff_s=0.01, start_timeout_s=30.0)
    await pool.start()
    with pytest.raises(Internal):
        await echo(pool, crashy.CRASH, methods=bind_methods(pool.spec))
    await eventually(lambda: len(instances) == 2, timeout=10.0)  # the restart is under way

    try:
        stopping = asyncio.ensure_future(pool.stop(timeout=30.0))
        await eventually(lambda: pool.state is PoolState.STOPPING)
        assert len(started) == 1  # the replacement is still starting as the stop begins
        gate.set()
        await stopping
        leftover = pykka.ActorRegistry.get_all()
    finally:
        gate.set()
        await eventually(lambda: pykka.ActorRegistry.get_all() == [], timeout=10.0)

    assert len(started) == 2
    assert leftover == []


async def test_a_unary_call_its_caller_cancels_is_answered_cancelled_and_frees_the_actor(
        start_pool: PoolFactory) -> None:
    pool = await start_pool(size=1)
    ctx = context(ECHO, timeout=60.0)
    request = echo_pb2.EchoRequest(payload=b"long", delay_ms=30_000).SerializeToString()
    call = asyncio.ensure_future(pool.call(CRASHY_METHODS[ECHO], request, ctx))
    await eventually(lambda: pool.busy == 1)  # the actor is in the 30 s wait
    ctx.cancel()  # what the responder does when the caller sends a cancel
    with pytest.raises(Cancelled, match="the caller cancelled the call"):
        await asyncio.wait_for(call, 5)
    # echo's wait woke on the cancel: the only actor serves the next call at once
    assert await echo(pool, b"next", timeout=5.0) == b"next"


async def test_a_cancelled_call_still_queued_is_never_run(start_pool: PoolFactory) -> None:
    pool = await start_pool(size=1)
    before = await answered(pool)
    first = context(ECHO, timeout=60.0)
    holding = asyncio.ensure_future(pool.call(CRASHY_METHODS[ECHO], echo_pb2.EchoRequest(
        payload=b"hold", delay_ms=300).SerializeToString(), first))
    queued = context(ECHO, timeout=60.0)
    waiting = asyncio.ensure_future(pool.call(CRASHY_METHODS[ECHO], echo_pb2.EchoRequest(
        payload=b"queued").SerializeToString(), queued))
    await eventually(lambda: pool.busy == 1)
    queued.cancel()
    with pytest.raises(Cancelled):
        await asyncio.wait_for(waiting, 5)
    assert echo_pb2.EchoResponse.FromString(await holding).payload == b"hold"
    assert await answered(pool) == before + 1, "only the holding call was answered"
