"""Creative through a real gateway and node: the models engine on a real Triton embedder,
generations and judges from a loopback OpenAI-compatible server scripted per perspective."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mesh.config import TracingSettings
from mesh.embedded.triton import TritonServer
from mesh.models.budget import Budgets
from mesh.models.router import estimate_tokens
from mesh.observability import tracing
from mesh.testing import MeshHarness, wait_for
from mesh.testing.llm import FakeLLMServer, hang, status
from mesh.testing.traces import SpanRecord, from_sdk, tree
from revo_engine_creative.strategies import DEFAULT_PERSPECTIVES, generation_messages, plan
from revo_engine_creative.v1 import creative_pb2 as pb
from revo_engine_creative.v1 import creative_pb2_grpc
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
from tests.integration.creative_support import messages as messages_of
from tests.integration.recall_support import collection
from tests.integration.test_auth import AUTH, add_user, bearer, login, remove_users_since


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
    async def start(*, paid: bool = False, second: bool = False,
                    plugins: tuple[str, ...] = ("creative", "models"),
                    creative: dict[str, Any] | None = None, **sections: Any) -> MeshHarness:
        models = {"catalog": catalog(fake, paid=paid, second=second), "retries": 0,
                  "timeout_s": 10.0,
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
        assert 0 < candidate.novelty <= 1
        assert 0 < candidate.innovation <= 1
        assert candidate.model == "fake"
        assert candidate.usage.completion_tokens > 0
        assert candidate.verdicts
        assert "Score: 8/10" in candidate.verdicts[0]
    assert sorted(summary.ranking) == [0, 1, 2, 3, 4]
    assert 3.0 < summary.vendi_score <= 5.0
    assert summary.mean_pairwise_cosine < 0.6
    assert summary.rejected == 0
    assert not summary.failures
    assert len(summary.scores) == 5
    assert summary.set_id
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
    assert len(regenerated) == 1
    assert regenerated[0].text == DIFFERENT
    assert summary.mean_pairwise_cosine < 0.6


async def test_novelty_counts_solutions_chosen_before_in_the_callers_scopes(
        mesh: Callable[..., Any], model: ScriptedModel) -> None:
    harness = await mesh(plugins=("creative", "models", "recall"), auth=AUTH,
                         engines={"recall": {"collection": collection()}})
    await harness.wait_for_service("revo.recall.v1.RecallService")
    pool: Any = harness.nodes[0].pools["recall"]
    await wait_for(lambda: pool.engine.replica.index is not None, 30, "the memory index")
    try:
        alice = bearer((await login(harness.channel, await add_user(harness, "developer")))
                       .access_token)
        bob = bearer((await login(harness.channel, await add_user(harness, "developer")))
                     .access_token)
        stub = _stub(harness)
        first = await stub.GenerateSet(pb.GenerateSetRequest(
            problem=PROBLEM, n=3, options=pb.Options(
                judging=pb.JUDGING_NONE,
                perspectives=["pragmatist", "architect", "contrarian"])),
            metadata=alice, timeout=60)
        assert first.summary.history_matches == 0
        chosen = next(c for c in first.candidates if c.strategy.perspective == "pragmatist")
        # Only the set's owner may choose from it.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Choose(pb.ChooseRequest(set_id=first.summary.set_id,
                                               index=chosen.index), metadata=bob, timeout=30)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        remembered = await stub.Choose(pb.ChooseRequest(set_id=first.summary.set_id,
                                                        index=chosen.index),
                                       metadata=alice, timeout=30)
        assert remembered.memory_id

        # Later, the minimalist proposes what alice chose before: it is not novel for her.
        model.answers["minimalist"] = SOLUTIONS["pragmatist"]
        ask = pb.GenerateSetRequest(problem=PROBLEM.replace("six", "seven"), n=3,
                                    options=pb.Options(judging=pb.JUDGING_NONE, perspectives=[
                                        "minimalist", "user", "data"]))
        again = await stub.GenerateSet(ask, metadata=alice, timeout=60)
        assert again.summary.history_matches >= 1
        repeat = next(c for c in again.candidates if c.strategy.perspective == "minimalist")
        assert repeat.novelty < 0.05
        others = [c for c in again.candidates if c is not repeat]
        assert min(c.novelty for c in others) > 0.2
        # Bob chose nothing: the same answer is novel in his scope.
        fresh = await stub.GenerateSet(ask, metadata=bob, timeout=60)
        assert fresh.summary.history_matches == 0
        same = next(c for c in fresh.candidates if c.strategy.perspective == "minimalist")
        assert same.novelty > 0.2
    finally:
        await remove_users_since(harness, 0)


async def test_pairwise_judging_asks_every_pair_in_both_orders(
        mesh: Callable[..., Any], model: ScriptedModel, fake: FakeLLMServer) -> None:
    # A judge that always prefers the answer shown first, unless one is the architect's.
    def biased(system: str, user: str) -> str:
        first, second = _shown(user)
        if "materialized" in first:
            return "Winner: A"
        if "materialized" in second:
            return "Winner: B"
        return "The first reads better.\nWinner: A"

    model.judge = biased
    harness = await mesh(creative={"spares": 0})
    response = await _stub(harness).GenerateSet(pb.GenerateSetRequest(
        problem=PROBLEM, n=3, options=pb.Options(
            skip_history=True, judging=pb.JUDGING_PAIRWISE,
            perspectives=["pragmatist", "architect", "contrarian"])), timeout=60)
    texts = {c.strategy.perspective: c.text for c in response.candidates}
    shown = [_shown(messages_of(r.body)[1]) for r in fake.requests
             if r.body and "Rubric:" in messages_of(r.body)[0]]
    expected = {(texts[a], texts[b]) for a in texts for b in texts if a != b}
    assert sorted(shown) == sorted(expected), "each ordered pair exactly once"
    quality = {c.strategy.perspective: c.quality for c in response.candidates}
    # The position bias cancels: pragmatist and contrarian each win only when shown first.
    assert quality == {"architect": 1.0, "pragmatist": 0.25, "contrarian": 0.25}
    assert response.summary.ranking[0] == next(c.index for c in response.candidates
                                               if c.strategy.perspective == "architect")


def _shown(user: str) -> tuple[str, str]:
    first = user.split("Solution A:\n<<<\n", 1)[1].split("\n>>>", 1)[0]
    second = user.split("Solution B:\n<<<\n", 1)[1].split("\n>>>", 1)[0]
    return first, second


async def test_a_set_over_budget_is_refused_before_any_model_call(
        mesh: Callable[..., Any], model: ScriptedModel, fake: FakeLLMServer) -> None:
    harness = await mesh(paid=True, models={"budget_usd": 0.004})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _collect(_stub(harness).Generate(_request(n=5), timeout=60))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "budget" in str(caught.value.details())
    assert not [r for r in fake.requests if r.path.endswith("/chat/completions")]


async def test_a_set_spends_what_its_calls_cost_and_holds_nothing_after(
        mesh: Callable[..., Any], model: ScriptedModel) -> None:
    harness = await mesh(paid=True, creative={"spares": 0}, models={"budget_usd": 5.0})
    _, summary = await _collect(_stub(harness).Generate(_request(n=3), timeout=60))
    assert summary.total_cost_usd > summary.judge_cost_usd > 0
    budgets = Budgets(harness.nodes[0].nc, harness.config.models)
    spent = await budgets.spent_usd("")
    # every call settled to its cost (in whole micro-dollars); nothing of the set's hold left
    assert spent == pytest.approx(summary.total_cost_usd, abs=6e-6)


async def test_cancelling_the_stream_closes_every_upstream_call_and_settles_the_budget(
        mesh: Callable[..., Any], model: ScriptedModel, fake: FakeLLMServer) -> None:
    release = threading.Event()
    for name in SOLUTIONS:
        model.special[name] = hang(20, SOLUTIONS[name], until=release)
    harness = await mesh(paid=True, models={"budget_usd": 5.0})
    budgets = Budgets(harness.nodes[0].nc, harness.config.models)
    before = await budgets.spent_usd("")
    call = _stub(harness).Generate(_request(n=5), timeout=60)
    reading = asyncio.get_running_loop().create_task(_collect(call))
    try:
        await wait_for(lambda: model.count("generate") == 7, 20, "5 + 2 spare calls upstream")
        assert await budgets.spent_usd("") > before, "the set's estimate is reserved"
        call.cancel()
        await wait_for(lambda: fake.hung_up == 7, 20, "every upstream connection closed")
        # What is left is what the calls cost: each was sent its prompt (billed at $1 per
        # million tokens), none generated a token. The set's hold, and the routers' holds
        # for 600 completion tokens a call, are released.
        prompts = sum(estimate_tokens(text) for strategy in plan(
            7, DEFAULT_PERSPECTIVES, (), 0.6, 1.1) for _, text in generation_messages(
                PROBLEM, ["no new paid services"], "", strategy))
        await wait_for(lambda: _spent(budgets, before + prompts / 1e6), 20,
                       "the budget settled to the prompts' cost")
    finally:
        release.set()
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await reading


async def _spent(budgets: Budgets, expected: float) -> bool:
    return await budgets.spent_usd("") == pytest.approx(expected, abs=1e-9)


async def test_a_set_with_some_failed_candidates_lists_them(
        mesh: Callable[..., Any], model: ScriptedModel) -> None:
    model.special["architect"] = status(500)
    harness = await mesh(creative={"spares": 0})
    response = await _stub(harness).GenerateSet(pb.GenerateSetRequest(
        problem=PROBLEM, n=4, options=pb.Options(
            skip_history=True, judging=pb.JUDGING_NONE,
            perspectives=["pragmatist", "architect", "contrarian", "user"])), timeout=60)
    assert len(response.candidates) == 3
    [failure] = response.summary.failures
    assert failure.perspective == "architect"
    assert failure.code == "UNAVAILABLE"


async def test_too_few_candidates_is_unavailable_with_the_causes(
        mesh: Callable[..., Any], model: ScriptedModel) -> None:
    model.special["architect"] = status(500)
    model.special["contrarian"] = status(500)
    harness = await mesh(creative={"spares": 0})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _stub(harness).GenerateSet(pb.GenerateSetRequest(
            problem=PROBLEM, n=3, options=pb.Options(
                skip_history=True, judging=pb.JUDGING_NONE,
                perspectives=["pragmatist", "architect", "contrarian"])), timeout=60)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    details = str(caught.value.details())
    assert "only 1 of 3" in details
    assert "architect" in details
    assert "contrarian" in details


@pytest.mark.parametrize(("request_", "field"), [
    (pb.GenerateSetRequest(problem=PROBLEM, n=2), "n"),
    (pb.GenerateSetRequest(problem=PROBLEM, n=9), "n"),
    (pb.GenerateSetRequest(problem="  \n"), "problem"),
    (pb.GenerateSetRequest(problem="x" * 20_000), "problem"),
    (pb.GenerateSetRequest(problem=PROBLEM, options=pb.Options(perspectives=["poet"])),
     "options.perspectives"),
    (pb.GenerateSetRequest(problem=PROBLEM, n=3, options=pb.Options(min_candidates=4)),
     "options.min_candidates"),
])
async def test_bad_requests_are_invalid_argument_naming_the_field(
        mesh: Callable[..., Any], fake: FakeLLMServer, request_: pb.GenerateSetRequest,
        field: str) -> None:
    harness = await mesh()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _stub(harness).GenerateSet(request_, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(caught.value.details()).startswith(field)
    assert not fake.requests


async def test_no_model_able_to_generate_says_what_to_configure(
        mesh: Callable[..., Any], fake: FakeLLMServer) -> None:
    harness = await mesh()
    stub = _stub(harness)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GenerateSet(pb.GenerateSetRequest(
            problem=PROBLEM, options=pb.Options(force_local=True)), timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "generator_checkpoint" in str(caught.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GenerateSet(pb.GenerateSetRequest(
            problem=PROBLEM, options=pb.Options(models=["gpt-nothing"])), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'gpt-nothing'" in str(caught.value.details())
    assert not fake.requests


async def test_without_the_models_engine_generate_says_to_enable_it(
        mesh: Callable[..., Any]) -> None:
    harness = await mesh(plugins=("creative",))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _collect(_stub(harness).Generate(_request(), timeout=30))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "enable the models engine" in str(caught.value.details())


async def test_choose_needs_a_set_that_exists_and_one_of_its_candidates(
        mesh: Callable[..., Any]) -> None:
    harness = await mesh(creative={"spares": 0})
    stub = _stub(harness)
    response = await stub.GenerateSet(pb.GenerateSetRequest(
        problem=PROBLEM, n=3, options=pb.Options(skip_history=True,
                                                 judging=pb.JUDGING_NONE)), timeout=60)
    cases = [(pb.ChooseRequest(set_id="nope"), grpc.StatusCode.INVALID_ARGUMENT),
             (pb.ChooseRequest(set_id="0" * 32), grpc.StatusCode.NOT_FOUND),
             (pb.ChooseRequest(set_id=response.summary.set_id, index=7),
              grpc.StatusCode.INVALID_ARGUMENT),
             # a real set and candidate, but no node serves Perfect Recall here
             (pb.ChooseRequest(set_id=response.summary.set_id, index=0),
              grpc.StatusCode.FAILED_PRECONDITION)]
    for request, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Choose(request, timeout=30)
        assert caught.value.code() == code, request


async def test_the_innovation_histogram_counts_every_candidate_sent(
        mesh: Callable[..., Any]) -> None:
    harness = await mesh(creative={"spares": 0})
    candidates, _ = await _collect(_stub(harness).Generate(
        _request(n=3, judging=pb.JUDGING_NONE), timeout=60))
    scrape = _scrape(harness.nodes[0].metrics.url + "/metrics")
    assert 'creative_engine_innovation_score_count{node="' in scrape
    counted = [line for line in scrape.splitlines()
               if line.startswith("creative_engine_innovation_score_count")]
    assert float(counted[0].rsplit(" ", 1)[1]) == len(candidates) == 3
    assert 'creative_engine_candidates_total{node="' in scrape


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())


async def test_spares_still_running_when_the_set_fills_are_cancelled(
        mesh: Callable[..., Any], model: ScriptedModel, fake: FakeLLMServer) -> None:
    release = threading.Event()
    model.special["user"] = hang(20, SOLUTIONS["user"], until=release)
    model.special["data"] = hang(20, SOLUTIONS["data"], until=release)
    harness = await mesh(creative={"spares": 2})
    try:
        candidates, summary = await _collect(_stub(harness).Generate(_request(
            n=3, judging=pb.JUDGING_NONE,
            perspectives=["pragmatist", "architect", "contrarian", "user", "data"]),
            timeout=30))
        assert sorted(c.strategy.perspective for c in candidates) == [
            "architect", "contrarian", "pragmatist"]
        assert summary.generation_ms > 0
        await wait_for(lambda: fake.hung_up == 2, 20, "both spares' connections closed")
    finally:
        release.set()


async def test_candidates_take_the_allowed_models_in_turn_and_every_judge_votes(
        mesh: Callable[..., Any], model: ScriptedModel, fake: FakeLLMServer) -> None:
    model.judge_by_model = {"fake": "Fine.\nScore: 6/10", "fake-b": "Great.\nScore: 9/10"}
    harness = await mesh(second=True, creative={"spares": 0})
    response = await _stub(harness).GenerateSet(pb.GenerateSetRequest(
        problem=PROBLEM, n=4, options=pb.Options(
            skip_history=True, models=["fake", "fake2"], judge_models=["fake", "fake2"])),
        timeout=60)
    by_model = sorted((c.strategy.requested_model, c.model) for c in response.candidates)
    assert by_model == [("fake", "fake"), ("fake", "fake"), ("fake2", "fake2"),
                        ("fake2", "fake2")]
    for candidate in response.candidates:
        assert candidate.quality == pytest.approx(0.75), "the mean of the two votes"
        assert len(candidate.verdicts) == 2
    asked = sorted(r.body["model"] for r in fake.requests
                   if r.body and "Rubric:" in messages_of(r.body)[0])
    assert asked == ["fake"] * 4 + ["fake-b"] * 4


async def test_judge_scores_each_solution_alone_by_every_judge_against_the_rubric(
        mesh: Callable[..., Any], model: ScriptedModel, fake: FakeLLMServer) -> None:
    def judge(system: str, user: str) -> str:
        assert "Rubric:\nBrevity above all." in system
        assert "Candidate solution:" in user
        assert "Solution A" not in user
        return "Short.\nScore: 9/10" if "minimalist" in user else "Long.\nScore: 4/10"

    model.judge = judge
    model.judge_by_model = {"fake-b": "Unsure."}  # abstains: no score
    harness = await mesh(second=True)
    stub = _stub(harness)
    solutions = ["the pragmatist plan", "the minimalist plan", "the architect plan"]
    judged = await stub.Judge(pb.JudgeRequest(
        problem=PROBLEM, constraints=["no new paid services"], solutions=solutions,
        rubric="Brevity above all.", judge_models=["fake", "fake2"]), timeout=60)
    assert judged.best == 1
    assert [round(s.quality, 2) for s in judged.solutions] == [0.4, 0.9, 0.4]
    for solution in judged.solutions:
        assert [v.model for v in solution.verdicts] == ["fake", "fake2"]
        assert not solution.verdicts[1].HasField("score"), "an unreadable verdict abstains"
        assert solution.verdicts[1].reasoning == "Unsure."
    assert judged.usage.completion_tokens > 0
    asked = [r for r in fake.requests if r.body and "Rubric:" in messages_of(r.body)[0]]
    assert len(asked) == len(solutions) * 2

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Judge(pb.JudgeRequest(problem=PROBLEM, solutions=["a", " "] * 5),
                         timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "solutions must have 1 to 8 items" in str(caught.value.details())
    assert "solutions[1] is empty" in str(caught.value.details())
    model.judge = lambda system, user: "No idea."
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Judge(pb.JudgeRequest(problem=PROBLEM, solutions=["a"]), timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no judge gave a readable score" in str(caught.value.details())


async def test_the_cost_limit_reaches_every_model_call(
        mesh: Callable[..., Any], fake: FakeLLMServer) -> None:
    harness = await mesh(paid=True, models={"budget_usd": 5.0})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _stub(harness).GenerateSet(pb.GenerateSetRequest(
            problem=PROBLEM, n=3, options=pb.Options(skip_history=True,
                                                     cost_limit_usd=1e-7)), timeout=60)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "over the cost limit" in str(caught.value.details())
    assert not [r for r in fake.requests if r.path.endswith("/chat/completions")]


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process (the gateway's and the node's), spans kept in memory."""
    tracing.shutdown()
    exporter = InMemorySpanExporter()
    tracing.configure(TracingSettings(enabled=True, service_name="revo-test"),
                      exporter=exporter)
    yield exporter
    tracing.shutdown()


async def test_a_set_is_one_trace_with_every_model_call_under_the_engine(
        mesh: Callable[..., Any], exporter: InMemorySpanExporter) -> None:
    harness = await mesh(creative={"spares": 0})
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    await _collect(_stub(harness).Generate(
        _request(n=3, perspectives=["pragmatist", "architect", "contrarian"]), timeout=60,
        metadata=(("traceparent", traceparent),)))

    def spans() -> list[SpanRecord]:
        return tree(from_sdk(exporter.get_finished_spans()), trace_id)

    # the set: Generate 3 + judge 3 model streams, 3 embeddings, and ListModels
    await wait_for(lambda: sum(s.kind == "CONSUMER" for s in spans()) >= 1 + 6 + 3 + 1, 20,
                   "the spans of every call")
    found = spans()
    by_id = {s.span_id: s for s in found}
    [engine] = [s for s in found if s.name == "creative/Generate"]
    assert engine.kind == "INTERNAL"

    def under_engine(span: SpanRecord) -> bool:
        while span.parent_id in by_id:
            span = by_id[span.parent_id]
            if span is engine:
                return True
        return False

    sent = [s.name for s in found if s.kind == "PRODUCER" and under_engine(s)]
    assert sent.count("send revo.rpc.revo.models.v1.ModelService.Generate") == 6
    assert sent.count("send revo.rpc.revo.models.v1.ModelService.Embed") == 3
    chats = [s for s in found if s.kind == "CLIENT" and s.name.startswith("chat")]
    assert len(chats) == 6
    assert all(under_engine(s) for s in chats)
