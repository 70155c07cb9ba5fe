"""A job's ``integrations``: the experiment trackers it writes to, in OpenAI's shape.

``recipes/tracking.py`` writes them. What a request may choose is only names (an experiment, a W&B
project, tags); where the data goes and any credential come from the trainer's settings and the
operator's environment (docs/security.md, "No credentials to request-chosen places"):

- ``tensorboard``: event files under the tracking dir; no settings.
- ``mlflow``: the server of ``LORAPLEX_MLFLOW_TRACKING_URI``, else a local store under the
  tracking dir; the request may name the experiment.
- ``wandb``: always offline (a run folder under the tracking dir that ``wandb sync`` can upload
  later); nothing goes over the network. The request may name project, run name, entity and tags.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TRACKERS = ("tensorboard", "mlflow", "wandb")
# The package each tracker needs; mlflow and wandb come with the ``tracking`` extra.
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
# Keys a client might send to point a tracker somewhere or to authenticate: refused by name.
_LOCATION_KEYS = (
    "tracking_uri",
    "uri",
    "url",
    "base_url",
    "host",
    "api_key",
    "token",
    "password",
    "dir",
    "mode",
)
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\- ]*$"


def _refuse_locations(value: Any, tracker: str, where: str) -> Any:
    if isinstance(value, dict):
        named = sorted(k for k in value if k.lower() in _LOCATION_KEYS)
        if named:
            raise ValueError(
                f"{tracker} {named[0]!r} cannot be chosen by a request: {where}"
                " (set by the operator; see docs/security.md)"
            )
    return value


class MlflowSettings(BaseModel):
    """What a job may choose for MLflow: the experiment (the server is the operator's)."""

    model_config = ConfigDict(extra="forbid")

    experiment_name: str = Field(
        default="loraplex", min_length=1, max_length=100, pattern=_NAME, description="Experiment."
    )

    @model_validator(mode="before")
    @classmethod
    def _no_location(cls, value: Any) -> Any:
        return _refuse_locations(
            value, "mlflow", "runs go to LORAPLEX_MLFLOW_TRACKING_URI or the local store"
        )


class WandbSettings(BaseModel):
    """OpenAI's W&B fields; the run is written offline under the tracking dir."""

    model_config = ConfigDict(extra="forbid")

    project: str = Field(default="loraplex", min_length=1, max_length=128, pattern=_NAME)
    name: str | None = Field(default=None, min_length=1, max_length=128)
    entity: str | None = Field(default=None, min_length=1, max_length=128, pattern=_NAME)
    tags: list[str] = Field(default_factory=list, max_length=20)

    @model_validator(mode="before")
    @classmethod
    def _no_location(cls, value: Any) -> Any:
        return _refuse_locations(
            value, "wandb", "runs are written offline under the tracking dir, never sent"
        )

    @field_validator("tags")
    @classmethod
    def _short_tags(cls, value: list[str]) -> list[str]:
        # W&B's own limit on a tag's length.
        bad = [t for t in value if not 1 <= len(t) <= 64]
        if bad:
            raise ValueError(f"each wandb tag must be 1 to 64 characters, got {bad[0]!r}")
        return value


class Integration(BaseModel):
    """One experiment tracker, in OpenAI's ``integrations`` shape (``{"type": ..., <type>: {}}``)."""

    model_config = ConfigDict(extra="forbid")

    type: str
    tensorboard: dict[str, Any] | None = Field(
        default=None, description="No settings: the logs go under LORAPLEX_DATA_DIR/tracking."
    )
    mlflow: MlflowSettings | None = None
    wandb: WandbSettings | None = None

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in TRACKERS:
            raise ValueError(
                f"integration type {value!r} is not available here; supported: "
                f"{', '.join(TRACKERS)} (job metrics are also in the job's events)"
            )
        # Refused at submission rather than failing (or going unlogged) after the model loaded.
        if importlib.util.find_spec(PACKAGES[value]) is None:
            raise ValueError(
                f"integration type {value!r} needs the {PACKAGES[value]!r} package, which this "
                "trainer does not have (install loraplex with the 'tracking' extra)"
            )
        return value

    @field_validator("tensorboard")
    @classmethod
    def _no_settings(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value:
            raise ValueError("tensorboard takes no settings; its logs go under the tracking dir")
        return value

    @model_validator(mode="after")
    def _settings_of_its_own_type(self) -> Integration:
        for other in TRACKERS:
            if other != self.type and getattr(self, other) is not None:
                raise ValueError(
                    f"an integration of type {self.type!r} cannot carry {other!r} settings"
                )
        return self
