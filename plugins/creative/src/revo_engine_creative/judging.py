"""How candidates are judged: the prompts judges get and how their verdicts are read.

Two ways, both free of position bias (an LLM judge prefers whichever answer it reads first
or last, depending on the model):

- **rubric**: a judge sees one candidate alone and scores it against the rubric, so no
  candidate has a position to be favoured by;
- **pairwise**: a judge compares two candidates, and every pair is compared in both orders,
  so each candidate is shown first exactly as often as second.

A verdict that cannot be read (no score, no A/B/TIE) counts as that judge abstaining.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["DEFAULT_RUBRIC", "Preference", "pairwise_messages", "parse_preference",
           "parse_score", "rubric_messages"]

DEFAULT_RUBRIC = """\
- Correctness: would it actually solve the problem as stated?
- Feasibility: can a team carry it out with reasonable effort and risk?
- Constraints: does it respect every constraint given?
- Specificity: are the steps concrete enough to act on?"""

_RUBRIC_SYSTEM = """You are a strict senior reviewer. Judge one proposed solution to a \
problem on its own merits.
Rubric:
{rubric}
Reply with one or two sentences of reasoning, then a final line exactly like "Score: N/10" \
where N is an integer from 0 (useless) to 10 (excellent)."""

_PAIRWISE_SYSTEM = """You are a strict senior reviewer. Compare two proposed solutions to \
the same problem.
Rubric:
{rubric}
Reply with one sentence of reasoning, then a final line exactly like "Winner: A", \
"Winner: B" or "Winner: TIE"."""


def _problem_block(problem: str, constraints: Sequence[str]) -> str:
    text = f"Problem:\n{problem.strip()}"
    if constraints:
        text += "\n\nConstraints:\n" + "\n".join(f"- {c.strip()}" for c in constraints)
    return text


def rubric_messages(rubric: str, problem: str, constraints: Sequence[str],
                    candidate: str) -> list[tuple[str, str]]:
    """The (role, content) messages asking one judge to score ``candidate``."""
    return [("system", _RUBRIC_SYSTEM.format(rubric=rubric.strip())),
            ("user", f"{_problem_block(problem, constraints)}\n\nCandidate solution:\n<<<\n"
                     f"{candidate.strip()}\n>>>")]


def pairwise_messages(rubric: str, problem: str, constraints: Sequence[str],
                      first: str, second: str) -> list[tuple[str, str]]:
    """The messages asking one judge to compare ``first`` (shown as A) with ``second`` (B)."""
    return [("system", _PAIRWISE_SYSTEM.format(rubric=rubric.strip())),
            ("user", f"{_problem_block(problem, constraints)}\n\nSolution A:\n<<<\n"
                     f"{first.strip()}\n>>>\n\nSolution B:\n<<<\n{second.strip()}\n>>>")]


_SCORE = re.compile(r"score\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?))?",
                    re.IGNORECASE)


def parse_score(verdict: str) -> float | None:
    """The last "Score: N/10" of ``verdict`` as a fraction in [0, 1] (a missing
    denominator means 10); None when there is none or it is out of range."""
    found = list(_SCORE.finditer(verdict))
    if not found:
        return None
    value, scale = found[-1].group(1), found[-1].group(2)
    denominator = float(scale) if scale else 10.0
    if denominator <= 0:
        return None
    score = float(value) / denominator
    return score if 0.0 <= score <= 1.0 else None


Preference = str
"""``"A"``, ``"B"`` or ``"TIE"``."""

_WINNER = re.compile(r"winner\s*[:=]?\s*\**\s*(A|B|TIE)\b", re.IGNORECASE)


def parse_preference(verdict: str) -> Preference | None:
    """The last "Winner: A|B|TIE" of ``verdict``; None when there is none."""
    found = list(_WINNER.finditer(verdict))
    return found[-1].group(1).upper() if found else None
