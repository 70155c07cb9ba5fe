"""The trainer's request and response schemas: safe LoRA target modules, OpenAI timestamps and
the job fields OpenAI has but we refuse."""

from __future__ import annotations

import pydantic
import pytest

from services.trainer.schemas import JobSpec, target_modules_problem


@pytest.mark.parametrize("value", ["all-linear", "q_proj", ["q_proj", "model.layers.0.v_proj"]])
def test_plain_target_modules_are_accepted(value: str | list[str]) -> None:
    assert target_modules_problem(value) is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("(.|.)*Z", "not a plain module name"),
        (["q_proj", ".*_proj"], "not a plain module name"),
        ([], "the list is empty"),
        ([f"m{i}" for i in range(65)], "more than 64"),
    ],
)
def test_regular_expressions_and_odd_lists_are_refused(
    value: str | list[str], problem: str
) -> None:
    found = target_modules_problem(value)
    assert found is not None and problem in found and "all-linear" in found


def test_oversized_metadata_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="at most 16 metadata keys"):
        JobSpec.model_validate(
            {"training_file": "file-x", "metadata": {f"k{i}": "v" for i in range(17)}}
        )


# -- full fine-tuning: ``adapter: none`` ---------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "field", "fragment"),
    [
        ({"method": {"type": "dpo"}}, "adapter", "not available for method 'dpo'"),
        ({"method": {"type": "reward"}}, "adapter", "not available for method 'reward'"),
        ({"lora": {"r": 8}}, "lora", "lora is set but adapter is 'none'"),
        ({"lora": {}}, "lora", "lora is set but adapter is 'none'"),
        ({"base_adapter": "orders@v1"}, "base_adapter", "full fine-tuning trains every weight"),
    ],
)
def test_a_full_fine_tune_refuses_what_it_cannot_do_naming_the_field(
    extra: dict[str, object], field: str, fragment: str
) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        JobSpec.model_validate({"training_file": "f", "adapter": "none", **extra})
    (error,) = info.value.errors()
    assert error["loc"] == (field,) and fragment in error["msg"]


def test_a_full_fine_tune_round_trips_without_a_lora_block_and_has_its_own_rate() -> None:
    spec = JobSpec.model_validate({"training_file": "f", "adapter": "none"})
    stored = spec.model_dump(mode="json")
    assert stored["adapter"] == "none" and "lora" not in stored
    # The worker reads the stored job back: it must validate again.
    assert JobSpec.model_validate(stored) == spec
    assert spec.resolved().learning_rate == 2e-5
    doubled = JobSpec.model_validate(
        {
            "training_file": "f",
            "adapter": "none",
            "hyperparameters": {"learning_rate_multiplier": 2},
        }
    )
    assert doubled.resolved().learning_rate == pytest.approx(4e-5)
    assert doubled.openai_hyperparameters()["learning_rate_multiplier"] == pytest.approx(2)
    lora = JobSpec.model_validate({"training_file": "f"})
    assert (
        lora.adapter == "lora"
        and "lora" in lora.model_dump()
        and lora.resolved().learning_rate == 2e-4
    )
