"""Shared by the Perfect Recall tests: Milvus backends, vectors, and request helpers."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from revo_engine_recall.v1 import recall_pb2 as pb

DIM = 384
PROJECT = pb.Scope(kind=pb.SCOPE_KIND_PROJECT, id="apollo")
MINE = pb.Scope(kind=pb.SCOPE_KIND_USER)


class MilvusServer:
    """The real Milvus standalone server from the ``milvus`` wheel, on loopback."""

    def __init__(self, base: Path) -> None:
        from milvus import default_server  # type: ignore[import-untyped]

        self.server = default_server
        self.server.set_base_dir(str(base))
        self.server.listen_port = 19530

    def start(self) -> str:
        self.server.start()
        return f"http://127.0.0.1:{self.server.listen_port}"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.server.stop()


@pytest.fixture(scope="session")
def milvus_server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = MilvusServer(tmp_path_factory.mktemp("milvus"))
    try:
        yield server.start()
    finally:
        server.stop()


def collection() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def vectors(count: int, seed: int = 0) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((count, DIM)).astype(np.float32)
    unit: np.ndarray[Any, Any] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return unit


def near(vector: np.ndarray[Any, Any], noise: float, seed: int = 1) -> np.ndarray[Any, Any]:
    """A vector at about cosine 1/sqrt(1 + noise^2) from ``vector``."""
    rng = np.random.default_rng(seed)
    out = vector + noise * rng.standard_normal(DIM).astype(np.float32) / np.sqrt(DIM)
    unit: np.ndarray[Any, Any] = out / np.linalg.norm(out)
    return unit


def memory(text: str, vector: np.ndarray[Any, Any] | None = None, *,
           scope: pb.Scope = PROJECT, **fields: Any) -> pb.MemoryInput:
    item = pb.MemoryInput(scope=scope, text=text, **fields)
    if vector is not None:
        item.vector.extend(vector.tolist())
    return item
