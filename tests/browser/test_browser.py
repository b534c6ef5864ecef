"""A real browser calls the mesh: headless Chromium loads a page built with
``@connectrpc/connect-web``'s gRPC-web transport, from a static server on another origin
than Envoy's, and the page signs in, makes a unary call, reads a server stream to the end,
and reads a failed call's code and details, through a real Envoy in front of a real gateway.

Needs Debian's ``chromium`` and this folder's npm packages (``npm ci``); ``./dev test``
installs both. The TypeScript is generated from ``proto/`` by ``buf generate`` with the
committed ``buf.gen.yaml``, then bundled with esbuild, on every run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from google.rpc.error_details_pb2 import BadRequest

from mesh.testing import MeshHarness
from mesh.testing.envoy import running_envoy
from tests.integration.test_auth import AUTH, PASSWORD, add_user, remove_users_since

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
NODE_MODULES = HERE / "node_modules"


def _tool(name: str) -> str:
    found = shutil.which(name, path=f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert found, f"{name} is not installed; ./dev test installs it"
    return found


def _run(argv: list[str], cwd: Path) -> None:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}"


@pytest.fixture(scope="module")
def page_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """index.html and page.js: the TypeScript stubs made by `buf generate`, the page bundled
    with esbuild."""
    missing = [what for what, present in (
        (f"{CHROMIUM} (apt-get install chromium)", CHROMIUM.exists()),
        ("tests/browser/node_modules (npm ci in tests/browser)", NODE_MODULES.is_dir()))
        if not present]
    assert not missing, f"missing {', '.join(missing)}; ./dev test installs them"
    _run([_tool("buf"), "generate"], ROOT)
    out = tmp_path_factory.mktemp("page")
    _run([str(NODE_MODULES / ".bin" / "esbuild"), "src/page.ts", "--bundle", "--format=esm",
          "--target=es2022", "--log-level=warning", f"--outfile={out / 'page.js'}"], HERE)
    shutil.copy(HERE / "src" / "index.html", out / "index.html")
    return out


@contextlib.contextmanager
def static_server(folder: Path) -> Iterator[str]:
    """The page's own origin: a plain static server on 127.0.0.1 (not Envoy's port)."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


async def _open_in_chromium(url: str) -> dict[str, Any]:
    """What the page reported, from headless Chromium driven by playwright-core."""
    driver = await asyncio.create_subprocess_exec(
        "node", str(HERE / "drive.mjs"), url, cwd=HERE, env=dict(os.environ, CHROMIUM=str(
            CHROMIUM)), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(driver.communicate(), timeout=90)
    except TimeoutError:
        driver.kill()
        await driver.wait()
        raise
    assert driver.returncode == 0, f"the browser driver failed:\n{err.decode()}"
    report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    assert "error" not in report, f"{report}\n{err.decode()}"
    return report


@pytest.fixture
async def mesh(mesh_harness) -> Any:
    since = time.time()
    harness: MeshHarness = await mesh_harness(plugins={"only": ["echo"]}, auth=AUTH)
    yield harness
    await remove_users_since(harness, since)


async def test_a_browser_signs_in_calls_streams_and_reads_errors_through_envoy(
        mesh: MeshHarness, page_dir: Path) -> None:
    user = await add_user(mesh, "developer", "browser")
    async with running_envoy(mesh) as envoy:
        with static_server(page_dir) as origin:
            assert origin != envoy.endpoint  # another origin: CORS decides, as in real use
            query = urlencode({"envoy": envoy.endpoint, "user": user, "password": PASSWORD})
            report = await _open_in_chromium(f"{origin}/index.html?{query}")

    # a call without a token: the page reads gRPC's code and message
    assert report["unauthenticated"]["code"] == "Unauthenticated"
    assert report["unauthenticated"]["message"]
    # signed in: the gateway saw the user
    assert report["echo"] == {"payload": "hello from a browser", "caller": user,
                              "role": "developer"}
    # the whole server stream
    assert report["count"] == [0, 1, 2, 3, 4]
    # a refused call: code, message, and the google.rpc.BadRequest detail the engine sent
    invalid = report["invalid"]
    assert invalid["code"] == "InvalidArgument"
    assert "delay_ms" in invalid["message"]
    assert [d["type"] for d in invalid["details"]] == ["google.rpc.BadRequest"]
    bad_request = BadRequest.FromString(base64.b64decode(invalid["details"][0]["value"]))
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("delay_ms", "must be at most 60000")]
