"""The forgetting check: the shipped general set, and a gate line held against the bare base model
whatever the run's baseline, failing for an adapter built to forget and passing for a clean one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.evaluator import forgetting, gate, perplexity, report
from services.evaluator.data import load_data
from services.evaluator.metrics import catalogue
from services.evaluator.policy import parse_policy
from services.evaluator.results import ItemResult, RunResult, SubjectResult
from services.evaluator.runner import Runner, RunPlan
from services.evaluator.subjects import Subject
from services.evaluator.suite import Suite
from services.evaluator.tasks import build_general_mc
from shared.basemodel import ResolvedBaseModel
from tests.evaluator.conftest import EXAMPLES, SMOL_LINEAR, random_adapter

METRIC = "forgetting.accuracy"
POLICY = parse_policy(f"metrics:\n  {METRIC}: {{max_regression: 0.05}}\n", "forget.yaml")
FAKE_BASE = ResolvedBaseModel("tiny-base", Path("/nonexistent"), "0" * 64, "test")


def _subject(role: str, model: str, adapter: str | None, values: list[float]) -> SubjectResult:
    res = SubjectResult(
        role=role,
        model=model,
        identity={"base_model": FAKE_BASE.name, "adapter": adapter},
    )
    for k in range(len(values)):
        res.items.append(ItemResult(item_id=f"forgetting:q{k}", item_hash=str(k)))
    ids = {f"forgetting:q{k}": v for k, v in enumerate(values)}
    res.add_metric(catalogue.spec(METRIC), ids, {"set": "general_mc.jsonl", "n_questions": 200})
    return res


def test_gate_holds_forgetting_against_the_base_model_not_the_baseline() -> None:
    lost = [1.0] * 100 + [0.0] * 100  # the adapters answer half of what the base answers
    cand = _subject("candidate", "shop@v2", "shop@v2", lost)
    prod = _subject("baseline", "shop@v1", "shop@v1", lost)  # the prod version forgot as much
    base = _subject("base", FAKE_BASE.name, None, [1.0] * 200)
    run = RunResult(run_id="r", candidate=cand, baseline=prod, reference=base)
    assert run.compared_with(METRIC) is base
    assert run.compared_with("exact_match") is prod  # other metrics keep the baseline
    line = gate.decide(POLICY, run).lines[0]
    assert line.status == "fail", line.reasons
    assert line.compared_with == FAKE_BASE.name and line.baseline == 1.0
    assert f"worse than the base model {FAKE_BASE.name} by more than 0.05" in line.reasons[0]
    assert "minimum detectable difference" in line.reasons[0]
    # The same run without the base model's scores: nothing to compare with, so it fails closed
    # (never a quiet fallback to the baseline, which forgot as much).
    run.reference = None
    assert gate.decide(POLICY, run).lines[0].status == "fail"
    assert "cannot compare with the base model" in gate.decide(POLICY, run).reasons[0]
    # A baseline that is the bare base is reused (no reference scored), and a clean one passes.
    clean = RunResult(
        run_id="r", candidate=_subject("candidate", "shop@v3", "shop@v3", [1.0] * 200)
    )
    clean.baseline = base.model_copy(update={"role": "baseline"})
    line = gate.decide(POLICY, clean).lines[0]
    assert line.status == "pass" and line.compared_with == FAKE_BASE.name, line.reasons
    assert "not worse than the base model" in line.reasons[0]


def test_reports_show_the_base_model_comparison() -> None:
    lost = [1.0] * 100 + [0.0] * 100
    run = RunResult(
        run_id="r",
        candidate=_subject("candidate", "shop@v2", "shop@v2", lost),
        baseline=_subject("baseline", "shop@v1", "shop@v1", lost),
        reference=_subject("base", FAKE_BASE.name, None, [1.0] * 200),
    )
    decision = gate.decide(POLICY, run)
    junit = report.junit_xml(run, decision)
    assert f'classname="forgetting" name="{METRIC} vs base model {FAKE_BASE.name}"' in junit
    assert "100 questions lost, 0 gained of 200 shared" in junit
    html = report.html_report(run, decision)
    assert "<h2 id='forgetting'>Forgetting (against the base model)" in html
    assert f"vs base model {FAKE_BASE.name} 1 (scored for this check)" in html
    assert "reference" in report.result_json(run, decision)
    assert "items" not in report.result_json(run, decision)["reference"]


def _plan(candidate: Subject, baseline: Subject | None, data: str) -> RunPlan:
    suite = Suite(
        generation={"enabled": False},
        contamination={"enabled": False},
        forgetting={"enabled": True, "data": data},
    )
    return RunPlan("t", candidate, baseline, load_data(EXAMPLES / "test.jsonl", limit=2), suite)


def _adapter(name: str, base: ResolvedBaseModel, path: Path | None = None) -> Subject:
    return Subject(
        label=name, base=base, version_id=name, adapter_path=path, adapter_sha256=name[-1] * 64
    )


def test_runner_scores_the_base_model_only_when_no_subject_is_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scored: list[str] = []

    def fake(_m: Any, subject: Subject, res: SubjectResult, path: str, *_a: Any) -> None:
        scored.append(subject.label)
        res.add_metric(catalogue.spec(METRIC), {"forgetting:q": 1.0}, {})

    monkeypatch.setattr(forgetting, "run", fake)
    data = build_general_mc.OUT.as_posix()
    base = Subject(label=FAKE_BASE.name, base=FAKE_BASE, requested="base")
    for baseline, want in (
        (_adapter("shop@v1", FAKE_BASE), ["shop@v2", "shop@v1", FAKE_BASE.name]),
        (base, ["shop@v2", FAKE_BASE.name]),  # reused: the base is not scored twice
        (None, ["shop@v2", FAKE_BASE.name]),
    ):
        scored.clear()
        runner = Runner(_plan(_adapter("shop@v2", FAKE_BASE), baseline, data))
        runner._models = object()  # type: ignore[assignment]  # never loaded: run is faked
        result = runner.run()
        assert scored == want
        assert (result.reference is None) == (baseline is base)
        ref = result.compared_with(METRIC)
        assert ref is not None and ref.model == FAKE_BASE.name and ref.identity["adapter"] is None


def _every(path: Path, step: int, out: Path) -> str:
    rows = forgetting.load(path.as_posix())
    out.write_text("".join(json.dumps(r) + "\n" for r in rows[::step]))
    return out.as_posix()


@pytest.mark.slow
def test_real_model_adapter_that_forgets_fails_and_a_clean_one_passes(
    base_model: ResolvedBaseModel, tmp_path: Path
) -> None:
    # A quarter of the shipped set keeps the three scorings at about a minute on two cores;
    # answer positions stay balanced enough (every 4th item of a shuffled placement).
    data = _every(build_general_mc.OUT, 4, tmp_path / "general_mc_quarter.jsonl")
    # Built to forget: random LoRA on every linear layer, std 0.1, wrecks the small model.
    forgetter = random_adapter(tmp_path / "f", 9, modules=tuple(SMOL_LINEAR), scale=0.1)
    clean = random_adapter(tmp_path / "c", 1)  # q/v, std 0.01: barely moves the model
    plan = _plan(
        _adapter("shop@v2", base_model, forgetter), _adapter("shop@v1", base_model, clean), data
    )
    runner = Runner(plan)
    result = runner.run()
    # The baseline is another adapter version; the forgetting line still compares with the base.
    ref = result.compared_with(METRIC)
    assert ref is result.reference and ref is not None
    assert ref.model == base_model.name and ref.identity["adapter"] is None
    base_acc = ref.metrics[METRIC].value
    assert base_acc is not None and 0.35 < base_acc < 0.9  # above chance, below the ceiling
    failed = gate.decide(POLICY, result).lines[0]
    assert failed.status == "fail", failed.reasons
    assert f"the base model {base_model.name}" in failed.reasons[0]
    # The clean adapter against the base (the baseline reused, as the runner does): it passes.
    assert result.baseline is not None
    clean_run = RunResult(
        run_id="c",
        candidate=result.baseline.model_copy(update={"role": "candidate"}),
        baseline=ref.model_copy(update={"role": "baseline"}),
    )
    passed = gate.decide(POLICY, clean_run).lines[0]
    assert passed.status == "pass", passed.reasons
    print(failed.reasons[0], passed.reasons[0], sep="\n")
    # The fast scorer (left padding, last logits only) gives what the perplexity scorer gives.
    tok = runner.models.tokenizer
    seqs = [
        perplexity.TokenSeq(
            [*ctx, *tok(" " + c, add_special_tokens=False)["input_ids"]], len(ctx), 0
        )
        for row in forgetting.load(data)[:6]
        for ctx in [tok(forgetting.PROMPT.format(**row), add_special_tokens=False)["input_ids"]]
        for c in row["choices"]
    ]
    pad = int(tok.pad_token_id)
    with runner.models.activate(plan.candidate) as model:
        fast = forgetting.continuation_nll(model, seqs, pad_id=pad)
        windows = perplexity.plan_windows(seqs, 4096, 4096)
        slow = perplexity.score_windows(model, seqs, windows, pad_id=pad, batch_tokens=4096)
    assert fast == pytest.approx(slow, rel=1e-4)
