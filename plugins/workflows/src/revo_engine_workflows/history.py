"""A run's history in JetStream: the one home of a run's state.

Each run has a subject, ``revo.workflows.run.<run id>``, in the file stream
``REVO_WORKFLOW_RUNS``. Its messages are the run's :class:`RunEvent` in order, numbered 1,
2, … (``RunEvent.sequence``) with no gaps. Whatever a node knows of a run, it knows from
folding that history, so any node can continue a run whose node died.

Appends are conditional. Each one says which stream sequence it expects the run's
previous event to have (``Nats-Expected-Last-Subject-Sequence``), and the server refuses
it otherwise. Two nodes that both think they own a run can therefore never both record
its next event: the second gets :class:`HistoryConflict` and must stop working on the
run. A publish retried after a lost acknowledgement finds its own event already last and
counts as stored, so it is not stored twice.

Events from outside the run's owner (a signal, a cancel request) are appended by whichever
node receives them, which then sends an empty core-NATS *notice* on
``revo.workflows.notice.<run id>`` (:meth:`History.notify`). The owner listens there
(:meth:`History.notices`) instead of following the stream, and reads the history when told;
a notice lost (core NATS is at most once) is made up for by the owner's periodic look.

A store that does not answer (nats-server restarting, the connection reconnecting) raises
:class:`HistoryUnavailable`: the append may or may not have been stored, and trying it
again is safe for the reason above. An event over the connection's payload limit raises
:class:`EventTooLarge` before anything is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from mesh.errors import Reason, ResourceExhausted, Unavailable
from mesh.transport.connection import MeshConnection
from mesh.transport.streams import ensure_stream
from revo_engine_workflows.v1 import workflows_pb2 as pb

__all__ = ["NOTICE_PREFIX", "RUNS_STREAM", "RUN_PREFIX", "EventTooLarge", "History",
           "HistoryConflict", "HistoryUnavailable", "Recorded", "notice_subject",
           "run_subject"]

RUNS_STREAM = "REVO_WORKFLOW_RUNS"
RUN_PREFIX = "revo.workflows.run"
NOTICE_PREFIX = "revo.workflows.notice"
_RUN_ID = re.compile(r"^[a-z0-9]{8,64}$")
_WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed expectation
_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
_MSG_ID = "Nats-Msg-Id"
_HEADROOM = 512
"""Bytes of a publish besides the event (subject, headers, protocol) kept free of it."""
READ_IDLE_S = 5.0
"""How long :meth:`History.read` waits for the next event before it gives up. A read's
events come back to back; a gap this long means its consumer was lost (nats-server
restarted under it: nats-py notices only after two missed heartbeats, 10 s or more, and
may never) or the history was purged meanwhile."""


def run_subject(run_id: str) -> str:
    """The subject of a run's history."""
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"not a run id: {run_id[:80]!r}")
    return f"{RUN_PREFIX}.{run_id}"


def notice_subject(run_id: str) -> str:
    """The core-NATS subject on which a run's owner hears of outside events."""
    return f"{NOTICE_PREFIX}.{run_subject(run_id).rsplit('.', 1)[1]}"


class HistoryConflict(Exception):
    """Another writer recorded the run's next event first: stop working on the run."""


class HistoryUnavailable(Unavailable):
    """The history store did not answer; an append may have been stored or not, and may
    be tried again as it was. A caller of the engine gets it as UNAVAILABLE."""

    def __init__(self, run_id: str, error: BaseException) -> None:
        super().__init__(f"the history of run {run_id} could not be reached: "
                         f"{type(error).__name__} {error}".rstrip(),
                         reason=Reason.STORE_UNAVAILABLE, metadata={"engine": "workflows"})


class EventTooLarge(ResourceExhausted):
    """An event bigger than one NATS message may be (nothing was sent); a caller of the
    engine gets it as RESOURCE_EXHAUSTED."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes, over the {limit} bytes an event of a run's history "
                         "may have (the NATS payload limit)", reason=Reason.MESSAGE_TOO_LARGE,
                         metadata={"size": str(size), "limit": str(limit)})
        self.size, self.limit = size, limit


@dataclass(frozen=True)
class Recorded:
    """One event as stored: the event and its stream sequence (what the next append
    expects)."""

    event: pb.RunEvent
    stream_sequence: int


class History:
    """Appends to and reads runs' histories; :meth:`start` before use."""

    def __init__(self, nc: MeshConnection, *, max_age_s: float = 30 * 86_400.0,
                 read_idle_s: float = READ_IDLE_S) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._max_age_s = max_age_s
        self._read_idle_s = read_idle_s

    async def start(self) -> None:
        """Create the stream when it does not exist (when it does, only its replicas are
        raised to ``nats.replicas``)."""
        await ensure_stream(self._nc, StreamConfig(
            name=RUNS_STREAM, subjects=[f"{RUN_PREFIX}.>"], storage=StorageType.FILE,
            max_age=self._max_age_s, allow_direct=True,
            description="revo Coordinator: every workflow run's history, one subject a run"))

    async def append(self, event: pb.RunEvent, after: int) -> int:
        """Record ``event`` (its ``run_id`` and ``sequence`` set) after the event stored at
        stream sequence ``after`` (0 for the run's first event); the new event's stream
        sequence. :class:`HistoryConflict` when the run's last event is not at ``after``."""
        data = event.SerializeToString()
        limit = self._nc.max_payload - _HEADROOM
        if len(data) > limit:
            raise EventTooLarge(len(data), limit)
        headers = {_EXPECTED_LAST: str(after), _MSG_ID: f"{event.run_id}:{event.sequence}"}
        # (the message id also drops an identical publish within the stream's duplicate
        # window when no expectation fails first)
        try:
            ack = await self._js.publish(run_subject(event.run_id), data, timeout=5.0,
                                         headers=headers)
        except APIError as error:
            if error.err_code != _WRONG_LAST_SEQUENCE:
                raise HistoryUnavailable(event.run_id, error) from error
            last = await self.last(event.run_id)
            if last is not None and last.event == event:
                return last.stream_sequence  # this append's own first try was stored
            raise HistoryConflict(f"run {event.run_id}: event {event.sequence} was "
                                  f"recorded by another writer") from None
        except (nats.errors.Error, TimeoutError) as error:
            raise HistoryUnavailable(event.run_id, error) from error
        return int(ack.seq)

    async def notify(self, run_id: str) -> None:
        """Tell the run's owner that an outside event was appended (best effort: the owner
        also looks by itself now and then)."""
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self._nc.publish(notice_subject(run_id))

    async def notices(self, run_id: str, heard: Callable[[], None]) -> Subscription:
        """Call ``heard()`` for each notice of the run (unsubscribe the result to stop)."""
        async def on_notice(_: Msg) -> None:
            heard()

        subscription: Subscription = await self._nc.subscribe(notice_subject(run_id),
                                                              cb=on_notice)
        return subscription

    async def last(self, run_id: str) -> Recorded | None:
        """The run's last event; None when it has none."""
        try:
            message = await self._js.get_last_msg(RUNS_STREAM, run_subject(run_id))
        except NotFoundError:
            return None
        except (nats.errors.Error, TimeoutError) as error:
            raise HistoryUnavailable(run_id, error) from error
        return Recorded(pb.RunEvent.FromString(message.data or b""), int(message.seq or 0))

    async def read(self, run_id: str) -> list[Recorded]:
        """Every event of the run, in order (as stored now). :class:`HistoryUnavailable`
        when the store does not answer, or the next event does not come within
        ``read_idle_s``."""
        last = await self.last(run_id)
        if last is None:
            return []
        events: list[Recorded] = []
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._read_idle_s) as idle, \
                    contextlib.aclosing(self.follow(run_id, 0)) as stored:
                async for recorded in stored:
                    events.append(recorded)
                    if recorded.stream_sequence >= last.stream_sequence:
                        break
                    idle.reschedule(loop.time() + self._read_idle_s)
        except TimeoutError as error:
            if idle.expired():
                raise HistoryUnavailable(run_id, TimeoutError(
                    f"its events up to stream sequence {last.stream_sequence} stopped "
                    f"coming after {len(events)}: none for {self._read_idle_s:g} s")) from error
            raise HistoryUnavailable(run_id, error) from error
        except nats.errors.Error as error:
            raise HistoryUnavailable(run_id, error) from error
        return events

    async def follow(self, run_id: str, after: int) -> AsyncGenerator[Recorded, None]:
        """The run's events after event number ``after``, then each new one as it is
        recorded; never ends on its own (close it, or stop at the run's last event)."""
        subscription = await self._js.subscribe(
            run_subject(run_id), stream=RUNS_STREAM, ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL, idle_heartbeat=5.0)
        try:
            async for message in subscription.messages:
                event = pb.RunEvent.FromString(message.data)
                if event.sequence > after:
                    yield Recorded(event, int(message.metadata.sequence.stream))
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
