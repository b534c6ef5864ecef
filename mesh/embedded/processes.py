"""Child processes that do not outlive their parent.

Each child runs in a session of its own, so a Ctrl-C in the terminal reaches only the
parent, which stops its children in order. Where util-linux's ``setpriv`` is present (every
mainstream Linux), the child is also started through ``setpriv --pdeathsig TERM``, so the
kernel asks it to stop if the parent dies without doing so (for example on SIGKILL).
The kernel ties that to the spawning *thread*: spawn from a thread that lives as long as
the children should (the launchers here spawn from their main thread).
This avoids ``preexec_fn``, which is not safe in a process that has threads (gRPC's):
a child forked while another thread held a lock could hang before it ever ran.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


def spawn(argv: Sequence[str], *, log_file: Path | None = None,
          env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session (in ``cwd``), stopped by the kernel if this
    process dies."""
    command = [_SETPRIV, "--pdeathsig", "TERM", "--", *argv] if _SETPRIV else list(argv)
    out = open(log_file, "ab") if log_file is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=dict(env) if env else None,
                                cwd=cwd, start_new_session=True)
    finally:
        if log_file is not None:
            out.close()  # type: ignore[union-attr]


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
            raise RuntimeError(f"{name} exited with {process.returncode}; "
                               f"see {log}: {log.read_text()[-3000:]}")
        if http_ok(ready_url):
            return
        time.sleep(poll_s)
    raise TimeoutError(f"{name} not ready within {timeout:g} s; see {log}")
