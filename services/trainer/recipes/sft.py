"""Supervised fine-tuning with LoRA, QLoRA or every weight (``adapter: none``, see
``full_model``) on TRL's ``SFTTrainer``.

Reads top to bottom: set up the model, set up the data, train, save, register.

Loss is on assistant tokens and their stop token only. The labels come from our own renderer
(prefix-diffed token ids, see ``shared.datasets.render``), not from TRL's ``assistant_only_loss``,
which needs ``{% generation %}`` markers the embedded model's template lacks; TRL takes the
pre-tokenised ``input_ids``/``labels`` as they are. Batches group examples of similar length so
little compute goes to padding (padding-free rows are available with ``batching: padding_free``).
"""

from __future__ import annotations

from typing import Any

from services.trainer.recipes.context import RecipeContext, RecipeResult
from services.trainer.recipes.data import longest_sequence, mean_sequence, prepare_data
from services.trainer.recipes.decisions import choose_attention
from services.trainer.recipes.full_model import (
    load_full_model,
    save_full_model,
    trainable_parameters,
    trains_full_model,
)
from services.trainer.recipes.saving import finish
from services.trainer.recipes.setup import check_lora_servable, load_model
from services.trainer.recipes.training import decisions, fit_memory, setup_model, train


def run_sft(ctx: RecipeContext) -> RecipeResult:
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    hp = ctx.spec.resolved()
    full = trains_full_model(ctx.spec)

    # 1. Model: the base, its tokenizer and template, the LoRA settings the server accepts.
    if not full:
        check_lora_servable(ctx.spec, ctx.settings)
    setup = setup_model(ctx, hp)

    # 2. Data: load, clean, split, render with label masks, validate (blocking).
    data = prepare_data(ctx, setup.renderer, "sft", hp)
    fit = fit_memory(ctx, setup, data, hp, mean_sequence(data))
    # Measured on the 2-core CPU: padding-free rows made attention build a block mask and run
    # ~25% slower than length-grouped padded batches, so "auto" groups by length.
    batching = "group_by_length" if hp.batching == "auto" else hp.batching
    train_rows = [{"input_ids": r.input_ids, "labels": r.labels} for r in data.train_rendered]
    eval_rows = [{"input_ids": r.input_ids, "labels": r.labels} for r in data.validation_rendered]
    attention = choose_attention(longest_sequence(data), batching)
    if full:
        model = load_full_model(setup.base, attention)
        ctx.reporter.event(
            f"full fine-tuning: all {trainable_parameters(model):,} weights train (fp32 master "
            f"weights; steps in {setup.precision})"
        )
    else:
        model = load_model(ctx, setup.base, setup.precision, attention)

    # 3. Train.
    sampling = "group_by_length" if batching == "group_by_length" else "random"
    trained = train(
        ctx,
        hp,
        setup,
        fit,
        SFTTrainer,
        SFTConfig,
        model=model,
        train_rows=train_rows,
        eval_rows=eval_rows,
        config={
            "max_length": None if batching == "padding_free" else hp.max_length,
            "padding_free": batching == "padding_free",
            "packing": False,
            "train_sampling_strategy": sampling,
            "dataset_num_proc": None,
        },
    )

    # 4. Save and 5. register (skipped if training was stopped on request).
    per_epoch = sum(r.n_trained for r in data.train_rendered)
    own: dict[str, Any] = {"batching": batching}
    if full:
        own["trainable_params"] = trainable_parameters(trained.trainer.model)
    chosen = decisions(setup, fit, attention, trained, **own)
    tokens = int(per_epoch * trained.epochs)
    return finish(
        ctx,
        trained,
        setup,
        data=data,
        hp=hp,
        decisions=chosen,
        trained_tokens=tokens,
        save=save_full_model if full else None,
    )
