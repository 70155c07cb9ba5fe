"""`shared.memory`: the planner's estimate by part, and the plan it picks or the refusal it gives
(the estimate against a measured run is in tests/trainer/test_memory.py)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from shared.errors import LoraplexError
from shared.memory import (
    GIB,
    ModelShape,
    PlanInput,
    estimate,
    estimate_plan,
    peak_resident_bytes,
)
from shared.memory_fit import plan_or_refuse
from shared.model_shapes import KNOWN_MODELS

SHAPE = ModelShape.from_config(KNOWN_MODELS["SmolLM2-135M"])
LORA = PlanInput(
    quantization="none",
    r=8,
    target_modules=["q_proj", "v_proj"],
    batch_size=4,
    seq_len=1024,
    gradient_checkpointing=False,
    weight_bytes=2,
)


def test_the_estimate_adds_up_its_parts_and_counts_only_the_targeted_layers() -> None:
    plan = estimate_plan(SHAPE, LORA)
    parts = plan.weights + plan.optimizer + plan.activations + plan.logits + plan.overhead
    assert plan.total == parts and plan.fits  # no budget: fits
    assert plan.weights == SHAPE.params * 2
    targeted = [
        (i, o)
        for (i, o), leaf in zip(SHAPE.lora_dims, SHAPE.leaf_names, strict=True)
        if leaf in ("q_proj", "v_proj")
    ]
    assert plan.trainable_params == sum(8 * (i + o) for i, o in targeted) > 0
    every = estimate_plan(SHAPE, replace(LORA, target_modules="all-linear"))
    assert every.trainable_params > plan.trainable_params
    nf4 = estimate_plan(SHAPE, replace(LORA, quantization="nf4"))
    assert nf4.weights < plan.weights


def test_checkpointing_is_switched_on_when_that_makes_the_job_fit() -> None:
    plain = estimate_plan(SHAPE, LORA)
    checkpointed = estimate_plan(SHAPE, replace(LORA, gradient_checkpointing=True))
    budget = (plain.total + checkpointed.total) // 2
    plan, chosen = plan_or_refuse(SHAPE, LORA, budget)
    assert chosen.gradient_checkpointing and plan.total <= budget
    with pytest.raises(LoraplexError, match="gradient_checkpointing true"):
        plan_or_refuse(SHAPE, LORA, budget, may_checkpoint=False)
    assert plan_or_refuse(SHAPE, LORA, None)[1] is LORA
    assert estimate_plan(SHAPE, LORA, available=GIB // 1024).fits is False


def test_the_peak_of_a_child_does_not_count_its_parents() -> None:
    # A child started by a big process (pytest late in a run) must report its own peak: with
    # ru_maxrss it reported the parent's 512 MiB here, and 3.8 GiB in CI.
    ballast = bytearray(512 * 1024**2)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # touch every page so it is resident
    assert peak_resident_bytes() >= 512 * 1024**2
    child = "from shared.memory import peak_resident_bytes; print(peak_resident_bytes())"
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", child], cwd=repo, capture_output=True, text=True, check=True
    )
    assert int(out.stdout) < 256 * 1024**2
    del ballast


FULL = replace(LORA, full=True, weight_bytes=4)


def test_full_fine_tuning_counts_fp32_weights_gradients_and_adamw_states_for_every_weight() -> None:
    plan = estimate_plan(SHAPE, FULL)
    # fp32 master weights (4 bytes), then an fp32 gradient and two fp32 AdamW moments (12).
    assert plan.trainable_params == SHAPE.params
    assert plan.weights == 4 * SHAPE.params and plan.optimizer == 12 * SHAPE.params
    assert (
        plan.total == plan.weights + plan.optimizer + plan.activations + plan.logits + plan.overhead
    )
    # A bf16 step keeps the fp32 weights and adds autocast's bf16 copy; activations halve.
    bf16 = estimate_plan(SHAPE, replace(FULL, weight_bytes=2))
    assert bf16.weights == 6 * SHAPE.params and bf16.optimizer == plan.optimizer
    assert bf16.activations * 2 == plan.activations
    # Activations are the same model as LoRA's; the LoRA settings do not enter a full plan.
    lora = estimate_plan(SHAPE, replace(LORA, weight_bytes=4))
    assert (plan.activations, plan.logits) == (lora.activations, lora.logits)
    assert estimate_plan(SHAPE, replace(FULL, r=64, target_modules="all-linear")) == plan
    assert plan.total > lora.total


def test_the_doctor_full_row_is_the_planner_full_plan() -> None:
    for compute_bytes in (2, 4):
        row = estimate(SHAPE, "full", batch_size=4, seq_len=1024, compute_bytes=compute_bytes)
        plan = estimate_plan(SHAPE, replace(FULL, weight_bytes=compute_bytes, r=16))
        assert row.total_gib == pytest.approx(plan.total / GIB)
        assert row.trainable_params == SHAPE.params
        assert row.gradients_gib == pytest.approx(4 * SHAPE.params / GIB)
