"""``Judge``: given solutions scored against a rubric, each alone, by every judge model.

The same rubric judging a set gets (:mod:`revo_engine_creative.judging`), offered on its
own so that an evaluator outside a set can use it: a Coordinator workflow scores the
candidates of a set with different rubrics in parallel and lets the evaluators vote
(the built-in ``solve``). Judge calls go through the model router and the caller's budget
like a set's: the estimate of every call is reserved before the first is made.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import numpy as np

from mesh.engine import Context
from mesh.errors import FailedPrecondition, InvalidArgument
from mesh.v1 import models_pb2, models_pb2_grpc
from revo_engine_creative import judging
from revo_engine_creative.budget import Prices, SetBudget, no_generating_model
from revo_engine_creative.completion import complete
from revo_engine_creative.v1 import creative_pb2 as pb

if TYPE_CHECKING:
    from revo_engine_creative.engine import CreativeEngine

__all__ = ["MAX_SOLUTIONS", "judge_solutions"]

MAX_SOLUTIONS = 8
_REASONING_CHARS = 1000


def _check(request: pb.JudgeRequest, problem_limit: int, solution_limit: int,
           constraint_limit: int) -> None:
    wrong: list[tuple[str, str]] = []
    if not request.problem.strip():
        wrong.append(("problem", "is empty: say what the solutions solve"))
    elif len(request.problem.encode()) > problem_limit:
        wrong.append(("problem", f"is over the limit of {problem_limit} bytes"))
    if not 1 <= len(request.solutions) <= MAX_SOLUTIONS:
        wrong.append(("solutions", f"must have 1 to {MAX_SOLUTIONS} items, got "
                                   f"{len(request.solutions)}"))
    for i, solution in enumerate(request.solutions):
        if not solution.strip():
            wrong.append((f"solutions[{i}]", "is empty"))
        elif len(solution.encode()) > solution_limit:
            wrong.append((f"solutions[{i}]", f"is over the limit of {solution_limit} bytes"))
    if len(request.constraints) > constraint_limit:
        wrong.append(("constraints", f"has {len(request.constraints)} items, at most "
                                     f"{constraint_limit} are accepted"))
    if len(request.rubric) > 4000:
        wrong.append(("rubric", f"is {len(request.rubric)} characters, at most 4000"))
    if request.cost_limit_usd < 0:
        wrong.append(("cost_limit_usd", "must be 0 (no limit) or more"))
    if wrong:
        raise InvalidArgument(violations=wrong)


async def judge_solutions(engine: CreativeEngine, request: pb.JudgeRequest,
                          ctx: Context) -> pb.JudgeResponse:
    """Score every solution by every judge; quality is the mean of the readable scores."""
    settings = engine.settings
    _check(request, settings.problem_limit_bytes, settings.context_limit_bytes,
           settings.constraint_limit)
    channel = engine.runtime.channel(ctx)
    models = models_pb2_grpc.ModelServiceStub(channel)
    if not channel.serves(models.Generate):
        raise FailedPrecondition("no node serves revo.models.v1.ModelService, which judges "
                                 "answer through: enable the models engine (revo up does)")
    prices = Prices.of(await engine.catalog(models), request.force_local)
    if not prices.models:
        raise no_generating_model(request.force_local)
    unknown = [m for m in request.judge_models if m not in prices.models]
    if unknown:
        raise InvalidArgument(
            f"models {', '.join(repr(m[:60]) for m in unknown[:5])} cannot judge here; "
            f"models that can: {', '.join(prices.models)}",
            violations=[("judge_models", "names a model that cannot generate")])
    judges = tuple(request.judge_models) or tuple(
        m for m in settings.judge_models if m in prices.models) or (prices.cheapest(()),)
    rubric = request.rubric.strip() or settings.rubric
    constraints = [c.strip() for c in request.constraints if c.strip()]
    asks = [(index, judge, judging.rubric_messages(rubric, request.problem, constraints,
                                                   solution))
            for index, solution in enumerate(request.solutions) for judge in judges]
    budget = SetBudget(engine.budgets, ctx.caller)
    estimates = [prices.estimate(judge, messages, settings.judge_max_tokens)
                 for _, judge, messages in asks]
    await budget.reserve(estimates)
    try:
        async def ask(judge: str, messages: list[tuple[str, str]], estimate: float
                      ) -> tuple[str, models_pb2.Done]:
            await budget.hand_over(estimate)
            return await complete(models, messages, model=judge, temperature=0.0,
                                  max_tokens=settings.judge_max_tokens,
                                  force_local=request.force_local,
                                  cost_limit_usd=request.cost_limit_usd)

        results = await asyncio.gather(
            *[ask(judge, messages, estimate)
              for (_, judge, messages), estimate in zip(asks, estimates, strict=True)],
            return_exceptions=True)
    finally:
        await budget.close()
    out = pb.JudgeResponse(solutions=[pb.JudgedSolution(index=i)
                                      for i in range(len(request.solutions))])
    scores: list[list[float]] = [[] for _ in request.solutions]
    for (index, judge, _), result in zip(asks, results, strict=True):
        verdict = out.solutions[index].verdicts.add(model=judge)
        if isinstance(result, BaseException):
            if isinstance(result, asyncio.CancelledError):
                raise result
            verdict.reasoning = f"failed: {result}"[:_REASONING_CHARS]
            continue
        text, done = result
        verdict.model = done.model or judge
        verdict.reasoning = text.strip()[:_REASONING_CHARS]
        score = judging.parse_score(text)
        if score is not None:
            verdict.score = score
            scores[index].append(score)
        out.usage.prompt_tokens += done.usage.prompt_tokens
        out.usage.completion_tokens += done.usage.completion_tokens
        out.cost_usd += done.cost_usd
    if not any(scores):
        first = next((v.reasoning for s in out.solutions for v in s.verdicts), "")
        raise FailedPrecondition(f"no judge gave a readable score (\"Score: N/10\"); the "
                                 f"first reply: {first[:300]!r}")
    for solution, marks in zip(out.solutions, scores, strict=True):
        solution.quality = float(np.mean(marks)) if marks else 0.0
    out.best = max(range(len(out.solutions)), key=lambda i: (out.solutions[i].quality, -i))
    return out
