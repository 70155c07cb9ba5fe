"""Request and response models of the evaluator API (and the CLI, which builds the same request)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RunStatus = Literal["queued", "running", "succeeded", "failed"]


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    candidate: str = Field(description="name@vN, name:alias, bare name (its prod), or base")
    baseline: str | None = Field(
        default=None,
        description="same forms; default: the adapter's prod version, else the base model; "
        "'none' for no baseline",
    )
    suite: str | dict[str, Any] | None = Field(
        default=None, description="built-in suite name, suite file, or inline suite"
    )
    data: str | None = Field(
        default=None,
        description="data file path or registry dataset id; default: the validation split in "
        "the candidate's lineage",
    )
    prompt_field: str | None = None
    reference_field: str | None = None
    policy: str | dict[str, Any] | None = Field(
        default=None, description="gate policy: file path, YAML text, or inline mapping"
    )
    promote: str | None = Field(default=None, description="alias to move to the candidate on pass")
    limit: int | None = Field(default=None, ge=1, description="use only the first N items")
    server_url: str | None = Field(default=None, description="override LORAPLEX_SERVER_URL")


class MetricPublic(BaseModel):
    subject: str
    name: str
    value: float | None
    settings: dict[str, Any]


class EvaluationPublic(BaseModel):
    id: str
    object: Literal["evaluation"] = "evaluation"
    status: str
    candidate: str
    baseline: str | None
    decision: str | None
    exit_code: int | None = None
    progress: float
    stage: str | None = None
    created_at: datetime
    finished_at: datetime | None = None
    error: dict[str, Any] | None = None
    results: dict[str, Any] | None = None
    report_url: str | None = None


class EvaluationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EvaluationPublic]
