"""``[engines.parallel]``: the queue's limits, task defaults and the worker pool's bounds."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ParallelSettings"]


class ParallelSettings(BaseModel):
    """Validated by the mesh (``EngineSpec.settings``); every node of a mesh should agree."""

    model_config = ConfigDict(extra="forbid")

    workers_min: int = Field(4, ge=1, le=256, description="worker actors kept when idle")
    workers_max: int = Field(32, ge=1, le=256, description="worker actors at most")
    idle_s: float = Field(10.0, gt=0, description="a worker idle this long is stopped "
                          "(down to workers_min)")
    queue_limit: int = Field(100_000, ge=1, description="tasks queued or running, mesh-wide; "
                             "Submit beyond it is RESOURCE_EXHAUSTED")
    batch_limit: int = Field(1000, ge=1, description="tasks per Submit")
    default_priority: int = Field(5, ge=1, le=9, description="priority of a task that gives 0")
    default_timeout_s: float = Field(300.0, gt=0, description="per attempt, when a task gives "
                                     "none")
    max_timeout_s: float = Field(86_400.0, gt=0, description="the longest timeout accepted")
    default_max_attempts: int = Field(3, ge=1, le=100, description="attempts when a task "
                                      "gives none")
    max_attempts_limit: int = Field(20, ge=1, le=1000, description="the most attempts accepted")
    retry_delay_s: float = Field(1.0, ge=0, description="wait before a failed attempt runs "
                                 "again (doubles per attempt, at most 60 s)")
    ack_wait_s: float = Field(30.0, gt=0, description="a task whose node stops renewing its "
                              "claim this long is given to another worker")
    payload_limit_bytes: int = Field(1 << 20, ge=1, description="a task's request or payload "
                                     "at most")
    inline_result_bytes: int = Field(64 << 10, ge=0, description="results larger than this "
                                     "go to the object store")
    result_limit_bytes: int = Field(16 << 20, ge=1, description="a result larger than this "
                                    "fails the task")
    keep_s: float = Field(7 * 86_400.0, gt=0, description="how long finished tasks and "
                          "idempotency keys are kept")

    @model_validator(mode="after")
    def _bounds(self) -> ParallelSettings:
        if self.workers_min > self.workers_max:
            raise ValueError(f"workers_min ({self.workers_min}) is above workers_max "
                             f"({self.workers_max})")
        return self

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> ParallelSettings:
        return cls.model_validate(raw)
