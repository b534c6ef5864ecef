"""Connecting to NATS the same way everywhere, with a lean path for the mesh's RPC traffic.

:class:`MeshConnection` is nats-py's client plus two things the per-call path needs:

* :meth:`~MeshConnection.subscribe_direct`: the subscription's handler is called
  synchronously from the read loop with the raw subject, reply, payload and parsed
  headers. nats-py otherwise builds a ``Msg``, queues it, and hands it to a task of the
  subscription's own; for one message per call on both sides of every hop, that hop is a
  large share of the mesh's cost.
* :meth:`~MeshConnection.publish_nowait`: queues a message without awaiting, with headers
  already encoded (the mesh's headers are known to be safe), and writes everything queued
  in one pass of the event loop with one write, without waking nats-py's flusher task
  (which still takes over while reconnecting or when the socket is backed up).
* :meth:`~MeshConnection.direct_get`: JetStream's direct get of a subject's last message
  over those two, for reads on a hot path (a task's record as a node claims it); nats-py's
  request adds a task, a ``Msg`` and an e-mail header parser to each.

Both rely on nats-py internals (``Client._process_msg``, the pending buffer that
``Client._flusher`` writes, and the TCP transport's stream writer).
``tests/integration/test_connection.py`` (reconnects included) and every other integration
test exercise them, and ``pyproject.toml`` pins nats-py to the minor version they were
checked against. Everything else (connect, reconnect, TLS, JetStream) is nats-py's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Mapping
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from mesh.config import NatsSettings
from mesh.errors import ConfigError
from mesh.transport import headers as h

log = logging.getLogger(__name__)

__all__ = ["DirectHandler", "MeshConnection", "connect", "encode_headers", "nats_password",
           "parse_headers", "unreachable"]

_UNREACHABLE = (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
                nats.errors.NoRespondersError, nats.errors.TimeoutError,
                nats.errors.StaleConnectionError, nats.errors.OutboundBufferLimitError,
                nats.js.errors.NoStreamResponseError, nats.js.errors.ServiceUnavailableError)


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says that NATS (or JetStream) did not answer (closed, reconnecting,
    timed out, no responder), as opposed to refusing a request it understood."""
    return isinstance(exc, _UNREACHABLE)

DirectHandler = Callable[[str, str, bytes, dict[str, str] | None], None]
"""``handler(subject, reply, payload, headers)``, called on the loop; must not block."""
StoredMessage = tuple[bytes, dict[str, str]]
"""A stream message as a direct get answers it: the payload, and headers that include
``Nats-Sequence`` (its sequence in the stream)."""

MAX_OUTSTANDING_PINGS = 2
"""Pings unanswered before a connection is taken as stale (``nats.ping_interval_s``)."""

# Above this many unsent bytes in the socket's buffer, writes go through nats-py's flusher,
# which waits for the buffer to drain.
_WRITE_BUFFER_LIMIT = 1024 * 1024
_HEADER_LINE = b"NATS/1.0"
_CRLF = b"\r\n"
_GET_STATUS = {"503": "no responders: the stream is missing or does not allow direct gets",
               "408": "the server timed out", "400": "bad request"}


def encode_headers(values: Mapping[str, str]) -> bytes:
    """A NATS header block. Names and values must be single-line (see ``h.header_text``)."""
    return b"".join([_HEADER_LINE, _CRLF,
                     *(f"{key}: {value}\r\n".encode() for key, value in values.items()),
                     _CRLF])


def parse_headers(raw: bytes) -> dict[str, str]:
    """Parse a NATS header block, including an inline status (``NATS/1.0 503``)."""
    lines = raw.split(_CRLF)
    out: dict[str, str] = {}
    status = lines[0][len(_HEADER_LINE):].strip()
    if status:
        code, _, description = status.partition(b" ")
        out[h.NATS_STATUS] = code.decode()
        if description:
            out["Description"] = description.decode()
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            out[name.decode().strip()] = value.decode().strip()
    return out


async def _never_called(msg: object) -> None:  # pragma: no cover - direct subs bypass it
    raise AssertionError("a direct subscription's messages go to its handler")


class MeshConnection(Client):  # type: ignore[misc]
    """nats-py's client with direct-dispatch subscriptions and non-awaiting publishes."""

    def __init__(self) -> None:
        super().__init__()
        self.reconnect_listeners: list[Callable[[], None]] = []
        """Called on the loop after each reconnection (watches that must start again)."""
        self.replicas = 1
        """Replicas of every stream and bucket made over this connection (``nats.replicas``;
        see :mod:`mesh.transport.streams`)."""
        self._direct: dict[int, DirectHandler] = {}
        self._flushed: asyncio.Future[None] | None = None
        self._write_scheduled = False
        self._gets: dict[str, asyncio.Future[StoredMessage | None]] = {}
        self._get_inbox = ""
        self._get_setup = asyncio.Lock()
        self._get_count = 0

    async def subscribe_direct(self, subject: str, handler: DirectHandler,
                               queue: str = "") -> Subscription:
        """Subscribe with ``handler`` called synchronously for every message."""
        sub: Subscription = await self.subscribe(subject, queue=queue, cb=_never_called)
        self._direct[sub._id] = handler
        return sub

    async def unsubscribe_direct(self, sub: Subscription) -> None:
        """Stop interest; messages already on their way are still handled."""
        await sub.unsubscribe()
        await self.flush()
        self._direct.pop(sub._id, None)

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes,
                           headers: bytes) -> None:
        handler = self._direct.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        try:
            handler(subject.decode(), reply.decode(), data,
                    parse_headers(headers) if headers else None)
        except Exception:  # never let a handler's bug stop the read loop
            log.exception("handler for %s failed", subject)

    async def direct_get(self, stream: str, subject: str,
                         timeout: float = 5.0) -> StoredMessage | None:
        """The last message on ``subject`` in ``stream`` (which must allow direct gets), or
        None when there is none. NATS errors raise; no answer in ``timeout`` raises
        :class:`nats.errors.TimeoutError`."""
        if not self._get_inbox:
            async with self._get_setup:
                if not self._get_inbox:
                    inbox = self.new_inbox()
                    await self.subscribe_direct(f"{inbox}.*", self._on_get)
                    self._get_inbox = inbox
        self._get_count += 1
        token = str(self._get_count)
        future: asyncio.Future[StoredMessage | None] = asyncio.get_running_loop().create_future()
        self._gets[token] = future
        try:
            self.publish_nowait(f"$JS.API.DIRECT.GET.{stream}.{subject}",
                                reply=f"{self._get_inbox}.{token}")
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise nats.errors.TimeoutError from None
        finally:
            self._gets.pop(token, None)

    def _on_get(self, subject: str, reply: str, data: bytes,
                headers: dict[str, str] | None) -> None:
        future = self._gets.pop(subject.rpartition(".")[2], None)
        if future is None or future.done():
            return  # timed out already
        status = (headers or {}).get(h.NATS_STATUS, "")
        if status == "404":
            future.set_result(None)
        elif status or headers is None:
            why = (headers or {}).get("Description") or _GET_STATUS.get(status, "no headers")
            future.set_exception(nats.errors.Error(f"direct get failed: {status} ({why})"))
        else:
            future.set_result((data, headers))

    def publish_nowait(self, subject: str, payload: bytes = b"", reply: str = "",
                       headers: bytes = b"") -> None:
        """Queue a message for the flusher. ``headers`` comes from :func:`encode_headers`."""
        if self.is_closed:
            raise nats.errors.ConnectionClosedError
        if len(payload) + len(headers) > self.max_payload:
            # nats-server would close the whole connection over one such message
            raise nats.errors.MaxPayloadError
        if headers:
            cmd = b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
                subject.encode(), reply.encode(), len(headers), len(headers) + len(payload),
                headers, payload)
        else:
            cmd = b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply.encode(), len(payload),
                                               payload)
        self._pending.append(cmd)
        self._pending_data_size += len(cmd)
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += len(payload)
        if not self._write_scheduled:
            # One write per pass of the loop, for every message queued in that pass.
            self._write_scheduled = True
            asyncio.get_running_loop().call_soon(self._write_pending)

    def _write_pending(self) -> None:
        """Write what is pending now; leave it to nats-py's flusher when that is safer."""
        self._write_scheduled = False
        if not self._pending_data_size:
            return
        if not self.is_connected or self.is_connecting:
            return  # nats-py writes the pending buffer once it has reconnected
        writer = getattr(self._transport, "_io_writer", None)
        if writer is None or writer.transport.get_write_buffer_size() > _WRITE_BUFFER_LIMIT:
            self._kick_flusher()  # not a plain TCP stream, or the socket is backed up
            return
        try:
            writer.writelines(self._pending)
        except OSError:
            self._kick_flusher()  # the flusher meets the error and starts nats-py's recovery
            return
        self._pending = []
        self._pending_data_size = 0

    def _kick_flusher(self) -> None:
        queue = self._flush_queue
        if queue is not None and queue.empty():
            # The flusher completes the future it is handed; one finished future serves all.
            if self._flushed is None:
                self._flushed = asyncio.get_running_loop().create_future()
                self._flushed.set_result(None)
            queue.put_nowait(self._flushed)


def nats_password(settings: NatsSettings) -> str:
    """``nats.password``, else the contents of ``nats.password_file`` (a mounted secret);
    a file that cannot be read is a :class:`ConfigError` naming it."""
    if settings.password or settings.password_file is None:
        return settings.password
    try:
        return settings.password_file.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"nats.password_file: cannot read {settings.password_file}: "
                          f"{exc.strerror}") from None


async def connect(settings: NatsSettings, name: str) -> MeshConnection:
    """Connect to the configured NATS servers; reconnect forever once connected.

    The first connection must succeed within ``nats.connect_timeout_s``, else
    :class:`ConnectionError` says why (refused, TLS, credentials), so a misconfigured
    process exits with the reason instead of retrying silently."""
    last_error: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        if str(exc) not in map(str, last_error):
            last_error[:] = [*last_error[-2:], exc]
        log.warning("nats (%s): %s", name, exc)

    async def on_disconnected() -> None:
        log.info("nats (%s): disconnected", name)

    async def on_reconnected() -> None:
        log.info("nats (%s): reconnected", name)
        for listener in list(nc.reconnect_listeners):
            try:
                listener()
            except Exception:
                log.exception("nats (%s): a reconnect listener failed", name)

    servers = [url.strip() for url in settings.url.split(",") if url.strip()]
    secure: dict[str, Any] = {}
    if settings.tls_ca_file is not None:
        context = ssl.create_default_context(cafile=str(settings.tls_ca_file))
        if settings.tls_cert_file is not None:
            context.load_cert_chain(str(settings.tls_cert_file),
                                    str(settings.tls_key_file) if settings.tls_key_file else None)
        secure["tls"] = context
    if settings.user:
        secure.update(user=settings.user, password=nats_password(settings))
    if settings.creds_file is not None:
        secure["user_credentials"] = str(settings.creds_file)
    nc = MeshConnection()
    nc.replicas = settings.replicas
    try:
        await asyncio.wait_for(nc.connect(
            servers=servers,
            name=name,
            **secure,
            # nats-py annotates these as int but waits with asyncio (floats are fine)
            connect_timeout=settings.connect_timeout_s,  # type: ignore[arg-type]
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,  # type: ignore[arg-type]
            # a server that stops answering (hung, or cut off by a partition) keeps the
            # socket open: without pings nats-py would notice only after 2 x 2 minutes
            ping_interval=settings.ping_interval_s,  # type: ignore[arg-type]
            max_outstanding_pings=MAX_OUTSTANDING_PINGS,
            allow_reconnect=True,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
        ), settings.connect_timeout_s)
    except TimeoutError:
        with contextlib.suppress(Exception):
            await nc.close()
        reason = "; ".join(map(str, last_error)) if last_error else "no answer"
        raise ConnectionError(f"cannot connect to NATS at {settings.url} within "
                              f"{settings.connect_timeout_s:g} s: {reason}") from None
    return nc
