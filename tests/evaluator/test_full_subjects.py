"""A full fine-tune evaluated like any subject, through the run the CLI uses (``run_now``): the
candidate is a registered full-model version (``tests/full_models.py``: the base with seeded
noise on every matrix), the baseline the base it was fine-tuned from, and the paired gate decides.
A control whose "fine-tune" holds the base's own weights scores exactly like the base, item by
item, so the first run's different scores come from the full weights, not from how they are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.evaluator import service
from services.evaluator.config import EvaluatorSettings
from services.evaluator.schemas import EvaluationCreate
from shared.basemodel import ResolvedBaseModel
from shared.registry.db import Registry
from tests.full_models import register_full_version, write_full_model

pytestmark = pytest.mark.slow

SUITE: dict[str, Any] = {
    "generation": {
        "enabled": True,
        "metrics": ["rougeL"],
        "decoding": {"max_new_tokens": 12},
        "batch_size": 4,
    },
    "perplexity": {"enabled": True},
    "contamination": {"enabled": False},
}
# Non-inferiority on perplexity with a margin no model reaches: the gate compares the subjects
# item by item and passes; what is tested is that it decides on the full model's own scores.
POLICY: dict[str, Any] = {"min_items": 3, "metrics": {"perplexity": {"max_regression": 1e6}}}
ITEMS = 4


def _run(settings: EvaluatorSettings, registry: Registry, candidate: str) -> service.Outcome:
    request = EvaluationCreate(
        candidate=candidate, baseline="base", suite=SUITE, policy=POLICY, limit=ITEMS
    )
    return service.run_now(settings, registry, request)


def _per_item(outcome: service.Outcome, role: str, metric: str) -> dict[str, Any]:
    subject = outcome.result.candidate if role == "candidate" else outcome.result.baseline
    assert subject is not None
    return {i.item_id: i.values[metric] for i in subject.items}


def _register(
    settings: EvaluatorSettings,
    base: ResolvedBaseModel,
    folder: Path,
    name: str,
    noise: float,
    validation_file: dict[str, str],
) -> str:
    write_full_model(base, folder, seed=3, noise=noise)
    manifest = {"datasets": {"training_file": None, "validation_file": validation_file}}
    return register_full_version(settings, base, folder, name=name, manifest=manifest)


def test_a_full_candidate_is_scored_on_its_own_weights_against_its_base(
    ev_settings: EvaluatorSettings,
    ev_registry: Registry,
    base_model: ResolvedBaseModel,
    validation_file: dict[str, str],
    tmp_path: Path,
) -> None:
    full = _register(ev_settings, base_model, tmp_path / "full", "full-ft", 0.05, validation_file)
    outcome = _run(ev_settings, ev_registry, full)
    assert outcome.gate is not None and outcome.gate.decision == "pass", outcome.gate
    line = outcome.gate.lines[0]
    assert line.metric == "perplexity" and line.comparison is not None
    cand, base = outcome.result.candidate, outcome.result.baseline
    assert base is not None and cand.model == full and base.identity["adapter"] is None
    assert cand.identity["kind"] == "full" and len(cand.identity["weights_sha256"]) == 64
    assert cand.metrics["perplexity"].settings["weights"] == "full fine-tune"
    ppl_c, ppl_b = (
        _per_item(outcome, "candidate", "perplexity"),
        _per_item(outcome, "baseline", "perplexity"),
    )
    assert len(ppl_c) == ITEMS and ppl_c.keys() == ppl_b.keys()
    # Noise on every matrix moves every item's perplexity, and greedy answers with it.
    assert all(ppl_c[k] != ppl_b[k] for k in ppl_c), (ppl_c, ppl_b)
    answers = {i.item_id: i.output for i in cand.items}
    assert any(answers[i.item_id] != i.output for i in base.items), answers

    # Control: a "fine-tune" holding the base's own weights scores as the base, item by item.
    control = _register(
        ev_settings, base_model, tmp_path / "same", "base-copy", 0.0, validation_file
    )
    again = _run(ev_settings, ev_registry, control)
    assert again.result.candidate.identity["weights_sha256"] != cand.identity["weights_sha256"]
    for metric in ("perplexity", "rougeL"):
        assert _per_item(again, "candidate", metric) == _per_item(again, "baseline", metric)
    assert [i.output for i in again.result.candidate.items] == [
        i.output for i in (again.result.baseline or cand).items
    ]


def test_lm_eval_runs_a_full_fine_tune_from_its_folder(
    base_model: ResolvedBaseModel, tmp_path: Path
) -> None:
    """lm-eval's hf backend with ``pretrained=<folder>`` scores the full model's own weights: its
    rolling NLL per text equals our scorer's on the full model, and differs from the base's."""
    from services.evaluator import lmeval_runner
    from services.evaluator.data import EvalItem, load_data
    from services.evaluator.local_model import LocalModels
    from services.evaluator.perplexity import PerplexitySettings, score_items
    from services.evaluator.plan import RunPlan
    from services.evaluator.results import SubjectResult
    from services.evaluator.subjects import Subject
    from services.evaluator.suite import Suite
    from tests.evaluator.conftest import EXAMPLES

    folder = write_full_model(base_model, tmp_path / "full", seed=3, noise=0.05)
    full = Subject(
        label="ft@v1",
        base=base_model,
        version_id="ft@v1",
        adapter_path=folder,
        adapter_sha256="1" * 64,
        manifest={"kind": "full"},
        weights_sha256="2" * 64,
    )
    data = load_data(EXAMPLES / "test.jsonl", limit=3)
    suite = Suite(lmeval={"enabled": True, "tasks": ["loraplex_extract_ppl"], "limit": 3})
    plan = RunPlan(
        run_id="t", candidate=full, baseline=None, data=data, suite=suite, cache_dir=tmp_path
    )
    res = SubjectResult(role="candidate", model=full.label)
    out = lmeval_runner.run_tasks(plan, full, res, lambda n: None)
    assert res.metrics["lmeval.loraplex_extract_ppl.bits_per_byte"].ok
    theirs = {s["doc"]["id"]: -s["resps"][0][0] for s in out["samples"]["loraplex_extract_ppl"]}
    texts = [EvalItem(i.item_id, (), i.reference, i.location) for i in data.items]
    models = LocalModels(full)
    window = PerplexitySettings(window=2048, stride=2048)
    ours = score_items(models, full, texts, window)
    base = score_items(models, Subject(label=base_model.name, base=base_model), texts, window)
    for item, mine, bare in zip(data.items, ours, base, strict=True):
        assert mine.nll == pytest.approx(theirs[item.item_id], rel=2e-3)
        assert bare.nll != pytest.approx(theirs[item.item_id], rel=2e-3)
