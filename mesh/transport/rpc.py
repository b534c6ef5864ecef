"""The caller's side of a mesh call over NATS: unary request/reply and server streams.

Errors arrive as ``Revo-Status`` / ``Revo-Message`` headers and are raised as
:class:`mesh.errors.RpcError` with the same code; a subject nobody serves raises
``UNAVAILABLE``; a reply that does not come in time raises ``DEADLINE_EXCEEDED``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from mesh.errors import DeadlineExceeded, RpcError, Unavailable, status_from_code
from mesh.transport import headers as h

__all__ = ["call", "error_from", "stream"]

_NO_RESPONDERS = "503"


def error_from(msg_headers: Mapping[str, str] | None) -> RpcError | None:
    """The error a reply carries, or None for OK."""
    if not msg_headers:
        return None
    status = msg_headers.get(h.STATUS)
    if status is None:
        if msg_headers.get(h.NATS_STATUS) == _NO_RESPONDERS:
            return Unavailable("no node serves this method right now")
        return None
    return RpcError(status_from_code(int(status)), msg_headers.get(h.MESSAGE, ""))


async def call(nc: NATS, subject: str, payload: bytes, timeout: float,
               headers: dict[str, str]) -> bytes:
    """Send one request and return the reply's payload, or raise its RpcError."""
    try:
        msg = await nc.request(subject, payload, timeout=timeout, headers=headers)
    except nats.errors.NoRespondersError:
        raise Unavailable(f"no node serves {subject.removeprefix('revo.rpc.')} right now; "
                          "start a node with its engine or retry") from None
    except nats.errors.TimeoutError:
        raise DeadlineExceeded(f"no reply within {timeout:.3g} s") from None
    except nats.errors.ConnectionClosedError:
        raise Unavailable("the gateway lost its NATS connection") from None
    error = error_from(msg.headers)
    if error is not None:
        raise error
    return msg.data


async def stream(nc: NATS, subject: str, payload: bytes, timeout: float,
                 headers: dict[str, str], window: int) -> AsyncIterator[bytes]:
    """Open a server stream and yield its messages with credit-based flow control.

    Credit is returned as messages are consumed, so a slow consumer slows the producer.
    Closing the iterator early cancels the stream at the node.
    """
    deadline = time.monotonic() + timeout
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    control = ""
    finished = False
    unacked = 0
    try:
        await nc.publish(subject, payload, reply=inbox,
                         headers={**headers, h.STREAM_WINDOW: str(window)})
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"stream did not finish within {timeout:.3g} s")
            try:
                msg: Msg = await sub.next_msg(timeout=remaining)
            except nats.errors.TimeoutError:
                raise DeadlineExceeded(f"stream did not finish within {timeout:.3g} s") from None
            msg_headers = msg.headers or {}
            control = control or msg_headers.get(h.STREAM_CONTROL, "")
            if h.END in msg_headers or h.NATS_STATUS in msg_headers:
                finished = True
                error = error_from(msg_headers)
                if error is not None:
                    raise error
                return
            yield msg.data
            unacked += 1
            if control and unacked * 2 >= window:
                await nc.publish(control, b"", headers={h.ACK: str(unacked)})
                unacked = 0
    finally:
        if not finished and control and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.publish(control, b"", headers={h.CANCEL: "1"})
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
