"""Triton Python-backend model: a Hugging Face causal LM, streaming (decoupled).

Inputs ``messages`` (JSON list of ``{role, content}``) and optional ``sampling_parameters``
(JSON: ``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``). One response per text
delta (``text_output``), then a final response (flag ``COMPLETE_FINAL``) with
``num_input_tokens``, ``num_output_tokens`` and ``finish_reason``. Bad input gets an
``INVALID_ARG`` error response whose message starts with ``invalid input:``.

The checkpoint directory comes from the model config parameter ``checkpoint`` (set by a
load-time config override, see ``mesh.embedded.triton``), else ``GENERATOR_CHECKPOINT``.
Each request runs in its own thread (``execute`` returns at once), so concurrent streams
progress together, at most ``max_concurrent`` (a config parameter, default 4) generating at
once while the others wait; a request the client cancels stops before its next token.
"""

from __future__ import annotations

import os
import site
import sys


def _environment_first() -> None:
    """Put the serving environment's site-packages first on sys.path (the backend stub
    ignores PYTHONPATH; see the embedder's model.py), and this folder after them."""
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

import json  # noqa: E402
import threading  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from revo_generation import (  # noqa: E402
    BadRequest,
    Final,
    generate,
    parse_messages,
    parse_sampling,
    render_prompt,
)

CHECKPOINT_ENV = "GENERATOR_CHECKPOINT"
INVALID = "invalid input: "
"""Prefix of every bad-input message (streamed errors reach the client without a code)."""


def _parameter(config: dict[str, Any], key: str) -> str:
    value = config.get("parameters", {}).get(key, {})
    return str(value.get("string_value", "")) if isinstance(value, dict) else ""


def _dtype(dtype: Any) -> dict[str, Any]:
    """``from_pretrained``'s dtype argument: ``dtype`` since transformers 4.56, earlier
    ``torch_dtype`` (production images may carry an older transformers)."""
    import transformers
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: dtype}


def _text(value: str) -> Any:
    return np.array([value.encode("utf-8")], dtype=np.object_)


class TritonPythonModel:
    """Triton's Python-backend entry points: initialize, execute, finalize."""

    def initialize(self, args: dict[str, str]) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException(
                "the generator streams: its config needs model_transaction_policy "
                "{ decoupled: true }")
        checkpoint = _parameter(config, "checkpoint") or os.environ.get(CHECKPOINT_ENV, "")
        if not checkpoint:
            raise pb_utils.TritonModelException(
                "no checkpoint: load the generator with a config override of parameter "
                f"'checkpoint' (revo: models.generator_checkpoint) or set {CHECKPOINT_ENV}")
        if not os.path.isfile(os.path.join(checkpoint, "config.json")):
            raise pb_utils.TritonModelException(
                f"checkpoint {checkpoint} is not a Hugging Face checkpoint directory "
                "(no config.json)")
        self.default_max_tokens = int(_parameter(config, "default_max_tokens") or 256)
        gpu = args.get("model_instance_kind") == "GPU" and torch.cuda.is_available()
        if gpu:
            self.device = torch.device(f"cuda:{args.get('model_instance_device_id', '0')}")
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            self.device, dtype = torch.device("cpu"), torch.float32
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
            self.model = AutoModelForCausalLM.from_pretrained(checkpoint, **_dtype(dtype))
        except Exception as error:  # what transformers raises varies with what is broken
            raise pb_utils.TritonModelException(
                f"checkpoint {checkpoint} did not load as a causal language model with its "
                f"tokenizer: {type(error).__name__}: {error}") from error
        self.model.to(self.device).eval()
        self.context_window = getattr(self.model.config, "max_position_embeddings", None)
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        # streams generating at once (each holds its own KV cache); the rest wait their turn
        self._running = threading.BoundedSemaphore(
            max(1, int(_parameter(config, "max_concurrent") or 4)))
        self._stopping = threading.Event()
        pb_utils.Logger.log_info(
            f"generator: {checkpoint} on {self.device} ({dtype}), "
            f"{sum(p.numel() for p in self.model.parameters())} parameters")

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            thread = threading.Thread(target=self._serve, args=(request,), daemon=True)
            with self._lock:
                self._threads.add(thread)
            thread.start()
        return None

    def _serve(self, request: Any) -> None:
        sender = request.get_response_sender()
        try:
            while not self._running.acquire(timeout=0.1):
                if self._stopping.is_set() or request.is_cancelled():
                    sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                        "cancelled", pb_utils.TritonError.CANCELLED)),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    return
            try:
                self._stream(request, sender)
            finally:
                self._running.release()
        except BadRequest as error:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                INVALID + str(error), pb_utils.TritonError.INVALID_ARG)),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as error:  # a bug or the device failing: the stream must still end
            pb_utils.Logger.log_error(f"generator: {type(error).__name__}: {error}")
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                f"generation failed: {type(error).__name__}: {error}")),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _stream(self, request: Any, sender: Any) -> None:
        messages_tensor = pb_utils.get_input_tensor_by_name(request, "messages")
        sampling_tensor = pb_utils.get_input_tensor_by_name(request, "sampling_parameters")
        messages = parse_messages(messages_tensor.as_numpy().reshape(-1)[0])
        sampling = parse_sampling(
            sampling_tensor.as_numpy().reshape(-1)[0] if sampling_tensor is not None else None,
            self.default_max_tokens)
        prompt = render_prompt(self.tokenizer, messages)

        def cancelled() -> bool:
            return bool(self._stopping.is_set() or request.is_cancelled())

        for event in generate(self.model, self.tokenizer, prompt, sampling,
                              cancelled=cancelled, context_window=self.context_window):
            if isinstance(event, Final):
                if event.finish_reason == "cancelled":
                    pb_utils.Logger.log_info(f"generator: request cancelled after "
                                             f"{event.completion_tokens} tokens")
                    sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                        "cancelled", pb_utils.TritonError.CANCELLED)),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    return
                sender.send(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("text_output", _text("")),
                    pb_utils.Tensor("num_input_tokens",
                                    np.array([event.prompt_tokens], dtype=np.int32)),
                    pb_utils.Tensor("num_output_tokens",
                                    np.array([event.completion_tokens], dtype=np.int32)),
                    pb_utils.Tensor("finish_reason", _text(event.finish_reason)),
                ]), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                return
            sender.send(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("text_output", _text(event))]))

    def finalize(self) -> None:
        # Streams still running end as cancelled before their next token.
        self._stopping.set()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=10)
        self.model = None
