"""Promotion: what a run asks of its alias, and the move itself under the run's claim.

A pass is stored with ``promotion_state = pending`` (``runs.store_result``); the alias move and
its mark (``moved`` or ``refused``) follow in another transaction. A crash between the two leaves
``pending``, which the next claimant finishes. The move is a compare-and-set against the version
the alias held when the run was prepared.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from services.evaluator import gate as gate_mod
from services.evaluator.prepare import Prepared
from services.evaluator.statuses import PromotionState, RunStatus
from shared.errors import LoraplexError
from shared.registry import adapters, queue
from shared.registry.db import Registry
from shared.registry.evaluation_runs import promotion_columns, promotion_record
from shared.registry.models import EvaluationRunRow, utcnow
from shared.registry.queue import Claim, ClaimLost

PROMOTION_ACTOR = "loraplex-gate"


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
        return {**info, "state": PromotionState.SKIPPED, "why": why}
    return {
        **info,
        "state": PromotionState.PENDING,
        "reason": f"gate pass (policy {gate.policy_sha256[:12]})",
    }


def finish_promotion(registry: Registry, claim: Claim) -> dict[str, Any] | None:
    """Move the alias a stored pass asked for and mark it (``moved`` or ``refused``), in one
    transaction under the claim; a promotion that is not pending is returned as it is."""
    with registry.read_session() as session:
        row = session.get(EvaluationRunRow, claim.row_id)
        promotion = (promotion_record(row) or {}) if row is not None else {}
        requested_by = (row.requested_by or "") if row is not None else ""
    # The alias history names the gate and the key that asked for the promotion.
    actor = f"{PROMOTION_ACTOR} for {requested_by}" if requested_by else PROMOTION_ACTOR
    if promotion.get("state") != PromotionState.PENDING:
        return promotion or None
    try:
        with registry.session() as session:
            queue.require(
                session,
                EvaluationRunRow,
                claim,
                statuses=(RunStatus.SUCCEEDED,),
                heartbeat_at=utcnow(),
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
            promotion.update(state=PromotionState.MOVED, moved=True)
            _mark(session, claim, promotion)
    except ClaimLost:
        raise
    except LoraplexError as exc:  # the registry refused (moved meanwhile, protected, base, ...)
        promotion.update(
            state=PromotionState.REFUSED, moved=False, error=exc.message, code=exc.code
        )
        with registry.session() as session:
            _mark(session, claim, promotion)
    return promotion


def _mark(session: Session, claim: Claim, promotion: dict[str, Any]) -> None:
    """Store what became of the move and give the row up: a finished promotion has no owner."""
    queue.require(
        session,
        EvaluationRunRow,
        claim,
        **promotion_columns(promotion),
        worker_id=None,
        heartbeat_at=None,
    )
