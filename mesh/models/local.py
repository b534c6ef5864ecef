"""Local models on Triton, from the mesh's event loop (``tritonclient.grpc.aio``).

:class:`TritonEmbedder` sends texts to the ``embedder`` model (one request per call;
Triton's dynamic batching groups concurrent calls) and reports readiness for the router's
health. Texts are sent in slices of at most the model's ``max_batch_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mesh.errors import InvalidArgument, Unavailable

__all__ = ["TritonEmbedder"]

_MAX_BATCH = 64  # triton_models/embedder/config.pbtxt max_batch_size


class TritonEmbedder:
    def __init__(self, url: str, model: str = "embedder", timeout_s: float = 30.0) -> None:
        try:
            from tritonclient.grpc import aio
        except ImportError as exc:  # the models extra is not installed
            raise Unavailable("local models need the models extra: "
                              "pip install 'revo-mesh[models]'") from exc
        self._aio: Any = aio
        self._client: Any = aio.InferenceServerClient(url)
        self.url = url
        self.model = model
        self._timeout_s = timeout_s

    async def close(self) -> None:
        await self._client.close()

    async def ready(self) -> bool:
        """Whether Triton answers and has the model loaded."""
        try:
            return bool(await self._client.is_model_ready(self.model))
        except Exception:
            return False

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit-length vector per text."""
        if not texts:
            raise InvalidArgument("Embed needs at least one text")
        if any(not t.strip() for t in texts):
            raise InvalidArgument("Embed got an empty text; send text with words in it")
        vectors: list[list[float]] = []
        for start in range(0, len(texts), _MAX_BATCH):
            chunk = texts[start:start + _MAX_BATCH]
            text = self._aio.InferInput("TEXT", [len(chunk), 1], "BYTES")
            text.set_data_from_numpy(np.array([[t.encode()] for t in chunk], dtype=np.object_))
            try:
                result = await self._client.infer(self.model, [text],
                                                  client_timeout=self._timeout_s)
            except Exception as exc:
                raise Unavailable(f"local embedder at {self.url} failed: {exc}") from exc
            vectors.extend(np.asarray(result.as_numpy("EMBEDDING"), dtype=np.float32).tolist())
        return vectors
