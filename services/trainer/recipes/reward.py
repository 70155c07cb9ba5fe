"""A reward model (a scalar score per answer) with LoRA plus the score head on TRL's
``RewardTrainer``, trained on preference pairs.

Reads top to bottom: set up the model, set up the data, score the held-out pairs with the untrained
head (the baseline), train, score them again, save, register.

The model is the base as ``AutoModelForSequenceClassification`` with one label: a fresh linear
``score`` head on the last token's hidden state. The LoRA is a ``SEQ_CLS`` one, so peft trains and
saves the whole head beside the A/B matrices (``modules_to_save``). The held-out pairs are the
trainer's own validation split (``data.validation_fraction``, near-duplicates kept on one side) or
the ``validation_file``; their pair accuracy, the share of pairs whose chosen answer scores above
its rejected one, goes to the manifest as ``reward`` and to the job's events. They are scored
twice, with the untrained head and after training, and not during it (so the manifest has no
``valid_loss``).

The saved folder is a peft adapter like the others, registered the same way, but it is not a
generation adapter (vLLM cannot serve its score head), so the server's servability check is not
run on it; ``method: "reward"`` in its manifest is what marks it as a reward model.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.trainer.recipes.context import RecipeContext, RecipeResult, Stopped
from services.trainer.recipes.data import longest_sequence, mean_sequence, prepare_data
from services.trainer.recipes.decisions import choose_attention
from services.trainer.recipes.saving import (
    ADAPTER_FILES,
    _normalise_adapter_config,
    finish,
)
from services.trainer.recipes.setup import check_lora_servable
from services.trainer.recipes.training import ModelSetup, decisions, fit_memory, setup_model, train
from shared.datasets import RenderedPair
from shared.errors import SystemFailure, ValidationError
from shared.reward_models import score_sequences


def pair_rows(pairs: Sequence[RenderedPair], max_length: int) -> tuple[list[dict[str, Any]], int]:
    """Pre-tokenised rows (``prompt + answer`` ids for each side) and how many pairs were longer
    than ``max_length``. Those are left out, not cut: the score is read at the last token, so a
    truncated pair would be scored on an answer that lost its end."""
    rows, too_long = [], 0
    for p in pairs:
        chosen, rejected = p.prompt_ids + p.chosen_ids, p.prompt_ids + p.rejected_ids
        if max(len(chosen), len(rejected)) > max_length:
            too_long += 1
            continue
        rows.append({"chosen_ids": chosen, "rejected_ids": rejected})
    return rows, too_long


def pair_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """The share of pairs whose chosen answer scores strictly above its rejected one (a tie
    counts as wrong, so a constant scorer gets 0, not 0.5)."""
    if len(chosen) != len(rejected) or not chosen:
        raise ValueError(
            f"need equal, non-empty score lists, got {len(chosen)} and {len(rejected)}"
        )
    return sum(1 for c, r in zip(chosen, rejected, strict=True) if c > r) / len(chosen)


def held_out_accuracy(model: Any, rows: Sequence[dict[str, Any]], pad_id: int) -> float:
    chosen = score_sequences(model, [r["chosen_ids"] for r in rows], pad_id)
    rejected = score_sequences(model, [r["rejected_ids"] for r in rows], pad_id)
    return pair_accuracy(chosen, rejected)


def reward_lora_config(ctx: RecipeContext) -> Any:
    """The job's LoRA as a sequence-classification one: peft then trains and saves the score
    head whole (``modules_to_save``) next to the A/B matrices."""
    from peft import LoraConfig

    lora = ctx.spec.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias="none",
        task_type="SEQ_CLS",
    )


def load_reward_model(ctx: RecipeContext, setup: ModelSetup, attention: str, pad_id: int) -> Any:
    """The base with a fresh one-output score head, seeded so the same job starts alike."""
    import torch
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(ctx.spec.resolved().seed)
    dtype = torch.bfloat16 if setup.precision == "bf16" else torch.float32
    model: Any = AutoModelForSequenceClassification.from_pretrained(
        setup.base.path, num_labels=1, dtype=dtype, attn_implementation=attention
    )
    # The score is read at the last token that is not padding.
    model.config.pad_token_id = pad_id
    return model


def save_reward_adapter(trainer: Any, ctx: RecipeContext, base_name: str) -> Path:
    """Write the peft folder (LoRA matrices and the score head); refuse one without the head."""
    from safetensors import safe_open

    final, tmp = ctx.output_dir / "final", ctx.output_dir / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    trainer.model.save_pretrained(
        str(tmp), selected_adapters=["default"], save_embedding_layers=False
    )
    for item in tmp.iterdir():
        if item.name not in ADAPTER_FILES:
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    _normalise_adapter_config(tmp / "adapter_config.json", base_name)
    with safe_open(str(tmp / "adapter_model.safetensors"), framework="pt") as fh:
        keys = list(fh.keys())
    if not any(".score." in k for k in keys) or not any("lora_" in k for k in keys):
        raise SystemFailure(
            "the trained reward model lacks its score head or its LoRA matrices",
            code="incomplete_reward_model",
            details=sorted(keys)[:20],
        )
    tmp.rename(final)
    return final


def run_reward(ctx: RecipeContext) -> RecipeResult:
    from trl.trainer.reward_config import RewardConfig
    from trl.trainer.reward_trainer import RewardTrainer

    hp = ctx.spec.resolved()

    # 1. Model: the base, its tokenizer (pad = its pad token, else EOS), LoRA settings in range.
    check_lora_servable(ctx.spec, ctx.settings)
    setup = setup_model(ctx, hp)
    tokenizer = setup.tokenizer
    pad_id = int(
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )

    # 2. Data: preference pairs, validated and split as for DPO; the held-out side is scored.
    data = prepare_data(ctx, setup.renderer, "preference", hp)
    fit = fit_memory(ctx, setup, data, hp, 2 * mean_sequence(data))
    train_rows, long_train = pair_rows(data.train_pairs, hp.max_length)
    held_out, long_held = pair_rows(data.validation_pairs, hp.max_length)
    if long_train or long_held:
        ctx.reporter.event(
            f"{long_train} training and {long_held} held-out pairs are longer than max_length "
            f"{hp.max_length} and are left out",
            level="warn",
        )
    if not held_out:
        raise ValidationError(
            "no held-out preference pairs to measure the reward model on: raise "
            "data.validation_fraction or give a validation_file",
            param="data.validation_fraction",
            code="no_held_out_pairs",
        )
    if not train_rows:
        raise ValidationError(
            f"no training pairs fit max_length {hp.max_length}",
            param="training_file",
            code="invalid_training_data",
        )
    attention = choose_attention(longest_sequence(data))
    model = load_reward_model(ctx, setup, attention, pad_id)
    ctx.reporter.event(
        f"holding out {len(held_out)} pairs; scoring them with the untrained score head"
    )
    baseline = held_out_accuracy(model, held_out, pad_id)

    # 3. Train.
    trained = train(
        ctx,
        hp,
        setup,
        fit,
        RewardTrainer,
        RewardConfig,
        model=model,
        train_rows=train_rows,
        # No evaluation passes during training: the held-out pairs are scored once at the end
        # (below), and on a 2-core CPU TRL's periodic eval of them cost as much as the training.
        eval_rows=[],
        config={"max_length": hp.max_length, "dataset_num_proc": None},
        peft_config=reward_lora_config(ctx),
    )
    if trained.callback.stop_reason:
        raise Stopped(trained.callback.stop_reason)
    accuracy = held_out_accuracy(trained.trainer.model, held_out, pad_id)
    reward = {
        "heldout_pair_accuracy": round(accuracy, 6),
        "n_pairs": len(held_out),
        "baseline_pair_accuracy": round(baseline, 6),
        "baseline": "the same model with its untrained score head",
        "pad_token_id": pad_id,
        "num_labels": 1,
    }
    ctx.reporter.event(
        f"held-out pair accuracy {accuracy:.3f} on {len(held_out)} pairs "
        f"(untrained score head: {baseline:.3f})",
        data={"reward": reward},
    )

    # 4. Save and 5. register.
    per_epoch = sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in train_rows)
    tokens = int(per_epoch * trained.epochs)
    chosen = decisions(setup, fit, attention, trained, head="score (1 output), trained whole")
    return finish(
        ctx,
        trained,
        setup,
        data=data,
        hp=hp,
        decisions=chosen,
        trained_tokens=tokens,
        save=lambda trainer, c, base: save_reward_adapter(trainer, c, base.name),
        extra={"reward": reward},
        extra_metrics={"heldout_pair_accuracy": reward["heldout_pair_accuracy"]},
    )
