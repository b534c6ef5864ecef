"""The docs' runnable code blocks run, as written, against a real mesh.

A fenced block whose info string has the word ``runnable`` (```` ```python runnable ````,
```` ```sh runnable ````) claims it works when pasted: each one runs here from the
repository root, Python blocks with this interpreter and shell blocks with ``bash -e``. They
run against a mesh started for this module (nats-server and ``revo gateway --colocate``
with the echo engine, auth on, an ``admin`` whose password is in
``<home>/secrets/admin.password`` as under ``revo up``), found the way the docs tell a
reader: ``REVO_HOME``, ``REVO_NATS__URL`` and ``REVO_GATEWAY__ADDRESS``, read by
``load_config()`` and by every ``revo`` command. Mark only blocks that are cheap (this
module's whole budget is about 40 s) and need nothing beyond that mesh.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.embedded.nats_server import NatsServer, free_port
from mesh.embedded.processes import spawn, stop_process

ROOT = Path(__file__).resolve().parents[2]
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
MARKER = "runnable"
FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
RUNNERS = {"python": [sys.executable, "-"], "sh": ["bash", "-e", "-o", "pipefail", "-s"],
           "bash": ["bash", "-e", "-o", "pipefail", "-s"]}
BLOCK_TIMEOUT_S = 60


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def runnable_blocks(pages: tuple[Path, ...] = PAGES) -> list[Block]:
    """Every fenced block marked runnable in ``pages``, with the line its fence opens on."""
    found = []
    for page in pages:
        lines = page.read_text().splitlines()
        index = 0
        while index < len(lines):
            opening = FENCE.match(lines[index])
            index += 1
            if opening is None:
                continue
            fence, words = opening["fence"], opening["info"].split()
            start = index
            while index < len(lines) and not lines[index].startswith(fence):
                index += 1
            if MARKER in words[1:]:
                found.append(Block(page, start, words[0], "\n".join(lines[start:index]) + "\n"))
            index += 1
    return found


BLOCKS = runnable_blocks()


def test_the_docs_mark_runnable_blocks() -> None:
    """The marker must not silently vanish: with no marked block, nothing here would run."""
    assert BLOCKS, (f"no code block in README.md or docs/*.md is marked '{MARKER}' "
                    "(```python runnable); the docs' examples would go unchecked")
    assert {b.language for b in BLOCKS} >= {"python", "sh"}, (
        f"expected both Python and shell blocks marked runnable, found "
        f"{sorted({b.language for b in BLOCKS})}")


@pytest.fixture(scope="module")
def docs_mesh(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[dict[str, str]]:
    """A mesh like ``revo up``'s, minus Triton and Envoy; the variables that find it."""
    home = tmp_path_factory.mktemp("docs-home")
    password_file = home / "secrets" / "admin.password"
    password_file.parent.mkdir(mode=0o700)
    password_file.write_text(secrets.token_urlsafe(16) + "\n")
    address = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVO_")}
    mesh_env = {"REVO_HOME": str(home), "REVO_NATS__URL": nats_server.url,
                "REVO_GATEWAY__ADDRESS": address}
    gateway_env = {**env, **mesh_env, "REVO_ADMIN_PASSWORD_FILE": str(password_file),
                   "REVO_PLUGINS__ONLY": "echo", "REVO_GATEWAY__HTTP_ADDRESS": "",
                   "REVO_GATEWAY__METRICS_ADDRESS": "", "REVO_NODE__METRICS_ADDRESS": ""}
    log = home / "gateway.log"
    process = spawn([sys.executable, "-m", "mesh", "gateway", "--colocate"], log_file=log,
                    env=gateway_env, cwd=ROOT)
    try:
        with grpc.insecure_channel(address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="revo.echo.v1.EchoService"),
                timeout=60, wait_for_ready=True)
            try:
                serving = any(reply.status == health_pb2.HealthCheckResponse.SERVING
                              for reply in watch)
            except grpc.RpcError as exc:
                serving = False
                why = f"{exc.code()}: {exc.details()}"
            else:
                why = "the health stream ended"
            finally:
                watch.cancel()
        assert serving, (f"the docs' mesh did not serve EchoService ({why}); gateway log:\n"
                         + log.read_text()[-3000:])
        yield {**env, **mesh_env}
    finally:
        stop_process(process, 15.0)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_a_runnable_block_runs(block: Block, docs_mesh: dict[str, str]) -> None:
    runner = RUNNERS.get(block.language)
    assert runner is not None, (f"{block.where}: a block marked {MARKER} must be one of "
                                f"{sorted(RUNNERS)}, not {block.language!r}")
    done = subprocess.run(runner, input=block.code, text=True, capture_output=True,
                          cwd=ROOT, env=docs_mesh, timeout=BLOCK_TIMEOUT_S, check=False)
    assert done.returncode == 0, (
        f"{block.where}: the {block.language} block marked {MARKER} exited "
        f"{done.returncode}\n--- stdout\n{done.stdout[-2000:]}\n--- stderr\n"
        f"{done.stderr[-3000:]}")


def test_the_configuration_tables_are_what_their_script_prints() -> None:
    """docs/configuration.md's key tables come from the script on that page, run on the
    code as it is: a key, default, bound or description changed in mesh/config.py and not
    in the page fails here."""
    page = ROOT / "docs" / "configuration.md"
    script = next((b for b in BLOCKS if b.page == page and b.language == "python"), None)
    assert script is not None, "docs/configuration.md's table script is not marked runnable"
    done = subprocess.run([sys.executable, "-"], input=script.code, text=True,
                          capture_output=True, cwd=ROOT, timeout=BLOCK_TIMEOUT_S, check=True)
    printed = set(done.stdout.splitlines())
    shown = page.read_text().splitlines()
    missing = [row for row in done.stdout.splitlines() if row and row not in shown]
    gone = [row for row in shown if _KEY_ROW.match(row) and row not in printed]
    advice = ("docs/configuration.md's key tables differ from mesh/config.py; run the script "
              "under 'Regenerating the key table' and paste its output.")
    assert not missing, advice + " Rows it prints that the page lacks:\n" + "\n".join(missing)
    assert not gone, advice + " Rows of the page it does not print:\n" + "\n".join(gone)


_KEY_ROW = re.compile(r"^\| `[^`]+` \| .* \| `REVO_[A-Z0-9_<>]+` \| ")
