"""`services.evaluator.worker`: claiming queued runs (compare-and-set, stale takeover)."""

from __future__ import annotations

from datetime import timedelta

from services.evaluator import service
from services.evaluator.config import EvaluatorSettings
from services.evaluator.schemas import EvaluationCreate
from services.evaluator.worker import Worker
from shared.registry.db import Registry
from shared.registry.models import EvaluationRunRow, utcnow


def test_queue_claim_is_compare_and_set_and_stale_runs_are_taken_over(
    ev_settings: EvaluatorSettings, ev_registry: Registry, adapter_v1: str
) -> None:
    run_id = service.submit(ev_settings, ev_registry, EvaluationCreate(candidate=adapter_v1))
    assert service.get_run(ev_registry, run_id).status == "queued"
    first = Worker(ev_settings, ev_registry, worker_id="first")
    second = Worker(ev_settings, ev_registry, worker_id="second")
    claim = first.claim()
    assert claim is not None and claim.row_id == run_id and claim.attempt == 1
    assert second.claim() is None  # already taken
    row = service.get_run(ev_registry, run_id)
    assert row.status == "running" and row.worker_id == "first" and row.attempts == 1
    with ev_registry.session() as session:
        stale = session.get(EvaluationRunRow, run_id)
        assert stale is not None
        stale.heartbeat_at = utcnow() - timedelta(seconds=ev_settings.worker_stale_s + 5)
    took = second.claim()
    assert took is not None and took.attempt == 2 and took.took_over_from == "first"
    assert service.get_run(ev_registry, run_id).attempts == 2
