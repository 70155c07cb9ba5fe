"""`services.trainer.recipes.training`: fitting the batch to memory refuses a job that cannot fit,
with a suggestion that would, and plans the chosen pass otherwise; the trainer is built from the
common and the recipe's own settings with a fresh LoRA (or the starting adapter, or the recipe's
own), reports through our callback and resumes from a dead worker's checkpoint; the decisions every
manifest records."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import torch

from services.trainer.config import TrainerSettings
from services.trainer.recipes.training import (
    Fit,
    ModelSetup,
    Trained,
    decisions,
    fit_memory,
    train,
)
from shared.basemodel import ResolvedBaseModel
from shared.errors import ValidationError
from tests.trainer.conftest import RecordingReporter, run_in_process
from tests.trainer.recipes.specs import make_ctx, sft_spec


def test_memory_plan_refuses_with_a_suggestion(
    trainer_model_settings: TrainerSettings, sft_file: Path
) -> None:
    small = trainer_model_settings.model_copy(update={"memory_limit_bytes": 1_500_000_000})
    with pytest.raises(ValidationError) as info:
        run_in_process(small, sft_spec(batch_size=64, gradient_checkpointing=False), sft_file)
    assert info.value.code == "insufficient_memory"
    assert "try:" in info.value.message
    assert any("would fit" in d for d in info.value.details)


# Unit tests around train(): a fake trainer class records how it is built and driven.


class FakeConfig:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


class FakeTrainer:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.model = kwargs["model"]
        self.log: list[Any] = []

    def remove_callback(self, callback: Any) -> None:
        self.log.append(("remove_callback", callback))

    def train(self, resume_from_checkpoint: str | None = None) -> None:
        self.log.append(("train", resume_from_checkpoint))


def parts(tmp_path: Path) -> tuple[Any, Any]:
    base = ResolvedBaseModel("tiny-base", tmp_path, "0" * 64, "test")
    setup = ModelSetup(base, "the tokenizer", cast(Any, None), "fp32")
    plan = SimpleNamespace(summary=lambda: {"total": 1.5})
    return setup, Fit(micro_batch=1, plan=cast(Any, plan), gradient_checkpointing=True)


ROWS = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}] * 10


def test_train_builds_the_trainer_from_common_and_own_settings(tmp_path: Path) -> None:
    from transformers import PrinterCallback

    ctx = make_ctx(tmp_path)
    hp = ctx.spec.resolved()
    setup, fit = parts(tmp_path)
    built: list[Any] = []

    def on_built(trainer: Any) -> None:
        built.append(list(trainer.log))

    result = train(
        ctx,
        hp,
        setup,
        fit,
        FakeTrainer,
        FakeConfig,
        model="the model",
        train_rows=ROWS,
        eval_rows=[],
        config={"beta": 0.1, "max_length": 99},
        built=on_built,
    )
    trainer = result.trainer
    args = trainer.kwargs["args"].kwargs
    assert args["beta"] == 0.1 and args["max_length"] == 99  # the recipe's own settings
    assert args["output_dir"] == str(ctx.output_dir) and args["seed"] == hp.seed
    assert args["per_device_train_batch_size"] == 1 and args["gradient_accumulation_steps"] == 2
    assert args["gradient_checkpointing"] is True and args["eval_strategy"] == "no"
    assert trainer.kwargs["model"] == "the model"
    assert trainer.kwargs["processing_class"] == "the tokenizer"
    assert trainer.kwargs["train_dataset"].num_rows == 10
    assert trainer.kwargs["eval_dataset"] is None
    assert trainer.kwargs["callbacks"] == [result.callback]
    assert trainer.kwargs["peft_config"].r == 16  # a fresh LoRA from the spec
    # Our callback reports instead of the printer; the hook runs before training starts.
    assert trainer.log == [("remove_callback", PrinterCallback), ("train", None)]
    assert built == [[("remove_callback", PrinterCallback)]]
    # 10 examples in batches of 2 make 5 steps an epoch; max_steps 2 stops at 0.4 epochs.
    assert (result.steps, result.epochs) == (2, 0.4)


def test_train_resumes_from_the_checkpoint_a_dead_worker_left(tmp_path: Path) -> None:
    reporter = RecordingReporter()
    ctx = make_ctx(tmp_path, reporter=reporter)
    checkpoint = ctx.output_dir / "checkpoint-1"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    (checkpoint / "adapter_model.safetensors").write_bytes(b"")
    setup, fit = parts(tmp_path)
    result = train(
        ctx,
        ctx.spec.resolved(),
        setup,
        fit,
        FakeTrainer,
        FakeConfig,
        model="the model",
        train_rows=ROWS,
        eval_rows=ROWS[:2],
        config={},
    )
    assert result.trainer.log[-1] == ("train", str(checkpoint))
    assert reporter.events[-1]["message"] == "resuming from checkpoint-1"
    assert reporter.events[-1]["data"] == {"checkpoint": str(checkpoint)}
    assert result.trainer.kwargs["eval_dataset"].num_rows == 2
    assert result.trainer.kwargs["args"].kwargs["eval_strategy"] == "steps"


def test_a_starting_adapter_or_the_recipe_s_own_lora_replaces_the_fresh_one(
    tmp_path: Path,
) -> None:
    setup, fit = parts(tmp_path)
    stacked = make_ctx(tmp_path, base_adapter_dir=tmp_path / "sft")
    kwargs: dict[str, Any] = {
        "model": "m",
        "train_rows": ROWS,
        "eval_rows": [],
        "config": {},
    }
    hp = stacked.spec.resolved()
    result = train(stacked, hp, setup, fit, FakeTrainer, FakeConfig, **kwargs, ref_model=None)
    assert result.trainer.kwargs["peft_config"] is None  # the starting adapter trains on
    assert "ref_model" in result.trainer.kwargs and result.trainer.kwargs["ref_model"] is None
    own = make_ctx(tmp_path)
    result = train(own, hp, setup, fit, FakeTrainer, FakeConfig, **kwargs, peft_config="SEQ_CLS")
    assert result.trainer.kwargs["peft_config"] == "SEQ_CLS"


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(4, 8, bias=False)
        self.head = torch.nn.Linear(8, 10, bias=False)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.head


def test_decisions_record_every_choice_and_the_recipe_s_own(tmp_path: Path) -> None:
    setup, fit = parts(tmp_path)
    trained = Trained(SimpleNamespace(model=Tiny()), None, steps=7, epochs=1.4)
    chosen = decisions(setup, fit, "eager", trained, batching="group_by_length")
    assert chosen == {
        "precision": "fp32",
        "gradient_checkpointing": True,
        "micro_batch_size": 1,
        "attention": "eager",
        "total_steps": 7,
        "memory_plan_gib": {"total": 1.5},
        "base_weights": {
            "linear_layers": 1,
            "linear4bit_layers": 0,
            "linear_classes": ["torch.nn.modules.linear.Linear"],
            "linear_weight_bytes": 128,
            "bytes_per_linear_weight": 4.0,
        },
        "batching": "group_by_length",
    }


def test_fit_memory_plans_the_chosen_pass_and_keeps_pinned_checkpointing(
    tmp_path: Path, base_model: ResolvedBaseModel
) -> None:
    reporter = RecordingReporter()
    spec = sft_spec(batch_size=4, micro_batch_size=2, gradient_checkpointing=True)
    ctx = make_ctx(tmp_path, spec, reporter=reporter)
    setup = ModelSetup(base_model, None, cast(Any, None), "fp32")
    data = SimpleNamespace(
        train_rendered=[SimpleNamespace(n_tokens=100)], train_pairs=[], train_prompt_tokens=[]
    )
    fit = fit_memory(ctx, setup, cast(Any, data), ctx.spec.resolved(), 100.0)
    assert fit.micro_batch == 2 and fit.gradient_checkpointing is True
    assert fit.plan.summary() == reporter.events[-1]["data"]["memory"]
    assert reporter.events[-1]["message"].startswith("memory plan: about ")


@pytest.mark.parametrize(
    ("batch", "micro", "accumulation", "processes"),
    [(8, 4, 1, 2), (8, 8, 1, 2), (12, 3, 2, 2), (12, 6, 1, 3), (16, 1, 1, 4), (6, 6, 1, 1)],
)
def test_processes_share_the_batch_and_train_the_same_global_batch(
    batch: int, micro: int, accumulation: int, processes: int
) -> None:
    from services.trainer.recipes.training import split_batch
    from services.trainer.schemas import JobSpec

    hp = JobSpec(
        training_file="f",
        hyperparameters={"batch_size": batch, "gradient_accumulation_steps": accumulation},
    ).resolved()
    common: dict[str, Any] = {
        "per_device_train_batch_size": micro,
        "per_device_eval_batch_size": micro,
        "gradient_accumulation_steps": accumulation * batch // micro,
        "use_cpu": True,
    }
    split_batch(common, hp, processes)
    per_device = common["per_device_train_batch_size"]
    assert per_device <= micro, "never a bigger pass than memory planning chose"
    assert per_device * common["gradient_accumulation_steps"] * processes == batch * accumulation
    if processes > 1:
        assert common["ddp_backend"] == "gloo"
        assert common["ddp_find_unused_parameters"] is False


def test_training_that_raises_ends_the_tracker_runs_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers calls no callback when ``train`` raises: the recipe hands its trackers to
    ``tracking.fail`` and the error still reaches the caller."""
    from services.trainer.recipes import tracking

    class Tracker:
        def on_failure(self) -> None:
            ended.append("FAILED")

    class Exploding(FakeTrainer):
        def train(self, resume_from_checkpoint: str | None = None) -> None:
            raise RuntimeError("out of memory at step 3")

    ended: list[str] = []
    monkeypatch.setattr(tracking, "callbacks", lambda ctx: [Tracker()])
    ctx = make_ctx(tmp_path)
    setup, fit = parts(tmp_path)
    kwargs: dict[str, Any] = {"model": "m", "train_rows": ROWS, "eval_rows": [], "config": {}}
    with pytest.raises(RuntimeError, match="out of memory"):
        train(ctx, ctx.spec.resolved(), setup, fit, Exploding, FakeConfig, **kwargs)
    assert ended == ["FAILED"]
    train(ctx, ctx.spec.resolved(), setup, fit, FakeTrainer, FakeConfig, **kwargs)
    assert ended == ["FAILED"]  # a run that trained is not failed
