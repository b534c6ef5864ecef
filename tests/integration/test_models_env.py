"""Local models do not depend on the mesh's environment: NumPy 2 installed beside the mesh
(what a plugin's install can do) leaves the embedder working.

The mesh's own venv is shared by every test, so it is not changed: an overlay venv plays
"the mesh's environment after a plugin pulled NumPy 2". Its own site-packages holds NumPy 2
and comes first; the mesh's venv follows (a ``.pth`` adds it, with its editable installs).
From that environment the test starts tritonserver as the mesh does
(:class:`mesh.embedded.triton.TritonServer`) and embeds through the real ``embedder``.
Before the models had an environment of their own, the stub used the mesh's NumPy and
crashed on every request while the model stayed ready.
"""

from __future__ import annotations

import json
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2] / "triton_models"

_EMBED = """
import asyncio, json, sys
from pathlib import Path
import numpy
from mesh.embedded.triton import TritonServer
from mesh.models.local import TritonEmbedder

async def embed(url):
    embedder = TritonEmbedder(url)
    try:
        return await embedder.embed(["the mesh runs NumPy 2; the models do not"])
    finally:
        await embedder.close()

repository, work, env = map(Path, sys.argv[1:4])
server = TritonServer(repository, work, models=["embedder"], python_env=env)
server.start()
try:
    vectors = asyncio.run(embed(server.grpc_url))
finally:
    server.stop()
print(json.dumps({"numpy": numpy.__version__, "vectors": vectors}))
"""


def _mesh_with_numpy_2(root: Path) -> Path:
    """A venv that sees NumPy 2 first, then everything the mesh's venv has; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True,
                   timeout=120)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    mesh_site = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib) / "zz_mesh_venv.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({p!r})" for p in mesh_site) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                    "--quiet", "--disable-pip-version-check", "--ignore-installed",
                    "--no-deps", "numpy>=2"], check=True, timeout=600)
    return python


@pytest.mark.timeout(300)
def test_numpy_2_beside_the_mesh_leaves_the_embedder_working(
        tmp_path: Path, models_env: Path) -> None:
    python = _mesh_with_numpy_2(tmp_path / "mesh-env")

    done = subprocess.run(
        [str(python), "-c", _EMBED, str(REPOSITORY), str(tmp_path / "triton"), str(models_env)],
        capture_output=True, text=True, timeout=240)

    log = tmp_path / "triton" / "tritonserver.log"
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:] + (
        log.read_text()[-3000:] if log.exists() else "")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert int(result["numpy"].split(".")[0]) >= 2  # the mesh's side really had NumPy 2
    [vector] = result["vectors"]
    assert len(vector) == 384
    assert sum(x * x for x in vector) == pytest.approx(1.0, abs=1e-4)
