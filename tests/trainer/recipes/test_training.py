"""`services.trainer.recipes.training`: fitting the batch to memory refuses a job that cannot fit,
with a suggestion that would."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.trainer.config import TrainerSettings
from shared.errors import ValidationError
from tests.trainer.conftest import run_in_process
from tests.trainer.recipes.specs import sft_spec


def test_memory_plan_refuses_with_a_suggestion(
    trainer_model_settings: TrainerSettings, sft_file: Path
) -> None:
    small = trainer_model_settings.model_copy(update={"memory_limit_bytes": 1_500_000_000})
    with pytest.raises(ValidationError) as info:
        run_in_process(small, sft_spec(batch_size=64, gradient_checkpointing=False), sft_file)
    assert info.value.code == "insufficient_memory"
    assert "try:" in info.value.message
    assert any("would fit" in d for d in info.value.details)
