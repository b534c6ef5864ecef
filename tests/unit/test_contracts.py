"""The contracts' guards: ``buf.yaml`` covers every proto in the repository, and the
``buf breaking`` step of ``./dev test`` (``./dev breaking``) fails on a breaking change.

The breaking test runs the dev script itself on a copy of the proto tree in a git
repository of its own: main holds the protos as committed, the work tree removes a field.
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


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=revo test", "-c", "user.email=test@revo.dev",
                    "-c", "init.defaultBranch=main", *args],
                   cwd=repo, check=True, capture_output=True)


def _dev_breaking(repo: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BUF.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", str(repo / "dev"), "breaking"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with the dev script, buf.yaml and every proto tree, on main."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dev", "buf.yaml"):
        shutil.copy2(ROOT / name, repo / name)
    for root in _proto_roots():
        shutil.copytree(ROOT / root, repo / root)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "the protos as on main")
    return repo


def test_dev_breaking_passes_when_nothing_changed(repo: Path) -> None:
    result = _dev_breaking(repo)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "against main" in result.stdout


def test_dev_breaking_fails_when_a_field_is_removed(repo: Path) -> None:
    proto = repo / ECHO_PROTO
    text = proto.read_text()
    field = "  uint32 delay_ms = 2;\n"
    assert field in text, "the test's field is gone from echo.proto: pick another"
    proto.write_text(text.replace(field, ""))

    result = _dev_breaking(repo)

    assert result.returncode != 0
    assert "delay_ms" in result.stdout + result.stderr


def test_dev_breaking_says_why_it_skips_without_a_main_branch(repo: Path) -> None:
    _git(repo, "branch", "-m", "main", "feature")

    result = _dev_breaking(repo)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipped: no origin/main or main branch" in result.stdout
