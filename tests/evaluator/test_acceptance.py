"""Acceptance on the shipped example task (slow: trains two small adapters with the trainer).

An adapter trained on the extraction data passes its policy against the base model; one trained
on the same prompts with shuffled answers fails, with reasons naming the metrics.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from services.evaluator.config import EvaluatorSettings
from tests.evaluator.conftest import EXAMPLES

# Two trainings plus three generation passes: minutes on an idle 2-core CPU, far more when shared.
pytestmark = [pytest.mark.slow, pytest.mark.heavy, pytest.mark.timeout(3600)]

STEPS = 24
POLICY = """
name: extraction
min_items: 20
metrics:
  json_match: {min: 0.3, min_improvement: 0.0}   # better than the base model, on paired items
  json_valid: {min: 0.8}
"""


def _train(tmp: Path, name: str, training_file: Path) -> str:
    from services.cli import app

    config = tmp / f"{name}.yaml"
    config.write_text(
        f"model: smollm2-135m-instruct\ntraining_file: {training_file}\nseed: 7\n"
        "method:\n  type: supervised\n  supervised:\n    hyperparameters: {n_epochs: 1, "
        f"batch_size: 8, learning_rate: 0.001, max_steps: {STEPS}, max_length: 256}}\n"
        "lora: {r: 8, lora_alpha: 16, target_modules: all-linear}\n"
    )
    result = CliRunner().invoke(app, ["train", "run", str(config), "--adapter-name", name])
    assert result.exit_code == 0, result.output
    line = [ln for ln in result.output.splitlines() if ln.startswith("{")][-1]
    return str(json.loads(line)["version_id"])


@pytest.fixture
def trained(ev_settings: EvaluatorSettings, tmp_path: Path) -> dict[str, Any]:
    rows = [json.loads(ln) for ln in (EXAMPLES / "sft_train.jsonl").read_text().splitlines()]
    answers = [r["messages"][-1]["content"] for r in rows]
    random.Random(3).shuffle(answers)
    shuffled = tmp_path / "shuffled.jsonl"
    with shuffled.open("w") as fh:
        for row, answer in zip(rows, answers, strict=True):
            row["messages"][-1]["content"] = answer
            fh.write(json.dumps(row) + "\n")
    return {
        "good": _train(tmp_path, "shop", EXAMPLES / "sft_train.jsonl"),
        "shuffled": _train(tmp_path, "shuffled", shuffled),
    }


def test_trained_adapter_passes_and_shuffled_one_fails(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    from services.cli import app

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "generation: {enabled: true, decoding: {max_new_tokens: 64}, batch_size: 8,"
        " metrics: [json_valid, json_match, exact_match]}\n"
    )
    common = [
        "--policy",
        str(policy),
        "--suite",
        str(suite),
        "--baseline",
        "base",
        "--data",
        str(EXAMPLES / "test.jsonl"),
        "--limit",
        "30",
        "--quiet",
    ]
    good = CliRunner().invoke(
        app, ["gate", "run", "--candidate", trained["good"], *common, "--promote", "prod"]
    )
    assert good.exit_code == 0, good.output
    assert "gate: PASS" in good.output and '"moved": true' in good.output
    bad = CliRunner().invoke(app, ["gate", "run", "--candidate", trained["shuffled"], *common])
    assert bad.exit_code == 1, bad.output
    assert "[fail] json_match" in bad.output
