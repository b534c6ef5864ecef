"""Rate limits shared by every gateway: atomic counters in NATS JetStream.

A limit of ``rate`` requests per second with ``burst`` at once is enforced as a sliding
window of ``burst / rate`` seconds holding at most ``burst`` requests: the count of the
current window plus the previous window's count weighted by how much of it still
overlaps. Counts live in a JetStream stream with atomic counters (``allow_msg_counter``,
nats-server 2.12+), one subject per key and window, so every gateway replica adds to the
same numbers: two gateways never admit more than one limit between them.

Asking NATS on every call would add a round trip to each, so a gateway *leases* tokens:
it adds ``n`` to the shared counter and spends those ``n`` locally, then leases again
(before running out, in the background). Leases grow from 1 to ``burst / 16``, so small
limits stay exact and large ones cost a round trip per many calls. Tokens leased but not
spent when a window ends are lost to that window: a gateway may admit slightly *fewer*
calls than the limit, never more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass

from nats.aio.client import Client as NATS

from mesh.config import Limit
from mesh.errors import RateLimited, Unavailable
from mesh.transport import counters, subjects

__all__ = ["STREAM", "SharedLimiter"]

log = logging.getLogger(__name__)

STREAM = subjects.LIMITS_STREAM
SUBJECT_PREFIX = subjects.LIMITS_PREFIX
_LEASE_DIVISOR = 16
_ASK_TIMEOUT_S = 0.5


@dataclass
class _Bucket:
    window: int = -1
    tokens: int = 0
    lease: int = 1
    previous: int | None = None
    current: int = 0
    leasing: asyncio.Future[None] | None = None
    """The one lease in flight for this key; callers without a token wait for it."""
    refused_until: float = 0.0
    """Until then the limit is known to be full here: refuse without asking NATS."""


class SharedLimiter:
    """Admits or refuses calls against limits counted in NATS."""

    def __init__(self, nc: NATS, *, longest_window_s: float, fail_open: bool = True) -> None:
        self._nc = nc
        self._max_age = max(60.0, 2 * longest_window_s + 10)
        self._fail_open = fail_open
        self._buckets: dict[str, _Bucket] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._warned_at = 0.0
        self.leases_past_their_window = 0
        """Leases that came back after their key had moved to another window (they keep
        their own window's counts); tests read it to know that race ran."""

    async def start(self) -> None:
        await counters.ensure_counter_stream(
            self._nc, STREAM, [f"{SUBJECT_PREFIX}.>"], max_age=self._max_age, memory=True,
            description="revo: rate-limit counters (one per key and window)")

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- calls ------------------------------------------------------------------------

    async def acquire(self, key: str, limit: Limit, now: float | None = None) -> None:
        """Take one request from ``key``'s limit, or raise :class:`RateLimited`.

        Only one lease per key is in flight at a time: callers that find no token wait for
        it instead of each leasing (a herd at a window's start would otherwise reserve
        more than the burst between them and refuse calls that fit)."""
        now = time.time() if now is None else now
        index = int(now // limit.window_s)
        state = self._buckets.get(key)
        if state is None:
            state = self._buckets[key] = _Bucket()
        for _ in range(64):  # bounded: each pass either takes a token or waits for a lease
            if state.window != index:
                state.window, state.tokens, state.previous = index, 0, None
            if state.tokens > 0:
                state.tokens -= 1
                if state.tokens < state.lease // 2 and state.leasing is None:
                    self._refill(key, limit, index)
                return
            if now < state.refused_until:
                raise RateLimited(*self._refusal(key, limit, now))
            if state.leasing is not None:
                await asyncio.shield(state.leasing)
                continue
            granted = await self._locked_lease(state, key, limit, index, now)
            if granted == 0:
                wait = self.wait_s(limit, state.previous or 0, state.current, now)
                state.refused_until = now + min(wait, 0.05)
                raise RateLimited(*self._refusal(key, limit, now))
        raise RateLimited(*self._refusal(key, limit, now))

    async def _locked_lease(self, state: _Bucket, key: str, limit: Limit, index: int,
                            now: float, done: asyncio.Future[None] | None = None) -> int:
        """Lease as the key's only lease in flight; the tokens go to the bucket."""
        if done is None:
            done = asyncio.get_running_loop().create_future()
        state.leasing = done
        want = state.lease
        try:
            granted = await self._lease(key, limit, index, now, want)
        finally:
            state.leasing = None
            done.set_result(None)
        if state.window == index:
            state.tokens += granted
            if granted == want:
                state.lease = min(want * 2, max(1, limit.burst // _LEASE_DIVISOR))
        return granted

    async def count(self, key: str, limit: Limit, add: int = 0,
                    now: float | None = None) -> tuple[float, float]:
        """Add ``add`` to ``key``'s count; the estimated count in the window, and the
        seconds until one more would fit."""
        now = time.time() if now is None else now
        index = int(now // limit.window_s)
        current, previous = await asyncio.gather(
            self._ask(self._subject(key, limit, index), add),
            self._ask(self._subject(key, limit, index - 1), 0))
        return (self._estimate(previous, current, limit, now),
                self.wait_s(limit, previous, current, now))

    @staticmethod
    def wait_s(limit: Limit, previous: int, current: int, now: float) -> float:
        """Seconds until the sliding window has room for one more request."""
        window, burst = limit.window_s, limit.burst
        elapsed = now % window
        if current + 1 <= burst:  # the previous window's share has to age out
            if previous <= 0:
                return 1 / limit.rate
            estimate = previous * (1 - elapsed / window) + current
            return max(1 / limit.rate, (estimate + 1 - burst) * window / previous)
        # this window alone is full: wait for it to end and age enough in the next one
        return (window - elapsed) + window * (1 - (burst - 1) / current)

    # -- internals --------------------------------------------------------------------

    @staticmethod
    def _subject(key: str, limit: Limit, index: int) -> str:
        return f"{SUBJECT_PREFIX}.{key}.w{int(limit.window_s * 1000)}.{index}"

    @staticmethod
    def _estimate(previous: int, current: int, limit: Limit, now: float) -> float:
        elapsed = (now % limit.window_s) / limit.window_s
        return previous * (1 - elapsed) + current

    def _refill(self, key: str, limit: Limit, index: int) -> None:
        """Lease the next tokens in the background, before the bucket runs out."""
        state = self._buckets[key]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        state.leasing = done  # now, so no other refill starts before this one runs

        async def refill() -> None:
            try:
                await self._locked_lease(state, key, limit, index, time.time(), done)
            except Exception as exc:
                log.debug("background lease for %s failed: %s", key, exc)

        task = asyncio.get_running_loop().create_task(refill())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _lease(self, key: str, limit: Limit, index: int, now: float, want: int) -> int:
        """Add ``want`` to the shared count; how many of them fit under the limit."""
        state = self._buckets[key]
        previous = state.previous  # the window may turn while this lease is in flight
        try:
            if previous is None:
                current, previous = await asyncio.gather(
                    self._ask(self._subject(key, limit, index), want),
                    self._ask(self._subject(key, limit, index - 1), 0))
            else:
                current = await self._ask(self._subject(key, limit, index), want)
        except Unavailable:
            if self._fail_open:
                return want
            raise
        assert previous is not None
        if state.window == index:
            state.previous, state.current = previous, current
        else:
            self.leases_past_their_window += 1
        estimate = self._estimate(previous, current, limit, now)
        over = math.ceil(estimate - limit.burst) if estimate > limit.burst else 0
        granted = max(0, want - over)
        if granted < want:  # give back what does not fit, for the other gateways
            self._give_back(self._subject(key, limit, index), want - granted)
        return granted

    def _refusal(self, key: str, limit: Limit, now: float) -> tuple[str, float]:
        state = self._buckets[key]
        wait = self.wait_s(limit, state.previous or 0, state.current, now)
        return (f"rate limit: at most {limit.burst} calls per {limit.window_s:g} s "
                f"({limit.rate:g}/s) for {key.split('.', 1)[-1]}; retry after {wait:.2f} s",
                wait)

    def _give_back(self, subject: str, amount: int) -> None:
        async def give() -> None:
            with contextlib.suppress(Exception):
                await self._ask(subject, -amount)

        task = asyncio.get_running_loop().create_task(give())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _ask(self, subject: str, add: int) -> int:
        """Add ``add`` (may be 0 or negative) to a counter; its new value."""
        try:
            return await counters.add(self._nc, subject, add, _ASK_TIMEOUT_S)
        except counters.CounterError as exc:
            now = time.monotonic()
            if now - self._warned_at > 10:
                self._warned_at = now
                log.warning("rate limits: %s; %s", exc,
                            "admitting calls" if self._fail_open else "refusing calls")
            raise Unavailable(f"rate limits cannot be checked right now ({exc}); "
                              "retry shortly") from exc
