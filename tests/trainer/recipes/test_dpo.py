"""`services.trainer.recipes.dpo`: the DPO recipe on the embedded model, from scratch (the reference
is the base) and from a registered SFT adapter (the reference is that adapter)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.trainer.config import TrainerSettings
from tests.trainer.conftest import run_in_process, tiny_hyperparameters
from tests.trainer.recipes.specs import check_folder, sft_spec


@pytest.mark.slow
def test_dpo_lora_from_scratch_and_from_a_registered_sft_adapter(
    trainer_model_settings: TrainerSettings, sft_file: Path, dpo_file: Path
) -> None:
    dpo = {"method": {"type": "dpo", "dpo": {"hyperparameters": tiny_hyperparameters()}}}
    scratch, _ = run_in_process(trainer_model_settings, dpo, dpo_file, adapter_name="dpo")
    manifest = check_folder(scratch.adapter_dir, trainer_model_settings)
    assert manifest["method"] == "dpo" and manifest["base_adapter"] is None
    assert "rewards_accuracies" in manifest["metrics"]
    # Measured on a probe batch before the first step (tests/trainer/test_dpo_reference.py).
    assert manifest["config"]["decisions"]["reference"] == {
        "kind": "base",
        "adapter_sha256": None,
        "probe_max_abs_diff_vs_sft": None,
        "probe_max_abs_diff_vs_base": 0.0,
    }

    sft, _ = run_in_process(trainer_model_settings, sft_spec(), sft_file, adapter_name="sft")
    stacked, _ = run_in_process(
        trainer_model_settings,
        {**dpo, "base_adapter": sft.version_id},
        dpo_file,
        adapter_name="dpo",
    )
    manifest = check_folder(stacked.adapter_dir, trainer_model_settings)
    assert stacked.version_id == "dpo@v2"
    assert manifest["base_adapter"]["id"] == "sft@v1"
    reference = manifest["config"]["decisions"]["reference"]
    assert reference["kind"] == "sft_adapter" and reference["probe_max_abs_diff_vs_sft"] == 0.0
    assert reference["adapter_sha256"] == manifest["base_adapter"]["sha256"]
