"""A mesh in the background: ``revo up --detach``, ``revo down`` and ``revo logs``.

``revo up --detach`` starts ``revo up`` again as a process of its own session (it outlives
the terminal and ignores its Ctrl-C), with its output in ``$REVO_HOME/logs/up.log``, and
shows that log's step lines as they come: it returns 0 once the mesh is ready (the log
shows :data:`~mesh.embedded.up.DETACHED_READY`), 1 with the failed step when the mesh did
not start. The background ``revo up`` records its pid in ``run/up.json``, where
``revo status`` and ``revo down`` read it.

``revo down`` sends that process SIGTERM: it stops the mesh in reverse order within its
stop budget. Past :data:`DOWN_WAIT_S` it is sent SIGKILL, and so is every process it had
recorded that still runs. ``revo logs NAME`` prints ``$REVO_HOME/logs/NAME.log`` (``-f``
follows it across rotations); names are the log files there (``nats`` and ``triton``
stand for ``nats-server`` and ``tritonserver``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

from mesh.config import MeshConfig
from mesh.embedded.processes import LOG_BACKUPS, LOG_MAX_BYTES, rotate_file
from mesh.embedded.up import DETACHED_READY, STOP_BUDGET_S, read_state, state_file

__all__ = ["DOWN_WAIT_S", "log_names", "show_log", "start_detached", "stop_detached"]

DOWN_WAIT_S = STOP_BUDGET_S + 5.0
"""How long ``revo down`` waits for the mesh to stop before it kills what is left."""
UP_LOG = "up.log"
"""The background ``revo up``'s own output: its steps, restarts and stop."""
ALIASES = {"nats": "nats-server", "triton": "tritonserver"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")  # a zombie is gone for our purpose
    try:
        return not stat.read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


# -- revo up --detach ------------------------------------------------------------------------

def start_detached(config: MeshConfig, profile: str = "default", *,
                   config_file: str | None = None, out: TextIO | None = None) -> int:
    """Start ``revo up`` (with ``--config config_file``) in the background and follow its
    log until the mesh is ready (0) or the start failed (1, with its last lines). Ctrl-C
    meanwhile stops it."""
    out = out or sys.stdout
    logs = Path(config.home) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / UP_LOG
    if log.exists() and log.stat().st_size > LOG_MAX_BYTES:
        rotate_file(log, LOG_BACKUPS)
    argv = [sys.executable, "-m", "mesh"]
    if config_file:
        argv += ["--config", str(Path(config_file).resolve())]
    argv += ["up", "--profile", profile, "--background"]
    with open(log, "ab") as output:
        offset = output.tell()
        # its own session: the terminal's Ctrl-C and hangup do not reach it
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   env=dict(os.environ, PYTHONUNBUFFERED="1"))
    print(f"starting revo in the background (pid {process.pid}; its output goes to {log})",
          file=out, flush=True)
    try:
        with open(log, "rb") as reading:
            reading.seek(offset)
            pending = b""
            while True:
                chunk = reading.read()
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace")
                    print(line, file=out, flush=True)
                    if line.startswith(DETACHED_READY):
                        return 0
                if not chunk:
                    if process.poll() is not None:
                        if pending:
                            print(pending.decode(errors="replace"), file=out, flush=True)
                        print(f"revo up: the background mesh did not start (exit code "
                              f"{process.returncode}); its output is in {log}",
                              file=sys.stderr, flush=True)
                        return 1
                    time.sleep(0.1)
    except KeyboardInterrupt:
        print("interrupted: stopping the background mesh", file=out, flush=True)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(DOWN_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
        return 130


# -- revo down -------------------------------------------------------------------------------

def stop_detached(config: MeshConfig, *, out: TextIO | None = None,
                  wait_s: float = DOWN_WAIT_S) -> int:
    """Stop the ``revo up`` running for ``config.home`` (background or not); say what was
    done. 0 when it stopped (or nothing ran), 1 when it had to be killed."""
    out = out or sys.stdout
    state = read_state(config)
    if state is None:
        recorded = _recorded_pid(config)
        if recorded and _alive(recorded):  # up.json outlived its revo up; the pid was reused
            print(f"nothing running under {config.home} (the recorded pid {recorded} is "
                  "another program now; forgetting it)", file=out)
            state_file(config).unlink(missing_ok=True)
        else:
            print(f"nothing running under {config.home}", file=out)
        return 0
    pid = int(state["pid"])
    children = {name: int(child) for name, child in state.get("processes", {}).items()}
    began = time.monotonic()
    print(f"stopping revo up (pid {pid}) and its {len(children)} processes...", file=out,
          flush=True)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = began + wait_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if not _alive(pid):
        left = [name for name, child in children.items() if _alive(child)]
        if not left:
            print(f"stopped in {time.monotonic() - began:.1f} s", file=out)
            return 0
    else:
        print(f"revo up (pid {pid}) did not stop within {wait_s:g} s: killing it",
              file=out, flush=True)
        _kill(pid)
    killed = [f"{name} ({child})" for name, child in children.items() if _kill(child)]
    gone_by = time.monotonic() + 5.0  # SIGKILL is delivered at once, the exit a moment later
    while time.monotonic() < gone_by and any(
            _alive(p) for p in (pid, *children.values())):
        time.sleep(0.05)
    state_file(config).unlink(missing_ok=True)
    print("killed " + (", ".join(killed) if killed else "nothing else: its processes "
                       "had stopped") + f" after {time.monotonic() - began:.1f} s", file=out)
    return 1


def _recorded_pid(config: MeshConfig) -> int:
    """The pid in ``run/up.json``, whatever runs there now (0 when none)."""
    try:
        return int(json.loads(state_file(config).read_text()).get("pid", 0))
    except (OSError, ValueError, AttributeError):
        return 0


def _kill(pid: int) -> bool:
    """SIGKILL ``pid`` if it still runs; whether it did."""
    if not _alive(pid):
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


# -- revo logs -------------------------------------------------------------------------------

def log_names(logs: Path) -> list[str]:
    """The logs in ``logs`` by name (``node`` for ``node.log``)."""
    if not logs.is_dir():
        return []
    return sorted(path.name.removesuffix(".log") for path in logs.glob("*.log"))


def show_log(config: MeshConfig, name: str | None, *, follow: bool = False,
             lines: int | None = None, out: TextIO | None = None) -> int:
    """Print the log called ``name`` (its last ``lines`` lines; all by default), then with
    ``follow`` what is written to it until Ctrl-C. Without a name, or with a name that is
    not there, list the logs (0 for no name, 2 for a wrong one)."""
    out = out or sys.stdout
    state = read_state(config)
    logs = Path(state["logs"]) if state else Path(config.home) / "logs"
    names = log_names(logs)
    wanted = ALIASES.get(name, name) if name else None
    if wanted is None or wanted not in names:
        listing = _listing(logs, names)
        if name is None:
            print(listing, file=out)
            return 0
        print(f"revo logs: no log called {name!r} in {logs}; {listing}", file=sys.stderr)
        return 2
    path = logs / f"{wanted}.log"
    with open(path, "rb") as file:
        data = file.read()
    text = data.decode(errors="replace")
    if lines is not None:
        text = "".join(text.splitlines(keepends=True)[-lines:]) if lines > 0 else ""
    out.write(text)
    out.flush()
    if follow:
        with contextlib.suppress(KeyboardInterrupt):
            _follow(path, len(data), out)
    return 0


def _listing(logs: Path, names: list[str]) -> str:
    if not names:
        return f"no logs in {logs} yet (revo up writes them)"
    sizes = [f"  {name:<16} {_size((logs / f'{name}.log').stat().st_size)}"
             for name in names]
    return f"logs in {logs} (revo logs [-f] NAME):\n" + "\n".join(sizes)


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024 or unit == "MiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return ""


def _follow(path: Path, offset: int, out: TextIO) -> None:
    """Print what is appended to ``path`` from ``offset``; start over at a new file of
    the same name (the log rotated)."""
    file = open(path, "rb")  # noqa: SIM115
    file.seek(offset)
    inode = os.fstat(file.fileno()).st_ino
    try:
        while True:
            chunk = file.read()
            if chunk:
                out.write(chunk.decode(errors="replace"))
                out.flush()
                continue
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            if current is not None and (current.st_ino != inode
                                        or current.st_size < file.tell()):
                file.close()
                file = open(path, "rb")  # noqa: SIM115
                inode = os.fstat(file.fileno()).st_ino
                continue
            time.sleep(0.2)
    finally:
        file.close()
