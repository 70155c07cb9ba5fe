"""Direct preference optimisation with LoRA or QLoRA on TRL's ``DPOTrainer``.

Reads top to bottom: set up the model, set up the data, train, save, register.

Starting from scratch, the policy is the base plus a fresh LoRA and the reference is the same model
with the adapter switched off. Starting from a registered SFT adapter (``base_adapter``), TRL keeps
a frozen copy of it as the reference, so DPO moves away from the SFT policy, not from the bare
base, and the result is one adapter (SFT + DPO) that serves on the bare base model. Which of the two
the reference really is gets measured before training (and after a resume), see ``reference``.
"""

from __future__ import annotations

from typing import Any

from services.trainer.recipes.context import RecipeContext, RecipeResult
from services.trainer.recipes.data import longest_sequence, mean_sequence, prepare_data
from services.trainer.recipes.decisions import choose_attention
from services.trainer.recipes.reference import make_reference_callback
from services.trainer.recipes.saving import finish
from services.trainer.recipes.setup import check_lora_servable, load_model
from services.trainer.recipes.training import decisions, fit_memory, setup_model, train


def run_dpo(ctx: RecipeContext) -> RecipeResult:
    from trl.trainer.dpo_config import DPOConfig
    from trl.trainer.dpo_trainer import DPOTrainer

    hp = ctx.spec.resolved()

    # 1. Model: the base (or the SFT adapter to start from), tokenizer, servable LoRA settings.
    if ctx.base_adapter_dir is None:
        check_lora_servable(ctx.spec, ctx.settings)
    setup = setup_model(ctx, hp)

    # 2. Data: preference pairs, validated (identical pairs, missing prompts, stop tokens).
    data = prepare_data(ctx, setup.renderer, "preference", hp)
    fit = fit_memory(ctx, setup, data, hp, 2 * mean_sequence(data))

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
    model = load_model(ctx, setup.base, setup.precision, attention)

    # 3. Train, once the reference has been checked (at the start and after a resume).
    check: Any = None

    def add_reference_check(trainer: Any) -> None:
        nonlocal check
        check = make_reference_callback(trainer, ctx.base_adapter_dir, ctx.reporter)
        trainer.add_callback(check)

    trained = train(
        ctx,
        hp,
        setup,
        fit,
        DPOTrainer,
        DPOConfig,
        model=model,
        train_rows=train_rows,
        eval_rows=eval_rows,
        config={
            "beta": hp.beta,
            "loss_type": ["sigmoid"],
            "max_length": hp.max_length,
            "dataset_num_proc": None,
        },
        built=add_reference_check,
        ref_model=None,
    )

    # 4. Save and 5. register.
    per_epoch = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in data.train_pairs)
    chosen = decisions(setup, fit, attention, trained, reference=check.found)
    tokens = int(per_epoch * trained.epochs)
    return finish(ctx, trained, setup, data=data, hp=hp, decisions=chosen, trained_tokens=tokens)
