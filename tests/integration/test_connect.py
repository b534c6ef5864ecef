"""Every method as JSON over HTTP (the Connect protocol on the gateway's HTTP door), through a
real gateway and node: the same rules as gRPC, and errors a person can act on."""

from __future__ import annotations

import base64
import json
import struct
import uuid
from typing import Any

import aiohttp
import pytest
from google.rpc import error_details_pb2

from mesh.testing import MeshHarness
from revo_engine_echo.v1 import echo_pb2

ECHO = "/revo.echo.v1.EchoService/Echo"
COUNT = "/revo.echo.v1.EchoService/Count"
ONLY_ECHO = {"only": ["echo"]}
PASSWORD = "correct horse battery"


@pytest.fixture(params=["nats", "colocated"])
async def mesh(request: pytest.FixtureRequest, mesh_harness: Any) -> MeshHarness:
    harness: MeshHarness = await mesh_harness(
        plugins=ONLY_ECHO, colocate=request.param == "colocated",
        gateway={"http_max_body_bytes": 64 * 1024})
    return harness


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


def url(mesh: MeshHarness, path: str) -> str:
    assert mesh.gateway.http is not None
    return mesh.gateway.http.url + path


async def post_json(http: aiohttp.ClientSession, mesh: MeshHarness, path: str, body: Any,
                    headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with http.post(url(mesh, path), data=json.dumps(body),
                         headers={"content-type": "application/json", **(headers or {})}
                         ) as response:
        return response.status, await response.json(content_type=None)


def error_info(body: dict[str, Any]) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo among a Connect error's details, decoded from its base64 value."""
    for detail in body.get("details", []):
        if detail["type"] == "google.rpc.ErrorInfo":
            raw = detail["value"]
            info = error_details_pb2.ErrorInfo.FromString(
                base64.b64decode(raw + "=" * (-len(raw) % 4)))
            assert detail["debug"]["reason"] == info.reason  # the same, readable
            return info
    raise AssertionError(f"no ErrorInfo in {body}")


async def test_a_unary_method_answers_json(mesh: MeshHarness, http: Any) -> None:
    status, body = await post_json(http, mesh, ECHO, {"payload": base64.b64encode(b"hi").decode(),
                                                      "delayMs": 1})
    assert status == 200, body
    assert base64.b64decode(body["payload"]) == b"hi"
    expected = mesh.gateway.node.id if mesh.gateway.node else mesh.nodes[0].id
    assert body["nodeId"] == expected


async def test_a_unary_method_answers_proto(mesh: MeshHarness, http: Any) -> None:
    request = echo_pb2.EchoRequest(payload=b"\x00\x01binary").SerializeToString()
    async with http.post(url(mesh, ECHO), data=request,
                         headers={"content-type": "application/proto"}) as response:
        assert response.status == 200
        assert response.content_type == "application/proto"
        reply = echo_pb2.EchoResponse.FromString(await response.read())
    assert reply.payload == b"\x00\x01binary"


async def test_a_server_stream_arrives_whole_then_ends(mesh: MeshHarness, http: Any) -> None:
    request = json.dumps({"count": 25}).encode()
    envelope = struct.pack(">BI", 0, len(request)) + request
    async with http.post(url(mesh, COUNT), data=envelope,
                         headers={"content-type": "application/connect+json"}) as response:
        assert response.status == 200
        raw = await response.read()
    frames = []
    while raw:
        flags, size = struct.unpack(">BI", raw[:5])
        frames.append((flags, json.loads(raw[5:5 + size])))
        raw = raw[5 + size:]
    assert [f[1].get("index", 0) for f in frames[:-1]] == list(range(25))
    assert frames[-1] == (0x02, {})  # the end, with no error


async def test_a_failed_stream_ends_with_its_error(mesh: MeshHarness, http: Any) -> None:
    request = json.dumps({"count": 0}).encode()
    async with http.post(url(mesh, COUNT), data=struct.pack(">BI", 0, len(request)) + request,
                         headers={"content-type": "application/connect+json"}) as response:
        assert response.status == 200  # Connect streams carry their error at the end
        raw = await response.read()
    flags, size = struct.unpack(">BI", raw[:5])
    assert flags == 0x02
    end = json.loads(raw[5:5 + size])
    assert end["error"]["code"] == "invalid_argument"
    assert "count" in end["error"]["message"]


async def test_unknown_fields_are_refused_by_name(mesh: MeshHarness, http: Any) -> None:
    status, body = await post_json(http, mesh, ECHO, {"payload": "", "colour": "red"})
    assert status == 400
    assert body["code"] == "invalid_argument"
    assert "colour" in body["message"]
    assert "revo.echo.v1.EchoRequest" in body["message"]


async def test_malformed_json_is_invalid_argument(mesh: MeshHarness, http: Any) -> None:
    async with http.post(url(mesh, ECHO), data=b"{not json",
                         headers={"content-type": "application/json"}) as response:
        assert response.status == 400
        body = await response.json()
    assert body["code"] == "invalid_argument"


async def test_engine_errors_keep_their_code_and_details(mesh: MeshHarness, http: Any) -> None:
    status, body = await post_json(http, mesh, ECHO, {"delayMs": 999_999})
    assert status == 400
    assert body["code"] == "invalid_argument"
    assert "delay_ms" in body["message"]


async def test_unknown_method_is_501_with_what_is_served(mesh: MeshHarness, http: Any) -> None:
    status, body = await post_json(http, mesh, "/revo.echo.v1.EchoService/Shout", {})
    assert status == 501
    assert body["code"] == "unimplemented"
    assert "Echo, Count, Stats" in body["message"]
    assert error_info(body).reason == "UNKNOWN_METHOD"
    status, body = await post_json(http, mesh, "/revo.nothing.v1.Nope/Call", {})
    assert status == 501
    assert "revo.echo.v1.EchoService" in body["message"]


async def test_oversized_body_is_refused(mesh: MeshHarness, http: Any) -> None:
    status, body = await post_json(http, mesh, ECHO, {"payload": "A" * (100 * 1024)})
    assert status == 429
    assert body["code"] == "resource_exhausted"
    assert "http_max_body_bytes" in body["message"]
    status, _ = await post_json(http, mesh, ECHO, {})  # and the door keeps serving
    assert status == 200


async def test_other_content_types_are_415_with_what_to_send(mesh: MeshHarness,
                                                             http: Any) -> None:
    async with http.post(url(mesh, ECHO), data=b"x",
                         headers={"content-type": "text/plain"}) as response:
        assert response.status == 415
        body = await response.json()
    assert "application/json" in body["message"]


async def test_connect_timeout_header_is_the_deadline(mesh: MeshHarness, http: Any) -> None:
    status, body = await post_json(http, mesh, ECHO, {"delayMs": 3000},
                                   headers={"connect-timeout-ms": "200"})
    assert status == 504, body
    assert body["code"] == "deadline_exceeded"
    status, body = await post_json(http, mesh, ECHO, {}, headers={"connect-timeout-ms": "soon"})
    assert status == 400
    assert "connect-timeout-ms" in body["message"]


async def test_health_says_what_is_served(mesh: MeshHarness, http: Any) -> None:
    async with http.get(url(mesh, "/health")) as response:
        assert response.status == 200
        body = await response.json()
    assert body["status"] == "serving"
    assert "revo.echo.v1.EchoService" in body["services"]


async def test_the_guard_rules_json_calls_as_it_rules_grpc(mesh_harness: Any,
                                                           http: Any) -> None:
    """Signed-out callers are refused 401, a sign-in over JSON gives a token that works,
    a role without the permission is refused 403, and the engine sees the caller."""
    mesh: MeshHarness = await mesh_harness(plugins=ONLY_ECHO, auth={
        "enabled": True, "audit": {"enabled": False},
        "login": {"per_user": 1000, "per_address": 100_000}})
    assert mesh.gateway.guard is not None
    name, viewer = f"dev-{uuid.uuid4().hex[:8]}", f"viewer-{uuid.uuid4().hex[:8]}"
    await mesh.gateway.guard.users.create(name, "developer", PASSWORD)
    await mesh.gateway.guard.users.create(viewer, "viewer", PASSWORD)

    status, body = await post_json(http, mesh, ECHO, {})
    assert status == 401
    assert body["code"] == "unauthenticated"
    assert error_info(body).reason == "TOKEN_MISSING"

    status, tokens = await post_json(http, mesh, "/revo.auth.v1.AuthService/Login",
                                     {"username": name, "password": PASSWORD})
    assert status == 200, tokens
    token = tokens["tokens"]["accessToken"]
    status, body = await post_json(http, mesh, ECHO, {},
                                   headers={"authorization": f"Bearer {token}"})
    assert status == 200
    assert body["caller"] == name
    assert body["role"] == "developer"

    _, viewer_tokens = await post_json(http, mesh, "/revo.auth.v1.AuthService/Login",
                                       {"username": viewer, "password": PASSWORD})
    status, body = await post_json(
        http, mesh, ECHO, {},
        headers={"authorization": f"Bearer {viewer_tokens['tokens']['accessToken']}"})
    assert status == 403
    assert body["code"] == "permission_denied"
    assert "execute" in body["message"]
