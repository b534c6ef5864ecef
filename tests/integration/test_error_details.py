"""Errors keep their class and their machine-readable details across every hop: a node's
refusal crosses NATS to the gateway and reaches a gRPC client in the standard
``grpc-status-details-bin`` trailer; an engine calling another engine over the mesh gets
the callee's exception class with its details. Real gateway, nodes and nats-server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc.error_details_pb2 import BadRequest, ErrorInfo, RetryInfo
from google.rpc.status_pb2 import Status
from grpc_status import rpc_status

from mesh.calls import MeshCalls, MeshChannel
from mesh.client import rpc_error
from mesh.errors import BudgetExhausted, InvalidArgument, RateLimited, ResourceExhausted
from mesh.testing import MeshHarness
from mesh.testing.llm import FakeLLMServer
from mesh.transport.connection import connect
from mesh.v1 import models_pb2 as pb
from mesh.v1 import models_pb2_grpc
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc
from tests.integration import test_model_service as model_service
from tests.integration.test_auth import AUTH, remove_users_since
from tests.integration.test_model_service import _ask, _client, _generate
from tests.integration.test_rate_limits import ECHO, ONLY_ECHO, _echo, _user

# ModelService's fixtures: a loopback OpenAI/Anthropic server, and a mesh with the models engine
fake = model_service.fake
start = model_service.start


def _details(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The details a stock gRPC client reads (grpcio-status), by type name."""
    call: Any = error  # an AioRpcError is a grpc.Call; the stubs do not say so
    status: Status | None = rpc_status.from_call(call)  # also checks code and message agree
    assert status is not None, f"no grpc-status-details-bin trailer on {error}"
    out: dict[str, Any] = {}
    for detail in status.details:
        message = {"google.rpc.ErrorInfo": ErrorInfo, "google.rpc.RetryInfo": RetryInfo,
                   "google.rpc.BadRequest": BadRequest}[detail.TypeName()]()
        detail.Unpack(message)
        out[detail.TypeName().removeprefix("google.rpc.")] = message
    return out


async def test_a_rate_limited_client_reads_the_reason_and_when_to_retry(mesh_harness):
    mesh = await mesh_harness(plugins=ONLY_ECHO, auth={
        "enabled": True, "rate_limits": {"methods": {ECHO: {"rate": 0.5, "burst": 2}}}})
    _, token = await _user(mesh, "developer")
    outcomes = [await _echo(mesh.channel, token) for _ in range(4)]
    refused = next(error for error in outcomes if error is not None)

    details = _details(refused)
    info, retry = details["ErrorInfo"], details["RetryInfo"]
    assert (info.reason, info.domain) == ("RATE_LIMITED", "revo.dev")
    assert info.metadata["method"] == ECHO
    metadata: Any = refused.trailing_metadata() or ()  # grpc.aio.Metadata: (key, value) pairs
    trailers = {str(k): str(v) for k, v in metadata if not str(k).endswith("-bin")}
    # RetryInfo and the older retry-after-ms trailer (kept) say the same wait
    assert abs(retry.retry_delay.ToMilliseconds() - int(trailers["retry-after-ms"])) <= 1
    error = rpc_error(refused)
    assert type(error) is RateLimited
    assert error.retry_after_s is not None
    assert error.retry_after_s == pytest.approx(retry.retry_delay.ToNanoseconds() / 1e9)
    assert error.message == refused.details()


async def test_a_spent_budget_reads_budget_exhausted(start: Any, fake: FakeLLMServer) -> None:
    mesh = await start(budget_usd=0.0)  # every paid model is over budget
    user, stub, metadata = await _client(mesh)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _generate(stub, _ask(model="claude", no_fallback=True), metadata)

    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = _details(refused.value)["ErrorInfo"]
    assert (info.reason, info.domain) == ("BUDGET_EXHAUSTED", "revo.dev")
    assert info.metadata["user"] == user
    error = rpc_error(refused.value)
    assert type(error) is BudgetExhausted
    assert error.metadata["limit_usd"] == "0.00"
    assert not fake.requests  # refused before reaching the provider


async def test_a_client_reads_the_field_that_is_wrong(mesh_harness):
    mesh: MeshHarness = await mesh_harness(plugins=ONLY_ECHO)  # the node is across NATS
    stub = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Echo(echo_pb2.EchoRequest(delay_ms=90_000), timeout=5)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = _details(refused.value)["BadRequest"]
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("delay_ms", "must be at most 60000")]
    error = rpc_error(refused.value)
    assert type(error) is InvalidArgument
    assert [v.field for v in error.violations] == ["delay_ms"]


async def test_an_unknown_method_reads_unknown_method(mesh_harness):
    mesh: MeshHarness = await mesh_harness(plugins=ONLY_ECHO)
    path = "/revo.echo.v1.EchoService/Shout"
    channel: Any = mesh.channel  # bytes in, bytes out: no serializers
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await channel.unary_unary(path)(b"", timeout=5)

    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    info = _details(refused.value)["ErrorInfo"]
    assert (info.reason, dict(info.metadata)) == ("UNKNOWN_METHOD", {"method": path})


@pytest.fixture
async def calls(mesh_harness: Any, fake: FakeLLMServer) -> AsyncIterator[MeshCalls]:
    """What an engine has for calling other engines, on a mesh of echo and models nodes."""
    since = time.time()
    mesh = await mesh_harness(plugins={"only": ["echo", "models"]}, auth=AUTH, models={
        "catalog": [{"name": "claude", "provider": "anthropic", "base_url": fake.base_url,
                     "api_key_env": "REVO_TEST_ERROR_DETAILS_KEY",
                     "input_usd_per_million": 3.0, "output_usd_per_million": 15.0}],
        "budget_usd": 0.0})
    nc = await connect(mesh.config.nats, "test-error-details")
    calls = MeshCalls(nc, mesh.config)
    await calls.start()
    try:
        yield calls
    finally:
        await calls.stop()
        await nc.close()
        await remove_users_since(mesh, since)


def _channel(calls: MeshCalls) -> MeshChannel:
    return MeshChannel(calls, caller="ada", role="developer", request_id="req-details",
                       deadline=time.monotonic() + 10)


async def test_an_engine_calling_an_engine_gets_the_callees_class_and_violations(
        calls: MeshCalls) -> None:
    echo = echo_pb2_grpc.EchoServiceStub(_channel(calls))
    with pytest.raises(InvalidArgument) as refused:
        await echo.Echo(echo_pb2.EchoRequest(delay_ms=90_000))

    assert [(v.field, v.description) for v in refused.value.violations] == [
        ("delay_ms", "must be at most 60000")]


async def test_an_engine_calling_an_engine_gets_budget_exhausted(calls: MeshCalls) -> None:
    models = models_pb2_grpc.ModelServiceStub(_channel(calls))
    request = pb.GenerateRequest(messages=[pb.Message(role="user", content="hi")],
                                 policy=pb.Policy(model="claude", no_fallback=True))
    with pytest.raises(ResourceExhausted) as refused:
        async for _ in models.Generate(request):
            pass

    assert type(refused.value) is BudgetExhausted
    assert refused.value.reason == "BUDGET_EXHAUSTED"
    assert refused.value.metadata["user"] == "ada"
