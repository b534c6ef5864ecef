"""This node's replica of the memory index: built from Milvus at start, kept current from
the change feed, and grown and rebuilt off the event loop.

Searches and changes run on one index thread (``run``), so the index is never read and
written at once; a rebuild runs on its own thread from a snapshot, collects the changes
applied meanwhile, replays them and takes over. Nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import threadpoolctl

from mesh.errors import Unavailable
from revo_engine_recall.index import IndexSettings, MemoryIndex, Row, Vector

__all__ = ["GRAPH_DEBT_MAX", "GRAPH_STEP", "IndexReplica"]

log = logging.getLogger(__name__)

GRAPH_STEP = 64
"""Slots added to the graph at a time: each step holds the index thread (and the searches
queued behind it) for a few milliseconds to tens of milliseconds at a million memories."""
GRAPH_DEBT_MAX = 8192
"""Slots a write may leave outside the graph. Searches scan those exactly (about 1 ms for
8k); past it, the change waits for the graph to take the excess, which slows writers,
not searches."""
T = TypeVar("T")
Change = tuple[list[tuple[Row, Vector]], list[str]]


def _one_blas_thread() -> None:
    """Matrix products on one BLAS thread. OpenBLAS's idle threads otherwise spin for a
    while after each product and starve the node's other work (and Triton, on a small
    machine): text searches measured 110 ms instead of 17."""
    threadpoolctl.threadpool_limits(1, user_api="blas")


class IndexReplica:
    """The memory index of one node, and the threads that keep it."""

    def __init__(self, settings: IndexSettings, dim: int) -> None:
        self.settings = settings
        self.dim = dim
        self.index: MemoryIndex | None = None
        """The index that serves; None while loading."""
        self.loaded = 0
        """Memories read from Milvus so far while loading."""
        self.rebuilds = 0
        """Rebuilt indexes that took over from the old one (see :attr:`rebuilding`)."""
        self._cpu = ThreadPoolExecutor(1, thread_name_prefix="recall-index",
                                       initializer=_one_blas_thread)
        self._builder = ThreadPoolExecutor(1, thread_name_prefix="recall-rebuild")
        self._rebuild: tuple[asyncio.Future[MemoryIndex], list[Change]] | None = None
        """A rebuild running on the builder thread, and the changes applied since."""
        self._swapping = asyncio.Lock()
        self._growing: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the index thread."""
        return await asyncio.get_running_loop().run_in_executor(self._cpu, fn, *args)

    def ready(self) -> MemoryIndex:
        """The serving index, or UNAVAILABLE while it loads."""
        if self.index is None:
            raise Unavailable(f"this node is loading its memory index from Milvus "
                              f"({self.loaded} memories read so far); retry shortly")
        return self.index

    @property
    def rebuilding(self) -> bool:
        """Whether a rebuild of the index is under way: the new index is being built, or
        waits to replay the changes applied meanwhile and take over."""
        return self._rebuild is not None

    async def load(self, batches: AsyncIterator[tuple[list[Row], Vector]],
                   progress: Callable[[int], object] | None = None) -> None:
        """Build the index from every memory, read in ``(rows, vectors)`` batches;
        ``progress`` is told the memories read so far after each batch."""
        began = time.monotonic()
        rows: list[Row] = []
        parts: list[Vector] = []
        async for batch_rows, batch_vectors in batches:
            rows.extend(batch_rows)
            parts.append(batch_vectors)
            self.loaded = len(rows)
            if progress is not None:
                progress(self.loaded)
        vectors = np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)
        index = await self.run(MemoryIndex.build, self.settings, rows, vectors)
        self.index = index
        log.info("recall: %d memories indexed (%s) in %.1f s", len(index), index.kind,
                 time.monotonic() - began)

    async def apply(self, upserts: list[tuple[Row, Vector]], deletes: list[str]) -> None:
        """Apply one change (in feed order); starts a rebuild when the index needs one."""
        async with self._swapping:
            index = self.ready()
            await self.run(index.apply, upserts, deletes)
            while index.graph_debt > GRAPH_DEBT_MAX:  # back-pressure: writers wait, not readers
                await self.run(index.grow_graph, GRAPH_STEP)
            self._grow_soon()
            if self._rebuild is not None:
                self._rebuild[1].append((upserts, deletes))
                if self._rebuild[0].done():
                    await self._swap_locked()
            elif index.needs_rebuild():
                rows, vectors = await self.run(index.snapshot)
                building = asyncio.get_running_loop().run_in_executor(
                    self._builder, MemoryIndex.build, self.settings, rows, vectors)
                self._rebuild = (building, [])
                building.add_done_callback(lambda _: self._swap_soon())

    async def close(self) -> None:
        """Stop growing and rebuilding; release the threads."""
        tasks = [*self._tasks, *([self._growing] if self._growing else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._cpu.shutdown(wait=True)
        self._builder.shutdown(wait=False, cancel_futures=True)

    def _grow_soon(self) -> None:
        if self._growing is None or self._growing.done():
            self._growing = asyncio.get_running_loop().create_task(self._grow())

    async def _grow(self) -> None:
        """Add the slots written since to the graph, a step at a time, so that searches
        queued meanwhile run between the steps."""
        while (index := self.index) is not None and index.graph_debt:
            await self.run(index.grow_graph, GRAPH_STEP)

    def _swap_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self._swap())
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _swap(self) -> None:
        async with self._swapping:
            await self._swap_locked()

    async def _swap_locked(self) -> None:
        """Put a finished rebuild in place, after the changes that arrived while it ran."""
        if self._rebuild is None or not self._rebuild[0].done():
            return
        building, backlog = self._rebuild
        self._rebuild = None
        try:
            index = building.result()
        except Exception:
            log.exception("recall: rebuilding the index failed; the old one serves on")
            return

        def catch_up() -> None:
            for upserts, deletes in backlog:
                index.apply(upserts, deletes)

        await self.run(catch_up)
        self.index = index
        self.rebuilds += 1
        self._grow_soon()
        log.info("recall: index rebuilt (%d memories, %s)", len(index), index.kind)
