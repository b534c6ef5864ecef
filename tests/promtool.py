"""Where tests find promtool (Prometheus's checker): ``./dev test`` installs it
(``promtool_ready``); a test that needs it fails naming it when it is missing."""

from __future__ import annotations

import shutil

import pytest

__all__ = ["promtool"]


def promtool() -> str:
    """The path of ``promtool``, or fail the test saying how to install it."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: ./dev test installs it (promtool_ready), or "
                    "`apt-get install prometheus` (Debian/Ubuntu)")
    return path
