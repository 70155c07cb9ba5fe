"""Jobs, their events and checkpoints in OpenAI's shapes (``fine_tuning.job``, ``.event``,
``.checkpoint``), and a job's progress read from its newest metrics event."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.trainer.responses import (
    Checkpoint,
    CheckpointMetrics,
    FineTuningJob,
    JobError,
    JobEvent,
    unix_time,
)
from services.trainer.schemas import JobSpec
from services.trainer.statuses import JobStatus
from shared.errors import ValidationError
from shared.registry.models import JobEventRow, TrainingJobRow


def event_id(row: JobEventRow) -> str:
    return f"ftevent-{row.id}"


def parse_event_id(value: str | None) -> int | None:
    if value is None:
        return None
    raw = value.removeprefix("ftevent-")
    if not raw.isdigit():
        raise ValidationError(f"after={value!r} is not an event id", param="after")
    return int(raw)


def event_to_api(row: JobEventRow) -> JobEvent:
    # OpenAI's SDK knows the types "message" and "metrics"; ours map onto them.
    api_type = "metrics" if row.type == "metrics" else "message"
    return JobEvent(
        id=event_id(row),
        created_at=unix_time(row.created_at) or 0,
        level=row.level,
        message=row.message,
        type=api_type,
        data={"kind": row.type, **(row.data or {})}
        if row.type not in ("message", "metrics")
        else (row.data or None),
    )


def checkpoint_to_api(row: JobEventRow) -> Checkpoint:
    data = row.data or {}
    step = int(data.get("step", 0))
    metrics = {k: v for k, v in (data.get("metrics") or {}).items() if v is not None}
    return Checkpoint(
        id=f"ftckpt-{row.id}",
        created_at=unix_time(row.created_at) or 0,
        fine_tuned_model_checkpoint=f"{row.job_id}:checkpoint-{step}",
        fine_tuning_job_id=row.job_id,
        metrics=CheckpointMetrics(**metrics),
        step_number=step,
    )


def job_to_api(
    job: TrainingJobRow,
    progress: float | None = None,
    trained_tokens: int | None = None,
    estimated_finish: int | None = None,
) -> FineTuningJob:
    spec = JobSpec.model_validate(job.config)
    method = spec.method.type
    hyper = spec.openai_hyperparameters()
    block: dict[str, Any] = {"hyperparameters": hyper}
    if spec.method.reinforcement is not None:  # OpenAI's job object shows the grader
        block["grader"] = spec.method.reinforcement.grader.model_dump(mode="json")
    error = None
    if job.error:
        error = JobError(**{k: v for k, v in job.error.items() if k in JobError.model_fields})
    return FineTuningJob(
        id=job.id,
        created_at=unix_time(job.created_at) or 0,
        finished_at=unix_time(job.finished_at),
        error=error,
        fine_tuned_model=job.result_version_id,
        hyperparameters=hyper,
        model=job.base_model,
        seed=spec.resolved().seed,
        status=job.status,
        trained_tokens=trained_tokens,
        training_file=job.training_file,
        validation_file=job.validation_file,
        metadata=job.job_metadata or None,
        method={"type": method, method: block},
        suffix=spec.suffix,
        user_provided_suffix=spec.suffix,
        lora=None if spec.adapter == "none" else spec.lora.model_dump(mode="json"),
        adapter=spec.adapter,
        adapter_name=job.adapter_name,
        progress=progress,
        estimated_finish=estimated_finish if job.status == JobStatus.RUNNING else None,
        cancel_requested=job.cancel_requested,
    )


def job_progress(session: Session, job_id: str) -> tuple[float | None, int | None, int | None]:
    """(progress %, trained tokens, estimated finish as a unix time) from the newest metrics."""
    row = session.scalars(
        select(JobEventRow)
        .where(JobEventRow.job_id == job_id, JobEventRow.type.in_(("metrics", "result")))
        .order_by(JobEventRow.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None, None, None
    data = row.data or {}
    eta = data.get("eta_seconds")
    created = unix_time(row.created_at) or 0
    finish = int(created + eta) if isinstance(eta, int | float) else None
    return data.get("progress"), data.get("trained_tokens"), finish
