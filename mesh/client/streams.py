"""Server streams read with an idle timeout, and watches resumed where they stopped.

A stream has no deadline of its own (a generation or a watch lasts as long as its
content); instead :func:`read` fails ``DEADLINE_EXCEEDED`` when no message arrived for
``idle_timeout_s``, and cancels the call. The gateway ends any call at its
``gateway.max_timeout_s``; :func:`resumed` opens a watch again from where it stopped, so a
watch outlives it, and outlives a gateway restart (``UNAVAILABLE``), up to
``max_resumes`` reopenings in a row without a message in between.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from grpc import StatusCode

from mesh.errors import DeadlineExceeded

__all__ = ["read", "resumed"]

T = TypeVar("T")
RESUMABLE = frozenset({StatusCode.DEADLINE_EXCEEDED, StatusCode.UNAVAILABLE})


async def read(call: Any, idle_timeout_s: float | None, what: str) -> AsyncIterator[Any]:
    """The messages of ``call`` (a grpc.aio stream); failures raised as the mesh's errors."""
    from mesh.client.connection import rpc_error

    messages = call.__aiter__()
    try:
        while True:
            try:
                message = await asyncio.wait_for(messages.__anext__(), idle_timeout_s)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise DeadlineExceeded(
                    f"{what}: no message for {idle_timeout_s:g} s (the client's "
                    "stream_idle_timeout_s); the stream was cancelled") from None
            except grpc.aio.AioRpcError as exc:
                raise rpc_error(exc) from None
            yield message
    finally:
        call.cancel()


async def resumed(open_call: Callable[[], Any], *, idle_timeout_s: float | None, what: str,
                  finished: Callable[[T], bool], max_resumes: int = 5,
                  backoff_s: float = 0.2,
                  on_resume: Callable[[Exception], None] | None = None) -> AsyncIterator[T]:
    """Messages of the stream ``open_call()`` opens, reopened (``open_call`` reads where
    the caller's last message left off) when the gateway ends it before a message
    ``finished`` says is the last; ``on_resume`` hears of each reopening and why."""
    quiet = 0  # reopenings since the last message
    while True:
        try:
            async for message in read(open_call(), idle_timeout_s, what):
                quiet = 0
                yield message
                if finished(message):
                    return
            return  # the server ended it: nothing more to watch
        except DeadlineExceeded as error:
            if "stream_idle_timeout_s" in error.message:
                raise
            failure: Exception = error
        except Exception as error:  # the mesh's errors: resumable ones only
            if getattr(error, "code", None) not in RESUMABLE:
                raise
            failure = error
        quiet += 1
        if quiet > max_resumes:
            raise failure
        if on_resume is not None:
            on_resume(failure)
        await asyncio.sleep(backoff_s * (quiet - 1))
