"""Runs in the registry: resolution, defaults, bad inputs with nothing stored, the queue, storage,
promotion, and the HTTP API. No model inference here (see test_slow.py)."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from services.evaluator import gate, service
from services.evaluator.config import Endpoint, EvaluatorSettings
from services.evaluator.policy import parse_policy
from services.evaluator.schemas import EvaluationCreate
from services.evaluator.worker import Worker
from shared.errors import NotFoundError, SystemFailure, ValidationError
from shared.registry import adapters
from shared.registry.db import Registry
from shared.registry.models import EvaluationRunRow, ItemRecordRow, MetricResultRow, utcnow
from shared.registry.queue import Claim
from tests.evaluator.conftest import EXAMPLES, random_adapter, register_adapter
from tests.evaluator.helpers import run as synthetic_run


def _count(registry: Registry, model: Any) -> int:
    with registry.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _nothing_stored(registry: Registry) -> None:
    assert _count(registry, EvaluationRunRow) == 0
    assert _count(registry, MetricResultRow) == 0
    assert _count(registry, ItemRecordRow) == 0


def test_defaults_baseline_base_then_prod_and_lineage_data(
    ev_settings: EvaluatorSettings, ev_registry: Registry, adapter_v1: str, tmp_path: Path
) -> None:
    prepared = service.prepare(ev_settings, ev_registry, EvaluationCreate(candidate="shop@v1"))
    assert prepared.plan.baseline is not None and prepared.plan.baseline.is_base
    assert len(prepared.plan.data.items) == 60  # the validation file from the lineage
    v2 = register_adapter(
        ev_settings,
        ev_registry,
        random_adapter(tmp_path / "a2", 2),
        "shop",
        {"datasets": {"validation_file": None}},
    )
    with ev_registry.session() as session:
        adapters.set_alias(session, "shop", "prod", adapter_v1)
    req = EvaluationCreate(candidate=v2, data=str(EXAMPLES / "test.jsonl"), limit=5)
    prepared = service.prepare(ev_settings, ev_registry, req)
    assert prepared.plan.baseline is not None and prepared.plan.baseline.label == adapter_v1
    assert len(prepared.plan.items) == 5
    # bare name = its prod alias; name:alias; base
    for name, label in (
        ("shop", adapter_v1),
        ("shop:prod", adapter_v1),
        ("base", "smollm2-135m-instruct"),
    ):
        req = EvaluationCreate(candidate=name, data=str(EXAMPLES / "test.jsonl"))
        assert service.prepare(ev_settings, ev_registry, req).plan.candidate.label == label
    with pytest.raises(ValidationError, match="no validation file"):
        service.prepare(ev_settings, ev_registry, EvaluationCreate(candidate=v2))


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
    assert _count(ev_registry, MetricResultRow) == 0 and _count(ev_registry, ItemRecordRow) == 0
    assert not (
        ev_settings.evaluations_dir / prepared.plan.run_id
    ).exists()  # no attempt left files
    assert service.public(row).exit_code == 3


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
    assert _count(ev_registry, MetricResultRow) == 4
    assert _count(ev_registry, ItemRecordRow) == 6
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


def test_api_submit_status_report_and_errors(
    ev_settings: EvaluatorSettings, ev_registry: Registry, adapter_v1: str
) -> None:
    from fastapi.testclient import TestClient

    from services.evaluator.api.app import create_app

    with TestClient(create_app(ev_settings)) as client:
        assert client.get("/health").json() == {"status": "ok"}
        bad = client.post("/v1/evaluations", json={"candidate": "ghost@v1"})
        assert bad.status_code == 404
        assert bad.json()["error"]["param"] == "candidate"
        typo = client.post("/v1/evaluations", json={"candidate": adapter_v1, "sute": "x"})
        assert typo.status_code == 422
        assert _count(ev_registry, EvaluationRunRow) == 0
        made = client.post("/v1/evaluations", json={"candidate": adapter_v1, "limit": 3})
        assert made.status_code == 201, made.text
        body = made.json()
        assert body["status"] == "queued" and body["candidate"] == adapter_v1
        got = client.get(f"/v1/evaluations/{body['id']}").json()
        assert got["progress"] == 0.0 and got["baseline"] == "smollm2-135m-instruct"
        assert client.get(f"/v1/evaluations/{body['id']}/report").status_code == 404
        assert client.get("/v1/evaluations/nope").status_code == 404
        assert [r["id"] for r in client.get("/v1/evaluations").json()["data"]] == [body["id"]]


def test_held_out_split_is_rebuilt_exactly_as_the_trainer_made_it(
    ev_settings: EvaluatorSettings, ev_registry: Registry, tmp_path: Path
) -> None:
    from shared.artifacts import open_store
    from shared.datasets.loading import load_examples
    from shared.datasets.prepare import prepare
    from shared.datasets.render import ChatRenderer

    train = EXAMPLES / "sft_train.jsonl"
    sha = open_store(ev_settings).put_file(train)
    manifest = {
        "datasets": {
            "training_file": {"id": None, "name": "sft_train.jsonl", "sha256": sha},
            "validation_file": None,
        },
        "config": {
            "spec": {"data": {"validation_fraction": 0.1, "near_duplicate_threshold": 0.85}},
            "hyperparameters": {"seed": 7},
        },
    }
    vid = register_adapter(
        ev_settings, ev_registry, random_adapter(tmp_path / "s", 4), "split", manifest
    )
    plan = service.prepare(ev_settings, ev_registry, EvaluationCreate(candidate=vid)).plan
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(plan.candidate.base.path))
    expected = prepare(
        load_examples(train), None, ChatRenderer(tok), kind="sft", seed=7, validation_fraction=0.1
    ).validation
    assert [i.item_id for i in plan.data.items] == [e.id for e in expected]
    assert [i.reference for i in plan.data.items] == [e.messages[-1].content for e in expected]


def test_policy_register_cli_stores_the_parsed_body_and_its_hash(
    ev_settings: EvaluatorSettings, ev_registry: Registry, tmp_path: Path
) -> None:
    import json

    from typer.testing import CliRunner

    from services.evaluator.cli import eval_app

    policy = tmp_path / "gate.yaml"
    policy.write_text("min_items: 5\nmetrics:\n  exact_match: {min: 0.5}\n")
    cli = CliRunner()
    out = cli.invoke(eval_app, ["policy", "register", str(policy), "--name", "shop-gate"])
    assert out.exit_code == 0, out.output
    sha = parse_policy(policy.read_text()).sha256()
    assert json.loads(out.output) == {"name": "shop-gate", "version": 1, "sha256": sha}
    again = cli.invoke(eval_app, ["policy", "register", str(policy), "--name", "shop-gate"])
    assert json.loads(again.output)["version"] == 1  # the same content is one version
    policy.write_text("metrics:\n  bleurt: {min: 0.1}\n")
    bad = cli.invoke(eval_app, ["policy", "register", str(policy), "--name", "shop-gate"])
    assert bad.exit_code == 3 and "unknown metric 'bleurt'" in bad.output
    shown = cli.invoke(eval_app, ["policy", "show", "shop-gate"])
    body = json.loads(shown.output)
    assert body["sha256"] == sha and body["body"]["min_items"] == 5
    # What is stored parses back to the same hash: the registry never hashes policies itself.
    assert parse_policy(json.dumps(body["body"])).sha256() == sha
