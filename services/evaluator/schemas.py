"""Request and response models of the evaluator API (and the CLI, which builds the same request)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.evaluator.statuses import RunStatus as RunStatus  # re-exported: defined once there


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    candidate: str = Field(description="name@vN, name:alias, bare name (its prod), or base")
    baseline: str | None = Field(
        default=None,
        description="same forms, or base+fewshot:K (the base model shown K examples from the "
        "candidate's training data); default: the adapter's prod version, else the base model; "
        "'none' for no baseline",
    )
    suite: str | dict[str, Any] | None = Field(
        default=None, description="built-in suite name, suite file, or inline suite"
    )
    data: str | None = Field(
        default=None,
        description="registered file id (file-...) or a path under LORAPLEX_DATA_DIRS; default: "
        "the validation split in the candidate's lineage",
    )
    prompt_field: str | None = None
    reference_field: str | None = None
    keep_markup: bool | None = Field(
        default=None,
        description="keep HTML tags and entities in the data when cleaning it (tasks whose output "
        "is HTML); default: as the candidate was trained (its data.keep_markup)",
    )
    policy: str | dict[str, Any] | None = Field(
        default=None, description="gate policy: file path, YAML text, or inline mapping"
    )
    promote: str | None = Field(default=None, description="alias to move to the candidate on pass")
    limit: int | None = Field(default=None, ge=1, description="use only the first N items")
    server: str | None = Field(
        default=None,
        description="name of an endpoint in the evaluator's settings (LORAPLEX_ENDPOINTS; "
        "'server' is LORAPLEX_SERVER_URL) to generate through; default: 'server' if configured",
    )
    server_url: str | None = Field(
        default=None,
        description="refused over the API (name an endpoint with `server`); only the operator's "
        "own `loraplex eval run --server-url` sets it, and no key is sent there",
    )


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


class PolicyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="policy name; registering under it again adds a version")
    policy: str | dict[str, Any] = Field(description="the policy: YAML text or a mapping")


class PolicyPublic(BaseModel):
    object: Literal["gate_policy"] = "gate_policy"
    name: str
    version: int
    sha256: str = Field(description="Policy.sha256() of body: what protections and runs record")
    body: dict[str, Any]
    actor: str
    created_at: datetime
