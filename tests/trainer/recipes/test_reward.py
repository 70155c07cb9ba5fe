"""The reward-model method: a short real run on the extraction example's preference pairs records
its held-out pair accuracy and registers a reloadable LoRA + score head; the accuracy can fail
(swapped pairs score 1 - accuracy); jobs and files a reward model cannot train on are refused at
submit with the field named and nothing stored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.trainer.config import TrainerSettings
from services.trainer.recipes.reward import held_out_accuracy, pair_accuracy
from services.trainer.recipes.saving import MANIFEST
from tests.trainer.api.requests import (
    GOOD_DPO,
    GOOD_SFT,
    _job,
    assert_refused,
    lines,
    snapshot,
    upload,
)
from tests.trainer.conftest import order_pair, run_in_process, tiny_hyperparameters

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "extraction" / "dpo_train.jsonl"


def reward_spec(**data: Any) -> dict[str, Any]:
    return {
        "method": {"type": "reward", "reward": {"hyperparameters": tiny_hyperparameters()}},
        "data": {"validation_fraction": 0.25, **data},
    }


def test_pair_accuracy_counts_chosen_strictly_above_rejected() -> None:
    chosen, rejected = [3.0, 2.0, 1.0], [0.0, 0.0, 5.0]
    assert pair_accuracy(chosen, rejected) == pytest.approx(2 / 3)
    # The control: the same scores with the sides swapped are judged wrong where they were right.
    assert pair_accuracy(rejected, chosen) == pytest.approx(1 / 3)
    assert pair_accuracy([1.0, 1.0], [1.0, 1.0]) == 0.0  # a constant scorer is not at chance
    with pytest.raises(ValueError):
        pair_accuracy([], [])


@pytest.mark.slow
def test_reward_model_trains_records_held_out_accuracy_and_registers(
    trainer_model_settings: TrainerSettings, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForSequenceClassification

    subset = tmp_path / "pairs.jsonl"
    subset.write_text("".join(EXAMPLE.read_text().splitlines(keepends=True)[:24]))
    result, reporter = run_in_process(
        trainer_model_settings, reward_spec(), subset, adapter_name="rm"
    )

    assert result.version_id == "rm@v1"
    manifest = json.loads((result.adapter_dir / MANIFEST).read_text())
    assert manifest == result.manifest and manifest["method"] == "reward"
    reward = manifest["reward"]
    assert reward["n_pairs"] == 6  # 25% of the 24 pairs held out by the trainer's split
    assert 0.0 <= reward["heldout_pair_accuracy"] <= 1.0
    assert 0.0 <= reward["baseline_pair_accuracy"] <= 1.0
    assert manifest["metrics"]["heldout_pair_accuracy"] == reward["heldout_pair_accuracy"]
    assert manifest["config"]["hyperparameters"]["learning_rate"] == 1e-4
    logged = [e for e in reporter.events if "held-out pair accuracy" in e["message"]]
    assert len(logged) == 1 and logged[0]["data"]["reward"] == reward

    # The folder is a peft SEQ_CLS adapter whose weights hold the LoRA matrices and the head.
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS"
    assert config["base_model_name_or_path"] == "smollm2-135m-instruct"
    with safe_open(str(result.adapter_dir / "adapter_model.safetensors"), framework="pt") as fh:
        keys = list(fh.keys())
    assert any(".score." in k for k in keys) and any("lora_A" in k for k in keys)

    # Reloaded from the folder, the model scores the held-out pairs as the manifest says, and
    # swapping each pair's sides turns the accuracy into 1 - accuracy (the check can fail).
    from transformers import AutoTokenizer

    from services.trainer.recipes.reward import pair_rows
    from shared.datasets import ChatRenderer, load_examples, prepare, stop_token_ids

    base_dir = trainer_model_settings.models_dir / "smollm2-135m-instruct"
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    renderer = ChatRenderer(tokenizer, stop_token_ids(tokenizer))
    data = prepare(
        load_examples(subset, source=subset.name),
        None,
        renderer,
        kind="preference",
        max_length=256,
        seed=42,
        validation_fraction=0.25,
    )
    held_out, _ = pair_rows(data.validation_pairs, 256)
    base = AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=1, dtype=torch.float32
    )
    base.config.pad_token_id = reward["pad_token_id"]
    model = PeftModel.from_pretrained(base, result.adapter_dir)
    accuracy = held_out_accuracy(model, held_out, reward["pad_token_id"])
    assert accuracy == pytest.approx(reward["heldout_pair_accuracy"], abs=1e-6)
    swapped = [{"chosen_ids": r["rejected_ids"], "rejected_ids": r["chosen_ids"]} for r in held_out]
    assert held_out_accuracy(model, swapped, reward["pad_token_id"]) == pytest.approx(1 - accuracy)


def _refused(
    client: TestClient, settings: TrainerSettings, body: dict[str, Any], *fragments: str
) -> dict[str, Any]:
    before = snapshot(settings)
    error = assert_refused(client.post("/v1/fine_tuning/jobs", json=body), 422, *fragments)
    assert snapshot(settings) == before
    return error


def test_reward_job_on_chat_data_is_refused(
    client: TestClient, trainer_settings: TrainerSettings
) -> None:
    file_id = upload(client, GOOD_SFT).json()["id"]
    error = _refused(
        client,
        trainer_settings,
        _job(file_id, method={"type": "reward"}),
        "holds supervised (chat) data",
        "method 'reward' needs preference pairs",
    )
    assert error["param"] == "training_file"


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        ({"data": {"validation_fraction": 0}}, ["data.validation_fraction is 0", "held-out"]),
        ({"base_adapter": "extraction@v1"}, ["base_adapter is not supported", "'reward'"]),
        ({"lora": {"quantization": "nf4"}}, ["lora.quantization", "'reward'"]),
        ({"method": {"type": "reward", "dpo": {}}}, ["method.dpo is set"]),
    ],
)
def test_reward_jobs_it_cannot_train_are_refused(
    client: TestClient,
    trainer_settings: TrainerSettings,
    extra: dict[str, Any],
    fragments: list[str],
) -> None:
    file_id = upload(client, GOOD_DPO).json()["id"]
    _refused(
        client,
        trainer_settings,
        _job(file_id, **{"method": {"type": "reward"}, **extra}),
        *fragments,
    )


def test_a_pair_missing_its_rejected_side_is_refused_at_upload(
    client: TestClient, trainer_settings: TrainerSettings
) -> None:
    broken = {k: v for k, v in order_pair(1).items() if k != "rejected"}
    before = snapshot(trainer_settings)
    assert_refused(upload(client, lines(order_pair(0), broken)), 422, "line 2", "`rejected`")
    assert snapshot(trainer_settings) == before


def test_a_reward_job_on_preference_pairs_is_accepted(client: TestClient) -> None:
    file_id = upload(client, lines(*[order_pair(i) for i in range(6)])).json()["id"]
    resp = client.post("/v1/fine_tuning/jobs", json=_job(file_id, method={"type": "reward"}))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["method"]["type"] == "reward"
    assert body["hyperparameters"]["learning_rate_multiplier"] == 1.0
