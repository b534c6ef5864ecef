"""``[engines.creative]``: the catalog of perspectives, the diversity rules, the judge."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from revo_engine_creative.judging import DEFAULT_RUBRIC
from revo_engine_creative.strategies import DEFAULT_PERSPECTIVES, Perspective

__all__ = ["CreativeSettings"]


class CreativeSettings(BaseModel):
    """Validated by the mesh (``EngineSpec.settings``); every node of a mesh should agree."""

    model_config = ConfigDict(extra="forbid")

    perspectives: list[Perspective] = Field(
        default_factory=lambda: list(DEFAULT_PERSPECTIVES), min_length=3,
        description="the catalog candidates are generated from, as "
        "[[engines.creative.perspectives]] tables (name, description, instruction); at "
        "least as many as the largest set plus its spares")
    temperature_min: float = Field(0.6, ge=0, le=2, description="the lowest sampling "
                                   "temperature of a set")
    temperature_max: float = Field(1.1, ge=0, le=2, description="the highest")
    max_tokens: int = Field(600, ge=16, le=8192, description="completion tokens per "
                            "candidate, unless the request says")
    similarity_threshold: float = Field(0.8, gt=0, le=1, description="a candidate at or "
                                        "above this cosine to a sibling is regenerated")
    max_regenerations: int = Field(2, ge=0, le=5, description="times one candidate may be "
                                   "regenerated for being too close; the last attempt is kept")
    spares: int = Field(2, ge=0, le=8, description="extra candidates generated alongside "
                        "the n asked for, so that a near-duplicate or a failure is replaced "
                        "without a second round; cancelled once n are accepted (0: cheapest)")
    min_candidates: int = Field(2, ge=1, le=8, description="fewer successes than this fail "
                                "the set (UNAVAILABLE), unless the request says")
    judging: Literal["rubric", "pairwise", "none"] = Field(
        "rubric", description="rubric: each candidate scored alone; pairwise: every pair "
        "compared in both orders; none: no judge")
    judge_models: list[str] = Field(default_factory=list, description="catalog models that "
                                    "judge; empty: the cheapest allowed model")
    rubric: str = Field(DEFAULT_RUBRIC, min_length=20, max_length=4000,
                        description="what judges score candidates on")
    judge_max_tokens: int = Field(256, ge=8, le=4096, description="completion tokens per "
                                  "judge call")
    novelty_weight: float = Field(0.4, ge=0, le=1, description="alpha in innovation = "
                                  "quality^(1-alpha) * novelty^alpha")
    mmr_weight: float = Field(0.7, ge=0, le=1, description="lambda of the ranking: "
                              "lambda * innovation - (1-lambda) * similarity to better picks")
    history_limit: int = Field(8, ge=0, le=100, description="earlier chosen solutions "
                               "recalled per set (0: none)")
    history_min_score: float = Field(0.35, ge=0, le=1, description="how similar (cosine) an "
                                     "earlier problem must be for its solution to count")
    problem_limit_bytes: int = Field(16_384, ge=64, le=262_144, description="a problem at "
                                     "most (UTF-8)")
    context_limit_bytes: int = Field(65_536, ge=0, le=1_048_576, description="a request's "
                                     "context at most (UTF-8)")
    constraint_limit: int = Field(20, ge=0, le=200, description="constraints per request")
    set_ttl_s: float = Field(7 * 86_400.0, gt=0, description="how long a set can be chosen "
                             "from (kept in JetStream KV)")

    @model_validator(mode="after")
    def _check(self) -> CreativeSettings:
        if self.temperature_min > self.temperature_max:
            raise ValueError("temperature_min must not exceed temperature_max")
        names = [p.name for p in self.perspectives]
        if len(set(names)) != len(names):
            raise ValueError("perspective names must be unique")
        return self
