"""The OpenAI-shaped objects the trainer's API answers with: files, jobs, events, checkpoints.

Field names and ``object`` values are OpenAI's, so the ``openai`` SDK parses them unchanged; our
extensions (``adapter``, ``lora``, ``processes``, ...) ride along as extra fields it keeps.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


def unix_time(value: datetime | None) -> int | None:
    """Seconds since the epoch, as OpenAI's objects carry them."""
    if value is None:
        return None
    # SQLite hands back naive datetimes; the registry stores UTC.
    return int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp())


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    status_details: str | None = None
    # Ours: what validation found (format, rows, duplicates, ...).
    report: dict[str, Any] | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None
    # Ours: user errors are the caller's to fix (bad data); system errors are ours (retryable).
    type: Literal["user_error", "system_error"] = "user_error"
    details: list[str] | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None = None
    error: JobError | None = None
    fine_tuned_model: str | None = None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str = "org-loraplex"
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: str
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None = None
    method: dict[str, Any]
    suffix: str | None = None
    user_provided_suffix: str | None = None
    # Ours.
    lora: dict[str, Any] | None = None
    adapter: str = "lora"  # "none": a full fine-tune
    adapter_name: str | None = None
    progress: float | None = None
    cancel_requested: bool = False


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool = False


class JobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str = "message"
    data: dict[str, Any] | None = None


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEvent]
    has_more: bool = False


class CheckpointMetrics(BaseModel):
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class Checkpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Checkpoint]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None
