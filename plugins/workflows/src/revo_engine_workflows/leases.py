"""Run leases in JetStream KV: which node works on a run, for as long as it says so.

Bucket ``revo_workflow_leases``: key = run id, value = ``<node id> <instance>`` (the
instance is random per :class:`Leases`, so a node restarted under the same id is not taken
for its former self). The bucket's age limit (JetStream ``max_age``) is the lease TTL: a
lease not written again within it is removed by the server, and the run is free for any
node to take.

- :meth:`Leases.acquire` creates the key: it succeeds only when no live lease exists.
- :meth:`Leases.renew` rewrites it, conditional on the revision this instance last wrote.
  It succeeds only while that write is still the key's last message, so a True means no
  other node has held the lease since this one acquired it. A lease that expired is lost
  even when nobody took it: the owner must stop, and take the run again by
  :meth:`Leases.acquire` (and replay its history) if it wants it back.
- :meth:`Leases.start` runs a keeper that renews every lease held every TTL / 3 and
  reports each one it loses to ``on_lost``.

Leases say who *should* work on a run; they cannot stop a node that paused past its TTL
from acting once more before it notices. What makes that harmless is the history's
conditional appends (a stale owner's next append fails) and steps' idempotency keys.

Timing, as measured with nats-server 2.15: the server refuses a TTL under 100 ms
(``max age needs to be >= 100ms``), and removes an expired lease up to about 0.25 s after
its TTL (its expiry timer's granularity), so a dead node's run is free between TTL and
TTL + 0.25 s after its last renewal. Expiry is observed by reading the key (it is simply
gone: :meth:`Leases.holder` returns None, :meth:`Leases.acquire` succeeds); no event is
sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError

from mesh.transport.connection import MeshConnection
from mesh.transport.kv import KeyValue, latest, open_bucket

__all__ = ["BUCKET", "MIN_TTL_S", "Leases"]

log = logging.getLogger(__name__)

BUCKET = "revo_workflow_leases"
MIN_TTL_S = 0.1
"""The shortest bucket age limit nats-server accepts."""
_WRONG_LAST_SEQUENCE = (10071, 10164)
_HELD, _LOST, _GONE = "held", "lost", "gone"  # a renewal's outcomes


class Leases:
    """This node's leases on runs; :meth:`start` before use, :meth:`stop` at the end.

    ``ttl_s`` applies when this call creates the bucket; an existing bucket keeps its own
    age limit, which :attr:`ttl_s` then reports (and the keeper renews by). ``on_lost``
    runs on the loop for each lease the keeper finds lost; :meth:`renew` called directly
    says so by returning False instead.
    """

    def __init__(self, nc: MeshConnection, node_id: str, *, ttl_s: float = 3.0,
                 on_lost: Callable[[str], None] | None = None) -> None:
        if ttl_s < MIN_TTL_S:
            raise ValueError(f"lease ttl_s must be at least {MIN_TTL_S} s (nats-server's "
                             f"shortest max_age), not {ttl_s}")
        self._nc = nc
        self.node_id = node_id
        self._value = f"{node_id} {os.urandom(6).hex()}".encode()
        self.ttl_s = ttl_s
        self._on_lost = on_lost
        self._kv: KeyValue | None = None
        self._held: dict[str, int] = {}  # run id -> revision of this instance's last write
        self._confirmed: dict[str, float] = {}  # run id -> monotonic time of that write
        self._keeper: asyncio.Task[None] | None = None
        self._locks: dict[str, _RunLock] = {}

    async def start(self) -> None:
        """Open the bucket (creating it with ``ttl_s``) and start the keeper."""
        self._kv = await open_bucket(self._nc, BUCKET, ttl=self.ttl_s,
                                     description="revo Coordinator: which node runs each run")
        info = await self._nc.jetstream().stream_info(f"KV_{BUCKET}")
        if info.config.max_age and abs(info.config.max_age - self.ttl_s) > 1e-3:
            log.warning("lease bucket %s exists with a TTL of %g s, not %g s: using %g s",
                        BUCKET, info.config.max_age, self.ttl_s, info.config.max_age)
            self.ttl_s = float(info.config.max_age)
        if self._keeper is None:
            self._keeper = asyncio.get_running_loop().create_task(self._keep())

    async def stop(self, *, release: bool = False) -> None:
        """Stop the keeper; with ``release``, give up every lease held (else they expire
        after the TTL, as a dead node's would)."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        if release:
            for run_id in list(self._held):
                with contextlib.suppress(Exception):
                    await self.release(run_id)

    @property
    def _bucket(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("Leases.start() was not called")
        return self._kv

    def held(self) -> list[str]:
        """The runs this instance holds a lease on, as far as it knows (the keeper or
        :meth:`renew` find out about losses)."""
        return list(self._held)

    async def holder(self, run_id: str) -> str | None:
        """The node id holding the run's lease now; None when nobody does."""
        found = await latest(self._nc, BUCKET, run_id)
        return None if found is None else found[0].decode().partition(" ")[0]

    async def acquire(self, run_id: str) -> bool:
        """Take the run's lease: True when this node holds it now (it already did, or
        nobody held it), False when another live lease exists."""
        async with self._exclusive(run_id):
            if run_id in self._held:
                return await self._renew(run_id) == _HELD
            try:
                # nats-py's create also takes a key whose last message is a release's delete
                revision = await self._bucket.create(run_id, self._value)
            except (KeyWrongLastSequenceError, KeyNotFoundError):
                # KeyNotFoundError: the lease exists (the create conflicted), and the read
                # nats-py makes after the conflict came from a replica behind its leader
                return False
            self._hold(run_id, revision)
            return True

    async def renew(self, run_id: str) -> bool:
        """Write the lease again, restarting its TTL: True while this instance has held it
        without a break since :meth:`acquire`; False when it does not hold it, or lost it
        (expired, or taken: it is then dropped from :meth:`held`). NATS errors and
        timeouts raise, and leave the lease as it was (held, as far as anyone knows)."""
        async with self._exclusive(run_id):
            return await self._renew(run_id) == _HELD

    async def _renew(self, run_id: str) -> str:
        revision = self._held.get(run_id)
        if revision is None:
            return _GONE
        try:
            self._hold(run_id, await self._bucket.update(run_id, self._value, last=revision))
            return _HELD
        except KeyWrongLastSequenceError:
            pass
        # An earlier renewal may have been stored without its acknowledgement reaching
        # us (a timeout): the key's last message is then still this instance's own.
        found = await latest(self._nc, BUCKET, run_id)
        if found is not None and found[0] == self._value and found[1] > revision:
            try:
                self._hold(run_id, await self._bucket.update(run_id, self._value,
                                                             last=found[1]))
                return _HELD
            except KeyWrongLastSequenceError:
                pass
        self._drop(run_id)
        return _LOST

    async def release(self, run_id: str) -> None:
        """Give up the run's lease, deleting it when it is still this instance's (a lease
        someone else took since is left alone)."""
        async with self._exclusive(run_id):
            revision = self._held.get(run_id)
            self._drop(run_id)
            if revision is None:
                return
            try:
                await self._bucket.delete(run_id, last=revision)
            except APIError as error:
                if error.err_code not in _WRONG_LAST_SEQUENCE:
                    raise

    @contextlib.asynccontextmanager
    async def _exclusive(self, run_id: str) -> AsyncIterator[None]:
        """One operation at a time on a run's lease (the keeper's renewal and a release,
        say); the lock is forgotten once nobody holds or awaits it."""
        entry = self._locks.setdefault(run_id, _RunLock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[run_id]

    def _hold(self, run_id: str, revision: int) -> None:
        self._held[run_id] = revision
        self._confirmed[run_id] = time.monotonic()

    def _drop(self, run_id: str) -> None:
        self._held.pop(run_id, None)
        self._confirmed.pop(run_id, None)

    async def _keep(self) -> None:
        """Renew every held lease each TTL / 3, reporting the lost ones; a lease whose
        renewals have failed (NATS unreachable, say) for a whole TTL is reported lost as
        well, since it may have expired on the server."""
        interval = self.ttl_s / 3
        tick = time.monotonic()
        while True:
            tick = max(tick + interval, time.monotonic())
            await asyncio.sleep(tick - time.monotonic())
            runs = list(self._held)
            outcomes = await asyncio.gather(*(self._keep_one(run, interval) for run in runs),
                                            return_exceptions=True)
            now = time.monotonic()
            for run_id, outcome in zip(runs, outcomes, strict=True):
                if outcome in (_HELD, _GONE):  # gone: released meanwhile, not lost
                    continue
                if isinstance(outcome, BaseException):
                    if isinstance(outcome, asyncio.CancelledError):
                        raise outcome
                    confirmed = self._confirmed.get(run_id)
                    if confirmed is None or now - confirmed < self.ttl_s:
                        log.warning("lease on run %s not renewed (will retry): %r", run_id,
                                    outcome)
                        continue
                    self._drop(run_id)
                    log.warning("lease on run %s not renewed for a whole TTL: lost",
                                run_id)
                else:
                    log.warning("lease on run %s lost", run_id)
                if self._on_lost is not None:
                    try:
                        self._on_lost(run_id)
                    except Exception:
                        log.exception("on_lost(%s) failed", run_id)

    async def _keep_one(self, run_id: str, timeout: float) -> str:
        async with asyncio.timeout(timeout), self._exclusive(run_id):
            return await self._renew(run_id)


@dataclass
class _RunLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
