"""The two rules of an alias move, checked inside the move's transaction by
:func:`shared.registry.adapters.check_move`:

(a) for every alias, the target is on the same base model (name and weights hash) as the adapter
    name's first version and the alias's current version, and servable as far as the registry can
    tell;
(b) for a protected alias, a passing evaluation of exactly this move under the protection's policy
    hash, unless an admin forces it with a reason.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import ConflictError, ForbiddenError, ValidationError
from shared.registry.models import (
    AdapterVersionRow,
    BaseModelRow,
    EvaluationRunRow,
    ProtectedAliasRow,
)
from shared.registry.names import BASE_BASELINE, first_baselines, parse_fewshot
from shared.registry.versions import is_full_model
from shared.servability import check_registered_version


def fmt_base(identity: tuple[str, str]) -> str:
    return f"{identity[0]!r} (weights {identity[1][:12]})"


def check_target(
    session: Session,
    label: str,
    target: AdapterVersionRow,
    now: AdapterVersionRow | None,
    bound: tuple[str, str] | None,
) -> None:
    """Rule (a), for every alias: same base model identity, servable as far as the registry knows."""
    identity = (target.base_model, target.base_model_sha256)
    differs: list[str] = []
    if bound is not None and bound != identity:
        differs.append(
            f"adapter name {target.adapter_name!r} is bound to {fmt_base(bound)}, the base of "
            "its first version"
        )
    if now is not None and (now.base_model, now.base_model_sha256) != identity:
        differs.append(
            f"the alias serves {now.id}, on {fmt_base((now.base_model, now.base_model_sha256))}"
        )
    base = session.get(BaseModelRow, target.base_model)
    if base is not None and base.weights_sha256 != target.base_model_sha256:
        differs.append(f"base model {target.base_model!r} is registered with other weights now")
    if differs:
        raise ConflictError(
            f"alias {label} cannot move to {target.id}, which is on base model "
            f"{fmt_base(identity)}: {'; '.join(differs)}",
            param="version",
            code="base_model_mismatch",
            details=differs,
        )
    if is_full_model(target):
        # The LoRA settings rule does not apply; a full model's files are checked against its
        # base by the trainer before registering and by the server before an engine starts.
        return
    reasons = check_registered_version(target.rank, target.manifest or {})
    if reasons:
        raise ValidationError(
            f"alias {label} cannot move to {target.id}: it cannot be served: {reasons[0]}",
            param="version",
            code="adapter_not_servable",
            details=reasons,
        )


def accepted_names(baseline: str, target: AdapterVersionRow, first: bool) -> set[str]:
    """How a run's ``baseline_version`` may name ``baseline``: for a first release, ``base`` is
    also the target's base model by its registry name (and so for ``base+fewshot:K``)."""
    accepted = {baseline}
    if not first:
        return accepted
    fewshot = parse_fewshot(baseline, "first_baseline")
    if baseline == BASE_BASELINE:
        accepted.add(target.base_model)
    elif fewshot is not None and fewshot[0] == BASE_BASELINE:
        accepted.add(f"{target.base_model}+fewshot:{fewshot[1]}")
    return accepted


def passing_run(
    session: Session, candidate: str, policy_sha256: str, names: set[str]
) -> str | None:
    """The latest passing evaluation of ``candidate`` against one of ``names`` under that policy
    hash, or None."""
    return session.scalar(
        select(EvaluationRunRow.id)
        .where(
            EvaluationRunRow.candidate_version == candidate,
            EvaluationRunRow.status == "succeeded",
            EvaluationRunRow.decision == "pass",
            EvaluationRunRow.policy_sha256 == policy_sha256,
            EvaluationRunRow.baseline_version.in_(sorted(names)),
        )
        .order_by(EvaluationRunRow.created_at.desc())
        .limit(1)
    )


def check_evidence(
    session: Session,
    label: str,
    protection: ProtectedAliasRow,
    target: AdapterVersionRow,
    previous: str | None,
    run_id: str | None,
) -> None:
    """Rule (b): a passing evaluation of exactly this move under the protection's policy hash.

    A first release of an alias whose ``first_baseline`` lists several baselines needs a passing
    evaluation against each (an intersection-union test: each at the gate's level keeps the claim
    "beats all of them" at that level, with no correction for the number of baselines)."""
    first = previous is None
    baselines = [previous] if previous is not None else first_baselines(protection.first_baseline)
    wanted = " and against ".join(baselines)
    policy = (
        f"{protection.policy_name}@{protection.policy_version} "
        f"(sha256 {protection.policy_sha256[:12]})"
    )

    def refuse(why: str) -> ForbiddenError:
        each = (
            "a passing evaluation each" if len(baselines) > 1 else "the id of a passing evaluation"
        )
        return ForbiddenError(
            f"alias {label} is protected by policy {policy}: {why}. A move needs {each} of "
            f"{target.id} against {wanted} under that policy, or force with a reason",
            param="evaluation_run_id",
        )

    if not run_id:
        raise refuse("no evaluation_run_id was given")
    # Re-read: the evaluator may have updated the row with a bulk UPDATE in this same session.
    run = session.scalar(
        select(EvaluationRunRow)
        .where(EvaluationRunRow.id == run_id)
        .execution_options(populate_existing=True)
    )
    if run is None:
        raise refuse(f"evaluation {run_id} does not exist")
    if run.status != "succeeded":
        raise refuse(f"evaluation {run_id} is {run.status}, not succeeded")
    if run.decision != "pass":
        raise refuse(f"evaluation {run_id} decided {run.decision or 'nothing'}, not pass")
    if run.candidate_version != target.id:
        raise refuse(
            f"evaluation {run_id} evaluated {run.candidate_version or 'no registered version'}, "
            f"not {target.id}"
        )
    others = [b for b in baselines if run.baseline_version not in accepted_names(b, target, first)]
    if len(others) == len(baselines):
        raise refuse(
            f"evaluation {run_id} compared with {run.baseline_version or 'nothing'}, not "
            + " or ".join(baselines)
        )
    if run.policy_sha256 != protection.policy_sha256:
        raise refuse(
            f"evaluation {run_id} was gated under policy sha256 "
            f"{(run.policy_sha256 or 'none')[:12]}, not the protection's"
        )
    missing = [
        b
        for b in others
        if passing_run(
            session, target.id, protection.policy_sha256, accepted_names(b, target, first)
        )
        is None
    ]
    if missing:
        raise refuse(
            f"evaluation {run_id} passed against {run.baseline_version}, but no evaluation of "
            f"{target.id} has passed against {' or '.join(missing)} under that policy yet"
        )
