"""`services.trainer.recipes.setup`: LoRA settings the server cannot load are refused before any
work."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.trainer.config import TrainerSettings
from shared.errors import ValidationError
from tests.trainer.conftest import run_in_process
from tests.trainer.recipes.specs import sft_spec


def test_unservable_lora_settings_fail_before_any_work(
    trainer_model_settings: TrainerSettings, sft_file: Path
) -> None:
    with pytest.raises(ValidationError) as info:
        run_in_process(trainer_model_settings, {**sft_spec(), "lora": {"r": 32}}, sft_file)
    assert (
        info.value.code == "unservable_lora_settings" and "max LoRA rank 16" in info.value.message
    )
