from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.embedded.triton import TritonServer

TRITON_MODELS = Path(__file__).resolve().parents[2] / "triton_models"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A real Triton serving the embedder, one per test module that asks for it (a module
    needing other models defines its own ``triton``)."""
    server = TritonServer(TRITON_MODELS, tmp_path_factory.mktemp("triton"), models=["embedder"])
    server.start()
    try:
        yield server
    finally:
        server.stop()
