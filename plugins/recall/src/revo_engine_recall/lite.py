"""milvus-lite in a process of its own.

Given a file path as its URI, pymilvus starts milvus-lite's gRPC server on threads of the
calling process. Since 3.x milvus-lite is pure Python, so in a node that server's work
(a write's flush builds its tables in Python) held the node's interpreter lock, and
searches waited behind writes (42 % of the node's samples were milvus-lite's while a 100k
collection loaded). The engine runs
``python -m milvus_lite server`` on the same data directory instead and talks to it over
gRPC on 127.0.0.1, as it would to a Milvus server. The child stops with the node, and the
kernel stops it should the node die first (:func:`mesh.embedded.processes.spawn`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

from mesh.embedded.nats_server import free_port
from mesh.embedded.processes import spawn, stop_process
from mesh.errors import Unavailable

__all__ = ["LiteServer"]


class LiteServer:
    """``python -m milvus_lite server`` on the data directory ``path`` (the ``.db`` path
    pymilvus would have used), logging to ``log``.

    milvus-lite locks its directory, so one process serves it: engines of one process that
    name the same directory share one server (:meth:`shared`, :meth:`release`), as they
    shared pymilvus's in-process one.
    """

    _shared: ClassVar[dict[str, tuple[LiteServer, int]]] = {}
    _guard: ClassVar[threading.Lock] = threading.Lock()
    """Engines start on their own loops' threads."""

    def __init__(self, path: Path, log: Path) -> None:
        self.path = path
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    async def shared(cls, path: Path, log: Path, timeout: float = 60.0) -> LiteServer:
        """The server of ``path`` in this process, started if need be, once it listens;
        each call needs a :meth:`release`."""
        server = cls._acquire(path, log)
        try:
            await server.listening(timeout)
        except BaseException:
            server.release()
            raise
        return server

    @classmethod
    def _acquire(cls, path: Path, log: Path) -> LiteServer:
        key = os.path.abspath(path)
        with cls._guard:
            held = cls._shared.get(key)
            if held is not None and held[0].running:
                server, users = held[0], held[1] + 1
            else:
                server, users = cls(path, log), 1
                server._start_process()
            cls._shared[key] = (server, users)
        return server

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _start_process(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process = spawn([sys.executable, "-m", "milvus_lite", "server", "--data-dir",
                              str(self.path), "--host", "127.0.0.1", "--port",
                              str(self.port)], log_file=self.log)

    async def listening(self, timeout: float) -> None:
        """Wait until the server accepts connections (Unavailable if it exits first, or
        does not within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                code = self.process.returncode if self.process is not None else None
                raise Unavailable(f"milvus-lite on {self.path} exited with {code}: "
                                  f"{self._log_tail()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if time.monotonic() > deadline:
                    raise Unavailable(f"milvus-lite on {self.path} did not listen within "
                                      f"{timeout:g} s; see {self.log}") from None
                await asyncio.sleep(0.1)
                continue
            writer.close()
            return

    def release(self) -> None:
        """Stop the server when the last engine that shares it lets go."""
        key = os.path.abspath(self.path)
        with self._guard:
            server, users = self._shared.get(key, (self, 1))
            if server is self and users > 1:
                self._shared[key] = (self, users - 1)
                return
            if server is self:
                self._shared.pop(key, None)
        self.stop()

    def stop(self, timeout: float = 3.0) -> None:
        """SIGINT (milvus-lite then finishes its calls and closes its files), then SIGTERM
        and SIGKILL after ``timeout`` each. Closing waits for milvus-lite's background index
        builds, which take minutes on a large collection; cutting them short loses nothing
        written (milvus-lite replays its log when it starts again)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                stop_process(self.process, timeout)
        self.process = None

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:].strip() or "(empty log)"
        except OSError:
            return f"(no log at {self.log})"
