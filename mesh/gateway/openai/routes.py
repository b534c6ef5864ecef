"""The OpenAI-compatible routes of the HTTP door, each a call of ``ModelService`` through
the gateway's own handler chain (:meth:`~mesh.gateway.http.HttpDoor.unary` and
:meth:`~mesh.gateway.http.HttpDoor.stream`): authentication, roles, rate limits, audit,
routing, fallback, budgets and the ledger are those of the gRPC call.
"""

from __future__ import annotations

import array
import base64
import contextlib
import os
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import Any, cast

from aiohttp import web

from mesh.errors import Internal, RpcError
from mesh.gateway.http import HttpContext, HttpDoor, internal
from mesh.gateway.openai.chat import Answer, ChatRequest, chat_request, finish_reason
from mesh.gateway.openai.errors import (
    ApiError,
    bad_request,
    error_body,
    error_response,
    from_rpc,
)
from mesh.gateway.openai.fields import Fields, parse_json
from mesh.gateway.openai.sse import DONE, Chunks, error_event, usage
from mesh.v1 import models_pb2 as pb

__all__ = ["routes"]

_SERVICE = "/revo.models.v1.ModelService/"
GENERATE, EMBED, LIST_MODELS = (_SERVICE + m for m in ("Generate", "Embed", "ListModels"))
AUTO = "auto"
"""The model name that leaves the choice to the router (listed first by /v1/models)."""
_JSON = "application/json"


def routes(door: HttpDoor) -> Iterable[web.AbstractRouteDef]:
    """The ``/v1`` routes of ``door``."""
    api = _OpenAI(door)
    return [web.get("/v1/models", api.list_models),
            web.get("/v1/models/{model:.+}", api.get_model),
            web.post("/v1/chat/completions", api.chat),
            web.post("/v1/embeddings", api.embeddings),
            web.route("*", "/v1/{tail:.*}", api.unknown)]


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None
          ) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


async def _body(request: web.Request) -> Fields:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, f"the request body is larger than gateway.http_max_body_bytes "
                       f"allows ({exc.text})", code="request_too_large") from None
    return parse_json(raw)


def _refusal(path: str, exc: Exception) -> web.Response:
    if isinstance(exc, ApiError):
        return error_response(exc)
    if isinstance(exc, RpcError):
        return error_response(from_rpc(exc))
    return error_response(from_rpc(internal(path, exc)))


def _extras(done: pb.Done) -> dict[str, Any]:
    """What the mesh adds to an answer: who served it and what it cost."""
    return {"model": done.model, "provider": done.provider, "cost_usd": done.cost_usd,
            "savings_usd": done.savings_usd, "latency_ms": done.latency_ms,
            "switches": [{"from_model": s.from_model, "to_model": s.to_model,
                          "reason": s.reason, "tokens_before": s.tokens_before}
                         for s in done.switches]}


def _extra_headers(done: pb.Done) -> dict[str, str]:
    return {"x-revo-model": done.model, "x-revo-provider": done.provider,
            "x-revo-cost-usd": f"{done.cost_usd:.8f}",
            "x-revo-savings-usd": f"{done.savings_usd:.8f}"}


def _model(model: pb.Model) -> dict[str, Any]:
    return {"id": model.name, "object": "model", "created": 0, "owned_by": model.provider,
            "revo": {"tier": "local" if model.tier == pb.TIER_LOCAL else "cloud",
                     "healthy": model.healthy, "generates": model.generates,
                     "embeds": model.embeds, "context_window": model.context_window,
                     "input_usd_per_million": model.input_usd_per_million,
                     "output_usd_per_million": model.output_usd_per_million,
                     "supports_tools": model.supports_tools,
                     "supports_structured_output": model.supports_structured_output}}


_AUTO_MODEL = {"id": AUTO, "object": "model", "created": 0, "owned_by": "revo",
               "revo": {"router": True}}


class _OpenAI:
    """The handlers of one door's OpenAI-compatible API."""

    def __init__(self, door: HttpDoor) -> None:
        self._door = door

    async def _catalog(self, request: web.Request) -> list[dict[str, Any]]:
        reply = await self._door.unary(LIST_MODELS, b"", HttpContext.of(request))
        return [_AUTO_MODEL] + [_model(m) for m in pb.ListModelsResponse.FromString(reply).models]

    async def list_models(self, request: web.Request) -> web.Response:
        try:
            return _json({"object": "list", "data": await self._catalog(request)})
        except Exception as exc:
            return _refusal(LIST_MODELS, exc)

    async def get_model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        try:
            for model in await self._catalog(request):
                if model["id"] == name:
                    return _json(model)
            raise ApiError(404, f"the model {name[:80]!r} does not exist: GET /v1/models lists "
                           "the models this mesh serves", param="model", code="model_not_found")
        except Exception as exc:
            return _refusal(LIST_MODELS, exc)

    async def unknown(self, request: web.Request) -> web.Response:
        return error_response(ApiError(
            404, f"no route {request.method} {request.path}: this API serves GET /v1/models, "
            "POST /v1/chat/completions and POST /v1/embeddings", code="unknown_url"))

    # -- chat ------------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            chat = chat_request(await _body(request))
            messages = cast(AsyncGenerator[bytes, None], self._door.stream(
                GENERATE, chat.generate.SerializeToString(), HttpContext.of(request)))
            async with contextlib.aclosing(messages):
                if chat.stream:
                    return await self._stream(request, chat, messages)
                return await self._answer(chat, messages)
        except Exception as exc:
            return _refusal(GENERATE, exc)

    @staticmethod
    def _ident() -> tuple[str, int]:
        return "chatcmpl-" + os.urandom(12).hex(), int(time.time())

    async def _answer(self, chat: ChatRequest, messages: AsyncIterator[bytes]
                      ) -> web.Response:
        answer = Answer()
        async for raw in messages:
            answer.add(pb.GenerateResponse.FromString(raw))
        done = answer.done
        if done is None:
            raise Internal("the Generate stream ended without its final message")
        ident, created = self._ident()
        return _json({
            "id": ident, "object": "chat.completion", "created": created,
            "model": done.model or chat.model,
            "choices": [{"index": 0, "message": answer.message(),
                         "finish_reason": finish_reason(done), "logprobs": None}],
            "usage": usage(done), "revo": _extras(done)}, headers=_extra_headers(done))

    async def _stream(self, request: web.Request, chat: ChatRequest,
                      messages: AsyncIterator[bytes]) -> web.StreamResponse:
        # The first message before the headers: a refusal (auth, limits, an unknown model)
        # keeps its HTTP status instead of becoming an event in a 200 stream.
        first = await anext(messages, None)
        response = web.StreamResponse(headers={"content-type": "text/event-stream",
                                               "cache-control": "no-cache"})
        await response.prepare(request)
        ident, created = self._ident()
        chunks = Chunks(ident, created, chat.model)
        try:
            out = [chunks.role()]
            done = None
            raw = first
            while raw is not None:
                event = pb.GenerateResponse.FromString(raw)
                kind = event.WhichOneof("event")
                if kind == "delta":
                    out.append(chunks.text(event.delta))
                elif kind == "tool_call":
                    out.append(chunks.tool_call(event.tool_call))
                elif kind == "done":
                    done = event.done
                if out:
                    await response.write(out[0] if len(out) == 1 else b"".join(out))
                    out = []
                raw = await anext(messages, None)
            if done is None:
                raise Internal("the Generate stream ended without its final message")
            end = chunks.finish(finish_reason(done), _extras(done))
            if chat.include_usage:
                end += chunks.usage(done)
            await response.write(end + DONE)
        except ConnectionResetError:
            return response  # the client went away; leaving closes the mesh's stream
        except Exception as exc:
            error = exc if isinstance(exc, ApiError | RpcError) else internal(GENERATE, exc)
            api_error = error if isinstance(error, ApiError) else from_rpc(error)
            with contextlib.suppress(ConnectionResetError):
                await response.write(error_event(error_body(api_error)))
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    # -- embeddings ------------------------------------------------------------------

    async def embeddings(self, request: web.Request) -> web.Response:
        try:
            body = await _body(request)
            model = body.string("model", required=True) or ""
            texts = _inputs(body.take("input"))
            encoding = body.string("encoding_format") or "float"
            if encoding not in ("float", "base64"):
                raise bad_request(f"encoding_format must be 'float' or 'base64', got "
                                  f"{encoding[:20]!r}", "encoding_format")
            body.neutral("dimensions", why="the embedding model's size is fixed: omit it")
            body.ignore("user")
            body.done()
            embed = pb.EmbedRequest(texts=texts, model="" if model == AUTO else model)
            reply = pb.EmbedResponse.FromString(await self._door.unary(
                EMBED, embed.SerializeToString(), HttpContext.of(request)))
        except Exception as exc:
            return _refusal(EMBED, exc)
        tokens = reply.usage.prompt_tokens
        return _json({
            "object": "list", "model": reply.model or model,
            "data": [{"object": "embedding", "index": i,
                      "embedding": _encoded(e.values, encoding)}
                     for i, e in enumerate(reply.embeddings)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if value is None:
        raise bad_request("input is required: a string or an array of strings", "input",
                          "missing_required_parameter")
    if not isinstance(value, list) or not value:
        raise bad_request("input must be a string or a non-empty array of strings", "input",
                          "invalid_type")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise bad_request(f"input[{index}] must be a string (token arrays are not "
                              "served: send the text)", f"input[{index}]", "invalid_type")
    return value


def _encoded(values: Any, encoding: str) -> Any:
    if encoding == "float":
        return list(values)
    packed = array.array("f", values)  # OpenAI's base64 is little-endian float32
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()
