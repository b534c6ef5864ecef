"""milvus-lite in a process of its own.

Given a file path as its URI, pymilvus starts milvus-lite's gRPC server on threads of the
calling process. Since 3.x milvus-lite is pure Python, so in a node that server's work
(a write's flush builds its tables in Python) held the node's interpreter lock: searches
waited behind writes, 360 ms at the median while a 100k collection loaded. The engine runs
``python -m milvus_lite server`` on the same data directory instead and talks to it over
gRPC on 127.0.0.1, as it would to a Milvus server. The child stops with the node, and the
kernel stops it should the node die first (:func:`mesh.embedded.processes.spawn`).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

from mesh.embedded.nats_server import free_port
from mesh.embedded.processes import spawn, stop_process
from mesh.errors import Unavailable

__all__ = ["LiteServer"]


class LiteServer:
    """``python -m milvus_lite server`` on the data directory ``path`` (the ``.db`` path
    pymilvus would have used), logging to ``log``."""

    def __init__(self, path: Path, log: Path) -> None:
        self.path = path
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 60.0) -> str:
        """Start the server and wait until it accepts connections; its URI."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process = spawn([sys.executable, "-m", "milvus_lite", "server", "--data-dir",
                              str(self.path), "--host", "127.0.0.1", "--port",
                              str(self.port)], log_file=self.log)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise Unavailable(f"milvus-lite on {self.path} exited with "
                                  f"{self.process.returncode}: {self._log_tail()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise Unavailable(f"milvus-lite on {self.path} did not listen within "
                                      f"{timeout:g} s; see {self.log}") from None
                await asyncio.sleep(0.1)
                continue
            writer.close()
            return self.uri

    def stop(self, timeout: float = 10.0) -> None:
        """SIGINT (milvus-lite then finishes its calls and closes its files), then SIGTERM
        and SIGKILL after ``timeout`` each."""
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
