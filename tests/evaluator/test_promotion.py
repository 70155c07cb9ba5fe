"""`services.evaluator.promotion`: the alias move a passing run asks for, compare-and-set."""

from __future__ import annotations

from pathlib import Path

from services.evaluator import gate, service
from services.evaluator.config import EvaluatorSettings
from services.evaluator.schemas import EvaluationCreate
from shared.registry import adapters
from shared.registry.db import Registry
from shared.registry.queue import Claim
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
