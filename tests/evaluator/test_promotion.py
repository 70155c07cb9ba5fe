"""`services.evaluator.promotion`: the alias move a passing run asks for, compare-and-set."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from services.evaluator import gate, service
from services.evaluator.config import EvaluatorSettings
from services.evaluator.schemas import EvaluationCreate
from shared.registry import adapters
from shared.registry.db import Registry
from shared.registry.queue import Claim, ClaimLost
from tests.evaluator.conftest import EXAMPLES, random_adapter, register_adapter
from tests.evaluator.helpers import run as synthetic_run


def _claimed(
    ev_registry: Registry, request: EvaluationCreate, prepared: service.Prepared, run_id: str
) -> Claim:
    claim = service.create_run(ev_registry, request, prepared, run_id, "running", owner="test")
    assert claim is not None
    return claim


def test_promotion_moves_alias_only_on_pass_with_compare_and_set(
    ev_settings: EvaluatorSettings, ev_registry: Registry, adapter_v1: str, tmp_path: Path
) -> None:
    req = EvaluationCreate(candidate=adapter_v1, promote="prod")
    prepared = service.prepare(ev_settings, ev_registry, req)
    assert prepared.alias_expected is None
    passing = gate.GateResult(decision="pass", lines=[], confidence=0.95, policy_sha256="0" * 64)
    failing = passing.model_copy(update={"decision": "fail"})
    result = synthetic_run({"exact_match": [1, 1]})

    def store(run_id: str, prep: service.Prepared, decision: gate.GateResult) -> Claim:
        claim = _claimed(ev_registry, req, prep, run_id)
        promotion = service.requested_promotion(prep, decision)
        service.store_result(
            ev_registry, claim, result, decision, tmp_path / "r.html", {}, promotion=promotion
        )
        return claim

    info = service.finish_promotion(ev_registry, store("eval-0", prepared, failing))
    assert info is not None and info["moved"] is False and info["state"] == "skipped"
    with ev_registry.session() as session:
        assert adapters.get_alias(session, "shop", "prod") is None
    info = service.finish_promotion(ev_registry, store("eval-1", prepared, passing))
    assert info is not None and info["moved"] is True and info["state"] == "moved"
    with ev_registry.session() as session:
        assert adapters.resolve(session, "shop").id == adapter_v1
        assert adapters.alias_history(session, "shop", "prod")[0].evaluation_run_id == "eval-1"
    row = service.get_run(ev_registry, "eval-1")
    assert row.promotion_state == "moved"
    assert row.worker_id is None and service.public(row).status == "succeeded"
    # The alias moved since this run was prepared: compare-and-set refuses to overwrite it.
    v2 = register_adapter(ev_settings, ev_registry, random_adapter(tmp_path / "b", 3), "shop")
    stale = service.prepare(
        ev_settings,
        ev_registry,
        EvaluationCreate(candidate=v2, promote="prod", data=str(EXAMPLES / "test.jsonl")),
    )
    with ev_registry.session() as session:
        adapters.set_alias(session, "shop", "prod", v2)
    info = service.finish_promotion(ev_registry, store("eval-2", stale, passing))
    assert info is not None and info["moved"] is False and info["state"] == "refused"
    assert "someone else moved it" in info["error"]
    assert service.public(service.get_run(ev_registry, "eval-2")).exit_code == 3


def _prepared(promote: str | None, alias_expected: str | None = "shop@v1") -> service.Prepared:
    candidate = SimpleNamespace(adapter_name="shop", version_id="shop@v2")
    plan = cast(Any, SimpleNamespace(candidate=candidate))
    return service.Prepared(plan, None, promote, alias_expected)


def test_requested_promotion_is_pending_on_pass_and_skipped_otherwise() -> None:
    passing = gate.GateResult(decision="pass", lines=[], confidence=0.95, policy_sha256="ab" * 32)
    assert service.requested_promotion(_prepared(None), passing) is None
    asked = service.requested_promotion(_prepared("prod"), passing)
    assert asked == {
        "alias": "shop:prod",
        "adapter": "shop",
        "name": "prod",
        "to": "shop@v2",
        "from": "shop@v1",
        "moved": False,
        "state": "pending",
        "reason": "gate pass (policy abababababab)",
    }
    for decision in ("fail", "inconclusive"):
        other = passing.model_copy(update={"decision": decision})
        skipped = service.requested_promotion(_prepared("prod", None), other)
        assert skipped is not None and skipped["state"] == "skipped" and skipped["from"] is None
        assert skipped["why"] == f"gate decision is {decision}; nothing moves"
    missing = service.requested_promotion(_prepared("prod"), None)
    assert missing is not None and missing["state"] == "skipped"
    assert missing["why"] == "gate decision is missing; nothing moves"


def test_the_move_is_fenced_by_the_claim_and_names_who_asked(
    ev_settings: EvaluatorSettings, ev_registry: Registry, adapter_v1: str, tmp_path: Path
) -> None:
    req = EvaluationCreate(candidate=adapter_v1, promote="prod")
    prepared = service.prepare(ev_settings, ev_registry, req)
    passing = gate.GateResult(decision="pass", lines=[], confidence=0.95, policy_sha256="0" * 64)
    claim = service.create_run(
        ev_registry, req, prepared, "eval-c", "running", owner="w1", requested_by="ci-key"
    )
    assert claim is not None
    promotion = service.requested_promotion(prepared, passing)
    result = synthetic_run({"exact_match": [1, 1]})
    service.store_result(
        ev_registry, claim, result, passing, tmp_path / "r.html", {}, promotion=promotion
    )
    taken = Claim("eval-c", "w2", 2, status="running")
    with pytest.raises(ClaimLost):
        service.finish_promotion(ev_registry, taken)
    with ev_registry.session() as session:
        assert adapters.get_alias(session, "shop", "prod") is None
    assert service.get_run(ev_registry, "eval-c").promotion_state == "pending"
    info = service.finish_promotion(ev_registry, claim)
    assert info is not None and info["state"] == "moved"
    with ev_registry.session() as session:
        event = adapters.alias_history(session, "shop", "prod")[0]
        assert event.actor == "loraplex-gate for ci-key"
        assert event.reason == "gate pass (policy 000000000000)"
    # Finishing again changes nothing: a promotion that is not pending is returned as it is.
    again = service.finish_promotion(ev_registry, claim)
    assert again is not None and again["state"] == "moved"
    with ev_registry.session() as session:
        assert len(adapters.alias_history(session, "shop", "prod")) == 1
