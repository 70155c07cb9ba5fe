"""Evaluation runs in the registry: prepare (validate everything), run, gate, store, promote.

What a request may make the evaluator do is bounded here: it names endpoints configured in
settings (their URLs and keys never come from a request or a suite), reads data only from the
registry or under ``LORAPLEX_DATA_DIRS``, and a protected alias is gated under its registered
policy (a caller-written one with another hash is refused at submission).

A run's rows are written under a fenced queue claim (``shared/registry/queue.py``): the run row
when it is created, then everything it produced (metrics, item records, summary, decision, the
evidence columns) *and the promotion it asks for* (``promotion.state = pending``) in one
transaction, then the alias move together with its mark (``moved`` or ``refused``) in another. A
crash between the two leaves ``pending``, which the next claimant finishes. Every write names the
claim's worker and attempt, so a worker whose run was taken over writes nothing more and its
failure path cannot touch the new owner's results. Promotion moves the alias with compare-and-set
against the version the alias held when the run was prepared.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import yaml
from sqlalchemy import delete, select

from services.evaluator import gate as gate_mod
from services.evaluator import report
from services.evaluator.config import Endpoint, EvaluatorSettings
from services.evaluator.data import load_data
from services.evaluator.policy import Policy, load_policy, parse_policy
from services.evaluator.results import RunResult
from services.evaluator.runner import Runner, RunPlan, Tracker, preflight, stages, validate_plan
from services.evaluator.schemas import EvaluationCreate, EvaluationPublic
from services.evaluator.subjects import (
    Subject,
    default_baseline,
    resolve_subject,
    validation_data_path,
)
from services.evaluator.suite import (
    SUITES_DIR,
    TASKS_DIR,
    Suite,
    enabled_components,
    load_suite,
    suite_for_policy,
)
from shared.errors import (
    ConflictError,
    ForbiddenError,
    LoraplexError,
    NotFoundError,
    ValidationError,
)
from shared.logs import event
from shared.registry import adapters, policies, queue
from shared.registry.db import Registry
from shared.registry.models import (
    DatasetRow,
    EvaluationRunRow,
    ItemRecordRow,
    MetricResultRow,
    ProtectedAliasRow,
    utcnow,
)
from shared.registry.queue import Claim, ClaimLost

log = logging.getLogger(__name__)

PROMOTION_ACTOR = "loraplex-gate"
DATASET_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a registered file's id
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
POLICIES_DIR = Path(__file__).with_name("policies")
# Shipped with the evaluator: built-in suites, task data (the forgetting check), example policies.
BUILTIN_DIRS = (SUITES_DIR, TASKS_DIR, POLICIES_DIR)


class WorkerStopping(Exception):
    """The worker was asked to stop (SIGTERM): give the run back instead of failing it."""


def new_run_id() -> str:
    return f"eval-{uuid.uuid4().hex[:16]}"


def subject_token(subject: Subject) -> str:
    """How a run's evidence names a subject: its version id, or for the bare base model its
    registry name (which the registry's protected-alias rule accepts for ``first_baseline: base``)."""
    return subject.version_id or subject.base.name


@dataclass
class Prepared:
    plan: RunPlan
    policy: Policy | None
    promote: str | None
    alias_expected: str | None  # what the promote alias pointed at when the run was prepared
    protected: bool = False  # the promote alias is protected (the policy is the registered one)

    def evidence(self) -> dict[str, str | None]:
        """The run-row columns a protected alias checks its move against."""
        plan = self.plan
        return {
            "candidate_version": subject_token(plan.candidate),
            "baseline_version": subject_token(plan.baseline) if plan.baseline else None,
            "policy_sha256": self.policy.sha256() if self.policy else None,
        }


# --------------------------------------------------------------------------------------------
# what a request may name: files, endpoints, policies


def _inline_policy(spec: str) -> bool:
    if "\n" in spec or "\x00" in spec or spec.strip().startswith("{"):
        return True
    try:
        return ":" in spec and not Path(spec).exists()
    except (OSError, ValueError):
        return True


def allowed_file(settings: EvaluatorSettings, value: str, param: str) -> Path:
    """``value`` as a file under the allowed directories, with symlinks and ``..`` resolved
    before the check (so neither a link nor a climb leads out)."""
    try:
        resolved = Path(value).resolve()
        roots = [*settings.allowed_data_dirs(), *(d.resolve() for d in BUILTIN_DIRS)]
        inside = any(resolved.is_relative_to(root) for root in roots)
        exists = inside and resolved.is_file()
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValidationError(
            f"{param} {value!r} is not a usable path ({exc})", param=param
        ) from exc
    if not inside:
        # The allowed directories are not listed: they are the server's layout, not the caller's.
        raise ValidationError(
            f"{param} {value!r} is outside the directories the evaluator may read: pass a "
            "registered file id (upload it with the trainer's POST /v1/files) or a path under "
            "LORAPLEX_DATA_DIRS",
            param=param,
        )
    if not exists:
        raise NotFoundError(f"{param} file {value!r} does not exist", param=param)
    return resolved


def _suite_spec(
    settings: EvaluatorSettings, spec: str | dict[str, Any] | None, param: str, local: bool
) -> str | dict[str, Any] | None:
    """A suite file named by a request must be under the allowed directories too."""
    if isinstance(spec, str) and not local and Path(spec).suffix:
        return str(allowed_file(settings, spec, param))
    return spec


def _policy(
    settings: EvaluatorSettings, spec: str | dict[str, Any] | None, local: bool
) -> Policy | None:
    if spec is None:
        return None
    if isinstance(spec, dict):
        return parse_policy(yaml.safe_dump(spec), "<inline policy>")
    if _inline_policy(spec):
        return parse_policy(spec, "<inline policy>")
    return load_policy(spec if local else allowed_file(settings, spec, "policy"))


def policy_from_body(body: dict[str, Any], source: str) -> Policy:
    return parse_policy(yaml.safe_dump(body), source)


def _is_url(value: str) -> bool:
    return "://" in value or "/" in value or value.lower().startswith(("http:", "https:"))


def named_endpoint(settings: EvaluatorSettings, name: str, param: str) -> Endpoint:
    endpoints = settings.named_endpoints()
    known = ", ".join(sorted(endpoints)) or "none"
    if _is_url(name):
        raise ValidationError(
            f"{param}: {name!r} is a URL; the evaluator calls (and sends keys to) endpoints named "
            "in its settings only: name an endpoint configured in LORAPLEX_ENDPOINTS (or "
            f"'server' / 'judge' from LORAPLEX_SERVER_URL / LORAPLEX_JUDGE_URL); configured: {known}",
            param=param,
        )
    endpoint = endpoints.get(name)
    if endpoint is None:
        raise ValidationError(
            f"{param}: unknown endpoint {name!r}; configured endpoints: {known} "
            "(LORAPLEX_ENDPOINTS)",
            param=param,
        )
    return endpoint


def _server_endpoint(
    settings: EvaluatorSettings, request: EvaluationCreate, local: bool
) -> tuple[str | None, Endpoint | None]:
    if request.server_url is not None:
        if not local:
            raise ValidationError(
                "server_url: a request cannot choose a URL for the evaluator to call (and send "
                "its keys to); name an endpoint configured in the evaluator's settings with "
                "`server` (LORAPLEX_ENDPOINTS, or 'server' from LORAPLEX_SERVER_URL)",
                param="server_url",
            )
        if request.server is not None:
            raise ValidationError("give server or server_url, not both", param="server_url")
        try:
            # The operator's own CLI run: their URL, but no configured key goes there.
            return "(--server-url)", Endpoint(url=request.server_url)
        except pydantic.ValidationError as exc:
            raise ValidationError(
                f"server_url {request.server_url!r} must start with http:// or https://",
                param="server_url",
            ) from exc
    if request.server is not None:
        return request.server, named_endpoint(settings, request.server, "server")
    default = settings.named_endpoints().get("server")
    return ("server", default) if default is not None else (None, None)


def _judge_endpoint(
    settings: EvaluatorSettings, suite: Suite, server: tuple[str | None, Endpoint | None]
) -> tuple[str | None, Endpoint | None]:
    if suite.judge.endpoint:
        name = suite.judge.endpoint
        return name, named_endpoint(settings, name, "suite.judge.endpoint")
    judge = settings.named_endpoints().get("judge")
    return ("judge", judge) if judge is not None else server


def _registered_policy(session: Any, protection: ProtectedAliasRow) -> Policy:
    row = policies.get_policy(session, protection.policy_name, protection.policy_version)
    policy = policy_from_body(dict(row.body), f"policy {row.name}@{row.version}")
    if policy.sha256() != protection.policy_sha256:
        raise ConflictError(
            f"registered policy {row.name}@{row.version} no longer hashes to the sha256 its "
            "protection recorded (the policy format changed?); register it again and protect the "
            "alias again",
            param="policy",
        )
    return policy


def _protected_baseline(
    settings: EvaluatorSettings,
    session: Any,
    candidate: Subject,
    protection: ProtectedAliasRow,
    current: str | None,
) -> Subject:
    """What a protected alias's move must have been compared with: the version it serves now,
    or the protection's first baseline for a first release."""
    if current is not None:
        return resolve_subject(settings, session, current, param="baseline")
    if protection.first_baseline == adapters.BASE_BASELINE:
        return Subject(label=candidate.base.name, base=candidate.base, requested="base")
    return resolve_subject(settings, session, protection.first_baseline, param="baseline")


def prepare(
    settings: EvaluatorSettings,
    registry: Registry,
    request: EvaluationCreate,
    run_id: str | None = None,
    *,
    check_endpoints: bool = True,
    local: bool = False,
) -> Prepared:
    """Resolve and validate everything; raises a clear error before any run row exists.

    ``local``: the operator's own in-process run (``loraplex eval run`` / ``gate run``): paths are
    theirs to read and ``server_url`` may name an ad-hoc endpoint (sent no key). Everything that
    arrives over the API, and everything a worker runs, is prepared with ``local=False``.
    """
    server = _server_endpoint(settings, request, local)  # first: a URL is refused before anything
    policy = _policy(settings, request.policy, local)
    request_suite = _suite_spec(settings, request.suite, "suite", local)
    if request.promote:
        adapters.check_alias(request.promote, "promote")
    protected = False
    with registry.session() as session:
        candidate = resolve_subject(settings, session, request.candidate, param="candidate")
        alias_expected = None
        protection = None
        if request.promote:
            if candidate.is_base:
                raise ValidationError("only an adapter version can be promoted", param="promote")
            row_alias = adapters.get_alias(session, candidate.adapter_name or "", request.promote)
            alias_expected = row_alias.version_id if row_alias else None
            protection = policies.get_protection(
                session, candidate.adapter_name or "", request.promote
            )
        required: Subject | None = None
        if protection is not None:
            protected = True
            label = f"{candidate.adapter_name}:{request.promote}"
            registered = _registered_policy(session, protection)
            if policy is None:
                policy = registered
            elif policy.sha256() != protection.policy_sha256:
                raise ForbiddenError(
                    f"alias {label} is protected by the registered policy "
                    f"{protection.policy_name}@{protection.policy_version} (sha256 "
                    f"{protection.policy_sha256[:12]}); this request's policy hashes to "
                    f"{policy.sha256()[:12]}, so a pass under it could not move the alias. Leave "
                    "`policy` out to be gated under the registered one",
                    param="policy",
                )
            required = _protected_baseline(settings, session, candidate, protection, alias_expected)
        if request.baseline and request.baseline.lower() == "none":
            baseline = None
        elif request.baseline:
            baseline = resolve_subject(settings, session, request.baseline, param="baseline")
        elif required is not None:
            baseline = required
        else:
            baseline = default_baseline(settings, session, candidate)
        if required is not None and (
            baseline is None or subject_token(baseline) != subject_token(required)
        ):
            raise ForbiddenError(
                f"alias {candidate.adapter_name}:{request.promote} is protected: it moves only on "
                f"a comparison with {subject_token(required)}, not with "
                f"{subject_token(baseline) if baseline else 'no baseline'}; leave `baseline` out",
                param="baseline",
            )
        if baseline is not None and baseline.base.weights_sha256 != candidate.base.weights_sha256:
            raise ValidationError(
                f"baseline {baseline.label} uses another base model than {candidate.label}; "
                "both must share one base to be evaluated together",
                param="baseline",
            )
        if request.data:
            row = (
                session.get(DatasetRow, request.data)
                if DATASET_ID_RE.fullmatch(request.data)
                else None
            )
            if row is not None:
                from shared.artifacts import open_store

                data_path = open_store(settings).get_file(row.sha256)
            elif local:
                data_path = Path(request.data)
                if not data_path.is_file():
                    raise NotFoundError(
                        f"data {request.data!r} is neither a file nor a registered dataset id",
                        param="data",
                    )
            else:
                data_path = allowed_file(settings, request.data, "data")
            source = request.data
        else:
            data_path = validation_data_path(settings, session, candidate)
            source = f"{candidate.label} validation split"
    if request_suite is None and policy is not None:
        policy_suite = _suite_spec(settings, policy.suite, "policy.suite", local)
        suite = (
            suite_for_policy(list(policy.metrics), load_suite(policy_suite))
            if policy_suite is not None
            else suite_for_policy(list(policy.metrics))
        )
    else:
        suite = load_suite(request_suite)
        if policy is not None:
            missing = policy.components() - enabled_components(suite)
            if missing:
                log.warning(
                    "suite %s does not run %s; those policy lines will fail closed",
                    suite.name,
                    ", ".join(sorted(missing)),
                )
    if suite.forgetting.enabled and not local:
        suite.forgetting.data = str(
            allowed_file(settings, suite.forgetting.data, "suite.forgetting.data")
        )
    if request.limit:
        suite.limit = request.limit
    judge = _judge_endpoint(settings, suite, server)
    data = load_data(
        data_path,
        prompt_field=request.prompt_field,
        reference_field=request.reference_field,
        source=source,
    )
    plan = RunPlan(
        run_id=run_id or new_run_id(),
        candidate=candidate,
        baseline=baseline,
        data=data,
        suite=suite,
        server_url=server[1].url if server[1] else "",
        server_api_key=server[1].api_key if server[1] else "",
        judge_url=judge[1].url if judge[1] else "",
        judge_model=suite.judge.model or settings.judge_model or candidate.base.name,
        judge_api_key=judge[1].api_key if judge[1] else "",
        cache_dir=settings.eval_cache_dir,
        threads=settings.eval_threads,
        extra={"endpoints": {"server": server[0], "judge": judge[0]}},
    )
    validate_plan(plan)
    if check_endpoints:
        preflight(plan)
    return Prepared(plan, policy, request.promote, alias_expected, protected)


# --------------------------------------------------------------------------------------------
# registry rows


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
                    "requested_by": requested_by,
                    "request": request.model_dump(mode="json"),
                    "plan": prepared.plan.describe() if prepared else None,
                },
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
            statuses=("running",),
            status="failed",
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
    pending = bool(promotion and promotion.get("state") == "pending")
    with registry.session() as session:
        # The guarded UPDATE comes first: it fences and locks the row until the commit.
        queue.require(
            session,
            EvaluationRunRow,
            claim,
            statuses=("running",),
            status="succeeded",
            summary=summary,
            decision=gate.decision if gate else None,
            report_path=str(report_path),
            progress=1.0,
            finished_at=utcnow(),
            error=None,
            promotion=promotion,
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
                    run_id=claim.row_id,
                    subject=subject.role,
                    item_id=item.item_id,
                    item_hash=item.item_hash,
                    output=item.output,
                    values={**item.values, **({"_extra": item.extra} if item.extra else {})},
                )
                for item in subject.items
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


def requested_promotion(
    prepared: Prepared, gate: gate_mod.GateResult | None
) -> dict[str, Any] | None:
    """What the run asks of its alias, recorded with its result: ``pending`` on pass."""
    alias = prepared.promote
    if not alias:
        return None
    cand = prepared.plan.candidate
    info: dict[str, Any] = {
        "alias": f"{cand.adapter_name}:{alias}",
        "adapter": cand.adapter_name,
        "name": alias,
        "to": cand.version_id,
        "from": prepared.alias_expected,
        "moved": False,
    }
    if gate is None or gate.decision != "pass":
        why = f"gate decision is {gate.decision if gate else 'missing'}; nothing moves"
        return {**info, "state": "skipped", "why": why}
    return {**info, "state": "pending", "reason": f"gate pass (policy {gate.policy_sha256[:12]})"}


def finish_promotion(registry: Registry, claim: Claim) -> dict[str, Any] | None:
    """Move the alias a stored pass asked for and mark it (``moved`` or ``refused``), in one
    transaction under the claim; a promotion that is not pending is returned as it is."""
    with registry.read_session() as session:
        row = session.get(EvaluationRunRow, claim.row_id)
        promotion = dict(row.promotion or {}) if row is not None else {}
        requested_by = str((row.config or {}).get("requested_by") or "") if row is not None else ""
    # The alias history names the gate and the key that asked for the promotion.
    actor = f"{PROMOTION_ACTOR} for {requested_by}" if requested_by else PROMOTION_ACTOR
    if promotion.get("state") != "pending":
        return promotion or None
    try:
        with registry.session() as session:
            queue.require(
                session, EvaluationRunRow, claim, statuses=("succeeded",), heartbeat_at=utcnow()
            )
            adapters.set_alias(
                session,
                promotion["adapter"],
                promotion["name"],
                promotion["to"],
                expected=promotion.get("from"),
                evaluation_run_id=claim.row_id,
                actor=actor,
                reason=str(promotion.get("reason") or "gate pass"),
            )
            promotion.update(state="moved", moved=True)
            queue.require(
                session,
                EvaluationRunRow,
                claim,
                promotion=promotion,
                worker_id=None,
                heartbeat_at=None,
            )
    except ClaimLost:
        raise
    except LoraplexError as exc:  # the registry refused (moved meanwhile, protected, base, ...)
        promotion.update(state="refused", moved=False, error=exc.message, code=exc.code)
        with registry.session() as session:
            queue.require(
                session,
                EvaluationRunRow,
                claim,
                promotion=promotion,
                worker_id=None,
                heartbeat_at=None,
            )
    return promotion


def run_dir(settings: EvaluatorSettings, claim: Claim) -> Path:
    """Each attempt writes its own files, so a taken-over worker never overwrites or removes the
    new owner's report."""
    return settings.evaluations_dir / claim.row_id / f"attempt-{claim.attempt}"


def _discard(out_dir: Path) -> None:
    shutil.rmtree(out_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        out_dir.parent.rmdir()  # only when no other attempt left files there


def execute(
    settings: EvaluatorSettings,
    registry: Registry,
    prepared: Prepared,
    tracker: Tracker | None = None,
    *,
    claim: Claim,
) -> Outcome:
    """Run, gate, write outputs, store (with the promotion asked for), promote. The run row must
    exist and ``claim`` hold it. On error the run is marked failed (with nothing else stored) and
    the error re-raised; :class:`ClaimLost` and :class:`WorkerStopping` write nothing."""
    plan = prepared.plan
    out_dir = run_dir(settings, claim)
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
        store_result(
            registry,
            claim,
            result,
            gate,
            paths["html"],
            summary,
            evidence=prepared.evidence(),
            promotion=requested_promotion(prepared, gate),
        )
    except (ClaimLost, WorkerStopping):
        _discard(out_dir)
        raise
    except BaseException as exc:
        _discard(out_dir)
        fail_run(registry, claim, exc)
        raise
    event(
        log,
        "evaluation.finished",
        run=plan.run_id,
        decision=gate.decision if gate else None,
        seconds=round(result.timings.get("total_s", 0.0), 1),
    )
    promotion = finish_promotion(registry, claim)
    if promotion is not None and not promotion.get("moved"):
        event(
            log,
            "promotion.skipped",
            run=plan.run_id,
            alias=promotion.get("alias"),
            why=promotion.get("why") or promotion.get("error"),
        )
    return Outcome(plan.run_id, result, gate, paths, promotion)


def run_now(
    settings: EvaluatorSettings,
    registry: Registry,
    request: EvaluationCreate,
    tracker_factory: Any = None,
    *,
    local: bool = True,
) -> Outcome:
    """Synchronous run (CLI): validate first (nothing stored on bad input), then execute."""
    prepared = prepare(settings, registry, request, local=local)
    claim = create_run(
        registry, request, prepared, prepared.plan.run_id, "running", owner=local_worker_id()
    )
    assert claim is not None
    tracker = tracker_factory(prepared.plan) if tracker_factory else None
    return execute(settings, registry, prepared, tracker, claim=claim)


# --------------------------------------------------------------------------------------------
# queue (API + worker)


def submit(
    settings: EvaluatorSettings,
    registry: Registry,
    request: EvaluationCreate,
    *,
    requested_by: str = "",
) -> str:
    """Validate now (bad input -> error, no row), queue for a worker. ``requested_by``: the name
    of the key that asked (recorded, and named in the alias history on promotion)."""
    prepared = prepare(settings, registry, request)
    create_run(
        registry, request, prepared, prepared.plan.run_id, "queued", requested_by=requested_by
    )
    return prepared.plan.run_id


# --------------------------------------------------------------------------------------------
# policies


def register_policy(
    registry: Registry, name: str, spec: str | dict[str, Any], *, actor: str
) -> dict[str, Any]:
    """Parse (the evaluator's own rules), then store the body and ``Policy.sha256()``."""
    policy = (
        policy_from_body(spec, f"policy {name}")
        if isinstance(spec, dict)
        else parse_policy(spec, f"policy {name}")
    )
    with registry.session() as session:
        row = policies.register_policy(
            session, name, policy.model_dump(mode="json"), policy.sha256(), actor=actor
        )
        return policy_public(row)


def get_policy(registry: Registry, name: str, version: int | None = None) -> dict[str, Any]:
    policies.check_policy_name(name, "name")
    with registry.read_session() as session:
        return policy_public(policies.get_policy(session, name, version))


def policy_public(row: Any) -> dict[str, Any]:
    return {
        "object": "gate_policy",
        "name": row.name,
        "version": row.version,
        "sha256": row.sha256,
        "body": row.body,
        "actor": row.actor,
        "created_at": row.created_at,
    }


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
    promotion = row.promotion or summary.get("promotion")
    # A stored pass whose alias has not moved yet is not finished: callers wait for the move.
    pending = row.status == "succeeded" and (promotion or {}).get("state") == "pending"
    status = "running" if pending else row.status
    results = None
    if with_results and status == "succeeded":
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
    if status == "succeeded":
        refused = bool(promotion and promotion.get("error"))
        exit_code = gate_mod.EXIT_CODES.get("error" if refused else (row.decision or "pass"), 0)
    elif status == "failed":
        exit_code = gate_mod.EXIT_CODES["error"]
    return EvaluationPublic(
        id=row.id,
        status=status,
        candidate=row.candidate,
        baseline=row.baseline,
        decision=row.decision,
        exit_code=exit_code,
        progress=0.99 if pending else row.progress,
        stage="promotion" if pending else (row.config or {}).get("stage"),
        created_at=row.created_at,
        finished_at=None if pending else row.finished_at,
        error=row.error,
        results=results,
        report_url=f"/v1/evaluations/{row.id}/report" if row.report_path else None,
    )
