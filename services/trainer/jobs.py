"""Fine-tuning jobs in the registry: create (with every check that needs no model), read, cancel,
events and checkpoints. No FastAPI here; the routes and the CLI call these functions.

Status values are OpenAI's (:class:`~services.trainer.statuses.JobStatus`).
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.trainer.capacity import check_full_fits
from services.trainer.config import TrainerSettings
from services.trainer.files import FINE_TUNE, file_path, get_file, pii_problem
from services.trainer.graders import check_item_fields
from services.trainer.methods import DATA_KIND_LABELS, get_method
from services.trainer.schemas import (
    JobSpec,
    target_modules_problem,
)
from services.trainer.statuses import ACTIVE, JobStatus
from shared.errors import ConflictError, LoraplexError, NotFoundError, ValidationError
from shared.logs import event
from shared.registry.adapters import bound_base_model, check_adapter_name, resolve
from shared.registry.models import (
    AdapterVersionRow,
    BaseModelRow,
    DatasetRow,
    JobEventRow,
    TrainingJobRow,
    utcnow,
)
from shared.servability import LoraLimits, check_lora_settings
from shared.settings import EMBEDDED_BASE_MODEL

log = logging.getLogger(__name__)

# The statuses' names before statuses.py, for code that imports them from here.
VALIDATING, QUEUED, RUNNING = JobStatus.VALIDATING, JobStatus.QUEUED, JobStatus.RUNNING
SUCCEEDED, FAILED, CANCELLED = JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED


def new_job_id() -> str:
    return f"ftjob-{uuid.uuid4().hex[:24]}"


def default_adapter_name(spec: JobSpec) -> str:
    if spec.suffix:
        return spec.suffix.lower()
    suffix = get_method(spec.method.type).adapter_suffix
    name = f"{spec.model.lower()}-{suffix}"
    # A full model gets a name of its own: no alias moves between LoRA and full versions.
    return f"{name[:58]}-full" if spec.adapter == "none" else name[:63]


def check_base_model(session: Session, name: str) -> None:
    """Only names the registry knows (or the embedded model): the API never loads arbitrary paths."""
    if name == EMBEDDED_BASE_MODEL or session.get(BaseModelRow, name) is not None:
        return
    known = sorted({EMBEDDED_BASE_MODEL, *session.scalars(select(BaseModelRow.name))})
    raise ValidationError(
        f"unknown base model {name!r}; known base models: {', '.join(known)}",
        param="model",
        code="model_not_found",
    )


def _check_data_file(session: Session, file_id: str, param: str, method: str) -> None:
    try:
        row = get_file(session, file_id, param=param)
    except NotFoundError as exc:
        raise ValidationError(exc.message, param=param, code="file_not_found") from exc
    if row.purpose != FINE_TUNE:
        raise ValidationError(
            f"{param} {file_id} has purpose {row.purpose!r}; upload it with purpose 'fine-tune'",
            param=param,
            code="invalid_file_purpose",
        )
    entry = get_method(method)
    if row.format != entry.data_kind:
        label = DATA_KIND_LABELS.get(row.format, row.format)
        raise ValidationError(
            f"{param} {file_id} holds {label} data, but method {method!r} needs {entry.data_label}",
            param=param,
            code="invalid_file_kind",
        )


def check_grader_fields(
    session: Session, settings: TrainerSettings, spec: JobSpec, param: str
) -> None:
    """A reinforcement job's grader may only name ``{{item.x}}`` fields every row of the file has
    (the error names the file, line and field)."""
    from shared.datasets import parse_file

    block = spec.method.reinforcement
    file_id = spec.training_file if param == "training_file" else spec.validation_file
    row = session.get(DatasetRow, file_id) if file_id else None
    if block is None or row is None or row.purpose != FINE_TUNE or row.format != "prompt":
        return  # no grader, or a file refused for its purpose or kind on its own
    loaded, _problems = parse_file(file_path(settings, row).read_bytes(), row.filename)
    check_item_fields(
        block.grader, [(str(e.location), e.item) for e in loaded.examples], param=param
    )


def check_score_model(session: Session, spec: JobSpec) -> None:
    """A score_model grader names a reward model (method 'reward') on the job's base model; the
    grader is pinned to the version the name resolved to."""
    from services.trainer.graders import ScoreModelGrader
    from shared import reward_models

    block = spec.method.reinforcement
    grader = block.grader if block is not None else None
    if not isinstance(grader, ScoreModelGrader):
        return
    param = "method.reinforcement.grader.model"
    try:
        version = resolve(session, grader.model)
    except (NotFoundError, ValidationError) as exc:
        raise ValidationError(exc.message, param=param) from exc
    reasons = reward_models.problems(version.manifest or {})
    if reasons:
        raise ValidationError(f"{version.id} is not a reward model: {reasons[0]}", param=param)
    if version.base_model != spec.model:
        raise ValidationError(
            f"reward model {version.id} was trained on {version.base_model!r}, not the job's "
            f"{spec.model!r}",
            param=param,
        )
    grader.model = version.id


def resolve_base_adapter(session: Session, spec: JobSpec) -> AdapterVersionRow:
    """The adapter version the job continues from (a version id or an alias), trained on the
    job's base model. An alias moves: ``spec.base_adapter`` is set to the version it resolved to,
    so the job records that version."""
    try:
        version = resolve(session, spec.base_adapter or "")
    except (NotFoundError, ValidationError) as exc:
        raise ValidationError(exc.message, param="base_adapter") from exc
    spec.base_adapter = version.id
    if version.base_model != spec.model:
        raise ValidationError(
            f"base_adapter {version.id} was trained on {version.base_model!r}, not {spec.model!r}",
            param="base_adapter",
        )
    return version


def validate_spec(session: Session, settings: TrainerSettings, spec: JobSpec) -> list[str]:
    """Every problem with a job spec that can be found without loading the model."""
    problems: list[tuple[str, str]] = []

    def attempt(param: str, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except LoraplexError as exc:
            problems.append((exc.param or param, exc.message))

    attempt("model", check_base_model, session, spec.model)
    attempt(
        "training_file",
        _check_data_file,
        session,
        spec.training_file,
        "training_file",
        spec.method.type,
    )
    if spec.validation_file:
        attempt(
            "validation_file",
            _check_data_file,
            session,
            spec.validation_file,
            "validation_file",
            spec.method.type,
        )
    if spec.method.reinforcement is not None:
        attempt("method.reinforcement.grader.model", check_score_model, session, spec)
        attempt("training_file", check_grader_fields, session, settings, spec, "training_file")
        if spec.validation_file:
            attempt(
                "validation_file", check_grader_fields, session, settings, spec, "validation_file"
            )
    modules_problem = target_modules_problem(spec.lora.target_modules)
    if modules_problem:
        problems.append(("lora.target_modules", modules_problem))
    for reason in check_lora_settings(
        r=spec.lora.r,
        lora_alpha=spec.lora.alpha,
        use_dora=spec.lora.use_dora,
        bias=spec.lora.bias,
        modules_to_save=spec.lora.modules_to_save,
        limits=LoraLimits(max_rank=settings.max_lora_rank),
    ):
        problems.append(("lora", reason))
    attempt("suffix", check_adapter_name, default_adapter_name(spec), "suffix")
    if spec.base_adapter:
        attempt("base_adapter", resolve_base_adapter, session, spec)
    attempt("adapter", check_full_fits, session, settings, spec)
    if spec.data.pii == "refuse":
        for param, file_id in (
            ("training_file", spec.training_file),
            ("validation_file", spec.validation_file),
        ):
            row = session.get(DatasetRow, file_id) if file_id else None
            why = (
                pii_problem(settings, row, param, spec.data.pii_kinds)
                if row is not None and row.purpose == FINE_TUNE
                else None  # a missing file or one of another purpose is refused above
            )
            if why is not None:
                problems.append((param, why))
    return [f"{param}: {message}" for param, message in problems]


def check_adapter_base(
    session: Session, adapter_name: str, base_model: str, param: str = "suffix"
) -> None:
    """An adapter name is bound to the base model of its first version: a version on another
    base would change what clients calling the name (and its aliases) get, and could not be
    served next to the others. Unfinished jobs count too, so two jobs cannot race a new name onto
    two bases (the registry refuses such a version again when it is registered)."""
    bound = bound_base_model(session, adapter_name)
    source = "its first version"
    if bound is None:
        other = session.scalars(
            select(TrainingJobRow)
            .where(
                TrainingJobRow.adapter_name == adapter_name,
                TrainingJobRow.status.in_(ACTIVE),
                TrainingJobRow.base_model != base_model,
            )
            .limit(1)
        ).first()
        if other is None:
            return
        bound, source = other.base_model, f"unfinished job {other.id}"
    if bound != base_model:
        raise ConflictError(
            f"adapter name {adapter_name!r} is bound to base model {bound!r} ({source}); "
            f"a version trained on {base_model!r} cannot join it: use model {bound!r} or "
            "choose another suffix",
            param=param,
            code="base_model_mismatch",
        )


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> None:
    session.add(
        JobEventRow(job_id=job_id, level=level, type=type, message=message, data=data or {})
    )


def create_job(session: Session, settings: TrainerSettings, spec: JobSpec) -> TrainingJobRow:
    problems = validate_spec(session, settings, spec)
    if problems:
        first_param = problems[0].split(":", 1)[0]
        raise ValidationError(
            f"the job cannot be created: {problems[0]}",
            param=first_param,
            code="invalid_job",
            details=problems,
        )
    check_adapter_base(
        session, default_adapter_name(spec), spec.model, "suffix" if spec.suffix else "model"
    )
    job = TrainingJobRow(
        id=new_job_id(),
        status=JobStatus.VALIDATING,
        base_model=spec.model,
        adapter_name=default_adapter_name(spec),
        training_file=spec.training_file,
        validation_file=spec.validation_file,
        config=spec.model_dump(mode="json"),
        job_metadata=spec.metadata or {},
        attempts=0,
        cancel_requested=False,
    )
    session.add(job)
    session.flush()
    add_event(session, job.id, f"created fine-tuning job {job.id}")
    add_event(session, job.id, "validating training file: " + spec.training_file)
    event(
        log,
        "job.created",
        job=job.id,
        adapter=job.adapter_name,
        base_model=spec.model,
        method=spec.method.type,
        training_file=spec.training_file,
        base_adapter=spec.base_adapter,
    )
    return job


def get_job(session: Session, job_id: str) -> TrainingJobRow:
    job = session.get(TrainingJobRow, job_id)
    if job is None:
        raise NotFoundError(
            f"fine-tuning job {job_id!r} does not exist", param="fine_tuning_job_id"
        )
    return job


def list_jobs(
    session: Session,
    *,
    after: str | None = None,
    limit: int = 20,
    metadata: dict[str, str] | None = None,
) -> tuple[list[TrainingJobRow], bool]:
    stmt = select(TrainingJobRow).order_by(
        TrainingJobRow.created_at.desc(), TrainingJobRow.id.desc()
    )
    rows = list(session.scalars(stmt))
    if metadata:
        rows = [
            r for r in rows if all((r.job_metadata or {}).get(k) == v for k, v in metadata.items())
        ]
    if after:
        ids = [r.id for r in rows]
        rows = rows[ids.index(after) + 1 :] if after in ids else []
    return rows[:limit], len(rows) > limit


def cancel_job(session: Session, job_id: str) -> TrainingJobRow:
    """Cancel now if no worker holds the job; otherwise ask the worker to stop at its next step."""
    job = get_job(session, job_id)
    if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise ConflictError(
            f"job {job_id} already {job.status}; only unfinished jobs can be cancelled",
            param="fine_tuning_job_id",
            code="job_finished",
        )
    if job.status == JobStatus.CANCELLED:
        return job
    if job.worker_id is None:
        job.status = JobStatus.CANCELLED
        job.finished_at = utcnow()
        add_event(session, job.id, "job cancelled before a worker picked it up")
    elif not job.cancel_requested:
        job.cancel_requested = True
        add_event(session, job.id, "cancellation requested; training stops at its next step")
    session.flush()
    return job


def list_events(
    session: Session,
    job_id: str,
    *,
    after: int | None = None,
    limit: int = 20,
    newest_first: bool = True,
) -> tuple[list[JobEventRow], bool]:
    get_job(session, job_id)
    stmt = select(JobEventRow).where(JobEventRow.job_id == job_id)
    if newest_first:
        if after is not None:
            stmt = stmt.where(JobEventRow.id < after)
        stmt = stmt.order_by(JobEventRow.id.desc())
    else:
        if after is not None:
            stmt = stmt.where(JobEventRow.id > after)
        stmt = stmt.order_by(JobEventRow.id.asc())
    rows = list(session.scalars(stmt.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def list_checkpoints(session: Session, job_id: str) -> list[JobEventRow]:
    get_job(session, job_id)
    stmt = (
        select(JobEventRow)
        .where(JobEventRow.job_id == job_id, JobEventRow.type == "checkpoint")
        .order_by(JobEventRow.id.desc())
    )
    return list(session.scalars(stmt))


def job_dir(settings: TrainerSettings, job_id: str) -> Path:
    return settings.work_dir / job_id
