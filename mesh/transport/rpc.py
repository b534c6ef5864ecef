"""The caller's side of mesh calls over NATS: unary request/reply and server streams.

One :class:`Requester` per connection subscribes a single reply inbox (``<inbox>.*``) and
routes replies to waiting calls by token. Errors arrive as ``Revo-Status`` /
``Revo-Message`` / ``Revo-Status-Details`` headers (:func:`error_headers` writes them) and
are raised as the same :class:`mesh.errors.RpcError` subclass with the same code and
details (:func:`error_from`); a subject nobody serves raises ``UNAVAILABLE``.

A call's node says ``Revo-Accepted: <node id>`` when the call runs longer than a moment.
That lets a caller tell a slow call from a lost one: a call that is neither answered nor
accepted within ``accept_timeout`` fails ``UNAVAILABLE`` (its node died or never got it),
and an accepted call whose node leaves the registry (:meth:`Requester.node_gone`) fails
``UNAVAILABLE`` at once rather than at its deadline.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import nats.errors
from google.protobuf.message import DecodeError
from google.rpc.status_pb2 import Status

from mesh.errors import (
    DeadlineExceeded,
    Reason,
    ResourceExhausted,
    RpcError,
    Unavailable,
    error_from_status,
    status_from_code,
)
from mesh.observability import tracing
from mesh.transport import headers as h
from mesh.transport import subjects
from mesh.transport.connection import MeshConnection, encode_headers

_Message = tuple[bytes, dict[str, str] | None]

__all__ = ["Requester", "error_from", "error_headers"]

_NO_RESPONDERS = "503"
_CANCEL = encode_headers({h.CANCEL: "1"})


# Room for Revo-Status-Details within the header room a message keeps (h.HEADER_ROOM).
_DETAILS_LIMIT = 2048


def error_headers(error: RpcError) -> dict[str, str]:
    """The reply headers that carry ``error``: its code, message and details.

    The details' ``Status`` leaves out the code and message (the other two headers carry
    them); details that would pass the header's room are dropped, the last first
    (field violations, then the retry delay; the reason stays if anything does)."""
    out = {h.STATUS: str(error.code.value[0]), h.MESSAGE: h.header_text(error.message)}
    status = error.status()
    if status is not None:
        status.ClearField("code")
        status.ClearField("message")
        details = base64.b64encode(status.SerializeToString())
        while len(details) > _DETAILS_LIMIT and status.details:
            del status.details[-1]
            details = base64.b64encode(status.SerializeToString())
        if status.details:
            out[h.STATUS_DETAILS] = details.decode()
    return out


def error_from(msg_headers: Mapping[str, str] | None) -> RpcError | None:
    """The error a reply carries, as its own class with its details, or None for OK."""
    if not msg_headers:
        return None
    status = msg_headers.get(h.STATUS)
    if status is None:
        if msg_headers.get(h.NATS_STATUS) == _NO_RESPONDERS:
            return Unavailable("no node serves this method right now; start a node with its "
                               "engine, or retry", reason=Reason.NO_LIVE_NODE)
        return None
    details = msg_headers.get(h.STATUS_DETAILS)
    return error_from_status(status_from_code(int(status)), msg_headers.get(h.MESSAGE, ""),
                             _details(details) if details else None)


def _details(encoded: str) -> Status | None:
    try:
        return Status.FromString(base64.b64decode(encoded, validate=True))
    except (binascii.Error, DecodeError):  # a broken header must not hide the error itself
        return None


@dataclass(eq=False)
class _Pending:
    subject: str
    deadline: float
    future: asyncio.Future[bytes] | None = None
    queue: asyncio.Queue[_Message | RpcError] | None = None
    node: str = ""
    timer: asyncio.TimerHandle | None = None
    control: str = ""

    def fail(self, error: RpcError) -> None:
        if self.future is not None:
            if not self.future.done():
                self.future.set_exception(error)
        elif self.queue is not None:
            self.queue.put_nowait(error)


class Requester:
    """Sends calls on one NATS connection and matches replies to them."""

    def __init__(self, nc: MeshConnection, accept_timeout_s: float = 1.5) -> None:
        self._nc = nc
        self._accept_timeout = accept_timeout_s
        self._prefix = ""
        self._tokens = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        self._by_node: dict[str, set[str]] = {}
        # Tokens of calls waiting to be answered or accepted, with the loop time at which
        # they give up; insertion order is deadline order, so one sweep checks them all.
        self._unaccepted: dict[str, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._prefix = self._nc.new_inbox() + "."
        await self._nc.subscribe_direct(self._prefix + "*", self._on_reply)
        self._sweeper = self._loop.create_task(self._sweep())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    def _watch(self, token: str, pending: _Pending, timeout: float) -> None:
        """Arrange for a call that is neither answered nor accepted in time to fail."""
        assert self._loop is not None
        if timeout < self._accept_timeout:  # rare: its own timer, at its deadline
            pending.timer = self._loop.call_later(timeout, self._expire, token)
        else:
            self._unaccepted[token] = self._loop.time() + self._accept_timeout

    async def _sweep(self) -> None:
        assert self._loop is not None
        period = max(0.02, self._accept_timeout / 4)
        while True:
            await asyncio.sleep(period)
            now = self._loop.time()
            due = []
            for token, give_up_at in self._unaccepted.items():
                if give_up_at > now:
                    break
                due.append(token)
            for token in due:
                del self._unaccepted[token]
                self._expire(token)

    # -- unary ------------------------------------------------------------------------

    async def call(self, subject: str, payload: bytes, timeout: float,
                   headers: dict[str, str]) -> bytes:
        """Send one request; return the reply's payload or raise its RpcError."""
        assert self._loop is not None, "Requester.start() first"
        loop = self._loop
        token = str(next(self._tokens))
        future: asyncio.Future[bytes] = loop.create_future()
        pending = _Pending(subject, loop.time() + timeout, future=future)
        self._pending[token] = pending
        self._watch(token, pending, timeout)
        span = (tracing.send_span(subject, len(payload), headers)
                if tracing.active() else None)
        try:
            self._publish(subject, payload, self._prefix + token, encode_headers(headers))
            return await future
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and pending.node:
                self._cancel_at_node(pending.node, token)
            if span is not None:
                tracing.finish(span, exc, client=True)
                span = None
            raise
        finally:
            self._forget(token)
            if span is not None:
                tracing.finish(span, client=True)

    # -- server streams ---------------------------------------------------------------

    async def stream(self, subject: str, payload: bytes, timeout: float,
                     headers: dict[str, str], window: int) -> AsyncIterator[bytes]:
        """Open a server stream; yield its messages, returning credit as they are consumed.

        Closing the iterator early cancels the stream at the node.
        """
        assert self._loop is not None, "Requester.start() first"
        loop = self._loop
        token = str(next(self._tokens))
        pending = _Pending(subject, loop.time() + timeout, queue=asyncio.Queue())
        self._pending[token] = pending
        self._watch(token, pending, timeout)
        finished = False
        unacked = 0
        span = (tracing.send_span(subject, len(payload), headers)
                if tracing.active() else None)
        try:
            self._publish(subject, payload, self._prefix + token,
                          encode_headers({**headers, h.STREAM_WINDOW: str(window)}))
            assert pending.queue is not None
            while True:
                item = await pending.queue.get()
                if isinstance(item, RpcError):
                    finished = True
                    raise item
                data, msg_headers = item
                if msg_headers and (h.END in msg_headers or h.STATUS in msg_headers
                                    or h.NATS_STATUS in msg_headers):
                    finished = True
                    error = error_from(msg_headers)
                    if error is not None:
                        raise error
                    return
                yield data
                unacked += 1
                if pending.control and unacked * 2 >= window:
                    self._nc.publish_nowait(pending.control,
                                            headers=encode_headers({h.ACK: str(unacked)}))
                    unacked = 0
        except BaseException as exc:
            if span is not None:
                tracing.finish(span, exc, client=True)
                span = None
            raise
        finally:
            self._forget(token)
            if span is not None:
                tracing.finish(span, client=True)
            if not finished and pending.control and not self._nc.is_closed:
                with contextlib.suppress(Exception):
                    self._nc.publish_nowait(pending.control, headers=_CANCEL)

    def _cancel_at_node(self, node: str, token: str) -> None:
        """Ask the node that accepted unary call ``token`` to stop it (best effort: a call
        not accepted yet, in its first ``ACCEPT_AFTER_S``, runs on to its end)."""
        if self._nc.is_closed:
            return
        with contextlib.suppress(Exception):
            self._nc.publish_nowait(subjects.cancel_subject(node), headers=encode_headers(
                {h.CANCEL: self._prefix + token}))

    def _publish(self, subject: str, payload: bytes, reply: str, headers: bytes) -> None:
        try:
            self._nc.publish_nowait(subject, payload, reply, headers)
        except nats.errors.MaxPayloadError:
            raise ResourceExhausted(
                f"request of {len(payload)} bytes exceeds the mesh's NATS message limit "
                f"({self._nc.max_payload} bytes with headers)",
                reason=Reason.MESSAGE_TOO_LARGE,
                metadata={"size": str(len(payload)), "limit": str(self._nc.max_payload)},
            ) from None
        except nats.errors.ConnectionClosedError:
            raise Unavailable("the gateway has no NATS connection; retry shortly") from None

    # -- replies ----------------------------------------------------------------------

    def _on_accepted(self, token: str, pending: _Pending, node: str) -> None:
        assert self._loop is not None
        if not pending.node:
            pending.node = node
            self._by_node.setdefault(node, set()).add(token)
        self._unaccepted.pop(token, None)
        if pending.timer is not None:
            pending.timer.cancel()
        pending.timer = self._loop.call_at(pending.deadline, self._expire, token)

    def _on_reply(self, subject: str, reply: str, data: bytes,
                  msg_headers: dict[str, str] | None) -> None:
        token = subject[len(self._prefix):]
        pending = self._pending.get(token)
        if pending is None:
            return  # the caller already gave up
        if msg_headers:
            node = msg_headers.get(h.ACCEPTED)
            if node is not None:
                self._on_accepted(token, pending, node)
                return
        if pending.future is not None:
            if pending.future.done():
                return
            error = error_from(msg_headers)
            if error is None:
                pending.future.set_result(data)
            else:
                pending.future.set_exception(error)
            return
        # a stream message: it also proves the node is alive
        if msg_headers and not pending.control:
            pending.control = msg_headers.get(h.STREAM_CONTROL, "")
        if pending.control and not pending.node:
            self._on_accepted(token, pending, msg_headers.get(h.NODE, "") if msg_headers else "")
        assert pending.queue is not None
        pending.queue.put_nowait((data, msg_headers))

    def _expire(self, token: str) -> None:
        pending = self._pending.get(token)
        if pending is None:
            return
        assert self._loop is not None
        if self._loop.time() >= pending.deadline - 0.001:
            pending.fail(DeadlineExceeded(f"no reply within the call's deadline "
                                          f"({pending.subject.removeprefix('revo.rpc.')})"))
        else:
            pending.fail(Unavailable(
                f"no node took the call within {self._accept_timeout:g} s; the node that "
                "received it may have died. Retry if the call is safe to repeat",
                reason=Reason.NODE_LOST))

    def accepted_by(self, node_id: str) -> int:
        """How many calls in flight ``node_id`` has accepted (tests wait on it)."""
        return len(self._by_node.get(node_id, ()))

    def node_gone(self, node_id: str) -> None:
        """Fail every call that ``node_id`` accepted: it left the mesh without answering."""
        for token in self._by_node.pop(node_id, ()):
            pending = self._pending.get(token)
            if pending is not None:
                pending.fail(Unavailable(f"node {node_id} stopped while serving the call; "
                                         "retry if the call is safe to repeat",
                                         reason=Reason.NODE_LOST))

    def _forget(self, token: str) -> None:
        pending = self._pending.pop(token, None)
        if pending is None:
            return
        self._unaccepted.pop(token, None)
        if pending.timer is not None:
            pending.timer.cancel()
        if pending.node:
            tokens = self._by_node.get(pending.node)
            if tokens is not None:
                tokens.discard(token)
                if not tokens:
                    del self._by_node[pending.node]
