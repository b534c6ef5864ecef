"""Child processes that do not outlive their parent.

Each child runs in a session of its own, so a Ctrl-C in the terminal reaches only the
parent, which stops its children in order. Where util-linux's ``setpriv`` is present (every
mainstream Linux), the child is also started through ``setpriv --pdeathsig TERM``, so the
kernel asks it to stop if the parent dies without doing so (for example on SIGKILL).
The kernel ties that to the spawning *thread*: spawn from a thread that lives as long as
the children should (the launchers here spawn from their main thread).
This avoids ``preexec_fn``, which is not safe in a process that has threads (gRPC's):
a child forked while another thread held a lock could hang before it ever ran.

A child's output goes to its log file. With a :class:`LogRotation` (``revo up`` gives one
to every child) it goes through a pipe that a thread of this process copies into the file,
rotating it by size: ``node.log`` becomes ``node.log.1`` at :data:`LOG_MAX_BYTES`, and so on
up to :data:`LOG_BACKUPS` old files, so a mesh that runs for weeks keeps at most
``(1 + LOG_BACKUPS) * LOG_MAX_BYTES`` of each log. One way for every child (nats-server,
Triton and Envoy have no size rotation of their own to share), and nothing of the file is
ever held open by the child, so renaming it loses no line.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None

LOG_MAX_BYTES = 10 * 1024 * 1024
"""A log file is rotated when it reaches this size (10 MiB)."""
LOG_BACKUPS = 3
"""Rotated files kept beside each log (``.1`` newest to ``.3`` oldest)."""


@dataclass(frozen=True)
class LogRotation:
    """Rotate a child's log by size: at ``max_bytes``, keeping ``backups`` old files."""

    max_bytes: int = LOG_MAX_BYTES
    backups: int = LOG_BACKUPS


class RotatingLog:
    """Appends bytes to ``path``; before it would pass ``rotation.max_bytes``, ``path``
    becomes ``path.1`` (``.1`` becomes ``.2`` ..., the oldest beyond ``backups`` is
    dropped) and a new ``path`` starts. It rotates between lines (only a line longer than
    a whole file is split), so no file is ever over the size."""

    def __init__(self, path: Path, rotation: LogRotation) -> None:
        self.path = Path(path)
        self.rotation = rotation
        self._file: IO[bytes] = open(self.path, "ab")  # noqa: SIM115
        self._size = self._file.tell()

    def write(self, data: bytes) -> None:
        limit = self.rotation.max_bytes
        while self._size + len(data) > limit:
            room = limit - self._size
            cut = data.rfind(b"\n", 0, max(room, 0)) + 1  # the whole lines that fit
            if not cut and not self._size:
                cut = room  # one line longer than a whole file: split it
            self._write(data[:cut])
            data = data[cut:]
            self.rotate()
        self._write(data)

    def _write(self, data: bytes) -> None:
        if data:
            self._file.write(data)
            self._file.flush()
            self._size += len(data)

    def rotate(self) -> None:
        self._file.close()
        rotate_file(self.path, self.rotation.backups)
        self._file = open(self.path, "ab")  # noqa: SIM115
        self._size = 0

    def close(self) -> None:
        self._file.close()


def rotate_file(path: Path, backups: int) -> None:
    """``path`` to ``path.1``, ``path.1`` to ``path.2`` ... (``path.<backups>`` is
    dropped); with ``backups`` 0 the file is removed."""
    for index in range(backups, 0, -1):
        older = path.with_name(f"{path.name}.{index}")
        newer = path if index == 1 else path.with_name(f"{path.name}.{index - 1}")
        if newer.exists():
            newer.replace(older)
    if backups == 0:
        path.unlink(missing_ok=True)


def _pump(stream: IO[bytes], log: RotatingLog) -> None:
    """Copy a child's output into its log until the child closes it. A failed write (a
    full disk) loses that output, never the child: the pipe is always read."""
    try:
        while chunk := stream.read1(65536):  # type: ignore[attr-defined]
            with contextlib.suppress(OSError):
                log.write(chunk)
    finally:
        stream.close()
        with contextlib.suppress(OSError):
            log.close()


def spawn(argv: Sequence[str], *, log_file: Path | None = None,
          env: Mapping[str, str] | None = None,
          cwd: Path | None = None,
          rotation: LogRotation | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session (in ``cwd``), stopped by the kernel if this
    process dies. Its output goes to ``log_file`` (rotated by size with ``rotation``)."""
    command = [_SETPRIV, "--pdeathsig", "TERM", "--", *argv] if _SETPRIV else list(argv)
    if log_file is not None and rotation is not None:
        log = RotatingLog(log_file, rotation)
        try:
            process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=dict(env) if env else None, cwd=cwd,
                                       start_new_session=True)
        except BaseException:
            log.close()
            raise
        assert process.stdout is not None
        threading.Thread(target=_pump, args=(process.stdout, log), daemon=True,
                         name=f"log {log_file.name}").start()
        return process
    out = open(log_file, "ab") if log_file is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=dict(env) if env else None,
                                cwd=cwd, start_new_session=True)
    finally:
        if log_file is not None:
            out.close()  # type: ignore[union-attr]


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of the log at ``path`` ('' when there is none)."""
    try:
        with open(path, "rb") as file:
            file.seek(0, 2)
            file.seek(max(0, file.tell() - 16384))
            text = file.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 within a second."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def wait_until_ready(process: subprocess.Popen[bytes], ready_url: str, *, name: str,
                     log: Path, timeout: float, poll_s: float) -> None:
    """Poll ``ready_url`` until it answers 200; raise with the log's end if ``process``
    exits first (RuntimeError) or ``timeout`` passes (TimeoutError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_tail(log, 30)
            last = tail.strip().splitlines()[-1].strip() if tail.strip() else "no output"
            indented = "\n".join(f"    {line}" for line in tail.splitlines())
            raise RuntimeError(f"{name} exited with code {process.returncode}: {last[:200]}\n"
                               f"  see {log}; its last lines:\n{indented}")
        if http_ok(ready_url):
            return
        time.sleep(poll_s)
    raise TimeoutError(f"{name} not ready within {timeout:g} s; see {log}")
