"""`shared.memory_fit`: a full fine-tune that does not fit is planned with the full settings that
would (same results), else refused naming ``adapter`` with the LoRA and QLoRA jobs that would fit,
each with the planner's own estimate (the LoRA refusals are tested in tests/trainer/test_memory.py).
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from shared.errors import ValidationError
from shared.memory import GIB, ModelShape, PlanInput, estimate_plan
from shared.memory_fit import plan_or_refuse
from shared.model_shapes import KNOWN_MODELS

SHAPE = ModelShape.from_config(KNOWN_MODELS["SmolLM2-135M"])
FULL = PlanInput(
    quantization="none",
    r=16,
    target_modules="all-linear",
    # Short passes: the weights, gradients and AdamW states, not the activations, decide.
    batch_size=2,
    seq_len=128,
    gradient_checkpointing=False,
    weight_bytes=4,
    full=True,
)


def total(p: PlanInput) -> int:
    return estimate_plan(SHAPE, p).total


def quoted(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"about (\d+\.\d) GiB", text)]


def refusal(p: PlanInput, available: int) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        plan_or_refuse(SHAPE, p, available)
    assert info.value.code == "insufficient_memory"
    return info.value


def test_a_full_job_that_fits_with_checkpointing_gets_it() -> None:
    with_gc = replace(FULL, gradient_checkpointing=True)
    plan, chosen = plan_or_refuse(SHAPE, FULL, total(with_gc))
    assert chosen == with_gc and plan.fits and chosen.full


def test_smaller_full_passes_come_first_and_lora_is_still_offered() -> None:
    one = replace(FULL, batch_size=1, gradient_checkpointing=True)
    error = refusal(FULL, total(one))
    assert error.param == "hyperparameters"
    assert error.message.startswith(f"this job needs about {total(FULL) / GIB:.1f} GiB")
    assert "try: micro_batch_size 1 (batch_size unchanged: 2 accumulated passes" in error.message
    fits = [d for d in error.details if d.startswith("would fit: ")]
    assert any(d.startswith("would fit: LoRA: adapter 'lora' (lora.r 16)") for d in fits)
    assert any(d.startswith("would fit: QLoRA: adapter 'lora'") for d in fits)


def test_when_no_full_job_fits_the_refusal_names_adapter_with_lora_and_qlora_estimates() -> None:
    smallest_full = total(replace(FULL, batch_size=1, gradient_checkpointing=True))
    lora, qlora = replace(FULL, full=False), replace(FULL, full=False, quantization="nf4")
    assert total(qlora) < total(lora) < smallest_full
    error = refusal(FULL, smallest_full - 1)
    assert error.param == "adapter"
    assert error.message.startswith("full fine-tuning (adapter 'none') needs about")
    assert "would fit: LoRA: adapter 'lora' (lora.r 16) (about" in error.message
    assert (
        "; QLoRA: adapter 'lora' (lora.r 16) with lora.quantization 'nf4' (about" in error.message
    )
    # Each as the job is: the planner's estimate of the same step with a LoRA, with QLoRA.
    assert quoted(error.message) == [round(total(p) / GIB, 1) for p in (FULL, lora, qlora)]


def test_only_the_settings_that_fit_are_offered() -> None:
    lora = replace(FULL, full=False)
    qlora_small = replace(lora, quantization="nf4", batch_size=1, gradient_checkpointing=True)
    lora_small = replace(lora, batch_size=1, gradient_checkpointing=True)
    assert total(qlora_small) < total(lora_small)
    error = refusal(FULL, total(qlora_small))
    assert error.param == "adapter" and "LoRA: adapter 'lora' (lora.r 16) (" not in error.message
    assert error.message.endswith(
        "would fit: QLoRA: adapter 'lora' (lora.r 16) with lora.quantization 'nf4' with "
        "micro_batch_size 1 (batch_size unchanged: 2 accumulated passes per step) with gradient "
        f"checkpointing (about {total(qlora_small) / GIB:.1f} GiB)"
    )


def test_when_nothing_fits_the_refusal_says_so() -> None:
    error = refusal(FULL, GIB // 2)  # less than the framework alone
    assert error.param == "adapter"
    assert "nothing fits this machine, not even QLoRA (about " in error.message
    assert not any(d.startswith("would fit") for d in error.details)
