"""The release config (``loraplex release run release.yaml``): one typed file for training,
evaluation, gate policy, promotion and, for a run over HTTP, the services' URLs. It is validated up
front with the services' own request schemas, so a bad field fails before anything runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.trainer.schemas import JobSpec
from shared.config_files import load_model, read_mapping
from shared.registry.adapters import check_adapter_name, check_alias


class Services(BaseModel):
    """URLs of running services; when set, the release goes over HTTP."""

    model_config = ConfigDict(extra="forbid")

    trainer_url: str = Field(description="e.g. http://127.0.0.1:8001")
    evaluator_url: str = Field(description="e.g. http://127.0.0.1:8002")
    server_url: str | None = Field(
        default=None, description="When set, wait until it serves the promoted alias."
    )
    api_key: str | None = Field(
        default=None,
        description="Key sent to the trainer, evaluator and server (train, evaluate, promote, "
        "read scopes). Empty: LORAPLEX_CLIENT_KEY from the environment, which keeps it out of "
        "files checked into a repository.",
    )
    server_api_key: str | None = Field(
        default=None, description="Key for the server's /v1 checks; empty: api_key."
    )
    reconcile_deadline_s: float = Field(default=60.0, gt=0)
    server_ready_timeout_s: float = Field(
        default=600.0, gt=0, description="How long evaluation waits for the server's /ready."
    )
    poll_s: float = Field(default=1.0, gt=0)


class Evaluation(BaseModel):
    """What decides the release. Fields as the evaluator's ``POST /v1/evaluations``."""

    model_config = ConfigDict(extra="forbid")

    policy: str | dict[str, Any] = Field(description="Gate policy: YAML file path or mapping.")
    suite: str | dict[str, Any] | None = None
    baseline: str | list[str] | None = Field(
        default=None,
        description=(
            "What the candidate is compared with; a list runs one evaluation per baseline, in "
            "order, and promotes only when it passes against each (e.g. [base, base+fewshot:4]: "
            "beat the better of the base model zero-shot and shown 4 examples)."
        ),
    )
    data: str | None = None
    limit: int | None = Field(default=None, ge=1)

    @field_validator("baseline")
    @classmethod
    def _baselines(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and (not value or len(set(value)) != len(value)):
            raise ValueError("name one baseline or a list of different ones")
        return value

    def baselines(self) -> list[str | None]:
        """The evaluations a release runs, one per baseline (None: the evaluator's default)."""
        return list(self.baseline) if isinstance(self.baseline, list) else [self.baseline]


class ReleaseConfig(BaseModel):
    """``release.yaml``. Relative paths are relative to the file."""

    model_config = ConfigDict(extra="forbid")

    adapter: str = Field(description="Adapter name; versions become <adapter>@vN.")
    training: JobSpec
    evaluation: Evaluation
    promote: str = Field(default="prod", description="Alias moved to the new version on pass.")
    services: Services | None = None

    @field_validator("adapter")
    @classmethod
    def _adapter_name(cls, value: str) -> str:
        return check_adapter_name(value, "adapter")

    @field_validator("promote")
    @classmethod
    def _alias(cls, value: str) -> str:
        return check_alias(value, "promote")


def load_config(path: Path) -> tuple[ReleaseConfig, Path]:
    hint = " (adapter, training, evaluation, ...)"
    return load_model(path, ReleaseConfig, str(path), hint=hint), path.parent.resolve()


def resolve_path(root: Path, value: str | None) -> str | None:
    if value is None:
        return None
    path = (root / value).expanduser()
    return str(path.resolve()) if path.exists() else value


def policy_mapping(root: Path, policy: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(policy, dict):
        return policy
    path = (root / policy).expanduser()
    return read_mapping(path, f"policy {path}", param="evaluation.policy")
