"""`services.evaluator.runs`: the run rows (create, store results, read, the public view)."""

from __future__ import annotations

import math
from pathlib import Path

from sqlalchemy import select

from services.evaluator import gate, service
from services.evaluator.config import EvaluatorSettings
from services.evaluator.policy import parse_policy
from services.evaluator.schemas import EvaluationCreate
from shared.registry.db import Registry
from shared.registry.models import ItemRecordRow, MetricResultRow
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
