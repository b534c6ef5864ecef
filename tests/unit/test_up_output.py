"""What `revo up` writes: its step lines (plain off a terminal, redrawn on one) and its
children's logs, rotated by size."""

from __future__ import annotations

import asyncio
import io
import re
import sys
from pathlib import Path

import pytest

from mesh.embedded.processes import LogRotation, RotatingLog, rotate_file, spawn
from mesh.embedded.steps import StepReporter
from mesh.testing import wait_for


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_steps_off_a_terminal_are_plain_lines_with_their_seconds() -> None:
    out = io.StringIO()
    steps = StepReporter(out)
    with steps.step("nats-server") as step:
        step.detail = "nats://127.0.0.1:4222"
    steps.skip("tritonserver", "off (models.triton_embedded = false)")
    with pytest.raises(RuntimeError), steps.step("node"):
        raise RuntimeError("node exited with code 3\nits last lines: ...")
    steps.close()
    lines = out.getvalue().splitlines()
    assert re.fullmatch(r"✔ nats-server +nats://127\.0\.0\.1:4222 +\d+\.\d s", lines[0])
    assert lines[1] == ("- tritonserver   skipped: off (models.triton_embedded = false)")
    # the first line of the failure, without the step's name again
    assert re.fullmatch(r"✘ node +exited with code 3 +\d+\.\d s", lines[2]), lines[2]
    assert len(lines) == 3
    assert "\r" not in out.getvalue()
    assert "\x1b" not in out.getvalue()


def test_steps_on_a_terminal_redraw_the_running_line() -> None:
    out = _Terminal()
    steps = StepReporter(out)
    assert steps.tty
    node, gateway = steps.begin("node"), steps.begin("gateway")
    steps.note("waiting for the node")
    gateway.ok("127.0.0.1:50051")
    node.ok("node-1")
    steps.close()
    text = out.getvalue()
    assert "\r\x1b[K" in text  # the spinner's line is cleared before each step's line
    assert "node, gateway" in text  # the running steps, together
    finished = [line.split("\r\x1b[K")[-1] for line in text.split("\n")]
    assert finished[0] == "  waiting for the node"
    assert finished[1].startswith("✔ gateway        127.0.0.1:50051")
    assert finished[2].startswith("✔ node           node-1")


def test_marks_are_words_where_the_output_cannot_encode_them() -> None:
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii")
    steps = StepReporter(out)
    steps.begin("envoy").fail("not installed")
    steps.close()
    out.flush()
    assert raw.getvalue().decode().startswith("FAIL envoy ")


def test_a_log_rotates_by_size_keeping_its_backups(tmp_path: Path) -> None:
    path = tmp_path / "node.log"
    log = RotatingLog(path, LogRotation(max_bytes=100, backups=2))
    for i in range(10):
        log.write(f"line {i} ".encode() + b"x" * 40 + b"\n")  # 48 bytes: two per file
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.log", "node.log.1",
                                                         "node.log.2"]
    assert path.read_text().splitlines()[0].startswith("line 8 ")  # the newest
    assert (tmp_path / "node.log.1").read_text().startswith("line 6 ")
    assert (tmp_path / "node.log.2").read_text().startswith("line 4 ")
    assert all(p.stat().st_size <= 100 for p in tmp_path.iterdir())


def test_a_childs_output_goes_through_the_rotating_log(tmp_path: Path) -> None:
    path = tmp_path / "child.log"
    path.write_bytes(b"from before\n")
    child = spawn([sys.executable, "-c",
                   "import sys\nfor i in range(200): print(f'{i:04d}' + 'y' * 45)\n"
                   "sys.stdout.flush(); print('done', file=sys.stderr)"],
                  log_file=path, rotation=LogRotation(max_bytes=1000, backups=3))
    assert child.wait(30) == 0
    # the thread that copies the child's output may still be writing its end
    asyncio.run(wait_for(lambda: path.read_text().endswith("done\n"), 10,
                         "the child's last line"))
    files = sorted(tmp_path.iterdir())
    assert [p.name for p in files] == ["child.log", "child.log.1", "child.log.2",
                                       "child.log.3"]
    # the newest lines are in child.log, stderr too; older files were dropped past 3
    assert path.read_text().splitlines()[-2].startswith("0199")
    assert "from before" not in "".join(p.read_text() for p in files)
    assert all(p.stat().st_size <= 1000 for p in files)
    kept = [line for p in reversed(files) for line in p.read_text().splitlines()]
    assert [int(line[:4]) for line in kept[:-1]] == list(range(200 - len(kept) + 1, 200))


def test_rotate_file_shifts_and_drops_the_oldest(tmp_path: Path) -> None:
    path = tmp_path / "up.log"
    for text in ("a", "b", "c"):
        path.write_text(text)
        rotate_file(path, 2)
    assert not path.exists()
    assert (tmp_path / "up.log.1").read_text() == "c"
    assert (tmp_path / "up.log.2").read_text() == "b"
    assert not (tmp_path / "up.log.3").exists()
