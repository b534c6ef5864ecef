"""The Connect protocol on the HTTP door: every method of every engine, as JSON or proto.

``POST /<package.Service>/<Method>`` with ``content-type: application/json`` (or
``application/proto``) calls a unary method; ``application/connect+json`` (or
``+proto``) calls a server-streaming one with Connect's enveloped stream. Messages are
converted with the descriptors the nodes announce (the registry's pool), so a third-party
engine is served as JSON with no code for it. Errors are Connect's JSON: ``code``,
``message`` and the google.rpc details the mesh attached (``ErrorInfo``, ``RetryInfo``,
``BadRequest``), each with its JSON form under ``debug``. Why Connect rather than Envoy's
gRPC-JSON transcoder: docs/decisions.md.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterable
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError, Message

from mesh.errors import Internal, InvalidArgument, ResourceExhausted, RpcError
from mesh.gateway.http import HttpContext, HttpDoor, internal

__all__ = ["HTTP_STATUS", "connect_error", "routes"]

HTTP_STATUS = {
    grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500, grpc.StatusCode.UNAUTHENTICATED: 401,
}
"""The Connect protocol's HTTP status for each code."""

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PATH = rf"/{{service:{_NAME}(?:\.{_NAME})+}}/{{method:{_NAME}}}"
_JSON, _PROTO = "application/json", "application/proto"
_STREAM_JSON, _STREAM_PROTO = "application/connect+json", "application/connect+proto"
_END_STREAM = 0x02
_TIMEOUT_HEADER = "connect-timeout-ms"


def routes(door: HttpDoor) -> Iterable[web.AbstractRouteDef]:
    """The Connect routes of ``door``."""
    return [web.post(_PATH, _Connect(door).handle)]


def connect_error(error: RpcError) -> dict[str, Any]:
    """``error`` as the Connect protocol's JSON error object."""
    body: dict[str, Any] = {"code": error.code.name.lower(), "message": error.message}
    status = error.status()
    if status is not None and status.details:
        details = []
        for detail in status.details:
            item: dict[str, Any] = {
                "type": detail.TypeName(),
                "value": base64.b64encode(detail.value).decode().rstrip("=")}
            debug = _unpacked(detail)
            if debug is not None:
                item["debug"] = debug
            details.append(item)
        body["details"] = details
    return body


def _unpacked(detail: Any) -> Any:
    """A detail's fields as JSON (without its ``@type``), or None for a kind unknown here."""
    try:
        out = json_format.MessageToDict(detail)
    except (TypeError, KeyError, json_format.Error):
        return None
    out.pop("@type", None)
    return out


def _error_response(error: RpcError) -> web.Response:
    response = web.json_response(connect_error(error), status=HTTP_STATUS.get(error.code, 500))
    if error.retry_after_s is not None:
        response.headers["Retry-After"] = str(max(1, round(error.retry_after_s + 0.499)))
    return response


def _timeout(request: web.Request) -> float | None:
    raw = request.headers.get(_TIMEOUT_HEADER)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 10:
        raise InvalidArgument(f"{_TIMEOUT_HEADER} must be a positive whole number of "
                              f"milliseconds (at most 10 digits), not {raw!r}")
    return int(raw) / 1000


class _Connect:
    """The handler of one door's Connect calls."""

    def __init__(self, door: HttpDoor) -> None:
        self._door = door

    def _method(self, path: str) -> MethodDescriptor | None:
        service, _, method = path.strip("/").partition("/")
        pool = self._door.gateway.snapshot.pool
        try:
            return pool.FindMethodByName(f"{service}.{method}")  # type: ignore[no-any-return]
        except KeyError:
            return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        kind = request.content_type
        if kind in (_STREAM_JSON, _STREAM_PROTO):
            return await self._stream(request, kind == _STREAM_JSON)
        if kind not in (_JSON, _PROTO):
            return web.json_response(connect_error(InvalidArgument(
                f"content-type {kind or '(none)'!r} is not served here: send "
                f"{_JSON} or {_PROTO} for a unary call, {_STREAM_JSON} or {_STREAM_PROTO} for "
                "a server stream (the Connect protocol), or call through gRPC")), status=415)
        path = request.path
        try:
            context = HttpContext.of(request, _timeout(request))
            method = self._method(path)
            body = await _body(request)
            payload = b"" if method is None else (
                _from_json(body, method) if kind == _JSON else body)
            reply = await self._door.unary(path, payload, context)
            if kind == _PROTO or method is None:
                return web.Response(body=reply, content_type=_PROTO)
            return web.Response(body=_to_json(reply, method), content_type=_JSON)
        except RpcError as error:
            return _error_response(error)
        except Exception as exc:
            return _error_response(internal(path, exc))

    async def _stream(self, request: web.Request, as_json: bool) -> web.StreamResponse:
        path = request.path
        kind = _STREAM_JSON if as_json else _STREAM_PROTO
        response = web.StreamResponse(status=200, headers={"content-type": kind})
        end: dict[str, Any] = {}
        try:
            context = HttpContext.of(request, _timeout(request))
            method = self._method(path)
            body = _unenvelope(await _body(request))
            payload = b"" if method is None else (
                _from_json(body, method) if as_json else body)
            messages = self._door.stream(path, payload, context)
            async for message in messages:
                if not response.prepared:
                    await response.prepare(request)
                out = _to_json(message, method) if as_json and method is not None else message
                await response.write(_envelope(0, out))
        except RpcError as error:
            end["error"] = connect_error(error)
        except Exception as exc:
            end["error"] = connect_error(internal(path, exc))
        if not response.prepared:
            await response.prepare(request)
        await response.write(_envelope(_END_STREAM, json.dumps(end).encode()))
        await response.write_eof()
        return response


async def _body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ResourceExhausted(f"the request body is larger than gateway.http_max_body_bytes "
                                f"allows ({exc.text})") from None


def _from_json(body: bytes, method: MethodDescriptor) -> bytes:
    """The request's JSON as its proto bytes (unknown fields refused, by name)."""
    message = message_factory.GetMessageClass(method.input_type)()
    try:
        json_format.Parse(body or b"{}", message, descriptor_pool=method.input_type.file.pool)
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"the request is not valid JSON for "
                              f"{method.input_type.full_name}: {exc}") from None
    return message.SerializeToString()  # type: ignore[no-any-return]


def _to_json(reply: bytes, method: MethodDescriptor) -> bytes:
    message: Message = message_factory.GetMessageClass(method.output_type)()
    try:
        message.ParseFromString(reply)
    except DecodeError as exc:
        raise Internal(f"the engine's reply is not a valid "
                       f"{method.output_type.full_name}") from exc
    return json_format.MessageToJson(
        message, indent=None, descriptor_pool=method.output_type.file.pool).encode()


def _envelope(flags: int, data: bytes) -> bytes:
    return struct.pack(">BI", flags, len(data)) + data


def _unenvelope(body: bytes) -> bytes:
    if len(body) < 5:
        raise InvalidArgument("a Connect streaming request is one enveloped message: 1 flags "
                              "byte, a 4-byte big-endian length, then the message")
    flags, size = struct.unpack(">BI", body[:5])
    if flags & 0x01:
        raise InvalidArgument("compressed Connect messages are not served: send them "
                              "uncompressed")
    if size != len(body) - 5:
        raise InvalidArgument(f"the Connect envelope says {size} bytes but {len(body) - 5} "
                              "follow")
    return body[5:]
