"""Traces across processes: a real gateway (in this process, spans to the SDK's in-memory
exporter), nats-server, and a node process that exports its spans with OTLP to a loopback
receiver. One trace per call, continued from the client's ``traceparent``."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mesh.config import MeshConfig, TracingSettings
from mesh.gateway import Gateway
from mesh.observability import tracing
from mesh.testing import spawn_node, stop_node, wait_for
from mesh.testing.llm import FakeLLMServer, answer
from mesh.testing.traces import OtlpReceiver, SpanRecord, from_sdk, tree
from mesh.v1 import models_pb2, models_pb2_grpc
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc
from tests.plugins.relay import RELAY, RelayRequest, RelayResponse

ECHO_SERVICE = "revo.echo.v1.EchoService"
RELAY_SERVICE = "revo.relaytest.v1.RelayService"
SEND_ECHO = "send revo.rpc.revo.echo.v1.EchoService.Echo"
PROCESS_ECHO = "process revo.rpc.revo.echo.v1.EchoService.Echo"
SEND_RELAY = "send revo.rpc.revo.relaytest.v1.RelayService.Relay"
PROCESS_RELAY = "process revo.rpc.revo.relaytest.v1.RelayService.Relay"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process (the gateway's), every span kept in memory."""
    tracing.shutdown()  # nothing left from another test
    exporter = InMemorySpanExporter()
    tracing.configure(TracingSettings(enabled=True, service_name="revo-gateway"),
                      exporter=exporter)
    yield exporter
    tracing.shutdown()


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    async with OtlpReceiver() as running:
        yield running


class TracedMesh:
    def __init__(self, gateway: Gateway, exporter: InMemorySpanExporter,
                 receiver: OtlpReceiver) -> None:
        self.gateway = gateway
        self.exporter = exporter
        self.receiver = receiver
        self.channel = grpc.aio.insecure_channel(gateway.address)

    def spans(self, trace_id: str) -> list[SpanRecord]:
        """The trace's spans from both processes, parents before children."""
        return tree(from_sdk(self.exporter.get_finished_spans()) + self.receiver.spans,
                    trace_id)

    async def wait_for_spans(self, trace_id: str, count: int) -> list[SpanRecord]:
        await wait_for(lambda: len(self.spans(trace_id)) >= count, 20,
                       f"{count} spans of trace {trace_id}")
        return self.spans(trace_id)


@pytest.fixture
async def traced_mesh(mesh_config: Callable[..., MeshConfig], exporter: InMemorySpanExporter,
                      receiver: OtlpReceiver, tmp_path: Path,
                      request: pytest.FixtureRequest) -> AsyncIterator[TracedMesh]:
    """Gateway here; echo and relay in a node process exporting with OTLP (grpc, or the
    protocol the test is parametrized with)."""
    protocol = getattr(request, "param", "grpc")
    config = mesh_config()
    gateway = Gateway(config)
    await gateway.start()
    node = spawn_node(config, tmp_path / "node.log", extra_env={
        "REVO_PLUGINS__ONLY": "echo,relay",
        "REVO_PLUGINS__EXTRA__RELAY": "tests.plugins.relay",
        "REVO_NODE__ID": "traced",
        "REVO_TRACING__ENABLED": "true",
        "REVO_TRACING__PROTOCOL": protocol,
        "REVO_TRACING__ENDPOINT": (receiver.grpc_endpoint if protocol == "grpc"
                                   else receiver.http_endpoint),
        "REVO_TRACING__SERVICE_NAME": "revo-node",
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # the SDK's batch delay: export within 50 ms
    })
    mesh = TracedMesh(gateway, exporter, receiver)
    try:
        def serving() -> bool:
            assert gateway._view is not None
            services = gateway._view.snapshot.service_nodes
            return all("traced" in services.get(s, []) for s in (ECHO_SERVICE, RELAY_SERVICE))

        await wait_for(serving, 30, "the node process serving echo and relay")
        yield mesh
    finally:
        await mesh.channel.close(None)
        stop_node(node)
        await gateway.stop(grace=1.0)


def _traceparent(sampled: bool = True) -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def _chain(spans: list[SpanRecord]) -> list[tuple[str, str, str]]:
    """(kind, name, service) from the root down; each span must be the parent of the next."""
    for parent, child in itertools.pairwise(spans):
        assert child.parent_id == parent.span_id, f"{child.name} is not a child of {parent.name}"
    return [(s.kind, s.name, s.service) for s in spans]


async def _echo(mesh: TracedMesh, traceparent: str, **fields: Any) -> None:
    stub = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    await stub.Echo(echo_pb2.EchoRequest(payload=b"hi", **fields), timeout=10,
                    metadata=(("traceparent", traceparent), ("tracestate", "acme=7")))


async def _relay(mesh: TracedMesh, traceparent: str, crash: bool = False) -> Any:
    relay = mesh.channel.unary_unary(RELAY, request_serializer=RelayRequest.SerializeToString,
                                     response_deserializer=RelayResponse.FromString)
    return await relay(RelayRequest(payload=b"hi", crash=crash), timeout=10,
                       metadata=(("traceparent", traceparent),))


@pytest.mark.parametrize("traced_mesh", ["grpc", "http/protobuf"], indirect=True)
async def test_a_call_continues_the_clients_trace_across_the_node_process(
        traced_mesh: TracedMesh) -> None:
    trace_id, client_span, traceparent = _traceparent()
    await _echo(traced_mesh, traceparent)
    spans = await traced_mesh.wait_for_spans(trace_id, 4)
    assert spans[0].parent_id == client_span  # the gateway's span continues the client's
    assert _chain(spans) == [
        ("SERVER", "revo.echo.v1.EchoService/Echo", "revo-gateway"),
        ("PRODUCER", SEND_ECHO, "revo-gateway"),
        ("CONSUMER", PROCESS_ECHO, "revo-node"),
        ("INTERNAL", "echo/Echo", "revo-node"),
    ]
    server, send, process, engine = spans
    assert {k: server.attributes[k] for k in ("rpc.system", "rpc.service", "rpc.method",
                                              "rpc.grpc.status_code")} == {
        "rpc.system": "grpc", "rpc.service": ECHO_SERVICE, "rpc.method": "Echo",
        "rpc.grpc.status_code": 0}
    assert send.attributes["messaging.system"] == "nats"
    assert send.attributes["messaging.destination.name"] == \
        "revo.rpc.revo.echo.v1.EchoService.Echo"
    assert process.attributes["messaging.consumer.group.name"]
    assert process.attributes["revo.node.id"] == "traced"
    assert engine.attributes["revo.engine.name"] == "echo"
    assert {s.status for s in spans} == {"UNSET"}
    assert process.trace_state == "acme=7"  # tracestate travels with traceparent


async def test_an_engine_calling_another_engine_nests_its_call_in_the_trace(
        traced_mesh: TracedMesh) -> None:
    trace_id, _, traceparent = _traceparent()
    assert (await _relay(traced_mesh, traceparent)).payload == b"hi"
    spans = await traced_mesh.wait_for_spans(trace_id, 7)
    assert _chain(spans) == [
        ("SERVER", "revo.relaytest.v1.RelayService/Relay", "revo-gateway"),
        ("PRODUCER", SEND_RELAY, "revo-gateway"),
        ("CONSUMER", PROCESS_RELAY, "revo-node"),
        ("INTERNAL", "relay/Relay", "revo-node"),
        ("PRODUCER", SEND_ECHO, "revo-node"),  # the relay engine's call to echo
        ("CONSUMER", PROCESS_ECHO, "revo-node"),
        ("INTERNAL", "echo/Echo", "revo-node"),
    ]


async def test_a_failed_call_marks_its_spans_as_errors(traced_mesh: TracedMesh) -> None:
    trace_id, _, traceparent = _traceparent()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await _relay(traced_mesh, traceparent, crash=True)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    spans = await traced_mesh.wait_for_spans(trace_id, 4)
    assert [s.kind for s in spans] == ["SERVER", "PRODUCER", "CONSUMER", "INTERNAL"]
    for span in spans:  # a server fault: an error on both sides of every hop
        assert (span.status, span.attributes["rpc.grpc.status_code"],
                span.attributes["error.type"]) == ("ERROR", 13, "INTERNAL"), span.name
    assert "RuntimeError" in spans[0].status_message


async def test_a_refused_request_is_an_error_for_the_caller_not_the_server(
        traced_mesh: TracedMesh) -> None:
    trace_id, _, traceparent = _traceparent()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _echo(traced_mesh, traceparent, delay_ms=60_001)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    spans = await traced_mesh.wait_for_spans(trace_id, 4)
    statuses = {s.kind: (s.status, s.attributes["rpc.grpc.status_code"]) for s in spans}
    # the gRPC conventions: INVALID_ARGUMENT is the client's error, not the server's
    assert statuses == {"SERVER": ("UNSET", 3), "PRODUCER": ("ERROR", 3),
                        "CONSUMER": ("UNSET", 3), "INTERNAL": ("UNSET", 3)}


async def test_a_caller_that_does_not_sample_is_not_traced_anywhere(
        traced_mesh: TracedMesh) -> None:
    unsampled, _, traceparent = _traceparent(sampled=False)
    await _echo(traced_mesh, traceparent)
    sampled, _, traceparent = _traceparent()
    await _echo(traced_mesh, traceparent)
    # the node exports in order: once the later trace arrived, the earlier one would have
    await traced_mesh.wait_for_spans(sampled, 4)
    assert traced_mesh.spans(unsampled) == []


async def test_only_the_gateway_starts_traces(traced_mesh: TracedMesh) -> None:
    """The gateway samples nothing (ratio 0); the node process would sample everything
    (ratio 1) if it started traces of its own: calls without a traceparent must leave no
    span in either process."""
    tracing.shutdown()  # the fixture's exporter is shut down with it
    exporter = traced_mesh.exporter = InMemorySpanExporter()
    tracing.configure(TracingSettings(enabled=True, sample_ratio=0.0,
                                      service_name="revo-gateway"), exporter=exporter)
    stub = echo_pb2_grpc.EchoServiceStub(traced_mesh.channel)
    for _ in range(20):
        await stub.Echo(echo_pb2.EchoRequest(payload=b"hi"), timeout=10)
    sampled, _, traceparent = _traceparent()  # the caller's decision still holds
    await _echo(traced_mesh, traceparent)
    # the node exports in order: once this trace arrived, any earlier span would have
    await traced_mesh.wait_for_spans(sampled, 4)
    others = [s.name for s in traced_mesh.receiver.spans if s.trace_id != sampled]
    assert others == []
    assert [s.name for s in from_sdk(exporter.get_finished_spans())
            if s.trace_id != sampled] == []


KEY_ENV = "REVO_TEST_TRACING_KEY"
PROMPT = "List three primes please"


@pytest.mark.parametrize("capture", [False, True], ids=["default", "capture_content"])
async def test_a_generation_span_follows_the_genai_conventions(
        mesh_harness: Any, monkeypatch: pytest.MonkeyPatch, capture: bool) -> None:
    tracing.shutdown()
    exporter = InMemorySpanExporter()
    tracing.configure(TracingSettings(enabled=True, capture_content=capture), exporter=exporter)
    monkeypatch.setenv(KEY_ENV, "sk-tracing")
    try:
        with FakeLLMServer(api_key="sk-tracing") as fake:
            catalog = [{"name": "cheap", "provider": "openai", "upstream": "gpt-test",
                        "base_url": fake.openai_base_url, "api_key_env": KEY_ENV}]
            mesh = await mesh_harness(plugins={"only": ["models"]},
                                      models={"catalog": catalog, "retries": 0})
            fake.script(answer("two three five"))
            trace_id, _, traceparent = _traceparent()
            stub = models_pb2_grpc.ModelServiceStub(mesh.channel)
            request = models_pb2.GenerateRequest(
                messages=[models_pb2.Message(role="user", content=PROMPT)])
            async for _ in stub.Generate(request, timeout=20,
                                         metadata=(("traceparent", traceparent),)):
                pass
            await wait_for(lambda: len(tree(from_sdk(exporter.get_finished_spans()),
                                            trace_id)) >= 5, 10, "the generation's spans")
    finally:
        tracing.shutdown()
    spans = tree(from_sdk(exporter.get_finished_spans()), trace_id)
    assert [(s.kind, s.name) for s in spans] == [
        ("SERVER", "revo.models.v1.ModelService/Generate"),
        ("PRODUCER", "send revo.rpc.revo.models.v1.ModelService.Generate"),
        ("CONSUMER", "process revo.rpc.revo.models.v1.ModelService.Generate"),
        ("INTERNAL", "models/Generate"),
        ("CLIENT", "chat gpt-test"),
    ]
    _chain(spans)
    chat = spans[-1].attributes
    assert {k: chat[k] for k in ("gen_ai.operation.name", "gen_ai.provider.name",
                                 "gen_ai.request.model", "gen_ai.response.model",
                                 "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
                                 "gen_ai.response.finish_reasons")} == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-test", "gen_ai.response.model": "gpt-test",
        "gen_ai.usage.input_tokens": len(PROMPT.split()), "gen_ai.usage.output_tokens": 3,
        "gen_ai.response.finish_reasons": ("stop",)}
    recorded = " ".join(str(v) for s in spans for v in s.attributes.values())
    if capture:
        assert PROMPT in chat["gen_ai.input.messages"]
        assert "two three five" in chat["gen_ai.output.messages"]
    else:  # no prompt or completion text anywhere unless the operator asks for it
        assert "primes" not in recorded
        assert "three five" not in recorded
        assert not {"gen_ai.input.messages", "gen_ai.output.messages"} & chat.keys()
