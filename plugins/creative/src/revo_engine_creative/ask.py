"""A request, checked and resolved against the engine's settings: :class:`Ask`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mesh.errors import InvalidArgument
from revo_engine_creative.settings import CreativeSettings
from revo_engine_creative.strategies import Perspective
from revo_engine_creative.v1 import creative_pb2 as pb
from revo_engine_recall.v1 import recall_pb2

__all__ = ["MAX_N", "MIN_N", "Ask", "JudgingMode", "read_ask"]

MIN_N, MAX_N, DEFAULT_N = 3, 8, 5
_CONSTRAINT_BYTES = 2000

JudgingMode = Literal["rubric", "pairwise", "none"]
_JUDGING: dict[int, JudgingMode] = {pb.JUDGING_RUBRIC: "rubric",
                                    pb.JUDGING_PAIRWISE: "pairwise", pb.JUDGING_NONE: "none"}


@dataclass(frozen=True)
class Ask:
    """What one Generate asks for, every default filled in."""

    problem: str
    n: int
    constraints: tuple[str, ...]
    context: str
    perspectives: tuple[Perspective, ...]
    """The catalog to draw strategies from, in order (n + spares of them are used)."""
    models: tuple[str, ...]
    force_local: bool
    cost_limit_usd: float
    max_tokens: int
    threshold: float
    judging: JudgingMode
    judge_models: tuple[str, ...]
    min_candidates: int
    history_scopes: tuple[recall_pb2.Scope, ...]
    skip_history: bool


def _size(text: str) -> int:
    return len(text.encode())


def read_ask(request: pb.GenerateRequest, settings: CreativeSettings) -> Ask:
    """The request as an :class:`Ask`; ``INVALID_ARGUMENT`` naming every wrong field."""
    wrong: list[tuple[str, str]] = []
    options = request.options
    n = request.n or DEFAULT_N
    if not MIN_N <= n <= MAX_N:
        wrong.append(("n", f"must be between {MIN_N} and {MAX_N} (0 means {DEFAULT_N}), "
                           f"got {request.n}"))
    if not request.problem.strip():
        wrong.append(("problem", "is empty: say what should be solved"))
    elif _size(request.problem) > settings.problem_limit_bytes:
        wrong.append(("problem", f"is {_size(request.problem)} bytes, over the limit of "
                                 f"{settings.problem_limit_bytes}; put background in "
                                 "context"))
    if _size(request.context) > settings.context_limit_bytes:
        wrong.append(("context", f"is {_size(request.context)} bytes, over the limit of "
                                 f"{settings.context_limit_bytes}"))
    if len(request.constraints) > settings.constraint_limit:
        wrong.append(("constraints", f"has {len(request.constraints)} items, at most "
                                     f"{settings.constraint_limit} are accepted"))
    for i, constraint in enumerate(request.constraints):
        if not constraint.strip():
            wrong.append((f"constraints[{i}]", "is empty"))
        elif _size(constraint) > _CONSTRAINT_BYTES:
            wrong.append((f"constraints[{i}]", f"is over {_CONSTRAINT_BYTES} bytes"))
    catalog = {p.name: p for p in settings.perspectives}
    if options.perspectives:
        unknown = [name for name in options.perspectives if name not in catalog]
        if unknown:
            wrong.append(("options.perspectives", f"has unknown names "
                          f"{', '.join(repr(u[:40]) for u in unknown[:5])}; known: "
                          f"{', '.join(catalog)}"))
        if len(set(options.perspectives)) != len(options.perspectives):
            wrong.append(("options.perspectives", "names a perspective twice"))
        chosen = tuple(catalog[name] for name in dict.fromkeys(options.perspectives)
                       if name in catalog)
        if not unknown and len(chosen) < n:
            wrong.append(("options.perspectives", f"names {len(chosen)}, fewer than the "
                                                  f"{n} candidates asked for"))
    else:
        chosen = tuple(settings.perspectives)
        if len(chosen) < n:
            wrong.append(("n", f"the catalog has {len(chosen)} perspectives, fewer than "
                               f"{n}: configure more in [[engines.creative.perspectives]]"))
    if not 0.0 <= options.similarity_threshold <= 1.0:
        wrong.append(("options.similarity_threshold", f"must be between 0 (default) and 1, "
                                                      f"got {options.similarity_threshold:g}"))
    if options.cost_limit_usd < 0:
        wrong.append(("options.cost_limit_usd", "must be 0 (no limit) or more"))
    if options.max_tokens > 8192:
        wrong.append(("options.max_tokens", f"must be at most 8192, got {options.max_tokens}"))
    if options.judging not in (pb.JUDGING_UNSPECIFIED, *_JUDGING):
        wrong.append(("options.judging", f"unknown value {options.judging}"))
    if options.min_candidates > n:
        wrong.append(("options.min_candidates", f"must be at most n ({n}), got "
                                                f"{options.min_candidates}"))
    if wrong:
        raise InvalidArgument(violations=wrong)
    return Ask(
        problem=request.problem, n=n,
        constraints=tuple(c.strip() for c in request.constraints),
        context=request.context, perspectives=chosen,
        models=tuple(dict.fromkeys(options.models)), force_local=options.force_local,
        cost_limit_usd=options.cost_limit_usd,
        max_tokens=options.max_tokens or settings.max_tokens,
        threshold=options.similarity_threshold or settings.similarity_threshold,
        judging=_JUDGING.get(options.judging, settings.judging),
        judge_models=tuple(options.judge_models) or tuple(settings.judge_models),
        min_candidates=min(n, options.min_candidates or settings.min_candidates),
        history_scopes=tuple(options.history_scopes), skip_history=options.skip_history)
