"""Evaluation runs in the registry: prepare (validate everything), run, gate, store, promote.

A run's rows are written in two moments only: the run row when it is created (queued or running),
and everything it produced (metrics, item records, summary, decision) in one transaction at the
end. A run that fails keeps only its row with status ``failed`` and the error, never a partial set
of metrics. Promotion moves the alias with compare-and-set against the version the alias held when
the run was prepared, so a concurrent promotion is detected instead of overwritten.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import delete, select, update

from services.evaluator import gate as gate_mod
from services.evaluator import report
from services.evaluator.config import EvaluatorSettings
from services.evaluator.data import load_data
from services.evaluator.policy import Policy, load_policy, parse_policy
from services.evaluator.results import RunResult
from services.evaluator.runner import Runner, RunPlan, Tracker, preflight, stages, validate_plan
from services.evaluator.schemas import EvaluationCreate, EvaluationPublic
from services.evaluator.subjects import (
    default_baseline,
    resolve_subject,
    validation_data_path,
)
from services.evaluator.suite import load_suite, suite_for_policy
from shared.errors import ConflictError, LoraplexError, NotFoundError, ValidationError
from shared.logs import event
from shared.registry import adapters
from shared.registry.db import Registry
from shared.registry.models import (
    DatasetRow,
    EvaluationRunRow,
    ItemRecordRow,
    MetricResultRow,
    utcnow,
)

log = logging.getLogger(__name__)


def new_run_id() -> str:
    return f"eval-{uuid.uuid4().hex[:16]}"


@dataclass
class Prepared:
    plan: RunPlan
    policy: Policy | None
    promote: str | None
    alias_expected: str | None  # what the promote alias pointed at when the run was prepared


def _policy(spec: str | dict[str, Any] | None) -> Policy | None:
    if spec is None:
        return None
    if isinstance(spec, dict):
        return parse_policy(yaml.safe_dump(spec), "<inline policy>")
    if "\n" in spec or spec.strip().startswith("{") or (":" in spec and not Path(spec).exists()):
        return parse_policy(spec, "<inline policy>")
    return load_policy(spec)


def prepare(
    settings: EvaluatorSettings,
    registry: Registry,
    request: EvaluationCreate,
    run_id: str | None = None,
    *,
    check_endpoints: bool = True,
) -> Prepared:
    """Resolve and validate everything; raises a clear error before any run row exists."""
    policy = _policy(request.policy)
    if request.suite is None and policy is not None:
        suite = (
            suite_for_policy(list(policy.metrics), load_suite(policy.suite))
            if policy.suite is not None
            else suite_for_policy(list(policy.metrics))
        )
    else:
        suite = load_suite(request.suite)
        if policy is not None:
            missing = policy.components() - {
                part
                for part in ("generation", "perplexity", "judge", "lmeval", "forgetting", "parity")
                if getattr(suite, part).enabled
            }
            if missing:
                log.warning(
                    "suite %s does not run %s; those policy lines will fail closed",
                    suite.name,
                    ", ".join(sorted(missing)),
                )
    if request.limit:
        suite.limit = request.limit
    if request.promote:
        adapters.check_alias(request.promote, "promote")
    with registry.session() as session:
        candidate = resolve_subject(settings, session, request.candidate, param="candidate")
        if request.baseline and request.baseline.lower() == "none":
            baseline = None
        elif request.baseline:
            baseline = resolve_subject(settings, session, request.baseline, param="baseline")
        else:
            baseline = default_baseline(settings, session, candidate)
        if baseline is not None and baseline.base.weights_sha256 != candidate.base.weights_sha256:
            raise ValidationError(
                f"baseline {baseline.label} uses another base model than {candidate.label}; "
                "both must share one base to be evaluated together",
                param="baseline",
            )
        if request.data:
            data_path = Path(request.data)
            if not data_path.is_file():
                row = session.get(DatasetRow, request.data)
                if row is None:
                    raise NotFoundError(
                        f"data {request.data!r} is neither a file nor a registered dataset id",
                        param="data",
                    )
                from shared.artifacts import open_store

                data_path = open_store(settings).get_file(row.sha256)
            source = request.data
        else:
            data_path = validation_data_path(settings, session, candidate)
            source = f"{candidate.label} validation split"
        alias_expected = None
        if request.promote:
            if candidate.is_base:
                raise ValidationError("only an adapter version can be promoted", param="promote")
            row_alias = adapters.get_alias(session, candidate.adapter_name or "", request.promote)
            alias_expected = row_alias.version_id if row_alias else None
    data = load_data(
        data_path,
        prompt_field=request.prompt_field,
        reference_field=request.reference_field,
        source=source,
    )
    server_url = request.server_url if request.server_url is not None else settings.server_url
    judge_url = suite.judge.endpoint or settings.judge_url or server_url
    plan = RunPlan(
        run_id=run_id or new_run_id(),
        candidate=candidate,
        baseline=baseline,
        data=data,
        suite=suite,
        server_url=server_url,
        server_api_key=settings.server_api_key,
        judge_url=judge_url,
        judge_model=suite.judge.model or settings.judge_model or candidate.base.name,
        judge_api_key=suite.judge.api_key or settings.judge_api_key or settings.server_api_key,
        cache_dir=settings.eval_cache_dir,
        threads=settings.eval_threads,
    )
    validate_plan(plan)
    if check_endpoints:
        preflight(plan)
    return Prepared(plan, policy, request.promote, alias_expected)


# --------------------------------------------------------------------------------------------
# registry rows


def create_run(
    registry: Registry,
    request: EvaluationCreate,
    prepared: Prepared | None,
    run_id: str,
    status: str,
) -> None:
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
                summary={},
                progress=0.0,
            )
        )


def fail_run(registry: Registry, run_id: str, exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, LoraplexError):
        error = exc.to_dict()
    else:
        error = {
            "code": "server_error",
            "message": f"{type(exc).__name__}: {exc}",
            "type": "server_error",
            "param": None,
        }
    with registry.session() as session:
        session.execute(delete(MetricResultRow).where(MetricResultRow.run_id == run_id))
        session.execute(delete(ItemRecordRow).where(ItemRecordRow.run_id == run_id))
        session.execute(
            update(EvaluationRunRow)
            .where(EvaluationRunRow.id == run_id)
            .values(status="failed", error=error, finished_at=utcnow(), worker_id=None)
        )
    return error


def store_result(
    registry: Registry,
    run_id: str,
    result: RunResult,
    gate: gate_mod.GateResult | None,
    report_path: Path,
    summary: dict[str, Any],
) -> None:
    """Everything the run produced, in one transaction."""
    with registry.session() as session:
        for subject in result.subjects():
            for name, metric in subject.metrics.items():
                session.add(
                    MetricResultRow(
                        run_id=run_id,
                        subject=subject.role,
                        name=name,
                        value=metric.value if metric.ok else None,
                        settings={
                            **metric.settings,
                            "_meta": {
                                "model": subject.model,
                                "n": metric.n,
                                "ci": [metric.ci_low, metric.ci_high],
                                "kind": metric.kind,
                                "higher_is_better": metric.higher_is_better,
                                "statistic": metric.statistic,
                                "error": metric.error,
                            },
                        },
                    )
                )
            session.add_all(
                ItemRecordRow(
                    run_id=run_id,
                    subject=subject.role,
                    item_id=item.item_id,
                    item_hash=item.item_hash,
                    output=item.output,
                    values={**item.values, **({"_extra": item.extra} if item.extra else {})},
                )
                for item in subject.items
            )
        session.execute(
            update(EvaluationRunRow)
            .where(EvaluationRunRow.id == run_id)
            .values(
                status="succeeded",
                summary=summary,
                decision=gate.decision if gate else None,
                report_path=str(report_path),
                progress=1.0,
                finished_at=utcnow(),
                error=None,
            )
        )


@dataclass
class Outcome:
    run_id: str
    result: RunResult
    gate: gate_mod.GateResult | None
    paths: dict[str, Path]
    promotion: dict[str, Any] | None

    @property
    def exit_code(self) -> int:
        if self.promotion and self.promotion.get("error"):
            return gate_mod.EXIT_CODES["error"]
        return self.gate.exit_code if self.gate else 0


def promote(
    registry: Registry, prepared: Prepared, run_id: str, gate: gate_mod.GateResult | None
) -> dict[str, Any] | None:
    alias = prepared.promote
    if not alias:
        return None
    cand = prepared.plan.candidate
    info: dict[str, Any] = {
        "alias": f"{cand.adapter_name}:{alias}",
        "to": cand.version_id,
        "from": prepared.alias_expected,
    }
    if gate is None or gate.decision != "pass":
        info["moved"] = False
        info["why"] = f"gate decision is {gate.decision if gate else 'missing'}; nothing moves"
        return info
    try:
        with registry.session() as session:
            adapters.set_alias(
                session,
                cand.adapter_name or "",
                alias,
                cand.version_id or "",
                expected=prepared.alias_expected,
                evaluation_run_id=run_id,
                actor="loraplex-gate",
                reason=f"gate pass (policy {gate.policy_sha256[:12]})",
            )
    except ConflictError as exc:
        info.update(moved=False, error=exc.message)
        return info
    info["moved"] = True
    return info


def execute(
    settings: EvaluatorSettings,
    registry: Registry,
    prepared: Prepared,
    tracker: Tracker | None = None,
) -> Outcome:
    """Run, gate, write outputs, store, promote. The run row must exist; on error it is marked
    failed (with nothing else stored) and the error re-raised."""
    plan = prepared.plan
    out_dir = settings.evaluations_dir / plan.run_id
    try:
        event(
            log,
            "evaluation.started",
            run=plan.run_id,
            candidate=plan.candidate.label,
            baseline=plan.baseline.label if plan.baseline else None,
            items=len(plan.items),
            promote=prepared.promote,
        )
        result = Runner(plan, tracker or Tracker(stages(plan), run_id=plan.run_id)).run()
        gate = gate_mod.decide(prepared.policy, result) if prepared.policy else None
        if gate is not None:
            event(
                log,
                "gate.decision",
                run=plan.run_id,
                candidate=plan.candidate.label,
                baseline=plan.baseline.label if plan.baseline else None,
                decision=gate.decision,
                policy=gate.policy_name,
                policy_sha256=gate.policy_sha256[:12],
                reasons=gate.reasons,
            )
        limits = prepared.policy.judge.model_dump() if prepared.policy else None
        paths = report.write_outputs(out_dir, result, gate, limits)
        summary = report.result_json(result, gate)
        store_result(registry, plan.run_id, result, gate, paths["html"], summary)
    except BaseException as exc:
        shutil.rmtree(out_dir, ignore_errors=True)
        fail_run(registry, plan.run_id, exc)
        raise
    event(
        log,
        "evaluation.finished",
        run=plan.run_id,
        decision=gate.decision if gate else None,
        seconds=round(result.timings.get("total_s", 0.0), 1),
    )
    promotion = promote(registry, prepared, plan.run_id, gate)
    if promotion is not None and not promotion.get("moved"):
        event(
            log,
            "promotion.skipped",
            run=plan.run_id,
            alias=promotion.get("alias"),
            why=promotion.get("why") or promotion.get("error"),
        )
    if promotion is not None:
        with registry.session() as session:
            row = session.get(EvaluationRunRow, plan.run_id)
            if row is not None:
                row.summary = {**row.summary, "promotion": promotion}
    return Outcome(plan.run_id, result, gate, paths, promotion)


def run_now(
    settings: EvaluatorSettings,
    registry: Registry,
    request: EvaluationCreate,
    tracker_factory: Any = None,
) -> Outcome:
    """Synchronous run (CLI): validate first (nothing stored on bad input), then execute."""
    prepared = prepare(settings, registry, request)
    create_run(registry, request, prepared, prepared.plan.run_id, "running")
    tracker = tracker_factory(prepared.plan) if tracker_factory else None
    return execute(settings, registry, prepared, tracker)


# --------------------------------------------------------------------------------------------
# queue (API + worker)


def submit(settings: EvaluatorSettings, registry: Registry, request: EvaluationCreate) -> str:
    """Validate now (bad input -> error, no row), queue for a worker."""
    prepared = prepare(settings, registry, request)
    create_run(registry, request, prepared, prepared.plan.run_id, "queued")
    return prepared.plan.run_id


def get_run(registry: Registry, run_id: str) -> EvaluationRunRow:
    with registry.session() as session:
        row = session.get(EvaluationRunRow, run_id)
        if row is None:
            raise NotFoundError(f"evaluation {run_id!r} does not exist", param="id")
        session.expunge(row)
        return row


def list_runs(registry: Registry, limit: int = 50) -> list[EvaluationRunRow]:
    with registry.session() as session:
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
    results = None
    if with_results and row.status == "succeeded":
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
            "promotion": summary.get("promotion"),
        }
    exit_code = None
    if row.status == "succeeded":
        exit_code = gate_mod.EXIT_CODES.get(row.decision or "pass", 0)
    elif row.status == "failed":
        exit_code = gate_mod.EXIT_CODES["error"]
    return EvaluationPublic(
        id=row.id,
        status=row.status,
        candidate=row.candidate,
        baseline=row.baseline,
        decision=row.decision,
        exit_code=exit_code,
        progress=row.progress,
        stage=(row.config or {}).get("stage"),
        created_at=row.created_at,
        finished_at=row.finished_at,
        error=row.error,
        results=results,
        report_url=f"/v1/evaluations/{row.id}/report" if row.report_path else None,
    )
