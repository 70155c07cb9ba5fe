"""Prepare a run: resolve and validate everything a request names before any run row exists.

What a request may make the evaluator do is bounded here and in ``access.py``: it names endpoints
configured in settings (their URLs and keys never come from a request or a suite), reads data only
from the registry or under ``LORAPLEX_DATA_DIRS``, and a protected alias is gated under its
registered policy (a caller-written one with another hash is refused at submission).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.evaluator import contamination, fewshot, reward
from services.evaluator.access import (
    allowed_file,
    judge_endpoint,
    policy_from_body,
    request_policy,
    server_endpoint,
    suite_spec,
)
from services.evaluator.config import EvaluatorSettings
from services.evaluator.data import load_data
from services.evaluator.lineage import (
    trained_examples,
    training_data,
    training_data_config,
    training_data_path,
    validation_data_path,
)
from services.evaluator.lineage import (
    training_files as lineage_training_files,
)
from services.evaluator.plan import RunPlan, preflight, validate_plan
from services.evaluator.policy import Policy
from services.evaluator.schemas import EvaluationCreate
from services.evaluator.subjects import Subject, default_baseline, resolve_subject
from services.evaluator.suite import Suite, enabled_components, load_suite, suite_for_policy
from shared.datasets.records import Example
from shared.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from shared.registry import adapters, policies
from shared.registry.db import Registry
from shared.registry.models import DatasetRow, ProtectedAliasRow
from shared.registry.move_rules import passing_run
from shared.registry.names import first_baselines

log = logging.getLogger(__name__)

DATASET_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a registered file's id


def new_run_id() -> str:
    return f"eval-{uuid.uuid4().hex[:16]}"


def subject_token(subject: Subject | fewshot.Request) -> str:
    """How a run's evidence names a subject: its version id, or for the bare base model its
    registry name (which the registry's protected-alias rule accepts for ``first_baseline: base``),
    with ``+fewshot:K`` for a few-shot base."""
    return subject.token


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


def _protected_baselines(
    settings: EvaluatorSettings,
    session: Any,
    candidate: Subject,
    protection: ProtectedAliasRow,
    current: str | None,
) -> list[Subject | fewshot.Request]:
    """What a protected alias's move may have been compared with: the version it serves now, or
    for a first release the protection's first baselines (one or several; a move needs a pass
    against each, which the registry checks)."""
    if current is not None:
        return [resolve_subject(settings, session, current, param="baseline")]
    return [
        _baseline(settings, session, name, candidate)
        for name in first_baselines(protection.first_baseline)
    ]


def _next_required(
    session: Any, candidate: Subject, policy: Policy, required: list[Subject | fewshot.Request]
) -> Subject | fewshot.Request:
    """The first required baseline the candidate has no pass against yet (the first if all)."""
    if candidate.version_id is None:
        return required[0]
    for subject in required:
        token = subject_token(subject)
        if passing_run(session, candidate.version_id, policy.sha256(), {token}) is None:
            return subject
    return required[0]


def _baseline(
    settings: EvaluatorSettings, session: Any, name: str, candidate: Subject
) -> Subject | fewshot.Request:
    """A baseline by name; ``base`` is the candidate's own base model, ``base+fewshot:K`` (or
    ``<base model>+fewshot:K``) that base with K examples, drawn once the data is loaded."""
    few = fewshot.parse(name)
    base_name = few[0] if few else name
    if base_name == adapters.BASE_BASELINE:
        base = Subject(label=candidate.base.name, base=candidate.base, requested="base")
    else:
        base = resolve_subject(settings, session, base_name, param="baseline")
    if few is None:
        return base
    if not base.is_base:
        raise ValidationError(
            f"baseline {name!r}: few-shot prompting is a baseline of a base model, and "
            f"{base_name!r} is an adapter; use base+fewshot:{few[1]}",
            param="baseline",
        )
    return fewshot.Request(base, few[1])


def _bare(baseline: Subject | fewshot.Request) -> Subject:
    return baseline.base if isinstance(baseline, fewshot.Request) else baseline


def _drawn(
    registry: Registry,
    settings: EvaluatorSettings,
    request: fewshot.Request,
    candidate: Subject,
    items: list[Any],
    complete: bool,
) -> Subject:
    """The few-shot base with its examples. ``complete=False`` (an API submit, checked again by
    the worker) checks only that the candidate names training data, not the examples."""
    why = f"{candidate.label}'s lineage names no training data in the store"
    examples: Sequence[Example] | str = why
    with registry.session() as session:
        if not complete and training_data_path(settings, session, candidate) is not None:
            return fewshot.subject(request, ())
        if complete:
            examples = trained_examples(settings, session, candidate)
    if isinstance(examples, str):
        raise ValidationError(
            f"baseline {request.token} draws its examples from the candidate's training data, "
            f"but {examples}",
            param="baseline",
        )
    return fewshot.subject(request, fewshot.draw(examples, request.k, items))


def _data_path(
    settings: EvaluatorSettings,
    session: Any,
    request: EvaluationCreate,
    candidate: Subject,
    local: bool,
) -> tuple[Path, str]:
    """The data file to evaluate on, and how the run names its source."""
    if not request.data:
        return (
            validation_data_path(settings, session, candidate),
            f"{candidate.label} validation split",
        )
    row = session.get(DatasetRow, request.data) if DATASET_ID_RE.fullmatch(request.data) else None
    if row is not None:
        from shared.artifacts import open_store

        return open_store(settings).get_file(row.sha256), request.data
    if not local:
        return allowed_file(settings, request.data, "data"), request.data
    data_path = Path(request.data)
    if not data_path.is_file():
        raise NotFoundError(
            f"data {request.data!r} is neither a file nor a registered dataset id", param="data"
        )
    return data_path, request.data


def _suite(
    settings: EvaluatorSettings,
    request_suite: str | dict[str, Any] | None,
    policy: Policy | None,
    local: bool,
) -> Suite:
    """The request's suite, or the one its policy needs; its forgetting data under allowed dirs."""
    if request_suite is None and policy is not None:
        policy_suite = suite_spec(settings, policy.suite, "policy.suite", local)
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
    return suite


def _training(
    settings: EvaluatorSettings,
    registry: Registry,
    candidate: Subject,
    suite: Suite,
    policy: Policy | None,
    complete: bool,
) -> tuple[contamination.TrainingData | str, Suite]:
    """The candidate's training rows for the contamination check, which runs whenever there are
    some, and the suite to run. Without any rows the check is left out of the run, unless the
    policy bounds its metric: then it runs and records why there is nothing to compare, and that
    line fails closed."""
    if not suite.contamination.enabled:
        return "the suite turns the contamination check off", suite
    if not complete:
        return "read when the run starts", suite
    with registry.session() as session:
        found = training_data(settings, session, candidate)
    if isinstance(found, str) and not (policy and contamination.METRIC in policy.metrics):
        off = suite.contamination.model_copy(update={"enabled": False})
        suite = suite.model_copy(update={"contamination": off})
    return found, suite


def _reward_model(
    settings: EvaluatorSettings, registry: Registry, suite: Suite
) -> reward.RewardModel | None:
    if not suite.reward.enabled:
        return None
    with registry.read_session() as session:
        return reward.resolve(settings, session, suite.reward.model)


def prepare(
    settings: EvaluatorSettings,
    registry: Registry,
    request: EvaluationCreate,
    run_id: str | None = None,
    *,
    check_endpoints: bool = True,
    local: bool = False,
    complete: bool = True,
) -> Prepared:
    """Resolve and validate everything; raises a clear error before any run row exists.

    ``local``: the operator's own in-process run (``loraplex eval run`` / ``gate run``): paths are
    theirs to read and ``server_url`` may name an ad-hoc endpoint (sent no key). Everything that
    arrives over the API, and everything a worker runs, is prepared with ``local=False``.

    ``complete=False`` (an API submit: the worker prepares again before running) skips the slow
    reads only a run needs: the candidate's training rows, for the contamination check and a
    few-shot baseline's examples. The plan it returns cannot be run.
    """
    server = server_endpoint(settings, request, local)  # first: a URL is refused before anything
    policy = request_policy(settings, request.policy, local)
    request_suite = suite_spec(settings, request.suite, "suite", local)
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
        required: list[Subject | fewshot.Request] = []
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
            required = _protected_baselines(
                settings, session, candidate, protection, alias_expected
            )
        baseline: Subject | fewshot.Request | None
        if request.baseline and request.baseline.lower() == "none":
            baseline = None
        elif request.baseline:
            baseline = _baseline(settings, session, request.baseline, candidate)
        elif required:
            assert policy is not None  # a protection always sets the registered policy
            baseline = _next_required(session, candidate, policy, required)
        else:
            baseline = default_baseline(settings, session, candidate)
        tokens = [subject_token(r) for r in required]
        if required and (baseline is None or subject_token(baseline) not in tokens):
            raise ForbiddenError(
                f"alias {candidate.adapter_name}:{request.promote} is protected: it moves only on "
                f"a comparison with {' and with '.join(tokens)}, not with "
                f"{subject_token(baseline) if baseline else 'no baseline'}; leave `baseline` out",
                param="baseline",
            )
        if baseline is not None and (
            _bare(baseline).base.weights_sha256 != candidate.base.weights_sha256
        ):
            raise ValidationError(
                f"baseline {baseline.token} uses another base model than {candidate.label}; "
                "both must share one base to be evaluated together",
                param="baseline",
            )
        data_path, source = _data_path(settings, session, request, candidate, local)
        training_files = lineage_training_files(settings, session, candidate)
    suite = _suite(settings, request_suite, policy, local)
    if request.limit:
        suite.limit = request.limit
    training, suite = _training(settings, registry, candidate, suite, policy, complete)
    judge = judge_endpoint(settings, suite, server)
    scorer = _reward_model(settings, registry, suite)
    keep_markup = request.keep_markup
    if keep_markup is None:  # references cleaned as the candidate's training targets were
        keep_markup = bool(training_data_config(candidate.manifest).get("keep_markup", False))
    data = load_data(
        data_path,
        prompt_field=request.prompt_field,
        reference_field=request.reference_field,
        source=source,
        keep_markup=keep_markup,
    )
    if isinstance(baseline, fewshot.Request):
        baseline = _drawn(registry, settings, baseline, candidate, data.items, complete)
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
        training_files=training_files,
        training=training,
        complete=complete,
        reward_model=scorer,
    )
    validate_plan(plan)
    if check_endpoints:
        preflight(plan)
    return Prepared(plan, policy, request.promote, alias_expected, protected)
