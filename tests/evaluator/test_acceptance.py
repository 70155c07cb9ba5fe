"""Acceptance on the shipped example task (slow: trains two small adapters with the trainer).

An adapter trained on the extraction data passes its policy against the base model; one trained
on the same prompts with shuffled answers fails, with reasons naming the metrics.

Kept cheap on purpose, with the outcome still far from the thresholds. What decides json_match
here is how many examples the adapter has seen and how many updates it got: 48 steps of 2 examples
at lr 2e-3 (cosine) take json_match on held-out items from the base model's 0 to about 0.95,
where 20 steps of 8 at lr 1e-3 (the same compute as 80 steps of 2) reached only about 0.2. The
shuffled adapter learns the JSON format (json_valid stays high) but not the values. The two
trainings run side by side, one torch thread each (an oversubscribed 2-thread OpenMP pool on a
shared 2-core machine is several times slower than one thread); evaluation uses one thread and
generates all items in one batch (in-process decoding is step-bound: one batch of 24 is about
1.5x faster than three of 8).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from services.evaluator.config import EvaluatorSettings
from shared.registry.db import Registry
from tests.evaluator.conftest import EXAMPLES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
STEPS = 48
ITEMS = 24
POLICY = f"""
name: extraction
min_items: {ITEMS}
metrics:
  json_match: {{min: 0.3, min_improvement: 0.0}}   # better than the base model, on paired items
  json_valid: {{min: 0.8}}
"""


def _config(tmp: Path, name: str, training_file: Path) -> Path:
    config = tmp / f"{name}.yaml"
    config.write_text(
        f"model: smollm2-135m-instruct\ntraining_file: {training_file}\nseed: 7\n"
        "method:\n  type: supervised\n  supervised:\n    hyperparameters: {n_epochs: 1, "
        f"batch_size: 2, learning_rate: 0.002, max_steps: {STEPS}, save_steps: {STEPS}, "
        "max_length: 256}\n"
        "lora: {r: 8, lora_alpha: 16, target_modules: all-linear}\n"
    )
    return config


def _train_side_by_side(configs: dict[str, Path]) -> dict[str, str]:
    """``loraplex train run`` for each config at once; name -> registered version id."""
    env = {**os.environ, "LORAPLEX_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for name, config in configs.items():
            procs[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "services.cli",
                    "train",
                    "run",
                    str(config),
                    "--adapter-name",
                    name,
                ],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        outputs = {name: proc.communicate(timeout=1500)[0] for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    versions: dict[str, str] = {}
    for name, proc in procs.items():
        out = outputs[name]
        assert proc.returncode == 0, f"training {name} failed:\n{out[-4000:]}"
        line = [ln for ln in out.splitlines() if ln.startswith("{")][-1]
        versions[name] = str(json.loads(line)["version_id"])
    return versions


@pytest.fixture
def trained(
    ev_settings: EvaluatorSettings, ev_registry: Registry, tmp_path: Path
) -> dict[str, Any]:
    from shared.basemodel import resolve_base_model

    rows = [json.loads(ln) for ln in (EXAMPLES / "sft_train.jsonl").read_text().splitlines()]
    answers = [r["messages"][-1]["content"] for r in rows]
    random.Random(3).shuffle(answers)
    shuffled = tmp_path / "shuffled.jsonl"
    with shuffled.open("w") as fh:
        for row, answer in zip(rows, answers, strict=True):
            row["messages"][-1]["content"] = answer
            fh.write(json.dumps(row) + "\n")
    # Register the base model once here, so the two trainings do not race to insert it.
    with ev_registry.session() as session:
        resolve_base_model(ev_settings, ev_settings.base_model, session=session)
    start = time.perf_counter()
    versions = _train_side_by_side(
        {
            "shop": _config(tmp_path, "shop", EXAMPLES / "sft_train.jsonl"),
            "shuffled": _config(tmp_path, "shuffled", shuffled),
        }
    )
    print(f"\ntrained {versions} in {time.perf_counter() - start:.0f}s")
    return {"good": versions["shop"], "shuffled": versions["shuffled"]}


def _scores(out: Path) -> dict[str, Any]:
    result = json.loads((out / "result.json").read_text())
    summary: dict[str, Any] = {"gate": result["gate"]["decision"]}
    for role in ("candidate", "baseline"):
        summary[role] = {
            name: result[role]["metrics"][name]["value"] for name in ("json_match", "json_valid")
        }
    summary["reasons"] = result["gate"]["reasons"]
    return summary


def test_trained_adapter_passes_and_shuffled_one_fails(
    trained: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from services.cli import app

    monkeypatch.setenv("LORAPLEX_EVAL_THREADS", "1")
    threads = torch.get_num_threads()
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "generation: {enabled: true, decoding: {max_new_tokens: 64}, "
        f"batch_size: {ITEMS}, metrics: [json_valid, json_match, exact_match]}}\n"
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
        str(ITEMS),
        "--quiet",
    ]
    try:
        start = time.perf_counter()
        good = CliRunner().invoke(
            app,
            [
                "gate",
                "run",
                "--candidate",
                trained["good"],
                *common,
                "--promote",
                "prod",
                "--out",
                str(tmp_path / "good"),
            ],
        )
        mid = time.perf_counter()
        bad = CliRunner().invoke(
            app,
            [
                "gate",
                "run",
                "--candidate",
                trained["shuffled"],
                *common,
                "--out",
                str(tmp_path / "bad"),
            ],
        )
        end = time.perf_counter()
    finally:
        torch.set_num_threads(threads)
    print(f"gate runs: good {mid - start:.0f}s, shuffled {end - mid:.0f}s (base answers cached)")
    assert good.exit_code == 0, good.output
    assert "gate: PASS" in good.output and '"moved": true' in good.output
    assert bad.exit_code == 1, bad.output
    assert "[fail] json_match" in bad.output
    good_scores, bad_scores = _scores(tmp_path / "good"), _scores(tmp_path / "bad")
    print(json.dumps({"good": good_scores, "shuffled": bad_scores}, indent=1))
    # The base model is the same subject in both runs: same items, same (cached) answers.
    assert good_scores["baseline"] == bad_scores["baseline"]
    # The shuffled adapter fails on the values, not on the format.
    assert bad_scores["candidate"]["json_valid"] >= 0.8
    assert bad_scores["candidate"]["json_match"] < good_scores["candidate"]["json_match"]
