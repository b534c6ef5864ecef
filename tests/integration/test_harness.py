"""The ``mesh_harness`` fixture itself: what its teardown reports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

INNER = '''
async def test_a_node_that_fails_to_stop(mesh_harness):
    mesh = await mesh_harness(plugins={"only": ["echo"]})
    node = mesh.nodes[0]
    stop = node.stop

    async def failing_stop(*args, **kwargs):
        await stop(*args, **kwargs)
        raise RuntimeError("node stop failed on purpose")

    node.stop = failing_stop
'''


def test_a_nodes_shutdown_error_fails_the_test(tmp_path: Path) -> None:
    """A node that raises while stopping is reported as an error of the test that started
    it (after the rest of the mesh is stopped), not swallowed by the teardown."""
    (tmp_path / "test_inner.py").write_text(INNER)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "test_inner.py", "-q", "-p", "no:cacheprovider",
         "-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function"],
        cwd=tmp_path, capture_output=True, text=True, timeout=110, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "1 passed, 1 error" in output, output
    assert "RuntimeError: node stop failed on purpose" in output, output
