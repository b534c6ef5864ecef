"""Creative through a real gateway and node: the models engine on a real Triton embedder,
generations and judges from a loopback OpenAI-compatible server scripted per perspective."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from mesh.embedded.triton import TritonServer
from mesh.testing import MeshHarness, wait_for
from mesh.testing.llm import FakeLLMServer, hang, status
from revo_engine_creative._gen.revo.creative.v1 import creative_pb2 as pb
from revo_engine_creative._gen.revo.creative.v1 import creative_pb2_grpc
from tests.integration.creative_support import (
    DIFFERENT,
    KEY,
    KEY_ENV,
    PROBLEM,
    SERVICE,
    SOLUTIONS,
    ScriptedModel,
    catalog,
)

REPOSITORY = Path(__file__).resolve().parents[2] / "triton_models"


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    server = TritonServer(REPOSITORY, tmp_path_factory.mktemp("triton"), models=["embedder"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def model() -> ScriptedModel:
    return ScriptedModel()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, model: ScriptedModel) -> Iterator[FakeLLMServer]:
    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeLLMServer(api_key=KEY) as server:
        server.respond_with(model)
        yield server


@pytest.fixture
async def mesh(mesh_harness: Any, triton: TritonServer,
               fake: FakeLLMServer) -> Callable[..., Any]:
    async def start(*, paid: bool = False, plugins: tuple[str, ...] = ("creative", "models"),
                    creative: dict[str, Any] | None = None, **sections: Any) -> MeshHarness:
        models = {"catalog": catalog(fake, paid=paid), "retries": 0, "timeout_s": 10.0,
                  "triton_url": triton.grpc_url, **sections.pop("models", {})}
        harness: MeshHarness = await mesh_harness(
            plugins={"only": list(plugins)}, models=models,
            engines={"creative": creative or {}, **sections.pop("engines", {})}, **sections)
        await harness.wait_for_service(SERVICE)
        return harness

    return start


def _stub(harness: MeshHarness) -> Any:
    return creative_pb2_grpc.CreativeServiceStub(harness.channel)


def _request(n: int = 5, **options: Any) -> pb.GenerateRequest:
    options.setdefault("skip_history", True)
    return pb.GenerateRequest(problem=PROBLEM, n=n, constraints=["no new paid services"],
                              options=pb.Options(**options))


async def _collect(call: Any) -> tuple[list[pb.Candidate], pb.Summary]:
    candidates: list[pb.Candidate] = []
    summary = None
    async for event in call:
        assert summary is None, "nothing may follow the summary"
        if event.HasField("candidate"):
            candidates.append(event.candidate)
        else:
            summary = event.summary
    assert summary is not None, "the stream ended without a summary"
    return candidates, summary


async def test_candidates_stream_as_scored_then_one_summary(
        mesh: Callable[..., Any], model: ScriptedModel) -> None:
    # The last perspective's answer is held back until the first candidate has arrived:
    # the stream must deliver candidates while the set is still being generated.
    first_arrived = threading.Event()
    model.special["data"] = hang(20, SOLUTIONS["data"], until=first_arrived)
    harness = await mesh(creative={"spares": 0})
    call = _stub(harness).Generate(_request(n=5, perspectives=[
        "pragmatist", "architect", "contrarian", "user", "data"]), timeout=60)
    candidates: list[pb.Candidate] = []
    summary = None
    async for event in call:
        if event.HasField("candidate"):
            candidates.append(event.candidate)
            first_arrived.set()
        else:
            summary = event.summary
    assert summary is not None
    assert candidates[-1].strategy.perspective == "data", "the held one comes last"
    assert len(candidates) == 5
    assert sorted(c.index for c in candidates) == [0, 1, 2, 3, 4]
    perspectives = [c.strategy.perspective for c in candidates]
    assert sorted(perspectives) == sorted(["pragmatist", "architect", "contrarian", "user",
                                           "data"])
    assert len({c.strategy.temperature for c in candidates}) == 5, "a temperature each"
    for candidate in candidates:
        assert candidate.text == SOLUTIONS[candidate.strategy.perspective]
        assert candidate.quality == pytest.approx(0.8)
        assert 0 < candidate.novelty <= 1 and 0 < candidate.innovation <= 1
        assert candidate.model == "fake" and candidate.usage.completion_tokens > 0
        assert candidate.verdicts and "Score: 8/10" in candidate.verdicts[0]
    assert sorted(summary.ranking) == [0, 1, 2, 3, 4]
    assert 3.0 < summary.vendi_score <= 5.0
    assert summary.mean_pairwise_cosine < 0.6
    assert summary.rejected == 0 and not summary.failures
    assert len(summary.scores) == 5 and summary.set_id
    assert 0 < summary.generation_ms <= summary.wall_ms
    assert model.count("judge") == 5


async def test_a_near_duplicate_is_regenerated_with_an_instruction_to_differ(
        mesh: Callable[..., Any], model: ScriptedModel) -> None:
    # Two perspectives answer the same thing; without spares the second must be regenerated.
    model.answers["minimalist"] = SOLUTIONS["pragmatist"]
    harness = await mesh(creative={"spares": 0})
    response = await _stub(harness).GenerateSet(pb.GenerateSetRequest(
        problem=PROBLEM, n=3, options=pb.Options(
            skip_history=True, judging=pb.JUDGING_NONE,
            perspectives=["pragmatist", "minimalist", "architect"])), timeout=60)
    summary = response.summary
    assert summary.rejected == 1
    assert model.count("regenerate") == 1
    texts = sorted(c.text for c in response.candidates)
    assert texts == sorted([SOLUTIONS["pragmatist"], DIFFERENT, SOLUTIONS["architect"]])
    regenerated = [c for c in response.candidates if c.regenerations]
    assert len(regenerated) == 1 and regenerated[0].text == DIFFERENT
    assert summary.mean_pairwise_cosine < 0.6
