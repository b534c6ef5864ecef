"""The creative benchmark's simulated model answers as its docstring says (no sockets)."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from benchmarks.creative import (
    DOMINANT_SHARE,
    JUDGE_REPLY,
    LATENCY_S,
    HivemindModel,
    corpus_distributions,
    order,
    row_figures,
)
from benchmarks.creative_corpus import PERSPECTIVES, PROBLEMS, problem_by_key
from mesh.testing.llm import Behaviour, Reply, split_tokens

PROBLEM = PROBLEMS[0]
DRAWS = 4000


def _plain(text: str = PROBLEM.text) -> dict[str, Any]:
    return {"model": "hive", "messages": [{"role": "user", "content": text}]}


def _engine(perspective: str, *, regenerate: bool = False,
            problem: str = PROBLEM.text) -> dict[str, Any]:
    user = f"Problem:\n{problem}\n\nConstraints: none."
    if regenerate:
        user += "\n\nA sibling answered this already and yours is too close to it: differ."
    system = (f"You propose one solution.\nPerspective: {perspective}: sees it one way.\n"
              "Answer in three sentences.")
    return {"model": "hive", "messages": [{"role": "system", "content": system},
                                          {"role": "user", "content": user}]}


def _share(model: HivemindModel, body: dict[str, Any], approach: str) -> float:
    return sum(model.choose(body)[0].approach == approach for _ in range(DRAWS)) / DRAWS


def _close(observed: float, expected: float) -> bool:
    """Within 5 standard errors of a binomial share over DRAWS draws."""
    return abs(observed - expected) <= 5 * math.sqrt(expected * (1 - expected) / DRAWS) + 1e-9


def test_the_corpus_has_every_perspective_and_distinct_texts() -> None:
    texts = [t for p in PROBLEMS for _, t in p.all_answers()]
    assert len(texts) == len(set(texts))
    for problem in PROBLEMS:
        assert set(problem.approaches) == set(PERSPECTIVES)
        assert len(problem.dominant) >= 5
        assert problem_by_key(problem.key) is problem
    with pytest.raises(KeyError, match="known"):
        problem_by_key("nope")


def test_a_plain_prompt_gets_the_hivemind_distribution() -> None:
    model = HivemindModel(seed=1)
    assert _close(_share(model, _plain(), "dominant"), DOMINANT_SHARE)
    # the rest is spread evenly over the perspectives' approaches
    assert _close(_share(model, _plain(), "security"), (1 - DOMINANT_SHARE) / len(PERSPECTIVES))
    kinds = {c.kind for c in model.calls}
    assert kinds == {"plain"}
    assert {c.problem for c in model.calls} == {PROBLEM.key}


@pytest.mark.parametrize("adherence", [0.5, 0.0, 1.0])
def test_a_perspective_is_followed_with_probability_q(adherence: float) -> None:
    model = HivemindModel(adherence=adherence, seed=2)
    own = adherence + (1 - adherence) * (1 - DOMINANT_SHARE) / len(PERSPECTIVES)
    assert _close(_share(model, _engine("contrarian"), "contrarian"), own)
    assert _close(_share(model, _engine("contrarian"), "dominant"),
                  (1 - adherence) * DOMINANT_SHARE)
    assert {c.perspective for c in model.calls} == {"contrarian"}
    assert {c.kind for c in model.calls} == {"perspective"}


def test_a_regeneration_is_answered_like_its_perspective() -> None:
    model = HivemindModel(adherence=0.5, seed=3)
    assert _close(_share(model, _engine("data", regenerate=True), "data"),
                  0.5 + 0.5 * (1 - DOMINANT_SHARE) / len(PERSPECTIVES))
    assert {c.kind for c in model.calls} == {"regeneration"}


def test_judges_and_unknown_problems_are_recognised() -> None:
    model = HivemindModel(seed=4)
    judge = {"messages": [{"role": "system", "content": "Rubric: correctness 0-10"},
                          {"role": "user", "content": f"Problem:\n{PROBLEM.text}\nCandidate"}]}
    call, behaviour = model.choose(judge)
    assert (call.kind, behaviour.text) == ("judge", JUDGE_REPLY)
    call, _ = model.choose(_plain("What is the capital of France?"))
    assert call.kind == "unknown"
    assert call.problem is None
    call, _ = model.choose(_engine("user", problem=PROBLEMS[3].text))
    assert call.problem == PROBLEMS[3].key


def test_answers_come_from_the_problem_and_stream_over_the_drawn_latency() -> None:
    model = HivemindModel(seed=5)
    corpus = {t for _, t in PROBLEM.all_answers()}
    for _ in range(200):
        call, behaviour = model.choose(_engine("architect"))
        assert call.text in corpus
        assert behaviour.text == call.text
        assert LATENCY_S[0] <= call.latency_s <= LATENCY_S[1]
        # word k of w goes k x interval after the headers: the last one at the latency
        assert behaviour.interval_s * len(split_tokens(call.text)) == pytest.approx(
            call.latency_s)
        assert model.approach_of(call.text) == call.approach


def test_paraphrases_are_dealt_without_repeating_in_a_row() -> None:
    model = HivemindModel(adherence=1.0, seed=6)
    texts = [model.choose(_engine("pragmatist"))[0].text for _ in range(2)]
    assert texts[0] != texts[1]
    assert set(texts) == set(PROBLEM.approaches["pragmatist"])


def test_the_same_seed_gives_the_same_answers() -> None:
    a, b = HivemindModel(seed=7), HivemindModel(seed=7)
    for _ in range(50):
        assert a.choose(_plain())[0].text == b.choose(_plain())[0].text


def test_calls_are_labelled_by_trial_and_marked_ended() -> None:
    model = HivemindModel(seed=8)
    with model.trial("t1"):
        _, first = model.choose(_plain())
    model.choose(_plain())
    assert [c.label for c in model.calls] == ["t1", None]
    assert not model.wait_ended("t1", 0.0)
    model.replied(_reply(first, text_done=True, complete=True))
    assert model.wait_ended("t1", 0.0)
    assert model.calls_of("t1")[0].complete is True


def test_a_call_is_complete_once_its_whole_text_is_written() -> None:
    model = HivemindModel(seed=9)
    with model.trial("t"):
        _, sent = model.choose(_plain())
        _, cut = model.choose(_plain())
    # the client left before the trailing events: the text was all written
    model.replied(_reply(sent, text_done=True, complete=False))
    model.replied(_reply(cut, text_done=False, complete=False))
    done, broken = model.calls_of("t")
    assert done.complete is True
    assert done.duration_s is not None
    assert broken.complete is False
    assert model.wait_ended("t", 0.0)


def _reply(behaviour: Behaviour, *, text_done: bool, complete: bool) -> Reply:
    now = time.monotonic()
    return Reply(behaviour, "/v1/chat/completions", now - 0.5, now - 0.1 if text_done else None,
                 now, complete)


def test_order_rotates_the_paths() -> None:
    paths = ("engine", "naive", "naive-mesh")
    assert [order(i, paths)[0] for i in range(4)] == ["engine", "naive", "naive-mesh",
                                                      "engine"]


def test_corpus_distributions_group_pairs_by_approach() -> None:
    labels = ["dominant", "dominant", "data", "data", "user"]
    vectors = [[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 1.0], [1.0, 1.0]]
    import numpy as np

    spread = corpus_distributions(labels, np.array(vectors))
    assert spread["dominant"]["pairs"] == 1
    assert spread["dominant"]["min"] > 0.9
    assert spread["same_perspective"]["pairs"] == 1
    assert spread["distinct"]["pairs"] == 8


def _trial(path: str, trial: int, wall: float, slowest: float, chain: float, vendi: float,
           regenerations: int = 0) -> dict[str, Any]:
    return {"path": path, "trial": trial, "error": None, "wall_s": wall, "vendi": vendi,
            "mean_cosine": 0.5, "text_approaches": ["dominant"], "summary": None,
            "upstream": {"slowest_call_s": slowest, "longest_chain_s": chain,
                         "regenerations": regenerations, "incomplete": 0,
                         "generation_calls": 5 + regenerations}}


def test_row_figures_follow_the_documented_definitions() -> None:
    trials = [_trial("engine", 0, 0.9, 0.8, 0.8, 4.0), _trial("naive", 0, 0.82, 0.8, 0.8, 2.0),
              _trial("engine", 1, 1.5, 0.7, 1.4, 3.0, regenerations=1),
              _trial("naive", 1, 0.71, 0.7, 0.7, 2.0)]
    figures = row_figures(trials)["figures"]
    # wall / slowest call, p50 of 0.9/0.8 and 1.5/0.7
    assert figures["ratio_wall_to_slowest_call"] == pytest.approx(
        round((0.9 / 0.8 + 1.5 / 0.7) / 2, 3))
    assert figures["ratio_wall_to_slowest_call_no_regeneration"] == pytest.approx(
        round(0.9 / 0.8, 3))
    # (engine wall - longest chain) - (naive wall - slowest naive call), ms: 80 and 90
    assert figures["overhead_ms_p50"] == pytest.approx(85.0)
    assert figures["vendi_ratio_to_naive"] == pytest.approx(3.5 / 2.0)


def test_the_vendi_ceiling_draws_one_answer_of_each_of_n_different_approaches() -> None:
    import random

    import numpy as np

    from benchmarks.creative import N, vendi_ceiling

    # two paraphrases (identical vectors) of each of 6 orthogonal approaches
    labels = [f"a{i}" for i in range(6) for _ in range(2)]
    vectors = np.repeat(np.eye(6), 2, axis=0)
    scores = vendi_ceiling(labels, vectors, random.Random(1))
    assert scores == pytest.approx([float(N)] * len(scores)), "never two of one approach"
