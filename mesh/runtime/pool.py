"""An engine's pool of pykka actors, fed from a bounded queue and supervised by its node.

Calls wait in one bounded queue shared by the pool's actors. An idle actor is woken with a
``_Drain`` message and then takes calls from the queue one at a time until it is empty, so
under load actors go from call to call without a round trip through the event loop, and a
crash loses at most the call that caused it. Outcomes go back to the loop in batches (one
``call_soon_threadsafe`` wakes the loop for all that are ready). The loop thread restarts an
actor that failed, with capped exponential backoff. Nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pykka
from google.protobuf.message import DecodeError, Message

from mesh.engine import AsyncEngine, Context, Engine, EngineSpec, MethodBinding
from mesh.errors import (
    Cancelled,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    Reason,
    ResourceExhausted,
    RpcError,
    Unavailable,
)
from mesh.observability import tracing
from mesh.transport.connection import unreachable

if TYPE_CHECKING:
    from mesh.runtime.pool_metrics import MethodMeter

log = logging.getLogger(__name__)

__all__ = ["Call", "EnginePool", "PoolState", "StreamSink", "decode_request", "encode_response",
           "engine_failure", "log_failure", "outcome_of"]


class PoolState(enum.Enum):
    RUNNING = "running"
    DEGRADED = "degraded"
    STOPPING = "stopping"


class _StreamStopped(Exception):
    """Raised inside the actor when a stream's caller is gone or its deadline passed."""


@dataclass(frozen=True)
class _End:
    error: RpcError | None


class StreamSink:
    """Carries a server stream from an actor thread to the loop, with credit-based flow control.

    The actor blocks in :meth:`put` while the consumer holds no credit; the consumer grants
    credit with :meth:`grant` as it delivers messages onward, and :meth:`cancel` stops the
    producer at its next message.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, window: int, ctx: Context) -> None:
        self._loop = loop
        self._credit = threading.Semaphore(window)
        self._ctx = ctx
        self._queue: asyncio.Queue[bytes | _End] = asyncio.Queue()

    # actor thread
    def put(self, data: bytes) -> None:
        while True:
            if self._ctx.cancelled.is_set():
                raise _StreamStopped
            remaining = self._ctx.time_remaining()
            if remaining <= 0:
                raise _StreamStopped
            if self._credit.acquire(timeout=min(remaining, 1.0)):
                if self._ctx.cancelled.is_set():
                    raise _StreamStopped
                break
        self._loop.call_soon_threadsafe(self._queue.put_nowait, data)

    # loop thread
    def end(self, error: RpcError | None) -> None:
        # After every message the actor put before its outcome: those are callbacks
        # already in the loop's ready queue, but the outcome can be delivered by a wake-up
        # scheduled before them (another actor's; see EnginePool.post), and ending the
        # stream at once would drop them.
        self._loop.call_soon(self._queue.put_nowait, _End(error))

    def grant(self, count: int) -> None:
        self._credit.release(count)

    def cancel(self) -> None:
        self._ctx.cancel()
        self._credit.release()  # wake a producer waiting for credit

    async def messages(self) -> AsyncIterator[bytes]:
        """Yield stream messages; raise the stream's error at its end."""
        while True:
            item = await self._queue.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item


Respond = Callable[[bytes | None, "RpcError | None"], None]
"""``respond(response, error)``: a unary call's outcome, called once on the loop."""


@dataclass(eq=False)
class Call:
    """One call on its way to an actor. Exactly one of ``respond`` and ``sink`` is set."""

    binding: MethodBinding
    payload: bytes
    ctx: Context
    respond: Respond | None = None
    sink: StreamSink | None = None
    timer: asyncio.TimerHandle | None = None
    finished: bool = False
    """Set on the loop once the outcome was delivered (or the deadline passed)."""
    trace: Any = None
    """The trace context the call came in (only while tracing is on): its engine span's
    parent, carried to the actor's thread."""
    meter: MethodMeter | None = None
    started: float = 0.0


@dataclass(frozen=True)
class _Start:
    pass


@dataclass(frozen=True)
class _Drain:
    """Tells an idle actor that calls are waiting in the pool's queue."""


class EngineActor(pykka.ThreadingActor):
    """Runs one engine instance; serves one call at a time."""

    @staticmethod
    def _create_actor_inbox() -> Any:
        # pykka's hook for an actor's inbox: SimpleQueue (in C) instead of queue.Queue,
        # whose Python-level Condition made waking an actor the dearest step of a call.
        return queue.SimpleQueue()

    def __init__(self, pool: EnginePool, slot: _Slot) -> None:
        super().__init__()
        self._pool = pool
        self._slot = slot
        self._engine: Engine | None = None

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Drain):
            self._drain()
            return None
        if isinstance(message, _Start):
            engine = self._pool.spec.engine(self._pool.settings)
            if isinstance(engine, AsyncEngine):  # a factory's result: only known now
                raise TypeError("an AsyncEngine must be declared as the EngineSpec's class")
            self._engine = engine
            engine.start()
            return True
        return None

    def on_stop(self) -> None:
        if self._engine is not None:
            try:
                self._engine.stop()
            except Exception:
                log.exception("engine %s: stop() failed", self._pool.name)

    def _drain(self) -> None:
        """Serve queued calls until the queue is empty (or this actor crashes)."""
        pool = self._pool
        call = pool.take(self._slot)
        while call is not None:
            result, error, crashed = (self._serve(call) if call.trace is None
                                      else self._serve_traced(call))
            if crashed:
                pool.post(self._slot, call, result, error)
                self.actor_ref.stop(block=False)
                return
            self._slot.failures = 0  # restart backoff counts failures in a row
            # Take the next call (or go idle) before the caller hears back, so a caller
            # that calls again at once finds this actor ready rather than busy.
            done, call = call, pool.take(self._slot)
            pool.post(None, done, result, error)

    def _serve_traced(self, call: Call) -> tuple[bytes | None, RpcError | None, bool]:
        """:meth:`_serve` in the engine's span, this thread's current span meanwhile."""
        binding = call.binding
        span = tracing.engine_span(self._pool.name, binding.service, binding.descriptor.name,
                                   call.trace)
        outcome = tracing.in_span(span, lambda: self._serve(call))
        tracing.finish(span, outcome[1])
        return outcome

    def _serve(self, call: Call) -> tuple[bytes | None, RpcError | None, bool]:
        """Serve one call: its encoded response or error, and whether the engine crashed."""
        result: bytes | None = None
        error: RpcError | None = None
        crashed = False
        binding = call.binding
        try:
            request = decode_request(binding, call.payload)
            assert self._engine is not None
            response = getattr(self._engine, binding.attribute)(request, call.ctx)
            if call.sink is not None:
                for item in response:
                    call.sink.put(encode_response(binding, item))
            else:
                result = encode_response(binding, response)
        except RpcError as exc:
            error = exc
        except _StreamStopped:
            error = (Cancelled("the caller cancelled the stream") if not call.ctx.expired
                     else DeadlineExceeded(f"deadline passed while streaming {binding.path}"))
        except Exception as exc:
            crashed = True
            log_failure(self._pool.name, binding.path, call.ctx.request_id, exc)
            error = engine_failure(self._pool.name, binding.path, exc)
        return result, error, crashed


def log_failure(engine: str, path: str, request_id: str, exc: Exception) -> None:
    """Log an exception an engine did not mean to raise: NATS not answering (a server
    restarting, a leader being elected) in one line, as it is the store's state and not a
    bug; anything else with its traceback."""
    if unreachable(exc):
        log.warning("engine %s in %s (request %s): NATS did not answer (%s: %s)", engine,
                    path, request_id, type(exc).__name__, exc)
    else:
        log.error("engine %s failed in %s (request %s)", engine, path, request_id,
                  exc_info=exc)


def engine_failure(engine: str, path: str, exc: Exception) -> RpcError:
    """What the caller gets for an exception an engine did not mean to raise: UNAVAILABLE
    when it says NATS did not answer (a restart, a reconnect: worth a retry), else
    INTERNAL (a bug), each with the exception's type and message."""
    what = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if unreachable(exc):
        return Unavailable(f"engine '{engine}' could not reach NATS in {path} ({what}); "
                           "retry if the call is safe to repeat",
                           reason=Reason.STORE_UNAVAILABLE, metadata={"engine": engine})
    return Internal(f"engine '{engine}' failed in {path}: {what}")


async def outcome_of(start_call: Callable[[MethodBinding, bytes, Context, Respond], None],
                     loop: asyncio.AbstractEventLoop, binding: MethodBinding, payload: bytes,
                     ctx: Context) -> bytes:
    """Start a unary call with ``start_call`` and wait for its response (or raise its error)."""
    future: asyncio.Future[bytes] = loop.create_future()

    def respond(result: bytes | None, error: RpcError | None) -> None:
        if not future.done():
            if error is None:
                future.set_result(result or b"")
            else:
                future.set_exception(error)

    start_call(binding, payload, ctx, respond)
    return await future


def decode_request(binding: MethodBinding, payload: bytes) -> Message:
    try:
        return binding.request_type.FromString(payload)
    except DecodeError as exc:
        raise InvalidArgument(f"request is not a valid "
                              f"{binding.descriptor.input_type.full_name}: {exc}") from None


def encode_response(binding: MethodBinding, message: Message | Iterable[Message]) -> bytes:
    expected = binding.descriptor.output_type
    if not isinstance(message, Message) or message.DESCRIPTOR is not expected:
        raise TypeError(f"{binding.attribute}() returned {type(message).__name__}, "
                        f"expected {expected.full_name}")
    return message.SerializeToString()


@dataclass(eq=False)
class _Slot:
    index: int
    ref: pykka.ActorRef[EngineActor] | None = None
    failures: int = 0


_Outcome = tuple["_Slot | None", Call, bytes | None, RpcError | None]


@dataclass
class PoolStats:
    restarts: int = 0
    served: int = 0
    crashed: int = 0
    last_error: str = ""


class EnginePool:
    """The actors of one engine, a bounded queue of waiting calls, and their supervision."""

    def __init__(
        self,
        spec: EngineSpec,
        settings: Any,
        *,
        loop: asyncio.AbstractEventLoop,
        size: int,
        max_pending: int,
        backoff_s: float = 0.1,
        backoff_max_s: float = 30.0,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.settings = settings
        self.loop = loop
        self.size = size
        self.max_pending = max_pending
        self._backoff = backoff_s
        self._backoff_max = backoff_max_s
        self._start_timeout = start_timeout_s
        self._slots = [_Slot(i) for i in range(size)]
        # Shared with the actor threads, guarded by _lock: the queue and who is idle.
        self._lock = threading.Lock()
        self._idle: deque[_Slot] = deque()
        self._waiting: deque[Call] = deque()
        # Outcomes posted by actors; _wake_pending is set while a delivery is scheduled.
        self._outcomes: deque[_Outcome] = deque()
        self._wake_pending = False
        self._stopping = False
        self._restart_timers: set[asyncio.TimerHandle] = set()
        self._restarts: set[asyncio.Task[None]] = set()
        self.stats = PoolStats()
        self.meters: dict[str, MethodMeter] | None = None
        """Per method path, when the node measures (see ``mesh.runtime.pool_metrics``)."""

    # -- lifecycle --------------------------------------------------------------------

    def _start_actor(self, slot: _Slot) -> pykka.ActorRef[EngineActor]:
        """Start one actor and wait for its engine's start(); runs in an executor thread."""
        ref = EngineActor.start(self, slot)
        try:
            ref.ask(_Start(), timeout=self._start_timeout)
        except BaseException:
            ref.stop(block=False)
            raise
        return ref

    async def start(self) -> None:
        """Start every actor in parallel; raise the first start failure (and stop the rest)."""
        results = await asyncio.gather(
            *(self.loop.run_in_executor(None, self._start_actor, slot) for slot in self._slots),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        for slot, result in zip(self._slots, results, strict=True):
            if not isinstance(result, BaseException):
                slot.ref = result
                self._make_idle(slot)
        if errors:
            await self.stop()
            error = errors[0]
            if isinstance(error, pykka.Timeout):
                raise TimeoutError(f"engine did not start within {self._start_timeout:g} s")
            raise error

    async def stop(self, timeout: float = 10.0) -> None:
        """Fail waiting calls with UNAVAILABLE and stop every actor (bounded by ``timeout``)."""
        self._stopping = True
        for timer in self._restart_timers:
            timer.cancel()
        self._restart_timers.clear()
        if self._restarts:  # each stops the actor it was starting, then returns
            await asyncio.wait(set(self._restarts), timeout=timeout)
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
            self._idle.clear()
        for call in waiting:
            self._fail(call, Unavailable(f"engine '{self.name}' is stopping"))
        refs = [slot.ref for slot in self._slots if slot.ref is not None]
        for slot in self._slots:
            slot.ref = None

        def stop_all() -> None:
            futures = [ref.stop(block=False) for ref in refs]
            for future in futures:
                try:
                    future.get(timeout=timeout)
                except pykka.Timeout:
                    log.error("engine %s: an actor did not stop within %.1f s (a bug)",
                              self.name, timeout)

        if refs:
            await self.loop.run_in_executor(None, stop_all)

    # -- calls ------------------------------------------------------------------------

    def start_call(self, binding: MethodBinding, payload: bytes, ctx: Context,
                   respond: Respond) -> None:
        """Queue a unary call; ``respond`` gets its outcome (raises if it cannot queue)."""
        call = Call(binding, payload, ctx, respond=respond,
                    trace=tracing.current() if tracing.active() else None)
        self.submit(call)
        # A hung engine must not hold the caller (or the node's drain) past the deadline.
        call.timer = self.loop.call_later(ctx.time_remaining(), self._expire, call)
        # A call the caller cancels is answered at once; its actor skips it if it has not
        # started it, and an engine that watches ctx.cancelled stops early.
        ctx.on_cancel(lambda: self._fail(call, Cancelled("the caller cancelled the call")))

    async def call(self, binding: MethodBinding, payload: bytes, ctx: Context) -> bytes:
        """Run a unary call on an actor and return the encoded response."""
        return await outcome_of(self.start_call, self.loop, binding, payload, ctx)

    def _expire(self, call: Call) -> None:
        self._fail(call, DeadlineExceeded(
            f"{call.binding.path} did not finish before its deadline"))
        call.ctx.cancel()  # lets a waiting engine give up early

    def stream(self, binding: MethodBinding, payload: bytes, ctx: Context,
               window: int) -> StreamSink:
        """Start a server-streaming call; read it with ``sink.messages()``."""
        sink = StreamSink(self.loop, window, ctx)
        self.submit(Call(binding, payload, ctx, sink=sink,
                         trace=tracing.current() if tracing.active() else None))
        return sink

    def submit(self, call: Call) -> None:
        """Queue ``call`` and wake an idle actor if there is one; raise when the queue is full."""
        if self.meters is None:
            self._enqueue(call)
            return
        call.meter, call.started = self.meters[call.binding.path], time.perf_counter()
        try:
            self._enqueue(call)
        except RpcError as error:
            call.meter.finished(call.started, error)
            raise

    def _enqueue(self, call: Call) -> None:
        if self._stopping:
            raise Unavailable(f"engine '{self.name}' is stopping; retry on another node",
                              reason=Reason.ENGINE_STOPPING)
        with self._lock:
            if len(self._waiting) >= self.max_pending and not self._idle:
                raise ResourceExhausted(
                    f"engine '{self.name}' is at capacity ({self.size} actors busy, "
                    f"{self.max_pending} calls queued); retry later or add nodes",
                    reason=Reason.POOL_FULL, metadata={"engine": self.name})
            self._waiting.append(call)
            slot = self._idle.popleft() if self._idle else None
        if slot is not None and slot.ref is not None:
            slot.ref.tell(_Drain())

    def take(self, slot: _Slot) -> Call | None:
        """The next call for ``slot``'s actor, or None (and the slot is idle). Actor thread."""
        while True:
            with self._lock:
                if self._stopping or not self._waiting:
                    self._idle.append(slot)
                    return None
                call = self._waiting.popleft()
            if call.finished:
                continue  # its deadline passed while it waited
            if call.ctx.expired:
                self.post(None, call, None, DeadlineExceeded(
                    f"deadline passed while {call.binding.path} waited for a free actor"))
                continue
            if call.sink is not None and call.ctx.cancelled.is_set():
                self.post(None, call, None,
                          Cancelled("the caller cancelled the stream before it started"))
                continue
            return call

    def post(self, crashed: _Slot | None, call: Call, result: bytes | None,
             error: RpcError | None) -> None:
        """Hand an outcome to the loop; wakes it only if no delivery is pending. Actor thread."""
        self._outcomes.append((crashed, call, result, error))
        if not self._wake_pending:
            self._wake_pending = True
            self.loop.call_soon_threadsafe(self._deliver_outcomes)

    def _deliver_outcomes(self) -> None:
        self._wake_pending = False  # before draining: a later post schedules a new delivery
        outcomes = self._outcomes
        while outcomes:
            crashed, call, result, error = outcomes.popleft()
            if error is None:
                self.stats.served += 1
                self._deliver(call, result or b"")
            else:
                self._fail(call, error)
            if crashed is not None:
                self.stats.crashed += 1
                self.stats.last_error = error.message if error else ""
                crashed.ref = None
                crashed.failures += 1
                self._schedule_restart(crashed)

    def _make_idle(self, slot: _Slot) -> None:
        """Put a (re)started actor to work, or on the idle list. Loop thread."""
        with self._lock:
            busy = bool(self._waiting) and not self._stopping
            if not busy:
                self._idle.append(slot)
        if busy and slot.ref is not None:
            slot.ref.tell(_Drain())

    @staticmethod
    def _finish(call: Call, result: bytes | None, error: RpcError | None) -> None:
        if call.finished:
            return
        call.finished = True
        if call.timer is not None:
            call.timer.cancel()
        if call.meter is not None:
            call.meter.finished(call.started, error)
        if call.respond is not None:
            call.respond(result, error)
        elif call.sink is not None:
            call.sink.end(error)

    def _deliver(self, call: Call, result: bytes) -> None:
        self._finish(call, result, None)

    def _fail(self, call: Call, error: RpcError) -> None:
        self._finish(call, None, error)

    # -- supervision ------------------------------------------------------------------

    def _schedule_restart(self, slot: _Slot) -> None:
        if self._stopping:
            return
        delay = min(self._backoff_max, self._backoff * 2 ** (slot.failures - 1))
        log.warning("engine %s: restarting actor %d in %.2f s (failure %d in a row)",
                    self.name, slot.index, delay, slot.failures)

        def begin() -> None:
            self._restart_timers.discard(timer)
            task = self.loop.create_task(self._restart(slot))
            self._restarts.add(task)
            task.add_done_callback(self._restarts.discard)

        timer = self.loop.call_later(delay, begin)
        self._restart_timers.add(timer)

    async def _restart(self, slot: _Slot) -> None:
        if self._stopping:
            return
        try:
            ref = await self.loop.run_in_executor(None, self._start_actor, slot)
        except Exception as exc:
            slot.failures += 1
            self.stats.last_error = f"restart failed: {type(exc).__name__}: {exc}"
            log.error("engine %s: actor %d failed to restart: %s", self.name, slot.index, exc)
            self._schedule_restart(slot)
            return
        if self._stopping:  # stop() is waiting for us: stop what we started, fully
            await self.loop.run_in_executor(None, lambda: ref.stop(block=True,
                                                                   timeout=self._start_timeout))
            return
        slot.ref = ref
        self.stats.restarts += 1
        self._make_idle(slot)

    # -- status -----------------------------------------------------------------------

    @property
    def alive(self) -> int:
        return sum(1 for slot in self._slots if slot.ref is not None)

    @property
    def pending(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> int:
        """Actors serving a call (read without the lock: a gauge, not a decision)."""
        return max(0, self.alive - len(self._idle))

    @property
    def restarts(self) -> int:
        return self.stats.restarts

    @property
    def healthy(self) -> bool:
        return self.state is PoolState.RUNNING

    @property
    def state(self) -> PoolState:
        if self._stopping:
            return PoolState.STOPPING
        return PoolState.RUNNING if self.alive == self.size else PoolState.DEGRADED
