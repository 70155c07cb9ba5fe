"""`services.evaluator.service`: submit validates everything first (bad input: an error and
nothing stored), and execute stores nothing but the error when a run fails half-way. No model
inference here (see test_slow.py)."""

from __future__ import annotations

from typing import Any

import pytest

from services.evaluator import service
from services.evaluator.config import Endpoint, EvaluatorSettings
from services.evaluator.schemas import EvaluationCreate
from shared.errors import NotFoundError, SystemFailure, ValidationError
from shared.registry.db import Registry
from shared.registry.models import EvaluationRunRow, ItemRecordRow, MetricResultRow
from tests.evaluator.helpers import count_rows


def _nothing_stored(registry: Registry) -> None:
    assert count_rows(registry, EvaluationRunRow) == 0
    assert count_rows(registry, MetricResultRow) == 0
    assert count_rows(registry, ItemRecordRow) == 0


def test_unknown_candidate_is_refused_and_nothing_stored(
    ev_settings: EvaluatorSettings, ev_registry: Registry
) -> None:
    with pytest.raises(NotFoundError, match="unknown candidate 'nope@v3'"):
        service.submit(ev_settings, ev_registry, EvaluationCreate(candidate="nope@v3"))
    _nothing_stored(ev_registry)


def test_rows_missing_the_reference_are_listed_and_nothing_stored(
    ev_settings: EvaluatorSettings, ev_registry: Registry, adapter_v1: str
) -> None:
    bad = ev_settings.data_dir / "bad.jsonl"  # under the allowed directories
    bad.write_text(
        '{"messages": [{"role": "user", "content": "hi"}], "expected": {"a": 1}}\n'
        '{"messages": [{"role": "user", "content": "no answer here"}]}\n'
        '{"prompt": "also none"}\n'
    )
    with pytest.raises(ValidationError) as err:
        service.submit(
            ev_settings, ev_registry, EvaluationCreate(candidate=adapter_v1, data=str(bad))
        )
    text = str(err.value)
    assert "bad.jsonl line 2: missing reference" in text
    assert "bad.jsonl line 3: missing reference field `completion`" in text
    custom = ev_settings.data_dir / "qa.jsonl"
    custom.write_text('{"question": "q1", "answer": "a"}\n{"question": "q2"}\n')
    with pytest.raises(ValidationError, match="line 2: missing reference field `answer`"):
        service.submit(
            ev_settings,
            ev_registry,
            EvaluationCreate(
                candidate=adapter_v1,
                data=str(custom),
                prompt_field="question",
                reference_field="answer",
            ),
        )
    _nothing_stored(ev_registry)


def test_policy_naming_an_unknown_metric_is_refused(
    ev_settings: EvaluatorSettings, ev_registry: Registry, adapter_v1: str
) -> None:
    policy = ev_settings.data_dir / "p.yaml"
    policy.write_text("metrics:\n  exact_match: {min: 0.5}\n  bleurt: {min: 0.1}\n")
    with pytest.raises(ValidationError) as err:
        service.submit(
            ev_settings, ev_registry, EvaluationCreate(candidate=adapter_v1, policy=str(policy))
        )
    assert "p.yaml line 3: metrics.bleurt: unknown metric 'bleurt'" in str(err.value)
    _nothing_stored(ev_registry)


def test_unreachable_judge_is_refused_before_anything_runs(
    ev_settings: EvaluatorSettings, ev_registry: Registry, adapter_v1: str
) -> None:
    settings = ev_settings.model_copy(
        update={"endpoints": {"dead": Endpoint(url="http://127.0.0.1:9")}}
    )
    req = EvaluationCreate(
        candidate=adapter_v1,
        suite={
            "generation": {"enabled": True},
            "judge": {"enabled": True, "endpoint": "dead", "model": "j"},
        },
    )
    with pytest.raises(SystemFailure, match=r"judge endpoint http://127\.0\.0\.1:9 is unreachable"):
        service.submit(settings, ev_registry, req)
    _nothing_stored(ev_registry)


def test_failure_mid_run_stores_nothing_but_the_error(
    ev_settings: EvaluatorSettings,
    ev_registry: Registry,
    adapter_v1: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prepared = service.prepare(
        ev_settings, ev_registry, EvaluationCreate(candidate=adapter_v1, limit=3)
    )
    claim = service.create_run(
        ev_registry,
        EvaluationCreate(candidate=adapter_v1),
        prepared,
        prepared.plan.run_id,
        "running",
        owner="test",
    )
    assert claim is not None

    def explode(self: Any) -> Any:
        raise RuntimeError("engine crashed half-way")

    monkeypatch.setattr("services.evaluator.runner.Runner.run", explode)
    with pytest.raises(RuntimeError):
        service.execute(ev_settings, ev_registry, prepared, claim=claim)
    row = service.get_run(ev_registry, prepared.plan.run_id)
    assert row.status == "failed" and "engine crashed" in (row.error or {})["message"]
    assert (
        count_rows(ev_registry, MetricResultRow) == 0
        and count_rows(ev_registry, ItemRecordRow) == 0
    )
    assert not (
        ev_settings.evaluations_dir / prepared.plan.run_id
    ).exists()  # no attempt left files
    assert service.public(row).exit_code == 3
