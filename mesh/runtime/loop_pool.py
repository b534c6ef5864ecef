"""An :class:`~mesh.engine.AsyncEngine` served on the node's event loop, one task per call.

The same face as :class:`~mesh.runtime.pool.EnginePool` (the node and the gateway's
co-located path use either), without threads: a unary call is a task whose outcome goes
to ``respond``; a server stream is a task that pulls the engine's async generator one item
per credit the consumer grants, so nothing is produced that the caller cannot take.
Deadlines and cancellation cancel the task, which closes the generator (and whatever
upstream call it holds open). Calls in flight are bounded by ``max_pending``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from mesh.engine import (
    AsyncEngine,
    Context,
    EngineRuntime,
    EngineSpec,
    LoadProgress,
    MethodBinding,
)
from mesh.errors import (
    Cancelled,
    DeadlineExceeded,
    Reason,
    ResourceExhausted,
    RpcError,
    Unavailable,
)
from mesh.observability import tracing
from mesh.runtime.pool import (
    PoolState,
    PoolStats,
    Respond,
    decode_request,
    encode_response,
    engine_failure,
    log_failure,
    outcome_of,
)

if TYPE_CHECKING:
    from mesh.observability.metrics import EngineMetrics
    from mesh.runtime.pool_metrics import MethodMeter

__all__ = ["LoopPool", "LoopStream"]

log = logging.getLogger(__name__)

_END = object()


class LoopStream:
    """A server stream produced by a task on the loop; read with :meth:`messages`."""

    def __init__(self, pool: LoopPool, binding: MethodBinding, request: Message,
                 ctx: Context, window: int) -> None:
        self._pool = pool
        self._binding = binding
        self._ctx = ctx
        self._credit = asyncio.Semaphore(window)
        self._queue: asyncio.Queue[bytes | object] = asyncio.Queue()
        self._error: RpcError | None = None
        self._expired = False
        self._meter = pool.meters[binding.path] if pool.meters is not None else None
        self._started = time.perf_counter() if self._meter is not None else 0.0
        produce = getattr(pool.engine, binding.attribute)(request, ctx)
        scope = (tracing.engine_scope(pool.name, binding.service, binding.descriptor.name)
                 if tracing.active() else None)
        self._span = scope.span if scope is not None else None
        self._task = pool.spawn(self._produce(produce),
                                scope.context if scope is not None else None)
        self._timer = pool.loop.call_later(max(0.0, ctx.time_remaining()), self._expire)

    async def _produce(self, items: AsyncIterator[Message]) -> None:
        try:
            async with contextlib.aclosing(items):  # type: ignore[type-var]
                while True:
                    await self._credit.acquire()
                    try:
                        item = await anext(items)
                    except StopAsyncIteration:
                        break
                    self._queue.put_nowait(encode_response(self._binding, item))
        except asyncio.CancelledError:
            self._error = (DeadlineExceeded(f"deadline passed while streaming "
                                            f"{self._binding.path}") if self._expired
                           else Cancelled("the caller cancelled the stream"))
        except RpcError as error:
            self._error = error
        except Exception as exc:
            self._error = self._pool.crashed(self._binding, self._ctx, exc)
        finally:
            self._timer.cancel()
            self._queue.put_nowait(_END)
            if self._span is not None:
                tracing.finish(self._span, self._error)
            if self._meter is not None:
                self._meter.finished(self._started, self._error)

    def _expire(self) -> None:
        self._expired = True
        self.cancel()

    def grant(self, count: int) -> None:
        for _ in range(count):
            self._credit.release()

    def cancel(self) -> None:
        self._ctx.cancel()
        self._task.cancel()

    async def messages(self) -> AsyncIterator[bytes]:
        """Yield stream messages; raise the stream's error at its end."""
        while True:
            item = await self._queue.get()
            if item is _END:
                if self._error is not None:
                    raise self._error
                return
            assert isinstance(item, bytes)
            yield item


class LoopPool:
    """One :class:`AsyncEngine` instance and the calls it is serving."""

    def __init__(self, spec: EngineSpec, settings: Any, runtime: EngineRuntime, *,
                 loop: asyncio.AbstractEventLoop, max_pending: int,
                 start_timeout_s: float = 30.0) -> None:
        self.spec = spec
        self.name = spec.name
        self.settings = settings
        self.runtime = runtime
        self.loop = loop
        self.size = 1
        self.max_pending = max_pending
        self._start_timeout = start_timeout_s
        self.engine: AsyncEngine | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.stats = PoolStats()
        self.meters: dict[str, MethodMeter] | None = None
        """Per method path, when the node measures (see ``mesh.runtime.pool_metrics``)."""
        self.engine_metrics: EngineMetrics | None = None
        """The engine's ``runtime.metrics``, closed when the engine stops."""
        self.progress = LoadProgress()
        """The engine's load at start, as it reports it (``runtime.report_loading``)."""

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        engine = self.spec.engine(self.settings)
        assert isinstance(engine, AsyncEngine)
        engine.runtime = self.runtime.for_engine(self.engine_metrics, self.progress)
        try:
            await asyncio.wait_for(engine.start(), self._start_timeout)
        except TimeoutError:
            self._close_metrics()
            raise TimeoutError(f"engine did not start within {self._start_timeout:g} s") \
                from None
        except BaseException:
            self._close_metrics()
            raise
        self.engine = engine

    def _close_metrics(self) -> None:
        if self.engine_metrics is not None:
            self.engine_metrics.close()

    async def stop(self, timeout: float = 10.0) -> None:
        """Cancel the calls still running, then stop the engine (bounded by ``timeout``)."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        engine, self.engine = self.engine, None
        if engine is not None:
            try:
                await asyncio.wait_for(engine.stop(), timeout)
            except Exception:
                log.exception("engine %s: stop() failed", self.name)
        self._close_metrics()

    # -- calls ------------------------------------------------------------------------

    def spawn(self, work: Coroutine[Any, Any, None],
              context: contextvars.Context | None = None) -> asyncio.Task[None]:
        task = self.loop.create_task(work, context=context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _admit(self, binding: MethodBinding, payload: bytes) -> Message:
        if self._stopping or self.engine is None:
            raise Unavailable(f"engine '{self.name}' is stopping; retry on another node",
                              reason=Reason.ENGINE_STOPPING)
        if len(self._tasks) >= self.max_pending:
            raise ResourceExhausted(f"engine '{self.name}' is at capacity ({len(self._tasks)} "
                                    "calls in flight); retry later or add nodes",
                                    reason=Reason.POOL_FULL, metadata={"engine": self.name})
        return decode_request(binding, payload)

    def crashed(self, binding: MethodBinding, ctx: Context, exc: Exception) -> RpcError:
        log_failure(self.name, binding.path, ctx.request_id, exc)
        self.stats.crashed += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        return engine_failure(self.name, binding.path, exc)

    def _admitted(self, binding: MethodBinding, payload: bytes) -> Message:
        """:meth:`_admit`, counting a refusal as the method's error."""
        try:
            return self._admit(binding, payload)
        except RpcError as error:
            if self.meters is not None:
                self.meters[binding.path].finished(time.perf_counter(), error)
            raise

    def start_call(self, binding: MethodBinding, payload: bytes, ctx: Context,
                   respond: Respond) -> None:
        """Start a unary call; ``respond`` gets its outcome (raises if it cannot start)."""
        request = self._admitted(binding, payload)
        if self.meters is not None:
            respond = self.meters[binding.path].wrap(respond, time.perf_counter())
        expired = False
        context = None
        if tracing.active():  # the engine's span is current in the call's task
            scope = tracing.engine_scope(self.name, binding.service, binding.descriptor.name)
            respond, context = scope.responding(respond), scope.context

        async def serve() -> None:
            try:
                response = await getattr(self.engine, binding.attribute)(request, ctx)
                data = encode_response(binding, response)
            except asyncio.CancelledError:
                respond(None, DeadlineExceeded(f"{binding.path} did not finish before its "
                                               "deadline") if expired
                        else Cancelled("the caller cancelled the call")
                        if ctx.cancelled.is_set()
                        else Unavailable(f"engine '{self.name}' stopped during the call"))
                return
            except RpcError as error:
                respond(None, error)
                return
            except Exception as exc:
                respond(None, self.crashed(binding, ctx, exc))
                return
            finally:
                timer.cancel()
            self.stats.served += 1
            respond(data, None)

        def expire() -> None:
            nonlocal expired
            expired = True
            ctx.cancel()
            task.cancel()

        task = self.spawn(serve(), context)
        timer = self.loop.call_later(max(0.0, ctx.time_remaining()), expire)
        ctx.on_cancel(task.cancel)  # the caller cancelled it, or it expired

    async def call(self, binding: MethodBinding, payload: bytes, ctx: Context) -> bytes:
        return await outcome_of(self.start_call, self.loop, binding, payload, ctx)

    def stream(self, binding: MethodBinding, payload: bytes, ctx: Context,
               window: int) -> LoopStream:
        return LoopStream(self, binding, self._admitted(binding, payload), ctx, window)

    # -- status -----------------------------------------------------------------------

    @property
    def alive(self) -> int:
        return 1 if self.engine is not None else 0

    @property
    def pending(self) -> int:
        return len(self._tasks)

    @property
    def busy(self) -> int:
        return len(self._tasks)

    @property
    def restarts(self) -> int:
        return 0  # an async engine is not restarted: its node is

    @property
    def healthy(self) -> bool:
        return self.state is PoolState.RUNNING

    @property
    def state(self) -> PoolState:
        if self._stopping:
            return PoolState.STOPPING
        return PoolState.RUNNING if self.engine is not None else PoolState.DEGRADED
