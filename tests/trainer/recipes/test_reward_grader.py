"""`services.trainer.recipes.reward_grader`: a reinforcement job whose grader is a registered
reward model (``score_model``) trains on that model's scores: each sampled completion's reward is
the sigmoid of the reward model's score of prompt + completion, recomputed here independently
(the tokenizer's own chat template and a plain peft load), and the manifest records the version
and its content hash."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from services.trainer.config import TrainerSettings
from services.trainer.recipes.saving import MANIFEST
from tests.conftest import random_reward_adapter
from tests.trainer.conftest import run_in_process, tiny_hyperparameters, write_jsonl
from tests.trainer.recipes.test_grpo import CAPITALS, prompt_row, rl_method

PAD = 2


def _register_reward_model(settings: TrainerSettings, folder: Path) -> tuple[str, str]:
    from shared.artifacts import open_store
    from shared.basemodel import resolve_base_model
    from shared.registry.adapters import NewVersion, register_version, set_alias
    from shared.registry.db import open_registry

    sha = open_store(settings).put_dir(folder)
    manifest = {"method": "reward", "reward": {"pad_token_id": PAD, "heldout_pair_accuracy": 0.5}}
    registry = open_registry(settings)
    try:
        with registry.session() as session:
            base = resolve_base_model(settings, settings.base_model, session=session).name
            row, _ = register_version(session, NewVersion("rm", sha, base, 4, 1, manifest))
            set_alias(session, "rm", "prod", row.id, actor="test")
            return row.id, sha
    finally:
        registry.dispose()


@pytest.mark.slow
def test_a_reward_model_grades_the_sampled_completions(
    trainer_model_settings: TrainerSettings, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base_dir = trainer_model_settings.models_dir / "smollm2-135m-instruct"
    folder = random_reward_adapter(base_dir, tmp_path / "rm", 3, PAD)
    version, sha = _register_reward_model(trainer_model_settings, folder)
    data = write_jsonl(tmp_path / "prompts.jsonl", [prompt_row(*c) for c in CAPITALS])
    hp = tiny_hyperparameters(
        num_generations=2, max_completion_length=8, max_length=128, precision="fp32"
    )
    grader = {"type": "score_model", "name": "rm", "model": "rm:prod"}
    spec = {"method": rl_method(grader, **hp), "data": {"validation_fraction": 0}}
    result, reporter = run_in_process(trainer_model_settings, spec, data, adapter_name="rl")

    manifest = json.loads((result.adapter_dir / MANIFEST).read_text())
    assert manifest["grader"]["model"] == version  # the alias, pinned to its version
    assert manifest["reinforcement"]["reward_model"]["sha256"] == sha
    samples = [s for e in reporter.events if e["data"] for s in e["data"].get("samples", [])]
    assert samples
    rewards = [s["reward"] for s in samples]
    assert all(0.0 < r < 1.0 for r in rewards)

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    net = AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=1, dtype=torch.float32
    )
    net.config.pad_token_id = PAD
    model = PeftModel.from_pretrained(net, folder).eval()
    for sample in samples:
        conversation: list[dict[str, Any]] = [
            {"role": "user", "content": sample["prompt"]},
            {"role": "assistant", "content": sample["completion"]},
        ]
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            score = float(model(input_ids=ids).logits.view(-1)[0])
        assert sample["reward"] == pytest.approx(1 / (1 + math.exp(-score)), abs=2e-4)
