"""Supervised fine-tuning with LoRA or QLoRA on TRL's ``SFTTrainer``.

Reads top to bottom: set up the model, set up the data, train, save, register.

Loss is on assistant tokens and their stop token only. The labels come from our own renderer
(prefix-diffed token ids, see ``shared.datasets.render``), not from TRL's ``assistant_only_loss``,
which needs ``{% generation %}`` markers the embedded model's template lacks; TRL takes the
pre-tokenised ``input_ids``/``labels`` as they are. Batches group examples of similar length so
little compute goes to padding (padding-free rows are available with ``batching: padding_free``).
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


def run_sft(ctx: RecipeContext) -> RecipeResult:
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    hp = ctx.spec.resolved()

    # 1. Model: the base, its tokenizer and template, the LoRA settings the server accepts.
    check_lora_servable(ctx.spec, ctx.settings)
    base = setup_base(ctx)
    tokenizer, renderer = setup_tokenizer(base)
    precision = choose_precision(ctx, hp)

    # 2. Data: load, clean, split, render with label masks, validate (blocking).
    data = prepare_data(ctx, renderer, "sft", hp)
    micro_batch = choose_micro_batch(hp, mean_sequence(data))
    plan, gradient_checkpointing = plan_memory(ctx, base, data, hp, precision, micro_batch)
    # Measured on the 2-core CPU: padding-free rows made attention build a block mask and run
    # ~25% slower than length-grouped padded batches, so "auto" groups by length.
    batching = "group_by_length" if hp.batching == "auto" else hp.batching
    train_rows = [{"input_ids": r.input_ids, "labels": r.labels} for r in data.train_rendered]
    eval_rows = [{"input_ids": r.input_ids, "labels": r.labels} for r in data.validation_rendered]
    attention = choose_attention(longest_sequence(data), batching)
    model = load_model(ctx, base, precision, attention)

    # 3. Train.
    args = SFTConfig(
        **common_args(
            ctx,
            hp,
            len(train_rows),
            precision,
            gradient_checkpointing,
            bool(eval_rows),
            micro_batch,
        ),
        max_length=None if batching == "padding_free" else hp.max_length,
        padding_free=batching == "padding_free",
        packing=False,
        train_sampling_strategy="group_by_length" if batching == "group_by_length" else "random",
        dataset_num_proc=None,
    )
    callback = make_progress_callback(ctx.reporter)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=None if ctx.base_adapter_dir else lora_config(ctx.spec),
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # our callback reports; no raw dicts on stdout
    resume = latest_checkpoint(ctx.output_dir)
    if resume:
        ctx.reporter.event(
            f"resuming from {resume.rsplit('/', 1)[-1]}", data={"checkpoint": resume}
        )
    trainer.train(resume_from_checkpoint=resume)

    # 4. Save and 5. register (skipped if training was stopped on request).
    steps = total_steps(len(train_rows), hp)
    epochs_done = steps / steps_per_epoch(len(train_rows), hp)
    trained_tokens = int(sum(r.n_trained for r in data.train_rendered) * epochs_done)
    decisions: dict[str, Any] = {
        "precision": precision,
        "batching": batching,
        "gradient_checkpointing": gradient_checkpointing,
        "micro_batch_size": micro_batch,
        "attention": attention,
        "total_steps": steps,
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
        trained_tokens=trained_tokens,
    )
