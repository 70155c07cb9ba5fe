"""``/v1/evaluations``: submit (validated at once, run by a worker), read status and results, and
fetch the report. ``/v1/policies``: register and read gate policies (what protected aliases are
gated under). One router with full paths, so the app mounts it once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from services.evaluator import service
from services.evaluator.api.deps import RegistryDep, SettingsDep
from services.evaluator.schemas import (
    EvaluationCreate,
    EvaluationList,
    EvaluationPublic,
    PolicyCreate,
    PolicyPublic,
)
from shared.auth import principal_of
from shared.errors import NotFoundError

router = APIRouter()
EVALUATIONS = "/v1/evaluations"

REPORT_FILES = {
    "html": ("report.html", "text/html"),
    "json": ("result.json", "application/json"),
    "junit": ("junit.xml", "application/xml"),
}


@router.post(EVALUATIONS, status_code=201, response_model=EvaluationPublic, tags=["evaluations"])
def create_evaluation(
    body: EvaluationCreate, settings: SettingsDep, registry: RegistryDep, request: Request
) -> EvaluationPublic:
    """Validate the request (candidate, data, policy, endpoints) and queue the run; asking to
    promote needs the ``promote`` scope on the candidate's adapter."""
    principal = principal_of(request.state)
    adapter = None if body.candidate == "base" else re.split(r"[:@]", body.candidate, maxsplit=1)[0]
    principal.require("evaluate", adapter, param="candidate")
    if body.promote:
        principal.require("promote", adapter, param="promote")
    run_id = service.submit(settings, registry, body, requested_by=principal.name)
    return service.public(service.get_run(registry, run_id))


@router.get(EVALUATIONS, response_model=EvaluationList, tags=["evaluations"])
def list_evaluations(
    registry: RegistryDep, limit: int = Query(default=20, ge=1, le=200)
) -> EvaluationList:
    """Recent evaluations, newest first."""
    return EvaluationList(
        data=[service.public(r, with_results=False) for r in service.list_runs(registry, limit)]
    )


@router.get(EVALUATIONS + "/{run_id}", response_model=EvaluationPublic, tags=["evaluations"])
def get_evaluation(run_id: str, registry: RegistryDep) -> EvaluationPublic:
    """Status, progress and (when finished) results, gate decision and promotion."""
    return service.public(service.get_run(registry, run_id))


@router.get(EVALUATIONS + "/{run_id}/report", tags=["evaluations"])
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


@router.post("/v1/policies", status_code=201, response_model=PolicyPublic, tags=["policies"])
def register_policy(body: PolicyCreate, registry: RegistryDep, request: Request) -> PolicyPublic:
    """Validate a gate policy and store it as the next version of ``name`` with its sha256 (the
    same content again returns the existing version). Needs the ``admin`` scope."""
    actor = principal_of(request.state).name
    row = service.register_policy(registry, body.name, body.policy, actor=actor)
    return PolicyPublic.model_validate(row)


@router.get("/v1/policies/{name}", response_model=PolicyPublic, tags=["policies"])
def get_policy(
    name: str, registry: RegistryDep, version: int | None = Query(default=None, ge=1, le=2**31 - 1)
) -> PolicyPublic:
    """A registered policy: its latest version, or ``?version=N``."""
    return PolicyPublic.model_validate(service.get_policy(registry, name, version))
