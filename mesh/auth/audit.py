"""The audit trail: one record per call, appended to a JetStream stream.

Stream ``REVO_AUDIT`` (file storage, kept ``auth.audit.max_age_days`` and at most
``auth.audit.max_bytes``) on subjects ``revo.audit.<decision>.<user>``, where decision is
``allow`` or ``deny`` and user is ``-`` for anonymous callers. A record is one JSON line::

    {"time": 1795480000.123, "request_id": "...", "gateway": "...", "peer": "ipv4:...",
     "user": "alice", "role": "developer", "method": "/revo.echo.v1.EchoService/Echo",
     "permission": "execute", "decision": "allow", "reason": "", "status": "OK",
     "latency_ms": 0.84, "key": ""}

``key`` is the id of the API key the call was made with ('' for an access token; records
written before keys existed lack it, and :func:`read_audit` gives them ''). Never a token,
key secret, password, hash or payload.

Calls do not wait for their record. A gateway collects records for ``_FLUSH_S`` (20 ms) (or up to
``_BATCH_MAX``) and appends each subject's records as one message of JSON lines, so the
audit costs one write and one acknowledgement per batch rather than per call (measured:
per-record messages added about a third to a call's latency at one call in flight).
Every batch is kept until JetStream acknowledges it and resent with the same
``Nats-Msg-Id`` (the stream drops duplicates) when no acknowledgement comes, so a NATS
outage delays records instead of losing them, up to ``_MAX_PENDING`` records held.
:func:`read_audit` yields records one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy, DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from mesh.config import AuditSettings
from mesh.transport import streams, subjects
from mesh.transport.connection import MeshConnection, encode_headers

__all__ = ["STREAM", "AuditLog", "AuditRecord", "read_audit"]

log = logging.getLogger(__name__)

STREAM = subjects.AUDIT_STREAM
SUBJECT_PREFIX = subjects.AUDIT_PREFIX
_MAX_PENDING = 100_000
_RESEND_AFTER_S = 2.0
_FLUSH_S = 0.02
_BATCH_MAX = 256


@dataclass(slots=True)
class AuditRecord:
    time: float
    request_id: str
    gateway: str
    peer: str
    user: str
    role: str
    method: str
    permission: str
    decision: str
    reason: str
    status: str
    latency_ms: float
    key: str = ""
    """The API key's id ('' for an access token or anonymous)."""

    def subject(self) -> str:
        return f"{SUBJECT_PREFIX}.{self.decision}.{self.user or '-'}"


_FIELDS = tuple(AuditRecord.__dataclass_fields__)
_DEFAULTS: dict[str, Any] = {"key": ""}
"""Fields added since the first records were written, as older records read."""


def stream_config(settings: AuditSettings) -> StreamConfig:
    return StreamConfig(
        name=STREAM, subjects=[f"{SUBJECT_PREFIX}.>"], storage=StorageType.FILE,
        max_age=settings.max_age_days * 86400, max_bytes=settings.max_bytes,
        discard=DiscardPolicy.OLD, duplicate_window=120.0,
        description="revo: one record per call at the gateways")


async def ensure_stream(nc: NATS, settings: AuditSettings) -> None:
    """Create the audit stream, or bring an existing one to these limits (and to
    ``nats.replicas``, see :mod:`mesh.transport.streams`)."""
    wanted = stream_config(settings)

    def limits(current: StreamConfig) -> bool:
        before = (current.max_age, current.max_bytes)
        current.max_age, current.max_bytes = wanted.max_age, wanted.max_bytes
        return before != (current.max_age, current.max_bytes)

    await streams.ensure_stream(nc, stream_config(settings), update=limits)


class AuditLog:
    """Appends records for one gateway; never blocks the call it records."""

    def __init__(self, nc: MeshConnection, settings: AuditSettings, gateway_id: str) -> None:
        self._nc = nc
        self._settings = settings
        self._gateway = gateway_id
        self._ids = itertools.count(1)
        self._buffer: list[AuditRecord] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._pending: dict[int, tuple[float, str, bytes, int]] = {}
        """Batches sent and not yet acknowledged: sent at, subject, payload, records."""
        self._held = 0
        self._inbox = ""
        self._sub: Any = None
        self._resender: asyncio.Task[None] | None = None
        self.dropped = 0

    async def start(self) -> None:
        await ensure_stream(self._nc, self._settings)
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe_direct(f"{self._inbox}.*", self._on_ack)
        self._resender = asyncio.get_running_loop().create_task(self._resend())

    async def stop(self, flush_s: float = 2.0) -> None:
        self.flush()
        deadline = time.monotonic() + flush_s
        while self._pending and time.monotonic() < deadline:  # noqa: ASYNC110 (acks arrive)
            await asyncio.sleep(0.02)
        if self._pending:
            log.error("audit: %d records not acknowledged at shutdown", self._held)
        if self._resender is not None:
            self._resender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resender
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._nc.unsubscribe_direct(self._sub)

    def record(self, record: AuditRecord) -> None:
        """Queue ``record``; it is sent with the next batch."""
        if self._held + len(self._buffer) >= _MAX_PENDING:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.error("audit: %d records dropped: JetStream has not acknowledged the "
                          "last %d", self.dropped, _MAX_PENDING)
            return
        self._buffer.append(record)
        if len(self._buffer) >= _BATCH_MAX:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(_FLUSH_S, self.flush)

    def flush(self) -> None:
        """Send what is queued now, one message per subject (and per ``_BATCH_MAX``)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        records, self._buffer = self._buffer, []
        by_subject: dict[str, list[bytes]] = {}
        for record in records:
            line = json.dumps({name: getattr(record, name) for name in _FIELDS},
                              separators=(",", ":")).encode()
            by_subject.setdefault(record.subject(), []).append(line)
        for subject, lines in by_subject.items():
            for start in range(0, len(lines), _BATCH_MAX):
                chunk = lines[start:start + _BATCH_MAX]
                number = next(self._ids)
                payload = b"\n".join(chunk)
                self._pending[number] = (time.monotonic(), subject, payload, len(chunk))
                self._held += len(chunk)
                self._send(number, subject, payload)

    @property
    def pending(self) -> int:
        """Records queued or sent and not yet acknowledged."""
        return self._held + len(self._buffer)

    def _send(self, number: int, subject: str, payload: bytes) -> None:
        headers = encode_headers({"Nats-Msg-Id": f"{self._gateway}-{number}"})
        try:
            self._nc.publish_nowait(subject, payload, reply=f"{self._inbox}.{number}",
                                    headers=headers)
        except Exception as exc:  # closed or reconnecting: the resender tries again
            log.debug("audit publish deferred: %s", exc)

    def _on_ack(self, subject: str, reply: str, data: bytes,
                headers: dict[str, str] | None) -> None:
        try:
            number = int(subject.rsplit(".", 1)[1])
            answer = json.loads(data)
        except ValueError:
            return
        if "error" in answer:
            log.warning("audit: JetStream refused a batch: %s", answer["error"])
            return  # resent later
        sent = self._pending.pop(number, None)
        if sent is not None:
            self._held -= sent[3]

    async def _resend(self) -> None:
        while True:
            await asyncio.sleep(_RESEND_AFTER_S / 2)
            now = time.monotonic()
            for number, (sent, subject, payload, count) in list(self._pending.items()):
                if now - sent >= _RESEND_AFTER_S and self._nc.is_connected:
                    self._pending[number] = (now, subject, payload, count)
                    self._send(number, subject, payload)


async def read_audit(nc: NATS, *, decision: str = "*", user: str = "*",
                     since: float | None = None, follow: bool = False,
                     idle_s: float = 0.5) -> AsyncIterator[dict[str, Any]]:
    """Records in order, filtered by decision and user (``*`` for any), from ``since``
    (epoch seconds; default: the beginning); ``follow`` waits for new ones forever."""
    js = nc.jetstream()
    try:
        last = (await js.stream_info(STREAM)).state.last_seq
    except NotFoundError:
        raise NotFoundError(description=f"no audit records here: stream {STREAM} does not "
                            "exist (no gateway with audit on has used this NATS)") from None
    if not last and not follow:
        return
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def collect(msg: Msg) -> None:
        await queue.put(msg)

    subject = f"{SUBJECT_PREFIX}.{decision}.{user}"
    if since is None:
        sub = await js.subscribe(subject, cb=collect, ordered_consumer=True,
                                 deliver_policy=DeliverPolicy.ALL, stream=STREAM)
    else:
        sub = await js.subscribe(subject, cb=collect, ordered_consumer=True,
                                 deliver_policy=DeliverPolicy.BY_START_TIME, stream=STREAM,
                                 config=_start_time(since))
    try:
        while True:
            try:
                msg = await asyncio.wait_for(queue.get(), None if follow else idle_s)
            except TimeoutError:
                return
            for line in msg.data.splitlines():
                with contextlib.suppress(ValueError):
                    yield {**_DEFAULTS, **json.loads(line)}
            if not follow and msg.metadata.sequence.stream >= last:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def _start_time(since: float) -> ConsumerConfig:
    return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                          opt_start_time=datetime.fromtimestamp(since, UTC))
