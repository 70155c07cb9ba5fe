"""shared.memory: the one memory model the trainer's planner and ``loraplex doctor`` share."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared import doctor
from shared.basemodel import ResolvedBaseModel
from shared.errors import ValidationError
from shared.memory import (
    GIB,
    ModelShape,
    PlanInput,
    estimate,
    estimate_plan,
)
from shared.memory_fit import plan_or_refuse
from tests.trainer.conftest import order_chat, tiny_hyperparameters, write_jsonl

# SmolLM2-135M-Instruct's config.json (the embedded base model), as far as the estimate reads it.
SMOLLM2 = {
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}


def plan_input(**changes: Any) -> PlanInput:
    base = PlanInput(
        quantization="none",
        r=16,
        target_modules="all-linear",
        batch_size=4,
        seq_len=512,
        gradient_checkpointing=False,
        weight_bytes=4,
    )
    return dataclasses.replace(base, **changes)


def test_the_shape_from_config_counts_the_embedded_model() -> None:
    shape = ModelShape.from_config(SMOLLM2)
    assert shape.params == 134_515_008  # SmolLM2-135M's published parameter count
    assert len(shape.lora_dims) == len(shape.leaf_names) == 30 * 7


@pytest.mark.slow
def test_config_and_tensors_give_the_same_shape(base_model: ResolvedBaseModel) -> None:
    from_tensors = ModelShape.from_folder(base_model.path)
    config = json.loads((base_model.path / "config.json").read_text())
    from_config = ModelShape.from_config(config)
    assert from_config.params == from_tensors.params
    assert from_config.linear_params == from_tensors.linear_params
    assert sorted(zip(from_config.leaf_names, from_config.lora_dims, strict=True)) == sorted(
        zip(from_tensors.leaf_names, from_tensors.lora_dims, strict=True)
    )


def test_dpo_doubles_the_sequences_and_targets_narrow_the_trainable() -> None:
    shape = ModelShape.from_config(SMOLLM2)
    sft = estimate_plan(shape, plan_input())
    dpo = estimate_plan(shape, plan_input(sequences_per_example=2))
    assert dpo.logits == 2 * sft.logits and dpo.activations == 2 * sft.activations
    narrow = estimate_plan(shape, plan_input(target_modules=["q_proj", "v_proj"]))
    assert 0 < narrow.trainable_params < sft.trainable_params


def test_a_plan_that_does_not_fit_is_refused_with_settings_that_would() -> None:
    shape = ModelShape.from_config(SMOLLM2)
    p = plan_input(batch_size=8, seq_len=1024)
    need = estimate_plan(shape, p).total
    with pytest.raises(ValidationError) as info:
        plan_or_refuse(shape, p, int(need * 0.3))
    assert info.value.code == "insufficient_memory"
    assert any("would fit: micro_batch_size 4" in d for d in info.value.details)
    plan, chosen = plan_or_refuse(shape, p, need)
    assert plan.fits and chosen == p
    # Gradient checkpointing alone is switched on when that is enough.
    plan, chosen = plan_or_refuse(shape, p, int(need * 0.5))
    assert plan.fits and chosen == dataclasses.replace(p, gradient_checkpointing=True)


def test_the_doctor_reads_the_same_model_as_the_planner() -> None:
    shape = ModelShape.from_config(SMOLLM2)
    lora = estimate(shape, "lora", rank=16, batch_size=4, seq_len=512, compute_bytes=4)
    plan = estimate_plan(shape, plan_input())
    assert lora.total_gib == pytest.approx(plan.total / GIB)
    assert lora.trainable_params == plan.trainable_params
    rows = {r["method"]: r for r in doctor.method_fit(SMOLLM2, budget_gib=64.0, on_gpu=False)}
    assert rows["qlora"]["total_gib"] < rows["lora"]["total_gib"] < rows["full"]["total_gib"]
    assert all(r["fits"] for r in rows.values())


def test_lora_that_does_not_fit_is_offered_qlora_with_its_numbers() -> None:
    shape = ModelShape.from_config(SMOLLM2)
    p = plan_input(batch_size=1, seq_len=256, gradient_checkpointing=True)
    lora = estimate_plan(shape, p).total
    qlora = estimate_plan(shape, dataclasses.replace(p, quantization="nf4")).total
    assert qlora < lora
    with pytest.raises(ValidationError) as info:
        plan_or_refuse(shape, p, (lora + qlora) // 2)
    error = info.value
    assert error.code == "insufficient_memory"
    expected = f"QLoRA: lora.quantization = 'nf4' (about {qlora / GIB:.1f} GiB)"
    assert f"try: {expected}" in error.message
    assert f"would fit: {expected}" in error.details


def test_qlora_is_offered_with_the_smaller_passes_it_needs() -> None:
    shape = ModelShape.from_config(SMOLLM2)
    p = plan_input(batch_size=2, seq_len=128)
    smallest = dataclasses.replace(p, quantization="nf4", batch_size=1, gradient_checkpointing=True)
    available = estimate_plan(shape, smallest).total
    with pytest.raises(ValidationError) as info:
        plan_or_refuse(shape, p, available)
    assert info.value.message.endswith(
        "try: QLoRA: lora.quantization = 'nf4' with micro_batch_size 1 (batch_size unchanged: 2 "
        f"accumulated passes per step) with gradient checkpointing (about {available / GIB:.1f} GiB)"
    )


def test_when_not_even_qlora_fits_the_refusal_says_so() -> None:
    shape = ModelShape.from_config(SMOLLM2)
    p = plan_input(batch_size=1, seq_len=256)
    with pytest.raises(ValidationError) as info:
        plan_or_refuse(shape, p, GIB // 2)  # less than the framework alone
    error = info.value
    assert error.code == "insufficient_memory"
    assert "nothing fits this machine, not even QLoRA (about " in error.message
    assert "try:" not in error.message
    assert not any(d.startswith("would fit") for d in error.details)


def test_checkpointing_pinned_off_is_refused_with_it_as_the_suggestion() -> None:
    shape = ModelShape.from_config(SMOLLM2)
    p = plan_input(batch_size=4, seq_len=1024)
    with_gc = estimate_plan(shape, dataclasses.replace(p, gradient_checkpointing=True)).total
    assert plan_or_refuse(shape, p, with_gc)[1].gradient_checkpointing
    with pytest.raises(ValidationError) as info:
        plan_or_refuse(shape, p, with_gc, may_checkpoint=False)
    assert info.value.message.endswith(
        f"try: gradient_checkpointing true (about {with_gc / GIB:.1f} GiB)"
    )


# -- the estimate against a measured peak ---------------------------------------------------------
# One short SFT run of the embedded model in a fresh process (so nothing else this test session
# allocated counts), reporting the plan the trainer itself made and the process's peak RSS.
CHILD = """
import json, sys
from pathlib import Path
from services.trainer.config import TrainerSettings
from shared.memory import peak_resident_bytes
from tests.trainer.conftest import run_in_process

data_dir, train, hp = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
settings = TrainerSettings(data_dir=data_dir, torch_threads=1)
spec = {"method": {"type": "supervised", "supervised": {"hyperparameters": hp}}}
_, reporter = run_in_process(settings, spec, train)
plan = next(e["data"]["memory"] for e in reporter.events if (e["data"] or {}).get("memory"))
peak = peak_resident_bytes()
print(json.dumps({"plan": plan, "peak_gib": peak / 1024**3}))
"""

# An estimate 1.5x the real peak would already refuse a job that needs 11 GiB on a 16 GiB machine;
# the estimate is meant to be a little pessimistic, not that much. Measured: 1.13-1.16x.
MAX_OVERESTIMATE = 1.5


@pytest.fixture(scope="module")
def measured(
    base_model: ResolvedBaseModel, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("peak")
    models = root / "data" / "models"
    models.mkdir(parents=True)
    (models / base_model.path.name).symlink_to(base_model.path)
    train = write_jsonl(root / "sft.jsonl", [order_chat(i) for i in range(10)])
    # fp32 so the plan does not depend on this CPU's bf16 speed; 2 steps of 2 examples (the
    # second step peaks higher: the allocator keeps the first step's freed blocks).
    hp = tiny_hyperparameters(precision="fp32")
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(root / "data"), str(train), json.dumps(hp)],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
def test_the_estimate_covers_the_measured_peak(measured: dict[str, Any]) -> None:
    plan, peak = measured["plan"], measured["peak_gib"]
    assert plan["total"] >= peak, f"estimate {plan} below the measured peak {peak:.2f} GiB"
    assert plan["total"] <= MAX_OVERESTIMATE * peak, f"estimate {plan}, peak {peak:.2f} GiB"


@pytest.mark.slow
@pytest.mark.parametrize("dropped", [("activations", "logits"), ("overhead",)])
def test_the_peak_check_fails_an_estimate_without_a_term(
    measured: dict[str, Any], dropped: tuple[str, ...]
) -> None:
    """The control: the same check fails an estimate built to be wrong (one term left out), so
    the comparison above has teeth. The model before these terms were measured (activations at
    2 bytes, logits at 12, no allocator slack) estimated 1.79 GiB for this run: below its 2.04."""
    plan, peak = measured["plan"], measured["peak_gib"]
    assert plan["total"] - sum(plan[k] for k in dropped) < peak
