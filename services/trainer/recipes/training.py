"""What SFT and DPO do alike around their own TRL trainer: set up the model (step 1), fit the batch
to memory (step 2), train with our progress callback and resume from a checkpoint (step 3), and
the decisions every manifest records. What differs (the rows, the trainer's own settings) stays in
each recipe, which keeps reading top to bottom."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.trainer.recipes import tracking
from services.trainer.recipes.callbacks import make_progress_callback
from services.trainer.recipes.context import RecipeContext
from services.trainer.recipes.decisions import (
    choose_micro_batch,
    choose_precision,
    common_args,
    plan_memory,
    steps_per_epoch,
    total_steps,
)
from services.trainer.recipes.saving import latest_checkpoint, restore_trained_adapter
from services.trainer.recipes.setup import (
    lora_config,
    setup_base,
    setup_tokenizer,
    weight_storage,
)
from services.trainer.schemas import ResolvedHyperparameters
from shared.basemodel import ResolvedBaseModel
from shared.datasets import ChatRenderer, PreparedData
from shared.memory import MemoryPlan


@dataclass(frozen=True)
class ModelSetup:
    """The base model, its tokenizer and chat renderer, and the precision chosen for this CPU."""

    base: ResolvedBaseModel
    tokenizer: Any
    renderer: ChatRenderer
    precision: str


def setup_model(ctx: RecipeContext, hp: ResolvedHyperparameters) -> ModelSetup:
    base = setup_base(ctx)
    tokenizer, renderer = setup_tokenizer(base)
    return ModelSetup(base, tokenizer, renderer, choose_precision(ctx, hp))


@dataclass(frozen=True)
class Fit:
    """How a step fits in memory: examples per forward pass, the plan, activation recomputation."""

    micro_batch: int
    plan: MemoryPlan
    gradient_checkpointing: bool


def fit_memory(
    ctx: RecipeContext,
    setup: ModelSetup,
    data: PreparedData,
    hp: ResolvedHyperparameters,
    tokens_per_example: float,
) -> Fit:
    micro_batch = choose_micro_batch(hp, tokens_per_example)
    plan, gradient_checkpointing = plan_memory(
        ctx, setup.base, data, hp, setup.precision, micro_batch
    )
    return Fit(micro_batch, plan, gradient_checkpointing)


class RankDone(Exception):
    """Training finished on a rank other than 0 of a multi-process job: rank 0 alone saves,
    writes the manifest and registers (``services/trainer/launch.py``)."""


def world() -> tuple[int, int]:
    """(this process's rank, how many processes train the job): torchrun's RANK and WORLD_SIZE."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def split_batch(common: dict[str, Any], hp: ResolvedHyperparameters, processes: int) -> None:
    """Make the ``processes`` ranks together train ``hp.batch_size`` examples per optimizer step,
    as one process would: each takes ``batch_size / processes`` of them (micro-batches of the
    chosen size or the largest divisor of the share below it, accumulated). The loss stays
    normalised over all the step's tokens on every rank (transformers counts them across ranks),
    so the gradient is the one-process gradient up to summation order."""
    if processes == 1:
        return
    share = hp.batch_size // processes
    micro = max(
        d
        for d in range(1, share + 1)
        if share % d == 0 and d <= common["per_device_train_batch_size"]
    )
    common["per_device_train_batch_size"] = common["per_device_eval_batch_size"] = micro
    common["gradient_accumulation_steps"] = hp.gradient_accumulation_steps * (share // micro)
    # Gloo on CPU; NCCL is the default where the ranks have GPUs.
    common["ddp_backend"] = None if common.get("use_cpu") is False else "gloo"
    # Every LoRA weight takes part in every forward pass: no extra autograd traversal per step.
    common["ddp_find_unused_parameters"] = False


@dataclass(frozen=True)
class Trained:
    """A finished (or stopped) ``trainer.train()``; ``epochs``: how many epochs its steps make."""

    trainer: Any
    callback: Any
    steps: int
    epochs: float


def train(
    ctx: RecipeContext,
    hp: ResolvedHyperparameters,
    setup: ModelSetup,
    fit: Fit,
    trainer_cls: Any,
    config_cls: Any,
    *,
    model: Any,
    train_rows: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]],
    config: dict[str, Any],
    built: Callable[[Any], None] | None = None,
    **trainer_kwargs: Any,
) -> Trained:
    """Build ``trainer_cls`` with ``config_cls(common args + config)`` and a fresh LoRA (or the
    starting adapter), then train, resuming from the newest complete checkpoint a dead worker left.
    ``built``: called with the trainer before training (DPO adds its reference check);
    ``trainer_kwargs``: the trainer's own arguments (DPO's ``ref_model``; a ``peft_config`` in
    place of the causal-LM LoRA)."""
    from datasets import Dataset
    from transformers import PrinterCallback

    n_train, has_eval = len(train_rows), bool(eval_rows)
    common = common_args(
        ctx, hp, n_train, setup.precision, fit.gradient_checkpointing, has_eval, fit.micro_batch
    )
    rank, processes = world()
    split_batch(common, hp, processes)
    # ``config`` may override a common argument (GRPO counts its batch in completions).
    args = config_cls(**{**common, **config})
    callback = make_progress_callback(ctx.reporter)
    trackers = tracking.callbacks(ctx)
    # A recipe may pass its own peft_config (the reward model's LoRA is a SEQ_CLS one).
    # No LoRA on a starting adapter (it is trained on) or when every weight trains.
    trainer_kwargs.setdefault(
        "peft_config",
        None if ctx.base_adapter_dir or ctx.spec.adapter == "none" else lora_config(ctx.spec),
    )
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if has_eval else None,
        processing_class=setup.tokenizer,
        callbacks=[callback, *trackers],
        **trainer_kwargs,
    )
    trainer.remove_callback(PrinterCallback)  # our callback reports; no raw dicts on stdout
    if built is not None:
        built(trainer)
    resume = latest_checkpoint(ctx.output_dir)
    if resume:
        ctx.reporter.event(
            f"resuming from {resume.rsplit('/', 1)[-1]}", data={"checkpoint": resume}
        )
        restore_trained_adapter(trainer.model, resume)
    try:
        trainer.train(resume_from_checkpoint=resume)
    except BaseException:
        tracking.fail(trackers)
        raise
    if rank != 0:
        raise RankDone(f"rank {rank} trained its share")
    steps = total_steps(n_train, hp)
    return Trained(trainer, callback, steps, steps / steps_per_epoch(n_train, hp))


def decisions(
    setup: ModelSetup, fit: Fit, attention: str, trained: Trained, **own: Any
) -> dict[str, Any]:
    """The manifest's ``decisions``: what every recipe chose, plus its ``own``."""
    return {
        "precision": setup.precision,
        "gradient_checkpointing": fit.gradient_checkpointing,
        "micro_batch_size": fit.micro_batch,
        "attention": attention,
        "total_steps": trained.steps,
        "memory_plan_gib": fit.plan.summary(),
        "base_weights": weight_storage(trained.trainer.model),
        **own,
    }
