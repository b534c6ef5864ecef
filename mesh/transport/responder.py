"""The serving side of mesh calls over NATS, beside the caller's side in :mod:`mesh.transport.rpc`.

A :class:`Responder` subscribes each served service's subject ``revo.rpc.<service>.*`` in
the service's queue group (so NATS spreads calls over the nodes serving it), turns each
request's headers into the engine's :class:`~mesh.engine.Context`, hands the call to the
method's pool, and answers on the request's reply subject:

- a unary call with one message: the response, or an error as ``Revo-Status`` /
  ``Revo-Message`` / ``Revo-Status-Details`` headers (:func:`~mesh.transport.rpc.error_headers`);
- a server stream with its messages, the first naming a control subject where the caller
  grants credit (``Revo-Ack``) or cancels, and an end marker (``Revo-End``, with the
  stream's error if it failed);
- ``Revo-Accepted: <node id>`` for a call still running after :data:`ACCEPT_AFTER_S`, so
  its caller can tell a slow call from one lost with a dead node. A caller that gives up
  on an accepted unary call sends its reply subject to ``revo.cancel.<node id>``; the call's
  :class:`~mesh.engine.Context` is cancelled, and its pool stops it and answers
  ``CANCELLED``.

Everything runs on the node's loop, straight from the NATS read loop, and never blocks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Protocol

import nats.errors
from nats.aio.subscription import Subscription

from mesh.engine import Context, MethodBinding
from mesh.errors import Internal, InvalidArgument, Reason, ResourceExhausted, RpcError
from mesh.observability import tracing
from mesh.transport import headers as h
from mesh.transport import subjects
from mesh.transport.connection import MeshConnection, encode_headers
from mesh.transport.ids import new_request_id
from mesh.transport.rpc import error_headers

if TYPE_CHECKING:
    from mesh.auth.identity import IdentitySeal

__all__ = ["ACCEPT_AFTER_S", "Responder", "Served", "request_context"]

log = logging.getLogger(__name__)

ACCEPT_AFTER_S = 0.1
"""A call still running after this long is acknowledged with ``Revo-Accepted``."""

Respond = Callable[[bytes | None, RpcError | None], None]


class Stream(Protocol):
    """A server stream's messages as a pool produces them, with credit-based flow control."""

    def messages(self) -> AsyncIterator[bytes]: ...
    def grant(self, count: int) -> None: ...
    def cancel(self) -> None: ...


class Served(Protocol):
    """What serves a method: an engine's pool (:class:`~mesh.runtime.pool.EnginePool` or
    :class:`~mesh.runtime.loop_pool.LoopPool`)."""

    def start_call(self, binding: MethodBinding, payload: bytes, ctx: Context,
                   respond: Respond) -> None: ...

    def stream(self, binding: MethodBinding, payload: bytes, ctx: Context,
               window: int) -> Stream: ...


_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")

Route = Callable[[str], tuple[Served, MethodBinding]]
"""The pool and binding serving a method path; raises UNIMPLEMENTED for an unknown path."""


def request_context(path: str, msg_headers: dict[str, str], node_id: str,
                    default_timeout_s: float, seal: IdentitySeal | None = None) -> Context:
    """The engine's view of a call, from the request's headers.

    With ``seal`` (auth on) the caller's identity must be sealed by a gateway, else the
    call is refused; without it (auth off) identity headers are ignored."""
    caller, role = seal.open(msg_headers, path) if seal is not None else ("", "")
    timeout_ms = msg_headers.get(h.TIMEOUT_MS)
    try:
        timeout = int(timeout_ms) / 1000 if timeout_ms else default_timeout_s
    except ValueError:
        raise InvalidArgument(f"header {h.TIMEOUT_MS} must be an integer, "
                              f"got {timeout_ms!r}") from None
    return Context(
        method=path,
        request_id=msg_headers.get(h.REQUEST_ID) or new_request_id(),
        deadline=time.monotonic() + timeout,
        node_id=node_id,
        caller=caller,
        role=role,
        traceparent=msg_headers.get(h.TRACEPARENT, ""),
        idempotency_key=idempotency_key(msg_headers.get(h.IDEMPOTENCY_KEY, "")),
    )


def idempotency_key(value: str) -> str:
    """``value`` as an idempotency key: 1 to 200 printable ASCII characters without
    spaces ('' for none), or ``INVALID_ARGUMENT`` saying so."""
    if value and not _IDEMPOTENCY_KEY.fullmatch(value):
        raise InvalidArgument("the idempotency key must be 1 to 200 printable ASCII "
                              "characters without spaces",
                              violations=[("idempotency-key", "must be 1 to 200 printable "
                                                              "ASCII characters, no spaces")])
    return value


class Responder:
    """Serves one node's methods on NATS; :meth:`serve` to start, :meth:`stop` to drain."""

    def __init__(self, nc: MeshConnection, node_id: str, route: Route, *,
                 default_timeout_s: float, seal: IdentitySeal | None = None) -> None:
        self.nc = nc
        self.node_id = node_id
        self._route = route
        self._default_timeout_s = default_timeout_s
        self._seal = seal
        """With auth on, calls must carry an identity sealed by a gateway."""
        self._subs: list[Subscription] = []
        self.inflight = 0
        """Calls taken and not yet answered."""
        self._idle = asyncio.Event()
        self._idle.set()
        # Reply subjects of calls not yet answered nor accepted, with their start times.
        self._unaccepted: dict[str, float] = {}
        self._accepter: asyncio.Task[None] | None = None
        self._calls: dict[str, Context] = {}
        """Unary calls in flight, by reply subject: what a cancel names."""
        self._cancels: Subscription | None = None

    async def serve(self, services: Iterable[str]) -> None:
        """Subscribe each service's subjects in its queue group."""
        for service in services:
            self._subs.append(await self.nc.subscribe_direct(
                subjects.service_wildcard(service), self._on_request,
                queue=subjects.queue_group(service)))
        self._cancels = await self.nc.subscribe_direct(subjects.cancel_subject(self.node_id),
                                                       self._on_cancel)
        self._accepter = asyncio.get_running_loop().create_task(self._accept_long_calls())

    async def stop_taking(self) -> None:
        """Take no more calls (the subscriptions end; calls in flight go on)."""
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await self.nc.unsubscribe_direct(sub)
        self._subs.clear()

    async def drain(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for the calls in flight; whether they all ended."""
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
            return True
        except TimeoutError:
            return False
        finally:
            if self._accepter is not None:
                self._accepter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._accepter
                self._accepter = None
            if self._cancels is not None:
                with contextlib.suppress(Exception):
                    await self.nc.unsubscribe_direct(self._cancels)
                self._cancels = None

    def _on_cancel(self, subject: str, reply: str, data: bytes,
                   msg_headers: dict[str, str] | None) -> None:
        ctx = self._calls.get((msg_headers or {}).get(h.CANCEL, ""))
        if ctx is not None:
            ctx.cancel()

    # -- requests -----------------------------------------------------------------------

    def _send(self, subject: str, data: bytes = b"",
              headers: dict[str, str] | None = None) -> None:
        self.nc.publish_nowait(subject, data, headers=encode_headers(headers) if headers else b"")

    def _on_request(self, subject: str, reply: str, data: bytes,
                    msg_headers: dict[str, str] | None) -> None:
        """A call from NATS (on the loop, straight from the read loop: must not block)."""
        if not reply:
            log.warning("dropping a request on %s without a reply subject", subject)
            return
        service, _, method = subject[len(subjects.RPC_PREFIX) + 1:].rpartition(".")
        path = f"/{service}/{method}"
        headers = msg_headers or {}
        scope = (tracing.process_scope(subject, headers, self.node_id,
                                       subjects.queue_group(service))
                 if tracing.TRACER is not None and tracing.sampled(headers) else None)
        try:
            served, binding = self._route(path)
            ctx = request_context(path, headers, self.node_id, self._default_timeout_s,
                                  self._seal)
            if binding.server_streaming:
                self._begin(reply)
                task = asyncio.get_running_loop().create_task(
                    self._serve_stream(reply, data, served, binding, ctx, headers),
                    context=scope.context if scope is not None else None)
                task.add_done_callback(lambda _: self._end(reply))
                if scope is not None:
                    task.add_done_callback(lambda _: tracing.finish(scope.span))
                return
            respond = functools.partial(self._answer, reply)
            if scope is None:
                served.start_call(binding, data, ctx, respond)
            else:  # the engine's span is a child of this node's
                scope.context.run(served.start_call, binding, data, ctx,
                                  scope.responding(respond))
        except RpcError as error:
            if scope is not None:
                tracing.finish(scope.span, error)
            self._send(reply, headers=error_headers(error))
            return
        self._begin(reply)
        self._calls[reply] = ctx  # (its answer always comes later, from the loop)

    def _begin(self, reply: str) -> None:
        self.inflight += 1
        self._idle.clear()
        self._unaccepted[reply] = time.monotonic()

    def _end(self, reply: str) -> None:
        self._unaccepted.pop(reply, None)
        self._calls.pop(reply, None)
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    def _answer(self, reply: str, data: bytes | None, error: RpcError | None) -> None:
        try:
            if error is not None:
                raise error
            assert data is not None
            limit = self.nc.max_payload - h.HEADER_ROOM
            if len(data) > limit:
                raise ResourceExhausted(
                    f"response of {len(data)} bytes exceeds the mesh's message limit "
                    f"({limit} bytes)", reason=Reason.MESSAGE_TOO_LARGE,
                    metadata={"size": str(len(data)), "limit": str(limit)})
            self._send(reply, data)
        except RpcError as error:
            self._send(reply, headers=error_headers(error))
        except Exception:
            log.exception("node %s failed answering a call", self.node_id)
            with contextlib.suppress(Exception):
                self._send(reply, headers=error_headers(
                    Internal(f"node {self.node_id} failed serving the call; see its log")))
        finally:
            self._end(reply)

    async def _accept_long_calls(self) -> None:
        """Tell callers which calls run longer than ACCEPT_AFTER_S (one sweep for all)."""
        headers = {h.ACCEPTED: self.node_id}
        while True:
            await asyncio.sleep(ACCEPT_AFTER_S / 2)
            cutoff = time.monotonic() - ACCEPT_AFTER_S
            due = []
            for reply, started in self._unaccepted.items():  # in arrival order
                if started > cutoff:
                    break
                due.append(reply)
            for reply in due:
                del self._unaccepted[reply]
                with contextlib.suppress(Exception):
                    self._send(reply, headers=headers)

    async def _serve_stream(self, reply: str, data: bytes, served: Served,
                            binding: MethodBinding, ctx: Context,
                            msg_headers: dict[str, str]) -> None:
        try:
            window = max(1, min(4096, int(msg_headers.get(h.STREAM_WINDOW, "16"))))
            sink = served.stream(binding, data, ctx, window)
        except (ValueError, RpcError) as exc:
            error = exc if isinstance(exc, RpcError) else InvalidArgument(
                f"header {h.STREAM_WINDOW} must be an integer")
            self._send(reply, headers={h.END: "1", **error_headers(error)})
            return

        def on_control(subject: str, _reply: str, _data: bytes,
                       control_headers: dict[str, str] | None) -> None:
            control_headers = control_headers or {}
            if h.CANCEL in control_headers:
                sink.cancel()
            elif h.ACK in control_headers:
                with contextlib.suppress(ValueError):
                    sink.grant(max(0, min(window, int(control_headers[h.ACK]))))

        control = self.nc.new_inbox()
        control_sub = await self.nc.subscribe_direct(control, on_control)
        first = True
        try:
            async for item in sink.messages():
                if first:
                    self._unaccepted.pop(reply, None)
                    self._send(reply, item, {h.STREAM_CONTROL: control, h.NODE: self.node_id})
                    first = False
                else:
                    self._send(reply, item)
            self._send(reply, headers={h.END: "1"})
        except nats.errors.MaxPayloadError:
            self._send(reply, headers={h.END: "1", **error_headers(ResourceExhausted(
                f"a stream message exceeds the mesh's NATS message limit "
                f"({self.nc.max_payload} bytes)", reason=Reason.MESSAGE_TOO_LARGE,
                metadata={"limit": str(self.nc.max_payload)}))})
        except RpcError as error:
            self._send(reply, headers={h.END: "1", **error_headers(error)})
        finally:
            sink.cancel()
            with contextlib.suppress(Exception):
                await self.nc.unsubscribe_direct(control_sub)
