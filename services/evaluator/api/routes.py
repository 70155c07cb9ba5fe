"""``/v1/evaluations``: submit (validated at once, run by a worker), read status and results, and
fetch the report."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from services.evaluator import service
from services.evaluator.api.deps import RegistryDep, SettingsDep
from services.evaluator.schemas import EvaluationCreate, EvaluationList, EvaluationPublic
from shared.errors import NotFoundError

router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"])

REPORT_FILES = {
    "html": ("report.html", "text/html"),
    "json": ("result.json", "application/json"),
    "junit": ("junit.xml", "application/xml"),
}


@router.post("", status_code=201, response_model=EvaluationPublic)
def create_evaluation(
    body: EvaluationCreate, settings: SettingsDep, registry: RegistryDep
) -> EvaluationPublic:
    """Validate the request (candidate, data, policy, endpoints) and queue the run."""
    run_id = service.submit(settings, registry, body)
    return service.public(service.get_run(registry, run_id))


@router.get("", response_model=EvaluationList)
def list_evaluations(
    registry: RegistryDep, limit: int = Query(default=20, ge=1, le=200)
) -> EvaluationList:
    """Recent evaluations, newest first."""
    return EvaluationList(
        data=[service.public(r, with_results=False) for r in service.list_runs(registry, limit)]
    )


@router.get("/{run_id}", response_model=EvaluationPublic)
def get_evaluation(run_id: str, registry: RegistryDep) -> EvaluationPublic:
    """Status, progress and (when finished) results, gate decision and promotion."""
    return service.public(service.get_run(registry, run_id))


@router.get("/{run_id}/report")
def get_report(
    run_id: str,
    registry: RegistryDep,
    format: Literal["html", "json", "junit"] = "html",
) -> FileResponse:
    """The run's HTML report (or ``?format=json|junit``)."""
    row = service.get_run(registry, run_id)
    if not row.report_path:
        raise NotFoundError(
            f"evaluation {run_id} has no report yet (status {row.status})", param="id"
        )
    name, media = REPORT_FILES[format]
    path = Path(row.report_path).with_name(name)
    if not path.is_file():
        raise NotFoundError(f"report file {path.name} of {run_id} is missing", param="id")
    return FileResponse(path, media_type=media)
