"""A claimed registry job as a recipe's context: its spec, its stored data files, the adapter it
continues from, its scratch folder, and the ``register`` that finishes the job."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
from sqlalchemy.orm import Session

from services.trainer.adapters import store_and_register
from services.trainer.config import TrainerSettings
from services.trainer.files import data_file, get_file
from services.trainer.job_reporter import CLAIM_LOST
from services.trainer.jobs import add_event, job_dir
from services.trainer.recipes.context import RecipeContext, Register, Reporter, Stopped
from services.trainer.schemas import JobSpec, target_modules_problem
from services.trainer.statuses import JobStatus
from shared.artifacts import open_store
from shared.basemodel import ResolvedBaseModel
from shared.errors import ValidationError
from shared.registry.adapters import get_version
from shared.registry.db import Registry
from shared.registry.models import AdapterVersionRow, TrainingJobRow, utcnow

# Worker.guarded_update: write the job's row only while the worker still holds it.
GuardedUpdate = Callable[..., bool]


def job_context(
    settings: TrainerSettings,
    registry: Registry,
    job: TrainingJobRow,
    reporter: Reporter,
    register: Register,
) -> RecipeContext:
    """The context the job's recipe runs in; a ValidationError if its stored spec is refused."""
    try:
        spec = JobSpec.model_validate(job.config)
    except pydantic.ValidationError as exc:
        # Accepted at creation, refused here: e.g. more processes than this worker's cores.
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise ValidationError(f"{field}: {first['msg']}", param=field) from exc
    # Jobs queued before target_modules was checked at creation must not reach peft.
    if problem := target_modules_problem(spec.lora.target_modules):
        raise ValidationError(problem, param="lora.target_modules")
    with registry.session() as session:
        train = data_file(settings, get_file(session, job.training_file, "training_file"))
        validation = None
        if job.validation_file:
            validation = data_file(
                settings, get_file(session, job.validation_file, "validation_file")
            )
        adapter_dir, lineage = None, None
        if spec.base_adapter:
            version = get_version(session, spec.base_adapter)
            adapter_dir = open_store(settings).get_dir(version.sha256)
            lineage = {"id": version.id, "sha256": version.sha256}
    out = job_dir(settings, job.id)
    out.mkdir(parents=True, exist_ok=True)
    return RecipeContext(
        spec=spec,
        settings=settings,
        train_file=train,
        validation_file=validation,
        output_dir=out,
        reporter=reporter,
        register=register,
        adapter_name=job.adapter_name,
        job_id=job.id,
        base_adapter_dir=adapter_dir,
        base_adapter_lineage=lineage,
    )


def registrar(
    settings: TrainerSettings, job_id: str, adapter_name: str, guarded_update: GuardedUpdate
) -> Register:
    """The job's ``register``: store the adapter and register its version in the transaction that
    marks the job succeeded (under the worker's claim), so a version exists iff its job finished.
    A cancel that arrived meanwhile, or a lost claim, rolls the registration back."""

    def register(folder: Path, manifest: dict[str, Any], base: ResolvedBaseModel) -> str:
        def mark_succeeded(session: Session, row: AdapterVersionRow, created: bool) -> None:
            job = session.get(TrainingJobRow, job_id)
            if job is not None and job.cancel_requested:
                raise Stopped(JobStatus.CANCELLED)  # rolls the registration back
            if not guarded_update(
                session,
                job_id,
                status=JobStatus.SUCCEEDED,
                finished_at=utcnow(),
                result_version_id=row.id,
            ):
                raise Stopped(CLAIM_LOST)
            add_event(
                session,
                job_id,
                f"fine-tuned adapter registered as {row.id}"
                + ("" if created else " (identical content was already registered)"),
                type="result",
                data={
                    "version_id": row.id,
                    "sha256": row.sha256,
                    "trained_tokens": manifest.get("trained_tokens"),
                    "metrics": manifest.get("metrics"),
                    "progress": 100.0,
                },
            )

        return store_and_register(
            settings,
            folder,
            manifest,
            base,
            adapter_name,
            job_id=job_id,
            in_session=mark_succeeded,
        )

    return register
