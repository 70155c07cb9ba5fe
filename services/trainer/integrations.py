"""A job's ``integrations``: the experiment trackers it writes to, in OpenAI's shape.

Only TensorBoard: its event files stay on this machine (``recipes/tracking.py`` writes them). W&B
and MLflow would send a run's data, and their credentials, to a server; they are not installed,
and a job naming them is refused rather than left silently unlogged.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

TRACKERS = ("tensorboard",)


class Integration(BaseModel):
    """One experiment tracker, in OpenAI's ``integrations`` shape (``{"type": ..., <type>: {}}``)."""

    model_config = ConfigDict(extra="forbid")

    type: str
    tensorboard: dict[str, Any] | None = Field(
        default=None, description="No settings: the logs go under LORAPLEX_DATA_DIR/tracking."
    )

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in TRACKERS:
            raise ValueError(
                f"integration type {value!r} is not available here; supported: "
                f"{', '.join(TRACKERS)} (job metrics are also in the job's events)"
            )
        return value

    @field_validator("tensorboard")
    @classmethod
    def _no_settings(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value:
            raise ValueError("tensorboard takes no settings; its logs go under the tracking dir")
        return value
