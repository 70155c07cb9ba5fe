"""`services.evaluator.worker`: claiming queued runs (compare-and-set, stale takeover, pending
promotions first), failing, giving back and giving up on runs."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from services.evaluator import service
from services.evaluator.config import EvaluatorSettings
from services.evaluator.schemas import EvaluationCreate
from services.evaluator.worker import MAX_ATTEMPTS, Worker
from shared.registry.db import Registry
from shared.registry.models import EvaluationRunRow, utcnow
from shared.registry.queue import ClaimLost
from tests.evaluator.helpers import run as synthetic_run


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


# -- without the model: queued rows made from a request alone -------------------------------------


def _queued(registry: Registry, run_id: str, candidate: str = "ghost@v1") -> None:
    service.create_run(registry, EvaluationCreate(candidate=candidate), None, run_id, "queued")


def _age(registry: Registry, run_id: str, seconds: float, **values: Any) -> None:
    with registry.session() as session:
        row = session.get(EvaluationRunRow, run_id)
        assert row is not None
        row.heartbeat_at = utcnow() - timedelta(seconds=seconds)
        for key, value in values.items():
            setattr(row, key, value)


def test_progress_stops_a_run_that_is_lost_or_asked_to_stop(
    bare_settings: EvaluatorSettings, bare_registry: Registry
) -> None:
    worker = Worker(bare_settings, bare_registry, worker_id="w1")
    worker._on_progress(0.25, "generation (candidate)")
    assert worker._progress == (0.25, "generation (candidate)")
    worker.stopping.set()
    with pytest.raises(service.WorkerStopping):
        worker._on_progress(0.5, "judge")
    worker._lost.set()  # lost wins: the run is not ours to give back
    with pytest.raises(ClaimLost, match="another worker owns the run"):
        worker._on_progress(0.5, "judge")


def test_a_failing_run_is_marked_failed_with_its_error(
    bare_settings: EvaluatorSettings, bare_registry: Registry
) -> None:
    _queued(bare_registry, "eval-bad")
    worker = Worker(bare_settings, bare_registry, worker_id="w1")
    claim = worker.claim()
    assert claim is not None and claim.row_id == "eval-bad"
    worker.process(claim)
    row = service.get_run(bare_registry, "eval-bad")
    assert (row.status, row.worker_id) == ("failed", None)
    assert (row.error or {})["code"] == "not_found" and "ghost@v1" in (row.error or {})["message"]


def test_a_stopping_worker_gives_the_run_back_and_that_is_no_failure(
    bare_settings: EvaluatorSettings, bare_registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    _queued(bare_registry, "eval-back")

    def stop(*args: Any, **kwargs: Any) -> Any:
        raise service.WorkerStopping("worker stopping")

    monkeypatch.setattr(service, "prepare", stop)
    worker = Worker(bare_settings, bare_registry, worker_id="w1")
    for attempt in range(1, MAX_ATTEMPTS + 3):
        claim = worker.claim()
        assert claim is not None and claim.attempt == attempt
        worker.process(claim)
        row = service.get_run(bare_registry, "eval-back")
        assert (row.status, row.worker_id, row.progress) == ("queued", None, 0.0)
        assert (row.config or {})["released"] == attempt


def test_a_run_whose_workers_keep_dying_is_given_up(
    bare_settings: EvaluatorSettings, bare_registry: Registry
) -> None:
    _queued(bare_registry, "eval-dies")
    # MAX_ATTEMPTS earlier claims, one of them given back gracefully: one more try is allowed.
    _age(
        bare_registry, "eval-dies", 0, attempts=MAX_ATTEMPTS, config={"released": 1, "request": {}}
    )
    worker = Worker(bare_settings, bare_registry, worker_id="w1")
    claim = worker.claim()
    assert claim is not None and claim.attempt == MAX_ATTEMPTS + 1
    worker.process(claim)
    tried = service.get_run(bare_registry, "eval-dies").error or {}
    assert tried["code"] != "worker_lost"  # it ran (and failed on its empty request)
    _queued(bare_registry, "eval-dead")
    _age(bare_registry, "eval-dead", 0, attempts=MAX_ATTEMPTS, worker_id=None)
    claim = worker.claim()
    assert claim is not None and claim.attempt == MAX_ATTEMPTS + 1
    worker.process(claim)
    row = service.get_run(bare_registry, "eval-dead")
    assert row.status == "failed" and (row.error or {})["code"] == "worker_lost"
    assert f"stopped responding {MAX_ATTEMPTS} times" in (row.error or {})["message"]


def test_a_pending_promotion_left_by_a_dead_worker_is_finished_first(
    bare_settings: EvaluatorSettings,
    bare_registry: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _queued(bare_registry, "eval-queued")
    request = EvaluationCreate(candidate="ghost@v1", promote="prod")
    dead = service.create_run(bare_registry, request, None, "eval-pass", "running", owner="dead")
    assert dead is not None
    pending = {
        "alias": "ghost:prod",
        "adapter": "ghost",
        "name": "prod",
        "to": "ghost@v1",
        "from": None,
        "moved": False,
        "state": "pending",
    }
    result = synthetic_run({"exact_match": [1, 1]})
    service.store_result(
        bare_registry, dead, result, None, tmp_path / "r.html", {}, promotion=pending
    )
    _age(bare_registry, "eval-pass", bare_settings.worker_stale_s + 5)

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a stored pass is not run again")

    monkeypatch.setattr(service, "prepare", never)
    worker = Worker(bare_settings, bare_registry, worker_id="w1")
    claim = worker.claim()
    assert claim is not None and claim.row_id == "eval-pass" and claim.took_over_from == "dead"
    worker.process(claim)
    row = service.get_run(bare_registry, "eval-pass")
    # The registry refuses the move (no such adapter): marked refused, and the row is let go.
    assert (row.status, row.promotion_state, row.worker_id) == ("succeeded", "refused", None)
    assert service.get_run(bare_registry, "eval-queued").status == "queued"
