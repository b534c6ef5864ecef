"""The client: :class:`AsyncClient` for asyncio code, :class:`Client` for everything else.

::

    from mesh.client import Client

    with Client.from_env() as revo:                  # REVO_URL, REVO_API_KEY, ...
        revo.recall.remember("the build needs Python 3.11", scope="project:revo")
        for hit in revo.recall.search("which Python?", scopes=["project:revo"]):
            print(hit.score, hit.memory.text)
        task = revo.tasks.submit("echo", {"hello": "world"})
        print(revo.tasks.wait(task.id).state)

Both have the same facades (``recall``, ``tasks``, ``models``, ``creative``,
``workflows``: :mod:`mesh.client.engines`) and the connection's ``channel`` for any
generated stub. :class:`Client` runs an :class:`AsyncClient` on an event loop of its own
thread: its methods block, its streams are plain iterators.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc

from mesh.client.connection import MeshClient
from mesh.client.engines import Creative, Models, Recall, Tasks, Workflows
from mesh.client.retry import RetryPolicy
from mesh.client.session import Session

__all__ = ["CLIENT_VARIABLES", "AsyncClient", "Client"]

CLIENT_VARIABLES = {
    "REVO_URL": "the gateway, host:port (default 127.0.0.1:50051)",
    "REVO_API_KEY": "an API key (revo_<id>_<secret>) to call as its owner",
    "REVO_TOKEN": "an access token (refreshed by whoever issued it)",
    "REVO_USERNAME": "sign in as this user (with REVO_PASSWORD); tokens are refreshed",
    "REVO_PASSWORD": "the password of REVO_USERNAME",
    "REVO_CA_FILE": "PEM file of the CA that signed the gateway's certificate: TLS on",
    "REVO_TIMEOUT": "deadline in seconds of unary calls (default 30)",
}
"""The variables :meth:`AsyncClient.from_env` reads. ``revo`` commands accept them too
(they are not server configuration)."""


class AsyncClient:
    """A revo client for asyncio code; see the module's documentation.

    Credentials: ``api_key``, or ``token``, or ``username`` and ``password`` (signed in
    at the first call; access tokens refreshed before they expire). ``timeout`` is the
    deadline of unary calls without one; streams have none, but fail when no message
    came for ``stream_idle_timeout_s`` (watches excepted: they are quiet while nothing
    changes). ``retry`` (None: off) retries what is safe to repeat
    (:mod:`mesh.client.retry`).
    """

    def __init__(self, target: str = "127.0.0.1:50051", *, api_key: str = "", token: str = "",
                 username: str = "", password: str = "", ca_file: str | Path | None = None,
                 timeout: float | None = 30.0, stream_idle_timeout_s: float | None = 120.0,
                 retry: RetryPolicy | None = RetryPolicy(),  # noqa: B008 (frozen)
                 metadata: tuple[tuple[str, str], ...] = (),
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        if sum(map(bool, (api_key, token, username))) > 1:
            raise ValueError("give one of api_key, token, or username and password")
        if bool(username) != bool(password):
            raise ValueError("username and password go together")
        if credentials is None and ca_file:
            credentials = grpc.ssl_channel_credentials(Path(ca_file).read_bytes())
        self.session = Session(api_key or token, username=username, password=password)
        self.connection = MeshClient(target, timeout=timeout, retry=retry,
                                     credentials=credentials, metadata=metadata,
                                     session=self.session)
        self.channel = self.connection.channel
        self.stream_idle_timeout_s = stream_idle_timeout_s
        self.resumes = 0
        """Watch streams reopened after the gateway ended them (its maximum call time)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> AsyncClient:
        """A client configured by :data:`CLIENT_VARIABLES`; keywords override them."""
        return cls(**{**_from_env(os.environ if environ is None else environ), **overrides})

    def _resumed(self, _: Exception) -> None:
        self.resumes += 1

    @functools.cached_property
    def recall(self) -> Recall:
        return Recall(self)

    @functools.cached_property
    def tasks(self) -> Tasks:
        return Tasks(self)

    @functools.cached_property
    def models(self) -> Models:
        return Models(self)

    @functools.cached_property
    def creative(self) -> Creative:
        return Creative(self)

    @functools.cached_property
    def workflows(self) -> Workflows:
        return Workflows(self)

    async def login(self, username: str, password: str) -> Any:
        return await self.session.login(username, password)

    async def logout(self) -> None:
        await self.session.logout()

    async def close(self) -> None:
        await self.connection.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"target": environ.get("REVO_URL") or "127.0.0.1:50051"}
    for variable, key in (("REVO_API_KEY", "api_key"), ("REVO_TOKEN", "token"),
                          ("REVO_USERNAME", "username"), ("REVO_PASSWORD", "password"),
                          ("REVO_CA_FILE", "ca_file")):
        if environ.get(variable):
            out[key] = environ[variable]
    if environ.get("REVO_TIMEOUT"):
        try:
            out["timeout"] = float(environ["REVO_TIMEOUT"])
        except ValueError:
            raise ValueError(f"REVO_TIMEOUT={environ['REVO_TIMEOUT']!r}: give seconds, "
                             "e.g. 30") from None
    return out


class _Loop:
    """An event loop on a daemon thread of its own, for :class:`Client`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="revo-client",
                                        daemon=True)
        self._thread.start()

    def run(self, awaitable: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(_awaited(awaitable), self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


class _Blocking:
    """A facade whose coroutines block and whose async iterators are plain iterators."""

    def __init__(self, target: Any, loop: _Loop) -> None:
        self._target, self._loop = target, loop

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return value

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            if inspect.iscoroutinefunction(value):
                return self._loop.run(value(*args, **kwargs))
            result = self._loop.run(_made(value, args, kwargs))
            if isinstance(result, AsyncIterator):
                return _iterate(result, self._loop)
            return result

        return call


async def _made(function: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    return function(*args, **kwargs)  # on the loop's thread: stubs bind to its loop


def _iterate(messages: AsyncIterator[Any], loop: _Loop) -> Iterator[Any]:
    try:
        while True:
            try:
                yield loop.run(messages.__anext__())
            except StopAsyncIteration:
                return
    finally:
        close = getattr(messages, "aclose", None)
        if close is not None:
            loop.run(close())


class Client:
    """The blocking client: :class:`AsyncClient`'s arguments and facades, run on an
    event loop of its own thread. Use it with ``with``, or call :meth:`close`."""

    def __init__(self, target: str = "127.0.0.1:50051", **options: Any) -> None:
        self._loop = _Loop()
        self._async: AsyncClient = self._loop.run(_build(target, options))
        self.recall: Any = _Blocking(self._facade("recall"), self._loop)
        self.tasks: Any = _Blocking(self._facade("tasks"), self._loop)
        self.models: Any = _Blocking(self._facade("models"), self._loop)
        self.creative: Any = _Blocking(self._facade("creative"), self._loop)
        self.workflows: Any = _Blocking(self._facade("workflows"), self._loop)

    def _facade(self, name: str) -> Any:
        return _Lazy(self._async, name, self._loop)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Client:
        options = {**_from_env(os.environ if environ is None else environ), **overrides}
        return cls(options.pop("target"), **options)

    @property
    def session(self) -> Session:
        return self._async.session

    @property
    def resumes(self) -> int:
        return self._async.resumes

    def login(self, username: str, password: str) -> Any:
        return self._loop.run(self._async.login(username, password))

    def logout(self) -> None:
        self._loop.run(self._async.logout())

    def close(self) -> None:
        if self._loop.loop.is_closed():
            return
        self._loop.run(self._async.close())
        self._loop.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _build(target: str, options: dict[str, Any]) -> AsyncClient:
    return AsyncClient(target, **options)  # its channel belongs to the loop's thread


class _Lazy:
    """A facade made on first use (so an engine not installed fails only when used)."""

    def __init__(self, client: AsyncClient, name: str, loop: _Loop) -> None:
        self._client, self._name, self._loop = client, name, loop

    def __getattr__(self, attribute: str) -> Any:
        facade = self._loop.run(_facade(self._client, self._name))
        return getattr(facade, attribute)


async def _facade(client: AsyncClient, name: str) -> Any:
    return getattr(client, name)
