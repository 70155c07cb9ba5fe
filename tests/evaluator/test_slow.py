"""Slow tests with the real embedded model (SmolLM2-135M-Instruct): lm-eval hf+peft on the shipped
tasks (and our perplexity against lm-eval's), and a whole run through the CLI and through the
worker. Perplexity against a direct computation is in test_perplexity.py."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.evaluator import service
from services.evaluator.config import EvaluatorSettings
from services.evaluator.data import EvalItem, load_data
from services.evaluator.local_model import LocalModels
from services.evaluator.perplexity import PerplexitySettings, score_items
from services.evaluator.schemas import EvaluationCreate
from services.evaluator.subjects import Subject
from services.evaluator.suite import TASKS_DIR
from services.evaluator.worker import Worker
from shared.basemodel import ResolvedBaseModel
from shared.registry.db import Registry
from tests.evaluator.conftest import EXAMPLES, random_adapter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(base_model: ResolvedBaseModel) -> LocalModels:
    return LocalModels(Subject(label=base_model.name, base=base_model))


def test_lmeval_hf_peft_on_shipped_tasks_agrees_with_our_perplexity(
    models: LocalModels, base_model: ResolvedBaseModel, tmp_path: Path
) -> None:
    from services.evaluator import lmeval_runner
    from services.evaluator.results import SubjectResult
    from services.evaluator.runner import RunPlan
    from services.evaluator.suite import Suite

    adapter = Subject(
        label="r@v1",
        base=base_model,
        version_id="r@v1",
        adapter_path=random_adapter(tmp_path / "a", seed=5),
        adapter_sha256="1" * 64,
    )
    data = load_data(EXAMPLES / "test.jsonl", limit=4)
    suite = Suite(
        lmeval={
            "enabled": True,
            "tasks": ["loraplex_extract_gen", "loraplex_extract_ppl", "loraplex_general_mc"],
            # The plumbing, not the 418-question set (test_forgetting scores that): 40 each.
            "limit": 40,
        },
        generation={"decoding": {"max_new_tokens": 24}},
    )
    plan = RunPlan(
        run_id="t",
        candidate=adapter,
        baseline=None,
        data=data,
        suite=suite,
        cache_dir=tmp_path / "cache",
    )
    res = SubjectResult(role="candidate", model=adapter.label)
    out = lmeval_runner.run_tasks(plan, adapter, res, lambda n: None)
    assert "peft" in out["config"]["model_args"]
    for name in (
        "lmeval.loraplex_extract_gen.exact_match",
        "lmeval.loraplex_extract_gen.json_valid",
        "lmeval.loraplex_extract_ppl.bits_per_byte",
        "lmeval.loraplex_general_mc.acc",
    ):
        assert res.metrics[name].ok, name
    assert res.metrics["lmeval.loraplex_general_mc.acc"].kind == "binary"
    assert len([i for i in res.items if i.item_id.startswith("lmeval:loraplex_general_mc")]) == 40
    # Our scorer on the same plain texts with the adapter: same total NLL as lm-eval's rolling.
    text_items = [EvalItem(i.item_id, (), i.reference, i.location) for i in data.items]
    ours = score_items(models, adapter, text_items, PerplexitySettings(window=2048, stride=2048))
    theirs = {s["doc"]["id"]: -s["resps"][0][0] for s in out["samples"]["loraplex_extract_ppl"]}
    for item, s in zip(data.items, ours, strict=True):
        assert s.nll == pytest.approx(theirs[item.item_id], rel=2e-3)
    # One cache per model identity, never a shared one (lm-eval's own cache key ignores which model
    # answered): every cache file is named by the adapter's full identity, adapter hash included,
    # worked out here from the subject and the lm-eval settings, and the bare base's name differs.
    caches = [c.name for c in (tmp_path / "cache" / "lmeval" / "cache").iterdir()]

    def identity(subject: Subject) -> str:
        backend, args = lmeval_runner.model_args(plan, subject, True)
        return subject.identity_hash(
            lmeval_backend=backend,
            args={k: v for k, v in args.items() if k != "num_concurrent"},
            lm_eval=version("lm_eval"),
            data=data.sha256,
        )

    mine, bare = identity(adapter), identity(Subject(label=base_model.name, base=base_model))
    assert mine != bare
    assert caches and all(name.startswith(mine) for name in caches), (caches, mine)
    assert res.metrics["lmeval.loraplex_general_mc.acc"].settings["cache"] == mine[:16]


def _cli(args: list[str]) -> tuple[int, str]:
    from services.cli import app

    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output


def test_cli_gate_run_end_to_end_with_reports_and_registry_rows(
    ev_settings: EvaluatorSettings, ev_registry: Registry, adapter_v1: str, tmp_path: Path
) -> None:
    # Every 10th question of the 418-item forgetting set: the plumbing, not the set, is tested
    # here (tests/evaluator/test_forgetting.py scores the set), and the whole set timed out.
    general = (TASKS_DIR / "general_mc.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "general_mc_tenth.jsonl").write_text("".join(general[::10]))
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "generation: {enabled: true, decoding: {max_new_tokens: 16}, batch_size: 4}\n"
        "perplexity: {enabled: true}\n"
        f"forgetting: {{enabled: true, data: {tmp_path / 'general_mc_tenth.jsonl'}}}\n"
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "min_items: 3\nmetrics:\n  perplexity: {max: 1000}\n"
        "  json_valid: {min: 0.0}\n  forgetting.accuracy: {min: 0.3}\n"
    )
    code, out = _cli(
        [
            "gate",
            "run",
            "--policy",
            str(policy),
            "--candidate",
            adapter_v1,
            "--suite",
            str(suite),
            "--limit",
            "4",
            "--quiet",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0, out
    assert "gate: PASS" in out
    for name in ("result.json", "junit.xml", "report.html", "items.jsonl"):
        assert (tmp_path / "out" / name).is_file()
    data = json.loads((tmp_path / "out" / "result.json").read_text())
    assert data["candidate"]["metrics"]["perplexity"]["settings"]["window"] == 1024
    assert data["loss_curve"][0] == {"step": 1, "loss": 2.0}
    runs = service.list_runs(ev_registry)
    assert len(runs) == 1 and runs[0].status == "succeeded" and runs[0].decision == "pass"
    # A policy line for a metric the suite did not compute fails closed: exit code 1.
    policy.write_text("min_items: 3\nmetrics:\n  rougeL: {min: 0.0}\n  judge.score: {min: 1}\n")
    code, out = _cli(
        [
            "gate",
            "run",
            "--policy",
            str(policy),
            "--candidate",
            adapter_v1,
            "--suite",
            str(suite),
            "--limit",
            "4",
            "--quiet",
        ]
    )
    assert code == 1, out
    assert "judge.score: was not computed by this run; required, so it fails closed" in out
    code, out = _cli(["eval", "report", runs[0].id, "--format", "junit"])
    assert code == 0 and "<testsuite" in out
    code, out = _cli(["eval", "run", "--candidate", "ghost@v9", "--quiet"])
    assert code == 3 and "unknown candidate 'ghost@v9'" in out


def test_worker_runs_a_submitted_evaluation(
    ev_settings: EvaluatorSettings, ev_registry: Registry, adapter_v1: str
) -> None:
    run_id = service.submit(
        ev_settings, ev_registry, EvaluationCreate(candidate=adapter_v1, suite="quick", limit=3)
    )
    Worker(ev_settings, ev_registry).serve(once=True)
    row = service.get_run(ev_registry, run_id)
    assert row.status == "succeeded", row.error
    pub = service.public(row)
    assert pub.progress == 1.0 and pub.results is not None
    assert pub.results["candidate"]["perplexity"] > 1.0
    assert pub.report_url == f"/v1/evaluations/{run_id}/report"
