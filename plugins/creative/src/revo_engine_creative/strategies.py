"""What makes candidates differ: perspectives, a temperature schedule and a model mix.

A model asked the same question several times answers nearly the same way each time, so
Creative never asks the same question twice. Each candidate gets a distinct
:class:`Strategy`: a *perspective* from the catalog (a way of attacking the problem, given
to the model as its role), a *temperature* spread evenly over the configured range, and,
where several models are allowed, the next model in turn. The prompts built here are the
only text Creative sends to a generating model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DEFAULT_PERSPECTIVES", "Perspective", "Strategy", "generation_messages",
           "plan", "split_rationale", "temperatures"]


class Perspective(BaseModel):
    """One way of attacking a problem: ``[[engines.creative.perspectives]]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$", description="the name callers use")
    description: str = Field(min_length=1, max_length=200, description="one line, shown to "
                             "callers and to the model")
    instruction: str = Field(min_length=1, max_length=2000, description="how the model "
                             "should approach the problem from this perspective")


DEFAULT_PERSPECTIVES: tuple[Perspective, ...] = (
    Perspective(name="pragmatist", description="the smallest change that solves it with "
                "what already exists",
                instruction="Prefer the simplest fix that works today with the tools, code "
                "and infrastructure already in place. Avoid new components."),
    Perspective(name="minimalist", description="solve it by removing or reducing, not "
                "adding",
                instruction="Look for something to delete, disable, narrow or simplify so "
                "that the problem disappears. Adding code is the last resort."),
    Perspective(name="architect", description="restructure so the problem cannot recur",
                instruction="Change the structure: boundaries, ownership, data flow or "
                "interfaces, so that this class of problem cannot happen again."),
    Perspective(name="performance", description="measure first, then attack the hot path",
                instruction="Treat it as a question of where time, memory or I/O goes. "
                "Propose what to measure and the optimization the measurement would point "
                "to."),
    Perspective(name="reliability", description="failure modes, retries, idempotency and "
                "visibility",
                instruction="Think about what fails, how often, and how it is detected and "
                "recovered from: timeouts, retries, idempotency, alerts."),
    Perspective(name="security", description="the threat model first",
                instruction="Ask who could abuse this and how. Propose the solution that "
                "is also safe against misuse, leaks and privilege mistakes."),
    Perspective(name="contrarian", description="question the premise; the problem may be "
                "elsewhere",
                instruction="Challenge the way the problem is framed. Argue that the real "
                "cause or the better lever is somewhere else, and solve that instead."),
    Perspective(name="analogist", description="borrow a proven solution from another "
                "field",
                instruction="Find a field or system that solved an analogous problem "
                "(databases, networking, logistics, biology...) and adapt its solution."),
    Perspective(name="user", description="what the people affected need; process or "
                "product over code",
                instruction="Start from the people who live with the problem. A change of "
                "process, default, workflow or communication may beat a code change."),
    Perspective(name="data", description="change the data model or its representation",
                instruction="Look at how the data is shaped, stored, indexed, cached or "
                "moved. Changing its representation may dissolve the problem."),
)
"""The built-in catalog (docs/creative.md), used when ``perspectives`` is not configured."""


@dataclass(frozen=True)
class Strategy:
    """How one candidate is generated."""

    perspective: Perspective
    temperature: float
    model: str
    """A catalog model, or "auto" (the router's choice)."""


def temperatures(count: int, low: float, high: float) -> list[float]:
    """``count`` temperatures evenly spread from ``low`` to ``high``, rounded to 0.01."""
    if count <= 1:
        return [round(low, 2)] * count
    step = (high - low) / (count - 1)
    return [round(low + i * step, 2) for i in range(count)]


def plan(count: int, perspectives: Sequence[Perspective], models: Sequence[str],
         low: float, high: float) -> list[Strategy]:
    """``count`` strategies: the first ``count`` perspectives, each with its own temperature
    and the next of ``models`` in turn ("auto" when none is given). Temperatures are
    interleaved (low, high, second lowest, ...) so that the first few candidates already
    span the range."""
    if count > len(perspectives):
        raise ValueError(f"{count} strategies need {count} perspectives, got "
                         f"{len(perspectives)}")
    spread = temperatures(count, low, high)
    order = [spread[(i // 2) if i % 2 == 0 else count - 1 - i // 2] for i in range(count)]
    return [Strategy(perspective=perspectives[i], temperature=order[i],
                     model=models[i % len(models)] if models else "auto")
            for i in range(count)]


RATIONALE = "Rationale:"
"""The line that separates a candidate's solution from its rationale."""

_SYSTEM = """You are one of several engineers who each propose a genuinely different \
solution to the same problem.
Perspective: {name}: {description}
{instruction}
Write your solution first: concrete steps someone could act on. Then, on a line of its \
own, write "{rationale}" followed by one or two sentences on why this approach fits."""


def generation_messages(problem: str, constraints: Sequence[str], context: str,
                        strategy: Strategy, too_close_to: str = "") -> list[tuple[str, str]]:
    """The (role, content) messages that ask for one candidate. With ``too_close_to``, the
    candidate is a regeneration: the model is shown the sibling it came too close to and
    asked for a fundamentally different approach."""
    perspective = strategy.perspective
    system = _SYSTEM.format(name=perspective.name, description=perspective.description,
                            instruction=perspective.instruction, rationale=RATIONALE)
    user = f"Problem:\n{problem.strip()}"
    if constraints:
        user += "\n\nConstraints (every solution must meet them):\n" + "\n".join(
            f"- {c.strip()}" for c in constraints)
    if context.strip():
        user += f"\n\nContext:\n{context.strip()}"
    if too_close_to:
        user += ("\n\nAnother engineer already proposed this:\n<<<\n"
                 f"{too_close_to.strip()}\n>>>\nYour first answer was too close to it. "
                 "Propose a fundamentally different approach, still from your perspective.")
    return [("system", system), ("user", user)]


_RATIONALE_LINE = re.compile(r"^\s*(?:\*\*)?rationale(?:\*\*)?\s*:(?:\*\*)?\s*",
                             re.IGNORECASE | re.MULTILINE)


def split_rationale(answer: str) -> tuple[str, str]:
    """The solution and the rationale of a model's answer: the text before and after its
    last "Rationale:" line (no such line: the whole answer and "")."""
    found = list(_RATIONALE_LINE.finditer(answer))
    if not found:
        return answer.strip(), ""
    last = found[-1]
    solution, rationale = answer[:last.start()].strip(), answer[last.end():].strip()
    if not solution:  # only a rationale: keep the text whole as the solution
        return answer.strip(), ""
    return solution, rationale
