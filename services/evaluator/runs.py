"""Evaluation run rows: create, fail, store results, read, and the public view of a run.

A run's rows are written under a fenced queue claim (``shared/registry/queue.py``): the run row
when it is created, then everything it produced (metrics, item records, summary, decision, the
evidence columns) and the promotion it asks for in one transaction (``store_result``). Every
write names the claim's worker and attempt, so a worker whose run was taken over writes nothing
more and its failure path cannot touch the new owner's results.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select

from services.evaluator import gate as gate_mod
from services.evaluator.prepare import Prepared
from services.evaluator.results import RunResult
from services.evaluator.schemas import EvaluationCreate, EvaluationPublic
from services.evaluator.statuses import ExitCode, PromotionState, RunStatus
from shared.errors import LoraplexError, NotFoundError
from shared.registry import queue
from shared.registry.db import Registry
from shared.registry.evaluation_runs import promotion_columns, promotion_record
from shared.registry.models import EvaluationRunRow, ItemRecordRow, MetricResultRow, utcnow
from shared.registry.queue import Claim

RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def local_worker_id() -> str:
    """The owner id of an in-process (CLI) run."""
    return f"cli-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def create_run(
    registry: Registry,
    request: EvaluationCreate,
    prepared: Prepared | None,
    run_id: str,
    status: str,
    *,
    owner: str | None = None,
    requested_by: str = "",
) -> Claim | None:
    """The run row. ``owner`` (an in-process run) creates it claimed, as attempt 1, without a
    heartbeat, so no worker takes it over while it runs; queued rows have no owner."""
    evidence = prepared.evidence() if prepared else {}
    with registry.session() as session:
        session.add(
            EvaluationRunRow(
                id=run_id,
                status=status,
                candidate=prepared.plan.candidate.label if prepared else request.candidate,
                baseline=(
                    prepared.plan.baseline.label
                    if prepared and prepared.plan.baseline
                    else request.baseline
                ),
                config={
                    "request": request.model_dump(mode="json"),
                    "plan": prepared.plan.describe() if prepared else None,
                },
                requested_by=requested_by,
                summary={},
                progress=0.0,
                worker_id=owner,
                attempts=1 if owner else 0,
                **evidence,
            )
        )
    return Claim(run_id, owner, 1, status=status) if owner else None


def _error_body(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, LoraplexError):
        return exc.to_dict()
    return {
        "code": "server_error",
        "message": f"{type(exc).__name__}: {exc}",
        "type": "server_error",
        "param": None,
    }


def fail_run(registry: Registry, claim: Claim, exc: BaseException | dict[str, Any]) -> bool:
    """Mark the claim's running run failed. False (and nothing written) if the claim is lost or
    the run already finished: a worker that was taken over never touches the new owner's rows."""
    error = exc if isinstance(exc, dict) else _error_body(exc)
    with registry.session() as session:
        if not queue.guarded_update(
            session,
            EvaluationRunRow,
            claim,
            statuses=(RunStatus.RUNNING,),
            status=RunStatus.FAILED,
            error=error,
            finished_at=utcnow(),
            worker_id=None,
            heartbeat_at=None,
        ):
            return False
        # Defensive: a running run has no results (they are stored with "succeeded").
        session.execute(delete(MetricResultRow).where(MetricResultRow.run_id == claim.row_id))
        session.execute(delete(ItemRecordRow).where(ItemRecordRow.run_id == claim.row_id))
    return True


def store_result(
    registry: Registry,
    claim: Claim,
    result: RunResult,
    gate: gate_mod.GateResult | None,
    report_path: Path,
    summary: dict[str, Any],
    *,
    evidence: dict[str, str | None] | None = None,
    promotion: dict[str, Any] | None = None,
) -> None:
    """Everything the run produced and the promotion it asks for, in one transaction, under the
    claim (raises :class:`ClaimLost`, storing nothing, when another worker owns the run now)."""
    pending = bool(promotion and promotion.get("state") == PromotionState.PENDING)
    with registry.session() as session:
        # The guarded UPDATE comes first: it fences and locks the row until the commit.
        queue.require(
            session,
            EvaluationRunRow,
            claim,
            statuses=(RunStatus.RUNNING,),
            status=RunStatus.SUCCEEDED,
            summary=summary,
            decision=gate.decision if gate else None,
            report_path=str(report_path),
            progress=1.0,
            finished_at=utcnow(),
            error=None,
            **promotion_columns(promotion),
            # A pending promotion keeps its owner (and a heartbeat), so that if the owner dies
            # before moving the alias the row becomes claimable and the next worker finishes it.
            worker_id=claim.worker_id if pending else None,
            heartbeat_at=utcnow() if pending else None,
            **(evidence or {}),
        )
        for subject in result.subjects():
            for name, metric in subject.metrics.items():
                session.add(
                    MetricResultRow(
                        run_id=claim.row_id,
                        subject=subject.role,
                        name=name,
                        value=metric.value if metric.ok else None,
                        settings=metric.settings,
                        model=subject.model,
                        n=metric.n,
                        ci_low=metric.ci_low,
                        ci_high=metric.ci_high,
                        kind=metric.kind,
                        higher_is_better=metric.higher_is_better,
                        statistic=metric.statistic,
                        error=metric.error,
                    )
                )
            session.add_all(
                ItemRecordRow(
                    run_id=claim.row_id,
                    subject=subject.role,
                    item_id=item.item_id,
                    item_hash=item.item_hash,
                    output=item.output,
                    values=item.values,
                    extra=item.extra or None,
                )
                for item in subject.items
            )


def get_run(registry: Registry, run_id: str) -> EvaluationRunRow:
    if not RUN_ID_RE.fullmatch(run_id):  # never a database error for a malformed id
        raise NotFoundError(f"evaluation {run_id!r} does not exist", param="id")
    with registry.read_session() as session:
        row = session.get(EvaluationRunRow, run_id)
        if row is None:
            raise NotFoundError(f"evaluation {run_id!r} does not exist", param="id")
        session.expunge(row)
        return row


def list_runs(registry: Registry, limit: int = 50) -> list[EvaluationRunRow]:
    with registry.read_session() as session:
        rows = list(
            session.scalars(
                select(EvaluationRunRow).order_by(EvaluationRunRow.created_at.desc()).limit(limit)
            )
        )
        for row in rows:
            session.expunge(row)
        return rows


def public(row: EvaluationRunRow, *, with_results: bool = True) -> EvaluationPublic:
    summary = row.summary or {}
    promotion = promotion_record(row) or summary.get("promotion")
    # A stored pass whose alias has not moved yet is not finished: callers wait for the move.
    pending = (
        row.status == RunStatus.SUCCEEDED
        and (promotion or {}).get("state") == PromotionState.PENDING
    )
    status: str = RunStatus.RUNNING if pending else row.status
    results = None
    if with_results and status == RunStatus.SUCCEEDED:
        results = {
            "candidate": {
                k: v.get("value")
                for k, v in (summary.get("candidate") or {}).get("metrics", {}).items()
            },
            "baseline": {
                k: v.get("value")
                for k, v in ((summary.get("baseline") or {}).get("metrics", {}) or {}).items()
            },
            "gate": summary.get("gate"),
            "judge": summary.get("judge"),
            "promotion": promotion,
        }
    exit_code = None
    if status == RunStatus.SUCCEEDED:
        refused = bool(promotion and promotion.get("error"))
        exit_code = int(ExitCode.of("error" if refused else (row.decision or "pass")))
    elif status == RunStatus.FAILED:
        exit_code = int(ExitCode.ERROR)
    return EvaluationPublic(
        id=row.id,
        status=status,
        candidate=row.candidate,
        baseline=row.baseline,
        decision=row.decision,
        exit_code=exit_code,
        progress=0.99 if pending else row.progress,
        stage="promotion" if pending else row.stage,
        created_at=row.created_at,
        finished_at=None if pending else row.finished_at,
        error=row.error,
        results=results,
        report_url=f"/v1/evaluations/{row.id}/report" if row.report_path else None,
    )
