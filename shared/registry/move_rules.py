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
from shared.registry.names import BASE_BASELINE, parse_fewshot
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
    reasons = check_registered_version(target.rank, target.manifest or {})
    if reasons:
        raise ValidationError(
            f"alias {label} cannot move to {target.id}: it cannot be served: {reasons[0]}",
            param="version",
            code="adapter_not_servable",
            details=reasons,
        )


def check_evidence(
    session: Session,
    label: str,
    protection: ProtectedAliasRow,
    target: AdapterVersionRow,
    previous: str | None,
    run_id: str | None,
) -> None:
    """Rule (b): a passing evaluation of exactly this move under the protection's policy hash."""
    baseline = previous or protection.first_baseline
    policy = (
        f"{protection.policy_name}@{protection.policy_version} "
        f"(sha256 {protection.policy_sha256[:12]})"
    )

    def refuse(why: str) -> ForbiddenError:
        return ForbiddenError(
            f"alias {label} is protected by policy {policy}: {why}. A move needs the id of a "
            f"passing evaluation of {target.id} against {baseline} under that policy, or force "
            "with a reason",
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
    accepted = {baseline}
    fewshot = parse_fewshot(baseline, "first_baseline") if previous is None else None
    if previous is None and baseline == BASE_BASELINE:
        accepted.add(target.base_model)  # the bare base model, named by its registry name
    elif fewshot is not None and fewshot[0] == BASE_BASELINE:
        accepted.add(f"{target.base_model}+fewshot:{fewshot[1]}")
    if run.baseline_version not in accepted:
        raise refuse(
            f"evaluation {run_id} compared with {run.baseline_version or 'nothing'}, not {baseline}"
        )
    if run.policy_sha256 != protection.policy_sha256:
        raise refuse(
            f"evaluation {run_id} was gated under policy sha256 "
            f"{(run.policy_sha256 or 'none')[:12]}, not the protection's"
        )
