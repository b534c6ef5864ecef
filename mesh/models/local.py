"""Local models on Triton, from the mesh's event loop (``tritonclient.grpc.aio``).

:class:`TritonEmbedder` sends texts to the ``embedder`` model (one request per call;
Triton's dynamic batching groups concurrent calls) and reports readiness for the router's
health. Texts are sent in slices of at most the model's ``max_batch_size``. Readiness is
Triton's word only; :meth:`TritonEmbedder.probe` and :meth:`TritonGenerator.probe` make a
tiny real call, which is what tells a model whose every call fails (:mod:`mesh.models.health`).

:class:`TritonGenerator` is the router's provider for catalog models with ``provider =
"triton"``: it streams from the decoupled ``generator`` model (``triton_models/generator``)
over one gRPC stream per call, and cancels that stream when the caller goes away.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np

from mesh.errors import InvalidArgument, Unavailable
from mesh.models.providers import NO_TOOLING, Chunk, ProviderError, ProviderUsage, Turn
from mesh.models.tools import Tooling
from mesh.observability import tracing

__all__ = ["TritonEmbedder", "TritonGenerator"]

_MAX_BATCH = 64  # triton_models/embedder/config.pbtxt max_batch_size
_INVALID = "invalid input: "  # triton_models/generator/1/model.py: prefix of bad-input errors
_PROBE = "health probe"
_PROBE_TIMEOUT_S = 30.0


def _aio() -> Any:
    try:
        from tritonclient.grpc import aio
    except ImportError as exc:  # the models extra is not installed
        raise Unavailable("local models need the models extra: "
                          "pip install 'revo-mesh[models]'") from exc
    return aio


class TritonEmbedder:
    def __init__(self, url: str, model: str = "embedder", timeout_s: float = 30.0) -> None:
        aio = _aio()
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

    async def probe(self) -> bool:
        """Whether one short text embeds (a working model, not only a loaded one)."""
        try:
            return len(await self.embed([_PROBE])) == 1
        except Exception:
            return False

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit-length vector per text."""
        if not texts:
            raise InvalidArgument("Embed needs at least one text")
        if any(not t.strip() for t in texts):
            raise InvalidArgument("Embed got an empty text; send text with words in it")
        span = (tracing.genai_span("embeddings", "triton", self.model)
                if tracing.active() else None)
        vectors: list[list[float]] = []
        try:
            for start in range(0, len(texts), _MAX_BATCH):
                chunk = texts[start:start + _MAX_BATCH]
                text = self._aio.InferInput("TEXT", [len(chunk), 1], "BYTES")
                text.set_data_from_numpy(np.array([[t.encode()] for t in chunk],
                                                  dtype=np.object_))
                try:
                    result = await self._client.infer(self.model, [text],
                                                      client_timeout=self._timeout_s)
                except Exception as exc:
                    if span is not None:
                        tracing.end_client(span, exc)
                        span = None
                    raise Unavailable(f"local embedder at {self.url} failed: {exc}") from exc
                vectors.extend(np.asarray(result.as_numpy("EMBEDDING"),
                                          dtype=np.float32).tolist())
        finally:
            if span is not None:
                tracing.end_client(span)
        return vectors


def classify(error: BaseException, url: str, model: str) -> ProviderError:
    """A failed Triton call as a ProviderError: the generator's ``invalid input:`` errors are
    ``bad_request``; an unknown or unloaded model and an unreachable server ``connection``;
    a deadline ``timeout``; anything else ``server``."""
    import grpc

    if isinstance(error, grpc.RpcError):
        code = error.code() if callable(getattr(error, "code", None)) else None
        details = error.details() if callable(getattr(error, "details", None)) else str(error)
        text = f"Triton at {url}: {details or code}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ProviderError("timeout", text)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return ProviderError("bad_request", text, 400)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
            return ProviderError("connection", text)
        return ProviderError("server", text)
    message = getattr(error, "message", None)
    text = (message() if callable(message) else None) or str(error) or type(error).__name__
    if text.startswith(_INVALID):
        return ProviderError("bad_request", f"model {model}: {text[len(_INVALID):]}", 400)
    lowered = text.lower()
    if "unknown model" in lowered or "not found" in lowered or "not ready" in lowered:
        return ProviderError("connection", f"Triton at {url} has no ready model {model!r} "
                             f"({text}); is it loaded (models.generator_checkpoint)?")
    return ProviderError("server", f"Triton at {url}, model {model}: {text}")


class TritonGenerator:
    """Streams text from a decoupled Triton generator model; a router ``Provider``.

    ``url`` is Triton's gRPC ``host:port`` (``models.triton_url``). ``stream``'s ``model`` is
    the Triton model's name: the catalog entry's ``upstream`` (default: its ``name``), so a
    catalog entry for the built-in model says ``upstream = "generator"``. ``model`` here is
    the model that :meth:`ready` reports on.
    """

    def __init__(self, url: str, name: str = "triton", model: str = "generator") -> None:
        aio = _aio()
        self._aio: Any = aio
        self._client: Any = aio.InferenceServerClient(url)
        self.name = name
        self.url = url
        self.model = model

    async def close(self) -> None:
        await self._client.close()

    async def ready(self, model: str | None = None) -> bool:
        """Whether Triton answers and has the model (default: this generator's) loaded."""
        try:
            return bool(await self._client.is_model_ready(model or self.model))
        except Exception:
            return False

    async def probe(self, model: str | None = None) -> bool:
        """Whether the model (default: this generator's) generates one token."""
        try:
            async for _ in self.stream(model or self.model, [Turn("user", _PROBE)],
                                       max_tokens=1, temperature=0.0, top_p=0.0, stop=(),
                                       timeout_s=_PROBE_TIMEOUT_S):
                pass
        except Exception:
            return False
        return True

    def _text(self, name: str, value: str) -> Any:
        tensor = self._aio.InferInput(name, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([value.encode("utf-8")], dtype=np.object_))
        return tensor

    async def stream(self, model: str, turns: Sequence[Turn], *, max_tokens: int,
                     temperature: float, top_p: float, stop: Sequence[str],
                     timeout_s: float, seed: int | None = None,
                     tooling: Tooling = NO_TOOLING) -> AsyncIterator[Chunk]:
        """Text deltas, then one chunk with the model's exact token counts and finish
        reason (``stop`` or ``length``). ``max_tokens`` 0 takes the model's default and
        ``top_p`` 0 means 1; ``temperature`` 0 is greedy; ``seed`` makes sampling repeatable.
        ``timeout_s`` bounds the wait for each response (the first one includes the whole
        prompt). Closing the iterator early cancels the Triton stream, which stops the
        generation before its next token. The generator has no tools and no structured
        output: ``tooling`` that asks for them fails ``bad_request`` (the router never
        sends it)."""
        if tooling:
            raise ProviderError("bad_request", f"Triton model {model!r} has no tool "
                                "calling and no structured output")
        sampling: dict[str, Any] = {"temperature": temperature}
        if max_tokens:
            sampling["max_tokens"] = max_tokens
        if top_p:
            sampling["top_p"] = top_p
        if stop:
            sampling["stop"] = list(stop)
        if seed is not None:
            sampling["seed"] = seed
        inputs = [
            self._text("messages", json.dumps([{"role": t.role, "content": t.content}
                                               for t in turns])),
            self._text("sampling_parameters", json.dumps(sampling)),
        ]
        answered = asyncio.Event()

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": model, "inputs": inputs}
            await answered.wait()  # the stream stays open until the final response

        responses = self._client.stream_infer(requests())
        try:
            while True:
                try:
                    result, error = await asyncio.wait_for(anext(responses), timeout_s)
                except StopAsyncIteration:
                    raise ProviderError("malformed", f"Triton at {self.url} ended the stream "
                                        "without a final response") from None
                except TimeoutError:
                    raise ProviderError("timeout", f"Triton at {self.url}, model {model}: no "
                                        f"response within {timeout_s:g} s") from None
                except ProviderError:
                    raise
                except Exception as exc:  # gRPC errors: unreachable, cut, deadline
                    raise classify(exc, self.url, model) from exc
                if error is not None:
                    raise classify(error, self.url, model)
                delta = result.as_numpy("text_output")
                text = delta.reshape(-1)[0].decode("utf-8") if delta is not None else ""
                if text:
                    yield Chunk(text=text)
                finish = result.as_numpy("finish_reason")
                if finish is not None:
                    answered.set()
                    yield Chunk(usage=ProviderUsage(
                        int(result.as_numpy("num_input_tokens").reshape(-1)[0]),
                        int(result.as_numpy("num_output_tokens").reshape(-1)[0])),
                        finish_reason=finish.reshape(-1)[0].decode("utf-8"))
                    return
        finally:
            if not answered.is_set():  # the caller went away or the call failed
                answered.set()
                responses.cancel()
