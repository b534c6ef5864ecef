from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.embedded import models_env as models_environment
from mesh.embedded.triton import TritonServer

TRITON_MODELS = Path(__file__).resolve().parents[2] / "triton_models"
MODELS_ENV = Path(__file__).resolve().parents[2] / models_environment.DEFAULT_PATH


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def models_env() -> Path:
    """The local models' own venv, from triton_models/requirements.txt (``./dev`` makes it;
    made here when missing or out of date, which takes half a minute)."""
    return models_environment.ensure(MODELS_ENV, TRITON_MODELS / "requirements.txt")


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory, models_env: Path) -> Iterator[TritonServer]:
    """A real Triton serving the embedder, one per test module that asks for it (a module
    needing other models defines its own ``triton``)."""
    server = TritonServer(TRITON_MODELS, tmp_path_factory.mktemp("triton"), models=["embedder"],
                          python_env=models_env)
    server.start()
    try:
        yield server
    finally:
        server.stop()
