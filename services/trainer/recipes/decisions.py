"""The choices a recipe makes from the hardware and the data: precision, attention kernel,
micro-batch, memory plan, step counts and the TrainingArguments they add up to. Each choice is
reported as an event and recorded in the manifest's ``decisions``."""

from __future__ import annotations

import math
from typing import Any

from services.trainer.methods import get_method
from services.trainer.recipes.context import RecipeContext
from services.trainer.recipes.data import longest_sequence
from services.trainer.schemas import ResolvedHyperparameters
from shared.basemodel import ResolvedBaseModel
from shared.datasets import PreparedData
from shared.doctor import cpu_prefers_bf16
from shared.memory import MemoryPlan, ModelShape, PlanInput, available_memory
from shared.memory_fit import plan_or_refuse


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def choose_precision(ctx: RecipeContext, hp: ResolvedHyperparameters) -> str:
    """bf16 where the hardware computes it faster than fp32: on CUDA where it is supported, on
    a CPU where a measured matmul says so (shared.doctor.cpu_prefers_bf16). The job's events say
    which and why."""
    if hp.precision != "auto":
        ctx.reporter.event(f"precision {hp.precision} (set in the job)")
        return hp.precision
    import torch

    if torch.cuda.is_available():
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        ctx.reporter.event(f"precision {precision} (CUDA bf16 support)")
        return precision
    bf16, why = cpu_prefers_bf16()
    ctx.reporter.event(f"precision {'bf16' if bf16 else 'fp32'}: {why}")
    return "bf16" if bf16 else "fp32"


EAGER_ATTENTION_MAX_TOKENS = 512


def choose_attention(longest: int, batching: str = "padded") -> str:
    """Eager attention for short sequences on CPU: measured ~10% faster per step than SDPA's CPU
    flash kernel at ~100 tokens, whose backward dominates there. Its score matrices grow with the
    square of the length, so long sequences (and padding-free rows, which need SDPA's block mask)
    keep SDPA."""
    if cuda_available() or batching == "padding_free" or longest > EAGER_ATTENTION_MAX_TOKENS:
        return "sdpa"
    return "eager"


def plan_memory(
    ctx: RecipeContext,
    base: ResolvedBaseModel,
    data: PreparedData,
    hp: ResolvedHyperparameters,
    precision: str,
    micro_batch: int,
) -> tuple[MemoryPlan, bool]:
    """Estimate memory; refuse with a suggestion if it cannot fit. Returns (plan, grad ckpt)."""
    shape = ModelShape.from_folder(base.path)
    want_gc = hp.gradient_checkpointing is True
    plan_input = PlanInput(
        sequences_per_example=get_method(ctx.spec.method.type).sequences_per_example,
        quantization=ctx.spec.lora.quantization,
        r=ctx.spec.lora.r,
        target_modules=ctx.spec.lora.target_modules,
        batch_size=micro_batch,
        seq_len=min(hp.max_length, longest_sequence(data)),
        gradient_checkpointing=want_gc,
        weight_bytes=2 if precision == "bf16" else 4,
        full=ctx.spec.adapter == "none",
    )
    available = available_memory(ctx.settings.memory_limit_bytes)
    # Pinned off: plan exactly that, refused (with checkpointing among the suggestions) rather
    # than switched on for them.
    plan, chosen = plan_or_refuse(
        shape, plan_input, available, may_checkpoint=hp.gradient_checkpointing is not False
    )
    ctx.reporter.event(
        f"memory plan: about {plan.total / 1024**3:.2f} GiB needed, "
        f"{(available or 0) / 1024**3:.1f} GiB available"
        + ("; gradient checkpointing on" if chosen.gradient_checkpointing else ""),
        data={"memory": plan.summary()},
    )
    return plan, chosen.gradient_checkpointing


# Tokens per forward pass for each compute thread. With 1 thread, passes of 190 and 380 tokens ran
# at the same tokens/s (~100-token examples); with 2 threads one pass of 4 examples (420 tokens)
# took 3.75 s per step against 4.14 s for two passes of 2 (SmolLM2-135M, fp32, 2-core EPYC): more
# threads need bigger matrices to keep busy.
TOKENS_PER_PASS_PER_THREAD = 160


def choose_micro_batch(
    hp: ResolvedHyperparameters, mean_tokens: float, threads: int | None = None
) -> int:
    """Examples per forward pass: the smallest divisor of batch_size that reaches
    TOKENS_PER_PASS_PER_THREAD for each of the ``threads`` compute threads (torch's, by default),
    since activation memory grows with every example; accumulation makes up the rest of the
    batch, with the loss normalised over all its tokens as one batch would be."""
    if isinstance(hp.micro_batch_size, int):
        return hp.micro_batch_size
    if cuda_available():
        return hp.batch_size
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    wanted = TOKENS_PER_PASS_PER_THREAD * max(1, threads)
    for micro in range(1, hp.batch_size + 1):
        if hp.batch_size % micro == 0 and micro * mean_tokens >= wanted:
            return micro
    return hp.batch_size


def steps_per_epoch(n_examples: int, hp: ResolvedHyperparameters) -> int:
    return max(1, math.ceil(n_examples / (hp.batch_size * hp.gradient_accumulation_steps)))


def total_steps(n_examples: int, hp: ResolvedHyperparameters) -> int:
    full = steps_per_epoch(n_examples, hp) * hp.n_epochs
    return min(full, hp.max_steps) if hp.max_steps else full


def common_args(
    ctx: RecipeContext,
    hp: ResolvedHyperparameters,
    n_train: int,
    precision: str,
    gradient_checkpointing: bool,
    has_eval: bool,
    micro_batch: int,
) -> dict[str, Any]:
    """TrainingArguments shared by SFT and DPO: curriculum defaults, seeded, checkpointed."""
    steps = total_steps(n_train, hp)
    save_steps = hp.save_steps or max(1, math.ceil(steps / 5))
    return {
        "output_dir": str(ctx.output_dir),
        "num_train_epochs": hp.n_epochs,
        "max_steps": hp.max_steps or -1,
        "per_device_train_batch_size": micro_batch,
        "per_device_eval_batch_size": micro_batch,
        # batch_size stays the number of examples per optimizer step.
        "gradient_accumulation_steps": hp.gradient_accumulation_steps
        * (hp.batch_size // micro_batch),
        "learning_rate": hp.learning_rate,
        "lr_scheduler_type": hp.lr_scheduler_type,
        # TRL 1.16 refuses warmup_ratio; the same 5% expressed in steps.
        "warmup_steps": math.ceil(steps * hp.warmup_ratio),
        "weight_decay": hp.weight_decay,
        "seed": hp.seed,
        "data_seed": hp.seed,
        "bf16": precision == "bf16",
        "gradient_checkpointing": gradient_checkpointing,
        "logging_steps": hp.logging_steps,
        "save_strategy": "steps",
        "save_steps": save_steps,
        "save_total_limit": 2,
        "eval_strategy": "steps" if has_eval else "no",
        "eval_steps": save_steps if has_eval else None,
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "use_cpu": not cuda_available(),
    }
