"""Creative's pure parts: diversity figures, strategies, verdict parsing, requests, prices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mesh.errors import InvalidArgument
from mesh.v1 import models_pb2
from revo_engine_creative import diversity, judging
from revo_engine_creative.ask import read_ask
from revo_engine_creative.budget import Prices
from revo_engine_creative.run import innovation
from revo_engine_creative.settings import CreativeSettings
from revo_engine_creative.strategies import (
    DEFAULT_PERSPECTIVES,
    Strategy,
    generation_messages,
    plan,
    split_rationale,
    temperatures,
)
from revo_engine_creative.v1 import creative_pb2 as pb

# -- diversity ---------------------------------------------------------------------------


def test_vendi_score_is_the_effective_number_of_distinct_rows() -> None:
    assert diversity.vendi_score(np.eye(5)) == pytest.approx(5.0)
    assert diversity.vendi_score(np.ones((4, 3))) == pytest.approx(1.0)
    # two identical pairs, orthogonal to each other: two distinct things
    pairs = np.array([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]])
    assert diversity.vendi_score(pairs) == pytest.approx(2.0)
    # scale does not matter: rows are normalized first
    assert diversity.vendi_score(np.eye(3) * 7) == pytest.approx(3.0)
    assert diversity.vendi_score(np.zeros((0, 3))) == 0.0


def test_vendi_score_of_partly_similar_rows_lies_between_the_extremes() -> None:
    rows = np.array([[1.0, 0.0], [math.cos(0.3), math.sin(0.3)], [0.0, 1.0]])
    score = diversity.vendi_score(rows)
    assert 1.0 < score < 3.0


def test_mean_pairwise_cosine_and_novelty() -> None:
    rows = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    expected = (0.0 + 2 * (1 / math.sqrt(2))) / 3
    assert diversity.mean_pairwise_cosine(rows) == pytest.approx(expected)
    assert diversity.mean_pairwise_cosine(rows[:1]) == 0.0
    assert diversity.novelty([1.0, 0.0], [[0.0, 1.0]]) == pytest.approx(1.0)
    assert diversity.novelty([1.0, 0.0], [[2.0, 0.0], [0.0, 1.0]]) == pytest.approx(0.0)
    assert diversity.novelty([1.0, 0.0], [[-1.0, 0.0]]) == 1.0, "clipped to [0, 1]"
    assert diversity.novelty([1.0, 0.0], np.zeros((0, 0))) == 1.0


def test_mmr_puts_a_good_different_candidate_before_a_better_near_copy() -> None:
    vectors = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]])
    assert diversity.mmr_ranking([0.9, 0.89, 0.5], vectors, 0.7) == [0, 2, 1]
    # all weight on the score: plain ordering by score
    assert diversity.mmr_ranking([0.9, 0.89, 0.5], vectors, 1.0) == [0, 1, 2]
    assert diversity.mmr_ranking([], np.zeros((0, 2))) == []


def test_innovation_needs_both_quality_and_novelty() -> None:
    assert innovation(1.0, 1.0, 0.4, judged=True) == pytest.approx(1.0)
    assert innovation(0.0, 1.0, 0.4, judged=True) == 0.0
    assert innovation(1.0, 0.0, 0.4, judged=True) == 0.0
    assert innovation(0.64, 0.25, 0.5, judged=True) == pytest.approx(0.4)
    assert innovation(0.0, 0.3, 0.4, judged=False) == pytest.approx(0.3)


# -- strategies --------------------------------------------------------------------------


def test_plan_gives_every_candidate_its_own_perspective_temperature_and_model() -> None:
    strategies = plan(5, DEFAULT_PERSPECTIVES, ("a", "b"), 0.6, 1.0)
    assert [s.perspective.name for s in strategies] == [
        p.name for p in DEFAULT_PERSPECTIVES[:5]]
    assert sorted(s.temperature for s in strategies) == [0.6, 0.7, 0.8, 0.9, 1.0]
    assert [s.temperature for s in strategies][:2] == [0.6, 1.0], "the range spanned first"
    assert [s.model for s in strategies] == ["a", "b", "a", "b", "a"]
    assert {s.model for s in plan(3, DEFAULT_PERSPECTIVES, (), 0.6, 1.0)} == {"auto"}
    with pytest.raises(ValueError, match="perspectives"):
        plan(4, DEFAULT_PERSPECTIVES[:3], (), 0.6, 1.0)
    assert temperatures(1, 0.7, 1.0) == [0.7]


def test_generation_messages_carry_the_perspective_and_the_sibling_to_differ_from() -> None:
    strategy = Strategy(DEFAULT_PERSPECTIVES[1], 0.8, "auto")
    (_, system), (_, user) = generation_messages("Fix it", ["no downtime"], "logs here",
                                                 strategy)
    assert "Perspective: minimalist:" in system
    assert user.startswith("Problem:\nFix it")
    assert "- no downtime" in user
    assert "Context:\nlogs here" in user
    assert "too close to it" not in user
    _, (_, again) = generation_messages("Fix it", [], "", strategy, too_close_to="Do X")
    assert "<<<\nDo X\n>>>" in again
    assert "too close to it" in again


@pytest.mark.parametrize(("answer", "solution", "rationale"), [
    ("Do A then B.\nRationale: it is cheap.", "Do A then B.", "it is cheap."),
    ("Do A.\n**Rationale:** cheap", "Do A.", "cheap"),
    ("Just the answer.", "Just the answer.", ""),
    ("Rationale: only a reason", "Rationale: only a reason", ""),
    ("Step 1\nrationale: first\nStep 2\nRationale: last", "Step 1\nrationale: first\nStep 2",
     "last"),
])
def test_split_rationale(answer: str, solution: str, rationale: str) -> None:
    assert split_rationale(answer) == (solution, rationale)


# -- judging -----------------------------------------------------------------------------


@pytest.mark.parametrize(("verdict", "score"), [
    ("Good.\nScore: 8/10", 0.8),
    ("score = 7", 0.7),
    ("**Score:** 9 / 10", 0.9),
    ("Score: 3/5", 0.6),
    ("Score: 4/10 at first. Final Score: 6/10", 0.6),
    ("no number here", None),
    ("Score: 12/10", None),
])
def test_parse_score(verdict: str, score: float | None) -> None:
    found = judging.parse_score(verdict)
    assert found == (pytest.approx(score) if score is not None else None)


@pytest.mark.parametrize(("verdict", "preference"), [
    ("B is simpler.\nWinner: B", "B"), ("winner: a", "A"), ("Winner: TIE", "TIE"),
    ("**Winner:** A", "A"), ("I cannot decide", None),
])
def test_parse_preference(verdict: str, preference: str | None) -> None:
    assert judging.parse_preference(verdict) == preference


def test_pairwise_messages_show_first_as_a_and_second_as_b() -> None:
    _, (_, user) = judging.pairwise_messages("R", "P", [], "one", "two")
    assert user.index("Solution A:\n<<<\none") < user.index("Solution B:\n<<<\ntwo")


# -- requests ----------------------------------------------------------------------------


def test_a_request_gets_the_engine_defaults() -> None:
    settings = CreativeSettings()
    ask = read_ask(pb.GenerateRequest(problem="Fix it"), settings)
    assert ask.n == 5
    assert ask.max_tokens == settings.max_tokens
    assert ask.threshold == settings.similarity_threshold
    assert ask.judging == "rubric"
    assert ask.min_candidates == settings.min_candidates
    assert len(ask.perspectives) == len(settings.perspectives)
    ask = read_ask(pb.GenerateRequest(problem="Fix it", n=3, options=pb.Options(
        judging=pb.JUDGING_PAIRWISE, perspectives=["data", "user", "security"],
        similarity_threshold=0.5)), settings)
    assert [p.name for p in ask.perspectives] == ["data", "user", "security"]
    assert ask.judging == "pairwise"
    assert ask.threshold == 0.5


def test_every_wrong_field_of_a_request_is_named() -> None:
    request = pb.GenerateRequest(problem="", n=12, constraints=[" "], options=pb.Options(
        perspectives=["poet"], similarity_threshold=1.5, cost_limit_usd=-1))
    with pytest.raises(InvalidArgument) as caught:
        read_ask(request, CreativeSettings())
    fields = [v.field for v in caught.value.violations]
    assert fields == ["n", "problem", "constraints[0]", "options.perspectives",
                      "options.similarity_threshold", "options.cost_limit_usd"]


def test_settings_refuse_a_catalog_that_cannot_work() -> None:
    with pytest.raises(ValueError, match="unique"):
        CreativeSettings(perspectives=[DEFAULT_PERSPECTIVES[0]] * 3)
    with pytest.raises(ValueError, match="temperature_min"):
        CreativeSettings(temperature_min=1.5, temperature_max=1.0)


# -- prices ------------------------------------------------------------------------------


def _model(name: str, *, local: bool = False, price: float = 0.0, priority: int = 1,
           healthy: bool = True) -> models_pb2.Model:
    return models_pb2.Model(name=name, generates=True, healthy=healthy, priority=priority,
                            tier=models_pb2.TIER_LOCAL if local else models_pb2.TIER_CLOUD,
                            input_usd_per_million=price, output_usd_per_million=2 * price)


def test_prices_estimate_as_the_router_reserves() -> None:
    catalog = [_model("local", local=True, priority=0, healthy=False),
               _model("cheap", price=1.0, priority=1), _model("dear", price=10.0, priority=2),
               models_pb2.Model(name="embedder", embeds=True)]
    prices = Prices.of(catalog, force_local=False)
    assert set(prices.models) == {"local", "cheap", "dear"}
    assert prices.default == "cheap", "auto starts at the healthy model of lowest priority"
    messages = [("system", "x" * 35), ("user", "y" * 35)]  # 10 + 10 estimated tokens
    assert prices.estimate("auto", messages, 100) == pytest.approx((20 * 1 + 100 * 2) / 1e6)
    assert prices.estimate("dear", messages, 100) == pytest.approx((20 * 10 + 100 * 20) / 1e6)
    assert prices.estimate("local", messages, 100) == 0.0
    assert prices.cheapest([]) == "cheap", "unhealthy models last"
    assert prices.cheapest(["dear"]) == "dear"
    local_only = Prices.of(catalog, force_local=True)
    assert set(local_only.models) == {"local"}
    assert Prices.of([], force_local=False).models == {}
