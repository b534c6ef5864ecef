"""The contracts' guards: ``buf.yaml`` covers every proto in the repository, and the
``buf breaking`` step of ``./dev test`` (``./dev breaking``) fails on a breaking change.

The breaking test runs the dev script itself on a copy of the proto trees and the
committed baseline image (``proto/baseline/v1.binpb``): as committed it passes, with a
field removed it fails, and without the baseline it says how to make one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
BUF = Path(sys.executable).parent / "buf"
ECHO_PROTO = Path("plugins/echo/proto/revo/echo/v1/echo.proto")
BASELINE = Path("proto/baseline/v1.binpb")

pytestmark = pytest.mark.skipif(not BUF.exists(), reason=f"buf is not installed at {BUF}")


def _proto_roots() -> list[Path]:
    """Every folder holding a proto tree (``.../proto``), relative to the repository."""
    # environments (.venv, the models' .venv-models), .git and npm's folders hold other
    # projects' protos
    found = {path.relative_to(ROOT) for path in ROOT.rglob("*.proto")
             if not any(part.startswith(".") or part == "node_modules"
                        for part in path.relative_to(ROOT).parts)}
    roots = set()
    for path in found:
        parts = path.parts
        roots.add(Path(*parts[: parts.index("proto") + 1]))
    return sorted(roots)


def test_buf_yaml_covers_every_proto_in_the_repository() -> None:
    listed = re.findall(r"^  - path: (\S+)$", (ROOT / "buf.yaml").read_text(), re.MULTILINE)
    modules = sorted(Path(path) for path in listed)

    assert modules == _proto_roots()


def _dev(repo: Path, command: str = "breaking") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BUF.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", str(repo / "dev"), command], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=120)


def _dev_breaking(repo: Path) -> subprocess.CompletedProcess[str]:
    return _dev(repo, "breaking")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the dev script, buf.yaml, every proto tree and the baseline image."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dev", "buf.yaml"):
        shutil.copy2(ROOT / name, repo / name)
    for root in _proto_roots():
        shutil.copytree(ROOT / root, repo / root)
    assert (repo / BASELINE).is_file(), f"{BASELINE} is not committed"
    return repo


def test_dev_breaking_passes_when_nothing_changed(repo: Path) -> None:
    result = _dev_breaking(repo)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"against {BASELINE}" in result.stdout


def test_dev_breaking_fails_when_a_field_is_removed(repo: Path) -> None:
    proto = repo / ECHO_PROTO
    text = proto.read_text()
    field = "  uint32 delay_ms = 2;\n"
    assert field in text, "the test's field is gone from echo.proto: pick another"
    proto.write_text(text.replace(field, ""))

    result = _dev_breaking(repo)

    assert result.returncode != 0
    assert "delay_ms" in result.stdout + result.stderr


def test_dev_breaking_fails_and_says_what_to_do_without_a_baseline(repo: Path) -> None:
    (repo / BASELINE).unlink()

    result = _dev_breaking(repo)

    assert result.returncode != 0
    assert "./dev baseline" in result.stderr


def test_a_deliberate_re_baseline_accepts_the_change(repo: Path) -> None:
    proto = repo / ECHO_PROTO
    proto.write_text(proto.read_text().replace("  uint32 delay_ms = 2;\n", ""))
    assert _dev_breaking(repo).returncode != 0

    made = _dev(repo, "baseline")

    assert made.returncode == 0, made.stdout + made.stderr
    assert _dev_breaking(repo).returncode == 0
