"""`revo up --detach` as a user runs it: the steps as they happen, then `revo status`,
`revo logs` (listing, a log, following one) and `revo down`, which leaves nothing behind;
and a step that fails says which and why. The embedded default without Triton and with
only the echo engine, in a temporary REVO_HOME."""

from __future__ import annotations

import io
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.config import load_config
from mesh.embedded.background import stop_detached
from mesh.embedded.nats_server import free_port
from mesh.embedded.up import DETACHED_READY, state_file


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")  # a zombie is gone for our purpose
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


def _revo(*args: str, env: dict[str, str], cwd: Path,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVO_")}
    return env | dict(
        REVO_HOME=str(tmp_path / "home"),
        REVO_CONFIG=os.devnull,
        REVO_PLUGINS__ONLY="echo",
        REVO_MODELS__TRITON_EMBEDDED="false",
        REVO_NATS__PORT=str(free_port()), REVO_NATS__MONITOR_PORT=str(free_port()),
        REVO_GATEWAY__ADDRESS=f"127.0.0.1:{free_port()}",
        REVO_GATEWAY__HTTP_ADDRESS=f"127.0.0.1:{free_port()}",
        REVO_GATEWAY__METRICS_ADDRESS=f"127.0.0.1:{free_port()}",
        REVO_NODE__METRICS_ADDRESS="127.0.0.1:0",
        REVO_ENVOY__ADDRESS=f"127.0.0.1:{free_port()}",
        REVO_ENVOY__ADMIN_ADDRESS=f"127.0.0.1:{free_port()}",
        REVO_ADMIN_PASSWORD="first-admin-password") | extra


def _read_until(process: subprocess.Popen[bytes], marker: str, timeout: float) -> str:
    """What ``process`` prints until it holds ``marker`` (bounded by ``timeout``)."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    seen = ""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while marker not in seen and time.monotonic() < deadline:
            if not selector.select(deadline - time.monotonic()):
                break
            chunk = os.read(fd, 65536)  # unbuffered: a select() sees what is left
            if not chunk:
                break
            seen += chunk.decode(errors="replace")
    assert marker in seen, f"no {marker!r} within {timeout:g} s:\n{seen}"
    return seen


@pytest.fixture
def home(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    env = _env(tmp_path)
    yield env, tmp_path
    state = tmp_path / "home/run/up.json"
    if state.exists():  # the test failed half-way: leave nothing running
        _revo("down", env=env, cwd=tmp_path)


@pytest.mark.timeout(120)
def test_up_detach_status_logs_down(home: tuple[dict[str, str], Path]) -> None:
    env, cwd = home
    up = _revo("up", "--detach", env=env, cwd=cwd, timeout=90)
    assert up.returncode == 0, up.stdout + up.stderr
    out = up.stdout
    # each step on a line of its own, with its seconds; plain lines (not a terminal)
    assert re.search(r"^✔ nats-server +nats://127\.0\.0\.1:\d+ +\d+\.\d s$", out,
                     re.MULTILINE), out
    assert re.search(r"^- tritonserver +skipped: off \(models\.triton_embedded = false\)$",
                     out, re.MULTILINE), out
    for step in ("gateway", "node", "engines", "envoy"):
        assert re.search(rf"^✔ {step} .* \d+\.\d s$", out, re.MULTILINE), (step, out)
    assert re.search(r"^✔ engines +echo ", out, re.MULTILINE), out
    assert "\r" not in out
    assert "\x1b" not in out
    assert f"gateway (gRPC)   {env['REVO_GATEWAY__ADDRESS']}" in out
    assert out.rstrip().splitlines()[-1].startswith(DETACHED_READY), out

    # it returned, and the mesh runs on in the background, recorded where status looks
    state = json.loads((cwd / "home/run/up.json").read_text())
    assert state["detached"] is True
    pids = [state["pid"], *state["processes"].values()]
    assert set(state["processes"]) == {"nats-server", "node", "gateway", "envoy"}
    assert all(_alive(pid) for pid in pids)
    again = _revo("up", "--detach", env=env, cwd=cwd)
    assert again.returncode == 1
    assert "already running" in again.stderr
    assert "revo down" in again.stderr

    status = _revo("status", env=env, cwd=cwd)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"revo up: running (pid {state['pid']}" in status.stdout
    assert re.search(r"^ +echo +running", status.stdout, re.MULTILINE), status.stdout

    listing = _revo("logs", env=env, cwd=cwd)
    assert listing.returncode == 0, listing.stderr
    for name in ("envoy", "gateway", "nats-server", "node", "up"):
        assert re.search(rf"^  {name} +\d", listing.stdout, re.MULTILINE), listing.stdout
    nats_log = _revo("logs", "nats", env=env, cwd=cwd)  # `nats` stands for nats-server
    assert nats_log.returncode == 0
    assert "Server is ready" in nats_log.stdout
    wrong = _revo("logs", "natz", env=env, cwd=cwd)
    assert wrong.returncode == 2
    assert "no log called 'natz'" in wrong.stderr
    assert "nats-server" in wrong.stderr
    assert wrong.stdout == ""

    # follow revo up's own log while `revo down` stops the mesh
    follow = subprocess.Popen([sys.executable, "-m", "mesh", "logs", "-f", "-n", "1", "up"],
                              env=env, cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    try:
        last = _read_until(follow, DETACHED_READY, 15)  # its last line: it follows now
        assert last.startswith(DETACHED_READY), last
        down = _revo("down", env=env, cwd=cwd)
        assert down.returncode == 0, down.stdout + down.stderr
        assert re.search(rf"stopping revo up \(pid {state['pid']}\) and its 4 processes",
                         down.stdout), down.stdout
        assert re.search(r"^stopped in \d+\.\d s$", down.stdout, re.MULTILINE), down.stdout
        followed = _read_until(follow, "stopped in", 15)
        assert followed.startswith("stopping..."), followed
    finally:
        follow.send_signal(signal.SIGINT)
        assert follow.wait(10) == 0
    assert not [pid for pid in pids if _alive(pid)], "revo down left processes behind"
    assert not (cwd / "home/run/up.json").exists()

    nothing = _revo("down", env=env, cwd=cwd)
    assert nothing.returncode == 0
    assert nothing.stdout.strip() == f"nothing running under {cwd / 'home'}"


@pytest.mark.timeout(60)
def test_a_step_that_fails_says_which_and_why(tmp_path: Path) -> None:
    with socket.socket() as taken:  # the configured NATS port is in use
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = _env(tmp_path, REVO_NATS__PORT=str(port))
        up = _revo("up", env=env, cwd=tmp_path, timeout=45)
    assert up.returncode == 1, up.stdout + up.stderr
    assert re.search(r"^✘ nats-server +exited with code 1: .*address already "
                     r"in use.* \d+\.\d s$", up.stdout, re.MULTILINE), up.stdout
    assert "✔ node" not in up.stdout  # nothing after the failed step started
    # stderr says why, with the server's own words
    assert up.stderr.startswith("revo up: nats-server exited with"), up.stderr
    assert "address already in use" in up.stderr, up.stderr
    assert not (tmp_path / "home/run/up.json").exists()


@pytest.mark.timeout(30)
def test_down_kills_what_does_not_stop_and_says_so(tmp_path: Path) -> None:
    # a `revo up` that ignores SIGTERM, with a child of its own, as up.json records them
    stubborn = ("import signal, subprocess, sys, time\n"
                "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
                "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
                "print(child.pid, flush=True)\n"
                "time.sleep(60)\n")
    up = subprocess.Popen([sys.executable, "-c", stubborn], stdout=subprocess.PIPE,
                          text=True, start_new_session=True)
    try:
        assert up.stdout is not None
        child = int(up.stdout.readline())  # both have their SIGTERM ignored by now
        config = load_config(environ={}, read_file=False, home=str(tmp_path / "home"))
        state_file(config).parent.mkdir(parents=True)
        state_file(config).write_text(json.dumps({
            "pid": up.pid, "processes": {"node": child}}))
        out = io.StringIO()
        assert stop_detached(config, out=out, wait_s=0.5) == 1
        assert up.wait(5) == -signal.SIGKILL
        text = out.getvalue()
        assert f"revo up (pid {up.pid}) did not stop within 0.5 s: killing it" in text
        assert f"killed node ({child}) after" in text
        assert not _alive(child)
        assert not state_file(config).exists()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


@pytest.mark.timeout(30)
def test_down_leaves_alone_a_program_that_got_the_recorded_pid(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "30"])  # not revo: up.json outlived its revo up
    try:
        config = load_config(environ={}, read_file=False, home=str(tmp_path / "home"))
        state_file(config).parent.mkdir(parents=True)
        state_file(config).write_text(json.dumps({"pid": other.pid, "processes": {}}))
        out = io.StringIO()
        assert stop_detached(config, out=out) == 0
        assert f"the recorded pid {other.pid} is another program now" in out.getvalue()
        assert other.poll() is None  # not signalled
        assert not state_file(config).exists()
    finally:
        other.kill()
        other.wait()
