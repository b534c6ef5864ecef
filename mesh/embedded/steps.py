"""What ``revo up`` is doing, a step at a time.

Each step prints one line when it ends: a mark, its name, what it gave (an address, a
reason) and its seconds::

    ✔ nats-server    nats://127.0.0.1:4222                      0.3 s
    - tritonserver   skipped: off (models.triton_embedded = false)
    ✘ node           exited with code 1 (see ~/.revo/logs/node.log)  1.2 s

On a terminal the steps still running show on a line of their own that a spinner redraws
with their seconds (the ``\\r`` line is replaced by each step's line as it ends). Anywhere
else (a pipe, a CI log, ``revo up --detach``'s log) only the finished lines are written,
plain, so logs hold no control characters. Output that cannot encode the marks gets
``ok`` / ``FAIL`` / ``skip``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["Step", "StepReporter"]

_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_NAME_WIDTH = 14
_DETAIL_WIDTH = 42


class Step:
    """One step under way; end it with :meth:`ok`, :meth:`skip` or :meth:`fail` (the
    :meth:`StepReporter.step` context ends it for you)."""

    def __init__(self, reporter: StepReporter, name: str) -> None:
        self.reporter = reporter
        self.name = name
        self.began = time.monotonic()
        self.outcome = ""
        """'' while running, else ``ok``, ``skip`` or ``fail``."""
        self.detail = ""
        """What the step gave: an address, a reason."""

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.began

    def ok(self, detail: str = "") -> None:
        self._end("ok", detail or self.detail)

    def skip(self, reason: str) -> None:
        self._end("skip", reason)

    def fail(self, reason: str) -> None:
        self._end("fail", reason)

    def _end(self, outcome: str, detail: str) -> None:
        if self.outcome:
            return
        self.outcome, self.detail = outcome, detail
        self.reporter._ended(self)


class StepReporter:
    """Writes each step's line to ``out`` (nothing when ``out`` is None: a launcher run by a
    test or a benchmark). ``tty``: spinner and redrawn line; default: whether ``out`` is
    a terminal (and ``TERM`` is not ``dumb``)."""

    def __init__(self, out: TextIO | None = None, *, tty: bool | None = None) -> None:
        self.out = out
        if tty is None:
            tty = (out is not None and out.isatty()
                   and os.environ.get("TERM", "") != "dumb")
        self.tty = tty
        self.marks = _marks(out)
        self.steps: list[Step] = []
        self._running: list[Step] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._spinner: threading.Thread | None = None
        self._frame = 0

    # -- steps ---------------------------------------------------------------------------

    def begin(self, name: str) -> Step:
        """A step that starts now (several may run at once)."""
        step = Step(self, name)
        with self._lock:
            self.steps.append(step)
            self._running.append(step)
        self._spin()
        return step

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        """A step for the duration of the block: ``ok`` when it ends (with ``step.detail``)
        unless the block ended it; ``fail`` with the exception's first line when it raises
        (and the exception goes on)."""
        step = self.begin(name)
        try:
            yield step
        except BaseException as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(
                exc).__name__
            reason = reason.removeprefix(f"{name} ")  # "nats-server exited ..." on its line
            step.fail(reason if not isinstance(exc, KeyboardInterrupt) else "interrupted")
            raise
        step.ok()

    def skip(self, name: str, reason: str) -> None:
        """A step that does not run, and why."""
        self.begin(name).skip(reason)

    def note(self, text: str) -> None:
        """A line of its own among the steps (what a long step is doing)."""
        self._write_line(f"  {text}")

    def line(self, text: str) -> None:
        """A line as it is (the summary)."""
        self._write_line(text)

    def close(self) -> None:
        """Stop the spinner (the steps still running are left as they are)."""
        self._stop.set()
        spinner = self._spinner
        if spinner is not None and spinner is not threading.current_thread():
            spinner.join(timeout=1.0)
        self._spinner = None
        self._clear()

    # -- output --------------------------------------------------------------------------

    def _ended(self, step: Step) -> None:
        with self._lock:
            if step in self._running:
                self._running.remove(step)
        mark = self.marks[step.outcome]
        detail = f"skipped: {step.detail}" if step.outcome == "skip" else step.detail
        seconds = "" if step.outcome == "skip" else f"{step.seconds:5.1f} s"
        text = f"{mark} {step.name:<{_NAME_WIDTH}} {detail:<{_DETAIL_WIDTH}} {seconds}"
        self._write_line(text.rstrip())

    def _write_line(self, text: str) -> None:
        if self.out is None:
            return
        with self._lock:
            if self.tty:
                self.out.write("\r\x1b[K")
            self.out.write(text + "\n")
            self._draw()
            self.out.flush()

    def _draw(self) -> None:
        """The running steps' line (on a terminal; the lock is held)."""
        if not self.tty or not self._running or self.out is None:
            return
        frame = _SPINNER[self._frame % len(_SPINNER)] if self.marks["ok"] == "✔" else "*"
        names = ", ".join(step.name for step in self._running)
        seconds = time.monotonic() - min(step.began for step in self._running)
        self.out.write(f"\r\x1b[K{frame} {names}  {seconds:.0f} s")

    def _clear(self) -> None:
        if self.out is None or not self.tty:
            return
        with self._lock:
            self.out.write("\r\x1b[K")
            self.out.flush()

    def _spin(self) -> None:
        if not self.tty or self.out is None or self._spinner is not None:
            return
        self._stop.clear()
        self._spinner = threading.Thread(target=self._animate, name="revo-up-steps",
                                         daemon=True)
        self._spinner.start()

    def _animate(self) -> None:
        assert self.out is not None
        while not self._stop.wait(0.1):
            with self._lock:
                if not self._running:  # between steps: leave the terminal alone
                    continue
                self._frame += 1
                self._draw()
                self.out.flush()


def _marks(out: TextIO | None) -> dict[str, str]:
    """✔ ✘ - where ``out`` can encode them, words otherwise."""
    encoding = getattr(out, "encoding", None) or sys.getdefaultencoding()
    try:
        "✔✘⠋".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return {"ok": "ok  ", "fail": "FAIL", "skip": "skip"}
    return {"ok": "✔", "fail": "✘", "skip": "-"}
