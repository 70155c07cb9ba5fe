"""The SFT and DPO recipes on the embedded model: LoRA, QLoRA, DPO from an SFT adapter, the saved
folder and manifest, servability, memory refusal and cancellation. Runs are a few steps long."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.trainer.config import TrainerSettings
from services.trainer.recipes.context import Stopped
from services.trainer.recipes.saving import MANIFEST
from shared.errors import ValidationError
from shared.registry.adapters import list_versions
from shared.registry.db import open_registry
from shared.servability import base_linear_shapes, check_adapter_dir
from tests.trainer.conftest import RecordingReporter, run_in_process, tiny_hyperparameters

BASE = "smollm2-135m-instruct"


def sft_spec(**hp: Any) -> dict[str, Any]:
    return {
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": tiny_hyperparameters(**hp)},
        }
    }


def check_folder(folder: Path, settings: TrainerSettings) -> dict[str, Any]:
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        MANIFEST,
    ]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == BASE
    base_dir = settings.models_dir / BASE
    assert check_adapter_dir(folder, base_shapes=base_linear_shapes(base_dir)) == []
    manifest: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
    return manifest


@pytest.mark.slow
def test_sft_lora_trains_saves_and_registers(
    trainer_model_settings: TrainerSettings, sft_file: Path
) -> None:
    result, reporter = run_in_process(trainer_model_settings, sft_spec(), sft_file)
    assert result.version_id == "test-adapter@v1"
    manifest = check_folder(result.adapter_dir, trainer_model_settings)
    assert (
        manifest["base_model"]["name"] == BASE
        and len(manifest["base_model"]["weights_sha256"]) == 64
    )
    assert manifest["datasets"]["training_file"]["sha256"]
    assert manifest["config"]["hyperparameters"]["learning_rate"] == 2e-4
    assert manifest["config"]["spec"]["lora"] == {
        "r": 16,
        "alpha": 32,
        "dropout": 0.05,
        "target_modules": "all-linear",
        "quantization": "none",
        "use_dora": False,
        "bias": "none",
        "modules_to_save": None,
    }
    assert {"torch", "transformers", "peft", "trl"} <= set(manifest["libraries"])
    assert len(manifest["chat_template_sha256"]) == 64 and manifest["stop_tokens"] == ["<|im_end|>"]
    assert manifest["validation_report"]["train"]["examples"] == 9
    assert len(manifest["loss_curve"]) == 2 and "train_loss" in manifest["metrics"]
    assert reporter.phases == ["running"]
    kinds = [e["type"] for e in reporter.events]
    assert "validation" in kinds and "metrics" in kinds and "checkpoint" in kinds
    metrics = [
        e["data"] for e in reporter.events if e["type"] == "metrics" and "train_loss" in e["data"]
    ]
    assert {"learning_rate", "tokens_per_second", "progress", "eta_seconds"} <= set(metrics[-1])
    assert metrics[-1]["progress"] == 100.0
    registry = open_registry(trainer_model_settings)
    with registry.session() as s:
        (version,) = list_versions(s, "test-adapter")
        assert version.base_model == BASE and version.rank == 16
        assert version.manifest["metrics"] == manifest["metrics"]
    registry.dispose()


@pytest.mark.slow
def test_sft_qlora_nf4(trainer_model_settings: TrainerSettings, sft_file: Path) -> None:
    spec = {**sft_spec(), "lora": {"quantization": "nf4", "r": 8}}
    result, _ = run_in_process(trainer_model_settings, spec, sft_file, adapter_name="qlora")
    manifest = check_folder(result.adapter_dir, trainer_model_settings)
    assert manifest["config"]["spec"]["lora"]["quantization"] == "nf4"
    # Measured on the model the recipe trained, not read back from the spec: every linear layer of
    # the base (30 blocks x 7 projections; the tied output head stays unquantised) is bitsandbytes'
    # Linear4bit, and its weights take 0.518 bytes each with the NF4 scales: about a quarter of
    # bf16's 2 bytes, an eighth of fp32's 4. An unquantised base fails both (Linear, 4.0 or 2.0).
    weights = manifest["config"]["decisions"]["base_weights"]
    assert weights["linear_classes"] == ["bitsandbytes.nn.modules.Linear4bit"]
    assert weights["linear4bit_layers"] == weights["linear_layers"] == 210
    assert 0.5 <= weights["bytes_per_linear_weight"] < 0.6
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["r"] == 8
    assert result.metrics["train_loss"] > 0


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


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_other_bytes(
    trainer_model_settings: TrainerSettings, sft_file: Path, tmp_path: Path
) -> None:
    def adapter_bytes(seed: int, name: str) -> tuple[bytes, bytes]:
        result, _ = run_in_process(
            trainer_model_settings,
            {**sft_spec(), "seed": seed},
            sft_file,
            adapter_name=name,
            work=tmp_path / name,
        )
        folder = result.adapter_dir
        return (folder / "adapter_model.safetensors").read_bytes(), (
            folder / "adapter_config.json"
        ).read_bytes()

    first, second, other = adapter_bytes(3, "a"), adapter_bytes(3, "b"), adapter_bytes(4, "c")
    assert first == second
    assert first[0] != other[0]


def test_memory_plan_refuses_with_a_suggestion(
    trainer_model_settings: TrainerSettings, sft_file: Path
) -> None:
    small = trainer_model_settings.model_copy(update={"memory_limit_bytes": 1_500_000_000})
    with pytest.raises(ValidationError) as info:
        run_in_process(small, sft_spec(batch_size=64, gradient_checkpointing=False), sft_file)
    assert info.value.code == "insufficient_memory"
    assert "try:" in info.value.message
    assert any("would fit" in d for d in info.value.details)


def test_unservable_lora_settings_fail_before_any_work(
    trainer_model_settings: TrainerSettings, sft_file: Path
) -> None:
    with pytest.raises(ValidationError) as info:
        run_in_process(trainer_model_settings, {**sft_spec(), "lora": {"r": 32}}, sft_file)
    assert (
        info.value.code == "unservable_lora_settings" and "max LoRA rank 16" in info.value.message
    )


@pytest.mark.slow
def test_stop_request_keeps_nothing(
    trainer_model_settings: TrainerSettings, sft_file: Path
) -> None:
    reporter = RecordingReporter(stop_after_metrics=1)
    with pytest.raises(Stopped):
        run_in_process(
            trainer_model_settings,
            sft_spec(max_steps=6),
            sft_file,
            reporter=reporter,
            adapter_name="stopped",
        )
    steps = [e["data"]["step"] for e in reporter.events if e["type"] == "metrics"]
    assert max(steps) < 6
    registry = open_registry(trainer_model_settings)
    with registry.session() as s:
        assert list_versions(s, "stopped") == []
    registry.dispose()


@pytest.mark.slow
def test_trained_adapter_loads_in_vllm(
    trainer_model_settings: TrainerSettings, sft_file: Path
) -> None:
    import subprocess
    import sys

    pytest.importorskip("vllm")
    result, _ = run_in_process(trainer_model_settings, sft_spec(), sft_file, adapter_name="vllm")
    script = Path(__file__).with_name("vllm_adapter_check.py")
    base = trainer_model_settings.models_dir / BASE
    proc = subprocess.run(
        [sys.executable, str(script), str(base), str(result.adapter_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert "VLLM_OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
