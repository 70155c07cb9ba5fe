"""Direct preference optimisation with LoRA or QLoRA on TRL's ``DPOTrainer``.

Reads top to bottom: set up the model, set up the data, train, save, register.

Starting from scratch, the policy is the base plus a fresh LoRA and the reference is the same model
with the adapter switched off. Starting from a registered SFT adapter (``base_adapter``), TRL keeps
a frozen copy of it as the reference, so DPO moves away from the SFT policy, not from the bare
base, and the result is one adapter (SFT + DPO) that serves on the bare base model.
"""

from __future__ import annotations

from typing import Any

from services.trainer.recipes.callbacks import make_progress_callback
from services.trainer.recipes.context import RecipeContext, RecipeResult
from services.trainer.recipes.data import longest_sequence, mean_sequence, prepare_data
from services.trainer.recipes.decisions import (
    choose_attention,
    choose_micro_batch,
    choose_precision,
    common_args,
    plan_memory,
    steps_per_epoch,
    total_steps,
)
from services.trainer.recipes.saving import finish, latest_checkpoint
from services.trainer.recipes.setup import (
    check_lora_servable,
    load_model,
    lora_config,
    setup_base,
    setup_tokenizer,
)


def run_dpo(ctx: RecipeContext) -> RecipeResult:
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl.trainer.dpo_config import DPOConfig
    from trl.trainer.dpo_trainer import DPOTrainer

    hp = ctx.spec.resolved()

    # 1. Model: the base (or the SFT adapter to start from), tokenizer, servable LoRA settings.
    if ctx.base_adapter_dir is None:
        check_lora_servable(ctx.spec, ctx.settings)
    base = setup_base(ctx)
    tokenizer, renderer = setup_tokenizer(base)
    precision = choose_precision(ctx, hp)

    # 2. Data: preference pairs, validated (identical pairs, missing prompts, stop tokens).
    data = prepare_data(ctx, renderer, "preference", hp)
    micro_batch = choose_micro_batch(hp, 2 * mean_sequence(data))
    plan, gradient_checkpointing = plan_memory(ctx, base, data, hp, precision, micro_batch)

    def rows(examples: Any) -> list[dict[str, Any]]:
        return [
            {
                "prompt": [m.to_dict() for m in e.messages],
                "chosen": [{"role": "assistant", "content": e.chosen}],
                "rejected": [{"role": "assistant", "content": e.rejected}],
            }
            for e in examples
        ]

    kept = {p.example_id for p in data.train_pairs}
    train_rows = rows([e for e in data.train if e.id in kept])
    kept_val = {p.example_id for p in data.validation_pairs}
    eval_rows = rows([e for e in data.validation if e.id in kept_val])
    attention = choose_attention(longest_sequence(data))
    model = load_model(ctx, base, precision, attention)

    # 3. Train.
    args = DPOConfig(
        **common_args(
            ctx,
            hp,
            len(train_rows),
            precision,
            gradient_checkpointing,
            bool(eval_rows),
            micro_batch,
        ),
        beta=hp.beta,
        loss_type=["sigmoid"],
        max_length=hp.max_length,
        dataset_num_proc=None,
    )
    callback = make_progress_callback(ctx.reporter)
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=None if ctx.base_adapter_dir else lora_config(ctx.spec),
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)
    resume = latest_checkpoint(ctx.output_dir)
    if resume:
        ctx.reporter.event(
            f"resuming from {resume.rsplit('/', 1)[-1]}", data={"checkpoint": resume}
        )
    trainer.train(resume_from_checkpoint=resume)

    # 4. Save and 5. register.
    steps = total_steps(len(train_rows), hp)
    epochs_done = steps / steps_per_epoch(len(train_rows), hp)
    per_epoch = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in data.train_pairs)
    decisions: dict[str, Any] = {
        "precision": precision,
        "gradient_checkpointing": gradient_checkpointing,
        "micro_batch_size": micro_batch,
        "attention": attention,
        "total_steps": steps,
        "reference": "base adapter (frozen copy)" if ctx.base_adapter_dir else "base, adapter off",
        "memory_plan_gib": plan.summary(),
    }
    return finish(
        ctx,
        trainer,
        callback,
        base=base,
        renderer=renderer,
        data=data,
        hp=hp,
        decisions=decisions,
        trained_tokens=int(per_epoch * epochs_done),
    )
