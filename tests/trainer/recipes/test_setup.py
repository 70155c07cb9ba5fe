"""`services.trainer.recipes.setup`: LoRA settings the server cannot load are refused before any
work, naming every reason; the PEFT config is the spec's; the frozen base's storage is measured on
the live model (classes, 4-bit layers, bytes per weight with the 4-bit scales)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from services.trainer.config import TrainerSettings
from services.trainer.recipes.setup import check_lora_servable, lora_config, weight_storage
from shared.errors import ValidationError
from tests.trainer.conftest import run_in_process
from tests.trainer.recipes.specs import make_ctx, sft_spec


def test_unservable_lora_settings_fail_before_any_work(
    trainer_model_settings: TrainerSettings, sft_file: Path
) -> None:
    with pytest.raises(ValidationError) as info:
        run_in_process(trainer_model_settings, {**sft_spec(), "lora": {"r": 32}}, sft_file)
    assert (
        info.value.code == "unservable_lora_settings" and "max LoRA rank 16" in info.value.message
    )


def test_servable_lora_settings_pass_against_the_settings_own_rank_limit(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {**sft_spec(), "lora": {"r": 16}})
    check_lora_servable(ctx.spec, ctx.settings)  # the default limit is rank 16
    wide = make_ctx(tmp_path, {**sft_spec(), "lora": {"r": 32}})
    with pytest.raises(ValidationError):
        check_lora_servable(wide.spec, wide.settings)
    # A server started with a higher --max-lora-rank serves it: the limit is the settings'.
    check_lora_servable(wide.spec, wide.settings.model_copy(update={"max_lora_rank": 32}))


def test_every_unservable_setting_is_named(tmp_path: Path) -> None:
    lora = {"r": 32, "use_dora": True, "bias": "all", "modules_to_save": ["lm_head"]}
    ctx = make_ctx(tmp_path, {**sft_spec(), "lora": lora})
    with pytest.raises(ValidationError) as info:
        check_lora_servable(ctx.spec, ctx.settings)
    assert info.value.param == "lora" and info.value.code == "unservable_lora_settings"
    assert len(info.value.details) == 4
    assert info.value.message == f"the adapter could not be served: {info.value.details[0]}"
    for word in ("max LoRA rank", "DoRA", "bias", "modules_to_save"):
        assert any(word in d for d in info.value.details), word


def test_the_peft_config_is_the_spec_s_lora(tmp_path: Path) -> None:
    lora = {"r": 8, "lora_alpha": 24, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}
    config = lora_config(make_ctx(tmp_path, {**sft_spec(), "lora": lora}).spec)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 24, 0.1)
    assert set(config.target_modules) == {"q_proj", "v_proj"}
    assert config.bias == "none" and config.task_type == "CAUSAL_LM"


class Tiny(torch.nn.Module):
    """An embedding, two linear layers, a LoRA layer and a tied-style output head."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4, dtype=dtype)
        self.up = torch.nn.Linear(4, 8, bias=False, dtype=dtype)
        self.down = torch.nn.Linear(8, 4, bias=False, dtype=dtype)
        self.lora_A = torch.nn.Linear(4, 2, bias=False, dtype=dtype)
        self.head = torch.nn.Linear(4, 10, bias=False, dtype=dtype)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.head


def test_weight_storage_measures_the_frozen_linear_layers() -> None:
    measured = weight_storage(Tiny())
    assert measured == {
        "linear_layers": 2,  # not the LoRA layer, not the output head
        "linear4bit_layers": 0,
        "linear_classes": ["torch.nn.modules.linear.Linear"],
        "linear_weight_bytes": 2 * 32 * 4,
        "bytes_per_linear_weight": 4.0,
    }
    assert weight_storage(Tiny(torch.bfloat16))["bytes_per_linear_weight"] == 2.0


class QuantState:
    """What bitsandbytes hangs on a 4-bit weight: the unpacked shape and the scales."""

    def __init__(self, shape: tuple[int, int], scales: int) -> None:
        self.shape = torch.Size(shape)
        self.scales = scales

    def as_dict(self, packed: bool = False) -> dict[str, Any]:
        return {"absmax": torch.zeros(self.scales, dtype=torch.float32), "quant_type": "nf4"}


def test_weight_storage_counts_packed_4bit_weights_with_their_scales() -> None:
    model = Tiny()
    packed = torch.nn.Parameter(torch.zeros(16, 1, dtype=torch.uint8), requires_grad=False)
    packed.quant_state = QuantState((8, 4), scales=2)  # type: ignore[attr-defined]
    model.up.weight = packed
    measured = weight_storage(model)
    assert measured["linear_layers"] == 2 and measured["linear4bit_layers"] == 1
    # up: 16 packed bytes + 2 fp32 scales for 32 weights; down: 32 fp32 weights.
    assert measured["linear_weight_bytes"] == 16 + 8 + 128
    assert measured["bytes_per_linear_weight"] == round(152 / 64, 4)
