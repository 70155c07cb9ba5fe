"""`services.evaluator.runs`: the run rows (create, fail, store results under the claim, read)
and the public view of a run (status, exit code, results)."""

from __future__ import annotations

import math
import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import select

from services.evaluator import gate, runs, service
from services.evaluator.config import EvaluatorSettings
from services.evaluator.policy import parse_policy
from services.evaluator.schemas import EvaluationCreate
from shared.errors import NotFoundError
from shared.registry.db import Registry
from shared.registry.models import EvaluationRunRow, ItemRecordRow, MetricResultRow
from shared.registry.queue import Claim, ClaimLost
from tests.evaluator.helpers import count_rows
from tests.evaluator.helpers import run as synthetic_run


def test_store_result_writes_everything_at_once_including_nan(
    ev_settings: EvaluatorSettings, ev_registry: Registry, adapter_v1: str, tmp_path: Path
) -> None:
    result = synthetic_run(
        {"exact_match": [1, 0, 1], "token_f1": [0.5, math.nan, 0.2]},
        {"exact_match": [0, 0, 1], "token_f1": [0.1, 0.2, 0.3]},
    )
    result.run_id = "eval-test"
    first = result.candidate.items[0]
    first.extra["judge_pair"] = [1.0, 0.5]
    policy = parse_policy("min_items: 1\nmetrics:\n  token_f1: {min: 0.1}\n")
    decision = gate.decide(policy, result)
    assert decision.decision == "fail"  # the NaN metric fails closed
    prepared = service.prepare(ev_settings, ev_registry, EvaluationCreate(candidate=adapter_v1))
    claim = service.create_run(
        ev_registry,
        EvaluationCreate(candidate=adapter_v1),
        prepared,
        "eval-test",
        "running",
        owner="test",
    )
    assert claim is not None
    service.store_result(ev_registry, claim, result, decision, tmp_path / "r.html", {})
    assert count_rows(ev_registry, MetricResultRow) == 4
    assert count_rows(ev_registry, ItemRecordRow) == 6
    with ev_registry.session() as session:
        nan_row = session.scalar(
            select(MetricResultRow).where(
                MetricResultRow.subject == "candidate", MetricResultRow.name == "token_f1"
            )
        )
        assert nan_row is not None and nan_row.value is None
        assert nan_row.error is not None and "NaN" in nan_row.error
        # How each value came about is in columns, not in the settings JSON.
        exact = session.scalar(
            select(MetricResultRow).where(
                MetricResultRow.subject == "candidate", MetricResultRow.name == "exact_match"
            )
        )
        want = result.candidate.metrics["exact_match"]
        assert exact is not None and exact.settings == want.settings
        assert (exact.model, exact.n, exact.ci_low, exact.ci_high, exact.error) == (
            result.candidate.model,
            want.n,
            want.ci_low,
            want.ci_high,
            None,
        )
        assert (exact.kind, exact.higher_is_better, exact.statistic) == (
            want.kind,
            want.higher_is_better,
            want.statistic,
        )
        records = list(session.scalars(select(ItemRecordRow)))
        extras = {(r.subject, r.item_id): r.extra for r in records}
        assert extras.pop(("candidate", first.item_id)) == {"judge_pair": [1.0, 0.5]}
        assert set(extras.values()) == {None}
        assert not any("_extra" in r.values for r in records)
    pub = service.public(service.get_run(ev_registry, "eval-test"))
    assert pub.status == "succeeded" and pub.decision == "fail" and pub.exit_code == 1


# -- without the model: rows made by create_run from a request alone ------------------------------

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _row(**values: Any) -> EvaluationRunRow:
    base: dict[str, Any] = {
        "id": "eval-row",
        "status": "succeeded",
        "candidate": "shop@v1",
        "baseline": None,
        "decision": None,
        "summary": {},
        "progress": 1.0,
        "created_at": NOW,
        "finished_at": NOW,
    }
    return EvaluationRunRow(**{**base, **values})


def test_create_run_claims_an_in_process_run_and_queues_the_rest(bare_registry: Registry) -> None:
    request = EvaluationCreate(candidate="shop@v1", baseline="base", limit=3)
    assert runs.create_run(bare_registry, request, None, "eval-q", "queued") is None
    queued = runs.get_run(bare_registry, "eval-q")
    assert (queued.status, queued.worker_id, queued.attempts) == ("queued", None, 0)
    assert (queued.candidate, queued.baseline) == ("shop@v1", "base")
    assert queued.config == {"request": request.model_dump(mode="json"), "plan": None}
    claim = runs.create_run(
        bare_registry, request, None, "eval-r", "running", owner="cli-me", requested_by="ci"
    )
    assert claim is not None
    assert (claim.row_id, claim.worker_id, claim.attempt) == ("eval-r", "cli-me", 1)
    mine = runs.get_run(bare_registry, "eval-r")
    assert (mine.worker_id, mine.attempts, mine.heartbeat_at) == ("cli-me", 1, None)
    assert mine.requested_by == "ci"


def test_fail_run_writes_only_under_its_own_claim(bare_registry: Registry, tmp_path: Path) -> None:
    request = EvaluationCreate(candidate="shop@v1")
    claim = runs.create_run(bare_registry, request, None, "eval-f", "running", owner="w1")
    assert claim is not None
    stale = Claim("eval-f", "w0", 1, status="running")
    assert runs.fail_run(bare_registry, stale, RuntimeError("not mine")) is False
    assert runs.get_run(bare_registry, "eval-f").status == "running"
    assert runs.fail_run(bare_registry, claim, RuntimeError("engine crashed")) is True
    row = runs.get_run(bare_registry, "eval-f")
    assert (row.status, row.worker_id, row.heartbeat_at) == ("failed", None, None)
    assert row.finished_at is not None
    assert row.error == {
        "code": "server_error",
        "message": "RuntimeError: engine crashed",
        "type": "server_error",
        "param": None,
    }
    assert runs.fail_run(bare_registry, claim, RuntimeError("twice")) is False  # finished
    other = runs.create_run(bare_registry, request, None, "eval-g", "running", owner="w1")
    assert other is not None
    runs.fail_run(bare_registry, other, NotFoundError("no such data", param="data"))
    error = runs.get_run(bare_registry, "eval-g").error or {}
    assert (error["code"], error["param"], error["message"]) == (
        "not_found",
        "data",
        "no such data",
    )
    # A stored pass still held for its alias move is finished: failing it now is refused.
    held = runs.create_run(bare_registry, request, None, "eval-h", "running", owner="w1")
    assert held is not None
    pending = {"alias": "shop:prod", "state": "pending", "moved": False}
    result = synthetic_run({"exact_match": [1, 1]})
    runs.store_result(bare_registry, held, result, None, tmp_path / "r.html", {}, promotion=pending)
    assert runs.fail_run(bare_registry, held, RuntimeError("late")) is False
    assert runs.get_run(bare_registry, "eval-h").status == "succeeded"
    assert count_rows(bare_registry, MetricResultRow) == 1


def test_store_result_is_fenced_and_a_pending_promotion_keeps_its_owner(
    bare_registry: Registry, tmp_path: Path
) -> None:
    request = EvaluationCreate(candidate="shop@v1")
    result = synthetic_run({"exact_match": [1, 1]})
    claim = runs.create_run(bare_registry, request, None, "eval-s", "running", owner="w1")
    assert claim is not None
    taken = Claim("eval-s", "w2", 2, status="running")
    with pytest.raises(ClaimLost):
        runs.store_result(bare_registry, taken, result, None, tmp_path / "r.html", {})
    assert runs.get_run(bare_registry, "eval-s").status == "running"
    assert count_rows(bare_registry, MetricResultRow) == 0
    pending = {"alias": "shop:prod", "state": "pending", "to": "shop@v1", "moved": False}
    runs.store_result(
        bare_registry,
        claim,
        result,
        None,
        tmp_path / "r.html",
        {"k": 1},
        evidence={"candidate_version": "v-1", "baseline_version": None, "policy_sha256": None},
        promotion=pending,
    )
    row = runs.get_run(bare_registry, "eval-s")
    assert (row.status, row.summary, row.report_path) == (
        "succeeded",
        {"k": 1},
        str(tmp_path / "r.html"),
    )
    assert (row.worker_id, row.promotion_state, row.candidate_version) == ("w1", "pending", "v-1")
    assert row.heartbeat_at is not None
    done = runs.create_run(bare_registry, request, None, "eval-t", "running", owner="w1")
    assert done is not None
    skipped = {**pending, "state": "skipped"}
    runs.store_result(bare_registry, done, result, None, tmp_path / "r.html", {}, promotion=skipped)
    row = runs.get_run(bare_registry, "eval-t")
    assert (row.worker_id, row.heartbeat_at, row.promotion_state) == (None, None, "skipped")


def test_get_run_refuses_a_malformed_id_without_asking_the_registry() -> None:
    class NoRegistry:
        def read_session(self) -> Any:
            raise AssertionError("the registry was asked")

    for bad in ("", "../etc", "a b", "x" * 65, "eval\x00"):
        with pytest.raises(NotFoundError, match="does not exist") as err:
            runs.get_run(cast(Registry, NoRegistry()), bad)
        assert err.value.param == "id"


def test_list_runs_is_newest_first_up_to_the_limit(bare_registry: Registry) -> None:
    request = EvaluationCreate(candidate="shop@v1")
    for k in range(3):
        runs.create_run(bare_registry, request, None, f"eval-{k}", "queued")
        with bare_registry.session() as session:
            row = session.get(EvaluationRunRow, f"eval-{k}")
            assert row is not None
            row.created_at = NOW + timedelta(minutes=k)
    assert [r.id for r in runs.list_runs(bare_registry)] == ["eval-2", "eval-1", "eval-0"]
    assert [r.id for r in runs.list_runs(bare_registry, 2)] == ["eval-2", "eval-1"]
    with pytest.raises(NotFoundError):
        runs.get_run(bare_registry, "eval-9")


def test_public_exit_codes_and_results_follow_status_decision_and_promotion() -> None:
    summary = {
        "candidate": {"metrics": {"exact_match": {"value": 0.8}}},
        "baseline": {"metrics": {"exact_match": {"value": 0.5}}},
        "gate": {"decision": "fail"},
    }
    failed_gate = runs.public(_row(decision="fail", summary=summary, report_path="/r/report.html"))
    assert (failed_gate.status, failed_gate.exit_code) == ("succeeded", 1)
    assert failed_gate.results is not None
    assert failed_gate.results["candidate"] == {"exact_match": 0.8}
    assert failed_gate.results["baseline"] == {"exact_match": 0.5}
    assert failed_gate.results["gate"] == {"decision": "fail"}
    assert failed_gate.report_url == "/v1/evaluations/eval-row/report"
    assert runs.public(_row(decision="fail"), with_results=False).results is None
    assert runs.public(_row()).exit_code == 0  # no policy: a pass
    assert runs.public(_row(decision="inconclusive")).exit_code == 2
    assert runs.public(_row(status="failed")).exit_code == 3
    queued = runs.public(_row(status="queued", progress=0.0, finished_at=None))
    assert (queued.exit_code, queued.results, queued.report_url) == (None, None, None)
    refused = _row(
        decision="pass",
        promotion_state="refused",
        promotion_alias="shop:prod",
        promotion_detail={"moved": False, "error": "someone else moved it"},
    )
    pub = runs.public(refused)
    assert pub.exit_code == 3 and pub.results is not None
    assert pub.results["promotion"]["error"] == "someone else moved it"
    # Runs stored before the promotion columns kept it in the summary.
    legacy = _row(decision="pass", summary={"promotion": {"error": "refused", "moved": False}})
    assert runs.public(legacy).exit_code == 3


def test_a_pass_waiting_for_its_alias_move_reads_as_running() -> None:
    row = _row(
        decision="pass",
        stage="report",
        promotion_state="pending",
        promotion_alias="shop:prod",
        promotion_detail={"moved": False},
    )
    pub = runs.public(row)
    assert (pub.status, pub.progress, pub.stage) == ("running", 0.99, "promotion")
    assert (pub.finished_at, pub.exit_code, pub.results) == (None, None, None)


def test_local_worker_ids_name_the_host_and_process_and_differ() -> None:
    first, second = runs.local_worker_id(), runs.local_worker_id()
    assert first.startswith(f"cli-{socket.gethostname()}-{os.getpid()}-")
    assert first != second
